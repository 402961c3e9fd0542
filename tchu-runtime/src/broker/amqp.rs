//! RabbitMQ over lapin. Owns the connection, one confirm-mode publish channel (which also
//! consumes direct reply-to), a small pool of confirm channels for mandatory publishes (see
//! [`MandatoryPool`]), and one channel per consumer. Auto-recovery is on: after a
//! connection loss lapin reconnects and replays topology and consumers; a publish that failed
//! meanwhile is sent again once recovery completes (bounded by `publish_timeout`).
//!
//! lapin's recovery does not always complete (after a broker restart it was seen to stay in
//! `Reconnecting` for good), so when it has not recovered within [`RECOVERY_GRACE`],
//! [`AmqpBroker::reconnect`] replaces the connection and the publish channel with new ones;
//! the service's consume loop then declares its topology again and consumes anew.
//!
//! Several URLs (the nodes of a cluster) are tried in order: the first that answers is used, and
//! a replacement connection tries the nodes after the current one first, so a client fails over
//! to a live node when its node stops.
//!
//! RPC requests go out on the publish channel too, pipelined and mandatory. lapin hands a
//! channel's `basic.return`s to whichever confirm completes next, so a returned request is
//! recognised by its `correlation_id`, whichever publish's confirm carries it, and handed to the
//! client's [`ReplySink`] with the replies (see [`AmqpBroker::publish_request`]). Replies are
//! handed to that sink by the publish channel's reply consumer, on its own task; a replacement
//! connection subscribes its reply consumer before it is used for publishing (a request
//! published with `reply_to` and no reply consumer closes the channel).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
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

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

use crate::broker::{Confirm, InboundDelivery, QueueSpec, QueueType, ReplyEvent, ReplySink};
use crate::error::BrokerError;
use crate::message::{HeaderValue, Headers, Message, Properties};
use crate::tls::{ClientCert, TlsConfig};
use crate::url::redact;

/// RabbitMQ's pseudo-queue for direct reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long lapin's own recovery gets before the connection is replaced.
pub(crate) const RECOVERY_GRACE: Duration = Duration::from_secs(3);
/// The longest a single publish waits for its confirm before the connection is checked (a
/// confirm in flight when the connection drops may never resolve).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an abandoned connection is watched, to close it if lapin recovers it.
const ABANDONED_WATCH: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Inner {
    conn: Connection,
    publish: Channel,
    /// Index in `Shared::urls` of the node this connection is to.
    node: usize,
    /// Channels for mandatory publishes (see [`MandatoryPool`]).
    mandatory: MandatoryPool,
}

#[derive(Debug)]
struct Shared {
    /// One URL per node, tried in order.
    urls: Vec<String>,
    name: String,
    publish_timeout: Duration,
    /// The longest one node may take to accept a connection before the next one is tried.
    connect_timeout: Duration,
    /// For `amqps://` nodes.
    tls: TlsConfig,
    current: std::sync::RwLock<Arc<Inner>>,
    /// Held while a new connection is being made, so that only one is.
    reconnecting: tokio::sync::Mutex<()>,
    /// Where direct reply-to replies and returned requests go, once RPC is used.
    replies: std::sync::Mutex<Option<ReplySink>>,
}

/// The timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// The longest one node may take to accept a connection.
    pub(crate) connect: Duration,
    /// The longest a publish waits for its confirm, reconnection included.
    pub(crate) publish: Duration,
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
    /// Connects to the first of `urls` (`amqp://` or `amqps://` URLs, one per node; logged
    /// only redacted) that answers.
    pub(crate) async fn connect(
        urls: &[String],
        name: &str,
        timeouts: Timeouts,
        tls: &TlsConfig,
    ) -> Result<Self, BrokerError> {
        let inner = open_any(urls, 0, name, tls, timeouts.connect, None).await?;
        Ok(AmqpBroker {
            shared: Arc::new(Shared {
                urls: urls.to_vec(),
                name: name.to_owned(),
                publish_timeout: timeouts.publish,
                connect_timeout: timeouts.connect,
                tls: tls.clone(),
                current: std::sync::RwLock::new(Arc::new(inner)),
                reconnecting: tokio::sync::Mutex::new(()),
                replies: std::sync::Mutex::new(None),
            }),
        })
    }

    fn reply_sender(&self) -> Option<ReplySink> {
        match self.shared.replies.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
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
        let fresh = open_any(
            &self.shared.urls,
            seen.node + 1,
            &self.shared.name,
            &self.shared.tls,
            self.shared.connect_timeout,
            self.reply_sender(),
        )
        .await?;
        match self.shared.current.write() {
            Ok(mut g) => *g = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        // The old connection is abandoned, but lapin goes on recovering it (and would replay its
        // consumers when its node comes back, holding deliveries nobody reads): close it as
        // soon as it is up again, or stop watching once lapin gave up on it.
        let old = Arc::clone(seen);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + ABANDONED_WATCH;
            while tokio::time::Instant::now() < until {
                let status = old.conn.status();
                if status.closed() || status.errored() {
                    return;
                }
                if status.connected() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        old.conn.close(200, ShortString::from("replaced")),
                    )
                    .await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
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
        self.reconnect_within(RECOVERY_GRACE).await
    }

    /// [`Self::reconnect`], giving lapin's recovery only `grace` (the caller already waited).
    pub(crate) async fn reconnect_within(&self, grace: Duration) -> Result<(), BrokerError> {
        let seen = self.inner();
        let deadline = tokio::time::Instant::now() + grace;
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
        self.with_channel_map(f, |e| BrokerError::with_source(what.to_owned(), e))
            .await
    }

    /// [`Self::with_channel`] with a custom mapping of the error.
    async fn with_channel_map<T, F, Fut, M>(&self, f: F, map: M) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
        M: FnOnce(lapin::Error) -> BrokerError,
    {
        // Declarations can close a channel (precondition failures): use a short-lived one so the
        // publish channel is never lost to a bad declare.
        let ch = self
            .inner()
            .conn
            .create_channel()
            .await
            .map_err(err("cannot open a channel"))?;
        let r = f(ch.clone()).await.map_err(map);
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
            if spec.dead_letter.is_some() {
                // Quorum queues dead-letter at most once by default: a retry whose TTL expires
                // while the target is unavailable would be lost. At least once needs
                // reject-publish overflow (RabbitMQ 3.10+).
                args.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString("at-least-once".into()),
                );
                args.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString("reject-publish".into()),
                );
            }
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
        if let Some(unused) = spec.expires {
            let ms = i64::try_from(unused.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        self.with_channel_map(
            |ch| async move {
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
            },
            |e| {
                if is_precondition_failed(&e) {
                    BrokerError::queue_mismatch(&spec.name, spec.queue_type, e)
                } else {
                    BrokerError::with_source(format!("cannot declare queue `{}`", spec.name), e)
                }
            },
        )
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
        let route = if mandatory {
            Route::Mandatory
        } else {
            Route::Plain
        };
        self.publish_as(exchange, msg, route).await
    }

    /// Publishes an RPC request on the publish channel, mandatory, pipelined with every other
    /// publish of the connection: no channel of its own, no wait for a free one.
    ///
    /// [`Confirm::Returned`] when the return that came with this publish's confirm is this
    /// request's (same `correlation_id`). A return that came with it but is another request's
    /// goes to the reply sink as [`ReplyEvent::Returned`], and so does this request's return when
    /// it came with another publish's confirm: the caller waits on its pending call for both.
    pub(crate) async fn publish_request(
        &self,
        exchange: &str,
        msg: &Message,
    ) -> Result<Confirm, BrokerError> {
        self.publish_as(exchange, msg, Route::Request).await
    }

    /// Hands a returned message that came with some publish's confirm on the publish channel to
    /// the reply sink, as the return of the request with its correlation id.
    fn route_return(&self, r: &lapin::message::BasicReturnMessage) {
        let cid = r.delivery.properties.correlation_id().as_ref();
        match (cid, self.reply_sender()) {
            (Some(cid), Some(sink)) => {
                sink.send(ReplyEvent::Returned {
                    correlation_id: cid.as_str().to_owned(),
                });
            }
            _ => tracing::error!(
                routing_key = %r.delivery.routing_key,
                "a message without a pending call was returned on the publish channel"
            ),
        }
    }

    async fn publish_as(
        &self,
        exchange: &str,
        msg: &Message,
        route: Route,
    ) -> Result<Confirm, BrokerError> {
        let mandatory = route == Route::Mandatory;
        // The first attempt takes these; a retry (rare) builds them again instead of every
        // attempt cloning them.
        let mut first_props = Some(to_lapin_properties(&msg.properties));
        let deadline = tokio::time::Instant::now() + self.shared.publish_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let inner = self.inner();
            // A mandatory publish waits for a channel of its own (within the deadline, not the
            // attempt's timeout: waiting for a free channel says nothing about the connection).
            let permit = if mandatory {
                match tokio::time::timeout_at(deadline, inner.mandatory.permits.acquire()).await {
                    Ok(Ok(p)) => Some(p),
                    Ok(Err(_)) => {
                        return Err(BrokerError::new("the mandatory channels are closed"));
                    }
                    Err(_) => {
                        return Err(BrokerError::new("no publisher confirm before the deadline"));
                    }
                }
            } else {
                None
            };
            let props = first_props
                .take()
                .unwrap_or_else(|| to_lapin_properties(&msg.properties));
            let attempt = async {
                if mandatory {
                    return self.publish_mandatory(&inner, exchange, msg, props).await;
                }
                let pending = inner
                    .publish
                    .basic_publish(
                        exchange.into(),
                        msg.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: route == Route::Request,
                            ..Default::default()
                        },
                        &msg.body,
                        props,
                    )
                    .await?;
                let confirm = CarriedReturns::new(self, pending).await?;
                Ok(match confirm {
                    Confirmation::Nack(r) => {
                        if let Some(r) = r {
                            self.route_return(&r);
                        }
                        Confirm::Nack
                    }
                    Confirmation::Ack(Some(r)) => {
                        if route == Route::Request && is_request_return(&r, msg) {
                            Confirm::Returned
                        } else {
                            self.route_return(&r);
                            Confirm::Ack
                        }
                    }
                    Confirmation::Ack(None) | Confirmation::NotRequested => Confirm::Ack,
                })
            };
            let attempt_deadline = deadline.min(tokio::time::Instant::now() + ATTEMPT_TIMEOUT);
            let res = tokio::time::timeout_at(attempt_deadline, attempt).await;
            drop(permit);
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
                Ok(Ok(confirm)) => return Ok(confirm),
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

    /// One mandatory publish on a pool channel of its own: at most one publish is in flight on
    /// that channel, so a `basic.return` (which the broker sends before the publish's confirm)
    /// can only be this publish's. The channel goes back to the pool only after a clean
    /// confirm; on an error, a timeout (the future dropped) or a returned message that is not
    /// this one, it is closed, so that nothing late from it reaches a later publish.
    async fn publish_mandatory(
        &self,
        inner: &Inner,
        exchange: &str,
        msg: &Message,
        props: BasicProperties,
    ) -> Result<Confirm, lapin::Error> {
        let lease = inner.mandatory.lease(&inner.conn).await?;
        let channel = lease.channel.clone();
        let confirm = channel
            .basic_publish(
                exchange.into(),
                msg.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &msg.body,
                props,
            )
            .await?
            .await?;
        let returned = match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => {
                lease.release();
                return Ok(Confirm::Ack);
            }
            Confirmation::Nack(r) => {
                if r.is_none_or(|r| is_return_of(&r, exchange, msg)) {
                    lease.release();
                }
                return Ok(Confirm::Nack);
            }
            Confirmation::Ack(Some(r)) => r,
        };
        if is_return_of(&returned, exchange, msg) {
            lease.release();
        } else {
            // Cannot happen with one publish in flight per channel; if it does, this publish's
            // fate is unknown: report it returned (the caller declares and sends again, or
            // reports no route: a duplicate at worst, never a silent loss) and drop the channel.
            tracing::error!(
                message_id = msg.properties.message_id.as_deref().unwrap_or(""),
                routing_key = %msg.routing_key,
                returned_message_id = returned
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map_or("", |s| s.as_str()),
                returned_routing_key = %returned.delivery.routing_key,
                "the broker returned a message that is not the one published; \
                 reporting the publish as returned"
            );
        }
        Ok(Confirm::Returned)
    }

    /// Opens a channel of its own for reading `queue` with basic.get and manual acks.
    pub(crate) async fn browse(&self, queue: &str) -> Result<AmqpBrowser, BrokerError> {
        let channel = self
            .inner()
            .conn
            .create_channel()
            .await
            .map_err(err("cannot open a channel"))?;
        Ok(AmqpBrowser {
            channel,
            queue: queue.to_owned(),
        })
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

    /// Subscribes direct reply-to on the publish channel (once per connection: a replacement
    /// connection subscribes again by itself); every reply and returned request goes to `sink`.
    pub(crate) async fn reply_consumer(&self, sink: ReplySink) -> Result<String, BrokerError> {
        // Under the reconnect lock, so that a replacement cannot slip in between.
        let _one = self.shared.reconnecting.lock().await;
        match self.shared.replies.lock() {
            Ok(mut g) => *g = Some(sink.clone()),
            Err(p) => *p.into_inner() = Some(sink.clone()),
        }
        subscribe_replies(&self.inner().publish, sink).await?;
        Ok(DIRECT_REPLY_TO.to_owned())
    }

    pub(crate) async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        self.with_channel(
            &format!("cannot inspect queue `{queue}`"),
            |ch| async move { Ok(inspect(&ch, queue).await?.message_count()) },
        )
        .await
    }

    /// Consumers of `queue`, `None` when it does not exist (passive declare).
    pub(crate) async fn consumer_count(&self, queue: &str) -> Result<Option<u32>, BrokerError> {
        self.with_channel_map(
            |ch| async move {
                match inspect(&ch, queue).await {
                    Ok(q) => Ok(Some(q.consumer_count())),
                    Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => Ok(None),
                    Err(e) => Err(e),
                }
            },
            |e| BrokerError::with_source(format!("cannot inspect queue `{queue}`"), e),
        )
        .await
    }

    /// Takes the lock `name`: an exclusive queue of this connection (so a crash releases it).
    /// `false` when another connection holds it.
    pub(crate) async fn try_lock(&self, name: &str) -> Result<bool, BrokerError> {
        self.with_channel_map(
            |ch| async move {
                let q = ch
                    .queue_declare(
                        name.into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                match q {
                    Ok(_) => Ok(true),
                    Err(e) if is_soft(&e, AMQPSoftError::RESOURCELOCKED) => Ok(false),
                    Err(e) => Err(e),
                }
            },
            |e| BrokerError::with_source(format!("cannot take the lock `{name}`"), e),
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

    /// Deletes `queue` unless it has consumers; `true` when it was deleted, `false` when it is
    /// in use or does not exist.
    pub(crate) async fn delete_queue_if_unused(&self, queue: &str) -> Result<bool, BrokerError> {
        self.with_channel_map(
            |ch| async move {
                let r = ch
                    .queue_delete(
                        queue.into(),
                        QueueDeleteOptions {
                            if_unused: true,
                            ..Default::default()
                        },
                    )
                    .await;
                match r {
                    Ok(_) => Ok(true),
                    Err(e)
                        if is_precondition_failed(&e) || is_soft(&e, AMQPSoftError::NOTFOUND) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            },
            |e| BrokerError::with_source(format!("cannot delete queue `{queue}`"), e),
        )
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

/// Reads one queue with basic.get and manual acks on a channel of its own: what is not acked
/// returns to the queue when the channel closes (or the connection, or the process, dies).
#[derive(Debug)]
pub(crate) struct AmqpBrowser {
    channel: Channel,
    queue: String,
}

impl AmqpBrowser {
    pub(crate) async fn next(&mut self) -> Result<Option<InboundDelivery>, BrokerError> {
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| {
                BrokerError::with_source(format!("cannot get from `{}`", self.queue), e)
            })?;
        Ok(got.map(|g| {
            let mut d = g.delivery;
            let body = std::mem::take(&mut d.data);
            InboundDelivery {
                message: from_lapin_delivery(&d, body),
                redelivered: d.redelivered,
                acker: crate::broker::Acker::Amqp(AmqpAcker(d.acker)),
            }
        }))
    }

    /// Closes the channel: everything read and not acked returns to the queue.
    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("done")).await;
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

    /// Acks and waits for the frame to be written. lapin runs each ack as its own task, so
    /// acks that are not awaited may reach the broker out of order: harmless for single acks
    /// of distinct deliveries, fatal for a `multiple` ack overtaken by a single one (the broker
    /// closes the channel: "unknown delivery tag").
    pub(crate) async fn ack_in_order(&self, multiple: bool) -> Result<(), BrokerError> {
        self.0
            .ack(BasicAckOptions { multiple })
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

/// Consumes direct reply-to on `publish` and hands every reply to `sink` until the channel's
/// consumer ends (its connection replaced) or nobody listens any more.
async fn subscribe_replies(publish: &Channel, sink: ReplySink) -> Result<(), BrokerError> {
    let mut consumer = publish
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
    tokio::spawn(async move {
        while let Some(d) = consumer.next().await {
            match d {
                Ok(mut d) => {
                    let body = std::mem::take(&mut d.data);
                    if !sink.send(ReplyEvent::Reply(from_lapin_delivery(&d, body))) {
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reply consumer error"),
            }
        }
        tracing::debug!("reply consumer of a connection ended");
    });
    Ok(())
}

/// A passive declare of `queue`: its message and consumer counts, without creating it (a
/// missing queue fails with `NOT_FOUND`, which closes the channel).
async fn inspect(ch: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Whether a declare was refused because the entity exists with other arguments.
fn is_soft(e: &lapin::Error, kind: AMQPSoftError) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p) if p.kind() == &AMQPErrorKind::Soft(kind)
    )
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// Opens a connection to the first node that answers, trying `urls` in order from `start`
/// (wrapping around). With `replies`, direct reply-to is subscribed on the new publish channel
/// before it is returned.
async fn open_any(
    urls: &[String],
    start: usize,
    name: &str,
    tls: &TlsConfig,
    connect_timeout: Duration,
    replies: Option<ReplySink>,
) -> Result<Inner, BrokerError> {
    let mut failures = Vec::new();
    for k in 0..urls.len() {
        let node = (start + k) % urls.len();
        let url = &urls[node];
        let attempt = async {
            let mut inner = open(url, name, tls, connect_timeout).await?;
            inner.node = node;
            if let Some(tx) = &replies {
                subscribe_replies(&inner.publish, tx.clone()).await?;
            }
            Ok::<_, BrokerError>(inner)
        };
        match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(Ok(inner)) => {
                if urls.len() > 1 {
                    tracing::info!(node = %redact(url), "connected to broker node");
                }
                return Ok(inner);
            }
            Ok(Err(e)) => {
                // Debug: the error returned lists every node and why.
                tracing::debug!(node = %redact(url), error = %e, "cannot connect to broker node");
                failures.push(e);
            }
            Err(_) => {
                tracing::debug!(node = %redact(url), "connecting to broker node timed out");
                failures.push(BrokerError::new(format!(
                    "cannot connect to the broker at {}: no answer within {connect_timeout:?} \
                     (TCHU_CONNECT_TIMEOUT)",
                    redact(url)
                )));
            }
        }
    }
    Err(match failures.len() {
        0 => BrokerError::new("no broker URL"),
        1 => failures.remove(0),
        n => {
            let each: Vec<String> = failures
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{}) {}", i + 1, crate::error::chain(e)))
                .collect();
            BrokerError::new(format!(
                "cannot connect to any of the {n} broker nodes: {}",
                each.join("; ")
            ))
        }
    })
}

/// lapin's TLS settings for `tls` (the same for every node; lapin keeps them for recovery).
fn lapin_tls(tls: &TlsConfig) -> Result<lapin::tcp::OwnedTLSConfig, BrokerError> {
    let cert_chain = match &tls.ca_pem {
        Some(pem) => Some(String::from_utf8(pem.clone()).map_err(|_| {
            BrokerError::new("the TLS CA certificates are not PEM text (not UTF-8)")
        })?),
        None => None,
    };
    let identity = tls.client_cert.as_ref().map(|c| match c {
        ClientCert::Pem { cert_chain, key } => lapin::tcp::OwnedIdentity::PKCS8 {
            pem: cert_chain.clone(),
            key: key.clone(),
        },
        ClientCert::Pkcs12 { der, password } => lapin::tcp::OwnedIdentity::PKCS12 {
            der: der.clone(),
            password: password.clone(),
        },
    });
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Why a TLS connection failed, from the error's text (rustls' errors travel as text inside an
/// I/O error: its words are the only handle). `None` when it does not look like a TLS failure.
fn tls_hint(text: &str) -> Option<&'static str> {
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        Some(
            "the server's certificate is not signed by a trusted CA (set TCHU_TLS_CA_FILE to \
             the CA that signed it)",
        )
    } else if text.contains("not valid for name") || text.contains("NotValidForName") {
        Some(
            "the server's certificate is not valid for the host name in the URL (connect with \
             a name the certificate was issued for)",
        )
    } else if text.contains("CertificateRequired")
        || text.contains("HandshakeFailure")
        || text.contains("BadCertificate")
        || text.contains("UnknownCA")
    {
        Some(
            "the server requires a client certificate it accepts (set TCHU_TLS_CERT_FILE and \
             TCHU_TLS_KEY_FILE)",
        )
    } else if text.contains("invalid peer certificate") {
        Some("the server's certificate was not accepted")
    } else if text.contains("CorruptMessage") || text.contains("InvalidContentType") {
        Some("the server did not answer with TLS (is this an amqp:// port?)")
    } else {
        None
    }
}

/// The error of a failed connect to `url`, with a hint when the TLS handshake failed.
fn connect_error(url: &str, e: lapin::Error) -> BrokerError {
    let node = redact(url);
    match tls_hint(&e.to_string()).filter(|_| url.starts_with("amqps://")) {
        Some(h) => BrokerError::with_source(format!("TLS connection to {node} failed: {h}"), e),
        // The cause in the message itself: logs and `Display` show it too.
        None => BrokerError::new(format!(
            "cannot connect to the broker at {node}: {}",
            e.to_string().replace(url, &node)
        )),
    }
}

/// How long the TLS check of [`check_tls`] may take before it is left to lapin.
#[cfg(feature = "tls")]
const TLS_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// For `amqps://`, one TLS connection made outside lapin, which sends the AMQP protocol header
/// and reads the server's first bytes. lapin retries every failure of its own connects until
/// tchu's connect timeout and then the cause is lost; this way a server certificate the client
/// refuses, or a client certificate the server refuses (TLS 1.3 tells that only after the
/// handshake), fails at once and says why. Anything else (a refused TCP connection, a timeout)
/// is left to lapin's connect and its retries.
#[cfg(feature = "tls")]
async fn check_tls(url: &str, tls: &lapin::tcp::OwnedTLSConfig) -> Result<(), BrokerError> {
    use futures_util::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use lapin::tcp::AMQPUriTcpExt as _;

    if !url.starts_with("amqps://") {
        return Ok(());
    }
    // Parse and runtime errors are reported by lapin's own connect.
    let (Ok(uri), Ok(runtime)) = (
        url.parse::<lapin::uri::AMQPUri>(),
        lapin::runtime::default_runtime(),
    ) else {
        return Ok(());
    };
    // The error, and whether the handshake had completed.
    let probe = async {
        let mut stream = uri
            .connect_with_config_async(tls.as_ref(), &runtime)
            .await
            .map_err(|e| (e, false))?;
        let after = async {
            stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
            stream.flush().await?;
            let mut first = [0u8; 1];
            if stream.read(&mut first).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            Ok(())
        };
        after.await.map_err(|e| (e, true))
    };
    let Ok(Err((e, handshake_done))) = tokio::time::timeout(TLS_CHECK_TIMEOUT, probe).await else {
        return Ok(());
    };
    let hint = match tls_hint(&e.to_string()) {
        Some(h) => h,
        // Dropped right after a good handshake, before any AMQP: with TLS 1.3 that is how a
        // refused client certificate shows when the alert is lost to the reset.
        None if handshake_done => {
            "the server closed the connection right after the TLS handshake; it probably \
             requires a client certificate it accepts (set TCHU_TLS_CERT_FILE and \
             TCHU_TLS_KEY_FILE)"
        }
        None => return Ok(()),
    };
    Err(BrokerError::with_source(
        format!("TLS connection to {} failed: {hint}", redact(url)),
        e,
    ))
}

/// Resolves the host of `url` and opens (and closes at once) a plain TCP connection to it,
/// within `timeout`: lapin retries failed TCP connects with backoff, which turns a refused port
/// into a long wait ending in "timed out" (and leaves its I/O thread retrying). This way an
/// unknown host, a refused connection and a silent host each fail at once with their cause.
async fn probe_tcp(url: &str, timeout: Duration) -> Result<(), BrokerError> {
    // A URL lapin cannot read is reported by lapin's own connect.
    let Ok(uri) = url.parse::<lapin::uri::AMQPUri>() else {
        return Ok(());
    };
    let node = redact(url);
    let (host, port) = (uri.authority.host.clone(), uri.authority.port);
    let target = format!("{host}:{port}");
    let probe = tokio::task::spawn_blocking(move || {
        use std::net::ToSocketAddrs as _;
        let addrs: Vec<std::net::SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Err(format!("cannot resolve the host name `{host}`: {e}")),
        };
        let mut why = Vec::new();
        for addr in &addrs {
            match std::net::TcpStream::connect_timeout(addr, timeout) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    why.push(format!(
                        "{addr}: no answer within {timeout:?} (TCHU_CONNECT_TIMEOUT)"
                    ));
                }
                Err(e) => why.push(format!("{addr}: {e}")),
            }
        }
        if why.is_empty() {
            return Err(format!("the host name `{host}` has no address"));
        }
        Err(why.join("; "))
    });
    let outcome = match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Ok(()), // the probe task failed: leave it to lapin
        Err(_) => Err(format!(
            "{target}: no answer within {timeout:?} (TCHU_CONNECT_TIMEOUT)"
        )),
    };
    outcome
        .map_err(|why| BrokerError::new(format!("cannot connect to the broker at {node}: {why}")))
}

/// Opens a connection with auto-recovery and its confirm-mode publish channel.
async fn open(
    url: &str,
    name: &str,
    tls: &TlsConfig,
    connect_timeout: Duration,
) -> Result<Inner, BrokerError> {
    probe_tcp(url, connect_timeout).await?;
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.to_owned()))
        .enable_auto_recover();
    let tls = lapin_tls(tls)?;
    #[cfg(feature = "tls")]
    check_tls(url, &tls).await?;
    let runtime = lapin::runtime::default_runtime().map_err(err("no async runtime"))?;
    let conn = Connection::connect_with_config(url, props, tls, runtime)
        .await
        .map_err(|e| connect_error(url, e))?;
    let publish = conn
        .create_channel()
        .await
        .map_err(err("cannot open a channel"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("cannot enable publisher confirms"))?;
    Ok(Inner {
        conn,
        publish,
        node: 0,
        mandatory: MandatoryPool::default(),
    })
}

/// How many mandatory publishes one connection has in flight at most: each on its own channel.
///
/// Measured with 64 tasks publishing 2,000 persistent mandatory messages
/// (`cargo test -p tchu-runtime --lib mandatory -- --nocapture --test-threads 1`, shared 2-core
/// machine, wall clock): ~5,900/s (4 runs: 5,304–6,706) against ~7,800/s (6,393–10,308) for the
/// old pipelined channel, which mismatched 204–566 of the 2,000 confirms when half were
/// unroutable. 16 channels gave ~3,800/s; 64 no clear gain over 32.
const MANDATORY_CHANNELS: usize = 32;

/// Confirm channels for mandatory publishes, each with at most one publish in flight.
///
/// lapin 4.12.3 queues a channel's `basic.return`s and hands each to whichever publisher
/// confirm of the channel completes next (`acknowledgement.rs`, in `HashMap` order under a
/// `multiple` confirm): with several publishes in flight, an unroutable message can come back
/// as a plain ack (a silent loss) and a routed one as returned. With one publish per channel,
/// the return the broker sends before that publish's confirm is that publish's. Channels are
/// opened on first use (up to [`MANDATORY_CHANNELS`]) and belong to one connection: a
/// replacement connection starts with an empty pool.
#[derive(Debug)]
struct MandatoryPool {
    /// One permit per channel that may be in use.
    permits: tokio::sync::Semaphore,
    /// Channels with no publish in flight.
    idle: std::sync::Mutex<Vec<Channel>>,
}

impl Default for MandatoryPool {
    fn default() -> Self {
        MandatoryPool {
            permits: tokio::sync::Semaphore::new(MANDATORY_CHANNELS),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl MandatoryPool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Channel>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle channel that is up, or a new confirm channel on `conn`. The caller holds one of
    /// the pool's permits.
    async fn lease(&self, conn: &Connection) -> Result<Lease<'_>, lapin::Error> {
        loop {
            let Some(channel) = self.idle().pop() else {
                break;
            };
            if channel.status().connected() {
                return Ok(Lease {
                    pool: self,
                    channel,
                    released: false,
                });
            }
            discard(channel);
        }
        let channel = conn.create_channel().await?;
        let lease = Lease {
            pool: self,
            channel: channel.clone(),
            released: false,
        };
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(lease)
    }
}

/// A pool channel in use: closed when dropped, unless [`Lease::release`]d back to the pool.
#[derive(Debug)]
struct Lease<'a> {
    pool: &'a MandatoryPool,
    channel: Channel,
    released: bool,
}

impl Lease<'_> {
    /// Back to the pool: its last publish is fully confirmed.
    fn release(mut self) {
        self.released = true;
        self.pool.idle().push(self.channel.clone());
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.released {
            discard(self.channel.clone());
        }
    }
}

/// Closes a channel in the background (best effort, bounded).
fn discard(channel: Channel) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                channel.close(200, ShortString::from("discarded")),
            )
            .await;
        });
    }
}

/// Whether `r` is the return of `msg` published to `exchange` (same exchange, routing key and,
/// when `msg` has one, message id).
fn is_return_of(r: &lapin::message::BasicReturnMessage, exchange: &str, msg: &Message) -> bool {
    let d = &r.delivery;
    d.exchange.as_str() == exchange
        && d.routing_key.as_str() == msg.routing_key
        && msg.properties.message_id.as_ref().is_none_or(|id| {
            d.properties.message_id().as_ref().map(|s| s.as_str()) == Some(id.as_str())
        })
}

/// Whether `r` is the return of the request `msg` (same correlation id: a request has one).
fn is_request_return(r: &lapin::message::BasicReturnMessage, msg: &Message) -> bool {
    let returned = r.delivery.properties.correlation_id().as_ref();
    match (returned, msg.properties.correlation_id.as_deref()) {
        (Some(returned), Some(own)) => returned.as_str() == own,
        _ => false,
    }
}

/// How a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// On the publish channel, not mandatory.
    Plain,
    /// Mandatory, on a pool channel of its own: its confirm says precisely whether it was routed.
    Mandatory,
    /// An RPC request: mandatory on the publish channel; its return is found by correlation id.
    Request,
}

/// The confirm of a publish on the publish channel. A confirm there can carry the return of a
/// request published on that channel (lapin hands returns to whichever confirm completes next):
/// if this future is dropped before its confirm came (the publish timed out, the caller went
/// away), the confirm is awaited on a task of its own and a return it carries still reaches the
/// reply sink, so that the returned call fails with "no route" rather than a timeout.
struct CarriedReturns<'a> {
    broker: &'a AmqpBroker,
    pending: Option<lapin::PublisherConfirm>,
}

impl<'a> CarriedReturns<'a> {
    fn new(broker: &'a AmqpBroker, pending: lapin::PublisherConfirm) -> Self {
        CarriedReturns {
            broker,
            pending: Some(pending),
        }
    }
}

impl std::future::Future for CarriedReturns<'_> {
    type Output = Result<Confirmation, lapin::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(pending) = self.pending.as_mut() else {
            return std::task::Poll::Ready(Err(lapin::ErrorKind::FutureCompleted.into()));
        };
        let res = std::pin::Pin::new(pending).poll(cx);
        if res.is_ready() {
            self.pending = None;
        }
        res
    }
}

impl Drop for CarriedReturns<'_> {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.broker.clone();
        rt.spawn(async move {
            if let Ok(Ok(c)) = tokio::time::timeout(ABANDONED_CONFIRM, pending).await
                && let Some(r) = c.take_message()
            {
                broker.route_return(&r);
            }
        });
    }
}

/// How long the confirm of an abandoned publish is still awaited for a return it may carry.
const ABANDONED_CONFIRM: Duration = Duration::from_secs(60);

#[cfg(test)]
mod mandatory_tests;

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
