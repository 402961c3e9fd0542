//! Mandatory publishes on the real broker: every publish's [`Confirm`] must match its own
//! routability while many are in flight (lapin 4.12.3 hands a `basic.return` to whichever
//! confirm of the channel completes next). Needs RabbitMQ (`TCHU_TEST_BROKER_URL`, default
//! [`DEFAULT_BROKER_URL`]); own exchange and queue with random names, bounded waits.
//!
//! `cargo test -p tchu-runtime --lib mandatory -- --nocapture` prints the throughput figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{AmqpBroker, Timeouts};
use crate::broker::{Confirm, QueueSpec, QueueType};
use crate::defaults::DEFAULT_BROKER_URL;
use crate::message::Message;
use crate::tls::TlsConfig;

/// A bound for every wait on the broker.
const WAIT: Duration = Duration::from_secs(30);
const TASKS: usize = 64;
const MESSAGES: usize = 2_000;

fn url() -> String {
    std::env::var("TCHU_TEST_BROKER_URL").unwrap_or_else(|_| DEFAULT_BROKER_URL.to_owned())
}

/// A broker with its own exchange and queue (bound with `routable`), deleted by `cleanup`.
struct Fixture {
    broker: AmqpBroker,
    exchange: String,
    queue: String,
}

impl Fixture {
    async fn new(test: &str) -> Fixture {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let exchange = format!("tchu_test.{test}.{id}");
        let queue = format!("t.{test}.{id}");
        let broker = tokio::time::timeout(
            WAIT,
            AmqpBroker::connect(
                &[url()],
                test,
                Timeouts {
                    connect: WAIT,
                    publish: WAIT,
                },
                &TlsConfig::default(),
            ),
        )
        .await
        .expect("connect timed out")
        .expect("connect");
        tokio::time::timeout(WAIT, async {
            broker.declare_exchange(&exchange).await.expect("exchange");
            broker
                .declare_queue(&QueueSpec::durable(&queue, QueueType::Classic))
                .await
                .expect("queue");
            broker
                .bind(&queue, &exchange, "routable")
                .await
                .expect("bind");
        })
        .await
        .expect("declaring timed out");
        Fixture {
            broker,
            exchange,
            queue,
        }
    }

    async fn cleanup(&self) {
        let _ = tokio::time::timeout(WAIT, async {
            let _ = self.broker.delete_queue(&self.queue).await;
            let _ = self.broker.delete_exchange(&self.exchange).await;
            self.broker.close().await;
        })
        .await;
    }

    /// Publishes `MESSAGES` mandatory messages from `TASKS` tasks; message `i` is routable
    /// when `routable(i)`. Returns (mismatches, elapsed).
    async fn run(&self, routable: fn(usize) -> bool) -> (usize, Duration) {
        let next = Arc::new(AtomicUsize::new(0));
        let mismatches = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (broker, exchange) = (self.broker.clone(), self.exchange.clone());
            let (next, mismatches) = (Arc::clone(&next), Arc::clone(&mismatches));
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= MESSAGES {
                        return;
                    }
                    let mut msg = Message {
                        routing_key: if routable(i) { "routable" } else { "nowhere" }.to_owned(),
                        body: format!("{{\"i\":{i}}}").into_bytes(),
                        ..Message::default()
                    };
                    msg.properties.persistent = true;
                    msg.properties.message_id = Some(format!("m-{i}"));
                    let confirm = tokio::time::timeout(WAIT, broker.publish(&exchange, &msg, true))
                        .await
                        .expect("publish timed out")
                        .expect("publish failed");
                    let want = if routable(i) {
                        Confirm::Ack
                    } else {
                        Confirm::Returned
                    };
                    if confirm != want {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(WAIT * 4, t)
                .await
                .expect("publisher task timed out")
                .expect("publisher task panicked");
        }
        (mismatches.load(Ordering::Relaxed), started.elapsed())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mandatory_confirm_matches_its_own_routability() {
    let f = Fixture::new("mandatory").await;
    let (mismatches, elapsed) = f.run(|i| i % 2 == 0).await;
    let queued = tokio::time::timeout(WAIT, f.broker.queue_len(&f.queue))
        .await
        .expect("queue_len timed out");
    f.cleanup().await;
    println!(
        "mixed: {MESSAGES} mandatory publishes from {TASKS} tasks in {elapsed:?} \
         ({:.0}/s), {mismatches} mismatches",
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        mismatches, 0,
        "publishes whose Confirm did not match their routability"
    );
    assert_eq!(queued.expect("queue_len"), (MESSAGES / 2) as u32);
}

/// The cost of the fix: all routable, `TASKS` in flight. Prints the rate; asserts only that
/// every message was queued (speed is not asserted: the machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publish_throughput() {
    let f = Fixture::new("mandatory_rate").await;
    let (mismatches, elapsed) = f.run(|_| true).await;
    let queued = tokio::time::timeout(WAIT, f.broker.queue_len(&f.queue))
        .await
        .expect("queue_len timed out");
    f.cleanup().await;
    println!(
        "routable: {MESSAGES} mandatory publishes from {TASKS} tasks in {elapsed:?} ({:.0}/s)",
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(mismatches, 0);
    assert_eq!(queued.expect("queue_len"), MESSAGES as u32);
}
