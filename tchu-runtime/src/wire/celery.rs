//! Celery task messages as Python tchu-tchu 3.0.4 sends and accepts them.
//! See `../shared/fixtures/tchu-tchu-3.0.4/README.md` for the ground truth.

use crate::message::{HeaderValue, Message};
use crate::wire::{DecodeError, Decoded, Reply};

/// The Celery task every tchu-tchu event is sent as.
pub const DISPATCH_TASK: &str = "tchu_tchu.dispatch_event";

/// Whether a message looks like a Celery task message (v2: a `task` header; v1: a JSON object
/// body with `task` and `args`).
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
    body.first() == Some(&b'{') && body.windows(6).any(|w| w == b"\"task\"")
}

/// Encodes an event or request as a Celery v2 `tchu_tchu.dispatch_event` task.
pub fn encode(topic: &str, event_json: &[u8], message_id: &str, is_rpc: bool) -> Message {
    let _ = (topic, event_json, message_id, is_rpc, HeaderValue::Null);
    Message::default()
}

/// Decodes a Celery v2 or v1 task message.
///
/// # Errors
/// A broken envelope.
pub fn decode(msg: &Message) -> Result<Decoded, DecodeError> {
    let _ = msg;
    Err(DecodeError::Shape {
        format: "celery",
        reason: "not implemented yet".to_owned(),
    })
}

/// Encodes a reply as Celery result meta, the shape `TchuClient.call` unpacks.
pub fn encode_reply(topic: &str, handler: &str, correlation_id: &str, reply: &Reply) -> Message {
    let _ = (topic, handler, correlation_id, reply);
    Message::default()
}

/// Decodes Celery result meta into a [`Reply`].
///
/// # Errors
/// A malformed reply.
pub fn decode_reply(msg: &Message) -> Result<Reply, DecodeError> {
    let _ = msg;
    Err(DecodeError::Shape {
        format: "celery reply",
        reason: "not implemented yet".to_owned(),
    })
}
