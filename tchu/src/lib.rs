#![doc = include_str!("../../README.md")]
#![cfg_attr(not(test), warn(clippy::print_stdout))]

pub use tchu_macros::{event, subscribe};

pub use tchu_runtime::{
    App, Backoff, BrokerError, BrokerUrl, CallError, Client, ClientCert, Config, ConfigError,
    Context, DeadLetter, Delivery, Error, Event, Failure, FromDelivery, HandlerError, Health,
    HealthCheck, MemoryBroker, MessageId, Meta, Pattern, PublishError, QueueType, Rejection,
    RejectionKind, RetryPolicy, RpcError, Running, State, StatsSnapshot, TlsConfig, Topic,
    TopicError, call, default_client, publish, run, set_default,
};
pub use tchu_runtime::{Catalog, EventEntry, SubscriptionEntry, TailedEvent, catalog};
// Contracts: catalog files (`tchu lint`/`diff`/`map`), `--catalog`/`--asyncapi`, fingerprints.
pub use tchu_runtime::{
    CATALOG_FORMAT, Called, CatalogFile, Published, Served, ServiceInfo, Subscribed, asyncapi,
    catalog_flags, fingerprint, handle_catalog_flags,
};

pub use tchu_runtime::headers;
pub use tchu_runtime::telemetry;
pub use tchu_runtime::testing;
pub use tchu_runtime::trace;
pub use tchu_runtime::wire::WireFormat;

/// Wire formats: decoding any received message (as `tchu tail` shows them).
pub mod wire {
    pub use tchu_runtime::wire::{DecodeError, Decoded, Kind, Limits, WireFormat, decode};
}

/// Settings defaults and helpers.
pub mod config {
    pub use tchu_runtime::{
        DEFAULT_BROKER_URL, DEFAULT_CALL_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_EXCHANGE,
        DEFAULT_MAX_BODY, DEFAULT_MAX_HEADERS, DEFAULT_PREFETCH, redact,
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
    pub use tchu_runtime::__private::{
        BoxFuture, EventInfo, HandlerArg, HandlerFn, ProbeJsonSchema, ProbeNoSchema, ReplyOf,
        ReturnsResult, ReturnsValue, SchemaProbe, call_event, check_pattern, check_reply,
        check_topic, extract_event, extracted, inventory, object_schema, publish_event, schema_of,
        serde, serde_json,
    };
    pub use tchu_runtime::{
        Backoff, CallError, Client, Delivery, Event, Failure, FromDelivery, IntoOutcome, MessageId,
        PublishError, Rejection, RetryPolicy, Subscription, schemars, validator,
    };

    // For the workspace's own tests of the link-time registry and the matcher.
    pub use tchu_runtime::__private::{HandlerEntry, Registry, TopicTrie};
    pub use tchu_runtime::Outcome;
}
