#![doc = include_str!("../../README.md")]
#![cfg_attr(not(test), warn(clippy::print_stdout))]

// MACROS: pub use tchu_macros::{event, subscribe};

pub use tchu_runtime::{
    App, Backoff, BrokerError, BrokerUrl, CallError, Client, Config, ConfigError, DeadLetter,
    Delivery, Error, Event, Failure, FromDelivery, HandlerError, MemoryBroker, MessageId, Meta,
    Pattern, PublishError, QueueType, Rejection, RejectionKind, RetryPolicy, RpcError, Running,
    State, StatsSnapshot, Topic, TopicError, call, default_client, publish, run, set_default,
};

pub use tchu_runtime::headers;
pub use tchu_runtime::wire::WireFormat;

/// Settings defaults and helpers.
pub mod config {
    pub use tchu_runtime::{
        DEFAULT_BROKER_URL, DEFAULT_CALL_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_EXCHANGE,
        DEFAULT_MAX_BODY, DEFAULT_PREFETCH, redact,
    };
}

/// The `validator` crate, for `#[derive(tchu::validator::Validate)]` on nested types
/// (add `#[validate(crate = "tchu::validator")]`).
pub use tchu_runtime::validator;

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
}
