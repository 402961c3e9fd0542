//! The dispatcher: decodes each delivery, runs every matching handler once, answers RPC
//! requests, and settles the delivery: ack when all handlers succeeded; otherwise the failed
//! handlers alone are retried later (see [`crate::retry`]) or dead-lettered with the reason.
//! The original is acknowledged only after those copies were confirmed by the broker, so
//! nothing is lost; a panic in a handler is a failure like any other.

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use futures_util::future::join_all;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::ack::Settle;
use crate::broker::{Acker, Broker, Confirm, InboundDelivery, QueueSpec, QueueType};
use crate::client::Client;
use crate::error::BrokerError;
use crate::handler::{Delivery, Failure, Meta, RejectionKind, StateMap};
use crate::message::{HeaderValue, Message};
use crate::registry::{HandlerEntry, Registry};
use crate::retry::RetryPolicy;
use crate::telemetry::{self, DeadLetterKind};
use crate::trace::{self, TraceContext};
use crate::wire::{self, Kind, Reply};

/// Header: the attempt number of a retried copy (2 for the first retry).
pub const ATTEMPT_HEADER: &str = "x-tchu-attempt";
/// Header: comma-separated ids of the handlers a retried copy is for.
pub const HANDLERS_HEADER: &str = "x-tchu-handlers";
/// Header: the original routing key of a retried or dead-lettered copy.
pub const TOPIC_HEADER: &str = "x-tchu-original-routing-key";
/// Header: first failure time, milliseconds since the Unix epoch.
pub const FIRST_FAILURE_HEADER: &str = "x-tchu-first-failure-ms";
/// Header: last failure time, milliseconds since the Unix epoch.
pub const LAST_FAILURE_HEADER: &str = "x-tchu-last-failure-ms";
/// Header: why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-tchu-dead-letter-reason";
/// Header: the handler that failed (absent for decode failures and unmatched deliveries).
pub const HANDLER_HEADER: &str = "x-tchu-handler";
/// Header: attempts made before dead-lettering.
pub const ATTEMPTS_HEADER: &str = "x-tchu-attempts";

/// Counters of one running service.
#[derive(Debug, Default)]
pub struct Stats {
    received: AtomicU64,
    handled: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    replied: AtomicU64,
    internal: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Deliveries received.
    pub received: u64,
    /// Handler runs that succeeded.
    pub handled: u64,
    /// Handler runs that failed.
    pub failed: u64,
    /// Copies sent for a retry.
    pub retried: u64,
    /// Copies sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// RPC replies sent.
    pub replied: u64,
    /// tchu-tchu internal sub-tasks acknowledged and skipped.
    pub internal: u64,
}

impl Stats {
    /// Reads the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: r(&self.received),
            handled: r(&self.handled),
            failed: r(&self.failed),
            retried: r(&self.retried),
            dead_lettered: r(&self.dead_lettered),
            replied: r(&self.replied),
            internal: r(&self.internal),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Everything the dispatcher needs, shared by all in-flight deliveries.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    pub(crate) registry: Arc<Registry>,
    pub(crate) client: Client,
    pub(crate) queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) state: Arc<StateMap>,
    pub(crate) limits: wire::Limits,
    pub(crate) retry: RetryPolicy,
    pub(crate) stats: Arc<Stats>,
    pub(crate) retry_queues: Mutex<HashSet<u64>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The publish time of a message's AMQP `timestamp`; `None` when it is out of `SystemTime`'s
/// range (any publisher can send a 64-bit timestamp, and `UNIX_EPOCH + ` one would panic).
fn published_at(timestamp: Option<u64>) -> Option<SystemTime> {
    timestamp.and_then(|t| UNIX_EPOCH.checked_add(Duration::from_secs(t)))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl Dispatcher {
    fn broker(&self) -> &Broker {
        self.client.broker()
    }

    /// Processes and settles one delivery. Never panics; a settle failure is logged (the
    /// broker redelivers an unsettled message).
    pub(crate) async fn handle(&self, d: InboundDelivery) -> (Settle, Acker) {
        let span = tracing::info_span!(
            "tchu.delivery",
            topic = Empty,
            message_id = Empty,
            redelivered = d.redelivered,
            attempt = Empty,
            format = Empty,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        );
        self.handle_in_span(d).instrument(span).await
    }

    async fn handle_in_span(&self, d: InboundDelivery) -> (Settle, Acker) {
        bump(&self.stats.received);
        let InboundDelivery {
            message,
            redelivered,
            acker,
        } = d;
        let settle = match self.process(message, redelivered).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not forward a failed delivery; requeueing it");
                Settle::Requeue
            }
        };
        (settle, acker)
    }

    async fn process(
        &self,
        mut message: Message,
        redelivered: bool,
    ) -> Result<Settle, BrokerError> {
        let headers = &message.properties.headers;
        let attempt = headers
            .get(ATTEMPT_HEADER)
            .and_then(HeaderValue::as_i64)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1);
        let only: Option<Vec<String>> = headers
            .get(HANDLERS_HEADER)
            .and_then(HeaderValue::as_str)
            .map(|s| s.split(',').map(str::to_owned).collect());
        let first_failure = headers
            .get(FIRST_FAILURE_HEADER)
            .and_then(HeaderValue::as_i64);
        if let Some(t) = headers.get(TOPIC_HEADER).and_then(HeaderValue::as_str) {
            message.routing_key = t.to_owned();
        }
        // The delivery's place in its trace: a child of the publisher's span, or a new trace.
        let incoming = TraceContext::from_headers(&message.properties.headers);
        let ctx = incoming
            .as_ref()
            .map_or_else(TraceContext::new_root, TraceContext::child);
        let span = tracing::Span::current();
        span.record("topic", message.routing_key.as_str());
        span.record("attempt", attempt);
        span.record("trace_id", ctx.trace_id().as_str());
        span.record("span_id", ctx.span_id().as_str());
        if let Some(p) = &incoming {
            span.record("parent_span_id", p.span_id().as_str());
        }
        telemetry::received(&message.routing_key);

        let mut decoded = match wire::decode(&message, self.limits) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(routing_key = %message.routing_key, reason = %e, "undecodable message dead-lettered");
                let native_rpc = headers_kind_is_rpc(&message);
                if let (true, Some(reply_to), Some(cid)) = (
                    native_rpc,
                    message.properties.reply_to.as_deref(),
                    message.properties.correlation_id.as_deref(),
                ) {
                    // The caller is waiting: tell it now rather than at its deadline.
                    let reply = Reply::Invalid(e.to_string());
                    let mut r = wire::encode_reply(
                        wire::WireFormat::Native,
                        &message.routing_key,
                        "",
                        cid,
                        &reply,
                    );
                    r.routing_key = reply_to.to_owned();
                    ctx.child().write_headers(&mut r.properties.headers);
                    if let Err(err) = self.broker().publish("", &r, false).await {
                        tracing::warn!(error = %err, "rpc reply not sent");
                    }
                }
                self.dead_letter(
                    &message,
                    &e.to_string(),
                    None,
                    DeadLetterKind::Undecodable,
                    attempt,
                    first_failure,
                )
                .await?;
                return Ok(Settle::Ack);
            }
        };
        span.record("topic", decoded.topic.as_str());
        if let Some(id) = &decoded.message_id {
            span.record("message_id", id.as_str());
        }
        span.record("format", format_name(decoded.format));
        if let Kind::CeleryInternal { task } = &decoded.kind {
            tracing::debug!(task = %task, "tchu-tchu internal sub-task skipped");
            bump(&self.stats.internal);
            return Ok(Settle::Ack);
        }
        let is_rpc = decoded.kind == Kind::Rpc;
        let reply_to = message.properties.reply_to.clone();
        let correlation_id = message
            .properties
            .correlation_id
            .clone()
            .or_else(|| decoded.message_id.clone());

        let mut idx = self.registry.matching(&decoded.topic);
        if let Some(only) = &only {
            idx.retain(|&i| only.contains(&self.registry.entries()[i].id));
        }
        if idx.is_empty() {
            let reason = format!("no local handler matches `{}`", decoded.topic);
            if is_rpc {
                self.reply(
                    &decoded,
                    reply_to.as_deref(),
                    correlation_id.as_deref(),
                    "",
                    &Reply::HandlerFailed(reason.clone()),
                    &ctx,
                )
                .await;
            }
            self.dead_letter(
                &message,
                &reason,
                None,
                DeadLetterKind::NoHandler,
                attempt,
                first_failure,
            )
            .await?;
            return Ok(Settle::Ack);
        }

        let published_at = published_at(message.properties.timestamp);
        let delivery = Arc::new(Delivery {
            // Moved, not cloned: only the topic and format of `decoded` are used below.
            event: std::mem::take(&mut decoded.event),
            meta: Meta {
                message_id: decoded.message_id.clone(),
                topic: decoded.topic.clone(),
                headers: message.properties.headers.clone(),
                redelivered,
                attempt,
                correlation_id: correlation_id.clone(),
                published_at,
                format: decoded.format,
                is_rpc,
            },
            state: Arc::clone(&self.state),
            client: Some(self.client.clone()),
        });
        if let Some(helpers) = self.state.get::<crate::context::ContextHelpers>()
            && let Err(rejection) = helpers.check_required(&delivery)
        {
            tracing::warn!(topic = %decoded.topic, reason = %rejection, "required context missing; dead-lettered");
            if is_rpc {
                let reply = Reply::Remote(crate::error::RpcError::new(
                    "UNAUTHORIZED",
                    rejection.reason.clone(),
                ));
                self.reply(
                    &decoded,
                    reply_to.as_deref(),
                    correlation_id.as_deref(),
                    "",
                    &reply,
                    &ctx,
                )
                .await;
            }
            self.dead_letter(
                &message,
                &rejection.reason,
                None,
                DeadLetterKind::Rejected,
                attempt,
                first_failure,
            )
            .await?;
            return Ok(Settle::Ack);
        }
        let entries: Vec<&HandlerEntry> =
            idx.iter().map(|&i| &self.registry.entries()[i]).collect();
        let outcomes: Vec<Result<serde_json::Value, Failure>> = join_all(
            entries
                .iter()
                .map(|e| run_handler(e, &delivery, &ctx, attempt)),
        )
        .await;
        for (e, o) in entries.iter().zip(&outcomes) {
            match o {
                Ok(_) => bump(&self.stats.handled),
                Err(f) => {
                    bump(&self.stats.failed);
                    tracing::warn!(handler = %e.id, topic = %decoded.topic, attempt, error = %f, "handler failed");
                }
            }
        }

        if is_rpc {
            // The caller is waiting: answer at once, never retry. The answer is the first value
            // any handler returned, else the first failure. Handlers that return nothing (e.g. a
            // `#` observer) do not answer, so they cannot pre-empt the real responder.
            let answer = entries
                .iter()
                .zip(&outcomes)
                .find(|(_, o)| matches!(o, Ok(v) if !v.is_null()))
                .or_else(|| entries.iter().zip(&outcomes).find(|(_, o)| o.is_err()));
            if let Some((entry, outcome)) = answer {
                let reply = match outcome {
                    Ok(v) => Reply::Ok(v.clone()),
                    Err(Failure::Remote(e)) => Reply::Remote(e.clone()),
                    Err(Failure::Rejected(r))
                        if matches!(r.kind, RejectionKind::Invalid | RejectionKind::Decode) =>
                    {
                        Reply::Invalid(r.reason.clone())
                    }
                    Err(f) => Reply::HandlerFailed(f.to_string()),
                };
                self.reply(
                    &decoded,
                    reply_to.as_deref(),
                    correlation_id.as_deref(),
                    &entry.name,
                    &reply,
                    &ctx,
                )
                .await;
            }
            return Ok(Settle::Ack);
        }

        // Group retryable failures by delay; dead-letter the rest.
        let now = now_ms();
        let first = first_failure.unwrap_or(now);
        let mut retries: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for (e, o) in entries.iter().zip(&outcomes) {
            let Err(f) = o else { continue };
            let policy = e.retry.unwrap_or(self.retry);
            if f.is_retryable() && attempt <= policy.retries {
                let delay = crate::retry::delay_for(&policy, attempt);
                retries.entry(delay).or_default().push(&e.id);
            } else {
                let reason = if f.is_retryable() {
                    format!("{f} (after {attempt} attempts)")
                } else {
                    f.to_string()
                };
                let kind = match f {
                    Failure::Rejected(_) => DeadLetterKind::Rejected,
                    Failure::Transient(_) | Failure::Panicked(_) => DeadLetterKind::Exhausted,
                    Failure::Permanent(_) | Failure::Remote(_) => DeadLetterKind::Permanent,
                };
                self.dead_letter(&message, &reason, Some(&e.id), kind, attempt, Some(first))
                    .await?;
            }
        }
        for (delay_ms, ids) in retries {
            self.schedule_retry(&message, delay_ms, &ids, attempt + 1, first)
                .await?;
        }
        Ok(Settle::Ack)
    }

    async fn reply(
        &self,
        decoded: &wire::Decoded,
        reply_to: Option<&str>,
        correlation_id: Option<&str>,
        handler: &str,
        reply: &Reply,
        ctx: &TraceContext,
    ) {
        let (Some(reply_to), Some(cid)) = (reply_to, correlation_id) else {
            tracing::warn!(topic = %decoded.topic, "rpc request without reply_to or correlation id; no reply sent");
            return;
        };
        let mut msg = wire::encode_reply(decoded.format, &decoded.topic, handler, cid, reply);
        msg.routing_key = reply_to.to_owned();
        ctx.child().write_headers(&mut msg.properties.headers);
        match self.broker().publish("", &msg, false).await {
            Ok(_) => bump(&self.stats.replied),
            Err(e) => tracing::warn!(error = %e, "rpc reply not sent"),
        }
    }

    async fn forward(&self, msg: &Message, what: &str) -> Result<(), BrokerError> {
        match self.broker().publish("", msg, true).await? {
            Confirm::Ack => Ok(()),
            Confirm::Nack | Confirm::Returned => Err(BrokerError::new(format!(
                "the broker did not accept the {what} copy for `{}`",
                msg.routing_key
            ))),
        }
    }

    async fn dead_letter(
        &self,
        original: &Message,
        reason: &str,
        handler: Option<&str>,
        kind: DeadLetterKind,
        attempts: u32,
        first_failure: Option<i64>,
    ) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut msg = original.clone();
        let h = &mut msg.properties.headers;
        h.insert(REASON_HEADER.to_owned(), HeaderValue::from(reason));
        h.insert(
            TOPIC_HEADER.to_owned(),
            HeaderValue::from(original.routing_key.as_str()),
        );
        if let Some(handler) = handler {
            h.insert(HANDLER_HEADER.to_owned(), HeaderValue::from(handler));
        }
        h.insert(
            ATTEMPTS_HEADER.to_owned(),
            HeaderValue::Int(attempts.into()),
        );
        h.insert(
            FIRST_FAILURE_HEADER.to_owned(),
            HeaderValue::Int(first_failure.unwrap_or(now)),
        );
        h.insert(LAST_FAILURE_HEADER.to_owned(), HeaderValue::Int(now));
        h.remove(HANDLERS_HEADER);
        h.remove(ATTEMPT_HEADER);
        msg.properties.persistent = true;
        msg.properties.expiration = None;
        msg.routing_key = crate::topology::dlq_name(&self.queue);
        self.forward(&msg, "dead-letter").await?;
        bump(&self.stats.dead_lettered);
        telemetry::dead_lettered(&original.routing_key, handler, kind);
        Ok(())
    }

    async fn schedule_retry(
        &self,
        original: &Message,
        delay_ms: u64,
        handlers: &[&str],
        next_attempt: u32,
        first_failure: i64,
    ) -> Result<(), BrokerError> {
        let wait_queue = crate::retry::wait_queue_name(&self.queue, delay_ms);
        let known = self
            .retry_queues
            .lock()
            .map(|s| s.contains(&delay_ms))
            .unwrap_or(false);
        if !known {
            let mut spec = QueueSpec::durable(&wait_queue, self.queue_type);
            spec.message_ttl = Some(Duration::from_millis(delay_ms));
            spec.dead_letter = Some((String::new(), self.queue.clone()));
            self.broker()
                .declare_queue(&spec)
                .await
                .map_err(|e| e.for_service(&self.queue))?;
            if let Ok(mut s) = self.retry_queues.lock() {
                s.insert(delay_ms);
            }
        }
        let mut msg = original.clone();
        let h = &mut msg.properties.headers;
        h.insert(
            ATTEMPT_HEADER.to_owned(),
            HeaderValue::Int(next_attempt.into()),
        );
        h.insert(
            HANDLERS_HEADER.to_owned(),
            HeaderValue::from(handlers.join(",")),
        );
        h.insert(
            TOPIC_HEADER.to_owned(),
            HeaderValue::from(original.routing_key.as_str()),
        );
        h.insert(
            FIRST_FAILURE_HEADER.to_owned(),
            HeaderValue::Int(first_failure),
        );
        h.insert(LAST_FAILURE_HEADER.to_owned(), HeaderValue::Int(now_ms()));
        msg.properties.persistent = true;
        msg.properties.expiration = None;
        msg.routing_key = wait_queue;
        self.forward(&msg, "retry").await?;
        bump(&self.stats.retried);
        for h in handlers {
            telemetry::retried(h);
        }
        Ok(())
    }
}

/// Runs one handler in its `tchu.handler` span, with its own child of the delivery's trace
/// context in scope (so its publishes and calls carry the trace), and records its metrics.
async fn run_handler(
    e: &HandlerEntry,
    delivery: &Arc<Delivery>,
    ctx: &TraceContext,
    attempt: u32,
) -> Result<serde_json::Value, Failure> {
    let own = ctx.child();
    let span = tracing::info_span!(
        "tchu.handler",
        handler = e.id.as_str(),
        attempt,
        outcome = Empty,
        trace_id = own.trace_id().as_str(),
        span_id = own.span_id().as_str(),
        parent_span_id = ctx.span_id().as_str(),
    );
    let started = std::time::Instant::now();
    // The handler is called inside the guarded future: a panic while it builds its future
    // (before its first await) is caught like one inside it, instead of unwinding through the
    // dispatcher and leaving the delivery unsettled.
    let d = Arc::clone(delivery);
    #[cfg(feature = "postgres")] // the inbox: in a transaction, duplicates skipped (inbox.rs)
    let run = AssertUnwindSafe(trace::scope(own, crate::inbox::run(e, d)))
        .catch_unwind()
        .instrument(span.clone());
    #[cfg(not(feature = "postgres"))]
    let run = AssertUnwindSafe(trace::scope(own, async move { (e.handler)(d).await }))
        .catch_unwind()
        .instrument(span.clone());
    let outcome = run
        .await
        .unwrap_or_else(|p| Err(Failure::Panicked(panic_text(p.as_ref()))));
    span.record("outcome", if outcome.is_ok() { "ok" } else { "failed" });
    telemetry::handled(&e.id, outcome.is_ok(), started.elapsed());
    outcome
}

fn format_name(f: wire::WireFormat) -> &'static str {
    match f {
        wire::WireFormat::Celery => "celery",
        wire::WireFormat::Native => "native",
    }
}

fn headers_kind_is_rpc(m: &Message) -> bool {
    m.properties
        .headers
        .get(wire::json::KIND_HEADER)
        .and_then(HeaderValue::as_str)
        == Some("rpc")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A received `timestamp` of `u64::MAX` seconds made `UNIX_EPOCH + Duration` panic in
    /// `process` (found by reading the received-message path while writing the fuzz targets).
    #[test]
    fn out_of_range_timestamp_is_ignored() {
        assert_eq!(published_at(None), None);
        assert_eq!(
            published_at(Some(1_700_000_000)),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(published_at(Some(u64::MAX)), None);
    }
}
