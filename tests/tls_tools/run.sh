#!/usr/bin/env bash
# TLS checks with a client that is not rustls: `openssl s_client` and `openssl s_time`
# against the `hello` example (release build).
#
#   bash tests/tls_tools/run.sh        (from any directory; CI runs it with no stdin)
#
# Checks (each prints `ok` or fails the script with what it saw):
#   sni          -servername example.com gets the example.com certificate; localhost,
#                an unknown name and no SNI at all get the default (localhost)
#   versions     TLS 1.3 and 1.2 are accepted; TLS 1.1 and 1.0 are refused with an alert
#   cipher order the server's preference wins over the client's (TLS 1.2 and 1.3)
#   resumption   -sess_out / -sess_in shows "Reused" for TLS 1.3 (tickets), TLS 1.2
#                (tickets) and TLS 1.2 with -no_ticket (the session cache)
#   mtls         with --require-client-cert: certs/client.crt gets 200; no certificate and
#                certs/other-client.crt (another CA) get no response
#   reload       SIGHUP after the certificate file changed: new handshakes see the new one
# Then it measures full versus resumed handshakes with `openssl s_time -new` / `-reuse`
# (one `GET /` per connection) and prints connections per second and the server's CPU
# time per connection (from /proc); TLS_TOOLS_SECONDS (default 3) sets each run's length,
# TLS_TOOLS_BENCH=0 skips the measurement.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never
SECONDS_PER_RUN=${TLS_TOOLS_SECONDS:-3}

step() { printf '\n== %s\n' "$*"; }
die() { printf '\nFATAL: %s\n' "$*" >&2; exit 1; }

command -v openssl >/dev/null 2>&1 ||
  die "openssl is not installed: apt-get install openssl (.ci/run installs it)"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is not installed"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  local rc=$? pid
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$rc" != 0 ]; then
    for f in "$TMP"/*.err; do
      [ -s "$f" ] && { printf '\n== %s (last 20 lines)\n' "$f"; tail -n 20 "$f"; }
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT

step "cargo build --release --example hello"
cargo build --release --example hello
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hello

# start NAME ARGS...: starts hello on a free port; sets PORT and PID.
start() {
  local name=$1 i
  shift
  RUST_LOG=warn "$BIN" --addr 127.0.0.1:0 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
  PID=$!
  PIDS+=("$PID")
  for i in $(seq 100); do
    PORT=$(sed -n 's|^listening on https://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$TMP/$name.out")
    [ -n "$PORT" ] && return 0
    kill -0 "$PID" 2>/dev/null || die "$name exited: $(cat "$TMP/$name.err")"
    sleep 0.1
  done
  die "$name printed no 'listening on' line"
}

# client ARGS...: one s_client connection that sends `GET /` and reads until the server
# closes; prints everything s_client said.
client() {
  printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
    timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -ign_eof "$@" 2>&1 || true
}

# expect WHAT PATTERN OUTPUT: OUTPUT must match the extended regex PATTERN.
expect() {
  if grep -Eq -- "$2" <<<"$3"; then
    echo "ok   $1"
  else
    printf 'FAIL %s: expected /%s/ in:\n%s\n' "$1" "$2" "$3" | head -n 40
    exit 1
  fi
}
refuse() {
  if grep -Eq -- "$2" <<<"$3"; then
    printf 'FAIL %s: did not expect /%s/ in:\n%s\n' "$1" "$2" "$3" | head -n 40
    exit 1
  else
    echo "ok   $1"
  fi
}

cp certs/localhost.crt "$TMP/site.crt"
cp certs/localhost.key "$TMP/site.key"
start main --cert "$TMP/site.crt" --key "$TMP/site.key" \
  --sni example.com=certs/example.com.crt,certs/example.com.key
MAIN_PID=$PID

step "SNI (openssl s_client -servername)"
expect "example.com gets its certificate" 'subject= ?CN ?= ?example\.com' \
  "$(client -servername example.com -CAfile certs/ca.crt -verify_hostname example.com)"
expect "...and it verifies for that name" 'Verify return code: 0 \(ok\)' \
  "$(client -servername example.com -CAfile certs/ca.crt -verify_hostname example.com)"
expect "localhost gets the default" 'subject= ?CN ?= ?localhost' \
  "$(client -servername localhost)"
expect "an unknown name gets the default" 'subject= ?CN ?= ?localhost' \
  "$(client -servername unknown.test)"
expect "no SNI gets the default" 'subject= ?CN ?= ?localhost' "$(client -noservername)"

step "protocol versions"
expect "TLS 1.3 accepted" 'New, TLSv1\.3' "$(client -tls1_3)"
expect "TLS 1.2 accepted" 'New, TLSv1\.2' "$(client -tls1_2)"
for v in tls1_1 tls1; do
  out=$(client "-$v" -cipher 'DEFAULT:@SECLEVEL=0')
  expect "-$v refused" 'Cipher is \(NONE\)' "$out"
  expect "-$v refused with an alert" 'alert' "$out"
done

step "server cipher order (ignore_client_order)"
for order in ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384 \
  ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256; do
  expect "TLS 1.2, client order $order" 'Cipher is ECDHE-ECDSA-AES256-GCM-SHA384' \
    "$(client -tls1_2 -cipher "$order")"
done
for order in TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384 \
  TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256; do
  expect "TLS 1.3, client order $order" 'Cipher is TLS_AES_256_GCM_SHA384' \
    "$(client -tls1_3 -ciphersuites "$order")"
done

step "session resumption (openssl s_client -sess_out / -sess_in)"
resume() { # resume WHAT VERSION-FLAG [more flags]
  local what=$1 sess="$TMP/session.pem"
  shift
  rm -f "$sess"
  expect "$what: first connection is new" "New, TLSv" "$(client -servername localhost -sess_out "$sess" "$@")"
  [ -s "$sess" ] || die "$what: s_client saved no session"
  expect "$what: second connection is reused" "Reused, TLSv" \
    "$(client -servername localhost -sess_in "$sess" "$@")"
}
resume "TLS 1.3 tickets" -tls1_3
resume "TLS 1.2 tickets" -tls1_2
resume "TLS 1.2 session cache" -tls1_2 -no_ticket

step "certificate reload on SIGHUP"
cp certs/ec-sec1.crt "$TMP/site.crt"
cp certs/ec-sec1.key "$TMP/site.key"
want=$(openssl x509 -in certs/ec-sec1.crt -noout -fingerprint -sha256)
kill -HUP "$MAIN_PID"
for i in $(seq 50); do grep -q "SIGHUP: reloaded" "$TMP/main.out" && break; sleep 0.1; done
expect "the server says it reloaded" 'SIGHUP: reloaded' "$(cat "$TMP/main.out")"
got=$(client -servername localhost | openssl x509 -noout -fingerprint -sha256 2>&1 || true)
expect "new handshakes get the new certificate" "^${want//:/\\:}$" "$got"

step "client certificates (--require-client-cert certs/ca.crt)"
start mtls --require-client-cert certs/ca.crt
expect "certs/client.crt gets 200" 'HTTP/1\.1 200' \
  "$(client -cert certs/client.crt -key certs/client.key)"
refuse "no certificate gets no response" 'HTTP/1\.1 200' "$(client)"
expect "...but an alert" 'alert' "$(client)"
refuse "another CA's certificate gets no response" 'HTTP/1\.1 200' \
  "$(client -cert certs/other-client.crt -key certs/other-client.key)"
expect "...but an alert" 'alert' "$(client -cert certs/other-client.crt -key certs/other-client.key)"

if [ "${TLS_TOOLS_BENCH:-1}" != 0 ]; then
  step "full versus resumed handshakes (openssl s_time -www / -new|-reuse, ${SECONDS_PER_RUN} s each)"
  PORT_MAIN=$(sed -n 's|^listening on https://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$TMP/main.out")
  TICKS=$(getconf CLK_TCK)
  cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$MAIN_PID/stat"; }
  printf '%-8s %-8s %12s %14s\n' version mode "conn/s" "server µs/conn"
  for version in tls1_3 tls1_2; do
    for mode in new reuse; do
      before=$(cpu_ticks)
      out=$(timeout $((SECONDS_PER_RUN + 20)) openssl s_time -connect "127.0.0.1:$PORT_MAIN" \
        "-$version" -www / "-$mode" -time "$SECONDS_PER_RUN" 2>&1 || true)
      after=$(cpu_ticks)
      line=$(grep -E '^[0-9]+ connections in [0-9]+ real seconds' <<<"$out" | tail -n 1)
      [ -n "$line" ] || die "s_time -$version -$mode printed no result: $(tail -n 5 <<<"$out")"
      conns=${line%% *}
      secs=$(sed -E 's/^[0-9]+ connections in ([0-9]+) real.*/\1/' <<<"$line")
      marks=$(grep -Eo '^[*r]+$' <<<"$out" | head -n 1)
      [ "$mode" = reuse ] && refuse "-$version -reuse: every connection resumed" '\*' "$marks"
      awk -v v="$version" -v m="$mode" -v c="$conns" -v s="$secs" -v d=$((after - before)) -v t="$TICKS" \
        'BEGIN { printf "%-8s %-8s %12.0f %14.0f\n", v, m, c / s, d / t * 1e6 / c }'
    done
  done
fi

printf '\nall TLS tool checks passed\n'
