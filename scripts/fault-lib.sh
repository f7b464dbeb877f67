# Shared helpers for scripts/restart-compare.sh, scripts/fault-kill-under-load.sh and
# scripts/fault-reload-under-load.sh. Sourced (not run) after `cd` to the repo root and
# `set -Eeuo pipefail`; the sourcing script sets SCRIPT_NAME first.
#
# Rules kept here: every process a script starts is remembered by pid (track) and stopped
# by pid on exit (SIGTERM, then SIGKILL after 3 s); nothing is ever killed by name; every
# wait is bounded; all traffic goes to 127.0.0.1.
# shellcheck shell=bash disable=SC2317  # functions called through traps

STARTED_PIDS=()
track() { STARTED_PIDS+=("$@"); }

TMP_DIR=$(mktemp -d -t "${SCRIPT_NAME:-fault}.XXXXXX")
CLK_TCK=$(getconf CLK_TCK)

# alive PID: the process exists and is not a zombie (pure bash: no fork per call).
alive() {
  local line rest
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${line##*) }
  [ -n "$rest" ] && [ "${rest%% *}" != Z ] && [ "${rest%% *}" != X ]
}

# stop_pids PID...: SIGTERM, up to 3 s for them to go, then SIGKILL; reaps our children.
stop_pids() {
  local p any
  [ $# -gt 0 ] || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    any=0
    for p in "$@"; do if alive "$p"; then any=1; fi; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do
    if alive "$p"; then
      echo "  pid $p still alive 3 s after SIGTERM; SIGKILL" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM ERR
  # A script may define pre_cleanup (e.g. to add the current workers of its primary).
  if declare -F pre_cleanup >/dev/null; then pre_cleanup || true; fi
  if [ ${#STARTED_PIDS[@]} -gt 0 ]; then stop_pids "${STARTED_PIDS[@]}"; fi
  if [ -n "${KEEP_DIR:-}" ]; then
    { mkdir -p "$KEEP_DIR" && cp -r "$TMP_DIR"/. "$KEEP_DIR"/; } 2>/dev/null || true
  fi
  rm -rf "$TMP_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "${SCRIPT_NAME:-script}: failed at line $LINENO: $BASH_COMMAND" >&2; exit 2' ERR

die() { echo "${SCRIPT_NAME:-script}: $*" >&2; exit 2; }

need() { command -v "$1" >/dev/null || die "$1 not found (apt-get install -y $2)"; }

# build_retry CMD...: others may be mid-edit in this tree; retry a failed build (3 tries,
# 60 s apart).
build_retry() {
  local i
  for i in 1 2 3; do
    if "$@"; then return 0; fi
    [ "$i" = 3 ] && break
    echo "  build failed (attempt $i); retrying in 60 s" >&2
    sleep 60
  done
  die "build failed: $*"
}

# wait_for DESCRIPTION TIMEOUT_S PID COMMAND...: poll COMMAND every 0.1 s until it
# succeeds; fail early if PID died, or after TIMEOUT_S.
wait_for() {
  local what=$1 t=$2 pid=$3 i
  shift 3
  for i in $(seq 1 $((t * 10))); do
    if "$@"; then return 0; fi
    alive "$pid" || { echo "  $what: process $pid exited" >&2; return 1; }
    sleep 0.1
  done
  echo "  $what: timeout after ${t}s" >&2
  return 1
}
has_line() { grep -Eq "$2" "$1" 2>/dev/null; }

# now_ms: wall clock in milliseconds (integer).
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# starttime PID: the process's start time (clock ticks since boot), to tell a restarted
# process from the one we started even if its pid were reused. Empty if it is gone.
starttime() {
  local line fields
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 0
  read -r -a fields <<<"${line##*) }"
  echo "${fields[19]}"
}

# worker_pids PRIMARY: live (non-zombie) children of PRIMARY (`ps -o pid= --ppid`),
# oldest first.
worker_pids() {
  local p st
  for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    st=$(starttime "$p")
    if [ -n "$st" ] && alive "$p"; then echo "$st $p"; fi
  done | sort -n -k1,1 -k2,2 | awk '{print $2}'
}

# live_children PRIMARY: the same, unordered, without forking ps (the kernel's
# /proc/PID/task/PID/children list, where it exists) -- cheap enough to poll every 10 ms.
live_children() {
  local f=/proc/$1/task/$1/children p kids
  if [ -r "$f" ]; then
    read -r -a kids <"$f" || true
    for p in ${kids[@]+"${kids[@]}"}; do if alive "$p"; then echo "$p"; fi; done
  else
    worker_pids "$1"
  fi
}

# fd_count PID: open descriptors of PID.
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# start_cluster LOG [ARGS...]: starts target/release/examples/http_cluster --port 0 with
# ARGS, waits (20 s) for its `listening on HOST:PORT` line; sets PRIMARY and PORT.
start_cluster() {
  local log=$1 line
  shift
  "$FL_BIN" --port 0 --host 127.0.0.1 "$@" >"$log" 2>&1 &
  PRIMARY=$!
  track "$PRIMARY"
  wait_for "http_cluster start" 20 "$PRIMARY" has_line "$log" '^listening on ' ||
    { cat "$log" >&2; die "http_cluster did not start"; }
  line=$(grep -m1 '^listening on ' "$log")
  PORT=$(sed -E 's/^listening on [^ ]*:([0-9]+) .*/\1/' <<<"$line")
  [[ $PORT =~ ^[0-9]+$ && $PORT -gt 0 ]] || die "cannot parse the port from: $line"
}

# parse_wrk FILE: "requests errors non2xx connect read write timeout rps"
parse_wrk() {
  awk '
    /requests in /   { req = $1 }
    /Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx/        { n2 = $NF }
    END { printf "%d %d %d %d %d %d %d %s\n", req, c + r + w + t, n2 + 0, c + 0, r + 0, w + 0, t + 0, rps + 0 }' "$1"
}

# --- noise guard (as ../shared/anchors/lib.sh) -------------------------------------
# sys_busy: machine-wide busy ticks (user+nice+system+irq+softirq+steal) so far.
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# wait_quiet: wait (up to QUIET_MAX_S, default 120 s) until the machine is below
# QUIET_CORES (default 0.15) of busy CPU over a 1 s sample.
wait_quiet() {
  local b0 b1 waited=0 limit
  limit=$(awk -v c="${QUIET_CORES:-0.15}" -v h="$CLK_TCK" 'BEGIN {printf "%d", c * h}')
  while :; do
    b0=$(sys_busy); sleep 1; b1=$(sys_busy)
    if [ $((b1 - b0)) -le "$limit" ]; then
      [ "$waited" -gt 0 ] && echo "  (machine quiet after ${waited}s)" >&2
      return 0
    fi
    [ "$waited" = 0 ] && echo "  machine busy ($(awk -v b=$((b1 - b0)) -v h="$CLK_TCK" 'BEGIN {printf "%.2f", b / h}') cores); waiting..." >&2
    waited=$((waited + 1))
    if [ "$waited" -ge "${QUIET_MAX_S:-120}" ]; then
      echo "  machine still busy after ${waited}s; going on anyway" >&2
      return 0
    fi
  done
}
