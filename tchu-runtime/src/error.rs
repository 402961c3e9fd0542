//! Error types, one enum per operation family.

use std::time::Duration;

/// A broker-level failure (connection, channel, protocol). Its source is the transport's own
/// error, kept opaque so a `lapin` upgrade does not change tchu's API.
#[derive(Debug, thiserror::Error)]
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
        wanted: crate::broker::QueueType,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let other = match wanted {
            crate::broker::QueueType::Classic => crate::broker::QueueType::Quorum,
            crate::broker::QueueType::Quorum => crate::broker::QueueType::Classic,
        };
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
#[derive(Debug, thiserror::Error)]
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
    /// No default client is set and none could be made from the environment.
    #[error("no default tchu client: call `tchu::connect()` or `tchu::run()` first")]
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
#[derive(Debug, thiserror::Error)]
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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The broker URL could not be parsed.
    #[error("invalid broker url: {0}")]
    BrokerUrl(String),
    /// An environment variable had a bad value.
    #[error("invalid value for {name}: {reason}")]
    Env {
        /// The variable's name.
        name: &'static str,
        /// Why the value is not accepted.
        reason: String,
    },
    /// Not a queue type.
    #[error("unknown queue type `{0}`: expected `classic` or `quorum`")]
    QueueType(String),
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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The registry is inconsistent (duplicate ids, bad patterns).
    #[error("invalid subscriptions: {0}")]
    Registry(String),
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
    Outbox(#[from] crate::outbox::OutboxError),
}
