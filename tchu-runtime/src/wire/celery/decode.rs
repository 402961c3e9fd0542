//! Recognising and decoding Celery task messages (protocol 2 and 1).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{DISPATCH_TASK, HANDLER_TASK_PREFIX, META_KEY, shape};
use crate::message::{HeaderValue, Message};
use crate::wire::{DecodeError, Decoded, Kind, WireFormat};

/// Keys whose presence makes a header-less JSON object a Celery v1 task message.
#[derive(serde::Deserialize)]
struct V1Probe {
    #[expect(dead_code, reason = "only checked for presence")]
    task: serde::de::IgnoredAny,
    #[expect(dead_code, reason = "only checked for presence")]
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
        .contains_key(crate::wire::json::KIND_HEADER)
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
    if let Some(task) = msg.properties.headers.get("task")
        && task.as_str() == Some(DISPATCH_TASK)
        && let Some(decoded) = decode_dispatch_fast(msg)
    {
        return decoded;
    }
    decode_general(msg)
}

/// [`decode`] without the fast path for the common `dispatch_event` body.
pub(super) fn decode_general(msg: &Message) -> Result<Decoded, DecodeError> {
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
        Value::String(s) => event_from_str(&s)?,
        obj @ Value::Object(_) => obj,
        _ => {
            return Err(shape(
                "args[0] must be the event as a JSON string (or a JSON object)",
            ));
        }
    };
    finish(event, topic, env.id)
}

/// The event of `args[0]` given as a JSON string.
fn event_from_str(s: &str) -> Result<Value, DecodeError> {
    serde_json::from_str::<Value>(s)
        .map_err(|e| shape(format!("args[0] is not a JSON document: {e}")))
}

/// The decoded event: `_tchu_meta` taken out and read.
fn finish(event: Value, topic: String, id: Option<String>) -> Result<Decoded, DecodeError> {
    let Value::Object(mut event) = event else {
        return Err(shape("the event (args[0]) must be a JSON object"));
    };
    let meta = event.remove(META_KEY);
    finish_parts(event, meta, topic, id)
}

/// [`finish`] of an event whose `_tchu_meta` is already apart.
fn finish_parts(
    event: Map<String, Value>,
    meta: Option<Value>,
    topic: String,
    id: Option<String>,
) -> Result<Decoded, DecodeError> {
    let is_rpc = match meta {
        // No metadata: a tchu-tchu 2.x sender, handled as RPC like tchu-tchu does.
        None => true,
        Some(Value::Object(meta)) => meta.get("is_rpc").is_some_and(truthy),
        Some(_) => return Err(shape(format!("`{META_KEY}` must be an object"))),
    };
    Ok(Decoded {
        topic,
        event: Value::Object(event),
        kind: if is_rpc { Kind::Rpc } else { Kind::Event },
        message_id: id,
        format: WireFormat::Celery,
    })
}

/// The body of a `dispatch_event` task as `TchuClient` writes it: `[[event], {routing_key},
/// embed]`, read borrowed (no `Value` tree for the envelope). Anything else is left to the
/// general path, which then gives the same result or error. Also read by `wire/payload.rs`.
#[derive(serde::Deserialize)]
pub(crate) struct FastBody<'a>(
    #[serde(borrow)] pub(crate) (Cow<'a, str>,),
    #[serde(borrow)] pub(crate) FastKwargs<'a>,
    pub(crate) EmbedObject,
);

#[derive(serde::Deserialize)]
pub(crate) struct FastKwargs<'a> {
    #[serde(borrow)]
    pub(crate) routing_key: Option<Cow<'a, str>>,
}

/// An `embed` element that is a JSON object (its contents checked as JSON, not kept).
pub(crate) struct EmbedObject;

impl<'de> serde::Deserialize<'de> for EmbedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EmbedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<EmbedObject, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(EmbedObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// `decode` of the common `dispatch_event` body; `None` for any other shape.
pub(super) fn decode_dispatch_fast(msg: &Message) -> Option<Result<Decoded, DecodeError>> {
    let id = match msg.properties.headers.get("id") {
        Some(HeaderValue::String(id)) => Some(id.clone()),
        Some(HeaderValue::Null) | None => msg.properties.correlation_id.clone(),
        Some(_) => return None,
    };
    let FastBody((event,), kwargs, EmbedObject) = serde_json::from_slice(&msg.body).ok()?;
    let topic = match kwargs.routing_key {
        Some(k) if !k.is_empty() => k.into_owned(),
        _ if !msg.routing_key.is_empty() => msg.routing_key.clone(),
        _ => return None,
    };
    Some(match serde_json::from_str::<EventObject>(&event) {
        Ok(EventObject { event, meta }) => finish_parts(event, meta, topic, id),
        // Not an object, or not JSON: the general reading gives the error.
        Err(_) => event_from_str(&event).and_then(|event| finish(event, topic, id)),
    })
}

/// The event object of `args[0]` with its `_tchu_meta` set apart while it is parsed (instead
/// of inserted into the map and removed again).
struct EventObject {
    event: Map<String, Value>,
    meta: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for EventObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EventObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<EventObject, A::Error> {
                let mut event = Map::new();
                let mut meta = None;
                // A repeated key: the last one wins, as in a `Value`.
                while let Some(key) = map.next_key::<String>()? {
                    if key == META_KEY {
                        meta = Some(map.next_value::<Value>()?);
                    } else {
                        event.insert(key, map.next_value::<Value>()?);
                    }
                }
                Ok(EventObject { event, meta })
            }
        }
        d.deserialize_map(V)
    }
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
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
