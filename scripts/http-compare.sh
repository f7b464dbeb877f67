#!/usr/bin/env bash
# Issue 5: forkloop's examples/http_cluster.rs side by side with its peers (Node cluster,
# nginx, the raw Rust mio server), alternating servers within one run, then the
# acceptance checks as ratios of medians.
#
#   scripts/http-compare.sh                       # RUNS=3 rounds, DURATION=10s, ~15 min
#   RUNS=1 DURATION=3s scripts/http-compare.sh    # quick smoke run
#   SERVERS="fl-rr mio-2" MODES=ka-c64 scripts/http-compare.sh
#   SERVERS="fl-rr@1 fl-rr@4 fl-rr@16 fl-rr@64" MODES="close-c64 ka-c64" scripts/http-compare.sh
#   SERVERS="fl-rr fl-rr~1 mio-2" MODES="close-c64 close-c16" scripts/http-compare.sh
#   SERVERS="fl-rr fl-rr:normal mio-2" MODES="close-c64 close-c16 ka-c1" scripts/http-compare.sh
#
# Servers (WORKERS processes each, default 2; the list and the suffixes are in
# scripts/servers.sh): fl-rr fl-reuseport fl-none (forkloop; NAME@K, NAME~W, NAME:normal),
# node-rr node-none node-single, flnode-rr flnode-none (the same Node workers under the
# `forkloop run` command), nginx, mio-1 mio-2 (the raw mio server, benches/peers).
# Needs wrk (apt-get install -y wrk), and for the peers node (nodejs) and nginx.
# Default SERVERS: fl-rr fl-reuseport node-rr node-none nginx mio-1 mio-2.
#
# Modes (MODES, default all three; each is one `wrk -t1 ... --latency` run per round):
#   ka-c64      -c64 keep-alive
#   close-c64   -c64 -H 'Connection: close' (every request a new TCP connection)
#   ka-c1       -c1 keep-alive (latency)
#   pipe16-c64  -c64 keep-alive with 16 requests pipelined per connection
#               (benches/peers/wrk/pipeline.lua; not in the default MODES)
#   close-c16   -c16 -H 'Connection: close' (not in the default MODES; no check uses it: it
#               shows the cost of accept windows to a client with few connections in flight)
#
# Each round visits every server once (the order rotates by one each round): start it,
# warm up (WARMUP of keep-alive c64), one run per mode, stop it. Before every run the
# script waits until the machine has been quiet for QUIET_SECS seconds in a row; a run
# during which other work used more than FOREIGN_MAX cores is discarded and repeated (at
# most FOREIGN_RETRIES times, then kept and flagged NOISY).
# Per run: req/s, p50/p99, socket errors, non-2xx, server CPU µs per request (utime+stime
# from /proc/PID/stat of every server process over the run ÷ requests completed), and the
# primary's (master's) own CPU µs per request where there is one, the part of the server's
# CPU spent in user space (utime alone: the rest is the kernel's), and the voluntary context
# switches per request of the server's processes (every thread; /proc/PID/task/*/status:
# each one a sleep and a wake-up, so under Connection: close it shows how many processes
# wake per connection). Tables show the median
# (min–max) over the rounds; the checks compare medians.
#
# Env: RUNS (3), DURATION (10s), WARMUP (2s), SERVERS, MODES, CREDIT (--credit for fl-*;
#      unset = the library default), FOREIGN_MAX (0.10 cores), FOREIGN_RETRIES (5),
#      QUIET_CORES (0.15), QUIET_SECS (3), QUIET_MAX_S (300), OUT_DIR (keep the raw wrk
#      output, runs.tsv and the server logs there), SKIP_BUILD=1 (use the binaries
#      already built), REPORT_FROM=runs.tsv (only re-print the tables and checks of an
#      earlier run), TW_MAX (unset: do not wait; else before
#      every run wait, up to 70 s, until at most this many TCP sockets are in TIME_WAIT).
# Every `Connection: close` run leaves its connections in TIME_WAIT for 60 s, and a
# kernel holding ~100k of them makes the next server's connections dearer; runs.tsv
# records the count each run started with, and the report warns when it was high.
# Exit status: 0 all acceptance checks pass (or are skipped because a server was not
# run), 1 a check is missed, 2 the benchmark itself failed (build, start, crash).
# Everything runs on 127.0.0.1; every process started is stopped by its pid on exit.
# To see where the CPU goes when a CPU check misses: scripts/http-syscalls.sh.
# shellcheck disable=SC2317  # functions called through traps and wait_for
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=http-compare
STOP_GRACE_S=5
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/servers.sh
source scripts/servers.sh

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SERVERS=${SERVERS:-"fl-rr fl-reuseport node-rr node-none nginx mio-1 mio-2"}
MODES=${MODES:-"ka-c64 close-c64 ka-c1"}
CREDIT=${CREDIT:-}
FOREIGN_MAX=${FOREIGN_MAX:-0.10}
FOREIGN_RETRIES=${FOREIGN_RETRIES:-5}
QUIET_CORES=${QUIET_CORES:-0.15}
QUIET_SECS=${QUIET_SECS:-3}
QUIET_MAX_S=${QUIET_MAX_S:-300}
OUT_DIR=${OUT_DIR:-}
TW_MAX=${TW_MAX:-}
TW_WARN=20000

SECS=${DURATION%s}
WARM_SECS=${WARMUP%s}
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 && $WARM_SECS =~ ^[0-9]+$ && $RUNS =~ ^[0-9]+$ && $RUNS -gt 0 ]] ||
  { echo "RUNS, DURATION and WARMUP must be whole numbers (seconds)" >&2; exit 2; }
read -r -a SERVER_LIST <<<"$SERVERS"
read -r -a MODE_LIST <<<"$MODES"
if [ ${#SERVER_LIST[@]} = 0 ] || [ ${#MODE_LIST[@]} = 0 ]; then echo "empty SERVERS or MODES" >&2; exit 2; fi

RAW_DIR=${OUT_DIR:-$TMP_DIR}
mkdir -p "$RAW_DIR"
RESULTS=$RAW_DIR/runs.tsv
printf 'mode\tserver\tround\treq_s\tp50_us\tp99_us\trequests\terrors\tnon2xx\tcpu_us_req\tprimary_us_req\tserver_cores\twrk_cores\tforeign_cores\ttime_wait\tvcsw_req\tuser_us_req\n' >"$RESULTS"

# ---------------------------------------------------------------- process bookkeeping
# Processes are tracked and stopped through scripts/lib.sh; the server logs are kept.
post_cleanup() { keep_server_logs; }

# ---------------------------------------------------------------- measuring
mode_title() {
  case $1 in
    ka-c64) echo "keep-alive, 64 connections: wrk -t1 -c64 -d${SECS}s --latency" ;;
    close-c64) echo "new connection per request, 64 concurrent: wrk -t1 -c64 -d${SECS}s --latency -H 'Connection: close' (req/s = connections/s)" ;;
    ka-c1) echo "keep-alive, 1 connection (latency): wrk -t1 -c1 -d${SECS}s --latency" ;;
    close-c16) echo "new connection per request, 16 concurrent: wrk -t1 -c16 -d${SECS}s --latency -H 'Connection: close' (req/s = connections/s)" ;;
    pipe16-c64) echo "keep-alive, 64 connections, 16 requests pipelined on each: wrk -t1 -c64 -d${SECS}s --latency -s benches/peers/wrk/pipeline.lua (latency per batch)" ;;
    *) return 1 ;;
  esac
}

# run_wrk MODE SECONDS: one wrk run against PORT, bounded in time.
run_wrk() {
  local mode=$1 secs=$2 extra=()
  case $mode in
    ka-c64) extra=(-c64) ;;
    close-c64) extra=(-c64 -H 'Connection: close') ;;
    close-c16) extra=(-c16 -H 'Connection: close') ;;
    ka-c1) extra=(-c1) ;;
    pipe16-c64) extra=(-c64 -s benches/peers/wrk/pipeline.lua) ;;
    *) die "unknown mode $mode" ;;
  esac
  timeout -k 5 $((secs + 20)) wrk -t1 "${extra[@]}" -d"${secs}s" --latency "http://127.0.0.1:$PORT/"
}

# time_wait_count: TCP sockets in TIME_WAIT on this machine.
time_wait_count() { ss -Htan state time-wait 2>/dev/null | wc -l; }

# wait_time_wait: with TW_MAX set, waits (up to 70 s) until at most TW_MAX sockets are in
# TIME_WAIT.
wait_time_wait() {
  [ -n "$TW_MAX" ] || return 0
  local t=0
  while [ "$(time_wait_count)" -gt "$TW_MAX" ] && [ "$t" -lt 70 ]; do
    sleep 1
    t=$((t + 1))
  done
}

# measure NAME MODE ROUND: one measured run; appends a row to RESULTS.
measure() {
  local name=$1 mode=$2 round=$3 out try=0 a0 b0 a1 b1 s0 s1 c0 c1 f p wrc u0 u1 usr
  local rps p50 p99 req errs n2 cpu prim srv wrkc tw v0 v1 vcsw
  out="$RAW_DIR/$mode-$name-$round.txt"
  while :; do
    wait_time_wait
    wait_quiet
    tw=$(time_wait_count)
    a0=$(cpu_ticks ${PRIMARY[@]+"${PRIMARY[@]}"}); b0=$(cpu_ticks "${OTHERS[@]}")
    u0=$(user_ticks ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}")
    s0=$(sys_busy); read_child_ticks; c0=$CHILD_TICKS
    v0=$(vol_ctx_switches ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}")
    wrc=0
    run_wrk "$mode" "$SECS" >"$out" 2>&1 || wrc=$?
    v1=$(vol_ctx_switches ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}")
    s1=$(sys_busy); read_child_ticks; c1=$CHILD_TICKS
    a1=$(cpu_ticks ${PRIMARY[@]+"${PRIMARY[@]}"}); b1=$(cpu_ticks "${OTHERS[@]}")
    u1=$(user_ticks ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}")
    for p in ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}"; do
      alive "$p" || die "$name: server process $p died during $mode run $round (log: $(tail -3 "$TMP_DIR/$name.log" | tr '\n' ' '))"
    done
    [ "$wrc" = 0 ] || die "$name $mode: wrk failed (status $wrc): $(tail -3 "$out" | tr '\n' ' ')"
    # foreign = machine busy - wrk - server processes
    f=$(awk -v b=$((s1 - s0)) -v o=$((c1 - c0 + a1 - a0 + b1 - b0)) -v s="$SECS" -v h="$CLK_TCK" \
      'BEGIN {f = (b - o) / h / s; if (f < 0) f = 0; printf "%.2f", f}')
    if awk -v f="$f" -v s="$SECS" -v m="$FOREIGN_MAX" -v h="$CLK_TCK" 'BEGIN {exit !(f > m && f * s * h > 5)}' &&
       [ "$try" -lt "$FOREIGN_RETRIES" ]; then
      try=$((try + 1))
      mv "$out" "$out.discarded-$try"
      echo "  $name $mode round $round: other work used $f cores; discarded, repeating" >&2
      continue
    fi
    break
  done
  read -r req errs n2 _ _ _ _ rps p50 p99 <<<"$(parse_wrk "$out")"
  rps=$(printf '%.0f' "$rps")
  [ "$req" -gt 0 ] || die "$name $mode: no requests completed: $(tr '\n' ' ' <"$out")"
  cpu=$(awk -v t=$((a1 - a0 + b1 - b0)) -v h="$CLK_TCK" -v n="$req" 'BEGIN {printf "%.2f", t / h * 1e6 / n}')
  prim=-
  if [ ${#PRIMARY[@]} -gt 0 ]; then
    prim=$(awk -v t=$((a1 - a0)) -v h="$CLK_TCK" -v n="$req" 'BEGIN {printf "%.2f", t / h * 1e6 / n}')
  fi
  vcsw=$(awk -v v=$((v1 - v0)) -v n="$req" 'BEGIN {printf "%.2f", v / n}')
  usr=$(awk -v t=$((u1 - u0)) -v h="$CLK_TCK" -v n="$req" 'BEGIN {printf "%.2f", t / h * 1e6 / n}')
  srv=$(awk -v t=$((a1 - a0 + b1 - b0)) -v h="$CLK_TCK" -v s="$SECS" 'BEGIN {printf "%.2f", t / h / s}')
  wrkc=$(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v s="$SECS" 'BEGIN {printf "%.2f", t / h / s}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$name" "$round" \
    "$rps" "$p50" "$p99" "$req" "$errs" "$n2" "$cpu" "$prim" "$srv" "$wrkc" "$f" "$tw" "$vcsw" "$usr" >>"$RESULTS"
  printf '  %s %-14s %-9s round %s: %7s req/s  p50 %5s us  p99 %6s us  cpu %6s us/req (user %s)  primary %6s us/req  vcsw %5s/req  errors %s non2xx %s  wrk %s  foreign %s  time_wait %s%s\n' \
    "$(date +%H:%M:%S)" "$name" "$mode" "$round" "$rps" "$p50" "$p99" "$cpu" "$usr" "$prim" "$vcsw" "$errs" "$n2" "$wrkc" "$f" "$tw" \
    "$(awk -v f="$f" -v m="$FOREIGN_MAX" 'BEGIN {if (f > m) print "  NOISY (kept after the last retry)"}')" >&2
}

# ---------------------------------------------------------------- medians and checks
# col NAME / agg MODE SERVER COLUMN [median|min|max|sum]: scripts/lib.sh's tsv_col and
# tsv_agg on RESULTS.
col() { tsv_col "$RESULTS" "$1"; }
agg() { tsv_agg "$RESULTS" "$@"; }

# cell MODE SERVER COLUMN DECIMALS [median|max]: "median (min–max)", or one figure.
cell() {
  local m lo hi
  m=$(agg "$1" "$2" "$3" "${5:-median}"); lo=$(agg "$1" "$2" "$3" min); hi=$(agg "$1" "$2" "$3" max)
  [ "$m" = NA ] && { echo "–"; return; }
  if [ "$RUNS" = 1 ] || [ -n "${5:-}" ]; then
    awk -v m="$m" -v d="$4" 'BEGIN {printf "%." d "f", m}'
  else
    awk -v m="$m" -v a="$lo" -v b="$hi" -v d="$4" 'BEGIN {printf "%." d "f (%." d "f–%." d "f)", m, a, b}'
  fi
}

print_tables() {
  local mode name
  for mode in "${MODE_LIST[@]}"; do
    echo
    echo "#### $(mode_title "$mode")"
    echo
    echo "| server | req/s median (min–max) | p50 µs | p99 µs | server CPU µs/req | of which user | primary CPU µs/req | voluntary ctx switches/req | errors / non-2xx (sum) | server cores (median) | wrk cores (median) | foreign cores (max) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for name in "${SERVER_LIST[@]}"; do
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s |\n' "$(label "$name")" \
        "$(cell "$mode" "$name" req_s 0)" "$(cell "$mode" "$name" p50_us 0)" "$(cell "$mode" "$name" p99_us 0)" \
        "$(cell "$mode" "$name" cpu_us_req 1)" "$(cell "$mode" "$name" user_us_req 2)" "$(cell "$mode" "$name" primary_us_req 1)" \
        "$(cell "$mode" "$name" vcsw_req 2)" \
        "$(agg "$mode" "$name" errors sum)" "$(agg "$mode" "$name" non2xx sum)" \
        "$(cell "$mode" "$name" server_cores 2 median)" "$(cell "$mode" "$name" wrk_cores 2 median)" \
        "$(cell "$mode" "$name" foreign_cores 2 max)"
    done
  done
}

MISSES=0
# check DESCRIPTION VALUE OP LIMIT DETAIL: prints PASS/MISS (or SKIP when VALUE is NA).
check() {
  local desc=$1 v=$2 op=$3 lim=$4 detail=$5 ok
  if [ "$v" = NA ]; then
    printf '  SKIP  %-62s (not measured)\n' "$desc"
    return
  fi
  ok=$(awk -v v="$v" -v l="$lim" -v op="$op" 'BEGIN {print (op == ">=" ? v >= l : v <= l) ? 1 : 0}')
  if [ "$ok" = 1 ]; then
    printf '  PASS  %-62s %s %s %s   %s\n' "$desc" "$v" "$op" "$lim" "$detail"
  else
    printf '  MISS  %-62s %s %s %s   %s\n' "$desc" "$v" "$op" "$lim" "$detail"
    MISSES=$((MISSES + 1))
  fi
}

# ratio MODE A B COLUMN: median(A) / median(B), 2 decimals, or NA.
ratio() { ratio_of "$(agg "$1" "$2" "$4")" "$(agg "$1" "$3" "$4")"; }

# pair MODE A B COLUMN: "A / B" medians for the detail column.
pair() { echo "($(agg "$1" "$2" "$4") / $(agg "$1" "$3" "$4") $4)"; }

info() {
  local desc=$1 v=$2 detail=$3
  [ "$v" = NA ] && return 0
  printf '  info  %-62s %s   %s\n' "$desc" "$v" "$detail"
}

print_checks() {
  echo
  echo "#### Acceptance checks (ratios of medians)"
  echo
  echo '```'
  echo "keep-alive c64, rr:"
  check "req/s fl-rr / mio-2" "$(ratio ka-c64 fl-rr mio-2 req_s)" ">=" 0.95 "$(pair ka-c64 fl-rr mio-2 req_s)"
  check "server CPU/req fl-rr / mio-2" "$(ratio ka-c64 fl-rr mio-2 cpu_us_req)" "<=" 1.1 "$(pair ka-c64 fl-rr mio-2 cpu_us_req)"
  info "user CPU/req fl-rr / mio-2 (the rest is the kernel's)" "$(ratio ka-c64 fl-rr mio-2 user_us_req)" "$(pair ka-c64 fl-rr mio-2 user_us_req)"
  info "req/s fl-rr / mio-1" "$(ratio ka-c64 fl-rr mio-1 req_s)" "$(pair ka-c64 fl-rr mio-1 req_s)"
  info "server CPU/req fl-rr / mio-1" "$(ratio ka-c64 fl-rr mio-1 cpu_us_req)" "$(pair ka-c64 fl-rr mio-1 cpu_us_req)"
  echo "Connection: close c64, rr:"
  check "conn/s fl-rr / node-rr" "$(ratio close-c64 fl-rr node-rr req_s)" ">=" 2.0 "$(pair close-c64 fl-rr node-rr req_s)"
  check "conn/s fl-rr / nginx" "$(ratio close-c64 fl-rr nginx req_s)" ">=" 0.9 "$(pair close-c64 fl-rr nginx req_s)"
  check "server CPU/conn fl-rr / mio-2" "$(ratio close-c64 fl-rr mio-2 cpu_us_req)" "<=" 1.3 "$(pair close-c64 fl-rr mio-2 cpu_us_req)"
  info "server CPU/conn fl-rr / mio-1" "$(ratio close-c64 fl-rr mio-1 cpu_us_req)" "$(pair close-c64 fl-rr mio-1 cpu_us_req)"
  check "primary CPU µs per handed-off conn, fl-rr" "$(agg close-c64 fl-rr primary_us_req)" "<=" 10 \
    "(Node rr primary: $(agg close-c64 node-rr primary_us_req) µs)"
  echo "Connection: close c64, the default hand-off's targets:"
  check "server CPU/conn fl-rr / mio-2 (target)" "$(ratio close-c64 fl-rr mio-2 cpu_us_req)" "<=" 1.0 "$(pair close-c64 fl-rr mio-2 cpu_us_req)"
  check "primary CPU µs per handed-off conn, fl-rr (target)" "$(agg close-c64 fl-rr primary_us_req)" "<=" 5 ""
  echo "Node workers under forkloop run (flnode-rr) against Node's own primary (node-rr):"
  check "Connection: close c64 conn/s flnode-rr / node-rr" "$(ratio close-c64 flnode-rr node-rr req_s)" ">=" 1.5 "$(pair close-c64 flnode-rr node-rr req_s)"
  check "primary CPU/conn flnode-rr / node-rr" "$(ratio close-c64 flnode-rr node-rr primary_us_req)" "<=" 0.25 "$(pair close-c64 flnode-rr node-rr primary_us_req)"
  check "keep-alive c64 req/s flnode-rr / node-rr" "$(ratio ka-c64 flnode-rr node-rr req_s)" ">=" 1.0 "$(pair ka-c64 flnode-rr node-rr req_s)"
  info "Connection: close c64 conn/s flnode-none / node-none" "$(ratio close-c64 flnode-none node-none req_s)" "$(pair close-c64 flnode-none node-none req_s)"
  local w
  for w in "${SERVER_LIST[@]}"; do
    [[ $(server_base "$w") == fl-rr && $w != fl-rr ]] || continue
    echo "Connection: close c64, $w (a variant; the checks above use the default fl-rr):"
    info "conn/s $w / node-rr" "$(ratio close-c64 "$w" node-rr req_s)" "$(pair close-c64 "$w" node-rr req_s)"
    info "conn/s $w / nginx" "$(ratio close-c64 "$w" nginx req_s)" "$(pair close-c64 "$w" nginx req_s)"
    info "conn/s $w / fl-rr" "$(ratio close-c64 "$w" fl-rr req_s)" "$(pair close-c64 "$w" fl-rr req_s)"
    info "server CPU/conn $w / mio-2" "$(ratio close-c64 "$w" mio-2 cpu_us_req)" "$(pair close-c64 "$w" mio-2 cpu_us_req)"
    info "primary CPU µs per handed-off conn, $w" "$(agg close-c64 "$w" primary_us_req)" "(fl-rr: $(agg close-c64 fl-rr primary_us_req) µs)"
    info "p50 $w / fl-rr" "$(ratio close-c64 "$w" fl-rr p50_us)" "$(pair close-c64 "$w" fl-rr p50_us)"
    info "close-c16 conn/s $w / fl-rr" "$(ratio close-c16 "$w" fl-rr req_s)" "$(pair close-c16 "$w" fl-rr req_s)"
    info "close-c16 p50 $w / fl-rr" "$(ratio close-c16 "$w" fl-rr p50_us)" "$(pair close-c16 "$w" fl-rr p50_us)"
    info "keep-alive c1 p50 $w / fl-rr" "$(ratio ka-c1 "$w" fl-rr p50_us)" "$(pair ka-c1 "$w" fl-rr p50_us)"
  done
  echo "Connection: close c64, none (one worker woken per connection):"
  check "voluntary ctx switches/conn fl-none / fl-rr" "$(ratio close-c64 fl-none fl-rr vcsw_req)" "<=" 1.0 "$(pair close-c64 fl-none fl-rr vcsw_req)"
  check "server CPU/conn fl-none / fl-reuseport" "$(ratio close-c64 fl-none fl-reuseport cpu_us_req)" "<=" 1.0 "$(pair close-c64 fl-none fl-reuseport cpu_us_req)"
  info "voluntary ctx switches/conn fl-none / mio-2" "$(ratio close-c64 fl-none mio-2 vcsw_req)" "$(pair close-c64 fl-none mio-2 vcsw_req)"
  echo "pipelined keep-alive, depth 16, c64:"
  check "req/s fl-rr / nginx" "$(ratio pipe16-c64 fl-rr nginx req_s)" ">=" 1.0 "$(pair pipe16-c64 fl-rr nginx req_s)"
  info "req/s fl-rr / mio-2" "$(ratio pipe16-c64 fl-rr mio-2 req_s)" "$(pair pipe16-c64 fl-rr mio-2 req_s)"
  echo "reuseport:"
  check "keep-alive c64 req/s fl-reuseport / mio-2" "$(ratio ka-c64 fl-reuseport mio-2 req_s)" ">=" 0.95 "$(pair ka-c64 fl-reuseport mio-2 req_s)"
  check "c1 p50 fl-reuseport / mio-2" "$(ratio ka-c1 fl-reuseport mio-2 p50_us)" "<=" 1.1 "$(pair ka-c1 fl-reuseport mio-2 p50_us)"
  info "c1 p50 fl-reuseport / mio-1" "$(ratio ka-c1 fl-reuseport mio-1 p50_us)" "$(pair ka-c1 fl-reuseport mio-1 p50_us)"
  info "keep-alive c64 server CPU/req fl-reuseport / mio-2" "$(ratio ka-c64 fl-reuseport mio-2 cpu_us_req)" "$(pair ka-c64 fl-reuseport mio-2 cpu_us_req)"
  echo '```'
  # Errors are not an acceptance point, but a fast server that fails requests is no win.
  local mode name e
  for mode in "${MODE_LIST[@]}"; do
    for name in "${SERVER_LIST[@]}"; do
      e=$(( $(agg "$mode" "$name" errors sum | sed 's/NA/0/') + $(agg "$mode" "$name" non2xx sum | sed 's/NA/0/') ))
      [ "$e" = 0 ] || echo "WARNING: $name $mode: $e socket errors / non-2xx responses over the runs"
    done
  done
  local noisy
  noisy=$(awk -F'\t' -v c="$(col foreign_cores)" -v m="$FOREIGN_MAX" 'NR > 1 && $c > m {n++} END {print n + 0}' "$RESULTS")
  [ "$noisy" = 0 ] || echo "WARNING: $noisy run(s) kept with other work above FOREIGN_MAX=$FOREIGN_MAX cores (see the foreign column)"
  local c tw
  c=$(col time_wait)
  if [ -n "$c" ]; then
    tw=$(awk -F'\t' -v c="$c" -v w="$TW_WARN" 'NR > 1 && $c + 0 > w {n++; if ($c + 0 > m) m = $c + 0} END {if (n) print n, m}' "$RESULTS")
    [ -z "$tw" ] || echo "NOTE: ${tw% *} run(s) started with more than $TW_WARN sockets in TIME_WAIT (up to ${tw#* }): under Connection: close that makes connections dearer for the server that runs next (TW_MAX=$TW_WARN waits for them to drain; see runs.tsv)"
  fi
}

# ---------------------------------------------------------------- main
need wrk wrk
need ss iproute2
need timeout coreutils
for mode in "${MODE_LIST[@]}"; do mode_title "$mode" >/dev/null || die "unknown mode $mode (ka-c64 close-c64 ka-c1 close-c16)"; done
BUILD_NOTE="report only"
if [ -z "${REPORT_FROM:-}" ]; then prepare_servers "${SERVER_LIST[@]}"; fi

START=$(date -u +%Y-%m-%dT%H:%MZ)
if [ -n "${REPORT_FROM:-}" ]; then
  # Re-print the tables and checks of an earlier run (its runs.tsv); SERVERS and MODES
  # select the rows, RUNS only decides whether ranges are shown.
  cp "$REPORT_FROM" "$RESULTS"
  RUNS=$(awk -F'\t' 'NR > 1 && $3 > n {n = $3} END {print n + 0}' "$RESULTS")
  START="(report of $REPORT_FROM)"
else
echo "http-compare: RUNS=$RUNS DURATION=${SECS}s WARMUP=${WARM_SECS}s SERVERS='$SERVERS' MODES='$MODES' CREDIT=${CREDIT:-default}; $BUILD_NOTE" >&2
N=${#SERVER_LIST[@]}
for ((r = 1; r <= RUNS; r++)); do
  for ((i = 0; i < N; i++)); do
    name=${SERVER_LIST[$(((i + r - 1) % N))]}
    echo "== round $r/$RUNS: $name ($(label "$name"))" >&2
    start_server "$name"
    warm_up "$name" "$WARM_SECS"
    for mode in "${MODE_LIST[@]}"; do measure "$name" "$mode" "$r"; done
    stop_server "$name"
    sleep 1
  done
done
fi

echo
echo "<!-- scripts/http-compare.sh; $(machine_note), $({ wrk -v 2>&1 || true; } | head -1 | awk '{print $1, $2}'); started $START; RUNS=$RUNS DURATION=${SECS}s CREDIT=${CREDIT:-default}; ${BUILD_NOTE:-} -->"
echo "CPU columns: utime+stime of the server processes over the run ÷ requests completed (under Connection: close, per connection). Latencies: wrk's p50/p99."
print_tables
print_checks
[ -n "$OUT_DIR" ] && echo "raw wrk output and runs.tsv in $OUT_DIR"
if [ "$MISSES" -gt 0 ]; then
  echo "$MISSES acceptance check(s) missed"
  exit 1
fi
echo "all acceptance checks that ran passed"
exit 0
