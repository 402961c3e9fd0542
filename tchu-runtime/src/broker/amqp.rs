//! RabbitMQ over lapin. Owns the connection, one confirm-mode publish channel (which also
//! consumes direct reply-to), and one channel per consumer. Auto-recovery is on: after a
//! connection loss lapin reconnects and replays topology and consumers; a publish that failed
//! meanwhile is sent again once recovery completes (bounded by `publish_timeout`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
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

#[derive(Debug)]
struct Inner {
    conn: Connection,
    publish: Channel,
    publish_timeout: Duration,
}

/// A connection to RabbitMQ.
#[derive(Debug, Clone)]
pub(crate) struct AmqpBroker {
    inner: Arc<Inner>,
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
        Ok(AmqpBroker {
            inner: Arc::new(Inner {
                conn,
                publish,
                publish_timeout,
            }),
        })
    }

    async fn with_channel<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        // Declarations can close a channel (precondition failures): use a short-lived one so the
        // publish channel is never lost to a bad declare.
        let ch = self
            .inner
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
        let deadline = tokio::time::Instant::now() + self.inner.publish_timeout;
        loop {
            let attempt = async {
                let confirm = self
                    .inner
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
            let res = tokio::time::timeout_at(deadline, attempt).await;
            match res {
                Err(_) => return Err(BrokerError::new("no publisher confirm before the deadline")),
                Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                    return Ok(Confirm::Ack);
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => return Ok(Confirm::Returned),
                Ok(Ok(Confirmation::Nack(_))) => return Ok(Confirm::Nack),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "publish failed; waiting for the connection to recover");
                    match tokio::time::timeout_at(deadline, self.inner.publish.wait_for_recovery(e))
                        .await
                    {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => return Err(BrokerError::with_source("publish failed", e)),
                        Err(_) => {
                            return Err(BrokerError::new(
                                "connection not recovered before the deadline",
                            ));
                        }
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
            Ok(got.map(|mut g| {
                let body = std::mem::take(&mut g.delivery.data);
                from_lapin_delivery(&g.delivery, body)
            }))
        })
        .await
    }

    pub(crate) async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<AmqpConsumer, BrokerError> {
        let ch = self
            .inner
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
        let consumer = self
            .inner
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
            ReplyConsumer::Amqp(AmqpConsumer {
                channel: self.inner.publish.clone(),
                consumer,
            }),
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
        let _ = self.inner.conn.close(200, ShortString::from("bye")).await;
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
            Ok(mut d) => Ok(InboundDelivery {
                message: {
                    let body = std::mem::take(&mut d.data);
                    from_lapin_delivery(&d, body)
                },
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
    /// Queues the ack without waiting for the I/O thread to write it: lapin hands the frame
    /// to its I/O loop on the first poll, and waiting for the write costs a cross-thread
    /// wake-up per delivery. A lost ack (connection gone) means a redelivery, as before.
    pub(crate) async fn ack(&self) -> Result<(), BrokerError> {
        match self.0.ack(BasicAckOptions::default()).now_or_never() {
            Some(r) => r.map(|_| ()).map_err(err("ack failed")),
            None => Ok(()),
        }
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

fn from_lapin_delivery(d: &LapinDelivery, body: Vec<u8>) -> Message {
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
        body,
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
