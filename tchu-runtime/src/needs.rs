//! What a handler's arguments need from its app: `State<T>` a value given with
//! [`App::state`](crate::App::state), `Context<T>` a context helper
//! ([`App::context_helper`](crate::App::context_helper)). `#[tchu::subscribe]` records them
//! (through [`NeedProbe`], with the autoref trick) so that [`App::start`](crate::App::start)
//! refuses to start, naming the handler and the type, instead of dead-lettering every message
//! at run time.

use std::marker::PhantomData;

use crate::context::{Context, ContextHelpers};
use crate::handler::{State, StateMap};

/// One thing a handler argument needs from the app. Not public API: made by generated code.
#[derive(Clone, Copy)]
#[doc(hidden)]
pub struct Need {
    kind: NeedKind,
    type_name: &'static str,
}

#[derive(Clone, Copy)]
enum NeedKind {
    State(fn(&StateMap) -> bool),
    Context(fn(&ContextHelpers) -> bool),
}

impl std::fmt::Debug for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            NeedKind::State(_) => "State",
            NeedKind::Context(_) => "Context",
        };
        write!(f, "{kind}<{}>", self.type_name)
    }
}

impl Need {
    /// The missing thing as an error for handler `handler`, or `None` when the app provides it.
    pub(crate) fn check(
        &self,
        handler: &str,
        state: &StateMap,
        contexts: &ContextHelpers,
    ) -> Option<crate::error::SubscriptionError> {
        use crate::error::SubscriptionError as E;
        match self.kind {
            NeedKind::State(has) if !has(state) => Some(E::MissingState {
                handler: handler.to_owned(),
                type_name: self.type_name,
            }),
            NeedKind::Context(has) if !has(contexts) => Some(E::MissingContext {
                handler: handler.to_owned(),
                type_name: self.type_name,
            }),
            _ => None,
        }
    }
}

/// The needs of a handler without any (the default of a subscription).
pub(crate) fn no_needs() -> Vec<Need> {
    Vec::new()
}

/// Autoref specialization over a handler argument type `T`: `(&NeedProbe::<T>::new()).need()`
/// is `Some` for `State<_>` and `Context<_>` ([`ViaNeed`]) and `None` for anything else
/// ([`ViaNoNeed`]). Not public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct NeedProbe<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> NeedProbe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        NeedProbe(PhantomData)
    }
}

impl<T: ?Sized> Default for NeedProbe<T> {
    fn default() -> Self {
        NeedProbe::new()
    }
}

/// The specific case of [`NeedProbe`]. Not public API.
#[doc(hidden)]
pub trait ViaNeed {
    /// What the argument needs.
    fn need(&self) -> Option<Need>;
}

/// The general case of [`NeedProbe`]: nothing. Not public API.
#[doc(hidden)]
pub trait ViaNoNeed {
    /// Nothing.
    fn need(&self) -> Option<Need>;
}

impl<T: ?Sized> ViaNoNeed for &NeedProbe<T> {
    fn need(&self) -> Option<Need> {
        None
    }
}

impl<T: Send + Sync + 'static> ViaNeed for NeedProbe<State<T>> {
    fn need(&self) -> Option<Need> {
        Some(Need {
            kind: NeedKind::State(|s| s.get::<T>().is_some()),
            type_name: std::any::type_name::<T>(),
        })
    }
}

impl<T: Send + 'static> ViaNeed for NeedProbe<Context<T>> {
    fn need(&self) -> Option<Need> {
        Some(Need {
            kind: NeedKind::Context(|c| c.provides(std::any::TypeId::of::<T>())),
            type_name: std::any::type_name::<T>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Pool;

    #[test]
    #[expect(
        clippy::needless_borrow,
        reason = "the borrow is the autoref trick, written as the macro writes it"
    )]
    fn probes_find_state_and_context_only() {
        assert!((&NeedProbe::<State<Pool>>::new()).need().is_some());
        assert!((&NeedProbe::<Context<Pool>>::new()).need().is_some());
        assert!((&NeedProbe::<serde_json::Value>::new()).need().is_none());
        let need = (&NeedProbe::<State<Pool>>::new()).need().unwrap();
        let mut state = StateMap::default();
        let contexts = ContextHelpers::default();
        let err = need.check("svc::h", &state, &contexts).unwrap().to_string();
        assert!(err.contains("svc::h") && err.contains("Pool"), "{err}");
        state.insert(Pool);
        assert!(need.check("svc::h", &state, &contexts).is_none());
    }
}
