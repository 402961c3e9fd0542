//! The schema fingerprint itself: a short, stable hash of a JSON Schema and the header that
//! carries it. A leaf (imports nothing of the crate), so `wire/` stamps it and the handler
//! layer compares it without reaching up into the catalog; [`crate::fingerprint`] re-exports it
//! with the registry-backed lookups.
//!
//! The fingerprint covers what decoding depends on: property names, types, `required`,
//! formats, enums, nested types (inlined, so renaming a nested Rust type changes nothing).
//! Doc comments (`description`), `title` and `examples` are left out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// The AMQP header carrying the publisher's schema fingerprint (absent from Python tchu-tchu
/// messages, which are accepted as before).
pub const SCHEMA_HEADER: &str = "tchu-schema";

/// The keys left out of a fingerprint: documentation, not shape.
const DOC_KEYS: [&str; 4] = ["description", "title", "examples", "$comment"];

/// How deep nested `$ref`s are inlined; deeper (recursive types) stays a `$ref` by name.
const MAX_DEPTH: usize = 32;

/// The fingerprint of a schema whose `$ref`s point into `defs` (`#/components/schemas/<name>`
/// or `#/definitions/<name>` or `#/$defs/<name>`): 16 hex digits (64-bit FNV-1a of the
/// canonical JSON, keys sorted, refs inlined, documentation removed).
pub fn fingerprint(schema: &Value, defs: &BTreeMap<String, Value>) -> String {
    let mut stack = BTreeSet::new();
    let shape = inline(schema, defs, &mut stack, 0);
    let mut text = String::new();
    canonical(&shape, &mut text);
    format!("{:016x}", fnv1a(text.as_bytes()))
}

/// The definition name a local `$ref` points at.
pub fn ref_name(reference: &str) -> Option<&str> {
    ["#/components/schemas/", "#/definitions/", "#/$defs/"]
        .iter()
        .find_map(|p| reference.strip_prefix(p))
}

fn inline(
    v: &Value,
    defs: &BTreeMap<String, Value>,
    stack: &mut BTreeSet<String>,
    depth: usize,
) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(name) = m.get("$ref").and_then(Value::as_str).and_then(ref_name)
                && let Some(def) = defs.get(name)
                && depth < MAX_DEPTH
                && !stack.contains(name)
            {
                stack.insert(name.to_owned());
                let out = inline(def, defs, stack, depth + 1);
                stack.remove(name);
                return out;
            }
            let mut out = Map::new();
            for (k, x) in m {
                if DOC_KEYS.contains(&k.as_str()) {
                    continue;
                }
                out.insert(k.clone(), inline(x, defs, stack, depth + 1));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| inline(x, defs, stack, depth + 1))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// JSON with object keys sorted, whatever `serde_json`'s map order is.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(*k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Counter of received messages whose fingerprint differs from the typed handler's, by
/// `topic`, `expected` (the handler's) and `received` (the sender's).
pub const SCHEMA_MISMATCH_TOTAL: &str = "tchu_schema_mismatch_total";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(v: Value) -> String {
        fingerprint(&v, &BTreeMap::new())
    }

    #[test]
    fn documentation_and_key_order_do_not_count() {
        let a = json!({"type": "object", "properties": {"id": {"type": "integer"}, "e": {"type": "string"}}, "required": ["id"]});
        let b = json!({"required": ["id"], "description": "doc", "title": "T", "type": "object",
            "properties": {"e": {"type": "string", "description": "x"}, "id": {"type": "integer"}}});
        assert_eq!(fp(a.clone()), fp(b));
        assert_eq!(fp(a.clone()).len(), 16);
        let renamed = json!({"type": "object", "properties": {"uid": {"type": "integer"}, "e": {"type": "string"}}, "required": ["uid"]});
        assert_ne!(fp(a), fp(renamed));
    }

    #[test]
    fn nested_types_are_inlined_and_recursion_stops() {
        let mut defs = BTreeMap::new();
        defs.insert(
            "Line".to_owned(),
            json!({"type": "object", "properties": {"sku": {"type": "string"}}}),
        );
        defs.insert("Tree".to_owned(), json!({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}}}}));
        let by_ref = json!({"type": "array", "items": {"$ref": "#/components/schemas/Line"}});
        let inline = json!({"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}});
        assert_eq!(fingerprint(&by_ref, &defs), fp(inline));
        let tree = fingerprint(&json!({"$ref": "#/components/schemas/Tree"}), &defs);
        assert_eq!(tree.len(), 16);
    }
}
