#!/usr/bin/env bash
# Bounded fuzzing for CI: every cargo-fuzz target in fuzz/ runs for FUZZ_SECONDS (default 10)
# under `cargo +nightly fuzz run`. Any panic, assertion failure, timeout (> FUZZ_TIMEOUT s for
# one input, default 10) or out-of-memory fails the script; the crashing input is left in
# fuzz/artifacts/<target>/ and cargo-fuzz prints how to reproduce it.
#
# Needs a nightly toolchain (`rustup toolchain install nightly` if absent) and cargo-fuzz,
# which it installs when missing (`cargo install cargo-fuzz --locked`: no prebuilt binary;
# 1 to 3 minutes on 2 cores). The corpus persists in fuzz/corpus/ (git-ignored) between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

seconds=${FUZZ_SECONDS:-10}
timeout=${FUZZ_TIMEOUT:-10}
t_all=$(date +%s)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  t0=$(date +%s)
  cargo install cargo-fuzz --locked
  echo "cargo-fuzz installed in $(( $(date +%s) - t0 )) s"
fi
cargo fuzz --version

t0=$(date +%s)
cargo +nightly fuzz build
echo "fuzz targets built in $(( $(date +%s) - t0 )) s"

# Seed the raw-body target with the captured tchu-tchu messages (python3 is optional).
if command -v python3 >/dev/null; then
  python3 fuzz/seed.py
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo +nightly fuzz list); do
  echo
  echo "=== fuzz $target (${seconds} s) ==="
  t0=$(date +%s)
  dict=()
  [ "$target" = topic ] || dict=(-dict=fuzz/json.dict)
  status=0
  cargo +nightly fuzz run "$target" -- \
    -max_total_time="$seconds" -timeout="$timeout" "${dict[@]}" -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 80 "$log"
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "--- $target ok ($(( $(date +%s) - t0 )) s)"
done
echo
echo "fuzzing done in $(( $(date +%s) - t_all )) s"
