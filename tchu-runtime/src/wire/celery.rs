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
//! gets a `FAILURE` reply, `rpc_reply_dispatch_failure.json`). [`decode`] reports it as a
//! [`DecodeError::Shape`]; a responder that wants to answer such a caller can reply with
//! [`Reply::Invalid`].
//!
//! Tasks named `tchu_tchu.handler.*` are tchu-tchu's internal per-handler sub-tasks: they
//! decode to [`Kind::CeleryInternal`]. Any other task name is refused.
//!
//! # Sending
//! [`encode`] writes what `TchuClient.publish`/`call` write: the same headers with the same AMQP
//! types, the same body layout, and JSON with Python's `", "` / `": "` separators. What differs
//! from a Python sender (none of it matters to a Celery worker):
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

use std::fmt::Write as _;
use std::io;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::RpcError;
use crate::message::{HeaderValue, Headers, Message, Properties};
use crate::wire::{DecodeError, Decoded, Kind, Reply, WireFormat};

/// The Celery task every tchu-tchu event is sent as.
pub const DISPATCH_TASK: &str = "tchu_tchu.dispatch_event";

/// Prefix of tchu-tchu's internal per-handler sub-tasks.
pub const HANDLER_TASK_PREFIX: &str = "tchu_tchu.handler.";

/// Key of the metadata tchu-tchu adds to every event it sends.
pub const META_KEY: &str = "_tchu_meta";

/// Prefix that marks a [`Reply::Invalid`] inside a Celery reply's `error` text.
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

/// Keys whose presence makes a header-less JSON object a Celery v1 task message.
#[derive(serde::Deserialize)]
struct V1Probe {
    #[allow(dead_code)]
    task: serde::de::IgnoredAny,
    #[allow(dead_code)]
    args: serde::de::IgnoredAny,
}

/// Whether a message looks like a Celery task message.
///
/// - v2: it has a `task` header.
/// - v1: it has no `x-tchu-kind` header and its body is a JSON object with top-level `task`
///   and `args` keys (whatever their values, so that a broken v1 envelope is reported as such
///   rather than handled as a plain JSON event).
pub fn is_celery(msg: &Message) -> bool {
    if msg.properties.headers.contains_key("task") {
        return true;
    }
    if msg
        .properties
        .headers
        .contains_key(super::json::KIND_HEADER)
    {
        return false;
    }
    let body = msg.body.trim_ascii_start();
    if body.first() != Some(&b'{') || !contains(body, b"\"task\"") || !contains(body, b"\"args\"") {
        return false;
    }
    serde_json::from_slice::<V1Probe>(body).is_ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Decoding task messages
// ---------------------------------------------------------------------------------------------

/// The parts of a Celery task message, whatever the protocol version.
struct Envelope {
    task: String,
    id: Option<String>,
    args: Value,
    kwargs: Value,
}

fn envelope_v2(msg: &Message, task: &HeaderValue) -> Result<Envelope, DecodeError> {
    let task = task
        .as_str()
        .ok_or_else(|| shape("the `task` header must be a string"))?
        .to_owned();
    let id = match msg.properties.headers.get("id") {
        Some(HeaderValue::String(id)) => Some(id.clone()),
        Some(HeaderValue::Null) | None => msg.properties.correlation_id.clone(),
        Some(_) => return Err(shape("the `id` header must be a string")),
    };
    let body: Value =
        serde_json::from_slice(&msg.body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Array(parts) = body else {
        return Err(shape(
            "a protocol-2 body must be a JSON array [args, kwargs, embed]",
        ));
    };
    if !(2..=3).contains(&parts.len()) {
        return Err(shape(format!(
            "a protocol-2 body must be [args, kwargs, embed], found {} elements",
            parts.len()
        )));
    }
    let mut parts = parts.into_iter();
    let args = parts.next().unwrap_or(Value::Null);
    let kwargs = parts.next().unwrap_or(Value::Null);
    if let Some(embed) = parts.next()
        && !(embed.is_object() || embed.is_null())
    {
        return Err(shape("embed (body[2]) must be an object"));
    }
    Ok(Envelope {
        task,
        id,
        args,
        kwargs,
    })
}

fn envelope_v1(msg: &Message) -> Result<Envelope, DecodeError> {
    let body: Value =
        serde_json::from_slice(&msg.body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(mut body) = body else {
        return Err(shape("a protocol-1 body must be a JSON object"));
    };
    let task = match body.remove("task") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(shape("`task` must be a string")),
        None => return Err(shape("no `task` header and no `task` in the body")),
    };
    let id = match body.remove("id") {
        Some(Value::String(id)) => Some(id),
        Some(Value::Null) | None => msg.properties.correlation_id.clone(),
        Some(_) => return Err(shape("`id` must be a string")),
    };
    let args = body
        .remove("args")
        .ok_or_else(|| shape("a protocol-1 body needs `args`"))?;
    let kwargs = body.remove("kwargs").unwrap_or(Value::Null);
    Ok(Envelope {
        task,
        id,
        args,
        kwargs,
    })
}

/// Decodes a Celery v2 or v1 task message.
///
/// # Errors
/// A broken envelope: a body that is not JSON ([`DecodeError::Json`]) or not of the expected
/// shape, an unknown task name, an event that is not a JSON object, or an `args[0]` string
/// that is not JSON (all [`DecodeError::Shape`]).
pub fn decode(msg: &Message) -> Result<Decoded, DecodeError> {
    let env = match msg.properties.headers.get("task") {
        Some(task) => envelope_v2(msg, task)?,
        None => envelope_v1(msg)?,
    };
    if env.task == DISPATCH_TASK {
        decode_dispatch(msg, env)
    } else if env.task.starts_with(HANDLER_TASK_PREFIX) {
        Ok(decode_internal(msg, env))
    } else {
        Err(shape(format!("unknown celery task `{}`", env.task)))
    }
}

fn decode_dispatch(msg: &Message, env: Envelope) -> Result<Decoded, DecodeError> {
    let Value::Array(args) = env.args else {
        return Err(shape("args must be a list"));
    };
    let kwargs = match env.kwargs {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => return Err(shape("kwargs must be an object")),
    };
    // dispatch_event(message_body, routing_key=None): the routing key may also come
    // positionally as args[1].
    let mut args = args.into_iter();
    let Some(body) = args.next() else {
        return Err(shape("args is empty: the event (args[0]) is missing"));
    };
    let positional_key = args.next();
    if args.next().is_some() {
        return Err(shape(
            "dispatch_event takes at most 2 arguments (message_body, routing_key)",
        ));
    }
    let key_kwarg = kwargs.get("routing_key");
    let routing_key = match (positional_key, key_kwarg) {
        (Some(Value::Null) | None, None | Some(Value::Null)) => None,
        (Some(Value::String(k)), None | Some(Value::Null)) => Some(k),
        (Some(Value::Null) | None, Some(Value::String(k))) => Some(k.clone()),
        (Some(Value::String(_)), Some(Value::String(_))) => {
            return Err(shape("routing_key given both in args[1] and in kwargs"));
        }
        _ => return Err(shape("routing_key must be a string")),
    };
    let topic = match routing_key {
        Some(k) if !k.is_empty() => k,
        _ if !msg.routing_key.is_empty() => msg.routing_key.clone(),
        _ => {
            return Err(shape(
                "no topic: no kwargs.routing_key and no AMQP routing key",
            ));
        }
    };

    let event = match body {
        Value::String(s) => serde_json::from_str::<Value>(&s)
            .map_err(|e| shape(format!("args[0] is not a JSON document: {e}")))?,
        obj @ Value::Object(_) => obj,
        _ => {
            return Err(shape(
                "args[0] must be the event as a JSON string (or a JSON object)",
            ));
        }
    };
    let Value::Object(mut event) = event else {
        return Err(shape("the event (args[0]) must be a JSON object"));
    };
    let is_rpc = match event.remove(META_KEY) {
        // No metadata: a tchu-tchu 2.x sender, handled as RPC like tchu-tchu does.
        None => true,
        Some(Value::Object(meta)) => meta.get("is_rpc").is_some_and(truthy),
        Some(_) => return Err(shape(format!("`{META_KEY}` must be an object"))),
    };
    Ok(Decoded {
        topic,
        event: Value::Object(event),
        kind: if is_rpc { Kind::Rpc } else { Kind::Event },
        message_id: env.id,
        format: WireFormat::Celery,
    })
}

fn decode_internal(msg: &Message, env: Envelope) -> Decoded {
    let event = match env.args {
        Value::Array(args) => match args.into_iter().next() {
            Some(Value::Object(mut event)) => {
                event.remove(META_KEY);
                Value::Object(event)
            }
            _ => Value::Null,
        },
        _ => Value::Null,
    };
    Decoded {
        topic: msg.routing_key.clone(),
        event,
        kind: Kind::CeleryInternal { task: env.task },
        message_id: env.id,
        format: WireFormat::Celery,
    }
}

/// Python's truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding task messages
// ---------------------------------------------------------------------------------------------

/// A serde_json formatter with Python `json.dumps`' default separators (`", "` and `": "`).
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Serializes like Python's `json.dumps` (separators only; see the module docs).
fn py_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    if value.serialize(&mut ser).is_err() {
        // Only maps with non-string keys fail, and none are serialized here; fall back to
        // serde's own output rather than an empty body.
        return serde_json::to_vec(value).unwrap_or_default();
    }
    out
}

#[derive(Serialize)]
struct DispatchKwargs<'a> {
    routing_key: &'a str,
}

/// Celery's `embed` element: no callbacks, errbacks, chain or chord.
#[derive(Serialize)]
struct Embed {
    callbacks: Option<()>,
    errbacks: Option<()>,
    chain: Option<()>,
    chord: Option<()>,
}

const NO_EMBED: Embed = Embed {
    callbacks: None,
    errbacks: None,
    chain: None,
    chord: None,
};

/// The event string of `args[0]`: the event with `"_tchu_meta": {"is_rpc": ..}` added as its
/// last key, spliced into the serialized bytes. A body that is not a JSON object is sent as is
/// (as tchu-tchu does for a pre-serialized body).
fn event_string(event_json: &[u8], is_rpc: bool) -> String {
    let text = String::from_utf8_lossy(event_json);
    let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
    let meta = if is_rpc {
        r#""_tchu_meta": {"is_rpc": true}"#
    } else {
        r#""_tchu_meta": {"is_rpc": false}"#
    };
    match trimmed
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(inner) => {
            let inner = inner.trim_end_matches([' ', '\t', '\n', '\r']);
            if inner.trim_start().is_empty() {
                format!("{{{meta}}}")
            } else {
                format!("{{{inner}, {meta}}}")
            }
        }
        None => trimmed.to_owned(),
    }
}

/// An approximation of Python's `repr` of a `str`.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn truncate_repr(mut s: String) -> String {
    if let Some((idx, _)) = s.char_indices().nth(REPR_MAX_CHARS) {
        s.truncate(idx);
        s.push_str("...");
    }
    s
}

fn host_origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "rust".to_owned());
        format!("tchu-rs{}@{host}", std::process::id())
    })
}

/// Encodes an event or request as a Celery v2 `tchu_tchu.dispatch_event` task, the way
/// `TchuClient.publish` (`is_rpc` false) and `TchuClient.call` (`is_rpc` true) do.
///
/// `event_json` should be a serialized JSON object; `_tchu_meta` is spliced into it (see the
/// module docs). The task id is `message_id`: it is the `id` and `root_id` headers and the
/// correlation id. The caller sets persistence, `reply_to` and expiration.
pub fn encode(topic: &str, event_json: &[u8], message_id: &str, is_rpc: bool) -> Message {
    let event = event_string(event_json, is_rpc);

    let mut argsrepr = String::with_capacity(event.len() + 4);
    argsrepr.push('[');
    py_repr_str(&event, &mut argsrepr);
    argsrepr.push(']');
    let mut kwargsrepr = String::from("{'routing_key': ");
    py_repr_str(topic, &mut kwargsrepr);
    kwargsrepr.push('}');

    let body = py_json(&(
        [event.as_str()],
        DispatchKwargs { routing_key: topic },
        NO_EMBED,
    ));

    let null = || HeaderValue::Null;
    let mut headers = Headers::new();
    headers.insert("lang".to_owned(), HeaderValue::from("py"));
    headers.insert("task".to_owned(), HeaderValue::from(DISPATCH_TASK));
    headers.insert("id".to_owned(), HeaderValue::from(message_id));
    headers.insert("shadow".to_owned(), null());
    headers.insert("eta".to_owned(), null());
    headers.insert("expires".to_owned(), null());
    headers.insert("group".to_owned(), null());
    headers.insert("group_index".to_owned(), null());
    headers.insert("retries".to_owned(), HeaderValue::Int(0));
    headers.insert(
        "timelimit".to_owned(),
        HeaderValue::Array(vec![null(), null()]),
    );
    headers.insert("root_id".to_owned(), HeaderValue::from(message_id));
    headers.insert("parent_id".to_owned(), null());
    headers.insert(
        "argsrepr".to_owned(),
        HeaderValue::from(truncate_repr(argsrepr)),
    );
    headers.insert(
        "kwargsrepr".to_owned(),
        HeaderValue::from(truncate_repr(kwargsrepr)),
    );
    headers.insert("origin".to_owned(), HeaderValue::from(host_origin()));
    headers.insert("ignore_result".to_owned(), null());
    headers.insert("replaced_task_nesting".to_owned(), HeaderValue::Int(0));
    headers.insert("stamped_headers".to_owned(), null());
    headers.insert("stamps".to_owned(), HeaderValue::Table(Headers::new()));

    Message {
        routing_key: topic.to_owned(),
        properties: Properties {
            content_type: Some(CONTENT_TYPE.to_owned()),
            content_encoding: Some(CONTENT_ENCODING.to_owned()),
            headers,
            correlation_id: Some(message_id.to_owned()),
            priority: Some(0),
            ..Properties::default()
        },
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// Celery's result meta, as the `rpc://` backend sends it.
#[derive(Serialize)]
struct ResultMeta<'a> {
    status: &'static str,
    result: DispatchResult<'a>,
    traceback: Option<()>,
    children: [(); 0],
    date_done: String,
    task_id: &'a str,
}

/// What tchu-tchu's `dispatch_event` returns for an RPC.
#[derive(Serialize)]
struct DispatchResult<'a> {
    status: &'static str,
    routing_key: &'a str,
    is_rpc: bool,
    handlers_executed: u32,
    results: [HandlerResult<'a>; 1],
}

#[derive(Serialize)]
#[serde(untagged)]
enum HandlerResult<'a> {
    Success {
        handler: &'a str,
        status: &'static str,
        result: &'a Value,
    },
    Remote {
        handler: &'a str,
        status: &'static str,
        result: RemoteResult<'a>,
    },
    Error {
        handler: &'a str,
        status: &'static str,
        error: String,
    },
}

/// `TchuRPCException.to_response_dict()`.
#[derive(Serialize)]
struct RemoteResult<'a> {
    success: bool,
    error_message: &'a str,
    error_code: &'a str,
    error_details: &'a Value,
}

/// Encodes a reply as Celery result meta, the shape `TchuClient.call` unpacks: status
/// `SUCCESS` and a dispatcher result with one handler result.
///
/// - [`Reply::Ok`]: `{"handler", "status": "success", "result": <value>}`.
/// - [`Reply::Remote`]: a success whose result is `TchuRPCException.to_response_dict()`,
///   `{"success": false, "error_message", "error_code", "error_details"}`, which is how
///   handlers built with tchu-tchu's `TchuEvent` report a business error.
/// - [`Reply::HandlerFailed`]: `{"handler", "status": "error", "error": <message>}`, what a
///   Python handler that raised produces (`TchuClient.call` raises `PublishError`).
/// - [`Reply::Invalid`]: like `HandlerFailed`, with the message prefixed by
///   [`INVALID_PREFIX`] (`"invalid request: "`), which [`decode_reply`] maps back.
///
/// The message has the correlation id, JSON content type and encoding, priority 0, is not
/// persistent and has no headers. The caller sets the routing key (the request's `reply_to`).
pub fn encode_reply(topic: &str, handler: &str, correlation_id: &str, reply: &Reply) -> Message {
    let result = match reply {
        Reply::Ok(value) => HandlerResult::Success {
            handler,
            status: "success",
            result: value,
        },
        Reply::Remote(e) => HandlerResult::Remote {
            handler,
            status: "success",
            result: RemoteResult {
                success: false,
                error_message: &e.message,
                error_code: &e.code,
                error_details: &e.details,
            },
        },
        Reply::HandlerFailed(m) => HandlerResult::Error {
            handler,
            status: "error",
            error: m.clone(),
        },
        Reply::Invalid(m) => HandlerResult::Error {
            handler,
            status: "error",
            error: format!("{INVALID_PREFIX}{m}"),
        },
    };
    let meta = ResultMeta {
        status: "SUCCESS",
        result: DispatchResult {
            status: "completed",
            routing_key: topic,
            is_rpc: true,
            handlers_executed: 1,
            results: [result],
        },
        traceback: None,
        children: [],
        date_done: iso8601_utc(SystemTime::now()),
        task_id: correlation_id,
    };
    Message {
        routing_key: String::new(),
        properties: Properties {
            content_type: Some(CONTENT_TYPE.to_owned()),
            content_encoding: Some(CONTENT_ENCODING.to_owned()),
            correlation_id: Some(correlation_id.to_owned()),
            priority: Some(0),
            persistent: false,
            ..Properties::default()
        },
        body: py_json(&meta),
    }
}

/// Celery states that are not a final answer (sent only with `task_track_started` or
/// retries; tchu-tchu's default setup sends none of them).
const INTERIM_STATES: [&str; 4] = ["PENDING", "RECEIVED", "STARTED", "RETRY"];

/// Whether a Celery reply is an interim state (`STARTED`, `RETRY`, ...) rather than the final
/// answer. A caller waiting for a reply should skip such messages and keep waiting;
/// [`decode_reply`] refuses them.
pub fn is_interim_reply(msg: &Message) -> bool {
    #[derive(serde::Deserialize)]
    struct Status {
        status: String,
    }
    serde_json::from_slice::<Status>(&msg.body)
        .is_ok_and(|s| INTERIM_STATES.contains(&s.status.as_str()))
}

/// Decodes Celery result meta into a [`Reply`], as `TchuClient.call` reads it.
///
/// - `SUCCESS` with a non-object result: [`Reply::Ok`] of that result (tchu-tchu returns it
///   as is).
/// - `SUCCESS` with result status `no_handlers`: [`Reply::HandlerFailed`]
///   `"no handler for <routing_key>"`.
/// - `SUCCESS` with `results[0].status == "success"`: [`Reply::Remote`] when the handler's
///   result is an object with `"success": false` and an `error_code` or `error_message` (a
///   `TchuRPCException`; the code defaults to `RPC_ERROR` as in Python), else [`Reply::Ok`].
///   A handler that legitimately returns such an object is indistinguishable from a business
///   error; that ambiguity is tchu-tchu's.
/// - Any other `results[0].status` (`error`, or `dispatched` when the request was handled as
///   a broadcast): [`Reply::HandlerFailed`] with the error text, or [`Reply::Invalid`] when it
///   starts with [`INVALID_PREFIX`].
/// - An empty or missing `results` list: [`Reply::HandlerFailed`].
/// - `FAILURE` (the dispatcher itself raised): [`Reply::HandlerFailed`]
///   `"<exc_type>: <exc_message>"`; `REVOKED`: [`Reply::HandlerFailed`].
///
/// # Errors
/// A body that is not JSON, not of that shape, or an interim state (see
/// [`is_interim_reply`]).
pub fn decode_reply(msg: &Message) -> Result<Reply, DecodeError> {
    let body: Value =
        serde_json::from_slice(&msg.body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(mut body) = body else {
        return Err(reply_shape("the result meta must be a JSON object"));
    };
    let status = match body.get("status") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(reply_shape("`status` must be a string")),
    };
    let result = body.remove("result").unwrap_or(Value::Null);
    match status.as_str() {
        "SUCCESS" => decode_success(result),
        "FAILURE" => Ok(Reply::HandlerFailed(failure_text(&result))),
        "REVOKED" => Ok(Reply::HandlerFailed("the task was revoked".to_owned())),
        s if INTERIM_STATES.contains(&s) => Err(reply_shape(format!(
            "interim state `{s}` is not a final reply"
        ))),
        s => Err(reply_shape(format!("unknown celery state `{s}`"))),
    }
}

fn decode_success(result: Value) -> Result<Reply, DecodeError> {
    let Value::Object(mut result) = result else {
        return Ok(Reply::Ok(result));
    };
    let routing_key = result
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    if result.get("status").and_then(Value::as_str) == Some("no_handlers") {
        return Ok(Reply::HandlerFailed(format!(
            "no handler for {routing_key}"
        )));
    }
    let first = match result.remove("results") {
        Some(Value::Array(results)) => results.into_iter().next(),
        None | Some(Value::Null) => None,
        Some(_) => return Err(reply_shape("`result.results` must be a list")),
    };
    let Some(first) = first else {
        return Ok(Reply::HandlerFailed(format!(
            "no handler result for {routing_key}"
        )));
    };
    let Value::Object(mut first) = first else {
        return Err(reply_shape("`result.results[0]` must be an object"));
    };
    let handler = first
        .get("handler")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    match first.get("status").and_then(Value::as_str) {
        Some("success") => {
            let value = first.remove("result").unwrap_or(Value::Null);
            Ok(remote_error(&value).map_or(Reply::Ok(value), Reply::Remote))
        }
        Some("error") => {
            let error = match first.remove("error") {
                Some(Value::String(s)) => s,
                None | Some(Value::Null) => "Unknown error".to_owned(),
                Some(other) => other.to_string(),
            };
            Ok(match error.strip_prefix(INVALID_PREFIX) {
                Some(rest) => Reply::Invalid(rest.to_owned()),
                None => Reply::HandlerFailed(error),
            })
        }
        Some(other) => Ok(Reply::HandlerFailed(format!(
            "handler `{handler}` did not answer (status `{other}`)"
        ))),
        None => Err(reply_shape("`result.results[0].status` must be a string")),
    }
}

/// A `TchuRPCException.to_response_dict()` result, as an [`RpcError`].
fn remote_error(value: &Value) -> Option<RpcError> {
    let obj = value.as_object()?;
    if obj.get("success") != Some(&Value::Bool(false)) {
        return None;
    }
    let text = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let code = text("error_code");
    let message = text("error_message");
    if code.is_none() && message.is_none() {
        return None;
    }
    Some(RpcError {
        code: code.unwrap_or_else(|| "RPC_ERROR".to_owned()),
        message: message.unwrap_or_default(),
        details: obj.get("error_details").cloned().unwrap_or(Value::Null),
    })
}

/// `"<exc_type>: <exc_message>"` of a Celery `FAILURE` result.
fn failure_text(result: &Value) -> String {
    let exc_type = result
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("task failed");
    let message = match result.get("exc_message") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    if message.is_empty() {
        exc_type.to_owned()
    } else {
        format!("{exc_type}: {message}")
    }
}

/// `datetime.isoformat()` of a UTC time, as Celery writes `date_done`:
/// `2026-11-27T01:55:02.344756+00:00` (no fraction when the microseconds are zero).
fn iso8601_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let sod = secs % 86_400;
    let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if micros == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+00:00")
    }
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_str!(concat!(
                    "../../../tests/fixtures/tchu-tchu-3.0.4/",
                    $name,
                    ".json"
                )),
            )
        };
    }

    const FIXTURES: [(&str, &str); 10] = [
        fixture!("internal_handler_task"),
        fixture!("publish"),
        fixture!("publish_reply"),
        fixture!("rpc_reply"),
        fixture!("rpc_reply_as_received_by_client"),
        fixture!("rpc_reply_dispatch_failure"),
        fixture!("rpc_reply_handler_error"),
        fixture!("rpc_request"),
        fixture!("rpc_request_prestringified_body"),
        fixture!("serverless_publish"),
    ];

    fn raw(name: &str) -> Value {
        let (_, text) = FIXTURES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no fixture {name}"));
        serde_json::from_str(text).unwrap()
    }

    /// A header value as the fixture's `header_types` says it is typed on the wire.
    fn header_value(v: &Value, ty: &Value) -> HeaderValue {
        match ty {
            Value::String(t) => match t.as_str() {
                "S" => HeaderValue::String(v.as_str().unwrap().to_owned()),
                "I" => HeaderValue::Int(v.as_i64().unwrap()),
                "V" => {
                    assert!(v.is_null());
                    HeaderValue::Null
                }
                "t" => HeaderValue::Bool(v.as_bool().unwrap()),
                other => panic!("unexpected header type {other}"),
            },
            Value::Array(pair) => match pair[0].as_str().unwrap() {
                "A" => HeaderValue::Array(
                    v.as_array()
                        .unwrap()
                        .iter()
                        .zip(pair[1].as_array().unwrap())
                        .map(|(v, t)| header_value(v, t))
                        .collect(),
                ),
                "F" => HeaderValue::Table(
                    v.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), header_value(v, &pair[1][k])))
                        .collect(),
                ),
                other => panic!("unexpected header type {other}"),
            },
            other => panic!("bad header type {other}"),
        }
    }

    fn header_type(h: &HeaderValue) -> Value {
        match h {
            HeaderValue::String(_) => json!("S"),
            HeaderValue::Int(_) => json!("I"),
            HeaderValue::Null => json!("V"),
            HeaderValue::Bool(_) => json!("t"),
            HeaderValue::Array(a) => json!(["A", a.iter().map(header_type).collect::<Vec<_>>()]),
            HeaderValue::Table(t) => json!([
                "F",
                t.iter()
                    .map(|(k, v)| (k.clone(), header_type(v)))
                    .collect::<Map<_, _>>()
            ]),
            other => panic!("unexpected header value {other:?}"),
        }
    }

    fn load(name: &str) -> Message {
        let f = raw(name);
        let p = &f["properties"];
        let s = |k: &str| p[k].as_str().map(str::to_owned);
        let empty = json!({});
        let types = f.get("header_types").unwrap_or(&empty);
        let headers = f["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let ty = types
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}: no type for {k}"));
                (k.clone(), header_value(v, ty))
            })
            .collect();
        Message {
            routing_key: f["routing_key"].as_str().unwrap().to_owned(),
            properties: Properties {
                content_type: s("content_type"),
                content_encoding: s("content_encoding"),
                headers,
                persistent: p["delivery_mode"] == 2,
                correlation_id: s("correlation_id"),
                reply_to: s("reply_to"),
                expiration: p
                    .get("expiration")
                    .and_then(Value::as_str)
                    .map(|ms| Duration::from_millis(ms.parse().unwrap())),
                message_id: s("message_id"),
                timestamp: p.get("timestamp").and_then(Value::as_u64),
                priority: p["priority"].as_u64().map(|x| u8::try_from(x).unwrap()),
            },
            body: f["body_utf8"].as_str().unwrap().as_bytes().to_vec(),
        }
    }

    /// Every fixture file is loadable and read by the right decoder.
    #[test]
    fn every_fixture_loads() {
        for (name, _) in FIXTURES {
            let msg = load(name);
            if name.contains("reply") {
                assert!(decode_reply(&msg).is_ok(), "{name}");
            } else {
                assert!(is_celery(&msg), "{name}");
                // Through the format-neutral seam too.
                let r = crate::wire::decode(&msg, crate::wire::Limits::new(1 << 20, usize::MAX));
                if name == "rpc_request_prestringified_body" {
                    assert!(r.is_err(), "{name}");
                } else {
                    assert_eq!(r.unwrap().format, WireFormat::Celery, "{name}");
                }
            }
        }
    }

    #[test]
    fn publish_is_an_event() {
        let d = decode(&load("publish")).unwrap();
        assert_eq!(d.kind, Kind::Event);
        assert_eq!(d.topic, "user.created");
        assert_eq!(
            d.event,
            json!({"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"})
        );
        assert_eq!(
            d.message_id.as_deref(),
            Some("d94a9b90-4b76-4980-8e89-e5d84f23e685")
        );
        assert_eq!(d.format, WireFormat::Celery);
    }

    #[test]
    fn serverless_publish_is_a_v1_event() {
        let msg = load("serverless_publish");
        assert!(msg.properties.headers.is_empty());
        assert!(is_celery(&msg));
        let d = decode(&msg).unwrap();
        assert_eq!(d.kind, Kind::Event);
        assert_eq!(d.topic, "user.created");
        assert_eq!(
            d.event,
            json!({"user_id": 43, "email": "grace@example.com", "name": "Grace", "marker": "761d0d0a"})
        );
        assert_eq!(
            d.message_id.as_deref(),
            Some("55a781b0-2f01-45b8-8283-51da226bb913")
        );
    }

    #[test]
    fn rpc_request_is_rpc() {
        let d = decode(&load("rpc_request")).unwrap();
        assert_eq!(d.kind, Kind::Rpc);
        assert_eq!(d.topic, "rpc.users.validate");
        assert_eq!(d.event, json!({"email": "ada@example.com"}));
        assert_eq!(
            d.message_id.as_deref(),
            Some("a28aa027-85cf-4f3e-8c53-6a0b43165508")
        );
    }

    /// `call(topic, "this is not json")`: the Python dispatcher fails on `json.loads`
    /// (`rpc_reply_dispatch_failure.json`); tchu refuses it as a broken envelope.
    #[test]
    fn prestringified_non_json_body_is_refused() {
        let err = decode(&load("rpc_request_prestringified_body")).unwrap_err();
        let DecodeError::Shape { format, reason } = err else {
            panic!("expected a shape error")
        };
        assert_eq!(format, "celery");
        assert!(
            reason.contains("args[0] is not a JSON document"),
            "{reason}"
        );
    }

    /// A pre-stringified body that *is* a JSON object has no `_tchu_meta`: RPC, as tchu-tchu
    /// handles 2.x senders.
    #[test]
    fn prestringified_json_body_without_meta_is_rpc() {
        let mut msg = load("rpc_request_prestringified_body");
        msg.body = br#"[["{\"a\": 1}"], {"routing_key": "x.y"}, {}]"#.to_vec();
        let d = decode(&msg).unwrap();
        assert_eq!(d.kind, Kind::Rpc);
        assert_eq!(d.topic, "x.y");
        assert_eq!(d.event, json!({"a": 1}));
    }

    #[test]
    fn internal_handler_task() {
        let d = decode(&load("internal_handler_task")).unwrap();
        assert_eq!(
            d.kind,
            Kind::CeleryInternal {
                task: "tchu_tchu.handler.notifications_svc.subscribers.on_user_event".to_owned()
            }
        );
        assert_eq!(d.topic, "notifications_queue");
        assert_eq!(
            d.event,
            json!({"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"})
        );
        assert_eq!(
            d.message_id.as_deref(),
            Some(
                "d94a9b90-4b76-4980-8e89-e5d84f23e685:notifications_svc.subscribers.on_user_event"
            )
        );
    }

    #[test]
    fn meta_rules() {
        let with = |meta: &str| {
            let event = format!(r#"{{"a": 1{meta}}}"#);
            let body = json!([[event], {"routing_key": "t.x"}, {}]).to_string();
            let mut msg = encode("t.x", b"{}", "id", false);
            msg.body = body.into_bytes();
            decode(&msg)
        };
        assert_eq!(with("").unwrap().kind, Kind::Rpc);
        assert_eq!(
            with(r#", "_tchu_meta": {"is_rpc": true}"#).unwrap().kind,
            Kind::Rpc
        );
        assert_eq!(
            with(r#", "_tchu_meta": {"is_rpc": false}"#).unwrap().kind,
            Kind::Event
        );
        // Present without is_rpc: Python's `meta.get("is_rpc", False)`.
        assert_eq!(with(r#", "_tchu_meta": {}"#).unwrap().kind, Kind::Event);
        assert_eq!(
            with(r#", "_tchu_meta": {"is_rpc": 1}"#).unwrap().kind,
            Kind::Rpc
        );
        assert!(with(r#", "_tchu_meta": "x""#).is_err());
        assert_eq!(
            with(r#", "_tchu_meta": {"is_rpc": true}"#).unwrap().event,
            json!({"a": 1})
        );
    }

    #[test]
    fn topic_falls_back_to_the_amqp_routing_key() {
        let mut msg = encode("a.b", br#"{"x":1}"#, "id", false);
        let event = event_string(br#"{"x":1}"#, false);
        msg.body = json!([[event], {}, {}]).to_string().into_bytes();
        assert_eq!(decode(&msg).unwrap().topic, "a.b");
        msg.body = json!([[event], {"routing_key": null}, {}])
            .to_string()
            .into_bytes();
        assert_eq!(decode(&msg).unwrap().topic, "a.b");
        // Positional routing key (dispatch_event(message_body, routing_key)).
        msg.body = json!([[event, "c.d"], {}, {}]).to_string().into_bytes();
        assert_eq!(decode(&msg).unwrap().topic, "c.d");
        msg.routing_key = String::new();
        msg.body = json!([[event], {}, {}]).to_string().into_bytes();
        assert!(decode(&msg).is_err());
    }

    #[test]
    fn args0_may_be_an_object() {
        let mut msg = encode("a.b", b"{}", "id", false);
        msg.body = json!([[{"x": 1, "_tchu_meta": {"is_rpc": false}}], {"routing_key": "a.b"}, {}])
            .to_string()
            .into_bytes();
        let d = decode(&msg).unwrap();
        assert_eq!(d.kind, Kind::Event);
        assert_eq!(d.event, json!({"x": 1}));
    }

    #[test]
    fn message_id_falls_back_to_correlation_id() {
        let mut msg = load("publish");
        msg.properties.headers.remove("id");
        assert_eq!(
            decode(&msg).unwrap().message_id.as_deref(),
            Some("d94a9b90-4b76-4980-8e89-e5d84f23e685")
        );
    }

    #[test]
    fn unknown_task_is_refused() {
        let mut msg = load("publish");
        msg.properties
            .headers
            .insert("task".to_owned(), HeaderValue::from("proj.add"));
        let err = decode(&msg).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Shape {
                format: "celery",
                reason: "unknown celery task `proj.add`".to_owned()
            }
        );
    }

    #[test]
    fn is_celery_heuristic() {
        let plain = |body: &str| Message {
            body: body.as_bytes().to_vec(),
            ..Message::default()
        };
        assert!(!is_celery(&plain(r#"{"user_id": 1}"#)));
        assert!(!is_celery(&plain(r#"{"note": "a \"task\" and \"args\""}"#)));
        assert!(is_celery(&plain(r#"{"task": "x", "args": 5}"#)));
        assert!(!is_celery(&plain(r#"[["{}"], {}, {}]"#)));
        let mut native = plain(r#"{"task": "x", "args": []}"#);
        native
            .properties
            .headers
            .insert(crate::wire::json::KIND_HEADER.to_owned(), "event".into());
        assert!(!is_celery(&native));
        assert!(is_celery(&encode("a.b", b"{}", "i", false)));
    }

    #[test]
    fn encode_matches_the_publish_fixture() {
        let f = raw("publish");
        // The caller's event serialized as Python would: the whole body is then byte-equal.
        let event =
            br#"{"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"}"#;
        let id = "d94a9b90-4b76-4980-8e89-e5d84f23e685";
        let msg = encode("user.created", event, id, false);
        assert_eq!(
            std::str::from_utf8(&msg.body).unwrap(),
            f["body_utf8"].as_str().unwrap()
        );
        assert_eq!(msg.routing_key, "user.created");
        let h = &msg.properties.headers;
        assert_eq!(h["argsrepr"].as_str(), f["headers"]["argsrepr"].as_str());
        assert_eq!(
            h["kwargsrepr"].as_str(),
            f["headers"]["kwargsrepr"].as_str()
        );
        for same in ["lang", "task", "id", "root_id"] {
            assert_eq!(h[same].as_str(), f["headers"][same].as_str(), "{same}");
        }
        assert!(h["origin"].as_str().unwrap().starts_with("tchu-rs"));

        // Same header names and AMQP types as the fixture.
        let types: Map<String, Value> =
            h.iter().map(|(k, v)| (k.clone(), header_type(v))).collect();
        assert_eq!(Value::Object(types), f["header_types"]);

        let p = &msg.properties;
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(p.priority, Some(0));
        assert_eq!(p.correlation_id.as_deref(), Some(id));
        assert_eq!(p.message_id, None);
    }

    #[test]
    fn encoded_compact_event_has_the_fixture_structure() {
        let f = raw("rpc_request");
        let msg = encode(
            "rpc.users.validate",
            br#"{"email":"ada@example.com"}"#,
            "x",
            true,
        );
        let body: Value = serde_json::from_slice(&msg.body).unwrap();
        let want = &f["body_decoded"];
        assert_eq!(body.as_array().unwrap().len(), 3);
        let arg0 = body[0][0].as_str().unwrap();
        assert_eq!(body[0].as_array().unwrap().len(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(arg0).unwrap(),
            f["event_json_in_args0_decoded"]
        );
        assert!(arg0.ends_with(r#", "_tchu_meta": {"is_rpc": true}}"#));
        assert_eq!(body[1], want[1]);
        assert_eq!(body[2], want[2]);
    }

    #[test]
    fn splice_handles_edge_cases() {
        assert_eq!(
            event_string(b"{}", false),
            r#"{"_tchu_meta": {"is_rpc": false}}"#
        );
        assert_eq!(
            event_string(b" { } \n", true),
            r#"{"_tchu_meta": {"is_rpc": true}}"#
        );
        assert_eq!(
            event_string(b"{\n  \"a\": 1\n}\n", true),
            "{\n  \"a\": 1, \"_tchu_meta\": {\"is_rpc\": true}}"
        );
        // Not an object: sent as is, like a pre-serialized tchu-tchu body.
        assert_eq!(event_string(b"[1]", true), "[1]");
        // An existing _tchu_meta is overridden (last key wins).
        let s = event_string(br#"{"_tchu_meta":{"is_rpc":true}}"#, false);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["_tchu_meta"]["is_rpc"], false);
    }

    #[test]
    fn round_trips_events_and_requests() {
        for (event, is_rpc) in [
            (json!({"a": 1, "b": "é ' \" \\ \n"}), false),
            (json!({"nested": {"x": [1, 2.5, null]}}), true),
            (json!({}), false),
            (json!({}), true),
        ] {
            let bytes = serde_json::to_vec(&event).unwrap();
            let msg = encode("order.created", &bytes, "m-1", is_rpc);
            let d =
                crate::wire::decode(&msg, crate::wire::Limits::new(1 << 20, usize::MAX)).unwrap();
            assert_eq!(d.topic, "order.created");
            assert_eq!(d.event, event);
            assert_eq!(d.kind, if is_rpc { Kind::Rpc } else { Kind::Event });
            assert_eq!(d.message_id.as_deref(), Some("m-1"));
            assert_eq!(d.format, WireFormat::Celery);
        }
    }

    #[test]
    fn reprs_are_cut() {
        let big = format!(r#"{{"s": "{}"}}"#, "x".repeat(5000));
        let msg = encode("a.b", big.as_bytes(), "i", false);
        let repr = msg.properties.headers["argsrepr"].as_str().unwrap();
        assert_eq!(repr.chars().count(), REPR_MAX_CHARS + 3);
        assert!(repr.ends_with("..."));
        let mut s = String::new();
        py_repr_str("a'b\"c\\d\n\u{1}é\u{7f}", &mut s);
        assert_eq!(s, r#"'a\'b"c\\d\n\x01é\x7f'"#);
        s.clear();
        py_repr_str("it's", &mut s);
        assert_eq!(s, r#""it's""#);
    }

    #[test]
    fn python_replies_decode() {
        assert_eq!(
            decode_reply(&load("rpc_reply")).unwrap(),
            Reply::Ok(json!({"valid": true, "email": "ada@example.com", "checked_by": "users"}))
        );
        assert_eq!(
            decode_reply(&load("rpc_reply_as_received_by_client")).unwrap(),
            Reply::Ok(json!({"valid": true, "email": "ada@example.com", "checked_by": "users"}))
        );
        assert_eq!(
            decode_reply(&load("rpc_reply_handler_error")).unwrap(),
            Reply::HandlerFailed("validation backend exploded".to_owned())
        );
        assert_eq!(
            decode_reply(&load("rpc_reply_dispatch_failure")).unwrap(),
            Reply::HandlerFailed(
                "JSONDecodeError: Expecting value: line 1 column 1 (char 0)".to_owned()
            )
        );
        // A broadcast's reply: the handler was dispatched, not answered.
        let Reply::HandlerFailed(m) = decode_reply(&load("publish_reply")).unwrap() else {
            panic!("expected HandlerFailed")
        };
        assert!(m.contains("dispatched"), "{m}");
    }

    fn reply_with(result: Value) -> Message {
        Message {
            body: json!({"status": "SUCCESS", "result": result, "traceback": null,
                         "children": [], "date_done": "x", "task_id": "t"})
            .to_string()
            .into_bytes(),
            ..Message::default()
        }
    }

    #[test]
    fn python_shaped_replies_decode() {
        // TchuRPCException.to_response_dict() from a TchuEvent handler.
        let remote = reply_with(
            json!({"status": "completed", "routing_key": "r", "is_rpc": true,
            "handlers_executed": 1, "results": [{"handler": "h", "status": "success",
            "result": {"success": false, "error_message": "nope", "error_code": "NOT_FOUND",
                       "error_details": {"id": 1}}}]}),
        );
        assert_eq!(
            decode_reply(&remote).unwrap(),
            Reply::Remote(RpcError::new("NOT_FOUND", "nope").with_details(json!({"id": 1})))
        );
        let no_handlers = reply_with(json!({"status": "no_handlers", "routing_key": "r.x"}));
        assert_eq!(
            decode_reply(&no_handlers).unwrap(),
            Reply::HandlerFailed("no handler for r.x".to_owned())
        );
        let empty = reply_with(json!({"status": "completed", "routing_key": "r.x", "results": []}));
        assert!(matches!(
            decode_reply(&empty).unwrap(),
            Reply::HandlerFailed(_)
        ));
        // A non-dict result is returned as is by TchuClient.call.
        assert_eq!(
            decode_reply(&reply_with(json!(7))).unwrap(),
            Reply::Ok(json!(7))
        );
        // success: false without error fields is an ordinary value.
        let plain = reply_with(json!({"status": "completed", "results": [
            {"handler": "h", "status": "success", "result": {"success": false}}]}));
        assert_eq!(
            decode_reply(&plain).unwrap(),
            Reply::Ok(json!({"success": false}))
        );
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Ok(json!({"ok": true, "n": [1, 2]})),
            Reply::Ok(Value::Null),
            Reply::Ok(json!("text")),
            Reply::Remote(RpcError::new("E", "bad").with_details(json!([1]))),
            Reply::Remote(RpcError::new("E", "bad")),
            Reply::HandlerFailed("boom".to_owned()),
            Reply::Invalid("email: invalid".to_owned()),
        ] {
            let m = encode_reply("rpc.x", "handler_fn", "corr-1", &r);
            assert!(!crate::wire::json::is_native_reply(&m));
            assert!(!is_interim_reply(&m));
            assert_eq!(decode_reply(&m).unwrap(), r);
            assert_eq!(crate::wire::decode_reply(&m).unwrap(), r);
            let p = &m.properties;
            assert_eq!(p.correlation_id.as_deref(), Some("corr-1"));
            assert_eq!(p.content_type.as_deref(), Some("application/json"));
            assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
            assert_eq!(p.priority, Some(0));
            assert!(!p.persistent);
            assert!(p.headers.is_empty());
        }
    }

    #[test]
    fn encoded_reply_matches_the_python_shape() {
        let want = raw("rpc_reply")["body_decoded"].clone();
        let m = encode_reply(
            "rpc.users.validate",
            "validate_user",
            "3bf97186-948f-40b1-a661-d647031b656e",
            &Reply::Ok(json!({"valid": true, "email": "ada@example.com", "checked_by": "users"})),
        );
        let mut got: Value = serde_json::from_slice(&m.body).unwrap();
        let date = got["date_done"].as_str().unwrap().to_owned();
        assert!(date.ends_with("+00:00") && date.len() >= 25, "{date}");
        got["date_done"] = want["date_done"].clone();
        assert_eq!(got, want);
        // Key order and separators as Python writes them.
        let text = std::str::from_utf8(&m.body).unwrap();
        assert!(text.starts_with(r#"{"status": "SUCCESS", "result": {"status": "completed", "routing_key": "rpc.users.validate", "is_rpc": true, "handlers_executed": 1, "results": [{"handler": "validate_user", "status": "success", "result": "#), "{text}");

        let remote = encode_reply("r", "h", "c", &Reply::Remote(RpcError::new("C", "m")));
        let v: Value = serde_json::from_slice(&remote.body).unwrap();
        assert_eq!(
            v["result"]["results"][0],
            json!({"handler": "h", "status": "success", "result":
                {"success": false, "error_message": "m", "error_code": "C", "error_details": null}})
        );
        let failed = encode_reply("r", "h", "c", &Reply::Invalid("x".to_owned()));
        let v: Value = serde_json::from_slice(&failed.body).unwrap();
        assert_eq!(
            v["result"]["results"][0],
            json!({"handler": "h", "status": "error", "error": "invalid request: x"})
        );
    }

    #[test]
    fn interim_and_failed_states() {
        let state = |s: &str| Message {
            body: json!({"status": s, "result": null, "task_id": "t"})
                .to_string()
                .into_bytes(),
            ..Message::default()
        };
        assert!(is_interim_reply(&state("STARTED")));
        assert!(decode_reply(&state("STARTED")).is_err());
        assert!(!is_interim_reply(&state("SUCCESS")));
        assert!(matches!(
            decode_reply(&state("REVOKED")).unwrap(),
            Reply::HandlerFailed(_)
        ));
        assert!(matches!(
            decode_reply(&state("FAILURE")).unwrap(),
            Reply::HandlerFailed(_)
        ));
    }

    #[test]
    fn dates() {
        let at = |secs: u64, micros: u64| {
            iso8601_utc(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            at(1_795_744_502, 344_756),
            "2026-11-27T01:55:02.344756+00:00"
        );
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005+00:00");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59+00:00");
    }

    /// Broken envelopes: each is an error, none panics.
    #[test]
    fn malformed_task_messages_are_errors() {
        let v2 = |body: &str| {
            let mut m = encode("a.b", b"{}", "id", false);
            m.body = body.as_bytes().to_vec();
            m
        };
        let v1 = |body: &str| Message {
            routing_key: "a.b".to_owned(),
            body: body.as_bytes().to_vec(),
            ..Message::default()
        };
        let mut bad_task_header = encode("a.b", b"{}", "id", false);
        bad_task_header
            .properties
            .headers
            .insert("task".to_owned(), HeaderValue::Int(1));
        let mut bad_id_header = encode("a.b", b"{}", "id", false);
        bad_id_header
            .properties
            .headers
            .insert("id".to_owned(), HeaderValue::Int(1));
        let ev = r#""{\"a\": 1}""#;
        let cases: Vec<(&str, Message)> = vec![
            ("v2 body not JSON", v2("not json")),
            ("v2 body empty", v2("")),
            ("v2 body an object", v2(r#"{"args": []}"#)),
            ("v2 body too short", v2(r#"[["{}"]]"#)),
            ("v2 body too long", v2(r#"[[], {}, {}, {}]"#)),
            ("args not a list", v2(r#"["{}", {}, {}]"#)),
            ("args empty", v2(r#"[[], {"routing_key": "a.b"}, {}]"#)),
            (
                "too many args",
                v2(&format!(r#"[[{ev}, "a.b", 3], {{}}, {{}}]"#)),
            ),
            ("args[0] not JSON", v2(r#"[["nope"], {}, {}]"#)),
            ("args[0] a number", v2(r#"[[42], {}, {}]"#)),
            ("event a list", v2(r#"[["[1, 2]"], {}, {}]"#)),
            ("event a JSON string", v2(r#"[["\"s\""], {}, {}]"#)),
            ("kwargs a list", v2(&format!(r#"[[{ev}], [], {{}}]"#))),
            (
                "routing_key a number",
                v2(&format!(r#"[[{ev}], {{"routing_key": 5}}, {{}}]"#)),
            ),
            (
                "routing_key twice",
                v2(&format!(
                    r#"[[{ev}, "x.y"], {{"routing_key": "a.b"}}, {{}}]"#
                )),
            ),
            ("embed a string", v2(&format!(r#"[[{ev}], {{}}, "e"]"#))),
            (
                "meta not an object",
                v2(r#"[["{\"_tchu_meta\": 1}"], {}, {}]"#),
            ),
            (
                "deep nesting",
                v2(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
            ),
            ("task header not a string", bad_task_header),
            ("id header not a string", bad_id_header),
            ("v1 task not a string", v1(r#"{"task": 1, "args": []}"#)),
            (
                "v1 args not a list",
                v1(r#"{"task": "tchu_tchu.dispatch_event", "args": "x"}"#),
            ),
            (
                "v1 no args",
                v1(r#"{"task": "tchu_tchu.dispatch_event", "id": "i"}"#),
            ),
            ("v1 no task", v1(r#"{"args": [], "id": "i"}"#)),
            (
                "v1 id a number",
                v1(r#"{"task": "tchu_tchu.dispatch_event", "id": 1, "args": []}"#),
            ),
            (
                "v1 kwargs a string",
                v1(&format!(
                    r#"{{"task": "tchu_tchu.dispatch_event", "args": [{ev}], "kwargs": "k"}}"#
                )),
            ),
            ("v1 unknown task", v1(r#"{"task": "other", "args": []}"#)),
            ("v1 body a list", v1("[1]")),
        ];
        assert!(cases.len() >= 10);
        for (what, msg) in cases {
            let r = std::panic::catch_unwind(|| decode(&msg));
            match r {
                Ok(Err(DecodeError::Shape { .. } | DecodeError::Json(_))) => {}
                other => panic!("{what}: expected a decode error, got {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        let m = |body: &str| Message {
            body: body.as_bytes().to_vec(),
            ..Message::default()
        };
        for (what, body) in [
            ("not JSON", "nope"),
            ("empty", ""),
            ("a list", "[]"),
            ("no status", r#"{"result": 1}"#),
            ("status a number", r#"{"status": 1}"#),
            ("unknown state", r#"{"status": "WEIRD"}"#),
            (
                "results not a list",
                r#"{"status": "SUCCESS", "result": {"results": 1}}"#,
            ),
            (
                "results[0] not an object",
                r#"{"status": "SUCCESS", "result": {"results": [1]}}"#,
            ),
            (
                "results[0] without status",
                r#"{"status": "SUCCESS", "result": {"results": [{}]}}"#,
            ),
        ] {
            let r = std::panic::catch_unwind(|| decode_reply(&m(body)));
            assert!(matches!(r, Ok(Err(_))), "{what}: {r:?}");
        }
    }
}
