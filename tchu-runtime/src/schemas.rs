//! The JSON Schemas of the event types linked into the binary (as the catalog shows them) and
//! their fingerprints by type, which a typed publish stamps and a typed handler compares. Below
//! the client and the handler layer: it reads only the link-time [`EventInfo`]s, never the
//! catalog.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::Value;

use crate::event::EventInfo;
use crate::message::{HeaderValue, Headers};
use crate::schema_hash::{SCHEMA_HEADER, fingerprint};

/// Where the named schemas live, so that the `$ref`s are valid inside an AsyncAPI document.
const SCHEMAS_PATH: &str = "/components/schemas";

/// One event's payload schema and, for an RPC request, its response's.
pub(crate) type EventSchemas = (Value, Option<Value>);

/// The payload and response schemas of `infos`, in order, and the named schemas their `$ref`s
/// point into (JSON Schema draft 7, one shared generator).
pub(crate) fn generate(infos: &[EventInfo]) -> (Vec<EventSchemas>, BTreeMap<String, Value>) {
    let mut generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = SCHEMAS_PATH.into();
            s.meta_schema = None;
        })
        .into_generator();
    let generated = infos
        .iter()
        .map(|info| {
            let schema = (info.schema)(&mut generator).to_value();
            let response = info
                .response_schema
                .and_then(|f| f(&mut generator))
                .map(schemars::Schema::to_value);
            (schema, response)
        })
        .collect();
    let schemas = generator.take_definitions(true).into_iter().collect();
    (generated, schemas)
}

/// The fingerprints of every event type linked into the binary, by Rust type name. Derived
/// once from the link-time registry (which cannot change while the process runs).
fn linked() -> &'static HashMap<&'static str, String> {
    static LINKED: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    LINKED.get_or_init(|| {
        let infos: Vec<EventInfo> = inventory::iter::<EventInfo>.into_iter().copied().collect();
        let (generated, schemas) = generate(&infos);
        generated
            .iter()
            .zip(&infos)
            .map(|((schema, _), info)| (info.type_name, fingerprint(schema, &schemas)))
            .collect()
    })
}

/// The fingerprint of event type `E`, when it is registered (`#[tchu::event]`).
pub fn of<E: crate::Event>() -> Option<&'static str> {
    linked().get(std::any::type_name::<E>()).map(String::as_str)
}

/// What a typed handler of `E` makes of a received message's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaCheck {
    /// No fingerprint (Python tchu-tchu, `tchu publish`, an untyped publish), or `E` has none.
    Unknown,
    /// The sender's schema is the handler's.
    Same,
    /// The sender was compiled against another schema.
    Mismatch {
        /// The fingerprint of the handler's event type.
        expected: String,
        /// The fingerprint the message carries.
        received: String,
    },
}

/// Compares a received message's fingerprint with `E`'s.
pub fn check<E: crate::Event>(headers: &Headers) -> SchemaCheck {
    let Some(received) = headers.get(SCHEMA_HEADER).and_then(HeaderValue::as_str) else {
        return SchemaCheck::Unknown;
    };
    match of::<E>() {
        None => SchemaCheck::Unknown,
        Some(expected) if expected == received => SchemaCheck::Same,
        Some(expected) => SchemaCheck::Mismatch {
            expected: expected.to_owned(),
            received: received.to_owned(),
        },
    }
}
