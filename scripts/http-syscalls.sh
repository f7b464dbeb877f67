#!/usr/bin/env bash
# Where a forkloop http_cluster (or the raw mio server) spends its CPU per connection
# under `wrk -t1 -c64 -H 'Connection: close'`: a companion to scripts/http-compare.sh
# for diagnosing its CPU checks.
#
#   scripts/http-syscalls.sh                      # fl-rr fl-reuseport mio-2
#   SERVERS="fl-rr@4 fl-rr@16" scripts/http-syscalls.sh
#
# Per server, two runs:
#  1. untraced (DURATION, default 10s): connections/s and, per process role (primary /
#     each worker), user and system CPU µs per connection from /proc/PID/stat;
#  2. with `perf stat` counting syscall entries (tracepoints; this slows every syscall,
#     so rates and the counts of timing-dependent calls — epoll_wait, EAGAIN reads,
#     batched acks — shift; per-connection counts of the structural calls do not):
#     syscalls per connection per role over a TRACE_S window (default 5 s).
# Connections are counted by wrk (run 1) and, per process, by its close() calls (run 2:
# every server process closes each connection it served once; the rr primary closes its
# copy of each handed-off descriptor once).
# Needs wrk and perf (apt-get install -y wrk linux-perf) with tracepoint access (root).
# Servers as in scripts/servers.sh (WORKERS, default 2); it measures private copies.
# Env: SERVERS, DURATION (10s), TRACE_S (5), SKIP_BUILD=1.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=http-syscalls
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/servers.sh
source scripts/servers.sh
QUIET_SECS=${QUIET_SECS:-3}
QUIET_MAX_S=${QUIET_MAX_S:-300}

SERVERS=${SERVERS:-"fl-rr fl-reuseport mio-2"}
SECS=${DURATION:-10s}; SECS=${SECS%s}
TRACE_S=${TRACE_S:-5}
SYSCALLS="accept4 sendmsg recvmsg recvfrom read sendto write writev shutdown close epoll_ctl epoll_wait setsockopt ioctl fcntl"
need wrk wrk
need perf linux-perf
read -r -a SERVER_LIST <<<"$SERVERS"
prepare_servers "${SERVER_LIST[@]}"

# start NAME: start_server NAME (scripts/servers.sh); sets ROLE_PIDS ("role:pid" for
# every server process).
start() {
  local p i=1
  start_server "$1"
  ROLE_PIDS=()
  for p in ${PRIMARY[@]+"${PRIMARY[@]}"}; do ROLE_PIDS+=("primary:$p"); done
  for p in "${OTHERS[@]}"; do
    if [ ${#PRIMARY[@]} -gt 0 ]; then ROLE_PIDS+=("worker$i:$p"); else ROLE_PIDS+=("process$i:$p"); fi
    i=$((i + 1))
  done
}

stop() { stop_server "$1"; }

ticks() { awk '{sub(/.*\) /, ""); print $12, $13}' "/proc/$1/stat"; }

close_wrk() { timeout -k 5 $(($1 + 20)) wrk -t1 -c64 -d"$1s" -H 'Connection: close' "http://127.0.0.1:$PORT/"; }

for name in $SERVERS; do
  echo "== $name"
  start "$name"
  timeout 20 wrk -t1 -c64 -d2s "http://127.0.0.1:$PORT/" >/dev/null
  # 1. untraced
  wait_quiet
  declare -A U0=() S0=()
  for rp in "${ROLE_PIDS[@]}"; do read -r U0[$rp] S0[$rp] < <(ticks "${rp#*:}"); done
  b0=$(sys_busy); read_child_ticks; t0=$CHILD_TICKS
  close_wrk "$SECS" >"$TMP_DIR/wrk1"
  b1=$(sys_busy); read_child_ticks; t1=$CHILD_TICKS
  req=$(awk '/ requests in / {print $1}' "$TMP_DIR/wrk1")
  ours=0
  for rp in "${ROLE_PIDS[@]}"; do read -r u s < <(ticks "${rp#*:}"); ours=$((ours + u + s - U0[$rp] - S0[$rp])); done
  ours=$((ours + t1 - t0))
  printf '  untraced: %s conn/s (%s connections in %ss); other work on the machine: %s cores\n' \
    "$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$TMP_DIR/wrk1")" "$req" "$SECS" \
    "$(awk -v b=$((b1 - b0 - ours)) -v h="$CLK_TCK" -v s="$SECS" 'BEGIN {f = b / h / s; printf "%.2f", f < 0 ? 0 : f}')"
  printf '  %-10s %10s %10s %10s   (CPU µs per connection of the whole run)\n' role user sys total
  for rp in "${ROLE_PIDS[@]}"; do
    read -r u s < <(ticks "${rp#*:}")
    awk -v r="${rp%%:*}" -v u=$((u - U0[$rp])) -v s=$((s - S0[$rp])) -v h="$CLK_TCK" -v n="$req" \
      'BEGIN {printf "  %-10s %10.1f %10.1f %10.1f\n", r, u / h * 1e6 / n, s / h * 1e6 / n, (u + s) / h * 1e6 / n}'
  done
  # 2. syscall counts
  wait_quiet
  ev=$(for s in $SYSCALLS; do printf 'syscalls:sys_enter_%s,' "$s"; done)
  pids=$(for rp in "${ROLE_PIDS[@]}"; do printf '%s,' "${rp#*:}"; done)
  close_wrk $((TRACE_S + 4)) >"$TMP_DIR/wrk2" &
  wrk_pid=$!
  sleep 2
  timeout $((TRACE_S + 10)) perf stat --per-thread -x, -e "${ev%,}" -p "${pids%,}" -- sleep "$TRACE_S" 2>"$TMP_DIR/perf" || true
  wait "$wrk_pid" || true
  printf '  traced (perf stat, %ss window; wrk ran at %s conn/s): syscalls per connection\n' "$TRACE_S" \
    "$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$TMP_DIR/wrk2")"
  {
    printf '  %-10s %8s' role conns
    for s in $SYSCALLS; do printf ' %9s' "${s/epoll_/e_}"; done
    printf ' %9s\n' total
    for rp in "${ROLE_PIDS[@]}"; do
      role=${rp%%:*} pid=${rp#*:}
      awk -F, -v pid="$pid" -v role="$role" -v list="$SYSCALLS" '
        { split($1, t, "-"); if (t[length(t)] != pid) next
          ev = $4; sub(/.*sys_enter_/, "", ev); c[ev] = $2 + 0 }
        END {
          n = split(list, names, " ")
          conns = c["close"]  # one per connection everywhere (the rr primary closes its copy)
          if (conns == 0) { printf "  %-10s no connections counted\n", role; exit }
          printf "  %-10s %8d", role, conns
          tot = 0
          for (i = 1; i <= n; i++) { v = c[names[i]] / conns; tot += v; printf " %9.2f", v }
          printf " %9.2f\n", tot }' "$TMP_DIR/perf"
    done
  }
  stop "$name"
  unset U0 S0
done
