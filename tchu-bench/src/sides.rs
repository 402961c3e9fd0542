//! The two implementations behind one face: raw lapin, and tchu in either wire format.

use std::convert::Infallible;
use std::sync::Arc;

use tchu::{App, BrokerUrl, Client, Config, Delivery, IntoOutcome, RpcError, Running, WireFormat};

use crate::common::{Counter, Names, Res, WAIT, broker_url};
use crate::raw;

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Side {
    /// Hand-written lapin.
    Raw,
    /// Hand-written lapin sending and reading tchu's Celery bytes (events, and RPC requests and
    /// replies in the Celery result format).
    RawCelery,
    /// tchu, default (Celery) wire format.
    Celery,
    /// tchu, native wire format.
    Native,
    /// The Python library tchu-tchu with Celery workers (run by `tchutchu`, never by the Rust
    /// workloads; treated as tchu Celery if it ever reached them).
    TchuTchu,
}

impl Side {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::RawCelery => "raw-celery",
            Side::Celery => "tchu-celery",
            Side::Native => "tchu-native",
            Side::TchuTchu => "tchu-tchu",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Side> {
        [
            Side::Raw,
            Side::RawCelery,
            Side::Celery,
            Side::Native,
            Side::TchuTchu,
        ]
        .into_iter()
        .find(|x| x.label() == s)
    }

    /// The body a raw side sends.
    fn raw_body(self) -> raw::Body {
        if self == Side::RawCelery {
            raw::Body::Celery
        } else {
            raw::Body::Plain
        }
    }

    fn format(self) -> WireFormat {
        match self {
            Side::Native => WireFormat::Native,
            Side::Raw | Side::RawCelery | Side::Celery | Side::TchuTchu => WireFormat::Celery,
        }
    }
}

/// The prefetch both sides use (tchu's default).
pub(crate) const PREFETCH: u16 = tchu::config::DEFAULT_PREFETCH;

fn config(side: Side, exchange: &str) -> Res<Config> {
    let mut c = Config::new(BrokerUrl::parse(&broker_url())?);
    c.exchange = exchange.to_owned();
    c.format = side.format();
    c.publish_timeout = WAIT;
    c.call_timeout = WAIT;
    Ok(c)
}

/// A client with the bench's settings.
async fn tchu_client(side: Side, exchange: &str) -> Res<Client> {
    Ok(Client::connect(config(side, exchange)?).await?)
}

/// A tchu service on `queue` with the bench's settings, no static handlers and `handler` (with
/// subscription `id`) on `pattern`.
async fn tchu_service<F, Fut, R>(
    side: Side,
    exchange: &str,
    queue: String,
    (pattern, id): (&str, &str),
    handler: F,
) -> Res<Running>
where
    F: Fn(Arc<Delivery>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoOutcome,
{
    let app = App::new(config(side, exchange)?)
        .service(queue)
        .only_module("none")
        .prefetch(PREFETCH)
        .subscribe(pattern, id, handler);
    Ok(app.start().await?)
}

/// Queues a tchu service declares besides its own.
pub(crate) fn service_queues(queue: &str) -> Vec<String> {
    vec![
        queue.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.tchu.bindings"),
    ]
}

/// Publishes events.
#[derive(Debug)]
pub(crate) enum Publisher {
    Raw(Box<raw::Publisher>),
    Tchu(Client),
}

impl Publisher {
    pub(crate) async fn connect(side: Side, exchange: &str) -> Res<Arc<Self>> {
        Ok(Arc::new(match side {
            Side::Raw | Side::RawCelery => Publisher::Raw(Box::new(
                raw::Publisher::connect(&broker_url(), exchange, side.raw_body()).await?,
            )),
            Side::Celery | Side::Native | Side::TchuTchu => {
                Publisher::Tchu(tchu_client(side, exchange).await?)
            }
        }))
    }

    pub(crate) async fn publish(&self, topic: &str, event: &serde_json::Value) -> Res<()> {
        match self {
            Publisher::Raw(p) => p.publish(topic, event).await,
            Publisher::Tchu(c) => {
                c.publish(topic, event).await?;
                Ok(())
            }
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Publisher::Raw(p) => p.close().await,
            Publisher::Tchu(c) => c.close().await,
        }
    }
}

/// A consuming service: one that counts what it handles ([`Service::start`]) or an RPC
/// responder ([`Service::responder`]).
#[derive(Debug)]
pub(crate) enum Service {
    Raw(raw::Consuming),
    Tchu(Running),
}

impl Service {
    pub(crate) async fn start(
        side: Side,
        names: &Names,
        name: &str,
        pattern: &str,
        counter: Arc<Counter>,
    ) -> Res<Self> {
        let queue = names.queue(name);
        Ok(match side {
            Side::Raw | Side::RawCelery => Service::Raw(
                raw::service(
                    &broker_url(),
                    (&names.exchange, &queue, pattern),
                    PREFETCH,
                    counter,
                    side.raw_body(),
                )
                .await?,
            ),
            Side::Celery | Side::Native | Side::TchuTchu => Service::Tchu(
                tchu_service(
                    side,
                    &names.exchange,
                    queue,
                    (pattern, "bench"),
                    move |d: Arc<Delivery>| {
                        let c = Arc::clone(&counter);
                        async move {
                            c.hit(d.event());
                            Ok::<(), Infallible>(())
                        }
                    },
                )
                .await?,
            ),
        })
    }

    /// Answers RPC requests on `pattern` with `{"echo": request}`.
    pub(crate) async fn responder(
        side: Side,
        names: &Names,
        name: &str,
        pattern: &str,
    ) -> Res<Self> {
        let queue = names.queue(name);
        Ok(match side {
            Side::Raw | Side::RawCelery => Service::Raw(
                raw::responder(
                    &broker_url(),
                    (&names.exchange, &queue, pattern),
                    PREFETCH,
                    side.raw_body(),
                )
                .await?,
            ),
            Side::Celery | Side::Native | Side::TchuTchu => Service::Tchu(
                tchu_service(
                    side,
                    &names.exchange,
                    queue,
                    (pattern, "echo"),
                    |d: Arc<Delivery>| async move {
                        Ok::<_, RpcError>(serde_json::json!({ "echo": d.event().clone() }))
                    },
                )
                .await?,
            ),
        })
    }

    /// Stops consuming and closes the connection (queues are deleted by [`cleanup`]).
    pub(crate) async fn stop(self) {
        match self {
            Service::Raw(s) => s.stop().await,
            Service::Tchu(r) => {
                let c = r.client().clone();
                r.shutdown().await;
                c.close().await;
            }
        }
    }
}

/// Makes RPC calls.
#[derive(Debug)]
pub(crate) enum Caller {
    Raw(Box<raw::Caller>),
    Tchu(Client),
}

impl Caller {
    pub(crate) async fn connect(side: Side, exchange: &str) -> Res<Arc<Self>> {
        Ok(Arc::new(match side {
            Side::Raw | Side::RawCelery => Caller::Raw(Box::new(
                raw::Caller::connect(&broker_url(), exchange, side.raw_body()).await?,
            )),
            Side::Celery | Side::Native | Side::TchuTchu => {
                Caller::Tchu(tchu_client(side, exchange).await?)
            }
        }))
    }

    pub(crate) async fn call(
        &self,
        topic: &str,
        req: &serde_json::Value,
    ) -> Res<serde_json::Value> {
        match self {
            Caller::Raw(c) => c.call(topic, req).await,
            Caller::Tchu(c) => Ok(c.call(topic, req, Some(WAIT)).await?),
        }
    }

    pub(crate) async fn close(self: Arc<Self>) {
        match Arc::try_unwrap(self) {
            Ok(Caller::Raw(c)) => c.close().await,
            Ok(Caller::Tchu(c)) => c.close().await,
            Err(shared) => {
                if let Caller::Tchu(c) = &*shared {
                    c.close().await;
                }
            }
        }
    }
}

/// Deletes every queue of the given service names (with tchu's side queues) and the exchange.
pub(crate) async fn cleanup(names: &Names, services: &[&str]) {
    let queues: Vec<String> = services
        .iter()
        .flat_map(|s| service_queues(&names.queue(s)))
        .collect();
    raw::cleanup(&broker_url(), &queues, &names.exchange).await;
}
