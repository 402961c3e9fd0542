//! Declares a service's topology from its subscriptions: the durable topic exchange, the
//! service's durable queue, its dead-letter queue, and exactly one binding per distinct
//! pattern; and keeps the bindings right while several versions of the service run side by
//! side (a rolling deploy, a rollback, a canary). See `docs/deploys.md`.
//!
//! - **Versions.** A version is one set of (pattern, handler id) pairs; its name is a hash of
//!   them. Each running instance consumes its version's *presence queue*
//!   `<service>.tchu.v.<hash>` (`x-expires` 30 s, nothing is ever published to it). A passive
//!   declare says how it runs: *connected* (the queue has a consumer), *absent* (the queue
//!   exists without one, for less than [`PRESENCE_GRACE`] as measured by the observer: a
//!   reconnect, or a `kill -9`; its bindings stay), or gone (no queue: the last instance
//!   stopped gracefully and deleted it; or absent for longer than the grace).
//! - **Records.** AMQP cannot list bindings, so each version leaves one persistent *record*
//!   message (its exchange, patterns and handler ids) in the durable queue
//!   `<service>.tchu.bindings`. Records are read with `basic.get` and manual acks, and the read
//!   ends by closing the channel, so a record returns to the queue unless it is deliberately
//!   acked: a crash at any instant loses none. A new record is published with a confirm before
//!   any old one is acked.
//! - **Reconcile** (at start-up, after a reconnect, and every [`RECONCILE_EVERY`]), under a
//!   lock (an exclusive queue `<service>.tchu.lock`, released by the broker if its holder
//!   dies): read every record, learn which versions run, write this version's record if it is
//!   missing, unbind the patterns of versions that no longer run unless a running one also
//!   subscribes to them, and only then ack those versions' records. A binding is therefore
//!   never removed while an instance that subscribes to it runs (nor during the grace after it
//!   lost its connection), and a stale one goes within one reconcile period after its last
//!   instance stops gracefully. Each reconcile is bounded by [`RECONCILE_TIMEOUT`]; one whose
//!   reads time out changes nothing.
//! - **Hand-off.** A delivery that reaches an instance with no handler for it while another
//!   connected version has one is sent back through the wait queue `<service>.tchu.handoff`
//!   (a short TTL, then the broker dead-letters it to the service queue, where another
//!   instance may take it) with a hop count; after [`MAX_HOPS`] it is dead-lettered. One that
//!   no running version handles is dead-lettered at once, with a reason that says so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::broker::{Broker, Confirm, Consumer, QueueSpec, QueueType};
use crate::error::BrokerError;
use crate::message::{HeaderValue, Message, Properties};
use crate::topic::Pattern;

/// How often every instance reconciles the bindings with the running versions.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How many times a delivery may be handed back to the service queue for another version.
pub(crate) const MAX_HOPS: i64 = 40;
/// How long a handed-off delivery waits before it returns to the service queue.
const HANDOFF_WAIT: Duration = Duration::from_millis(50);
/// How long a presence queue outlives its last consumer (`x-expires`) when nobody looks at it:
/// long enough for lapin to recover a lost connection and consume it again. (A passive declare
/// renews the lease, so while other instances reconcile, [`PRESENCE_GRACE`] decides instead.)
const PRESENCE_EXPIRES: Duration = Duration::from_secs(30);
/// How long a version whose presence queue still exists but has no consumer (its instances
/// are reconnecting, or were killed without a graceful stop) still counts as running, measured
/// from the first reconcile that sees it so: its bindings stay meanwhile. A graceful stop
/// deletes the presence queue when it is the last consumer, so it counts as stopped at once.
pub(crate) const PRESENCE_GRACE: Duration = Duration::from_secs(30);
/// The bound of one reconcile's reads (records, presence queues), and again of its writes. A
/// reconcile whose reads do not finish within it changes nothing: no binding is removed, no
/// record acked; it is logged at `warn` and the next one tries again.
pub(crate) const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);
/// The hop count of a handed-off delivery.
pub(crate) const HOPS_HEADER: &str = "x-tchu-handoff-hops";
/// How long start-up waits for another instance's reconcile to release the lock.
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// The names and bindings of one service.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub(crate) exchange: String,
    pub(crate) queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) patterns: Vec<Pattern>,
    /// What this version runs: (pattern, handler id), sorted.
    handlers: Vec<(String, String)>,
    versions: Arc<Versions>,
    /// [`PRESENCE_GRACE`] (shorter in tests).
    grace: Duration,
    /// [`RECONCILE_TIMEOUT`] (shorter in tests).
    reconcile_timeout: Duration,
}

/// What start-up changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Declared {
    pub(crate) bound: Vec<String>,
    pub(crate) unbound: Vec<String>,
}

/// One version's record in `<service>.tchu.bindings`. `version` and `handlers` are empty in
/// the first release's records (those versions cannot be seen running: treated as gone).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct BindingRecord {
    exchange: String,
    patterns: Vec<String>,
    #[serde(default)]
    version: String,
    /// (pattern, handler id).
    #[serde(default)]
    handlers: Vec<(String, String)>,
}

/// What this instance knows of the other running versions, and what keeps its own version
/// visible (the presence consumer, the periodic reconcile).
#[derive(Debug, Default)]
pub(crate) struct Versions {
    view: Mutex<View>,
    /// Single flight for on-demand refreshes.
    refreshing: tokio::sync::Mutex<()>,
    /// One reconcile at a time in this process: the broker-side lock is an exclusive queue of
    /// the connection, which every task of this process could take at once (and the first
    /// to finish would release it under the others).
    reconciling: tokio::sync::Mutex<()>,
    presence: Mutex<Option<Consumer>>,
    /// Whether the hand-off wait queue was declared (on first use).
    handoff_declared: std::sync::atomic::AtomicBool,
    reconciler: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Versions whose presence queue this instance saw without a consumer, and since when.
    absent_since: Mutex<BTreeMap<String, tokio::time::Instant>>,
}

#[derive(Debug, Default, Clone)]
struct View {
    /// The other running versions' handlers: (pattern, handler id, version).
    others: Vec<(Pattern, String, String)>,
    /// Their version hashes (for reasons).
    names: Vec<String>,
    /// Versions that still count as running (their bindings stay) but have no connected
    /// instance: (pattern, handler id, version). Nothing is handed off to them.
    absent: Vec<(Pattern, String, String)>,
    fetched: Option<Instant>,
}

/// What a reconcile learned of a version from its presence queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// At least one instance consumes its presence queue.
    Connected,
    /// The queue exists without a consumer, for less than the grace: still counts as running.
    Absent,
    /// No queue (a graceful stop, or expired), or no consumer for longer than the grace.
    Gone,
}

impl Presence {
    fn running(self) -> bool {
        self != Presence::Gone
    }
}

/// What the read phase of a reconcile found.
struct Found {
    records: Vec<(BindingRecord, crate::broker::InboundDelivery)>,
    presence: BTreeMap<String, Presence>,
    /// Whether this instance's own presence queue had a consumer.
    visible: bool,
    /// Versions of the last view whose record this browse missed but that are connected.
    kept: Vec<String>,
}

impl Drop for Versions {
    fn drop(&mut self) {
        if let Ok(mut r) = self.reconciler.lock()
            && let Some(t) = r.take()
        {
            t.abort();
        }
    }
}

/// What to do with a delivery that no local handler matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoHandler {
    /// Sent back through the hand-off wait queue: ack the original.
    HandedOff,
    /// Dead-letter it with this reason.
    DeadLetter(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// FNV-1a, 64 bits: a stable name for a version (not a security measure).
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Topology {
    /// The topology of a service whose handlers are `handlers` (pattern, handler id).
    pub(crate) fn new(
        exchange: String,
        queue: String,
        queue_type: QueueType,
        handlers: impl IntoIterator<Item = (Pattern, String)>,
    ) -> Self {
        let mut pairs: Vec<(Pattern, String)> = handlers.into_iter().collect();
        pairs.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        pairs.dedup_by(|a, b| a.0.as_str() == b.0.as_str() && a.1 == b.1);
        let mut patterns: Vec<Pattern> = Vec::new();
        for (p, _) in &pairs {
            if !patterns.iter().any(|q| q.as_str() == p.as_str()) {
                patterns.push(p.clone());
            }
        }
        Topology {
            exchange,
            queue,
            queue_type,
            patterns,
            handlers: pairs
                .into_iter()
                .map(|(p, id)| (p.as_str().to_owned(), id))
                .collect(),
            versions: Arc::default(),
            grace: PRESENCE_GRACE,
            reconcile_timeout: RECONCILE_TIMEOUT,
        }
    }

    pub(crate) fn dlq(&self) -> String {
        dlq_name(&self.queue)
    }

    pub(crate) fn record_queue(&self) -> String {
        format!("{}.tchu.bindings", self.queue)
    }

    fn lock_queue(&self) -> String {
        format!("{}.tchu.lock", self.queue)
    }

    fn handoff_queue(&self) -> String {
        format!("{}.tchu.handoff", self.queue)
    }

    /// This version's name: a hash of its exchange, patterns and handler ids.
    pub(crate) fn version(&self) -> String {
        let mut text = self.exchange.clone();
        for (p, id) in &self.handlers {
            text.push('\n');
            text.push_str(p);
            text.push(' ');
            text.push_str(id);
        }
        format!("{:016x}", fnv(text.as_bytes()))
    }

    fn presence_queue_of(&self, version: &str) -> String {
        format!("{}.tchu.v.{version}", self.queue)
    }

    fn record(&self) -> BindingRecord {
        BindingRecord {
            exchange: self.exchange.clone(),
            patterns: self
                .patterns
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            version: self.version(),
            handlers: self.handlers.clone(),
        }
    }

    /// Declares everything and makes this version visible; idempotent (it runs again after a
    /// reconnect). Starts the periodic reconcile once.
    pub(crate) async fn declare(&self, broker: &Broker) -> Result<Declared, BrokerError> {
        broker.declare_exchange(&self.exchange).await?;
        let record_queue = self.record_queue();
        for q in [self.queue.clone(), self.dlq(), record_queue] {
            broker
                .declare_queue(&QueueSpec::durable(q, self.queue_type))
                .await
                .map_err(|e| e.for_service(&self.queue))?;
        }

        let _one = self.versions.reconciling.lock().await;
        let _lock = self.lock(broker, LOCK_WAIT).await?;
        // Visible first, then bound, then recorded: a reconcile elsewhere never sees our
        // record without seeing us run.
        self.make_visible(broker).await?;
        for p in &self.patterns {
            broker.bind(&self.queue, &self.exchange, p.as_str()).await?;
        }
        let unbound = self.reconcile_locked(broker).await;
        _lock.release().await;
        let unbound = unbound?;
        self.start_reconciler(broker);
        Ok(Declared {
            bound: self
                .patterns
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            unbound,
        })
    }

    /// Declares this version's presence queue and consumes it (replacing an earlier presence
    /// consumer, e.g. one of a connection that was lost).
    async fn make_visible(&self, broker: &Broker) -> Result<(), BrokerError> {
        let presence = self.presence_queue_of(&self.version());
        let spec = presence_spec(&presence);
        broker.declare_queue(&spec).await?;
        let consumer = match broker.consume(&presence, 1).await {
            Ok(c) => c,
            // The last other instance of this version stopped gracefully between the declare
            // and the consume, and deleted the queue: once more.
            Err(_) => {
                broker.declare_queue(&spec).await?;
                broker.consume(&presence, 1).await?
            }
        };
        let old = lock(&self.versions.presence).replace(consumer);
        if let Some(old) = old {
            // Bounded, and not waited for: the old one's connection may be gone.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), old.close()).await;
            });
        }
        Ok(())
    }

    /// A graceful stop: ends the periodic reconcile and the presence consumer, and deletes the
    /// presence queue when this was its last consumer, so that the other versions see this
    /// one stopped at once (a version whose queue merely lost its consumers, as after a
    /// `kill -9`, still counts as running for [`PRESENCE_GRACE`]).
    pub(crate) async fn leave(&self, broker: &Broker) {
        if let Some(t) = lock(&self.versions.reconciler).take() {
            t.abort();
        }
        let presence = lock(&self.versions.presence).take();
        if let Some(c) = presence {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.close()).await;
        }
        let queue = self.presence_queue_of(&self.version());
        match tokio::time::timeout(
            Duration::from_secs(5),
            broker.delete_queue_if_unused(&queue),
        )
        .await
        {
            Ok(Ok(true)) => {
                tracing::info!(queue = %self.queue, version = %self.version(), "last instance of this version: presence queue deleted");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, presence = %queue, "cannot delete the presence queue; the other versions count this one as running for {PRESENCE_GRACE:?}");
            }
            Err(_) => {
                tracing::warn!(presence = %queue, "deleting the presence queue timed out; the other versions count this one as running for {PRESENCE_GRACE:?}");
            }
        }
    }

    async fn lock(&self, broker: &Broker, wait: Duration) -> Result<LockGuard, BrokerError> {
        let name = self.lock_queue();
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            if broker.try_lock(&name).await? {
                return Ok(LockGuard {
                    broker: broker.clone(),
                    name,
                });
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::new(format!(
                    "another instance of `{}` held `{name}` for {wait:?}",
                    self.queue
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn start_reconciler(&self, broker: &Broker) {
        let mut slot = lock(&self.versions.reconciler);
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let weak: Weak<Versions> = Arc::downgrade(&self.versions);
        let me = Topology {
            versions: Arc::new(Versions::default()),
            ..self.clone()
        };
        let broker = broker.clone();
        *slot = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECONCILE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(versions) = weak.upgrade() else {
                    return;
                };
                let me = Topology {
                    versions,
                    ..me.clone()
                };
                match me.reconcile(&broker).await {
                    Ok(_) => {}
                    // The consume loop reports the connection; the reconnect reconciles.
                    Err(e) if !broker.is_connected() => {
                        tracing::debug!(queue = %me.queue, error = %e, "binding reconcile skipped while disconnected");
                    }
                    Err(e) => {
                        tracing::warn!(queue = %me.queue, error = %e, "binding reconcile failed; next one in {RECONCILE_EVERY:?}");
                    }
                }
            }
        }));
    }

    /// Reconciles under the lock (waiting for it briefly).
    async fn reconcile(&self, broker: &Broker) -> Result<Vec<String>, BrokerError> {
        let _one = self.versions.reconciling.lock().await;
        let lock = self.lock(broker, Duration::from_secs(5)).await?;
        let r = self.reconcile_locked(broker).await;
        lock.release().await;
        r
    }

    /// Reads every record, writes ours if missing, removes the bindings and records of
    /// versions that no longer run (unless a running one needs the binding), and refreshes
    /// the view of the other running versions. Returns the patterns unbound.
    ///
    /// Bounded: the reads get [`RECONCILE_TIMEOUT`], and a reconcile whose reads do not finish
    /// in time returns an error having changed nothing (every record it took returns to the
    /// queue, no binding is removed); the writes, decided on those fresh reads, get the same
    /// bound again.
    async fn reconcile_locked(&self, broker: &Broker) -> Result<Vec<String>, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.reconcile_timeout;
        // The view it leaves is as fresh as its reads: good for deliveries that came before.
        let started = Instant::now();
        let mut browser =
            match tokio::time::timeout_at(deadline, broker.browse(&self.record_queue())).await {
                Ok(b) => b?,
                Err(_) => return Err(self.timed_out("opening the binding records")),
            };
        let found = tokio::time::timeout_at(deadline, self.read(broker, &mut browser)).await;
        let result = match found {
            Ok(Ok(found)) if tokio::time::Instant::now() < deadline => {
                match tokio::time::timeout(
                    self.reconcile_timeout,
                    self.apply(broker, found, started),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(self.timed_out("writing (records of versions gone kept)")),
                }
            }
            Ok(Ok(_)) | Err(_) => Err(self.timed_out("reading the records and presence queues")),
            Ok(Err(e)) => Err(e),
        };
        // Bounded: every record not acked returns to the queue when this channel closes (or
        // with the connection).
        let _ = tokio::time::timeout(Duration::from_secs(5), browser.close()).await;
        result
    }

    /// Logs and returns a reconcile that ran out of time.
    fn timed_out(&self, doing: &str) -> BrokerError {
        tracing::warn!(
            queue = %self.queue,
            timeout = ?self.reconcile_timeout,
            "binding reconcile timed out while {doing}; no binding removed by it"
        );
        BrokerError::new(format!(
            "the binding reconcile of `{}` timed out after {:?} while {doing}",
            self.queue, self.reconcile_timeout
        ))
    }

    /// The read phase: every record, and whether each version runs. Changes nothing.
    async fn read(
        &self,
        broker: &Broker,
        browser: &mut crate::broker::Browser,
    ) -> Result<Found, BrokerError> {
        let own = self.version();
        // Still visible? (A connection lost and recovered by lapin may have taken the presence
        // queue with it.)
        let visible = broker
            .consumer_count(&self.presence_queue_of(&own))
            .await?
            .unwrap_or(0)
            > 0;
        let mut records = Vec::new();
        while let Some(d) = browser.next().await? {
            match serde_json::from_slice::<BindingRecord>(&d.message.body) {
                Ok(r) => records.push((r, d)),
                // Left unacked: it returns to the queue; someone may know it.
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable binding record"),
            }
        }
        let mut presence: BTreeMap<String, Presence> = BTreeMap::new();
        presence.insert(own.clone(), Presence::Connected);
        for (r, _) in &records {
            if presence.contains_key(&r.version) {
                continue;
            }
            let p = if r.version.is_empty() {
                Presence::Gone
            } else {
                self.presence_of(broker, &r.version).await?
            };
            presence.insert(r.version.clone(), p);
        }
        // A record can be missing from one browse while an instance that is stopping still
        // holds it unacked (its channel closes after its lock queue is gone). A version the
        // last view knew stays in the view while its presence queue has a consumer.
        let previous = lock(&self.versions.view).clone();
        let mut kept = Vec::new();
        for name in previous.names.iter().chain(
            previous
                .absent
                .iter()
                .map(|(_, _, v)| v)
                .collect::<BTreeSet<_>>(),
        ) {
            if presence.contains_key(name) || kept.contains(name) {
                continue;
            }
            if broker
                .consumer_count(&self.presence_queue_of(name))
                .await?
                .is_some_and(|n| n > 0)
            {
                kept.push(name.clone());
            }
        }
        // Forget the absences of versions no record names any more.
        lock(&self.versions.absent_since).retain(|v, _| presence.contains_key(v));
        Ok(Found {
            records,
            presence,
            visible,
            kept,
        })
    }

    /// Whether `version` runs: connected, absent within the grace, or gone.
    async fn presence_of(&self, broker: &Broker, version: &str) -> Result<Presence, BrokerError> {
        let count = broker
            .consumer_count(&self.presence_queue_of(version))
            .await?;
        let mut absent = lock(&self.versions.absent_since);
        Ok(match count {
            Some(n) if n > 0 => {
                absent.remove(version);
                Presence::Connected
            }
            Some(_) => {
                let since = *absent
                    .entry(version.to_owned())
                    .or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < self.grace {
                    Presence::Absent
                } else {
                    Presence::Gone
                }
            }
            None => {
                absent.remove(version);
                Presence::Gone
            }
        })
    }

    /// The write phase, on what [`Self::read`] found: our own presence, bindings and record
    /// first, then the stale bindings, then the records of versions gone.
    async fn apply(
        &self,
        broker: &Broker,
        found: Found,
        started: Instant,
    ) -> Result<Vec<String>, BrokerError> {
        let own = self.version();
        let Found {
            records,
            presence,
            visible,
            kept,
        } = found;
        let running = |r: &BindingRecord| presence.get(&r.version).is_some_and(|p| p.running());
        let recorded = records
            .iter()
            .any(|(r, _)| r.version == own && *r == self.record());
        if !visible || !recorded {
            // Invisible for a while (a lost connection) or our record taken as gone: another
            // instance may have removed our bindings meanwhile.
            if !visible {
                tracing::info!(queue = %self.queue, version = %own, "presence queue gone; declaring it again");
                self.make_visible(broker).await?;
            }
            for p in &self.patterns {
                broker.bind(&self.queue, &self.exchange, p.as_str()).await?;
            }
        }
        let mut needed: BTreeSet<(String, String)> = self
            .patterns
            .iter()
            .map(|p| (self.exchange.clone(), p.as_str().to_owned()))
            .collect();
        for (r, _) in records.iter().filter(|(r, _)| running(r)) {
            needed.extend(r.patterns.iter().map(|p| (r.exchange.clone(), p.clone())));
        }
        if !recorded {
            self.publish_record(broker).await?;
        }
        let mut unbound = Vec::new();
        let mut stale: BTreeSet<(String, String)> = BTreeSet::new();
        for (r, _) in records.iter().filter(|(r, _)| !running(r)) {
            stale.extend(r.patterns.iter().map(|p| (r.exchange.clone(), p.clone())));
        }
        for (exchange, p) in stale.difference(&needed) {
            broker.unbind(&self.queue, exchange, p).await?;
            tracing::info!(queue = %self.queue, exchange = %exchange, pattern = %p, "removed a binding no running version subscribes to");
            unbound.push(p.clone());
        }
        // Only now the records of versions gone (and duplicates of running ones).
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut gone: BTreeSet<&str> = BTreeSet::new();
        for (r, d) in &records {
            let duplicate = !seen.insert(r.version.as_str()) && running(r);
            if !running(r) || duplicate {
                d.acker.ack_in_order(false).await?;
            }
            if !running(r) && !r.version.is_empty() {
                gone.insert(r.version.as_str());
            }
        }
        // A presence queue kept past the grace (every passive declare renews its lease) goes
        // with its version's record; one that has a consumer again stays.
        for v in gone {
            if broker
                .delete_queue_if_unused(&self.presence_queue_of(v))
                .await?
            {
                lock(&self.versions.absent_since).remove(v);
            }
        }
        let mut view = View {
            fetched: Some(started),
            ..View::default()
        };
        for (r, _) in records.iter().filter(|(r, _)| r.version != own) {
            let p = presence.get(&r.version).copied().unwrap_or(Presence::Gone);
            let handlers = r.handlers.iter().filter_map(|(pat, id)| {
                Some((Pattern::new(pat).ok()?, id.clone(), r.version.clone()))
            });
            match p {
                Presence::Connected if !view.names.contains(&r.version) => {
                    view.names.push(r.version.clone());
                    view.others.extend(handlers);
                }
                Presence::Absent if !view.absent.iter().any(|(_, _, v)| *v == r.version) => {
                    view.absent.extend(handlers);
                }
                _ => {}
            }
        }
        let previous = lock(&self.versions.view).clone();
        for name in kept {
            let known = previous
                .others
                .iter()
                .chain(previous.absent.iter())
                .filter(|(_, _, v)| *v == name)
                .cloned();
            let mut handlers: Vec<_> = known.collect();
            handlers.dedup();
            view.others.extend(handlers);
            view.names.push(name);
        }
        *lock(&self.versions.view) = view;
        Ok(unbound)
    }

    async fn publish_record(&self, broker: &Broker) -> Result<(), BrokerError> {
        let record_queue = self.record_queue();
        let body = serde_json::to_vec(&self.record())
            .map_err(|e| BrokerError::with_source("cannot encode the binding record", e))?;
        let msg = Message {
            routing_key: record_queue.clone(),
            properties: Properties {
                content_type: Some("application/json".to_owned()),
                persistent: true,
                ..Properties::default()
            },
            body,
        };
        if broker.publish("", &msg, true).await? != Confirm::Ack {
            return Err(BrokerError::new(format!(
                "the broker did not store the binding record in `{record_queue}`"
            )));
        }
        Ok(())
    }

    /// Decides what happens to `message` (topic `topic`; only for handler ids `only`, when it
    /// is a retry) that no local handler matches: handed off when another running version
    /// handles it (the view is refreshed first when it predates the delivery), dead-lettered
    /// otherwise.
    pub(crate) async fn no_local_handler(
        &self,
        broker: &Broker,
        message: &Message,
        topic: &str,
        only: Option<&[String]>,
    ) -> Result<NoHandler, BrokerError> {
        let arrived = Instant::now();
        let stale = lock(&self.versions.view)
            .fetched
            .is_none_or(|t| t < arrived);
        if stale {
            let _one = self.versions.refreshing.lock().await;
            let still = lock(&self.versions.view)
                .fetched
                .is_none_or(|t| t < arrived);
            if still && let Err(e) = self.reconcile(broker).await {
                tracing::warn!(error = %e, "cannot read the running versions; using what is known");
            }
        }
        let view = lock(&self.versions.view).clone();
        let handles = view.others.iter().any(|(p, id, _)| {
            p.matches(topic) && only.is_none_or(|ids| ids.iter().any(|i| i == id))
        });
        if !handles {
            let waiting: BTreeSet<&str> = view
                .absent
                .iter()
                .filter(|(p, id, _)| {
                    p.matches(topic) && only.is_none_or(|ids| ids.iter().any(|i| i == id))
                })
                .map(|(_, _, v)| v.as_str())
                .collect();
            if !waiting.is_empty() {
                // Handing it off would only bounce it: nobody of that version consumes.
                return Ok(NoHandler::DeadLetter(format!(
                    "no local handler matches `{topic}`, and no connected instance of `{}` \
                     handles it: version(s) {} that do have had no connected instance for less \
                     than {:?} (reconnecting, or stopped without a graceful shutdown; `tchu dlq \
                     replay` once they are back) (this one subscribes to {})",
                    self.queue,
                    list(waiting.into_iter()),
                    self.grace,
                    list(self.patterns.iter().map(Pattern::as_str)),
                )));
            }
            return Ok(NoHandler::DeadLetter(format!(
                "no local handler matches `{topic}`, and no running version of `{}` handles it \
                 (this one subscribes to {}; other running versions: {})",
                self.queue,
                list(self.patterns.iter().map(Pattern::as_str)),
                list(view.names.iter().map(String::as_str)),
            )));
        }
        let hops = message
            .properties
            .headers
            .get(HOPS_HEADER)
            .and_then(HeaderValue::as_i64)
            .unwrap_or(0);
        if hops >= MAX_HOPS {
            return Ok(NoHandler::DeadLetter(format!(
                "no local handler matches `{topic}` after {hops} hand-offs, although running \
                 version(s) {} of `{}` handle it",
                list(view.names.iter().map(String::as_str)),
                self.queue
            )));
        }
        let mut m = message.clone();
        m.properties
            .headers
            .insert(HOPS_HEADER.to_owned(), HeaderValue::Int(hops + 1));
        m.properties.headers.insert(
            crate::headers::TOPIC_HEADER.to_owned(),
            HeaderValue::from(message.routing_key.as_str()),
        );
        m.properties.persistent = true;
        m.properties.expiration = None;
        m.routing_key = self.handoff_queue();
        let declared = &self.versions.handoff_declared;
        if !declared.load(std::sync::atomic::Ordering::Relaxed) {
            let mut spec = QueueSpec::durable(self.handoff_queue(), self.queue_type);
            spec.message_ttl = Some(HANDOFF_WAIT);
            spec.dead_letter = Some((String::new(), self.queue.clone()));
            broker
                .declare_queue(&spec)
                .await
                .map_err(|e| e.for_service(&self.queue))?;
            declared.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match broker.publish("", &m, true).await? {
            Confirm::Ack => Ok(NoHandler::HandedOff),
            Confirm::Nack | Confirm::Returned => {
                // Declared again next time (someone may have deleted it).
                declared.store(false, std::sync::atomic::Ordering::Relaxed);
                Err(BrokerError::new(format!(
                    "the broker did not accept the hand-off copy for `{}`",
                    m.routing_key
                )))
            }
        }
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// Releases the reconcile lock when dropped (the broker releases it anyway if we die).
struct LockGuard {
    broker: Broker,
    name: String,
}

impl LockGuard {
    async fn release(mut self) {
        let name = std::mem::take(&mut self.name);
        if let Err(e) = self.broker.delete_queue(&name).await {
            tracing::warn!(error = %e, lock = %name, "cannot release the lock");
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let broker = self.broker.clone();
        let name = std::mem::take(&mut self.name);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = broker.delete_queue(&name).await {
                    tracing::warn!(error = %e, lock = %name, "cannot release the lock");
                }
            });
        }
    }
}

/// A presence queue.
fn presence_spec(name: &str) -> QueueSpec {
    QueueSpec {
        durable: false,
        // Not `auto_delete`: lapin's recovery consumes it again after a lost connection, and
        // an auto-delete queue is gone by then (NOT_FOUND closes that channel).
        expires: Some(PRESENCE_EXPIRES),
        ..QueueSpec::durable(name, QueueType::Classic)
    }
}

/// The dead-letter queue of a service queue.
pub(crate) fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;

    fn topology(pairs: &[(&str, &str)]) -> Topology {
        Topology::new(
            "x".to_owned(),
            "svc".to_owned(),
            QueueType::Classic,
            pairs
                .iter()
                .map(|(p, id)| (Pattern::new(*p).expect("pattern"), (*id).to_owned())),
        )
    }

    fn event(topic: &str) -> Message {
        Message {
            routing_key: topic.to_owned(),
            properties: Properties::default(),
            body: b"{}".to_vec(),
        }
    }

    /// How many of `topics` the exchange routes to the service queue.
    async fn routed(b: &Broker, topics: &[&str]) -> u32 {
        let before = b.queue_len("svc").await.expect("len");
        for t in topics {
            b.publish("x", &event(t), false).await.expect("publish");
        }
        let after = b.queue_len("svc").await.expect("len");
        b.purge_queue("svc").await.expect("purge");
        after - before
    }

    #[tokio::test]
    async fn versions_keep_each_others_bindings_and_stale_ones_go() {
        let b = Broker::Memory(MemoryBroker::new());
        let v1 = topology(&[("t.a", "s::a"), ("t.b", "s::b")]);
        let v2 = topology(&[("t.a", "s::a"), ("t.c", "s::c")]);
        assert_ne!(v1.version(), v2.version());
        assert_eq!(
            v1.declare(&b).await.expect("v1").unbound,
            Vec::<String>::new()
        );
        // v2 starts while v1 runs: nothing of v1's goes.
        assert_eq!(
            v2.declare(&b).await.expect("v2").unbound,
            Vec::<String>::new()
        );
        assert_eq!(routed(&b, &["t.a", "t.b", "t.c", "t.d"]).await, 3);
        assert_eq!(b.queue_len("svc.tchu.bindings").await.expect("len"), 2);

        // v2 hands `t.b` off (v1 runs) and dead-letters `t.d` (nobody handles it).
        assert_eq!(
            v2.no_local_handler(&b, &event("t.b"), "t.b", None)
                .await
                .expect("decide"),
            NoHandler::HandedOff
        );
        assert_eq!(b.queue_len("svc.tchu.handoff").await.expect("len"), 1);
        // A retry due for a handler id no running version has is not handed off.
        let only = ["s::gone".to_owned()];
        assert!(matches!(
            v2.no_local_handler(&b, &event("t.b"), "t.b", Some(&only))
                .await,
            Ok(NoHandler::DeadLetter(_))
        ));
        let Ok(NoHandler::DeadLetter(why)) =
            v2.no_local_handler(&b, &event("t.d"), "t.d", None).await
        else {
            panic!("t.d is handled by no one");
        };
        assert!(
            why.contains("no running version of `svc` handles it"),
            "{why}"
        );

        // The hop bound.
        let mut tired = event("t.b");
        tired
            .properties
            .headers
            .insert(HOPS_HEADER.to_owned(), HeaderValue::Int(MAX_HOPS));
        let Ok(NoHandler::DeadLetter(why)) = v2.no_local_handler(&b, &tired, "t.b", None).await
        else {
            panic!("past the hop bound");
        };
        assert!(why.contains("hand-offs"), "{why}");

        // v1's last instance stops: its presence queue goes, and the next reconcile removes
        // `t.b` (and only it) and v1's record.
        let presence = format!("svc.tchu.v.{}", v1.version());
        assert_eq!(b.consumer_count(&presence).await.expect("count"), Some(1));
        drop(v1);
        assert_eq!(b.consumer_count(&presence).await.expect("count"), None);
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            vec!["t.b".to_owned()]
        );
        assert_eq!(routed(&b, &["t.a", "t.b", "t.c"]).await, 2);
        assert_eq!(b.queue_len("svc.tchu.bindings").await.expect("len"), 1);
        assert!(matches!(
            v2.no_local_handler(&b, &event("t.b"), "t.b", None).await,
            Ok(NoHandler::DeadLetter(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_without_a_consumer_keeps_its_bindings_for_the_grace() {
        let b = Broker::Memory(MemoryBroker::new());
        let v1 = topology(&[("t.a", "s::a"), ("t.b", "s::b")]);
        let v2 = topology(&[("t.a", "s::a"), ("t.c", "s::c")]);
        v1.declare(&b).await.expect("v1");
        v2.declare(&b).await.expect("v2");
        // v1's only instance is killed: its presence queue stays, without a consumer (the
        // memory broker deletes an expiring queue with its last consumer, so declare it again
        // as it stays on RabbitMQ).
        let presence = format!("svc.tchu.v.{}", v1.version());
        drop(v1);
        b.declare_queue(&presence_spec(&presence))
            .await
            .expect("presence");
        assert_eq!(b.consumer_count(&presence).await.expect("count"), Some(0));
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            Vec::<String>::new()
        );
        assert_eq!(routed(&b, &["t.a", "t.b", "t.c"]).await, 3);
        // Nothing is handed off to it (nobody would take it), and the reason says why.
        let Ok(NoHandler::DeadLetter(why)) =
            v2.no_local_handler(&b, &event("t.b"), "t.b", None).await
        else {
            panic!("t.b has no connected handler");
        };
        assert!(why.contains("no connected instance"), "{why}");
        tokio::time::advance(PRESENCE_GRACE - Duration::from_secs(1)).await;
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            Vec::<String>::new()
        );
        assert_eq!(routed(&b, &["t.b"]).await, 1);
        // Past the grace: gone, with its record and its presence queue.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            vec!["t.b".to_owned()]
        );
        assert_eq!(routed(&b, &["t.a", "t.b", "t.c"]).await, 2);
        assert_eq!(b.queue_len("svc.tchu.bindings").await.expect("len"), 1);
        assert_eq!(b.consumer_count(&presence).await.expect("count"), None);
    }

    #[tokio::test]
    async fn a_version_that_reconnects_within_the_grace_keeps_everything() {
        let b = Broker::Memory(MemoryBroker::new());
        let v1 = topology(&[("t.a", "s::a"), ("t.b", "s::b")]);
        let v2 = topology(&[("t.a", "s::a"), ("t.c", "s::c")]);
        v1.declare(&b).await.expect("v1");
        v2.declare(&b).await.expect("v2");
        let presence = format!("svc.tchu.v.{}", v1.version());
        // v1 loses its connection: its presence consumer is gone, the queue stays.
        let presence_consumer = lock(&v1.versions.presence).take();
        if let Some(c) = presence_consumer {
            c.close().await;
        }
        b.declare_queue(&presence_spec(&presence))
            .await
            .expect("presence");
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            Vec::<String>::new()
        );
        // Back: its reconcile consumes its presence queue again.
        assert_eq!(
            v1.reconcile(&b).await.expect("reconcile"),
            Vec::<String>::new()
        );
        assert_eq!(b.consumer_count(&presence).await.expect("count"), Some(1));
        assert_eq!(
            v2.no_local_handler(&b, &event("t.b"), "t.b", None)
                .await
                .expect("decide"),
            NoHandler::HandedOff
        );
        assert_eq!(routed(&b, &["t.a", "t.b", "t.c"]).await, 3);
        // A graceful stop of its last instance deletes the presence queue: gone at once.
        v1.leave(&b).await;
        assert_eq!(b.consumer_count(&presence).await.expect("count"), None);
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            vec!["t.b".to_owned()]
        );
    }

    #[tokio::test]
    async fn a_reconcile_out_of_time_removes_nothing() {
        let b = Broker::Memory(MemoryBroker::new());
        let v1 = topology(&[("t.a", "s::a"), ("t.b", "s::b")]);
        let mut v2 = topology(&[("t.a", "s::a"), ("t.c", "s::c")]);
        v1.declare(&b).await.expect("v1");
        v2.declare(&b).await.expect("v2");
        v1.leave(&b).await;
        drop(v1);
        v2.reconcile_timeout = Duration::ZERO;
        let err = v2.reconcile(&b).await.expect_err("out of time");
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(routed(&b, &["t.a", "t.b", "t.c"]).await, 3);
        assert_eq!(b.queue_len("svc.tchu.bindings").await.expect("len"), 2);
        v2.reconcile_timeout = RECONCILE_TIMEOUT;
        assert_eq!(
            v2.reconcile(&b).await.expect("reconcile"),
            vec!["t.b".to_owned()]
        );
    }

    #[tokio::test]
    async fn a_first_release_record_counts_as_a_version_gone() {
        let b = Broker::Memory(MemoryBroker::new());
        b.declare_exchange("x").await.expect("exchange");
        b.declare_queue(&QueueSpec::durable("svc", QueueType::Classic))
            .await
            .expect("queue");
        b.declare_queue(&QueueSpec::durable("svc.tchu.bindings", QueueType::Classic))
            .await
            .expect("queue");
        b.bind("svc", "x", "t.old").await.expect("bind");
        let old = Message {
            routing_key: "svc.tchu.bindings".to_owned(),
            properties: Properties::default(),
            body: br#"{"exchange": "x", "patterns": ["t.old", "t.a"]}"#.to_vec(),
        };
        b.publish("", &old, true).await.expect("record");
        let v = topology(&[("t.a", "s::a")]);
        assert_eq!(
            v.declare(&b).await.expect("declare").unbound,
            vec!["t.old".to_owned()]
        );
        assert_eq!(routed(&b, &["t.a", "t.old"]).await, 1);
        assert_eq!(b.queue_len("svc.tchu.bindings").await.expect("len"), 1);
    }
}
