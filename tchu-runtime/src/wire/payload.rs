//! A received event's payload, kept as the bytes it arrived in and parsed on demand (#14):
//! typed handlers deserialize straight from them, and a `serde_json::Value` tree is built only
//! when a handler or an extractor asks for one ([`Payload::value`]).
//!
//! [`decode`] is [`wire::decode`](crate::wire::decode) for the dispatcher: the same checks,
//! errors and results, except that the event of a native message or of a Celery
//! `dispatch_event` task of the usual shape is validated (one parse without building anything)
//! and kept raw. Every other shape, and every error, goes through `wire::decode` itself, so
//! both agree by construction there; a test checks they agree on the rest.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Value};

use crate::message::{HeaderValue, Message};
use crate::wire::celery::decode::{EmbedObject, FastBody, truthy};
use crate::wire::celery::{DISPATCH_TASK, META_KEY};
use crate::wire::{DecodeError, Decoded, Kind, Limits, WireFormat};

/// The event of one delivery, raw until asked for.
pub(crate) struct Payload {
    raw: Raw,
    value: OnceLock<Value>,
}

/// Where the event's JSON is.
enum Raw {
    /// Parsed already: `value` holds it.
    Parsed,
    /// The body of a native message: the event object itself.
    Native(Vec<u8>),
    /// The `args[0]` string of a Celery `dispatch_event` task: the event object with its
    /// `_tchu_meta` entry, which handlers never see.
    Celery(String),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.raw, self.value.get()) {
            (_, Some(v)) => f.debug_tuple("Payload").field(v).finish(),
            (Raw::Native(b), None) => f
                .debug_tuple("Payload::Native")
                .field(&String::from_utf8_lossy(b))
                .finish(),
            (Raw::Celery(s), None) => f.debug_tuple("Payload::Celery").field(s).finish(),
            (Raw::Parsed, None) => f.write_str("Payload(?)"),
        }
    }
}

impl Payload {
    /// A payload that is a tree already (tests, and the shapes decoded the general way).
    pub(crate) fn parsed(value: Value) -> Self {
        Payload {
            raw: Raw::Parsed,
            value: OnceLock::from(value),
        }
    }

    /// The native message body this payload is, if it is one (the dispatcher moved the body
    /// here; the copies it sends on failure are made from it).
    pub(crate) fn native_body(&self) -> Option<&[u8]> {
        match &self.raw {
            Raw::Native(b) => Some(b),
            Raw::Parsed | Raw::Celery(_) => None,
        }
    }

    /// The event as a JSON tree, built on the first call.
    pub(crate) fn value(&self) -> &Value {
        self.value.get_or_init(|| match &self.raw {
            // Validated by `decode`: these parses do not fail.
            Raw::Native(b) => text(b)
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default(),
            Raw::Celery(s) => serde_json::from_str::<WithoutMeta>(s)
                .map(|o| Value::Object(o.0))
                .unwrap_or_default(),
            Raw::Parsed => Value::Null,
        })
    }

    /// Deserializes the event into `T`, from the raw JSON when the tree was not built (else
    /// from the tree). When reading the raw JSON fails, `T` is read from the tree, so the
    /// result and the error text are those of reading the tree, whatever the reason.
    ///
    /// # Errors
    /// The event does not deserialize into `T`.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        if self.value.get().is_none() {
            let direct = match &self.raw {
                Raw::Native(b) => text(b).and_then(|t| serde_json::from_str::<T>(t).ok()),
                Raw::Celery(s) => {
                    let mut de = serde_json::Deserializer::from_str(s);
                    T::deserialize(SkipMeta(&mut de))
                        .and_then(|t| de.end().map(|()| t))
                        .ok()
                }
                Raw::Parsed => None,
            };
            if let Some(t) = direct {
                return Ok(t);
            }
        }
        T::deserialize(self.value())
    }
}

/// The body as text. It was checked to be UTF-8 before (`wire::check`), and reading JSON from a
/// `&str` does not check every string again, as reading it from bytes does.
fn text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body).ok()
}

/// A received message decoded for the dispatcher: [`Decoded`] with a raw event.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) topic: String,
    pub(crate) event: Event,
    pub(crate) kind: Kind,
    pub(crate) message_id: Option<String>,
    pub(crate) format: WireFormat,
}

/// The event of an [`Incoming`], before it becomes a [`Payload`].
#[derive(Debug)]
pub(crate) enum Event {
    /// A tree (the general decoding).
    Parsed(Value),
    /// The message body, validated (native): the dispatcher moves it into the payload.
    Body,
    /// A Celery `args[0]` string, validated.
    Celery(String),
}

impl Event {
    /// The payload; `body` gives the message body for [`Event::Body`].
    pub(crate) fn into_payload(self, body: impl FnOnce() -> Vec<u8>) -> Payload {
        match self {
            Event::Parsed(v) => Payload::parsed(v),
            Event::Body => Payload {
                raw: Raw::Native(body()),
                value: OnceLock::new(),
            },
            Event::Celery(s) => Payload {
                raw: Raw::Celery(s),
                value: OnceLock::new(),
            },
        }
    }
}

impl From<Decoded> for Incoming {
    fn from(d: Decoded) -> Self {
        Incoming {
            topic: d.topic,
            event: Event::Parsed(d.event),
            kind: d.kind,
            message_id: d.message_id,
            format: d.format,
        }
    }
}

/// [`wire::decode`](crate::wire::decode) with the event left raw where it can be.
///
/// # Errors
/// Those of `wire::decode`, with the same text.
pub(crate) fn decode(msg: &Message, limits: Limits) -> Result<Incoming, DecodeError> {
    crate::wire::check(msg, limits)?;
    let lean = if crate::wire::celery::is_celery(msg) {
        celery_dispatch(msg)
    } else {
        native(msg)
    };
    match lean {
        Some(incoming) => Ok(incoming),
        None => crate::wire::decode_checked(msg).map(Incoming::from),
    }
}

/// A native message whose body is a JSON object and whose kind is known; `None` otherwise
/// (the general decoding then says why).
fn native(msg: &Message) -> Option<Incoming> {
    let kind = match msg
        .properties
        .headers
        .get(crate::wire::json::KIND_HEADER)
        .and_then(HeaderValue::as_str)
    {
        Some("rpc") => Kind::Rpc,
        Some("event") | None => Kind::Event,
        Some(_) => return None,
    };
    serde_json::from_str::<ObjectProbe>(text(&msg.body)?).ok()?;
    Some(Incoming {
        topic: msg.routing_key.clone(),
        event: Event::Body,
        kind,
        message_id: msg.properties.message_id.clone(),
        format: WireFormat::Native,
    })
}

/// A Celery `dispatch_event` task as `TchuClient` writes it (`[[event], {routing_key},
/// embed]`, the event a JSON object in a string); `None` for anything else.
fn celery_dispatch(msg: &Message) -> Option<Incoming> {
    if msg.properties.headers.get("task")?.as_str() != Some(DISPATCH_TASK) {
        return None;
    }
    let id = match msg.properties.headers.get("id") {
        Some(HeaderValue::String(id)) => Some(id.clone()),
        Some(HeaderValue::Null) | None => msg.properties.correlation_id.clone(),
        Some(_) => return None,
    };
    let FastBody((event,), kwargs, EmbedObject) = serde_json::from_str(text(&msg.body)?).ok()?;
    let topic = match kwargs.routing_key {
        Some(k) if !k.is_empty() => k.into_owned(),
        _ if !msg.routing_key.is_empty() => msg.routing_key.clone(),
        _ => return None,
    };
    let EventProbe { is_rpc } = serde_json::from_str(&event).ok()?;
    Some(Incoming {
        topic,
        event: Event::Celery(event.into_owned()),
        kind: if is_rpc { Kind::Rpc } else { Kind::Event },
        message_id: id,
        format: WireFormat::Celery,
    })
}

/// Any JSON value, read exactly as strictly as into a [`Value`] (numbers parsed, strings
/// unescaped) but kept nowhere.
struct Probe;

impl<'de> de::Deserialize<'de> for Probe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl<'de> Visitor<'de> for ProbeVisitor {
    type Value = Probe;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_str<E>(self, _: &str) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_unit<E>(self) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_none<E>(self) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Probe, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Probe, A::Error> {
        while seq.next_element::<Probe>()?.is_some() {}
        Ok(Probe)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        while map.next_entry::<Probe, Probe>()?.is_some() {}
        Ok(Probe)
    }
}

/// A JSON object, validated as [`Probe`] does.
struct ObjectProbe;

impl<'de> de::Deserialize<'de> for ObjectProbe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ObjectProbe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectProbe, A::Error> {
                while map.next_entry::<Probe, Probe>()?.is_some() {}
                Ok(ObjectProbe)
            }
        }
        d.deserialize_map(V)
    }
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A Celery event object, validated, with what its `_tchu_meta` says: RPC or not (no
/// `_tchu_meta`: a tchu-tchu 2.x sender, RPC as tchu-tchu does). A `_tchu_meta` that is not
/// an object fails (the general decoding reports it).
struct EventProbe {
    is_rpc: bool,
}

impl<'de> de::Deserialize<'de> for EventProbe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventProbe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventProbe, A::Error> {
                let mut is_rpc = true;
                // A repeated key: the last one wins, as in a `Value`.
                while let Some(Key(key)) = map.next_key()? {
                    if key == META_KEY {
                        is_rpc = map.next_value::<MetaProbe>()?.is_rpc;
                    } else {
                        map.next_value::<Probe>()?;
                    }
                }
                Ok(EventProbe { is_rpc })
            }
        }
        d.deserialize_map(V)
    }
}

/// `_tchu_meta`: an object whose `is_rpc` is read with Python's truthiness.
struct MetaProbe {
    is_rpc: bool,
}

impl<'de> de::Deserialize<'de> for MetaProbe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaProbe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaProbe, A::Error> {
                let mut is_rpc = false;
                while let Some(Key(key)) = map.next_key()? {
                    if key == "is_rpc" {
                        is_rpc = truthy(&map.next_value::<Value>()?);
                    } else {
                        map.next_value::<Probe>()?;
                    }
                }
                Ok(MetaProbe { is_rpc })
            }
        }
        d.deserialize_map(V)
    }
}

/// A Celery event object as a map, its `_tchu_meta` left out.
struct WithoutMeta(Map<String, Value>);

impl<'de> de::Deserialize<'de> for WithoutMeta {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WithoutMeta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WithoutMeta, A::Error> {
                let mut event = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == META_KEY {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        event.insert(key, map.next_value::<Value>()?);
                    }
                }
                Ok(WithoutMeta(event))
            }
        }
        d.deserialize_map(V)
    }
}

/// A deserializer of a Celery event object that hides its top-level `_tchu_meta` entry from
/// the type being read (so `deny_unknown_fields` and `flatten` see what they would see in
/// the tree). Shapes it does not cover fail, and [`Payload::deserialize`] then reads the tree.
struct SkipMeta<D>(D);

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for SkipMeta<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(SkipMetaVisitor(visitor))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_map(SkipMetaVisitor(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_struct(name, fields, SkipMetaVisitor(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct seq tuple tuple_struct enum identifier ignored_any
    }
}

/// Hands the visitor a map without the `_tchu_meta` entry; anything but a map is refused
/// (the event was validated as an object).
struct SkipMetaVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipMetaVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(SkipMetaMap(map))
    }
}

struct SkipMetaMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipMetaMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.0.next_key::<Key<'de>>()? {
                None => return Ok(None),
                Some(Key(k)) if k == META_KEY => {
                    self.0.next_value::<IgnoredAny>()?;
                }
                Some(Key(Cow::Borrowed(k))) => {
                    return seed
                        .deserialize(de::value::BorrowedStrDeserializer::new(k))
                        .map(Some);
                }
                Some(Key(Cow::Owned(k))) => {
                    return seed
                        .deserialize(de::value::StringDeserializer::new(k))
                        .map(Some);
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn celery(body: &[u8]) -> Message {
        let mut m = crate::wire::celery::encode("t.opic", b"{}", "id-3", false);
        m.body = body.to_vec();
        m
    }

    /// Everything both decoders see: the lean reading gives what `wire::decode` gives (topic,
    /// kind, id, format, the event as a tree) or the same error.
    #[test]
    fn lean_and_full_decode_agree() {
        let mut msgs = vec![
            crate::wire::encode(WireFormat::Celery, "a.b", br#"{"x": 1}"#, "id-1", false),
            crate::wire::encode(WireFormat::Celery, "a.b", br#"{}"#, "id-2", true),
            crate::wire::encode(
                WireFormat::Native,
                "a.b",
                br#"{"x": [1, {"y": null}]}"#,
                "n",
                false,
            ),
            crate::wire::encode(WireFormat::Native, "a.b", br#"{"x": 1}"#, "n", true),
            crate::wire::encode(WireFormat::Native, "a.b", br#"[1]"#, "n", false),
            crate::wire::encode(WireFormat::Native, "a.b", br#"{"x": 1e999}"#, "n", false),
            crate::wire::encode(WireFormat::Native, "a.b", br#"{"x": 1} x"#, "n", false),
            crate::wire::encode(WireFormat::Native, "a.b", br#"{"x": "\ud800"}"#, "n", false),
            crate::wire::encode(
                WireFormat::Native,
                "a.b",
                br#"{"x": 1, "x": 2}"#,
                "n",
                false,
            ),
        ];
        let mut odd_kind = crate::wire::encode(WireFormat::Native, "a.b", b"{}", "n", false);
        odd_kind
            .properties
            .headers
            .insert(crate::wire::json::KIND_HEADER.to_owned(), "other".into());
        msgs.push(odd_kind);
        let bodies: [&[u8]; 16] = [
            br#"[["{\"x\": 1}"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"x\": 1}"], {"routing_key": null}, {}]"#,
            br#"[["{\"x\": 1}"], {"routing_key": ""}, {}]"#,
            br#"[["{\"x\": 1}"], {}, {"callbacks": null}]"#,
            br#"[["not json"], {"routing_key": "k.x"}, {}]"#,
            br#"[["[1]"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"_tchu_meta\": 3}"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"_tchu_meta\": {\"is_rpc\": 1}, \"a\": 2}"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"_tchu_meta\": {\"is_rpc\": []}, \"_tchu_meta\": {\"is_rpc\": \"y\"}}"], {}, {}]"#,
            br#"[["{\"a\": 1e999}"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"a\": 1} 2"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"a\": 1, \"a\": 2}"], {"routing_key": "k.x"}, {}]"#,
            br#"[["{\"x\": 1}"], {"routing_key": 5}, {}]"#,
            br#"[["{\"x\": 1}"], {"routing_key": "k.x"}, []]"#,
            br#"[["{\"x\": 1}"], {"routing_key": "k.x"}, {"a": 1e999}]"#,
            br#"[{"x": 1}, {"routing_key": "k.x"}, {}]"#,
        ];
        for body in bodies {
            let mut m = celery(body);
            msgs.push(m.clone());
            m.routing_key = String::new();
            msgs.push(m);
        }
        let mut lean = 0;
        for m in &msgs {
            let what = String::from_utf8_lossy(&m.body);
            let full = crate::wire::decode(m, Limits::DEFAULT);
            let got = decode(m, Limits::DEFAULT);
            match (got, full) {
                (Ok(got), Ok(full)) => {
                    lean += usize::from(!matches!(got.event, Event::Parsed(_)));
                    assert_eq!(
                        (&got.topic, &got.kind, &got.message_id, got.format),
                        (&full.topic, &full.kind, &full.message_id, full.format),
                        "{what}"
                    );
                    let payload = got.event.into_payload(|| m.body.clone());
                    assert_eq!(payload.value(), &full.event, "{what}");
                }
                (Err(got), Err(full)) => assert_eq!(got, full, "{what}"),
                (got, full) => unreachable!("{what}: lean {got:?}, full {full:?}"),
            }
        }
        assert!(lean >= 12, "the lean reading was taken {lean} times");
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        x: u32,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Flat {
        x: u32,
        #[serde(flatten)]
        rest: std::collections::BTreeMap<String, Value>,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Wrapped(Strict);

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(tag = "type")]
    enum Tagged {
        A { x: u32 },
    }

    fn lean(m: &Message) -> Payload {
        decode(m, Limits::DEFAULT)
            .unwrap()
            .event
            .into_payload(|| m.body.clone())
    }

    /// Typed reads from the raw JSON give what reads from the tree give, `_tchu_meta` unseen,
    /// and the tree is not built for them.
    #[test]
    fn typed_reads_skip_the_meta_and_match_the_tree() {
        let celery_msg = crate::wire::encode(
            WireFormat::Celery,
            "a.b",
            br#"{"x": 7, "type": "A", "y\u00e9": "\"q\""}"#,
            "id",
            false,
        );
        let native_msg = crate::wire::encode(
            WireFormat::Native,
            "a.b",
            br#"{"x": 7, "type": "A", "y\u00e9": "\"q\""}"#,
            "id",
            false,
        );
        for m in [&celery_msg, &native_msg] {
            let p = lean(m);
            // A `Value` argument is read from the raw JSON too (first: no tree yet), with
            // `_tchu_meta` hidden.
            let value: Value = p.deserialize().unwrap();
            assert!(p.value.get().is_none());
            let flat: Flat = p.deserialize().unwrap();
            let wrapped = p.deserialize::<Wrapped>();
            let tagged: Tagged = p.deserialize().unwrap();
            let strict = p.deserialize::<Strict>();
            assert!(
                p.value.get().is_none() || strict.is_err(),
                "no tree for typed reads"
            );
            let tree = Payload::parsed(p.value().clone());
            assert_eq!(&value, tree.value());
            assert!(value.get(META_KEY).is_none());
            assert_eq!(flat, tree.deserialize::<Flat>().unwrap());
            assert!(!flat.rest.contains_key(META_KEY));
            assert_eq!(tagged, Tagged::A { x: 7 });
            assert_eq!(
                strict.map_err(|e| e.to_string()),
                tree.deserialize::<Strict>().map_err(|e| e.to_string())
            );
            assert_eq!(
                wrapped.map_err(|e| e.to_string()),
                tree.deserialize::<Wrapped>().map_err(|e| e.to_string())
            );
        }
        // Only `x`: the strict type reads it from the raw Celery event, `_tchu_meta` hidden.
        let m = crate::wire::encode(WireFormat::Celery, "a.b", br#"{"x": 7}"#, "id", false);
        let p = lean(&m);
        assert_eq!(p.deserialize::<Strict>().unwrap(), Strict { x: 7 });
        assert_eq!(
            p.deserialize::<Wrapped>().unwrap(),
            Wrapped(Strict { x: 7 })
        );
        assert!(p.value.get().is_none());
        // A type error is reported as reading the tree reports it.
        let err = p.deserialize::<Vec<u8>>().unwrap_err().to_string();
        assert_eq!(
            err,
            Payload::parsed(p.value().clone())
                .deserialize::<Vec<u8>>()
                .unwrap_err()
                .to_string()
        );
    }
}
