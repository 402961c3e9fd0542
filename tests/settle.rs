//! Every delivery settles (#12 §3), on the real broker: a handler that never returns, a
//! panicking context helper, and a retry wait queue deleted under load. In each case the other
//! deliveries keep flowing, nothing is lost, and the stuck one ends as documented in the
//! README's Reliability section.
//!
//! `cargo test -p tchu --test settle -- --nocapture` prints the figures.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Names, WAIT, recv_n};
use serde_json::json;
use tchu::{App, Client, Delivery, HandlerError, Meta, RetryPolicy, Running, State};
use tokio::sync::mpsc;

/// Sends what a handler saw to the test.
#[derive(Debug, Clone)]
struct Probe(mpsc::UnboundedSender<(u64, u32)>);

/// Polls the service's counters until `f` holds (no channel reports a dead-letter copy),
/// failing after [`WAIT`].
async fn wait_stats(r: &Running, what: &str, f: impl Fn(tchu::StatsSnapshot) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f(r.stats()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            r.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_ids(client: &Client, topic: &'static str, ids: std::ops::Range<u64>) {
    let sends = ids.map(|id| {
        let client = client.clone();
        async move {
            tokio::time::timeout(WAIT, client.publish(topic, &json!({ "id": id })))
                .await
                .expect("publish timed out")
                .expect("publish");
        }
    });
    futures_util::future::join_all(sends).await;
}

const FIXED_100MS: RetryPolicy = RetryPolicy {
    retries: 1,
    backoff: tchu::Backoff::Fixed,
    delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(100),
    jitter: false,
};

mod t_hang {
    use super::*;

    /// Event 0 never returns; the others return at once.
    #[tchu::subscribe(
        "job.maybe_hang",
        timeout = "300ms",
        retries = 1,
        backoff = "fixed",
        delay = "100ms",
        jitter = false
    )]
    async fn maybe_hang(event: serde_json::Value, meta: Meta, probe: State<Probe>) {
        let id = event["id"].as_u64().unwrap_or(u64::MAX);
        let _ = probe.0.0.send((id, meta.attempt));
        if id == 0 {
            std::future::pending::<()>().await;
        }
    }
}

/// A handler that never returns: its run is stopped at its `timeout`, retried once, stopped
/// again, then dead-lettered with the reason; the 199 others are handled meanwhile (before the
/// stuck one's first timeout) and its prefetch slot comes back.
#[tokio::test]
async fn a_handler_that_never_returns_times_out_and_the_others_flow() {
    const N: u64 = 200;
    let names = Names::new("hang");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = App::new(names.config())
        .service(names.service("svc"))
        .only_module("settle::t_hang::")
        .prefetch(20)
        .concurrency(20)
        .state(Probe(tx))
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let started = Instant::now();
    publish_ids(&client, "job.maybe_hang", 0..1).await;
    publish_ids(&client, "job.maybe_hang", 1..N).await;

    let seen = recv_n(&mut rx, N as usize + 1).await;
    let others: BTreeSet<u64> = seen.iter().filter(|s| s.0 != 0).map(|s| s.0).collect();
    assert_eq!(others.len() as u64, N - 1, "every other event handled once");
    let stuck: Vec<u32> = seen.iter().filter(|s| s.0 == 0).map(|s| s.1).collect();
    assert_eq!(
        stuck,
        [1, 2],
        "the stuck one ran twice (first try and one retry)"
    );
    wait_stats(&r, "the stuck one dead-lettered", |s| s.dead_lettered == 1).await;
    eprintln!(
        "{:?} until dead-lettered; {:?}",
        started.elapsed(),
        r.stats()
    );
    let s = r.stats();
    assert_eq!((s.handled, s.timed_out, s.retried), (N - 1, 2, 1), "{s:?}");

    let svc = names.service("svc");
    let dead = client
        .dead_letters(&svc, 10_000)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].reason,
        "handler timed out after 300ms (after 2 attempts)"
    );
    assert_eq!(
        dead[0].handler.as_deref(),
        Some("settle::t_hang::maybe_hang")
    );
    assert_eq!(
        client.queue_len(&svc).await.expect("queue"),
        0,
        "nothing left unsettled"
    );
    r.shutdown().await;
    names
        .cleanup(&client, &["svc"], &[&format!("{svc}.retry.100ms")])
        .await;
}

/// The context the helper rebuilds.
#[derive(Debug, Clone)]
#[expect(dead_code, reason = "built by the helper; no handler here reads it")]
struct User(u64);

/// An event whose handlers need its user.
#[tchu::event(topic = "job.with_user")]
#[derive(Debug)]
pub struct WithUser {
    id: u64,
}

/// A context helper that panics on one event: the panic is caught like a handler's, counted as
/// a failure of the handlers it guards, retried per the policy and then dead-lettered; the
/// other events are handled, and the service keeps consuming.
#[tokio::test]
async fn a_panicking_context_helper_fails_that_delivery_only() {
    const N: u64 = 100;
    let names = Names::new("ctxpanic");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = App::new(names.config())
        .service(names.service("svc"))
        .only_module("none")
        .retry(FIXED_100MS)
        .context_helper(|event: &serde_json::Value, _meta: &Meta| {
            let id = event["id"].as_u64().unwrap_or_default();
            assert!(id != 0, "the user directory exploded");
            Ok(User(id))
        })
        .require_context::<WithUser, User>()
        .subscribe("job.with_user", "with_user", move |d: Arc<Delivery>| {
            let _ = tx.send((d.event()["id"].as_u64().unwrap_or(u64::MAX), d.meta.attempt));
            async { Ok::<(), HandlerError>(()) }
        })
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    publish_ids(&client, "job.with_user", 0..N).await;

    let seen = recv_n(&mut rx, N as usize - 1).await;
    let ids: BTreeSet<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        ids,
        (1..N).collect(),
        "the other events are handled once each"
    );
    wait_stats(&r, "the panicking one dead-lettered", |s| {
        s.dead_lettered == 1
    })
    .await;
    let s = r.stats();
    eprintln!("{s:?}");
    assert_eq!((s.handled, s.failed, s.retried), (N - 1, 2, 1), "{s:?}");
    let svc = names.service("svc");
    let dead = client
        .dead_letters(&svc, 10_000)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .starts_with("handler panicked: context helper panicked: the user directory exploded"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.ends_with("(after 2 attempts)"),
        "{}",
        dead[0].reason
    );
    assert!(r.health().is_healthy());
    r.shutdown().await;
    names
        .cleanup(&client, &["svc"], &[&format!("{svc}.retry.100ms")])
        .await;
}

/// Every event fails once and succeeds on its retry. After the retry wait queue was used, it is
/// deleted (an operator cleaning up, a policy); then 300 events arrive at once. Each retry copy
/// is returned by the broker (no queue), the dispatcher declares the wait queue again and sends
/// the copy once more: every event is handled, none is lost or stuck in a requeue loop.
#[tokio::test]
async fn a_deleted_retry_queue_under_load_is_declared_again() {
    const WARM: u64 = 20;
    const N: u64 = 300;
    let names = Names::new("delretry");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = App::new(names.config())
        .service(names.service("svc"))
        .only_module("none")
        .retry(FIXED_100MS)
        .prefetch(50)
        .concurrency(50)
        .subscribe("job.once", "once", move |d: Arc<Delivery>| {
            let attempt = d.meta.attempt;
            if attempt > 1 {
                let _ = tx.send((d.event()["id"].as_u64().unwrap_or(u64::MAX), attempt));
            }
            async move {
                if attempt == 1 {
                    Err(HandlerError::transient("first try fails"))
                } else {
                    Ok(())
                }
            }
        })
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let svc = names.service("svc");
    let wait_queue = format!("{svc}.retry.100ms");

    publish_ids(&client, "job.once", 0..WARM).await;
    let warm = recv_n(&mut rx, WARM as usize).await;
    assert!(warm.iter().all(|s| s.1 == 2));
    // Every warm-up copy came back from the wait queue: it is empty now; delete it.
    assert_eq!(client.queue_len(&wait_queue).await.expect("len"), 0);
    client.delete_queue(&wait_queue).await.expect("delete");

    let started = Instant::now();
    publish_ids(&client, "job.once", WARM..WARM + N).await;
    let seen = recv_n(&mut rx, N as usize).await;
    let ids: BTreeSet<u64> = seen.iter().map(|s| s.0).collect();
    eprintln!(
        "{} of {N} handled on their retry in {:?}; {:?}",
        ids.len(),
        started.elapsed(),
        r.stats()
    );
    assert_eq!(ids, (WARM..WARM + N).collect(), "every event, once");
    let s = r.stats();
    assert_eq!((s.retried, s.dead_lettered), (WARM + N, 0), "{s:?}");
    assert!(!r.health().degraded);
    assert_eq!(client.queue_len(&svc).await.expect("len"), 0);
    r.shutdown().await;
    names.cleanup(&client, &["svc"], &[&wait_queue]).await;
}
