//! Schema fingerprints on RabbitMQ: a typed publish carries the `tchu-schema` header; a
//! consumer whose handler was compiled against another schema of the event counts the
//! mismatch (`tchu_schema_mismatch_total` with topic and both fingerprints) and handles it, or
//! in strict mode dead-letters it with the reason; a message without a fingerprint (Python
//! tchu-tchu, `tchu publish`) is handled as before. The old version of the publisher is a
//! separate process (this test binary re-run as `v1_publisher`), side by side with the new
//! consumer. `cargo test -p tchu --test fingerprints`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{Names, WAIT};
use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use tchu::{App, State};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// What the old publisher (version 1) was built with.
pub mod v1 {
    /// An order, as version 1 of the schema had it.
    #[tchu::event(topic = "fp_test.order.placed")]
    #[derive(Debug)]
    pub struct OrderPlaced {
        /// The order.
        pub order_id: u64,
    }
}

/// What the consumer (version 2) is built with: one more field.
pub mod v2 {
    /// An order, version 2.
    #[tchu::event(topic = "fp_test.order.placed")]
    #[derive(Debug)]
    pub struct OrderPlaced {
        /// The order.
        pub order_id: u64,
        /// New in version 2.
        #[serde(default)]
        pub note: Option<String>,
    }
}

mod consumer {
    use super::*;

    #[tchu::subscribe(v2::OrderPlaced)]
    async fn ship(order: v2::OrderPlaced, seen: State<UnboundedSender<u64>>) {
        let _ = seen.send(order.order_id);
    }
}

/// Counters by name and labels, from a recorder installed for this test binary.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<MetricKey, Arc<Count>>>);

/// A metric's name and labels.
type MetricKey = (String, Vec<(String, String)>);

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn absolute(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

struct Recorder(Arc<Counters>);

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let mut m = self.0.0.lock().expect("counters");
        let c = m
            .entry((key.name().to_owned(), labels))
            .or_default()
            .clone();
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counters {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        let m = self.0.lock().expect("counters");
        m.iter()
            .filter(|((n, l), _)| {
                let mut l = l.clone();
                l.sort();
                n == name && l == want
            })
            .map(|(_, c)| c.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Version 1 of the publisher, as its own process: publishes `order_id`s from
/// `TCHU_FP_ORDERS` on exchange `TCHU_FP_EXCHANGE`. Run by `two_versions_side_by_side`.
#[tokio::test]
#[ignore = "a child process of two_versions_side_by_side"]
async fn v1_publisher() {
    let exchange = std::env::var("TCHU_FP_EXCHANGE").expect("TCHU_FP_EXCHANGE");
    let mut names = Names::new("fp_child");
    names.exchange = exchange;
    let client = names.client().await;
    for id in std::env::var("TCHU_FP_ORDERS").expect("orders").split(',') {
        let order_id = id.parse().expect("order id");
        tokio::time::timeout(WAIT, v1::OrderPlaced { order_id }.publish_with(&client))
            .await
            .expect("publish timed out")
            .expect("publish");
    }
    client.close().await;
}

async fn run_v1_publisher(names: &Names, orders: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let child = tokio::process::Command::new(exe)
        .args(["--ignored", "--exact", "v1_publisher", "--nocapture"])
        .env("TCHU_FP_EXCHANGE", &names.exchange)
        .env("TCHU_FP_ORDERS", orders)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, child)
        .await
        .expect("v1 publisher timed out")
        .expect("v1 publisher ran");
    assert!(
        out.status.success(),
        "v1 publisher failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran the publisher"
    );
}

async fn received(rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>, n: usize) -> Vec<u64> {
    let mut got = common::recv_n(rx, n).await;
    got.sort_unstable();
    got
}

#[tokio::test]
async fn two_versions_side_by_side() {
    let counters = Arc::new(Counters::default());
    metrics::set_global_recorder(Recorder(counters.clone())).expect("recorder");
    let fp_v1 = tchu::fingerprint::of::<v1::OrderPlaced>().expect("v1 fingerprint");
    let fp_v2 = tchu::fingerprint::of::<v2::OrderPlaced>().expect("v2 fingerprint");
    assert_ne!(fp_v1, fp_v2);
    let labels = [
        ("topic", "fp_test.order.placed"),
        ("expected", fp_v2),
        ("received", fp_v1),
    ];

    for strict in [false, true] {
        let names = Names::new(if strict { "fp_strict" } else { "fp_lenient" });
        let service = names.service("shipping");
        let (tx, mut rx) = unbounded_channel::<u64>();
        let mut config = names.config();
        config.schema_strict = strict;
        let running = tokio::time::timeout(
            WAIT,
            App::new(config)
                .service(service.clone())
                .only_module("fingerprints::consumer")
                .state(tx)
                .start(),
        )
        .await
        .expect("start timed out")
        .expect("start");
        let client = names.client().await;
        let before = counters.get(tchu::fingerprint::SCHEMA_MISMATCH_TOTAL, &labels);

        // The old publisher, in its own process.
        run_v1_publisher(&names, "1").await;
        // A Python-like sender: no fingerprint.
        client
            .publish(
                "fp_test.order.placed",
                &serde_json::json!({ "order_id": 2 }),
            )
            .await
            .expect("publish untyped");
        // The same version: same fingerprint.
        v2::OrderPlaced {
            order_id: 3,
            note: None,
        }
        .publish_with(&client)
        .await
        .expect("publish v2");

        if strict {
            assert_eq!(received(&mut rx, 2).await, [2, 3]);
            let dead = client.dead_letters(&service, 10_000).await.expect("dlq");
            assert_eq!(dead.len(), 1, "{dead:?}");
            let reason = &dead[0].reason;
            assert!(
                reason.contains("schema mismatch on `fp_test.order.placed`"),
                "{reason}"
            );
            assert!(reason.contains(fp_v1) && reason.contains(fp_v2), "{reason}");
            assert_eq!(
                dead[0]
                    .message
                    .properties
                    .headers
                    .get(tchu::fingerprint::SCHEMA_HEADER)
                    .and_then(|h| h.as_str()),
                Some(fp_v1)
            );
        } else {
            assert_eq!(received(&mut rx, 3).await, [1, 2, 3]);
            let dead = client.dead_letters(&service, 10_000).await.expect("dlq");
            assert!(dead.is_empty(), "{dead:?}");
        }
        assert_eq!(
            counters.get(tchu::fingerprint::SCHEMA_MISMATCH_TOTAL, &labels) - before,
            1,
            "one mismatch counted with topic and both fingerprints (strict: {strict})"
        );
        assert!(rx.try_recv().is_err(), "nothing else was handled");
        running.shutdown().await;
        names.cleanup(&client, &["shipping"], &[]).await;
        client.close().await;
    }
}
