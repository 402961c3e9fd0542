//! Listing, replaying and purging a service's dead letters (`<service>.dlq`).

use crate::client::Client;
use crate::dispatch::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, FIRST_FAILURE_HEADER, HANDLER_HEADER, HANDLERS_HEADER,
    LAST_FAILURE_HEADER, REASON_HEADER, TOPIC_HEADER,
};
use crate::error::BrokerError;
use crate::message::{HeaderValue, Message};
use crate::topology::dlq_name;

/// One dead-lettered message and why it is there.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message as it was received (plus the dead-letter headers).
    pub message: Message,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The routing key it was published with.
    pub original_routing_key: String,
    /// The handler that failed, if one did.
    pub handler: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// First failure, ms since the Unix epoch.
    pub first_failure_ms: i64,
    /// Last failure, ms since the Unix epoch.
    pub last_failure_ms: i64,
}

impl DeadLetter {
    fn from_message(message: Message) -> Self {
        let h = &message.properties.headers;
        let s = |k: &str| h.get(k).and_then(HeaderValue::as_str).map(str::to_owned);
        let i = |k: &str| h.get(k).and_then(HeaderValue::as_i64).unwrap_or_default();
        DeadLetter {
            reason: s(REASON_HEADER).unwrap_or_default(),
            original_routing_key: s(TOPIC_HEADER).unwrap_or_else(|| message.routing_key.clone()),
            handler: s(HANDLER_HEADER),
            attempts: u32::try_from(i(ATTEMPTS_HEADER)).unwrap_or_default(),
            first_failure_ms: i(FIRST_FAILURE_HEADER),
            last_failure_ms: i(LAST_FAILURE_HEADER),
            message,
        }
    }
}

impl Client {
    async fn take_all(&self, queue: &str) -> Result<Vec<Message>, BrokerError> {
        let mut out = Vec::new();
        while let Some(m) = self.broker().get(queue).await? {
            out.push(m);
        }
        Ok(out)
    }

    async fn put(&self, queue: &str, mut m: Message) -> Result<(), BrokerError> {
        m.routing_key = queue.to_owned();
        m.properties.persistent = true;
        match self.broker().publish("", &m, true).await? {
            crate::broker::Confirm::Ack => Ok(()),
            _ => Err(BrokerError::new(format!(
                "queue `{queue}` did not take the message"
            ))),
        }
    }

    /// Lists the dead letters of `service`. The queue is read and written back in order, so
    /// do not run this while another tool edits the same queue.
    ///
    /// # Errors
    /// Broker failures.
    pub async fn dead_letters(&self, service: &str) -> Result<Vec<DeadLetter>, BrokerError> {
        let dlq = dlq_name(service);
        let all = self.take_all(&dlq).await?;
        let mut out = Vec::with_capacity(all.len());
        for m in all {
            self.put(&dlq, m.clone()).await?;
            out.push(DeadLetter::from_message(m));
        }
        Ok(out)
    }

    /// Sends the dead letters of `service` for which `keep` is true back to the service queue
    /// (with their original topic, attempts reset, and only for the handler that failed, if
    /// one did); the others stay. Returns how many went.
    ///
    /// # Errors
    /// Broker failures.
    pub async fn replay_dead_letters(
        &self,
        service: &str,
        keep: impl Fn(&DeadLetter) -> bool,
    ) -> Result<usize, BrokerError> {
        let dlq = dlq_name(service);
        let mut n = 0;
        for m in self.take_all(&dlq).await? {
            let dl = DeadLetter::from_message(m);
            if keep(&dl) {
                let mut m = dl.message;
                for k in [
                    REASON_HEADER,
                    HANDLER_HEADER,
                    ATTEMPTS_HEADER,
                    ATTEMPT_HEADER,
                    HANDLERS_HEADER,
                    FIRST_FAILURE_HEADER,
                    LAST_FAILURE_HEADER,
                ] {
                    m.properties.headers.remove(k);
                }
                m.properties.headers.insert(
                    TOPIC_HEADER.to_owned(),
                    HeaderValue::from(dl.original_routing_key.as_str()),
                );
                // Only the handler that failed runs again: its siblings already succeeded.
                if let Some(h) = &dl.handler {
                    m.properties
                        .headers
                        .insert(HANDLERS_HEADER.to_owned(), HeaderValue::from(h.as_str()));
                }
                self.put(service, m).await?;
                n += 1;
            } else {
                self.put(&dlq, dl.message).await?;
            }
        }
        Ok(n)
    }

    /// Deletes every dead letter of `service`; returns how many there were.
    ///
    /// # Errors
    /// The dead-letter queue does not exist, or a broker failure.
    pub async fn purge_dead_letters(&self, service: &str) -> Result<u32, BrokerError> {
        self.broker().purge_queue(&dlq_name(service)).await
    }

    /// Number of ready messages in a queue.
    ///
    /// # Errors
    /// The queue does not exist, or a broker failure.
    pub async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        self.broker().queue_len(queue).await
    }

    /// Deletes a queue (tests and tools).
    ///
    /// # Errors
    /// Broker failures.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.broker().delete_queue(queue).await
    }

    /// Deletes an exchange (tests and tools).
    ///
    /// # Errors
    /// Broker failures.
    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), BrokerError> {
        self.broker().delete_exchange(exchange).await
    }
}
