//! RabbitMQ over lapin. Owns the connection, one confirm-mode publish channel (which also
//! consumes direct reply-to), and one channel per consumer. Auto-recovery is on: after a
//! connection loss lapin reconnects and replays topology and consumers; a publish that failed
//! meanwhile is sent again once recovery completes (bounded by `publish_timeout`).
//!
//! lapin's recovery does not always complete (after a broker restart it was seen to stay in
//! `Reconnecting` for good), so when it has not recovered within [`RECOVERY_GRACE`],
//! [`AmqpBroker::reconnect`] replaces the connection and the publish channel with new ones;
//! the service's consume loop then declares its topology again and consumes anew.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::broker::{Confirm, InboundDelivery, QueueSpec, QueueType, ReplyConsumer};
use crate::error::BrokerError;
use crate::message::{HeaderValue, Headers, Message, Properties};

/// RabbitMQ's pseudo-queue for direct reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long lapin's own recovery gets before the connection is replaced.
pub(crate) const RECOVERY_GRACE: Duration = Duration::from_secs(3);
/// The longest a single publish waits for its confirm before the connection is checked (a
/// confirm in flight when the connection drops may never resolve).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Inner {
    conn: Connection,
    publish: Channel,
}

#[derive(Debug)]
struct Shared {
    url: String,
    name: String,
    publish_timeout: Duration,
    current: std::sync::RwLock<Arc<Inner>>,
    /// Held while a new connection is being made, so that only one is.
    reconnecting: tokio::sync::Mutex<()>,
}

/// A connection to RabbitMQ.
#[derive(Debug, Clone)]
pub(crate) struct AmqpBroker {
    shared: Arc<Shared>,
}

fn err(context: &str) -> impl FnOnce(lapin::Error) -> BrokerError + '_ {
    move |e| BrokerError::with_source(context.to_owned(), e)
}

impl AmqpBroker {
    /// Connects; `url` is an `amqp://` URL (never logged: it holds credentials).
    pub(crate) async fn connect(
        url: &str,
        name: &str,
        publish_timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let inner = open(url, name).await?;
        Ok(AmqpBroker {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                name: name.to_owned(),
                publish_timeout,
                current: std::sync::RwLock::new(Arc::new(inner)),
                reconnecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn inner(&self) -> Arc<Inner> {
        match self.shared.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Replaces the connection by a new one unless it is up (lapin recovered it) or was already
    /// replaced since `seen` was taken. One attempt; the caller retries with backoff.
    async fn replace(&self, seen: &Arc<Inner>) -> Result<(), BrokerError> {
        let _one = self.shared.reconnecting.lock().await;
        let current = self.inner();
        if !Arc::ptr_eq(&current, seen) || current.conn.status().connected() {
            return Ok(());
        }
        tracing::warn!("the broker connection did not recover; opening a new one");
        let fresh = open(&self.shared.url, &self.shared.name).await?;
        match self.shared.current.write() {
            Ok(mut g) => *g = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        // The old connection is abandoned: stop lapin's recovery of it.
        let old = Arc::clone(seen);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.conn.close(200, ShortString::from("replaced")),
            )
            .await;
        });
        tracing::info!("connected to the broker again");
        Ok(())
    }

    /// Makes sure the connection is up: waits up to [`RECOVERY_GRACE`] for lapin's recovery,
    /// then opens a new connection (one attempt).
    ///
    /// # Errors
    /// The broker cannot be reached.
    pub(crate) async fn reconnect(&self) -> Result<(), BrokerError> {
        let seen = self.inner();
        let deadline = tokio::time::Instant::now() + RECOVERY_GRACE;
        while !seen.conn.status().connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.replace(&seen).await
    }

    async fn with_channel<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        // Declarations can close a channel (precondition failures): use a short-lived one so the
        // publish channel is never lost to a bad declare.
        let ch = self
            .inner()
            .conn
            .create_channel()
            .await
            .map_err(err("cannot open a channel"))?;
        let r = f(ch.clone())
            .await
            .map_err(|e| BrokerError::with_source(what.to_owned(), e));
        if r.is_ok() {
            let _ = ch.close(200, ShortString::from("done")).await;
        }
        r
    }

    pub(crate) async fn declare_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.with_channel(
            &format!("cannot declare exchange `{name}`"),
            |ch| async move {
                ch.exchange_declare(
                    ShortString::from(name),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            },
        )
        .await
    }

    pub(crate) async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let mut args = FieldTable::default();
        if spec.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        if let Some((x, rk)) = &spec.dead_letter {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(x.as_str().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(rk.as_str().into()),
            );
        }
        if let Some(ttl) = spec.message_ttl {
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        }
        let what = format!(
            "cannot declare queue `{}` (if it exists with other arguments or another type, \
             delete it or migrate its messages first)",
            spec.name
        );
        self.with_channel(&what, |ch| async move {
            ch.queue_declare(
                ShortString::from(spec.name.as_str()),
                QueueDeclareOptions {
                    durable: spec.durable,
                    exclusive: spec.exclusive,
                    auto_delete: spec.auto_delete,
                    ..Default::default()
                },
                args,
            )
            .await
            .map(|_| ())
        })
        .await
    }

    pub(crate) async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        self.with_channel(
            &format!("cannot bind `{queue}` to `{exchange}` with `{key}`"),
            |ch| async move {
                ch.queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            },
        )
        .await
    }

    pub(crate) async fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        self.with_channel(
            &format!("cannot unbind `{queue}` from `{exchange}` (`{key}`)"),
            |ch| async move {
                ch.queue_unbind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    FieldTable::default(),
                )
                .await
            },
        )
        .await
    }

    pub(crate) async fn publish(
        &self,
        exchange: &str,
        msg: &Message,
        mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        let props = to_lapin_properties(&msg.properties);
        let deadline = tokio::time::Instant::now() + self.shared.publish_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let inner = self.inner();
            let attempt = async {
                let confirm = inner
                    .publish
                    .basic_publish(
                        exchange.into(),
                        msg.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory,
                            ..Default::default()
                        },
                        &msg.body,
                        props.clone(),
                    )
                    .await?;
                confirm.await
            };
            let attempt_deadline = deadline.min(tokio::time::Instant::now() + ATTEMPT_TIMEOUT);
            let res = tokio::time::timeout_at(attempt_deadline, attempt).await;
            match res {
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(BrokerError::new("no publisher confirm before the deadline"));
                }
                Err(_) => {
                    // The confirm may be lost with the connection: check it, then publish
                    // again (a duplicate at worst: delivery is at least once).
                    tracing::warn!("no publisher confirm yet; checking the connection");
                    if let Err(e) = self.reconnect().await {
                        tracing::warn!(error = %e, "reconnecting failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                    return Ok(Confirm::Ack);
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => return Ok(Confirm::Returned),
                Ok(Ok(Confirmation::Nack(_))) => return Ok(Confirm::Nack),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "publish failed; waiting for the connection to recover");
                    if tokio::time::Instant::now() >= deadline {
                        return Err(BrokerError::with_source(
                            "connection not recovered before the deadline",
                            e,
                        ));
                    }
                    let grace = deadline.min(tokio::time::Instant::now() + RECOVERY_GRACE);
                    let recovered = matches!(
                        tokio::time::timeout_at(grace, inner.publish.wait_for_recovery(e)).await,
                        Ok(Ok(()))
                    );
                    if !recovered && let Err(e) = self.replace(&inner).await {
                        tracing::warn!(error = %e, "reconnecting failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    pub(crate) async fn get(&self, queue: &str) -> Result<Option<Message>, BrokerError> {
        self.with_channel(&format!("cannot get from `{queue}`"), |ch| async move {
            let got = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await?;
            Ok(got.map(|g| from_lapin_delivery(&g.delivery)))
        })
        .await
    }

    pub(crate) async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<AmqpConsumer, BrokerError> {
        let ch = self
            .inner()
            .conn
            .create_channel()
            .await
            .map_err(err("cannot open a consumer channel"))?;
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(err("cannot set prefetch"))?;
        let consumer = ch
            .basic_consume(
                queue.into(),
                ShortString::from(format!("tchu-{}", uuid::Uuid::new_v4())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::with_source(format!("cannot consume `{queue}`"), e))?;
        Ok(AmqpConsumer {
            channel: ch,
            consumer,
        })
    }

    pub(crate) async fn reply_consumer(&self) -> Result<(String, ReplyConsumer), BrokerError> {
        let inner = self.inner();
        let consumer = inner
            .publish
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                ShortString::from(format!("tchu-reply-{}", uuid::Uuid::new_v4())),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err("cannot consume direct reply-to"))?;
        Ok((
            DIRECT_REPLY_TO.to_owned(),
            ReplyConsumer::Amqp(Box::new(AmqpConsumer {
                channel: inner.publish.clone(),
                consumer,
            })),
        ))
    }

    pub(crate) async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        self.with_channel(
            &format!("cannot inspect queue `{queue}`"),
            |ch| async move {
                let q = ch
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                Ok(q.message_count())
            },
        )
        .await
    }

    pub(crate) async fn purge_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        self.with_channel(&format!("cannot purge queue `{queue}`"), |ch| async move {
            ch.queue_purge(queue.into(), QueuePurgeOptions::default())
                .await
        })
        .await
    }

    pub(crate) async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.with_channel(&format!("cannot delete queue `{queue}`"), |ch| async move {
            ch.queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
        })
        .await
    }

    pub(crate) async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.with_channel(
            &format!("cannot delete exchange `{name}`"),
            |ch| async move {
                ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
                    .await
            },
        )
        .await
    }

    pub(crate) async fn close(&self) {
        let _ = self.inner().conn.close(200, ShortString::from("bye")).await;
    }

    /// Whether the connection is up (false while lapin recovers it).
    pub(crate) fn is_connected(&self) -> bool {
        self.inner().conn.status().connected()
    }
}

/// Deliveries from one queue.
#[derive(Debug)]
pub(crate) struct AmqpConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl AmqpConsumer {
    pub(crate) async fn next(&mut self) -> Option<Result<InboundDelivery, BrokerError>> {
        let d = self.consumer.next().await?;
        Some(match d {
            Ok(d) => Ok(InboundDelivery {
                message: from_lapin_delivery(&d),
                redelivered: d.redelivered,
                acker: crate::broker::Acker::Amqp(AmqpAcker(d.acker)),
            }),
            Err(e) => Err(BrokerError::with_source("consumer error", e)),
        })
    }

    /// Closes the consumer's channel: unsettled deliveries return to the queue.
    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("shutdown")).await;
    }
}

/// Settles one AMQP delivery.
#[derive(Debug)]
pub(crate) struct AmqpAcker(lapin::Acker);

impl AmqpAcker {
    pub(crate) async fn ack(&self) -> Result<(), BrokerError> {
        self.0
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(err("ack failed"))
    }

    pub(crate) async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        self.0
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(err("nack failed"))
    }
}

/// Opens a connection with auto-recovery and its confirm-mode publish channel.
async fn open(url: &str, name: &str) -> Result<Inner, BrokerError> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.to_owned()))
        .enable_auto_recover();
    let conn = Connection::connect(url, props)
        .await
        .map_err(err("cannot connect to the broker"))?;
    let publish = conn
        .create_channel()
        .await
        .map_err(err("cannot open a channel"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("cannot enable publisher confirms"))?;
    Ok(Inner { conn, publish })
}

fn from_lapin_delivery(d: &LapinDelivery) -> Message {
    let p = &d.properties;
    Message {
        routing_key: d.routing_key.as_str().to_owned(),
        properties: Properties {
            content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
            content_encoding: p.content_encoding().as_ref().map(|s| s.as_str().to_owned()),
            headers: p.headers().as_ref().map(from_table).unwrap_or_default(),
            persistent: *p.delivery_mode() == Some(2),
            correlation_id: p.correlation_id().as_ref().map(|s| s.as_str().to_owned()),
            reply_to: p.reply_to().as_ref().map(|s| s.as_str().to_owned()),
            expiration: p
                .expiration()
                .as_ref()
                .and_then(|s| s.as_str().parse::<u64>().ok())
                .map(Duration::from_millis),
            message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            timestamp: *p.timestamp(),
            priority: *p.priority(),
        },
        body: d.data.clone(),
    }
}

fn from_table(t: &FieldTable) -> Headers {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_value(v)))
        .collect()
}

fn from_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::Float(f) => HeaderValue::Float((*f).into()),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => {
            HeaderValue::Float(f64::from(d.value) / 10f64.powi(d.scale.into()))
        }
        AMQPValue::ShortString(s) => HeaderValue::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(s) => HeaderValue::String(s.to_owned()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(from_value).collect())
        }
        AMQPValue::FieldTable(t) => HeaderValue::Table(from_table(t)),
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => HeaderValue::Null,
    }
}

fn to_value(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::Null => AMQPValue::Void,
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Int(i) => match i32::try_from(*i) {
            Ok(i) => AMQPValue::LongInt(i),
            Err(_) => AMQPValue::LongLongInt(*i),
        },
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::String(s) => AMQPValue::LongString(s.as_str().into()),
        HeaderValue::Bytes(b) => AMQPValue::LongString(b.clone().into()),
        HeaderValue::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(to_value).collect::<Vec<_>>()))
        }
        HeaderValue::Table(t) => AMQPValue::FieldTable(to_table(t)),
    }
}

fn to_table(h: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        t.insert(k.as_str().into(), to_value(v));
    }
    t
}

fn to_lapin_properties(p: &Properties) -> BasicProperties {
    let mut b = BasicProperties::default().with_delivery_mode(if p.persistent { 2 } else { 1 });
    if let Some(v) = &p.content_type {
        b = b.with_content_type(v.as_str().into());
    }
    if let Some(v) = &p.content_encoding {
        b = b.with_content_encoding(v.as_str().into());
    }
    if !p.headers.is_empty() {
        b = b.with_headers(to_table(&p.headers));
    }
    if let Some(v) = &p.correlation_id {
        b = b.with_correlation_id(v.as_str().into());
    }
    if let Some(v) = &p.reply_to {
        b = b.with_reply_to(v.as_str().into());
    }
    if let Some(v) = p.expiration {
        b = b.with_expiration(v.as_millis().to_string().into());
    }
    if let Some(v) = &p.message_id {
        b = b.with_message_id(v.as_str().into());
    }
    if let Some(v) = p.timestamp {
        b = b.with_timestamp(v);
    }
    if let Some(v) = p.priority {
        b = b.with_priority(v);
    }
    b
}
