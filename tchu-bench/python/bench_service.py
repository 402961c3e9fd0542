"""The tchu-tchu 3.0.4 service of tchu-bench's "tchu-tchu" side (a Celery app).

Set up like tests/python/pyservice.py (tchu-tchu's README setup, ``setup_celery_queue`` with
its two signal receivers connected ``weak=False``, the one fix 3.0.4 needs), with the bench
handlers of ``bench_handlers``. tchutchu_bench.py starts it as

    celery --workdir tchu-bench/python -A bench_service worker --pool prefork -c 2 -Q QUEUE ...

Environment (set by tchutchu_bench.py):
    TCHU_BROKER_URL      broker
    TCHU_EXCHANGE        the run's topic exchange
    TCHU_PY_SERVICE      Celery app name
    TCHU_PY_QUEUE        the run's durable queue
    TCHU_PY_PREFIX       topic prefix of the handlers (see bench_handlers)
    TCHU_PY_EVENTS_FILE  the event handler appends one line per event here
    TCHU_PY_READY_FILE   written once the worker consumes and its bindings exist
    TCHU_PY_OIDS_FILE    each pool process appends its rpc:// reply-queue name (for cleanup)
"""

import functools
import json
import os
import sys

from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready

from tchu_tchu.django import setup_celery_queue

# tchu-tchu imports the handler module after Celery took the workdir off sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BROKER_URL = os.environ.get("TCHU_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
EXCHANGE = os.environ["TCHU_EXCHANGE"]
SERVICE = os.environ.get("TCHU_PY_SERVICE", "tchubench")
QUEUE = os.environ["TCHU_PY_QUEUE"]
READY_FILE = os.environ.get("TCHU_PY_READY_FILE")
OIDS_FILE = os.environ.get("TCHU_PY_OIDS_FILE")

app = Celery(SERVICE, broker=BROKER_URL, backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Only the run's own entities on the broker: no pidbox, events to a per-run exchange.
    worker_enable_remote_control=False,
    event_exchange=f"{EXCHANGE}.celeryev",
)


def _connect_strongly(signals, fn, *args, **kwargs):
    """Calls fn with `signal.connect` forced to weak=False on the given signals."""
    for signal in signals:
        signal.connect = functools.partial(type(signal).connect, signal, weak=False)
    try:
        return fn(*args, **kwargs)
    finally:
        for signal in signals:
            del signal.connect


_connect_strongly(
    (celeryd_after_setup, worker_ready),
    setup_celery_queue,
    app,
    queue_name=QUEUE,
    subscriber_modules=["bench_handlers"],
    exchange_name=EXCHANGE,
)


def _append_oid():
    if OIDS_FILE:
        with open(OIDS_FILE, "a") as f:
            f.write(app.thread_oid + "\n")


@worker_process_init.connect(weak=False)
def _record_oid(**kwargs):
    # A pool process sends the handler tasks with reply_to = its rpc:// queue.
    _append_oid()


@worker_ready.connect(weak=False)
def _write_ready_file(sender=None, **kwargs):
    _append_oid()
    if READY_FILE:
        from tchu_tchu import get_subscribed_routing_keys

        tmp = READY_FILE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {"pid": os.getpid(), "queue": QUEUE, "routing_keys": get_subscribed_routing_keys()},
                f,
            )
        os.replace(tmp, READY_FILE)
