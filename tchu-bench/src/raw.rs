//! The baseline: minimal hand-written lapin code with the settings tchu uses (durable topic
//! exchange, durable queue, persistent messages, publisher confirms, manual acks, the same
//! prefetch). Consumers handle deliveries inline and acknowledge with `multiple: true`, at the
//! latest every 64 deliveries or whenever no further delivery is ready (the lapin notes' way).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::{Counter, Res, WAIT};

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
const ACK_BATCH: u32 = 64;

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

/// Declares the durable topic exchange, a durable queue and one binding.
pub(crate) async fn declare(ch: &Channel, exchange: &str, queue: &str, pattern: &str) -> Res<()> {
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
}

impl Publisher {
    pub(crate) async fn connect(url: &str, exchange: &str) -> Res<Self> {
        let conn = connect(url).await?;
        let ch = confirm_channel(&conn).await?;
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
        Ok(Publisher {
            conn,
            ch,
            exchange: exchange.to_owned(),
        })
    }

    /// Serializes and publishes one persistent event, waiting for its confirm.
    pub(crate) async fn publish(&self, topic: &str, event: &serde_json::Value) -> Res<()> {
        let body = serde_json::to_vec(event)?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
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

/// A consuming service: its own connection and channel, prefetch, inline handling, multi-acks.
#[derive(Debug)]
pub(crate) struct Service {
    conn: Connection,
    task: JoinHandle<()>,
}

impl Service {
    pub(crate) async fn start(
        url: &str,
        exchange: &str,
        queue: &str,
        pattern: &str,
        prefetch: u16,
        counter: Arc<Counter>,
    ) -> Res<Self> {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await?;
        declare(&ch, exchange, queue, pattern).await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                ShortString::from(format!("raw-{}", uuid::Uuid::new_v4())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
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
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&d.data) {
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
        Ok(Service { conn, task })
    }

    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// An RPC responder: consumes requests (prefetch, manual acks), handles each in its own task,
/// replies to `reply_to` on a confirm-mode channel, waits for that confirm, then acks.
#[derive(Debug)]
pub(crate) struct Responder {
    conn: Connection,
    task: JoinHandle<()>,
}

impl Responder {
    pub(crate) async fn start(
        url: &str,
        exchange: &str,
        queue: &str,
        pattern: &str,
        prefetch: u16,
    ) -> Res<Self> {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await?;
        declare(&ch, exchange, queue, pattern).await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let reply_ch = confirm_channel(&conn).await?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                ShortString::from(format!("raw-rpc-{}", uuid::Uuid::new_v4())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let reply_ch = reply_ch.clone();
                tokio::spawn(async move {
                    let req: serde_json::Value =
                        serde_json::from_slice(&d.data).unwrap_or_default();
                    let body =
                        serde_json::to_vec(&serde_json::json!({ "echo": req })).unwrap_or_default();
                    if let (Some(to), Some(cid)) =
                        (d.properties.reply_to(), d.properties.correlation_id())
                    {
                        let props = BasicProperties::default()
                            .with_delivery_mode(1)
                            .with_content_type("application/json".into())
                            .with_correlation_id(cid.clone());
                        if let Ok(c) = reply_ch
                            .basic_publish(
                                "".into(),
                                to.clone(),
                                BasicPublishOptions::default(),
                                &body,
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
        Ok(Responder { conn, task })
    }

    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
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
}

impl Caller {
    pub(crate) async fn connect(url: &str, exchange: &str) -> Res<Self> {
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
        })
    }

    /// One call: publish (mandatory, confirmed), then wait for the reply.
    pub(crate) async fn call(
        &self,
        topic: &str,
        req: &serde_json::Value,
    ) -> Res<serde_json::Value> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(id.clone(), tx);
        }
        let body = serde_json::to_vec(req)?;
        let props = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(id.as_str().into())
            .with_expiration(WAIT.as_millis().to_string().into());
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
        Ok(serde_json::from_slice(&reply)?)
    }

    pub(crate) async fn close(self) {
        self.task.abort();
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// Gives the broker a moment to settle between runs.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
