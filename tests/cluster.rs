//! Running on a RabbitMQ cluster: queue types, several broker nodes, many instances.
//!
//! - On the machine's broker (always run): declaring a service against queues of another type
//!   fails with the way to migrate; retries work on quorum queues.
//! - `scaling_one_to_four_instances` (`#[ignore]`d, prints events/s): one queue, 1 to 4
//!   instances of one service; asserts the instances handled every confirmed event exactly
//!   once.
//! - `three_node_cluster_failover` (only with `TCHU_CLUSTER_TEST=1`, as root): starts a real
//!   3-node cluster beside the machine's broker (nodes `tchu-c{1,2,3}@localhost`, AMQP ports
//!   5681–5683, distribution ports 25681–25683, data under a temporary directory), publishes
//!   10,000 confirmed events to a quorum queue while the node the service is connected to (and
//!   the queue's leader) is stopped and started again, and checks every confirmed event is
//!   handled. The cluster is stopped and its data removed at the end, even on failure.
//!
//!   Then, on the same cluster, `leader_stop_while_reconnecting`: the service's quorum queue
//!   led by the second node, the service connected to the first, the publisher to the third;
//!   under load the first and second nodes are stopped at the same moment (the second back
//!   after 10 s, the first after 20 s), so the service reconnects to the third node and
//!   consumes again while the queue has no leader; every confirmed event must still be handled
//!   (a consumer that receives nothing while its queue has ready messages is replaced).
//!
//! `TCHU_CLUSTER_TEST=1 cargo test -p tchu --test cluster -- --nocapture`

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Names, WAIT, recv_n};
use serde_json::json;
use tchu::{App, BrokerUrl, Client, Delivery, HandlerError, Meta, QueueType, State};
use tokio::sync::mpsc;

/// The type of each queue whose name starts with `prefix`, from `rabbitmqctl list_queues`.
fn queue_types(node: Option<&str>, prefix: &str) -> BTreeMap<String, String> {
    let mut args = vec![];
    if let Some(n) = node {
        args.extend(["-n", n]);
    }
    args.extend(["list_queues", "-q", "--no-table-headers", "name", "type"]);
    common::rabbitmqctl(&args)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (name, ty) = (cols.next()?, cols.next()?);
            name.starts_with(prefix)
                .then(|| (name.to_owned(), ty.trim().to_owned()))
        })
        .collect()
}

// --- queue types on the machine's broker ----------------------------------------------------

#[tokio::test]
async fn declaring_another_queue_type_is_a_clear_error() {
    let names = Names::new("qtype");
    let svc = names.service("svc");
    let app = |t: QueueType| {
        App::new(names.config())
            .service(svc.clone())
            .only_module("none")
            .queue_type(t)
            .subscribe("qtype.x", "x", |_d: Arc<Delivery>| async {
                Ok::<(), Infallible>(())
            })
    };
    let r = app(QueueType::Classic)
        .start()
        .await
        .expect("classic start");
    let client = r.client().clone();
    r.shutdown().await;

    let err = app(QueueType::Quorum)
        .start()
        .await
        .expect_err("a quorum declare over a classic queue must fail");
    let text = err.to_string();
    eprintln!("mismatch error: {text}");
    for needle in [
        format!("`{svc}`"),
        "quorum queue".to_owned(),
        "x-queue-type".to_owned(),
        format!("rabbitmqctl delete_queue {svc}"),
        "TCHU_QUEUE_TYPE=classic".to_owned(),
        format!("`{svc}.dlq`"),
    ] {
        assert!(text.contains(&needle), "`{needle}` missing from: {text}");
    }
    assert!(
        matches!(&err, tchu::Error::Broker(b) if b.is_queue_mismatch()),
        "{err:?}"
    );

    // The way back: after deleting the queues, the service starts with the new type.
    names.cleanup(&client, &["svc"], &[]).await;
    let client = names.client().await;
    let r = app(QueueType::Quorum).start().await.expect("quorum start");
    let types = queue_types(None, &svc);
    assert_eq!(
        types.get(&svc).map(String::as_str),
        Some("quorum"),
        "{types:?}"
    );
    r.shutdown().await;
    names.cleanup(&client, &["svc"], &[]).await;
}

mod t_quorum_retry {
    use super::*;

    pub(super) type Seen = (u32, Instant);

    #[tchu::subscribe(
        "qjob.flaky",
        retries = 3,
        backoff = "fixed",
        delay = "200ms",
        jitter = false
    )]
    async fn flaky(
        _event: serde_json::Value,
        meta: Meta,
        probe: State<mpsc::UnboundedSender<Seen>>,
    ) -> Result<(), HandlerError> {
        let _ = probe.send((meta.attempt, Instant::now()));
        if meta.attempt < 3 {
            Err(HandlerError::transient("not yet"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn retries_work_on_quorum_queues() {
    let names = Names::new("qretry");
    let svc = names.service("svc");
    let (tx, mut rx) = mpsc::unbounded_channel::<t_quorum_retry::Seen>();
    let r = App::new(names.config())
        .service(svc.clone())
        .only_module("cluster::t_quorum_retry::")
        .queue_type(QueueType::Quorum)
        .state(tx)
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    client
        .publish("qjob.flaky", &json!({"id": 1}))
        .await
        .expect("publish");
    let got = recv_n(&mut rx, 3).await;
    assert_eq!(
        got.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempts seen by the handler"
    );
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("quorum retry gaps: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(200)),
        "{gaps:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(700), rx.recv())
            .await
            .is_err(),
        "no extra attempt"
    );
    let s = r.stats();
    assert_eq!((s.retried, s.dead_lettered), (2, 0), "{s:?}");
    let wait_queue = format!("{svc}.retry.200ms");
    let types = queue_types(None, &svc);
    for q in [
        &svc,
        &format!("{svc}.dlq"),
        &format!("{svc}.tchu.bindings"),
        &wait_queue,
    ] {
        assert_eq!(
            types.get(q).map(String::as_str),
            Some("quorum"),
            "{q}: {types:?}"
        );
    }
    r.shutdown().await;
    names.cleanup(&client, &["svc"], &[&wait_queue]).await;
}

// --- many instances of one service ----------------------------------------------------------

fn counting_instance(
    names: &Names,
    svc: &str,
    prefetch: u16,
    concurrency: usize,
    work: Duration,
    tx: mpsc::UnboundedSender<u64>,
) -> App {
    App::new(names.config())
        .service(svc.to_owned())
        .only_module("none")
        .prefetch(prefetch)
        .concurrency(concurrency)
        .subscribe("scale.event", "count", move |d: Arc<Delivery>| {
            // `u64::MAX` for a payload without `n`: never a published number, so it shows as a
            // stranger in the drain's check.
            let _ = tx.send(d.event()["n"].as_u64().unwrap_or(u64::MAX));
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                Ok::<(), Infallible>(())
            }
        })
}

/// Fills the queue, then starts `instances` instances at once and times the drain. Asserts that
/// the instances together handled every confirmed event exactly once (none lost, none twice,
/// nothing else), also counting deliveries that arrive while they shut down.
async fn drain_rate(
    instances: usize,
    total: u64,
    prefetch: u16,
    concurrency: usize,
    work: Duration,
) -> f64 {
    let names = Names::new("scale");
    let svc = names.service("svc");
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    // Declare the queue and its binding, then stop consuming so the events pile up.
    let first = counting_instance(&names, &svc, prefetch, concurrency, work, tx.clone())
        .start()
        .await
        .expect("declare");
    first.shutdown().await;
    let publisher = names.client().await;
    let load = common::publish_load(&publisher, "scale.event", total, 64, u64::MAX, || {}).await;
    assert_eq!(load.gave_up, 0, "publishes given up");
    assert_eq!(load.confirmed.len() as u64, total, "confirmed events");
    let t0 = Instant::now();
    let mut running = Vec::new();
    for _ in 0..instances {
        running.push(
            counting_instance(&names, &svc, prefetch, concurrency, work, tx.clone())
                .start()
                .await
                .expect("start instance"),
        );
    }
    drop(tx);
    let mut handled: BTreeMap<u64, u32> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (handled.len() as u64) < total {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => *handled.entry(n).or_default() += 1,
            _ => panic!("drained {} of {total} distinct events", handled.len()),
        }
    }
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    for r in running {
        r.shutdown().await;
    }
    // Deliveries handled after the count was complete, up to the shutdown: a duplicate shows
    // here.
    while let Ok(n) = rx.try_recv() {
        *handled.entry(n).or_default() += 1;
    }
    let twice: Vec<(u64, u32)> = handled
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(n, times)| (*n, *times))
        .collect();
    let strangers: Vec<u64> = handled
        .keys()
        .filter(|n| !load.confirmed.contains(n))
        .copied()
        .collect();
    // No publish failed on the healthy broker, so no event was published twice either.
    assert_eq!(load.publish_errors, 0, "publish errors");
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert!(
        strangers.is_empty(),
        "handled but never confirmed: {strangers:?}"
    );
    names.cleanup(&publisher, &["svc"], &[]).await;
    publisher.close().await;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test -p tchu --test cluster -- --ignored scaling --nocapture"]
async fn scaling_one_to_four_instances() {
    let cases: [(&str, u64, u16, usize, Duration); 3] = [
        (
            "no-op handler, prefetch 256, concurrency 64",
            20_000,
            256,
            64,
            Duration::ZERO,
        ),
        (
            "5 ms I/O-bound handler, prefetch 16, concurrency 8",
            4_000,
            16,
            8,
            Duration::from_millis(5),
        ),
        (
            "5 ms I/O-bound handler, prefetch 256, concurrency 64",
            20_000,
            256,
            64,
            Duration::from_millis(5),
        ),
    ];
    for (what, total, prefetch, concurrency, work) in cases {
        for n in 1..=4 {
            let rate = drain_rate(n, total, prefetch, concurrency, work).await;
            eprintln!("scaling: {what}: {n} instance(s): {rate:.0} events/s ({total} events)");
        }
    }
}

// --- a real 3-node cluster ------------------------------------------------------------------

const NODES: [&str; 3] = [
    "tchu-c1@localhost",
    "tchu-c2@localhost",
    "tchu-c3@localhost",
];
const AMQP_PORTS: [u16; 3] = [5681, 5682, 5683];
const DIST_PORTS: [u16; 3] = [25681, 25682, 25683];

/// `rabbitmqctl -n node args…`, bounded; returns whether it succeeded.
fn ctl(node: &str, args: &[&str]) -> bool {
    let mut all = vec!["-n", node];
    all.extend(args);
    let out = Command::new("timeout")
        .arg("90")
        .arg("rabbitmqctl")
        .args(&all)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "rabbitmqctl {all:?} failed: {} {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("rabbitmqctl {all:?}: {e}");
            false
        }
    }
}

/// `rabbitmqctl -n node args…` without reporting failures.
fn ctl_quiet(node: &str, args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["-n", node])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Three RabbitMQ nodes started by this test; dropping it stops them and removes their data.
struct Cluster {
    dir: PathBuf,
    servers: Vec<Child>,
}

impl Cluster {
    /// Starts the three nodes (as the `rabbitmq` user, sharing its Erlang cookie in
    /// /var/lib/rabbitmq) and joins the second and third to the first.
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "tchu-cluster-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let mut cluster = Cluster {
            dir: dir.clone(),
            servers: Vec::new(),
        };
        for (i, port) in AMQP_PORTS.iter().enumerate() {
            // Our own config file: the machine's one pins the listener to 5672.
            let config = format!("listeners.tcp.1 = 127.0.0.1:{port}\n");
            common::prepare_node_dir(&dir.join(format!("n{}", i + 1)), &config);
        }
        common::chown_to_rabbitmq(&dir);
        for i in 0..3 {
            let d = dir.join(format!("n{}", i + 1));
            let child = common::spawn_rabbit_node(NODES[i], &d, AMQP_PORTS[i], DIST_PORTS[i]);
            cluster.servers.push(child);
        }
        for node in NODES {
            // `await_startup` needs the node's Erlang distribution up: poll until it answers.
            let deadline = Instant::now() + Duration::from_secs(90);
            while !ctl_quiet(node, &["await_startup", "--timeout", "60"]) {
                assert!(Instant::now() < deadline, "{node} did not start");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for node in &NODES[1..] {
            assert!(ctl(node, &["stop_app"]), "stop_app {node}");
            assert!(
                ctl(node, &["join_cluster", NODES[0]]),
                "join_cluster {node}"
            );
            assert!(ctl(node, &["start_app"]), "start_app {node}");
        }
        cluster
    }

    fn url() -> String {
        let hosts: Vec<String> = AMQP_PORTS
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("amqp://guest:guest@{}/%2f", hosts.join(","))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in NODES {
            ctl(node, &["stop"]);
        }
        for c in &mut self.servers {
            // Only if `stop` did not end it: this is our own child process.
            if matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_secs(2));
                if matches!(c.try_wait(), Ok(None)) {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {:?}: {e}", self.dir);
        }
        eprintln!("cluster stopped and {:?} removed", self.dir);
    }
}

fn cluster_test_enabled() -> bool {
    if std::env::var("TCHU_CLUSTER_TEST").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "note: the 3-node cluster test is skipped; run it as root with TCHU_CLUSTER_TEST=1 \
         (it starts nodes tchu-c1..3@localhost on ports 5681-5683 beside the machine's broker)"
    );
    false
}

/// Stops the app of a node when told to, and starts it again after `down`.
fn stop_then_start(
    node: &'static str,
    down: Duration,
    stopped_at: Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let t = Instant::now();
    if let Ok(mut s) = stopped_at.lock() {
        *s = Some(t);
    }
    assert!(ctl(node, &["stop_app"]), "stop_app {node}");
    eprintln!("cluster: {node} stopped in {:?}", t.elapsed());
    std::thread::sleep(down);
    assert!(ctl(node, &["start_app"]), "start_app {node}");
    eprintln!(
        "cluster: {node} started again {:?} after the stop",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_failover() {
    if !cluster_test_enabled() {
        return;
    }
    let t_all = Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("cluster start");
    eprintln!("cluster: 3 nodes up and joined in {:?}", t_all.elapsed());
    // `TCHU_CLUSTER_ONLY=leader` runs the second scenario alone.
    let result = if std::env::var("TCHU_CLUSTER_ONLY").as_deref() == Ok("leader") {
        Ok(())
    } else {
        tokio::time::timeout(Duration::from_secs(150), failover_scenario()).await
    };
    let result2 = match result {
        Ok(()) => Some(
            tokio::time::timeout(Duration::from_secs(150), leader_stop_while_reconnecting()).await,
        ),
        Err(_) => None,
    };
    drop(tokio::task::spawn_blocking(move || drop(cluster)).await);
    result.expect("the cluster scenario took over 150 s");
    if let Some(r) = result2 {
        r.expect("the leader-stop scenario took over 150 s");
    }
    eprintln!("cluster: whole test took {:?}", t_all.elapsed());
}

async fn failover_scenario() {
    let names = Names::new("cluster");
    let mut config = names.config();
    config.broker = BrokerUrl::parse(&Cluster::url()).expect("cluster url");
    config.queue_type = QueueType::Quorum;
    eprintln!("cluster: broker {}", config.broker);
    let svc = names.service("svc");
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let r = App::new(config.clone())
        .service(svc.clone())
        .only_module("none")
        .prefetch(500)
        .subscribe("cl.event", "count", move |d: Arc<Delivery>| {
            let _ = tx.send((d.event()["n"].as_u64().unwrap_or(u64::MAX), Instant::now()));
            async { Ok::<(), Infallible>(()) }
        })
        .subscribe("cl.echo", "echo", |d: Arc<Delivery>| async move {
            Ok::<_, Infallible>(d.event().clone())
        })
        .start()
        .await
        .expect("service start on the cluster");
    let types = queue_types(Some(NODES[1]), &svc);
    assert_eq!(
        types.get(&svc).map(String::as_str),
        Some("quorum"),
        "{types:?}"
    );
    let mut pc = config.clone();
    pc.service = Some(names.service("publisher"));
    let publisher = tokio::time::timeout(WAIT, Client::connect(pc))
        .await
        .expect("connect timed out")
        .expect("publisher connect");

    // The caller's direct reply-to consumer is set up before the failover.
    let t = Some(Duration::from_secs(10));
    let v = publisher
        .call("cl.echo", &json!({"n": 1}), t)
        .await
        .expect("call before the failover");
    assert_eq!(v["n"], 1);

    // Both connect to the first node, which also leads the quorum queue (declared there).
    const TOTAL: u64 = 10_000;
    let stopped_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let s2 = Arc::clone(&stopped_at);
    let t0 = Instant::now();
    let common::LoadResult {
        confirmed,
        publish_errors: errors,
        ..
    } = common::publish_load(&publisher, "cl.event", TOTAL, 8, 2_000, move || {
        std::thread::spawn(move || stop_then_start(NODES[0], Duration::from_secs(10), s2));
    })
    .await;
    let publish_time = t0.elapsed();
    assert_eq!(
        confirmed.len() as u64,
        TOTAL,
        "every publish eventually confirmed"
    );

    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut times: Vec<Instant> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !confirmed.iter().all(|n| seen.contains_key(n)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((n, t))) => {
                *seen.entry(n).or_default() += 1;
                times.push(t);
            }
            _ => {
                let missing: Vec<_> = confirmed
                    .iter()
                    .filter(|n| !seen.contains_key(n))
                    .take(20)
                    .collect();
                panic!(
                    "{} of {TOTAL} confirmed events handled; missing e.g. {missing:?}",
                    seen.len()
                );
            }
        }
    }
    while let Ok(Some((n, t))) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        *seen.entry(n).or_default() += 1;
        times.push(t);
    }
    let handled: usize = seen.values().sum();
    let dups = handled - seen.len();
    let stop = stopped_at
        .lock()
        .ok()
        .and_then(|s| *s)
        .expect("the node was stopped");
    let after: Vec<Instant> = times.iter().copied().filter(|t| *t >= stop).collect();
    let first_after = after.iter().min().map(|t| *t - stop);
    // The real interruption: the longest pause in handling from the stop on.
    let mut sorted = after.clone();
    sorted.sort();
    let longest_pause = std::iter::once(stop)
        .chain(sorted.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max();
    eprintln!(
        "cluster: sent {TOTAL}, confirmed {}, publish errors retried {errors}, handled {handled} \
         ({} distinct), duplicates {dups}, publishing took {publish_time:?}; after the node stop: \
         first handled event {first_after:?}, longest pause in handling (failover) {longest_pause:?}",
        confirmed.len(),
        seen.len()
    );

    // The service still consumes, and the stopped node is back in the cluster.
    publisher
        .publish("cl.event", &json!({"n": TOTAL}))
        .await
        .expect("publish after the failover");
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some((n, _)) if n == TOTAL => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(got, Ok(true), "an event after the failover was handled");
    // Calls still get their reply: the reply consumer was subscribed on the new connection.
    let v = publisher
        .call("cl.echo", &json!({"n": 2}), t)
        .await
        .expect("call after the failover");
    assert_eq!(v["n"], 2);
    assert!(r.client().is_connected() && publisher.is_connected());
    // `shutdown` leaves the service's client open: closed here, before the cluster stops and
    // the runtime ends (lapin's I/O thread would reconnect through a dying runtime).
    let service_client = r.client().clone();
    r.shutdown().await;
    service_client.close().await;
    names.cleanup(&publisher, &["svc"], &[]).await;
    publisher.close().await;
}

/// `rabbitmqctl -n node args…` output (empty on failure).
fn ctl_out(node: &str, args: &[&str]) -> String {
    Command::new("timeout")
        .arg("60")
        .arg("rabbitmqctl")
        .args(["-n", node])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The leader node of a quorum queue, from `rabbitmqctl list_queues name leader`.
fn leader_of(node: &str, queue: &str) -> Option<String> {
    ctl_out(
        node,
        &["list_queues", "-q", "--no-table-headers", "name", "leader"],
    )
    .lines()
    .find_map(|l| {
        let mut cols = l.split('\t');
        (cols.next() == Some(queue)).then(|| cols.next().unwrap_or_default().trim().to_owned())
    })
}

async fn leader_stop_while_reconnecting() {
    let names = Names::new("leader");
    let svc = names.service("svc");
    let node_url = |i: usize| format!("amqp://guest:guest@127.0.0.1:{}/%2f", AMQP_PORTS[i]);
    let mut base = names.config();
    base.queue_type = QueueType::Quorum;
    base.service = Some(svc.clone());
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let app = |config: tchu::Config, tx: mpsc::UnboundedSender<u64>| {
        App::new(config)
            .service(svc.clone())
            .only_module("none")
            .prefetch(200)
            .subscribe("ld.event", "count", move |d: Arc<Delivery>| {
                let _ = tx.send(d.event()["n"].as_u64().unwrap_or(u64::MAX));
                async { Ok::<(), Infallible>(()) }
            })
    };
    // Declared from the second node: the queue's leader is there (client-local placement).
    let mut c2 = base.clone();
    c2.broker = BrokerUrl::parse(&node_url(1)).expect("url");
    let (tx0, _rx0) = mpsc::unbounded_channel();
    let first = app(c2, tx0).start().await.expect("declare from node 2");
    let client = first.client().clone();
    first.shutdown().await;
    client.close().await;
    let leader = leader_of(NODES[0], &svc).expect("the queue has a leader");
    eprintln!("leader: {svc} led by {leader}");
    assert_eq!(
        leader, NODES[1],
        "the queue should be led by the second node"
    );

    // The service on the first node (all three URLs, the first one first).
    let mut cs = base.clone();
    cs.broker = BrokerUrl::parse(&Cluster::url()).expect("url");
    let running = app(cs, tx).start().await.expect("service start");
    // The publisher on the third node, untouched.
    let mut cp = base.clone();
    cp.broker = BrokerUrl::parse(&node_url(2)).expect("url");
    cp.service = Some(names.service("publisher"));
    let publisher = tokio::time::timeout(WAIT, Client::connect(cp))
        .await
        .expect("connect timed out")
        .expect("publisher connect");

    const TOTAL: u64 = 6_000;
    let common::LoadResult {
        confirmed,
        publish_errors,
        ..
    } = common::publish_load(&publisher, "ld.event", TOTAL, 4, 1_500, move || {
        // Both at once: the service's node (it must reconnect elsewhere: to the third node)
        // and the queue's leader, so that the queue has no leader (no majority) while the
        // service consumes again; the leader's node returns first.
        std::thread::spawn(|| {
            stop_then_start(
                NODES[1],
                Duration::from_secs(10),
                Arc::new(std::sync::Mutex::new(None)),
            );
        });
        std::thread::spawn(|| {
            stop_then_start(
                NODES[0],
                Duration::from_secs(20),
                Arc::new(std::sync::Mutex::new(None)),
            );
        });
    })
    .await;
    assert_eq!(
        confirmed.len() as u64,
        TOTAL,
        "every publish eventually confirmed"
    );
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !confirmed.iter().all(|n| seen.contains_key(n)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => *seen.entry(n).or_default() += 1,
            _ => {
                let missing = confirmed.iter().filter(|n| !seen.contains_key(n)).count();
                panic!("{missing} of {TOTAL} confirmed events never handled");
            }
        }
    }
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        *seen.entry(n).or_default() += 1;
    }
    let handled: usize = seen.values().sum();
    eprintln!(
        "leader: sent {TOTAL}, confirmed {}, publish errors retried {publish_errors}, handled \
         {handled} ({} distinct), duplicates {}; new leader {:?}",
        confirmed.len(),
        seen.len(),
        handled - seen.len(),
        leader_of(NODES[0], &svc)
    );
    assert!(running.client().is_connected());
    let service_client = running.client().clone();
    running.shutdown().await;
    service_client.close().await;
    names
        .cleanup(&publisher, &["svc"], &[&format!("{svc}.tchu.handoff")])
        .await;
    publisher.close().await;
}
