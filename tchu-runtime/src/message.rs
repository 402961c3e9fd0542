//! Transport-neutral AMQP-like messages: what both brokers carry and what the wire codecs read
//! and write. No `lapin` type appears here.

use std::collections::BTreeMap;
use std::time::Duration;

/// An AMQP header value, as far as tchu needs to read and write them.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// AMQP void (`V`), Python's `None`.
    Null,
    /// A boolean (`t`).
    Bool(bool),
    /// Any integer type.
    Int(i64),
    /// Any floating point type.
    Float(f64),
    /// A long or short string (`S`/`s`).
    String(String),
    /// Raw bytes (`x`).
    Bytes(Vec<u8>),
    /// An array (`A`).
    Array(Vec<HeaderValue>),
    /// A nested table (`F`).
    Table(Headers),
}

impl HeaderValue {
    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside, if this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::String(s.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::String(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(i: i64) -> Self {
        HeaderValue::Int(i)
    }
}

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

/// A header table, sorted by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// The basic properties tchu reads and writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME content type, e.g. `application/json`.
    pub content_type: Option<String>,
    /// Content encoding, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Headers,
    /// `true` for delivery mode 2 (persistent).
    pub persistent: bool,
    /// Correlation id (Celery: the task id; RPC: the call id).
    pub correlation_id: Option<String>,
    /// Where a reply goes.
    pub reply_to: Option<String>,
    /// Per-message TTL.
    pub expiration: Option<Duration>,
    /// Message id.
    pub message_id: Option<String>,
    /// Publish time, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Priority (Celery sends 0).
    pub priority: Option<u8>,
}

/// A message as it travels: routing key, properties and body bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// The routing key it was published with (the topic for events).
    pub routing_key: String,
    /// Basic properties.
    pub properties: Properties,
    /// The body bytes.
    pub body: Vec<u8>,
}
