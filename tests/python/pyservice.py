"""A Python tchu-tchu 3.0.4 service for tchu's interop tests.

Set up as tchu-tchu's README says (``setup_celery_queue``), plus the one fix the fixtures README
("Gotchas") describes: in 3.0.4, ``setup_celery_queue`` connects its ``celeryd_after_setup`` and
``worker_ready`` receivers as closures with Celery's default ``weak=True``, so they are
garbage-collected at once and no handler module is imported and no topic is bound. Here the
same receivers are connected with ``weak=False`` (nothing else of tchu-tchu is changed).

Run it with (from the repo root):

    .venv/bin/celery --workdir tests/python -A pyservice worker --pool solo -Q "$QUEUE" ...

Environment (all optional):
    TCHU_BROKER_URL       broker (default amqp://guest:guest@127.0.0.1:5672//)
    TCHU_EXCHANGE         topic exchange (default tchu_events)
    TCHU_PY_SERVICE       service name (default pyinterop)
    TCHU_PY_QUEUE         queue name (default <service>_queue)
    TCHU_PY_PREFIX        topic prefix of the handlers (default interop), see pyservice_handlers
    TCHU_PY_EVENTS_FILE   handlers append one JSON line per received event here (default: none)
    TCHU_PY_READY_FILE    written once the worker consumes and its bindings exist (default: none)
"""

import functools
import json
import os
import sys

from celery import Celery
from celery.signals import celeryd_after_setup, worker_ready

from tchu_tchu.django import setup_celery_queue

# Celery puts the working directory on sys.path only while it imports -A; tchu-tchu imports
# the handler module later, at worker start.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BROKER_URL = os.environ.get("TCHU_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
EXCHANGE = os.environ.get("TCHU_EXCHANGE", "tchu_events")
SERVICE = os.environ.get("TCHU_PY_SERVICE", "pyinterop")
QUEUE = os.environ.get("TCHU_PY_QUEUE", f"{SERVICE}_queue")
READY_FILE = os.environ.get("TCHU_PY_READY_FILE")

app = Celery(SERVICE, broker=BROKER_URL, backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # No pidbox queue/exchange per worker: tests create and delete their own entities only.
    worker_enable_remote_control=False,
    # The worker-heartbeat events (kept: without them a solo worker takes ~10 s to stop) go to
    # an exchange named after the test's exchange instead of the shared `celeryev`.
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


# The README's setup, with its receivers kept alive (the fix above).
_connect_strongly(
    (celeryd_after_setup, worker_ready),
    setup_celery_queue,
    app,
    queue_name=QUEUE,
    subscriber_modules=["pyservice_handlers"],
    exchange_name=EXCHANGE,
)


# Connected after tchu-tchu's own worker_ready receivers, which Celery calls in order: when the
# ready file appears, tchu-tchu has bound the queue to every handler pattern.
@worker_ready.connect(weak=False)
def _write_ready_file(sender=None, **kwargs):
    if READY_FILE:
        from tchu_tchu import get_subscribed_routing_keys

        tmp = READY_FILE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "pid": os.getpid(),
                    "queue": QUEUE,
                    "exchange": EXCHANGE,
                    "routing_keys": get_subscribed_routing_keys(),
                },
                f,
            )
        os.replace(tmp, READY_FILE)
