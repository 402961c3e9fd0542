//! Wire formats. One module per format behind one seam: [`decode`] turns any received message
//! into the same [`Decoded`] value, so what a handler sees does not depend on the format.
//!
//! - [`celery`]: Celery task messages as Python tchu-tchu sends and accepts them (the default
//!   for sending, so a mixed fleet works with no setting).
//! - [`json`]: tchu's native format: the event JSON as the body, metadata in headers.

pub mod celery;
pub mod json;

use crate::error::RpcError;
use crate::message::Message;

/// The formats tchu reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    /// Celery task protocol v2 with tchu-tchu's `dispatch_event` task (and v1 on receipt).
    #[default]
    Celery,
    /// tchu's native JSON format.
    Native,
}

/// What a received message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A broadcast event.
    Event,
    /// An RPC request expecting a reply.
    Rpc,
    /// A tchu-tchu internal handler sub-task (`tchu_tchu.handler.*`): not an event; acked and
    /// counted, never handled or dead-lettered.
    CeleryInternal {
        /// The Celery task name.
        task: String,
    },
}

/// A received message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The topic. For Celery messages it comes from `kwargs.routing_key`, as tchu-tchu does.
    pub topic: String,
    /// The event payload, without `_tchu_meta`.
    pub event: serde_json::Value,
    /// Event, request or internal task.
    pub kind: Kind,
    /// The message (task) id, if any.
    pub message_id: Option<String>,
    /// The format that carried it.
    pub format: WireFormat,
}

/// Why a received message could not be decoded. The text is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body exceeds the configured limit.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A content type other than JSON.
    #[error("unsupported content type `{0}`")]
    ContentType(String),
    /// Not UTF-8.
    #[error("body is not valid UTF-8")]
    NotUtf8,
    /// Not JSON.
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not of the expected shape.
    #[error("malformed {format} message: {reason}")]
    Shape {
        /// Which format was expected.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes any received message (Celery v2, Celery v1, or native).
///
/// # Errors
/// A [`DecodeError`] whose text says why; the caller dead-letters the message with it.
pub fn decode(msg: &Message, max_body: usize) -> Result<Decoded, DecodeError> {
    if msg.body.len() > max_body {
        return Err(DecodeError::TooLarge {
            size: msg.body.len(),
            limit: max_body,
        });
    }
    if let Some(ct) = &msg.properties.content_type {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        if !ct.is_empty() && ct != "application/json" {
            return Err(DecodeError::ContentType(ct.to_owned()));
        }
    }
    if std::str::from_utf8(&msg.body).is_err() {
        return Err(DecodeError::NotUtf8);
    }
    if celery::is_celery(msg) {
        celery::decode(msg)
    } else {
        json::decode(msg)
    }
}

/// The answer to an RPC request, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The handler's return value.
    Ok(serde_json::Value),
    /// A business error ([`RpcError`]).
    Remote(RpcError),
    /// The handler failed or panicked.
    HandlerFailed(String),
    /// The request failed validation at the responder.
    Invalid(String),
}

/// Encodes an event or request for publishing in `format`. `event_json` is the serialized
/// event (a JSON object for typed events). Properties other than the format's own (persistence,
/// expiration, reply address) are set by the caller.
pub fn encode(
    format: WireFormat,
    topic: &str,
    event_json: &[u8],
    message_id: &str,
    is_rpc: bool,
) -> Message {
    match format {
        WireFormat::Celery => celery::encode(topic, event_json, message_id, is_rpc),
        WireFormat::Native => json::encode(topic, event_json, message_id, is_rpc),
    }
}

/// Encodes a reply to a request that arrived in `format`, so the caller can read it.
pub fn encode_reply(
    format: WireFormat,
    topic: &str,
    handler: &str,
    correlation_id: &str,
    reply: &Reply,
) -> Message {
    match format {
        WireFormat::Celery => celery::encode_reply(topic, handler, correlation_id, reply),
        WireFormat::Native => json::encode_reply(correlation_id, reply),
    }
}

/// Decodes a reply in either format.
///
/// # Errors
/// When the reply is malformed.
pub fn decode_reply(msg: &Message) -> Result<Reply, DecodeError> {
    if json::is_native_reply(msg) {
        json::decode_reply(msg)
    } else {
        celery::decode_reply(msg)
    }
}
