//! Reliability on the real broker: retries, dead letters and replay, panicking handlers, poison
//! input, broker connection loss, and SIGTERM under load.
//!
//! `cargo test -p tchu --test reliability -- --nocapture` prints the figures. The broker
//! restart variant is `#[ignore]`d (it stops the broker for every user of it):
//! `cargo test -p tchu --test reliability -- --ignored broker_restart`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Names, WAIT, recv_n};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::json;
use tchu::{App, Client, Delivery, HandlerError, Meta, RetryPolicy, Running, State, StatsSnapshot};
use tokio::sync::mpsc;

// --- helpers ---------------------------------------------------------------------------------

/// Polls `cond` every 20 ms until it holds, panicking after `within` (for conditions no channel
/// reports: broker-side counters, files written by another process).
async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_stats(r: &Running, what: &str, f: impl Fn(StatsSnapshot) -> bool) {
    wait_until(what, WAIT, || {
        let s = r.stats();
        let ok = f(s);
        async move { ok }
    })
    .await;
}

/// Asserts that nothing more arrives on `rx` within `d`.
async fn assert_quiet<T: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<T>, d: Duration) {
    if let Ok(Some(v)) = tokio::time::timeout(d, rx.recv()).await {
        panic!("unexpected extra delivery: {v:?}");
    }
}

/// A raw lapin channel in confirm mode, for publishing what tchu would never send.
struct Raw {
    conn: Connection,
    ch: lapin::Channel,
}

impl Raw {
    async fn connect() -> Raw {
        let conn = tokio::time::timeout(
            WAIT,
            Connection::connect(&common::broker_url(), ConnectionProperties::default()),
        )
        .await
        .expect("raw connect timed out")
        .expect("raw connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Raw { conn, ch }
    }

    async fn publish(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
        let fut = async {
            let confirm = self
                .ch
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(key),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?;
            confirm.await
        };
        let c = tokio::time::timeout(WAIT, fut)
            .await
            .expect("raw publish timed out")
            .expect("raw publish");
        assert!(matches!(c, Confirmation::Ack(None)), "{c:?}");
    }

    async fn close(self) {
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// Consumers on `queue` (0 when it does not exist).
async fn consumer_count(queue: &str) -> u32 {
    let Ok(Ok(conn)) = tokio::time::timeout(
        WAIT,
        Connection::connect(&common::broker_url(), ConnectionProperties::default()),
    )
    .await
    else {
        return 0;
    };
    let mut n = 0;
    if let Ok(ch) = conn.create_channel().await
        && let Ok(q) = ch
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    {
        n = q.consumer_count();
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
    n
}

fn str_header(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn json_props() -> BasicProperties {
    BasicProperties::default().with_content_type(ShortString::from("application/json"))
}

/// What handlers report to a test.
struct Probe<T>(mpsc::UnboundedSender<T>);

impl<T> Probe<T> {
    fn send(&self, v: T) {
        let _ = self.0.send(v);
    }
}

// --- 1. retries ------------------------------------------------------------------------------

mod t_retry {
    use super::*;

    pub(super) type Seen = (&'static str, u32, Instant);

    #[tchu::subscribe(
        "job.flaky",
        retries = 3,
        backoff = "fixed",
        delay = "200ms",
        jitter = false
    )]
    async fn flaky(
        _event: serde_json::Value,
        meta: Meta,
        probe: State<Probe<Seen>>,
    ) -> Result<(), HandlerError> {
        probe.send(("flaky", meta.attempt, Instant::now()));
        if meta.attempt < 3 {
            Err(HandlerError::transient(format!(
                "not yet ({})",
                meta.attempt
            )))
        } else {
            Ok(())
        }
    }

    #[tchu::subscribe("job.flaky")]
    async fn sibling(_event: serde_json::Value, meta: Meta, probe: State<Probe<Seen>>) {
        probe.send(("sibling", meta.attempt, Instant::now()));
    }
}

#[tokio::test]
async fn failing_handler_is_retried_after_the_delays_and_its_sibling_runs_once() {
    let names = Names::new("retry");
    let (tx, mut rx) = mpsc::unbounded_channel::<t_retry::Seen>();
    let r = App::new(names.config())
        .service(names.service("svc"))
        .only_module("reliability::t_retry::")
        .state(Probe(tx))
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    client
        .publish("job.flaky", &json!({"id": 1}))
        .await
        .expect("publish");

    let got = recv_n(&mut rx, 4).await;
    let flaky: Vec<(u32, Instant)> = got
        .iter()
        .filter(|s| s.0 == "flaky")
        .map(|s| (s.1, s.2))
        .collect();
    let sibling: Vec<u32> = got
        .iter()
        .filter(|s| s.0 == "sibling")
        .map(|s| s.1)
        .collect();
    assert_eq!(
        flaky.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempt numbers seen by the handler"
    );
    assert_eq!(sibling, vec![1], "the sibling runs once");
    let gaps: Vec<Duration> = flaky.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("retry gaps: {gaps:?}");
    for g in &gaps {
        assert!(*g >= Duration::from_millis(200), "gap {g:?} under 200 ms");
    }
    wait_stats(&r, "3 successes and 2 retries", |s| {
        s.handled == 2 && s.retried == 2 && s.failed == 2
    })
    .await;
    assert_quiet(&mut rx, Duration::from_millis(700)).await;
    let s = r.stats();
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    let svc = names.service("svc");
    assert_eq!(
        client.queue_len(&format!("{svc}.dlq")).await.expect("dlq"),
        0
    );
    r.shutdown().await;
    names
        .cleanup(&client, &["svc"], &[&format!("{svc}.retry.200ms")])
        .await;
}

// --- 2. dead letters and replay --------------------------------------------------------------

mod t_dlq {
    use super::*;

    pub(super) struct Heal {
        pub(super) healed: Arc<AtomicBool>,
        pub(super) tx: mpsc::UnboundedSender<(&'static str, u32, bool)>,
    }

    impl Heal {
        fn run(&self, name: &'static str, attempt: u32) -> bool {
            let ok = self.healed.load(Ordering::SeqCst);
            let _ = self.tx.send((name, attempt, ok));
            ok
        }
    }

    #[tchu::subscribe(
        "dlq.exhaust",
        retries = 2,
        backoff = "fixed",
        delay = "100ms",
        jitter = false
    )]
    async fn exhaust(
        _e: serde_json::Value,
        meta: Meta,
        heal: State<Heal>,
    ) -> Result<(), HandlerError> {
        if heal.run("exhaust", meta.attempt) {
            Ok(())
        } else {
            Err(HandlerError::transient("still broken"))
        }
    }

    #[tchu::subscribe("dlq.exhaust")]
    async fn exhaust_sibling(_e: serde_json::Value, meta: Meta, heal: State<Heal>) {
        let _ = heal.tx.send(("sibling", meta.attempt, true));
    }

    #[tchu::subscribe("dlq.permanent")]
    async fn permanent(
        _e: serde_json::Value,
        meta: Meta,
        heal: State<Heal>,
    ) -> Result<(), HandlerError> {
        if heal.run("permanent", meta.attempt) {
            Ok(())
        } else {
            Err(HandlerError::permanent("cannot ever work"))
        }
    }
}

#[tokio::test]
async fn exhausted_and_permanent_failures_are_dead_lettered_then_replayed() {
    let names = Names::new("dlq");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let healed = Arc::new(AtomicBool::new(false));
    let heal = t_dlq::Heal {
        healed: Arc::clone(&healed),
        tx,
    };
    let svc = names.service("svc");
    let r = App::new(names.config())
        .service(&svc)
        .only_module("reliability::t_dlq::")
        .state(heal)
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let before = now_ms();
    client
        .publish("dlq.exhaust", &json!({"k": "exhaust"}))
        .await
        .expect("publish");
    client
        .publish("dlq.permanent", &json!({"k": "permanent"}))
        .await
        .expect("publish");
    // exhaust: attempts 1..=3; sibling once; permanent once.
    let mut got = recv_n(&mut rx, 5).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("exhaust", 1, false),
            ("exhaust", 2, false),
            ("exhaust", 3, false),
            ("permanent", 1, false),
            ("sibling", 1, true),
        ]
    );
    wait_stats(&r, "2 dead letters", |s| s.dead_lettered == 2).await;

    let mut dls = tokio::time::timeout(WAIT, client.dead_letters(&svc, 10_000))
        .await
        .expect("dead_letters timed out")
        .expect("dead_letters");
    dls.sort_by(|a, b| a.original_routing_key.cmp(&b.original_routing_key));
    assert_eq!(dls.len(), 2, "{dls:#?}");
    let (ex, pe) = (&dls[0], &dls[1]);
    eprintln!(
        "dead letters:\n  {:?} {:?} {:?} attempts={} first={} last={}\n  {:?} {:?} {:?} attempts={} first={} last={}",
        ex.original_routing_key,
        ex.handler,
        ex.reason,
        ex.attempts,
        ex.first_failure_ms,
        ex.last_failure_ms,
        pe.original_routing_key,
        pe.handler,
        pe.reason,
        pe.attempts,
        pe.first_failure_ms,
        pe.last_failure_ms
    );
    assert_eq!(ex.original_routing_key, "dlq.exhaust");
    assert_eq!(ex.handler.as_deref(), Some("reliability::t_dlq::exhaust"));
    assert_eq!(ex.attempts, 3);
    assert!(ex.reason.contains("still broken"), "{}", ex.reason);
    assert!(ex.reason.contains("after 3 attempts"), "{}", ex.reason);
    assert!(ex.first_failure_ms >= before, "{ex:?}");
    assert!(
        ex.last_failure_ms - ex.first_failure_ms >= 200,
        "two 100 ms waits between first and last failure: {ex:?}"
    );
    assert_eq!(pe.original_routing_key, "dlq.permanent");
    assert_eq!(pe.handler.as_deref(), Some("reliability::t_dlq::permanent"));
    assert_eq!(pe.attempts, 1);
    assert_eq!(pe.reason, "cannot ever work");
    assert!(pe.first_failure_ms >= before && pe.last_failure_ms >= pe.first_failure_ms);
    // The headers are on the message itself too.
    let h = &ex.message.properties.headers;
    for k in [
        tchu::headers::REASON_HEADER,
        tchu::headers::TOPIC_HEADER,
        tchu::headers::HANDLER_HEADER,
        tchu::headers::ATTEMPTS_HEADER,
        tchu::headers::FIRST_FAILURE_HEADER,
        tchu::headers::LAST_FAILURE_HEADER,
    ] {
        assert!(h.contains_key(k), "missing header {k}: {h:?}");
    }
    // Listing does not consume.
    assert_eq!(
        client.queue_len(&format!("{svc}.dlq")).await.expect("len"),
        2
    );

    // Fixed: replay. Only the failed handler runs again (the sibling already succeeded).
    healed.store(true, Ordering::SeqCst);
    let n = tokio::time::timeout(
        WAIT,
        client.replay_dead_letters(&svc, |d| d.original_routing_key.starts_with("dlq.")),
    )
    .await
    .expect("replay timed out")
    .expect("replay");
    assert_eq!(n, 2);
    let mut got = recv_n(&mut rx, 2).await;
    got.sort();
    assert_eq!(got, vec![("exhaust", 1, true), ("permanent", 1, true)]);
    wait_stats(&r, "both replayed handled", |s| s.handled == 3).await;
    assert_quiet(&mut rx, Duration::from_millis(500)).await;
    assert_eq!(
        client.queue_len(&format!("{svc}.dlq")).await.expect("len"),
        0
    );
    r.shutdown().await;
    names
        .cleanup(&client, &["svc"], &[&format!("{svc}.retry.100ms")])
        .await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

// --- 3. panicking handlers -------------------------------------------------------------------

#[tokio::test]
async fn panicking_handler_is_dead_lettered_and_the_service_keeps_serving() {
    let names = Names::new("panic");
    let svc = names.service("svc");
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let r = App::new(names.config())
        .service(&svc)
        .only_module("none")
        .retry(RetryPolicy::NONE)
        .subscribe("p.event", "panicky", move |d: Arc<Delivery>| {
            let n = d.event()["n"].as_u64().unwrap_or(u64::MAX);
            // A panic while making the future (before any await) ...
            assert!(d.event()["sync_panic"] != true, "sync kaboom {n}");
            let tx = tx.clone();
            async move {
                // ... and one inside it.
                if d.event()["panic"] == true {
                    panic!("kaboom {n}");
                }
                let _ = tx.send(n);
                Ok::<(), Infallible>(())
            }
        })
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    client
        .publish("p.event", &json!({"n": 1, "panic": true}))
        .await
        .expect("publish");
    client
        .publish("p.event", &json!({"n": 2, "sync_panic": true}))
        .await
        .expect("publish");
    client
        .publish("p.event", &json!({"n": 3}))
        .await
        .expect("publish");
    assert_eq!(recv_n(&mut rx, 1).await, vec![3]);
    wait_stats(&r, "2 dead letters", |s| s.dead_lettered == 2).await;
    // Later events are still served.
    client
        .publish("p.event", &json!({"n": 4}))
        .await
        .expect("publish");
    assert_eq!(recv_n(&mut rx, 1).await, vec![4]);
    let mut dls = client
        .dead_letters(&svc, 10_000)
        .await
        .expect("dead letters");
    dls.sort_by(|a, b| a.reason.cmp(&b.reason));
    let reasons: Vec<&str> = dls.iter().map(|d| d.reason.as_str()).collect();
    eprintln!("panic dead letters: {reasons:?}");
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("handler panicked") && reasons[0].contains("kaboom 1"));
    assert!(reasons[1].contains("handler panicked") && reasons[1].contains("sync kaboom 2"));
    assert!(dls.iter().all(|d| d.handler.as_deref() == Some("panicky")));
    let s = r.stats();
    assert_eq!((s.handled, s.failed), (2, 2), "{s:?}");
    r.shutdown().await;
    names.cleanup(&client, &["svc"], &[]).await;
}

// --- 4. poison input -------------------------------------------------------------------------

mod t_poison {
    use super::*;

    /// A validated event.
    #[tchu::event(topic = "poison.signup")]
    #[derive(Debug, Clone)]
    pub(super) struct Signup {
        #[validate(email)]
        pub(super) email: String,
        pub(super) n: u64,
    }

    #[tchu::subscribe(Signup)]
    async fn on_signup(e: Signup, probe: State<Probe<u64>>) {
        probe.send(e.n);
    }

    #[tchu::subscribe("poison.plain")]
    async fn on_plain(e: serde_json::Value, probe: State<Probe<u64>>) {
        probe.send(e["n"].as_u64().unwrap_or(u64::MAX));
    }
}

/// The malformed kinds: name, and what the dead-letter reason must contain (any of).
const POISON: &[(&str, &[&str])] = &[
    (
        "random_bytes",
        &["not valid UTF-8", "not valid JSON", "malformed native"],
    ),
    ("invalid_utf8", &["not valid UTF-8"]),
    ("invalid_json", &["not valid JSON"]),
    ("json_array", &["malformed native message"]),
    ("json_number", &["malformed native message"]),
    ("typed_wrong_shape", &["rejected: cannot decode"]),
    ("typed_invalid_email", &["rejected: invalid"]),
    ("too_large", &["exceeds the limit of 4096 bytes"]),
    (
        "unknown_content_type",
        &["unsupported content type `text/plain`"],
    ),
    ("celery_body_not_array", &["must be a JSON array"]),
    ("celery_args_not_list", &["args must be a list"]),
    ("celery_args0_not_json", &["args[0] is not a JSON document"]),
    ("celery_unknown_task", &["unknown celery task `evil.task`"]),
    ("no_handler_after_filter", &["no local handler matches"]),
    ("unknown_kind_header", &["unknown x-tchu-kind"]),
];

fn celery_props(task: &str, kind: Option<&str>) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("task".into(), str_header(task));
    h.insert("id".into(), str_header(&uuid::Uuid::new_v4().to_string()));
    if let Some(kind) = kind {
        h.insert("x-test-kind".into(), str_header(kind));
    }
    json_props().with_headers(h)
}

/// One malformed message: (routing key, body, properties).
fn poison(kind: &str, i: usize) -> (&'static str, Vec<u8>, BasicProperties) {
    let mut h = FieldTable::default();
    h.insert("x-test-kind".into(), str_header(kind));
    let plain = json_props().with_headers(h.clone());
    let celery_ok_event = format!("{{\"n\": {i}, \"_tchu_meta\": {{\"is_rpc\": false}}}}");
    match kind {
        "random_bytes" => {
            let body: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
            (
                "poison.plain",
                body,
                BasicProperties::default().with_headers(h),
            )
        }
        "invalid_utf8" => ("poison.plain", b"{\"n\": \"\xff\xfe\"}".to_vec(), plain),
        "invalid_json" => ("poison.plain", b"{\"n\": 1,".to_vec(), plain),
        "json_array" => ("poison.plain", b"[1, 2, 3]".to_vec(), plain),
        "json_number" => ("poison.plain", b"42".to_vec(), plain),
        "typed_wrong_shape" => (
            "poison.signup",
            json!({"email": 5, "n": "x"}).to_string().into_bytes(),
            plain,
        ),
        "typed_invalid_email" => (
            "poison.signup",
            json!({"email": "not-an-email", "n": i})
                .to_string()
                .into_bytes(),
            plain,
        ),
        "too_large" => (
            "poison.plain",
            json!({"n": i, "pad": "x".repeat(5000)})
                .to_string()
                .into_bytes(),
            plain,
        ),
        "unknown_content_type" => (
            "poison.plain",
            json!({"n": i}).to_string().into_bytes(),
            BasicProperties::default()
                .with_content_type(ShortString::from("text/plain"))
                .with_headers(h),
        ),
        "celery_body_not_array" => (
            "poison.plain",
            json!({"args": [celery_ok_event]}).to_string().into_bytes(),
            celery_props("tchu_tchu.dispatch_event", Some(kind)),
        ),
        "celery_args_not_list" => (
            "poison.plain",
            json!([celery_ok_event, {"routing_key": "poison.plain"}, {}])
                .to_string()
                .into_bytes(),
            celery_props("tchu_tchu.dispatch_event", Some(kind)),
        ),
        "celery_args0_not_json" => (
            "poison.plain",
            json!([["not {json"], {"routing_key": "poison.plain"}, {}])
                .to_string()
                .into_bytes(),
            celery_props("tchu_tchu.dispatch_event", Some(kind)),
        ),
        "celery_unknown_task" => (
            "poison.plain",
            json!([[celery_ok_event], {"routing_key": "poison.plain"}, {}])
                .to_string()
                .into_bytes(),
            celery_props("evil.task", Some(kind)),
        ),
        "no_handler_after_filter" => {
            let mut h = h;
            h.insert(
                tchu::headers::HANDLERS_HEADER.into(),
                str_header("reliability::t_poison::nobody"),
            );
            (
                "poison.plain",
                json!({"n": i}).to_string().into_bytes(),
                json_props().with_headers(h),
            )
        }
        "unknown_kind_header" => {
            let mut h = h;
            h.insert("x-tchu-kind".into(), str_header("bogus"));
            (
                "poison.plain",
                json!({"n": i}).to_string().into_bytes(),
                json_props().with_headers(h),
            )
        }
        other => panic!("unknown poison kind {other}"),
    }
}

/// One valid event, raw, in one of three shapes: native plain, Celery plain, native typed.
fn valid(n: u64) -> (&'static str, Vec<u8>, BasicProperties) {
    match n % 3 {
        0 => (
            "poison.plain",
            json!({"n": n}).to_string().into_bytes(),
            json_props(),
        ),
        1 => {
            let event = format!("{{\"n\": {n}, \"_tchu_meta\": {{\"is_rpc\": false}}}}");
            let props = celery_props("tchu_tchu.dispatch_event", None);
            (
                "poison.plain",
                json!([[event], {"routing_key": "poison.plain"}, {}])
                    .to_string()
                    .into_bytes(),
                props,
            )
        }
        _ => (
            "poison.signup",
            json!({"email": format!("u{n}@example.com"), "n": n})
                .to_string()
                .into_bytes(),
            json_props(),
        ),
    }
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_the_consumer_never_stops() {
    let names = Names::new("poison");
    let svc = names.service("svc");
    let mut config = names.config();
    config.max_body = 4096;
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let r = App::new(config)
        .service(&svc)
        .only_module("reliability::t_poison::")
        .retry(RetryPolicy::NONE)
        .state(Probe(tx))
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let raw = Raw::connect().await;

    const BAD: usize = 1000;
    const GOOD: u64 = 500;
    let mut sent_bad: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut bad, mut good) = (0usize, 0u64);
    // Two malformed, one valid, and so on.
    while bad < BAD || good < GOOD {
        let (key, body, props) = if good < GOOD && (bad >= BAD || (bad + good as usize) % 3 == 2) {
            good += 1;
            valid(good - 1)
        } else {
            let kind = POISON[bad % POISON.len()].0;
            *sent_bad.entry(kind).or_default() += 1;
            bad += 1;
            poison(kind, bad)
        };
        raw.publish(&names.exchange, key, &body, props).await;
    }
    raw.close().await;

    let mut handled: Vec<u64> = recv_n(&mut rx, GOOD as usize).await;
    handled.sort_unstable();
    assert_eq!(
        handled,
        (0..GOOD).collect::<Vec<_>>(),
        "every valid event once"
    );
    wait_stats(&r, "1000 dead letters", |s| s.dead_lettered == BAD as u64).await;
    // The consumer is still there.
    client
        .publish("poison.plain", &json!({"n": 10_000}))
        .await
        .expect("publish");
    assert_eq!(recv_n(&mut rx, 1).await, vec![10_000]);
    assert_quiet(&mut rx, Duration::from_millis(300)).await;

    let dls = tokio::time::timeout(Duration::from_secs(60), client.dead_letters(&svc, 10_000))
        .await
        .expect("dead_letters timed out")
        .expect("dead_letters");
    let mut table: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dls {
        let kind = d
            .message
            .properties
            .headers
            .get("x-test-kind")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned();
        assert!(!d.reason.is_empty(), "a dead letter without reason: {d:?}");
        let expect = POISON
            .iter()
            .find(|p| p.0 == kind)
            .unwrap_or_else(|| panic!("a dead letter of unknown kind {kind}: {}", d.reason))
            .1;
        assert!(
            expect.iter().any(|e| d.reason.contains(e)),
            "{kind}: unexpected reason {:?}",
            d.reason
        );
        // Group reasons without their variable parts (positions, sizes, random bytes).
        let short: String = d
            .reason
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(72)
            .collect();
        *table.entry((kind.clone(), short)).or_default() += 1;
        *by_kind.entry(kind).or_default() += 1;
    }
    eprintln!("dead letters by kind and reason:");
    for ((kind, reason), n) in &table {
        eprintln!("  {n:>4}  {kind:<24} {reason}");
    }
    let s = r.stats();
    eprintln!(
        "poison: sent {} ({BAD} malformed of {} kinds, {GOOD} valid + 1 after), handled {}, dead-lettered {} (in DLQ {}), received {}",
        BAD as u64 + GOOD + 1,
        POISON.len(),
        s.handled,
        s.dead_lettered,
        dls.len(),
        s.received
    );
    assert_eq!(dls.len(), BAD);
    let sent: BTreeMap<String, usize> = sent_bad
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(by_kind, sent, "dead letters per kind");
    assert_eq!(s.handled, GOOD + 1);
    assert_eq!(s.received, BAD as u64 + GOOD + 1);
    r.shutdown().await;
    names.cleanup(&client, &["svc"], &[]).await;
}

// --- 5. broker connection loss ---------------------------------------------------------------

/// Closes the broker connections whose name contains `marker` (this test's own: other tests
/// and other users of the broker keep theirs). Returns how many were closed.
fn close_connections(marker: &str) -> usize {
    let out = common::rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let mut n = 0;
    for line in out.lines().filter(|l| l.contains(marker)) {
        let Some(pid) = line.split('\t').next() else {
            continue;
        };
        common::rabbitmqctl(&["close_connection", pid, "test"]);
        n += 1;
    }
    n
}

/// Waits (bounded) until every confirmed event was handled; returns (handled, duplicates).
async fn await_all(
    rx: &mut mpsc::UnboundedReceiver<u64>,
    confirmed: &BTreeSet<u64>,
    within: Duration,
) -> (usize, usize) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while !confirmed.iter().all(|n| seen.contains_key(n)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => *seen.entry(n).or_default() += 1,
            _ => {
                let missing: Vec<_> = confirmed
                    .iter()
                    .filter(|n| !seen.contains_key(n))
                    .take(20)
                    .collect();
                panic!(
                    "{} of {} confirmed events handled; missing e.g. {missing:?}",
                    confirmed.iter().filter(|n| seen.contains_key(n)).count(),
                    confirmed.len()
                );
            }
        }
    }
    // Stragglers (duplicates still in flight).
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        *seen.entry(n).or_default() += 1;
    }
    let total: usize = seen.values().sum();
    (total, total - seen.len())
}

fn load_service(names: &Names, tx: mpsc::UnboundedSender<u64>) -> App {
    App::new(names.config())
        .service(names.service("svc"))
        .only_module("none")
        .prefetch(500)
        .subscribe("load.event", "load", move |d: Arc<Delivery>| {
            let _ = tx.send(d.event()["n"].as_u64().unwrap_or(u64::MAX));
            async { Ok::<(), Infallible>(()) }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_loses_no_confirmed_event() {
    let names = Names::new("conncut");
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let r = load_service(&names, tx).start().await.expect("start");
    let mut pc = names.config();
    pc.service = Some(names.service("publisher")); // the connection's name
    let publisher = tokio::time::timeout(WAIT, Client::connect(pc))
        .await
        .expect("connect timed out")
        .expect("connect");
    assert!(publisher.is_connected());

    const TOTAL: u64 = 10_000;
    let marker = names.prefix.clone();
    let closed = Arc::new(AtomicUsize::new(0));
    let closed2 = Arc::clone(&closed);
    let t0 = Instant::now();
    let res = common::publish_load(&publisher, "load.event", TOTAL, 8, 2_000, move || {
        let closed = closed2;
        tokio::task::spawn_blocking(move || {
            let n = close_connections(&marker);
            eprintln!("closed {n} connections after 2,000 confirms");
            closed.store(n, Ordering::SeqCst);
        });
    })
    .await;
    let publish_time = t0.elapsed();
    wait_until("the connections were closed", WAIT, || {
        let n = closed.load(Ordering::SeqCst);
        async move { n > 0 }
    })
    .await;
    let (handled, dups) = await_all(&mut rx, &res.confirmed, Duration::from_secs(90)).await;
    eprintln!(
        "connection cut: sent {TOTAL}, confirmed {}, publish errors retried {}, gave up {}, handled {handled} ({} distinct), duplicates {dups}, publishing took {publish_time:?}, {} connections closed",
        res.confirmed.len(),
        res.publish_errors,
        res.gave_up,
        handled - dups,
        closed.load(Ordering::SeqCst)
    );
    assert!(closed.load(Ordering::SeqCst) >= 2, "both connections cut");
    assert_eq!(
        res.confirmed.len() as u64,
        TOTAL,
        "every publish eventually confirmed"
    );
    // The service still serves after the cut.
    publisher
        .publish("load.event", &json!({"n": TOTAL}))
        .await
        .expect("publish after recovery");
    let after = BTreeSet::from([TOTAL]);
    await_all(&mut rx, &after, WAIT).await;
    assert!(r.client().is_connected() && publisher.is_connected());
    r.shutdown().await;
    names.cleanup(&publisher, &["svc"], &[]).await;
    publisher.close().await;
}

/// Starts the broker again when dropped, whatever happened.
struct StartAppGuard;

impl Drop for StartAppGuard {
    fn drop(&mut self) {
        let out = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
        eprintln!("rabbitmqctl start_app: {:?}", out.map(|o| o.status));
    }
}

/// Like the connection cut, but the broker application stops and starts again. It stops the
/// broker for everyone using it, hence ignored by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the shared broker: run alone with --ignored"]
async fn broker_restart_loses_no_confirmed_event() {
    let names = Names::new("restart");
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let r = load_service(&names, tx).start().await.expect("start");
    let publisher = names.client().await;
    let guard = Arc::new(std::sync::Mutex::new(Some(StartAppGuard)));
    let g2 = Arc::clone(&guard);
    let restarted = Arc::new(AtomicBool::new(false));
    let restarted2 = Arc::clone(&restarted);
    const TOTAL: u64 = 10_000;
    let t0 = Instant::now();
    let res = common::publish_load(&publisher, "load.event", TOTAL, 8, 2_000, move || {
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            common::rabbitmqctl(&["stop_app"]);
            eprintln!("broker stopped in {:?}", t.elapsed());
            std::thread::sleep(Duration::from_secs(2));
            // Dropping the guard runs start_app.
            drop(g2.lock().map(|mut g| g.take()));
            eprintln!("broker started again after {:?}", t.elapsed());
            restarted2.store(true, Ordering::SeqCst);
        });
    })
    .await;
    wait_until("the broker restart", Duration::from_secs(120), || {
        let done = restarted.load(Ordering::SeqCst);
        async move { done }
    })
    .await;
    let (handled, dups) = await_all(&mut rx, &res.confirmed, Duration::from_secs(120)).await;
    eprintln!(
        "broker restart: sent {TOTAL}, confirmed {}, publish errors retried {}, gave up {}, handled {handled}, duplicates {dups}, took {:?}",
        res.confirmed.len(),
        res.publish_errors,
        res.gave_up,
        t0.elapsed()
    );
    r.shutdown().await;
    names.cleanup(&publisher, &["svc"], &[]).await;
    drop(guard);
}

// --- 6. SIGTERM under load -------------------------------------------------------------------

/// A worker process, killed (SIGKILL) if still running when dropped.
struct Worker(std::process::Child);

impl Worker {
    fn start(bin: &std::path::Path, names: &Names, out: &std::path::Path) -> Worker {
        let child = std::process::Command::new(bin)
            .env("TCHU_BROKER_URL", common::broker_url())
            .env("TCHU_EXCHANGE", &names.exchange)
            .env("TCHU_SERVICE", names.service("worker"))
            .env("WORKER_OUT", out)
            .env("WORKER_DELAY_MS", "1")
            .spawn()
            .expect("start the worker");
        Worker(child)
    }

    fn term(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit.
    async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "the worker did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Builds `examples/worker.rs` (a no-op when up to date) and returns its path, next to this
/// test binary: `<target>/debug/examples/worker`.
fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "tchu", "--example", "worker"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --example worker");
    assert!(status.success(), "building the worker example failed");
    let bin = profile_dir.join("examples").join("worker");
    assert!(bin.exists(), "no worker binary at {}", bin.display());
    bin
}

fn lines(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let bin = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(worker_binary),
    )
    .await
    .expect("building the worker timed out")
    .expect("build task");
    let names = Names::new("sigterm");
    let queue = names.service("worker");
    let out = std::env::temp_dir().join(format!("{}.out", names.prefix));
    let _ = std::fs::remove_file(&out);
    let client = names.client().await;

    let mut first = Worker::start(&bin, &names, &out);
    wait_until(
        "the first worker consuming",
        Duration::from_secs(60),
        || {
            let q = queue.clone();
            async move { consumer_count(&q).await > 0 }
        },
    )
    .await;

    const TOTAL: u64 = 5_000;
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for n in 0..TOTAL {
                tokio::time::timeout(WAIT, client.publish("work.item", &json!({"n": n})))
                    .await
                    .expect("publish timed out")
                    .expect("publish");
            }
        })
    };
    wait_until("1,500 events handled", Duration::from_secs(60), || {
        let n = lines(&out).len();
        async move { n >= 1_500 }
    })
    .await;
    first.term();
    let status = first.wait(Duration::from_secs(40)).await;
    let at_exit = lines(&out);
    eprintln!(
        "first worker: exit {status:?} after {} lines",
        at_exit.len()
    );
    assert!(status.success(), "graceful exit: {status:?}");

    let mut second = Worker::start(&bin, &names, &out);
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publishing timed out")
        .expect("publisher");
    wait_until("every event in the file", Duration::from_secs(120), || {
        let all: BTreeSet<u64> = lines(&out).into_iter().collect();
        async move { all.len() as u64 == TOTAL }
    })
    .await;
    second.term();
    let status = second.wait(Duration::from_secs(40)).await;
    assert!(status.success(), "graceful exit: {status:?}");
    let all = lines(&out);
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    eprintln!(
        "sigterm: published {TOTAL}, lines {}, distinct {}, duplicates {}, handled by the first worker {}",
        all.len(),
        distinct.len(),
        all.len() - distinct.len(),
        at_exit.len()
    );
    assert_eq!(distinct, (0..TOTAL).collect::<BTreeSet<_>>());
    assert_eq!(client.queue_len(&queue).await.expect("len"), 0);
    let _ = std::fs::remove_file(&out);
    names.cleanup(&client, &["worker"], &[]).await;
}

// --- 7. RPC after the caller's connection was replaced or recovered ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_reply_arrives_after_the_callers_connection_is_cut() {
    let names = Names::new("rpccut");
    let responder = App::new(names.config())
        .service(names.service("responder"))
        .only_module("none")
        .subscribe("rpccut.echo", "echo", |d: Arc<Delivery>| async move {
            Ok::<_, Infallible>(d.event().clone())
        })
        .start()
        .await
        .expect("start responder");
    let mut cc = names.config();
    cc.service = Some(names.service("caller")); // the connection's name
    let caller = tokio::time::timeout(WAIT, Client::connect(cc))
        .await
        .expect("connect timed out")
        .expect("connect");
    let t = Some(Duration::from_secs(10));
    let v = caller
        .call("rpccut.echo", &json!({"n": 1}), t)
        .await
        .expect("call before the cut");
    assert_eq!(v["n"], 1);
    // Only the caller's connection (its name ends with `.caller`).
    let marker = format!("{}.caller", names.prefix);
    let cut = tokio::task::spawn_blocking(move || close_connections(&marker))
        .await
        .expect("close");
    assert_eq!(cut, 1, "the caller's connection was closed");
    let t0 = Instant::now();
    let mut n = 2;
    // Calls go on (the first ones may wait for the recovery); each gets its reply.
    while n <= 4 {
        match caller.call("rpccut.echo", &json!({"n": n}), t).await {
            Ok(v) => {
                assert_eq!(v["n"], n);
                n += 1;
            }
            Err(e) => panic!(
                "call {n} after the cut failed after {:?}: {e}",
                t0.elapsed()
            ),
        }
    }
    eprintln!(
        "rpc after a connection cut: 3 calls answered {:?} after the cut",
        t0.elapsed()
    );
    assert_eq!(caller.pending_calls(), 0);
    responder.shutdown().await;
    names.cleanup(&caller, &["responder"], &[]).await;
    caller.close().await;
}
