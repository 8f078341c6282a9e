#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for FUZZ_SECONDS (default 60) from its
# seeds (fuzz/seeds/<target>) and regression inputs (fuzz/regressions/<target>), two at a
# time. Fails if any target crashes, leaks, hangs or breaks an invariant of the harness
# (src/fuzzing.rs), if the set of targets is not the four expected, or if a target prints
# no final libFuzzer statistics (it did not really fuzz). Prints one line per target. Run by
# .ci/run; usable by hand:
#   bash fuzz/smoke.sh                 FUZZ_SECONDS=10 bash fuzz/smoke.sh
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes nightly flags (-Zsanitizer); the toolchain is stable

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
mapfile -t targets < <(cd fuzz_targets && ls -1 -- *.rs | sed 's/\.rs$//')
# The four targets fuzz/README.md describes: a target that disappears (or is renamed) must
# not shrink the smoke run silently.
expected=(http1_connection http2_connection tls_handshake tls_http)
if [ "${targets[*]}" != "${expected[*]}" ]; then
  echo "FAIL fuzz targets: found (${targets[*]}), expected (${expected[*]})"
  exit 1
fi
cargo fuzz build 2>&1 | tail -n 1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run_target() {
  local target=$1 dirs=("seeds/$1")
  [ -d "regressions/$1" ] && dirs+=("regressions/$1")
  mkdir -p "$work/corpus-$target"
  cargo fuzz run "$target" "$work/corpus-$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$work/$target-" >"$work/$target.log" 2>&1
}

failed=0
ran=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for target in "${targets[@]:i:2}"; do
    run_target "$target" &
    pids+=("$!:$target")
  done
  for entry in "${pids[@]}"; do
    pid=${entry%%:*} target=${entry#*:}
    if wait "$pid"; then
      stats=$({ grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$target.log" 2>/dev/null || true; } | tail -n 1 |
        sed -E 's/^#([0-9]+)[[:space:]]+DONE[[:space:]]+cov: ([0-9]+) ft: ([0-9]+).*exec\/s: ([0-9]+).*/\1 runs, \4 exec\/s, cov \2, ft \3/')
      # libFuzzer's final "#N DONE" line (and at least one execution) proves it fuzzed.
      if [ -z "$stats" ] || [[ ! "$stats" =~ ^[1-9][0-9]*\ runs ]]; then
        failed=1
        echo "FAIL fuzz $target: exited 0 but printed no final statistics (no '#N DONE cov: ...' line); last lines:"
        tail -n 20 "$work/$target.log" 2>/dev/null || echo "(no log: the target did not run)"
        continue
      fi
      ran=$((ran + 1))
      echo "ok   fuzz $target: ${seconds} s, $stats"
    else
      failed=1
      echo "FAIL fuzz $target: see below"
      grep -E -A12 'panicked|ERROR|SUMMARY|Test unit written' "$work/$target.log" | head -n 60 || tail -n 40 "$work/$target.log"
      for artifact in "$work/$target-"*; do
        if [ -e "$artifact" ]; then echo "input (base64): $(base64 -w0 "$artifact")"; fi
      done
    fi
  done
done
if [ "$failed" = 0 ] && [ "$ran" != "${#expected[@]}" ]; then
  echo "FAIL fuzz: $ran of ${#expected[@]} targets ran with statistics"
  failed=1
fi
echo "fuzz smoke: $ran of ${#expected[@]} targets ran with statistics"
exit "$failed"
