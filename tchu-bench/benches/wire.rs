//! Wire encode and decode of a ~100-byte event in both formats.
#![expect(clippy::unwrap_used, reason = "a benchmark of known-good inputs")]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tchu_runtime::wire::{self, WireFormat};

fn event_json() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "seq": 123_456,
        "t_ns": 987_654_321_012_u64,
        "user": "user-000042",
        "action": "profile.updated",
        "pad": "abcdefghijklmnopqrst",
    }))
    .unwrap()
}

fn codec(c: &mut Criterion) {
    let json = event_json();
    let id = "3f1c2a4e-8d7b-4c1e-9a2f-5b6c7d8e9f00";
    let mut g = c.benchmark_group("wire");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, format) in [
        ("celery", WireFormat::Celery),
        ("native", WireFormat::Native),
    ] {
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| wire::encode(format, black_box("user.profile.updated"), &json, id, false));
        });
        let msg = wire::encode(format, "user.profile.updated", &json, id, false);
        eprintln!(
            "{name}: body {} bytes, {} headers",
            msg.body.len(),
            msg.properties.headers.len()
        );
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| wire::decode(black_box(&msg), wire::Limits::NONE).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
