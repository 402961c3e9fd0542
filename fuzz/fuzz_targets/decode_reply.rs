//! `wire::decode_reply` (and `celery::is_interim_reply`, which the caller runs first) on any
//! received reply must not panic; what it accepts must survive a re-encode/decode in both
//! formats, except for the ambiguities the Celery reply format documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tchu_fuzz::{FuzzMessage, json_eq};
use tchu_runtime::__private::serde_json::Value;
use tchu_runtime::wire::{self, Reply, WireFormat, celery};

fn reply_eq(a: &Reply, b: &Reply) -> bool {
    match (a, b) {
        (Reply::Ok(x), Reply::Ok(y)) => json_eq(x, y),
        (Reply::Remote(x), Reply::Remote(y)) => {
            x.code == y.code && x.message == y.message && json_eq(&x.details, &y.details)
        }
        _ => a == b,
    }
}

/// A handler result that reads as a `TchuRPCException` (documented ambiguity).
fn looks_remote(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.get("success") == Some(&Value::Bool(false))
            && ["error_code", "error_message"]
                .iter()
                .any(|k| o.get(*k).is_some_and(|v| !v.is_null()))
    })
}

fuzz_target!(|input: FuzzMessage| {
    let msg = input.into_message();
    let _ = celery::is_interim_reply(&msg);
    let Ok(r) = wire::decode_reply(&msg) else {
        return;
    };
    for format in [WireFormat::Native, WireFormat::Celery] {
        if format == WireFormat::Celery {
            let ambiguous = match &r {
                Reply::Ok(v) => looks_remote(v),
                Reply::HandlerFailed(m) => m.starts_with(celery::INVALID_PREFIX),
                Reply::Remote(_) | Reply::Invalid(_) => false,
            };
            if ambiguous {
                continue;
            }
        }
        let m = wire::encode_reply(format, "user.created", "h", "cid", &r);
        let again = wire::decode_reply(&m)
            .unwrap_or_else(|e| panic!("re-encoded {format:?} reply refused: {e}\n{r:?}"));
        assert!(reply_eq(&again, &r), "{format:?}: {again:?} != {r:?}");
    }
});
