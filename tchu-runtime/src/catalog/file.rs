//! Catalog files: one service's contracts as a versioned JSON document, the input of
//! `tchu lint`, `tchu diff` and `tchu map`. Written by [`catalog_flags!`](crate::catalog_flags)
//! (`--catalog`), or by hand for a Python tchu-tchu service (see `docs/contracts.md`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Catalog;

/// The version of the catalog file format this build writes and reads.
pub const CATALOG_FORMAT: u32 = 1;

/// One service's contracts: what it publishes, subscribes to, serves and calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CatalogFile {
    /// The file format's version ([`CATALOG_FORMAT`]).
    pub tchu_catalog: u32,
    /// The service (its queue name).
    pub service: String,
    /// `rust` (written by tchu) or `python` (a tchu-tchu service, described by hand).
    #[serde(default = "rust")]
    pub language: String,
    /// The service's crate (or package) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crate_name: Option<String>,
    /// The service's crate (or package) version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The tchu version that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tchu_version: Option<String>,
    /// The topic exchange (default `tchu_events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// Broadcast events it publishes.
    #[serde(default)]
    pub publishes: Vec<Published>,
    /// Its subscriptions (RPC responders are in [`serves`](Self::serves)).
    #[serde(default)]
    pub subscribes: Vec<Subscribed>,
    /// RPC requests it answers.
    #[serde(default)]
    pub serves: Vec<Served>,
    /// RPC requests it sends.
    #[serde(default)]
    pub calls: Vec<Called>,
    /// Named schemas the others refer to with `{"$ref": "#/components/schemas/<name>"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, Value>,
}

fn rust() -> String {
    "rust".to_owned()
}

/// A broadcast event a service publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Published {
    /// Its topic.
    pub topic: String,
    /// The type's name (`users::events::UserCreated`, or a Python class name).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// The payload's JSON Schema; absent when unknown (no schema checks then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The schema's fingerprint, as sent in the `tchu-schema` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Subscribed {
    /// The handler's id.
    pub id: String,
    /// The binding pattern.
    pub pattern: String,
    /// For a typed handler, its event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// For a typed handler, the schema it decodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Retries of its own policy, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// An RPC request a service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Served {
    /// The request topic.
    pub topic: String,
    /// The handler's id.
    pub handler: String,
    /// The request type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The request's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The reply type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The reply's schema, when the reply type has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_schema: Option<Value>,
}

/// An RPC request a service sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Called {
    /// The request topic.
    pub topic: String,
    /// The request type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The request's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The reply type it expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The reply's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_schema: Option<Value>,
}

/// Who the catalog file describes, beyond what the link-time registry knows.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// The service (queue) name.
    pub service: String,
    /// Its crate name.
    pub crate_name: Option<String>,
    /// Its crate version.
    pub version: Option<String>,
    /// The exchange.
    pub exchange: Option<String>,
    /// The event types (`std::any::type_name`) it publishes, when declared. `None`: every
    /// linked broadcast event that no typed handler of the binary receives.
    pub publishes: Option<Vec<String>>,
}

impl ServiceInfo {
    /// A service with this name and nothing else known.
    pub fn new(service: impl Into<String>) -> Self {
        ServiceInfo {
            service: service.into(),
            ..ServiceInfo::default()
        }
    }
}

impl Catalog {
    /// This binary's catalog file. Which linked event types count as published:
    /// `info.publishes` when given; otherwise every broadcast event no typed handler of the
    /// binary receives. RPC requests with a typed handler here are served, the others called.
    pub fn file(&self, info: &ServiceInfo) -> CatalogFile {
        let received: BTreeSet<&str> = self
            .subscriptions
            .iter()
            .filter_map(|s| s.event_type.as_deref())
            .collect();
        let declared = |type_name: &str| {
            info.publishes
                .as_ref()
                .map(|p| p.iter().any(|t| t == type_name))
        };
        let mut file = CatalogFile {
            tchu_catalog: CATALOG_FORMAT,
            service: info.service.clone(),
            language: rust(),
            crate_name: info.crate_name.clone(),
            version: info.version.clone(),
            tchu_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            exchange: info.exchange.clone(),
            publishes: Vec::new(),
            subscribes: Vec::new(),
            serves: Vec::new(),
            calls: Vec::new(),
            schemas: self.schemas.clone(),
        };
        for e in &self.events {
            let here = received.contains(e.type_name.as_str());
            if e.is_request() {
                for s in self
                    .subscriptions
                    .iter()
                    .filter(|s| s.event_type.as_deref() == Some(e.type_name.as_str()))
                {
                    file.serves.push(Served {
                        topic: e.topic.clone(),
                        handler: s.id.clone(),
                        request: Some(e.type_name.clone()),
                        schema: Some(e.schema.clone()),
                        reply: e.response_type_name.clone(),
                        reply_schema: e.response_schema.clone(),
                    });
                }
                if declared(&e.type_name).unwrap_or(!here) {
                    file.calls.push(Called {
                        topic: e.topic.clone(),
                        request: Some(e.type_name.clone()),
                        schema: Some(e.schema.clone()),
                        reply: e.response_type_name.clone(),
                        reply_schema: e.response_schema.clone(),
                    });
                }
            } else if declared(&e.type_name).unwrap_or(!here) {
                file.publishes.push(Published {
                    topic: e.topic.clone(),
                    type_name: Some(e.type_name.clone()),
                    fingerprint: Some(super::fingerprint::fingerprint(&e.schema, &self.schemas)),
                    schema: Some(e.schema.clone()),
                });
            }
        }
        for s in &self.subscriptions {
            let event = s
                .event_type
                .as_deref()
                .and_then(|t| self.events.iter().find(|e| e.type_name == t));
            if event.is_some_and(EventEntry::is_request) {
                continue;
            }
            file.subscribes.push(Subscribed {
                id: s.id.clone(),
                pattern: s.pattern.clone(),
                event: s.event_type.clone(),
                schema: event.map(|e| e.schema.clone()),
                retries: s.retries,
            });
        }
        file
    }
}

use super::EventEntry;

impl CatalogFile {
    /// Reads a catalog file, refusing other format versions.
    ///
    /// # Errors
    /// Not JSON, not a catalog, or a format version this build does not read.
    pub fn from_json(text: &str) -> Result<CatalogFile, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        match v.get("tchu_catalog").and_then(Value::as_u64) {
            Some(n) if n == u64::from(CATALOG_FORMAT) => {}
            Some(n) => {
                return Err(format!(
                    "catalog format {n}; this tchu reads format {CATALOG_FORMAT}"
                ));
            }
            None => {
                return Err(format!(
                    "no `\"tchu_catalog\": {CATALOG_FORMAT}` field: not a tchu catalog file"
                ));
            }
        }
        serde_json::from_value(v).map_err(|e| format!("not a tchu catalog: {e}"))
    }
}
