# Shared helpers for the scripts in scripts/ (comparisons, fault tests). Sourced (not
# run) after `cd` to the repo root and `set -Eeuo pipefail`; the sourcing script sets
# SCRIPT_NAME first, and may set STOP_GRACE_S (default 3) and define the hooks
# pre_cleanup (before the tracked processes are stopped: e.g. track a primary's current
# workers) and post_cleanup (after: e.g. keep logs).
#
# Rules kept here: every process a script starts is remembered by pid (track) and stopped
# by pid on exit (SIGTERM, then SIGKILL after STOP_GRACE_S); nothing is ever killed by
# name; every wait is bounded; all traffic goes to 127.0.0.1.
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

# stop_pids PID...: SIGTERM, up to STOP_GRACE_S (3) for them to go, then SIGKILL; reaps
# our children.
stop_pids() {
  local p any grace=${STOP_GRACE_S:-3}
  [ $# -gt 0 ] || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 $((grace * 10))); do
    any=0
    for p in "$@"; do if alive "$p"; then any=1; fi; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do
    if alive "$p"; then
      echo "  pid $p still alive ${grace} s after SIGTERM; SIGKILL" >&2
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
  if declare -F post_cleanup >/dev/null; then post_cleanup || true; fi
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

# whole_numbers VAR...: dies unless every named variable holds a whole number.
whole_numbers() {
  local v
  for v in "$@"; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"; done
}

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
# ready_lines LOG N: the `forkloop run` command logged N workers ready (listening) in LOG.
ready_lines() { [ "$(grep -Ec '^\[forkloop\] worker [0-9]+ ready in slot ' "$1" 2>/dev/null)" -ge "$2" ]; }

# free_port: a TCP port below the ephemeral range (so wrk's own connections never take
# it) that no socket on this machine uses.
free_port() {
  local lo p
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
  [ "$lo" -gt 11000 ] || lo=65000  # odd setups: fall back to the top of the range
  for _ in $(seq 1 500); do
    p=$((10000 + RANDOM % (lo - 10000)))
    if ! ss -Htan "( sport = :$p or dport = :$p )" | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# kv KEY LINE: the value of KEY in a `key=value key=value …` line.
kv() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2; exit}'; }

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

# prepare_http_cluster: checks for wrk and curl, then build_http_cluster.
prepare_http_cluster() {
  need wrk wrk
  need curl curl
  build_http_cluster
}

# build_http_cluster: checks for timeout, builds examples/http_cluster (unless
# SKIP_BUILD=1) and sets FL_BIN to it.
build_http_cluster() {
  FL_BIN=${FL_BIN:-target/release/examples/http_cluster}
  need timeout coreutils
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    build_retry cargo build --release --quiet --example http_cluster
  fi
  [ -x "$FL_BIN" ] || die "missing $FL_BIN"
}

# track_cluster_workers: tracks the current workers of the cluster started last
# ($PRIMARY), so that the exit trap stops them too (children of it right now: no risk of
# signalling a reused pid). Call it from pre_cleanup.
PRIMARY=
track_cluster_workers() {
  local w
  if [ -n "$PRIMARY" ] && alive "$PRIMARY"; then
    for w in $(worker_pids "$PRIMARY"); do track "$w"; done
  fi
}

# start_warm_cluster LOG: start_cluster LOG --workers $WORKERS [--policy $POLICY]
# [--accept-window-ms $ACCEPT_WINDOW_MS], checks
# that it answers "hello world", warms it up with WARMUP seconds of wrk (with the headers
# in the array HDR) and lets it settle for 0.5 s.
start_warm_cluster() {
  start_cluster "$1" --workers "$WORKERS" ${POLICY:+--policy "$POLICY"} \
    ${ACCEPT_WINDOW_MS:+--accept-window-ms "$ACCEPT_WINDOW_MS"}
  [ "$(curl -s --max-time 3 "http://127.0.0.1:$PORT/")" = "hello world" ] || die "no 'hello world' on port $PORT"
  if [ "$WARMUP" -gt 0 ]; then
    timeout -k 5 $((WARMUP + 20)) wrk -t1 -c64 -d"${WARMUP}s" ${HDR[@]+"${HDR[@]}"} "http://127.0.0.1:$PORT/" >/dev/null 2>&1 ||
      die "warm-up wrk failed"
  fi
  sleep 0.5
}

# start_load OUT: `wrk -t1 -c64 -dDURATION` (headers from HDR) against the cluster in the
# background, output to OUT; sets WRK_PID (tracked) and T_START (ms).
start_load() {
  timeout -k 5 $((DURATION + 30)) wrk -t1 -c64 -d"${DURATION}s" ${HDR[@]+"${HDR[@]}"} "http://127.0.0.1:$PORT/" >"$1" 2>&1 &
  WRK_PID=$!
  track "$WRK_PID"
  T_START=$(now_ms)
}

# sleep_until_second K: sleeps until K seconds after T_START.
sleep_until_second() {
  local ms=$((T_START + $1 * 1000 - $(now_ms)))
  if [ "$ms" -gt 0 ]; then sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"; fi
}

# stop_cluster: SIGTERM to $PRIMARY and up to 10 s for it to exit (its status is
# reported, not asserted); past that, it and its workers are stopped and this returns 1.
# Sets STOPPED_WORKERS (the workers it had) and clears PRIMARY.
stop_cluster() {
  local rc=0
  mapfile -t STOPPED_WORKERS < <(worker_pids "$PRIMARY")
  kill -TERM "$PRIMARY"
  for _ in $(seq 1 100); do alive "$PRIMARY" || break; sleep 0.1; done
  if alive "$PRIMARY"; then
    echo "  WARN  primary still running 10 s after SIGTERM; stopping it"
    track ${STOPPED_WORKERS[@]+"${STOPPED_WORKERS[@]}"}
    stop_pids "$PRIMARY"
    PRIMARY=
    return 1
  fi
  wait "$PRIMARY" || rc=$?
  echo "  primary exited with status $rc after SIGTERM"
  PRIMARY=
}

# pass / fail MESSAGE: an assertion's verdict; fail counts into FAILS.
FAILS=0
fail() { echo "  FAIL  $*"; FAILS=$((FAILS + 1)); }
pass() { echo "  PASS  $*"; }

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

# parse_wrk FILE: "requests errors non2xx connect read write timeout rps p50_us p99_us"
# from wrk's output (errors = connect + read + write + timeout; the latencies need
# --latency, else 0).
parse_wrk() {
  awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000;
                     if (v ~ /m$/) return v * 60000000; if (v ~ /s$/) return v * 1000000; return v + 0 }
    / requests in /  { req = $1 }
    /Requests\/sec:/ { rps = $2 }
    /^ *50% /        { p50 = us($2) }
    /^ *99% /        { p99 = us($2) }
    /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx/        { n2 = $NF }
    END { printf "%d %d %d %d %d %d %d %s %.0f %.0f\n", req, c + r + w + t, n2 + 0, c + 0, r + 0, w + 0, t + 0, rps + 0, p50, p99 }' "$1"
}

# read_child_ticks: CHILD_TICKS = CPU ticks (user + system) of this shell's reaped
# children so far (wrk, a benchmark program). Must not run in a subshell.
read_child_ticks() {
  times >"$TMP_DIR/times"
  CHILD_TICKS=$(awk -v h="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
    printf "%d\n", t * h + 0.5 }' "$TMP_DIR/times")
}

# machine_note: "N CPUs (model), kernel K", for the header of a report.
machine_note() {
  echo "$(nproc) CPUs ($(awk -F: '/model name/ {gsub(/^ /, "", $2); print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
}

# --- noise guard -------------------------------------------------------------------
# sys_busy: machine-wide busy ticks (user+nice+system+irq+softirq+steal) so far.
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# wait_quiet: wait (up to QUIET_MAX_S, default 120 s) until the machine has used less than
# QUIET_CORES (default 0.15) of busy CPU in each of QUIET_SECS (default 1) one-second
# samples in a row.
wait_quiet() {
  local b0 b1 waited=0 calm=0 limit
  limit=$(awk -v c="${QUIET_CORES:-0.15}" -v h="$CLK_TCK" 'BEGIN {printf "%d", c * h}')
  while [ "$calm" -lt "${QUIET_SECS:-1}" ]; do
    b0=$(sys_busy); sleep 1; b1=$(sys_busy)
    if [ $((b1 - b0)) -le "$limit" ]; then
      calm=$((calm + 1))
      continue
    fi
    calm=0
    if [ "$waited" = 0 ]; then
      echo "  machine busy ($(awk -v b=$((b1 - b0)) -v h="$CLK_TCK" 'BEGIN {printf "%.2f", b / h}') cores); waiting..." >&2
    fi
    waited=$((waited + 1))
    if [ "$waited" -ge "${QUIET_MAX_S:-120}" ]; then
      echo "  machine still busy after ${waited}s; going on anyway" >&2
      return 0
    fi
  done
  if [ "$waited" -gt 0 ]; then echo "  (machine quiet after ${waited}s busy)" >&2; fi
  return 0
}

# --- result tables ------------------------------------------------------------------
# A comparison keeps one row per measured run in a TSV file with a header line, whose
# first two columns are the mode and the server.

# tsv_col FILE NAME: the number of column NAME in FILE's header (empty if none).
tsv_col() { head -1 "$1" | tr '\t' '\n' | grep -nx "$2" | cut -d: -f1 || true; }

# tsv_agg FILE MODE SERVER COLUMN [median|min|max|sum]: over the rows of MODE and SERVER
# (values "-" left out); NA if there are none.
tsv_agg() {
  local c
  c=$(tsv_col "$1" "$4")
  [ -n "$c" ] || { echo NA; return; }
  awk -F'\t' -v m="$2" -v s="$3" -v c="$c" -v what="${5:-median}" '
    NR > 1 && $1 == m && $2 == s && $c != "-" { v[++n] = $c + 0 }
    END {
      if (n == 0) { print "NA"; exit }
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      if (what == "min") r = v[1]; else if (what == "max") r = v[n]
      else if (what == "sum") { r = 0; for (i = 1; i <= n; i++) r += v[i] }
      else r = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
      print r }' "$1"
}

# ratio_of A B: A / B with 2 decimals, or NA when either is NA or B is 0.
ratio_of() {
  if [ "$1" = NA ] || [ "$2" = NA ]; then echo NA; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "NA"; else printf "%.2f\n", a / b}'
}

# --- held HTTP clients (bash's /dev/tcp: no extra program) ---------------------------
# A client holds one keep-alive connection with one `GET /` on it. The connections are
# made to 127.0.0.1 only; a connect waits for the server's kernel backlog (default 511),
# so keep N below it.

# open_clients N PORT: opens N clients; their descriptors go to WAITING_FDS (connects
# that failed count in CONNECT_FAILS). ANSWERED_FDS and RESET_COUNT start empty.
open_clients() {
  local n=$1 port=$2 i fd
  WAITING_FDS=() ANSWERED_FDS=() RESET_COUNT=0 CONNECT_FAILS=0
  for ((i = 0; i < n; i++)); do
    if exec {fd}<>"/dev/tcp/127.0.0.1/$port"; then
      # shellcheck disable=SC2261  # $fd is a socket, not stderr
      printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' >&"$fd" 2>/dev/null || true
      WAITING_FDS+=("$fd")
    else
      CONNECT_FAILS=$((CONNECT_FAILS + 1))
    fi
  done 2>/dev/null
}

# poll_clients: one pass over WAITING_FDS. A client whose answer has begun (a status line
# `HTTP/1.x `) moves to ANSWERED_FDS; one whose connection ended or failed first (reset,
# or closed unanswered) counts in RESET_COUNT and is closed.
poll_clients() {
  local fd line still=()
  for fd in ${WAITING_FDS[@]+"${WAITING_FDS[@]}"}; do
    # -t 0: succeeds at once if data (or EOF, or an error) is waiting, reads nothing.
    if read -r -t 0 -u "$fd" 2>/dev/null; then
      if IFS= read -r -t 1 -u "$fd" line 2>/dev/null && [[ $line == HTTP/1.?\ * ]]; then
        ANSWERED_FDS+=("$fd")
      else
        RESET_COUNT=$((RESET_COUNT + 1))
        exec {fd}>&-
      fi
    else
      still+=("$fd")
    fi
  done
  WAITING_FDS=(${still[@]+"${still[@]}"})
}

# close_answered K: closes (hangs up) the first K answered clients.
close_answered() {
  local k=$1 fd
  while [ "$k" -gt 0 ] && [ ${#ANSWERED_FDS[@]} -gt 0 ]; do
    fd=${ANSWERED_FDS[0]}
    exec {fd}>&-
    ANSWERED_FDS=("${ANSWERED_FDS[@]:1}")
    CLOSED_COUNT=$((${CLOSED_COUNT:-0} + 1))
    k=$((k - 1))
  done
}
