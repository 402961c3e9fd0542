//! Writing Celery task messages as `TchuClient.publish` / `TchuClient.call` do, in either
//! [`CeleryEncoding`].

use std::sync::OnceLock;

use serde::Serialize;

use super::pyrepr::{py_json, py_repr_str, truncate_repr};
use super::{CONTENT_ENCODING, CONTENT_TYPE, CeleryEncoding, DISPATCH_TASK};
use crate::message::{HeaderValue, Headers, Message, Properties};

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
pub(super) fn event_string(event_json: &[u8], is_rpc: bool) -> String {
    let text = match std::str::from_utf8(event_json) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(event_json),
    };
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
            let mut out = String::with_capacity(inner.len() + meta.len() + 4);
            out.push('{');
            if !inner.trim_start().is_empty() {
                out.push_str(inner);
                out.push_str(", ");
            }
            out.push_str(meta);
            out.push('}');
            out
        }
        None => trimmed.to_owned(),
    }
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

/// The headers that are the same in every task message, built once.
fn constant_headers() -> &'static Headers {
    static HEADERS: OnceLock<Headers> = OnceLock::new();
    HEADERS.get_or_init(|| {
        let null = || HeaderValue::Null;
        let mut headers = Headers::new();
        headers.insert("lang".to_owned(), HeaderValue::from("py"));
        headers.insert("task".to_owned(), HeaderValue::from(DISPATCH_TASK));
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
        headers.insert("parent_id".to_owned(), null());
        headers.insert("origin".to_owned(), HeaderValue::from(host_origin()));
        headers.insert("ignore_result".to_owned(), null());
        headers.insert("replaced_task_nesting".to_owned(), HeaderValue::Int(0));
        headers.insert("stamped_headers".to_owned(), null());
        headers.insert("stamps".to_owned(), HeaderValue::Table(Headers::new()));
        headers
    })
}

/// Encodes an event or request as a Celery v2 `tchu_tchu.dispatch_event` task in the default
/// encoding, [`CeleryEncoding::Lean`]: `encode_with(CeleryEncoding::Lean, ..)`.
pub fn encode(topic: &str, event_json: &[u8], message_id: &str, is_rpc: bool) -> Message {
    encode_with(CeleryEncoding::Lean, topic, event_json, message_id, is_rpc)
}

/// Encodes an event or request as a Celery v2 `tchu_tchu.dispatch_event` task, the way
/// `TchuClient.publish` (`is_rpc` false) and `TchuClient.call` (`is_rpc` true) do, with the
/// headers and properties `encoding` says (see [`CeleryEncoding`]). The body is the same in
/// both encodings.
///
/// `event_json` should be a serialized JSON object; `_tchu_meta` is spliced into it (see the
/// module docs). The task id is `message_id`: it is the `id` header (and in
/// [`CeleryEncoding::Full`] also `root_id` and the correlation id). The caller sets
/// persistence, `reply_to` and expiration (and, for a call, the correlation id).
pub fn encode_with(
    encoding: CeleryEncoding,
    topic: &str,
    event_json: &[u8],
    message_id: &str,
    is_rpc: bool,
) -> Message {
    let event = event_string(event_json, is_rpc);
    let body = py_json(&(
        [event.as_str()],
        DispatchKwargs { routing_key: topic },
        NO_EMBED,
    ));
    match encoding {
        CeleryEncoding::Lean => lean(topic, message_id, body),
        CeleryEncoding::Full => full(topic, &event, message_id, body),
    }
}

/// [`CeleryEncoding::Lean`]: what a Celery worker needs and no more.
fn lean(topic: &str, message_id: &str, body: Vec<u8>) -> Message {
    let mut headers = Headers::new();
    headers.insert("task".to_owned(), HeaderValue::from(DISPATCH_TASK));
    headers.insert("id".to_owned(), HeaderValue::from(message_id));
    Message {
        routing_key: topic.to_owned(),
        properties: Properties {
            content_type: Some(CONTENT_TYPE.to_owned()),
            headers,
            ..Properties::default()
        },
        body,
    }
}

/// [`CeleryEncoding::Full`]: every header and property `TchuClient` writes.
fn full(topic: &str, event: &str, message_id: &str, body: Vec<u8>) -> Message {
    let mut argsrepr = String::with_capacity(event.len() + 4);
    argsrepr.push('[');
    py_repr_str(event, &mut argsrepr);
    argsrepr.push(']');
    let mut kwargsrepr = String::from("{'routing_key': ");
    py_repr_str(topic, &mut kwargsrepr);
    kwargsrepr.push('}');

    let mut headers = constant_headers().clone();
    headers.insert("id".to_owned(), HeaderValue::from(message_id));
    headers.insert("root_id".to_owned(), HeaderValue::from(message_id));
    headers.insert(
        "argsrepr".to_owned(),
        HeaderValue::from(truncate_repr(argsrepr)),
    );
    headers.insert(
        "kwargsrepr".to_owned(),
        HeaderValue::from(truncate_repr(kwargsrepr)),
    );

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
