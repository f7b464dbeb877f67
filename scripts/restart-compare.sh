#!/usr/bin/env bash
# Issue 6: worker (re)start latency, forkloop (examples/restart_bench.rs) against Node's
# cluster (benches/peers/js/restart.js), run alternately, then the acceptance check
# "worker SIGKILL → replacement online: median ≤ 5 ms and ≥ 10× faster than Node's".
#
#   scripts/restart-compare.sh                    # RUNS=3 of ITERATIONS=20 each (~1.5 min)
#   RUNS=1 ITERATIONS=5 scripts/restart-compare.sh   # quick smoke run
#   BENCH_ARGS=--default-policy scripts/restart-compare.sh
#
# Each round runs both programs once (forkloop first in odd rounds, Node first in even
# ones). Before every program the script waits for the machine to be quiet (QUIET_CORES
# over 1 s, at most QUIET_MAX_S); during it, it measures the CPU used by other work
# ("foreign", in cores) and repeats a run that had more than FOREIGN_MAX of it (at most
# FOREIGN_RETRIES times). Each program prints `summary NAME n=… median_ms=…` lines; the
# table gives the median of the per-run medians (and their min–max), the check uses it.
#
# What is measured (both sides, see the programs' headers): fork_to_online /
# fork_to_listening for a fresh worker; kill_to_exit / kill_to_online / kill_to_listening
# from just before SIGKILL of the oldest of two workers to the primary's exit event and
# the replacement's online / listening events. Node's replacement is forked by the
# primary's 'exit' handler; forkloop's by the Supervisor (restart_bench's `restart` phase;
# its `refork` phase mirrors restart.js exactly and is shown for information). By default
# restart_bench sets the supervisor's min_uptime to 0 so that a worker killed every
# ~100 ms counts as stable and is restarted at once (the immediate path, which is the
# default for any worker that has been up 1 s); BENCH_ARGS=--default-policy keeps the
# default policy and waits 1.1 s between kills instead.
#
# Needs node (apt-get install -y nodejs).
# Env: RUNS (3), ITERATIONS (20), BENCH_ARGS (extra
#      restart_bench arguments), QUIET_CORES (0.15), QUIET_MAX_S (120), FOREIGN_MAX
#      (0.10), FOREIGN_RETRIES (2), SKIP_BUILD=1, KEEP_DIR (copy the raw outputs there).
# Exit status: 0 the check passes, 1 it is missed, 2 the benchmark itself failed.
# Everything runs on 127.0.0.1; every process started is stopped by its pid on exit.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=restart-compare
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RUNS=${RUNS:-3}
ITERATIONS=${ITERATIONS:-20}
BENCH_ARGS=${BENCH_ARGS:-}
FOREIGN_MAX=${FOREIGN_MAX:-0.10}
FOREIGN_RETRIES=${FOREIGN_RETRIES:-2}
[[ $RUNS =~ ^[1-9][0-9]*$ && $ITERATIONS =~ ^[1-9][0-9]*$ ]] || die "RUNS and ITERATIONS must be positive integers"
METRICS=(fork_to_online fork_to_listening kill_to_exit kill_to_online kill_to_listening)
EXTRA=(refork_kill_to_exit refork_kill_to_online refork_kill_to_listening)
BENCH=target/release/examples/restart_bench
NODE_JS=benches/peers/js/restart.js
# Each program needs ~3 × ITERATIONS × 0.2 s (1.3 s per kill with --default-policy).
RUN_TIMEOUT=$((60 + ITERATIONS * 5))

need node nodejs
need ss iproute2
need timeout coreutils
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  build_retry cargo build --release --quiet --example restart_bench
fi
[ -x "$BENCH" ] || die "missing $BENCH"

# run_one WHO ROUND: runs forkloop or node once (repeating a noisy run); output in
# $TMP_DIR/WHO-ROUND.txt; sets FOREIGN.
run_one() {
  local who=$1 round=$2 out try=0 b0 b1 c0 c1 t0 t1 pid rc port
  out="$TMP_DIR/$who-$round.txt"
  while :; do
    wait_quiet
    b0=$(sys_busy); read_child_ticks; c0=$CHILD_TICKS; t0=$EPOCHREALTIME
    if [ "$who" = forkloop ]; then
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
      timeout -k 5 "$RUN_TIMEOUT" "$BENCH" "$ITERATIONS" $BENCH_ARGS >"$out" 2>"$out.err" &
    else
      port=$(free_port) || die "no free port"
      PORT=$port timeout -k 5 "$RUN_TIMEOUT" node "$NODE_JS" "$ITERATIONS" >"$out" 2>"$out.err" &
    fi
    pid=$!
    track "$pid"
    rc=0
    wait "$pid" || rc=$?
    b1=$(sys_busy); read_child_ticks; c1=$CHILD_TICKS; t1=$EPOCHREALTIME
    [ "$rc" = 0 ] || die "$who run $round failed (status $rc): $(tail -5 "$out.err" | tr '\n' ' ')"
    FOREIGN=$(awk -v b=$((b1 - b0)) -v o=$((c1 - c0)) -v a="$t0" -v z="$t1" -v h="$CLK_TCK" \
      'BEGIN {s = z - a; f = (b - o) / h / s; if (f < 0) f = 0; printf "%.2f", f}')
    if awk -v f="$FOREIGN" -v m="$FOREIGN_MAX" 'BEGIN {exit !(f > m)}' && [ "$try" -lt "$FOREIGN_RETRIES" ]; then
      try=$((try + 1))
      mv "$out" "$out.discarded-$try"
      echo "  $who round $round: other work used $FOREIGN cores; discarded, repeating" >&2
      continue
    fi
    break
  done
  echo "foreign_cores=$FOREIGN" >>"$out"
}

# median V...: median of the numbers (NA if none).
median() {
  [ $# -gt 0 ] || { echo NA; return; }
  printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {n = NR; printf "%.2f\n", (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2}'
}
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f–%.2f", lo, hi}'; }

declare -A MED   # MED[who:metric] = " m1 m2 ..." (run medians)
START=$(date -u +%Y-%m-%dT%H:%MZ)
echo "restart-compare: RUNS=$RUNS ITERATIONS=$ITERATIONS BENCH_ARGS='${BENCH_ARGS}' node $(node --version)" >&2
for ((r = 1; r <= RUNS; r++)); do
  if ((r % 2)); then order=(forkloop node); else order=(node forkloop); fi
  for who in "${order[@]}"; do
    echo "== round $r/$RUNS: $who" >&2
    run_one "$who" "$r"
    out="$TMP_DIR/$who-$r.txt"
    if [ "$who" = forkloop ]; then names=("${METRICS[@]}" "${EXTRA[@]}"); else names=("${METRICS[@]}"); fi
    for m in "${names[@]}"; do
      line=$(grep -m1 "^summary $m " "$out") || die "$who run $r printed no 'summary $m' line (see $out)"
      [ "$(kv n "$line")" = "$ITERATIONS" ] || die "$who run $r: $line (expected n=$ITERATIONS)"
      MED[$who:$m]="${MED[$who:$m]:-} $(kv median_ms "$line")"
      printf '  %-8s run %s: %s\n' "$who" "$r" "$line" >&2
    done
    [ "$who" = forkloop ] && grep -m1 '^config ' "$out" | sed 's/^/  forkloop: /' >&2
    echo "  $who run $r: foreign CPU $FOREIGN cores" >&2
    sleep 1
  done
done

# shellcheck disable=SC2086  # MED values are space-separated lists, split on purpose
cell() {
  local m; m=$(median ${MED[$1]:-})
  if [ "$m" = NA ]; then echo "–"; elif [ "$RUNS" = 1 ]; then echo "$m"; else echo "$m ($(minmax ${MED[$1]}))"; fi
}
# shellcheck disable=SC2086
ratio() {
  local a b; a=$(median ${MED[$1]:-}); b=$(median ${MED[$2]:-})
  if [ "$a" = NA ] || [ "$b" = NA ]; then echo NA; return; fi
  awk -v a="$a" -v b="$b" 'BEGIN {if (b <= 0) print "NA"; else printf "%.1f\n", a / b}'
}

echo
echo "<!-- scripts/restart-compare.sh; $(machine_note), node $(node --version); started $START; RUNS=$RUNS ITERATIONS=$ITERATIONS BENCH_ARGS='${BENCH_ARGS}' -->"
echo "forkloop: \`$BENCH $ITERATIONS ${BENCH_ARGS}\` ($(grep -h -m1 '^config ' "$TMP_DIR"/forkloop-1.txt | cut -d' ' -f2-)); Node: \`node $NODE_JS $ITERATIONS\`."
echo "Each cell: median of the $RUNS run medians, ms (min–max of the run medians)."
echo
echo "| interval | forkloop | Node | Node ÷ forkloop |"
echo "|---|---|---|---|"
for m in "${METRICS[@]}"; do
  printf '| %s | %s | %s | %s× |\n' "$m" "$(cell "forkloop:$m")" "$(cell "node:$m")" "$(ratio "node:$m" "forkloop:$m")"
done
for m in "${EXTRA[@]}"; do
  base=${m#refork_}
  printf '| %s (primary forks on exit, as restart.js) | %s | %s | %s× |\n' "$base" "$(cell "forkloop:$m")" "$(cell "node:$base")" "$(ratio "node:$base" "forkloop:$m")"
done

echo
echo "Acceptance (worker SIGKILL → replacement online, supervised restart):"
MISSES=0
check() {
  local desc=$1 v=$2 op=$3 lim=$4 ok
  [ "$v" != NA ] || { echo "  FAIL  $desc: not measured"; MISSES=$((MISSES + 1)); return; }
  ok=$(awk -v v="$v" -v l="$lim" -v op="$op" 'BEGIN {print (op == ">=" ? v >= l : v <= l) ? 1 : 0}')
  if [ "$ok" = 1 ]; then echo "  PASS  $desc: $v $op $lim"; else echo "  FAIL  $desc: $v (needs $op $lim)"; MISSES=$((MISSES + 1)); fi
}
# shellcheck disable=SC2086
check "kill_to_online median (ms)" "$(median ${MED[forkloop:kill_to_online]})" "<=" 5
check "Node kill_to_online ÷ forkloop kill_to_online" "$(ratio node:kill_to_online forkloop:kill_to_online)" ">=" 10
# Per round, for information: the ratio within each round.
for ((r = 1; r <= RUNS; r++)); do
  a=$(kv median_ms "$(grep -m1 '^summary kill_to_online ' "$TMP_DIR/node-$r.txt")")
  b=$(kv median_ms "$(grep -m1 '^summary kill_to_online ' "$TMP_DIR/forkloop-$r.txt")")
  printf '  info  round %s: kill_to_online forkloop %s ms, Node %s ms (%s×); foreign CPU forkloop %s, Node %s cores\n' "$r" "$b" "$a" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.1f", a / b}')" \
    "$(sed -n 's/^foreign_cores=//p' "$TMP_DIR/forkloop-$r.txt")" "$(sed -n 's/^foreign_cores=//p' "$TMP_DIR/node-$r.txt")"
done
if [ "$MISSES" -gt 0 ]; then
  echo "FAIL: $MISSES check(s) missed"
  exit 1
fi
echo "PASS: all checks"
