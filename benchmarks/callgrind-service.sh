#!/usr/bin/env bash
# The split layout's service, counted: the service child of `tchu-bench` under
# `valgrind --tool=callgrind` against the real broker, fed N events by a publisher child outside
# valgrind. Prints the whole process's instructions per event; the profile is left in
# /tmp/cg.svc.SIDE[TAG] for `callgrind_annotate --inclusive=yes`.
#
#   bash benchmarks/callgrind-service.sh SIDE [N]     SIDE: tchu-native, tchu-celery, raw, raw-celery
#
# BIN picks another tchu-bench binary (an A/B: build each version, copy its binary aside) and
# TAG names its profile. Needs a release build: cargo build --release -p tchu-bench.
set -euo pipefail
side=$1
n=${2:-40000}
bin=${BIN:-$(dirname "$0")/../target/release/tchu-bench}
tag=${TAG:-}
exchange="cg.$side.$$"
prefix="cg$$"
out=$(mktemp)
err=$(mktemp)
fifo=$(mktemp -u)
mkfifo "$fifo"
cleanup() {
  rm -f "$out" "$err" "$fifo"
  # The queues and the exchange the children declared.
  rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\\." | while read -r q; do
    rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
  done
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"cli\">>)." >/dev/null 2>&1 || true
}
trap cleanup EXIT
# Each child reads its stdin to learn that the harness is gone: keep it open.
exec 3<>"$fifo"
valgrind --tool=callgrind --callgrind-out-file="/tmp/cg.svc.$side$tag" \
  "$bin" child service "$side" "$exchange" "$prefix" svc 'bench.e2e.*' "$n" 0 <&3 >"$out" 2>"$err" &
service=$!
for _ in $(seq 1 600); do grep -q READY "$out" && break; sleep 0.2; done
grep -q READY "$out" || { echo "the service did not start" >&2; tail "$err" >&2; exit 1; }
"$bin" child publisher "$side" "$exchange" "$prefix" bench.e2e.created "$n" <&3 >/dev/null
for _ in $(seq 1 3000); do grep -q RESULT "$out" && break; sleep 0.2; done
exec 3>&-
wait "$service" || true
total=$(sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$err")
echo "$side$tag: $total instructions, $((total / n)) per event (/tmp/cg.svc.$side$tag)"
