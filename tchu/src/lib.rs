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

/// What generated code refers to. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use core::{future::Future, option::Option, pin::Pin, result::Result, time::Duration};
    pub use std::boxed::Box;
    pub use std::sync::Arc;
    pub use tchu_runtime::{
        Backoff, BoxFuture, Delivery, Event, Failure, FromDelivery, HandlerFn, IntoOutcome,
        MessageId, Rejection, RetryPolicy, Subscription, call_event, check_pattern, check_topic,
        extract_event, extracted, inventory, publish_event, serde, serde_json, validator,
    };
    pub use tchu_runtime::{CallError, Client, PublishError};
    pub use tchu_runtime::{
        EventInfo, ProbeJsonSchema, ProbeNoSchema, SchemaProbe, object_schema, schema_of, schemars,
    };
    /// For tests of the link-time registry.
    pub use tchu_runtime::{Outcome, Registry, TopicTrie};

    /// The compile-time check that a handler of `Req` returns `Req::Response`: `Self` is the
    /// handler's success type and `Resp` the response type it must be.
    #[diagnostic::on_unimplemented(
        message = "a handler of `{Req}` must return `{Resp}` or `Result<{Resp}, E>`, not `{Self}`",
        label = "expected `{Resp}` here",
        note = "`{Resp}` is the `response = ...` type of `#[tchu::event]` on `{Req}` (`()` when it has none)"
    )]
    pub trait ReplyOf<Req, Resp> {}

    #[diagnostic::do_not_recommend]
    impl<Req, T> ReplyOf<Req, T> for T {}

    /// Compiles only when the handler's success type is `Req::Response`.
    #[inline(always)]
    pub fn check_reply<Req, T, E>(_: &Result<T, E>)
    where
        Req: Event,
        T: ReplyOf<Req, <Req as Event>::Response>,
    {
    }
}
