//! The runtime of [tchu](https://docs.rs/tchu): wire formats, brokers, topology, dispatch and
//! RPC. Users depend on the `tchu` facade, which re-exports what they need from here.
#![cfg_attr(not(test), warn(clippy::print_stdout))]

mod ack;
mod app;
pub mod broker;
mod catalog;
mod client;
mod config;
mod context;
mod dead_letter;
mod dispatch;
mod error;
mod event;
#[cfg(feature = "prometheus")]
mod exporter;
mod handler;
pub mod message;
mod registry;
mod retry;
mod rpc;
mod tail;
pub mod telemetry;
pub mod testing;
pub mod topic;
mod topology;
pub mod trace;
pub mod wire;

pub use app::{App, Health, HealthCheck, Running, run};
pub use broker::QueueType;
pub use broker::memory::MemoryBroker;
pub use catalog::{Catalog, EventEntry, SubscriptionEntry, catalog};
// Contracts: catalog files, `--catalog`/`--asyncapi`, schema fingerprints.
pub use catalog::{
    CATALOG_FORMAT, Called, CatalogFile, Published, Served, ServiceInfo, Subscribed, asyncapi,
    fingerprint, handle_catalog_flags, service_info,
};
pub use client::{
    Client, MessageId, call, call_event, default_client, publish, publish_event, set_default,
};
pub use config::{
    BrokerUrl, ClientCert, Config, DEFAULT_BROKER_URL, DEFAULT_CALL_TIMEOUT, DEFAULT_CONCURRENCY,
    DEFAULT_EXCHANGE, DEFAULT_MAX_BODY, DEFAULT_MAX_HEADERS, DEFAULT_PREFETCH, TlsConfig, redact,
};
pub use context::Context;
pub use dead_letter::DeadLetter;
pub use dispatch::{Stats, StatsSnapshot};
pub use error::{BrokerError, CallError, ConfigError, Error, PublishError, RpcError};
pub use event::Event;
pub use handler::{
    Delivery, Failure, FromDelivery, HandlerError, IntoOutcome, Meta, Outcome, Rejection,
    RejectionKind, State, extract_event, extracted,
};
pub use registry::{
    BoxFuture, EventInfo, HandlerEntry, HandlerFn, OptionalSchemaFn, ProbeJsonSchema,
    ProbeNoSchema, Registry, SchemaFn, SchemaProbe, Subscription, object_schema, schema_of,
};
pub use retry::{Backoff, RetryPolicy};
pub use tail::TailedEvent;
pub use topic::{Pattern, Topic, TopicError, TopicTrie, check_pattern, check_topic};

#[doc(hidden)]
pub use inventory;
/// The `schemars` crate, for `#[derive(tchu::JsonSchema)]` on types nested in events (add
/// `#[schemars(crate = "tchu::schemars")]`).
pub use schemars;
#[doc(hidden)]
pub use serde;
#[doc(hidden)]
pub use serde_json;
#[doc(hidden)]
pub use validator;

/// Header names tchu sets on retried and dead-lettered copies.
pub mod headers {
    pub use crate::dispatch::{
        ATTEMPT_HEADER, ATTEMPTS_HEADER, FIRST_FAILURE_HEADER, HANDLER_HEADER, HANDLERS_HEADER,
        LAST_FAILURE_HEADER, REASON_HEADER, TOPIC_HEADER,
    };
}
