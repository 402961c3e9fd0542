//! Listing, replaying and purging a service's dead letters (`<service>.dlq`).
//!
//! Nothing here can lose a dead letter. Reading is a browse: `basic.get` with manual acks on a
//! channel of its own, nothing acked, the channel closed at the end, so every message read goes
//! back to the queue (in order, marked redelivered), and the same happens when the process is
//! killed at any instant (the broker requeues what a dead connection held). Only one message at
//! a time is held in memory. Replay moves each message: publish to the service queue, wait for
//! the broker's confirm, then ack the original; a crash in between leaves a duplicate (in both
//! queues), never a loss. A read or a replay stops after the number of messages the queue held
//! when it started, so letters that die again during a replay are not replayed twice.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::broker::Browser;
use crate::client::Client;
use crate::error::BrokerError;
use crate::headers::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, FIRST_FAILURE_HEADER, HANDLER_HEADER, HANDLERS_HEADER,
    LAST_FAILURE_HEADER, REASON_HEADER, TOPIC_HEADER,
};
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
    /// Reads why `message` was dead-lettered from its `x-tchu-*` headers (missing ones read as
    /// empty or zero).
    pub fn from_message(message: Message) -> Self {
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

/// Reads a service's dead letters one at a time without removing any (see
/// [`Client::browse_dead_letters`]).
///
/// While it is open, the letters it has read are held by it (invisible to other readers); they
/// return to the dead-letter queue when it is closed or dropped, or when the process dies.
#[derive(Debug)]
pub struct DeadLetterBrowser {
    browser: Option<Browser>,
    /// Messages still to read: the queue's length when the browse started.
    left: u32,
}

impl DeadLetterBrowser {
    /// The next dead letter, `None` at the end (the queue held no more when the browse
    /// started, or has no more ready now).
    ///
    /// # Errors
    /// Broker failures; nothing is removed either way.
    pub async fn next(&mut self) -> Result<Option<DeadLetter>, BrokerError> {
        if self.left == 0 {
            return Ok(None);
        }
        let Some(browser) = self.browser.as_mut() else {
            return Ok(None);
        };
        let got = browser.next().await?;
        self.left = self.left.saturating_sub(1);
        // The delivery is left unacked: it returns to the queue when the browse ends.
        Ok(got.map(|d| DeadLetter::from_message(d.message)))
    }

    /// Ends the browse: every letter read goes back to the dead-letter queue.
    pub async fn close(mut self) {
        if let Some(b) = self.browser.take() {
            b.close().await;
        }
    }
}

impl DeadLetter {
    /// Whether this letter's failed handler is `filter`: its full id (`myshop::reserve`) or
    /// the last segments of it (`reserve`, `myshop::reserve`).
    pub fn handler_matches(&self, filter: &str) -> bool {
        self.handler
            .as_deref()
            .is_some_and(|id| Self::handler_id_matches(id, filter))
    }

    /// Whether handler id `id` is `filter` or ends with `::filter`.
    pub fn handler_id_matches(id: &str, filter: &str) -> bool {
        id == filter
            || id
                .strip_suffix(filter)
                .is_some_and(|rest| rest.ends_with("::"))
    }
}

/// How many publishes a replay keeps in flight.
const REPLAY_WINDOW: usize = 64;

impl Client {
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

    /// Starts reading the dead letters of `service` one at a time, in queue order, without
    /// removing any: memory stays bounded whatever the queue holds. Close the browser when
    /// done (dropping it also returns everything, once the channel closes).
    ///
    /// # Errors
    /// The dead-letter queue does not exist, or a broker failure.
    pub async fn browse_dead_letters(
        &self,
        service: &str,
    ) -> Result<DeadLetterBrowser, BrokerError> {
        let dlq = dlq_name(service);
        let left = self.broker().queue_len(&dlq).await?;
        let browser = self.broker().browse(&dlq).await?;
        Ok(DeadLetterBrowser {
            browser: Some(browser),
            left,
        })
    }

    /// Up to `limit` dead letters of `service` after skipping the first `skip`, without
    /// removing any.
    ///
    /// # Errors
    /// The dead-letter queue does not exist, or a broker failure.
    pub async fn dead_letters_page(
        &self,
        service: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut b = self.browse_dead_letters(service).await?;
        let mut out = Vec::new();
        let mut i = 0usize;
        let r = async {
            while out.len() < limit
                && let Some(dl) = b.next().await?
            {
                if i >= skip {
                    out.push(dl);
                }
                i += 1;
            }
            Ok(())
        }
        .await;
        b.close().await;
        r.map(|()| out)
    }

    /// The first `limit` dead letters of `service` (at most), in queue order, without removing
    /// any: memory is bounded by `limit`, whatever the queue holds. To go through a large
    /// queue, use [`Client::browse_dead_letters`] (one letter at a time) or
    /// [`Client::dead_letters_page`]; [`Client::queue_len`] of `<service>.dlq` gives the total.
    ///
    /// # Errors
    /// The dead-letter queue does not exist, or a broker failure.
    pub async fn dead_letters(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        self.dead_letters_page(service, 0, limit).await
    }

    /// The ids of the handlers that have dead letters in `service`'s queue, with how many each
    /// (letters without a handler, e.g. "no local handler", are not counted). Reads the queue
    /// without removing anything.
    ///
    /// # Errors
    /// The dead-letter queue does not exist, or a broker failure.
    pub async fn dead_letter_handlers(
        &self,
        service: &str,
    ) -> Result<BTreeMap<String, u64>, BrokerError> {
        let mut b = self.browse_dead_letters(service).await?;
        let mut out = BTreeMap::new();
        let r = async {
            while let Some(dl) = b.next().await? {
                if let Some(h) = dl.handler {
                    *out.entry(h).or_insert(0) += 1;
                }
            }
            Ok(())
        }
        .await;
        b.close().await;
        r.map(|()| out)
    }

    /// Moves the dead letters of `service` for which `keep` is true back to the service queue
    /// (with their original topic, attempts reset, and only for the handler that failed, if
    /// one did); the others stay. Returns how many went.
    ///
    /// Each one is published to the service queue and acked in the dead-letter queue only
    /// after the broker confirmed the copy: a crash or a refused publish leaves it in the
    /// dead-letter queue (or in both), never in neither. Letters that die again while the
    /// replay runs are not replayed again.
    ///
    /// # Errors
    /// A copy the broker refused (the replay stops; that letter and the rest stay), or a
    /// broker failure.
    pub async fn replay_dead_letters(
        &self,
        service: &str,
        keep: impl Fn(&DeadLetter) -> bool,
    ) -> Result<usize, BrokerError> {
        let dlq = dlq_name(service);
        let mut left = self.broker().queue_len(&dlq).await?;
        let mut browser = self.broker().browse(&dlq).await?;
        let mut in_flight = FuturesUnordered::new();
        let mut n = 0usize;
        let r: Result<(), BrokerError> = async {
            while left > 0 {
                let Some(d) = browser.next().await? else {
                    break;
                };
                left -= 1;
                let dl = DeadLetter::from_message(d.message.clone());
                if !keep(&dl) {
                    // Left unacked: it returns to the queue when the browse ends.
                    continue;
                }
                let m = replayable(dl);
                in_flight.push(async move {
                    self.put(service, m).await?;
                    d.acker.ack_in_order(false).await
                });
                if in_flight.len() >= REPLAY_WINDOW
                    && let Some(r) = in_flight.next().await
                {
                    r?;
                    n += 1;
                }
            }
            while let Some(r) = in_flight.next().await {
                r?;
                n += 1;
            }
            Ok(())
        }
        .await;
        drop(in_flight);
        browser.close().await;
        r.map(|()| n)
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

/// The message a replay sends: original topic, failure headers removed, and only the handler
/// that failed (its siblings already succeeded).
fn replayable(dl: DeadLetter) -> Message {
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
    if let Some(h) = &dl.handler {
        m.properties
            .headers
            .insert(HANDLERS_HEADER.to_owned(), HeaderValue::from(h.as_str()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::DeadLetter;

    fn handler_id_matches(id: &str, filter: &str) -> bool {
        DeadLetter::handler_id_matches(id, filter)
    }

    #[test]
    fn handler_ids_match_by_their_last_segments() {
        assert!(handler_id_matches("myshop::reserve", "reserve"));
        assert!(handler_id_matches("myshop::reserve", "myshop::reserve"));
        assert!(handler_id_matches("a::myshop::reserve", "myshop::reserve"));
        assert!(handler_id_matches("broken", "broken"));
        assert!(!handler_id_matches("myshop::unreserve", "reserve"));
        assert!(!handler_id_matches("myshop::reserve", "shop::reserve"));
        assert!(!handler_id_matches("myshop::reserve", "myshop"));
    }
}
