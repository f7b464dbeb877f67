#!/usr/bin/env bash
# Issue 16 item 4, fault test: a client that pipelines requests and never reads.
#
#   scripts/fault-slow-reader.sh                 # 400 MB of GETs for at most 10 s
#   DURATION=5 POLICY=none scripts/fault-slow-reader.sh
#
#  1. start `http_cluster --workers WORKERS --port 0` (127.0.0.1), check it answers, and
#     record its workers' resident sets (VmRSS in /proc/PID/status);
#  2. open one TCP connection (bash's /dev/tcp) and write up to BYTES (default 400 MB)
#     of `GET / HTTP/1.1` requests on it, back to back, for at most DURATION seconds,
#     never reading a byte; sample every worker's VmRSS every 0.2 s meanwhile;
#  3. stop the client, then check the cluster still answers.
#
# Assertions (any failure → exit 1):
#  - every worker's VmRSS stays under MAX_RSS_KB (default 16384: 16 MB) throughout (a
#    worker that reads the requests and queues the answers without bound grows to
#    gigabytes: the answers to 400 MB of requests);
#  - the client is held back: it has not written all BYTES when DURATION runs out (the
#    server stopped reading, so the client's socket filled up);
#  - the cluster answers `curl` afterwards, with the same workers (none died).
#
# Env: BYTES (419430400), DURATION (10), WORKERS (2), POLICY (http_cluster --policy;
#      unset: its default), MAX_RSS_KB (16384), SKIP_BUILD=1, KEEP_DIR.
# Exit status: 0 all assertions hold, 1 one failed, 2 the test itself could not run.
# Loopback only; every process started is stopped by its pid on exit.
# shellcheck disable=SC2015  # `A && pass … || fail …`: pass always succeeds
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-slow-reader
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BYTES=${BYTES:-419430400}
DURATION=${DURATION:-10}
WORKERS=${WORKERS:-2}
POLICY=${POLICY:-}
MAX_RSS_KB=${MAX_RSS_KB:-16384}
whole_numbers BYTES DURATION WORKERS MAX_RSS_KB

prepare_http_cluster
pre_cleanup() { track_cluster_workers; }

# rss_kb PID: VmRSS of PID in KiB (0 if gone).
rss_kb() { awk '/^VmRSS:/ {print $2; found = 1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }

echo "fault-slow-reader: BYTES=$BYTES DURATION=${DURATION}s WORKERS=$WORKERS POLICY=${POLICY:-default} MAX_RSS_KB=$MAX_RSS_KB ($(nproc) CPUs, kernel $(uname -r))"
log=$TMP_DIR/cluster.log
start_cluster "$log" --workers "$WORKERS" ${POLICY:+--policy "$POLICY"}
[ "$(curl -s --max-time 3 "http://127.0.0.1:$PORT/")" = "hello world" ] || die "no 'hello world' on port $PORT"
mapfile -t workers < <(worker_pids "$PRIMARY")
[ ${#workers[@]} = "$WORKERS" ] || die "${#workers[@]} workers (expected $WORKERS)"
declare -A max_rss
for w in "${workers[@]}"; do
  max_rss[$w]=$(rss_kb "$w")
  echo "  worker $w: VmRSS ${max_rss[$w]} KiB before"
done

# The client: requests, back to back, into a socket it never reads. `head -c` stops at
# BYTES; `timeout` at DURATION.
req=$'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r'   # `yes` adds the final \n
# shellcheck disable=SC2016  # expanded by the inner shell
timeout -k 2 "$DURATION" bash -c '
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 3
  set -o pipefail
  yes "$2" | head -c "$3" >&3' _ "$PORT" "$req" "$BYTES" &
client=$!
track "$client"
t0=$(now_ms)
while alive "$client"; do
  for w in "${workers[@]}"; do
    r=$(rss_kb "$w")
    ((r > max_rss[$w])) && max_rss[$w]=$r
  done
  sleep 0.2
done
rc=0
wait "$client" || rc=$?
elapsed=$(($(now_ms) - t0))
echo "  client ran ${elapsed} ms, exit status $rc (124: stopped by the ${DURATION}s timeout, still writing; 0: wrote everything)"

worst=0
for w in "${workers[@]}"; do
  echo "  worker $w: VmRSS max ${max_rss[$w]} KiB while the client wrote, $(rss_kb "$w") KiB now"
  ((max_rss[$w] > worst)) && worst=${max_rss[$w]}
done
[ "$worst" -lt "$MAX_RSS_KB" ] && pass "every worker stayed under $MAX_RSS_KB KiB (max $worst KiB)" ||
  fail "a worker reached $worst KiB (limit $MAX_RSS_KB KiB)"
case $rc in
  124) pass "the client was held back: it could not write $BYTES bytes in ${DURATION}s" ;;
  0) fail "the client wrote all $BYTES bytes in ${elapsed} ms: nothing held it back" ;;
  *) fail "the client failed (status $rc)" ;;
esac

sleep 0.5
[ "$(curl -s --max-time 3 "http://127.0.0.1:$PORT/")" = "hello world" ] && pass "the cluster answers afterwards" ||
  fail "no answer from the cluster afterwards"
mapfile -t after < <(worker_pids "$PRIMARY")
[ "${after[*]}" = "${workers[*]}" ] && pass "same workers throughout (${workers[*]})" ||
  fail "workers changed: ${workers[*]} -> ${after[*]}"

stop_cluster || true
if [ "$FAILS" -gt 0 ]; then
  echo "FAIL: $FAILS assertion(s) violated"
  exit 1
fi
echo "PASS: all assertions hold"
