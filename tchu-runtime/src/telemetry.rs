//! Metrics through the [`metrics`] facade: tchu records, the application picks the recorder
//! (the `prometheus` feature installs one and serves it, see `exporter.rs`). Without a
//! recorder every call is a no-op.
//!
//! Labels stay low-cardinality: topics and handler ids, never message ids.
//!
//! Logs go through [`tracing`]. When the process has no subscriber, [`App::run`](crate::App::run)
//! and [`run`](crate::run) install a readable one ([`init_default_logs`]).

use std::time::Duration;

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

pub(crate) fn published(topic: &str, confirmed: bool) {
    metrics::counter!(PUBLISHED_TOTAL, "topic" => topic.to_owned()).increment(1);
    if confirmed {
        metrics::counter!(CONFIRMED_TOTAL).increment(1);
    }
}

pub(crate) fn received(topic: &str) {
    metrics::counter!(RECEIVED_TOTAL, "topic" => topic.to_owned()).increment(1);
}

/// A handler id as a metric label, made once per handler (see [`handled`]).
pub(crate) fn handler_label(handler: &str) -> metrics::SharedString {
    metrics::SharedString::from(std::sync::Arc::<str>::from(handler))
}

/// One handler run. `handler` comes from [`handler_label`]: cloning it shares the text, so the
/// labels cost no copy of the id per run (`metrics` builds them before it calls the recorder,
/// even the no-op one).
pub(crate) fn handled(handler: &metrics::SharedString, ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!(HANDLED_TOTAL, "handler" => handler.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(HANDLER_DURATION_SECONDS, "handler" => handler.clone()).record(took);
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
