//! The dispatcher: decodes each delivery, runs every matching handler once, answers RPC
//! requests, and settles the delivery: ack when all handlers succeeded; otherwise the failed
//! handlers alone are retried later (see [`crate::retry`]) or dead-lettered with the reason.
//! The original is acknowledged only after those copies were confirmed by the broker, so
//! nothing is lost; a panic or a timeout in a handler is a failure like any other.
//!
//! One delivery goes through four steps, each testable alone: decode ([`wire::decode`] and
//! [`History`]), run the matching handlers ([`Dispatcher::run_handler`], inside the panic
//! boundary and the handler timeout), decide ([`decide`] and the `decide_*` functions: pure,
//! returning one [`Verdict`]), carry it out ([`Dispatcher::carry_out`]: replies, confirmed
//! copies, and how to settle). The acker never comes here: it stays in the delivery's
//! [`SettleGuard`](crate::ack::SettleGuard), where the delivery was received.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use futures_util::future::join_all;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::ack::{Settle, Settler};
use crate::broker::{Broker, Confirm, InboundDelivery, QueueSpec, QueueType};
use crate::client::Client;
use crate::error::BrokerError;
use crate::handler::{Delivery, Failure, Meta, Outcome, RejectionKind, StateMap};
use crate::headers::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, FIRST_FAILURE_HEADER, HANDLER_HEADER, HANDLERS_HEADER,
    LAST_FAILURE_HEADER, REASON_HEADER, TOPIC_HEADER,
};
use crate::message::{HeaderValue, Headers, Message, Properties};
use crate::registry::{HandlerEntry, Registry};
use crate::retry::RetryPolicy;
use crate::telemetry::{self, DeadLetterKind};
use crate::trace::{self, TraceContext};
use crate::wire::{self, Kind, Reply};

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
    timed_out: AtomicU64,
    /// Retry or dead-letter copies refused by the broker in a row (0 after one is accepted).
    refused_in_a_row: std::sync::atomic::AtomicU32,
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
    /// Handler runs stopped at their timeout (counted in `failed` too).
    pub timed_out: u64,
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
            timed_out: r(&self.timed_out),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Consecutive refused copies after which the service reports itself degraded.
pub(crate) const DEGRADED_AFTER: u32 = 3;

impl Stats {
    /// Counts a copy the broker refused; returns how many in a row now.
    fn refused(&self) -> u32 {
        self.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a copy the broker accepted: the refusals in a row end.
    fn accepted(&self) {
        self.refused_in_a_row.store(0, Ordering::Relaxed);
    }

    /// Whether the last [`DEGRADED_AFTER`] or more retry or dead-letter copies were all refused
    /// by the broker (their deliveries are requeued with a growing delay meanwhile).
    pub(crate) fn is_degraded(&self) -> bool {
        self.refused_in_a_row.load(Ordering::Relaxed) >= DEGRADED_AFTER
    }
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
    /// The longest a handler may run (handlers with their own `timeout` keep theirs).
    pub(crate) handler_timeout: Duration,
    pub(crate) stats: Arc<Stats>,
    /// Where a delivery no local handler matches goes (ops: topology.rs, rolling deploys).
    pub(crate) topology: crate::topology::Topology,
    /// Each registry entry's metrics, by entry index (registered once, shared by runs).
    pub(crate) handler_meters: Vec<telemetry::HandlerMeters>,
    /// Deliveries received, by topic.
    pub(crate) received: telemetry::TopicCounters,
    /// The registry's handlers by topic, remembered.
    pub(crate) matches: crate::registry::MatchCache,
}

/// The metrics of `registry`'s handlers, by entry index ([`Dispatcher::handler_meters`]).
pub(crate) fn handler_meters(registry: &Registry) -> Vec<telemetry::HandlerMeters> {
    registry
        .entries()
        .iter()
        .map(|e| telemetry::HandlerMeters::new(&e.id))
        .collect()
}

/// The dispatcher's verdict on a delivery no local handler matches (not an RPC request):
/// acknowledged once handed off to another running version, dead-lettered with the reason
/// when none handles it, requeued after `backoff()` when the hand-off copy could not be sent.
async fn unmatched_verdict(
    topology: &crate::topology::Topology,
    broker: &Broker,
    message: &Message,
    topic: &str,
    only: Option<&[String]>,
    backoff: impl FnOnce() -> Duration,
) -> Verdict {
    match topology
        .no_local_handler(broker, message, topic, only)
        .await
    {
        Ok(crate::topology::NoHandler::HandedOff) => Verdict::Ack,
        Ok(crate::topology::NoHandler::DeadLetter(reason)) => Verdict::Forward(Forward {
            dead_letters: vec![DeadLetter {
                reason,
                handler: None,
                kind: crate::telemetry::DeadLetterKind::NoHandler,
            }],
            ..Forward::default()
        }),
        Err(e) => {
            let after = backoff();
            tracing::warn!(error = %e, ?after, "could not hand a delivery off to another version; requeueing it");
            Verdict::Requeue { after }
        }
    }
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

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// What a delivery's headers say about its past (set on retried copies).
#[derive(Debug, Clone, PartialEq, Eq)]
struct History {
    /// 1 on the first try.
    attempt: u32,
    /// A retried copy is for these handlers only.
    only: Option<Vec<String>>,
    /// When it first failed (ms since the epoch).
    first_failure: Option<i64>,
}

impl History {
    /// Reads the history, and gives a retried copy its original routing key back.
    fn take(message: &mut Message) -> History {
        let mut history = History {
            attempt: 1,
            only: None,
            first_failure: None,
        };
        let mut topic = None;
        // One search for the `x-tchu-` headers (all four share the prefix; most deliveries have
        // none of them) instead of a lookup per name.
        let ours = message
            .properties
            .headers
            .range::<str, _>((Bound::Included(TCHU_PREFIX), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(TCHU_PREFIX));
        for (k, v) in ours {
            match k.as_str() {
                ATTEMPT_HEADER => {
                    if let Some(a) = v.as_i64().and_then(|a| u32::try_from(a).ok()) {
                        history.attempt = a;
                    }
                }
                HANDLERS_HEADER => {
                    history.only = v
                        .as_str()
                        .map(|s| s.split(',').map(str::to_owned).collect());
                }
                FIRST_FAILURE_HEADER => history.first_failure = v.as_i64(),
                TOPIC_HEADER => topic = v.as_str().map(str::to_owned),
                _ => {}
            }
        }
        if let Some(t) = topic {
            message.routing_key = t;
        }
        history
    }
}

/// The prefix of every header [`History::take`] reads.
const TCHU_PREFIX: &str = "x-tchu-";

/// The one decision about a delivery, made before anything is sent (see [`decide`] and the
/// `decide_*` functions); [`Dispatcher::carry_out`] then does it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Done: acknowledge.
    Ack,
    /// Answer the RPC caller, then acknowledge.
    Reply(Answer),
    /// Send copies (retries of some handlers, dead letters with their reasons), each
    /// confirmed by the broker, and an answer first if there is one; then acknowledge.
    Forward(Forward),
    /// Return the delivery to its queue after a delay (its copies could not be sent).
    Requeue {
        /// How long to hold it first, so that a broker that keeps refusing is not hot-looped.
        after: Duration,
    },
}

/// An RPC answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) reply: Reply,
    /// The responder's name (`""` when no handler ran).
    pub(crate) handler: String,
}

/// The copies of one delivery to send.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Forward {
    /// Sent first: the caller is waiting.
    pub(crate) reply: Option<Answer>,
    /// One copy per delay, for the handlers that wait that long; by ascending delay.
    pub(crate) retries: Vec<RetryCopy>,
    pub(crate) dead_letters: Vec<DeadLetter>,
}

/// A copy for the retry wait queue of one delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryCopy {
    pub(crate) delay_ms: u64,
    pub(crate) handlers: Vec<String>,
}

/// A copy for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub(crate) reason: String,
    /// The handler that failed (none for decode failures and unmatched deliveries).
    pub(crate) handler: Option<String>,
    pub(crate) kind: DeadLetterKind,
}

impl DeadLetter {
    fn new(reason: impl Into<String>, handler: Option<&str>, kind: DeadLetterKind) -> Self {
        DeadLetter {
            reason: reason.into(),
            handler: handler.map(str::to_owned),
            kind,
        }
    }
}

/// One handler's run, as the decision sees it.
#[derive(Debug)]
pub(crate) struct Run<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
    /// It answers this RPC request: it subscribes to the request's topic itself, not through
    /// a wildcard (`#[tchu::subscribe(QuoteRequest)]`, or a pattern without `*`/`#`).
    pub(crate) responder: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) outcome: Outcome,
}

/// Whether `entry` answers RPC requests on `topic` (see [`Run::responder`]).
fn is_responder(entry: &HandlerEntry, topic: &str) -> bool {
    entry.pattern.as_str() == topic
}

/// The answer of a failed responder.
fn failure_reply(f: &Failure) -> Reply {
    match f {
        Failure::Remote(e) => Reply::Remote(e.clone()),
        Failure::Rejected(r)
            if matches!(r.kind, RejectionKind::Invalid | RejectionKind::Decode) =>
        {
            Reply::Invalid(r.reason.clone())
        }
        f => Reply::HandlerFailed(f.to_string()),
    }
}

/// The verdict after the handlers ran.
///
/// RPC requests (`rpc`): only responders answer: with the first value one of them returned
/// (a responder that returns nothing, e.g. `()`, does not answer), else with the first
/// responder's failure. A responder's failure is its answer: it is neither retried nor
/// dead-lettered (the caller has it). Every other handler, and every handler of a broadcast
/// event, follows its retry policy: a retryable failure within the policy's retries is retried
/// later (handlers with the same delay share one copy), anything else is dead-lettered with
/// its reason.
pub(crate) fn decide(runs: &[Run<'_>], rpc: bool, attempt: u32) -> Verdict {
    let mut forward = Forward::default();
    if rpc {
        let responders = || runs.iter().filter(|r| r.responder);
        let answer = responders()
            .find(|r| matches!(&r.outcome, Ok(v) if !v.is_null()))
            .or_else(|| responders().find(|r| r.outcome.is_err()));
        forward.reply = answer.map(|r| Answer {
            reply: match &r.outcome {
                Ok(v) => Reply::Ok(v.clone()),
                Err(f) => failure_reply(f),
            },
            handler: r.name.to_owned(),
        });
    }
    let mut retries: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !(rpc && r.responder)) {
        let Err(f) = &r.outcome else { continue };
        if f.is_retryable() && attempt <= r.retry.retries {
            let delay = crate::retry::delay_for(&r.retry, attempt);
            retries.entry(delay).or_default().push(r.id.to_owned());
        } else {
            let reason = if f.is_retryable() {
                format!("{f} (after {attempt} attempts)")
            } else {
                f.to_string()
            };
            let kind = match f {
                Failure::Rejected(_) => DeadLetterKind::Rejected,
                Failure::Permanent(_) | Failure::Remote(_) => DeadLetterKind::Permanent,
                _ => DeadLetterKind::Exhausted,
            };
            forward
                .dead_letters
                .push(DeadLetter::new(reason, Some(r.id), kind));
        }
    }
    forward.retries = retries
        .into_iter()
        .map(|(delay_ms, handlers)| RetryCopy { delay_ms, handlers })
        .collect();
    forward.into_verdict()
}

impl Forward {
    fn into_verdict(self) -> Verdict {
        match self {
            Forward {
                reply: None,
                retries,
                dead_letters,
            } if retries.is_empty() && dead_letters.is_empty() => Verdict::Ack,
            Forward {
                reply: Some(answer),
                retries,
                dead_letters,
            } if retries.is_empty() && dead_letters.is_empty() => Verdict::Reply(answer),
            f => Verdict::Forward(f),
        }
    }
}

/// The verdict on a message that does not decode: dead-lettered with the reason; a native RPC
/// request is answered at once (rather than at the caller's deadline) only when this service
/// has a responder for its routing key.
pub(crate) fn decide_undecodable(reason: &str, answer: bool) -> Verdict {
    Verdict::Forward(Forward {
        reply: answer.then(|| Answer {
            reply: Reply::Invalid(reason.to_owned()),
            handler: String::new(),
        }),
        retries: Vec::new(),
        dead_letters: vec![DeadLetter::new(reason, None, DeadLetterKind::Undecodable)],
    })
}

/// The verdict on a delivery no local handler matches: dead-lettered, never answered (no
/// responder here).
pub(crate) fn decide_unmatched(topic: &str) -> Verdict {
    Verdict::Forward(Forward {
        dead_letters: vec![DeadLetter::new(
            format!("no local handler matches `{topic}`"),
            None,
            DeadLetterKind::NoHandler,
        )],
        ..Forward::default()
    })
}

/// The verdict on a delivery whose required context could not be built: dead-lettered as
/// unauthorized, and answered `UNAUTHORIZED` when one of the matched handlers is a responder.
pub(crate) fn decide_unauthorized(reason: &str, answer: bool) -> Verdict {
    Verdict::Forward(Forward {
        reply: answer.then(|| Answer {
            reply: Reply::Remote(crate::error::RpcError::new("UNAUTHORIZED", reason)),
            handler: String::new(),
        }),
        retries: Vec::new(),
        dead_letters: vec![DeadLetter::new(reason, None, DeadLetterKind::Rejected)],
    })
}

/// How long to hold a delivery whose copies the broker refused `in_a_row` times in a row
/// before requeueing it: 200 ms, doubling, at most 30 s.
pub(crate) fn refusal_backoff(in_a_row: u32) -> Duration {
    let factor = 2u32.saturating_pow(in_a_row.saturating_sub(1).min(16));
    Duration::from_millis(200)
        .saturating_mul(factor)
        .min(Duration::from_secs(30))
}

/// Where and how to answer one request.
#[derive(Debug)]
struct ReplyTarget<'a> {
    format: wire::WireFormat,
    topic: &'a str,
    reply_to: Option<&'a str>,
    correlation_id: Option<&'a str>,
}

/// A delivery between decoding and carrying out its verdict.
#[derive(Debug)]
struct Received<'a> {
    /// The delivery; once handlers run, its headers have moved into [`Received::headers`].
    message: &'a Message,
    /// The delivery's headers, for the copies sent on failure.
    headers: &'a Headers,
    /// The delivery's body, for the same copies (a native body moved into the handlers'
    /// payload).
    body: &'a [u8],
    history: &'a History,
    ctx: &'a TraceContext,
    reply: ReplyTarget<'a>,
}

impl Dispatcher {
    fn broker(&self) -> &Broker {
        self.client.broker()
    }

    /// Takes one delivery where it is received: its acker goes into a settle guard at once,
    /// so that whatever happens to the returned future (it finishes, panics, or is dropped at
    /// shutdown) the delivery is settled: by its verdict, or requeued by the guard.
    pub(crate) fn accept(
        self: &Arc<Self>,
        d: InboundDelivery,
        settler: &mut Settler,
    ) -> impl Future<Output = ()> + Send + 'static {
        let guard = settler.guard(d.acker);
        let me = Arc::clone(self);
        let (message, redelivered) = (d.message, d.redelivered);
        async move {
            let settle = me.handle(message, redelivered).await;
            guard.settle(settle);
        }
    }

    /// Processes one delivery and says how to settle it. Never panics.
    async fn handle(&self, message: Message, redelivered: bool) -> Settle {
        let span = tracing::info_span!(
            "tchu.delivery",
            topic = Empty,
            message_id = Empty,
            redelivered,
            attempt = Empty,
            format = Empty,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        );
        bump(&self.stats.received);
        self.process(message, redelivered).instrument(span).await
    }

    /// Decode, run the matching handlers, decide, carry out.
    async fn process(&self, mut message: Message, redelivered: bool) -> Settle {
        let history = History::take(&mut message);
        // The delivery's place in its trace: a child of the publisher's span, or a new trace.
        let incoming = TraceContext::from_headers(&message.properties.headers);
        let ctx = incoming
            .as_ref()
            .map_or_else(TraceContext::new_root, TraceContext::child);
        let span = tracing::Span::current();
        // The ids are formatted only when a subscriber records the span.
        if !span.is_disabled() {
            span.record("topic", message.routing_key.as_str());
            span.record("attempt", history.attempt);
            span.record("trace_id", ctx.trace_id().as_str());
            span.record("span_id", ctx.span_id().as_str());
            if let Some(p) = &incoming {
                span.record("parent_span_id", p.span_id().as_str());
            }
        }
        self.received.increment(&message.routing_key);

        let decoded = match wire::payload::decode(&message, self.limits) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(routing_key = %message.routing_key, reason = %e, "undecodable message");
                let answer =
                    headers_kind_is_rpc(&message) && self.has_responder(&message.routing_key);
                let verdict = decide_undecodable(&e.to_string(), answer);
                let received = Received {
                    message: &message,
                    headers: &message.properties.headers,
                    body: &message.body,
                    history: &history,
                    ctx: &ctx,
                    reply: ReplyTarget {
                        format: wire::WireFormat::Native,
                        topic: &message.routing_key,
                        reply_to: message.properties.reply_to.as_deref(),
                        correlation_id: message.properties.correlation_id.as_deref(),
                    },
                };
                return self.carry_out(&received, verdict).await;
            }
        };
        if !span.is_disabled() {
            span.record("topic", decoded.topic.as_str());
            if let Some(id) = &decoded.message_id {
                span.record("message_id", id.as_str());
            }
            span.record("format", format_name(decoded.format));
        }
        if let Kind::CeleryInternal { task } = &decoded.kind {
            tracing::debug!(task = %task, "tchu-tchu internal sub-task skipped");
            bump(&self.stats.internal);
            return Settle::Ack;
        }
        let is_rpc = decoded.kind == Kind::Rpc;
        let correlation_id = message
            .properties
            .correlation_id
            .clone()
            .or_else(|| decoded.message_id.clone());
        let mut idx = self.matches.matching(&self.registry, &decoded.topic);
        if let Some(only) = &history.only {
            idx = idx
                .iter()
                .copied()
                .filter(|&i| only.contains(&self.registry.entries()[i].id))
                .collect();
        }
        if idx.is_empty() {
            let received = Received {
                message: &message,
                headers: &message.properties.headers,
                body: &message.body,
                history: &history,
                ctx: &ctx,
                reply: ReplyTarget {
                    format: decoded.format,
                    topic: &decoded.topic,
                    reply_to: message.properties.reply_to.as_deref(),
                    correlation_id: correlation_id.as_deref(),
                },
            };
            // Another running version may handle it (ops: topology.rs, rolling deploys).
            let verdict = if is_rpc {
                decide_unmatched(&decoded.topic)
            } else {
                unmatched_verdict(
                    &self.topology,
                    self.broker(),
                    &message,
                    &decoded.topic,
                    history.only.as_deref(),
                    || refusal_backoff(self.stats.refused()),
                )
                .await
            };
            return self.carry_out(&received, verdict).await;
        }
        // The headers move (not cloned) into an `Arc` the handlers' `Meta` shares; the copies
        // sent on failure are made from there.
        let headers = Arc::new(std::mem::take(&mut message.properties.headers));
        let entries: Vec<&HandlerEntry> =
            idx.iter().map(|&i| &self.registry.entries()[i]).collect();

        let delivery = Arc::new(Delivery {
            // Raw until a handler asks (wire/payload.rs); a native body moves into it, and the
            // copies sent on failure are made from there.
            event: decoded
                .event
                .into_payload(|| std::mem::take(&mut message.body)),
            meta: Meta {
                message_id: decoded.message_id,
                topic: decoded.topic,
                headers: Arc::clone(&headers),
                redelivered,
                attempt: history.attempt,
                correlation_id: correlation_id.clone(),
                published_at: published_at(message.properties.timestamp),
                format: decoded.format,
                is_rpc,
            },
            state: Arc::clone(&self.state),
            client: Some(self.client.clone()),
        });
        let topic = delivery.meta.topic.as_str();
        let received = Received {
            message: &message,
            headers: &headers,
            body: delivery.event.native_body().unwrap_or(&message.body),
            history: &history,
            ctx: &ctx,
            reply: ReplyTarget {
                format: decoded.format,
                topic,
                reply_to: message.properties.reply_to.as_deref(),
                correlation_id: correlation_id.as_deref(),
            },
        };
        let outcomes = match self.check_context(&delivery) {
            ContextCheck::Passed => {
                join_all(entries.iter().zip(idx.iter()).map(|(e, &i)| {
                    self.run_handler(
                        e,
                        self.handler_meters.get(i),
                        &delivery,
                        &ctx,
                        history.attempt,
                    )
                }))
                .await
            }
            ContextCheck::Rejected(reason) => {
                tracing::debug!(topic = %topic, reason = %reason, "required context missing");
                let answer = is_rpc && entries.iter().any(|e| is_responder(e, topic));
                return self
                    .carry_out(&received, decide_unauthorized(&reason, answer))
                    .await;
            }
            // A bug in the helper: a failure of every matched handler, retried as one.
            ContextCheck::Panicked(text) => entries
                .iter()
                .map(|_| {
                    Err(Failure::Panicked(format!(
                        "context helper panicked: {text}"
                    )))
                })
                .collect(),
        };
        let runs: Vec<Run<'_>> = entries
            .iter()
            .zip(outcomes)
            .map(|(e, outcome)| {
                match &outcome {
                    Ok(_) => bump(&self.stats.handled),
                    Err(f) => {
                        bump(&self.stats.failed);
                        if matches!(f, Failure::TimedOut(_)) {
                            bump(&self.stats.timed_out);
                        }
                        tracing::warn!(handler = %e.id, topic = %topic, attempt = history.attempt, error = %f, "handler failed");
                    }
                }
                Run {
                    id: &e.id,
                    name: &e.name,
                    responder: is_rpc && is_responder(e, topic),
                    retry: e.retry.unwrap_or(self.retry),
                    outcome,
                }
            })
            .collect();
        let verdict = decide(&runs, is_rpc, history.attempt);
        drop(runs);
        self.carry_out(&received, verdict).await
    }

    /// Whether a handler here answers RPC requests on `topic`.
    fn has_responder(&self, topic: &str) -> bool {
        self.registry
            .matching(topic)
            .iter()
            .any(|&i| is_responder(&self.registry.entries()[i], topic))
    }

    /// Runs the app's context checks inside the panic boundary (they are user code).
    fn check_context(&self, delivery: &Delivery) -> ContextCheck {
        let Some(helpers) = self.state.get::<crate::context::ContextHelpers>() else {
            return ContextCheck::Passed;
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| helpers.check_required(delivery))) {
            Ok(Ok(())) => ContextCheck::Passed,
            Ok(Err(rejection)) => ContextCheck::Rejected(rejection.reason),
            Err(p) => ContextCheck::Panicked(panic_text(p.as_ref())),
        }
    }

    /// Carries out a verdict; returns how to settle the delivery.
    async fn carry_out(&self, received: &Received<'_>, verdict: Verdict) -> Settle {
        match verdict {
            Verdict::Ack => Settle::Ack,
            Verdict::Reply(answer) => {
                self.reply(received, &answer).await;
                Settle::Ack
            }
            Verdict::Forward(forward) => {
                if let Some(answer) = &forward.reply {
                    self.reply(received, answer).await;
                }
                match self.forward_all(received, &forward).await {
                    Ok(()) => {
                        self.stats.accepted();
                        Settle::Ack
                    }
                    Err(e) => {
                        let in_a_row = self.stats.refused();
                        let after = refusal_backoff(in_a_row);
                        tracing::error!(error = %e, in_a_row, ?after, "could not forward a failed delivery; requeueing it");
                        Box::pin(self.carry_out(received, Verdict::Requeue { after })).await
                    }
                }
            }
            Verdict::Requeue { after } => {
                tokio::time::sleep(after).await;
                Settle::Requeue
            }
        }
    }

    async fn forward_all(
        &self,
        received: &Received<'_>,
        forward: &Forward,
    ) -> Result<(), BrokerError> {
        let now = now_ms();
        let first = received.history.first_failure.unwrap_or(now);
        let attempt = received.history.attempt;
        for d in &forward.dead_letters {
            self.dead_letter(received, d, attempt, first).await?;
        }
        for r in &forward.retries {
            self.schedule_retry(received, r, attempt + 1, first).await?;
        }
        Ok(())
    }

    async fn reply(&self, received: &Received<'_>, answer: &Answer) {
        let target = &received.reply;
        let (Some(reply_to), Some(cid)) = (target.reply_to, target.correlation_id) else {
            tracing::warn!(topic = %target.topic, "rpc request without reply_to or correlation id; no reply sent");
            return;
        };
        let mut msg = wire::encode_reply(
            target.format,
            target.topic,
            &answer.handler,
            cid,
            &answer.reply,
        );
        msg.routing_key = reply_to.to_owned();
        // A reply carries its request's trace (a child span) when the request had one; a
        // request without a trace context gets a plain reply, as plain publishes are (nothing
        // formatted per call for a caller that does not trace: 3k instructions a round trip).
        if received.headers.contains_key(trace::TRACEPARENT_HEADER) {
            received
                .ctx
                .child()
                .write_headers(&mut msg.properties.headers);
        }
        match self.broker().publish_owned("", msg, false).await {
            Ok(_) => bump(&self.stats.replied),
            Err(e) => tracing::warn!(error = %e, "rpc reply not sent"),
        }
    }

    /// Publishes a copy with `mandatory`; `Ok(false)` when the broker returned it (routed to
    /// no queue: the target queue is gone). Caveat: lapin 4.12.3 hands a returned message to
    /// whichever confirm of the channel completes next (`acknowledgement.rs`, in `HashMap` order
    /// under a `multiple` confirm), so with several publishes in flight a return can be
    /// reported on another publish; retry copies therefore declare their queue first.
    async fn forward(&self, msg: &Message, what: &str) -> Result<bool, BrokerError> {
        match self.broker().publish("", msg, true).await? {
            Confirm::Ack => Ok(true),
            Confirm::Returned => Ok(false),
            Confirm::Nack => Err(BrokerError::new(format!(
                "the broker refused the {what} copy for `{}`",
                msg.routing_key
            ))),
        }
    }

    /// Publishes a copy to `queue`; if it was returned (the queue was deleted), declares the
    /// queue again with `spec` and sends it once more.
    async fn forward_declaring(
        &self,
        msg: &Message,
        what: &str,
        spec: impl FnOnce() -> QueueSpec,
    ) -> Result<(), BrokerError> {
        if self.forward(msg, what).await? {
            return Ok(());
        }
        tracing::warn!(queue = %msg.routing_key, "the {what} queue is gone; declaring it again");
        self.broker()
            .declare_queue(&spec())
            .await
            .map_err(|e| e.for_service(&self.queue))?;
        if self.forward(msg, what).await? {
            Ok(())
        } else {
            Err(BrokerError::new(format!(
                "the {what} copy for `{}` routed to no queue",
                msg.routing_key
            )))
        }
    }

    async fn dead_letter(
        &self,
        received: &Received<'_>,
        d: &DeadLetter,
        attempts: u32,
        first_failure: i64,
    ) -> Result<(), BrokerError> {
        let now = now_ms();
        let original = received.message;
        let mut msg = copy_with(received);
        let h = &mut msg.properties.headers;
        h.insert(
            REASON_HEADER.to_owned(),
            HeaderValue::from(d.reason.as_str()),
        );
        h.insert(
            TOPIC_HEADER.to_owned(),
            HeaderValue::from(original.routing_key.as_str()),
        );
        if let Some(handler) = &d.handler {
            h.insert(
                HANDLER_HEADER.to_owned(),
                HeaderValue::from(handler.as_str()),
            );
        }
        h.insert(
            ATTEMPTS_HEADER.to_owned(),
            HeaderValue::Int(attempts.into()),
        );
        h.insert(
            FIRST_FAILURE_HEADER.to_owned(),
            HeaderValue::Int(first_failure),
        );
        h.insert(LAST_FAILURE_HEADER.to_owned(), HeaderValue::Int(now));
        h.remove(HANDLERS_HEADER);
        h.remove(ATTEMPT_HEADER);
        msg.properties.persistent = true;
        msg.properties.expiration = None;
        let dlq = crate::topology::dlq_name(&self.queue);
        msg.routing_key.clone_from(&dlq);
        self.forward_declaring(&msg, "dead-letter", || {
            QueueSpec::durable(dlq, self.queue_type)
        })
        .await?;
        bump(&self.stats.dead_lettered);
        telemetry::dead_lettered(&original.routing_key, d.handler.as_deref(), d.kind);
        // The one `warn` line per dead letter, once the DLQ copy is confirmed.
        tracing::warn!(
            topic = %original.routing_key,
            handler = d.handler.as_deref().unwrap_or("-"),
            reason = %d.reason,
            attempts,
            dlq = %msg.routing_key,
            "dead-lettered"
        );
        Ok(())
    }

    fn wait_queue_spec(&self, delay_ms: u64) -> QueueSpec {
        let mut spec = QueueSpec::durable(
            crate::retry::wait_queue_name(&self.queue, delay_ms),
            self.queue_type,
        );
        spec.message_ttl = Some(Duration::from_millis(delay_ms));
        spec.dead_letter = Some((String::new(), self.queue.clone()));
        spec
    }

    async fn schedule_retry(
        &self,
        received: &Received<'_>,
        r: &RetryCopy,
        next_attempt: u32,
        first_failure: i64,
    ) -> Result<(), BrokerError> {
        let original = received.message;
        let delay_ms = r.delay_ms;
        // Declared before every copy (idempotent), not once per process: a wait queue deleted
        // meanwhile would make the copy unroutable, and lapin 4.12 does not always report that
        // `Returned` to the right publish when several are in flight (see `forward`).
        self.broker()
            .declare_queue(&self.wait_queue_spec(delay_ms))
            .await
            .map_err(|e| e.for_service(&self.queue))?;
        let mut msg = copy_with(received);
        let h = &mut msg.properties.headers;
        h.insert(
            ATTEMPT_HEADER.to_owned(),
            HeaderValue::Int(next_attempt.into()),
        );
        h.insert(
            HANDLERS_HEADER.to_owned(),
            HeaderValue::from(r.handlers.join(",")),
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
        msg.routing_key = crate::retry::wait_queue_name(&self.queue, delay_ms);
        self.forward_declaring(&msg, "retry", || self.wait_queue_spec(delay_ms))
            .await?;
        bump(&self.stats.retried);
        for h in &r.handlers {
            telemetry::retried(h);
        }
        Ok(())
    }

    /// Runs one handler in its `tchu.handler` span, with its own child of the delivery's trace
    /// context in scope (so its publishes and calls carry the trace), inside the panic boundary
    /// and its timeout, and records its metrics.
    async fn run_handler(
        &self,
        e: &HandlerEntry,
        meters: Option<&telemetry::HandlerMeters>,
        delivery: &Arc<Delivery>,
        ctx: &TraceContext,
        attempt: u32,
    ) -> Outcome {
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
        let limit = e.timeout.unwrap_or(self.handler_timeout);
        // The handler is called inside the guarded future: a panic while it builds its future
        // (before its first await), in an extractor, or in serializing its value is caught
        // like one inside it, instead of unwinding through the dispatcher.
        let d = Arc::clone(delivery);
        // The inbox (feature `postgres`): in a transaction, duplicates skipped (inbox.rs).
        #[cfg(feature = "postgres")]
        let handler = crate::inbox::run(e, d);
        #[cfg(not(feature = "postgres"))]
        let handler = async move { (e.handler)(d).await };
        let run = AssertUnwindSafe(crate::client::with_current(
            self.client.clone(),
            trace::scope(own, handler),
        ))
        .catch_unwind()
        .instrument(span.clone());
        let outcome = match tokio::time::timeout(limit, run).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(p)) => Err(Failure::Panicked(panic_text(p.as_ref()))),
            // The handler's future is dropped here: it stops at its current await.
            Err(_) => Err(Failure::TimedOut(limit)),
        };
        span.record("outcome", if outcome.is_ok() { "ok" } else { "failed" });
        match meters {
            Some(m) => m.handled(outcome.is_ok(), started.elapsed()),
            None => {
                telemetry::HandlerMeters::new(&e.id).handled(outcome.is_ok(), started.elapsed())
            }
        }
        outcome
    }
}

/// What the app's required-context checks said.
#[derive(Debug)]
enum ContextCheck {
    Passed,
    Rejected(String),
    Panicked(String),
}

/// Logs how a delivery's task ended: a panic there (outside the handlers' own boundary) is a
/// bug in tchu; its guard requeued the delivery.
pub(crate) fn log_task_end(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r
        && e.is_panic()
    {
        let text = panic_text(e.into_panic().as_ref());
        tracing::error!(panic = %text, "a delivery task panicked; its delivery was requeued");
    }
}

fn format_name(f: wire::WireFormat) -> &'static str {
    match f {
        wire::WireFormat::Celery => "celery",
        wire::WireFormat::Native => "native",
    }
}

/// A copy of the received message with its headers and body (which dispatch keeps apart).
fn copy_with(received: &Received<'_>) -> Message {
    let original = received.message;
    let p = &original.properties;
    Message {
        routing_key: original.routing_key.clone(),
        properties: Properties {
            content_type: p.content_type.clone(),
            content_encoding: p.content_encoding.clone(),
            headers: received.headers.clone(),
            persistent: p.persistent,
            correlation_id: p.correlation_id.clone(),
            reply_to: p.reply_to.clone(),
            expiration: p.expiration,
            message_id: p.message_id.clone(),
            timestamp: p.timestamp,
            priority: p.priority,
        },
        body: received.body.to_vec(),
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

    const NO_JITTER: RetryPolicy = RetryPolicy {
        retries: 2,
        backoff: crate::retry::Backoff::Fixed,
        delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(10),
        jitter: false,
    };

    fn run<'a>(id: &'a str, responder: bool, outcome: Outcome) -> Run<'a> {
        Run {
            id,
            name: id,
            responder,
            retry: NO_JITTER,
            outcome,
        }
    }

    fn ok(v: serde_json::Value) -> Outcome {
        Ok(v)
    }

    fn transient(m: &str) -> Outcome {
        Err(Failure::Transient(m.to_owned()))
    }

    fn answer(reply: Reply, handler: &str) -> Answer {
        Answer {
            reply,
            handler: handler.to_owned(),
        }
    }

    fn dead(reason: &str, handler: &str, kind: DeadLetterKind) -> DeadLetter {
        DeadLetter::new(reason, Some(handler), kind)
    }

    fn retry(delay_ms: u64, handlers: &[&str]) -> RetryCopy {
        RetryCopy {
            delay_ms,
            handlers: handlers.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    /// The decision after the handlers ran, case by case.
    #[test]
    fn verdicts_after_the_handlers_ran() {
        use serde_json::json;
        let null = serde_json::Value::Null;
        let remote = crate::error::RpcError::new("NOT_FOUND", "no such user");
        let cases: Vec<(&str, Vec<Run<'_>>, bool, u32, Verdict)> = vec![
            (
                "broadcast, all ok",
                vec![
                    run("a", false, ok(null.clone())),
                    run("b", false, ok(null.clone())),
                ],
                false,
                1,
                Verdict::Ack,
            ),
            (
                "broadcast, one transient failure: that handler alone is retried",
                vec![
                    run("a", false, ok(null.clone())),
                    run("b", false, transient("db down")),
                ],
                false,
                1,
                Verdict::Forward(Forward {
                    retries: vec![retry(500, &["b"])],
                    ..Forward::default()
                }),
            ),
            (
                "broadcast, retries exhausted: dead-lettered with the attempts",
                vec![run("b", false, transient("db down"))],
                false,
                3,
                Verdict::Forward(Forward {
                    dead_letters: vec![dead(
                        "db down (after 3 attempts)",
                        "b",
                        DeadLetterKind::Exhausted,
                    )],
                    ..Forward::default()
                }),
            ),
            (
                "broadcast, permanent and transient: one dead letter, one retry",
                vec![
                    run("a", false, Err(Failure::Permanent("bad data".into()))),
                    run("b", false, transient("x")),
                    run("c", false, transient("y")),
                ],
                false,
                1,
                Verdict::Forward(Forward {
                    retries: vec![retry(500, &["b", "c"])],
                    dead_letters: vec![dead("bad data", "a", DeadLetterKind::Permanent)],
                    ..Forward::default()
                }),
            ),
            (
                "a timeout is retried like a transient failure",
                vec![run(
                    "a",
                    false,
                    Err(Failure::TimedOut(Duration::from_secs(30))),
                )],
                false,
                1,
                Verdict::Forward(Forward {
                    retries: vec![retry(500, &["a"])],
                    ..Forward::default()
                }),
            ),
            (
                "rpc: the responder's value answers",
                vec![run("quote", true, ok(json!({"price": 3})))],
                true,
                1,
                Verdict::Reply(answer(Reply::Ok(json!({"price": 3})), "quote")),
            ),
            (
                "rpc: a failing `#` observer in this service neither answers nor pre-empts; it is retried",
                vec![
                    run("audit", false, transient("store down")),
                    run("quote", true, ok(json!(1))),
                ],
                true,
                1,
                Verdict::Forward(Forward {
                    reply: Some(answer(Reply::Ok(json!(1)), "quote")),
                    retries: vec![retry(500, &["audit"])],
                    dead_letters: vec![],
                }),
            ),
            (
                "rpc: an observer alone (another service) never answers; its failure is retried",
                vec![run("audit", false, transient("store down"))],
                true,
                1,
                Verdict::Forward(Forward {
                    retries: vec![retry(500, &["audit"])],
                    ..Forward::default()
                }),
            ),
            (
                "rpc: an observer's last failure is dead-lettered, still without answering",
                vec![run("audit", false, transient("store down"))],
                true,
                3,
                Verdict::Forward(Forward {
                    dead_letters: vec![dead(
                        "store down (after 3 attempts)",
                        "audit",
                        DeadLetterKind::Exhausted,
                    )],
                    ..Forward::default()
                }),
            ),
            (
                "rpc: an observer that succeeds with nothing: no answer, ack",
                vec![run("audit", false, ok(null.clone()))],
                true,
                1,
                Verdict::Ack,
            ),
            (
                "rpc: a responder's failure is its answer, not retried",
                vec![run("quote", true, transient("db down"))],
                true,
                1,
                Verdict::Reply(answer(Reply::HandlerFailed("db down".into()), "quote")),
            ),
            (
                "rpc: a business error answers as itself",
                vec![run("quote", true, Err(Failure::Remote(remote.clone())))],
                true,
                1,
                Verdict::Reply(answer(Reply::Remote(remote), "quote")),
            ),
            (
                "rpc: an invalid request answers Invalid",
                vec![run(
                    "quote",
                    true,
                    Err(Failure::Rejected(crate::handler::Rejection::new(
                        RejectionKind::Invalid,
                        "bad qty",
                    ))),
                )],
                true,
                1,
                Verdict::Reply(answer(Reply::Invalid("bad qty".into()), "quote")),
            ),
            (
                "rpc: a value beats another responder's failure",
                vec![run("a", true, transient("x")), run("b", true, ok(json!(2)))],
                true,
                1,
                Verdict::Reply(answer(Reply::Ok(json!(2)), "b")),
            ),
            (
                "rpc: a responder that returns nothing does not answer",
                vec![run("quote", true, ok(null))],
                true,
                1,
                Verdict::Ack,
            ),
        ];
        for (what, runs, rpc, attempt, want) in cases {
            assert_eq!(decide(&runs, rpc, attempt), want, "{what}");
        }
    }

    /// The decisions made before any handler runs.
    #[test]
    fn verdicts_before_the_handlers() {
        let undecodable = |answer: bool| decide_undecodable("body is not JSON", answer);
        assert_eq!(
            undecodable(false),
            Verdict::Forward(Forward {
                dead_letters: vec![DeadLetter::new(
                    "body is not JSON",
                    None,
                    DeadLetterKind::Undecodable
                )],
                ..Forward::default()
            })
        );
        let Verdict::Forward(f) = undecodable(true) else {
            unreachable!("forward")
        };
        assert_eq!(
            f.reply,
            Some(answer(Reply::Invalid("body is not JSON".into()), ""))
        );

        // No local handler: dead-lettered and never answered, RPC or not.
        assert_eq!(
            decide_unmatched("rpc.orders.quote"),
            Verdict::Forward(Forward {
                dead_letters: vec![DeadLetter::new(
                    "no local handler matches `rpc.orders.quote`",
                    None,
                    DeadLetterKind::NoHandler
                )],
                ..Forward::default()
            })
        );

        let Verdict::Forward(f) = decide_unauthorized("unauthorized: no user", false) else {
            unreachable!("forward")
        };
        assert_eq!(f.reply, None, "no responder here: no answer");
        assert_eq!(f.dead_letters[0].kind, DeadLetterKind::Rejected);
        let Verdict::Forward(f) = decide_unauthorized("unauthorized: no user", true) else {
            unreachable!("forward")
        };
        assert!(
            matches!(f.reply, Some(Answer { reply: Reply::Remote(e), .. }) if e.code == "UNAUTHORIZED")
        );
    }

    #[test]
    fn refused_copies_back_off() {
        let got: Vec<u64> = [1, 2, 3, 4, 8, 9, 50, u32::MAX]
            .iter()
            .map(|&n| u64::try_from(refusal_backoff(n).as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(got, [200, 400, 800, 1_600, 25_600, 30_000, 30_000, 30_000]);
    }

    /// A retry copy the broker keeps refusing (its wait queue exists with other arguments, so
    /// it cannot be declared): the delivery is requeued with a growing delay, not hot-looped,
    /// and health says degraded; once the queue can be declared, the retry goes through and
    /// health recovers.
    #[tokio::test]
    async fn refused_retry_copies_back_off_degrade_health_and_recover() {
        use crate::broker::memory::MemoryBroker;
        let broker = MemoryBroker::new();
        let wait_queue = crate::retry::wait_queue_name("deg", 100);
        broker
            .declare_queue(&QueueSpec::durable(&wait_queue, QueueType::Classic))
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let r = crate::app::App::new(crate::config::Config::memory())
            .broker(&broker)
            .service("deg")
            .only_module("none")
            .retry(RetryPolicy {
                delay: Duration::from_millis(100),
                ..NO_JITTER
            })
            .subscribe("job.x", "x", move |d: Arc<Delivery>| {
                let attempt = d.meta.attempt;
                let _ = tx.send(attempt);
                async move {
                    if attempt == 1 {
                        Err(crate::handler::HandlerError::transient("first try fails"))
                    } else {
                        Ok(())
                    }
                }
            })
            .start()
            .await
            .unwrap();
        r.client()
            .publish("job.x", &serde_json::json!({}))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while !r.health().degraded {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never degraded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut runs = 0;
        while rx.try_recv().is_ok() {
            runs += 1;
        }
        eprintln!("degraded after {:?} and {runs} runs", started.elapsed());
        assert_eq!(runs, DEGRADED_AFTER, "one run per refusal: no hot loop");
        assert!(r.health().is_healthy(), "degraded, still serving");
        broker.delete_queue(&wait_queue).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
            match got {
                Ok(Some(2)) => break,
                Ok(Some(_)) => {}
                other => unreachable!("no retry after recovery: {other:?}"),
            }
        }
        assert!(!r.health().degraded, "recovered");
        let s = r.shutdown().await;
        assert_eq!((s.handled, s.retried, s.dead_lettered), (1, 1, 0), "{s:?}");
    }

    #[test]
    fn responders_subscribe_to_the_topic_itself() {
        let entry = |pattern: &str| HandlerEntry {
            id: pattern.to_owned(),
            name: pattern.to_owned(),
            pattern: crate::topic::Pattern::new(pattern).unwrap(),
            handler: Arc::new(|_| Box::pin(async { Ok(serde_json::Value::Null) })),
            retry: None,
            timeout: None,
        };
        assert!(is_responder(&entry("rpc.orders.quote"), "rpc.orders.quote"));
        for observer in ["#", "rpc.#", "rpc.orders.*", "*.orders.quote"] {
            assert!(
                !is_responder(&entry(observer), "rpc.orders.quote"),
                "{observer}"
            );
        }
    }
}
