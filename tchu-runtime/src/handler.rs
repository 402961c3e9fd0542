//! What a handler receives and returns: the [`Delivery`], the [`FromDelivery`] extractor trait,
//! and [`Outcome`], the typed result of running a handler.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;
use crate::message::Headers;
use crate::wire::WireFormat;
use crate::wire::payload::Payload;

/// Metadata of one delivery, available to handlers as an argument.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Meta {
    /// The message id (Celery: the task id).
    pub message_id: Option<String>,
    /// The routing key the event was published with (its topic).
    pub topic: String,
    /// AMQP headers, shared with the dispatcher (not copied per handler or per delivery).
    pub headers: Arc<Headers>,
    /// Whether the broker redelivered this message.
    pub redelivered: bool,
    /// 1 on the first try, 2 on the first retry, and so on.
    pub attempt: u32,
    /// The correlation id (RPC requests).
    pub correlation_id: Option<String>,
    /// When the publisher sent it, if it said.
    pub published_at: Option<SystemTime>,
    /// Which wire format carried it.
    pub format: WireFormat,
    /// Whether this delivery is an RPC request expecting a reply.
    pub is_rpc: bool,
}

impl Meta {
    /// The W3C trace context the publisher sent (`traceparent`/`tracestate` headers), if any.
    /// Handlers need not read it: their publishes and calls continue the trace by themselves.
    pub fn trace_context(&self) -> Option<crate::trace::TraceContext> {
        crate::trace::TraceContext::from_headers(&self.headers)
    }
}

/// Hashes a `TypeId` by passing its bits through: they are a hash already (the standard
/// library feeds a `TypeId`'s hash one `u64` of it), so SipHash over them on every `State<T>`
/// lookup is wasted work. Any other input is folded in byte by byte.
#[derive(Default)]
struct TypeIdHasher(u64);

impl std::hash::Hasher for TypeIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(8) ^ n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Shared resources registered on the app builder, looked up by type.
#[derive(Default, Clone)]
pub(crate) struct StateMap(
    HashMap<
        std::any::TypeId,
        Arc<dyn Any + Send + Sync>,
        std::hash::BuildHasherDefault<TypeIdHasher>,
    >,
);

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMap")
            .field("len", &self.0.len())
            .finish()
    }
}

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(std::any::TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0
            .get(&std::any::TypeId::of::<T>())
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }
}

/// One received event as handlers see it, whatever wire format carried it.
///
/// The event stays the JSON it arrived as until it is asked for: a typed handler reads its
/// type straight from it, and [`Delivery::event`] builds a `serde_json::Value` on its first
/// call only.
#[derive(Debug)]
pub struct Delivery {
    /// The event payload (without tchu-tchu's `_tchu_meta`), raw until asked for.
    pub(crate) event: Payload,
    /// Its metadata.
    pub meta: Meta,
    pub(crate) state: Arc<StateMap>,
    pub(crate) client: Option<crate::client::Client>,
}

impl Delivery {
    /// The client of the service that received this delivery (for nested publishes).
    pub fn client(&self) -> Option<&crate::client::Client> {
        self.client.as_ref()
    }

    /// The event payload (without tchu-tchu's `_tchu_meta`) as a JSON tree, built on the first
    /// call and kept for the next ones.
    pub fn event(&self) -> &serde_json::Value {
        self.event.value()
    }

    /// Deserializes the event payload into `T`, straight from the JSON it arrived as when
    /// nothing built its tree yet (the way typed handler arguments are read).
    ///
    /// # Errors
    /// The payload does not deserialize into `T` (the error is the one reading
    /// [`Delivery::event`] into `T` gives).
    pub fn event_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.event.deserialize()
    }

    /// A delivery for unit tests of extractors and handlers.
    pub fn for_test(topic: &str, event: serde_json::Value) -> Self {
        Delivery {
            event: Payload::parsed(event),
            meta: Meta {
                message_id: None,
                topic: topic.to_owned(),
                headers: Arc::default(),
                redelivered: false,
                attempt: 1,
                correlation_id: None,
                published_at: None,
                format: WireFormat::Native,
                is_rpc: false,
            },
            state: Arc::default(),
            client: None,
        }
    }
}

/// Why an extractor refused a delivery. The message is dead-lettered with this reason and
/// never retried.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// What kind of refusal.
    pub kind: RejectionKind,
    /// Human-readable reason.
    pub reason: String,
}

/// The kinds of [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The payload does not deserialize into the handler's type.
    Decode,
    /// The payload deserialized but failed validation.
    Invalid,
    /// A required context could not be built.
    Unauthorized,
    /// A required resource is missing (e.g. a `State<T>` never registered).
    Missing,
}

impl Rejection {
    /// A rejection of the given kind.
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A handler argument built from the delivery. Implement it to write your own extractors.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a tchu handler argument",
    note = "handler arguments are a `#[tchu::event]` type, `serde_json::Value`, `tchu::Meta`, \
            `tchu::State<T>`, or a type implementing `tchu::FromDelivery`"
)]
pub trait FromDelivery: Sized + Send + 'static {
    /// Builds the argument.
    ///
    /// # Errors
    /// A [`Rejection`]: the delivery is dead-lettered with its reason.
    fn from_delivery(delivery: &Delivery) -> Result<Self, Rejection>;
}

impl FromDelivery for serde_json::Value {
    fn from_delivery(d: &Delivery) -> Result<Self, Rejection> {
        // Read from the raw JSON (one parse) rather than building the shared tree and cloning
        // it; the payload was validated as JSON, so this does not fail.
        Ok(d.event.deserialize().unwrap_or_default())
    }
}

impl FromDelivery for Meta {
    fn from_delivery(d: &Delivery) -> Result<Self, Rejection> {
        Ok(d.meta.clone())
    }
}

/// The check a typed handler of `E` makes before decoding (called by `extract_event`): a
/// mismatch is counted ([`SCHEMA_MISMATCH_TOTAL`](crate::fingerprint::SCHEMA_MISMATCH_TOTAL)) and logged at `warn`; in strict mode
/// ([`Config::schema_strict`](crate::Config::schema_strict)) the message is refused, so it is
/// dead-lettered with the reason.
fn schema_check<E: crate::Event>(d: &Delivery) -> Result<(), Rejection> {
    let crate::schemas::SchemaCheck::Mismatch { expected, received } =
        crate::schemas::check::<E>(&d.meta.headers)
    else {
        return Ok(());
    };
    metrics::counter!(
        crate::schema_hash::SCHEMA_MISMATCH_TOTAL,
        "topic" => d.meta.topic.clone(),
        "expected" => expected.clone(),
        "received" => received.clone(),
    )
    .increment(1);
    let strict = d.client().is_some_and(|c| c.config().schema_strict);
    let event = std::any::type_name::<E>();
    tracing::warn!(
        topic = %d.meta.topic,
        event,
        expected = %expected,
        received = %received,
        strict,
        "schema mismatch: the sender was built against another schema of this event"
    );
    if strict {
        return Err(Rejection::new(
            RejectionKind::Decode,
            format!(
                "schema mismatch on `{}`: the handler's `{event}` has schema {expected}, the \
                 sender's has {received} (TCHU_SCHEMA_STRICT)",
                d.meta.topic
            ),
        ));
    }
    Ok(())
}

/// Decodes and validates a typed event from a delivery; used by `#[tchu::event]` types.
///
/// # Errors
/// [`RejectionKind::Decode`] or [`RejectionKind::Invalid`].
pub fn extract_event<E: crate::Event>(d: &Delivery) -> Result<E, Rejection> {
    schema_check::<E>(d)?;
    let e = d.event.deserialize::<E>().map_err(|err| {
        Rejection::new(
            RejectionKind::Decode,
            format!("cannot decode `{}`: {err}", std::any::type_name::<E>()),
        )
    })?;
    validator::Validate::validate(&e).map_err(|err| {
        Rejection::new(
            RejectionKind::Invalid,
            format!("invalid `{}`: {err}", E::TOPIC),
        )
    })?;
    Ok(e)
}

/// A shared resource registered with [`App::state`](crate::App::state), as in axum.
#[derive(Debug)]
pub struct State<T>(pub Arc<T>);

impl<T> std::ops::Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Send + Sync + 'static> FromDelivery for State<T> {
    fn from_delivery(d: &Delivery) -> Result<Self, Rejection> {
        d.state.get::<T>().map(State).ok_or_else(|| {
            Rejection::new(
                RejectionKind::Missing,
                format!(
                    "no state of type `{}`: register it with `App::state`",
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

/// A handler error with an explicit retry decision. Any other error type is retried.
#[derive(Debug, Clone)]
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(message: impl fmt::Display) -> Self {
        HandlerError {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix: dead-lettered at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        HandlerError {
            message: message.to_string(),
            permanent: true,
        }
    }

    /// Whether this failure skips retries.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

/// How a handler failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Failure {
    /// It returned an error worth retrying.
    Transient(String),
    /// It returned an error marked permanent.
    Permanent(String),
    /// It returned a business error for its RPC caller.
    Remote(RpcError),
    /// An extractor refused the delivery.
    Rejected(Rejection),
    /// It panicked.
    Panicked(String),
    /// It ran longer than its timeout and was stopped (`timeout = "..."` on the handler, else
    /// the service's [`Config::handler_timeout`](crate::Config::handler_timeout)).
    TimedOut(std::time::Duration),
}

impl Failure {
    /// Whether a retry could help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Failure::Transient(_) | Failure::Panicked(_) | Failure::TimedOut(_)
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transient(m) | Failure::Permanent(m) => f.write_str(m),
            Failure::Remote(e) => write!(f, "rpc error {e}"),
            Failure::Rejected(r) => write!(f, "rejected: {r}"),
            Failure::Panicked(m) => write!(f, "handler panicked: {m}"),
            Failure::TimedOut(d) => write!(f, "handler timed out after {d:?}"),
        }
    }
}

/// The result of running a handler once.
pub type Outcome = Result<serde_json::Value, Failure>;

/// Turns a handler's return value into an [`Outcome`]. Implemented for `Result<T, E>` where `T`
/// serializes (the RPC reply; `()` for broadcast handlers) and `E` displays.
#[diagnostic::on_unimplemented(
    message = "a tchu handler must return `()`, `T` or `Result<T, E>` with `T: Serialize` and `E: Display`",
    note = "RPC handlers return their request's response type, e.g. `Result<Reply, tchu::RpcError>`"
)]
pub trait IntoOutcome {
    /// Converts.
    fn into_outcome(self) -> Outcome;
}

// (structure) `do_not_recommend`: an unmet bound reports `IntoOutcome`'s own message.
#[diagnostic::do_not_recommend]
impl<T: Serialize, E: fmt::Display + Send + 'static> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(v) => serde_json::to_value(v)
                .map_err(|e| Failure::Permanent(format!("cannot serialize the reply: {e}"))),
            Err(e) => Err(error_to_failure(e)),
        }
    }
}

fn error_to_failure<E: fmt::Display + 'static>(e: E) -> Failure {
    let any: &dyn Any = &e;
    if let Some(rpc) = any.downcast_ref::<RpcError>() {
        return Failure::Remote(rpc.clone());
    }
    if let Some(h) = any.downcast_ref::<HandlerError>() {
        return if h.permanent {
            Failure::Permanent(h.message.clone())
        } else {
            Failure::Transient(h.message.clone())
        };
    }
    Failure::Transient(e.to_string())
}

/// Converts an extractor's result; used by generated code.
///
/// # Errors
/// The rejection as a [`Failure`].
pub fn extracted<T>(r: Result<T, Rejection>) -> Result<T, Failure> {
    r.map_err(Failure::Rejected)
}

impl FromDelivery for crate::client::Client {
    fn from_delivery(d: &Delivery) -> Result<Self, Rejection> {
        d.client.clone().ok_or_else(|| {
            Rejection::new(
                RejectionKind::Missing,
                "no client in this delivery (a unit test?)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn state_is_found_by_type_with_the_pass_through_hasher() {
        let mut s = StateMap::default();
        s.insert(7u32);
        s.insert("text");
        s.insert(Arc::new(1.5f64));
        assert_eq!(s.get::<u32>().as_deref(), Some(&7));
        assert_eq!(s.get::<&str>().as_deref(), Some(&"text"));
        assert_eq!(s.get::<Arc<f64>>().map(|a| **a), Some(1.5));
        assert!(s.get::<u64>().is_none());
    }

    #[test]
    fn a_timed_out_run_is_retried() {
        assert!(Failure::TimedOut(Duration::from_secs(1)).is_retryable());
    }
}
