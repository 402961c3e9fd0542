//! Request contexts rebuilt from event data: the analog of tchu-tchu's
//! `TchuEvent.set_context_helper()`. A helper is set once for the app
//! ([`App::context_helper`](crate::App::context_helper)) and can be overridden per event type
//! ([`App::context_helper_for`](crate::App::context_helper_for)). Handlers ask for the context
//! with a [`Context<T>`] argument. An event type can require a context
//! ([`App::require_context`](crate::App::require_context)): when the helper cannot build one, the
//! delivery is dead-lettered as unauthorized and no handler runs.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::handler::{Delivery, FromDelivery, Meta, Rejection, RejectionKind};

type HelperFn = Arc<
    dyn Fn(&serde_json::Value, &Meta) -> Result<Box<dyn Any + Send>, ContextError> + Send + Sync,
>;

/// Why a context helper could not build a context from an event: the delivery is dead-lettered
/// as unauthorized, with this reason (and its cause, if any) in the dead letter.
///
/// Built from a reason (`"no user_id in the event".into()`, or `?` on an `Option::ok_or("..")`)
/// or, keeping the cause, with [`ContextError::with_source`].
///
/// ```
/// # use tchu_runtime as tchu;
/// use tchu::{ContextError, Meta};
///
/// struct User(u64);
///
/// fn user(event: &serde_json::Value, _meta: &Meta) -> Result<User, ContextError> {
///     let id = event["user_id"].as_u64().ok_or("no user_id in the event")?;
///     let id = u32::try_from(id).map_err(|e| ContextError::with_source("user_id too large", e))?;
///     Ok(User(id.into()))
/// }
/// # let _ = user;
/// let refused = ContextError::from("no user_id in the event");
/// assert_eq!(refused.to_string(), "no user_id in the event");
/// ```
#[derive(Debug)]
pub struct ContextError {
    reason: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ContextError {
    /// A refusal with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        ContextError {
            reason: reason.into(),
            source: None,
        }
    }

    /// A refusal with this reason, caused by `source` (a directory lookup that failed, ...).
    pub fn with_source(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ContextError {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The reason, without its cause.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<&str> for ContextError {
    fn from(reason: &str) -> Self {
        ContextError::new(reason)
    }
}

impl From<String> for ContextError {
    fn from(reason: String) -> Self {
        ContextError::new(reason)
    }
}

/// The context helpers of one app, kept in its state map.
#[derive(Default, Clone)]
pub(crate) struct ContextHelpers {
    default: HashMap<TypeId, HelperFn>,
    per_topic: HashMap<(TypeId, String), HelperFn>,
    required: Vec<Required>,
}

#[derive(Clone)]
struct Required {
    topic: &'static str,
    context: TypeId,
    context_name: &'static str,
}

impl fmt::Debug for ContextHelpers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextHelpers")
            .field("default", &self.default.len())
            .field("per_topic", &self.per_topic.len())
            .field("required", &self.required.len())
            .finish()
    }
}

fn erase<T, F>(f: F) -> HelperFn
where
    T: Send + 'static,
    F: Fn(&serde_json::Value, &Meta) -> Result<T, ContextError> + Send + Sync + 'static,
{
    Arc::new(move |event, meta| f(event, meta).map(|t| Box::new(t) as Box<dyn Any + Send>))
}

impl ContextHelpers {
    pub(crate) fn set<T, F>(&mut self, topic: Option<&str>, f: F)
    where
        T: Send + 'static,
        F: Fn(&serde_json::Value, &Meta) -> Result<T, ContextError> + Send + Sync + 'static,
    {
        let id = TypeId::of::<T>();
        match topic {
            Some(t) => {
                self.per_topic.insert((id, t.to_owned()), erase(f));
            }
            None => {
                self.default.insert(id, erase(f));
            }
        }
    }

    pub(crate) fn require<T: 'static>(&mut self, topic: &'static str) {
        self.required.push(Required {
            topic,
            context: TypeId::of::<T>(),
            context_name: std::any::type_name::<T>(),
        });
    }

    /// Whether a helper builds `id` (for every event, or for some).
    pub(crate) fn provides(&self, id: TypeId) -> bool {
        self.default.contains_key(&id) || self.per_topic.keys().any(|(t, _)| *t == id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.default.is_empty() && self.per_topic.is_empty() && self.required.is_empty()
    }

    fn helper(&self, id: TypeId, topic: &str) -> Option<&HelperFn> {
        self.per_topic
            .get(&(id, topic.to_owned()))
            .or_else(|| self.default.get(&id))
    }

    fn build(&self, id: TypeId, d: &Delivery) -> Result<Box<dyn Any + Send>, Rejection> {
        let helper = self.helper(id, &d.meta.topic).ok_or_else(|| {
            Rejection::new(
                RejectionKind::Missing,
                "no context helper for this context type: set one with `App::context_helper`",
            )
        })?;
        helper(d.event(), &d.meta).map_err(|e| {
            let mut reason = format!("unauthorized: {}", e.reason);
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                reason.push_str(": ");
                reason.push_str(&c.to_string());
                cause = c.source();
            }
            Rejection::new(RejectionKind::Unauthorized, reason)
        })
    }

    /// Checks the contexts that the delivery's event type requires.
    pub(crate) fn check_required(&self, d: &Delivery) -> Result<(), Rejection> {
        for r in self.required.iter().filter(|r| r.topic == d.meta.topic) {
            self.build(r.context, d).map_err(|mut rej| {
                if rej.kind == RejectionKind::Missing {
                    rej = Rejection::new(
                        RejectionKind::Unauthorized,
                        format!(
                            "unauthorized: `{}` requires a `{}` context and no helper builds one",
                            r.topic, r.context_name
                        ),
                    );
                }
                rej
            })?;
        }
        Ok(())
    }
}

/// A request context built by the app's context helper from the event data; a handler
/// argument. If the helper cannot build it, the delivery is dead-lettered as unauthorized.
#[derive(Debug, Clone)]
pub struct Context<T>(pub T);

impl<T> std::ops::Deref for Context<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Send + 'static> FromDelivery for Context<T> {
    fn from_delivery(d: &Delivery) -> Result<Self, Rejection> {
        let helpers = d.state.get::<ContextHelpers>().ok_or_else(|| {
            Rejection::new(
                RejectionKind::Missing,
                format!(
                    "no context helper for `{}`: set one with `App::context_helper`",
                    std::any::type_name::<T>()
                ),
            )
        })?;
        let built = helpers.build(TypeId::of::<T>(), d)?;
        built.downcast::<T>().map(|b| Context(*b)).map_err(|_| {
            Rejection::new(
                RejectionKind::Missing,
                "context helper returned another type",
            )
        })
    }
}
