#!/usr/bin/env bash
# ACME against Pebble, Let's Encrypt's test CA, with real validation (PEBBLE_VA_ALWAYS_VALID=0):
#
#   1. TLS-ALPN-01: examples/acme obtains a certificate for each of two names on its HTTPS
#      port alone (Pebble's tlsPort is that port); a client trusting Pebble's root gets 200
#      over HTTP/1.1 and HTTP/2 for each name, with that name's own certificate (SNI);
#   2. a restart serves both certificates from the cache at once, without a new order;
#   3. HTTP-01 (second run, fresh cache): through HttpsRedirect on the plain-HTTP port
#      (Pebble's httpPort), with 90-second certificates from Pebble;
#   4. renewal: at 2/3 of the lifetime the certificate is renewed and swapped while a
#      keep-alive HTTP/1.1 connection opened before it keeps working;
#   5. a refused challenge (Pebble's DNS now points the name where nothing listens) logs
#      why, and the server goes on serving the certificate it had.
#
# Installs pebble (Debian's package: pebble, pebble-challtestsrv) and openssl if missing.
# Pebble's own HTTPS certificate comes from a throwaway CA made here with openssl; names
# resolve to 127.0.0.1 through pebble-challtestsrv's DNS. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never NO_COLOR=1

HTTPS_PORT=25443 HTTP_PORT=25080 DIR_PORT=25400 MGMT_PORT=25500 DNS_PORT=25053 CHALL_PORT=25055
NAME_A=a.portcullis.test NAME_B=b.portcullis.test NAME_C=c.portcullis.test

say() { printf '== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; KEEP=1; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_apt() { # need_apt COMMAND PACKAGE...
    command -v "$1" >/dev/null 2>&1 && return 0
    shift
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
need_apt pebble pebble
need_apt openssl openssl
need_apt curl curl

for port in $HTTPS_PORT $HTTP_PORT $DIR_PORT $MGMT_PORT $DNS_PORT $CHALL_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is in use; this test needs it"
    fi
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${KEEP:-0} == 1 ]]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "logs: $WORK (kept)"; KEEP=1' ERR

say "building examples/acme (--features acme)"
cargo build --quiet --features acme --example acme
EXAMPLE=target/debug/examples/acme

# -------------------------------------------------------------------------- pebble
say "pebble's directory certificate (throwaway CA)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=portcullis-pebble-directory-ca -keyout "$WORK/dir-ca.key" -out "$WORK/dir-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$WORK/dir.key" -out "$WORK/dir.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/dir.ext"
openssl x509 -req -in "$WORK/dir.csr" -CA "$WORK/dir-ca.pem" -CAkey "$WORK/dir-ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/dir.ext" -out "$WORK/dir.pem" 2>/dev/null

pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 "127.0.0.1:$DNS_PORT" \
    -http01 "" -https01 "" -tlsalpn01 "" -management "127.0.0.1:$CHALL_PORT" >"$WORK/challtestsrv.log" 2>&1 &
PIDS+=($!)

PEBBLE_PID=
start_pebble() { # start_pebble VALIDITY_SECONDS|default
    local validity=""
    [[ $1 != default ]] && validity=", \"certificateValidityPeriod\": $1"
    cat >"$WORK/pebble.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:$DIR_PORT", "managementListenAddress": "127.0.0.1:$MGMT_PORT",
  "certificate": "$WORK/dir.pem", "privateKey": "$WORK/dir.key",
  "httpPort": $HTTP_PORT, "tlsPort": $HTTPS_PORT, "ocspResponderURL": "",
  "externalAccountBindingRequired": false$validity}}
EOF
    PEBBLE_VA_NOSLEEP=1 PEBBLE_VA_ALWAYS_VALID=0 PEBBLE_AUTHZREUSE=0 \
        pebble -config "$WORK/pebble.json" -dnsserver "127.0.0.1:$DNS_PORT" >>"$WORK/pebble.log" 2>&1 &
    PEBBLE_PID=$!
    PIDS+=("$PEBBLE_PID")
    local i
    for i in $(seq 1 100); do
        curl -sf --cacert "$WORK/dir-ca.pem" "https://127.0.0.1:$DIR_PORT/dir" >/dev/null && break
        kill -0 "$PEBBLE_PID" 2>/dev/null || die "pebble exited; see $WORK/pebble.log"
        sleep 0.1
    done
    # Each start makes a new root: the client must trust this one.
    curl -sf --cacert "$WORK/dir-ca.pem" "https://127.0.0.1:$MGMT_PORT/roots/0" >"$WORK/root.pem" ||
        die "cannot fetch pebble's root from its management interface"
    grep -q 'BEGIN CERTIFICATE' "$WORK/root.pem" || die "pebble's root is not PEM"
}
stop_pebble() { kill "$PEBBLE_PID"; wait "$PEBBLE_PID" 2>/dev/null || true; }

# -------------------------------------------------------------------------- example
EX_PID=
EX_LOG=
start_example() { # start_example LOGNAME ARGS...
    local name=$1
    shift
    EX_LOG="$WORK/$name.log"
    "$EXAMPLE" --directory "https://127.0.0.1:$DIR_PORT/dir" --directory-ca "$WORK/dir-ca.pem" \
        --email admin@portcullis.test --addr "127.0.0.1:$HTTPS_PORT" "$@" >"$WORK/$name.out" 2>"$EX_LOG" &
    EX_PID=$!
    PIDS+=("$EX_PID")
    local i
    for i in $(seq 1 100); do
        grep -q "^listening on https://127.0.0.1:$HTTPS_PORT" "$WORK/$name.out" && return 0
        kill -0 "$EX_PID" 2>/dev/null || die "the example exited; see $EX_LOG"
        sleep 0.1
    done
    die "the example did not print 'listening on https://...' in 10 s"
}
stop_example() { kill "$EX_PID"; wait "$EX_PID" 2>/dev/null || true; }

wait_log() { # wait_log COUNT PATTERN SECONDS: until PATTERN is in EX_LOG COUNT times
    local count=$1 pattern=$2 secs=$3 deadline
    deadline=$(($(date +%s) + secs))
    while (($(date +%s) < deadline)); do
        (($(grep -c -- "$pattern" "$EX_LOG" || true) >= count)) && return 0
        kill -0 "$EX_PID" 2>/dev/null || die "the example exited; see $EX_LOG"
        sleep 0.1
    done
    tail -n 20 "$EX_LOG" >&2
    die "no $count x '$pattern' in the log within $secs s"
}

served() { # served NAME FIELD: serial or subject of the certificate served for NAME
    openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$1" </dev/null 2>/dev/null |
        openssl x509 -noout "-$2" 2>/dev/null
}

check_200() { # check_200 NAME: 200 over HTTP/1.1 and HTTP/2, trusting only pebble's root
    local name=$1 v got
    for v in --http1.1 --http2; do
        got=$(curl -sS --max-time 10 --cacert "$WORK/root.pem" --resolve "$name:$HTTPS_PORT:127.0.0.1" $v \
            -o /dev/null -w '%{http_code} %{http_version}' "https://$name:$HTTPS_PORT/") || die "curl $v $name failed"
        case "$v:$got" in
        --http1.1:"200 1.1" | --http2:"200 2") echo "   $name $v: $got" ;;
        *) die "$name $v: got '$got'" ;;
        esac
    done
}

# -------------------------------------------------------------------------- 1. TLS-ALPN-01
say "1. TLS-ALPN-01 for $NAME_A and $NAME_B"
start_pebble default
start_example alpn --domain "$NAME_A" --domain "$NAME_B" --cache-dir "$WORK/cache-alpn"
wait_log 2 "ACME: new certificate in service" 60
grep -q 'challenge="tls-alpn-01"' "$EX_LOG" || die "not obtained by tls-alpn-01"
grep -q "answered an ACME tls-alpn-01 validation" "$EX_LOG" || die "the acceptor never answered acme-tls/1"
check_200 "$NAME_A"
check_200 "$NAME_B"
for name in "$NAME_A" "$NAME_B"; do
    openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$name" </dev/null 2>/dev/null |
        openssl x509 -noout -ext subjectAltName 2>/dev/null | grep -q "DNS:$name" ||
        die "the certificate served for $name does not name it"
done
echo "   each name gets its own certificate (SNI)"
for f in account.key "$NAME_A.key" "$NAME_B.key"; do
    mode=$(stat -c %a "$WORK/cache-alpn/$f")
    [[ $mode == 600 ]] || die "$f is mode $mode, not 600"
done
echo "   private keys are 0600"
serial_a=$(served "$NAME_A" serial)

say "2. restart: served from the cache, no new order"
stop_example
orders_before=$(grep -c "POST /order-plz" "$WORK/pebble.log" || true)
start_example alpn-restart --domain "$NAME_A" --domain "$NAME_B" --cache-dir "$WORK/cache-alpn"
[[ $(served "$NAME_A" serial) == "$serial_a" ]] || die "the restart does not serve the cached certificate"
check_200 "$NAME_A"
check_200 "$NAME_B"
wait_log 2 "ACME: serving the cached certificate" 5
sleep 2
grep -q "ACME: order created\|ACME: obtaining" "$EX_LOG" && die "the restart made a new order"
orders_after=$(grep -c "POST /order-plz" "$WORK/pebble.log" || true)
[[ $orders_after == "$orders_before" ]] || die "pebble saw a new order after the restart"
echo "   same certificate ($serial_a), no order"
stop_example
stop_pebble

# -------------------------------------------------------------------------- 3. HTTP-01
say "3. HTTP-01 for $NAME_C, 90-second certificates"
start_pebble 90
start_example http01 --domain "$NAME_C" --cache-dir "$WORK/cache-http" --challenge http-01 \
    --http-addr "127.0.0.1:$HTTP_PORT"
wait_log 1 "ACME: new certificate in service" 60
grep -q 'challenge="http-01"' "$EX_LOG" || die "not obtained by http-01"
check_200 "$NAME_C"
serial_1=$(served "$NAME_C" serial)
[[ -n $serial_1 ]] || die "no certificate served for $NAME_C"

say "4. renewal at 2/3 of the lifetime, swapped under a keep-alive connection"
# One TLS connection: a request every 2 s until the renewal is logged, then one more.
renewed_flag="$WORK/renewed"
(
    n=0
    while [[ ! -e $renewed_flag ]] && ((n < 60)); do
        printf 'GET /keepalive-%d HTTP/1.1\r\nHost: %s\r\n\r\n' "$n" "$NAME_C"
        n=$((n + 1))
        sleep 2
    done
    printf 'GET /after-renewal HTTP/1.1\r\nHost: %s\r\n\r\n' "$NAME_C"
    sleep 2
) | openssl s_client -quiet -connect "127.0.0.1:$HTTPS_PORT" -servername "$NAME_C" -alpn http/1.1 \
    -CAfile "$WORK/root.pem" >"$WORK/keepalive.out" 2>"$WORK/keepalive.err" &
KA_PID=$!
PIDS+=("$KA_PID")
# Renewal is due 60 s after issue (2/3 of 90 s); at expiry would be too late.
wait_log 2 "ACME: new certificate in service" 75
touch "$renewed_flag"
wait "$KA_PID" || true
sent=$(grep -c 'Hello over HTTPS (Http1, /\(keepalive-[0-9]*\|after-renewal\))' "$WORK/keepalive.out" || true)
oks=$(grep -c '^HTTP/1.1 200' "$WORK/keepalive.out" || true)
grep -q 'Hello over HTTPS (Http1, /after-renewal)' "$WORK/keepalive.out" ||
    die "the keep-alive connection did not answer after the renewal; see $WORK/keepalive.out"
((oks >= 2 && oks == sent)) || die "keep-alive connection: $oks responses 200 for $sent answers"
echo "   one connection, $oks requests answered 200, the last after the swap"
serial_2=$(served "$NAME_C" serial)
[[ $serial_2 != "$serial_1" ]] || die "a new connection still gets the old certificate"
check_200 "$NAME_C"
echo "   new connections get the renewed certificate ($serial_1 -> $serial_2)"

say "5. a refused challenge keeps the certificate in service and says why"
curl -sf -X POST -d "{\"host\": \"$NAME_C\", \"addresses\": [\"127.0.0.2\"]}" \
    "http://127.0.0.1:$CHALL_PORT/add-a" >/dev/null || die "cannot change pebble's DNS"
wait_log 1 "ACME: could not obtain a certificate" 100
reason=$(grep "ACME: could not obtain a certificate" "$EX_LOG" | head -n 1)
echo "   logged: ${reason#*WARN }"
grep "ACME: could not obtain a certificate" "$EX_LOG" | grep -q "127.0.0.2" ||
    die "the failure does not say what the CA saw"
[[ $(served "$NAME_C" serial) == "$serial_2" ]] || die "the refused renewal changed the certificate"
check_200 "$NAME_C"
echo "   still serving $serial_2"
stop_example
stop_pebble

echo "5 passed, 0 failed"
