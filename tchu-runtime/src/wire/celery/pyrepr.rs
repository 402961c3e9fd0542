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

/// Per byte: [`ALWAYS`] when `repr` escapes it whatever the quote, [`IN_SINGLE`] / [`IN_DOUBLE`]
/// when it is that quote.
static ESCAPES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = ALWAYS;
        b += 1;
    }
    t[0x7f] = ALWAYS;
    t[b'\\' as usize] = ALWAYS;
    t[b'\'' as usize] = IN_SINGLE;
    t[b'"' as usize] = IN_DOUBLE;
    t
};
const ALWAYS: u8 = 1;
const IN_SINGLE: u8 = 2;
const IN_DOUBLE: u8 = 4;

/// An approximation of Python's `repr` of a `str`.
pub(super) fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        b'"'
    } else {
        b'\''
    };
    let mask = ALWAYS | if quote == b'"' { IN_DOUBLE } else { IN_SINGLE };
    out.reserve(s.len() + 2);
    out.push(char::from(quote));
    // Every character escaped is ASCII, so the runs between them are whole UTF-8 sequences.
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // One table lookup per plain byte (most of them).
        if ESCAPES[usize::from(b)] & mask == 0 {
            continue;
        }
        let escaped: Option<&str> = match b {
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            b'\'' => Some("\\'"),
            b'"' => Some("\\\""),
            _ => None,
        };
        out.push_str(&s[run..i]);
        run = i + 1;
        match escaped {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push_str(&s[run..]);
    out.push(char::from(quote));
}

/// `s` cut at [`REPR_MAX_CHARS`] characters, with `...` appended when it was cut.
pub(super) fn truncate_repr(mut s: String) -> String {
    // A string of at most that many bytes has at most that many characters.
    if s.len() <= REPR_MAX_CHARS {
        return s;
    }
    if let Some((idx, _)) = s.char_indices().nth(REPR_MAX_CHARS) {
        s.truncate(idx);
        s.push_str("...");
    }
    s
}
