#!/usr/bin/env bash
# Issue 16 item 3: reload and scale races must not corrupt the worker table.
#
#   scripts/fault-reload-races.sh                 # RUNS=3 of each race, rr
#   POLICY=reuseport RUNS=5 scripts/fault-reload-races.sh
#
# Race A (RUNS times): `http_cluster --workers 2 --port 0`; once the workers are up
# ≥ 1.2 s, `kill -HUP $P; kill -9 <oldest worker>`. Then:
#  - after 3 s, exactly 2 workers run (the bug left 3: the killed worker was restarted
#    while its replacement also took the slot);
#  - a following SIGHUP replaces every worker (none of the previous pids alive, 2 run);
#  - SIGTTOU leaves 1 worker.
# Race B (RUNS times): the same cluster with SLOW_CONNS (4) connections that sent half a
# request (both workers hold some, so they keep draining), then
# `kill -HUP $P; kill -TTOU $P`. After HOLD_S (2) seconds the slow connections close:
#  - within 10 s exactly 1 worker runs (the removed one drained and left; the reload
#    ended — the bug hung it for good);
#  - a following SIGHUP replaces that worker (the bug ignored every later SIGHUP).
# Each cluster must exit with status 0 on SIGTERM.
#
# Env: POLICY (http_cluster --policy; unset: rr), RUNS (3), SLOW_CONNS (4), HOLD_S (2),
#      SKIP_BUILD=1, KEEP_DIR (copy logs there).
# Exit status: 0 all PASS, 1 some FAIL, 2 the test itself could not run.
# Loopback only; bounded; every process started is stopped by its pid on exit.
# shellcheck disable=SC2015  # `A && pass … || fail …`: pass always succeeds
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-reload-races
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RUNS=${RUNS:-3}
SLOW_CONNS=${SLOW_CONNS:-4}
HOLD_S=${HOLD_S:-2}
POLICY=${POLICY:-}
export RUST_LOG=${RUST_LOG:-forkloop=info}
whole_numbers RUNS SLOW_CONNS HOLD_S

build_http_cluster

pre_cleanup() { track_cluster_workers; }

count() { worker_pids "$PRIMARY" | wc -l; }
# settle_to N T: waits up to T s for exactly N workers; prints the count seen last.
settle_to() {
  local n=$1 t=$2 c
  for _ in $(seq 1 $((t * 10))); do
    c=$(count)
    if [ "$c" = "$n" ]; then echo "$c"; return 0; fi
    sleep 0.1
  done
  echo "$c"
  return 1
}
# none_alive PID...: none of them is alive.
none_alive() { local p; for p in "$@"; do alive "$p" && return 1; done; return 0; }
# replaced_all N: SIGHUP, then up to 10 s for N workers none of which ran before.
replaced_all() {
  local n=$1 before
  mapfile -t before < <(worker_pids "$PRIMARY")
  kill -HUP "$PRIMARY"
  for _ in $(seq 1 100); do
    if none_alive "${before[@]}" && [ "$(count)" = "$n" ]; then return 0; fi
    sleep 0.1
  done
  return 1
}
stop_and_check() {
  local rc=0
  kill -TERM "$PRIMARY"
  for _ in $(seq 1 100); do alive "$PRIMARY" || break; sleep 0.1; done
  if alive "$PRIMARY"; then fail "$1: primary still running 10 s after SIGTERM"; return; fi
  wait "$PRIMARY" || rc=$?
  [ "$rc" = 0 ] && pass "$1: SIGTERM -> exit 0" || fail "$1: SIGTERM -> exit $rc"
  PRIMARY=
}

for run in $(seq 1 "$RUNS"); do
  echo "race A, run $run: kill -HUP \$P; kill -9 <oldest worker>"
  start_cluster "$TMP_DIR/a$run.log" --workers 2 ${POLICY:+--policy "$POLICY"}
  sleep 1.2
  oldest=$(worker_pids "$PRIMARY" | head -n1)
  kill -HUP "$PRIMARY"
  kill -9 "$oldest"
  sleep 3
  c=$(settle_to 2 5) && pass "A$run: $c workers for --workers 2" || fail "A$run: $c workers for --workers 2"
  replaced_all 2 && pass "A$run: a following SIGHUP replaced every worker" ||
    fail "A$run: a following SIGHUP did not replace every worker ($(count) running)"
  kill -TTOU "$PRIMARY"
  c=$(settle_to 1 10) && pass "A$run: SIGTTOU -> $c worker" || fail "A$run: SIGTTOU -> $c workers"
  stop_and_check "A$run"
done

for run in $(seq 1 "$RUNS"); do
  echo "race B, run $run: kill -HUP \$P; kill -TTOU \$P while the removed worker drains"
  start_cluster "$TMP_DIR/b$run.log" --workers 2 ${POLICY:+--policy "$POLICY"}
  SLOW=()
  for _ in $(seq 1 "$SLOW_CONNS"); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$PORT" || die "cannot connect to port $PORT"
    printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n' >&"$fd"  # no blank line: unfinished
    SLOW+=("$fd")
  done
  sleep 0.3
  kill -HUP "$PRIMARY"
  kill -TTOU "$PRIMARY"
  sleep "$HOLD_S"
  for fd in "${SLOW[@]}"; do exec {fd}>&-; done
  c=$(settle_to 1 10) && pass "B$run: $c worker for a target of 1 once the slow connections closed" ||
    fail "B$run: $c workers for a target of 1"
  replaced_all 1 && pass "B$run: a following SIGHUP replaced the worker" ||
    fail "B$run: a following SIGHUP did not replace the worker ($(count) running)"
  stop_and_check "B$run"
done

if [ "$FAILS" -eq 0 ]; then echo "PASS fault-reload-races"; else echo "FAIL fault-reload-races ($FAILS failed)"; exit 1; fi
