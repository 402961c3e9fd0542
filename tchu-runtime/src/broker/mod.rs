//! The transports behind one crate-private interface: `amqp` (RabbitMQ over lapin) and
//! `memory` (an in-process broker with the same semantics for demos and tests).
//!
//! `Broker` is an enum rather than a trait object: two variants, static dispatch, and async
//! methods without boxing.

pub(crate) mod amqp;
pub(crate) mod memory;
pub(crate) mod stall;

use std::time::Duration;

use crate::error::BrokerError;
use crate::message::Message;
pub use crate::queue_type::QueueType;

/// What the broker said about one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// Accepted and routed to at least one queue (or not mandatory).
    Ack,
    /// Refused by the broker.
    Nack,
    /// Mandatory and routed to no queue.
    Returned,
}

/// A queue to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) queue_type: QueueType,
    /// Where expired/rejected messages go: (exchange, routing key).
    pub(crate) dead_letter: Option<(String, String)>,
    /// Per-queue message TTL (retry wait queues).
    pub(crate) message_ttl: Option<Duration>,
    /// Only this connection may use it, and it goes when the connection closes.
    pub(crate) exclusive: bool,
    /// Deleted when its last consumer stops.
    pub(crate) auto_delete: bool,
    /// Deleted by the broker once it has had no consumer for this long (`x-expires`). Unlike
    /// `auto_delete`, it survives a connection that lapin recovers within that time, so the
    /// recovered consumer finds its queue. The memory broker deletes it with its last consumer.
    pub(crate) expires: Option<Duration>,
}

impl QueueSpec {
    pub(crate) fn durable(name: impl Into<String>, queue_type: QueueType) -> Self {
        QueueSpec {
            name: name.into(),
            durable: true,
            queue_type,
            dead_letter: None,
            message_ttl: None,
            exclusive: false,
            auto_delete: false,
            expires: None,
        }
    }

    /// A non-durable, exclusive, auto-delete queue (`tchu tail`).
    pub(crate) fn temporary(name: impl Into<String>) -> Self {
        QueueSpec {
            durable: false,
            exclusive: true,
            auto_delete: true,
            ..QueueSpec::durable(name, QueueType::Classic)
        }
    }
}

/// One received message with the means to settle it.
#[derive(Debug)]
pub(crate) struct InboundDelivery {
    pub(crate) message: Message,
    pub(crate) redelivered: bool,
    pub(crate) acker: Acker,
}

/// Settles one delivery.
#[derive(Debug)]
pub(crate) enum Acker {
    Amqp(amqp::AmqpAcker),
    Memory(memory::MemoryAcker),
}

impl Acker {
    /// Acknowledges (the message is done).
    pub(crate) async fn ack(&self) -> Result<(), BrokerError> {
        match self {
            Acker::Amqp(a) => a.ack().await,
            Acker::Memory(a) => a.ack(),
        }
    }

    /// Acknowledges and waits until the frame is written, so that acks sent one after the
    /// other reach the broker in that order; `multiple` also acks every earlier unsettled
    /// delivery of the same consumer.
    pub(crate) async fn ack_in_order(&self, multiple: bool) -> Result<(), BrokerError> {
        match self {
            Acker::Amqp(a) => a.ack_in_order(multiple).await,
            Acker::Memory(a) if multiple => a.ack_multiple(),
            Acker::Memory(a) => a.ack(),
        }
    }

    /// Returns the message to its queue (`requeue`) or drops it.
    pub(crate) async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        match self {
            Acker::Amqp(a) => a.nack(requeue).await,
            Acker::Memory(a) => a.nack(requeue),
        }
    }
}

/// A stream of deliveries from one queue.
#[derive(Debug)]
pub(crate) enum Consumer {
    Amqp(Box<amqp::AmqpConsumer>),
    Memory(memory::MemoryConsumer),
}

impl Consumer {
    /// The next delivery; `None` when the consumer was cancelled or the broker closed.
    pub(crate) async fn next(&mut self) -> Option<Result<InboundDelivery, BrokerError>> {
        match self {
            Consumer::Amqp(c) => c.next().await,
            Consumer::Memory(c) => c.next().await.map(Ok),
        }
    }

    /// Stops consuming; deliveries not yet settled return to the queue.
    pub(crate) async fn close(self) {
        match self {
            Consumer::Amqp(c) => c.close().await,
            Consumer::Memory(c) => drop(c),
        }
    }
}

/// Reads a queue one message at a time without taking anything away (basic.get with manual
/// acks): whatever is read and not acked goes back to the queue, in order and marked
/// redelivered, when the browser closes, is dropped, or its process dies.
#[derive(Debug)]
pub(crate) enum Browser {
    Amqp(amqp::AmqpBrowser),
    Memory(memory::MemoryConsumer),
}

impl Browser {
    /// The next ready message, unacked; `None` when the queue has no ready message.
    pub(crate) async fn next(&mut self) -> Result<Option<InboundDelivery>, BrokerError> {
        match self {
            Browser::Amqp(b) => b.next().await,
            Browser::Memory(c) => Ok(c.try_next()),
        }
    }

    /// Ends the browse: every message read and not acked returns to the queue.
    pub(crate) async fn close(self) {
        match self {
            Browser::Amqp(b) => b.close().await,
            Browser::Memory(c) => drop(c),
        }
    }
}

/// What reaches a client's reply side: a reply, or one of its requests that the broker
/// returned (published mandatory and routed to no queue).
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a reply is the common case: boxing it would allocate once more per reply"
)]
pub(crate) enum ReplyEvent {
    /// A message published to this client's direct reply-to address.
    Reply(Message),
    /// The request with this correlation id was returned: nobody consumes its topic.
    Returned {
        /// The returned request's `correlation_id`.
        correlation_id: String,
    },
}

/// Where a connection hands every [`ReplyEvent`], on the task that received it (no channel hop,
/// no task of its own).
#[derive(Clone)]
pub(crate) struct ReplySink(std::sync::Arc<dyn Fn(ReplyEvent) -> bool + Send + Sync>);

impl ReplySink {
    /// A sink calling `f`, which answers `false` once nobody listens any more (the client is
    /// gone).
    pub(crate) fn new(f: impl Fn(ReplyEvent) -> bool + Send + Sync + 'static) -> Self {
        ReplySink(std::sync::Arc::new(f))
    }

    /// Hands `e` over; `false` when nobody listens any more.
    pub(crate) fn send(&self, e: ReplyEvent) -> bool {
        (self.0)(e)
    }
}

impl std::fmt::Debug for ReplySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplySink")
    }
}

/// A connection to a broker.
#[derive(Debug, Clone)]
pub(crate) enum Broker {
    Amqp(amqp::AmqpBroker),
    Memory(memory::MemoryBroker),
}

impl Broker {
    pub(crate) async fn declare_exchange(&self, name: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.declare_exchange(name).await,
            Broker::Memory(b) => b.declare_exchange(name),
        }
    }

    pub(crate) async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.declare_queue(spec).await,
            Broker::Memory(b) => b.declare_queue(spec),
        }
    }

    pub(crate) async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.bind(queue, exchange, key).await,
            Broker::Memory(b) => b.bind(queue, exchange, key),
        }
    }

    pub(crate) async fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.unbind(queue, exchange, key).await,
            Broker::Memory(b) => b.unbind(queue, exchange, key),
        }
    }

    /// Publishes and waits for the broker's confirm. `exchange` `""` is the default exchange.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        msg: &Message,
        mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        match self {
            Broker::Amqp(b) => b.publish(exchange, msg, mandatory).await,
            Broker::Memory(b) => b.publish(exchange, msg, mandatory),
        }
    }

    /// [`Broker::publish`] of a message the caller no longer needs: the memory broker moves it
    /// into its queue instead of copying it (AMQP encodes it either way).
    pub(crate) async fn publish_owned(
        &self,
        exchange: &str,
        msg: Message,
        mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        match self {
            Broker::Amqp(b) => b.publish(exchange, &msg, mandatory).await,
            Broker::Memory(b) => b.publish_owned(exchange, msg, mandatory),
        }
    }

    /// Starts reading `queue` without removing anything (see [`Browser`]).
    pub(crate) async fn browse(&self, queue: &str) -> Result<Browser, BrokerError> {
        match self {
            Broker::Amqp(b) => b.browse(queue).await.map(Browser::Amqp),
            Broker::Memory(b) => b.consume(queue, 0).map(Browser::Memory),
        }
    }

    /// Starts consuming with a prefetch window.
    pub(crate) async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<Consumer, BrokerError> {
        match self {
            Broker::Amqp(b) => b
                .consume(queue, prefetch)
                .await
                .map(|c| Consumer::Amqp(Box::new(c))),
            Broker::Memory(b) => b.consume(queue, prefetch).map(Consumer::Memory),
        }
    }

    /// Starts the reply consumer of this connection, which hands every reply to `sink`; returns
    /// the `reply_to` address to use.
    pub(crate) async fn reply_consumer(&self, sink: ReplySink) -> Result<String, BrokerError> {
        match self {
            Broker::Amqp(b) => b.reply_consumer(sink).await,
            Broker::Memory(b) => Ok(b.reply_consumer(sink)),
        }
    }

    /// Publishes an RPC request (mandatory, with a `correlation_id` and the `reply_to` of
    /// [`Broker::reply_consumer`]) and waits for the broker's confirm.
    ///
    /// [`Confirm::Returned`] means this request was returned. On RabbitMQ, requests share the
    /// publish channel, pipelined: a request's return can come back with another publish's
    /// confirm, in which case it reaches the reply sink as [`ReplyEvent::Returned`] instead
    /// (the caller waits on its pending call for both).
    pub(crate) async fn publish_request(
        &self,
        exchange: &str,
        msg: Message,
    ) -> Result<Confirm, BrokerError> {
        match self {
            Broker::Amqp(b) => b.publish_request(exchange, &msg).await,
            Broker::Memory(b) => b.publish_owned(exchange, msg, true),
        }
    }

    /// Number of messages ready in a queue (tests, DLQ tools).
    pub(crate) async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        match self {
            Broker::Amqp(b) => b.queue_len(queue).await,
            Broker::Memory(b) => b.queue_len(queue),
        }
    }

    /// Consumers of a queue, `None` when it does not exist.
    pub(crate) async fn consumer_count(&self, queue: &str) -> Result<Option<u32>, BrokerError> {
        match self {
            Broker::Amqp(b) => b.consumer_count(queue).await,
            Broker::Memory(b) => Ok(b.consumer_count(queue)),
        }
    }

    /// Takes the lock `name` (a queue only this connection may use, gone with it); `false`
    /// when someone else holds it. [`Broker::delete_queue`] releases it.
    pub(crate) async fn try_lock(&self, name: &str) -> Result<bool, BrokerError> {
        match self {
            Broker::Amqp(b) => b.try_lock(name).await,
            Broker::Memory(b) => Ok(b.try_lock(name)),
        }
    }

    /// Removes every ready message of a queue; returns how many.
    pub(crate) async fn purge_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        match self {
            Broker::Amqp(b) => b.purge_queue(queue).await,
            Broker::Memory(b) => b.purge_queue(queue),
        }
    }

    pub(crate) async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.delete_queue(queue).await,
            Broker::Memory(b) => b.delete_queue(queue),
        }
    }

    /// Deletes a queue unless it has consumers (then, or when it does not exist, `false`).
    pub(crate) async fn delete_queue_if_unused(&self, queue: &str) -> Result<bool, BrokerError> {
        match self {
            Broker::Amqp(b) => b.delete_queue_if_unused(queue).await,
            Broker::Memory(b) => Ok(b.delete_queue_if_unused(queue)),
        }
    }

    pub(crate) async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.delete_exchange(name).await,
            Broker::Memory(b) => b.delete_exchange(name),
        }
    }

    /// Makes sure the connection is up, replacing it when lapin's recovery did not bring it
    /// back in time (one attempt; a no-op for the in-process broker).
    /// lapin's own recovery gets `grace` (less when the caller already waited for it).
    pub(crate) async fn reconnect_within(&self, grace: Duration) -> Result<(), BrokerError> {
        match self {
            Broker::Amqp(b) => b.reconnect_within(grace).await,
            Broker::Memory(_) => Ok(()),
        }
    }

    /// Whether a consumer that ended may come back after a reconnection; an in-process
    /// consumer that ends is gone for good.
    pub(crate) fn recovers(&self) -> bool {
        matches!(self, Broker::Amqp(_))
    }

    /// Whether the connection is up (always for the in-process broker).
    pub(crate) fn is_connected(&self) -> bool {
        match self {
            Broker::Amqp(b) => b.is_connected(),
            Broker::Memory(_) => true,
        }
    }

    pub(crate) async fn close(&self) {
        if let Broker::Amqp(b) = self {
            b.close().await;
        }
    }
}
