"""The one set-up of a Python tchu-tchu 3.0.4 worker (a Celery app), shared by tchu's interop
tests (``tests/python/pyservice.py``) and tchu-bench's tchu-tchu side
(``tchu-bench/python/bench_service.py``).

It is tchu-tchu's README setup (``setup_celery_queue``), plus the one fix the fixtures README
("Gotchas") describes: in 3.0.4, ``setup_celery_queue`` connects its ``celeryd_after_setup`` and
``worker_ready`` receivers as closures with Celery's default ``weak=True``, so they are
garbage-collected at once and no handler module is imported and no topic is bound. Here the
same receivers are connected with ``weak=False`` (nothing else of tchu-tchu is changed).

Environment (all optional):
    TCHU_BROKER_URL       broker (default amqp://guest:guest@127.0.0.1:5672//)
    TCHU_EXCHANGE         topic exchange (default tchu_events)
    TCHU_PY_SERVICE       service (Celery app) name (default: the caller's)
    TCHU_PY_QUEUE         queue name (default <service>_queue)
    TCHU_PY_READY_FILE    written once the worker consumes and its bindings exist
    TCHU_PY_OIDS_FILE     the main process and each pool process append their rpc://
                          reply-queue name here (for cleanup; prefork pools send handler
                          sub-tasks with reply_to = that queue)
"""

import functools
import json
import os
import sys

from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready

from tchu_tchu.django import setup_celery_queue


def _connect_strongly(signals, fn, *args, **kwargs):
    """Calls fn with `signal.connect` forced to weak=False on the given signals."""
    for signal in signals:
        signal.connect = functools.partial(type(signal).connect, signal, weak=False)
    try:
        return fn(*args, **kwargs)
    finally:
        for signal in signals:
            del signal.connect


def worker_app(default_service, handler_module, handler_dir):
    """The Celery app of a tchu-tchu worker whose handlers are in ``handler_module`` (a module
    in the directory ``handler_dir``)."""
    # Celery puts the working directory on sys.path only while it imports -A; tchu-tchu
    # imports the handler module later, at worker start.
    sys.path.insert(0, handler_dir)

    broker_url = os.environ.get("TCHU_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    exchange = os.environ.get("TCHU_EXCHANGE", "tchu_events")
    service = os.environ.get("TCHU_PY_SERVICE", default_service)
    queue = os.environ.get("TCHU_PY_QUEUE", f"{service}_queue")
    ready_file = os.environ.get("TCHU_PY_READY_FILE")
    oids_file = os.environ.get("TCHU_PY_OIDS_FILE")

    app = Celery(service, broker=broker_url, backend="rpc://")
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # No pidbox queue/exchange per worker: only the caller's own entities on the broker.
        worker_enable_remote_control=False,
        # The worker-heartbeat events (kept: without them a solo worker takes ~10 s to stop)
        # go to an exchange named after the caller's exchange instead of the shared `celeryev`.
        event_exchange=f"{exchange}.celeryev",
    )

    # The README's setup, with its receivers kept alive (the fix above).
    _connect_strongly(
        (celeryd_after_setup, worker_ready),
        setup_celery_queue,
        app,
        queue_name=queue,
        subscriber_modules=[handler_module],
        exchange_name=exchange,
    )

    def append_oid():
        if oids_file:
            with open(oids_file, "a") as f:
                f.write(app.thread_oid + "\n")

    @worker_process_init.connect(weak=False)
    def _record_oid(**kwargs):
        append_oid()

    # Connected after tchu-tchu's own worker_ready receivers, which Celery calls in order: when
    # the ready file appears, tchu-tchu has bound the queue to every handler pattern.
    @worker_ready.connect(weak=False)
    def _write_ready_file(sender=None, **kwargs):
        append_oid()
        if ready_file:
            from tchu_tchu import get_subscribed_routing_keys

            tmp = ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(
                    {
                        "pid": os.getpid(),
                        "queue": queue,
                        "exchange": exchange,
                        "routing_keys": get_subscribed_routing_keys(),
                    },
                    f,
                )
            os.replace(tmp, ready_file)

    return app
