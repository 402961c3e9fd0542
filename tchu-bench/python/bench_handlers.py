"""Handlers of the bench service (imported by tchu-tchu at worker start).

With TCHU_PY_PREFIX=P:
    P.*           event: appends "<seq> <latency ns>\n" to TCHU_PY_EVENTS_FILE, where the
                  latency is time.monotonic_ns() (CLOCK_MONOTONIC, shared by all processes of
                  the machine) minus the payload's t_ns, taken when the handler starts.
    rpc.P.echo    RPC: returns {"echo": <request>}.

One write(2) per event on an O_APPEND descriptor: lines from the pool processes do not mix.
"""

import os
import time

from tchu_tchu import subscribe

PREFIX = os.environ["TCHU_PY_PREFIX"]
EVENTS_FILE = os.environ["TCHU_PY_EVENTS_FILE"]

_fd = None
_fd_pid = None


def _out():
    global _fd, _fd_pid
    if _fd is None or _fd_pid != os.getpid():
        _fd = os.open(EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = os.getpid()
    return _fd


@subscribe(f"{PREFIX}.*")
def on_bench_event(event):
    now = time.monotonic_ns()
    t = event.get("t_ns")
    lat = now - t if isinstance(t, int) else -1
    os.write(_out(), f"{event.get('seq', -1)} {lat}\n".encode())


@subscribe(f"rpc.{PREFIX}.echo")
def echo(request):
    return {"echo": request}
