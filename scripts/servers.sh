# The HTTP servers the comparison scripts measure (http-compare, latency-compare,
# balance-compare, http-syscalls), and the peer programs they need: sourced after
# scripts/lib.sh. Everything a comparison runs besides forkloop itself is in the
# repository, under benches/peers/ (a cargo package of its own, built into target/peers,
# and the Node and nginx files); what must be installed is printed by `need` when missing.
#
# Servers (WORKERS processes each, default 2, unless noted):
#   fl-rr fl-reuseport fl-none   forkloop examples/http_cluster --policy rr|reuseport|none
#                                (NAME@K: with --credit K, e.g. fl-rr@4; NAME~W: with
#                                --accept-window-ms W, e.g. fl-rr~1; NAME:normal: with
#                                --primary-sched normal; combined: fl-rr@4~1:normal)
#   node-rr node-none            Node cluster (benches/peers/js/http-cluster.js)
#   node-single                  Node, one process
#   flnode-rr flnode-none        the same Node workers (http-cluster.js, unmodified) under the
#                                `forkloop run` command's primary instead of Node's
#   nginx                        nginx, worker_processes WORKERS (benches/peers/nginx/nginx.conf)
#   mio-1 mio-N                  the raw mio server (benches/peers/src/bin/mio-http.rs): one
#                                process, or N processes sharing the port with SO_REUSEPORT
#                                (mio-2, mio-4, ...)
# start_server NAME sets PORT, PRIMARY (array: the primary/master pid, or empty), OTHERS
# (array: every other server process, i.e. the workers) and MAIN (the pids started here);
# stop_server NAME stops them. With NODE_STATS=1 the Node workers count connections and
# requests (see http-cluster.js).
# shellcheck shell=bash disable=SC2034  # variables the sourcing scripts read

PEERS=benches/peers
PEERS_BIN=target/peers/release
FL_BIN=target/release/examples/http_cluster
FLCLI_BIN=target/release/forkloop
MIO_BIN=$PEERS_BIN/mio-http
OPENLOOP_BIN=$PEERS_BIN/openloop
WORKERS=${WORKERS:-2}
NODE_STATS=${NODE_STATS:-0}

# build_peers: builds the peers package (mio-http, ipc-bench, openloop) into target/peers.
build_peers() {
  build_retry cargo build --release --quiet --locked --manifest-path "$PEERS/Cargo.toml" \
    --target-dir target/peers
}

# prepare_servers NAME...: checks the tools the servers need, builds what they run
# (unless SKIP_BUILD=1; NEED_OPENLOOP=1 builds the peers for the load generator too) and
# measures private copies: others may rebuild target/ in this tree while a run goes on,
# and a run must not switch binaries half-way (http_cluster starts its workers from its
# own executable, so they run the copy too). Sets BUILD_NOTE.
prepare_servers() {
  local name use_fl=0 use_cli=0 use_peers=${NEED_OPENLOOP:-0} rev
  for name in "$@"; do
    case $(server_base "$name") in
      fl-rr | fl-reuseport | fl-none) use_fl=1 ;;
      flnode-rr | flnode-none) use_cli=1; need node nodejs ;;
      mio-[0-9]*) use_peers=1 ;;
      node-*) need node nodejs ;;
      nginx) need nginx nginx ;;
      *) die "unknown server $name (see scripts/servers.sh)" ;;
    esac
  done
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if [ "$use_fl" = 1 ]; then build_retry cargo build --release --quiet --example http_cluster; fi
    if [ "$use_cli" = 1 ]; then build_retry cargo build --release --quiet --bin forkloop; fi
    if [ "$use_peers" = 1 ]; then build_peers; fi
  fi
  mkdir -p "$TMP_DIR/bin"
  BUILD_NOTE=""
  if [ "$use_fl" = 1 ]; then
    [ -x "$FL_BIN" ] || die "missing $FL_BIN"
    cp "$FL_BIN" "$TMP_DIR/bin/http_cluster"
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git --no-optional-locks status --porcelain -- src examples Cargo.toml Cargo.lock 2>/dev/null)" ]; then
      rev+="+uncommitted"
    fi
    BUILD_NOTE="http_cluster $rev built $(date -r "$FL_BIN" +%H:%M:%S) sha256 $(sha256sum "$FL_BIN" | cut -c1-12)"
    FL_BIN=$TMP_DIR/bin/http_cluster
  fi
  if [ "$use_cli" = 1 ]; then
    [ -x "$FLCLI_BIN" ] || die "missing $FLCLI_BIN"
    cp "$FLCLI_BIN" "$TMP_DIR/bin/forkloop"
    FLCLI_BIN=$TMP_DIR/bin/forkloop
  fi
  if [ "$use_peers" = 1 ]; then
    local b
    for b in mio-http openloop; do
      [ -x "$PEERS_BIN/$b" ] || die "missing $PEERS_BIN/$b"
      cp "$PEERS_BIN/$b" "$TMP_DIR/bin/$b"
    done
    MIO_BIN=$TMP_DIR/bin/mio-http
    OPENLOOP_BIN=$TMP_DIR/bin/openloop
  fi
}

# ---------------------------------------------------------------- helpers
listeners_on() { [ "$(ss -Hltn "sport = :$1" | wc -l)" -ge "$2" ]; }
children_of() { ps -o pid= --ppid "$1" | tr -d ' ' | grep . || true; }
has_children() { [ "$(children_of "$1" | wc -l)" -ge "$2" ]; }

# stat_ticks EXPR PID...: EXPR of /proc/PID/stat's fields (clock ticks), summed over the
# processes (all threads); fields counted from after the command name: $12 utime, $13 stime.
stat_ticks() {
  local expr=$1 p sum=0 t
  shift
  for p in "$@"; do
    t=$(awk "{sub(/.*\\) /, \"\"); print $expr}" "/proc/$p/stat" 2>/dev/null) || t=0
    sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}
# cpu_ticks PID...: utime+stime. user_ticks PID...: utime alone.
cpu_ticks() { stat_ticks '$12 + $13' "$@"; }
user_ticks() { stat_ticks '$12' "$@"; }

# vol_ctx_switches PID...: voluntary context switches (sleeps: waits for I/O or for a
# wake-up) of every thread of the given processes so far, from /proc/PID/task/*/status.
vol_ctx_switches() {
  local p sum=0 t
  for p in "$@"; do
    t=$(cat "/proc/$p"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches:/ {n += $2} END {print n + 0}') || t=0
    sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}

# keep_server_logs: with OUT_DIR set, copies the server logs there (a post_cleanup hook).
keep_server_logs() {
  if [ -n "${OUT_DIR:-}" ]; then cp "$TMP_DIR"/*.log "$OUT_DIR"/ 2>/dev/null || true; fi
}

# warm_up NAME SECS [CONNS]: SECS of keep-alive `wrk -t1 -cCONNS` (64) against the server
# started last; none for 0.
warm_up() {
  [ "$2" -gt 0 ] || return 0
  timeout -k 5 $(($2 + 20)) wrk -t1 -c"${3:-64}" -d"$2s" "http://127.0.0.1:$PORT/" >/dev/null 2>&1 ||
    die "$1: warm-up failed"
}

# ---------------------------------------------------------------- servers
# server_base NAME: NAME without its @K, ~W and :normal suffixes.
server_base() { echo "${1%%[@~:]*}"; }
# server_credit NAME / server_window NAME: the K of @K and the W of ~W, or nothing.
server_credit() { if [[ $1 =~ @([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; fi; }
server_window() { if [[ $1 =~ ~([0-9.]+) ]]; then echo "${BASH_REMATCH[1]}"; fi; }
# server_sched NAME: "normal" for NAME:normal, else nothing.
server_sched() { if [[ $1 == *:normal ]]; then echo normal; fi; }

label() {
  local base k w n
  base=$(server_base "$1") k=$(server_credit "$1") w=$(server_window "$1") n=$(server_sched "$1")
  [ -z "$k" ] && k=${CREDIT:-default}
  case $base in
    fl-rr) echo "forkloop rr, $WORKERS workers, credit $k${w:+, accept window $w ms}${n:+, primary in the normal scheduling class}" ;;
    fl-reuseport) echo "forkloop reuseport, $WORKERS workers" ;;
    fl-none) echo "forkloop none (shared socket), $WORKERS workers" ;;
    node-rr) echo "Node cluster SCHED_RR, $WORKERS workers" ;;
    node-none) echo "Node cluster SCHED_NONE, $WORKERS workers" ;;
    node-single) echo "Node, 1 process" ;;
    flnode-rr) echo "Node workers under forkloop run --policy rr, $WORKERS workers" ;;
    flnode-none) echo "Node workers under forkloop run --policy none, $WORKERS workers" ;;
    nginx) echo "nginx, $WORKERS workers" ;;
    mio-1) echo "raw mio, 1 process" ;;
    mio-[0-9]*) echo "raw mio, ${base#mio-} processes SO_REUSEPORT" ;;
    *) echo "$1" ;;
  esac
}

# start_server NAME: sets PORT, PRIMARY (the primary/master pid, or empty) and OTHERS
# (every other server process), MAIN (the pids we started ourselves).
start_server() {
  local name=$1 base log="$TMP_DIR/$1.log" credit=() k w p try
  base=$(server_base "$name")
  for try in 1 2 3; do
    PRIMARY=() OTHERS=() MAIN=()
    : >"$log"
    if start_server_once; then return 0; fi
    echo "  starting $name failed (attempt $try); log:" >&2
    tail -5 "$log" >&2 || true
    stop_pids "${MAIN[@]}" ${OTHERS[@]+"${OTHERS[@]}"}
  done
  die "could not start $name"
}

start_server_once() {
  case $base in
    fl-rr | fl-reuseport | fl-none)
      k=$(server_credit "$name") w=$(server_window "$name")
      [ -z "$k" ] && k=${CREDIT:-}
      [ -n "$k" ] && credit=(--credit "$k")
      [ -n "$w" ] && credit+=(--accept-window-ms "$w")
      [ -n "$(server_sched "$name")" ] && credit+=(--primary-sched normal)
      "$FL_BIN" --workers "$WORKERS" --port 0 --host 127.0.0.1 --policy "${base#fl-}" ${credit[@]+"${credit[@]}"} >"$log" 2>&1 &
      MAIN=($!); track $!; PRIMARY=($!)
      wait_for "$name listening line" 20 "$!" has_line "$log" "^listening on 127\\.0\\.0\\.1:[0-9]+ workers=$WORKERS " || return 1
      PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$log" | head -1)
      wait_for "$name workers" 5 "${PRIMARY[0]}" has_children "${PRIMARY[0]}" "$WORKERS" || return 1
      for p in $(children_of "${PRIMARY[0]}"); do OTHERS+=("$p"); track "$p"; done
      ;;
    node-rr | node-none | node-single)
      PORT=$(free_port)
      if [ "$base" = node-single ]; then
        PORT=$PORT node "$PEERS/js/http-single.js" >"$log" 2>&1 &
      elif [ "$base" = node-rr ]; then
        env -u NODE_CLUSTER_SCHED_POLICY PORT="$PORT" WORKERS="$WORKERS" STATS="$NODE_STATS" node "$PEERS/js/http-cluster.js" >"$log" 2>&1 &
      else
        NODE_CLUSTER_SCHED_POLICY=none PORT="$PORT" WORKERS="$WORKERS" STATS="$NODE_STATS" node "$PEERS/js/http-cluster.js" >"$log" 2>&1 &
      fi
      MAIN=($!); track $!
      wait_for "$name ready line" 20 "$!" has_line "$log" '^ready' || return 1
      if [ "$base" = node-single ]; then
        OTHERS=("${MAIN[@]}")
      else
        PRIMARY=("${MAIN[@]}")
        for p in $(sed -n 's/^worker pid=\([0-9]*\)$/\1/p' "$log"); do OTHERS+=("$p"); track "$p"; done
        [ ${#OTHERS[@]} = "$WORKERS" ] || { echo "  expected $WORKERS Node workers" >&2; return 1; }
      fi
      ;;
    flnode-rr | flnode-none)
      PORT=$(free_port)
      PORT=$PORT STATS="$NODE_STATS" "$FLCLI_BIN" run --workers "$WORKERS" --policy "${base#flnode-}" \
        -- node "$PEERS/js/http-cluster.js" >"$log" 2>&1 &
      MAIN=($!); track $!; PRIMARY=($!)
      wait_for "$name workers" 20 "$!" has_children "${PRIMARY[0]}" "$WORKERS" || return 1
      for p in $(children_of "${PRIMARY[0]}"); do OTHERS+=("$p"); track "$p"; done
      wait_for "$name port" 20 "$!" listeners_on "$PORT" 1 || return 1
      # Every worker has sent `listening` once the primary says so for each of them.
      wait_for "$name listening workers" 20 "$!" ready_lines "$log" "$WORKERS" || return 1
      ;;
    nginx)
      PORT=$(free_port)
      mkdir -p "$TMP_DIR/nginx"
      sed -e "s/listen 127\.0\.0\.1:[0-9]*;/listen 127.0.0.1:$PORT;/" \
        -e "s/^worker_processes [0-9]*;/worker_processes $WORKERS;/" "$PEERS/nginx/nginx.conf" >"$TMP_DIR/nginx/nginx.conf"
      grep -q "listen 127.0.0.1:$PORT;" "$TMP_DIR/nginx/nginx.conf" || die "could not rewrite the nginx port"
      nginx -p "$TMP_DIR/nginx/" -e "$TMP_DIR/nginx/error.log" -c "$TMP_DIR/nginx/nginx.conf" >"$log" 2>&1 &
      MAIN=($!); track $!; PRIMARY=($!)
      wait_for "nginx port" 20 "$!" listeners_on "$PORT" 1 || return 1
      wait_for "nginx workers" 5 "${PRIMARY[0]}" has_children "${PRIMARY[0]}" "$WORKERS" || return 1
      for p in $(children_of "${PRIMARY[0]}"); do OTHERS+=("$p"); track "$p"; done
      ;;
    mio-1)
      PORT=$(free_port)
      "$MIO_BIN" --addr "127.0.0.1:$PORT" >"$log" 2>&1 &
      MAIN=($!); track $!; OTHERS=($!)
      wait_for "mio-1 port" 20 "$!" listeners_on "$PORT" 1 || return 1
      ;;
    mio-[0-9]*)
      local n=${base#mio-} i
      [[ $n =~ ^[1-9][0-9]*$ ]] || die "bad server $name (mio-N: N processes)"
      PORT=$(free_port)
      for ((i = 0; i < n; i++)); do
        "$MIO_BIN" --addr "127.0.0.1:$PORT" --reuseport >>"$log" 2>&1 &
        MAIN+=($!); track $!
      done
      OTHERS=("${MAIN[@]}")
      wait_for "$name ports" 20 "$!" listeners_on "$PORT" "$n" || return 1
      ;;
    *) die "unknown server $name" ;;
  esac
  # One request by hand: the server answers hello world.
  if command -v curl >/dev/null; then
    [ "$(curl -s --max-time 3 "http://127.0.0.1:$PORT/")" = "hello world" ] ||
      { echo "  $name on port $PORT does not answer 'hello world'" >&2; return 1; }
  fi
}

# stop_server NAME: SIGTERM the processes we started (the primary stops its workers),
# make sure the workers are gone too, and report a forkloop primary not exiting with 0.
stop_server() {
  local name=$1 p st=0
  for p in "${MAIN[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [[ $name == fl-* || $name == flnode-* ]]; then
    # Reap the primary ourselves to see its exit status (bounded by the 5 s below).
    for p in $(seq 1 50); do alive "${MAIN[0]}" || break; sleep 0.1; done
    if ! alive "${MAIN[0]}"; then
      wait "${MAIN[0]}" 2>/dev/null || st=$?
      [ "$st" = 0 ] || echo "  WARNING: $name primary exited with status $st on SIGTERM" >&2
    fi
  fi
  stop_pids "${MAIN[@]}" ${OTHERS[@]+"${OTHERS[@]}"}
}

