#!/usr/bin/env bash
# Issue 16, item 1: workers at their descriptor limit must not die, reset clients, or
# leave the service down.
#
#   scripts/fault-fd-limit.sh                  # both probes
#   PROBES=held scripts/fault-fd-limit.sh      # one of them (held | wrk)
#
# The cluster runs with RUST_LOG=warn (its descriptor warnings are summed up at the end).
#
# Probe "held": every process of `http_cluster --workers WORKERS` at `ulimit -n LOW_LIMIT`
# (64); CLIENTS (300) clients each open one keep-alive connection with one `GET /` and
# hold it. The workers answer what they can hold; the rest wait in the kernel backlog.
# Once the answers stop coming (QUIET_MS), the answered clients hang up, 20 every 50 ms,
# and the waiting ones must be answered in turn.
#   PASS when: no connection is reset or closed unanswered, every client is answered
#   within HELD_DEADLINE s, the workers are the ones that started (none exited or was
#   replaced), and the cluster logged no restart.
#
# Probe "wrk": every process at `ulimit -n WRK_LIMIT` (1024); `wrk -t2 -c2500
# -dDURATION` (15 s; wrk itself runs at this shell's limit). Then `curl` must be answered
# at once, and the workers must be the ones that started (no exit, no restart logged).
# wrk's socket errors are expected (2500 connections cannot all be held) and reported.
#
# Env: POLICY (http_cluster --policy; unset: rr), WORKERS (2), CLIENTS (300), LOW_LIMIT (64), QUIET_MS (1000), HELD_DEADLINE (30),
#      WRK_LIMIT (1024), WRK_CONNS (2500), DURATION (15), PROBES ("held wrk"), SKIP_BUILD=1,
#      KEEP_DIR (copy the logs there).
# Exit status: 0 all assertions hold, 1 one failed, 2 the test itself could not run.
# Loopback only; every process started is stopped by its pid on exit.
# shellcheck disable=SC2015  # `A && pass … || fail …`: pass always succeeds
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-fd-limit
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORKERS=${WORKERS:-2}
CLIENTS=${CLIENTS:-300}
LOW_LIMIT=${LOW_LIMIT:-64}
QUIET_MS=${QUIET_MS:-1000}
HELD_DEADLINE=${HELD_DEADLINE:-30}
WRK_LIMIT=${WRK_LIMIT:-1024}
WRK_CONNS=${WRK_CONNS:-2500}
DURATION=${DURATION:-15}
PROBES=${PROBES:-"held wrk"}
whole_numbers WORKERS CLIENTS LOW_LIMIT QUIET_MS HELD_DEADLINE WRK_LIMIT WRK_CONNS DURATION
[ "$CLIENTS" -lt 500 ] || die "CLIENTS must stay below the backlog (511)"
[ "$(ulimit -Hn)" -ge $((CLIENTS + 64)) ] || die "this shell's hard fd limit is below CLIENTS + 64"
[ "$(ulimit -Hn)" -ge $((WRK_CONNS + 64)) ] || die "this shell's hard fd limit is below WRK_CONNS + 64 (wrk)"

prepare_http_cluster
export RUST_LOG=${RUST_LOG:-warn}
pre_cleanup() { track_cluster_workers; }
SHELL_LIMIT=$(ulimit -Sn)

# start_limited LOG LIMIT: start_cluster LOG --workers WORKERS with every process of the
# cluster at `ulimit -n LIMIT` (this shell's soft limit is lowered only around the start).
start_limited() {
  ulimit -Sn "$2"
  start_cluster "$1" --workers "$WORKERS" ${POLICY:+--policy "$POLICY"}
  ulimit -Sn "$SHELL_LIMIT"
  mapfile -t START_WORKERS < <(worker_pids "$PRIMARY")
  echo "  primary pid $PRIMARY, port $PORT, workers ${START_WORKERS[*]}; primary fds $(fd_count "$PRIMARY"), worker fds $(for w in "${START_WORKERS[@]}"; do fd_count "$w"; done | tr '\n' ' ')"
}

# same_workers WHAT LOG: the workers are the ones that started and nothing restarted.
same_workers() {
  local now restarts
  mapfile -t now < <(worker_pids "$PRIMARY")
  restarts=$(grep -Ec 'Restarting|BreakerTripped|ReplacementFailed' "$2" || true)
  [ "${now[*]}" = "${START_WORKERS[*]}" ] && pass "$1: workers unchanged (${now[*]})" ||
    fail "$1: workers were ${START_WORKERS[*]}, now ${now[*]:-none}"
  [ "$restarts" = 0 ] && pass "$1: no restart logged" ||
    fail "$1: $restarts restart/breaker lines in the cluster log"
}

probe_held() {
  local log=$TMP_DIR/held.log t0 last held=0 letting_go=0
  echo "== held: every process at ulimit -n $LOW_LIMIT, $CLIENTS clients each holding one connection with one request"
  start_limited "$log" "$LOW_LIMIT"
  CLOSED_COUNT=0
  open_clients "$CLIENTS" "$PORT"
  [ "$CONNECT_FAILS" = 0 ] || fail "held: $CONNECT_FAILS connects failed"
  t0=$(now_ms)
  last=$t0
  while [ ${#WAITING_FDS[@]} -gt 0 ] && [ $(($(now_ms) - t0)) -lt $((HELD_DEADLINE * 1000)) ]; do
    local before=${#WAITING_FDS[@]}
    poll_clients
    [ ${#WAITING_FDS[@]} != "$before" ] && last=$(now_ms)
    if [ "$letting_go" = 0 ] && [ $(($(now_ms) - last)) -ge "$QUIET_MS" ]; then
      letting_go=1
      held=${#ANSWERED_FDS[@]}
      echo "  answered while every client held on: $held; waiting in the backlog: ${#WAITING_FDS[@]}; reset so far: $RESET_COUNT"
    fi
    [ "$letting_go" = 1 ] && close_answered 20
    sleep 0.05
  done
  [ "$letting_go" = 1 ] || held=${#ANSWERED_FDS[@]}
  local answered=$((CLOSED_COUNT + ${#ANSWERED_FDS[@]}))
  echo "  answered $answered of $CLIENTS in $(($(now_ms) - t0)) ms; reset or closed unanswered: $RESET_COUNT; still waiting: ${#WAITING_FDS[@]}"
  close_answered "${#ANSWERED_FDS[@]}"
  for fd in ${WAITING_FDS[@]+"${WAITING_FDS[@]}"}; do exec {fd}>&-; done
  [ "$RESET_COUNT" = 0 ] && pass "held: 0 connections reset" || fail "held: $RESET_COUNT connections reset or closed unanswered"
  [ "$answered" = "$CLIENTS" ] && pass "held: every client answered (the waiting ones once held ones closed)" ||
    fail "held: $answered of $CLIENTS answered within ${HELD_DEADLINE}s"
  [ "$held" -lt "$CLIENTS" ] && echo "  (the limit bit: $held held at once)" || echo "  (note: the limit did not bite: all $held answered at once)"
  same_workers held "$log"
  stop_cluster || true
  grep -E 'descriptor|cannot accept|accept failed' "$log" | sort | uniq -c | head -5 | sed 's/^/  cluster log: /' || true
}

probe_wrk() {
  local log=$TMP_DIR/wrk.log out=$TMP_DIR/wrk.txt rc=0 req n2 c r wr to rps body
  echo "== wrk: every process at ulimit -n $WRK_LIMIT, wrk -t2 -c$WRK_CONNS -d${DURATION}s"
  start_limited "$log" "$WRK_LIMIT"
  timeout -k 5 $((DURATION + 30)) wrk -t2 -c"$WRK_CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT/" >"$out" 2>&1 || rc=$?
  read -r req _ n2 c r wr to rps _ <<<"$(parse_wrk "$out")"
  echo "  wrk (status $rc): $req requests, $rps req/s; socket errors connect $c, read $r, write $wr, timeout $to; non-2xx $n2"
  body=$(curl -s --max-time 3 "http://127.0.0.1:$PORT/" || true)
  [ "$body" = "hello world" ] && pass "wrk: curl answered right after" || fail "wrk: curl got '${body}' right after"
  [ "$req" -gt 0 ] && pass "wrk: $req requests served" || fail "wrk: no request served"
  same_workers wrk "$log"
  stop_cluster || true
  grep -E 'descriptor|cannot accept|accept failed' "$log" | sort | uniq -c | head -5 | sed 's/^/  cluster log: /' || true
}

echo "fault-fd-limit: WORKERS=$WORKERS POLICY=${POLICY:-default} PROBES='$PROBES' ($(nproc) CPUs, kernel $(uname -r))"
for p in $PROBES; do
  case $p in
    held) probe_held ;;
    wrk) probe_wrk ;;
    *) die "unknown probe $p (held | wrk)" ;;
  esac
done
if [ "$FAILS" -gt 0 ]; then
  echo "FAIL: $FAILS assertion(s) violated"
  exit 1
fi
echo "PASS: all assertions hold"
