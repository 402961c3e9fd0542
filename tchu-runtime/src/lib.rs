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
mod health;
pub mod message;
mod needs;
mod queue_type;
mod registry;
mod retry;
mod rpc;
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
pub use client::{
    Client, MessageId, call, call_event, connect, default_client, publish, publish_event,
    set_default,
};
pub use config::{Config, MAX_SERVICE_BYTES};
pub use context::Context;
pub use dead_letter::DeadLetter;
pub use defaults::*;
pub use dispatch::{Stats, StatsSnapshot};
pub use error::{
    BrokerError, CallError, ConfigError, Error, PublishError, RpcError, SubscriptionError,
};
pub use event::Event;
pub use handler::{
    Delivery, Failure, FromDelivery, HandlerError, IntoOutcome, Meta, Outcome, Rejection,
    RejectionKind, State, extract_event, extracted,
};
pub use health::{Health, HealthCheck};
pub use queue_type::{QueueType, UnknownQueueType};
pub use registry::{
    BoxFuture, EventInfo, HandlerEntry, HandlerFn, OptionalSchemaFn, ProbeJsonSchema,
    ProbeNoSchema, Registry, SchemaFn, SchemaProbe, Subscription, object_schema, schema_of,
};
pub use retry::{Backoff, RetryPolicy};
pub use tail::TailedEvent;
pub use tls::{ClientCert, TlsConfig};
pub use topic::{Pattern, Topic, TopicError, TopicTrie, check_pattern, check_topic};
pub use url::{BrokerUrl, redact};

#[doc(hidden)]
pub use inventory;
#[doc(hidden)]
pub use needs::{Need, NeedProbe, ViaNeed, ViaNoNeed};
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
