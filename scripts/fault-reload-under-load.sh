#!/usr/bin/env bash
# Issue 6, fault test (b): rolling reload (SIGHUP) under keep-alive and
# connection-per-request load must fail no request.
#
#   scripts/fault-reload-under-load.sh                       # keep-alive, then Connection: close; 20 s each
#   DURATION=10 MODES=keepalive scripts/fault-reload-under-load.sh
#
# For each mode (MODES: "keepalive close"):
#  1. start `http_cluster --workers WORKERS --port 0` (127.0.0.1), check it answers, warm
#     it up (WARMUP s), note the primary (pid, start time) and its workers;
#  2. run `wrk -t1 -c64 -dDURATION` (keep-alive, or -H 'Connection: close') and send the
#     primary SIGHUP every HUP_EVERY seconds (at 2 s, 4 s, … before wrk's end); after each
#     one, watch the cluster log for the supervisor's `ReloadFinished` line (the example
#     prints every ReloadFinished/ReplacementFailed/Restarting event on stderr) and report
#     how long the reload took and which worker pids serve afterwards. A SIGHUP that
#     arrives while a reload is still running joins that reload (Supervisor::reload);
#     MODES may also include `idle` (not in the default): IDLE_CONNS (8) keep-alive
#     connections that made one request and then stay silent, beside the Connection:
#     close load — the case of pooled browser/proxy connections;
#  3. SNAPSHOT_MS (500) before wrk's end, while its connections are still open, note
#     which reloads had finished and which workers were live (after wrk closes its
#     connections a worker stuck draining them leaves at once, which would hide it).
#
# Assertions (any failure → exit 1):
#  - wrk: 0 socket errors (connect/read/write/timeout) and 0 non-2xx responses;
#  - the reloads really happened under the load: at least one `ReloadFinished(Ok(()))`
#    before wrk ended, none failed (`ReloadFinished(Err…)`/`ReplacementFailed`), and
#    none of the workers that served before the first SIGHUP is still alive when wrk
#    ends (every one was replaced while the load ran) — otherwise "0 errors" would be
#    vacuous (e.g. a reload stuck draining keep-alive connections until wrk stops);
#  - the primary never restarted and WORKERS workers are live at the end.
#
# Env: POLICY (http_cluster --policy; unset: rr), ACCEPT_WINDOW_MS (--accept-window-ms; unset: off), DURATION (20), WARMUP (2), WORKERS (2), MODES ("keepalive close"), HUP_EVERY (2),
#      SNAPSHOT_MS (500), IDLE_CONNS (8), SKIP_BUILD=1, KEEP_DIR (copy logs and wrk output there).
# Exit status: 0 all assertions hold, 1 one failed, 2 the test itself could not run.
# Loopback only; every process started is stopped by its pid on exit.
# shellcheck disable=SC2015  # `A && pass … || fail …`: pass always succeeds
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-reload-under-load
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-2}
WORKERS=${WORKERS:-2}
MODES=${MODES:-"keepalive close"}
POLICY=${POLICY:-}  # http_cluster --policy rr|none|reuseport (unset: its default, rr)
HUP_EVERY=${HUP_EVERY:-2}
SNAPSHOT_MS=${SNAPSHOT_MS:-500}
IDLE_CONNS=${IDLE_CONNS:-8}
# The supervisor logs (replacing worker…, did not drain in time…) at info/warn level.
export RUST_LOG=${RUST_LOG:-forkloop=info}
whole_numbers DURATION WARMUP WORKERS HUP_EVERY SNAPSHOT_MS IDLE_CONNS
[ "$HUP_EVERY" -ge 1 ] && [ "$DURATION" -gt "$HUP_EVERY" ] && [ "$WORKERS" -ge 1 ] ||
  die "need HUP_EVERY ≥ 1, DURATION > HUP_EVERY, WORKERS ≥ 1"

prepare_http_cluster

# On any exit: also stop the primary's current workers.
pre_cleanup() { track_cluster_workers; }

# open_idle N: N keep-alive connections (bash /dev/tcp) that make one request each, read
# the response and then stay idle, like browsers' pooled connections.
IDLE_FDS=()
open_idle() {
  local i fd status line
  for ((i = 0; i < $1; i++)); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$PORT" || die "cannot connect to port $PORT"
    IDLE_FDS+=("$fd")
    printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' >&"$fd"
    read -r -t 3 -u "$fd" status || die "idle connection $i: no response"
    [[ $status == "HTTP/1.1 200"* ]] || die "idle connection $i: $status"
    while read -r -t 3 -u "$fd" line && [ "${line%$'\r'}" != "" ]; do :; done
    read -r -t 3 -N 12 -u "$fd" _ || die "idle connection $i: no body"
  done
  echo "  $1 idle keep-alive connections open (one request each, then silent)"
}
# check_idle: how many of them the server has closed so far (EOF), then close ours.
check_idle() {
  local fd n=0 rc
  for fd in "${IDLE_FDS[@]}"; do
    rc=0
    read -r -t 0.05 -u "$fd" _ || rc=$?
    # 1: EOF (closed by the server); > 128: still open and silent.
    if [ "$rc" = 1 ]; then n=$((n + 1)); fi
    exec {fd}>&-
  done
  echo "  idle connections closed by the server (EOF) before wrk's end: $n of ${#IDLE_FDS[@]}"
  IDLE_FDS=()
}

count() { grep -c -- "$2" "$1" || true; }

run_mode() {
  local mode=$1 log wrk_out wrk_pid st0 t_start k ms before t_hup done_ms until_ms rc
  local -a first end_pids
  local ok_during fail_during leftover w req errs n2 c r wr to rps line
  HDR=()
  case $mode in
    keepalive) ;;
    close | idle) HDR=(-H 'Connection: close') ;;
    *) die "unknown mode $mode (keepalive|close|idle)" ;;
  esac
  log=$TMP_DIR/cluster-$mode.log
  wrk_out=$TMP_DIR/wrk-$mode.txt
  echo "== mode $mode: http_cluster --workers $WORKERS, wrk -t1 -c64 -d${DURATION}s ${HDR[*]:-(keep-alive)}, SIGHUP every ${HUP_EVERY}s"
  start_warm_cluster "$log"
  st0=$(starttime "$PRIMARY")
  mapfile -t first < <(worker_pids "$PRIMARY")
  echo "  primary pid $PRIMARY, port $PORT; workers before the first SIGHUP: ${first[*]}"
  [ ${#first[@]} = "$WORKERS" ] || fail "$mode: ${#first[@]} workers before the load (expected $WORKERS)"
  IDLE_FDS=()
  [ "$mode" != idle ] || open_idle "$IDLE_CONNS"

  start_load "$wrk_out"
  wrk_pid=$WRK_PID
  t_start=$T_START
  for ((k = HUP_EVERY; k < DURATION; k += HUP_EVERY)); do
    sleep_until_second "$k"
    alive "$wrk_pid" || break
    if ! alive "$PRIMARY" || [ "$(starttime "$PRIMARY")" != "$st0" ]; then
      fail "$mode: the primary is gone at ${k}s"
      break
    fi
    before=$(count "$log" 'ReloadFinished')
    t_hup=$(now_ms)
    kill -HUP "$PRIMARY"
    # Watch for the reload's end until just before the next SIGHUP (or the snapshot).
    done_ms=
    until_ms=$((t_hup + HUP_EVERY * 1000 - 150))
    ((until_ms < t_start + DURATION * 1000 - SNAPSHOT_MS)) || until_ms=$((t_start + DURATION * 1000 - SNAPSHOT_MS - 50))
    while [ "$(now_ms)" -lt "$until_ms" ] && alive "$wrk_pid"; do
      if [ "$(count "$log" 'ReloadFinished')" -gt "$before" ]; then done_ms=$(($(now_ms) - t_hup)); break; fi
      sleep 0.02
    done
    if [ -n "$done_ms" ]; then
      printf '  SIGHUP at %5.1fs: %s after %4d ms; workers now %s\n' \
        "$(awk -v a="$t_hup" -v b="$t_start" 'BEGIN {printf "%.1f", (a - b) / 1000}')" \
        "$(grep 'ReloadFinished' "$log" | tail -1 | sed 's/^supervisor: //')" "$done_ms" "$(worker_pids "$PRIMARY" | tr '\n' ' ')"
    else
      printf '  SIGHUP at %5.1fs: reload still running %d ms later; live workers %s\n' \
        "$(awk -v a="$t_hup" -v b="$t_start" 'BEGIN {printf "%.1f", (a - b) / 1000}')" \
        $(($(now_ms) - t_hup)) "$(worker_pids "$PRIMARY" | tr '\n' ' ')"
    fi
  done
  # Snapshot just before wrk's end, while its connections are still open: once wrk stops,
  # a worker stuck draining keep-alive connections leaves at once and would hide it.
  ms=$((t_start + DURATION * 1000 - SNAPSHOT_MS - $(now_ms)))
  if [ "$ms" -gt 0 ]; then sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"; fi
  alive "$wrk_pid" || fail "$mode: wrk ended before the snapshot (${SNAPSHOT_MS} ms before its end)"
  ok_during=$(count "$log" 'ReloadFinished(Ok')
  fail_during=$(( $(count "$log" 'ReloadFinished(Err') + $(count "$log" 'ReplacementFailed') ))
  mapfile -t end_pids < <(worker_pids "$PRIMARY")
  leftover=()
  for w in "${first[@]}"; do if alive "$w"; then leftover+=("$w"); fi; done
  [ "$mode" != idle ] || check_idle
  rc=0
  wait "$wrk_pid" || rc=$?
  [ "$rc" = 0 ] || fail "$mode: wrk exited with status $rc: $(tail -3 "$wrk_out" | tr '\n' ' ')"

  echo "  -- $mode results"
  read -r req errs n2 c r wr to rps _ <<<"$(parse_wrk "$wrk_out")"
  line=$(grep -m1 'requests in' "$wrk_out" || echo "(no wrk summary)")
  echo "  wrk: ${line## }; $rps req/s; socket errors: connect $c, read $r, write $wr, timeout $to (total $errs); non-2xx $n2"
  echo "  ${SNAPSHOT_MS} ms before wrk's end: $ok_during reload(s) finished OK, $fail_during failure event(s); live workers: ${end_pids[*]}; first-generation workers still alive: ${leftover[*]:-none}"
  [ "$errs" = 0 ] && pass "$mode: 0 socket errors" || fail "$mode: $errs socket errors (connect $c, read $r, write $wr, timeout $to)"
  [ "$n2" = 0 ] && pass "$mode: 0 non-2xx responses" || fail "$mode: $n2 non-2xx responses"
  [ "$req" -gt 0 ] || fail "$mode: wrk completed no request"
  [ "$ok_during" -ge 1 ] && pass "$mode: $ok_during rolling reload(s) completed while the load ran" ||
    fail "$mode: no rolling reload completed while the load ran"
  [ "$fail_during" = 0 ] || fail "$mode: $fail_during reload failure event(s) (see the cluster log below)"
  [ ${#leftover[@]} = 0 ] && pass "$mode: every first-generation worker was replaced during the load" ||
    fail "$mode: first-generation worker(s) ${leftover[*]} still alive when the load ended (not drained)"

  # After the load: the reload (if stuck) can finish now that wrk closed its connections.
  for _ in $(seq 1 50); do
    [ "$(live_children "$PRIMARY" | wc -l)" = "$WORKERS" ] && break
    sleep 0.1
  done
  if alive "$PRIMARY" && [ "$(starttime "$PRIMARY")" = "$st0" ]; then
    pass "$mode: primary never restarted (pid $PRIMARY)"
  else
    fail "$mode: the primary died or was replaced"
  fi
  [ "$(live_children "$PRIMARY" | wc -l)" = "$WORKERS" ] && pass "$mode: $WORKERS workers live after the load" ||
    fail "$mode: $(live_children "$PRIMARY" | wc -l) workers live 5 s after the load (expected $WORKERS)"
  echo "  after the load: $(count "$log" 'ReloadFinished(Ok') reload(s) finished OK in all"

  stop_cluster || true
  grep -v '^listening on ' "$log" | sed -E 's/^\[[^ ]+ /[/; s/worker: [0-9]+/worker: N/; s/worker [0-9]+/worker N/' | sort | uniq -c | sort -rn | head -8 | sed 's/^/  cluster log: /' || true
}

echo "fault-reload-under-load: DURATION=${DURATION}s WORKERS=$WORKERS HUP_EVERY=${HUP_EVERY}s MODES='$MODES' POLICY=${POLICY:-default} ACCEPT_WINDOW_MS=${ACCEPT_WINDOW_MS:-off} ($(nproc) CPUs, kernel $(uname -r))"
for mode in $MODES; do
  run_mode "$mode"
  sleep 1
done
if [ "$FAILS" -gt 0 ]; then
  echo "FAIL: $FAILS assertion(s) violated"
  exit 1
fi
echo "PASS: all assertions hold"
