//! The catalog: every event type and subscription linked into the binary, with the events'
//! JSON Schemas, and its [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! rendering.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::registry::{EventInfo, Registry};
use crate::retry::RetryPolicy;
use crate::topic::pattern_matches;

/// One event type of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventEntry {
    /// The topic it is published with.
    pub topic: String,
    /// The Rust type with its module path.
    pub type_name: String,
    /// The payload's JSON Schema: a `$ref` into [`Catalog::schemas`] for named types.
    pub schema: Value,
    /// The RPC response type as written in `response = ...`, for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_type_name: Option<String>,
    /// The response's JSON Schema, when the response type implements `JsonSchema`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
}

impl EventEntry {
    /// The type's name without its module path (`UserCreated`).
    pub fn name(&self) -> &str {
        short_name(&self.type_name)
    }

    /// Whether it is an RPC request.
    pub fn is_request(&self) -> bool {
        self.response_type_name.is_some()
    }
}

/// One subscription of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SubscriptionEntry {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The binding pattern.
    pub pattern: String,
    /// Retries of its own policy, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// Every event type (`#[tchu::event]`) and subscription (`#[tchu::subscribe]`) linked into
/// this binary. See [`catalog`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[non_exhaustive]
pub struct Catalog {
    /// Event types, sorted by topic then type name.
    pub events: Vec<EventEntry>,
    /// Subscriptions, sorted by id.
    pub subscriptions: Vec<SubscriptionEntry>,
    /// The named schemas the events' schemas refer to (`#/components/schemas/<name>`), one per
    /// Rust type, shared between events.
    pub schemas: BTreeMap<String, Value>,
}

/// Where the named schemas live, so that the `$ref`s are valid inside an AsyncAPI document.
const SCHEMAS_PATH: &str = "/components/schemas";

/// Reads the link-time registry: every `#[tchu::event]` and `#[tchu::subscribe]` of the binary
/// (handlers added with `App::subscribe` are not in it). Schemas are JSON Schema draft 7, as
/// AsyncAPI's default schema format expects.
pub fn catalog() -> Catalog {
    let mut infos: Vec<EventInfo> = inventory::iter::<EventInfo>.into_iter().copied().collect();
    infos.sort_by_key(|e| (e.topic, e.type_name));
    Catalog::build(&infos, &Registry::static_subscriptions_info())
}

impl Registry {
    fn static_subscriptions_info() -> Vec<SubscriptionEntry> {
        Registry::static_subscriptions()
            .into_iter()
            .map(|s| SubscriptionEntry {
                id: s.id.to_owned(),
                name: s.name.to_owned(),
                pattern: s.pattern.to_owned(),
                retries: s.retry.map(|r: RetryPolicy| r.retries),
            })
            .collect()
    }
}

impl Catalog {
    fn build(infos: &[EventInfo], subscriptions: &[SubscriptionEntry]) -> Catalog {
        let mut generator = schemars::generate::SchemaSettings::draft07()
            .with(|s| {
                s.definitions_path = SCHEMAS_PATH.into();
                s.meta_schema = None;
            })
            .into_generator();
        let events = infos
            .iter()
            .map(|info| EventEntry {
                topic: info.topic.to_owned(),
                type_name: info.type_name.to_owned(),
                schema: (info.schema)(&mut generator).to_value(),
                response_type_name: info.response_type_name.map(str::to_owned),
                response_schema: info
                    .response_schema
                    .and_then(|f| f(&mut generator))
                    .map(schemars::Schema::to_value),
            })
            .collect();
        let schemas = generator.take_definitions(true).into_iter().collect();
        Catalog {
            events,
            subscriptions: subscriptions.to_vec(),
            schemas,
        }
    }

    /// The event type registered as `name`, either the type's name (`UserCreated`) or its full
    /// path.
    pub fn event(&self, name: &str) -> Option<&EventEntry> {
        self.events
            .iter()
            .find(|e| e.type_name == name || e.name() == name)
    }

    /// The subscription with this id or name.
    pub fn subscription(&self, id_or_name: &str) -> Option<&SubscriptionEntry> {
        self.subscriptions
            .iter()
            .find(|s| s.id == id_or_name || s.name == id_or_name)
    }

    /// An [AsyncAPI 3.0.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
    /// document describing `service`:
    ///
    /// - `channels`: one per event topic and per subscription pattern, its `address` the
    ///   topic or pattern, its `messages` the event types whose topic it covers; RPC requests
    ///   get a reply channel too (`address: null`: the caller's reply-to).
    /// - `operations`: `send` for every event type (the service links them, so it may publish
    ///   them), `receive` for every subscription; each references its channel with `$ref`.
    /// - `components.messages` (one per event type, and per RPC response) and
    ///   `components.schemas` (the payloads' JSON Schemas).
    ///
    /// `info.version` is `"0.0.0"`; set `doc["info"]["version"]` to the service's version.
    pub fn asyncapi(&self, service: &str) -> Value {
        let mut keys = Keys::default();
        let messages: Vec<(String, &EventEntry)> = self
            .events
            .iter()
            .map(|e| (keys.unique("message", e.name()), e))
            .collect();

        let mut channels = Map::new();
        let mut operations = Map::new();
        let mut component_messages = Map::new();
        // Channel key by address, so an event topic and an identical pattern share one.
        let mut channel_of: BTreeMap<String, String> = BTreeMap::new();

        for (key, e) in &messages {
            component_messages.insert(
                key.clone(),
                json!({
                    "name": e.name(),
                    "title": e.name(),
                    "summary": format!("`{}` on topic `{}`", e.type_name, e.topic),
                    "contentType": "application/json",
                    "payload": e.schema,
                }),
            );
            if let Some(resp) = &e.response_type_name {
                let payload = e.response_schema.clone().unwrap_or_else(|| json!({}));
                component_messages.insert(
                    reply_key(key),
                    json!({
                        "name": format!("{}.reply", e.name()),
                        "title": resp,
                        "summary": format!("the reply to `{}`", e.name()),
                        "contentType": "application/json",
                        "payload": payload,
                    }),
                );
            }
        }

        let addresses: BTreeSet<&str> = self
            .events
            .iter()
            .map(|e| e.topic.as_str())
            .chain(self.subscriptions.iter().map(|s| s.pattern.as_str()))
            .collect();
        for address in addresses {
            let channel = keys.unique(
                "channel",
                &address.replace('*', "star").replace('#', "hash"),
            );
            let mut channel_messages = Map::new();
            for (key, e) in &messages {
                if pattern_matches(address, &e.topic) {
                    channel_messages.insert(key.clone(), message_ref(key));
                }
            }
            channels.insert(
                channel.clone(),
                json!({ "address": address, "messages": channel_messages }),
            );
            // Requests whose topic is exactly this address get a reply channel.
            for (key, e) in &messages {
                if e.is_request() && e.topic == address {
                    let reply = reply_key(key);
                    let mut m = Map::new();
                    m.insert(reply.clone(), message_ref(&reply));
                    channels.insert(
                        reply_key(&channel),
                        json!({
                            "address": null,
                            "description": "the caller's reply-to address (RabbitMQ direct reply-to)",
                            "messages": m,
                        }),
                    );
                }
            }
            channel_of.insert(address.to_owned(), channel);
        }

        for (key, e) in &messages {
            let Some(channel) = channel_of.get(&e.topic) else {
                continue;
            };
            let mut op = json!({
                "action": "send",
                "title": format!("publish {}", e.name()),
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": [ { "$ref": format!("#/channels/{channel}/messages/{key}") } ],
            });
            if e.is_request() {
                op["reply"] = reply_of(channel, key);
            }
            operations.insert(keys.unique("operation", &format!("send.{key}")), op);
        }

        for s in &self.subscriptions {
            let Some(channel) = channel_of.get(&s.pattern) else {
                continue;
            };
            let refs: Vec<Value> = messages
                .iter()
                .filter(|(_, e)| pattern_matches(&s.pattern, &e.topic))
                .map(|(key, _)| json!({ "$ref": format!("#/channels/{channel}/messages/{key}") }))
                .collect();
            let mut op = json!({
                "action": "receive",
                "title": s.name,
                "summary": format!("handler `{}` on `{}`", s.id, s.pattern),
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": refs,
            });
            if let Some((key, _)) = messages
                .iter()
                .find(|(_, e)| e.is_request() && e.topic == s.pattern)
            {
                op["reply"] = reply_of(channel, key);
            }
            operations.insert(keys.unique("operation", &format!("receive.{}", s.id)), op);
        }

        let schemas: Map<String, Value> = self
            .schemas
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": service,
                "version": "0.0.0",
                "description": format!(
                    "Events and subscriptions of `{service}`, generated by tchu from its \
                     `#[tchu::event]` and `#[tchu::subscribe]` items."
                ),
            },
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": {
                "schemas": schemas,
                "messages": component_messages,
            },
        })
    }
}

fn short_name(type_name: &str) -> &str {
    type_name.rsplit("::").next().unwrap_or(type_name)
}

fn message_ref(key: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{key}") })
}

fn reply_key(key: &str) -> String {
    format!("{key}.reply")
}

fn reply_of(channel: &str, message: &str) -> Value {
    let reply_channel = reply_key(channel);
    let reply_message = reply_key(message);
    json!({
        "address": {
            "description": "the request's AMQP `reply_to` property",
            "location": "$message.header#/reply_to",
        },
        "channel": { "$ref": format!("#/channels/{reply_channel}") },
        "messages": [ { "$ref": format!("#/channels/{reply_channel}/messages/{reply_message}") } ],
    })
}

/// Keys that AsyncAPI accepts (`^[a-zA-Z0-9.\-_]+$`), unique per kind.
#[derive(Default)]
struct Keys(BTreeSet<(&'static str, String)>);

impl Keys {
    fn unique(&mut self, kind: &'static str, raw: &str) -> String {
        let base: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
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

    #[derive(schemars::JsonSchema)]
    #[expect(dead_code, reason = "only its schema is used")]
    struct Created {
        id: u64,
    }

    #[derive(schemars::JsonSchema)]
    #[expect(dead_code, reason = "only its schema is used")]
    struct Reply {
        ok: bool,
    }

    fn reply_schema(g: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(g.subschema_for::<Reply>())
    }

    fn sample() -> Catalog {
        let infos = [
            EventInfo::new(
                "user.created",
                "svc::Created",
                crate::registry::schema_of::<Created>,
            ),
            EventInfo::new("user.get", "svc::Get", crate::registry::object_schema)
                .with_response("Reply", reply_schema),
        ];
        let subs = [SubscriptionEntry {
            id: "svc::audit".into(),
            name: "audit".into(),
            pattern: "user.*".into(),
            retries: None,
        }];
        Catalog::build(&infos, &subs)
    }

    #[test]
    fn schemas_are_shared_components() {
        let c = sample();
        assert_eq!(
            c.events[0].schema,
            json!({ "$ref": "#/components/schemas/Created" })
        );
        assert!(c.schemas.contains_key("Created"));
        assert!(c.schemas.contains_key("Reply"));
    }

    #[test]
    fn asyncapi_links_operations_to_channels() {
        let doc = sample().asyncapi("svc");
        assert_eq!(doc["asyncapi"], "3.0.0");
        assert_eq!(doc["channels"]["user.star"]["address"], "user.*");
        let recv = &doc["operations"]["receive.svc__audit"];
        assert_eq!(recv["action"], "receive");
        assert_eq!(recv["channel"]["$ref"], "#/channels/user.star");
        assert_eq!(recv["messages"].as_array().map(Vec::len), Some(2));
        let send = &doc["operations"]["send.Get"];
        assert_eq!(
            send["reply"]["channel"]["$ref"],
            "#/channels/user.get.reply"
        );
        assert_eq!(doc["channels"]["user.get.reply"]["address"], Value::Null);
    }
}
