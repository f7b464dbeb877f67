#!/usr/bin/env bash
# How evenly the workers share the load: per-worker share of connections and of requests
# for forkloop's http_cluster (rr, none, reuseport) and Node's cluster (rr, none), under
# `wrk -t1 -c64` keep-alive and `Connection: close`, with 2 and 4 workers.
#
#   scripts/balance-compare.sh                     # RUNS=3, DURATION=10s: ~15 min
#   RUNS=1 DURATION=2s WORKER_COUNTS=2 SERVERS="fl-rr node-rr" scripts/balance-compare.sh
#   SERVERS="fl-rr fl-rr@64" MODES=ka scripts/balance-compare.sh   # rr with credit 64 beside the default
#
# The counts are the workers' own, never inferred from timing: every worker counts the
# connections it accepted and the requests it answered, and prints its totals as
# `stats pid=N connections=C requests=R` on SIGUSR2 (Node: benches/peers/js/http-cluster.js
# with STATS=1; forkloop: examples/http_cluster, from `forkloop::http::Server::stats`).
# The script signals each worker before and after the run and takes the difference.
# The counts are checked against wrk: the workers' requests must add up to wrk's count (plus at
#  most the 64 in flight when it stopped, and 0.2%), their connections to 64 (keep-alive;
#  65 with the one wrk opens to try the address) or to their requests (close); a run
#  whose counts do not add up is reported and fails.
# Per run, per worker: requests, connections and CPU time (utime+stime, information);
# the balance is max/min over the workers (1.00 = even). The checks (issue 15's
# acceptance) take the median over the rounds: max/min <= 1.10 for fl-rr and fl-none,
# requests and connections, both modes, 2 and 4 workers. fl-reuseport and Node's: shown.
#
# Needs wrk (apt-get install -y wrk), node (nodejs) for the Node servers.
# Env: RUNS (3), DURATION (10s), WARMUP (1s), SERVERS ("fl-rr fl-none fl-reuseport node-rr
#      node-none"), WORKER_COUNTS ("2 4"), MODES ("close ka"), MAX_RATIO (1.10),
#      QUIET_CORES (0.15), QUIET_SECS (3), QUIET_MAX_S (300), OUT_DIR, SKIP_BUILD=1.
# Exit status: 0 every check that ran passes, 1 a check fails, 2 the benchmark failed.
# Everything runs on 127.0.0.1; every process started is stopped by its pid on exit.
# shellcheck disable=SC2317  # functions called through traps and wait_for
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=balance-compare
STOP_GRACE_S=5
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/servers.sh
source scripts/servers.sh

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
SERVERS=${SERVERS:-"fl-rr fl-none fl-reuseport node-rr node-none"}
WORKER_COUNTS=${WORKER_COUNTS:-"2 4"}
MODES=${MODES:-"close ka"}
MAX_RATIO=${MAX_RATIO:-1.10}
QUIET_CORES=${QUIET_CORES:-0.15}
QUIET_SECS=${QUIET_SECS:-3}
QUIET_MAX_S=${QUIET_MAX_S:-300}
OUT_DIR=${OUT_DIR:-}
NODE_STATS=1
CONNS=64

SECS=${DURATION%s}
WARM_SECS=${WARMUP%s}
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 && $WARM_SECS =~ ^[0-9]+$ && $RUNS =~ ^[1-9][0-9]*$ ]] ||
  die "RUNS, DURATION and WARMUP must be whole numbers (seconds)"
read -r -a SERVER_LIST <<<"$SERVERS"
read -r -a WORKER_LIST <<<"$WORKER_COUNTS"
read -r -a MODE_LIST <<<"$MODES"
for w in "${WORKER_LIST[@]}"; do [[ $w =~ ^[1-9][0-9]*$ && $w -ge 2 ]] || die "WORKER_COUNTS: at least 2, not $w"; done
for m in "${MODE_LIST[@]}"; do [[ $m == ka || $m == close ]] || die "MODES are ka and close, not $m"; done
for name in "${SERVER_LIST[@]}"; do
  case $name in fl-rr | fl-rr@[1-9]* | fl-none | fl-reuseport | node-rr | node-none) ;; *) die "unknown server $name (fl-rr fl-rr@K fl-none fl-reuseport node-rr node-none)" ;; esac
done

RAW_DIR=${OUT_DIR:-$TMP_DIR}
mkdir -p "$RAW_DIR"
RESULTS=$RAW_DIR/runs.tsv
# mode = MODE@WORKERS (e.g. close@4), so that tsv_agg's (mode, server) rows are one cell.
printf 'mode\tserver\tround\treq_ratio\tconn_ratio\tcpu_ratio\trequests\tconnections\tcpu_ticks\twrk_requests\twrk_errors\tverified\n' >"$RESULTS"

post_cleanup() { keep_server_logs; }

need wrk wrk
need ss iproute2
need timeout coreutils
prepare_servers "${SERVER_LIST[@]}"

# ---------------------------------------------------------------- per-worker counts
# Counts are left in REQ[i], CONN[i], CPU[i] for worker i (index into OTHERS).

# stats_snapshot OUT: SIGUSR2 to every worker; waits (5 s) for each to print a new stats
# line; writes "connections requests" per worker (in OTHERS order) to OUT.
stats_snapshot() {
  local out=$1 log="$TMP_DIR/$NAME.log" before p line
  before=$(grep -c '^stats ' "$log" || true)
  for p in "${OTHERS[@]}"; do kill -USR2 "$p"; done
  wait_for "worker stats lines" 5 "${PRIMARY[0]}" stats_lines_at_least "$log" $((before + ${#OTHERS[@]})) ||
    die "$NAME: the workers did not report their counts"
  : >"$out"
  for p in "${OTHERS[@]}"; do
    line=$(grep "^stats pid=$p " "$log" | tail -1)
    [ -n "$line" ] || die "$NAME: no stats line from worker $p"
    echo "$(kv connections "$line") $(kv requests "$line")" >>"$out"
  done
}
stats_lines_at_least() { [ "$(grep -c '^stats ' "$1" || true)" -ge "$2" ]; }

# ratio_max_min "N N ...": max/min (2 decimals), "inf" when a worker got none.
ratio_max_min() {
  awk -v l="$1" 'BEGIN { n = split(l, v, " "); mx = v[1]; mn = v[1]
    for (i = 2; i <= n; i++) { if (v[i] > mx) mx = v[i]; if (v[i] < mn) mn = v[i] }
    if (mn <= 0) print "inf"; else printf "%.2f\n", mx / mn }'
}

# measure MODE ROUND: one wrk run against the server started last ($NAME), with the
# per-worker counts taken around it; appends a row to RESULTS.
measure() {
  local mode=$1 round=$2 hdr=() out i p reqs conns cpus wreq werr ok=1 why=() a b
  [ "$mode" = close ] && hdr=(-H 'Connection: close')
  out="$RAW_DIR/$mode-$WORKERS-$NAME-$round"
  wait_quiet
  declare -a T0=()
  for p in "${OTHERS[@]}"; do T0+=("$(cpu_ticks "$p")"); done
  stats_snapshot "$out.before"
  timeout -k 5 $((SECS + 20)) wrk -t1 -c$CONNS -d"${SECS}s" ${hdr[@]+"${hdr[@]}"} "http://127.0.0.1:$PORT/" >"$out.wrk" 2>&1 ||
    die "$NAME $mode: wrk failed: $(tail -3 "$out.wrk" | tr '\n' ' ')"
  sleep 1  # wrk's keep-alive connections close after it exits: let the workers see that
  stats_snapshot "$out.after"
  paste -d' ' "$out.before" "$out.after" | awk '{print $3 - $1, $4 - $2}' >"$out.counts"
  for p in "${OTHERS[@]}"; do alive "$p" || die "$NAME: worker $p died during the $mode run"; done
  i=0 cpus=""
  for p in "${OTHERS[@]}"; do cpus+="$(($(cpu_ticks "$p") - T0[i])) "; i=$((i + 1)); done
  conns=$(awk '{printf "%s ", $1}' "$out.counts")
  reqs=$(awk '{printf "%s ", $2}' "$out.counts")
  read -r wreq werr _ <<<"$(parse_wrk "$out.wrk")"
  # Do the workers' counts add up to what wrk saw?
  a=$(awk -v l="$reqs" 'BEGIN {n = split(l, v, " "); for (i = 1; i <= n; i++) s += v[i]; print s}')
  b=$(awk -v l="$conns" 'BEGIN {n = split(l, v, " "); for (i = 1; i <= n; i++) s += v[i]; print s}')
  if ! awk -v s="$a" -v w="$wreq" -v c=$CONNS 'BEGIN {exit !(s >= w && s <= w + c + w * 0.002)}'; then
    ok=0; why+=("requests add up to $a, wrk counted $wreq")
  fi
  if [ "$mode" = ka ]; then
    # wrk opens one connection more, to try the address before it starts.
    if ! [ "$b" -ge $CONNS ] || ! [ "$b" -le $((CONNS + 1 + werr)) ]; then ok=0; why+=("connections add up to $b, wrk had $CONNS (+1)"); fi
  elif ! awk -v s="$b" -v r="$a" -v c=$CONNS 'BEGIN {d = s - r; if (d < 0) d = -d; exit !(d <= c + r * 0.002)}'; then
    ok=0; why+=("connections add up to $b for $a requests")
  fi
  [ "$ok" = 1 ] || echo "  WARNING: $NAME $mode@$WORKERS round $round: counts do not add up: ${why[*]}" >&2
  printf '%s@%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$WORKERS" "$NAME" "$round" \
    "$(ratio_max_min "$reqs")" "$(ratio_max_min "$conns")" "$(ratio_max_min "$cpus")" \
    "${reqs% }" "${conns% }" "${cpus% }" "$wreq" "$werr" "$ok" >>"$RESULTS"
  printf '  %s %-12s %-5s %s workers round %s: requests %s (max/min %s)  connections %s (max/min %s)  cpu ticks %s  wrk %s req, %s errors%s\n' \
    "$(date +%H:%M:%S)" "$NAME" "$mode" "$WORKERS" "$round" "${reqs% }" "$(ratio_max_min "$reqs")" \
    "${conns% }" "$(ratio_max_min "$conns")" "${cpus% }" "$wreq" "$werr" \
    "$([ "$ok" = 1 ] || echo "  (counts do not add up)")" >&2
}

# ---------------------------------------------------------------- rounds
START=$(date -u +%Y-%m-%dT%H:%MZ)
echo "balance-compare: RUNS=$RUNS DURATION=${SECS}s SERVERS='${SERVER_LIST[*]}' WORKER_COUNTS='$WORKER_COUNTS' MODES='$MODES'; $BUILD_NOTE" >&2
N=${#SERVER_LIST[@]}
for ((r = 1; r <= RUNS; r++)); do
  for WORKERS in "${WORKER_LIST[@]}"; do
    for ((i = 0; i < N; i++)); do
      NAME=${SERVER_LIST[$(((i + r - 1) % N))]}
      echo "== round $r/$RUNS: $NAME ($(label "$NAME"))" >&2
      start_server "$NAME"
      warm_up "$NAME" "$WARM_SECS" "$CONNS"
      sleep 0.5
      for mode in "${MODE_LIST[@]}"; do measure "$mode" "$r"; done
      stop_server "$NAME"
      sleep 1
    done
  done
done

# ---------------------------------------------------------------- report
rows=$(($(wc -l <"$RESULTS") - 1))
[ "$rows" = $((RUNS * N * ${#MODE_LIST[@]} * ${#WORKER_LIST[@]})) ] ||
  die "only $rows of $((RUNS * N * ${#MODE_LIST[@]} * ${#WORKER_LIST[@]})) runs were recorded"
agg() { tsv_agg "$RESULTS" "$@"; }
# last MODE SERVER COLUMN: the value of the last round (the per-worker lists).
last() {
  awk -F'\t' -v m="$1" -v s="$2" -v c="$(tsv_col "$RESULTS" "$3")" '$1 == m && $2 == s {v = $c} END {print v}' "$RESULTS"
}
# shares "N N ...": each as a percentage of the sum.
shares() {
  awk -v l="$1" 'BEGIN { n = split(l, v, " "); for (i = 1; i <= n; i++) s += v[i]
    for (i = 1; i <= n; i++) printf "%s%.1f", (i > 1 ? " / " : ""), (s ? 100 * v[i] / s : 0) }'
}
# ratio_cell MODE SERVER COLUMN: median over the rounds ("inf" rounds make it inf).
ratio_cell() {
  if awk -F'\t' -v m="$1" -v s="$2" -v c="$(tsv_col "$RESULTS" "$3")" '$1 == m && $2 == s && $c == "inf" {f = 1} END {exit !f}' "$RESULTS"; then
    echo inf
  else
    agg "$1" "$2" "$3"
  fi
}

echo
echo "<!-- scripts/balance-compare.sh; $(machine_note); started $START; RUNS=$RUNS DURATION=${SECS}s; ${BUILD_NOTE:-} -->"
echo "Per-worker shares from the workers' own counters (connections accepted, requests answered); max/min = largest ÷ smallest worker count (median over $RUNS round(s)); shares in % (last round)."
for mode in "${MODE_LIST[@]}"; do
  for WORKERS in "${WORKER_LIST[@]}"; do
    k="$mode@$WORKERS"
    echo
    if [ "$mode" = ka ]; then echo "#### keep-alive, wrk -t1 -c$CONNS, $WORKERS workers"; else echo "#### Connection: close, wrk -t1 -c$CONNS, $WORKERS workers"; fi
    echo
    echo "| server | requests max/min | request shares % | connections max/min | connection shares % | CPU max/min | counts add up |"
    echo "|---|---|---|---|---|---|---|"
    for name in "${SERVER_LIST[@]}"; do
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$name")" "$(ratio_cell "$k" "$name" req_ratio)" \
        "$(shares "$(last "$k" "$name" requests)")" "$(ratio_cell "$k" "$name" conn_ratio)" \
        "$(shares "$(last "$k" "$name" connections)")" "$(ratio_cell "$k" "$name" cpu_ratio)" \
        "$(awk -F'\t' -v m="$k" -v s="$name" '$1 == m && $2 == s {n++; ok += $12} END {print ok + 0 "/" n + 0}' "$RESULTS")"
    done
  done
done

echo
echo "#### Checks (max/min per-worker share <= $MAX_RATIO, medians)"
echo
echo '```'
for name in fl-rr fl-none; do
  [[ " ${SERVER_LIST[*]} " == *" $name "* ]] || { printf '  SKIP  %s (not measured)\n' "$name"; continue; }
  for mode in "${MODE_LIST[@]}"; do
    for WORKERS in "${WORKER_LIST[@]}"; do
      k="$mode@$WORKERS"
      bad=$(awk -F'\t' -v m="$k" -v s="$name" '$1 == m && $2 == s && $12 != 1 {n++} END {print n + 0}' "$RESULTS")
      for what in req conn; do
        v=$(ratio_cell "$k" "$name" "${what}_ratio")
        desc=$(printf '%-8s %-5s %s workers: %-11s max/min' "$name" "$mode" "$WORKERS" "$([ $what = req ] && echo requests || echo connections)")
        if [ "$bad" != 0 ]; then
          fail "$desc $v   (in $bad round(s) the counts did not add up)"
        elif [ "$v" != inf ] && [ "$v" != NA ] && awk -v v="$v" -v l="$MAX_RATIO" 'BEGIN {exit !(v <= l)}'; then
          pass "$desc $v <= $MAX_RATIO"
        else
          fail "$desc $v > $MAX_RATIO"
        fi
      done
    done
  done
done
echo '```'
[ -n "$OUT_DIR" ] && echo "runs.tsv, wrk output and per-worker counts in $OUT_DIR"
if [ "$FAILS" -gt 0 ]; then
  echo "$FAILS check(s) failed"
  exit 1
fi
echo "all checks that ran passed"
exit 0
