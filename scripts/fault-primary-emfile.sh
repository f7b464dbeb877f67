#!/usr/bin/env bash
# Issue 16, item 2: a primary out of descriptors (EMFILE on accept) must not stall.
#
#   scripts/fault-primary-emfile.sh
#
# Starts `http_cluster --workers WORKERS` (127.0.0.1, RUST_LOG=warn), then limits its
# primary alone to NOFILE descriptors (`prlimit --pid PRIMARY --nofile=NOFILE`, default 20;
# the workers keep theirs) and makes a burst of BURST (60) keep-alive connections, each
# with one `GET /`, and no other client after them. So that the burst really waits in the
# backlog at once (bash connects one at a time), the primary is stopped (SIGSTOP) while
# the clients connect and continued (SIGCONT) after; the time counts from then. It then
# has more connections waiting than descriptors free, and must hit EMFILE.
#   PASS when: every client of the burst is answered within DEADLINE_MS (2000) ms, none
#   is reset, the primary logged the episode at most a few times (one line per episode,
#   not one per attempt), and the primary is still up.
#
# Env: WORKERS (2), NOFILE (20), BURST (60), DEADLINE_MS (2000), SKIP_BUILD=1, KEEP_DIR.
# Exit status: 0 all assertions hold, 1 one failed, 2 the test itself could not run.
# Loopback only; every process started is stopped by its pid on exit.
# shellcheck disable=SC2015  # `A && pass … || fail …`: pass always succeeds
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-primary-emfile
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORKERS=${WORKERS:-2}
NOFILE=${NOFILE:-20}
BURST=${BURST:-60}
DEADLINE_MS=${DEADLINE_MS:-2000}
whole_numbers WORKERS NOFILE BURST DEADLINE_MS
[ "$BURST" -lt 500 ] || die "BURST must stay below the backlog (511)"
need prlimit util-linux
export RUST_LOG=${RUST_LOG:-warn}

prepare_http_cluster
pre_cleanup() { track_cluster_workers; }

log=$TMP_DIR/cluster.log
echo "fault-primary-emfile: WORKERS=$WORKERS NOFILE=$NOFILE BURST=$BURST DEADLINE_MS=$DEADLINE_MS ($(nproc) CPUs, kernel $(uname -r))"
start_cluster "$log" --workers "$WORKERS"
[ "$(curl -s --max-time 3 "http://127.0.0.1:$PORT/")" = "hello world" ] || die "no 'hello world' on port $PORT"
fds=$(fd_count "$PRIMARY")
echo "  primary pid $PRIMARY, port $PORT, $fds open descriptors; limiting it to $NOFILE"
[ "$fds" -lt "$NOFILE" ] || die "the primary already has $fds descriptors open (NOFILE=$NOFILE leaves it none to accept with)"
prlimit --pid "$PRIMARY" --nofile="$NOFILE":"$NOFILE"

kill -STOP "$PRIMARY"
open_clients "$BURST" "$PORT"
kill -CONT "$PRIMARY"
t0=$(now_ms)
[ "$CONNECT_FAILS" = 0 ] || fail "$CONNECT_FAILS connects failed"
while [ ${#WAITING_FDS[@]} -gt 0 ] && [ $(($(now_ms) - t0)) -lt "$DEADLINE_MS" ]; do
  poll_clients
  sleep 0.02
done
took=$(($(now_ms) - t0))
answered=${#ANSWERED_FDS[@]}
echo "  answered $answered of $BURST in $took ms; reset: $RESET_COUNT; still waiting: ${#WAITING_FDS[@]}"
[ "$answered" = "$BURST" ] && pass "every client of the burst answered within ${DEADLINE_MS} ms (no further client)" ||
  fail "$answered of $BURST answered within ${DEADLINE_MS} ms"
[ "$RESET_COUNT" = 0 ] && pass "no connection reset" || fail "$RESET_COUNT connections reset or closed unanswered"
close_answered "$answered"
for fd in ${WAITING_FDS[@]+"${WAITING_FDS[@]}"}; do exec {fd}>&-; done
lines=$(grep -c 'cannot accept' "$log" || true)
echo "  'cannot accept' log lines: $lines"
grep -m1 'cannot accept' "$log" | sed 's/^/  cluster log: /' || true
[ "$lines" -ge 1 ] && pass "the primary hit EMFILE and said so" ||
  fail "no 'cannot accept' line: the limit did not bite (or was not logged)"
[ "$lines" -le 3 ] && pass "logged once per episode ($lines line(s)), not per attempt" ||
  fail "$lines 'cannot accept' lines: one per attempt?"
alive "$PRIMARY" && pass "the primary is up" || fail "the primary died"
stop_cluster || true
if [ "$FAILS" -gt 0 ]; then
  echo "FAIL: $FAILS assertion(s) violated"
  exit 1
fi
echo "PASS: all assertions hold"
