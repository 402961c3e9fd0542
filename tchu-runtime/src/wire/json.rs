//! tchu's native format: the body is the event JSON itself; the kind travels in the
//! `x-tchu-kind` header (`event` or `rpc`). Replies carry `x-tchu-reply` (`ok`, `remote`,
//! `failed`, `invalid`). A plain JSON object with no tchu headers is accepted as an event, so
//! any AMQP client can publish to a tchu service.

use crate::error::RpcError;
use crate::message::{HeaderValue, Message, Properties};
use crate::wire::{DecodeError, Decoded, Kind, Reply, WireFormat};

/// Header naming the kind of a native message.
pub const KIND_HEADER: &str = "x-tchu-kind";
/// Header naming the status of a native reply.
pub const REPLY_HEADER: &str = "x-tchu-reply";

fn json_properties(message_id: Option<&str>) -> Properties {
    Properties {
        content_type: Some("application/json".to_owned()),
        content_encoding: Some("utf-8".to_owned()),
        message_id: message_id.map(str::to_owned),
        ..Properties::default()
    }
}

/// Encodes an event or request.
pub fn encode(topic: &str, event_json: &[u8], message_id: &str, is_rpc: bool) -> Message {
    let mut properties = json_properties(Some(message_id));
    properties.headers.insert(
        KIND_HEADER.to_owned(),
        HeaderValue::from(if is_rpc { "rpc" } else { "event" }),
    );
    Message {
        routing_key: topic.to_owned(),
        properties,
        body: event_json.to_vec(),
    }
}

/// Decodes a native (or plain JSON) message.
///
/// # Errors
/// Invalid JSON, or a body that is not a JSON object.
pub fn decode(msg: &Message) -> Result<Decoded, DecodeError> {
    let event: serde_json::Value =
        serde_json::from_slice(&msg.body).map_err(|e| DecodeError::Json(e.to_string()))?;
    if !event.is_object() {
        return Err(DecodeError::Shape {
            format: "native",
            reason: "the event must be a JSON object".to_owned(),
        });
    }
    let kind = match msg
        .properties
        .headers
        .get(KIND_HEADER)
        .and_then(HeaderValue::as_str)
    {
        Some("rpc") => Kind::Rpc,
        Some("event") | None => Kind::Event,
        Some(other) => {
            return Err(DecodeError::Shape {
                format: "native",
                reason: format!("unknown {KIND_HEADER} `{other}`"),
            });
        }
    };
    Ok(Decoded {
        topic: msg.routing_key.clone(),
        event,
        kind,
        message_id: msg.properties.message_id.clone(),
        format: WireFormat::Native,
    })
}

/// Whether a reply is in the native format.
pub fn is_native_reply(msg: &Message) -> bool {
    msg.properties.headers.contains_key(REPLY_HEADER)
}

/// Encodes a reply.
pub fn encode_reply(correlation_id: &str, reply: &Reply) -> Message {
    let (status, body) = match reply {
        Reply::Ok(v) => ("ok", v.to_string()),
        Reply::Remote(e) => ("remote", serde_json::to_string(e).unwrap_or_default()),
        Reply::HandlerFailed(m) => ("failed", serde_json::json!({ "message": m }).to_string()),
        Reply::Invalid(m) => ("invalid", serde_json::json!({ "message": m }).to_string()),
    };
    let mut properties = json_properties(None);
    properties.correlation_id = Some(correlation_id.to_owned());
    properties
        .headers
        .insert(REPLY_HEADER.to_owned(), HeaderValue::from(status));
    Message {
        routing_key: String::new(),
        properties,
        body: body.into_bytes(),
    }
}

/// Decodes a native reply.
///
/// # Errors
/// A malformed reply.
pub fn decode_reply(msg: &Message) -> Result<Reply, DecodeError> {
    let shape = |reason: String| DecodeError::Shape {
        format: "native reply",
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&msg.body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let message = || {
        v.get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match msg
        .properties
        .headers
        .get(REPLY_HEADER)
        .and_then(HeaderValue::as_str)
    {
        Some("ok") => Ok(Reply::Ok(v)),
        Some("remote") => serde_json::from_value::<RpcError>(v.clone())
            .map(Reply::Remote)
            .map_err(|e| shape(e.to_string())),
        Some("failed") => Ok(Reply::HandlerFailed(message())),
        Some("invalid") => Ok(Reply::Invalid(message())),
        other => Err(shape(format!("unknown {REPLY_HEADER} {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trip() {
        let m = encode("user.created", br#"{"user_id":1}"#, "id-1", false);
        let d = decode(&m).unwrap();
        assert_eq!(d.topic, "user.created");
        assert_eq!(d.kind, Kind::Event);
        assert_eq!(d.event["user_id"], 1);
        assert_eq!(d.message_id.as_deref(), Some("id-1"));
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Ok(serde_json::json!({"ok": true})),
            Reply::Remote(RpcError::new("E", "bad").with_details(serde_json::json!([1]))),
            Reply::HandlerFailed("boom".to_owned()),
            Reply::Invalid("email: invalid".to_owned()),
        ] {
            let m = encode_reply("c", &r);
            assert!(is_native_reply(&m));
            assert_eq!(decode_reply(&m).unwrap(), r);
        }
    }

    #[test]
    fn non_object_is_refused() {
        let m = Message {
            body: b"[1,2]".to_vec(),
            ..Message::default()
        };
        assert!(matches!(decode(&m), Err(DecodeError::Shape { .. })));
    }
}
