//! Metrics through the [`metrics`] facade: tchu records, the application picks the recorder
//! (the `prometheus` feature installs one and serves it, see `exporter.rs`). Without a
//! recorder every call is a no-op.
//!
//! Labels stay low-cardinality: topics and handler ids, never message ids.
//!
//! Logs go through [`tracing`]. When the process has no subscriber, [`App::run`](crate::App::run)
//! and [`run`](crate::run) install a readable one ([`init_default_logs`]).

use std::sync::RwLock;
use std::time::Duration;

use crate::topic::TopicCache;

/// Counter: messages handed to the broker, by `topic` (events and RPC requests).
pub const PUBLISHED_TOTAL: &str = "tchu_published_total";
/// Counter: publishes the broker confirmed (acked).
pub const CONFIRMED_TOTAL: &str = "tchu_confirmed_total";
/// Counter: deliveries received, by `topic`.
pub const RECEIVED_TOTAL: &str = "tchu_received_total";
/// Counter: handler runs, by `handler` and `outcome` (`ok` or `failed`).
pub const HANDLED_TOTAL: &str = "tchu_handled_total";
/// Counter: retry copies scheduled, by `handler`.
pub const RETRIED_TOTAL: &str = "tchu_retried_total";
/// Counter: dead-lettered copies, by `topic`, `handler` (empty when none) and `reason_kind`
/// (`undecodable`, `no_handler`, `rejected`, `permanent`, `exhausted`).
pub const DEAD_LETTERED_TOTAL: &str = "tchu_dead_lettered_total";
/// Histogram: handler run time in seconds, by `handler`.
pub const HANDLER_DURATION_SECONDS: &str = "tchu_handler_duration_seconds";
/// Histogram: RPC call time in seconds (publish to reply, or to the error), by `topic`.
pub const RPC_DURATION_SECONDS: &str = "tchu_rpc_duration_seconds";
/// Gauge: 1 while the broker connection is up, 0 while it is down.
pub const CONNECTED: &str = "tchu_connected";

/// Which recorder `metrics` would hand a metric to now: a local one inside
/// `metrics::with_local_recorder`, else the global one once installed, else its no-op one
/// (told apart by address). A handle registered with one recorder is valid while it stays the
/// current one. The global recorder lives for the whole process; a local recorder dropped and
/// another made at the same address would be taken for the same one, so code that swaps local
/// recorders (tests) keeps each alive while it is used, as this module's test does.
fn recorder_id() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

/// One counter by `topic`, its handle registered once per topic and used again while the
/// recorder stays the same (registering builds the key and its labels, allocating, even for
/// the no-op recorder: about 750 instructions per message, measured with `permsg`). When
/// another recorder becomes current (one installed after the first message), the handles are
/// registered again with it.
#[derive(Debug)]
pub(crate) struct TopicCounters {
    name: &'static str,
    handles: TopicCache<metrics::Counter>,
}

/// Handles and the recorder they were registered with.
#[derive(Debug, Default)]
struct Handles<T> {
    recorder: usize,
    handles: T,
}

impl TopicCounters {
    pub(crate) fn new(name: &'static str) -> Self {
        TopicCounters {
            name,
            handles: TopicCache::default(),
        }
    }

    /// Adds one for `topic`.
    pub(crate) fn increment(&self, topic: &str) {
        self.handles
            .get_or_insert_with(
                recorder_id(),
                topic,
                || metrics::counter!(self.name, "topic" => topic.to_owned()),
            )
            .increment(1);
    }
}

/// A client's publish counters: [`PUBLISHED_TOTAL`] by topic and [`CONFIRMED_TOTAL`].
#[derive(Debug)]
pub(crate) struct PublishMeters {
    published: TopicCounters,
    confirmed: RwLock<Handles<Option<metrics::Counter>>>,
}

impl Default for PublishMeters {
    fn default() -> Self {
        PublishMeters {
            published: TopicCounters::new(PUBLISHED_TOTAL),
            confirmed: RwLock::default(),
        }
    }
}

impl PublishMeters {
    /// One publish to `topic`, confirmed (acked) or not.
    pub(crate) fn published(&self, topic: &str, confirmed: bool) {
        self.published.increment(topic);
        if confirmed {
            with_cached(
                &self.confirmed,
                || metrics::counter!(CONFIRMED_TOTAL),
                |c| c.increment(1),
            );
        }
    }
}

/// Runs `use_it` with the handle in `slot` if it was registered with the current recorder,
/// else with a new one (kept for the next call).
fn with_cached<H>(
    slot: &RwLock<Handles<Option<H>>>,
    register: impl FnOnce() -> H,
    use_it: impl FnOnce(&H),
) {
    let now = recorder_id();
    if let Ok(g) = slot.read()
        && g.recorder == now
        && let Some(h) = &g.handles
    {
        use_it(h);
        return;
    }
    let h = register();
    use_it(&h);
    if let Ok(mut g) = slot.write() {
        *g = Handles {
            recorder: now,
            handles: Some(h),
        };
    }
}

/// One handler's metrics: [`HANDLED_TOTAL`] by outcome and [`HANDLER_DURATION_SECONDS`],
/// labelled with its id; handles registered once, as for [`TopicCounters`].
#[derive(Debug)]
pub(crate) struct HandlerMeters {
    handler: metrics::SharedString,
    handles: RwLock<Handles<Option<HandlerHandles>>>,
}

#[derive(Debug)]
struct HandlerHandles {
    ok: metrics::Counter,
    failed: metrics::Counter,
    duration: metrics::Histogram,
}

impl HandlerMeters {
    pub(crate) fn new(handler: &str) -> Self {
        HandlerMeters {
            handler: metrics::SharedString::from(std::sync::Arc::<str>::from(handler)),
            handles: RwLock::default(),
        }
    }

    /// One run of the handler.
    pub(crate) fn handled(&self, ok: bool, took: Duration) {
        let register = || {
            let handler = &self.handler;
            HandlerHandles {
                ok: metrics::counter!(HANDLED_TOTAL, "handler" => handler.clone(), "outcome" => "ok"),
                failed: metrics::counter!(HANDLED_TOTAL, "handler" => handler.clone(), "outcome" => "failed"),
                duration: metrics::histogram!(HANDLER_DURATION_SECONDS, "handler" => handler.clone()),
            }
        };
        with_cached(&self.handles, register, |h| {
            if ok { &h.ok } else { &h.failed }.increment(1);
            h.duration.record(took);
        });
    }
}

pub(crate) fn retried(handler: &str) {
    metrics::counter!(RETRIED_TOTAL, "handler" => handler.to_owned()).increment(1);
}

/// Why a copy went to the dead-letter queue, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterKind {
    /// The message did not decode (or was too big).
    Undecodable,
    /// No local handler matched.
    NoHandler,
    /// An extractor refused it (decode or validation into the handler's type...).
    Rejected,
    /// The handler failed permanently.
    Permanent,
    /// Retries were exhausted.
    Exhausted,
}

impl DeadLetterKind {
    fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Undecodable => "undecodable",
            DeadLetterKind::NoHandler => "no_handler",
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Permanent => "permanent",
            DeadLetterKind::Exhausted => "exhausted",
        }
    }
}

pub(crate) fn dead_lettered(topic: &str, handler: Option<&str>, kind: DeadLetterKind) {
    metrics::counter!(
        DEAD_LETTERED_TOTAL,
        "topic" => topic.to_owned(),
        "handler" => handler.unwrap_or_default().to_owned(),
        "reason_kind" => kind.as_str(),
    )
    .increment(1);
}

pub(crate) fn rpc_duration(topic: &str, took: Duration) {
    metrics::histogram!(RPC_DURATION_SECONDS, "topic" => topic.to_owned()).record(took);
}

pub(crate) fn connected(up: bool) {
    metrics::gauge!(CONNECTED).set(if up { 1.0 } else { 0.0 });
}

/// Registers the help text of every metric with the installed recorder.
#[cfg_attr(
    not(feature = "prometheus"),
    expect(dead_code, reason = "only the Prometheus exporter installs a recorder")
)]
pub(crate) fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(PUBLISHED_TOTAL, "Messages handed to the broker, by topic");
    metrics::describe_counter!(CONFIRMED_TOTAL, "Publishes confirmed by the broker");
    metrics::describe_counter!(RECEIVED_TOTAL, "Deliveries received, by topic");
    metrics::describe_counter!(HANDLED_TOTAL, "Handler runs, by handler and outcome");
    metrics::describe_counter!(RETRIED_TOTAL, "Retry copies scheduled, by handler");
    metrics::describe_counter!(DEAD_LETTERED_TOTAL, "Dead-lettered copies, by reason kind");
    metrics::describe_histogram!(
        HANDLER_DURATION_SECONDS,
        Unit::Seconds,
        "Handler run time, by handler"
    );
    metrics::describe_histogram!(
        RPC_DURATION_SECONDS,
        Unit::Seconds,
        "RPC call time, by topic"
    );
    metrics::describe_gauge!(CONNECTED, "1 while the broker connection is up");
}

/// The environment variable that turns tchu's default log output off (`0`, `false`, `off`).
pub const DEFAULT_LOGS_ENV: &str = "TCHU_DEFAULT_LOGS";

/// Installs a readable log output on stderr (filter from `RUST_LOG`, default `info,lapin=off`:
/// tchu reports connection failures itself, with their cause) when the
/// process has no global [`tracing`] subscriber yet; returns whether it did. A subscriber the
/// application installed first always wins; `TCHU_DEFAULT_LOGS=off` (or `0`, `false`) turns
/// this off. [`App::run`](crate::App::run) and [`run`](crate::run) call it.
pub fn init_default_logs() -> bool {
    if tracing::dispatcher::has_been_set() {
        return false;
    }
    if let Ok(v) = std::env::var(DEFAULT_LOGS_ENV)
        && matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        )
    {
        return false;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish();
    tracing::subscriber::set_global_default(subscriber).is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    use super::*;

    /// Counts per key, and how many times each key was registered.
    #[derive(Debug, Default)]
    struct Counting {
        values: Mutex<BTreeMap<String, Arc<Cell>>>,
        registered: Mutex<BTreeMap<String, u64>>,
    }

    #[derive(Debug, Default)]
    struct Cell(AtomicU64);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl HistogramFn for Cell {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Counting {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(", "))
            };
            *self
                .registered
                .lock()
                .expect("lock")
                .entry(name.clone())
                .or_default() += 1;
            Arc::clone(self.values.lock().expect("lock").entry(name).or_default())
        }

        /// The value of `key` (`name{label=value, ...}`) and how many times it was registered.
        fn get(&self, key: &str) -> (u64, u64) {
            let v = self
                .values
                .lock()
                .expect("lock")
                .get(key)
                .map_or(0, |c| c.0.load(Ordering::Relaxed));
            let r = self
                .registered
                .lock()
                .expect("lock")
                .get(key)
                .copied()
                .unwrap_or(0);
            (v, r)
        }
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.cell(key))
        }
    }

    /// Handles are registered once per topic and recorder; a recorder that becomes current
    /// later (installed after the first messages) gets every later count, none is lost to the
    /// handles of the one before.
    #[test]
    fn cached_handles_follow_the_current_recorder() {
        let received = TopicCounters::new(RECEIVED_TOTAL);
        let publish = PublishMeters::default();
        let handler = HandlerMeters::new("svc.on_order");
        let key = |topic: &str| format!("{RECEIVED_TOTAL}{{topic={topic}}}");
        // No recorder yet: counted nowhere, and no panic.
        received.increment("a.b");
        handler.handled(true, Duration::from_millis(1));

        let first = Counting::default();
        metrics::with_local_recorder(&first, || {
            for _ in 0..3 {
                received.increment("a.b");
            }
            received.increment("a.c");
            publish.published("a.b", true);
            publish.published("a.b", false);
            handler.handled(true, Duration::from_millis(1));
            handler.handled(false, Duration::from_millis(1));
            handler.handled(true, Duration::from_millis(1));
        });
        assert_eq!(first.get(&key("a.b")), (3, 1), "3 counts, one registration");
        assert_eq!(first.get(&key("a.c")), (1, 1));
        assert_eq!(
            first.get(&format!("{PUBLISHED_TOTAL}{{topic=a.b}}")),
            (2, 1)
        );
        assert_eq!(first.get(CONFIRMED_TOTAL), (1, 1));
        assert_eq!(
            first.get(&format!(
                "{HANDLED_TOTAL}{{handler=svc.on_order, outcome=ok}}"
            )),
            (2, 1)
        );
        assert_eq!(
            first.get(&format!(
                "{HANDLED_TOTAL}{{handler=svc.on_order, outcome=failed}}"
            )),
            (1, 1)
        );
        assert_eq!(
            first.get(&format!(
                "{HANDLER_DURATION_SECONDS}{{handler=svc.on_order}}"
            )),
            (3, 1)
        );

        let second = Counting::default();
        metrics::with_local_recorder(&second, || {
            received.increment("a.b");
            publish.published("a.b", true);
            handler.handled(true, Duration::from_millis(1));
        });
        assert_eq!(second.get(&key("a.b")), (1, 1));
        assert_eq!(second.get(CONFIRMED_TOTAL), (1, 1));
        assert_eq!(
            second.get(&format!(
                "{HANDLED_TOTAL}{{handler=svc.on_order, outcome=ok}}"
            )),
            (1, 1)
        );
        assert_eq!(
            first.get(&key("a.b")),
            (3, 1),
            "nothing went to the old recorder"
        );
    }
}
