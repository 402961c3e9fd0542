//! The [`Event`] trait that `#[tchu::event]` implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed event: a topic, a payload that serializes to JSON and validates, and for RPC
/// requests the response type. Implemented by `#[tchu::event(topic = "...")]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tchu event",
    note = "add `#[tchu::event(topic = \"...\")]` to the struct"
)]
pub trait Event:
    Serialize + DeserializeOwned + validator::Validate + Send + Sync + 'static
{
    /// The topic (routing key) it is published with.
    const TOPIC: &'static str;
    /// The reply type when the event is an RPC request; `()` for broadcast events.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// Writes the JSON Schema of a type into a shared generator and returns it (a `$ref` into the
/// generator's definitions for named types, so nested types are shared between events).
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// Like [`SchemaFn`], for a type that may have no schema: `None` when it does not implement
/// `JsonSchema` (RPC response types are not required to).
pub type OptionalSchemaFn = fn(&mut schemars::SchemaGenerator) -> Option<schemars::Schema>;

/// One event type registered at link time by `#[tchu::event]`, for the catalog.
#[derive(Debug, Clone, Copy)]
pub struct EventInfo {
    /// The topic it is published with.
    pub topic: &'static str,
    /// The Rust type, with its module path (`my_service::events::UserCreated`).
    pub type_name: &'static str,
    /// The RPC response type as written in `response = ...`; `None` for broadcast events.
    pub response_type_name: Option<&'static str>,
    /// The payload's JSON Schema.
    pub schema: SchemaFn,
    /// The response's JSON Schema, when the event is an RPC request.
    pub response_schema: Option<OptionalSchemaFn>,
}

impl EventInfo {
    /// Used by the macro; `const` so `inventory::submit!` accepts it.
    pub const fn new(topic: &'static str, type_name: &'static str, schema: SchemaFn) -> Self {
        EventInfo {
            topic,
            type_name,
            response_type_name: None,
            schema,
            response_schema: None,
        }
    }

    /// Marks the event as an RPC request answered with `type_name` (used by the macro).
    pub const fn with_response(
        mut self,
        type_name: &'static str,
        schema: OptionalSchemaFn,
    ) -> Self {
        self.response_type_name = Some(type_name);
        self.response_schema = Some(schema);
        self
    }
}

inventory::collect!(EventInfo);

/// The [`SchemaFn`] of a type that implements `JsonSchema`.
pub fn schema_of<T: schemars::JsonSchema + ?Sized>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<T>()
}

/// The [`SchemaFn`] of an event declared with `schema = false`: any JSON object.
pub fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object" })
}
