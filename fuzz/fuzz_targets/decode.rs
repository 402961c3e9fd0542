//! `wire::decode` on any received message must not panic; what it accepts must be well formed
//! and survive a re-encode/decode in both formats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tchu_fuzz::{FuzzMessage, json_eq};
use tchu_runtime::wire::{self, Kind, WireFormat, celery};

fuzz_target!(|input: FuzzMessage| {
    let msg = input.into_message();
    let is_celery = celery::is_celery(&msg);
    let Ok(d) = wire::decode(&msg, wire::Limits::new(1 << 20, usize::MAX)) else {
        return;
    };
    assert_eq!(d.format == WireFormat::Celery, is_celery, "{d:?}");
    match &d.kind {
        Kind::CeleryInternal { task } => {
            assert!(task.starts_with(celery::HANDLER_TASK_PREFIX), "{task}");
            assert!(d.event.is_object() || d.event.is_null(), "{d:?}");
            return;
        }
        Kind::Event | Kind::Rpc => {
            let obj = d
                .event
                .as_object()
                .expect("an accepted event is a JSON object");
            if d.format == WireFormat::Celery {
                assert!(!obj.contains_key(celery::META_KEY), "{d:?}");
                assert!(!d.topic.is_empty(), "{d:?}");
            } else if obj.contains_key(celery::META_KEY) {
                // A native event may carry a `_tchu_meta` key of its own; the Celery encoder
                // would override it, so it does not round-trip through Celery.
                return;
            }
        }
    }
    if d.topic.is_empty() {
        // A native message with an empty routing key has no topic to re-send with.
        return;
    }
    // Re-encode what was decoded, in both formats, and decode it again.
    let json = d.event.to_string();
    let is_rpc = d.kind == Kind::Rpc;
    for format in [WireFormat::Celery, WireFormat::Native] {
        let m = wire::encode(format, &d.topic, json.as_bytes(), "id-1", is_rpc);
        let again = wire::decode(&m, wire::Limits::NONE)
            .unwrap_or_else(|e| panic!("re-encoded {format:?} message refused: {e}\n{d:?}"));
        assert_eq!(again.format, format);
        assert_eq!(again.topic, d.topic);
        assert_eq!(again.kind, d.kind);
        assert_eq!(again.message_id.as_deref(), Some("id-1"));
        assert!(
            json_eq(&again.event, &d.event),
            "{:?} != {:?}",
            again.event,
            d.event
        );
    }
});
