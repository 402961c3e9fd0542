//! Tests of the Celery format against the captured tchu-tchu 3.0.4 messages.

use super::decode::{decode_dispatch_fast, decode_general};
use super::encode::event_string;
use super::pyrepr::py_repr_str;
use super::reply::{decode_reply_fast, decode_reply_general, iso8601_utc};
use super::*;
use crate::error::RpcError;
use crate::message::{HeaderValue, Message, Properties};
use crate::wire::{DecodeError, Kind, Reply, WireFormat};
use serde_json::json;
use serde_json::{Map, Value};
use std::time::Duration;
use std::time::UNIX_EPOCH;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(
                "../../../../tests/fixtures/tchu-tchu-3.0.4/",
                $name,
                ".json"
            )),
        )
    };
}

const FIXTURES: [(&str, &str); 10] = [
    fixture!("internal_handler_task"),
    fixture!("publish"),
    fixture!("publish_reply"),
    fixture!("rpc_reply"),
    fixture!("rpc_reply_as_received_by_client"),
    fixture!("rpc_reply_dispatch_failure"),
    fixture!("rpc_reply_handler_error"),
    fixture!("rpc_request"),
    fixture!("rpc_request_prestringified_body"),
    fixture!("serverless_publish"),
];

fn raw(name: &str) -> Value {
    let (_, text) = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    serde_json::from_str(text).unwrap()
}

/// A header value as the fixture's `header_types` says it is typed on the wire.
fn header_value(v: &Value, ty: &Value) -> HeaderValue {
    match ty {
        Value::String(t) => match t.as_str() {
            "S" => HeaderValue::String(v.as_str().unwrap().to_owned()),
            "I" => HeaderValue::Int(v.as_i64().unwrap()),
            "V" => {
                assert!(v.is_null());
                HeaderValue::Null
            }
            "t" => HeaderValue::Bool(v.as_bool().unwrap()),
            other => panic!("unexpected header type {other}"),
        },
        Value::Array(pair) => match pair[0].as_str().unwrap() {
            "A" => HeaderValue::Array(
                v.as_array()
                    .unwrap()
                    .iter()
                    .zip(pair[1].as_array().unwrap())
                    .map(|(v, t)| header_value(v, t))
                    .collect(),
            ),
            "F" => HeaderValue::Table(
                v.as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), header_value(v, &pair[1][k])))
                    .collect(),
            ),
            other => panic!("unexpected header type {other}"),
        },
        other => panic!("bad header type {other}"),
    }
}

fn header_type(h: &HeaderValue) -> Value {
    match h {
        HeaderValue::String(_) => json!("S"),
        HeaderValue::Int(_) => json!("I"),
        HeaderValue::Null => json!("V"),
        HeaderValue::Bool(_) => json!("t"),
        HeaderValue::Array(a) => json!(["A", a.iter().map(header_type).collect::<Vec<_>>()]),
        HeaderValue::Table(t) => json!([
            "F",
            t.iter()
                .map(|(k, v)| (k.clone(), header_type(v)))
                .collect::<Map<_, _>>()
        ]),
        other => panic!("unexpected header value {other:?}"),
    }
}

fn load(name: &str) -> Message {
    let f = raw(name);
    let p = &f["properties"];
    let s = |k: &str| p[k].as_str().map(str::to_owned);
    let empty = json!({});
    let types = f.get("header_types").unwrap_or(&empty);
    let headers = f["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let ty = types
                .get(k)
                .unwrap_or_else(|| panic!("{name}: no type for {k}"));
            (k.clone(), header_value(v, ty))
        })
        .collect();
    Message {
        routing_key: f["routing_key"].as_str().unwrap().to_owned(),
        properties: Properties {
            content_type: s("content_type"),
            content_encoding: s("content_encoding"),
            headers,
            persistent: p["delivery_mode"] == 2,
            correlation_id: s("correlation_id"),
            reply_to: s("reply_to"),
            expiration: p
                .get("expiration")
                .and_then(Value::as_str)
                .map(|ms| Duration::from_millis(ms.parse().unwrap())),
            message_id: s("message_id"),
            timestamp: p.get("timestamp").and_then(Value::as_u64),
            priority: p["priority"].as_u64().map(|x| u8::try_from(x).unwrap()),
        },
        body: f["body_utf8"].as_str().unwrap().as_bytes().to_vec(),
    }
}

/// Every fixture file is loadable and read by the right decoder.
#[test]
fn every_fixture_loads() {
    for (name, _) in FIXTURES {
        let msg = load(name);
        if name.contains("reply") {
            assert!(decode_reply(&msg).is_ok(), "{name}");
        } else {
            assert!(is_celery(&msg), "{name}");
            // Through the format-neutral seam too.
            let r = crate::wire::decode(&msg, crate::wire::Limits::new(1 << 20, usize::MAX));
            if name == "rpc_request_prestringified_body" {
                assert!(r.is_err(), "{name}");
            } else {
                assert_eq!(r.unwrap().format, WireFormat::Celery, "{name}");
            }
        }
    }
}

#[test]
fn publish_is_an_event() {
    let d = decode(&load("publish")).unwrap();
    assert_eq!(d.kind, Kind::Event);
    assert_eq!(d.topic, "user.created");
    assert_eq!(
        d.event,
        json!({"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"})
    );
    assert_eq!(
        d.message_id.as_deref(),
        Some("d94a9b90-4b76-4980-8e89-e5d84f23e685")
    );
    assert_eq!(d.format, WireFormat::Celery);
}

#[test]
fn serverless_publish_is_a_v1_event() {
    let msg = load("serverless_publish");
    assert!(msg.properties.headers.is_empty());
    assert!(is_celery(&msg));
    let d = decode(&msg).unwrap();
    assert_eq!(d.kind, Kind::Event);
    assert_eq!(d.topic, "user.created");
    assert_eq!(
        d.event,
        json!({"user_id": 43, "email": "grace@example.com", "name": "Grace", "marker": "761d0d0a"})
    );
    assert_eq!(
        d.message_id.as_deref(),
        Some("55a781b0-2f01-45b8-8283-51da226bb913")
    );
}

#[test]
fn rpc_request_is_rpc() {
    let d = decode(&load("rpc_request")).unwrap();
    assert_eq!(d.kind, Kind::Rpc);
    assert_eq!(d.topic, "rpc.users.validate");
    assert_eq!(d.event, json!({"email": "ada@example.com"}));
    assert_eq!(
        d.message_id.as_deref(),
        Some("a28aa027-85cf-4f3e-8c53-6a0b43165508")
    );
}

/// `call(topic, "this is not json")`: the Python dispatcher fails on `json.loads`
/// (`rpc_reply_dispatch_failure.json`); tchu refuses it as a broken envelope.
#[test]
fn prestringified_non_json_body_is_refused() {
    let err = decode(&load("rpc_request_prestringified_body")).unwrap_err();
    let DecodeError::Shape { format, reason } = err else {
        panic!("expected a shape error")
    };
    assert_eq!(format, "celery");
    assert!(
        reason.contains("args[0] is not a JSON document"),
        "{reason}"
    );
}

/// A pre-stringified body that *is* a JSON object has no `_tchu_meta`: RPC, as tchu-tchu
/// handles 2.x senders.
#[test]
fn prestringified_json_body_without_meta_is_rpc() {
    let mut msg = load("rpc_request_prestringified_body");
    msg.body = br#"[["{\"a\": 1}"], {"routing_key": "x.y"}, {}]"#.to_vec();
    let d = decode(&msg).unwrap();
    assert_eq!(d.kind, Kind::Rpc);
    assert_eq!(d.topic, "x.y");
    assert_eq!(d.event, json!({"a": 1}));
}

#[test]
fn internal_handler_task() {
    let d = decode(&load("internal_handler_task")).unwrap();
    assert_eq!(
        d.kind,
        Kind::CeleryInternal {
            task: "tchu_tchu.handler.notifications_svc.subscribers.on_user_event".to_owned()
        }
    );
    assert_eq!(d.topic, "notifications_queue");
    assert_eq!(
        d.event,
        json!({"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"})
    );
    assert_eq!(
        d.message_id.as_deref(),
        Some("d94a9b90-4b76-4980-8e89-e5d84f23e685:notifications_svc.subscribers.on_user_event")
    );
}

#[test]
fn meta_rules() {
    let with = |meta: &str| {
        let event = format!(r#"{{"a": 1{meta}}}"#);
        let body = json!([[event], {"routing_key": "t.x"}, {}]).to_string();
        let mut msg = encode("t.x", b"{}", "id", false);
        msg.body = body.into_bytes();
        decode(&msg)
    };
    assert_eq!(with("").unwrap().kind, Kind::Rpc);
    assert_eq!(
        with(r#", "_tchu_meta": {"is_rpc": true}"#).unwrap().kind,
        Kind::Rpc
    );
    assert_eq!(
        with(r#", "_tchu_meta": {"is_rpc": false}"#).unwrap().kind,
        Kind::Event
    );
    // Present without is_rpc: Python's `meta.get("is_rpc", False)`.
    assert_eq!(with(r#", "_tchu_meta": {}"#).unwrap().kind, Kind::Event);
    assert_eq!(
        with(r#", "_tchu_meta": {"is_rpc": 1}"#).unwrap().kind,
        Kind::Rpc
    );
    assert!(with(r#", "_tchu_meta": "x""#).is_err());
    assert_eq!(
        with(r#", "_tchu_meta": {"is_rpc": true}"#).unwrap().event,
        json!({"a": 1})
    );
}

#[test]
fn topic_falls_back_to_the_amqp_routing_key() {
    let mut msg = encode("a.b", br#"{"x":1}"#, "id", false);
    let event = event_string(br#"{"x":1}"#, false);
    msg.body = json!([[event], {}, {}]).to_string().into_bytes();
    assert_eq!(decode(&msg).unwrap().topic, "a.b");
    msg.body = json!([[event], {"routing_key": null}, {}])
        .to_string()
        .into_bytes();
    assert_eq!(decode(&msg).unwrap().topic, "a.b");
    // Positional routing key (dispatch_event(message_body, routing_key)).
    msg.body = json!([[event, "c.d"], {}, {}]).to_string().into_bytes();
    assert_eq!(decode(&msg).unwrap().topic, "c.d");
    msg.routing_key = String::new();
    msg.body = json!([[event], {}, {}]).to_string().into_bytes();
    assert!(decode(&msg).is_err());
}

#[test]
fn args0_may_be_an_object() {
    let mut msg = encode("a.b", b"{}", "id", false);
    msg.body = json!([[{"x": 1, "_tchu_meta": {"is_rpc": false}}], {"routing_key": "a.b"}, {}])
        .to_string()
        .into_bytes();
    let d = decode(&msg).unwrap();
    assert_eq!(d.kind, Kind::Event);
    assert_eq!(d.event, json!({"x": 1}));
}

#[test]
fn message_id_falls_back_to_correlation_id() {
    let mut msg = load("publish");
    msg.properties.headers.remove("id");
    assert_eq!(
        decode(&msg).unwrap().message_id.as_deref(),
        Some("d94a9b90-4b76-4980-8e89-e5d84f23e685")
    );
}

#[test]
fn unknown_task_is_refused() {
    let mut msg = load("publish");
    msg.properties
        .headers
        .insert("task".to_owned(), HeaderValue::from("proj.add"));
    let err = decode(&msg).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Shape {
            format: "celery",
            reason: "unknown celery task `proj.add`".to_owned()
        }
    );
}

#[test]
fn is_celery_heuristic() {
    let plain = |body: &str| Message {
        body: body.as_bytes().to_vec(),
        ..Message::default()
    };
    assert!(!is_celery(&plain(r#"{"user_id": 1}"#)));
    assert!(!is_celery(&plain(r#"{"note": "a \"task\" and \"args\""}"#)));
    assert!(is_celery(&plain(r#"{"task": "x", "args": 5}"#)));
    assert!(!is_celery(&plain(r#"[["{}"], {}, {}]"#)));
    let mut native = plain(r#"{"task": "x", "args": []}"#);
    native
        .properties
        .headers
        .insert(crate::wire::json::KIND_HEADER.to_owned(), "event".into());
    assert!(!is_celery(&native));
    assert!(is_celery(&encode("a.b", b"{}", "i", false)));
}

#[test]
fn encode_matches_the_publish_fixture() {
    let f = raw("publish");
    // The caller's event serialized as Python would: the whole body is then byte-equal.
    let event =
        br#"{"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"}"#;
    let id = "d94a9b90-4b76-4980-8e89-e5d84f23e685";
    let msg = encode_with(CeleryEncoding::Full, "user.created", event, id, false);
    assert_eq!(
        std::str::from_utf8(&msg.body).unwrap(),
        f["body_utf8"].as_str().unwrap()
    );
    assert_eq!(msg.routing_key, "user.created");
    let h = &msg.properties.headers;
    assert_eq!(h["argsrepr"].as_str(), f["headers"]["argsrepr"].as_str());
    assert_eq!(
        h["kwargsrepr"].as_str(),
        f["headers"]["kwargsrepr"].as_str()
    );
    for same in ["lang", "task", "id", "root_id"] {
        assert_eq!(h[same].as_str(), f["headers"][same].as_str(), "{same}");
    }
    assert!(h["origin"].as_str().unwrap().starts_with("tchu-rs"));

    // Same header names and AMQP types as the fixture.
    let types: Map<String, Value> = h.iter().map(|(k, v)| (k.clone(), header_type(v))).collect();
    assert_eq!(Value::Object(types), f["header_types"]);

    let p = &msg.properties;
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(p.priority, Some(0));
    assert_eq!(p.correlation_id.as_deref(), Some(id));
    assert_eq!(p.message_id, None);
}

#[test]
fn encoded_compact_event_has_the_fixture_structure() {
    let f = raw("rpc_request");
    for encoding in [CeleryEncoding::Lean, CeleryEncoding::Full] {
        let msg = encode_with(
            encoding,
            "rpc.users.validate",
            br#"{"email":"ada@example.com"}"#,
            "x",
            true,
        );
        let body: Value = serde_json::from_slice(&msg.body).unwrap();
        let want = &f["body_decoded"];
        assert_eq!(body.as_array().unwrap().len(), 3);
        let arg0 = body[0][0].as_str().unwrap();
        assert_eq!(body[0].as_array().unwrap().len(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(arg0).unwrap(),
            f["event_json_in_args0_decoded"]
        );
        assert!(arg0.ends_with(r#", "_tchu_meta": {"is_rpc": true}}"#));
        assert_eq!(body[1], want[1]);
        assert_eq!(body[2], want[2]);
    }
}

/// `Full` on a request: the `rpc_request` fixture's header names and types, its properties
/// but `reply_to` (the caller's), and its body byte for byte.
#[test]
fn full_encode_matches_the_rpc_request_fixture() {
    let f = raw("rpc_request");
    let id = "a28aa027-85cf-4f3e-8c53-6a0b43165508";
    let msg = encode_with(
        CeleryEncoding::Full,
        "rpc.users.validate",
        br#"{"email": "ada@example.com"}"#,
        id,
        true,
    );
    assert_eq!(
        std::str::from_utf8(&msg.body).unwrap(),
        f["body_utf8"].as_str().unwrap()
    );
    let h = &msg.properties.headers;
    let types: Map<String, Value> = h.iter().map(|(k, v)| (k.clone(), header_type(v))).collect();
    assert_eq!(Value::Object(types), f["header_types"]);
    for (name, value) in f["headers"].as_object().unwrap() {
        if name != "origin" {
            let want = header_value(value, &f["header_types"][name]);
            assert_eq!(h[name], want, "header {name} as in the fixture");
        }
    }
    let p = &msg.properties;
    let fp = &f["properties"];
    assert_eq!(p.content_type.as_deref(), fp["content_type"].as_str());
    assert_eq!(
        p.content_encoding.as_deref(),
        fp["content_encoding"].as_str()
    );
    assert_eq!(p.priority.map(u64::from), fp["priority"].as_u64());
    assert_eq!(p.correlation_id.as_deref(), fp["correlation_id"].as_str());
}

/// What `Lean` writes, exactly: two headers, one property, and `Full`'s body.
#[test]
fn lean_encode_writes_task_id_and_content_type_only() {
    for (event, is_rpc) in [
        (
            &br#"{"user_id": 42, "email": "ada@example.com"}"#[..],
            false,
        ),
        (&br#"{"email":"ada@example.com"}"#[..], true),
        (&b"{}"[..], false),
    ] {
        let id = "d94a9b90-4b76-4980-8e89-e5d84f23e685";
        let lean = encode_with(CeleryEncoding::Lean, "user.created", event, id, is_rpc);
        let full = encode_with(CeleryEncoding::Full, "user.created", event, id, is_rpc);
        let mut headers = crate::message::Headers::new();
        headers.insert("task".to_owned(), HeaderValue::from(DISPATCH_TASK));
        headers.insert("id".to_owned(), HeaderValue::from(id));
        assert_eq!(
            lean,
            Message {
                routing_key: "user.created".to_owned(),
                properties: Properties {
                    content_type: Some("application/json".to_owned()),
                    headers,
                    ..Properties::default()
                },
                body: full.body.clone(),
            }
        );
        // The default is Lean, in this module and in `wire`.
        assert_eq!(encode("user.created", event, id, is_rpc), lean);
        assert_eq!(
            crate::wire::encode(WireFormat::Celery, "user.created", event, id, is_rpc),
            lean
        );
        assert_eq!(
            crate::wire::encode_with(
                WireFormat::Celery,
                CeleryEncoding::Full,
                "user.created",
                event,
                id,
                is_rpc
            ),
            full
        );
        // tchu reads it as it reads Full.
        let limits = crate::wire::Limits::DEFAULT;
        assert_eq!(
            crate::wire::decode(&lean, limits),
            crate::wire::decode(&full, limits)
        );
        assert!(is_celery(&lean));
    }
    // The body is the publish fixture's, byte for byte.
    let f = raw("publish");
    let event =
        br#"{"user_id": 42, "email": "ada@example.com", "name": "Ada", "marker": "2befbdfd"}"#;
    let msg = encode_with(
        CeleryEncoding::Lean,
        "user.created",
        event,
        "d94a9b90-4b76-4980-8e89-e5d84f23e685",
        false,
    );
    assert_eq!(
        std::str::from_utf8(&msg.body).unwrap(),
        f["body_utf8"].as_str().unwrap()
    );
    // The native format has no Celery encoding.
    assert_eq!(
        crate::wire::encode_with(
            WireFormat::Native,
            CeleryEncoding::Full,
            "a.b",
            b"{}",
            "i",
            false
        ),
        crate::wire::encode(WireFormat::Native, "a.b", b"{}", "i", false)
    );
    assert_eq!(CeleryEncoding::Lean.to_string(), "lean");
    assert_eq!(CeleryEncoding::Full.as_str(), "full");
}

#[test]
fn splice_handles_edge_cases() {
    assert_eq!(
        event_string(b"{}", false),
        r#"{"_tchu_meta": {"is_rpc": false}}"#
    );
    assert_eq!(
        event_string(b" { } \n", true),
        r#"{"_tchu_meta": {"is_rpc": true}}"#
    );
    assert_eq!(
        event_string(b"{\n  \"a\": 1\n}\n", true),
        "{\n  \"a\": 1, \"_tchu_meta\": {\"is_rpc\": true}}"
    );
    // Not an object: sent as is, like a pre-serialized tchu-tchu body.
    assert_eq!(event_string(b"[1]", true), "[1]");
    // An existing _tchu_meta is overridden (last key wins).
    let s = event_string(br#"{"_tchu_meta":{"is_rpc":true}}"#, false);
    let v: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["_tchu_meta"]["is_rpc"], false);
}

#[test]
fn round_trips_events_and_requests() {
    for encoding in [CeleryEncoding::Lean, CeleryEncoding::Full] {
        for (event, is_rpc) in [
            (json!({"a": 1, "b": "é ' \" \\ \n"}), false),
            (json!({"nested": {"x": [1, 2.5, null]}}), true),
            (json!({}), false),
            (json!({}), true),
        ] {
            let bytes = serde_json::to_vec(&event).unwrap();
            let msg = encode_with(encoding, "order.created", &bytes, "m-1", is_rpc);
            let limits = crate::wire::Limits::new(1 << 20, usize::MAX);
            let d = crate::wire::decode(&msg, limits).unwrap();
            assert_eq!(d.topic, "order.created");
            assert_eq!(d.event, event);
            assert_eq!(d.kind, if is_rpc { Kind::Rpc } else { Kind::Event });
            assert_eq!(d.message_id.as_deref(), Some("m-1"));
            assert_eq!(d.format, WireFormat::Celery);
        }
    }
}

#[test]
fn reprs_are_cut() {
    let big = format!(r#"{{"s": "{}"}}"#, "x".repeat(5000));
    let msg = encode_with(CeleryEncoding::Full, "a.b", big.as_bytes(), "i", false);
    let repr = msg.properties.headers["argsrepr"].as_str().unwrap();
    assert_eq!(repr.chars().count(), REPR_MAX_CHARS + 3);
    assert!(repr.ends_with("..."));
    let mut s = String::new();
    py_repr_str("a'b\"c\\d\n\u{1}é\u{7f}", &mut s);
    assert_eq!(s, r#"'a\'b"c\\d\n\x01é\x7f'"#);
    s.clear();
    py_repr_str("it's", &mut s);
    assert_eq!(s, r#""it's""#);
}

#[test]
fn python_replies_decode() {
    assert_eq!(
        decode_reply(&load("rpc_reply")).unwrap(),
        Reply::Ok(json!({"valid": true, "email": "ada@example.com", "checked_by": "users"}))
    );
    assert_eq!(
        decode_reply(&load("rpc_reply_as_received_by_client")).unwrap(),
        Reply::Ok(json!({"valid": true, "email": "ada@example.com", "checked_by": "users"}))
    );
    assert_eq!(
        decode_reply(&load("rpc_reply_handler_error")).unwrap(),
        Reply::HandlerFailed("validation backend exploded".to_owned())
    );
    assert_eq!(
        decode_reply(&load("rpc_reply_dispatch_failure")).unwrap(),
        Reply::HandlerFailed(
            "JSONDecodeError: Expecting value: line 1 column 1 (char 0)".to_owned()
        )
    );
    // A broadcast's reply: the handler was dispatched, not answered.
    let Reply::HandlerFailed(m) = decode_reply(&load("publish_reply")).unwrap() else {
        panic!("expected HandlerFailed")
    };
    assert!(m.contains("dispatched"), "{m}");
}

fn reply_with(result: Value) -> Message {
    Message {
        body: json!({"status": "SUCCESS", "result": result, "traceback": null,
                     "children": [], "date_done": "x", "task_id": "t"})
        .to_string()
        .into_bytes(),
        ..Message::default()
    }
}

#[test]
fn python_shaped_replies_decode() {
    // TchuRPCException.to_response_dict() from a TchuEvent handler.
    let remote = reply_with(
        json!({"status": "completed", "routing_key": "r", "is_rpc": true,
        "handlers_executed": 1, "results": [{"handler": "h", "status": "success",
        "result": {"success": false, "error_message": "nope", "error_code": "NOT_FOUND",
                   "error_details": {"id": 1}}}]}),
    );
    assert_eq!(
        decode_reply(&remote).unwrap(),
        Reply::Remote(RpcError::new("NOT_FOUND", "nope").with_details(json!({"id": 1})))
    );
    let no_handlers = reply_with(json!({"status": "no_handlers", "routing_key": "r.x"}));
    assert_eq!(
        decode_reply(&no_handlers).unwrap(),
        Reply::HandlerFailed("no handler for r.x".to_owned())
    );
    let empty = reply_with(json!({"status": "completed", "routing_key": "r.x", "results": []}));
    assert!(matches!(
        decode_reply(&empty).unwrap(),
        Reply::HandlerFailed(_)
    ));
    // A non-dict result is returned as is by TchuClient.call.
    assert_eq!(
        decode_reply(&reply_with(json!(7))).unwrap(),
        Reply::Ok(json!(7))
    );
    // success: false without error fields is an ordinary value.
    let plain = reply_with(json!({"status": "completed", "results": [
        {"handler": "h", "status": "success", "result": {"success": false}}]}));
    assert_eq!(
        decode_reply(&plain).unwrap(),
        Reply::Ok(json!({"success": false}))
    );
}

#[test]
fn replies_round_trip() {
    for r in [
        Reply::Ok(json!({"ok": true, "n": [1, 2]})),
        Reply::Ok(Value::Null),
        Reply::Ok(json!("text")),
        Reply::Remote(RpcError::new("E", "bad").with_details(json!([1]))),
        Reply::Remote(RpcError::new("E", "bad")),
        Reply::HandlerFailed("boom".to_owned()),
        Reply::Invalid("email: invalid".to_owned()),
    ] {
        let m = encode_reply("rpc.x", "handler_fn", "corr-1", &r);
        assert!(!crate::wire::json::is_native_reply(&m));
        assert!(!is_interim_reply(&m));
        assert_eq!(decode_reply(&m).unwrap(), r);
        assert_eq!(crate::wire::decode_reply(&m).unwrap(), r);
        let p = &m.properties;
        assert_eq!(p.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(p.priority, Some(0));
        assert!(!p.persistent);
        assert!(p.headers.is_empty());
    }
}

#[test]
fn encoded_reply_matches_the_python_shape() {
    let want = raw("rpc_reply")["body_decoded"].clone();
    let m = encode_reply(
        "rpc.users.validate",
        "validate_user",
        "3bf97186-948f-40b1-a661-d647031b656e",
        &Reply::Ok(json!({"valid": true, "email": "ada@example.com", "checked_by": "users"})),
    );
    let mut got: Value = serde_json::from_slice(&m.body).unwrap();
    let date = got["date_done"].as_str().unwrap().to_owned();
    assert!(date.ends_with("+00:00") && date.len() >= 25, "{date}");
    got["date_done"] = want["date_done"].clone();
    assert_eq!(got, want);
    // Key order and separators as Python writes them.
    let text = std::str::from_utf8(&m.body).unwrap();
    assert!(text.starts_with(r#"{"status": "SUCCESS", "result": {"status": "completed", "routing_key": "rpc.users.validate", "is_rpc": true, "handlers_executed": 1, "results": [{"handler": "validate_user", "status": "success", "result": "#), "{text}");

    let remote = encode_reply("r", "h", "c", &Reply::Remote(RpcError::new("C", "m")));
    let v: Value = serde_json::from_slice(&remote.body).unwrap();
    assert_eq!(
        v["result"]["results"][0],
        json!({"handler": "h", "status": "success", "result":
            {"success": false, "error_message": "m", "error_code": "C", "error_details": null}})
    );
    let failed = encode_reply("r", "h", "c", &Reply::Invalid("x".to_owned()));
    let v: Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(
        v["result"]["results"][0],
        json!({"handler": "h", "status": "error", "error": "invalid request: x"})
    );
}

#[test]
fn interim_and_failed_states() {
    let state = |s: &str| Message {
        body: json!({"status": s, "result": null, "task_id": "t"})
            .to_string()
            .into_bytes(),
        ..Message::default()
    };
    assert!(is_interim_reply(&state("STARTED")));
    assert!(decode_reply(&state("STARTED")).is_err());
    assert!(!is_interim_reply(&state("SUCCESS")));
    assert!(matches!(
        decode_reply(&state("REVOKED")).unwrap(),
        Reply::HandlerFailed(_)
    ));
    assert!(matches!(
        decode_reply(&state("FAILURE")).unwrap(),
        Reply::HandlerFailed(_)
    ));
}

#[test]
fn dates() {
    let at = |secs: u64, micros: u64| {
        iso8601_utc(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00+00:00");
    assert_eq!(
        at(1_795_744_502, 344_756),
        "2026-11-27T01:55:02.344756+00:00"
    );
    assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005+00:00");
    assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59+00:00");
    // Past year 9999 (the general formatting path).
    assert_eq!(at(253_402_300_800, 7), "10000-01-01T00:00:00.000007+00:00");
}

/// Broken envelopes: each is an error, none panics.
#[test]
fn malformed_task_messages_are_errors() {
    let v2 = |body: &str| {
        let mut m = encode("a.b", b"{}", "id", false);
        m.body = body.as_bytes().to_vec();
        m
    };
    let v1 = |body: &str| Message {
        routing_key: "a.b".to_owned(),
        body: body.as_bytes().to_vec(),
        ..Message::default()
    };
    let mut bad_task_header = encode("a.b", b"{}", "id", false);
    bad_task_header
        .properties
        .headers
        .insert("task".to_owned(), HeaderValue::Int(1));
    let mut bad_id_header = encode("a.b", b"{}", "id", false);
    bad_id_header
        .properties
        .headers
        .insert("id".to_owned(), HeaderValue::Int(1));
    let ev = r#""{\"a\": 1}""#;
    let cases: Vec<(&str, Message)> = vec![
        ("v2 body not JSON", v2("not json")),
        ("v2 body empty", v2("")),
        ("v2 body an object", v2(r#"{"args": []}"#)),
        ("v2 body too short", v2(r#"[["{}"]]"#)),
        ("v2 body too long", v2(r#"[[], {}, {}, {}]"#)),
        ("args not a list", v2(r#"["{}", {}, {}]"#)),
        ("args empty", v2(r#"[[], {"routing_key": "a.b"}, {}]"#)),
        (
            "too many args",
            v2(&format!(r#"[[{ev}, "a.b", 3], {{}}, {{}}]"#)),
        ),
        ("args[0] not JSON", v2(r#"[["nope"], {}, {}]"#)),
        ("args[0] a number", v2(r#"[[42], {}, {}]"#)),
        ("event a list", v2(r#"[["[1, 2]"], {}, {}]"#)),
        ("event a JSON string", v2(r#"[["\"s\""], {}, {}]"#)),
        ("kwargs a list", v2(&format!(r#"[[{ev}], [], {{}}]"#))),
        (
            "routing_key a number",
            v2(&format!(r#"[[{ev}], {{"routing_key": 5}}, {{}}]"#)),
        ),
        (
            "routing_key twice",
            v2(&format!(
                r#"[[{ev}, "x.y"], {{"routing_key": "a.b"}}, {{}}]"#
            )),
        ),
        ("embed a string", v2(&format!(r#"[[{ev}], {{}}, "e"]"#))),
        (
            "meta not an object",
            v2(r#"[["{\"_tchu_meta\": 1}"], {}, {}]"#),
        ),
        (
            "deep nesting",
            v2(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
        ),
        ("task header not a string", bad_task_header),
        ("id header not a string", bad_id_header),
        ("v1 task not a string", v1(r#"{"task": 1, "args": []}"#)),
        (
            "v1 args not a list",
            v1(r#"{"task": "tchu_tchu.dispatch_event", "args": "x"}"#),
        ),
        (
            "v1 no args",
            v1(r#"{"task": "tchu_tchu.dispatch_event", "id": "i"}"#),
        ),
        ("v1 no task", v1(r#"{"args": [], "id": "i"}"#)),
        (
            "v1 id a number",
            v1(r#"{"task": "tchu_tchu.dispatch_event", "id": 1, "args": []}"#),
        ),
        (
            "v1 kwargs a string",
            v1(&format!(
                r#"{{"task": "tchu_tchu.dispatch_event", "args": [{ev}], "kwargs": "k"}}"#
            )),
        ),
        ("v1 unknown task", v1(r#"{"task": "other", "args": []}"#)),
        ("v1 body a list", v1("[1]")),
    ];
    assert!(cases.len() >= 10);
    for (what, msg) in cases {
        let r = std::panic::catch_unwind(|| decode(&msg));
        match r {
            Ok(Err(DecodeError::Shape { .. } | DecodeError::Json(_))) => {}
            other => panic!("{what}: expected a decode error, got {other:?}"),
        }
    }
}

#[test]
fn malformed_replies_are_errors() {
    let m = |body: &str| Message {
        body: body.as_bytes().to_vec(),
        ..Message::default()
    };
    for (what, body) in [
        ("not JSON", "nope"),
        ("empty", ""),
        ("a list", "[]"),
        ("no status", r#"{"result": 1}"#),
        ("status a number", r#"{"status": 1}"#),
        ("unknown state", r#"{"status": "WEIRD"}"#),
        (
            "results not a list",
            r#"{"status": "SUCCESS", "result": {"results": 1}}"#,
        ),
        (
            "results[0] not an object",
            r#"{"status": "SUCCESS", "result": {"results": [1]}}"#,
        ),
        (
            "results[0] without status",
            r#"{"status": "SUCCESS", "result": {"results": [{}]}}"#,
        ),
    ] {
        let r = std::panic::catch_unwind(|| decode_reply(&m(body)));
        assert!(matches!(r, Ok(Err(_))), "{what}: {r:?}");
    }
}

/// The fast path for `dispatch_event` bodies decodes exactly as the general path, and leaves
/// every other shape to it.
#[test]
fn fast_and_general_decode_agree() {
    let mut msgs: Vec<Message> = FIXTURES
        .iter()
        .filter(|(name, _)| !name.contains("reply"))
        .map(|(name, _)| load(name))
        .collect();
    for encoding in [CeleryEncoding::Lean, CeleryEncoding::Full] {
        msgs.push(encode_with(encoding, "a.b", br#"{"x": 1}"#, "id-1", false));
        msgs.push(encode_with(encoding, "a.b", br#"{}"#, "id-2", true));
    }
    let bodies: [&[u8]; 9] = [
        br#"[["{\"x\": 1}"], {"routing_key": "k.x"}, {}]"#,
        br#"[["{\"x\": 1}"], {"routing_key": null}, {}]"#,
        br#"[["{\"x\": 1}"], {"routing_key": ""}, {}]"#,
        br#"[["{\"x\": 1}"], {}, {"callbacks": null}]"#,
        br#"[["not json"], {"routing_key": "k.x"}, {}]"#,
        br#"[["[1]"], {"routing_key": "k.x"}, {}]"#,
        br#"[["{\"_tchu_meta\": 3}"], {"routing_key": "k.x"}, {}]"#,
        br#"[["{\"x\": 1}"], {"routing_key": 5}, {}]"#,
        br#"[["{\"x\": 1}"], {"routing_key": "k.x"}, []]"#,
    ];
    for body in bodies {
        let mut m = encode("t.opic", b"{}", "id-3", false);
        m.body = body.to_vec();
        msgs.push(m.clone());
        m.routing_key = String::new();
        msgs.push(m);
    }
    let mut fast = 0;
    for m in &msgs {
        if let Some(f) = decode_dispatch_fast(m) {
            fast += 1;
            assert_eq!(f, decode_general(m), "{}", String::from_utf8_lossy(&m.body));
        }
        assert_eq!(decode(m), decode_general(m));
    }
    assert!(fast >= 10, "the fast path took only {fast} messages");
}

/// The fast path for `SUCCESS` replies decodes exactly as the general path, and leaves every
/// other shape to it; the interim check agrees with a full parse.
#[test]
fn fast_and_general_reply_decode_agree() {
    let mut msgs: Vec<Message> = FIXTURES
        .iter()
        .filter(|(name, _)| name.contains("reply"))
        .map(|(name, _)| load(name))
        .collect();
    for reply in [
        Reply::Ok(json!({"a": 1})),
        Reply::Ok(json!([1, 2])),
        Reply::Remote(RpcError::new("E", "m")),
        Reply::HandlerFailed("boom".to_owned()),
        Reply::Invalid("bad".to_owned()),
    ] {
        msgs.push(encode_reply("t.opic", "h", "cid", &reply));
    }
    let bodies: [&str; 14] = [
        r#"{"status": "SUCCESS", "result": {"status": "no_handlers", "routing_key": "k"}, "results": []}"#,
        r#"{"status": "SUCCESS", "result": {"status": "no_handlers", "results": []}}"#,
        r#"{"status": "SUCCESS", "result": {"routing_key": "k", "results": []}}"#,
        r#"{"status": "SUCCESS", "result": {"routing_key": "k", "results": null}}"#,
        r#"{"status": "SUCCESS", "result": {"routing_key": 3, "results": []}}"#,
        r#"{"status": "SUCCESS", "result": {"results": [{"status": "dispatched"}]}}"#,
        r#"{"status": "SUCCESS", "result": {"results": [{"handler": "h", "status": 1}]}}"#,
        r#"{"status": "SUCCESS", "result": {"results": [{"handler": "h"}]}}"#,
        r#"{"status": "SUCCESS", "result": {"results": [{"status": "error", "error": 5}]}}"#,
        r#"{"status": "SUCCESS", "result": {"results": [{"status": "success"}, 7]}}"#,
        r#"{"status": "SUCCESS", "result": 42}"#,
        r#"{"status": "STARTED", "result": {"pid": 1}}"#,
        r#"{"status": "\u0053TARTED", "result": null}"#,
        r#"{"status": "FAILURE", "result": {"exc_type": "E", "exc_message": ["x"]}}"#,
    ];
    for body in bodies {
        let mut m = encode_reply("t.opic", "h", "cid", &Reply::Ok(json!(1)));
        m.body = body.as_bytes().to_vec();
        msgs.push(m);
    }
    let mut fast = 0;
    for m in &msgs {
        let text = String::from_utf8_lossy(&m.body).into_owned();
        if let Some(f) = decode_reply_fast(m) {
            fast += 1;
            assert_eq!(f, decode_reply_general(m), "{text}");
        }
        assert_eq!(decode_reply(m), decode_reply_general(m), "{text}");
        #[derive(serde::Deserialize)]
        struct Status {
            status: String,
        }
        let interim = serde_json::from_slice::<Status>(&m.body).is_ok_and(|s| {
            ["PENDING", "RECEIVED", "STARTED", "RETRY"].contains(&s.status.as_str())
        });
        assert_eq!(is_interim_reply(m), interim, "{text}");
    }
    assert!(fast >= 12, "the fast path took only {fast} replies");
}
