#!/usr/bin/env bash
# Tail latency at fixed request rates below saturation: forkloop's http_cluster (rr,
# reuseport, none) beside nginx, the Node cluster and the raw mio server, measured with
# an open-loop generator that takes every latency from the time its request was due
# (benches/peers/src/bin/openloop.rs; closed-loop wrk hides queueing: a stalled
# connection stops sending, so the requests that would have waited are never measured).
#
#   scripts/latency-compare.sh                     # RUNS=3, DURATION=10s: ~30 min
#   RUNS=1 DURATION=2s WARMUP=0s RATES="25 90" SERVERS="fl-rr mio-2" scripts/latency-compare.sh
#
# 1. The raw server's maximum rate per mode: MAX_SECS (5) of closed-loop `wrk -t1 -c64`
#    against RAW (mio-2, the raw mio server in WORKERS processes with SO_REUSEPORT), keep-
#    alive and with `Connection: close`. MAX_RATE_KA / MAX_RATE_CLOSE give it instead.
# 2. RUNS rounds; each visits every server once (the order rotates by one each round):
#    start it, warm up (WARMUP of keep-alive wrk -c64), then per mode and per rate (RATES,
#    in % of the raw server's maximum for that mode) one `openloop` run: GEN_WARMUP (1 s,
#    not recorded) then DURATION recorded, at that fixed rate; stop it.
#    Modes (MODES): ka     keep-alive, a pool of CONNS (64) connections
#                   close  a new connection per request (`Connection: close`), at most
#                          CONNS in flight
# Per run: p50/p99/p99.9 latency (from the due time to the last byte of the response),
# errors and timeouts, the rate achieved, the server's CPU µs per request and the
# generator's cores (near 1 with GEN_THREADS=1: the generator itself may be the limit). Tables give
# medians over the rounds; the checks compare medians (issue 15's acceptance):
#   fl-rr p99 <= 1.10x the raw server's at 25, 50 and 75% and <= 1.25x at 90%;
#   fl-reuseport p99 <= 1.05x at every rate; both modes. The other servers: information.
# A run whose generator fell behind (achieved rate under 97% of the target) or that had
# errors or timeouts is flagged; its latencies still count (that is what open loop means).
#
# Needs wrk (apt-get install -y wrk), and for those servers node (nodejs) and nginx.
# Env: RUNS (3), DURATION (10s), WARMUP (2s), GEN_WARMUP (1), RATES ("25 50 75 90"),
#      MODES ("ka close"), SERVERS ("fl-rr fl-reuseport fl-none nginx node-rr mio-2"),
#      RAW (mio-2), CONNS (64), GEN_THREADS (1), MAX_SECS (5), MAX_RATE_KA,
#      MAX_RATE_CLOSE, WORKERS (2), QUIET_CORES (0.15), QUIET_SECS (3), QUIET_MAX_S (300),
#      OUT_DIR (keep runs.tsv and the generator's output there), SKIP_BUILD=1.
# Exit status: 0 every check that ran passes, 1 a check fails, 2 the benchmark failed.
# Everything runs on 127.0.0.1; every process started is stopped by its pid on exit.
# shellcheck disable=SC2317  # functions called through traps and wait_for
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=latency-compare
STOP_GRACE_S=5
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/servers.sh
source scripts/servers.sh

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
GEN_WARMUP=${GEN_WARMUP:-1}
RATES=${RATES:-"25 50 75 90"}
MODES=${MODES:-"ka close"}
RAW=${RAW:-mio-$WORKERS}
SERVERS=${SERVERS:-"fl-rr fl-reuseport fl-none nginx node-rr $RAW"}
CONNS=${CONNS:-64}
GEN_THREADS=${GEN_THREADS:-1}
MAX_SECS=${MAX_SECS:-5}
QUIET_CORES=${QUIET_CORES:-0.15}
QUIET_SECS=${QUIET_SECS:-3}
QUIET_MAX_S=${QUIET_MAX_S:-300}
OUT_DIR=${OUT_DIR:-}

SECS=${DURATION%s}
WARM_SECS=${WARMUP%s}
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 && $WARM_SECS =~ ^[0-9]+$ && $GEN_WARMUP =~ ^[0-9]+$ && $RUNS =~ ^[1-9][0-9]*$ ]] ||
  die "RUNS, DURATION, WARMUP and GEN_WARMUP must be whole numbers (seconds)"
read -r -a SERVER_LIST <<<"$SERVERS"
read -r -a RATE_LIST <<<"$RATES"
read -r -a MODE_LIST <<<"$MODES"
for p in "${RATE_LIST[@]}"; do [[ $p =~ ^[1-9][0-9]*$ && $p -le 100 ]] || die "RATES are percentages (1-100), not $p"; done
for m in "${MODE_LIST[@]}"; do [[ $m == ka || $m == close ]] || die "MODES are ka and close, not $m"; done
[[ " $SERVERS " == *" $RAW "* ]] || SERVER_LIST+=("$RAW")

RAW_DIR=${OUT_DIR:-$TMP_DIR}
mkdir -p "$RAW_DIR"
RESULTS=$RAW_DIR/runs.tsv
# mode = MODE@PCT (e.g. ka@25), so that tsv_agg's (mode, server) rows are one cell.
printf 'mode\tserver\tround\trate\tachieved\tp50_us\tp99_us\tp999_us\tmax_us\trequests\terrors\ttimeouts\tnon2xx\tlag_p99_us\tcpu_us_req\tforeign_cores\tgen_cores\n' >"$RESULTS"

post_cleanup() { keep_server_logs; }

need wrk wrk
need ss iproute2
need timeout coreutils
NEED_OPENLOOP=1 prepare_servers "${SERVER_LIST[@]}"

mode_title() {
  case $1 in
    ka) echo "keep-alive, a pool of $CONNS connections" ;;
    close) echo "a new connection per request (Connection: close), at most $CONNS in flight" ;;
  esac
}

# max_rate MODE: closed-loop wrk against the raw server, requests per second.
max_rate() {
  local hdr=() out="$TMP_DIR/max-$1.txt"
  [ "$1" = close ] && hdr=(-H 'Connection: close')
  wait_quiet
  timeout -k 5 $((MAX_SECS + 20)) wrk -t1 -c64 -d"${MAX_SECS}s" ${hdr[@]+"${hdr[@]}"} "http://127.0.0.1:$PORT/" >"$out" 2>&1 ||
    die "wrk against $RAW failed: $(tail -3 "$out" | tr '\n' ' ')"
  read -r _ _ _ _ _ _ _ rps _ _ <<<"$(parse_wrk "$out")"
  printf '%.0f' "$rps"
}

# measure NAME MODE PCT ROUND: one openloop run at PCT% of the mode's maximum rate.
measure() {
  local name=$1 mode=$2 pct=$3 round=$4 rate out line a0 a1 s0 s1 c0 c1 f cpu p gen_mode gen
  rate=$(( ${MAX_RATE[$mode]} * pct / 100 ))
  [ "$rate" -gt 0 ] || die "rate 0 for $mode at $pct%"
  gen_mode=keepalive
  [ "$mode" = close ] && gen_mode=close
  out="$RAW_DIR/$mode-$pct-$name-$round.txt"
  wait_quiet
  a0=$(cpu_ticks ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}")
  s0=$(sys_busy); read_child_ticks; c0=$CHILD_TICKS
  timeout -k 5 $((SECS + GEN_WARMUP + 30)) "$OPENLOOP_BIN" --addr "127.0.0.1:$PORT" --rate "$rate" \
    --duration "$SECS" --warmup "$GEN_WARMUP" --mode "$gen_mode" --connections "$CONNS" \
    --threads "$GEN_THREADS" >"$out" 2>&1 || die "$name $mode $pct%: openloop failed: $(tail -3 "$out" | tr '\n' ' ')"
  s1=$(sys_busy); read_child_ticks; c1=$CHILD_TICKS
  a1=$(cpu_ticks ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}")
  for p in ${PRIMARY[@]+"${PRIMARY[@]}"} "${OTHERS[@]}"; do
    alive "$p" || die "$name: server process $p died during $mode $pct% run $round"
  done
  line=$(grep -m1 '^mode=' "$out") || die "$name $mode $pct%: no result line: $(tr '\n' ' ' <"$out")"
  [ "$(kv requests "$line")" -gt 0 ] || die "$name $mode $pct%: no request completed: $line"
  cpu=$(awk -v t=$((a1 - a0)) -v h="$CLK_TCK" -v n="$(kv requests "$line")" -v s="$SECS" -v w="$GEN_WARMUP" \
    'BEGIN {printf "%.2f", t / h * 1e6 / (n * (s + w) / s)}')
  f=$(awk -v b=$((s1 - s0)) -v o=$((c1 - c0 + a1 - a0)) -v s="$((SECS + GEN_WARMUP))" -v h="$CLK_TCK" \
    'BEGIN {f = (b - o) / h / s; if (f < 0) f = 0; printf "%.2f", f}')
  gen=$(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v s="$((SECS + GEN_WARMUP))" 'BEGIN {printf "%.2f", t / h / s}')
  printf '%s@%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$pct" "$name" "$round" "$rate" \
    "$(kv achieved_rate "$line")" "$(kv p50_us "$line")" "$(kv p99_us "$line")" "$(kv p999_us "$line")" \
    "$(kv max_us "$line")" "$(kv requests "$line")" "$(kv errors "$line")" "$(kv timeouts "$line")" \
    "$(kv non2xx "$line")" "$(kv lag_p99_us "$line")" "$cpu" "$f" "$gen" >>"$RESULTS"
  printf '  %s %-13s %-5s %3s%% %7s req/s: achieved %7s  p50 %7s  p99 %8s  p99.9 %8s us  errors %s timeouts %s  cpu %s us/req  generator %s cores  foreign %s\n' \
    "$(date +%H:%M:%S)" "$name" "$mode" "$pct" "$rate" "$(kv achieved_rate "$line")" "$(kv p50_us "$line")" \
    "$(kv p99_us "$line")" "$(kv p999_us "$line")" "$(kv errors "$line")" "$(kv timeouts "$line")" "$cpu" "$gen" "$f" >&2
}

# ---------------------------------------------------------------- 1. maximum rates
declare -A MAX_RATE=([ka]=${MAX_RATE_KA:-} [close]=${MAX_RATE_CLOSE:-})
need_max=0
for mode in "${MODE_LIST[@]}"; do [ -n "${MAX_RATE[$mode]}" ] || need_max=1; done
if [ "$need_max" = 1 ]; then
  echo "== maximum rate of $RAW ($(label "$RAW")), closed-loop wrk -t1 -c64 -d${MAX_SECS}s" >&2
  start_server "$RAW"
  warm_up "$RAW" $((WARM_SECS > 0 ? WARM_SECS : 1))
  for mode in "${MODE_LIST[@]}"; do
    if [ -z "${MAX_RATE[$mode]}" ]; then MAX_RATE[$mode]=$(max_rate "$mode"); fi
    echo "  $mode: ${MAX_RATE[$mode]} req/s" >&2
  done
  stop_server "$RAW"
  sleep 1
fi
for mode in "${MODE_LIST[@]}"; do
  [[ ${MAX_RATE[$mode]} =~ ^[0-9]+$ && ${MAX_RATE[$mode]} -gt 0 ]] || die "no maximum rate for $mode"
done

# ---------------------------------------------------------------- 2. rounds
START=$(date -u +%Y-%m-%dT%H:%MZ)
echo "latency-compare: RUNS=$RUNS DURATION=${SECS}s RATES='$RATES' MODES='$MODES' SERVERS='${SERVER_LIST[*]}' RAW=$RAW; $BUILD_NOTE" >&2
N=${#SERVER_LIST[@]}
for ((r = 1; r <= RUNS; r++)); do
  for ((i = 0; i < N; i++)); do
    name=${SERVER_LIST[$(((i + r - 1) % N))]}
    echo "== round $r/$RUNS: $name ($(label "$name"))" >&2
    start_server "$name"
    warm_up "$name" "$WARM_SECS"
    for mode in "${MODE_LIST[@]}"; do
      for pct in "${RATE_LIST[@]}"; do measure "$name" "$mode" "$pct" "$r"; done
    done
    stop_server "$name"
    sleep 1
  done
done

# ---------------------------------------------------------------- 3. report
rows=$(($(wc -l <"$RESULTS") - 1))
[ "$rows" = $((RUNS * N * ${#MODE_LIST[@]} * ${#RATE_LIST[@]})) ] ||
  die "only $rows of $((RUNS * N * ${#MODE_LIST[@]} * ${#RATE_LIST[@]})) runs were recorded"
agg() { tsv_agg "$RESULTS" "$@"; }
fmt() { if [ "$1" = NA ]; then echo "–"; else awk -v v="$1" -v d="${2:-0}" 'BEGIN {printf "%." d "f", v}'; fi; }

echo
echo "<!-- scripts/latency-compare.sh; $(machine_note); started $START; RUNS=$RUNS DURATION=${SECS}s CONNS=$CONNS WORKERS=$WORKERS; ${BUILD_NOTE:-} -->"
echo "Open-loop latency (benches/peers openloop): from each request's due time to the last byte of its response; medians over $RUNS round(s). Cells: p50 / p99 / p99.9 µs (p99 ÷ $RAW's p99)."
for mode in "${MODE_LIST[@]}"; do
  echo
  echo "#### $(mode_title "$mode"); maximum rate of $RAW (closed-loop wrk): ${MAX_RATE[$mode]} req/s"
  echo
  header="| server |"
  rule="|---|"
  for pct in "${RATE_LIST[@]}"; do
    header+=" $pct% ($((MAX_RATE[$mode] * pct / 100)) req/s) |"
    rule+="---|"
  done
  echo "$header server CPU µs/req at ${RATE_LIST[-1]}% |"
  echo "$rule---|"
  for name in "${SERVER_LIST[@]}"; do
    row="| $(label "$name") |"
    for pct in "${RATE_LIST[@]}"; do
      k="$mode@$pct"
      row+=" $(fmt "$(agg "$k" "$name" p50_us)") / $(fmt "$(agg "$k" "$name" p99_us)") / $(fmt "$(agg "$k" "$name" p999_us)")"
      row+=" (×$(ratio_of "$(agg "$k" "$name" p99_us)" "$(agg "$k" "$RAW" p99_us)")) |"
    done
    echo "$row $(fmt "$(agg "$mode@${RATE_LIST[-1]}" "$name" cpu_us_req)" 1) |"
  done
done

echo
echo "#### Checks (p99 ratios of medians to $RAW)"
echo
echo '```'
# check_p99 SERVER LIMIT MODE PCT
check_p99() {
  local v a b desc
  a=$(agg "$3@$4" "$1" p99_us); b=$(agg "$3@$4" "$RAW" p99_us)
  v=$(ratio_of "$a" "$b")
  desc=$(printf '%-5s %3s%%: p99 %s / %s' "$3" "$4" "$1" "$RAW")
  if [ "$v" = NA ]; then
    printf '  SKIP  %-44s (not measured)\n' "$desc"
  elif awk -v v="$v" -v l="$2" 'BEGIN {exit !(v <= l)}'; then
    pass "$(printf '%-44s %s <= %s   (%s / %s µs)' "$desc" "$v" "$2" "$a" "$b")"
  else
    fail "$(printf '%-44s %s > %s   (%s / %s µs)' "$desc" "$v" "$2" "$a" "$b")"
  fi
}
for mode in "${MODE_LIST[@]}"; do
  for pct in "${RATE_LIST[@]}"; do
    if [ "$pct" -le 75 ]; then check_p99 fl-rr 1.10 "$mode" "$pct"; else check_p99 fl-rr 1.25 "$mode" "$pct"; fi
    check_p99 fl-reuseport 1.05 "$mode" "$pct"
  done
done
echo '```'
# Flags: runs the generator could not keep at their rate, errors, timeouts, other work.
awk -F'\t' 'NR > 1 {
    w = ""
    if ($5 + 0 < 0.97 * $4) w = w sprintf(" achieved %s of %s req/s;", $5, $4)
    if ($11 + $12 + $13 > 0) w = w sprintf(" errors %s, timeouts %s, non-2xx %s;", $11, $12, $13)
    if ($16 + 0 > 0.10) w = w sprintf(" other work used %s cores;", $16)
    if ($17 + 0 > 0.90) w = w sprintf(" the generator used %s cores (GEN_THREADS may help);", $17)
    if (w != "") printf "WARNING: %s %s round %s:%s\n", $2, $1, $3, w }' "$RESULTS"
[ -n "$OUT_DIR" ] && echo "runs.tsv and the generator's output in $OUT_DIR"
if [ "$FAILS" -gt 0 ]; then
  echo "$FAILS check(s) failed"
  exit 1
fi
echo "all checks that ran passed (see SKIP lines for those that did not)"
exit 0
