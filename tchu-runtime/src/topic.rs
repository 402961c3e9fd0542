//! Topics, patterns and AMQP topic matching.
//!
//! A topic is a routing key: dot-separated non-empty words, at most 255 bytes, no `*` or `#`.
//! A pattern may also use `*` (exactly one word) and `#` (zero or more words), each only as a
//! whole word. The rules are `const fn`s so the macros check literals at compile time with the
//! same code the runtime uses.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;

/// The longest routing key AMQP allows, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// What is wrong with a topic or pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The string is empty.
    #[error("a topic cannot be empty")]
    Empty,
    /// Longer than 255 bytes.
    #[error("a topic is at most 255 bytes")]
    TooLong,
    /// Two dots in a row, or a dot at either end.
    #[error("a topic is dot-separated non-empty words")]
    EmptyWord,
    /// `*` or `#` in an event topic.
    #[error("an event topic cannot contain `*` or `#`; those are for subscription patterns")]
    Wildcard,
    /// `*` or `#` inside a word, e.g. `user*`.
    #[error("`*` and `#` must be whole words, e.g. `user.*` or `user.#`")]
    PartialWildcard,
}

impl TopicError {
    /// The message, usable in `const` panics (compile-time checks).
    pub const fn message(self) -> &'static str {
        match self {
            TopicError::Empty => "a topic cannot be empty",
            TopicError::TooLong => "a topic is at most 255 bytes",
            TopicError::EmptyWord => "a topic is dot-separated non-empty words",
            TopicError::Wildcard => {
                "an event topic cannot contain `*` or `#`; those are for subscription patterns"
            }
            TopicError::PartialWildcard => {
                "`*` and `#` must be whole words, e.g. `user.*` or `user.#`"
            }
        }
    }
}

const fn check(s: &str, allow_wildcards: bool) -> Result<(), TopicError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    if b.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let mut i = 0;
    let mut word_start = 0;
    while i <= b.len() {
        if i == b.len() || b[i] == b'.' {
            let len = i - word_start;
            if len == 0 {
                return Err(TopicError::EmptyWord);
            }
            let mut j = word_start;
            while j < i {
                if b[j] == b'*' || b[j] == b'#' {
                    if !allow_wildcards {
                        return Err(TopicError::Wildcard);
                    }
                    if len != 1 {
                        return Err(TopicError::PartialWildcard);
                    }
                }
                j += 1;
            }
            word_start = i + 1;
        }
        i += 1;
    }
    Ok(())
}

/// Checks an event topic (no wildcards).
///
/// # Errors
/// The first rule the string breaks.
pub const fn check_topic(s: &str) -> Result<(), TopicError> {
    check(s, false)
}

/// Checks a subscription pattern (`*` and `#` allowed as whole words).
///
/// # Errors
/// The first rule the string breaks.
pub const fn check_pattern(s: &str) -> Result<(), TopicError> {
    check(s, true)
}

macro_rules! string_newtype {
    ($name:ident, $check:ident, $what:literal) => {
        #[doc = concat!("A validated ", $what, ".")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Validates and wraps a ", $what, ".")]
            ///
            /// # Errors
            /// When the string breaks the AMQP topic rules.
            pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
                let s = s.into();
                $check(&s)?;
                Ok($name(s))
            }

            /// The string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, TopicError> {
                $name::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(Topic, check_topic, "event topic (an AMQP routing key)");
string_newtype!(
    Pattern,
    check_pattern,
    "subscription pattern (an AMQP binding key)"
);

impl Pattern {
    /// Whether `topic` matches, by the AMQP rules (`*` one word, `#` zero or more). For many
    /// patterns, use a [`TopicTrie`].
    pub fn matches(&self, topic: &str) -> bool {
        pattern_matches(&self.0, topic)
    }
}

/// A trie of patterns for AMQP topic matching. The cost of a lookup grows with the number of
/// words in the key (and the wildcards on the way), not with the number of patterns.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    words: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of values inserted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, value: T) {
        let mut node = &mut self.root;
        for word in pattern.as_str().split('.') {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// Calls `f` with every value whose pattern matches `key`. A value may be visited more than
    /// once when a pattern with several `#` matches in several ways; [`TopicTrie::matches`]
    /// removes those repeats.
    ///
    /// Each `#` node is expanded at most once per position in `key`, however many `#` a
    /// pattern has, so the cost stays polynomial in the number of words.
    pub fn for_each_match<'a>(&'a self, key: &str, f: &mut impl FnMut(&'a T)) {
        let words: Vec<&str> = key.split('.').collect();
        walk(&self.root, &words, f, &mut HashSet::new());
    }

    /// The distinct values whose pattern matches `key`, in insertion-independent order.
    pub fn matches(&self, key: &str) -> Vec<&T> {
        let mut out: Vec<&T> = Vec::new();
        self.for_each_match(key, &mut |v| out.push(v));
        out.sort_by_key(|v| *v as *const T as usize);
        out.dedup_by_key(|v| *v as *const T as usize);
        out
    }
}

/// `(# node, words left)` states already walked in one lookup.
type Seen<T> = HashSet<(*const Node<T>, usize)>;

fn walk<'a, T>(node: &'a Node<T>, words: &[&str], f: &mut impl FnMut(&'a T), seen: &mut Seen<T>) {
    if let Some(h) = &node.hash {
        // `#` swallows zero or more words: try every split point. Several `#` in a pattern
        // reach the same `#` node with the same words left in many ways; walking it again
        // finds nothing new, and every shorter suffix was walked right after it, so stop.
        // Without this the walk is exponential in the number of `#`.
        let ptr: *const Node<T> = &**h;
        for i in 0..=words.len() {
            let rest = &words[i..];
            if !seen.insert((ptr, rest.len())) {
                break;
            }
            walk(h, rest, f, seen);
        }
    }
    match words.split_first() {
        None => node.values.iter().for_each(&mut *f),
        Some((first, rest)) => {
            if let Some(n) = node.words.get(*first) {
                walk(n, rest, f, seen);
            }
            if let Some(s) = &node.star {
                walk(s, rest, f, seen);
            }
        }
    }
}

/// Whether one pattern matches one key, by the AMQP rules (a direct reference, with no index:
/// time proportional to pattern words times key words).
pub fn pattern_matches(pattern: &str, key: &str) -> bool {
    if !pattern.contains('#') {
        // Word for word (`*` is exactly one word): no allocation.
        let mut k = key.split('.');
        return pattern
            .split('.')
            .all(|w| k.next().is_some_and(|kw| w == "*" || w == kw))
            && k.next().is_none();
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    // `next[j]`: whether the pattern words after the current one match `k[j..]`, computed from
    // the last pattern word back (a recursive search is exponential in the number of `#`).
    let mut next: Vec<bool> = (0..=k.len()).map(|j| j == k.len()).collect();
    let mut cur = vec![false; k.len() + 1];
    for w in p.iter().rev() {
        for j in (0..=k.len()).rev() {
            cur[j] = match *w {
                // Zero words, or one word and `#` again.
                "#" => next[j] || (j < k.len() && cur[j + 1]),
                "*" => j < k.len() && next[j + 1],
                w => j < k.len() && k[j] == w && next[j + 1],
            };
        }
        std::mem::swap(&mut next, &mut cur);
    }
    next[0]
}

/// The foundation issue's pattern table: each key with the patterns that match it (the others
/// must not). Shared by the matcher's and the memory broker's tests.
/// The most topics one [`TopicCache`] remembers; others are computed on each use.
pub(crate) const MAX_CACHED_TOPICS: usize = 1024;

/// Values remembered by topic, for per-delivery work on the few topics a process sees again and
/// again (the handlers a topic matches, a metric's handle). Up to [`MAX_CACHED_TOPICS`]
/// topics; the others are computed on each use. Each value is kept with a `tag` saying what it
/// was computed against (which metrics recorder); asked with another tag, the cache forgets
/// everything and starts again under the new one.
#[derive(Debug)]
pub(crate) struct TopicCache<V> {
    entries: RwLock<Tagged<V>>,
}

impl<V> Default for TopicCache<V> {
    fn default() -> Self {
        TopicCache {
            entries: RwLock::new(Tagged {
                tag: 0,
                values: HashMap::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct Tagged<V> {
    tag: usize,
    values: HashMap<Box<str>, V>,
}

impl<V: Clone> TopicCache<V> {
    /// The value of `topic` under `tag`: remembered, or made by `make` (and remembered).
    pub(crate) fn get_or_insert_with(
        &self,
        tag: usize,
        topic: &str,
        make: impl FnOnce() -> V,
    ) -> V {
        if let Ok(g) = self.entries.read()
            && g.tag == tag
            && let Some(v) = g.values.get(topic)
        {
            return v.clone();
        }
        let v = make();
        if let Ok(mut g) = self.entries.write() {
            if g.tag != tag {
                g.tag = tag;
                g.values.clear();
            }
            if g.values.len() < MAX_CACHED_TOPICS {
                g.values.insert(topic.into(), v.clone());
            }
        }
        v
    }

    /// How many topics are remembered (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.read().map_or(0, |g| g.values.len())
    }
}

#[cfg(test)]
pub(crate) const PATTERNS: [&str; 5] = ["user.created", "user.*", "user.#", "*.created", "#"];

/// See [`PATTERNS`].
#[cfg(test)]
pub(crate) const PATTERN_TABLE: &[(&str, &[&str])] = &[
    (
        "user.created",
        &["user.created", "user.*", "user.#", "*.created", "#"],
    ),
    ("user.profile.updated", &["user.#", "#"]),
    ("user", &["user.#", "#"]),
    ("order.created", &["*.created", "#"]),
    ("order", &["#"]),
    ("user.deleted", &["user.*", "user.#", "#"]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn syntax() {
        assert_eq!(check_topic("user.created"), Ok(()));
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(check_topic("user..x"), Err(TopicError::EmptyWord));
        assert_eq!(check_topic(".x"), Err(TopicError::EmptyWord));
        assert_eq!(check_topic("x."), Err(TopicError::EmptyWord));
        assert_eq!(check_topic("user.*"), Err(TopicError::Wildcard));
        assert_eq!(check_topic(&"a".repeat(256)), Err(TopicError::TooLong));
        assert_eq!(check_topic(&"a".repeat(255)), Ok(()));
        assert_eq!(check_pattern("user.*"), Ok(()));
        assert_eq!(check_pattern("#"), Ok(()));
        assert_eq!(check_pattern("user*"), Err(TopicError::PartialWildcard));
        assert_eq!(check_pattern("us#er.x"), Err(TopicError::PartialWildcard));
    }

    /// The table of the foundation issue, including the non-matches.
    #[test]
    fn pattern_table() {
        let (patterns, table) = (PATTERNS, PATTERN_TABLE);
        let mut trie = TopicTrie::new();
        for p in patterns {
            trie.insert(&Pattern::new(p).unwrap(), p);
        }
        for (key, expected) in table {
            let mut got: Vec<&str> = trie.matches(key).into_iter().copied().collect();
            got.sort_unstable();
            let mut want = expected.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "key {key}");
            for p in patterns {
                assert_eq!(pattern_matches(p, key), want.contains(&p), "{p} vs {key}");
            }
        }
    }

    /// Found by the `topic` fuzz target (a timeout): a pattern with several `#` made both the
    /// trie walk and the reference matcher try every way of splitting the key between them,
    /// which is exponential in the number of `#`.
    #[test]
    fn many_hashes_stay_polynomial() {
        let fuzzed = "#.#.#.#.#.#.#.#.#.b.#";
        let worst = ["#"; 100].join(".") + ".x";
        let long_key = ["a.b"; 200].join(".");
        for pattern in [fuzzed, worst.as_str()] {
            let mut trie = TopicTrie::new();
            trie.insert(&Pattern::new(pattern).unwrap(), ());
            for key in [
                long_key.as_str(),
                "a.b.a.b.a.b.a.b.a.b.a.b.a.b.a.b.a.b.a.b.c",
            ] {
                let want = pattern_matches(pattern, key);
                assert_eq!(!trie.matches(key).is_empty(), want, "{pattern} vs {key}");
            }
        }
        assert!(pattern_matches(fuzzed, &long_key));
        assert!(!pattern_matches(&worst, &long_key));
        // Several `#` around a repeated word: quadratic at worst, with a long key.
        let mut trie = TopicTrie::new();
        trie.insert(&Pattern::new("#.a.#.a.#.a.#.c").unwrap(), ());
        let key = ["a"; 2000].join(".");
        assert!(trie.matches(&key).is_empty());
        assert!(!pattern_matches("#.a.#.a.#.a.#.c", &key));
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned())
        ]
    }
    fn pword() -> impl Strategy<Value = String> {
        prop_oneof![word(), Just("*".to_owned()), Just("#".to_owned())]
    }

    proptest! {
        #[test]
        fn trie_agrees_with_reference(
            patterns in proptest::collection::vec(proptest::collection::vec(pword(), 1..5), 1..12),
            key in proptest::collection::vec(word(), 1..6),
        ) {
            let key = key.join(".");
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            let mut trie = TopicTrie::new();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(&Pattern::new(p.clone()).unwrap(), i);
            }
            let mut got: Vec<usize> = trie.matches(&key).into_iter().copied().collect();
            got.sort_unstable();
            let want: Vec<usize> = (0..patterns.len()).filter(|&i| pattern_matches(&patterns[i], &key)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn checker_never_panics(s in ".{0,300}") {
            let _ = check_pattern(&s);
            let _ = check_topic(&s);
        }
    }
}
