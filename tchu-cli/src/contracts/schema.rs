//! Whether what a sender sends can be decoded by a receiver: JSON Schema (draft 7, as
//! schemars writes it) compared field by field.
//!
//! `compare(sender, receiver)` lists each way a message valid for the sender's schema may be
//! refused by the receiver's: a field the receiver requires that the sender does not send (or
//! only sometimes), a type the receiver does not accept, a narrower integer range, enum values
//! the receiver does not know, a closed object (`additionalProperties: false`) receiving a
//! field it does not list.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The schemas `$ref`s point into, and the root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doc<'a> {
    pub(crate) schema: &'a Value,
    pub(crate) defs: &'a BTreeMap<String, Value>,
}

/// One way a sender's message may not decode on the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The field path (`email`, `lines[].sku`; empty for the payload itself).
    pub(crate) field: String,
    /// What is wrong, in words.
    pub(crate) what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "the payload: {}", self.what)
        } else {
            write!(f, "field `{}`: {}", self.field, self.what)
        }
    }
}

/// How deep nested schemas are followed (recursive types stop here).
const MAX_DEPTH: usize = 24;

/// Every problem a receiver may have with what the sender sends.
pub(crate) fn compare(sender: Doc<'_>, receiver: Doc<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    walk(
        sender,
        receiver,
        sender.schema,
        receiver.schema,
        "",
        0,
        &mut out,
    );
    out
}

fn resolve<'a>(v: &'a Value, defs: &'a BTreeMap<String, Value>) -> &'a Value {
    let mut v = v;
    for _ in 0..MAX_DEPTH {
        match v
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(tchu::fingerprint::ref_name)
            .and_then(|n| defs.get(n))
        {
            Some(next) => v = next,
            None => break,
        }
    }
    v
}

/// The JSON types a schema admits; `None` for any. `integer` is a `number` too.
fn types(v: &Value, defs: &BTreeMap<String, Value>, depth: usize) -> Option<BTreeSet<String>> {
    let v = resolve(v, defs);
    if v == &Value::Bool(true) || v.as_object().is_some_and(serde_json::Map::is_empty) {
        return None;
    }
    if let Some(t) = v.get("type") {
        let set: BTreeSet<String> = match t {
            Value::String(s) => [s.clone()].into(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => return None,
        };
        return Some(set);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = v.get(key) {
            if depth > MAX_DEPTH {
                return None;
            }
            let mut set = BTreeSet::new();
            for a in alts {
                set.extend(types(a, defs, depth + 1)?);
            }
            return Some(set);
        }
    }
    if let Some(Value::Array(all)) = v.get("allOf")
        && let Some(first) = all.first()
    {
        return types(first, defs, depth + 1);
    }
    if let Some(c) = v.get("const") {
        return Some([json_type(c).to_owned()].into());
    }
    if let Some(Value::Array(values)) = v.get("enum") {
        return Some(values.iter().map(|x| json_type(x).to_owned()).collect());
    }
    if v.get("properties").is_some() {
        return Some(["object".to_owned()].into());
    }
    None
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The non-null alternative of an `Option<T>` (`anyOf: [T, {type: null}]`), else itself.
fn non_null<'a>(v: &'a Value, defs: &'a BTreeMap<String, Value>) -> &'a Value {
    let v = resolve(v, defs);
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = v.get(key) {
            let rest: Vec<&Value> = alts
                .iter()
                .filter(|a| resolve(a, defs).get("type") != Some(&Value::from("null")))
                .collect();
            if let [one] = rest.as_slice() {
                return resolve(one, defs);
            }
        }
    }
    v
}

/// The integer range a schema allows, from `minimum`/`maximum` and schemars' `format`.
fn int_range(v: &Value) -> (f64, f64) {
    let by_format = match v.get("format").and_then(Value::as_str) {
        Some("uint8") => (0.0, 255.0),
        Some("uint16") => (0.0, 65_535.0),
        Some("uint32") => (0.0, 4_294_967_295.0),
        Some("uint64" | "uint") => (0.0, 18_446_744_073_709_551_615.0),
        Some("int8") => (-128.0, 127.0),
        Some("int16") => (-32_768.0, 32_767.0),
        Some("int32") => (-2_147_483_648.0, 2_147_483_647.0),
        Some("int64" | "int") => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_807.0),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    };
    let lo = v
        .get("minimum")
        .and_then(Value::as_f64)
        .unwrap_or(by_format.0);
    let hi = v
        .get("maximum")
        .and_then(Value::as_f64)
        .unwrap_or(by_format.1);
    (lo.max(by_format.0), hi.min(by_format.1))
}

fn show(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(" or ")
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(
    sd: Doc<'_>,
    rd: Doc<'_>,
    s: &Value,
    r: &Value,
    path: &str,
    depth: usize,
    out: &mut Vec<Problem>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let problem = |what: String| Problem {
        field: path.to_owned(),
        what,
    };
    let s_types = types(s, sd.defs, 0);
    let Some(r_types) = types(r, rd.defs, 0) else {
        return; // The receiver takes anything.
    };
    let Some(s_types) = s_types else {
        out.push(problem(format!(
            "the sender's schema allows any value; the receiver accepts only {}",
            show(&r_types)
        )));
        return;
    };
    let accepted =
        |t: &String| r_types.contains(t) || (t == "integer" && r_types.contains("number"));
    let refused: BTreeSet<String> = s_types.iter().filter(|t| !accepted(t)).cloned().collect();
    if !refused.is_empty() {
        out.push(problem(format!(
            "type mismatch: the sender sends {}, the receiver accepts {}",
            show(&s_types),
            show(&r_types)
        )));
        return;
    }
    let sv = non_null(s, sd.defs);
    let rv = non_null(r, rd.defs);

    // Enums: every value the sender may send must be known.
    if let Some(Value::Array(r_enum)) = rv.get("enum") {
        match sv.get("enum") {
            Some(Value::Array(s_enum)) => {
                let unknown: Vec<String> = s_enum
                    .iter()
                    .filter(|x| !r_enum.contains(x))
                    .map(Value::to_string)
                    .collect();
                if !unknown.is_empty() {
                    out.push(problem(format!(
                        "values {} are not in the receiver's enum",
                        unknown.join(", ")
                    )));
                }
            }
            _ => out.push(problem(
                "the receiver accepts only an enum of values; the sender's value is not restricted"
                    .to_owned(),
            )),
        }
    }

    // Integers: the receiver's range must hold the sender's.
    if s_types.contains("integer") && r_types.contains("integer") && !r_types.contains("number") {
        let (slo, shi) = int_range(sv);
        let (rlo, rhi) = int_range(rv);
        if slo < rlo || shi > rhi {
            out.push(problem(format!(
                "integer range narrowed: the sender may send {} to {}, the receiver holds {} to {}",
                num(slo),
                num(shi),
                num(rlo),
                num(rhi)
            )));
        }
    }
    if s_types.contains("number") && r_types.contains("integer") && !r_types.contains("number") {
        // Already refused above ("number" not accepted by an integer-only receiver).
    }

    // Strings: a format the receiver checks that the sender does not promise.
    if s_types.contains("string")
        && let Some(rf) = rv.get("format").and_then(Value::as_str)
        && sv.get("format").and_then(Value::as_str) != Some(rf)
    {
        out.push(problem(format!(
            "the receiver requires format `{rf}`, the sender does not promise it"
        )));
    }

    // Arrays.
    if s_types.contains("array")
        && let (Some(si), Some(ri)) = (sv.get("items"), rv.get("items"))
    {
        walk(sd, rd, si, ri, &format!("{path}[]"), depth + 1, out);
    }

    // Objects.
    if s_types.contains("object") && r_types.contains("object") {
        let empty = serde_json::Map::new();
        let s_props = sv
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let r_props = rv
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let required = |v: &Value| -> BTreeSet<String> {
            v.get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (s_req, r_req) = (required(sv), required(rv));
        for f in &r_req {
            let field = join(path, f);
            if !s_props.contains_key(f) {
                out.push(Problem {
                    field,
                    what: "required by the receiver, not sent by the sender".to_owned(),
                });
            } else if !s_req.contains(f) {
                out.push(Problem {
                    field,
                    what: "required by the receiver, optional for the sender (may be missing)"
                        .to_owned(),
                });
            }
        }
        let closed = rv.get("additionalProperties") == Some(&Value::Bool(false));
        for (f, s_f) in s_props {
            match r_props.get(f) {
                Some(r_f) => walk(sd, rd, s_f, r_f, &join(path, f), depth + 1, out),
                None if closed => out.push(Problem {
                    field: join(path, f),
                    what: "sent by the sender, refused by the receiver (`additionalProperties: false`)"
                        .to_owned(),
                }),
                None => {}
            }
        }
    }
}

fn num(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 {
            "+inf".to_owned()
        } else {
            "-inf".to_owned()
        }
    } else {
        format!("{x:.0}")
    }
}

/// The fields of an object schema with their JSON types, for reports (`email: string`).
pub(crate) fn fields(doc: Doc<'_>) -> Vec<String> {
    let v = non_null(doc.schema, doc.defs);
    let Some(props) = v.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(k, p)| match types(p, doc.defs, 0) {
            Some(t) => format!("{k}: {}", show(&t)),
            None => format!("{k}: any"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(sender: Value, receiver: Value) -> Vec<String> {
        let defs = BTreeMap::new();
        compare(
            Doc {
                schema: &sender,
                defs: &defs,
            },
            Doc {
                schema: &receiver,
                defs: &defs,
            },
        )
        .into_iter()
        .map(|p| p.to_string())
        .collect()
    }

    #[test]
    fn same_schema_has_no_problem() {
        let s = json!({"type": "object", "properties": {"id": {"type": "integer", "format": "uint64", "minimum": 0}}, "required": ["id"]});
        assert!(problems(s.clone(), s).is_empty());
    }

    #[test]
    fn refs_options_and_nesting() {
        let mut defs = BTreeMap::new();
        defs.insert("Line".to_owned(), json!({"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}));
        let sender = json!({"type": "object", "properties": {"lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}}}, "required": ["lines"]});
        let mut rdefs = BTreeMap::new();
        rdefs.insert("Line".to_owned(), json!({"type": "object", "properties": {"sku": {"type": "integer"}}, "required": ["sku"]}));
        let got: Vec<String> = compare(
            Doc {
                schema: &sender,
                defs: &defs,
            },
            Doc {
                schema: &sender,
                defs: &rdefs,
            },
        )
        .into_iter()
        .map(|p| p.to_string())
        .collect();
        assert_eq!(
            got,
            [
                "field `lines[].sku`: type mismatch: the sender sends string, the receiver accepts integer"
            ]
        );
        let opt = json!({"type": "object", "properties": {"n": {"anyOf": [{"type": "string"}, {"type": "null"}]}}});
        let req =
            json!({"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]});
        assert_eq!(
            problems(opt, req),
            [
                "field `n`: required by the receiver, optional for the sender (may be missing)",
                "field `n`: type mismatch: the sender sends null or string, the receiver accepts string"
            ]
        );
    }
}
