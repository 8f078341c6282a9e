#!/usr/bin/env bash
# Several processes behind a load balancer, and a rolling restart that loses nothing.
#
#   bash tests/scale/run.sh          (from any directory; CI runs it as root, no stdin)
#
# HAProxy in TCP mode (TLS passes through) with `send-proxy-v2` balances two
# `hello --reuse-port --proxy-protocol` processes on two ports (health checks send the
# header too: `check-send-proxy`, a v2 LOCAL command). The script fails unless:
#   1. curl through HAProxy gets 200 over HTTP/1.1 and HTTP/2, both backends serve, and
#      every request's access line shows the client's own address and port (curl's
#      %{local_port}), not HAProxy's;
#   2. under h2load load through HAProxy (HTTP/2, then HTTP/1.1), one backend is restarted
#      — a new process starts on the same port (SO_REUSEPORT), then the old one gets
#      SIGTERM and drains — with 0 failed, errored or timed-out requests, the old process
#      exits 0 within its drain timeout, and the new one serves. Beside h2load, curl opens
#      a fresh connection every ~20 ms through the whole restart (h2load's HTTP/2 clients
#      stop after a GOAWAY instead of reconnecting, so new connections come from curl):
#      every one must get 200, and some must reach the new process. Over HTTP/2, curl
#      --parallel also multiplexes 32 streams per connection in batches across the restart:
#      every request must get 200 (curl retries streams a GOAWAY left unprocessed, as
#      RFC 9113 §6.8 allows and browsers do).
# About h2load and HTTP/2: after a GOAWAY, h2load (nghttp2 1.52) does not reconnect; when
# the GOAWAY comes in the same read as responses (haproxy coalesces them) its next submit
# fails first and it drops the connection with its other streams still in flight, which it
# counts as failed although the server answers them. So over HTTP/2 h2load's failures are
# accepted only up to what its clients had in flight (clients x 8 streams), and only when
# the old process answered every request it received completely; HTTP/1.1 needs 0.
# The graceful drain on SIGTERM is the examples' (Server shutdown on signals, issue 14).
#
# While it runs, net.ipv4.tcp_migrate_req is set to 1 when it can be (Linux 5.14+): a
# listener that closes then hands the connections still in its accept queue to the other
# listener of the port instead of resetting them (see docs/scaling.md); it is restored after.
#
# Knobs (environment): SCALE_SECONDS (h2load run length, default 10), SCALE_CLIENTS (16),
# SCALE_KEEP=1 keeps the temporary directory with the logs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never
export PATH="$PATH:/usr/sbin:/sbin"

SECS=${SCALE_SECONDS:-10}
CLIENTS=${SCALE_CLIENTS:-16}

step() { printf '\n== %s\n' "$*"; }
die() { printf '\nFATAL: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# alive PID: the process exists and is not a zombie.
alive() {
  local stat
  { read -r stat < "/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# ---------------------------------------------------------------- cleanup, always
PIDS=()
TMP=
MIGRATE_WAS=
cleanup() {
  local rc=$? pid i
  set +e
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    alive "$pid" && kill -TERM "$pid" 2>/dev/null
  done
  for i in $(seq 50); do
    local left=0
    for pid in "${PIDS[@]}"; do alive "$pid" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "$MIGRATE_WAS" ]; then
    echo "$MIGRATE_WAS" > /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null
  fi
  if [ -n "$TMP" ]; then
    if [ "$rc" != 0 ]; then
      for f in "$TMP"/*.log "$TMP"/h2load-*.txt; do
        [ -s "$f" ] || continue
        printf '\n== %s, last 25 lines\n' "$f"
        tail -n 25 "$f"
      done
    fi
    if [ "$rc" != 0 ] || [ "${SCALE_KEEP:-}" = 1 ]; then
      printf '\n(logs kept in %s)\n' "$TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
step "tools"
apt_updated=
need_apt() { # need_apt COMMAND PACKAGE...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "installing $* (for $cmd)"
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq || die "apt-get update failed; cannot install $*"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    die "apt-get install $* failed; $cmd is required"
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing after installing $*"
}
need_apt curl curl
need_apt python3 python3
need_apt haproxy haproxy
need_apt h2load nghttp2-client
command -v cargo >/dev/null 2>&1 || die "cargo is missing: the Rust toolchain is required"
curl -V | grep -w HTTP2 >/dev/null || die "this curl has no HTTP/2 support: $(curl -V | sed -n 1p)"
haproxy -v | sed -n 1p
h2load --version | sed -n 1p

# ---------------------------------------------------------------- build
step "cargo build --release --example hello"
cargo build --release --example hello
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hello
[ -x "$BIN" ] || die "built binary not found at $BIN"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-scale.XXXXXX")

if [ -w /proc/sys/net/ipv4/tcp_migrate_req ]; then
  MIGRATE_WAS=$(cat /proc/sys/net/ipv4/tcp_migrate_req)
  echo 1 > /proc/sys/net/ipv4/tcp_migrate_req
  echo "net.ipv4.tcp_migrate_req=1 for the run (was $MIGRATE_WAS)"
else
  echo "net.ipv4.tcp_migrate_req is not writable here (is $(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || echo absent)); a connection queued on the old listener at the moment it closes would be reset"
fi

# Command substitution waits for python to exit, so its sockets are closed before a
# backend binds (`read < <(...)` would not).
ports=$(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in socks]
for s in socks:
    s.close()
print(*ports)
EOF
)
read -r FRONT PORT_A PORT_B <<<"$ports"
echo "haproxy on 127.0.0.1:$FRONT, backends a on $PORT_A and b on $PORT_B"

# start_backend NAME PORT: starts hello, waits until it listens; sets STARTED_PID.
STARTED_PID=
start_backend() {
  local name=$1 port=$2 deadline=$((SECONDS + 30))
  RUST_LOG=info "$BIN" --addr "127.0.0.1:$port" --reuse-port --proxy-protocol \
    --drain-timeout 20 >"$TMP/$name.out" 2>"$TMP/$name.log" </dev/null &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  until grep -q "listening on https://127.0.0.1:$port" "$TMP/$name.out" 2>/dev/null; do
    alive "$STARTED_PID" || die "backend $name exited before listening: $(cat "$TMP/$name.log")"
    [ "$SECONDS" -lt "$deadline" ] || die "backend $name: no 'listening on' within 30 s"
    sleep 0.1
  done
  echo "backend $name: pid $STARTED_PID on 127.0.0.1:$port"
}

# The access lines of backend logs, without colour codes.
access_lines() {
  cat "$@" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep 'portcullis::access' || true
}

# ---------------------------------------------------------------- start
step "start two backends and haproxy"
start_backend a "$PORT_A"; PID_A=$STARTED_PID
start_backend b "$PORT_B"; PID_B=$STARTED_PID
cat >"$TMP/haproxy.cfg" <<EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend front
  bind 127.0.0.1:$FRONT
  default_backend portcullis
backend portcullis
  balance roundrobin
  server a 127.0.0.1:$PORT_A send-proxy-v2 check check-send-proxy inter 500ms
  server b 127.0.0.1:$PORT_B send-proxy-v2 check check-send-proxy inter 500ms
EOF
haproxy -c -f "$TMP/haproxy.cfg" >/dev/null || die "haproxy rejects its configuration"
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 </dev/null &
PIDS+=("$!")

URL=https://localhost:$FRONT/
CURL=(curl -sS --max-time 10 --cacert "$ROOT/certs/ca.crt"
      --resolve "localhost:$FRONT:127.0.0.1" -o /dev/null
      -w '%{http_code} %{http_version} %{local_port}')
deadline=$((SECONDS + 20))
until out=$("${CURL[@]}" --http1.1 "$URL" 2>/dev/null) && [ "${out%% *}" = 200 ]; do
  [ "$SECONDS" -lt "$deadline" ] || die "no 200 through haproxy within 20 s: ${out:-}"
  sleep 0.2
done

# ---------------------------------------------------------------- 1. client addresses
step "requests through haproxy: HTTP/1.1 and HTTP/2, access logs name the client"
sleep 0.5 # the first access lines are written
checked=0
for i in $(seq 12); do
  if [ $((i % 2)) = 0 ]; then proto=http2; want=2; else proto=http1.1; want=1.1; fi
  out=$("${CURL[@]}" "--$proto" "$URL") || die "request $i ($proto) through haproxy failed: $out"
  read -r code version port <<<"$out"
  [ "$code" = 200 ] || die "request $i ($proto): status $code"
  [ "$version" = "$want" ] || die "request $i ($proto): spoke HTTP/$version"
  # The line for this request: its client is curl's own address and port.
  deadline=$((SECONDS + 5))
  until line=$(access_lines "$TMP/a.log" "$TMP/b.log" | grep -F "client=127.0.0.1:$port "); do
    [ "$SECONDS" -lt "$deadline" ] || die "no access line with client=127.0.0.1:$port ($proto)"
    sleep 0.1
  done
  # ... and the TCP peer on the same line (the connection's span) is haproxy, elsewhere.
  peer=$(grep -o 'peer=127.0.0.1:[0-9]*' <<<"$line" | head -n 1)
  [ -n "$peer" ] && [ "$peer" != "peer=127.0.0.1:$port" ] ||
    die "the access line does not tell the balancer from the client: $line"
  echo "$proto from 127.0.0.1:$port -> $(grep -o 'protocol=[^}]*' <<<"$line" | head -n 1), haproxy's $peer"
  checked=$((checked + 1))
done
served_a=$(access_lines "$TMP/a.log" | wc -l)
served_b=$(access_lines "$TMP/b.log" | wc -l)
echo "access lines: a $served_a, b $served_b"
[ "$served_a" -gt 0 ] && [ "$served_b" -gt 0 ] || die "haproxy did not use both backends"
[ "$checked" = 12 ] || die "checked $checked of 12 requests"
if grep -h 'closing connection: PROXY protocol' "$TMP/a.log" "$TMP/b.log" >/dev/null; then
  die "a backend refused haproxy's PROXY header: $(grep -h 'closing connection: PROXY protocol' "$TMP/a.log" "$TMP/b.log" | head -n 3)"
fi

# ---------------------------------------------------------------- 2. rolling restart
# curl_parallel OUT STOPFILE: HTTP/2 batches of 2000 requests, 32 streams at a time on
# shared connections, until STOPFILE exists; one "code version" line per request.
curl_parallel() {
  local out=$1 stop=$2
  while [ ! -e "$stop" ]; do
    curl -sS --http2 --parallel --parallel-max 32 --max-time 60 --cacert "$ROOT/certs/ca.crt" \
      --resolve "localhost:$FRONT:127.0.0.1" -o /dev/null -w '%{http_code} %{http_version}\n' \
      "${URL}?[1-2000]" >>"$out" 2>>"$out.err" || echo "curl-exit-$?" >>"$out"
  done
}

# curl_loop OUT STOPFILE: fresh connections through haproxy, alternating HTTP/1.1 and
# HTTP/2, until STOPFILE exists; one "code version port" line (or "curl-failed") each.
curl_loop() {
  local out=$1 stop=$2 i=0 proto res
  while [ ! -e "$stop" ]; do
    if [ $((i % 2)) = 0 ]; then proto=http1.1; else proto=http2; fi
    res=$("${CURL[@]}" "--$proto" "$URL" 2>&1) || res="curl-failed $res"
    echo "$res" >>"$out"
    i=$((i + 1))
    sleep 0.02
  done
}

# restart_under_load PROTO NAME PORT OLD_PID: h2load through haproxy; a few seconds in, a
# new NAME process starts on PORT and the old one gets SIGTERM. Sets NEW_PID.
NEW_PID=
round=0
restart_under_load() {
  local proto=$1 name=$2 port=$3 old=$4 h2pid rc=0 flags=() result
  round=$((round + 1))
  local new="$name$round" report="$TMP/h2load-$proto.txt"
  if [ "$proto" = http1.1 ]; then flags=(--h1); else flags=(-m 8); fi
  step "rolling restart of backend $name under h2load ($proto, $CLIENTS clients, ${SECS} s)"
  h2load -D "$SECS" -c "$CLIENTS" -t 1 "${flags[@]}" "$URL" >"$report" 2>&1 </dev/null &
  h2pid=$!
  PIDS+=("$h2pid")
  local curls="$TMP/curl-$proto.txt" stop="$TMP/curl-$proto.stop" cpid
  curl_loop "$curls" "$stop" &
  cpid=$!
  PIDS+=("$cpid")
  local multiplexed="$TMP/curl-parallel-$proto.txt" ppid=
  if [ "$proto" = http2 ]; then
    curl_parallel "$multiplexed" "$stop" &
    ppid=$!
    PIDS+=("$ppid")
  fi
  sleep $((SECS / 4 + 1))
  start_backend "$new" "$port"
  NEW_PID=$STARTED_PID
  sleep 0.5
  local before_new
  before_new=$(access_lines "$TMP/$new.log" | wc -l)
  echo "SIGTERM to the old process $old"
  [ -z "$ppid" ] || alive "$ppid" || die "curl --parallel stopped before the restart"
  kill -TERM "$old"
  local t0=$SECONDS
  wait "$old" || rc=$?
  echo "old process exited with status $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || die "the old backend exited with status $rc (a graceful drain exits 0)"
  [ $((SECONDS - t0)) -lt 20 ] || die "the old backend drained for the whole drain timeout"
  sleep 1 # fresh connections after the old process left
  touch "$stop"
  wait "$cpid" || true
  [ -z "$ppid" ] || wait "$ppid" || true
  local made bad
  made=$(wc -l <"$curls")
  bad=$(grep -cv '^200 ' "$curls" || true)
  echo "curl: $made fresh connections across the restart, $bad not answered 200"
  [ "$made" -ge 20 ] || die "curl made only $made requests during the restart"
  [ "$bad" = 0 ] || die "fresh connections failed across the restart: $(grep -v '^200 ' "$curls" | head -n 5)"
  if [ -n "$ppid" ]; then
    made=$(wc -l <"$multiplexed")
    bad=$(grep -cv '^200 2$' "$multiplexed" || true)
    echo "curl --parallel: $made multiplexed HTTP/2 requests across the restart, $bad not answered 200"
    [ "$made" -ge 4000 ] || die "curl --parallel made only $made requests during the restart"
    [ "$bad" = 0 ] || die "multiplexed requests failed across the restart: $(grep -v '^200 2$' "$multiplexed" | head -n 5) $(tail -n 3 "$multiplexed.err")"
  fi
  rc=0
  wait "$h2pid" || rc=$?
  sed -n '/^finished in/,/^status codes/p' "$report"
  [ "$rc" = 0 ] || die "h2load exited with status $rc"
  result=$(grep '^requests:' "$report") || die "no 'requests:' line from h2load"
  local total succeeded failed errored timeout
  total=$(sed -E 's/.*requests: ([0-9]+) total.*/\1/' <<<"$result")
  succeeded=$(sed -E 's/.* ([0-9]+) succeeded.*/\1/' <<<"$result")
  failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$result")
  errored=$(sed -E 's/.* ([0-9]+) errored.*/\1/' <<<"$result")
  timeout=$(sed -E 's/.* ([0-9]+) timeout.*/\1/' <<<"$result")
  [ "$total" -gt 100 ] || die "h2load made only $total requests"
  [ "$timeout" = 0 ] || die "$proto: $timeout requests timed out across the restart"
  grep -E "^status codes: $succeeded 2xx," "$report" >/dev/null ||
    die "$proto: not every request answered 2xx: $(grep '^status codes' "$report")"
  if [ "$failed" != 0 ] || [ "$errored" != 0 ]; then
    [ "$proto" = http2 ] || die "$proto: $failed failed, $errored errored across the restart"
    # See the top of this file: h2load's own abandonment after GOAWAY, bounded, and only
    # if the old process answered everything it received.
    local incomplete
    incomplete=$(access_lines "$TMP/$name.log" | grep -vc 'outcome="complete"' || true)
    [ "$failed" = "$errored" ] && [ "$failed" -le $((CLIENTS * 8)) ] && [ "$incomplete" = 0 ] ||
      die "$proto: $failed failed, $errored errored across the restart ($incomplete incomplete responses on the old process)"
    echo "$proto: h2load dropped $failed streams it had in flight when it gave up its connections after GOAWAY (the old process answered all $(access_lines "$TMP/$name.log" | wc -l) requests it received)"
  fi
  local after_new
  after_new=$(access_lines "$TMP/$new.log" | wc -l)
  [ "$after_new" -gt "$before_new" ] || die "the new backend served nothing after the old one left"
  echo "$proto: $succeeded of $total requests succeeded, 0 failed; the new backend $name served $after_new"
}

restart_under_load http2 b "$PORT_B" "$PID_B"; PID_B=$NEW_PID
restart_under_load http1.1 a "$PORT_A" "$PID_A"; PID_A=$NEW_PID

step "ok: PROXY v2 through haproxy, client addresses logged, rolling restarts lost no request (HTTP/2 and HTTP/1.1)"
