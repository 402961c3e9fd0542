//! `tchu diff OLD NEW`: what changed between two versions of one service's catalog, each
//! change classified breaking or compatible for the services that talk to it.
//!
//! The direction matters. For what the service sends (published events, RPC requests it
//! calls, replies it serves), the new schema must decode on receivers built against the old
//! one: removing a field or widening a type breaks them, adding a field does not. For what it
//! receives (typed subscriptions, requests it serves, replies to its calls), the new schema
//! must decode what senders built against the old one still send: a field made required or a
//! narrowed type breaks, a new optional field does not. Dropped subscriptions and served
//! requests are breaking (publishers' events are no longer handled, callers get no reply).

use serde::Serialize;
use serde_json::Value;
use tchu::CatalogFile;

use super::schema::{self, Doc};

/// Breaking or compatible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    /// Peers built against the old catalog may fail.
    Breaking,
    /// Peers keep working.
    Compatible,
}

/// One change.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Change {
    /// Breaking or compatible.
    pub(crate) verdict: Verdict,
    /// `event-removed`, `event-renamed`, `event-schema`, `subscription-dropped`, ...
    pub(crate) kind: &'static str,
    /// The topic or pattern.
    pub(crate) subject: String,
    /// One sentence.
    pub(crate) message: String,
    /// The fields involved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) fields: Vec<String>,
}

fn change(verdict: Verdict, kind: &'static str, subject: &str, message: String) -> Change {
    Change {
        verdict,
        kind,
        subject: subject.to_owned(),
        message,
        fields: Vec::new(),
    }
}

fn doc<'a>(file: &'a CatalogFile, schema: Option<&'a Value>) -> Option<Doc<'a>> {
    schema.map(|schema| Doc {
        schema,
        defs: &file.schemas,
    })
}

fn fp(d: Option<Doc<'_>>) -> Option<String> {
    d.map(|d| tchu::fingerprint::fingerprint(d.schema, d.defs))
}

/// A schema change of something sent (`sender` side new) or received.
fn schema_change(
    kind: &'static str,
    subject: &str,
    what: &str,
    old: Option<Doc<'_>>,
    new: Option<Doc<'_>>,
    sent: bool,
) -> Option<Change> {
    let (old, new) = (old?, new?);
    if fp(Some(old)) == fp(Some(new)) {
        return None;
    }
    let problems = if sent {
        schema::compare(new, old)
    } else {
        schema::compare(old, new)
    };
    let role = if sent { "sent" } else { "received" };
    let mut c = if problems.is_empty() {
        change(
            Verdict::Compatible,
            kind,
            subject,
            format!("{what} `{subject}` ({role}): schema changed compatibly"),
        )
    } else {
        change(
            Verdict::Breaking,
            kind,
            subject,
            format!("{what} `{subject}` ({role}): schema changed incompatibly"),
        )
    };
    let side = if sent {
        "old receivers"
    } else {
        "old senders' messages"
    };
    c.fields = problems.iter().map(|p| format!("{p} ({side})")).collect();
    // A renamed field shows as one removed and one added.
    c.fields.extend(added_fields(old, new));
    Some(c)
}

fn added_fields(old: Doc<'_>, new: Doc<'_>) -> Vec<String> {
    let o = schema::fields(old);
    schema::fields(new)
        .into_iter()
        .filter(|f| !o.contains(f))
        .map(|f| format!("added or changed: {f}"))
        .collect()
}

/// Every change from `old` to `new`, breaking first.
pub(crate) fn diff(old: &CatalogFile, new: &CatalogFile) -> Vec<Change> {
    let mut out = Vec::new();

    // Published events, by topic.
    for o in &old.publishes {
        match new.publishes.iter().find(|n| n.topic == o.topic) {
            Some(n) => {
                if o.type_name != n.type_name {
                    out.push(change(
                        Verdict::Compatible,
                        "event-type-renamed",
                        &o.topic,
                        format!(
                            "published event `{}`: type renamed from {} to {} (the wire only carries the topic)",
                            o.topic,
                            o.type_name.as_deref().unwrap_or("?"),
                            n.type_name.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                out.extend(schema_change(
                    "event-schema",
                    &o.topic,
                    "published event",
                    doc(old, o.schema.as_ref()),
                    doc(new, n.schema.as_ref()),
                    true,
                ));
            }
            None => {
                let renamed = new.publishes.iter().find(|n| {
                    !old.publishes.iter().any(|x| x.topic == n.topic)
                        && ((n.type_name.is_some() && n.type_name == o.type_name)
                            || (fp(doc(new, n.schema.as_ref())).is_some()
                                && fp(doc(new, n.schema.as_ref()))
                                    == fp(doc(old, o.schema.as_ref()))))
                });
                out.push(match renamed {
                    Some(n) => change(
                        Verdict::Breaking,
                        "event-renamed",
                        &o.topic,
                        format!(
                            "published event `{}` renamed to `{}`: subscribers of the old topic get nothing",
                            o.topic, n.topic
                        ),
                    ),
                    None => change(
                        Verdict::Breaking,
                        "event-removed",
                        &o.topic,
                        format!("published event `{}` removed", o.topic),
                    ),
                });
            }
        }
    }
    for n in &new.publishes {
        if !old.publishes.iter().any(|o| o.topic == n.topic) {
            out.push(change(
                Verdict::Compatible,
                "event-added",
                &n.topic,
                format!("published event `{}` added", n.topic),
            ));
        }
    }

    // Subscriptions, by pattern.
    for o in &old.subscribes {
        match new.subscribes.iter().find(|n| n.pattern == o.pattern) {
            Some(n) => out.extend(schema_change(
                "subscription-schema",
                &o.pattern,
                "subscription",
                doc(old, o.schema.as_ref()),
                doc(new, n.schema.as_ref()),
                false,
            )),
            None => out.push(change(
                Verdict::Breaking,
                "subscription-dropped",
                &o.pattern,
                format!(
                    "subscription `{}` (handler `{}`) dropped: its events are no longer handled here",
                    o.pattern, o.id
                ),
            )),
        }
    }
    for n in &new.subscribes {
        if !old.subscribes.iter().any(|o| o.pattern == n.pattern) {
            out.push(change(
                Verdict::Compatible,
                "subscription-added",
                &n.pattern,
                format!("subscription `{}` added (handler `{}`)", n.pattern, n.id),
            ));
        }
    }

    // Served RPC requests.
    for o in &old.serves {
        match new.serves.iter().find(|n| n.topic == o.topic) {
            Some(n) => {
                out.extend(schema_change(
                    "rpc-request-schema",
                    &o.topic,
                    "served request",
                    doc(old, o.schema.as_ref()),
                    doc(new, n.schema.as_ref()),
                    false,
                ));
                if o.reply != n.reply && (o.reply_schema.is_none() || n.reply_schema.is_none()) {
                    out.push(change(
                        Verdict::Breaking,
                        "rpc-reply-type",
                        &o.topic,
                        format!(
                            "served request `{}`: reply type changed from {} to {}",
                            o.topic,
                            o.reply.as_deref().unwrap_or("?"),
                            n.reply.as_deref().unwrap_or("?")
                        ),
                    ));
                } else {
                    let c = schema_change(
                        "rpc-reply-type",
                        &o.topic,
                        "reply to served request",
                        doc(old, o.reply_schema.as_ref()),
                        doc(new, n.reply_schema.as_ref()),
                        true,
                    );
                    match c {
                        Some(mut c) if o.reply != n.reply => {
                            c.message = format!(
                                "{} (reply type {} → {})",
                                c.message,
                                o.reply.as_deref().unwrap_or("?"),
                                n.reply.as_deref().unwrap_or("?")
                            );
                            out.push(c);
                        }
                        Some(c) => out.push(c),
                        None if o.reply != n.reply => out.push(change(
                            Verdict::Compatible,
                            "rpc-reply-type",
                            &o.topic,
                            format!(
                                "served request `{}`: reply type renamed {} → {}, same schema",
                                o.topic,
                                o.reply.as_deref().unwrap_or("?"),
                                n.reply.as_deref().unwrap_or("?")
                            ),
                        )),
                        None => {}
                    }
                }
            }
            None => out.push(change(
                Verdict::Breaking,
                "rpc-removed",
                &o.topic,
                format!(
                    "served request `{}` removed: callers get no reply (no route)",
                    o.topic
                ),
            )),
        }
    }
    for n in &new.serves {
        if !old.serves.iter().any(|o| o.topic == n.topic) {
            out.push(change(
                Verdict::Compatible,
                "rpc-added",
                &n.topic,
                format!("served request `{}` added", n.topic),
            ));
        }
    }

    // RPC requests it calls.
    for o in &old.calls {
        if let Some(n) = new.calls.iter().find(|n| n.topic == o.topic) {
            out.extend(schema_change(
                "rpc-call-schema",
                &o.topic,
                "called request",
                doc(old, o.schema.as_ref()),
                doc(new, n.schema.as_ref()),
                true,
            ));
            out.extend(schema_change(
                "rpc-call-reply",
                &o.topic,
                "reply to called request",
                doc(old, o.reply_schema.as_ref()),
                doc(new, n.reply_schema.as_ref()),
                false,
            ));
        }
    }
    out.sort_by_key(|c| c.verdict);
    out
}
