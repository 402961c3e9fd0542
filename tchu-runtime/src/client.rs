//! The client: publishing events and making RPC calls, plus the process's default client that
//! `event.publish()` and `req.call()` use (set once, like `tracing`'s global subscriber).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::broker::amqp::{AmqpBroker, Timeouts};
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, Confirm};
use crate::config::Config;
use crate::error::{BrokerError, CallError, ConfigError, Error, PublishError};
use crate::event::Event;
use crate::message::Message;
use crate::rpc::{Answer, Rpc};
use crate::telemetry::PublishMeters;
use crate::tls::TlsConfig;
use crate::topic::check_topic;
use crate::trace;
use crate::url::BrokerUrl;
use crate::wire::{self, Reply};

/// The id of a published message (the Celery task id in the Celery format).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    pub(crate) fn new() -> Self {
        MessageId(wire::new_message_id())
    }

    /// The string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Inner {
    broker: Broker,
    config: Config,
    rpc: tokio::sync::OnceCell<Rpc>,
    /// The publish metrics' handles (registered once per topic).
    meters: PublishMeters,
}

/// A connection to the broker for publishing and calling. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.inner.config.broker)
            .field("exchange", &self.inner.config.exchange)
            .finish_non_exhaustive()
    }
}

/// A publish's outcome as the publisher sees it: counted, a nack an error.
fn confirmed(
    meters: &PublishMeters,
    topic: &str,
    c: Result<Confirm, BrokerError>,
) -> Result<Confirm, PublishError> {
    let c = c.map_err(|source| PublishError::Broker {
        topic: topic.to_owned(),
        source,
    })?;
    meters.published(topic, c == Confirm::Ack);
    if c == Confirm::Nack {
        return Err(PublishError::Nacked {
            topic: topic.to_owned(),
        });
    }
    Ok(c)
}

/// Refuses what would silently go unencrypted: an `amqps://` URL in a build without TLS (lapin
/// would then connect in plain text), and TLS files set for `amqp://` URLs only.
fn check_tls(urls: &[String], tls: &TlsConfig) -> Result<(), ConfigError> {
    let any_tls = urls.iter().any(|u| u.starts_with("amqps://"));
    if any_tls && !cfg!(feature = "tls") {
        return Err(ConfigError::Tls(
            "an `amqps://` broker URL needs tchu's `tls` feature, and this binary was built \
             without it"
                .to_owned(),
        ));
    }
    if !any_tls && !tls.is_empty() {
        return Err(ConfigError::Tls(
            "TLS settings (TCHU_TLS_CA_FILE, TCHU_TLS_CERT_FILE, TCHU_TLS_KEY_FILE) are set but \
             no broker URL is `amqps://`: the connection would not be encrypted"
                .to_owned(),
        ));
    }
    Ok(())
}

impl Client {
    /// Connects with the given settings: to RabbitMQ for an `amqp://` URL, to a new in-process
    /// broker for `memory://` (to share one, see [`Client::connect_memory`]).
    ///
    /// # Errors
    /// The broker cannot be reached; an `amqps://` URL in a build without the `tls` feature;
    /// TLS settings with no `amqps://` URL.
    pub async fn connect(config: Config) -> Result<Client, Error> {
        config.check()?;
        let broker = match &config.broker {
            BrokerUrl::Amqp(urls) => {
                check_tls(urls, &config.tls)?;
                let name = config.service.clone().unwrap_or_else(|| "tchu".to_owned());
                let timeouts = Timeouts {
                    connect: config.connect_timeout,
                    publish: config.publish_timeout,
                };
                Broker::Amqp(AmqpBroker::connect(urls, &name, timeouts, &config.tls).await?)
            }
            BrokerUrl::Memory => Broker::Memory(MemoryBroker::new()),
        };
        Client::on(broker, config).await
    }

    /// Connects to the given in-process broker with the other settings of `config` (its
    /// `broker` becomes `memory://`): every client and app handed the same [`MemoryBroker`]
    /// sees the same queues.
    ///
    /// ```
    /// # use tchu_runtime as tchu;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tchu::Error> {
    /// use tchu::{Client, Config, MemoryBroker};
    /// let broker = MemoryBroker::new();
    /// let a = Client::connect_memory(Config::memory(), &broker).await?;
    /// let b = Client::connect_memory(Config::memory(), &broker).await?;
    /// # drop((a, b));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// A setting [`Config::check`] refuses.
    pub async fn connect_memory(
        mut config: Config,
        broker: &MemoryBroker,
    ) -> Result<Client, Error> {
        config.broker = BrokerUrl::Memory;
        config.check()?;
        Client::on(Broker::Memory(broker.clone()), config).await
    }

    /// A client on a broker just connected: declares the exchange.
    async fn on(broker: Broker, config: Config) -> Result<Client, Error> {
        broker.declare_exchange(&config.exchange).await?;
        crate::telemetry::connected(broker.is_connected());
        Ok(Client {
            inner: Arc::new(Inner {
                broker,
                config,
                rpc: tokio::sync::OnceCell::new(),
                meters: PublishMeters::default(),
            }),
        })
    }

    /// Connects with [`Config::from_env`].
    ///
    /// # Errors
    /// Bad settings or an unreachable broker.
    pub async fn from_env() -> Result<Client, Error> {
        Client::connect(Config::from_env()?).await
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// Validates, serializes and publishes a typed event; returns after the broker confirmed.
    ///
    /// # Errors
    /// [`PublishError::Invalid`] (nothing sent), or a broker failure.
    pub async fn publish_event<E: Event>(&self, event: &E) -> Result<MessageId, PublishError> {
        validate_event(event)?;
        self.publish_valid_event(event).await
    }

    /// [`Client::publish_event`] of an event already validated.
    async fn publish_valid_event<E: Event>(&self, event: &E) -> Result<MessageId, PublishError> {
        let json = serde_json::to_vec(event).map_err(|source| PublishError::Encode {
            topic: E::TOPIC.to_owned(),
            source,
        })?;
        self.publish_json(E::TOPIC, &json, crate::schemas::of::<E>())
            .await
    }

    /// Publishes any serializable payload under `topic` (tchu-tchu's `TchuClient.publish`).
    ///
    /// # Errors
    /// A bad topic, or a broker failure.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<MessageId, PublishError> {
        check_topic(topic)?;
        let json = serde_json::to_vec(payload).map_err(|source| PublishError::Encode {
            topic: topic.to_owned(),
            source,
        })?;
        self.publish_json(topic, &json, None).await
    }

    /// The message for an event (`is_rpc` false) or a request, in the configured wire format
    /// and Celery encoding, with its schema stamp.
    fn encode(
        &self,
        topic: &str,
        json: &[u8],
        id: &MessageId,
        schema: Option<&str>,
        is_rpc: bool,
    ) -> Message {
        let config = &self.inner.config;
        let mut msg = wire::encode_with(
            config.format,
            config.celery_encoding,
            topic,
            json,
            id.as_str(),
            is_rpc,
        );
        wire::stamp_schema(&mut msg, schema);
        msg
    }

    async fn publish_json(
        &self,
        topic: &str,
        json: &[u8],
        schema: Option<&str>,
    ) -> Result<MessageId, PublishError> {
        require_object(topic, json)?;
        let id = MessageId::new();
        let mut msg = self.encode(topic, json, &id, schema, false);
        msg.properties.persistent = true;
        let span = tracing::info_span!(
            "tchu.publish",
            topic,
            message_id = id.as_str(),
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        );
        propagate(&span, &mut msg);
        self.send(topic, msg, false).instrument(span).await?;
        Ok(id)
    }

    /// Publishes a prepared message to the exchange and waits for the confirm.
    pub(crate) async fn send(
        &self,
        topic: &str,
        msg: Message,
        mandatory: bool,
    ) -> Result<Confirm, PublishError> {
        let c = self
            .inner
            .broker
            .publish_owned(&self.inner.config.exchange, msg, mandatory)
            .await;
        confirmed(&self.inner.meters, topic, c)
    }

    /// Publishes an RPC request (see [`Broker::publish_request`]) and waits for the confirm.
    async fn send_request(&self, topic: &str, msg: Message) -> Result<Confirm, PublishError> {
        let c = self
            .inner
            .broker
            .publish_request(&self.inner.config.exchange, msg)
            .await;
        confirmed(&self.inner.meters, topic, c)
    }

    /// Sends a typed request and waits for its typed reply.
    ///
    /// # Errors
    /// Each failure is its own [`CallError`] variant.
    pub async fn call_event<E: Event>(
        &self,
        request: &E,
        timeout: Option<Duration>,
    ) -> Result<E::Response, CallError> {
        validate_request(request)?;
        self.call_valid_event(request, timeout).await
    }

    /// [`Client::call_event`] of a request already validated.
    async fn call_valid_event<E: Event>(
        &self,
        request: &E,
        timeout: Option<Duration>,
    ) -> Result<E::Response, CallError> {
        let json = serde_json::to_vec(request).map_err(|source| {
            CallError::Publish(PublishError::Encode {
                topic: E::TOPIC.to_owned(),
                source,
            })
        })?;
        let value = self
            .call_json(E::TOPIC, &json, timeout, crate::schemas::of::<E>())
            .await?;
        E::Response::deserialize(value).map_err(|source| CallError::BadReply {
            topic: E::TOPIC.to_owned(),
            source,
        })
    }

    /// Sends an untyped request (tchu-tchu's `TchuClient.call`).
    ///
    /// # Errors
    /// Each failure is its own [`CallError`] variant.
    pub async fn call<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
        timeout: Option<Duration>,
    ) -> Result<serde_json::Value, CallError> {
        check_topic(topic).map_err(PublishError::from)?;
        let json = serde_json::to_vec(payload).map_err(|source| {
            CallError::Publish(PublishError::Encode {
                topic: topic.to_owned(),
                source,
            })
        })?;
        self.call_json(topic, &json, timeout, None).await
    }

    async fn call_json(
        &self,
        topic: &str,
        json: &[u8],
        timeout: Option<Duration>,
        schema: Option<&str>,
    ) -> Result<serde_json::Value, CallError> {
        require_object(topic, json)?;
        let id = MessageId::new();
        let span = tracing::info_span!(
            "tchu.call",
            topic,
            correlation_id = id.as_str(),
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        );
        let started = std::time::Instant::now();
        let r = self
            .call_json_inner(topic, json, timeout, id, schema, &span)
            .instrument(span.clone())
            .await;
        crate::telemetry::rpc_duration(topic, started.elapsed());
        r
    }

    async fn call_json_inner(
        &self,
        topic: &str,
        json: &[u8],
        timeout: Option<Duration>,
        id: MessageId,
        schema: Option<&str>,
        span: &tracing::Span,
    ) -> Result<serde_json::Value, CallError> {
        let timeout = timeout.unwrap_or(self.inner.config.call_timeout);
        let rpc = self
            .inner
            .rpc
            .get_or_try_init(|| Rpc::start(&self.inner.broker))
            .await
            .map_err(|source| PublishError::Broker {
                topic: topic.to_owned(),
                source,
            })?;
        let mut msg = self.encode(topic, json, &id, schema, true);
        propagate(span, &mut msg);
        msg.properties.persistent = false;
        msg.properties.expiration = Some(timeout);
        msg.properties.reply_to = Some(rpc.reply_to().to_owned());
        msg.properties.correlation_id = Some(id.as_str().to_owned());
        let pending = rpc.register(id.as_str());
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || CallError::Timeout {
            topic: topic.to_owned(),
            timeout,
        };
        let no_route = || CallError::NoRoute {
            topic: topic.to_owned(),
        };
        let confirm = tokio::time::timeout_at(deadline, self.send_request(topic, msg))
            .await
            .map_err(|_| timed_out())??;
        if confirm == Confirm::Returned {
            return Err(no_route());
        }
        let mut pending = pending;
        let reply = tokio::time::timeout_at(deadline, &mut pending.reply)
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| timed_out())?;
        match reply {
            Answer::NoRoute => Err(no_route()),
            Answer::Reply(Ok(Reply::Ok(v))) => Ok(v),
            Answer::Reply(Ok(Reply::Remote(e))) => Err(CallError::Remote {
                code: e.code,
                message: e.message,
                details: e.details,
            }),
            Answer::Reply(Ok(Reply::HandlerFailed(message))) => {
                Err(CallError::HandlerFailed { message })
            }
            Answer::Reply(Ok(Reply::Invalid(message))) => Err(CallError::Invalid {
                message,
                errors: None,
            }),
            Answer::Reply(Err(e)) => Err(CallError::HandlerFailed {
                message: format!("unreadable reply: {e}"),
            }),
        }
    }

    /// Number of calls of this client waiting for a reply (the pending-call table).
    pub fn pending_calls(&self) -> usize {
        self.inner.rpc.get().map_or(0, Rpc::pending_len)
    }

    /// Whether the broker connection is up right now (false while it is being recovered).
    pub fn is_connected(&self) -> bool {
        self.inner.broker.is_connected()
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.inner.broker.close().await;
    }
}

use serde::Deserialize as _;

/// Writes a child of the current trace context (if any) into `msg` and records the ids on
/// `span`.
pub(crate) fn propagate(span: &tracing::Span, msg: &mut Message) {
    if let Some((parent, child)) = trace::outgoing() {
        child.write_headers(&mut msg.properties.headers);
        span.record("trace_id", child.trace_id());
        span.record("span_id", child.span_id());
        span.record("parent_span_id", parent.span_id());
    }
}

fn require_object(topic: &str, json: &[u8]) -> Result<(), PublishError> {
    if json.first() == Some(&b'{') {
        Ok(())
    } else {
        Err(PublishError::NotAnObject {
            topic: topic.to_owned(),
        })
    }
}

static DEFAULT: tokio::sync::OnceCell<Client> = tokio::sync::OnceCell::const_new();

tokio::task_local! {
    /// The client of the app whose handler runs in this task (see [`current_client`]).
    static CURRENT_CLIENT: Client;
}

/// Runs `fut` (a handler) with `client` as its current client (the dispatcher does).
pub(crate) fn with_current<F: std::future::Future>(
    client: Client,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT_CLIENT.scope(client, fut)
}

/// The client of the app running the current handler: `event.publish()`, `tchu::publish` and
/// `tchu::call` inside a handler go through the app that runs it, not through the process's
/// first app. `None` outside handlers (and in tasks a handler spawns: a task-local does not
/// follow `tokio::spawn`; pass the [`Client`] extractor's value there).
pub(crate) fn current_client() -> Option<Client> {
    CURRENT_CLIENT.try_with(Client::clone).ok()
}

/// Sets the process's default client. Returns the client back if one was already set.
///
/// # Errors
/// The given client, when a default exists already.
pub fn set_default(client: Client) -> Result<(), Client> {
    DEFAULT.set(client).map_err(|e| match e {
        tokio::sync::SetError::AlreadyInitializedError(c)
        | tokio::sync::SetError::InitializingError(c) => c,
    })
}

/// Refuses an invalid event with its validation errors (nothing is sent).
fn validate_event<E: Event>(event: &E) -> Result<(), PublishError> {
    validator::Validate::validate(event).map_err(|errors| PublishError::Invalid {
        topic: E::TOPIC.to_owned(),
        errors,
    })
}

/// Refuses an invalid request with its validation errors (nothing is sent).
fn validate_request<E: Event>(request: &E) -> Result<(), CallError> {
    validator::Validate::validate(request).map_err(|errors| CallError::Invalid {
        message: errors.to_string(),
        errors: Some(errors),
    })
}

/// The default client: inside a handler, the client of the app running it; elsewhere the
/// process's default, connecting from the environment ([`Config::from_env`]) on first use (a
/// failed connect is tried again on the next use).
///
/// # Errors
/// Bad settings or an unreachable broker.
pub async fn default_client() -> Result<Client, Error> {
    if let Some(c) = current_client() {
        return Ok(c);
    }
    DEFAULT.get_or_try_init(Client::from_env).await.cloned()
}

/// Connects the process's default client from the environment now, or returns the one already
/// set: the client that `event.publish()`, `req.call()`, [`publish`] and [`call`] use. Call it
/// at start to fail fast, with the cause, when the broker cannot be reached; close it
/// ([`Client::close`]) before `main` returns.
///
/// ```no_run
/// # use tchu_runtime as tchu;
/// # async fn demo() -> Result<(), tchu::Error> {
/// let client = tchu::connect().await?; // e.g. "cannot connect to the broker at ..."
/// // ... event.publish().await? ...
/// client.close().await;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// Bad settings or an unreachable broker.
pub async fn connect() -> Result<Client, Error> {
    default_client().await
}

/// The default client for a publish or call: connecting it may take at most the publish
/// timeout, and a failure says why.
async fn client_for_send() -> Result<Client, PublishError> {
    if let Some(c) = current_client() {
        return Ok(c);
    }
    if let Some(c) = DEFAULT.get() {
        return Ok(c.clone());
    }
    let no_client = |e: Error| PublishError::NoClient(Box::new(e));
    let config = Config::from_env().map_err(|e| no_client(e.into()))?;
    let limit = config.publish_timeout;
    match tokio::time::timeout(limit, DEFAULT.get_or_try_init(|| Client::connect(config))).await {
        Ok(r) => r.cloned().map_err(no_client),
        Err(_) => Err(no_client(Error::Broker(crate::error::BrokerError::new(
            format!(
                "connecting to the broker took longer than the publish timeout ({limit:?}, \
             TCHU_PUBLISH_TIMEOUT)"
            ),
        )))),
    }
}

/// Publishes a typed event with the default client. An invalid event is refused before any
/// connection is tried.
///
/// # Errors
/// See [`Client::publish_event`]; [`PublishError::NoClient`] (with the cause) when the default
/// client cannot connect.
pub async fn publish_event<E: Event>(event: &E) -> Result<MessageId, PublishError> {
    validate_event(event)?;
    client_for_send().await?.publish_valid_event(event).await
}

/// Publishes an untyped payload with the default client.
///
/// # Errors
/// See [`Client::publish`]; [`PublishError::NoClient`] (with the cause) when the default
/// client cannot connect.
pub async fn publish<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
) -> Result<MessageId, PublishError> {
    check_topic(topic)?;
    client_for_send().await?.publish(topic, payload).await
}

/// Calls with a typed request on the default client. An invalid request is refused before any
/// connection is tried.
///
/// # Errors
/// See [`Client::call_event`].
pub async fn call_event<E: Event>(
    request: &E,
    timeout: Option<Duration>,
) -> Result<E::Response, CallError> {
    validate_request(request)?;
    client_for_send()
        .await?
        .call_valid_event(request, timeout)
        .await
}

/// Calls with an untyped request on the default client; `timeout` `None` is the client's
/// [`Config::call_timeout`] (`TCHU_CALL_TIMEOUT`), as for [`Client::call`].
///
/// # Errors
/// See [`Client::call`].
pub async fn call<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
    timeout: Option<Duration>,
) -> Result<serde_json::Value, CallError> {
    check_topic(topic).map_err(PublishError::from)?;
    client_for_send().await?.call(topic, payload, timeout).await
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn nothing_goes_unencrypted_silently() {
        let plain = vec!["amqp://u:p@h/%2f".to_owned()];
        let tls = vec!["amqps://u:p@h/%2f".to_owned()];
        let with_ca = TlsConfig::new().with_ca_pem("-----BEGIN CERTIFICATE-----");
        assert!(check_tls(&plain, &TlsConfig::new()).is_ok());
        let err = check_tls(&plain, &with_ca).unwrap_err();
        assert!(err.to_string().contains("would not be encrypted"), "{err}");
        let r = check_tls(&tls, &with_ca);
        if cfg!(feature = "tls") {
            assert!(r.is_ok());
        } else {
            let err = r.unwrap_err();
            assert!(err.to_string().contains("`tls` feature"), "{err}");
        }
    }
}
