//! Schema fingerprints: a short, stable hash of an event's JSON Schema, sent in the
//! [`SCHEMA_HEADER`] of every typed publish and compared by typed handlers on receipt.
//!
//! The fingerprint covers what decoding depends on: property names, types, `required`,
//! formats, enums, nested types (inlined, so renaming a nested Rust type changes nothing).
//! Doc comments (`description`), `title` and `examples` are left out.

pub use crate::schema_hash::{SCHEMA_HEADER, SCHEMA_MISMATCH_TOTAL, fingerprint, ref_name};
pub use crate::schemas::{SchemaCheck, check, of};
