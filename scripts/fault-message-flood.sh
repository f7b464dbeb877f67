#!/usr/bin/env bash
# Issue 16 item 5, fault test: a worker floods the primary with 16-byte user messages as
# fast as its channel takes them, while a client makes sequential HTTP requests to the
# cluster (round-robin: half of them go to the flooding worker itself).
#
#   scripts/fault-message-flood.sh               # 1000 requests, release build
#   REQUESTS=300 PROFILE=dev scripts/fault-message-flood.sh
#
# It runs the flood test of tests/cluster_flood.rs in its probe mode
# (FORKLOOP_FLOOD_PROBE=REQUESTS): the test measures and prints, this script judges.
#
# Assertions (any failure → exit 1):
#  - the client's p99 latency is under MAX_P99_US (default 10000: 10 ms);
#  - the primary's resident set stays under MAX_RSS_KB (default 32768: 32 MB);
#  - every request is answered (the test itself fails otherwise).
#
# Env: REQUESTS (1000), PROFILE (release | dev), MAX_P99_US (10000), MAX_RSS_KB (32768).
# Exit status: 0 all assertions hold, 1 one failed, 2 the test itself could not run.
# Loopback only; the test kills and reaps its workers itself.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-1000}
PROFILE=${PROFILE:-release}
MAX_P99_US=${MAX_P99_US:-10000}
MAX_RSS_KB=${MAX_RSS_KB:-32768}
for v in REQUESTS MAX_P99_US MAX_RSS_KB; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "fault-message-flood: $v must be a whole number" >&2; exit 2; }
done
case $PROFILE in
  release) profile=(--release) ;;
  dev) profile=() ;;
  *) echo "fault-message-flood: PROFILE must be release or dev" >&2; exit 2 ;;
esac

echo "fault-message-flood: building and running the flood probe (${PROFILE}, ${REQUESTS} requests)"
out=$(FORKLOOP_FLOOD_PROBE=$REQUESTS timeout 600 cargo test -q "${profile[@]}" --all-features \
  --test cluster_flood -- --nocapture 2>&1) || {
  printf '%s\n' "$out" | tail -20
  echo "FAIL  the flood test failed (a request unanswered, or the test could not run)"
  exit 1
}
line=$(printf '%s\n' "$out" | grep '^flood-probe:' || true)
[ -n "$line" ] || { printf '%s\n' "$out" | tail -20; echo "fault-message-flood: no probe line" >&2; exit 2; }
echo "  $line"
field() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
p99=$(field p99_us)
rss=$(field primary_rss_max_kb)
fails=0
if [ "$p99" -lt "$MAX_P99_US" ]; then
  echo "PASS  client p99 ${p99} µs < ${MAX_P99_US} µs"
else
  echo "FAIL  client p99 ${p99} µs >= ${MAX_P99_US} µs"; fails=1
fi
if [ "$rss" -lt "$MAX_RSS_KB" ]; then
  echo "PASS  primary RSS at most ${rss} KiB < ${MAX_RSS_KB} KiB"
else
  echo "FAIL  primary RSS reached ${rss} KiB >= ${MAX_RSS_KB} KiB"; fails=1
fi
[ "$fails" = 0 ] && echo "PASS: all assertions hold" || echo "FAIL: see above"
exit "$fails"
