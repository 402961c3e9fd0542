//! Topic matching with the trie tchu's dispatcher uses, at 10, 1k, 10k and 100k patterns.
//! Reported per key (each iteration looks up 64 keys; throughput is in keys).
#![expect(clippy::unwrap_used, reason = "a benchmark of known-good inputs")]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tchu_runtime::Pattern;
use tchu_runtime::topic::TopicTrie;

/// `n` patterns shaped like a large fleet's subscriptions: mostly exact three-word keys, every
/// 10th ending in `*`, every 1000th `app<k>.#`, plus two global wildcards.
fn patterns(n: usize) -> Vec<Pattern> {
    let mut v: Vec<Pattern> = (0..n)
        .map(|i| {
            let app = i % 100;
            let p = if i % 1000 == 999 {
                format!("app{app}.#")
            } else if i % 10 == 9 {
                format!("app{app}.ent{i}.*")
            } else {
                format!("app{app}.ent{i}.created")
            };
            Pattern::new(p).unwrap()
        })
        .collect();
    v.push(Pattern::new("#.deleted").unwrap());
    v.push(Pattern::new("*.*.updated").unwrap());
    v
}

/// 64 keys spread over the pattern range: hits, wildcard hits and misses.
fn keys(n: usize) -> Vec<String> {
    (0..64)
        .map(|j| {
            let i = (j * 7919) % n.max(1);
            let app = i % 100;
            match j % 4 {
                0 | 1 => format!("app{app}.ent{i}.created"),
                2 => format!("app{app}.ent{i}.updated"),
                _ => format!("other{j}.thing.deleted"),
            }
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_matching");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10usize, 1_000, 10_000, 100_000] {
        let mut trie = TopicTrie::new();
        for (i, p) in patterns(n).iter().enumerate() {
            trie.insert(p, i);
        }
        let keys = keys(n);
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_with_input(BenchmarkId::new("trie_matches", n), &keys, |b, keys| {
            b.iter(|| {
                let mut found = 0usize;
                for k in keys {
                    found += trie.matches(black_box(k)).len();
                }
                black_box(found)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
