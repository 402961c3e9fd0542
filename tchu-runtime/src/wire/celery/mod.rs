//! Celery task messages as Python tchu-tchu 3.0.4 sends and accepts them.
//! See `tests/fixtures/tchu-tchu-3.0.4/README.md` (a copy of the shared captures) for the ground truth.
//!
//! # Receiving
//! - **Protocol v2** (`TchuClient.publish` / `TchuClient.call`): the task name is in the `task`
//!   header and the body is `[args, kwargs, embed]`.
//! - **Protocol v1** (`ServerlessProducer`): no headers; the body is
//!   `{"task", "id", "args", "kwargs", ...}`.
//!
//! For `tchu_tchu.dispatch_event`, `args[0]` is the event JSON encoded as a string (an
//! already-decoded object is accepted too) and `kwargs.routing_key` is the topic. Where that
//! kwarg is missing or null, tchu-tchu's worker uses the topic `"unknown"`; tchu uses the AMQP
//! routing key instead, which is the topic for every message a tchu-tchu publisher sends.
//!
//! `_tchu_meta` decides the kind exactly as tchu-tchu's dispatcher does: absent means RPC (2.x
//! compatibility), present means `_tchu_meta.is_rpc` (Python truthiness, default false). It is
//! removed from the event handlers see.
//!
//! A request whose `args[0]` string is not JSON (`TchuClient.call(topic, "some text")`, see
//! `rpc_request_prestringified_body.json`) makes tchu-tchu's dispatcher itself fail (the caller
//! gets a `FAILURE` reply, `rpc_reply_dispatch_failure.json`). [`decode()`] reports it as a
//! [`DecodeError::Shape`]; a responder that wants to answer such a caller can reply with
//! [`Reply::Invalid`](crate::wire::Reply::Invalid).
//!
//! Tasks named `tchu_tchu.handler.*` are tchu-tchu's internal per-handler sub-tasks: they
//! decode to [`Kind::CeleryInternal`](crate::wire::Kind::CeleryInternal). Any other task name is refused.
//!
//! # Sending
//! [`encode_with`] writes the body `TchuClient.publish`/`call` write (the same layout, JSON with
//! Python's `", "` / `": "` separators) with the headers and properties of a
//! [`CeleryEncoding`]: by default ([`encode()`]) [`Lean`](CeleryEncoding::Lean), only what a
//! Celery worker reads (`task`, `id`, `content_type`); with [`Full`](CeleryEncoding::Full), the
//! same 19 headers with the same AMQP types and the same properties as `TchuClient`. What
//! differs from a Python sender in `Full` (none of it matters to a Celery worker):
//! - `origin` is `tchu-rs<pid>@<host>` instead of `gen<pid>@<host>`.
//! - `argsrepr` / `kwargsrepr` are an approximation of Python's `repr`, cut at
//!   [`REPR_MAX_CHARS`] characters.
//! - The event string is the caller's serialized event with `, "_tchu_meta": {"is_rpc": ..}`
//!   spliced in before the closing brace; the caller's own bytes are kept (serde's compact
//!   separators, floats as serde writes them), so the inner string is byte-identical to
//!   Python's only when the caller's JSON is. If the event already has a `_tchu_meta` key, the
//!   spliced one comes last and wins in both Python and serde.
//! - Non-ASCII text is written as UTF-8, where Python's `json.dumps` writes `\uXXXX` escapes.
//!
//! # Replies
//! Replies are Celery result meta (`{"status", "result", "traceback", "children",
//! "date_done", "task_id"}`), as tchu-tchu's dispatcher returns them through the `rpc://`
//! result backend; see [`encode_reply`] and [`decode_reply`].

//!
//! # Files
//! - `decode.rs`: recognising and decoding task messages ([`is_celery`], [`decode()`]).
//! - `encode.rs`: writing task messages ([`encode()`], [`encode_with`]).
//! - `reply.rs`: result replies ([`encode_reply`], [`decode_reply`], [`is_interim_reply`]).
//! - `pyrepr.rs`: Python's text forms: `json.dumps` separators and `repr` of a `str`.

pub(crate) mod decode;
mod encode;
mod pyrepr;
mod reply;
#[cfg(test)]
mod tests;

pub use decode::{decode, is_celery};
pub use encode::{encode, encode_with};
pub(crate) use reply::decode_final_reply;
pub use reply::{decode_reply, encode_reply, is_interim_reply};

use crate::wire::DecodeError;

/// Which headers and properties tchu writes on a Celery task message (`TCHU_CELERY_ENCODING`,
/// [`Config::celery_encoding`](crate::Config::celery_encoding)). The body is the same in both.
///
/// A real tchu-tchu 3.0.4 worker on Celery 5.7 receives events, answers calls and reports
/// results exactly the same with either (`tests/python/header_probe.py` drops each header and
/// property in turn against one; `tests/interop.rs` runs both encodings). What `Lean` leaves
/// out only shows in Celery's monitoring: see `docs/interop.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CeleryEncoding {
    /// The default: the `task` and `id` headers and the `content_type` property
    /// (`application/json`), which a Celery worker cannot do without (without `task` it
    /// refuses the message as unknown; without `id` or `content_type` a 5.7 worker logs an
    /// unrecoverable error and handles nothing more). None of the other 17 headers, no
    /// `content_encoding` (kombu reads UTF-8 by default), no `priority` and no
    /// `correlation_id` on events (Celery's `rpc://` backend replies with the task id then; a
    /// call still sets it).
    #[default]
    Lean,
    /// Byte for byte what `TchuClient` writes: the 19 headers `lang`, `task`, `id`, `root_id`,
    /// `shadow`, `eta`, `expires`, `group`, `group_index`, `retries`, `timelimit`,
    /// `parent_id`, `origin`, `ignore_result`, `replaced_task_nesting`, `stamped_headers`,
    /// `stamps`, `argsrepr` and `kwargsrepr` (Python `repr`s of the arguments, which are most
    /// of the cost of encoding), and the properties `content_type`, `content_encoding`,
    /// `priority` 0 and `correlation_id` = the task id.
    Full,
}

impl CeleryEncoding {
    /// The name used by `TCHU_CELERY_ENCODING`: `lean` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            CeleryEncoding::Lean => "lean",
            CeleryEncoding::Full => "full",
        }
    }
}

impl std::fmt::Display for CeleryEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Celery task every tchu-tchu event is sent as.
pub const DISPATCH_TASK: &str = "tchu_tchu.dispatch_event";

/// Prefix of tchu-tchu's internal per-handler sub-tasks.
pub const HANDLER_TASK_PREFIX: &str = "tchu_tchu.handler.";

/// Key of the metadata tchu-tchu adds to every event it sends.
pub const META_KEY: &str = "_tchu_meta";

/// Prefix that marks a [`Reply::Invalid`](crate::wire::Reply::Invalid) inside a Celery reply's `error` text.
pub const INVALID_PREFIX: &str = "invalid request: ";

/// Longest `argsrepr` / `kwargsrepr` header written, in characters (Celery's own default
/// limit is also 1024). Keeps the header table small whatever the event size.
pub const REPR_MAX_CHARS: usize = 1024;

const FORMAT: &str = "celery";
const REPLY_FORMAT: &str = "celery reply";
const CONTENT_TYPE: &str = "application/json";
const CONTENT_ENCODING: &str = "utf-8";

fn shape(reason: impl Into<String>) -> DecodeError {
    DecodeError::Shape {
        format: FORMAT,
        reason: reason.into(),
    }
}

fn reply_shape(reason: impl Into<String>) -> DecodeError {
    DecodeError::Shape {
        format: REPLY_FORMAT,
        reason: reason.into(),
    }
}
