//! The dispatcher's decoder (`wire/payload.rs`: the event validated and left raw) and
//! `wire::decode` (the event parsed into a tree) agree on every received message: the same
//! topic, kind, id, format and event, or the same error (the dead-letter reason).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tchu_fuzz::FuzzMessage;
use tchu_runtime::wire;

fuzz_target!(|input: FuzzMessage| {
    let msg = input.into_message();
    let limits = wire::Limits::new(1 << 20, usize::MAX);
    assert_eq!(
        wire::decode_as_dispatched(&msg, limits),
        wire::decode(&msg, limits)
    );
});
