#!/usr/bin/env bash
# Issue 16, item 6: one worker asking for listeners without end must not exhaust the
# primary.
#
#   scripts/fault-listen-flood.sh
#
# Runs `forkloop run --workers 2 --policy rr` with an ordinary Node.js cluster app written
# to a temporary directory: every worker serves "hello world" on PORT; worker 1 then calls
# `net.createServer().listen(0)` FLOOD times (12 000: every call is a listen request to the
# primary) and prints how many listened and how many were refused.
#   PASS when: the flooding worker is refused past the per-worker cap (and survives: it
#   handles the errors), the primary's open descriptors stay under FD_MAX (it held 19 997
#   before the cap), HTTP on PORT is still answered, and a new worker can be started
#   (SIGTTIN: a third worker comes up and serves).
#
# Env: FLOOD (12000), FD_MAX (400), SKIP_BUILD=1, KEEP_DIR.
# Exit status: 0 all assertions hold, 1 one failed, 2 the test itself could not run.
# Loopback only; every process started is stopped by its pid on exit.
# shellcheck disable=SC2015  # `A && pass … || fail …`: pass always succeeds
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-listen-flood
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

FLOOD=${FLOOD:-12000}
FD_MAX=${FD_MAX:-400}
whole_numbers FLOOD FD_MAX
need node nodejs
need curl curl
need timeout coreutils
CLI=target/release/forkloop
if [ "${SKIP_BUILD:-0}" != 1 ]; then build_retry cargo build --release --quiet --bin forkloop; fi
[ -x "$CLI" ] || die "missing $CLI"
pre_cleanup() { track_cluster_workers; }

app=$TMP_DIR/flood.js
cat >"$app" <<'JS'
const cluster = require('cluster');
const http = require('http');
const net = require('net');
http.createServer((req, res) => res.end('hello world')).listen(Number(process.env.PORT), '127.0.0.1');
if (cluster.worker.id === 1) {
  const want = Number(process.env.FLOOD);
  let ok = 0, refused = 0, firstError = '';
  const done = () => {
    if (ok + refused === want) console.log(`flood done ok=${ok} refused=${refused} first_error=${firstError}`);
  };
  for (let i = 0; i < want; i++) {
    const s = net.createServer();
    s.on('error', (e) => { refused++; if (!firstError) firstError = e.code; done(); });
    s.listen(0, '127.0.0.1', () => { ok++; done(); });
  }
}
JS

PORT=$(free_port)
log=$TMP_DIR/cluster.log
echo "fault-listen-flood: FLOOD=$FLOOD FD_MAX=$FD_MAX ($(nproc) CPUs, kernel $(uname -r))"
PORT=$PORT FLOOD=$FLOOD "$CLI" run --workers 2 --policy rr -- node "$app" >"$log" 2>&1 &
PRIMARY=$!
track "$PRIMARY"
wait_for "2 workers ready" 30 "$PRIMARY" ready_lines "$log" 2 || die "the cluster did not start; log: $(tail -5 "$log")"
flooded() { grep -q 'flood done' "$log"; }
wait_for "the flood's end" 120 "$PRIMARY" flooded || true
line=$(grep -m1 'flood done' "$log" || true)
echo "  worker 1: ${line:-no 'flood done' line}"
ok=$(sed -n 's/.*flood done ok=\([0-9]*\).*/\1/p' <<<"$line")
refused=$(sed -n 's/.*refused=\([0-9]*\).*/\1/p' <<<"$line")
[ -n "$line" ] && [ "$((ok + refused))" = "$FLOOD" ] && [ "$refused" -gt 0 ] &&
  pass "the flooding worker was refused past the cap ($ok listened, $refused refused)" ||
  fail "the flood was not refused (${line:-no result})"
fds=$(fd_count "$PRIMARY")
echo "  primary descriptors after the flood: $fds"
[ "$fds" -lt "$FD_MAX" ] && pass "the primary holds $fds descriptors (< $FD_MAX)" ||
  fail "the primary holds $fds descriptors (>= $FD_MAX)"
grep -q 'exited' "$log" && fail "a worker exited: $(grep -m1 exited "$log")" ||
  pass "no worker exited"
[ "$(curl -s --max-time 3 "http://127.0.0.1:$PORT/")" = "hello world" ] &&
  pass "HTTP on port $PORT is answered" || fail "HTTP on port $PORT is not answered"
kill -TTIN "$PRIMARY"
wait_for "a third worker" 20 "$PRIMARY" ready_lines "$log" 3 && pass "a new worker starts and is ready" ||
  fail "no third worker became ready after SIGTTIN"
n=$(live_children "$PRIMARY" | wc -l)
echo "  workers now: $n"
alive "$PRIMARY" && pass "the primary is up" || fail "the primary died"
stop_cluster || true
if [ "$FAILS" -gt 0 ]; then
  echo "FAIL: $FAILS assertion(s) violated"
  exit 1
fi
echo "PASS: all assertions hold"
