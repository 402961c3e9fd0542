"""Drives tchu-bench's "tchu-tchu" side: a real tchu-tchu 3.0.4 service (Celery worker, prefork
pool, 2 processes) fed and called by Python tchu-tchu clients (TchuClient). Run by the Rust
harness (tchu-bench/src/tchutchu.rs) with the venv's Python:

    python tchutchu_bench.py run --broker URL --exchange X --prefix P --workloads e2e,paced,rpc \
        [--e2e N] [--paced-rate R] [--paced-ms MS] [--rpc-seq N] [--rpc-conc N] [--callers K] \
        [--idle-s S] [--timeout S]
    python tchutchu_bench.py cleanup --broker URL --exchange X --prefix P

`run` starts the worker (queue P.svc on exchange X), waits for its ready file, runs the
workloads in order, stops the worker, deletes what the run declared, and prints one JSON line:
{"ok": true, "metrics": {...}, "info": {...}}; on failure {"ok": false, "error": "..."} and
exit status 1. Workloads:

    e2e    idle RSS of the worker (after --idle-s), then N events published by TchuClient.publish
           (one thread, sequential) until the handler ran for all: e2e events/s, py_publish
           publishes/s, rss_idle / rss_peak MB (sum of VmRSS over the worker's process tree;
           the peak is the largest sum sampled every 50 ms during the workload)
    paced  R events/s for MS ms, each carrying time.monotonic_ns(); the handler records the
           publish->handler latency: paced_p50/p95/p99 ms
    rpc    20 warm-up calls, N sequential TchuClient.call (rpc_p50/p95/p99 ms, rpc_seq calls/s),
           then N calls from K threads (rpc_conc calls/s)

`cleanup` deletes the run's queue and exchanges (after a run was killed).
"""

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# tchu-tchu logs every publish at INFO and warns "Django not available" on import.
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
logging.getLogger("tchu_tchu.django.decorators").addHandler(logging.NullHandler())
logging.getLogger("tchu_tchu.django.decorators").setLevel(logging.ERROR)

import amqp  # noqa: E402
from celery import Celery  # noqa: E402
from kombu import Exchange  # noqa: E402
from kombu.utils.url import url_to_parts  # noqa: E402

from tchu_tchu import TchuClient  # noqa: E402

for _name in list(logging.root.manager.loggerDict):
    if _name.startswith("tchu_tchu"):
        logging.getLogger(_name).setLevel(logging.ERROR)


class Timeout(Exception):
    pass


def kombu_url(url):
    """amqp://u:p@h:port/%2f (lapin's spelling of vhost "/") -> amqp://u:p@h:port//."""
    for suffix in ("/%2f", "/%2F"):
        if url.endswith(suffix):
            return url[: -len(suffix)] + "//"
    return url


def queue_name(prefix):
    return f"{prefix}.svc"


# ---------------------------------------------------------------- processes and memory


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces or parentheses: ppid is the 2nd field after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children_of(p))
    return out


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid):
    pids = tree(pid)
    return sum(status_kb(p, "VmRSS") for p in pids) / 1024.0, len(pids)


class PeakSampler(threading.Thread):
    """Samples the sum of VmRSS over the worker's tree every 50 ms and keeps the largest."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid)[0])
            self.stop.wait(0.05)

    def finish(self):
        self.stop.set()
        self.join()
        return max(self.peak, tree_rss_mb(self.pid)[0])


# ---------------------------------------------------------------- the worker


class Worker:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.events = os.path.join(tmp, "events.txt")
        self.ready = os.path.join(tmp, "ready.json")
        self.oids = os.path.join(tmp, "oids.txt")
        self.log = os.path.join(tmp, "worker.log")
        open(self.events, "w").close()
        self.proc = None
        self.offset = 0

    def start(self, timeout):
        a = self.args
        env = dict(
            os.environ,
            TCHU_BROKER_URL=kombu_url(a.broker),
            TCHU_EXCHANGE=a.exchange,
            TCHU_PY_SERVICE="tchubench",
            TCHU_PY_QUEUE=queue_name(a.prefix),
            TCHU_PY_PREFIX=a.prefix,
            TCHU_PY_EVENTS_FILE=self.events,
            TCHU_PY_READY_FILE=self.ready,
            TCHU_PY_OIDS_FILE=self.oids,
        )
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        cmd = [
            celery, "--workdir", HERE, "-A", "bench_service", "worker",
            "--pool", "prefork", "-c", "2", "-Q", queue_name(a.prefix),
            "-n", f"tchubench-{a.prefix}@%h", "--without-gossip", "--without-mingle",
            "-l", "WARNING",
        ]  # fmt: skip
        # Same process group as this driver: the harness kills the group on its own timeout.
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def mark(self):
        """Events handled from now on are counted by wait_events."""
        self.offset = os.path.getsize(self.events)

    def wait_events(self, n, timeout):
        """Waits until n more lines were appended since mark(); returns (lines, t_done)."""
        lines, buf, pos = [], b"", self.offset
        deadline = time.monotonic() + timeout
        with open(self.events, "rb") as f:
            while True:
                f.seek(pos)
                chunk = f.read()
                now = time.monotonic()
                if chunk:
                    pos += len(chunk)
                    buf += chunk
                    *done, buf = buf.split(b"\n")
                    lines.extend(done)
                    if len(lines) >= n:
                        return lines, now
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker died: {self.log_tail()}")
                if now > deadline:
                    raise RuntimeError(f"only {len(lines)} of {n} events handled in {timeout} s")
                time.sleep(0.01)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        for p in pids:  # this worker's own processes only
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def reply_queues(self):
        try:
            with open(self.oids) as f:
                return {line.strip() for line in f if line.strip()}
        except OSError:
            return set()


def cleanup(broker, exchange, queues):
    _, host, port, user, password, vhost, _ = url_to_parts(kombu_url(broker))
    conn = amqp.Connection(
        f"{host or '127.0.0.1'}:{port or 5672}",
        userid=user or "guest",
        password=password or "guest",
        virtual_host=vhost or "/",
    )
    conn.connect()
    try:
        for kind, names in (("queue", queues), ("exchange", [exchange, f"{exchange}.celeryev"])):
            for name in names:
                ch = conn.channel()
                try:
                    if kind == "queue":
                        ch.queue_delete(name)
                    else:
                        ch.exchange_delete(name)
                except amqp.exceptions.NotFound:
                    pass
                finally:
                    try:
                        ch.close()
                    except Exception:
                        pass
    finally:
        conn.close()


# ---------------------------------------------------------------- workloads


def make_client(broker, exchange):
    """A publisher app as tests/python/pyclient.py builds it: dispatch_event routed to X."""
    app = Celery("tchubench-client", broker=kombu_url(broker), backend="rpc://")
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_routes={
            "tchu_tchu.dispatch_event": {
                "exchange": Exchange(exchange, type="topic", durable=True),
                "routing_key": "tchu_tchu.dispatch_event",
            }
        },
    )
    return app, TchuClient(celery_app=app)


def payload(seq):
    return {
        "seq": seq,
        "t_ns": time.monotonic_ns(),
        "user": "user-000042",
        "action": "profile.updated",
        "pad": "abcdefghijklmnopqrst",
    }


def pct_ms(ns, q):
    """The q-quantile (nearest rank, as the Rust side) of nanoseconds, in ms."""
    s = sorted(ns)
    if not s:
        return float("nan")
    i = min(max(math.ceil(q * len(s)), 1), len(s)) - 1
    return s[i] / 1e6


def w_e2e(a, worker, client, metrics, info):
    if a.idle_s > 0:
        time.sleep(a.idle_s)
    metrics["rss_idle"], info["worker_processes"] = tree_rss_mb(worker.proc.pid)
    sampler = PeakSampler(worker.proc.pid)
    sampler.start()
    worker.mark()
    topic = f"{a.prefix}.e2e"
    t0 = time.monotonic()
    for i in range(a.e2e):
        client.publish(topic, payload(i))
    t_pub = time.monotonic() - t0
    lines, t_done = worker.wait_events(a.e2e, a.wait)
    metrics["e2e"] = a.e2e / (t_done - t0)
    metrics["py_publish"] = a.e2e / t_pub
    metrics["rss_peak"] = sampler.finish()
    seqs = {int(line.split()[0]) for line in lines}
    info["e2e_distinct"] = len(seqs)


def w_paced(a, worker, client, metrics, info):
    n = a.paced_rate * a.paced_ms // 1000
    interval = 1.0 / a.paced_rate
    worker.mark()
    topic = f"{a.prefix}.paced"
    t0 = time.monotonic()
    late = 0
    for i in range(n):
        wait = t0 + i * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -interval:
            late += 1
        client.publish(topic, payload(i))
    info["paced_achieved_per_s"] = n / (time.monotonic() - t0)
    info["paced_late_publishes"] = late
    lines, _ = worker.wait_events(n, a.wait)
    lat = [int(line.split()[1]) for line in lines]
    for q, key in ((0.50, "paced_p50"), (0.95, "paced_p95"), (0.99, "paced_p99")):
        metrics[key] = pct_ms(lat, q)


def w_rpc(a, worker, client, metrics, info):
    topic = f"rpc.{a.prefix}.echo"
    req = {"seq": 0, "t_ns": 0, "user": "user-000042", "action": "profile.updated",
           "pad": "abcdefghijklmnopqrst"}  # fmt: skip

    def call():
        r = client.call(topic, req, timeout=a.wait)
        if not isinstance(r, dict) or "echo" not in r:
            raise RuntimeError(f"unexpected reply {r!r}")

    for _ in range(20):
        call()
    lat = []
    t0 = time.monotonic()
    for _ in range(a.rpc_seq):
        t = time.monotonic_ns()
        call()
        lat.append(time.monotonic_ns() - t)
    metrics["rpc_seq"] = a.rpc_seq / (time.monotonic() - t0)
    for q, key in ((0.50, "rpc_p50"), (0.95, "rpc_p95"), (0.99, "rpc_p99")):
        metrics[key] = pct_ms(lat, q)
    if a.rpc_conc <= 0 or a.callers <= 0:
        return
    errors = []
    shares = [a.rpc_conc // a.callers + (1 if i < a.rpc_conc % a.callers else 0)
              for i in range(a.callers)]  # fmt: skip

    def caller(k):
        a.reply_queues.add(client.producer.celery_app.thread_oid)
        try:
            for _ in range(k):
                call()
        except Exception as e:  # reported below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=caller, args=(k,)) for k in shares]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"concurrent RPC: {errors[0]}")
    metrics["rpc_conc"] = a.rpc_conc / (time.monotonic() - t0)


WORKLOADS = {"e2e": w_e2e, "paced": w_paced, "rpc": w_rpc}


def run(a):
    def on_alarm(signum, frame):
        raise Timeout(f"no result within {a.timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(a.timeout)
    metrics, info, out = {}, {}, None
    tmp = tempfile.mkdtemp(prefix="tchutchu-bench-")
    worker = Worker(a, tmp)
    app = None
    reply_queues = set()
    try:
        t = time.monotonic()
        worker.start(timeout=60)
        info["worker_start_s"] = round(time.monotonic() - t, 2)
        app, client = make_client(a.broker, a.exchange)
        # The client's rpc:// reply queues, declared by its first publish or call: this
        # thread's, and (in case) the app's. The RPC caller threads add their own.
        reply_queues.update((app.thread_oid, app.oid))
        a.reply_queues = reply_queues
        for w in a.workloads.split(","):
            WORKLOADS[w](a, worker, client, metrics, info)
        out = {"ok": True, "metrics": metrics, "info": info}
    except Exception as e:
        # The worker's log and the events file stay in tmp for a look.
        out = {"ok": False, "error": f"{type(e).__name__}: {e} (files in {tmp})"}
    finally:
        signal.alarm(0)
        worker.stop()
        if app is not None:
            try:
                app.close()
            except Exception:
                pass
        try:
            cleanup(a.broker, a.exchange,
                    [queue_name(a.prefix), *sorted(reply_queues | worker.reply_queues())])  # fmt: skip
        except Exception as e:
            print(f"tchutchu_bench: cleanup failed: {e}", file=sys.stderr)
        if out is not None and out["ok"]:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0 if out["ok"] else 1


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=("run", "cleanup"))
    ap.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--exchange", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--workloads", default="e2e,paced,rpc")
    ap.add_argument("--e2e", type=int, default=5000)
    ap.add_argument("--paced-rate", type=int, default=200)
    ap.add_argument("--paced-ms", type=int, default=10000)
    ap.add_argument("--rpc-seq", type=int, default=500)
    ap.add_argument("--rpc-conc", type=int, default=500)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--idle-s", type=float, default=2.0)
    ap.add_argument("--wait", type=float, default=120.0, help="longest wait for events or a reply")
    ap.add_argument("--timeout", type=int, default=200, help="limit of the whole run (s)")
    a = ap.parse_args(argv)
    if a.command == "cleanup":
        cleanup(a.broker, a.exchange, [queue_name(a.prefix)])
        return 0
    bad = [w for w in a.workloads.split(",") if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]}")
    return run(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
