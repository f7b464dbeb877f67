#!/usr/bin/env bash
# Runs forkloop's examples/ipc_bench, the raw-socketpair peer (benches/peers/src/bin/ipc-bench.rs)
# and Node's process.send peer (benches/peers/js/ipc-bench.js) alternately, in one run on
# one machine, and prints medians and the ratios the foundation issue asks for:
#   pingpong 16 B   ours >= 0.9x raw and >= 1.8x Node
#   oneway 16 B     ours >= 0.9x raw and >= 2x Node
#   fdpass-stream   ours >= 0.8x raw (streamed, ack per 64, window 256)
# Usage: scripts/ipc-compare.sh            (RUNS=3 rounds; counts as in the issue)
# Env: RUNS, PP_COUNT (100000), OW_COUNT (1000000), FD_COUNT (500000), SKIP_BUILD=1
#      PINS ("split same"): also run the three ping-pongs with PIN=split (parent CPU 0,
#        child CPU 1) and PIN=same (both on CPU 0); these
#        and the busy-poll rows are information, the checks use the unpinned runs;
#      SPIN_US (50): ours again with --busy-poll SPIN_US (0 skips it).
# Needs node (apt-get install -y nodejs) for the Node rows (skipped without it).
# Exits 1 if a target is missed.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=ipc-compare
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/servers.sh
source scripts/servers.sh
RUNS=${RUNS:-3}
PP_COUNT=${PP_COUNT:-100000}
OW_COUNT=${OW_COUNT:-1000000}
PINS=${PINS-"split same"}
SPIN_US=${SPIN_US:-50}
FD_COUNT=${FD_COUNT:-500000}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  build_retry cargo build --release --quiet --example ipc_bench
  build_peers
fi
OURS=target/release/examples/ipc_bench
RAW=$PEERS_BIN/ipc-bench
NODE_JS=$PEERS/js/ipc-bench.js
have_node=1
command -v node >/dev/null || { echo "node not found: Node rows skipped" >&2; have_node=0; }

# wait_quiet (scripts/lib.sh) before every sample: other work on a 2-CPU machine (builds,
# tests) changes every figure, and busy CPUs wake faster than idle ones, which flatters
# ping-pong.
declare -A vals
# sample NAME KEY CMD...: run CMD (60 s cap), keep KEY's value under NAME.
sample() {
  local name=$1 key=$2 line; shift 2
  wait_quiet
  line=$(timeout 120 "$@" | tail -1)
  echo "  $name: $line" >&2
  vals[$name]+="$(kv "$key" "$line") "
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for i in $(seq 1 "$RUNS"); do
  echo "round $i/$RUNS" >&2
  sample ours_pp rate_per_s "$OURS" pingpong 16 "$PP_COUNT"
  sample raw_pp rate_per_s "$RAW" pingpong 16 "$PP_COUNT"
  [ $have_node = 1 ] && sample node_pp rate_per_s node "$NODE_JS" pingpong-small "$PP_COUNT"
  sample ours_ow rate_per_s "$OURS" oneway 16 "$OW_COUNT"
  sample raw_ow rate_per_s "$RAW" oneway 16 "$OW_COUNT"
  [ $have_node = 1 ] && sample node_ow rate_per_s node "$NODE_JS" oneway-small 500000
  sample ours_fd rate_per_s "$OURS" fdpass-stream "$FD_COUNT"
  sample raw_fd fds_per_s "$RAW" fdpass-stream "$FD_COUNT"
  if [ "$SPIN_US" != 0 ]; then
    sample ours_pp_spin rate_per_s "$OURS" pingpong 16 "$PP_COUNT" --busy-poll "$SPIN_US"
  fi
  for pin in $PINS; do
    sample "ours_pp_$pin" rate_per_s env PIN="$pin" "$OURS" pingpong 16 "$PP_COUNT"
    sample "raw_pp_$pin" rate_per_s env PIN="$pin" "$RAW" pingpong 16 "$PP_COUNT"
    [ $have_node = 1 ] && sample "node_pp_$pin" rate_per_s env PIN="$pin" node "$NODE_JS" pingpong-small "$PP_COUNT"
  done
done

fail=0
# check LABEL OURS PEER MIN: print the ratio of medians and whether it meets MIN.
check() {
  local label=$1 a b r ok
  a=$(median "${vals[$2]:-}"); b=$(median "${vals[$3]:-}")
  if [ -z "$a" ] || [ -z "$b" ]; then echo "$label: no data"; return; fi
  r=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')
  ok=$(awk -v r="$r" -v m="$4" 'BEGIN {print (r >= m) ? "ok" : "MISSED"}')
  [ "$ok" = ok ] || fail=1
  printf '%-34s ours %12.0f/s  peer %12.0f/s  ratio %6sx  (target >= %sx) %s\n' "$label" "$a" "$b" "$r" "$4" "$ok"
}
echo
echo "medians of $RUNS alternating rounds; $(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
check "pingpong 16 B vs raw socketpair" ours_pp raw_pp 0.9
[ $have_node = 1 ] && check "pingpong 16 B vs Node" ours_pp node_pp 1.8
check "oneway 16 B vs raw socketpair" ours_ow raw_ow 0.9
[ $have_node = 1 ] && check "oneway 16 B vs Node" ours_ow node_ow 2.0
check "fdpass-stream vs raw streamed" ours_fd raw_fd 0.8
# info LABEL OURS PEER: the ratio of medians, without a target.
info() {
  local a b
  a=$(median "${vals[$2]:-}"); b=$(median "${vals[$3]:-}")
  if [ -z "$a" ] || [ -z "$b" ]; then return; fi
  printf '%-34s ours %12.0f/s  peer %12.0f/s  ratio %6sx  (information)\n' "$1" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')"
}
info "raw socketpair vs Node, pingpong" raw_pp node_pp
for pin in $PINS; do
  info "PIN=$pin pingpong vs raw" "ours_pp_$pin" "raw_pp_$pin"
  info "PIN=$pin pingpong vs Node" "ours_pp_$pin" "node_pp_$pin"
  info "PIN=$pin raw vs Node" "raw_pp_$pin" "node_pp_$pin"
done
if [ "$SPIN_US" != 0 ]; then
  info "pingpong busy-poll ${SPIN_US}us vs raw" ours_pp_spin raw_pp
  info "pingpong busy-poll ${SPIN_US}us vs Node" ours_pp_spin node_pp
fi
exit $fail
