//! Rolling deploys and rollbacks of one service, with real RabbitMQ and separate processes:
//! 2 instances of v1 {a, b} under a steady load of a, b and c; 2 instances of v2 {a, c} start;
//! the v1 instances stop one by one; then v1 comes back and v2 leaves. Every event some running
//! version subscribes to is handled, none is dead-lettered while a version that handles it
//! runs, and after each rollout the bindings are the running version's patterns.
//!
//! The instances are this test binary run again with `TCHU_ROLLING_CHILD` set (see
//! `rolling_child`). `cargo test -p tchu --test rolling -- --nocapture` prints the counts.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Names, WAIT, bindings};
use tchu::{App, Delivery, HandlerError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOPICS: [&str; 3] = ["roll.a", "roll.b", "roll.c"];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// One service instance (run by the parent test as a separate process): subscribes to the
/// topics in `TCHU_ROLLING_TOPICS`, prints `@@handled <topic> <n>` per event, `@@ready` once
/// consuming, and stops gracefully on SIGTERM.
#[test]
fn rolling_child() {
    let Ok(topics) = std::env::var("TCHU_ROLLING_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let exchange = std::env::var("TCHU_ROLLING_EXCHANGE").expect("exchange");
        let service = std::env::var("TCHU_ROLLING_SERVICE").expect("service");
        let mut config = Names::new("unused").config();
        config.exchange = exchange;
        let mut app = App::new(config).service(service).only_module("none");
        for t in topics.split(',') {
            let topic = format!("roll.{t}");
            app = app.subscribe(
                &topic,
                &format!("myshop::{t}"),
                move |d: Arc<Delivery>| async move {
                    let n = d
                        .event()
                        .get("n")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(u64::MAX);
                    println!("@@handled {} {n}", d.meta.topic);
                    Ok::<(), HandlerError>(())
                },
            );
        }
        let running = app.start().await.expect("start");
        println!("@@ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        term.recv().await;
        let client = running.client().clone();
        running.shutdown().await;
        client.close().await;
        println!("@@stopped");
    });
}

type Handled = Arc<Mutex<Vec<(String, String, u64)>>>;

struct Instance {
    name: String,
    child: Child,
    reader: tokio::task::JoinHandle<()>,
}

async fn start(names: &Names, svc: &str, name: &str, topics: &str, handled: &Handled) -> Instance {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "rolling_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TCHU_ROLLING_CHILD", topics)
        .env("TCHU_ROLLING_EXCHANGE", &names.exchange)
        .env("TCHU_ROLLING_SERVICE", svc)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let handled = Arc::clone(handled);
    let who = name.to_owned();
    let reader = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        while let Ok(Some(l)) = lines.next_line().await {
            // libtest may print its own text before ours on the same line.
            let Some(l) = l.split("@@").nth(1) else {
                continue;
            };
            if l == "ready" {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            } else if let Some(rest) = l.strip_prefix("handled ") {
                let mut it = rest.split(' ');
                if let (Some(t), Some(n)) = (it.next(), it.next().and_then(|n| n.parse().ok())) {
                    handled
                        .lock()
                        .expect("lock")
                        .push((who.clone(), t.to_owned(), n));
                }
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx)
        .await
        .unwrap_or_else(|_| panic!("{name} not ready within {WAIT:?}"))
        .unwrap_or_else(|_| panic!("{name} ended before it was ready"));
    println!("{name} ({topics}) ready");
    Instance {
        name: name.to_owned(),
        child,
        reader,
    }
}

async fn stop(mut i: Instance) {
    let pid = i.child.id().expect("pid").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
    let status = tokio::time::timeout(WAIT, i.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{} did not stop", i.name))
        .expect("wait");
    assert!(status.success(), "{} exited with {status}", i.name);
    let _ = tokio::time::timeout(WAIT, i.reader).await;
    println!("{} stopped", i.name);
}

/// Waits (bounded) until the service's bindings are exactly `want`.
async fn bindings_become(exchange: &str, queue: &str, want: &[&str]) {
    bindings_become_within(exchange, queue, want, WAIT).await;
}

/// The end of a run: waits (bounded) until the service queue is empty and nothing more
/// arrives, then reads its dead letters.
async fn drain(client: &tchu::Client, svc: &str) -> Vec<tchu::DeadLetter> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.queue_len(svc).await.expect("len") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue does not drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .dead_letters(svc, 100_000)
        .await
        .expect("dead letters")
}

/// Deletes the test's exchange, the service queue and its handoff and lock queues.
async fn cleanup(names: &Names, client: tchu::Client, svc: &str) {
    let extra: Vec<String> = [".tchu.handoff", ".tchu.lock"]
        .iter()
        .map(|s| format!("{svc}{s}"))
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    names.cleanup(&client, &["myshop"], &extra).await;
    client.close().await;
}

/// What happened to each published event, per topic: `[published, handled (directly or
/// replayed), duplicates, dead-lettered for a reason in expected, not routed]`, and every
/// event that breaks the rules: lost while `subscribed`, dead-lettered for another reason, or
/// dead-lettered while `connected`.
struct Tally {
    report: BTreeMap<String, [u64; 5]>,
    problems: Vec<String>,
}

impl Tally {
    fn new(
        published: &[(String, u64, i64)],
        handled: &[(String, String, u64)],
        dead: &[tchu::DeadLetter],
        expected: &[&str],
        subscribed: impl Fn(&str, i64) -> bool,
        connected: impl Fn(&str, i64) -> bool,
    ) -> Tally {
        let mut times: BTreeMap<(String, u64), u32> = BTreeMap::new();
        for (_, t, n) in handled {
            *times.entry((t.clone(), *n)).or_insert(0) += 1;
        }
        let dead_keys: BTreeMap<(String, u64), (String, i64)> = dead
            .iter()
            .map(|d| {
                let n = tchu::wire::decode(&d.message, tchu::wire::Limits::NONE)
                    .ok()
                    .and_then(|e| e.event.get("n").and_then(serde_json::Value::as_u64))
                    .unwrap_or(u64::MAX);
                (
                    (d.original_routing_key.clone(), n),
                    (d.reason.clone(), d.last_failure_ms),
                )
            })
            .collect();
        let mut report: BTreeMap<String, [u64; 5]> = BTreeMap::new();
        let mut problems = Vec::new();
        for (t, n, at) in published {
            let r = report.entry(t.clone()).or_default();
            r[0] += 1;
            let key = (t.clone(), *n);
            match (times.get(&key), dead_keys.get(&key)) {
                (Some(&k), _) => {
                    r[1] += 1;
                    r[2] += u64::from(k - 1);
                }
                (None, Some((reason, _))) if !expected.iter().any(|e| reason.contains(e)) => {
                    problems.push(format!("{t} {n} dead-lettered: {reason}"));
                }
                (None, Some(_)) => r[3] += 1,
                (None, None) if subscribed(t, *at) => {
                    problems.push(format!("{t} {n} (published at {at}) lost"));
                }
                (None, None) => r[4] += 1,
            }
        }
        for ((t, n), (reason, when)) in &dead_keys {
            if connected(t, *when) {
                problems.push(format!(
                    "{t} {n} dead-lettered at {when} while a handler ran: {reason}"
                ));
            }
        }
        Tally { report, problems }
    }

    /// No problem, and every `roll.a` event (always subscribed) handled.
    fn assert_nothing_lost(&self) {
        let problems = &self.problems;
        assert!(
            problems.is_empty(),
            "{} problem(s): {:?}",
            problems.len(),
            &problems[..problems.len().min(20)]
        );
        assert!(
            self.report
                .get("roll.a")
                .is_some_and(|r| r[0] > 100 && r[1] == r[0])
        );
    }
}

#[tokio::test]
async fn rolling_deploy_and_rollback_lose_nothing() {
    if std::env::var("TCHU_ROLLING_CHILD").is_ok() {
        return;
    }
    let names = Names::new("rolling");
    let svc = names.service("myshop");
    let client = names.client().await;
    let handled: Handled = Arc::default();

    // Timeline marks, ms since the epoch.
    let mut marks: BTreeMap<&str, i64> = BTreeMap::new();
    let v1a = start(&names, &svc, "v1#1", "a,b", &handled).await;
    let v1b = start(&names, &svc, "v1#2", "a,b", &handled).await;
    bindings_become(&names.exchange, &svc, &["roll.a", "roll.b"]).await;

    // Steady load: a, b, c in turn, each publish confirmed.
    let stop_load = Arc::new(tokio::sync::Notify::new());
    let published: Arc<Mutex<Vec<(String, u64, i64)>>> = Arc::default();
    let load = {
        let (client, stop_load, published) = (
            client.clone(),
            Arc::clone(&stop_load),
            Arc::clone(&published),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = stop_load.notified() => break,
                    _ = tick.tick() => {}
                }
                let topic = TOPICS[usize::try_from(n % 3).unwrap_or(0)];
                let before = now_ms();
                tokio::time::timeout(WAIT, client.publish(topic, &serde_json::json!({ "n": n })))
                    .await
                    .expect("publish timed out")
                    .expect("publish");
                published
                    .lock()
                    .expect("lock")
                    .push((topic.to_owned(), n, before));
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // some load before the rollout

    // Roll out v2.
    let v2a = start(&names, &svc, "v2#1", "a,c", &handled).await;
    marks.insert("v2 ready", now_ms());
    let v2b = start(&names, &svc, "v2#2", "a,c", &handled).await;
    bindings_become(&names.exchange, &svc, &["roll.a", "roll.b", "roll.c"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(v1a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    marks.insert("last v1 stopping", now_ms());
    stop(v1b).await;
    bindings_become(&names.exchange, &svc, &["roll.a", "roll.c"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Roll back to v1.
    let v1c = start(&names, &svc, "v1#3", "a,b", &handled).await;
    marks.insert("v1 back", now_ms());
    let v1d = start(&names, &svc, "v1#4", "a,b", &handled).await;
    bindings_become(&names.exchange, &svc, &["roll.a", "roll.b", "roll.c"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(v2a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    marks.insert("last v2 stopping", now_ms());
    stop(v2b).await;
    bindings_become(&names.exchange, &svc, &["roll.a", "roll.b"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_load.notify_one();
    tokio::time::timeout(WAIT, load)
        .await
        .expect("load")
        .expect("load task");
    let published = published.lock().expect("lock").clone();

    let dead = drain(&client, &svc).await;
    stop(v1c).await;
    stop(v1d).await;

    let handled = handled.lock().expect("lock").clone();
    let (v2_ready, last_v1, v1_back, last_v2) = (
        marks["v2 ready"],
        marks["last v1 stopping"],
        marks["v1 back"],
        marks["last v2 stopping"],
    );
    // When a version handling the topic runs: a always; b outside (last v1 stopping, v1 back);
    // c between v2 ready and last v2 stopping.
    let subscribed = |t: &str, at: i64| match t {
        "roll.a" => true,
        "roll.b" => at < last_v1 || at >= v1_back,
        _ => at >= v2_ready && at < last_v2,
    };
    let tally = Tally::new(
        &published,
        &handled,
        &dead,
        &["no running version"],
        subscribed,
        |t, when| match t {
            "roll.b" => when < last_v1 || when >= v1_back,
            "roll.c" => when >= v2_ready && when < last_v2,
            _ => true,
        },
    );
    println!("marks: {marks:?}");
    println!(
        "topic: published, handled, duplicates, dead-lettered (no running version), not routed (no running version)"
    );
    for (t, r) in &tally.report {
        println!("{t}: {r:?}");
    }
    if let Some(d) = dead.first() {
        println!("a dead letter's reason: {}", d.reason);
    }
    tally.assert_nothing_lost();
    assert!(tally.report.get("roll.c").is_some_and(|r| r[1] > 0));

    cleanup(&names, client, &svc).await;
}

/// Stops an instance with SIGKILL: no graceful shutdown, its connection just drops.
async fn kill9(mut i: Instance) {
    i.child.start_kill().expect("SIGKILL");
    let status = tokio::time::timeout(WAIT, i.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{} did not die", i.name))
        .expect("wait");
    assert!(!status.success(), "{} exited with {status}", i.name);
    let _ = tokio::time::timeout(WAIT, i.reader).await;
    println!("{} killed -9", i.name);
}

/// Waits (up to `within`) until the service's bindings are exactly `want`; how long it took.
async fn bindings_become_within(
    exchange: &str,
    queue: &str,
    want: &[&str],
    within: Duration,
) -> Duration {
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let start = tokio::time::Instant::now();
    loop {
        let got = bindings(exchange, queue);
        if got == want {
            println!("bindings now {got:?} (after {:?})", start.elapsed());
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "bindings are {got:?}, expected {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The documented grace of a version without a connected instance (`PRESENCE_GRACE` in
/// tchu-runtime/src/topology.rs, docs/deploys.md).
const GRACE_MS: i64 = 30_000;

/// A rollout where instances die with SIGKILL under a steady load of a, b, c: 2 × v1 {a, b};
/// 2 × v2 {a, c} start; one v2 is killed -9 and replaced; both v1 are killed -9 (v1 keeps its
/// bindings for the grace, then loses them without an operator step); v1 comes back and the
/// b events dead-lettered meanwhile are replayed; every v2 instance is killed -9 and one v2
/// starts again within the grace (`roll.c` is never unbound; the c events of the gap are
/// dead-lettered with their reason and replayed); the last v2 stops gracefully (its binding
/// goes at once). Every event published while some version counted as running is handled,
/// directly or after a replay, or dead-lettered with a reason saying no connected instance
/// handles it, and only while none did.
#[tokio::test]
async fn rolling_deploy_with_kill9_loses_nothing() {
    if std::env::var("TCHU_ROLLING_CHILD").is_ok() {
        return;
    }
    let names = Names::new("rollkill");
    let svc = names.service("myshop");
    let client = names.client().await;
    let handled: Handled = Arc::default();
    let ex = names.exchange.clone();
    let mut marks: BTreeMap<&str, i64> = BTreeMap::new();
    let v1a = start(&names, &svc, "v1#1", "a,b", &handled).await;
    let v1b = start(&names, &svc, "v1#2", "a,b", &handled).await;
    bindings_become(&ex, &svc, &["roll.a", "roll.b"]).await;

    let stop_load = Arc::new(tokio::sync::Notify::new());
    let published: Arc<Mutex<Vec<(String, u64, i64)>>> = Arc::default();
    let load = {
        let (client, stop_load, published) = (
            client.clone(),
            Arc::clone(&stop_load),
            Arc::clone(&published),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = stop_load.notified() => break,
                    _ = tick.tick() => {}
                }
                let topic = TOPICS[usize::try_from(n % 3).unwrap_or(0)];
                let before = now_ms();
                tokio::time::timeout(WAIT, client.publish(topic, &serde_json::json!({ "n": n })))
                    .await
                    .expect("publish timed out")
                    .expect("publish");
                published
                    .lock()
                    .expect("lock")
                    .push((topic.to_owned(), n, before));
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // some load before the rollout

    // Roll out v2; one v2 instance dies and is replaced.
    let v2a = start(&names, &svc, "v2#1", "a,c", &handled).await;
    marks.insert("v2 ready", now_ms());
    let v2b = start(&names, &svc, "v2#2", "a,c", &handled).await;
    bindings_become(&ex, &svc, &["roll.a", "roll.b", "roll.c"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill9(v2a).await;
    let v2c = start(&names, &svc, "v2#3", "a,c", &handled).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Both v1 instances die: v1 counts as running for the grace, then its binding goes.
    kill9(v1a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    marks.insert("last v1 killed", now_ms());
    kill9(v1b).await;
    assert_eq!(
        bindings(&ex, &svc),
        ["roll.a", "roll.b", "roll.c"],
        "v1's binding went at once"
    );
    bindings_become_within(
        &ex,
        &svc,
        &["roll.a", "roll.c"],
        Duration::from_millis(u64::try_from(GRACE_MS).unwrap_or(0)) + 3 * WAIT,
    )
    .await;
    // Seen unbound this long after the kill (the events below check it was not earlier).
    let b_went = now_ms() - marks["last v1 killed"];
    println!("roll.b seen unbound {b_went} ms after the last v1 was killed");
    assert!(
        b_went >= GRACE_MS,
        "roll.b went before the grace ({b_went} ms)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Roll back to v1, and replay what was dead-lettered for b while no v1 ran.
    let v1c = start(&names, &svc, "v1#3", "a,b", &handled).await;
    marks.insert("v1 back", now_ms());
    let v1d = start(&names, &svc, "v1#4", "a,b", &handled).await;
    bindings_become(&ex, &svc, &["roll.a", "roll.b", "roll.c"]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let replayed_b = tokio::time::timeout(
        3 * WAIT,
        client.replay_dead_letters(&svc, |d| d.original_routing_key == "roll.b"),
    )
    .await
    .expect("replay timed out")
    .expect("replay");
    println!("replayed {replayed_b} roll.b dead letters");

    // Every v2 instance dies; one comes back within the grace: roll.c stays bound.
    marks.insert("v2 gone", now_ms());
    kill9(v2b).await;
    kill9(v2c).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage
    assert_eq!(
        bindings(&ex, &svc),
        ["roll.a", "roll.b", "roll.c"],
        "v2's binding went while it counted as running"
    );
    let v2d = start(&names, &svc, "v2#4", "a,c", &handled).await;
    marks.insert("v2 back", now_ms());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let replayed_c = tokio::time::timeout(
        3 * WAIT,
        client.replay_dead_letters(&svc, |d| d.original_routing_key == "roll.c"),
    )
    .await
    .expect("replay timed out")
    .expect("replay");
    println!("replayed {replayed_c} roll.c dead letters");
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The last v2 stops gracefully: its binding goes at once (no grace).
    marks.insert("last v2 stopping", now_ms());
    stop(v2d).await;
    let c_went = bindings_become_within(&ex, &svc, &["roll.a", "roll.b"], WAIT).await;
    println!("roll.c unbound {c_went:?} after the last v2 stopped gracefully");
    assert!(
        c_went < Duration::from_millis(u64::try_from(GRACE_MS).unwrap_or(0)),
        "a graceful stop waited for the grace"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_load.notify_one();
    tokio::time::timeout(WAIT, load)
        .await
        .expect("load")
        .expect("load task");
    let published = published.lock().expect("lock").clone();
    let dead = drain(&client, &svc).await;
    stop(v1c).await;
    stop(v1d).await;

    let handled = handled.lock().expect("lock").clone();
    let m = |k: &str| marks[k];
    // Published while a version subscribing to it counted as running (bound): must not be
    // lost. b: until the grace after the last v1 was killed, and again from v1's return; c:
    // from v2 ready until its last instance stopped gracefully (the outage included).
    let subscribed = |t: &str, at: i64| match t {
        "roll.a" => true,
        // (Less 250 ms: an event is routed a little after its publish started.)
        "roll.b" => at < m("last v1 killed") + GRACE_MS - 250 || at >= m("v1 back"),
        _ => at >= m("v2 ready") && at < m("last v2 stopping"),
    };
    // A connected instance handled it: nothing may be dead-lettered for "no handler".
    let connected = |t: &str, at: i64| match t {
        "roll.b" => at < m("last v1 killed") || at >= m("v1 back"),
        "roll.c" => {
            (at >= m("v2 ready") && at < m("v2 gone"))
                || (at >= m("v2 back") && at < m("last v2 stopping"))
        }
        _ => true,
    };
    let tally = Tally::new(
        &published,
        &handled,
        &dead,
        &["no running version", "no connected instance"],
        subscribed,
        connected,
    );
    println!("marks: {marks:?}");
    println!(
        "topic: published, handled (directly or replayed), duplicates, dead-lettered (no connected handler), not routed (no version counted as running)"
    );
    for (t, r) in &tally.report {
        println!("{t}: {r:?}");
    }
    println!(
        "replayed: roll.b {replayed_b}, roll.c {replayed_c}; left in the DLQ: {}",
        dead.len()
    );
    if let Some(d) = dead.first() {
        println!("a dead letter's reason: {}", d.reason);
    }
    tally.assert_nothing_lost();
    assert!(
        replayed_b > 0,
        "nothing of b was dead-lettered while v1 was away"
    );

    cleanup(&names, client, &svc).await;
}
