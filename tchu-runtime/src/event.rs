//! The [`Event`] trait that `#[tchu::event]` implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed event: a topic, a payload that serializes to JSON and validates, and for RPC
/// requests the response type. Implemented by `#[tchu::event(topic = "...")]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tchu event",
    note = "add `#[tchu::event(topic = \"...\")]` to the struct"
)]
pub trait Event:
    Serialize + DeserializeOwned + validator::Validate + Send + Sync + 'static
{
    /// The topic (routing key) it is published with.
    const TOPIC: &'static str;
    /// The reply type when the event is an RPC request; `()` for broadcast events.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}
