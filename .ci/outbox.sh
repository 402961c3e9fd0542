#!/usr/bin/env bash
# CI for the outbox and inbox (feature `postgres`): makes sure PostgreSQL answers (starts the
# machine's cluster if not), then runs the outbox tests on the real PostgreSQL and RabbitMQ
# (rollback/commit/order, inbox, kill -9 x21 over 10,000 events, a 30 s network cut) and the
# backlog benchmark's code on 20,000 rows (no relay query over 1 s: statement_timeout).
set -euo pipefail
cd "$(dirname "$0")/.."

pg_answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if pg_answers; then
  echo "PostgreSQL answers on 127.0.0.1:5432"
else
  echo "PostgreSQL is not answering: starting it"
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 60); do pg_answers && break; sleep 1; done
  pg_answers || { echo "PostgreSQL did not start"; exit 1; }
fi
psql -h 127.0.0.1 -U postgres -tAc 'SELECT version()'

# Lint and unit tests of the `postgres` code run in the workspace steps: tchu-cli enables the
# feature, so `--workspace` builds tchu with it.
echo "--- outbox tests"
TCHU_OUTBOX_TEST=1 cargo test -p tchu --features postgres --test outbox -- --nocapture
echo "--- backlog benchmark code on 20,000 rows"
cargo run -q -p tchu --features postgres --example outbox_bench -- backlog 20000
