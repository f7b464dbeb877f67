#!/usr/bin/env bash
# Runs forkloop's examples/loop_bench.rs and Node's loop-bench.js alternately on this
# machine, takes the median of each, and prints the ratio against the acceptance targets.
#
#   scripts/loop-compare.sh            # RUNS=5 per side, TIMEOUT0_N=2000
#   RUNS=3 TESTS="immediate-chain nexttick-chain" scripts/loop-compare.sh
#
# Metrics (higher ratio = forkloop better):
#   *-chain, *-batch   callbacks per second (per_s)
#   timers-same        create + fire wall time (total_ms), Node / ours
#   timers-spread      create wall time + fire CPU time (the fire wall time is the 100 ms
#                      delay itself), Node / ours; late_ms is printed for both
#   timeout0-chain     per_s ratio, which must stay within 0.8–1.2 (the 1 ms clamp)
# Node's side is benches/peers/js/loop-bench.js; needs node (apt-get install -y nodejs).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=loop-compare
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RUNS=${RUNS:-5}
TIMEOUT0_N=${TIMEOUT0_N:-2000}
NODE_JS=benches/peers/js/loop-bench.js
TESTS=${TESTS:-"immediate-chain nexttick-chain nexttick-batch microtask-chain promise-chain promise-batch timeout0-chain timers-same timers-spread"}

need node nodejs
cargo build --release --quiet --example loop_bench
OURS=target/release/examples/loop_bench

# metric TEST LINE: the single number compared for TEST.
metric() {
  case "$1" in
    timers-same) kv total_ms "$2" ;;
    timers-spread) awk -v a="$(kv create_ms "$2")" -v b="$(kv fire_cpu_ms "$2")" \
      'BEGIN { printf "%.3f", a + b }' ;;
    *) kv per_s "$2" ;;
  esac
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# target TEST: "min max" acceptable ratio (max empty = no upper bound).
target() {
  case "$1" in
    immediate-chain) echo "10 -" ;;
    nexttick-chain | nexttick-batch | microtask-chain | timers-same | timers-spread) echo "3 -" ;;
    timeout0-chain) echo "0.8 1.2" ;;
    *) echo "- -" ;;
  esac
}

printf '%-16s %14s %14s %9s %10s %s\n' test forkloop node ratio target verdict
fails=0
for t in $TESTS; do
  n=""
  [ "$t" = timeout0-chain ] && n=$TIMEOUT0_N
  ours=() theirs=() late_o=() late_n=()
  for _ in $(seq "$RUNS"); do
    lo=$("$OURS" "$t" $n)
    ln=$(node "$NODE_JS" "$t" $n)
    ours+=("$(metric "$t" "$lo")")
    theirs+=("$(metric "$t" "$ln")")
    if [ "$t" = timers-spread ]; then
      late_o+=("$(kv late_ms "$lo")")
      late_n+=("$(kv late_ms "$ln")")
    fi
  done
  mo=$(printf '%s\n' "${ours[@]}" | median)
  mn=$(printf '%s\n' "${theirs[@]}" | median)
  case "$t" in
    timers-*) ratio=$(awk -v o="$mo" -v n="$mn" 'BEGIN { printf "%.2f", n / o }') ;;
    *) ratio=$(awk -v o="$mo" -v n="$mn" 'BEGIN { printf "%.2f", o / n }') ;;
  esac
  read -r lo_t hi_t <<<"$(target "$t")"
  verdict=info
  if [ "$lo_t" != - ]; then
    verdict=$(awk -v r="$ratio" -v lo="$lo_t" -v hi="$hi_t" \
      'BEGIN { ok = r >= lo && (hi == "-" || r <= hi); print ok ? "ok" : "FAIL" }')
  fi
  [ "$verdict" = FAIL ] && fails=$((fails + 1))
  range="≥${lo_t}x"
  [ "$hi_t" != - ] && range="${lo_t}-${hi_t}x"
  [ "$lo_t" = - ] && range="-"
  printf '%-16s %14s %14s %8sx %10s %s\n' "$t" "$mo" "$mn" "$ratio" "$range" "$verdict"
  if [ "$t" = timers-spread ]; then
    printf '%-16s late_ms median: forkloop %s, node %s\n' "" \
      "$(printf '%s\n' "${late_o[@]}" | median)" "$(printf '%s\n' "${late_n[@]}" | median)"
  fi
done
echo "runs per side: $RUNS (alternating); timeout0-chain n=$TIMEOUT0_N; units: per_s, or ms for timers"
exit $((fails > 0))
