"""Which Celery task headers and properties does a real tchu-tchu 3.0.4 worker need? (#14)

    .venv/bin/python tests/python/header_probe.py [--pool solo|prefork|threads] [--json OUT]

Starts a real worker (``pyservice.py``, by default with the solo pool as ``tests/interop.rs``
does; ``--pool prefork`` or ``threads`` runs it with one process or thread) on a fresh exchange and publishes raw ``tchu_tchu.dispatch_event`` task messages with py-amqp, the way
tchu's ``wire::celery::encode`` writes them (same body, same AMQP header types), each time with
a different set of headers and properties:

- ``full``: the 19 headers and the properties ``TchuClient`` writes (tchu's ``Full`` encoding);
- ``full-<name>``: ``full`` without one header or property, for each of them;
- ``lean``: only the ``task`` and ``id`` headers and the ``content_type`` property (tchu's
  ``Lean`` encoding);
- ``lean-<name>``: ``lean`` without one of those three, each against a fresh worker.

For each case it checks, against the same worker:

- an event (``interop.probe``, ``_tchu_meta.is_rpc`` false) reaches the Python handler with the
  same event as with ``full``;
- a call to ``rpc.interop.echo`` gets a reply, published to the ``reply_to`` queue with
  ``correlation_id`` = the task id, whose Celery result meta equals ``full``'s but for
  ``date_done`` and ``task_id`` (and ``task_id`` is the id sent);
- a call to ``rpc.interop.fail`` gets the same failure reply as ``full``'s.

A case passes when all three hold. A message the worker refuses is shown by a barrier: a
``lean`` event published after it, which a solo worker handles in order, so once the barrier
is recorded the refused message has been dealt with (the event itself is then given 2 s more,
as a prefork pool may finish the two sub-tasks out of order). A worker that died on a message counts as
a failure and is restarted for the next case. Prints one line per case and a summary; exit
status 0 when every ``full-*`` and ``lean`` case passes and every ``lean-*`` case fails (the
minimal set is minimal).

Environment: TCHU_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672//).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import amqp
from kombu.utils.url import url_to_parts

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, ".venv", "bin")
BROKER_URL = os.environ.get("TCHU_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
TASK = "tchu_tchu.dispatch_event"
WAIT = 20.0
POLL = 0.05


def connect():
    _, host, port, user, password, vhost, _ = url_to_parts(BROKER_URL)
    conn = amqp.Connection(
        f"{host or '127.0.0.1'}:{port or 5672}",
        userid=user or "guest",
        password=password or "guest",
        virtual_host=vhost or "/",
    )
    conn.connect()
    return conn


def py_json(value):
    return json.dumps(value, separators=(", ", ": "))


def event_string(event, is_rpc):
    return py_json({**event, "_tchu_meta": {"is_rpc": is_rpc}})


def body(topic, event, is_rpc):
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return py_json([[event_string(event, is_rpc)], {"routing_key": topic}, embed])


def full_headers(task_id, topic, event, is_rpc):
    """What tchu's Full encoding writes (the order and AMQP types of TchuClient's)."""
    return {
        "lang": "py",
        "task": TASK,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr([event_string(event, is_rpc)]),
        "kwargsrepr": repr({"routing_key": topic}),
        "origin": f"probe{os.getpid()}@host",
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


FULL_PROPERTIES = ("content_type", "content_encoding", "priority", "correlation_id")
LEAN_HEADERS = ("task", "id")
LEAN_PROPERTIES = ("content_type",)


def message(case, task_id, topic, event, is_rpc):
    """(headers, properties) of `case` for one message."""
    headers = full_headers(task_id, topic, event, is_rpc)
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "priority": 0,
        "correlation_id": task_id,
    }
    kind, _, drop = case.partition("-")
    if kind == "lean":
        headers = {k: v for k, v in headers.items() if k in LEAN_HEADERS}
        props = {k: v for k, v in props.items() if k in LEAN_PROPERTIES}
    headers.pop(drop, None)
    props.pop(drop, None)
    return headers, props


class Worker:
    def __init__(self, exchange, pool):
        self.id = uuid.uuid4().hex[:8]
        self.dir = tempfile.mkdtemp(prefix=f"tchu-probe-{self.id}-")
        self.service = f"pyprobe_{self.id}"
        self.queue = f"{self.service}_queue"
        self.events_file = os.path.join(self.dir, "events.jsonl")
        ready = os.path.join(self.dir, "ready.json")
        self.env = dict(
            os.environ,
            TCHU_BROKER_URL=BROKER_URL,
            TCHU_EXCHANGE=exchange,
            TCHU_PY_SERVICE=self.service,
            TCHU_PY_QUEUE=self.queue,
            TCHU_PY_PREFIX="interop",
            TCHU_PY_EVENTS_FILE=self.events_file,
            TCHU_PY_READY_FILE=ready,
            TCHU_PY_OIDS_FILE=os.path.join(self.dir, "oids"),
        )
        self.log_path = os.path.join(self.dir, "worker.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [os.path.join(BIN, "celery"), "--workdir", "tests/python", "-A", "pyservice",
                 "worker", "--pool", pool, "-c", "1", "-Q", self.queue, "-n", f"{self.service}@%h",
                 "--without-gossip", "--without-mingle", "-l", "INFO"],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready:\n{self.log()}")
            time.sleep(POLL)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def events(self):
        try:
            with open(self.events_file) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_event(self, handler, event, timeout=WAIT):
        want = {"handler": handler, "event": event}
        deadline = time.monotonic() + timeout
        while want not in self.events():
            if not self.alive() or time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True

    def stop(self):
        """Stops it and deletes its queue and the rpc:// reply queues of its processes."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            with open(self.env["TCHU_PY_OIDS_FILE"]) as f:
                oids = sorted({line.strip() for line in f if line.strip()})
        except FileNotFoundError:
            oids = []
        queues = [a for q in [self.queue, *oids] for a in ("--queue", q)]
        subprocess.run(
            [os.path.join(BIN, "python"), os.path.join(HERE, "pycleanup.py"), *queues],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


class Probe:
    def __init__(self, exchange):
        self.exchange = exchange
        self.conn = connect()
        self.ch = self.conn.channel()
        self.ch.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        self.reply_queue, _, _ = self.ch.queue_declare("", exclusive=True, auto_delete=True)
        self.replies = {}
        self.ch.basic_consume(self.reply_queue, callback=self._on_reply, no_ack=True)

    def _on_reply(self, msg):
        self.replies[msg.properties.get("correlation_id")] = json.loads(msg.body)

    def publish(self, case, topic, event, is_rpc, reply_to=None):
        task_id = str(uuid.uuid4())
        headers, props = message(case, task_id, topic, event, is_rpc)
        if reply_to:
            props["reply_to"] = reply_to
        msg = amqp.Message(body(topic, event, is_rpc), application_headers=headers,
                           delivery_mode=2, **props)
        self.ch.basic_publish(msg, exchange=self.exchange, routing_key=topic)
        return task_id

    def wait_reply(self, task_id, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while task_id not in self.replies and time.monotonic() < deadline:
            try:
                self.conn.drain_events(timeout=POLL)
            except TimeoutError:
                pass
        return self.replies.pop(task_id, None)

    def close(self):
        self.ch.close()
        self.conn.close()


def comparable(reply):
    """The reply without what differs per message."""
    if reply is None:
        return None
    return {k: v for k, v in reply.items() if k not in ("date_done", "task_id")}


def run_case(probe, worker, case, n):
    """Runs one case; returns (ok, evidence)."""
    event = {"case": case, "n": n}
    probe.publish(case, "interop.probe", event, False)
    # The barrier: a lean event after it (a solo worker handles its queue in order).
    barrier = {"barrier": case, "n": n}
    probe.publish("lean", "interop.probe", barrier, False)
    got_barrier = worker.wait_event("on_interop_event", barrier)
    got_event = got_barrier and worker.wait_event("on_interop_event", event, 2)
    replies = {}
    for topic in ("rpc.interop.echo", "rpc.interop.fail"):
        if not worker.alive():
            break
        # The same request every time, so that the replies compare equal.
        req = {"email": "probe@example.com"}
        task_id = probe.publish(case, topic, req, True, reply_to=probe.reply_queue)
        reply = probe.wait_reply(task_id, WAIT if got_barrier else 3)
        if reply is not None and reply.get("task_id") != task_id:
            reply = {"wrong task_id": reply.get("task_id")}
        replies[topic] = comparable(reply)
    return got_event, replies, worker.alive()


def main(argv):
    out_json = argv[argv.index("--json") + 1] if "--json" in argv else None
    pool = argv[argv.index("--pool") + 1] if "--pool" in argv else "solo"
    exchange = f"tchu_probe.{uuid.uuid4().hex[:8]}"
    probe = Probe(exchange)
    worker = Worker(exchange, pool)
    every_header = list(full_headers("x", "t", {}, False))
    cases = ["full"] + [f"full-{h}" for h in every_header + list(FULL_PROPERTIES)] + ["lean"]
    cases += [f"lean-{h}" for h in LEAN_HEADERS + LEAN_PROPERTIES]
    results = {}
    reference = None
    try:
        for n, case in enumerate(cases):
            if case.startswith("lean-") or not worker.alive():
                # A fresh worker for a case that may break it.
                worker.stop()
                worker = Worker(exchange, pool)
            got_event, replies, alive = run_case(probe, worker, case, n)
            if case == "full":
                reference = replies
            same = {t: r is not None and r == reference.get(t) for t, r in replies.items()}
            ok = got_event and len(same) == 2 and all(same.values())
            results[case] = {
                "ok": ok, "event": got_event, "replies_as_full": same, "worker_alive": alive,
            }
            print(f"{case:<28} {'PASS' if ok else 'FAIL'}  event={got_event} "
                  f"replies_as_full={same} worker_alive={alive}", flush=True)
            if case == "full" and not ok:
                print(worker.log(), file=sys.stderr)
                return 1
    finally:
        worker.stop()
        probe.close()
        subprocess.run(
            [os.path.join(BIN, "python"), os.path.join(HERE, "pycleanup.py"), "--exchange",
             exchange, "--exchange", f"{exchange}.celeryev"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"pool": pool, "reference_replies": reference, "cases": results}, f,
                      indent=2)
    lean_set = LEAN_HEADERS + LEAN_PROPERTIES
    needed = [c[5:] for c in results if c.startswith("full-") and not results[c]["ok"]]
    beyond = [n for n in needed if n not in lean_set]
    minimal = results["lean"]["ok"] and all(
        not results[c]["ok"] for c in results if c.startswith("lean-"))
    print(f"pool {pool}: needed: {needed}; needed beyond the lean set: {beyond or 'nothing'}; "
          f"lean works and each of its parts is needed: {minimal}")
    return 0 if minimal and not beyond else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
