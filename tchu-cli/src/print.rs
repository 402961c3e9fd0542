//! What the commands print: tailed messages, dead letters, errors (with credentials scrubbed).

use std::error::Error;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tchu::wire::{Decoded, Kind};
use tchu::{CallError, DeadLetter, TailedEvent, WireFormat};
use tchu_runtime::message::{HeaderValue, Message};

use crate::BoxError;

/// The most of an undecodable body that is shown.
const RAW_BODY_LIMIT: usize = 4096;

/// An error with a message of ours and the original as its source.
#[derive(Debug)]
struct Context {
    message: String,
    source: BoxError,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Wraps `source` under `message`.
pub(crate) fn context(message: String, source: impl Into<BoxError>) -> BoxError {
    Box::new(Context {
        message,
        source: source.into(),
    })
}

/// `error: top` and one `caused by:` line per source.
pub(crate) fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut out = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, "\n  caused by: {s}");
        source = s.source();
    }
    out
}

/// Removes the broker URL's password from `text`: the URL itself becomes its redacted form,
/// and the password alone (raw or percent-decoded) becomes `***`.
pub(crate) fn scrub(text: &str, url: Option<&str>) -> String {
    let Some(url) = url else {
        return text.to_owned();
    };
    let mut out = text.replace(url, &tchu::config::redact(url));
    if let Some(password) = password(url) {
        for p in [password.to_owned(), percent_decode(password)] {
            // Very short passwords would blank out ordinary text; the URL was handled above.
            if p.len() >= 3 {
                out = out.replace(&p, "***");
            }
        }
    }
    out
}

fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name of a `CallError` variant, for scripts and humans.
fn call_error_kind(e: &CallError) -> &'static str {
    match e {
        CallError::Timeout { .. } => "Timeout",
        CallError::NoRoute { .. } => "NoRoute",
        CallError::Remote { .. } => "Remote",
        CallError::HandlerFailed { .. } => "HandlerFailed",
        CallError::Invalid { .. } => "Invalid",
        CallError::BadReply { .. } => "BadReply",
        CallError::Publish(_) => "Publish",
        _ => "Error",
    }
}

/// `error[Timeout]: no reply to ...` on stderr, with a remote error's details.
pub(crate) fn call_error(e: &CallError) {
    eprintln!(
        "{}",
        error_chain(e).replacen("error:", &format!("error[{}]:", call_error_kind(e)), 1)
    );
    if let CallError::Remote { details, .. } = e
        && !details.is_null()
    {
        eprintln!("  details: {details}");
    }
}

fn format_name(f: WireFormat) -> &'static str {
    match f {
        WireFormat::Celery => "celery",
        WireFormat::Native => "native",
    }
}

fn kind_name(k: &Kind) -> String {
    match k {
        Kind::Event => "event".to_owned(),
        Kind::Rpc => "rpc request".to_owned(),
        Kind::CeleryInternal { task } => format!("celery task {task}"),
    }
}

fn raw_body(m: &Message) -> String {
    let body = &m.body[..m.body.len().min(RAW_BODY_LIMIT)];
    let mut s = String::from_utf8_lossy(body).into_owned();
    if m.body.len() > RAW_BODY_LIMIT {
        let _ = write!(s, "... ({} bytes)", m.body.len());
    }
    s
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn decoded_line(topic: &str, d: &Decoded) -> String {
    let mut line = format!(
        "# {topic}  ({}, {}",
        format_name(d.format),
        kind_name(&d.kind)
    );
    if let Some(id) = &d.message_id {
        let _ = write!(line, ", id {id}");
    }
    line.push(')');
    line
}

/// A tailed message, readable: a header line, then the event as indented JSON.
pub(crate) fn tailed(e: &TailedEvent) -> String {
    match &e.decoded {
        Ok(d) => format!("{}\n{}", decoded_line(&d.topic, d), pretty(&d.event)),
        Err(err) => format!(
            "# {}  (undecodable: {err})\n{}",
            e.routing_key,
            raw_body(&e.message)
        ),
    }
}

/// A tailed message as one JSON line.
pub(crate) fn tailed_json(e: &TailedEvent) -> Value {
    match &e.decoded {
        Ok(d) => json!({
            "topic": d.topic,
            "format": format_name(d.format),
            "kind": kind_name(&d.kind),
            "message_id": d.message_id,
            "event": d.event,
        }),
        Err(err) => json!({
            "topic": e.routing_key,
            "error": err.to_string(),
            "body": raw_body(&e.message),
        }),
    }
}

fn header_json(h: &HeaderValue) -> Value {
    match h {
        HeaderValue::Null => Value::Null,
        HeaderValue::Bool(b) => json!(b),
        HeaderValue::Int(i) => json!(i),
        HeaderValue::Float(f) => json!(f),
        HeaderValue::String(s) => json!(s),
        HeaderValue::Bytes(b) => json!(String::from_utf8_lossy(b)),
        HeaderValue::Array(a) => Value::Array(a.iter().map(header_json).collect()),
        HeaderValue::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), header_json(v))).collect())
        }
    }
}

fn age(ms: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    if ms <= 0 {
        return "-".to_owned();
    }
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        let cut: String = s.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Column widths of the `dlq list` table: fixed, so that rows print as they are read (a wider
/// cell pushes the rest of its row only).
const DLQ_WIDTHS: [usize; 5] = [5, 28, 24, 8, 12];

fn dlq_line(cells: [&str; 6]) -> String {
    let mut line = String::new();
    for (c, w) in cells.iter().zip(DLQ_WIDTHS) {
        let _ = write!(line, "{c:<w$}  ");
    }
    line.push_str(cells[5]);
    let mut line = line.trim_end().to_owned();
    line.push('\n');
    line
}

/// The header line of the `dlq list` table.
pub(crate) fn dead_letter_header() -> String {
    dlq_line([
        "#",
        "TOPIC",
        "HANDLER",
        "ATTEMPTS",
        "LAST FAILURE",
        "REASON",
    ])
}

/// One row of the `dlq list` table: dead letter number `i`.
pub(crate) fn dead_letter_row(i: usize, d: &DeadLetter) -> String {
    dlq_line([
        &i.to_string(),
        &d.original_routing_key,
        d.handler.as_deref().unwrap_or("-"),
        &d.attempts.to_string(),
        &age(d.last_failure_ms),
        &one_line(&d.reason, 80),
    ])
}

/// The `dlq show` view: why, headers, and the event.
pub(crate) fn dead_letter(d: &DeadLetter) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "topic:          {}", d.original_routing_key);
    let _ = writeln!(
        out,
        "handler:        {}",
        d.handler.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "reason:         {}", d.reason);
    let _ = writeln!(out, "attempts:       {}", d.attempts);
    let _ = writeln!(
        out,
        "first failure:  {} ({} ms since the epoch)",
        age(d.first_failure_ms),
        d.first_failure_ms
    );
    let _ = writeln!(
        out,
        "last failure:   {} ({} ms since the epoch)",
        age(d.last_failure_ms),
        d.last_failure_ms
    );
    let p = &d.message.properties;
    if let Some(id) = &p.message_id {
        let _ = writeln!(out, "message id:     {id}");
    }
    if let Some(ct) = &p.content_type {
        let _ = writeln!(out, "content type:   {ct}");
    }
    let headers: serde_json::Map<String, Value> = p
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), header_json(v)))
        .collect();
    let _ = writeln!(out, "headers:\n{}", pretty(&Value::Object(headers)));
    match tchu::wire::decode(&d.message, tchu::wire::Limits::NONE) {
        Ok(decoded) => {
            let _ = writeln!(
                out,
                "{}\n{}",
                decoded_line(&decoded.topic, &decoded),
                pretty(&decoded.event)
            );
        }
        Err(e) => {
            let _ = writeln!(out, "body (undecodable: {e}):\n{}", raw_body(&d.message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_passwords() {
        let url = "amqp://alice:s3cr%21t@host:5672/%2f";
        let text = format!("cannot connect to {url}: bad login for s3cr!t and s3cr%21t");
        let out = scrub(&text, Some(url));
        assert!(!out.contains("s3cr"), "{out}");
        assert!(out.contains("amqp://alice:***@host:5672/%2f"));
        assert_eq!(scrub("plain", None), "plain");
        assert_eq!(password("amqp://host/"), None);
        assert_eq!(password("amqp://u:p@h/"), Some("p"));
    }

    /// `tchu tail` shows a lean Celery message (the default) as it shows a full one (the line
    /// and the event `tailed` prints), and `tchu dlq show` lists the two headers it came with.
    #[test]
    fn lean_celery_messages_show_as_full_ones_do() {
        use tchu_runtime::wire::{self, CeleryEncoding, Limits};
        let message = |encoding| {
            wire::encode_with(
                WireFormat::Celery,
                encoding,
                "user.created",
                br#"{"id":1}"#,
                "id-1",
                false,
            )
        };
        let tail = |encoding| {
            let d = wire::decode(&message(encoding), Limits::NONE).expect("decodes");
            (decoded_line(&d.topic, &d), pretty(&d.event))
        };
        let (line, event) = tail(CeleryEncoding::Lean);
        assert_eq!(
            (&line, &event),
            (&tail(CeleryEncoding::Full).0, &tail(CeleryEncoding::Full).1)
        );
        assert_eq!(line, "# user.created  (celery, event, id id-1)");
        assert_eq!(event, pretty(&json!({"id": 1})));

        let shown = dead_letter(&DeadLetter::from_message(message(CeleryEncoding::Lean)));
        assert!(
            shown.contains("content type:   application/json"),
            "{shown}"
        );
        assert!(
            shown.contains(r#""task": "tchu_tchu.dispatch_event""#),
            "{shown}"
        );
        assert!(shown.contains(r#""id": "id-1""#), "{shown}");
        assert!(!shown.contains("argsrepr"), "{shown}");
        assert!(
            shown.contains("# user.created  (celery, event, id id-1)"),
            "{shown}"
        );
    }

    #[test]
    fn table_aligns() {
        let header = dead_letter_header();
        assert!(header.starts_with("#      TOPIC"), "{header:?}");
        assert!(header.ends_with("LAST FAILURE  REASON\n"), "{header:?}");
        let row = dead_letter_row(
            7,
            &DeadLetter::from_message(Message {
                routing_key: "a.b".to_owned(),
                properties: tchu_runtime::message::Properties {
                    headers: [
                        ("x-tchu-handler", "myshop::reserve"),
                        ("x-tchu-dead-letter-reason", "disk on fire"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), HeaderValue::from(v)))
                    .collect(),
                    ..Default::default()
                },
                body: Vec::new(),
            }),
        );
        assert_eq!(row.find("a.b"), header.find("TOPIC"), "{row:?}");
        assert_eq!(
            row.find("myshop::reserve"),
            header.find("HANDLER"),
            "{row:?}"
        );
        assert!(row.ends_with("disk on fire\n"), "{row:?}");
    }
}
