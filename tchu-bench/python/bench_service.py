"""The tchu-tchu 3.0.4 service of tchu-bench's "tchu-tchu" side (a Celery app), set up by
``tests/python/tchutchu_worker.py`` (the same set-up as the interop tests' worker) with the
bench handlers of ``bench_handlers``. tchutchu_bench.py starts it as

    celery --workdir tchu-bench/python -A bench_service worker --pool prefork -c 2 -Q QUEUE ...

Environment (set by tchutchu_bench.py): TCHU_BROKER_URL, TCHU_EXCHANGE, TCHU_PY_SERVICE,
TCHU_PY_QUEUE, TCHU_PY_READY_FILE, TCHU_PY_OIDS_FILE (see tchutchu_worker), and for
bench_handlers TCHU_PY_PREFIX and TCHU_PY_EVENTS_FILE.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))

from tchutchu_worker import worker_app  # noqa: E402

app = worker_app("tchubench", "bench_handlers", HERE)
