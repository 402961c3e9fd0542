//! Celery result meta: the replies tchu-tchu's dispatcher returns through the `rpc://` backend.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::pyrepr::py_json;
use super::{CONTENT_ENCODING, CONTENT_TYPE, INVALID_PREFIX, reply_shape};
use crate::error::RpcError;
use crate::message::{Message, Properties};
use crate::wire::{DecodeError, Reply};

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
    // Without any interim state name as a JSON string in the body (and no `\u` escape that
    // could spell one), the status cannot be one: no parse needed.
    if !may_be_interim(&msg.body) {
        return false;
    }
    serde_json::from_slice::<Status>(&msg.body)
        .is_ok_and(|s| INTERIM_STATES.contains(&s.status.as_str()))
}

/// Whether `body` has a string `"<interim state>"` or a `\u` escape anywhere (one pass).
fn may_be_interim(body: &[u8]) -> bool {
    body.iter().enumerate().any(|(i, &b)| match b {
        b'\\' => body.get(i + 1) == Some(&b'u'),
        b'"' => {
            let rest = &body[i + 1..];
            INTERIM_STATES.iter().any(|state| {
                rest.strip_prefix(state.as_bytes())
                    .is_some_and(|after| after.first() == Some(&b'"'))
            })
        }
        _ => false,
    })
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
    if let Some(reply) = decode_reply_fast(msg) {
        return reply;
    }
    decode_reply_general(msg)
}

/// [`decode_reply`] of a reply a caller waits for, `None` for an interim state (keep waiting):
/// the usual `SUCCESS` reply is parsed once, without the interim scan.
pub(crate) fn decode_final_reply(msg: &Message) -> Option<Result<Reply, DecodeError>> {
    // The fast path only reads `SUCCESS` replies, never interim ones.
    if let Some(reply) = decode_reply_fast(msg) {
        return Some(reply);
    }
    if is_interim_reply(msg) {
        return None;
    }
    Some(decode_reply_general(msg))
}

/// The `SUCCESS` result meta of tchu-tchu's dispatcher, read borrowed: only the handler's
/// `result` (or `error`) becomes a `Value`. Any other shape is left to the general path,
/// which then gives the same result or error.
#[derive(serde::Deserialize)]
struct FastMeta<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    result: FastDispatch<'a>,
}

#[derive(serde::Deserialize)]
struct FastDispatch<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    routing_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    results: Vec<FastHandler<'a>>,
}

#[derive(serde::Deserialize)]
struct FastHandler<'a> {
    #[serde(borrow, default)]
    handler: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// [`decode_reply`] of a `SUCCESS` reply of the usual shape; `None` for anything else.
pub(super) fn decode_reply_fast(msg: &Message) -> Option<Result<Reply, DecodeError>> {
    let meta: FastMeta<'_> = serde_json::from_slice(&msg.body).ok()?;
    if meta.status != "SUCCESS" {
        return None;
    }
    let result = meta.result;
    let routing_key = result.routing_key.as_deref().unwrap_or("unknown");
    if result.status.as_deref() == Some("no_handlers") {
        return Some(Ok(Reply::HandlerFailed(format!(
            "no handler for {routing_key}"
        ))));
    }
    let Some(first) = result.results.into_iter().next() else {
        return Some(Ok(Reply::HandlerFailed(format!(
            "no handler result for {routing_key}"
        ))));
    };
    let handler = first.handler.as_deref().unwrap_or("unknown");
    Some(match first.status.as_deref() {
        Some("success") => {
            let value = first.result.unwrap_or(Value::Null);
            Ok(remote_error(&value).map_or(Reply::Ok(value), Reply::Remote))
        }
        Some("error") => {
            let error = match first.error {
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
    })
}

/// [`decode_reply`] without the fast path.
pub(super) fn decode_reply_general(msg: &Message) -> Result<Reply, DecodeError> {
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
pub(super) fn iso8601_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let sod = secs % 86_400;
    let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let (Ok(y @ 0..=9999), Ok(m), Ok(d)) = (u64::try_from(y), u64::try_from(m), u64::try_from(d))
    else {
        return if micros == 0 {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
        } else {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+00:00")
        };
    };
    // The common case without the formatting machinery (one reply per RPC call).
    let mut out = String::with_capacity(32);
    push_digits(&mut out, y, 4);
    for (sep, v) in [('-', m), ('-', d), ('T', hh), (':', mm), (':', ss)] {
        out.push(sep);
        push_digits(&mut out, v, 2);
    }
    if micros != 0 {
        out.push('.');
        push_digits(&mut out, u64::from(micros), 6);
    }
    out.push_str("+00:00");
    out
}

/// `n` in decimal, zero-padded to `width` digits (`n` must have at most `width` digits).
fn push_digits(out: &mut String, n: u64, width: u32) {
    for i in (0..width).rev() {
        let digit = (n / 10u64.pow(i)) % 10;
        out.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
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
