"""Handlers of the interop service (imported by tchu-tchu at worker start).

With TCHU_PY_PREFIX=interop (the default):
    interop.*                    event handler: records the event, returns nothing.
    rpc.interop.echo             RPC: returns {"echo": <request>, "handled_by": "python"}.
    rpc.interop.business_error   RPC (TchuEvent): raises TchuRPCException, which tchu-tchu turns
                                 into {"success": false, "error_code", "error_message", ...}.
    rpc.interop.fail             RPC: raises RuntimeError (a handler failure).

Every handler appends {"handler": ..., "event": ...} as one JSON line to TCHU_PY_EVENTS_FILE.
"""

import json
import os

from tchu_tchu import TchuEvent, TchuRPCException, subscribe

PREFIX = os.environ.get("TCHU_PY_PREFIX", "interop")
EVENTS_FILE = os.environ.get("TCHU_PY_EVENTS_FILE")


def _record(handler, event):
    if EVENTS_FILE:
        with open(EVENTS_FILE, "a") as f:
            f.write(json.dumps({"handler": handler, "event": event}, sort_keys=True) + "\n")
            f.flush()


@subscribe(f"{PREFIX}.*")
def on_interop_event(event):
    _record("on_interop_event", event)


@subscribe(f"rpc.{PREFIX}.echo")
def echo(request):
    _record("echo", request)
    return {"echo": request, "handled_by": "python"}


def business_error(event):
    _record("business_error", event.validated_data)
    raise TchuRPCException(
        message="no such user", code="USER_NOT_FOUND", details={"user_id": 404}
    )


class BusinessErrorEvent(TchuEvent):
    # The topic must be on the class, twice: tchu-tchu's handler task makes a new
    # `event_class()` per message (reads Meta.topic; a constructor argument is lost) and its
    # TchuRPCException branch logs `event_class.topic` (a class attribute).
    topic = f"rpc.{PREFIX}.business_error"

    class Meta:
        topic = f"rpc.{PREFIX}.business_error"


BusinessErrorEvent(handler=business_error).subscribe()


@subscribe(f"rpc.{PREFIX}.fail")
def fail(request):
    _record("fail", request)
    raise RuntimeError("python handler exploded")
