#!/usr/bin/env bash
# Side-by-side benchmark: portcullis (blocking handlers) against hyper + hyper-util +
# tokio + tokio-rustls (the async peer), same routes, same certificate, same rustls.
#
#   bash benches/compare.sh                 # ROUNDS=3 rounds of 10 s loads (~10 min)
#   ROUNDS=5 SECONDS=5 bash benches/compare.sh
#   QUICK=1 bash benches/compare.sh         # every scenario once, 3 s loads (smoke test)
#
# Environment:
#   ROUNDS        rounds per scenario and server (default 3; the table shows each side's
#                 median, and the median of the rounds' portcullis/peer ratios)
#   SECONDS       length of each load in seconds (default 10; LOAD_SECONDS is the same)
#   QUICK=1       ROUNDS=1 and 3 s loads
#   SCENARIOS     space-separated subset of: h1 h2 newconn idle sleep upload_h1 upload_h2
#                 download_h1 download_h2 logging h1_all h2_all newconn_all sleep_all
#                 (default: all). The *_all ones run servers and load generator
#                 unpinned, free to use every CPU (portcullis with one reactor per CPU,
#                 the peer with one tokio worker per CPU); the others pin them.
#
# `logging` is not against the peer: it runs the `hello` example (release) twice, with
# its default logging (RUST_LOG unset: info, one access line per request, to a file) in
# the portcullis column and with RUST_LOG=off in the peer column, under the h1 load.
#   IDLE_CONNS    connections held open by the idle-memory scenario (default 5000)
#   SERVER_CPU    CPU the servers are pinned to (default 0)
#   LOAD_CPU      CPU the load generators are pinned to (default 1)
#   PORTCULLIS_ARGS  extra flags for the portcullis column's server (an A/B of a setting,
#                 e.g. "--tcp-notsent-lowat 0"; see benches/src/bin/portcullis_server.rs)
#   PEER_THREADS  tokio worker threads of the peer (default: its available parallelism,
#                 which is 1 under `taskset -c SERVER_CPU`)
#   NOISE_LIMIT   a run during which other processes used more than this percentage of
#                 SERVER_CPU or LOAD_CPU is repeated (default 10; idle-memory runs exempt)
#   NOISE_RETRIES repeats of a noisy run before it is kept and flagged (default 2)
#   NICE          run servers and load generators under `nice -n NICE` (e.g. -10), to
#                 shield them from other work on the machine (default: not reniced)
#   OUT           directory for logs and results (default benches/target/compare-DATE)
#
# Both portcullis and the peer use portcullis' default crypto provider (aws-lc-rs). The
# newconn scenario also runs a third server, portcullis built on *ring*
# (`--features ring`), and its table shows that build's figures on extra rows.
#
# Each run starts one server pinned to SERVER_CPU (unpinned for *_all), waits for its
# `listening on` line,
# runs one scenario from LOAD_CPU, and kills it, so servers never overlap. Servers run
# alternately, the order turned round every other round (portcullis, peer; peer,
# portcullis; ...), so that a machine growing slower or faster over a round does not
# always favour the same side.

# `SECONDS` is special in bash (it counts up from the value it is given), so read the
# caller's value from the environment before anything else.
_env_seconds=$(printenv SECONDS || true)

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-3}
LOAD_SECS=${LOAD_SECONDS:-${_env_seconds:-10}}
if [[ "${QUICK:-0}" == 1 ]]; then
    ROUNDS=1
    LOAD_SECS=3
fi
IDLE_CONNS=${IDLE_CONNS:-5000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PEER_THREADS=${PEER_THREADS:-}
NOISE_LIMIT=${NOISE_LIMIT:-10}
NOISE_RETRIES=${NOISE_RETRIES:-2}
NICE=${NICE:-}
noisy_kept=0
ALL_SCENARIOS="h1 h2 newconn idle sleep upload_h1 upload_h2 download_h1 download_h2 logging h1_all h2_all newconn_all sleep_all"
# Set per run: 1 while an unpinned (*_all) scenario runs; then the load generators run
# one thread per CPU.
UNPINNED=0
LOAD_THREADS=1
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
SERVERS="portcullis peer"
BULK_BYTES=8388608 # 8 MiB
BULK_BATCH=20      # transfers per curl invocation (one connection)
CA="$ROOT/certs/ca.crt"
BIN="$ROOT/benches/target/release"
BIN_RING="$ROOT/benches/target/ring/release"
OUT=${OUT:-"$ROOT/benches/target/compare-$(date +%Y%m%d-%H%M%S)"}

started=$(date +%s)
mkdir -p "$OUT/logs" "$OUT/results"

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number, not '$ROUNDS'"
[[ "$NOISE_LIMIT" =~ ^[0-9]+$ && "$NOISE_RETRIES" =~ ^[0-9]+$ ]] || die "NOISE_LIMIT and NOISE_RETRIES take whole numbers"
[[ -z "$NICE" || "$NICE" =~ ^-?[0-9]+$ ]] || die "NICE takes a niceness such as -10, not '$NICE'"
[[ "$LOAD_SECS" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, not '$LOAD_SECS'"
for s in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"
done

# ---------------------------------------------------------------------------- tools
need_tools() {
    local missing=() cmd pkg
    for pair in wrk:wrk h2load:nghttp2-client curl:curl python3:python3 taskset:util-linux; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]]; then
        die "missing tools; install them with: sudo apt-get install -y ${missing[*]}"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
need_tools
command -v cargo >/dev/null 2>&1 || die "cargo is needed to build the servers"

ncpu=$(nproc --all)
((SERVER_CPU < ncpu && LOAD_CPU < ncpu)) || die "SERVER_CPU=$SERVER_CPU / LOAD_CPU=$LOAD_CPU: this machine has $ncpu CPUs"

# Many connections at once (idle scenario, 256 wrk clients): raise the open-file limit for
# the servers and clients started below, as far as the hard limit allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------- build
log "building (release)"
cargo build --release --quiet --manifest-path "$ROOT/benches/Cargo.toml"
if [[ " $SCENARIOS " == *" logging "* ]]; then
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --example hello
fi
HELLO="$ROOT/target/release/examples/hello"
if [[ " $SCENARIOS " == *" newconn "* ]]; then
    log "building portcullis_server on ring (release)"
    cargo build --release --quiet --manifest-path "$ROOT/benches/Cargo.toml" --no-default-features \
        --features ring --target-dir "$ROOT/benches/target/ring" --bin portcullis_server
fi

# ---------------------------------------------------------------------------- servers
SERVER_PID=
URL=
PORT=

# pin CMD...: runs CMD on SERVER_CPU, or on every CPU in an unpinned scenario. Called in
# the background (`pin_server ... &`): `exec` makes the background job the server itself
# (nice, taskset and env exec it in turn), so that $! is the server's pid.
pin_server() {
    if ((UNPINNED)); then
        exec ${NICE:+nice -n "$NICE"} "$@"
    else
        exec ${NICE:+nice -n "$NICE"} taskset -c "$SERVER_CPU" "$@"
    fi
}

start_server() { # name logfile scenario
    local name=$1 logfile=$2 scenario=${3:-}
    case $scenario/$name in
    logging/portcullis) # the hello example with its default logging (info), to the log file
        pin_server env -u RUST_LOG "$HELLO" --addr 127.0.0.1:0 \
            >"$logfile" 2>&1 &
        ;;
    logging/peer) # the same binary with logging off
        pin_server env RUST_LOG=off "$HELLO" --addr 127.0.0.1:0 \
            >"$logfile" 2>&1 &
        ;;
    */portcullis)
        # shellcheck disable=SC2086 # PORTCULLIS_ARGS is a list of flags
        pin_server "$BIN/portcullis_server" --addr 127.0.0.1:0 --max-workers 512 ${PORTCULLIS_ARGS:-} \
            >"$logfile" 2>&1 &
        ;;
    */portcullis_ring)
        pin_server "$BIN_RING/portcullis_server" --addr 127.0.0.1:0 --max-workers 512 \
            >"$logfile" 2>&1 &
        ;;
    */peer)
        pin_server "$BIN/peer" --addr 127.0.0.1:0 ${PEER_THREADS:+--threads "$PEER_THREADS"} \
            >"$logfile" 2>&1 &
        ;;
    esac
    SERVER_PID=$! # env, nice and taskset exec the server: this is the server's own pid
    local i
    for i in $(seq 1 200); do
        if URL=$(sed -n 's/^listening on \(https:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$logfile" | head -n1) && [[ -n "$URL" ]]; then
            PORT=${URL##*:}
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited at start; see $logfile"
        sleep 0.05
    done
    die "$name did not print 'listening on' within 10 s; see $logfile"
}

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
trap 'stop_server' EXIT
trap 'exit 130' INT TERM

load() {
    if ((UNPINNED)); then
        ${NICE:+nice -n "$NICE"} "$@"
    else
        ${NICE:+nice -n "$NICE"} taskset -c "$LOAD_CPU" "$@"
    fi
}

# Noise check: CPU time taken by other processes on either pinned CPU, as a percentage of
# the run. /proc/stat's per-CPU busy ticks (user nice system irq softirq steal: the
# kernel charges the loopback traffic's softirq time to the process it interrupted as
# well) minus, on SERVER_CPU, the server's own utime + stime and, on LOAD_CPU, the load
# generators' (this shell's reaped children's time, less the server's).
# Unpinned, both are the whole machine's ticks (/proc/stat's `cpu` line).
cpu_ticks() { # busy-server-cpu total-server-cpu busy-load-cpu total-load-cpu
    local s="cpu$SERVER_CPU" l="cpu$LOAD_CPU"
    ((UNPINNED)) && s=cpu l=cpu
    awk -v s="$s" -v l="$l" '
        $1 == s { sb = $2 + $3 + $4 + $7 + $8 + $9; st = sb + $5 + $6 }
        $1 == l { lb = $2 + $3 + $4 + $7 + $8 + $9; lt = lb + $5 + $6 }
        END { print sb, st, lb, lt }' /proc/stat
}
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
children_ticks() { awk '{ print $16 + $17 }' /proc/$$/stat; }
# thread_ticks PID: "name ticks" per thread of PID (utime + stime); a reactor's threads
# (leader and followers, pc-reactor-N) add up under one name, others count one by one.
thread_ticks() {
    local stat comm
    for stat in /proc/"$1"/task/*/stat; do
        # comm is field 2 in parentheses and may hold spaces: split after the last ')'.
        awk '{ i = index($0, "("); j = 0; for (k = length($0); k > 0; k--) if (substr($0, k, 1) == ")") { j = k; break }
               name = substr($0, i + 1, j - i - 1); gsub(/ /, "_", name); n = split(substr($0, j + 2), f, " ")
               if (name !~ /^pc-reactor-/) name = name "#" $1
               print name, f[12] + f[13] }' "$stat" 2>/dev/null || true
    done | awk '{ t[$1] += $2 } END { for (n in t) print n, t[n] }'
}
# busy_threads BEFORE AFTER SECONDS: how many portcullis reactors (pc-reactor-N) or peer
# tokio workers (tokio-rt-worker) used at least 10 % of a CPU over the run.
busy_threads() {
    local hz
    hz=$(getconf CLK_TCK)
    awk -v min="$(awk -v s="$3" -v hz="$hz" 'BEGIN { print s * hz * 0.10 }')" '
        FNR == NR { before[$1] = $2; next }
        $1 ~ /^(pc-reactor-|tokio-rt-worker)/ && $2 - before[$1] >= min { n++ }
        END { print n + 0 }' "$1" "$2"
}
percent() { awk -v n="$1" -v d="$2" 'BEGIN { o = (d > 0 ? n / d * 100 : 0); if (o < 0) o = 0; printf "%.0f", o }'; }

# ---------------------------------------------------------------------------- parsers
# wrk's "Requests/sec:" figure.
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
# wrk's 99th percentile latency (--latency), in milliseconds.
wrk_p99_ms() {
    awk '$1 == "99%" {
        v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v) }
        else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
        printf "%.2f\n", v
    }' "$1"
}
# wrk's error count (connect/read/write/timeout and non-2xx/3xx responses).
wrk_errors() {
    awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { n += $5 }
         END { print n + 0 }' "$1"
}

# ---------------------------------------------------------------------------- scenarios
# Each prints its figures on one line (space-separated) and writes raw output to $2.

scenario_h1() { # HTTP/1.1 keep-alive, 64 connections: req/s, p99 ms
    local raw=$1
    load wrk -t"$LOAD_THREADS" -c64 -d"${LOAD_SECS}s" --latency "$URL/" >"$raw" 2>&1
    echo "$(wrk_rps "$raw") $(wrk_p99_ms "$raw") $(wrk_errors "$raw")"
}

scenario_h2() { # HTTP/2, 16 connections x 10 streams: req/s
    local raw=$1
    load h2load -t"$LOAD_THREADS" -c16 -m10 -D "$LOAD_SECS" "$URL/" >"$raw" 2>&1 || true
    grep -q 'Application protocol: h2' "$raw" || die "h2load did not negotiate h2; see $raw"
    local rps failed
    rps=$(awk '/^finished in/ {v = $4; sub(/,$/, "", v); print v}' "$raw")
    failed=$(awk '/^requests:/ {print $10 + $12}' "$raw")
    echo "$rps - ${failed:-0}"
}

scenario_newconn() { # a full TLS handshake per request (Connection: close): connections/s
    local raw=$1
    load wrk -t"$LOAD_THREADS" -c16 -d"${LOAD_SECS}s" -H 'Connection: close' "$URL/" >"$raw" 2>&1
    echo "$(wrk_rps "$raw") - $(wrk_errors "$raw")"
}

scenario_idle() { # IDLE_CONNS idle keep-alive connections: server KiB per connection
    local raw=$1
    load python3 "$ROOT/benches/idle_conns.py" --pid "$SERVER_PID" --port "$PORT" \
        --count "$IDLE_CONNS" --cafile "$CA" >"$raw" 2>&1 || die "idle_conns.py failed; see $raw"
    local per open
    per=$(sed -n 's/.*kib_per_conn=\([0-9.-]*\).*/\1/p' "$raw")
    open=$(sed -n 's/.*open_after=\([0-9-]*\).*/\1/p' "$raw")
    echo "$per - $((IDLE_CONNS - open))"
}

scenario_sleep() { # blocking handler, 10 ms sleep, 256 connections: req/s, p99 ms
    local raw=$1
    load wrk -t"$LOAD_THREADS" -c256 -d"${LOAD_SECS}s" --latency "$URL/sleep" >"$raw" 2>&1
    echo "$(wrk_rps "$raw") $(wrk_p99_ms "$raw") $(wrk_errors "$raw")"
}

# The same loads with servers and load generator unpinned (UNPINNED=1 in the run loop).
scenario_h1_all() { scenario_h1 "$@"; }
scenario_h2_all() { scenario_h2 "$@"; }
scenario_newconn_all() { scenario_newconn "$@"; }
scenario_sleep_all() { scenario_sleep "$@"; }

# bulk VERSION up|down RAW: MB/s (10^6 bytes/s) over LOAD_SECS seconds of back-to-back
# 8 MiB transfers on kept-alive connections (BULK_BATCH per curl run), counted as bytes
# transferred / time the transfers took (curl's time_total, handshake included once per
# batch). Every response must be 200 with all 8 MiB.
bulk() {
    local version=$1 dir=$2 raw=$3 deadline
    deadline=$(($(date +%s) + LOAD_SECS))
    : >"$raw"
    while (($(date +%s) < deadline)); do
        if [[ $dir == up ]]; then
            load curl -sS "$version" --cacert "$CA" -H 'Expect:' --data-binary "@$OUT/upload.bin" \
                -o /dev/null -w '%{http_code} %{size_upload} %{size_download} %{time_total} %{http_version}\n' \
                "$URL/echo?i=[1-$BULK_BATCH]" >>"$raw" 2>&1 || true
        else
            load curl -sS "$version" --cacert "$CA" \
                -o /dev/null -w '%{http_code} %{size_upload} %{size_download} %{time_total} %{http_version}\n' \
                "$URL/download?bytes=$BULK_BYTES&i=[1-$BULK_BATCH]" >>"$raw" 2>&1 || true
        fi
    done
    awk -v dir="$dir" -v want="$BULK_BYTES" '
        NF == 5 && $1 ~ /^[0-9]+$/ {
            ok = ($1 == 200 && $3 == want && (dir == "down" || $2 == want))
            if (!ok) { bad++; next }
            bytes += want; secs += $4
            next
        }
        { bad++ }
        END { printf "%.1f - %d\n", (secs > 0 ? bytes / secs / 1e6 : 0), bad }' "$raw"
}
scenario_upload_h1() { bulk --http1.1 up "$1"; }
scenario_upload_h2() { bulk --http2 up "$1"; }
scenario_download_h1() { bulk --http1.1 down "$1"; }
scenario_download_h2() { bulk --http2 down "$1"; }
scenario_logging() { scenario_h1 "$1"; } # same load; the servers differ (start_server)

# ---------------------------------------------------------------------------- run
head -c "$BULK_BYTES" /dev/urandom >"$OUT/upload.bin"

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -srm), $(nproc --all) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain -- src 2>/dev/null | grep -q . && echo ' (src modified)')"
    echo "settings: ROUNDS=$ROUNDS SECONDS=$LOAD_SECS IDLE_CONNS=$IDLE_CONNS SERVER_CPU=$SERVER_CPU LOAD_CPU=$LOAD_CPU PEER_THREADS=${PEER_THREADS:-default} NOISE_LIMIT=$NOISE_LIMIT% NOISE_RETRIES=$NOISE_RETRIES NICE=${NICE:-none}"
    echo "tools: $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'); $(h2load --version | head -n1); $(curl -V | head -n1 | awk '{print $1, $2, $5}'); $(python3 -V)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/env.txt" >&2
log "results and logs: $OUT"

for scenario in $SCENARIOS; do
    servers=$SERVERS
    # New connections are where the crypto provider shows: add portcullis on ring.
    [[ $scenario == newconn ]] && servers="$SERVERS portcullis_ring"
    for round in $(seq 1 "$ROUNDS"); do
        order=$servers
        ((round % 2 == 0)) && order=$(echo "$servers" | tr ' ' '\n' | tac | tr '\n' ' ')
        for server in $order; do
            attempt=0
            while :; do
                attempt=$((attempt + 1))
                tag="$scenario.$server.$round"
                ((attempt > 1)) && tag="$tag.try$attempt"
                UNPINNED=0
                LOAD_THREADS=1
                if [[ $scenario == *_all ]]; then
                    UNPINNED=1
                    LOAD_THREADS=$ncpu
                fi
                start_server "$server" "$OUT/logs/$tag.server.log" "$scenario"
                kids0=$(children_ticks)
                read -r sbusy0 stotal0 lbusy0 ltotal0 <<<"$(cpu_ticks)"
                srv0=$(proc_ticks "$SERVER_PID")
                thread_ticks "$SERVER_PID" >"$OUT/logs/$tag.threads0"
                wall0=$(date +%s%N)
                line=$("scenario_$scenario" "$OUT/logs/$tag.load.txt")
                wall=$(awk -v a="$wall0" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
                thread_ticks "$SERVER_PID" >"$OUT/logs/$tag.threads1"
                busy=$(busy_threads "$OUT/logs/$tag.threads0" "$OUT/logs/$tag.threads1" "$wall")
                read -r sbusy1 stotal1 lbusy1 ltotal1 <<<"$(cpu_ticks)"
                srv1=$(proc_ticks "$SERVER_PID")
                stop_server
                kids1=$(children_ticks)
                other_s=$(percent "$((sbusy1 - sbusy0 - (srv1 - srv0)))" "$((stotal1 - stotal0))")
                other_l=$(percent "$((lbusy1 - lbusy0 - (kids1 - kids0 - srv1)))" "$((ltotal1 - ltotal0))")
                other=$((other_s > other_l ? other_s : other_l))
                # Unpinned, both figures are over all CPUs, and each still holds the other
                # side's CPU: the server's or the load generator's. Take both out.
                if ((UNPINNED)); then
                    other_l=$(percent "$((lbusy1 - lbusy0 - (srv1 - srv0) - (kids1 - kids0 - srv1)))" \
                        "$((ltotal1 - ltotal0))")
                    other=$other_l
                fi
                # The server's CPU use in % of one CPU (pinned: of its CPU; unpinned:
                # 200 means two CPUs' worth), and its CPU time (µs) per unit of the
                # first figure (per request, connection or MB): shows which side was
                # the limit, and what the server paid when it was not. Then how many
                # reactor threads (portcullis) or tokio workers (peer) were busy.
                cpus=1
                ((UNPINNED)) && cpus=$ncpu
                read -r srv_pct srv_us <<<"$(awk -v s="$((srv1 - srv0))" -v t="$((stotal1 - stotal0))" -v r="${line%% *}" -v c="$cpus" '
                    BEGIN { f = (t > 0 ? s / t * c : 0); printf "%.0f %s\n", f * 100, (r + 0 > 0 ? sprintf("%.1f", f * 1e6 / r) : "-") }')"
                line="$line $srv_pct $srv_us $busy"
                if ((UNPINNED)); then
                    log "$(printf '%-12s round %d  %-10s %-26s other load: all CPUs %3s%%' \
                        "$scenario" "$round" "$server" "$line" "$other_l")"
                else
                    log "$(printf '%-12s round %d  %-10s %-26s other load: CPU %s %3s%%, CPU %s %3s%%' \
                        "$scenario" "$round" "$server" "$line" "$SERVER_CPU" "$other_s" "$LOAD_CPU" "$other_l")"
                fi
                sleep 1
                # Memory does not depend on CPU time; every other figure does.
                if [[ $scenario != idle ]] && ((other > NOISE_LIMIT)); then
                    if ((attempt <= NOISE_RETRIES)); then
                        log "    noisy (other processes took > ${NOISE_LIMIT}% of a pinned CPU): running it again"
                        continue
                    fi
                    log "    still noisy after $NOISE_RETRIES retries: kept, and flagged in the table"
                    noisy_kept=$((noisy_kept + 1))
                fi
                break
            done
            echo "$scenario $round $server $other_s $other_l" >>"$OUT/noise.txt"
            echo "$line" >>"$OUT/results/$scenario.$server"
        done
    done
done

# ---------------------------------------------------------------------------- table
# median FILE COLUMN: the median of that column over the rounds.
median() {
    awk -v c="$2" '$c != "-" && $c != "" {print $c}' "$1" | sort -g | awk '
        {v[NR] = $1}
        END {
            if (NR == 0) { print "-"; exit }
            if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m
        }'
}
# paired_ratio FILE_A FILE_B COLUMN: the median over the rounds of A's figure / B's figure
# in the same round. A round runs the two servers back to back, so each of its ratios
# compares them on the machine as it was then; the medians of each side alone may come
# from different rounds, and a slow spell of this shared machine during one server's
# round then shows as a difference between the servers.
paired_ratio() {
    paste -d' ' <(awk -v c="$3" '{print $c}' "$1") <(awk -v c="$3" '{print $c}' "$2") |
        awk '$1 != "-" && $2 != "-" && $1 != "" && $2 != "" && $2 + 0 != 0 { print $1 / $2 }' |
        sort -g | awk '
        {v[NR] = $1}
        END {
            if (NR == 0) { print "-"; exit }
            if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.2f\n", m
        }'
}
# total FILE COLUMN: the sum of that column over the rounds (errors).
total() { awk -v c="$2" '{n += $c} END {print n + 0}' "$1"; }

row() { # scenario column label unit target(>=x | <=x | -) decimals [cpu]
    local scenario=$1 col=$2 label=$3 unit=$4 target=$5 dec=$6 cpu=${7:-} a b ratio met cpu_cell=""
    local ours=${OURS:-portcullis} # the portcullis build in the row (OURS=portcullis_ring)
    [[ -f "$OUT/results/$scenario.$ours" && -f "$OUT/results/$scenario.peer" ]] || return 0
    a=$(median "$OUT/results/$scenario.$ours" "$col")
    b=$(median "$OUT/results/$scenario.peer" "$col")
    ratio=$(paired_ratio "$OUT/results/$scenario.$ours" "$OUT/results/$scenario.peer" "$col")
    met=$(awk -v r="$ratio" -v t="$target" 'BEGIN {
        if (t == "-" || r == "-") { print ""; exit }
        op = substr(t, 1, 2); x = substr(t, 3) + 0
        if (op == ">=") print (r + 0 >= x ? "yes" : "**no**"); else print (r + 0 <= x ? "yes" : "**no**")
    }')
    local errs
    errs=$(($(total "$OUT/results/$scenario.$ours" 3) + $(total "$OUT/results/$scenario.peer" 3)))
    [[ $col == 1 && $errs != 0 ]] && label="$label ($errs errors)"
    if [[ -n $cpu ]]; then
        cpu_cell="$(median "$OUT/results/$scenario.$ours" 4) / $(median "$OUT/results/$scenario.peer" 4)"
    fi
    local busy_cell=""
    if [[ $cpu == busy ]]; then
        busy_cell=" $(median "$OUT/results/$scenario.$ours" 6) / $(median "$OUT/results/$scenario.peer" 6) |"
    fi
    printf "| %s | %s | %s | %s | %s | %s | %s | %s |$busy_cell\n" "$label" "$unit" \
        "$(awk -v v="$a" -v d="$dec" 'BEGIN { if (v == "-") print v; else printf "%.*f", d, v }')" \
        "$(awk -v v="$b" -v d="$dec" 'BEGIN { if (v == "-") print v; else printf "%.*f", d, v }')" \
        "$ratio" "${target/>=/≥ }" "$met" "$cpu_cell" | sed 's/<=/≤ /'
}

elapsed=$(($(date +%s) - started))
{
    echo
    echo "Medians of $ROUNDS round(s), ${LOAD_SECS} s loads; server on CPU $SERVER_CPU, load generator on CPU $LOAD_CPU. portcullis/peer: the median of the rounds' ratios (each round runs both servers back to back), not the ratio of the medians."
    echo
    echo "| Scenario | Unit | portcullis | peer | portcullis/peer | Target | Met | Server CPU % (portcullis / peer) |"
    echo "| --- | --- | ---: | ---: | ---: | --- | --- | --- |"
    row h1 1 "HTTP/1.1 keep-alive hello (wrk -c64)" "req/s" ">=0.95" 0 cpu
    row h1 2 "HTTP/1.1 keep-alive hello, p99 latency" "ms" "-" 2
    row h1 5 "HTTP/1.1 keep-alive hello, server CPU per request" "µs" "-" 1
    row h2 1 "HTTP/2 hello (h2load -c16 -m10)" "req/s" ">=0.95" 0 cpu
    row h2 5 "HTTP/2 hello, server CPU per request" "µs" "-" 1
    row newconn 1 "New TLS connection per request (wrk -c16, Connection: close)" "conn/s" ">=0.95" 0 cpu
    row newconn 5 "New TLS connection, server CPU per connection" "µs" "<=1.05" 1
    OURS=portcullis_ring row newconn 1 "New TLS connection, portcullis on ring vs peer on aws-lc-rs" "conn/s" "-" 0 cpu
    OURS=portcullis_ring row newconn 5 "New TLS connection on ring, server CPU per connection" "µs" "-" 1
    row idle 1 "Idle keep-alive TLS connections ($IDLE_CONNS): server RSS" "KiB/conn" "<=1.00" 1
    row sleep 1 "Blocking handler, 10 ms sleep (wrk -c256)" "req/s" ">=1.00" 0 cpu
    row sleep 2 "Blocking handler, 10 ms sleep, p99 latency" "ms" "-" 2
    row upload_h1 1 "8 MiB upload, POST /echo, HTTP/1.1" "MB/s" ">=0.95" 0 cpu
    row upload_h2 1 "8 MiB upload, POST /echo, HTTP/2" "MB/s" ">=0.95" 0 cpu
    row download_h1 1 "8 MiB download, HTTP/1.1" "MB/s" ">=0.95" 0 cpu
    row download_h2 1 "8 MiB download, HTTP/2" "MB/s" ">=0.95" 0 cpu
    row logging 1 "hello example: default logging (portcullis column) / RUST_LOG=off (peer column), wrk -c64" "req/s" ">=0.85" 0 cpu
    if ls "$OUT"/results/*_all.portcullis >/dev/null 2>&1; then
        echo
        echo "Unpinned: servers and load generator free on all $ncpu CPUs (portcullis: one reactor per CPU; peer: one tokio worker per CPU). Server CPU in % of one CPU; busy threads: reactors (portcullis) / tokio workers (peer) that used >= 10 % of a CPU."
        echo
        echo "| Scenario | Unit | portcullis | peer | portcullis/peer | Target | Met | Server CPU % (portcullis / peer) | Busy threads (reactors / workers) |"
        echo "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |"
        row h1_all 1 "HTTP/1.1 keep-alive hello (wrk -c64), unpinned" "req/s" ">=1.00" 0 busy
        row h1_all 2 "HTTP/1.1 keep-alive hello, p99 latency, unpinned" "ms" "-" 2
        row h2_all 1 "HTTP/2 hello (h2load -c16 -m10), unpinned" "req/s" ">=1.00" 0 busy
        row newconn_all 1 "New TLS connection per request (wrk -c16), unpinned" "conn/s" ">=1.00" 0 busy
        row sleep_all 1 "Blocking handler, 10 ms sleep (wrk -c256), unpinned" "req/s" ">=1.00" 0 busy
        row sleep_all 2 "Blocking handler, 10 ms sleep, p99 latency, unpinned" "ms" "-" 2
    fi
    echo
    awk '$1 != "idle" { print ($4 > $5 ? $4 : $5) }' "$OUT/noise.txt" >"$OUT/noise-cpu.txt"
    echo "Other processes' load on the pinned CPUs during the kept runs (idle excepted; the higher of the two CPUs): median $(median "$OUT/noise-cpu.txt" 1)%, max $(awk 'n == "" || $1 > n { n = $1 } END { print n + 0 }' "$OUT/noise-cpu.txt")% (per run and CPU: $OUT/noise.txt)."
    if ((noisy_kept > 0)); then
        echo "**Warning: $noisy_kept run(s) were kept with other processes taking more than ${NOISE_LIMIT}% of a pinned CPU; their rows are not reliable.**"
    fi
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Total time: $((elapsed / 60)) min $((elapsed % 60)) s."
} | tee "$OUT/results.md"
