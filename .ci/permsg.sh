#!/usr/bin/env bash
# Cost per message without a broker (tchu-bench's `permsg` binary): instructions per message from
# two callgrind runs (N and 2N messages; the difference / N), allocations per message from a
# counting allocator. Fails when a figure is more than 10 % above benchmarks/permsg-baseline.txt.
#
#   bash .ci/permsg.sh            measure and compare with the baseline
#   bash .ci/permsg.sh --write    measure and rewrite the baseline (commit it with the figures)
#
# PERMSG_N (default 400) sets N; PERMSG_CASES a space-separated subset of `permsg list`.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=benchmarks/permsg-baseline.txt
n=${PERMSG_N:-400}
write=0
[ "${1:-}" = "--write" ] && write=1

if ! command -v valgrind >/dev/null; then
  echo "installing valgrind"
  apt-get install -y -q valgrind >/dev/null || { apt-get update -q && apt-get install -y -q valgrind; }
fi
echo "valgrind: $(valgrind --version)"
cargo build -q --release -p tchu-bench --bin permsg
bin=${CARGO_TARGET_DIR:-target}/release/permsg

instructions() { # CASE N -> total instructions of one run
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 >/dev/null |
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p'
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
printf '%-18s %12s %10s\n' "# case" "instr/msg" "allocs/msg" >"$out"
for c in ${PERMSG_CASES:-$("$bin" list)}; do
  i1=$(instructions "$c" "$n")
  i2=$(instructions "$c" $((2 * n)))
  per=$(( (i2 - i1) / n ))
  allocs=$("$bin" "$c" "$n" | sed -n 's/.* allocs\/msg=\([0-9.]*\) .*/\1/p')
  printf '%-18s %12d %10s\n' "$c" "$per" "$allocs" | tee -a "$out"
done

if [ "$write" = 1 ]; then
  {
    echo "# Cost per message: bash .ci/permsg.sh (N=$n), $(date -u +%F), $(rustc --version)."
    echo "# The gate fails when a figure rises more than 10 % above these; lower them by a commit."
    cat "$out"
  } >"$baseline"
  echo "wrote $baseline"
  exit 0
fi

fail=0
while read -r c instr allocs; do
  case "$c" in ''|'#'*) continue ;; esac
  line=$(grep -E "^$c " "$baseline" || true)
  if [ -z "$line" ]; then
    echo "$c: not in $baseline (add it with --write)"
    continue
  fi
  read -r _ b_instr b_allocs <<<"$line"
  verdict=$(awk -v i="$instr" -v bi="$b_instr" -v a="$allocs" -v ba="$b_allocs" 'BEGIN {
    bad = ""
    if (i > bi * 1.10) bad = bad sprintf(" instructions %d > %d + 10%%", i, bi)
    if (a > ba * 1.10 + 0.5) bad = bad sprintf(" allocations %s > %s + 10%%", a, ba)
    printf "%s", bad }')
  if [ -n "$verdict" ]; then
    echo "REGRESSION $c:$verdict"
    fail=1
  else
    echo "ok $c: $instr instr (baseline $b_instr), $allocs allocs (baseline $b_allocs)"
  fi
done <"$out"
exit $fail
