"""A Python tchu-tchu 3.0.4 service for tchu's interop tests, set up by ``tchutchu_worker``
(tchu-tchu's README setup with the one fix 3.0.4 needs; see there) with the handlers of
``pyservice_handlers``.

Run it with (from the repo root):

    .venv/bin/celery --workdir tests/python -A pyservice worker --pool solo -Q "$QUEUE" ...

Environment: see ``tchutchu_worker`` (TCHU_BROKER_URL, TCHU_EXCHANGE, TCHU_PY_SERVICE (default
pyinterop), TCHU_PY_QUEUE, TCHU_PY_READY_FILE), plus TCHU_PY_PREFIX (topic prefix of the
handlers, default interop) and TCHU_PY_EVENTS_FILE (handlers append one JSON line per received
event here), read by pyservice_handlers.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tchutchu_worker import worker_app  # noqa: E402

app = worker_app("pyinterop", "pyservice_handlers", HERE)
