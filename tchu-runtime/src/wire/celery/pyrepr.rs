//! Python's text forms: `json.dumps` with its default separators, and `repr` of a `str`.

use std::fmt::Write as _;
use std::io;

use serde::Serialize;

use super::REPR_MAX_CHARS;

/// A serde_json formatter with Python `json.dumps`' default separators (`", "` and `": "`).
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Serializes like Python's `json.dumps` (separators only; see the module docs).
pub(super) fn py_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    if value.serialize(&mut ser).is_err() {
        // Only maps with non-string keys fail, and none are serialized here; fall back to
        // serde's own output rather than an empty body.
        return serde_json::to_vec(value).unwrap_or_default();
    }
    out
}

/// An approximation of Python's `repr` of a `str`.
pub(super) fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

pub(super) fn truncate_repr(mut s: String) -> String {
    if let Some((idx, _)) = s.char_indices().nth(REPR_MAX_CHARS) {
        s.truncate(idx);
        s.push_str("...");
    }
    s
}
