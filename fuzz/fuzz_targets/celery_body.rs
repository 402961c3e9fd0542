//! The Celery decoders on raw body bytes: as a protocol-2 `tchu_tchu.dispatch_event` task (with
//! the `task` header), as a header-less protocol-1 message, and as a result meta (reply).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tchu_runtime::message::{HeaderValue, Message};
use tchu_runtime::wire::{self, celery};

fuzz_target!(|body: &[u8]| {
    let mut v1 = Message {
        routing_key: "user.created".to_owned(),
        body: body.to_vec(),
        ..Message::default()
    };
    let _ = celery::is_celery(&v1);
    let _ = celery::decode(&v1);
    let _ = wire::decode(&v1, wire::Limits::new(1 << 20, usize::MAX));
    let _ = celery::is_interim_reply(&v1);
    let _ = celery::decode_reply(&v1);
    let _ = wire::json::decode_reply(&v1);

    v1.properties
        .headers
        .insert("task".to_owned(), HeaderValue::from(celery::DISPATCH_TASK));
    let v2 = v1;
    assert!(celery::is_celery(&v2));
    let _ = celery::decode(&v2);
});
