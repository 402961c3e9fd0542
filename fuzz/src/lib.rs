//! Structured inputs shared by the fuzz targets: an [`arbitrary`] description of a received
//! message that turns into a [`tchu_runtime::message::Message`].
//!
//! Names, header keys, task names and JSON object keys are drawn mostly from small
//! dictionaries of the values the decoders look at, so the fuzzer reaches the deep branches
//! (a Celery v2 `dispatch_event` with a stringified event and `_tchu_meta`, a result meta with
//! `results[0]`, ...) instead of stopping at "not JSON". Every such choice also has a free-form
//! alternative, and the body can be raw bytes.

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use tchu_runtime::message::{HeaderValue, Headers, Message, Properties};
use tchu_runtime::__private::serde_json::{self, Map, Value};

/// A string that is usually one of `dict`, sometimes anything.
fn pick(u: &mut Unstructured<'_>, dict: &[&str]) -> arbitrary::Result<String> {
    let i = u.choose_index(dict.len() + 1)?;
    match dict.get(i) {
        Some(s) => Ok((*s).to_owned()),
        None => String::arbitrary(u),
    }
}

const KEYS: &[&str] = &[
    "task",
    "id",
    "args",
    "kwargs",
    "routing_key",
    "_tchu_meta",
    "is_rpc",
    "status",
    "result",
    "results",
    "handler",
    "error",
    "success",
    "error_code",
    "error_message",
    "error_details",
    "exc_type",
    "exc_message",
    "message",
    "code",
    "details",
    "callbacks",
];

const STRINGS: &[&str] = &[
    "tchu_tchu.dispatch_event",
    "tchu_tchu.handler.x",
    "user.created",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "STARTED",
    "success",
    "error",
    "no_handlers",
    "dispatched",
    "invalid request: bad",
    "",
];

/// A JSON value built from a dictionary of the keys and strings the decoders look at.
#[derive(Debug, Clone)]
pub struct FuzzJson(pub Value);

fn json_value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let max = if depth >= 6 { 5 } else { 8 };
    Ok(match u.choose_index(max)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => Value::from(i64::arbitrary(u)?),
        3 => serde_json::Number::from_f64(f64::arbitrary(u)?).map_or(Value::Null, Value::Number),
        4 => Value::String(pick(u, STRINGS)?),
        5 => {
            // A JSON document as a string, like `args[0]`.
            let inner = json_value(u, depth + 1)?;
            Value::String(inner.to_string())
        }
        6 => {
            let n = u.int_in_range(0..=4)?;
            let mut a = Vec::with_capacity(n);
            for _ in 0..n {
                a.push(json_value(u, depth + 1)?);
            }
            Value::Array(a)
        }
        _ => {
            let n = u.int_in_range(0..=5)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(pick(u, KEYS)?, json_value(u, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

impl<'a> Arbitrary<'a> for FuzzJson {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        json_value(u, 0).map(FuzzJson)
    }
}

/// The body bytes.
#[derive(Debug, Arbitrary)]
pub enum Body {
    /// Anything.
    Raw(Vec<u8>),
    /// A JSON value, serialized.
    Json(FuzzJson),
    /// A Celery v2 body `[args, kwargs, embed]`: `args[0]` is an event object, stringified or
    /// not, with an optional `_tchu_meta`.
    CeleryV2 {
        /// `args[0]` as a JSON string rather than an object.
        stringified: bool,
        /// The event.
        event: FuzzJson,
        /// `_tchu_meta.is_rpc`, if there is a `_tchu_meta`.
        meta: Option<FuzzJson>,
        /// Further positional arguments.
        more_args: Vec<FuzzJson>,
        /// `kwargs`.
        kwargs: FuzzJson,
        /// `embed`, if any.
        embed: Option<FuzzJson>,
    },
    /// A Celery v1 body `{"task", "id", "args", "kwargs"}`.
    CeleryV1 {
        /// The task name.
        task: FuzzJson,
        /// `args`.
        args: FuzzJson,
        /// `kwargs`.
        kwargs: FuzzJson,
    },
    /// Celery result meta `{"status", "result": {"results": [..]}}`.
    CeleryReply {
        /// `status`.
        status: FuzzJson,
        /// `result.status`.
        result_status: FuzzJson,
        /// `result.results`.
        results: Vec<FuzzJson>,
    },
    /// A JSON value, serialized, then cut short or extended with raw bytes.
    Mangled(FuzzJson, u16, Vec<u8>),
}

impl Body {
    /// The bytes on the wire.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Body::Raw(b) => b,
            Body::Json(v) => v.0.to_string().into_bytes(),
            Body::CeleryV2 {
                stringified,
                event,
                meta,
                more_args,
                kwargs,
                embed,
            } => {
                let mut event = event.0;
                if let (Some(meta), Value::Object(m)) = (meta, &mut event) {
                    m.insert(
                        "_tchu_meta".to_owned(),
                        serde_json::json!({ "is_rpc": meta.0 }),
                    );
                }
                let first = if stringified {
                    Value::String(event.to_string())
                } else {
                    event
                };
                let mut args = vec![first];
                args.extend(more_args.into_iter().map(|a| a.0));
                let mut body = vec![Value::Array(args), kwargs.0];
                if let Some(e) = embed {
                    body.push(e.0);
                }
                Value::Array(body).to_string().into_bytes()
            }
            Body::CeleryV1 { task, args, kwargs } => {
                serde_json::json!({ "task": task.0, "id": "x", "args": args.0, "kwargs": kwargs.0 })
                    .to_string()
                    .into_bytes()
            }
            Body::CeleryReply {
                status,
                result_status,
                results,
            } => serde_json::json!({
                "status": status.0,
                "result": {
                    "status": result_status.0,
                    "routing_key": "user.created",
                    "results": results.into_iter().map(|r| r.0).collect::<Vec<_>>(),
                },
                "task_id": "x",
            })
            .to_string()
            .into_bytes(),
            Body::Mangled(v, cut, tail) => {
                let mut b = v.0.to_string().into_bytes();
                b.truncate(usize::from(cut));
                b.extend(tail);
                b
            }
        }
    }
}

/// An AMQP header value.
#[derive(Debug)]
pub struct FuzzHeaderValue(pub HeaderValue);

fn header_value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<HeaderValue> {
    let max = if depth >= 3 { 6 } else { 8 };
    Ok(match u.choose_index(max)? {
        0 => HeaderValue::Null,
        1 => HeaderValue::Bool(bool::arbitrary(u)?),
        2 => HeaderValue::Int(i64::arbitrary(u)?),
        3 => HeaderValue::Float(f64::arbitrary(u)?),
        4 => HeaderValue::String(pick(u, STRINGS)?),
        5 => HeaderValue::Bytes(Vec::arbitrary(u)?),
        6 => {
            let n = u.int_in_range(0..=3)?;
            let mut a = Vec::with_capacity(n);
            for _ in 0..n {
                a.push(header_value(u, depth + 1)?);
            }
            HeaderValue::Array(a)
        }
        _ => {
            let n = u.int_in_range(0..=3)?;
            let mut t = Headers::new();
            for _ in 0..n {
                t.insert(String::arbitrary(u)?, header_value(u, depth + 1)?);
            }
            HeaderValue::Table(t)
        }
    })
}

impl<'a> Arbitrary<'a> for FuzzHeaderValue {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        header_value(u, 0).map(FuzzHeaderValue)
    }
}

/// A header the decoders read, with a plausible value most of the time.
#[derive(Debug, Arbitrary)]
pub enum FuzzHeader {
    /// `task`: a Celery v2 task name.
    Task(Option<String>, FuzzHeaderValue),
    /// `id`: the Celery task id.
    Id(FuzzHeaderValue),
    /// `x-tchu-kind`.
    Kind(Option<String>),
    /// `x-tchu-reply`.
    Reply(Option<String>),
    /// Any name, any value.
    Other(String, FuzzHeaderValue),
}

impl FuzzHeader {
    fn insert_into(self, h: &mut Headers) {
        let s = |v: Option<String>, dict: &[&str], i: usize| {
            HeaderValue::String(v.unwrap_or_else(|| dict[i % dict.len()].to_owned()))
        };
        match self {
            // `None` picks the dispatch task, which is what the interesting path needs.
            FuzzHeader::Task(name, other) => {
                let v = match name {
                    None => HeaderValue::from("tchu_tchu.dispatch_event"),
                    Some(n) if n.is_empty() => other.0,
                    Some(n) => HeaderValue::String(n),
                };
                h.insert("task".to_owned(), v);
            }
            FuzzHeader::Id(v) => {
                h.insert("id".to_owned(), v.0);
            }
            FuzzHeader::Kind(v) => {
                let n = v.as_ref().map_or(0, String::len);
                h.insert("x-tchu-kind".to_owned(), s(v, &["rpc", "event"], n));
            }
            FuzzHeader::Reply(v) => {
                let n = v.as_ref().map_or(0, String::len);
                h.insert(
                    "x-tchu-reply".to_owned(),
                    s(v, &["ok", "remote", "failed", "invalid"], n),
                );
            }
            FuzzHeader::Other(k, v) => {
                h.insert(k, v.0);
            }
        }
    }
}

/// `Content-Type`.
#[derive(Debug, Arbitrary)]
pub enum ContentType {
    /// `application/json`.
    Json,
    /// `application/json; charset=utf-8`.
    JsonCharset,
    /// Empty.
    Empty,
    /// Anything.
    Other(String),
}

/// A received message.
#[derive(Debug, Arbitrary)]
pub struct FuzzMessage {
    /// The AMQP routing key (`None`: `user.created`).
    pub routing_key: Option<String>,
    /// The content type.
    pub content_type: Option<ContentType>,
    /// Headers.
    pub headers: Vec<FuzzHeader>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Reply address.
    pub reply_to: Option<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// Timestamp.
    pub timestamp: Option<u64>,
    /// Expiration in ms.
    pub expiration_ms: Option<u64>,
    /// Priority.
    pub priority: Option<u8>,
    /// The body.
    pub body: Body,
}

impl FuzzMessage {
    /// The message.
    pub fn into_message(self) -> Message {
        let mut headers = Headers::new();
        for h in self.headers {
            h.insert_into(&mut headers);
        }
        Message {
            routing_key: self
                .routing_key
                .unwrap_or_else(|| "user.created".to_owned()),
            properties: Properties {
                content_type: self.content_type.map(|c| match c {
                    ContentType::Json => "application/json".to_owned(),
                    ContentType::JsonCharset => "application/json; charset=utf-8".to_owned(),
                    ContentType::Empty => String::new(),
                    ContentType::Other(s) => s,
                }),
                content_encoding: None,
                headers,
                persistent: false,
                correlation_id: self.correlation_id,
                reply_to: self.reply_to,
                expiration: self.expiration_ms.map(Duration::from_millis),
                message_id: self.message_id,
                timestamp: self.timestamp,
                priority: self.priority,
            },
            body: self.body.into_bytes(),
        }
    }
}

/// JSON equality that tolerates the last-digit difference serde_json's default (not
/// correctly rounded) float parser may introduce on a text round trip.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
