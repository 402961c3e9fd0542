//! Error types, one enum per operation family.

use std::time::Duration;

/// A broker-level failure (connection, channel, protocol). Its source is the transport's own
/// error, kept opaque so a `lapin` upgrade does not change tchu's API.
#[derive(thiserror::Error)]
#[error("{context}")]
pub struct BrokerError {
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// A queue declare refused because the queue exists with other arguments.
    queue_mismatch: bool,
}

impl BrokerError {
    pub(crate) fn new(context: impl Into<String>) -> Self {
        BrokerError {
            context: context.into(),
            source: None,
            queue_mismatch: false,
        }
    }

    pub(crate) fn with_source(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BrokerError {
            context: context.into(),
            source: Some(Box::new(source)),
            queue_mismatch: false,
        }
    }

    /// The broker refused to declare `queue` as a `wanted` queue (PRECONDITION_FAILED): it
    /// exists with other arguments. The text says how to migrate.
    pub(crate) fn queue_mismatch(
        queue: &str,
        wanted: crate::queue_type::QueueType,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let other = wanted.other();
        BrokerError {
            context: format!(
                "cannot declare `{queue}` as a {wanted} queue: the queue exists with other \
                 arguments (for example another x-queue-type); to migrate: drain it, delete it \
                 (`rabbitmqctl delete_queue {queue}`), and start the service again, or keep the \
                 old type with TCHU_QUEUE_TYPE={other}"
            ),
            source: Some(Box::new(source)),
            queue_mismatch: true,
        }
    }

    /// Adds, to a queue mismatch on one of a service's queues, that they migrate together.
    pub(crate) fn for_service(mut self, service: &str) -> Self {
        if self.queue_mismatch {
            self.context = format!(
                "{}; all the service's queues have one type, so migrate `{service}`, \
                 `{service}.dlq`, `{service}.tchu.bindings` and the `{service}.retry.*` \
                 wait queues together",
                self.context
            );
        }
        self
    }

    /// Whether a queue declare was refused because the queue exists with other arguments
    /// (for example another queue type).
    pub fn is_queue_mismatch(&self) -> bool {
        self.queue_mismatch
    }
}

/// Why a publish failed. Nothing was confirmed by the broker in any of these cases.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event failed validation; nothing was sent.
    #[error("event for topic `{topic}` is invalid: {errors}")]
    Invalid {
        /// The event's topic.
        topic: String,
        /// The field errors, as reported by `validator`.
        errors: validator::ValidationErrors,
    },
    /// The topic is not a valid AMQP topic.
    #[error(transparent)]
    Topic(#[from] crate::topic::TopicError),
    /// The payload could not be serialized.
    #[error("cannot serialize event for topic `{topic}`")]
    Encode {
        /// The event's topic.
        topic: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The payload is not a JSON object (tchu-tchu events are dicts); nothing was sent.
    #[error("the payload for topic `{topic}` must serialize to a JSON object")]
    NotAnObject {
        /// The event's topic.
        topic: String,
    },
    /// The broker refused the message (negative publisher confirm).
    #[error("broker did not confirm the message for topic `{topic}` (nack)")]
    Nacked {
        /// The event's topic.
        topic: String,
    },
    /// The connection or channel failed before the confirm arrived.
    #[error("publishing to topic `{topic}` failed")]
    Broker {
        /// The event's topic.
        topic: String,
        /// What went wrong.
        #[source]
        source: BrokerError,
    },
    /// No default client was set, and connecting one from the environment failed (the cause
    /// is shown; `tchu::connect()` at start fails fast instead, `tchu::set_default()` sets one).
    #[error("cannot connect the default tchu client from the environment: {0}")]
    NoClient(#[source] Box<crate::Error>),
}

/// A business error an RPC handler returns on purpose; the caller receives it as
/// [`CallError::Remote`]. The analog of tchu-tchu's `TchuRPCException`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RpcError {
    /// A machine-readable code, e.g. `"INVALID_EMAIL"`.
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// Optional structured details.
    #[serde(default)]
    pub details: serde_json::Value,
}

impl RpcError {
    /// A business error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        RpcError {
            code: code.into(),
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    /// Adds structured details.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Why an RPC call failed.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply within the deadline.
    #[error("no reply to `{topic}` within {timeout:?}")]
    Timeout {
        /// The request topic.
        topic: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// No queue is bound for the topic: nobody can answer.
    #[error("no service is subscribed to `{topic}`")]
    NoRoute {
        /// The request topic.
        topic: String,
    },
    /// The handler answered with a business error ([`RpcError`]).
    #[error("remote error {code}: {message}")]
    Remote {
        /// The error code.
        code: String,
        /// The message.
        message: String,
        /// Structured details.
        details: serde_json::Value,
    },
    /// The handler failed (returned another error, or panicked).
    #[error("remote handler failed: {message}")]
    HandlerFailed {
        /// The failure text reported by the responder.
        message: String,
    },
    /// The request failed validation, locally (nothing sent) or at the responder.
    #[error("invalid request: {message}")]
    Invalid {
        /// The validation errors as text.
        message: String,
        /// The structured errors, when the failure was local.
        errors: Option<validator::ValidationErrors>,
    },
    /// The reply did not deserialize into the response type.
    #[error("reply to `{topic}` does not match the response type")]
    BadReply {
        /// The request topic.
        topic: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// Sending the request failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A configuration error.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The broker URL could not be parsed.
    #[error("invalid broker url: {0}")]
    BrokerUrl(String),
    /// A setting had a value that is not accepted (from its environment variable, or set in
    /// code: the variable named is the setting's).
    #[error("invalid {name}=`{value}`: expected {expected}")]
    Env {
        /// The setting's environment variable, e.g. `TCHU_PREFETCH`.
        name: &'static str,
        /// The value given (long values are cut).
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A TLS file could not be used.
    #[error("cannot use {what} `{}`: {reason}", path.display())]
    TlsFile {
        /// Which file (e.g. "CA certificate file").
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS settings are inconsistent, or TLS is not available.
    #[error("tls: {0}")]
    Tls(String),
    /// No service name could be determined.
    #[error("no service name: set TCHU_SERVICE or `App::service`")]
    NoServiceName,
}

/// The error of [`run`](crate::run) and of the app builder.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The handlers cannot run as linked and configured (duplicate ids, bad patterns, a
    /// `State<T>` the app does not provide).
    #[error("invalid subscriptions: {0}")]
    Subscriptions(#[from] SubscriptionError),
    /// The app has no subscriptions and was not declared publish-only.
    #[error(
        "no subscriptions are linked into this binary; if handlers live in another crate, add \
         `use that_crate as _;`, or call `App::publish_only()` for a service without handlers"
    )]
    NoSubscriptions,
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The outbox or inbox failed to start (feature `postgres`).
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Why the handlers of an app cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// A handler's pattern is not a valid topic pattern.
    #[error("handler `{handler}`: pattern `{pattern}`: {source}")]
    BadPattern {
        /// The handler id.
        handler: String,
        /// The pattern given.
        pattern: String,
        /// Why it is not valid.
        #[source]
        source: crate::topic::TopicError,
    },
    /// Several handlers have the same id.
    #[error("duplicate handler ids: {}; give each handler a distinct `id = \"...\"`", ids.join(", "))]
    DuplicateIds {
        /// The ids used more than once.
        ids: Vec<String>,
    },
    /// A handler takes `State<T>` but the app was given no `T` (`App::state`).
    #[error(
        "handler `{handler}` takes `State<{type_name}>` but the app provides no `{type_name}`: \
         add `.state(value)` to the app"
    )]
    MissingState {
        /// The handler id.
        handler: String,
        /// The state type.
        type_name: &'static str,
    },
    /// A handler takes `Context<T>` but the app has no context helper for `T`.
    #[error(
        "handler `{handler}` takes `Context<{type_name}>` but the app has no context helper \
         for `{type_name}`: add `.context_helper(..)` to the app"
    )]
    MissingContext {
        /// The handler id.
        handler: String,
        /// The context type.
        type_name: &'static str,
    },
    /// Several problems.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<SubscriptionError>),
}

/// Writes an error as `anyhow` does: its message, then each cause on its own line. This is what
/// `main() -> Result<(), tchu::Error>` prints; Match on the variants for the structure.
fn report(
    e: &(dyn std::error::Error + 'static),
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    write!(f, "{e}")?;
    let mut cause = e.source();
    let mut shown = e.to_string();
    let mut n = 0;
    while let Some(c) = cause {
        let text = c.to_string();
        // `#[error(transparent)]` layers, and messages that end with their cause, repeat the
        // cause's text: show it once.
        if !shown.ends_with(&text) {
            if n == 0 {
                f.write_str("\n\nCaused by:")?;
            }
            write!(f, "\n    {n}: {text}")?;
            n += 1;
        }
        shown = text;
        cause = c.source();
    }
    Ok(())
}

/// An error's message followed by its causes, on one line (`a: b: c`), each shown once.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

macro_rules! readable_debug {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                report(self, f)
            }
        }
    )*};
}
readable_debug!(Error, PublishError, CallError, ConfigError, BrokerError);

/// Why an outbox operation failed (feature `postgres`; also `tchu::outbox::OutboxError`).
#[cfg(feature = "postgres")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The event was refused before anything was written (invalid, bad topic, not a JSON
    /// object, cannot serialize).
    #[error(transparent)]
    Refused(#[from] PublishError),
    /// The ordering key is empty or longer than 512 bytes.
    #[error("ordering key of {len} bytes; expected 1 to 512 bytes")]
    BadKey {
        /// Its length in bytes.
        len: usize,
    },
    /// The database refused or failed.
    #[error("outbox database operation failed: {what}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database's tchu schema is newer than this build knows.
    #[error(
        "the tchu schema in the database is at version {found}; this build knows up to {known}: upgrade tchu"
    )]
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// The latest version this build knows.
        known: i32,
    },
    /// A setting is out of range.
    #[error("outbox setting `{name}` = {value}: {expected}")]
    BadSetting {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

#[cfg(feature = "postgres")]
impl OutboxError {
    pub(crate) fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> OutboxError {
        move |source| OutboxError::Database { what, source }
    }

    /// Whether the database failed (rather than the event being refused).
    pub fn is_database(&self) -> bool {
        matches!(self, OutboxError::Database { .. })
    }
}
