//! A test kit for your own handlers, with no RabbitMQ: run an [`App`] on the in-memory broker,
//! publish or call into it, and assert on what it published, with deadlines instead of sleeps.
//!
//! ```
//! use std::time::Duration;
//! # use tchu_runtime as tchu;
//! use tchu::testing::TestApp;
//! use tchu::App;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Handlers added at run time here; `#[tchu::subscribe]` ones are picked up the same way
//! // (narrow them with `App::only_module`).
//! let app = App::new(tchu::Config::memory())
//!     .service("greeter")
//!     .only_module("none")
//!     .subscribe("user.created", "greet", |d: std::sync::Arc<tchu::Delivery>| {
//!         let client = d.client().cloned();
//!         let email = d.event()["email"].clone();
//!         async move {
//!             if let Some(c) = client {
//!                 c.publish("email.sent", &serde_json::json!({ "to": email })).await?;
//!             }
//!             Ok::<(), tchu::PublishError>(())
//!         }
//!     });
//! let t = TestApp::start(app).await?;
//! t.client().publish("user.created", &serde_json::json!({ "email": "a@b.co" })).await?;
//! let sent = t.published_json("email.sent", 1, Duration::from_secs(5)).await?;
//! assert_eq!(sent[0]["to"], "a@b.co");
//! t.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::sync::Mutex;
use std::time::Duration;

use crate::app::{App, Running};
use crate::broker::memory::MemoryBroker;
use crate::broker::{Consumer, QueueSpec, QueueType};
use crate::client::Client;
use crate::config::Config;
use crate::error::Error;
use crate::event::Event;
use crate::wire::{self, Kind};

const CAPTURE_QUEUE: &str = "tchu.testing.capture";

/// What went wrong while waiting for published events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExpectError {
    /// Fewer events than expected arrived before the deadline.
    #[error("expected {expected} `{topic}` events within {timeout:?}, got {got}")]
    Timeout {
        /// The topic waited for.
        topic: String,
        /// How many were expected.
        expected: usize,
        /// How many arrived.
        got: usize,
        /// The deadline.
        timeout: Duration,
    },
    /// A captured event did not deserialize into the requested type.
    #[error("a `{topic}` event does not match the type")]
    Decode {
        /// The topic.
        topic: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// A running app on its own in-memory broker, with every published event captured.
#[derive(Debug)]
pub struct TestApp {
    running: Running,
    capture: tokio::sync::Mutex<Consumer>,
    seen: Mutex<Vec<(String, serde_json::Value)>>,
}

impl TestApp {
    /// Starts `app` on a fresh in-memory broker (whatever broker its config named).
    ///
    /// # Errors
    /// The app's own start-up errors (no subscriptions, duplicate ids...).
    pub async fn start(app: App) -> Result<TestApp, Error> {
        let broker = MemoryBroker::new();
        let mut config = Config::memory();
        config.exchange = app.config().exchange.clone();
        let client = Client::connect_memory(config, &broker).await?;
        broker.declare_queue(&QueueSpec::durable(CAPTURE_QUEUE, QueueType::Classic))?;
        broker.bind(CAPTURE_QUEUE, &client.config().exchange, "#")?;
        let capture = broker.consume(CAPTURE_QUEUE, 0)?;
        let app = if app.config().service.is_none() {
            app.service("test")
        } else {
            app
        };
        let running = app.client(client).start().await?;
        Ok(TestApp {
            running,
            capture: tokio::sync::Mutex::new(Consumer::Memory(capture)),
            seen: Mutex::new(Vec::new()),
        })
    }

    /// The client to publish and call with.
    pub fn client(&self) -> &Client {
        self.running.client()
    }

    /// The app's counters.
    pub fn stats(&self) -> crate::dispatch::StatsSnapshot {
        self.running.stats()
    }

    /// Waits until `n` events of `topic` were published (by anyone, tests included), and
    /// returns them as JSON.
    ///
    /// # Errors
    /// [`ExpectError::Timeout`] when fewer arrive in time.
    pub async fn published_json(
        &self,
        topic: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, ExpectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut capture = self.capture.lock().await;
        loop {
            let got: Vec<serde_json::Value> = self
                .seen
                .lock()
                .map(|s| {
                    s.iter()
                        .filter(|(t, _)| t == topic)
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default();
            if got.len() >= n {
                return Ok(got);
            }
            match tokio::time::timeout_at(deadline, capture.next()).await {
                Ok(Some(Ok(d))) => {
                    let _ = d.acker.ack().await;
                    if let Ok(dec) = wire::decode(&d.message, wire::Limits::NONE)
                        && dec.kind != Kind::Rpc
                        && let Ok(mut s) = self.seen.lock()
                    {
                        s.push((dec.topic, dec.event));
                    }
                }
                _ => {
                    return Err(ExpectError::Timeout {
                        topic: topic.to_owned(),
                        expected: n,
                        got: got.len(),
                        timeout,
                    });
                }
            }
        }
    }

    /// Waits until `n` events of type `E` were published and returns them, typed.
    ///
    /// # Errors
    /// A timeout, or an event of that topic that does not decode as `E`.
    pub async fn published<E: Event>(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<E>, ExpectError> {
        self.published_json(E::TOPIC, n, timeout)
            .await?
            .into_iter()
            .map(|v| {
                E::deserialize(v).map_err(|source| ExpectError::Decode {
                    topic: E::TOPIC.to_owned(),
                    source,
                })
            })
            .collect()
    }

    /// Stops the app.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}
