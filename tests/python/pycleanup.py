"""Deletes what a pyservice worker declared (run it after the worker has stopped).

    python pycleanup.py [--queue NAME]... [--exchange NAME]...

With no option it uses the environment of pyservice.py: the queue TCHU_PY_QUEUE (default
<TCHU_PY_SERVICE>_queue) and the exchanges TCHU_EXCHANGE and TCHU_EXCHANGE.celeryev (the
worker's heartbeat-event exchange). Entities that do not exist are skipped. `rabbitmqctl`
on RabbitMQ 3.10 has delete_queue but no delete_exchange, hence this script.
"""

import argparse
import os
import sys

import amqp
from kombu.utils.url import url_to_parts

BROKER_URL = os.environ.get("TCHU_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def main():
    service = os.environ.get("TCHU_PY_SERVICE", "pyinterop")
    exchange = os.environ.get("TCHU_EXCHANGE", "tchu_events")
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", action="append")
    ap.add_argument("--exchange", action="append")
    args = ap.parse_args()
    queues = args.queue or (
        [] if args.exchange else [os.environ.get("TCHU_PY_QUEUE", f"{service}_queue")]
    )
    exchanges = args.exchange or ([] if args.queue else [exchange, f"{exchange}.celeryev"])

    _, host, port, user, password, vhost, _ = url_to_parts(BROKER_URL)
    conn = amqp.Connection(
        f"{host or '127.0.0.1'}:{port or 5672}",
        userid=user or "guest",
        password=password or "guest",
        virtual_host=vhost or "/",
    )
    conn.connect()
    for kind, names, delete in (
        ("queue", queues, lambda ch, n: ch.queue_delete(n)),
        ("exchange", exchanges, lambda ch, n: ch.exchange_delete(n)),
    ):
        for name in names:
            ch = conn.channel()
            try:
                delete(ch, name)
                print(f"deleted {kind} {name} (if it existed)")
            except amqp.exceptions.NotFound:
                print(f"no {kind} {name}")
            finally:
                try:
                    ch.close()
                except Exception:
                    pass
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
