//! W3C trace context (<https://www.w3.org/TR/trace-context/>) carried in message headers, with
//! no OpenTelemetry dependency.
//!
//! - A delivery's `traceparent` header (and `tracestate`, kept verbatim) is read by the
//!   dispatcher. A delivery without one starts a new trace. Each handler run gets its own span
//!   id, a child of the delivery's, and runs inside [`scope`] with that context.
//! - Every publish, call and RPC reply made while a context is in scope (any [`Client`], the
//!   default client too) carries `traceparent` with the same trace id and a new span id, whose
//!   parent is the handler's. Outside a scope nothing is added.
//! - The ids are recorded on the `tchu.delivery`, `tchu.handler`, `tchu.publish` and
//!   `tchu.call` spans as `trace_id`, `span_id` and `parent_span_id`, so logs can be joined.
//!
//! The header is plain W3C `traceparent`, so an OpenTelemetry `TraceContextPropagator` (in
//! Rust, or Python's Celery instrumentation) reads and writes the same thing.
//!
//! The context is a [`tokio::task_local!`]: a task spawned by a handler does not inherit it;
//! wrap its future in [`scope`] with [`current`] to keep the trace.
//!
//! [`Client`]: crate::Client

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use crate::message::{HeaderValue, Headers};

/// The header carrying the trace id, the parent span id and the flags.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The vendor-specific companion header, propagated unchanged.
pub const TRACESTATE_HEADER: &str = "tracestate";

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context: trace id, the id of the current span, flags, and `tracestate`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.to_string())
            .field("tracestate", &self.state)
            .finish()
    }
}

/// `traceparent` did not parse (the header is then ignored and a new trace starts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `traceparent` header")]
pub struct ParseTraceError(());

fn random_u64() -> u64 {
    loop {
        // A per-thread fast generator: ids must be unique, not secret.
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

fn random_u128() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

impl TraceContext {
    /// A new trace (random trace id and span id), sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: random_u128(),
            span_id: random_u64(),
            flags: 0x01,
            state: None,
        }
    }

    /// The same trace with a new span id: the child of this span.
    #[must_use]
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: random_u64(),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The `tracestate` header that came with it, if any.
    pub fn trace_state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Reads `traceparent` (and `tracestate`) from message headers. `None` when absent or
    /// invalid.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let parent = headers.get(TRACEPARENT_HEADER).and_then(header_text)?;
        let mut ctx: TraceContext = parent.parse().ok()?;
        ctx.state = headers
            .get(TRACESTATE_HEADER)
            .and_then(header_text)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Some(ctx)
    }

    /// Writes `traceparent` (and `tracestate` when present) into message headers.
    pub fn write_headers(&self, headers: &mut Headers) {
        headers.insert(
            TRACEPARENT_HEADER.to_owned(),
            HeaderValue::String(self.to_string()),
        );
        match &self.state {
            Some(s) => {
                headers.insert(TRACESTATE_HEADER.to_owned(), HeaderValue::from(s.as_str()));
            }
            None => {
                headers.remove(TRACESTATE_HEADER);
            }
        }
    }
}

/// Header values arrive as strings from tchu, and may be bytes from other AMQP clients.
fn header_text(v: &HeaderValue) -> Option<&str> {
    match v {
        HeaderValue::String(s) => Some(s),
        HeaderValue::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` form: `00-<trace id>-<span id>-<flags>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl FromStr for TraceContext {
    type Err = ParseTraceError;

    /// Parses a `traceparent` value. Versions above `00` are read by their first four fields,
    /// as the spec asks; version `ff` and all-zero ids are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTraceError(());
        let s = s.trim();
        let mut parts = s.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let hex = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) {
            return Err(err());
        }
        if !hex(flags, 2) || (version == "00" && parts.next().is_some()) {
            return Err(err());
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| err())?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| err())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| err())?;
        if trace_id == 0 || span_id == 0 {
            return Err(err());
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags,
            state: None,
        })
    }
}

/// The trace context in scope (inside a handler run, or a [`scope`]), if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `ctx` as the current trace context: publishes and calls it makes carry
/// `ctx`'s trace id, with `ctx` as their parent span.
pub fn scope<F: Future>(ctx: TraceContext, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(ctx, fut)
}

/// The context for an outgoing message: a child of the current one, if any.
pub(crate) fn outgoing() -> Option<(TraceContext, TraceContext)> {
    current().map(|parent| {
        let child = parent.child();
        (parent, child)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_spec_example() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c: TraceContext = s.parse().unwrap();
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id(), "00f067aa0ba902b7");
        assert_eq!(c.flags(), 1);
        assert_eq!(c.to_string(), s);
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceContext>().is_err(), "{bad}");
        }
        // A future version may append fields.
        assert!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"
                .parse::<TraceContext>()
                .is_ok()
        );
    }

    #[test]
    fn headers_round_trip_with_tracestate() {
        let mut h = Headers::new();
        h.insert(
            TRACEPARENT_HEADER.to_owned(),
            HeaderValue::Bytes(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_vec()),
        );
        h.insert(
            TRACESTATE_HEADER.to_owned(),
            HeaderValue::from("congo=t61rcWkgMzE"),
        );
        let c = TraceContext::from_headers(&h).unwrap();
        assert_eq!(c.trace_state(), Some("congo=t61rcWkgMzE"));
        let child = c.child();
        assert_eq!(child.trace_id(), c.trace_id());
        assert_ne!(child.span_id(), c.span_id());
        let mut out = Headers::new();
        child.write_headers(&mut out);
        assert_eq!(TraceContext::from_headers(&out), Some(child));
    }

    #[tokio::test]
    async fn scope_sets_current() {
        assert!(current().is_none());
        let root = TraceContext::new_root();
        let seen = scope(root.clone(), async { current() }).await;
        assert_eq!(seen, Some(root));
    }
}
