//! The baseline: minimal hand-written lapin code with the settings tchu uses (durable topic
//! exchange, durable queue, persistent messages, publisher confirms, manual acks, the same
//! prefetch). Consumers handle deliveries inline and acknowledge with `multiple: true`, at the
//! latest every 64 deliveries or whenever no further delivery is ready (the lapin notes' way).
//!
//! Two bodies ([`Body`]): plain JSON, or the byte-identical Celery task messages tchu sends by
//! default (the same headers, body and properties, from tchu's own encoder), so that the
//! framework's cost and the format's cost show as separate figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::{Counter, Res, WAIT};

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
const ACK_BATCH: u32 = 64;

/// What a raw publisher sends and a raw service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// The event JSON as the body, content type JSON, no headers.
    Plain,
    /// A Celery `tchu_tchu.dispatch_event` task, byte-identical to what tchu sends by default
    /// (`wire::celery::encode`: the lean encoding, `task` and `id` headers).
    Celery,
}

impl Body {
    /// The body and properties of one persistent event.
    fn message(self, topic: &str, json: Vec<u8>) -> (Vec<u8>, BasicProperties) {
        match self {
            Body::Plain => (
                json,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            ),
            Body::Celery => {
                let id = tchu_runtime::wire::new_message_id();
                let mut m = tchu_runtime::wire::celery::encode(topic, &json, &id, false);
                m.properties.persistent = true;
                let props = lapin_properties(&m.properties);
                (m.body, props)
            }
        }
    }

    /// The event of a received body (`args[0]` of a Celery task, parsed).
    fn event(self, body: &[u8]) -> Option<serde_json::Value> {
        match self {
            Body::Plain => serde_json::from_slice(body).ok(),
            Body::Celery => {
                let (args, _kwargs, _embed): (Vec<String>, serde_json::Value, serde_json::Value) =
                    serde_json::from_slice(body).ok()?;
                serde_json::from_str(args.first()?).ok()
            }
        }
    }

    /// The body and properties of one RPC request with correlation id `id` (not persistent,
    /// replies to direct reply-to, expiring after [`WAIT`]), as tchu's `call` sends it.
    fn request(self, topic: &str, json: Vec<u8>, id: &str) -> (Vec<u8>, BasicProperties) {
        let (body, props) = match self {
            Body::Plain => (
                json,
                BasicProperties::default()
                    .with_delivery_mode(1)
                    .with_content_type("application/json".into())
                    .with_correlation_id(id.into()),
            ),
            Body::Celery => {
                // The lean encoding leaves the correlation id to the caller, as tchu's `call`
                // sets it.
                let m = tchu_runtime::wire::celery::encode(topic, &json, id, true);
                let props = lapin_properties(&m.properties).with_correlation_id(id.into());
                (m.body, props)
            }
        };
        let props = props
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_expiration(WAIT.as_millis().to_string().into());
        (body, props)
    }

    /// The reply of a responder to a request `body` with correlation id `cid` (routing key
    /// `topic`): `{"echo": <request>}`, as plain JSON or as the Celery result meta tchu's
    /// dispatcher sends (`wire::celery::encode_reply`, handler `echo`).
    fn echo_reply(self, topic: &str, body: &[u8], cid: &str) -> (Vec<u8>, BasicProperties) {
        match self {
            Body::Plain => {
                let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let body =
                    serde_json::to_vec(&serde_json::json!({ "echo": req })).unwrap_or_default();
                let props = BasicProperties::default()
                    .with_delivery_mode(1)
                    .with_content_type("application/json".into())
                    .with_correlation_id(cid.into());
                (body, props)
            }
            Body::Celery => {
                // The request as tchu's handler sees it: `args[0]` without `_tchu_meta`.
                let req = match self.event(body) {
                    Some(serde_json::Value::Object(mut m)) => {
                        m.remove(tchu_runtime::wire::celery::META_KEY);
                        serde_json::Value::Object(m)
                    }
                    other => other.unwrap_or_default(),
                };
                let reply = tchu_runtime::wire::Reply::Ok(serde_json::json!({ "echo": req }));
                let m = tchu_runtime::wire::celery::encode_reply(topic, "echo", cid, &reply);
                let props = lapin_properties(&m.properties);
                (m.body, props)
            }
        }
    }

    /// The handler's value in a reply body (Celery: `result.results[0].result` of a
    /// `SUCCESS` result meta whose handler status is `success`).
    fn reply_value(self, body: &[u8]) -> Res<serde_json::Value> {
        match self {
            Body::Plain => Ok(serde_json::from_slice(body)?),
            Body::Celery => {
                let meta: CeleryMeta<'_> = serde_json::from_slice(body)?;
                match meta.result.results.into_iter().next() {
                    Some(h) if meta.status == "SUCCESS" && h.status == "success" => {
                        Ok(h.result.unwrap_or_default())
                    }
                    _ => Err(
                        format!("not a successful reply: {}", String::from_utf8_lossy(body)).into(),
                    ),
                }
            }
        }
    }
}

/// The part of Celery result meta a raw caller reads.
#[derive(serde::Deserialize)]
struct CeleryMeta<'a> {
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    result: CeleryDispatch<'a>,
}

#[derive(serde::Deserialize)]
struct CeleryDispatch<'a> {
    #[serde(borrow)]
    results: Vec<CeleryHandler<'a>>,
}

#[derive(serde::Deserialize)]
struct CeleryHandler<'a> {
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(default)]
    result: Option<serde_json::Value>,
}

/// tchu's properties as lapin's, converted the way tchu's AMQP broker does.
fn lapin_properties(p: &tchu_runtime::message::Properties) -> BasicProperties {
    let mut b = BasicProperties::default().with_delivery_mode(if p.persistent { 2 } else { 1 });
    if let Some(v) = &p.content_type {
        b = b.with_content_type(v.as_str().into());
    }
    if let Some(v) = &p.content_encoding {
        b = b.with_content_encoding(v.as_str().into());
    }
    if !p.headers.is_empty() {
        b = b.with_headers(field_table(&p.headers));
    }
    if let Some(v) = &p.correlation_id {
        b = b.with_correlation_id(v.as_str().into());
    }
    if let Some(v) = p.priority {
        b = b.with_priority(v);
    }
    b
}

fn field_table(h: &tchu_runtime::message::Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        t.insert(k.as_str().into(), amqp_value(v));
    }
    t
}

fn amqp_value(v: &tchu_runtime::message::HeaderValue) -> AMQPValue {
    use tchu_runtime::message::HeaderValue as H;
    match v {
        H::Null => AMQPValue::Void,
        H::Bool(b) => AMQPValue::Boolean(*b),
        H::Int(i) => match i32::try_from(*i) {
            Ok(i) => AMQPValue::LongInt(i),
            Err(_) => AMQPValue::LongLongInt(*i),
        },
        H::Float(f) => AMQPValue::Double(*f),
        H::String(s) => AMQPValue::LongString(s.as_str().into()),
        H::Bytes(b) => AMQPValue::LongString(b.clone().into()),
        H::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        H::Table(t) => AMQPValue::FieldTable(field_table(t)),
    }
}

/// Connects (inside the tokio runtime).
pub(crate) async fn connect(url: &str) -> Res<Connection> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

/// A channel in confirm mode.
pub(crate) async fn confirm_channel(conn: &Connection) -> Res<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Declares the durable topic exchange.
async fn declare_exchange(ch: &Channel, exchange: &str) -> Res<()> {
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares the durable topic exchange, a durable queue and one binding.
pub(crate) async fn declare(ch: &Channel, exchange: &str, queue: &str, pattern: &str) -> Res<()> {
    declare_exchange(ch, exchange).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Deletes queues and an exchange on a fresh connection; errors are ignored.
pub(crate) async fn cleanup(url: &str, queues: &[String], exchange: &str) {
    let Ok(conn) = connect(url).await else { return };
    for q in queues {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = ch.close(200, ShortString::from("done")).await;
        }
    }
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = ch.close(200, ShortString::from("done")).await;
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
}

/// A publisher: one connection, one confirm-mode channel.
#[derive(Debug)]
pub(crate) struct Publisher {
    conn: Connection,
    ch: Channel,
    exchange: String,
    body: Body,
}

impl Publisher {
    pub(crate) async fn connect(url: &str, exchange: &str, body: Body) -> Res<Self> {
        let conn = connect(url).await?;
        let ch = confirm_channel(&conn).await?;
        declare_exchange(&ch, exchange).await?;
        Ok(Publisher {
            conn,
            ch,
            exchange: exchange.to_owned(),
            body,
        })
    }

    /// Serializes and publishes one persistent event, waiting for its confirm.
    pub(crate) async fn publish(&self, topic: &str, event: &serde_json::Value) -> Res<()> {
        let (body, props) = self.body.message(topic, serde_json::to_vec(event)?);
        let confirm = self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                topic.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err("publish nacked".into()),
        }
    }

    pub(crate) async fn close(&self) {
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// The set-up of [`service`] and [`responder`]: a connection of their own, a channel with the
/// exchange, queue and binding declared and `prefetch` set, and a consumer on the queue tagged
/// `<tag>-<uuid>`.
async fn consume(
    url: &str,
    (exchange, queue, pattern): (&str, &str, &str),
    prefetch: u16,
    tag: &str,
) -> Res<(Connection, Channel, lapin::Consumer)> {
    let conn = connect(url).await?;
    let ch = conn.create_channel().await?;
    declare(&ch, exchange, queue, pattern).await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            ShortString::from(format!("{tag}-{}", uuid::Uuid::new_v4())),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, ch, consumer))
}

/// A running consumer ([`service`] or [`responder`]): its connection and the task that reads
/// it.
#[derive(Debug)]
pub(crate) struct Consuming {
    conn: Connection,
    task: JoinHandle<()>,
}

impl Consuming {
    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// A consuming service: its own connection and channel, prefetch, inline handling, multi-acks.
pub(crate) async fn service(
    url: &str,
    (exchange, queue, pattern): (&str, &str, &str),
    prefetch: u16,
    counter: Arc<Counter>,
    body: Body,
) -> Res<Consuming> {
    let (conn, ch, mut consumer) =
        consume(url, (exchange, queue, pattern), prefetch, "raw").await?;
    let task = tokio::spawn(async move {
        let multiple = BasicAckOptions { multiple: true };
        let mut last: Option<u64> = None;
        let mut unacked = 0u32;
        loop {
            let next = match consumer.next().now_or_never() {
                Some(n) => n,
                None => {
                    if let Some(tag) = last.take() {
                        let _ = ch.basic_ack(tag, multiple).await;
                        unacked = 0;
                    }
                    consumer.next().await
                }
            };
            let Some(Ok(d)) = next else { break };
            if let Some(v) = body.event(&d.data) {
                counter.hit(&v);
            }
            last = Some(d.delivery_tag);
            unacked += 1;
            if unacked >= ACK_BATCH {
                let _ = ch.basic_ack(d.delivery_tag, multiple).await;
                last = None;
                unacked = 0;
            }
        }
    });
    Ok(Consuming { conn, task })
}

/// An RPC responder: consumes requests (prefetch, manual acks), handles each in its own task,
/// replies to `reply_to` on a confirm-mode channel, waits for that confirm, then acks.
pub(crate) async fn responder(
    url: &str,
    (exchange, queue, pattern): (&str, &str, &str),
    prefetch: u16,
    body: Body,
) -> Res<Consuming> {
    let (conn, _ch, mut consumer) =
        consume(url, (exchange, queue, pattern), prefetch, "raw-rpc").await?;
    let reply_ch = confirm_channel(&conn).await?;
    let task = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let reply_ch = reply_ch.clone();
            tokio::spawn(async move {
                if let (Some(to), Some(cid)) =
                    (d.properties.reply_to(), d.properties.correlation_id())
                {
                    let (reply, props) =
                        body.echo_reply(d.routing_key.as_str(), &d.data, cid.as_str());
                    if let Ok(c) = reply_ch
                        .basic_publish(
                            "".into(),
                            to.clone(),
                            BasicPublishOptions::default(),
                            &reply,
                            props,
                        )
                        .await
                    {
                        let _ = c.await;
                    }
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            });
        }
    });
    Ok(Consuming { conn, task })
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// An RPC caller: one confirm-mode channel that publishes requests and consumes direct
/// reply-to (no-ack); replies are routed to callers by correlation id.
#[derive(Debug)]
pub(crate) struct Caller {
    conn: Connection,
    ch: Channel,
    exchange: String,
    pending: Pending,
    task: JoinHandle<()>,
    body: Body,
}

impl Caller {
    pub(crate) async fn connect(url: &str, exchange: &str, body: Body) -> Res<Self> {
        let conn = connect(url).await?;
        let ch = confirm_channel(&conn).await?;
        let mut replies = ch
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                ShortString::from(format!("raw-reply-{}", uuid::Uuid::new_v4())),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let p = Arc::clone(&pending);
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                let Some(cid) = d.properties.correlation_id() else {
                    continue;
                };
                let tx = p.lock().ok().and_then(|mut m| m.remove(cid.as_str()));
                if let Some(tx) = tx {
                    let _ = tx.send(d.data);
                }
            }
        });
        Ok(Caller {
            conn,
            ch,
            exchange: exchange.to_owned(),
            pending,
            task,
            body,
        })
    }

    /// One call: publish (mandatory, confirmed), then wait for the reply.
    pub(crate) async fn call(
        &self,
        topic: &str,
        req: &serde_json::Value,
    ) -> Res<serde_json::Value> {
        let id = match self.body {
            Body::Plain => uuid::Uuid::new_v4().to_string(),
            // Task ids as tchu makes them.
            Body::Celery => tchu_runtime::wire::new_message_id(),
        };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(id.clone(), tx);
        }
        let (body, props) = self.body.request(topic, serde_json::to_vec(req)?, &id);
        let confirm = self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                topic.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) => return Err("request returned: no route".into()),
            Confirmation::Nack(_) => return Err("request nacked".into()),
        }
        let reply = tokio::time::timeout(WAIT, rx)
            .await
            .map_err(|_| "rpc timeout")??;
        self.body.reply_value(&reply)
    }

    pub(crate) async fn close(self) {
        self.task.abort();
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}
