#!/usr/bin/env bash
# Issue 14: SIGKILL of a Node.js worker → its replacement listening, under Node's own
# primary and under `forkloop run`, the same unmodified app measured the same way.
#
#   scripts/node-replace-compare.sh                 # RUNS=3 of ITERATIONS=10 each (~2 min)
#   RUNS=1 ITERATIONS=3 scripts/node-replace-compare.sh
#
# The app is benches/peers/js/replace-app.js (2 workers serving hello world; under plain
# `node` its primary forks a replacement on every exit). benches/peers/js/replace-driver.js
# starts the cluster, kills the oldest worker with SIGKILL every ~1.1 s (so it counts as
# stable: both primaries replace it at once) and takes, from the monotonic clock, the time
# from just before the kill to the moment the replacement's server listens (the worker
# prints its own timestamp, so the primaries' output forwarding does not count). Each
# round runs both (the order alternates); the table gives the median of the per-run
# medians and their range; the check: forkloop's median ≤ Node's.
#
# Needs node (apt-get install -y nodejs); builds the forkloop command (unless SKIP_BUILD=1).
# Env: RUNS (3), ITERATIONS (10), SKIP_BUILD=1.
# Exit status: 0 the check passes, 1 it is missed, 2 the benchmark itself failed.
# Everything runs on 127.0.0.1; every process started is stopped on exit.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=node-replace-compare
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RUNS=${RUNS:-3}
ITERATIONS=${ITERATIONS:-10}
[[ $RUNS =~ ^[1-9][0-9]*$ && $ITERATIONS =~ ^[1-9][0-9]*$ ]] || die "RUNS and ITERATIONS must be positive integers"
need node nodejs
need timeout coreutils
CLI=target/release/forkloop
if [ "${SKIP_BUILD:-0}" != 1 ]; then build_retry cargo build --release --quiet --bin forkloop; fi
[ -x "$CLI" ] || die "missing $CLI"
cp "$CLI" "$TMP_DIR/forkloop"
APP=benches/peers/js/replace-app.js
DRIVER=benches/peers/js/replace-driver.js
LIMIT=$((60 + ITERATIONS * 5))

echo "node-replace-compare: RUNS=$RUNS ITERATIONS=$ITERATIONS ($(nproc) CPUs, kernel $(uname -r), node $(node --version))"
declare -A MEDIANS=([node]="" [forkloop]="")
run_one() {
  local who=$1 out=$TMP_DIR/$1-$2.txt port rc=0
  port=$(free_port) || die "no free port"
  wait_quiet
  if [ "$who" = node ]; then
    PORT=$port timeout -k 5 "$LIMIT" node "$DRIVER" "$ITERATIONS" node "$APP" >"$out" 2>&1 || rc=$?
  else
    PORT=$port timeout -k 5 "$LIMIT" node "$DRIVER" "$ITERATIONS" "$TMP_DIR/forkloop" run --workers 2 -- node "$APP" >"$out" 2>&1 || rc=$?
  fi
  [ "$rc" = 0 ] || { tail -5 "$out" >&2; die "$who run $2 failed (status $rc)"; }
  local m
  m=$(sed -n 's/^summary .*median_ms=\([0-9.]*\).*/\1/p' "$out")
  [ -n "$m" ] || die "$who run $2: no summary line"
  echo "  round $2 $who: $(grep '^summary' "$out")"
  MEDIANS[$who]+="$m "
}
for ((r = 1; r <= RUNS; r++)); do
  if ((r % 2)); then run_one forkloop "$r"; run_one node "$r"; else run_one node "$r"; run_one forkloop "$r"; fi
done
med() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "%.2f (%.2f–%.2f)", m, v[1], v[NR]}'; }
fl=$(med "${MEDIANS[forkloop]}")
nd=$(med "${MEDIANS[node]}")
echo
echo "| SIGKILL → replacement listening, median of run medians (ms) | forkloop run | Node's primary |"
echo "|---|---|---|"
echo "| 2 workers, $ITERATIONS kills per run, $RUNS runs | $fl | $nd |"
ratio=$(awk -v a="${fl%% *}" -v b="${nd%% *}" 'BEGIN {printf "%.2f", a / b}')
if awk -v r="$ratio" 'BEGIN {exit !(r <= 1.0)}'; then
  echo "PASS: forkloop run / Node's primary = $ratio (<= 1.0)"
else
  echo "MISS: forkloop run / Node's primary = $ratio (> 1.0)"
  exit 1
fi
