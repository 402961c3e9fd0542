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
mod defaults;
mod dispatch;
mod error;
mod event;
#[cfg(feature = "prometheus")]
mod exporter;
mod handler;
pub mod headers;
mod health;
#[cfg(feature = "postgres")]
pub mod inbox;
pub mod message;
mod needs;
#[cfg(feature = "postgres")]
pub mod outbox;
mod probe;
mod queue_type;
mod registry;
mod retry;
mod rpc;
mod schema_hash;
mod schemas;
mod tail;
pub mod telemetry;
pub mod testing;
mod tls;
pub mod topic;
mod topology;
pub mod trace;
mod url;
pub mod wire;

pub use app::{App, Running, run};
pub use broker::memory::MemoryBroker;
pub use catalog::{Catalog, EventEntry, SubscriptionEntry, catalog};
// Contracts: catalog files, `--catalog`/`--asyncapi`, schema fingerprints.
pub use catalog::{
    CATALOG_FORMAT, Called, CatalogFile, Published, Served, ServiceInfo, Subscribed, asyncapi,
    fingerprint, handle_catalog_flags, service_info,
};
pub use client::{Client, MessageId, call, connect, default_client, publish, set_default};
pub use config::{Config, MAX_SERVICE_BYTES};
pub use context::{Context, ContextError};
pub use dead_letter::{DeadLetter, DeadLetterBrowser};
pub use defaults::*;
pub use dispatch::{Stats, StatsSnapshot};
pub use error::{
    BrokerError, CallError, ConfigError, Error, PublishError, RpcError, SubscriptionError,
};
pub use event::Event;
pub use handler::{
    Delivery, Failure, FromDelivery, HandlerError, IntoOutcome, Meta, Outcome, Rejection,
    RejectionKind, State,
};
pub use health::{Health, HealthCheck};
pub use queue_type::{QueueType, UnknownQueueType};
pub use registry::Subscription;
pub use retry::{Backoff, RetryPolicy};
pub use tail::TailedEvent;
pub use tls::{ClientCert, TlsConfig};
pub use topic::{Pattern, Topic, TopicError};
pub use url::{BrokerUrl, redact};
pub use wire::CeleryEncoding;

/// The `schemars` crate, for `#[derive(tchu::JsonSchema)]` on types nested in events (add
/// `#[schemars(crate = "tchu::schemars")]`).
pub use schemars;
/// The `sqlx` crate of the outbox and inbox (feature `postgres`).
#[cfg(feature = "postgres")]
pub use sqlx;
/// The `validator` crate, for `#[derive(tchu::validator::Validate)]` on nested types.
pub use validator;

/// The plumbing that `#[tchu::event]` and `#[tchu::subscribe]` expand to (through
/// `tchu::__private`), and the registry and matcher for the workspace's own tests and benches.
/// Not public API: anything here may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::client::{call_event, publish_event};
    pub use crate::handler::{extract_event, extracted};
    pub use crate::needs::{Need, NeedProbe, ViaNeed, ViaNoNeed};
    pub use crate::probe::{
        HandlerArg, ProbeJsonSchema, ProbeNoSchema, ReplyOf, ResultReturn, ReturnsResult,
        ReturnsValue, SchemaProbe, ValueReturn, check_reply,
    };
    pub use crate::registry::{
        BoxFuture, EventInfo, HandlerEntry, HandlerFn, OptionalSchemaFn, Registry, SchemaFn,
        object_schema, schema_of,
    };
    pub use crate::topic::{TopicTrie, check_pattern, check_topic};
    pub use inventory;
    pub use serde;
    pub use serde_json;
}
