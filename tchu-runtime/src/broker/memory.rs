//! An in-process broker with RabbitMQ's semantics for what tchu uses: topic exchanges,
//! durable queues, competing consumers with prefetch, acks (also `multiple`) and requeue,
//! basic.get, mandatory publish returns, dead-lettering (rejects and TTL expiry) and direct
//! reply-to.
//!
//! All state lives behind one `std::sync::Mutex` shared by the clones of [`MemoryBroker`]; the
//! lock is never held across an `.await`. Consumers pull from their queue and sleep on a
//! [`Notify`] when there is nothing for them; message expiry runs on one tokio timer task per
//! queue, alive only while that queue holds messages that can expire.
//!
//! Where this differs from RabbitMQ:
//! - Every expired ready message is removed, not only the one at the head of the queue.
//! - Dropping a delivery's acker without settling it leaves the message unacked until its
//!   consumer is dropped (as in AMQP, where it stays unacked until the channel closes); the
//!   message then returns to the queue, redelivered.
//! - Settling a delivery twice, or after its consumer was dropped, is an error (RabbitMQ closes
//!   the channel with `PRECONDITION_FAILED - unknown delivery tag`).
//! - Without a tokio runtime (a broker used from plain threads), expiry is only noticed when
//!   the queue is next touched (consume, get, length) instead of by a timer.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::QueueSpec;
use crate::broker::{Acker, Confirm, InboundDelivery, ReplyEvent, ReplySink};
use crate::error::BrokerError;
use crate::message::{HeaderValue, Headers, Message};
use crate::topic::pattern_matches;

/// The prefix of direct reply-to addresses, as RabbitMQ spells them.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Dead-letter reason of a message whose TTL ran out.
const EXPIRED: &str = "expired";
/// Dead-letter reason of a message nacked without requeue.
const REJECTED: &str = "rejected";

/// A handle to an in-process broker. Clones share the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        let state = Arc::new_cyclic(|me| {
            Mutex::new(State {
                me: me.clone(),
                exchanges: HashMap::new(),
                queues: HashMap::new(),
                replies: HashMap::new(),
                next_id: 0,
            })
        });
        MemoryBroker { state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Declares a topic exchange; idempotent. The default exchange `""` always exists.
    pub(crate) fn declare_exchange(&self, name: &str) -> Result<(), BrokerError> {
        if !name.is_empty() {
            self.lock().exchanges.entry(name.to_owned()).or_default();
        }
        Ok(())
    }

    /// Declares a queue; idempotent when the arguments are the same (the queue keeps its
    /// messages), an error when they differ (RabbitMQ's `PRECONDITION_FAILED`).
    pub(crate) fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        if spec.name.is_empty() {
            return Err(BrokerError::new("a queue name cannot be empty"));
        }
        if spec.name.starts_with("amq.") {
            return Err(BrokerError::new(format!(
                "queue name '{}' contains reserved prefix 'amq.'",
                spec.name
            )));
        }
        let mut st = self.lock();
        if let Some(q) = st.queues.get(&spec.name) {
            if q.spec != *spec {
                return Err(BrokerError::new(format!(
                    "inequivalent arguments for queue '{}': declared as {:?}, now {:?}",
                    spec.name, q.spec, spec
                )));
            }
            return Ok(());
        }
        let uid = st.next_id();
        st.queues
            .insert(spec.name.clone(), Queue::new(uid, spec.clone()));
        Ok(())
    }

    /// Binds `q` to the topic exchange `x` with the binding key `k`.
    pub(crate) fn bind(&self, q: &str, x: &str, k: &str) -> Result<(), BrokerError> {
        if x.is_empty() {
            return Err(BrokerError::new(
                "cannot bind a queue to the default exchange",
            ));
        }
        let mut st = self.lock();
        if !st.queues.contains_key(q) {
            return Err(no_queue(q));
        }
        let exchange = st.exchanges.get_mut(x).ok_or_else(|| no_exchange(x))?;
        exchange.bindings.insert((k.to_owned(), q.to_owned()));
        Ok(())
    }

    /// Removes one binding; removing a binding that does not exist is not an error.
    pub(crate) fn unbind(&self, q: &str, x: &str, k: &str) -> Result<(), BrokerError> {
        if x.is_empty() {
            return Err(BrokerError::new(
                "cannot unbind a queue from the default exchange",
            ));
        }
        if let Some(exchange) = self.lock().exchanges.get_mut(x) {
            exchange.bindings.remove(&(k.to_owned(), q.to_owned()));
        }
        Ok(())
    }

    /// Publishes `m` to exchange `x` (`""`: the default exchange). Returns
    /// [`Confirm::Returned`] when `mandatory` and routed nowhere, [`Confirm::Ack`] otherwise
    /// (an unroutable message that is not mandatory is dropped). An unknown exchange is an error.
    pub(crate) fn publish(
        &self,
        x: &str,
        m: &Message,
        mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        self.publish_cow(x, Cow::Borrowed(m), mandatory)
    }

    /// [`MemoryBroker::publish`] of a message the caller gives away: it is moved into its
    /// (last) queue instead of copied.
    pub(crate) fn publish_owned(
        &self,
        x: &str,
        m: Message,
        mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        self.publish_cow(x, Cow::Owned(m), mandatory)
    }

    fn publish_cow(
        &self,
        x: &str,
        m: Cow<'_, Message>,
        mandatory: bool,
    ) -> Result<Confirm, BrokerError> {
        let mut st = self.lock();
        if x.is_empty() && m.routing_key.starts_with(REPLY_TO_PREFIX) {
            let Some(sink) = st.replies.get(&m.routing_key).cloned() else {
                return Ok(confirm(mandatory, false));
            };
            drop(st);
            let key = m.routing_key.clone();
            // The sink runs outside the broker's lock (it may publish in turn).
            let delivered = sink.send(ReplyEvent::Reply(m.into_owned()));
            if !delivered {
                self.lock().replies.remove(&key);
            }
            return Ok(confirm(mandatory, delivered));
        }
        let mut targets = st.route(x, &m.routing_key)?;
        let routed = !targets.is_empty();
        if let Some(last) = targets.pop() {
            for target in &targets {
                st.enqueue(target, m.as_ref().clone(), x);
            }
            st.enqueue(&last, m.into_owned(), x);
        }
        Ok(confirm(mandatory, routed))
    }

    /// basic.get with auto-ack: takes the first ready message of `q`, if any.
    #[cfg(test)]
    pub(crate) fn get(&self, q: &str) -> Result<Option<Message>, BrokerError> {
        let mut st = self.lock();
        if !st.queues.contains_key(q) {
            return Err(no_queue(q));
        }
        st.expire(q);
        Ok(st
            .queues
            .get_mut(q)
            .and_then(Queue::pop_front)
            .map(|e| e.message))
    }

    /// Starts a consumer on `q` that holds at most `prefetch` unacked deliveries (0: no limit).
    pub(crate) fn consume(&self, q: &str, prefetch: u16) -> Result<MemoryConsumer, BrokerError> {
        let mut st = self.lock();
        let id = st.next_id();
        let queue = st.queues.get_mut(q).ok_or_else(|| no_queue(q))?;
        queue.consumers.insert(id, 0);
        Ok(MemoryConsumer {
            state: Arc::clone(&self.state),
            queue: Arc::from(q),
            uid: queue.uid,
            id,
            prefetch,
            notify: Arc::clone(&queue.notify),
        })
    }

    /// A new direct reply-to address; every message published to it (on the default exchange,
    /// with the address as routing key) is handed to `sink`, on the publisher's task.
    pub(crate) fn reply_consumer(&self, sink: ReplySink) -> String {
        let address = format!("{REPLY_TO_PREFIX}{}", uuid::Uuid::new_v4().simple());
        self.lock().replies.insert(address.clone(), sink);
        address
    }

    /// Consumers of `q`, `None` when it does not exist.
    pub(crate) fn consumer_count(&self, q: &str) -> Option<u32> {
        let st = self.lock();
        st.queues
            .get(q)
            .map(|q| u32::try_from(q.consumers.len()).unwrap_or(u32::MAX))
    }

    /// Creates the lock queue `name` unless it exists (then `false`); deleting it unlocks.
    pub(crate) fn try_lock(&self, name: &str) -> bool {
        let mut st = self.lock();
        if st.queues.contains_key(name) {
            return false;
        }
        let uid = st.next_id();
        st.queues
            .insert(name.to_owned(), Queue::new(uid, QueueSpec::temporary(name)));
        true
    }

    /// Number of ready messages in `q` (not counting unacked ones); an error when `q` does not
    /// exist, like a passive declare.
    pub(crate) fn queue_len(&self, q: &str) -> Result<u32, BrokerError> {
        let mut st = self.lock();
        if !st.queues.contains_key(q) {
            return Err(no_queue(q));
        }
        st.expire(q);
        let len = st.queues.get(q).map_or(0, |q| q.ready.len());
        Ok(u32::try_from(len).unwrap_or(u32::MAX))
    }

    /// Deletes `q` with its messages and bindings; its consumers end. Deleting a queue that
    /// does not exist is not an error.
    pub(crate) fn delete_queue(&self, q: &str) -> Result<(), BrokerError> {
        self.lock().remove_queue(q);
        Ok(())
    }

    /// Deletes `q` unless it has consumers; `true` when it was deleted.
    pub(crate) fn delete_queue_if_unused(&self, q: &str) -> bool {
        let mut st = self.lock();
        if st
            .queues
            .get(q)
            .is_none_or(|queue| !queue.consumers.is_empty())
        {
            return false;
        }
        st.remove_queue(q);
        true
    }

    /// Removes the ready messages of `q`; returns how many.
    pub(crate) fn purge_queue(&self, q: &str) -> Result<u32, BrokerError> {
        let mut st = self.lock();
        let queue = st.queues.get_mut(q).ok_or_else(|| no_queue(q))?;
        let n = queue.ready.len();
        queue.ready.clear();
        queue.expiring = 0;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Deletes exchange `x` with its bindings. Deleting an exchange that does not exist is not
    /// an error; deleting the default exchange is.
    pub(crate) fn delete_exchange(&self, x: &str) -> Result<(), BrokerError> {
        if x.is_empty() {
            return Err(BrokerError::new("cannot delete the default exchange"));
        }
        self.lock().exchanges.remove(x);
        Ok(())
    }
}

fn confirm(mandatory: bool, routed: bool) -> Confirm {
    if mandatory && !routed {
        Confirm::Returned
    } else {
        Confirm::Ack
    }
}

fn no_queue(q: &str) -> BrokerError {
    BrokerError::new(format!("no queue '{q}'"))
}

fn no_exchange(x: &str) -> BrokerError {
    BrokerError::new(format!("no exchange '{x}'"))
}

/// Locks the state; a panic while the lock was held leaves consistent data behind (every
/// mutation is a few infallible steps), so poisoning is ignored.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the broker holds.
#[derive(Debug)]
struct State {
    /// The `Arc` this state lives in, for the expiry timers.
    me: Weak<Mutex<State>>,
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    /// Direct reply-to addresses and their receivers.
    replies: HashMap<String, ReplySink>,
    /// Source of queue uids, consumer ids and delivery tags.
    next_id: u64,
}

/// A topic exchange.
#[derive(Debug, Default)]
struct Exchange {
    /// (binding key, queue name).
    bindings: BTreeSet<(String, String)>,
}

/// A queue.
#[derive(Debug)]
struct Queue {
    /// Tells this queue from an earlier one of the same name (deleted and declared again).
    uid: u64,
    spec: QueueSpec,
    ready: VecDeque<Entry>,
    /// How many entries of `ready` have an expiry time.
    expiring: usize,
    /// Delivered and not settled, by delivery tag.
    unacked: BTreeMap<u64, Unacked>,
    /// Consumer id -> number of unacked deliveries it holds.
    consumers: HashMap<u64, usize>,
    /// Wakes the consumers waiting for a message (or for the queue's deletion).
    notify: Arc<Notify>,
    /// Wakes the expiry timer task, while there is one.
    timer: Option<Arc<Notify>>,
}

/// A message in a queue.
#[derive(Debug)]
struct Entry {
    message: Message,
    /// The exchange it was published (or dead-lettered) to, for `x-death`.
    exchange: String,
    redelivered: bool,
    expires_at: Option<Instant>,
    /// Arrival order in the queue, to put requeued messages back in their original order.
    seq: u64,
}

/// A delivered, unsettled message.
#[derive(Debug)]
struct Unacked {
    entry: Entry,
    consumer: u64,
}

impl Queue {
    fn new(uid: u64, spec: QueueSpec) -> Self {
        Queue {
            uid,
            spec,
            ready: VecDeque::new(),
            expiring: 0,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            notify: Arc::new(Notify::new()),
            timer: None,
        }
    }

    fn push_back(&mut self, e: Entry) {
        self.expiring += usize::from(e.expires_at.is_some());
        self.ready.push_back(e);
    }

    fn push_front(&mut self, e: Entry) {
        self.expiring += usize::from(e.expires_at.is_some());
        self.ready.push_front(e);
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.ready.pop_front()?;
        self.expiring -= usize::from(e.expires_at.is_some());
        Some(e)
    }

    /// Removes and returns the ready entries whose time is up, in queue order.
    fn take_expired(&mut self, now: Instant) -> Vec<Entry> {
        if self.expiring == 0 {
            return Vec::new();
        }
        let (expired, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|e| e.expires_at.is_some_and(|t| t <= now));
        self.ready = kept.into();
        self.expiring -= expired.len();
        expired
    }

    /// When the next ready entry expires.
    fn next_deadline(&self) -> Option<Instant> {
        if self.expiring == 0 {
            return None;
        }
        self.ready.iter().filter_map(|e| e.expires_at).min()
    }
}

/// What a consumer found in its queue.
enum Take {
    /// A delivery.
    Delivery(Box<InboundDelivery>),
    /// Nothing for now (empty, or the prefetch window is full).
    Wait,
    /// The queue (or the consumer) is gone.
    Gone,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn queue_mut(&mut self, name: &str, uid: u64) -> Option<&mut Queue> {
        self.queues.get_mut(name).filter(|q| q.uid == uid)
    }

    /// The queues a message published to `exchange` with `routing_key` goes to, each once.
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(routing_key) {
                vec![routing_key.to_owned()]
            } else {
                Vec::new()
            });
        }
        let x = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        let targets: BTreeSet<&String> = x
            .bindings
            .iter()
            .filter(|(key, _)| pattern_matches(key, routing_key))
            .map(|(_, queue)| queue)
            .collect();
        Ok(targets.into_iter().cloned().collect())
    }

    /// Appends a message to a queue, with its expiry time (the queue's TTL or the message's
    /// own expiration, whichever is sooner), and wakes the queue's consumers.
    fn enqueue(&mut self, queue: &str, message: Message, exchange: &str) {
        let seq = self.next_id();
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        let ttl = match (q.spec.message_ttl, message.properties.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        q.push_back(Entry {
            message,
            exchange: exchange.to_owned(),
            redelivered: false,
            expires_at,
            seq,
        });
        q.notify.notify_waiters();
        if expires_at.is_some() {
            self.arm_timer(queue);
        }
    }

    /// Makes sure the expiry timer of `queue` runs and looks at the queue again.
    fn arm_timer(&mut self, queue: &str) {
        let me = self.me.clone();
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        if let Some(kick) = &q.timer {
            kick.notify_one();
            return;
        }
        // Without a runtime, expiry is noticed lazily when the queue is next touched.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let kick = Arc::new(Notify::new());
            q.timer = Some(Arc::clone(&kick));
            rt.spawn(expiry_timer(me, queue.to_owned(), q.uid, kick));
        }
    }

    /// Removes the expired ready messages of `queue`, dead-lettering them if it has a DLX.
    fn expire(&mut self, queue: &str) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        for entry in q.take_expired(Instant::now()) {
            self.dead_letter(queue, entry, EXPIRED);
        }
    }

    /// Sends a message that left `from` for `reason` to the queue's dead-letter exchange, with
    /// an `x-death` record, or drops it when the queue has none.
    fn dead_letter(&mut self, from: &str, entry: Entry, reason: &str) {
        let Some((exchange, routing_key)) = self
            .queues
            .get(from)
            .and_then(|q| q.spec.dead_letter.clone())
        else {
            return;
        };
        let mut message = entry.message;
        let original_expiration = message.properties.expiration.take();
        record_death(
            &mut message,
            from,
            reason,
            &entry.exchange,
            original_expiration,
        );
        message.routing_key = routing_key;
        // An unknown dead-letter exchange drops the message, as RabbitMQ does.
        let Ok(targets) = self.route(&exchange, &message.routing_key) else {
            return;
        };
        let deaths = death_path(&message.properties.headers);
        for target in targets {
            if reason != REJECTED && is_cycle(&target, &deaths) {
                tracing::debug!(queue = %target, "memory broker: dropping dead-letter cycle");
                continue;
            }
            self.enqueue(&target, message.clone(), &exchange);
        }
    }

    /// Hands the first ready message of a queue to a consumer with room in its window.
    fn take(&mut self, queue: &Arc<str>, uid: u64, consumer: u64, prefetch: u16) -> Take {
        let Some(q) = self.queue_mut(queue, uid) else {
            return Take::Gone;
        };
        if q.expiring > 0 {
            self.expire(queue);
        }
        let tag = self.next_id();
        let state = self.me.upgrade();
        let Some(q) = self.queue_mut(queue, uid) else {
            return Take::Gone;
        };
        let Some(held) = q.consumers.get(&consumer).copied() else {
            return Take::Gone;
        };
        if prefetch != 0 && held >= usize::from(prefetch) {
            return Take::Wait;
        }
        let Some(state) = state else {
            return Take::Gone;
        };
        let Some(entry) = q.pop_front() else {
            return Take::Wait;
        };
        q.consumers.insert(consumer, held + 1);
        let delivery = InboundDelivery {
            message: entry.message.clone(),
            redelivered: entry.redelivered,
            acker: Acker::Memory(MemoryAcker {
                state,
                queue: Arc::clone(queue),
                uid,
                tag,
            }),
        };
        q.unacked.insert(tag, Unacked { entry, consumer });
        Take::Delivery(Box::new(delivery))
    }

    /// Settles one delivery.
    fn settle(&mut self, queue: &str, uid: u64, tag: u64, how: Settle) -> Result<(), BrokerError> {
        // A deleted queue took its unacked messages with it: nothing left to settle.
        let Some(q) = self.queue_mut(queue, uid) else {
            return Ok(());
        };
        let Some(Unacked {
            mut entry,
            consumer,
        }) = q.unacked.remove(&tag)
        else {
            return Err(BrokerError::new(format!(
                "unknown delivery tag {tag} on queue '{queue}' (already settled, or its consumer \
                 was dropped)"
            )));
        };
        if let Some(held) = q.consumers.get_mut(&consumer) {
            *held = held.saturating_sub(1);
        }
        match how {
            Settle::Ack => q.notify.notify_waiters(),
            Settle::Requeue => {
                entry.redelivered = true;
                let expires = entry.expires_at.is_some();
                q.push_front(entry);
                q.notify.notify_waiters();
                if expires {
                    self.arm_timer(queue);
                }
            }
            Settle::Reject => {
                q.notify.notify_waiters();
                self.dead_letter(queue, entry, REJECTED);
            }
        }
        Ok(())
    }

    /// Acks delivery `tag` and every earlier unsettled delivery of the same consumer
    /// (`basic.ack` with `multiple`).
    fn ack_multiple(&mut self, queue: &str, uid: u64, tag: u64) -> Result<(), BrokerError> {
        let Some(q) = self.queue_mut(queue, uid) else {
            return Ok(());
        };
        let Some(consumer) = q.unacked.get(&tag).map(|u| u.consumer) else {
            return Err(BrokerError::new(format!(
                "unknown delivery tag {tag} on queue '{queue}' (already settled, or its consumer \
                 was dropped)"
            )));
        };
        // What `settle(.., Ack)` of each one does, with one queue lookup and one wake-up.
        let later = q.unacked.split_off(&tag.saturating_add(1));
        let up_to = std::mem::replace(&mut q.unacked, later);
        let mut acked = 0;
        for (t, u) in up_to {
            if u.consumer == consumer {
                acked += 1;
            } else {
                q.unacked.insert(t, u);
            }
        }
        if let Some(held) = q.consumers.get_mut(&consumer) {
            *held = held.saturating_sub(acked);
        }
        q.notify.notify_waiters();
        Ok(())
    }

    /// Removes a consumer; its unacked messages go back to the head of the queue in their
    /// original order, marked redelivered.
    fn remove_queue(&mut self, q: &str) {
        if let Some(queue) = self.queues.remove(q) {
            queue.notify.notify_waiters();
            if let Some(kick) = &queue.timer {
                kick.notify_one();
            }
            for exchange in self.exchanges.values_mut() {
                exchange.bindings.retain(|(_, bound)| bound != q);
            }
        }
    }

    fn cancel(&mut self, queue: &str, uid: u64, consumer: u64) {
        let Some(q) = self.queue_mut(queue, uid) else {
            return;
        };
        q.consumers.remove(&consumer);
        if (q.spec.auto_delete || q.spec.expires.is_some()) && q.consumers.is_empty() {
            self.remove_queue(queue);
            return;
        }
        let tags: Vec<u64> = q
            .unacked
            .iter()
            .filter(|(_, u)| u.consumer == consumer)
            .map(|(tag, _)| *tag)
            .collect();
        if tags.is_empty() {
            return;
        }
        let mut entries: Vec<Entry> = tags
            .iter()
            .filter_map(|tag| q.unacked.remove(tag))
            .map(|u| u.entry)
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        for mut entry in entries {
            entry.redelivered = true;
            q.push_front(entry);
        }
        q.notify.notify_waiters();
        if q.expiring > 0 {
            self.arm_timer(queue);
        }
    }
}

/// Expires the messages of one queue on time; ends when the queue has nothing left that can
/// expire, when it is deleted, or when the broker is gone.
async fn expiry_timer(state: Weak<Mutex<State>>, queue: String, uid: u64, kick: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(state) = state.upgrade() else {
                return;
            };
            let mut st = lock(&state);
            if st.queue_mut(&queue, uid).is_none() {
                return;
            }
            st.expire(&queue);
            let Some(q) = st.queue_mut(&queue, uid) else {
                return;
            };
            match q.next_deadline() {
                Some(deadline) => deadline,
                None => {
                    q.timer = None;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = kick.notified() => {}
        }
    }
}

/// Adds (or updates) the `x-death` record of a message dead-lettered from `queue`, most
/// recent first, as RabbitMQ does, with the `x-first-death-*` and `x-last-death-*` headers.
fn record_death(
    message: &mut Message,
    queue: &str,
    reason: &str,
    exchange: &str,
    original_expiration: Option<Duration>,
) {
    let headers = &mut message.properties.headers;
    let mut deaths = match headers.remove("x-death") {
        Some(HeaderValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| {
        matches!(d, HeaderValue::Table(t)
            if str_field(t, "queue") == Some(queue) && str_field(t, "reason") == Some(reason))
    });
    let mut record = match same.map(|i| deaths.remove(i)) {
        Some(HeaderValue::Table(t)) => t,
        _ => Headers::new(),
    };
    let count = record
        .get("count")
        .and_then(HeaderValue::as_i64)
        .unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    record.insert(
        "count".to_owned(),
        HeaderValue::Int(count.saturating_add(1)),
    );
    record.insert("reason".to_owned(), reason.into());
    record.insert("queue".to_owned(), queue.into());
    record.insert("time".to_owned(), HeaderValue::Int(now));
    record.insert("exchange".to_owned(), exchange.into());
    record.insert(
        "routing-keys".to_owned(),
        HeaderValue::Array(vec![message.routing_key.as_str().into()]),
    );
    if let Some(exp) = original_expiration {
        record.insert(
            "original-expiration".to_owned(),
            exp.as_millis().to_string().into(),
        );
    }
    deaths.insert(0, HeaderValue::Table(record));
    headers.insert("x-death".to_owned(), HeaderValue::Array(deaths));
    for (key, value) in [("queue", queue), ("reason", reason), ("exchange", exchange)] {
        headers
            .entry(format!("x-first-death-{key}"))
            .or_insert_with(|| value.into());
        headers.insert(format!("x-last-death-{key}"), value.into());
    }
}

fn str_field<'a>(t: &'a Headers, key: &str) -> Option<&'a str> {
    t.get(key).and_then(HeaderValue::as_str)
}

/// (queue, reason) of each `x-death` record, most recent first.
fn death_path(headers: &Headers) -> Vec<(String, String)> {
    let Some(HeaderValue::Array(deaths)) = headers.get("x-death") else {
        return Vec::new();
    };
    deaths
        .iter()
        .filter_map(|d| match d {
            HeaderValue::Table(t) => Some((
                str_field(t, "queue")?.to_owned(),
                str_field(t, "reason")?.to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// RabbitMQ's cycle rule: dead-lettering to `target` is a cycle when the message was already
/// dead-lettered from `target` and nothing on the way since was a reject.
fn is_cycle(target: &str, deaths: &[(String, String)]) -> bool {
    match deaths.iter().position(|(queue, _)| queue == target) {
        None => false,
        Some(i) => deaths[..=i].iter().all(|(_, reason)| reason != REJECTED),
    }
}

/// Deliveries from one memory queue.
///
/// Dropping it returns its unacked messages to the queue, marked redelivered.
pub(crate) struct MemoryConsumer {
    state: Arc<Mutex<State>>,
    /// Shared with the ackers of its deliveries (no copy of the name per delivery).
    queue: Arc<str>,
    uid: u64,
    id: u64,
    prefetch: u16,
    notify: Arc<Notify>,
}

// Not derived: the shared state would print the whole broker.
impl fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl MemoryConsumer {
    /// The next delivery, waiting for one; `None` once the queue is deleted.
    pub(crate) async fn next(&mut self) -> Option<InboundDelivery> {
        loop {
            // Registered before looking, so a message that arrives in between is not missed.
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let taken = lock(&self.state).take(&self.queue, self.uid, self.id, self.prefetch);
            match taken {
                Take::Delivery(d) => return Some(*d),
                Take::Gone => return None,
                Take::Wait => notified.await,
            }
        }
    }
}

impl MemoryConsumer {
    /// The next delivery if one is ready now, without waiting (browsing a queue).
    pub(crate) fn try_next(&mut self) -> Option<InboundDelivery> {
        match lock(&self.state).take(&self.queue, self.uid, self.id, self.prefetch) {
            Take::Delivery(d) => Some(*d),
            Take::Wait | Take::Gone => None,
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        lock(&self.state).cancel(&self.queue, self.uid, self.id);
    }
}

/// Settles one memory delivery.
///
/// Dropping it unsettled leaves the message unacked until its consumer is dropped.
pub(crate) struct MemoryAcker {
    state: Arc<Mutex<State>>,
    queue: Arc<str>,
    uid: u64,
    tag: u64,
}

impl fmt::Debug for MemoryAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcker")
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl MemoryAcker {
    /// Acknowledges: the message leaves the queue.
    pub(crate) fn ack(&self) -> Result<(), BrokerError> {
        lock(&self.state).settle(&self.queue, self.uid, self.tag, Settle::Ack)
    }

    /// Acknowledges this delivery and every earlier unsettled one of its consumer.
    pub(crate) fn ack_multiple(&self) -> Result<(), BrokerError> {
        lock(&self.state).ack_multiple(&self.queue, self.uid, self.tag)
    }

    /// Rejects: back to the head of the queue (`requeue`, redelivered next time), or dropped,
    /// or dead-lettered when the queue has a dead-letter exchange.
    pub(crate) fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        let how = if requeue {
            Settle::Requeue
        } else {
            Settle::Reject
        };
        lock(&self.state).settle(&self.queue, self.uid, self.tag, how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::QueueType;

    const WAIT: Duration = Duration::from_secs(5);
    /// How long to wait to see that nothing arrives.
    const QUIET: Duration = Duration::from_millis(50);

    fn msg(key: &str, body: &str) -> Message {
        Message {
            routing_key: key.to_owned(),
            body: body.as_bytes().to_vec(),
            ..Message::default()
        }
    }

    fn queue(b: &MemoryBroker, name: &str) {
        b.declare_queue(&QueueSpec::durable(name, QueueType::Classic))
            .unwrap();
    }

    async fn next(c: &mut MemoryConsumer) -> InboundDelivery {
        tokio::time::timeout(WAIT, c.next())
            .await
            .expect("a delivery in time")
            .expect("consumer still open")
    }

    async fn nothing(c: &mut MemoryConsumer) {
        assert!(
            tokio::time::timeout(QUIET, c.next()).await.is_err(),
            "unexpected delivery"
        );
    }

    fn ack(d: &InboundDelivery) {
        match &d.acker {
            Acker::Memory(a) => a.ack().unwrap(),
            Acker::Amqp(_) => unreachable!(),
        }
    }

    fn nack(d: &InboundDelivery, requeue: bool) {
        match &d.acker {
            Acker::Memory(a) => a.nack(requeue).unwrap(),
            Acker::Amqp(_) => unreachable!(),
        }
    }

    fn body(d: &InboundDelivery) -> &str {
        std::str::from_utf8(&d.message.body).unwrap()
    }

    #[test]
    fn topic_routing_table() {
        let b = MemoryBroker::new();
        b.declare_exchange("x").unwrap();
        b.declare_exchange("x").unwrap();
        let patterns = crate::topic::PATTERNS;
        for (i, p) in patterns.iter().enumerate() {
            let q = format!("q{i}");
            queue(&b, &q);
            b.bind(&q, "x", p).unwrap();
        }
        // One queue bound twice with patterns that both match: one copy.
        queue(&b, "both");
        b.bind("both", "x", "user.*").unwrap();
        b.bind("both", "x", "#.created").unwrap();
        b.bind("both", "x", "#.created").unwrap();

        let table = crate::topic::PATTERN_TABLE;
        for (key, expected) in table {
            assert_eq!(b.publish("x", &msg(key, key), true).unwrap(), Confirm::Ack);
            for (i, p) in patterns.iter().enumerate() {
                let got = b.get(&format!("q{i}")).unwrap();
                if expected.contains(p) {
                    assert_eq!(got.unwrap().routing_key, *key, "{p} should get {key}");
                } else {
                    assert!(got.is_none(), "{p} should not get {key}");
                }
            }
        }
        // user.created, order.created, user.deleted; the first matched both bindings.
        assert_eq!(b.queue_len("both").unwrap(), 3);
    }

    #[test]
    fn default_exchange_unknown_exchange_and_mandatory() {
        let b = MemoryBroker::new();
        queue(&b, "svc");
        assert_eq!(b.publish("", &msg("svc", "a"), true).unwrap(), Confirm::Ack);
        assert_eq!(
            b.publish("", &msg("nope", "a"), true).unwrap(),
            Confirm::Returned
        );
        assert_eq!(
            b.publish("", &msg("nope", "a"), false).unwrap(),
            Confirm::Ack
        );
        assert!(b.publish("missing", &msg("svc", "a"), false).is_err());
        b.declare_exchange("x").unwrap();
        assert_eq!(
            b.publish("x", &msg("a.b", "a"), true).unwrap(),
            Confirm::Returned
        );
        assert_eq!(
            b.publish("x", &msg("a.b", "a"), false).unwrap(),
            Confirm::Ack
        );
        b.bind("svc", "x", "a.*").unwrap();
        assert_eq!(
            b.publish("x", &msg("a.b", "b"), true).unwrap(),
            Confirm::Ack
        );
        b.unbind("svc", "x", "a.*").unwrap();
        assert_eq!(
            b.publish("x", &msg("a.b", "c"), true).unwrap(),
            Confirm::Returned
        );
        assert_eq!(b.queue_len("svc").unwrap(), 2);
        b.bind("svc", "x", "#").unwrap();
        b.delete_exchange("x").unwrap();
        assert!(b.publish("x", &msg("a.b", "d"), false).is_err());
        b.declare_exchange("x").unwrap();
        assert_eq!(
            b.publish("x", &msg("a.b", "d"), true).unwrap(),
            Confirm::Returned
        );
        assert!(b.bind("nope", "x", "#").is_err());
        assert!(b.bind("svc", "nope", "#").is_err());
    }

    #[test]
    fn declare_get_len_delete() {
        let b = MemoryBroker::new();
        assert!(b.queue_len("q").is_err());
        assert!(b.get("q").is_err());
        assert!(b.consume("q", 1).is_err());
        queue(&b, "q");
        b.publish("", &msg("q", "1"), false).unwrap();
        b.publish("", &msg("q", "2"), false).unwrap();
        // Declaring again keeps the messages; different arguments are refused.
        queue(&b, "q");
        let mut other = QueueSpec::durable("q", QueueType::Classic);
        other.message_ttl = Some(Duration::from_secs(1));
        assert!(b.declare_queue(&other).is_err());
        assert_eq!(b.queue_len("q").unwrap(), 2);
        assert_eq!(b.get("q").unwrap().unwrap().body, b"1");
        assert_eq!(b.queue_len("q").unwrap(), 1);
        assert_eq!(b.get("q").unwrap().unwrap().body, b"2");
        assert_eq!(b.get("q").unwrap(), None);
        b.delete_queue("q").unwrap();
        assert!(b.queue_len("q").is_err());
        b.delete_queue("q").unwrap();
        // Clones share the broker.
        let c = b.clone();
        queue(&c, "q");
        assert_eq!(b.queue_len("q").unwrap(), 0);
    }

    #[tokio::test]
    async fn competing_consumers_get_distinct_messages() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        let mut c1 = b.consume("q", 1).unwrap();
        let mut c2 = b.consume("q", 1).unwrap();
        for i in 0..4 {
            b.publish("", &msg("q", &i.to_string()), false).unwrap();
        }
        let d1 = next(&mut c1).await;
        let d2 = next(&mut c2).await;
        assert_eq!((body(&d1), body(&d2)), ("0", "1"));
        nothing(&mut c1).await;
        nothing(&mut c2).await;
        ack(&d1);
        ack(&d2);
        let d3 = next(&mut c2).await;
        let d4 = next(&mut c1).await;
        assert_eq!((body(&d3), body(&d4)), ("2", "3"));
    }

    #[tokio::test]
    async fn waiting_consumers_are_woken() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        let mut consumers: Vec<MemoryConsumer> =
            (0..3).map(|_| b.consume("q", 0).unwrap()).collect();
        let tasks: Vec<_> = consumers
            .drain(..)
            .map(|mut c| {
                tokio::spawn(async move {
                    let d = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
                    ack(&d);
                    d.message.body
                })
            })
            .collect();
        tokio::task::yield_now().await;
        for i in 0..3 {
            b.publish("", &msg("q", &i.to_string()), false).unwrap();
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(String::from_utf8(t.await.unwrap()).unwrap());
        }
        got.sort();
        assert_eq!(got, ["0", "1", "2"]);
    }

    #[tokio::test]
    async fn prefetch_limits_unacked() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        for i in 0..5 {
            b.publish("", &msg("q", &i.to_string()), false).unwrap();
        }
        let mut c = b.consume("q", 2).unwrap();
        let d0 = next(&mut c).await;
        let d1 = next(&mut c).await;
        nothing(&mut c).await;
        assert_eq!(b.queue_len("q").unwrap(), 3);
        ack(&d0);
        let d2 = next(&mut c).await;
        assert_eq!(body(&d2), "2");
        nothing(&mut c).await;
        ack(&d1);
        ack(&d2);
        // Prefetch 0: no limit.
        let mut all = b.consume("q", 0).unwrap();
        let d3 = next(&mut all).await;
        let d4 = next(&mut all).await;
        assert_eq!((body(&d3), body(&d4)), ("3", "4"));
    }

    /// `multiple` acks this delivery and the earlier unsettled ones of the same consumer only,
    /// skipping ones already settled (as RabbitMQ does), and not another consumer's.
    #[tokio::test]
    async fn multiple_ack_covers_earlier_deliveries_of_its_consumer() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        for i in 0..6 {
            b.publish("", &msg("q", &i.to_string()), false).unwrap();
        }
        let mut c = b.consume("q", 0).unwrap();
        let mut other = b.consume("q", 0).unwrap();
        let d0 = next(&mut c).await;
        let o1 = next(&mut other).await;
        let d2 = next(&mut c).await;
        let d3 = next(&mut c).await;
        let d4 = next(&mut c).await;
        ack(&d2); // already settled: skipped by the multiple ack below
        match &d3.acker {
            Acker::Memory(a) => a.ack_multiple().unwrap(),
            Acker::Amqp(_) => unreachable!(),
        }
        // d0 and d3 are gone; the other consumer's o1 and the later d4 are still unacked.
        match &d0.acker {
            Acker::Memory(a) => assert!(a.ack().is_err(), "d0 was covered"),
            Acker::Amqp(_) => unreachable!(),
        }
        ack(&o1);
        ack(&d4);
        let d5 = next(&mut c).await;
        assert_eq!(body(&d5), "5");
        ack(&d5);
        drop((c, other));
        assert_eq!(
            b.queue_len("q").unwrap(),
            0,
            "nothing returned to the queue"
        );
    }

    #[tokio::test]
    async fn ack_and_nack() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        b.publish("", &msg("q", "a"), false).unwrap();
        b.publish("", &msg("q", "b"), false).unwrap();
        let mut c = b.consume("q", 0).unwrap();
        let d = next(&mut c).await;
        assert_eq!((body(&d), d.redelivered), ("a", false));
        nack(&d, true);
        // Settling twice is an error.
        match &d.acker {
            Acker::Memory(a) => assert!(a.ack().is_err()),
            Acker::Amqp(_) => unreachable!(),
        }
        let d = next(&mut c).await;
        assert_eq!((body(&d), d.redelivered), ("a", true));
        ack(&d);
        let d = next(&mut c).await;
        assert_eq!((body(&d), d.redelivered), ("b", false));
        nack(&d, false);
        nothing(&mut c).await;
        assert_eq!(b.queue_len("q").unwrap(), 0);
    }

    #[tokio::test]
    async fn nack_without_requeue_dead_letters() {
        let b = MemoryBroker::new();
        queue(&b, "dlq");
        let mut spec = QueueSpec::durable("svc", QueueType::Classic);
        spec.dead_letter = Some((String::new(), "dlq".to_owned()));
        b.declare_queue(&spec).unwrap();
        b.publish("", &msg("svc", "a"), false).unwrap();
        let mut c = b.consume("svc", 1).unwrap();
        let d = next(&mut c).await;
        nack(&d, false);
        let dead = b.get("dlq").unwrap().unwrap();
        assert_eq!(dead.body, b"a");
        assert_eq!(dead.routing_key, "dlq");
        let h = &dead.properties.headers;
        assert_eq!(h["x-first-death-reason"].as_str(), Some("rejected"));
        assert_eq!(h["x-first-death-queue"].as_str(), Some("svc"));
    }

    #[tokio::test]
    async fn dropped_consumer_requeues() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        for i in 0..3 {
            b.publish("", &msg("q", &i.to_string()), false).unwrap();
        }
        let mut c1 = b.consume("q", 0).unwrap();
        let d0 = next(&mut c1).await;
        let d1 = next(&mut c1).await;
        ack(&d0);
        let mut c2 = b.consume("q", 0).unwrap();
        let d2 = next(&mut c2).await;
        assert_eq!(body(&d2), "2");
        drop(c1);
        // Its acker outlives it but the message went back.
        match &d1.acker {
            Acker::Memory(a) => assert!(a.ack().is_err()),
            Acker::Amqp(_) => unreachable!(),
        }
        let d = next(&mut c2).await;
        assert_eq!((body(&d), d.redelivered), ("1", true));
        // Dropping an acker does not settle the message.
        drop(d);
        nothing(&mut c2).await;
        drop(c2);
        assert_eq!(b.queue_len("q").unwrap(), 2);
        assert_eq!(b.get("q").unwrap().unwrap().body, b"1");
        assert_eq!(b.get("q").unwrap().unwrap().body, b"2");
    }

    #[tokio::test]
    async fn deleted_queue_ends_consumers() {
        let b = MemoryBroker::new();
        queue(&b, "q");
        let mut c = b.consume("q", 0).unwrap();
        let waiting = tokio::spawn(async move { tokio::time::timeout(WAIT, c.next()).await });
        tokio::task::yield_now().await;
        b.delete_queue("q").unwrap();
        assert!(waiting.await.unwrap().unwrap().is_none());
    }

    #[tokio::test]
    async fn direct_reply_to() {
        let b = MemoryBroker::new();
        let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
        let sink = ReplySink::new(move |e| match e {
            ReplyEvent::Reply(m) => tx.send(m).is_ok(),
            ReplyEvent::Returned { .. } => true,
        });
        let address = b.reply_consumer(sink.clone());
        assert!(address.starts_with("amq.rabbitmq.reply-to."));
        let other = b.reply_consumer(sink);
        assert_ne!(address, other);
        assert_eq!(
            b.publish("", &msg(&address, "r"), true).unwrap(),
            Confirm::Ack
        );
        let got = tokio::time::timeout(WAIT, replies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.routing_key.as_str(), got.body.as_slice()),
            (address.as_str(), &b"r"[..])
        );
        // Nobody listens any more: the sink says so, and the address is gone.
        drop(replies);
        assert_eq!(
            b.publish("", &msg(&address, "r"), false).unwrap(),
            Confirm::Ack
        );
        assert_eq!(
            b.publish("", &msg(&address, "r"), true).unwrap(),
            Confirm::Returned
        );
    }

    #[tokio::test]
    async fn ttl_dead_letters_to_service_queue() {
        let b = MemoryBroker::new();
        b.declare_exchange("events").unwrap();
        queue(&b, "svc");
        let mut wait = QueueSpec::durable("svc.wait", QueueType::Classic);
        wait.message_ttl = Some(Duration::from_millis(30));
        wait.dead_letter = Some((String::new(), "svc".to_owned()));
        b.declare_queue(&wait).unwrap();
        let mut c = b.consume("svc", 1).unwrap();
        b.publish("", &msg("svc.wait", "retry"), true).unwrap();
        assert_eq!(b.queue_len("svc.wait").unwrap(), 1);
        let d = next(&mut c).await;
        assert_eq!(body(&d), "retry");
        assert_eq!(d.message.routing_key, "svc");
        assert_eq!(b.queue_len("svc.wait").unwrap(), 0);
        let Some(HeaderValue::Array(deaths)) = d.message.properties.headers.get("x-death") else {
            panic!("no x-death");
        };
        let HeaderValue::Table(death) = &deaths[0] else {
            panic!("bad x-death");
        };
        assert_eq!(death["reason"].as_str(), Some("expired"));
        assert_eq!(death["queue"].as_str(), Some("svc.wait"));
        assert_eq!(death["count"].as_i64(), Some(1));
        ack(&d);

        // Second round: the count grows, the message is not taken for a cycle.
        let mut again = d.message.clone();
        again.routing_key = "svc.wait".to_owned();
        b.publish("", &again, true).unwrap();
        let d = next(&mut c).await;
        let Some(HeaderValue::Array(deaths)) = d.message.properties.headers.get("x-death") else {
            panic!("no x-death");
        };
        assert_eq!(deaths.len(), 1);
        let HeaderValue::Table(death) = &deaths[0] else {
            panic!("bad x-death");
        };
        assert_eq!(death["count"].as_i64(), Some(2));
    }

    #[tokio::test]
    async fn per_message_expiration() {
        let b = MemoryBroker::new();
        queue(&b, "plain");
        queue(&b, "dlq");
        let mut spec = QueueSpec::durable("dlx", QueueType::Classic);
        spec.dead_letter = Some((String::new(), "dlq".to_owned()));
        b.declare_queue(&spec).unwrap();
        let mut m = msg("dlx", "x");
        m.properties.expiration = Some(Duration::from_millis(20));
        let mut keep = msg("dlx", "keep");
        keep.properties.expiration = Some(Duration::from_secs(3600));
        b.publish("", &m, false).unwrap();
        b.publish("", &keep, false).unwrap();
        let mut c = b.consume("dlq", 0).unwrap();
        let d = next(&mut c).await;
        assert_eq!(body(&d), "x");
        // The expiration is removed from a dead-lettered message, kept in x-death.
        assert_eq!(d.message.properties.expiration, None);
        assert_eq!(b.queue_len("dlx").unwrap(), 1);

        // Without a dead-letter exchange, an expired message is dropped.
        m.routing_key = "plain".to_owned();
        b.publish("", &m, false).unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(b.queue_len("plain").unwrap(), 0);
        assert_eq!(b.get("plain").unwrap(), None);
    }

    #[tokio::test]
    async fn expiry_cycle_is_dropped() {
        let b = MemoryBroker::new();
        queue(&b, "sink");
        b.declare_exchange("x").unwrap();
        b.bind("sink", "x", "#").unwrap();
        let mut spec = QueueSpec::durable("loop", QueueType::Classic);
        spec.message_ttl = Some(Duration::from_millis(10));
        spec.dead_letter = Some(("x".to_owned(), "again".to_owned()));
        b.declare_queue(&spec).unwrap();
        b.bind("loop", "x", "#").unwrap();
        let mut c = b.consume("sink", 0).unwrap();
        b.publish("", &msg("loop", "m"), false).unwrap();
        // The copy for `sink` arrives; the one back to `loop` is a cycle and is dropped.
        let d = next(&mut c).await;
        assert_eq!(d.message.routing_key, "again");
        assert_eq!(b.queue_len("loop").unwrap(), 0);
        nothing(&mut c).await;
    }

    #[test]
    fn next_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let b = MemoryBroker::new();
        queue(&b, "q");
        let mut c = b.consume("q", 0).unwrap();
        assert_send(&c.next());
    }
}
