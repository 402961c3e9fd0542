//! The default value of every setting (a leaf: it depends on nothing in the crate). The README's
//! settings table lists them with their environment variables.

use std::time::Duration;

/// The default broker URL.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default exchange, shared with Python tchu-tchu.
pub const DEFAULT_EXCHANGE: &str = "tchu_events";
/// Default prefetch (unacknowledged deliveries the broker sends ahead).
pub const DEFAULT_PREFETCH: u16 = 256;
/// Default number of deliveries handled at once.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default largest body accepted (bytes); bigger messages are dead-lettered.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Default largest number of (top-level) AMQP headers accepted on a received message; a message
/// with more is dead-lettered. tchu and Celery set about 20 at most.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default RPC timeout, as in tchu-tchu (`TCHU_CALL_TIMEOUT`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest wait for a publish's confirm, reconnection included (`TCHU_PUBLISH_TIMEOUT`).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest wait for one broker node to accept a connection (TCP, TLS and the AMQP
/// handshake) before the next node is tried (`TCHU_CONNECT_TIMEOUT`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default grace period for in-flight handlers at shutdown (`TCHU_SHUTDOWN_GRACE`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default longest run of one handler (`TCHU_HANDLER_TIMEOUT`): 5 minutes. Far above what an
/// event handler should take, and far below RabbitMQ's `consumer_timeout` (30 minutes), after
/// which the broker closes the channel and redelivers every delivery in flight on it, not just
/// the stuck one.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest AMQP name (exchange, queue): a short string of at most 255 bytes.
pub const MAX_NAME_BYTES: usize = 255;
