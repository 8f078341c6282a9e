#!/usr/bin/env bash
# User-space instructions per HTTP/1.1 keep-alive request, counted by callgrind: a figure
# that the noise of a shared machine does not move (wall-clock rows here swing by ±15 %).
# Two wrk runs (3 s, then 9 s, each opening its 64 connections) are counted apart; the
# difference cancels the handshakes. Valgrind runs the server ~50x slower and one thread
# at a time, so compare binaries with each other, not with the pinned rows.
#
#   bash benches/instructions.sh portcullis benches/target/release/portcullis_server --reactors 1
#   bash benches/instructions.sh peer benches/target/release/peer --threads 1
#   NEWCONN=1 bash benches/instructions.sh ...   # per new TLS connection instead: every
#                                                # request sends `Connection: close`
#
# Needs valgrind (Debian: valgrind) and wrk; the server must accept --addr and print
# `listening on https://ADDR` (both bench servers do).
set -euo pipefail
name=$1
bin=$2
shift 2
dir=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" --dump-instr=no \
    "$bin" "$@" --addr 127.0.0.1:0 >"$dir/server.log" 2>"$dir/valgrind.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 300); do
    url=$(sed -n 's/^listening on \(https:[^ ]*\).*/\1/p' "$dir/server.log")
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { echo "the server did not start: $dir/valgrind.log" >&2; exit 1; }
what="request"
close=()
if [[ "${NEWCONN:-0}" == 1 ]]; then
    what="new TLS connection (one request each)"
    close=(-H "Connection: close")
fi
wrk -t1 -c64 -d2s "${close[@]}" "$url/" >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
wrk -t1 -c64 -d3s "${close[@]}" "$url/" >"$dir/wrk-a.txt"
callgrind_control -d "$pid" >/dev/null 2>&1
wrk -t1 -c64 -d9s "${close[@]}" "$url/" >"$dir/wrk-b.txt"
callgrind_control -d "$pid" >/dev/null 2>&1
requests() { awk '/requests in/ { print $1 }' "$1"; }
instructions() { awk '/^summary:/ { print $2 }' "$1"; }
req_a=$(requests "$dir/wrk-a.txt")
req_b=$(requests "$dir/wrk-b.txt")
ir_a=$(instructions "$dir/cg.$pid.1")
ir_b=$(instructions "$dir/cg.$pid.2")
echo "$name: $(( (ir_b - ir_a) / (req_b - req_a) )) instructions per $what ($req_a and $req_b requests; profiles in $dir)"
