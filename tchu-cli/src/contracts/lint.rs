//! `tchu lint CATALOG...`: contracts across the fleet the catalog files describe.
//!
//! Errors: a subscription that matches no published topic (`unmatched-subscription`), a topic
//! published by two services with different schemas (`conflicting-schemas`), a typed handler
//! that cannot decode what a publisher sends (`incompatible-handler`), an RPC request with no
//! responder (`rpc-no-responder`) or several (`rpc-several-responders`), a caller and a
//! responder that disagree on the request or reply (`incompatible-rpc`), a pattern that is not
//! a valid AMQP binding key (`invalid-pattern`). Warning: a published topic nobody subscribes
//! to (`unconsumed-topic`). Matching uses the runtime's own matcher ([`tchu::Pattern`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tchu::{CatalogFile, Pattern};

use super::schema::{self, Doc};
use super::{Finding, Severity};

/// A topic someone publishes (broadcast) or calls (RPC), with who and which schema.
struct Sent<'a> {
    service: &'a str,
    topic: &'a str,
    schema: Option<Doc<'a>>,
    rpc: bool,
}

fn doc<'a>(file: &'a CatalogFile, schema: Option<&'a Value>) -> Option<Doc<'a>> {
    schema.map(|schema| Doc {
        schema,
        defs: &file.schemas,
    })
}

fn fingerprint(d: Doc<'_>) -> String {
    tchu::fingerprint::fingerprint(d.schema, d.defs)
}

/// Every finding, errors first.
pub(crate) fn lint(files: &[CatalogFile]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut sent: Vec<Sent<'_>> = Vec::new();
    for f in files {
        for p in &f.publishes {
            sent.push(Sent {
                service: &f.service,
                topic: &p.topic,
                schema: doc(f, p.schema.as_ref()),
                rpc: false,
            });
        }
        for c in &f.calls {
            sent.push(Sent {
                service: &f.service,
                topic: &c.topic,
                schema: doc(f, c.schema.as_ref()),
                rpc: true,
            });
        }
    }
    let broadcast_topics: BTreeSet<&str> =
        sent.iter().filter(|s| !s.rpc).map(|s| s.topic).collect();
    let all_topics: BTreeSet<&str> = sent.iter().map(|s| s.topic).collect();

    // Subscriptions: valid pattern, matches something, typed handlers decode what is sent.
    let mut patterns: Vec<(&str, Pattern)> = Vec::new();
    for f in files {
        for s in &f.subscribes {
            let pattern = match Pattern::new(s.pattern.as_str()) {
                Ok(p) => p,
                Err(e) => {
                    out.push(
                        Finding::new(
                            Severity::Error,
                            "invalid-pattern",
                            format!(
                                "{}: handler `{}` subscribes to `{}`, which is not a binding pattern: {e}",
                                f.service, s.id, s.pattern
                            ),
                        )
                        .services([f.service.as_str()])
                        .pattern(&s.pattern),
                    );
                    continue;
                }
            };
            let matched: Vec<&Sent<'_>> =
                sent.iter().filter(|x| pattern.matches(x.topic)).collect();
            if matched.is_empty() {
                let mut finding = Finding::new(
                    Severity::Error,
                    "unmatched-subscription",
                    format!(
                        "{}: handler `{}` subscribes to `{}`, which matches no topic any service publishes",
                        f.service, s.id, s.pattern
                    ),
                )
                .services([f.service.as_str()])
                .pattern(&s.pattern);
                if let Some(near) = nearest(&s.pattern, &all_topics) {
                    finding = finding.note(format!("did you mean `{near}`?"));
                }
                finding = finding.note(format!(
                    "published topics: {}",
                    if all_topics.is_empty() {
                        "none".to_owned()
                    } else {
                        all_topics.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ));
                out.push(finding);
            }
            if let Some(receiver) = doc(f, s.schema.as_ref()) {
                for x in matched.iter().filter(|x| !x.rpc) {
                    let Some(sender) = x.schema else { continue };
                    let problems = schema::compare(sender, receiver);
                    if problems.is_empty() {
                        continue;
                    }
                    let unknown = unknown_fields(sender, receiver);
                    let mut finding = Finding::new(
                        Severity::Error,
                        "incompatible-handler",
                            format!(
                                "{}: typed handler `{}` ({}) cannot decode every `{}` that {} publishes",
                                f.service,
                                s.id,
                                s.event.as_deref().unwrap_or("its event type"),
                                x.topic,
                                x.service
                            ),
                        )
                    .services([f.service.as_str(), x.service])
                    .topic(x.topic)
                    .pattern(&s.pattern)
                    .fields(problems.iter().map(ToString::to_string).collect());
                    if !unknown.is_empty() {
                        finding = finding.note(format!(
                            "{} also sends fields the handler does not read: {} (renamed?)",
                            x.service,
                            unknown.join(", ")
                        ));
                    }
                    out.push(finding);
                }
            }
            patterns.push((f.service.as_str(), pattern));
        }
    }

    // One schema per published topic.
    let mut by_topic: BTreeMap<&str, Vec<&Sent<'_>>> = BTreeMap::new();
    for s in sent.iter().filter(|s| !s.rpc) {
        by_topic.entry(s.topic).or_default().push(s);
    }
    for (topic, senders) in &by_topic {
        let with_schema: Vec<(&Sent<'_>, Doc<'_>)> = senders
            .iter()
            .filter_map(|s| s.schema.map(|d| (*s, d)))
            .collect();
        for (i, (a, da)) in with_schema.iter().enumerate() {
            for (b, db) in &with_schema[i + 1..] {
                if a.service == b.service || fingerprint(*da) == fingerprint(*db) {
                    continue;
                }
                let mut fields: Vec<String> = schema::compare(*da, *db)
                    .iter()
                    .map(|p| format!("{} → {}: {p}", a.service, b.service))
                    .collect();
                fields.extend(
                    schema::compare(*db, *da)
                        .iter()
                        .map(|p| format!("{} → {}: {p}", b.service, a.service)),
                );
                if fields.is_empty() {
                    fields.push(format!("{}: {}", a.service, schema::fields(*da).join(", ")));
                    fields.push(format!("{}: {}", b.service, schema::fields(*db).join(", ")));
                }
                out.push(
                    Finding::new(
                        Severity::Error,
                        "conflicting-schemas",
                        format!(
                            "`{topic}` is published by {} and {} with different schemas ({} vs {})",
                            a.service,
                            b.service,
                            fingerprint(*da),
                            fingerprint(*db)
                        ),
                    )
                    .services([a.service, b.service])
                    .topic(topic)
                    .fields(fields),
                );
            }
        }
    }

    // RPC: exactly one responding service per called topic; request and reply agree.
    let mut responders: BTreeMap<&str, Vec<(&CatalogFile, &tchu::Served)>> = BTreeMap::new();
    for f in files {
        for s in &f.serves {
            responders.entry(s.topic.as_str()).or_default().push((f, s));
        }
    }
    for f in files {
        for c in &f.calls {
            match responders.get(c.topic.as_str()).map(Vec::as_slice) {
                None | Some([]) => out.push(
                    Finding::new(
                        Severity::Error,
                        "rpc-no-responder",
                        format!(
                            "{} calls `{}`, which no service answers",
                            f.service, c.topic
                        ),
                    )
                    .services([f.service.as_str()])
                    .topic(&c.topic),
                ),
                Some(rs) => {
                    for (rf, r) in rs {
                        let mut fields = Vec::new();
                        if let (Some(sender), Some(receiver)) =
                            (doc(f, c.schema.as_ref()), doc(rf, r.schema.as_ref()))
                        {
                            fields.extend(
                                schema::compare(sender, receiver)
                                    .iter()
                                    .map(|p| format!("request: {p}")),
                            );
                        }
                        if let (Some(sender), Some(receiver)) = (
                            doc(rf, r.reply_schema.as_ref()),
                            doc(f, c.reply_schema.as_ref()),
                        ) {
                            fields.extend(
                                schema::compare(sender, receiver)
                                    .iter()
                                    .map(|p| format!("reply: {p}")),
                            );
                        }
                        if !fields.is_empty() {
                            out.push(
                                Finding::new(
                                    Severity::Error,
                                    "incompatible-rpc",
                                    format!(
                                        "{} calls `{}` and {} answers it (handler `{}`), but they disagree",
                                        f.service, c.topic, rf.service, r.handler
                                    ),
                                )
                                .services([f.service.as_str(), rf.service.as_str()])
                                .topic(&c.topic)
                                .fields(fields),
                            );
                        }
                    }
                }
            }
        }
    }
    for (topic, rs) in &responders {
        let services: BTreeSet<&str> = rs.iter().map(|(f, _)| f.service.as_str()).collect();
        if rs.len() > 1 {
            out.push(
                Finding::new(
                    Severity::Error,
                    "rpc-several-responders",
                    format!(
                        "`{topic}` is answered by {} handlers ({}): the first reply wins, the others are wasted",
                        rs.len(),
                        rs.iter()
                            .map(|(f, s)| format!("{} `{}`", f.service, s.handler))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .services(services)
                .topic(topic),
            );
        }
    }

    // Published topics nobody subscribes to.
    for topic in &broadcast_topics {
        if patterns.iter().any(|(_, p)| p.matches(topic)) {
            continue;
        }
        let publishers: BTreeSet<&str> = by_topic
            .get(topic)
            .map(|v| v.iter().map(|s| s.service).collect())
            .unwrap_or_default();
        out.push(
            Finding::new(
                Severity::Warning,
                "unconsumed-topic",
                format!(
                    "`{topic}` is published by {} but no service subscribes to it",
                    publishers.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            )
            .services(publishers)
            .topic(topic),
        );
    }
    out.sort_by_key(|f| f.severity);
    out
}

/// Top-level fields the sender sends that the receiver does not list.
fn unknown_fields(sender: Doc<'_>, receiver: Doc<'_>) -> Vec<String> {
    let known: Vec<String> = schema::fields(receiver)
        .into_iter()
        .filter_map(|f| f.split(':').next().map(str::to_owned))
        .collect();
    schema::fields(sender)
        .into_iter()
        .filter(|f| {
            f.split(':')
                .next()
                .is_some_and(|n| !known.iter().any(|k| k == n))
        })
        .collect()
}

/// The published topic closest to a pattern with no match (a typo), if one is close.
fn nearest<'a>(pattern: &str, topics: &BTreeSet<&'a str>) -> Option<&'a str> {
    topics
        .iter()
        .map(|t| (edit_distance(pattern, t), *t))
        .filter(|(d, t)| *d <= 3.max(t.len() / 4))
        .min()
        .map(|(_, t)| t)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
