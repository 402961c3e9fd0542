//! Notices a consumer that is registered but receives nothing while its queue has ready
//! messages: after a reconnect, a quorum queue whose leader is being elected can accept
//! `basic.consume` and then never deliver (the trap of rabbitmq-dotnet-client issue 1993).
//! The consume loop then replaces the consumer.
//!
//! A consumer is *suspect* when it has received nothing for [`IDLE`], no handler of its runs,
//! and a passive declare shows ready messages; it is *stalled* when, [`CONFIRM`] later, it still
//! has received nothing and the queue still has ready messages (a message published just before
//! the first look is not mistaken for a stall).

use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Broker;

/// How long a consumer may receive nothing before its queue is looked at.
pub(crate) const IDLE: Duration = Duration::from_secs(5);
/// How long a suspect consumer gets to receive something.
pub(crate) const CONFIRM: Duration = Duration::from_secs(2);
/// A bound on one passive declare.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches one consumer of `queue`.
#[derive(Debug)]
pub(crate) struct StallWatch {
    queue: String,
    last_delivery: Instant,
    last_look: Instant,
    suspect_since: Option<Instant>,
}

impl StallWatch {
    pub(crate) fn new(queue: String) -> Self {
        let now = Instant::now();
        StallWatch {
            queue,
            last_delivery: now,
            last_look: now,
            suspect_since: None,
        }
    }

    /// A delivery arrived.
    pub(crate) fn delivered(&mut self) {
        self.last_delivery = Instant::now();
        self.suspect_since = None;
    }

    /// A new consumer: start afresh.
    pub(crate) fn reset(&mut self) {
        *self = StallWatch::new(std::mem::take(&mut self.queue));
    }

    /// Called about once a second; `idle` is whether no handler of this consumer runs.
    /// True when the consumer is stalled and must be replaced.
    pub(crate) async fn stalled(&mut self, broker: &Broker, idle: bool) -> bool {
        let now = Instant::now();
        if !idle || !broker.is_connected() || now - self.last_delivery < IDLE {
            self.suspect_since = None;
            return false;
        }
        // An idle service with an empty queue is looked at once per `IDLE`.
        let due = match self.suspect_since {
            Some(since) => now - since >= CONFIRM,
            None => now - self.last_look >= IDLE,
        };
        if !due {
            return false;
        }
        self.last_look = now;
        let ready = match tokio::time::timeout(LOOK_TIMEOUT, broker.queue_len(&self.queue)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(queue = %self.queue, error = %e, "cannot look at the queue");
                return false;
            }
            Err(_) => return false,
        };
        if ready == 0 {
            self.suspect_since = None;
            return false;
        }
        match self.suspect_since {
            None => {
                self.suspect_since = Some(now);
                false
            }
            Some(_) => {
                tracing::warn!(
                    queue = %self.queue,
                    ready,
                    idle_for = ?(now - self.last_delivery),
                    "the consumer receives nothing while its queue has ready messages; replacing it"
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::broker::{QueueSpec, QueueType};
    use crate::message::{Message, Properties};

    async fn broker_with(ready: usize) -> Broker {
        let b = Broker::Memory(MemoryBroker::new());
        b.declare_queue(&QueueSpec::durable("q", QueueType::Classic))
            .await
            .expect("declare");
        for _ in 0..ready {
            let m = Message {
                routing_key: "q".to_owned(),
                properties: Properties::default(),
                body: b"{}".to_vec(),
            };
            b.publish("", &m, true).await.expect("publish");
        }
        b
    }

    /// Ticks once a second for `secs` seconds; whether any tick said "stalled".
    async fn ticks(w: &mut StallWatch, b: &Broker, idle: bool, secs: u64) -> bool {
        let mut stalled = false;
        for _ in 0..secs {
            tokio::time::advance(Duration::from_secs(1)).await;
            stalled |= w.stalled(b, idle).await;
        }
        stalled
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_idle_while_its_queue_has_ready_messages_is_stalled() {
        let b = broker_with(3).await;
        let mut w = StallWatch::new("q".to_owned());
        // Not before IDLE + CONFIRM.
        assert!(!ticks(&mut w, &b, true, 6).await);
        assert!(ticks(&mut w, &b, true, 2).await);
        // A delivery clears the suspicion; so does a new consumer.
        w.delivered();
        assert!(!ticks(&mut w, &b, true, 6).await);
        w.reset();
        assert!(!ticks(&mut w, &b, true, 6).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_queue_or_busy_handlers_are_not_a_stall() {
        let empty = broker_with(0).await;
        let mut w = StallWatch::new("q".to_owned());
        assert!(!ticks(&mut w, &empty, true, 60).await);
        let full = broker_with(3).await;
        let mut w = StallWatch::new("q".to_owned());
        assert!(!ticks(&mut w, &full, false, 60).await);
        // Nor a queue that does not exist.
        let mut w = StallWatch::new("nope".to_owned());
        assert!(!ticks(&mut w, &full, true, 60).await);
    }
}
