//! An in-process broker with RabbitMQ's semantics for what tchu uses: topic exchanges,
//! durable queues, competing consumers with prefetch, acks and requeue, basic.get, mandatory
//! publish returns, and direct reply-to.
//! STUB: to be implemented.

use crate::broker::QueueSpec;
use crate::broker::{Confirm, InboundDelivery, ReplyConsumer};
use crate::error::BrokerError;
use crate::message::Message;

/// A handle to an in-process broker. Clones share the same broker.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        MemoryBroker {}
    }
    pub(crate) fn declare_exchange(&self, _name: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    pub(crate) fn declare_queue(&self, _spec: &QueueSpec) -> Result<(), BrokerError> {
        Ok(())
    }
    pub(crate) fn bind(&self, _q: &str, _x: &str, _k: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    pub(crate) fn unbind(&self, _q: &str, _x: &str, _k: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    pub(crate) fn publish(
        &self,
        _x: &str,
        _m: &Message,
        _mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        Ok(Confirm::Ack)
    }
    pub(crate) fn get(&self, _q: &str) -> Result<Option<Message>, BrokerError> {
        Ok(None)
    }
    pub(crate) fn consume(&self, _q: &str, _prefetch: u16) -> Result<MemoryConsumer, BrokerError> {
        Ok(MemoryConsumer {})
    }
    pub(crate) fn reply_consumer(&self) -> (String, ReplyConsumer) {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (String::new(), ReplyConsumer::Memory(rx))
    }
    pub(crate) fn queue_len(&self, _q: &str) -> Result<u32, BrokerError> {
        Ok(0)
    }
    pub(crate) fn delete_queue(&self, _q: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    pub(crate) fn delete_exchange(&self, _x: &str) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// Deliveries from one memory queue.
#[derive(Debug)]
pub(crate) struct MemoryConsumer {}

impl MemoryConsumer {
    pub(crate) async fn next(&mut self) -> Option<InboundDelivery> {
        None
    }
}

/// Settles one memory delivery.
#[derive(Debug)]
pub(crate) struct MemoryAcker {}

impl MemoryAcker {
    pub(crate) fn ack(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    pub(crate) fn nack(&self, _requeue: bool) -> Result<(), BrokerError> {
        Ok(())
    }
}
