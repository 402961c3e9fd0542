#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(clippy::print_stdout))]

pub use tchu_macros::{event, subscribe};

pub use tchu_runtime::DeadLetterBrowser;
pub use tchu_runtime::{
    App, Backoff, BrokerError, BrokerUrl, CallError, Client, ClientCert, Config, ConfigError,
    Context, ContextError, DeadLetter, Delivery, Error, Event, Failure, FromDelivery, HandlerError,
    Health, HealthCheck, MemoryBroker, MessageId, Meta, Pattern, PublishError, QueueType,
    Rejection, RejectionKind, RetryPolicy, RpcError, Running, State, StatsSnapshot,
    SubscriptionError, TlsConfig, Topic, TopicError, UnknownQueueType, call, default_client,
    publish, run, set_default,
};
pub use tchu_runtime::{Catalog, EventEntry, SubscriptionEntry, TailedEvent, catalog};
// Types that appear in the signatures above (`App::filter`, `App::subscribe`, `Meta::headers`,
// `DeadLetter::message`, ...), nameable through the facade.
pub use tchu_runtime::{IntoOutcome, MAX_SERVICE_BYTES, Outcome, Subscription, connect};

/// Messages as tchu sees them on the wire: properties and AMQP header values (in
/// [`Meta::headers`] and [`DeadLetter`]).
pub mod message {
    pub use tchu_runtime::message::{HeaderValue, Headers, Message, Properties};
}
// Contracts: catalog files (`tchu lint`/`diff`/`map`), `--catalog`/`--asyncapi`, fingerprints.
pub use tchu_runtime::{
    CATALOG_FORMAT, Called, CatalogFile, Published, Served, ServiceInfo, Subscribed, asyncapi,
    catalog_flags, fingerprint, handle_catalog_flags,
};

pub use tchu_runtime::headers;
pub use tchu_runtime::telemetry;
pub use tchu_runtime::testing;
pub use tchu_runtime::trace;
pub use tchu_runtime::wire::{CeleryEncoding, WireFormat};

/// The transactional outbox on PostgreSQL (feature `postgres`; see "Outbox and inbox").
#[cfg(feature = "postgres")]
pub mod outbox {
    pub use tchu_runtime::outbox::{
        DEPTH, OLDEST_AGE_SECONDS, OutboxError, OutboxMessage, OutboxStatus, PUBLISHED_TOTAL,
        PublishIn, RELAY_LAG_SECONDS, Relay, RelayConfig, RelayHandle, RelayStep, migrate,
        migrate_conn, publish_in, replay, schema, status,
    };
}

/// The idempotent inbox on PostgreSQL (feature `postgres`; see "Outbox and inbox").
#[cfg(feature = "postgres")]
pub mod inbox {
    pub use tchu_runtime::inbox::{DEFAULT_DEDUP_WINDOW, DUPLICATES_TOTAL, Inbox, Tx};
}

#[cfg(feature = "postgres")]
pub use tchu_runtime::inbox::{Inbox, Tx};

/// The `sqlx` crate tchu's outbox and inbox use (feature `postgres`): make pools and
/// transactions with it so the versions match.
#[cfg(feature = "postgres")]
pub use tchu_runtime::sqlx;

/// Wire formats: decoding any received message (as `tchu tail` shows them).
pub mod wire {
    pub use tchu_runtime::wire::{
        CeleryEncoding, DecodeError, Decoded, Kind, Limits, WireFormat, decode,
    };
}

/// Settings defaults and helpers.
pub mod config {
    pub use tchu_runtime::{
        DEFAULT_BROKER_URL, DEFAULT_CALL_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_EXCHANGE, DEFAULT_HANDLER_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_HEADERS,
        DEFAULT_PREFETCH, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, MAX_NAME_BYTES,
        MAX_SERVICE_BYTES, redact,
    };
}

/// The `validator` crate, for `#[derive(tchu::validator::Validate)]` on nested types
/// (add `#[validate(crate = "tchu::validator")]`).
pub use tchu_runtime::validator;

/// The `schemars` crate. `#[tchu::event]` derives `JsonSchema` for the catalog and AsyncAPI
/// (see [`catalog`]); types nested in an event derive it too, with
/// `#[derive(tchu::JsonSchema)]` and `#[schemars(crate = "tchu::schemars")]`.
pub use tchu_runtime::schemars;

/// The `JsonSchema` trait and derive of [`schemars`], for types nested in events.
pub use tchu_runtime::schemars::JsonSchema;

/// What generated code refers to. Not public API: anything here may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use core::{future::Future, option::Option, pin::Pin, result::Result, time::Duration};
    pub use std::borrow::Cow;
    pub use std::boxed::Box;
    pub use std::sync::Arc;
    pub use std::vec::Vec;
    pub use tchu_runtime::__private::{
        BoxFuture, EventInfo, HandlerArg, HandlerFn, ProbeJsonSchema, ProbeNoSchema, ReplyOf,
        ReturnsResult, ReturnsValue, SchemaProbe, call_event, check_pattern, check_reply,
        check_topic, extract_event, extracted, inventory, object_schema, publish_event, schema_of,
        serde, serde_json,
    };
    /// What handler arguments need from the app (`State<T>`, `Context<T>`).
    pub use tchu_runtime::__private::{Need, NeedProbe, ViaNeed, ViaNoNeed};
    pub use tchu_runtime::{
        Backoff, CallError, Client, Delivery, Event, Failure, FromDelivery, IntoOutcome, MessageId,
        PublishError, Rejection, RetryPolicy, Subscription, schemars, validator,
    };

    // For the workspace's own tests of the link-time registry and the matcher.
    pub use tchu_runtime::__private::{HandlerEntry, Registry, TopicTrie};
    pub use tchu_runtime::Outcome;
}
