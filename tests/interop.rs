//! Interop with real Python tchu-tchu 3.0.4 peers (`tests/python/`): Celery workers and
//! `TchuClient` / `ServerlessProducer` clients against tchu services on the same exchange.
//!
//! Needs `.venv` at the repo root (`bash .ci/python-venv.sh`), so the tests are `#[ignore]`d:
//! `cargo test --workspace` lists them as ignored, with the reason. Run them with
//! `cargo test -p tchu --test interop -- --include-ignored` (CI does, in `.ci/first-hour.sh`);
//! without the venv they then fail and say how to make it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Names, WAIT, recv_n};
use serde_json::{Value, json};
use tchu::{
    App, CallError, CeleryEncoding, Delivery, HandlerError, Meta, RpcError, Running, WireFormat,
};
use tokio::sync::mpsc;

/// Bound for a worker's ready file (it appears 0.2–0.7 s after spawning on 2 cores).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a warm shutdown after SIGTERM (about 2–4 s) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for one `pyclient.py` / `pycleanup.py` run (about 0.3 s each).
const PY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval for the ready and events files.
const POLL: Duration = Duration::from_millis(50);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tchu crate is in the workspace")
        .to_path_buf()
}

/// `.venv/bin`; a missing venv fails the test with how to make it.
fn venv() -> PathBuf {
    let bin = root().join(".venv/bin");
    if bin.join("celery").is_file() && bin.join("python").is_file() {
        return bin;
    }
    panic!(
        "{}/celery is missing: the interop tests need the Python venv \
         (run `bash .ci/python-venv.sh` first)",
        bin.display()
    );
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs a `tests/python` script with `env` to completion within [`PY_TIMEOUT`] (SIGKILL
/// after), without blocking the runtime: the Rust services of the test must keep running.
async fn run_py(bin: &Path, script: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let child = Command::new(bin.join("python"))
        .arg(root().join("tests/python").join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
    let pid = child.id();
    let out = match tokio::time::timeout(
        PY_TIMEOUT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    {
        Ok(r) => r.expect("join").expect("output"),
        Err(_) => {
            kill("-KILL", pid);
            panic!("{script} {args:?} did not finish within {PY_TIMEOUT:?}");
        }
    };
    assert!(
        out.status.success(),
        "{script} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pyclient.py <args>` on the test's exchange; its one JSON line.
async fn pyclient(bin: &Path, names: &Names, args: &[&str]) -> Value {
    let env = [
        ("TCHU_BROKER_URL", common::broker_url()),
        ("TCHU_EXCHANGE", names.exchange.clone()),
    ];
    let out = run_py(bin, "pyclient.py", args, &env).await;
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("pyclient {args:?}: {e}: {out}"))
}

/// A real tchu-tchu Celery worker (`tests/python/pyservice.py`, solo pool) on the test's
/// exchange, with its own queue, service name and files. Dropping it stops it (SIGTERM, then
/// SIGKILL after [`STOP_TIMEOUT`]) and deletes what it declared, also when the test fails.
struct PyWorker {
    bin: PathBuf,
    child: Child,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    queue: String,
}

impl PyWorker {
    async fn start(bin: &Path, names: &Names) -> PyWorker {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("tchu-interop-{id}"));
        fs::create_dir_all(&dir).expect("temp dir");
        let service = format!("pyinterop_{id}");
        let queue = format!("{service}_queue");
        let env = vec![
            ("TCHU_BROKER_URL", common::broker_url()),
            ("TCHU_EXCHANGE", names.exchange.clone()),
            ("TCHU_PY_SERVICE", service.clone()),
            ("TCHU_PY_QUEUE", queue.clone()),
            ("TCHU_PY_PREFIX", "interop".to_owned()),
            (
                "TCHU_PY_EVENTS_FILE",
                dir.join("events.jsonl").display().to_string(),
            ),
            (
                "TCHU_PY_READY_FILE",
                dir.join("ready.json").display().to_string(),
            ),
        ];
        let log = fs::File::create(dir.join("worker.log")).expect("worker.log");
        let child = Command::new(bin.join("celery"))
            .current_dir(root())
            .args(["--workdir", "tests/python", "-A", "pyservice", "worker"])
            .args([
                "--pool",
                "solo",
                "-Q",
                &queue,
                "-n",
                &format!("{service}@%h"),
            ])
            .args(["--without-gossip", "--without-mingle", "-l", "INFO"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn the celery worker");
        // From here on, Drop stops the worker whatever happens.
        let mut worker = PyWorker {
            bin: bin.to_path_buf(),
            child,
            dir,
            env,
            queue,
        };
        worker.wait_ready().await;
        worker
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }

    /// Waits for the ready file, written from Celery's `worker_ready` once tchu-tchu bound
    /// every handler pattern. The worker gives no other signal to a parent process, so polling
    /// the file under a deadline is the synchronisation here (not a fixed sleep).
    async fn wait_ready(&mut self) {
        let ready = self.dir.join("ready.json");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the celery worker exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the celery worker was not ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
        let info: Value =
            serde_json::from_str(&fs::read_to_string(&ready).expect("ready file")).expect("json");
        assert_eq!(info["queue"], self.queue.as_str());
        let keys = info["routing_keys"].as_array().expect("routing_keys");
        assert!(keys.contains(&json!("interop.*")), "{info}");
    }

    /// Every line its handlers recorded so far: `{"handler", "event"}`.
    fn events(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (within [`WAIT`]) until a handler recorded `event`. Python handlers run
    /// asynchronously and only write this file, hence polling it under a deadline.
    async fn wait_event(&self, handler: &str, event: &Value) {
        let want = json!({"handler": handler, "event": event});
        let deadline = Instant::now() + WAIT;
        while !self.events().contains(&want) {
            assert!(
                Instant::now() < deadline,
                "python never recorded {want} within {WAIT:?}; recorded: {:?}\n{}",
                self.events(),
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let pid = self.child.id();
        kill("-TERM", pid);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut stopped = false;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => {
                    stopped = true;
                    break;
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => break,
            }
        }
        if !stopped {
            eprintln!("celery worker {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Deletes its queue, the exchange and `<exchange>.celeryev` (bounded by the broker's
        // connect timeout; the process is short-lived).
        let _ = Command::new(self.bin.join("python"))
            .arg(root().join("tests/python/pycleanup.py"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("--- celery worker log ---\n{}", self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Handlers of a Rust service called and published to by Python clients.
mod rs_for_python {
    use super::*;

    /// The module path its `#[tchu::subscribe]` handlers are filtered by.
    pub(crate) const MODULE: &str = module_path!();

    /// A broadcast event published by Python.
    #[tchu::event(topic = "pyrs.greeting")]
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Greeting {
        /// A number.
        pub n: u32,
        /// A name.
        pub name: String,
    }

    /// What the greeting handler saw.
    pub(crate) type Seen = mpsc::UnboundedSender<(Greeting, Value, Meta)>;

    #[tchu::subscribe(Greeting)]
    async fn on_greeting(e: Greeting, raw: Value, meta: Meta, seen: tchu::State<Seen>) {
        let _ = seen.send((e, raw, meta));
    }

    /// An RPC request from Python.
    #[tchu::event(topic = "rpc.rs.echo", response = Echoed)]
    #[derive(Debug)]
    pub(crate) struct EchoRequest {
        /// An email address.
        #[validate(email)]
        pub email: String,
    }

    /// The reply to [`EchoRequest`].
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Echoed {
        /// The request's email.
        pub echo: String,
        /// Always `rust`.
        pub handled_by: String,
    }

    #[tchu::subscribe(EchoRequest)]
    async fn echo(req: EchoRequest) -> Result<Echoed, RpcError> {
        Ok(Echoed {
            echo: req.email,
            handled_by: "rust".to_owned(),
        })
    }
}

/// Python `TchuClient.publish` / `ServerlessProducer.publish` / `TchuClient.call` against a
/// Rust service (no Python worker involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python venv (bash .ci/python-venv.sh); run with --include-ignored"]
async fn python_clients_publish_to_and_call_rust() {
    let bin = venv();
    let started = Instant::now();
    let names = Names::new("interop_py2rs");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (barrier_tx, mut barrier) = mpsc::unbounded_channel::<u64>();
    let (valued_tx, mut valued) = mpsc::unbounded_channel::<Meta>();
    let r: Running = App::new(names.config())
        .service(names.service("rs"))
        .only_module(rs_for_python::MODULE)
        .concurrency(1)
        .state::<rs_for_python::Seen>(seen_tx)
        // An event handler that returns a value: it must not be sent back on a publish.
        .subscribe("pyrs.valued", "valued", move |d: Arc<Delivery>| {
            let _ = valued_tx.send(d.meta.clone());
            async { Ok::<_, RpcError>(json!({"not": "a reply"})) }
        })
        .subscribe("pyrs.barrier", "barrier", move |d: Arc<Delivery>| {
            let _ = barrier_tx.send(d.event()["n"].as_u64().unwrap_or_default());
            async { Ok::<(), RpcError>(()) }
        })
        .subscribe(
            "rpc.rs.business_error",
            "business",
            |_d: Arc<Delivery>| async {
                Err::<(), _>(
                    RpcError::new("USER_NOT_FOUND", "no such user")
                        .with_details(json!({"user_id": 404})),
                )
            },
        )
        .subscribe("rpc.rs.fail", "fail", |_d: Arc<Delivery>| async {
            Err::<(), _>(HandlerError::transient("rust handler exploded"))
        })
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    // With concurrency 1 the queue is handled in order: once the barrier is handled, every
    // message published before it has been fully processed (reply included).
    async fn sync(client: &tchu::Client, barrier: &mut mpsc::UnboundedReceiver<u64>, n: u64) {
        client
            .publish("pyrs.barrier", &json!({ "n": n }))
            .await
            .expect("barrier");
        assert_eq!(recv_n(barrier, 1).await, vec![n]);
    }

    // 1. TchuClient.publish and ServerlessProducer.publish → typed Rust handler.
    let out = pyclient(
        &bin,
        &names,
        &["publish", "pyrs.greeting", r#"{"n": 1, "name": "ada"}"#],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let out = pyclient(
        &bin,
        &names,
        &[
            "serverless-publish",
            "pyrs.greeting",
            r#"{"n": 2, "name": "grace"}"#,
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let got = recv_n(&mut seen, 2).await;
    for ((e, raw, meta), (n, name)) in got.iter().zip([(1, "ada"), (2, "grace")]) {
        assert_eq!(
            e,
            &rs_for_python::Greeting {
                n,
                name: name.to_owned()
            }
        );
        assert_eq!(raw, &json!({"n": n, "name": name}), "no _tchu_meta");
        assert_eq!(meta.topic, "pyrs.greeting");
        assert_eq!(meta.format, WireFormat::Celery);
        assert!(!meta.is_rpc);
    }

    // 7. A TchuClient.publish carries a reply_to; a handler's value is not sent back.
    let out = pyclient(&bin, &names, &["publish", "pyrs.valued", r#"{"n": 3}"#]).await;
    assert_eq!(out["ok"], true, "{out}");
    let meta = recv_n(&mut valued, 1).await.remove(0);
    assert!(!meta.is_rpc);
    sync(&client, &mut barrier, 1).await;
    assert_eq!(r.stats().replied, 0, "only real RPC is answered");

    // 4. TchuClient.call → Rust RPC handlers.
    let out = pyclient(
        &bin,
        &names,
        &[
            "call",
            "rpc.rs.echo",
            r#"{"email": "ada@example.com"}"#,
            "10",
        ],
    )
    .await;
    assert_eq!(
        out,
        json!({"ok": true, "result": {"echo": "ada@example.com", "handled_by": "rust"}})
    );
    let out = pyclient(
        &bin,
        &names,
        &["call", "rpc.rs.business_error", r#"{"user_id": 404}"#, "10"],
    )
    .await;
    assert_eq!(
        out,
        json!({"ok": true, "result": {
            "success": false,
            "error_code": "USER_NOT_FOUND",
            "error_message": "no such user",
            "error_details": {"user_id": 404},
        }}),
        "TchuClient.call returns a TchuRPCException as a plain dict"
    );
    let out = pyclient(&bin, &names, &["call", "rpc.rs.fail", r#"{"x": 1}"#, "10"]).await;
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["error"], "PublishError", "{out}");
    let message = out["message"].as_str().unwrap_or_default();
    assert!(message.contains("rust handler exploded"), "{out}");
    // A request that fails Rust-side validation is refused, not handled.
    let out = pyclient(
        &bin,
        &names,
        &["call", "rpc.rs.echo", r#"{"email": "nope"}"#, "10"],
    )
    .await;
    assert_eq!(out["ok"], false, "{out}");

    sync(&client, &mut barrier, 2).await;
    let stats = r.shutdown().await;
    assert_eq!(
        stats.replied, 4,
        "one reply per call, none per publish: {stats:?}"
    );
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    names.cleanup(&client, &["rs"], &[]).await;
    eprintln!(
        "python_clients_publish_to_and_call_rust: {:?}",
        started.elapsed()
    );
}

/// A Rust client and a Rust service next to a real tchu-tchu worker: publish, fan-out, calls,
/// with the default Celery encoding (`Lean`: the `task` and `id` headers only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python venv (bash .ci/python-venv.sh); run with --include-ignored"]
async fn rust_publishes_to_and_calls_a_python_worker() {
    let names = Names::new("interop_rs2py");
    let config = names.config();
    assert_eq!(config.celery_encoding, CeleryEncoding::Lean, "the default");
    rust_to_python(&names, config).await;
}

/// The same with `CeleryEncoding::Full` (`TCHU_CELERY_ENCODING=full`): every header
/// `TchuClient` writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python venv (bash .ci/python-venv.sh); run with --include-ignored"]
async fn rust_publishes_to_and_calls_a_python_worker_full_encoding() {
    let names = Names::new("interop_rs2py_full");
    let mut config = names.config();
    config.celery_encoding = CeleryEncoding::Full;
    rust_to_python(&names, config).await;
}

/// The headers a Celery message of `encoding` carries (the Rust service checks what arrives).
fn expected_celery_headers(encoding: CeleryEncoding) -> Vec<&'static str> {
    let mut names = match encoding {
        CeleryEncoding::Lean => vec!["id", "task"],
        CeleryEncoding::Full => vec![
            "argsrepr",
            "eta",
            "expires",
            "group",
            "group_index",
            "id",
            "ignore_result",
            "kwargsrepr",
            "lang",
            "origin",
            "parent_id",
            "replaced_task_nesting",
            "retries",
            "root_id",
            "shadow",
            "stamped_headers",
            "stamps",
            "task",
            "timelimit",
        ],
        other => panic!("no expectation for {other:?}"),
    };
    names.sort_unstable();
    names
}

async fn rust_to_python(names: &Names, config: tchu::Config) {
    let bin = venv();
    let started = Instant::now();
    let test = names.prefix.clone();
    let encoding = config.celery_encoding;
    assert_eq!(config.format, WireFormat::Celery);
    // The Rust service first: it declares the exchange, then the worker binds to it.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Value, Vec<String>)>();
    let r = App::new(config)
        .service(names.service("rs"))
        .only_module("none")
        .subscribe("interop.*", "rs_interop", move |d: Arc<Delivery>| {
            // The Celery headers that arrived (tchu's own and trace headers aside).
            let headers = d
                .meta
                .headers
                .keys()
                .filter(|k| {
                    !k.starts_with("x-")
                        && !["traceparent", "tracestate", "tchu-schema"].contains(&k.as_str())
                })
                .cloned()
                .collect();
            let _ = tx.send((d.meta.topic.clone(), d.event().clone(), headers));
            async { Ok::<(), RpcError>(()) }
        })
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let py = PyWorker::start(&bin, names).await;
    eprintln!("worker ready after {:?}", started.elapsed());

    // 2 + 3. One Rust publish reaches the Python and the Rust service at once.
    let event = json!({"order_id": 7, "items": ["a", "b"], "note": "fan-out"});
    client
        .publish("interop.created", &event)
        .await
        .expect("publish");
    let (topic, got, mut headers) = recv_n(&mut rx, 1).await.remove(0);
    assert_eq!((topic.as_str(), &got), ("interop.created", &event));
    headers.sort_unstable();
    assert_eq!(headers, expected_celery_headers(encoding), "{encoding}");
    py.wait_event("on_interop_event", &event).await;

    // 5. Rust calls Python RPC handlers.
    let t = Some(Duration::from_secs(10));
    let req = json!({"email": "ada@example.com"});
    let v = client
        .call("rpc.interop.echo", &req, t)
        .await
        .expect("echo");
    assert_eq!(v, json!({"echo": req, "handled_by": "python"}));
    match client
        .call("rpc.interop.business_error", &json!({"user_id": 404}), t)
        .await
    {
        Err(CallError::Remote {
            code,
            message,
            details,
        }) => {
            assert_eq!(code, "USER_NOT_FOUND");
            assert_eq!(message, "no such user");
            assert_eq!(details, json!({"user_id": 404}));
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    match client.call("rpc.interop.fail", &json!({"x": 1}), t).await {
        Err(CallError::HandlerFailed { message }) => {
            assert!(message.contains("python handler exploded"), "{message}");
        }
        other => panic!("expected HandlerFailed, got {other:?}"),
    }
    assert_eq!(client.pending_calls(), 0);
    let stats = r.shutdown().await;
    assert_eq!((stats.handled, stats.internal, stats.replied), (1, 0, 0));

    drop(py);
    names.cleanup(&client, &["rs"], &[]).await;
    eprintln!("{test} ({encoding}): {:?}", started.elapsed());
}

/// A Rust service bound with `#` next to a tchu-tchu worker gets the worker's
/// `tchu_tchu.handler.*` sub-tasks: acknowledged and counted, not handled, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python venv (bash .ci/python-venv.sh); run with --include-ignored"]
async fn a_rust_catch_all_skips_tchu_tchu_internal_tasks() {
    let bin = venv();
    let started = Instant::now();
    let names = Names::new("interop_all");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let r = App::new(names.config())
        .service(names.service("all"))
        .only_module("none")
        .concurrency(1)
        .subscribe("#", "all", move |d: Arc<Delivery>| {
            let _ = tx.send(d.meta.topic.clone());
            async { Ok::<(), RpcError>(()) }
        })
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let py = PyWorker::start(&bin, &names).await;

    // From Python (with a reply_to) and from Rust.
    let from_py = json!({"from": "python"});
    let out = pyclient(
        &bin,
        &names,
        &["publish", "interop.py", &from_py.to_string()],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    py.wait_event("on_interop_event", &from_py).await;
    let from_rs = json!({"from": "rust"});
    client
        .publish("interop.rs", &from_rs)
        .await
        .expect("publish");
    py.wait_event("on_interop_event", &from_rs).await;
    // Python ran both sub-tasks, so both were routed to the `#` queue too, before this barrier:
    // with concurrency 1, once the barrier is handled they have been processed.
    client
        .publish("rs.barrier", &json!({}))
        .await
        .expect("barrier");
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some("rs.barrier") {
        topics.extend(recv_n(&mut rx, 1).await);
    }
    assert_eq!(topics, ["interop.py", "interop.rs", "rs.barrier"]);
    // The barrier's handler has run, but its run is counted once it returns: read the
    // counters after the service stopped (shutdown drains in-flight deliveries).
    let stats = r.shutdown().await;
    eprintln!("stats: {stats:?}");
    assert_eq!(stats.internal, 2, "one sub-task per Python handler run");
    assert_eq!(stats.handled, 3);
    assert_eq!(
        (stats.dead_lettered, stats.failed, stats.replied),
        (0, 0, 0)
    );
    let dlq = format!("{}.dlq", names.service("all"));
    assert_eq!(client.queue_len(&dlq).await.expect("dlq length"), 0);
    assert!(rx.try_recv().is_err(), "no sub-task reached the handler");

    drop(py);
    names.cleanup(&client, &["all"], &[]).await;
    eprintln!(
        "a_rust_catch_all_skips_tchu_tchu_internal_tasks: {:?}",
        started.elapsed()
    );
}
