"""A Python tchu-tchu 3.0.4 client for tchu's interop tests.

    python pyclient.py publish <topic> <json>
    python pyclient.py call <topic> <json> [<timeout seconds, default 10>]
    python pyclient.py serverless-publish <topic> <json>

publish and call use TchuClient (Celery protocol 2); serverless-publish uses
ServerlessProducer (Celery protocol 1, no headers, no reply).

Prints one JSON line on stdout and exits 0:
    publish  {"ok": true, "message_id": null}   (TchuClient.publish returns nothing)
    serverless-publish  {"ok": true, "message_id": "<task id>"}
    call     {"ok": true, "result": <what TchuClient.call returned>}
    failure  {"ok": false, "error": "<exception class>", "message": "<str(exception)>"}
Exit status 2 on bad usage. <json> that does not parse as JSON is sent as a plain string
(tchu-tchu's pre-serialized body, without _tchu_meta).

Environment: TCHU_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672//) and TCHU_EXCHANGE
(default tchu_events). Result backend rpc://. Unlike a service set up with
setup_celery_queue, this client declares no service queue of its own: it only routes
tchu_tchu.dispatch_event to the exchange (its rpc:// reply queue is auto-deleted).
"""

import json
import logging
import os
import sys

from celery import Celery
from kombu import Exchange

# tchu-tchu warns "Django not available" on import; keep stderr for real problems.
logging.getLogger("tchu_tchu.django.decorators").addHandler(logging.NullHandler())
logging.getLogger("tchu_tchu.django.decorators").setLevel(logging.ERROR)

from tchu_tchu import ServerlessProducer, TchuClient  # noqa: E402

BROKER_URL = os.environ.get("TCHU_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
EXCHANGE = os.environ.get("TCHU_EXCHANGE", "tchu_events")


def make_app():
    app = Celery("pyclient", broker=BROKER_URL, backend="rpc://")
    exchange = Exchange(EXCHANGE, type="topic", durable=True)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # What setup_celery_queue sets for a publisher, minus the service queue.
        task_routes={
            "tchu_tchu.dispatch_event": {
                "exchange": exchange,
                "routing_key": "tchu_tchu.dispatch_event",
            }
        },
    )
    return app


def drop_reply_queue(app):
    """Deletes this process's rpc:// reply queue after a publish.

    tchu-tchu sets reply_to on a publish too and the worker answers it; nothing reads that
    answer and, as no consumer ever attached, the auto-delete queue would stay (x-expires is a
    day). A reply sent after the deletion is dropped by the broker.
    """
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(app.backend.oid)
    except Exception as e:  # best effort
        print(f"pyclient: could not delete the reply queue: {e}", file=sys.stderr)


def main(argv):
    if len(argv) < 3 or argv[0] not in ("publish", "call", "serverless-publish"):
        print(__doc__, file=sys.stderr)
        return 2
    op, topic, raw = argv[0], argv[1], argv[2]
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("tchu_tchu"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if op == "serverless-publish":
            with ServerlessProducer(broker_url=BROKER_URL, exchange_name=EXCHANGE) as p:
                out = {"ok": True, "message_id": p.publish(topic, body)}
            print(json.dumps(out, sort_keys=True), flush=True)
            return 0
    except Exception as e:
        print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}), flush=True)
        return 0
    app = make_app()
    client = TchuClient(celery_app=app)
    try:
        if op == "publish":
            client.publish(topic, body)
            out = {"ok": True, "message_id": None}
            drop_reply_queue(app)
        else:
            timeout = float(argv[3]) if len(argv) > 3 else 10
            out = {"ok": True, "result": client.call(topic, body, timeout=timeout)}
    except Exception as e:  # report every failure the same way
        out = {"ok": False, "error": type(e).__name__, "message": str(e)}
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
