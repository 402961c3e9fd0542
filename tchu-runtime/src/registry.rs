//! The link-time registry: `#[tchu::subscribe]` submits a [`Subscription`] and
//! `#[tchu::event]` an [`EventInfo`] with `inventory`; [`Registry::static_subscriptions`] reads
//! the subscriptions once into a validated, sorted snapshot, and [`crate::catalog`] reads both
//! for documentation (AsyncAPI).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::handler::{Delivery, Outcome};
use crate::retry::RetryPolicy;
use crate::topic::{Pattern, TopicCache, TopicTrie};

/// A boxed handler future.
pub type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// The type-erased handler the macro generates around a user's `async fn`.
pub type HandlerFn = fn(Arc<Delivery>) -> BoxFuture;

/// One handler registered at link time by `#[tchu::subscribe]`.
#[derive(Debug, Clone, Copy)]
pub struct Subscription {
    /// Unique id (default: module path and function name).
    pub id: &'static str,
    /// Display name (default: the function name).
    pub name: &'static str,
    /// The binding pattern.
    pub pattern: &'static str,
    /// The generated wrapper.
    pub handler: HandlerFn,
    /// Per-handler retry settings, if any were given.
    pub retry: Option<RetryPolicy>,
    /// Per-handler timeout, if one was given (`timeout = "30s"`).
    pub timeout: Option<std::time::Duration>,
    /// What the handler's arguments need from the app (`State<T>`, `Context<T>`), checked at
    /// start.
    #[doc(hidden)]
    pub needs: fn() -> Vec<crate::needs::Need>,
    /// For a typed handler (`#[tchu::subscribe(UserCreated)]`): the event type's name
    /// (`std::any::type_name`), so the catalog knows which schema the handler was compiled
    /// against. `None` for pattern handlers.
    pub event_type: Option<fn() -> &'static str>,
}

impl Subscription {
    /// Used by the macro; `const` so `inventory::submit!` accepts it.
    pub const fn new(
        id: &'static str,
        name: &'static str,
        pattern: &'static str,
        handler: HandlerFn,
    ) -> Self {
        Subscription {
            id,
            name,
            pattern,
            handler,
            retry: None,
            timeout: None,
            needs: crate::needs::no_needs,
            event_type: None,
        }
    }

    /// Records what the handler's arguments need (used by the macro).
    #[doc(hidden)]
    pub const fn with_needs(mut self, needs: fn() -> Vec<crate::needs::Need>) -> Self {
        self.needs = needs;
        self
    }

    /// Records the event type of a typed handler (used by the macro).
    pub const fn with_event(mut self, type_name: fn() -> &'static str) -> Self {
        self.event_type = Some(type_name);
        self
    }

    /// Sets a retry policy (used by the macro).
    pub const fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets the handler's timeout (used by the macro).
    pub const fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

inventory::collect!(Subscription);

pub use crate::event::{EventInfo, OptionalSchemaFn, SchemaFn, object_schema, schema_of};

/// A handler as the dispatcher holds it: static or added at run time.
#[derive(Clone)]
pub struct HandlerEntry {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Parsed pattern.
    pub pattern: Pattern,
    /// The handler.
    pub handler: Arc<dyn Fn(Arc<Delivery>) -> BoxFuture + Send + Sync>,
    /// Per-handler retry policy.
    pub retry: Option<RetryPolicy>,
    /// Per-handler timeout (else the service's).
    pub timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for HandlerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerEntry")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

/// The validated set of handlers of one service, with the matcher over their patterns.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: Vec<HandlerEntry>,
    trie: TopicTrie<usize>,
}

impl Registry {
    /// Every `#[tchu::subscribe]` linked into this binary.
    pub fn static_subscriptions() -> Vec<Subscription> {
        let mut v: Vec<Subscription> = inventory::iter::<Subscription>
            .into_iter()
            .copied()
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Builds from handler entries, rejecting duplicate ids.
    ///
    /// # Errors
    /// Every duplicate id.
    pub fn from_entries(
        mut entries: Vec<HandlerEntry>,
    ) -> Result<Registry, crate::error::SubscriptionError> {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &entries {
            *seen.entry(e.id.as_str()).or_default() += 1;
        }
        let dups: Vec<&str> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        if !dups.is_empty() {
            return Err(crate::error::SubscriptionError::DuplicateIds {
                ids: dups.into_iter().map(str::to_owned).collect(),
            });
        }
        let mut trie = TopicTrie::new();
        for (i, e) in entries.iter().enumerate() {
            trie.insert(&e.pattern, i);
        }
        Ok(Registry { entries, trie })
    }

    /// Converts link-time subscriptions to entries.
    ///
    /// # Errors
    /// An invalid pattern (only reachable by hand-built subscriptions).
    pub fn entries_from(
        subs: &[Subscription],
    ) -> Result<Vec<HandlerEntry>, crate::error::SubscriptionError> {
        subs.iter()
            .map(|s| {
                let pattern = Pattern::new(s.pattern).map_err(|source| {
                    crate::error::SubscriptionError::BadPattern {
                        handler: s.id.to_owned(),
                        pattern: s.pattern.to_owned(),
                        source,
                    }
                })?;
                let f = s.handler;
                Ok(HandlerEntry {
                    id: s.id.to_owned(),
                    name: s.name.to_owned(),
                    pattern,
                    handler: Arc::new(f),
                    retry: s.retry,
                    timeout: s.timeout,
                })
            })
            .collect()
    }

    /// All handlers, sorted by id.
    pub fn entries(&self) -> &[HandlerEntry] {
        &self.entries
    }

    /// The distinct patterns, sorted: exactly the bindings to declare.
    pub fn patterns(&self) -> Vec<Pattern> {
        let mut p: Vec<Pattern> = self.entries.iter().map(|e| e.pattern.clone()).collect();
        p.sort();
        p.dedup();
        p
    }

    /// Indices of the handlers matching `topic`, ascending.
    pub fn matching(&self, topic: &str) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        self.trie.for_each_match(topic, &mut |i| out.push(*i));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether there are no handlers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// [`Registry::matching`] remembered by topic, for one registry: a service receives the same
/// few topics again and again, and walking the trie costs about 1,600 instructions and an
/// allocation per delivery (measured with `permsg`), a lookup here about a tenth of that.
#[derive(Debug, Default)]
pub(crate) struct MatchCache {
    topics: TopicCache<Arc<[usize]>>,
}

impl MatchCache {
    /// [`Registry::matching`] of `topic` in `registry` (always the same registry).
    pub(crate) fn matching(&self, registry: &Registry, topic: &str) -> Arc<[usize]> {
        self.topics
            .get_or_insert_with(0, topic, || registry.matching(topic).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(patterns: &[&str]) -> Registry {
        let entries = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| HandlerEntry {
                id: format!("h{i}"),
                name: format!("h{i}"),
                pattern: Pattern::new(*p).expect("a valid pattern"),
                handler: Arc::new(|_| -> BoxFuture {
                    Box::pin(async { Ok(serde_json::Value::Null) })
                }),
                retry: None,
                timeout: None,
            })
            .collect();
        Registry::from_entries(entries).expect("distinct ids")
    }

    /// The cache answers as the registry does, the first time and every time after, also
    /// past the number of topics it keeps.
    #[test]
    fn the_match_cache_answers_as_the_registry() {
        let r = registry(&["user.*", "user.#", "#", "order.created", "*.created"]);
        let cache = MatchCache::default();
        let mut topics: Vec<String> = ["user.created", "order.created", "user", "x", "a.b.c"]
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        topics.extend((0..crate::topic::MAX_CACHED_TOPICS + 10).map(|i| format!("t{i}.created")));
        for round in 0..2 {
            for t in &topics {
                assert_eq!(
                    &*cache.matching(&r, t),
                    r.matching(t).as_slice(),
                    "{t} (round {round})"
                );
            }
        }
        assert_eq!(cache.topics.len(), crate::topic::MAX_CACHED_TOPICS);
    }
}
