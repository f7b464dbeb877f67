#!/usr/bin/env bash
# Issue 16 item 7: start failures exit non-zero quickly, with one line naming the address.
#
#   scripts/fault-start-errors.sh
#
# Case 1, port in use: a first `http_cluster --port 0` (round-robin: the primary holds the
#   port without SO_REUSEPORT) takes a port; a second `http_cluster --port THAT --policy
#   $POLICY` must exit non-zero within LIMIT_S (5) s, print a line naming
#   127.0.0.1:THAT and the error, and fork no replacement workers (no restart dance).
# Case 2, port 80 as nobody: run as root only (to become nobody with setpriv); skipped
#   with a reason otherwise, or when unprivileged ports start at or below 80 here. The
#   binary is copied to a temporary directory nobody can read. Expected: non-zero exit
#   within LIMIT_S s and a line naming 127.0.0.1:80.
#
# Env: POLICY (the second cluster's --policy; unset: rr), LIMIT_S (5), SKIP_BUILD=1.
# Exit status: 0 all PASS (or skipped), 1 some FAIL, 2 the test itself could not run.
# Loopback only; bounded; every process started is stopped by its pid on exit.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=fault-start-errors
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

LIMIT_S=${LIMIT_S:-5}
POLICY=${POLICY:-}
[[ $LIMIT_S =~ ^[0-9]+$ ]] || die "LIMIT_S must be a whole number"
build_http_cluster
pre_cleanup() { track_cluster_workers; }

# expect_start_failure NAME ADDR LOG CMD...: runs CMD (bounded by LIMIT_S + 5 s), checks
# a non-zero exit within LIMIT_S s and a line naming ADDR.
expect_start_failure() {
  local name=$1 addr=$2 log=$3 t0 t1 rc=0 ms lines
  shift 3
  t0=$(now_ms)
  timeout -k 2 $((LIMIT_S + 5)) "$@" >"$log" 2>&1 || rc=$?
  t1=$(now_ms)
  ms=$((t1 - t0))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    fail "$name: still running after $((LIMIT_S + 5)) s"
  elif [ "$rc" = 0 ]; then
    fail "$name: exit status 0 after ${ms} ms"
  elif [ "$ms" -gt $((LIMIT_S * 1000)) ]; then
    fail "$name: exit status $rc but only after ${ms} ms"
  else
    pass "$name: exit status $rc after ${ms} ms"
  fi
  lines=$(grep -cF "$addr" "$log" || true)
  if grep -F "$addr" "$log" | grep -qiE "in use|denied|not permitted"; then
    pass "$name: $lines line(s) name $addr: $(grep -F "$addr" "$log" | head -n1)"
  else
    fail "$name: no line names $addr and the error; output:"
    sed 's/^/    /' "$log" | head -n 20
  fi
  if grep -q "Restarting\|BreakerTripped" "$log"; then
    fail "$name: restarts happened: $(grep -c 'Restarting' "$log") Restarting line(s)"
  else
    pass "$name: no restarts"
  fi
}

echo "case 1: port in use"
start_cluster "$TMP_DIR/first.log" --workers 1
taken=$PORT
RUST_LOG=${RUST_LOG:-error} expect_start_failure "port in use" "127.0.0.1:$taken" "$TMP_DIR/second.log" \
  "$FL_BIN" --workers 2 --host 127.0.0.1 --port "$taken" ${POLICY:+--policy "$POLICY"}
stop_pids "$PRIMARY"
PRIMARY=

echo "case 2: port 80 as nobody"
unpriv=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)
if [ "$(id -u)" != 0 ]; then
  echo "  SKIP  not root: cannot become nobody"
elif ! command -v setpriv >/dev/null; then
  echo "  SKIP  setpriv not found (util-linux)"
elif [ "$unpriv" -le 80 ]; then
  echo "  SKIP  ip_unprivileged_port_start is $unpriv: nobody may bind port 80 here"
else
  dir=$(mktemp -d -t fault-start-nobody.XXXXXX)
  chmod 755 "$dir"
  cp "$FL_BIN" "$dir/http_cluster"
  chmod 755 "$dir/http_cluster"
  group=$(id -gn nobody 2>/dev/null || echo nogroup)
  RUST_LOG=${RUST_LOG:-error} expect_start_failure "port 80 as nobody" "127.0.0.1:80" "$TMP_DIR/nobody.log" \
    setpriv --reuid=nobody --regid="$group" --clear-groups "$dir/http_cluster" --workers 2 --host 127.0.0.1 --port 80
  rm -rf "$dir"
fi

if [ "$FAILS" -eq 0 ]; then echo "PASS fault-start-errors"; else echo "FAIL fault-start-errors ($FAILS failed)"; exit 1; fi
