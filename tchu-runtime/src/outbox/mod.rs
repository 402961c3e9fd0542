//! The transactional outbox (feature `postgres`): an event is written to the `tchu_outbox`
//! table inside the caller's own sqlx transaction, and a [`Relay`] publishes the committed rows
//! with publisher confirms. Nothing reaches the broker unless the transaction commits; once it
//! commits, the event is published at least once, in commit order per ordering key.
//!
//! - [`schema`]: the embedded migrations ([`migrate`]).
//! - `write.rs`: [`PublishIn::publish_in`] and the untyped [`publish_in`].
//! - [`relay`]: the relay (leases, LISTEN/NOTIFY, publishing, marking).
//! - `status.rs`: [`status`], [`replay`] and the metrics.
//!
//! The inbox (handlers that run at most once per message, in a transaction) is
//! [`crate::inbox`].

pub mod relay;
pub mod schema;
mod status;
mod write;

pub use relay::{Relay, RelayConfig, RelayHandle, RelayStep};
pub use schema::{migrate, migrate_conn};
pub use status::{
    DEPTH, OLDEST_AGE_SECONDS, OutboxStatus, PUBLISHED_TOTAL, RELAY_LAG_SECONDS, replay, status,
};
pub use write::{OutboxMessage, PublishIn, publish_in};

pub use crate::error::OutboxError;

/// The pool given to [`App::outbox`](crate::App::outbox).
#[derive(Debug, Clone)]
pub(crate) struct AppOutbox(pub(crate) sqlx::PgPool);

/// What the app starts for the outbox and the inbox: migrations, then the relay (settings from
/// [`RelayConfig::from_env`]) and the inbox's dedup sweep, each stopping when `stop` turns true.
pub(crate) async fn start_in_app(
    state: &crate::handler::StateMap,
    client: &crate::client::Client,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, OutboxError> {
    let mut tasks = Vec::new();
    let until_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(inbox) = state.get::<crate::inbox::Inbox>() {
        migrate(inbox.pool()).await?;
        let inbox = (*inbox).clone();
        tracing::info!(table = "tchu_inbox", window = ?inbox.window(), "inbox on");
        tasks.push(tokio::spawn(inbox.sweep_loop(until_stop(stop.clone()))));
    }
    if let Some(outbox) = state.get::<AppOutbox>() {
        migrate(&outbox.0).await?;
        let relay =
            Relay::new(outbox.0.clone(), client.clone()).with_config(RelayConfig::from_env()?)?;
        let stop = until_stop(stop);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = relay.run(stop).await {
                tracing::error!(error = %e, "outbox relay stopped");
            }
        }));
    }
    Ok(tasks)
}
