//! The topic/pattern checker, and a differential test of the pattern trie against the
//! reference matcher `topic::pattern_matches`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tchu_runtime::topic::{self, Pattern, Topic, TopicTrie};

/// A word of a pattern or key: mostly from a tiny alphabet so that patterns and keys meet.
#[derive(Debug, Arbitrary)]
enum Word {
    A,
    B,
    C,
    Star,
    Hash,
    Empty,
    Other(String),
}

impl Word {
    fn as_str(&self) -> &str {
        match self {
            Word::A => "a",
            Word::B => "b",
            Word::C => "c",
            Word::Star => "*",
            Word::Hash => "#",
            Word::Empty => "",
            Word::Other(s) => s,
        }
    }
}

fn join(words: &[Word]) -> String {
    words.iter().map(Word::as_str).collect::<Vec<_>>().join(".")
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Free-form strings for the checker.
    raw: Vec<String>,
    /// Patterns as words (may be invalid).
    patterns: Vec<Vec<Word>>,
    /// Keys as words (wildcards in a key are literal words, as AMQP treats them).
    keys: Vec<Vec<Word>>,
}

/// Keys derived from a pattern: each `*` as `a`, each `#` as nothing, one or two words.
fn derived_keys(p: &str) -> [String; 3] {
    let sub = |star: &str, hash: &str| {
        p.split('.')
            .filter_map(|w| match w {
                "*" => Some(star.to_owned()),
                "#" if hash.is_empty() => None,
                "#" => Some(hash.to_owned()),
                w => Some(w.to_owned()),
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    [sub("a", ""), sub("b", "a"), sub("c", "a.b")]
}

/// The direct recursive matcher (what `pattern_matches` was before it became a table):
/// exponential in the number of `#`, so only asked about small cases. A third opinion.
fn naive_matches(pattern: &str, key: &str) -> Option<bool> {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && go(rest, &k[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    let hashes = p.iter().filter(|w| **w == "#").count();
    (hashes <= 3 && k.len() <= 24).then(|| go(&p, &k))
}

fuzz_target!(|input: Input| {
    let mut candidates: Vec<String> = input.raw;
    candidates.extend(input.patterns.iter().map(|w| join(w)));

    let mut trie = TopicTrie::new();
    let mut patterns: Vec<String> = Vec::new();
    let mut keys: Vec<String> = input.keys.iter().map(|w| join(w)).collect();
    for s in candidates {
        let as_topic = topic::check_topic(&s);
        let as_pattern = topic::check_pattern(&s);
        assert_eq!(as_topic.is_ok(), Topic::new(s.as_str()).is_ok());
        assert_eq!(as_pattern.is_ok(), Pattern::new(s.as_str()).is_ok());
        if as_topic.is_ok() {
            // Every topic is a pattern that matches itself only.
            assert!(as_pattern.is_ok(), "{s:?}");
            assert!(topic::pattern_matches(&s, &s), "{s:?}");
        }
        if as_pattern.is_ok() {
            assert!(s.len() <= topic::MAX_TOPIC_LEN);
            keys.extend(derived_keys(&s));
            let p = Pattern::new(s.as_str()).expect("checked");
            trie.insert(&p, patterns.len());
            patterns.push(s);
        }
    }
    assert_eq!(trie.len(), patterns.len());
    for key in &keys {
        let got: Vec<usize> = trie.matches(key).into_iter().copied().collect();
        let mut got_sorted = got.clone();
        got_sorted.sort_unstable();
        got_sorted.dedup();
        assert_eq!(got.len(), got_sorted.len(), "matches() repeats a value");
        let want: Vec<usize> = (0..patterns.len())
            .filter(|&i| topic::pattern_matches(&patterns[i], key))
            .collect();
        assert_eq!(got_sorted, want, "key {key:?}, patterns {patterns:?}");
        for (i, p) in patterns.iter().enumerate() {
            if let Some(naive) = naive_matches(p, key) {
                assert_eq!(naive, want.contains(&i), "pattern {p:?}, key {key:?}");
            }
        }
    }
});
