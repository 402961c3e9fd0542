//! The catalog: every event type and subscription linked into the binary, with the events'
//! JSON Schemas, and its [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! rendering.

pub mod asyncapi;
mod file;
pub mod fingerprint;
mod flags;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

pub use file::{CATALOG_FORMAT, Called, CatalogFile, Published, Served, ServiceInfo, Subscribed};
pub use flags::{handle_catalog_flags, service_info};

use crate::registry::{EventInfo, Registry};
use crate::retry::RetryPolicy;

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
    /// For a typed handler, its event type (`std::any::type_name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
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
                event_type: s.event_type.map(|f| f().to_owned()),
            })
            .collect()
    }
}

impl Catalog {
    pub(crate) fn build(infos: &[EventInfo], subscriptions: &[SubscriptionEntry]) -> Catalog {
        let (generated, schemas) = crate::schemas::generate(infos);
        let events = infos
            .iter()
            .zip(generated)
            .map(|(info, (schema, response_schema))| EventEntry {
                topic: info.topic.to_owned(),
                type_name: info.type_name.to_owned(),
                schema,
                response_type_name: info.response_type_name.map(str::to_owned),
                response_schema,
            })
            .collect();
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

    /// The [AsyncAPI 3.0.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
    /// document of `service` with the default deployment (local RabbitMQ, exchange
    /// `tchu_events`). See [`asyncapi::document`] for the full form (servers, AMQP bindings,
    /// `x-tchu-*` extensions); `--asyncapi` ([`catalog_flags!`](crate::catalog_flags)) uses the
    /// service's settings.
    pub fn asyncapi(&self, service: &str) -> Value {
        asyncapi::document(
            &self.file(&ServiceInfo::new(service)),
            &asyncapi::Deployment::default(),
        )
    }
}

fn short_name(type_name: &str) -> &str {
    type_name.rsplit("::").next().unwrap_or(type_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            event_type: None,
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
        let queue = &doc["channels"]["queue.svc"];
        assert_eq!(queue["address"], "svc");
        assert_eq!(queue["x-tchu-binding-patterns"], json!(["user.*"]));
        assert_eq!(queue["x-tchu-dead-letter-queue"], "svc.dlq");
        let recv = &doc["operations"]["receive.svc__audit"];
        assert_eq!(recv["action"], "receive");
        assert_eq!(recv["channel"]["$ref"], "#/channels/queue.svc");
        assert_eq!(recv["messages"].as_array().map(Vec::len), Some(2));
        assert_eq!(recv["x-tchu-binding-pattern"], "user.*");
        let call = &doc["operations"]["call.Get"];
        assert_eq!(
            call["reply"]["channel"]["$ref"],
            "#/channels/user.get.reply"
        );
        assert_eq!(doc["channels"]["user.get.reply"]["address"], Value::Null);
        assert_eq!(
            doc["channels"]["user.created"]["bindings"]["amqp"]["is"],
            "routingKey"
        );
    }

    #[test]
    fn catalog_file_sorts_published_called_served() {
        let c = sample();
        let f = c.file(&ServiceInfo::new("svc"));
        assert_eq!(f.tchu_catalog, CATALOG_FORMAT);
        assert_eq!(f.publishes.len(), 1);
        assert_eq!(f.publishes[0].topic, "user.created");
        assert_eq!(f.calls.len(), 1);
        assert_eq!(f.calls[0].reply.as_deref(), Some("Reply"));
        assert!(f.serves.is_empty());
        assert_eq!(f.subscribes[0].pattern, "user.*");
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(CatalogFile::from_json(&text).unwrap(), f);
        let other = text.replace("\"tchu_catalog\":1", "\"tchu_catalog\":9");
        assert_eq!(
            CatalogFile::from_json(&other).unwrap_err(),
            "catalog format 9; this tchu reads format 1"
        );
    }
}
