//! Wire formats. One module per format behind one seam: [`decode`] turns any received message
//! into the same [`Decoded`] value, so what a handler sees does not depend on the format.
//!
//! - [`celery`]: Celery task messages as Python tchu-tchu sends and accepts them (the default
//!   for sending, so a mixed fleet works with no setting), written [`CeleryEncoding::Lean`]
//!   by default or [`CeleryEncoding::Full`].
//! - [`json`]: tchu's native format: the event JSON as the body, metadata in headers.

pub mod celery;
pub mod json;
pub(crate) mod payload;

pub use celery::CeleryEncoding;

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
    /// More headers than the configured limit.
    #[error("{count} headers exceed the limit of {limit} headers")]
    TooManyHeaders {
        /// How many top-level headers the message has.
        count: usize,
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

/// Limits on what [`decode`] accepts (a service takes them from its `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_body: usize,
    /// Most top-level headers (a nested table or array counts as one).
    pub max_headers: usize,
}

impl Limits {
    /// The defaults of a service: [`DEFAULT_MAX_BODY`](crate::DEFAULT_MAX_BODY) (16 MiB) and
    /// [`DEFAULT_MAX_HEADERS`](crate::DEFAULT_MAX_HEADERS) (64).
    pub const DEFAULT: Limits = Limits {
        max_body: crate::defaults::DEFAULT_MAX_BODY,
        max_headers: crate::defaults::DEFAULT_MAX_HEADERS,
    };

    /// No limit (for tools that show whatever arrives).
    pub const NONE: Limits = Limits {
        max_body: usize::MAX,
        max_headers: usize::MAX,
    };

    /// Limits with these values.
    pub const fn new(max_body: usize, max_headers: usize) -> Self {
        Limits {
            max_body,
            max_headers,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Decodes any received message (Celery v2, Celery v1, or native), within `limits`.
///
/// # Errors
/// A [`DecodeError`] whose text says why; the caller dead-letters the message with it.
pub fn decode(msg: &Message, limits: Limits) -> Result<Decoded, DecodeError> {
    check(msg, limits)?;
    decode_checked(msg)
}

/// The checks of [`decode`] before the format's own: size, header count, content type, UTF-8.
pub(crate) fn check(msg: &Message, limits: Limits) -> Result<(), DecodeError> {
    if msg.body.len() > limits.max_body {
        return Err(DecodeError::TooLarge {
            size: msg.body.len(),
            limit: limits.max_body,
        });
    }
    let headers = msg.properties.headers.len();
    if headers > limits.max_headers {
        return Err(DecodeError::TooManyHeaders {
            count: headers,
            limit: limits.max_headers,
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
    Ok(())
}

/// [`decode`] after [`check`].
pub(crate) fn decode_checked(msg: &Message) -> Result<Decoded, DecodeError> {
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

/// Adds the publisher's schema fingerprint header (`tchu-schema`, see
/// [`crate::fingerprint`]) to a message about to be published. Contracts; kept apart.
pub fn stamp_schema(msg: &mut Message, fingerprint: Option<&str>) {
    if let Some(fp) = fingerprint {
        msg.properties.headers.insert(
            crate::schema_hash::SCHEMA_HEADER.to_owned(),
            crate::message::HeaderValue::from(fp),
        );
    }
}

/// A new message (task) id: a random UUID v4 in its hyphenated text form, as Celery's task ids
/// are. The bits come from a per-thread fast generator (`fastrand`, seeded once per thread
/// from the standard library's random hasher keys), not a system call per id: ids must be
/// unique, not secret.
pub fn new_message_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Encodes an event or request for publishing in `format`, Celery messages in the default
/// [`CeleryEncoding::Lean`]: `encode_with(format, CeleryEncoding::Lean, ..)`.
pub fn encode(
    format: WireFormat,
    topic: &str,
    event_json: &[u8],
    message_id: &str,
    is_rpc: bool,
) -> Message {
    encode_with(
        format,
        CeleryEncoding::Lean,
        topic,
        event_json,
        message_id,
        is_rpc,
    )
}

/// Encodes an event or request for publishing in `format`; a Celery message with the headers
/// and properties of `celery` (the native format ignores it). `event_json` is the serialized
/// event (a JSON object for typed events). Properties other than the format's own (persistence,
/// expiration, reply address) are set by the caller.
pub fn encode_with(
    format: WireFormat,
    celery: CeleryEncoding,
    topic: &str,
    event_json: &[u8],
    message_id: &str,
    is_rpc: bool,
) -> Message {
    match format {
        WireFormat::Celery => celery::encode_with(celery, topic, event_json, message_id, is_rpc),
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

/// The dispatcher's reading of a received message (the event left raw, then read into a tree
/// here): for every message the same result or the same error as [`decode`]. It exists for
/// the differential fuzz target (`fuzz/fuzz_targets/decode_agree.rs`); not a stable API.
///
/// # Errors
/// Those of [`decode`].
#[doc(hidden)]
pub fn decode_as_dispatched(msg: &Message, limits: Limits) -> Result<Decoded, DecodeError> {
    let incoming = payload::decode(msg, limits)?;
    let event = incoming
        .event
        .into_payload(|| msg.body.clone())
        .value()
        .clone();
    Ok(Decoded {
        topic: incoming.topic,
        event,
        kind: incoming.kind,
        message_id: incoming.message_id,
        format: incoming.format,
    })
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

/// What a caller waiting for a reply makes of `msg`, the body read once: `None` for an interim
/// Celery state (see [`celery::is_interim_reply`]: keep waiting), else [`decode_reply`]'s
/// answer.
pub(crate) fn decode_final_reply(msg: &Message) -> Option<Result<Reply, DecodeError>> {
    if json::is_native_reply(msg) {
        return Some(json::decode_reply(msg));
    }
    celery::decode_final_reply(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HeaderValue;

    fn native_event(headers: usize) -> Message {
        let mut m = encode(WireFormat::Native, "a.b", br#"{"x":1}"#, "id-1", false);
        for i in 0..headers {
            m.properties
                .headers
                .insert(format!("x-extra-{i}"), HeaderValue::Int(0));
        }
        m
    }

    #[test]
    fn too_many_headers_are_refused_with_a_reason() {
        let base = native_event(0).properties.headers.len();
        let at_limit = native_event(Limits::DEFAULT.max_headers - base);
        assert_eq!(at_limit.properties.headers.len(), 64);
        assert!(decode(&at_limit, Limits::DEFAULT).is_ok());

        let over = native_event(Limits::DEFAULT.max_headers - base + 1);
        let err = decode(&over, Limits::DEFAULT).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyHeaders {
                count: 65,
                limit: 64
            }
        );
        assert_eq!(err.to_string(), "65 headers exceed the limit of 64 headers");
        assert!(decode(&over, Limits::NONE).is_ok());
        assert!(matches!(
            decode(&native_event(0), Limits::new(usize::MAX, base - 1)),
            Err(DecodeError::TooManyHeaders { .. })
        ));
    }

    #[test]
    fn message_ids_are_v4_uuids_and_differ() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn the_body_limit_still_applies() {
        let m = native_event(0);
        let limits = Limits::new(m.body.len() - 1, 64);
        assert!(matches!(
            decode(&m, limits),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(Limits::default(), Limits::DEFAULT);
    }

    #[test]
    fn celery_messages_are_far_below_the_default_header_limit() {
        let m = encode(WireFormat::Celery, "a.b", br#"{"x":1}"#, "id-1", true);
        assert!(
            m.properties.headers.len() <= 32,
            "{}",
            m.properties.headers.len()
        );
        assert!(decode(&m, Limits::DEFAULT).is_ok());
    }
}
