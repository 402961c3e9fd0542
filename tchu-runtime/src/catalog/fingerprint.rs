//! Schema fingerprints: a short, stable hash of an event's JSON Schema, sent in the
//! [`SCHEMA_HEADER`] of every typed publish and compared by typed handlers on receipt.
//!
//! The fingerprint covers what decoding depends on: property names, types, `required`,
//! formats, enums, nested types (inlined, so renaming a nested Rust type changes nothing).
//! Doc comments (`description`), `title` and `examples` are left out.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::message::{HeaderValue, Headers};
use crate::registry::EventInfo;
pub use crate::schema_hash::{SCHEMA_HEADER, SCHEMA_MISMATCH_TOTAL, fingerprint, ref_name};

/// The fingerprints of every event type linked into the binary, by Rust type name. Derived
/// once from the link-time registry (which cannot change while the process runs).
fn linked() -> &'static HashMap<&'static str, String> {
    static LINKED: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    LINKED.get_or_init(|| {
        let infos: Vec<EventInfo> = inventory::iter::<EventInfo>.into_iter().copied().collect();
        let catalog = super::Catalog::build(&infos, &[]);
        catalog
            .events
            .iter()
            .zip(&infos)
            .map(|(e, info)| (info.type_name, fingerprint(&e.schema, &catalog.schemas)))
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
