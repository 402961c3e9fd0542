//! The [AsyncAPI 3.0.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! document of one service, from its catalog file and its deployment (broker, exchange,
//! queue). Checked in CI with the official `@asyncapi/parser` (tests/asyncapi/).
//!
//! - `servers.rabbitmq`: host and virtual host (never credentials).
//! - `channels`: one per exact topic (routing key) the service publishes, calls, serves or
//!   receives, with the AMQP channel binding (`is: routingKey`, the topic exchange); one for
//!   the service's queue (`is: queue`) carrying the binding patterns; a reply channel per RPC
//!   request (`address: null`: the caller's reply-to).
//! - `operations`: `send` per published event and RPC call, `receive` per subscription and
//!   served request, with AMQP operation bindings (persistent delivery, acks).
//! - `x-tchu-*` extensions for what AsyncAPI cannot say: binding patterns, the dead-letter
//!   queue, retry queues, handler ids.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::file::CatalogFile;
use crate::topic::pattern_matches;

/// The AMQP bindings version AsyncAPI 3.0 documents.
const AMQP_BINDING: &str = "0.3.0";

/// Where the service runs: what the document says about the broker and its queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Deployment {
    /// `host:port` of the first broker node.
    pub host: String,
    /// The virtual host.
    pub vhost: String,
    /// The exchange.
    pub exchange: String,
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// Default retries before dead-lettering.
    pub retries: u32,
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            host: "127.0.0.1:5672".to_owned(),
            vhost: "/".to_owned(),
            exchange: crate::DEFAULT_EXCHANGE.to_owned(),
            queue_type: "classic".to_owned(),
            retries: crate::RetryPolicy::DEFAULT.retries,
        }
    }
}

impl Deployment {
    /// The deployment a service started with `config` has.
    pub fn of(config: &crate::Config) -> Self {
        let (host, vhost) = config
            .broker
            .amqp_urls()
            .first()
            .map(|u| host_and_vhost(u))
            .unwrap_or_else(|| ("127.0.0.1:5672".to_owned(), "/".to_owned()));
        Deployment {
            host,
            vhost,
            exchange: config.exchange.clone(),
            queue_type: config.queue_type.as_str().to_owned(),
            retries: config.retry.retries,
        }
    }
}

/// `amqp://user:pass@host:5672/%2f?x` → (`host:5672`, `/`), credentials dropped.
fn host_and_vhost(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = if host.contains(':') || host.is_empty() {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };
    let vhost = match path {
        "" => "/".to_owned(),
        p => p.replace("%2f", "/").replace("%2F", "/"),
    };
    (host, vhost)
}

/// A message of the document: its key and what the channels need to know.
struct Msg {
    key: String,
    topic: String,
}

/// The document. `file.version` is `info.version` (`0.0.0` when unknown).
pub fn document(file: &CatalogFile, deployment: &Deployment) -> Value {
    let mut keys = Keys::default();
    let mut messages: Vec<Msg> = Vec::new();
    let mut component_messages = Map::new();
    // One message per (topic, type): what the service sends or receives.
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut add = |topic: &str,
                   type_name: Option<&str>,
                   schema: Option<&Value>,
                   messages: &mut Vec<Msg>,
                   component_messages: &mut Map<String, Value>|
     -> String {
        let name = type_name.map_or(topic, short_name).to_owned();
        let id = (topic.to_owned(), type_name.unwrap_or("").to_owned());
        if let Some(k) = seen.get(&id) {
            return k.clone();
        }
        let key = keys.unique("message", &name);
        component_messages.insert(
            key.clone(),
            json!({
                "name": name,
                "title": name,
                "summary": match type_name {
                    Some(t) => format!("`{t}` on topic `{topic}`"),
                    None => format!("an event on topic `{topic}`"),
                },
                "contentType": "application/json",
                "payload": schema.cloned().unwrap_or_else(|| json!({"type": "object"})),
                "bindings": { "amqp": { "messageType": topic, "bindingVersion": AMQP_BINDING } },
            }),
        );
        seen.insert(id, key.clone());
        messages.push(Msg {
            key: key.clone(),
            topic: topic.to_owned(),
        });
        key
    };

    let mut sends: Vec<(String, String)> = Vec::new(); // (topic, message key)
    for p in &file.publishes {
        let k = add(
            &p.topic,
            p.type_name.as_deref(),
            p.schema.as_ref(),
            &mut messages,
            &mut component_messages,
        );
        sends.push((p.topic.clone(), k));
    }
    // RPC: (topic, request key, reply key)
    let mut rpc_replies: BTreeMap<String, String> = BTreeMap::new();
    let mut reply_for = |topic: &str,
                         request_key: &str,
                         reply: Option<&str>,
                         reply_schema: Option<&Value>,
                         component_messages: &mut Map<String, Value>|
     -> String {
        let key = format!("{request_key}.reply");
        if !component_messages.contains_key(&key) {
            component_messages.insert(
                key.clone(),
                json!({
                    "name": key,
                    "title": reply.unwrap_or("reply"),
                    "summary": format!("the reply to `{topic}`"),
                    "contentType": "application/json",
                    "payload": reply_schema.cloned().unwrap_or_else(|| json!({})),
                }),
            );
        }
        rpc_replies.insert(topic.to_owned(), key.clone());
        key
    };
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for c in &file.calls {
        let k = add(
            &c.topic,
            c.request.as_deref(),
            c.schema.as_ref(),
            &mut messages,
            &mut component_messages,
        );
        let r = reply_for(
            &c.topic,
            &k,
            c.reply.as_deref(),
            c.reply_schema.as_ref(),
            &mut component_messages,
        );
        calls.push((c.topic.clone(), k, r));
    }
    let mut serves: Vec<(String, String, String, String)> = Vec::new();
    for s in &file.serves {
        let k = add(
            &s.topic,
            s.request.as_deref(),
            s.schema.as_ref(),
            &mut messages,
            &mut component_messages,
        );
        let r = reply_for(
            &s.topic,
            &k,
            s.reply.as_deref(),
            s.reply_schema.as_ref(),
            &mut component_messages,
        );
        serves.push((s.topic.clone(), s.handler.clone(), k, r));
    }
    for s in &file.subscribes {
        if s.event.is_some() {
            add(
                &s.pattern,
                s.event.as_deref(),
                s.schema.as_ref(),
                &mut messages,
                &mut component_messages,
            );
        }
    }

    let exchange = json!({
        "name": deployment.exchange,
        "type": "topic",
        "durable": true,
        "autoDelete": false,
        "vhost": deployment.vhost,
    });

    // Routing-key channels: every exact topic the service's messages use.
    let mut channels = Map::new();
    let mut channel_of: BTreeMap<String, String> = BTreeMap::new();
    let topics: BTreeSet<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    for topic in topics {
        let key = keys.unique("channel", topic);
        let mut ms = Map::new();
        for m in messages.iter().filter(|m| m.topic == topic) {
            ms.insert(m.key.clone(), message_ref(&m.key));
        }
        channels.insert(
            key.clone(),
            json!({
                "address": topic,
                "title": topic,
                "description": format!("routing key `{topic}` on exchange `{}`", deployment.exchange),
                "servers": [ { "$ref": "#/servers/rabbitmq" } ],
                "messages": ms,
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": exchange,
                    "bindingVersion": AMQP_BINDING,
                } },
            }),
        );
        if let Some(reply) = rpc_replies.get(topic) {
            let mut rm = Map::new();
            rm.insert(reply.clone(), message_ref(reply));
            channels.insert(
                format!("{key}.reply"),
                json!({
                    "address": null,
                    "title": format!("{topic} reply"),
                    "description": "the caller's reply-to address (RabbitMQ direct reply-to)",
                    "servers": [ { "$ref": "#/servers/rabbitmq" } ],
                    "messages": rm,
                }),
            );
        }
        channel_of.insert(topic.to_owned(), key);
    }

    // The service's queue: what its subscriptions and served requests receive.
    let queue = file.service.clone();
    let dlq = format!("{queue}.dlq");
    let patterns: BTreeSet<&str> = file
        .subscribes
        .iter()
        .map(|s| s.pattern.as_str())
        .chain(file.serves.iter().map(|s| s.topic.as_str()))
        .collect();
    let queue_key = keys.unique("channel", &format!("queue.{queue}"));
    let received: Vec<&Msg> = messages
        .iter()
        .filter(|m| patterns.iter().any(|p| pattern_matches(p, &m.topic)))
        .collect();
    if !patterns.is_empty() {
        let mut ms = Map::new();
        for m in &received {
            ms.insert(m.key.clone(), message_ref(&m.key));
        }
        channels.insert(
            queue_key.clone(),
            json!({
                "address": queue,
                "title": format!("queue {queue}"),
                "description": format!(
                    "the durable queue of `{queue}`, bound to exchange `{}` with the patterns in \
                     `x-tchu-binding-patterns`",
                    deployment.exchange
                ),
                "servers": [ { "$ref": "#/servers/rabbitmq" } ],
                "messages": ms,
                "bindings": { "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": queue,
                        "durable": true,
                        "exclusive": false,
                        "autoDelete": false,
                        "vhost": deployment.vhost,
                    },
                    "bindingVersion": AMQP_BINDING,
                } },
                "x-tchu-exchange": deployment.exchange,
                "x-tchu-binding-patterns": patterns.iter().collect::<Vec<_>>(),
                "x-tchu-queue-type": deployment.queue_type,
                "x-tchu-dead-letter-queue": dlq,
                "x-tchu-retry-queues": {
                    "pattern": format!("{queue}.retry.<delay>ms"),
                    "description": "per-delay wait queues whose TTL dead-letters back to the service queue",
                    "retries": deployment.retries,
                },
            }),
        );
    }

    let mut operations = Map::new();
    let send_bindings = json!({ "amqp": {
        "deliveryMode": 2,
        "mandatory": false,
        "bindingVersion": AMQP_BINDING,
    } });
    for (topic, k) in &sends {
        let Some(ch) = channel_of.get(topic) else {
            continue;
        };
        operations.insert(
            keys.unique("operation", &format!("publish.{k}")),
            json!({
                "action": "send",
                "title": format!("publish {k}"),
                "summary": format!("publishes `{topic}` to exchange `{}`", deployment.exchange),
                "channel": { "$ref": format!("#/channels/{ch}") },
                "messages": [ { "$ref": format!("#/channels/{ch}/messages/{k}") } ],
                "bindings": send_bindings,
            }),
        );
    }
    for (topic, k, r) in &calls {
        let Some(ch) = channel_of.get(topic) else {
            continue;
        };
        operations.insert(
            keys.unique("operation", &format!("call.{k}")),
            json!({
                "action": "send",
                "title": format!("call {k}"),
                "summary": format!("RPC request on `{topic}`; the reply comes to the caller's reply-to"),
                "channel": { "$ref": format!("#/channels/{ch}") },
                "messages": [ { "$ref": format!("#/channels/{ch}/messages/{k}") } ],
                "reply": reply(ch, r),
                "bindings": send_bindings,
            }),
        );
    }
    let receive_bindings = json!({ "amqp": { "ack": true, "bindingVersion": AMQP_BINDING } });
    for s in &file.subscribes {
        let refs: Vec<Value> = received
            .iter()
            .filter(|m| pattern_matches(&s.pattern, &m.topic))
            .map(|m| json!({ "$ref": format!("#/channels/{queue_key}/messages/{}", m.key) }))
            .collect();
        let mut op = json!({
            "action": "receive",
            "title": format!("handler {}", s.id),
            "summary": format!("handler `{}` on pattern `{}`", s.id, s.pattern),
            "channel": { "$ref": format!("#/channels/{queue_key}") },
            "bindings": receive_bindings,
            "x-tchu-handler": s.id,
            "x-tchu-binding-pattern": s.pattern,
            "x-tchu-dead-letter-queue": dlq,
        });
        if !refs.is_empty() {
            op["messages"] = Value::Array(refs);
        }
        if let Some(n) = s.retries {
            op["x-tchu-retries"] = json!(n);
        }
        operations.insert(keys.unique("operation", &format!("receive.{}", s.id)), op);
    }
    for (topic, handler, k, r) in &serves {
        let Some(ch) = channel_of.get(topic) else {
            continue;
        };
        operations.insert(
            keys.unique("operation", &format!("serve.{handler}")),
            json!({
                "action": "receive",
                "title": format!("serve {k}"),
                "summary": format!("handler `{handler}` answers `{topic}`"),
                "channel": { "$ref": format!("#/channels/{queue_key}") },
                "messages": [ { "$ref": format!("#/channels/{queue_key}/messages/{k}") } ],
                "reply": reply(ch, r),
                "bindings": receive_bindings,
                "x-tchu-handler": handler,
                "x-tchu-binding-pattern": topic,
            }),
        );
    }

    let version = file.version.clone().unwrap_or_else(|| "0.0.0".to_owned());
    let service = &file.service;
    json!({
        "asyncapi": "3.0.0",
        "id": format!("urn:tchu:service:{}", sanitize(service)),
        "info": {
            "title": service,
            "version": version,
            "description": format!(
                "Events, subscriptions and RPC of `{service}`, generated by tchu from its \
                 `#[tchu::event]` and `#[tchu::subscribe]` items."
            ),
            "license": { "name": "MIT OR Apache-2.0" },
            "contact": { "name": service },
            "tags": [ { "name": "tchu" } ],
            "x-tchu-crate": file.crate_name,
            "x-tchu-version": file.tchu_version,
        },
        "servers": {
            "rabbitmq": {
                "host": deployment.host,
                "pathname": deployment.vhost,
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "title": "RabbitMQ",
                "description": format!("the broker; events go through exchange `{}`", deployment.exchange),
            },
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": file.schemas,
            "messages": component_messages,
        },
    })
}

fn reply(channel: &str, message: &str) -> Value {
    json!({
        "address": {
            "description": "the request's AMQP `reply_to` property",
            "location": "$message.header#/reply_to",
        },
        "channel": { "$ref": format!("#/channels/{channel}.reply") },
        "messages": [ { "$ref": format!("#/channels/{channel}.reply/messages/{message}") } ],
    })
}

fn short_name(type_name: &str) -> &str {
    type_name.rsplit("::").next().unwrap_or(type_name)
}

fn message_ref(key: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{key}") })
}

fn sanitize(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Keys that AsyncAPI accepts (`^[a-zA-Z0-9.\-_]+$`), unique per kind.
#[derive(Default)]
struct Keys(BTreeSet<(&'static str, String)>);

impl Keys {
    fn unique(&mut self, kind: &'static str, raw: &str) -> String {
        let base = sanitize(&raw.replace('*', "star").replace('#', "hash"));
        let mut key = base.clone();
        let mut n = 2;
        while self.0.contains(&(kind, key.clone())) {
            key = format!("{base}_{n}");
            n += 1;
        }
        self.0.insert((kind, key.clone()));
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_vhost_drop_credentials() {
        assert_eq!(
            host_and_vhost("amqp://u:p@rabbit:5673/%2f?heartbeat=5"),
            ("rabbit:5673".to_owned(), "/".to_owned())
        );
        assert_eq!(
            host_and_vhost("amqp://h/prod"),
            ("h:5672".to_owned(), "prod".to_owned())
        );
    }
}
