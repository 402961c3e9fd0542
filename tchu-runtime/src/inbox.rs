//! The idempotent inbox (feature `postgres`): with [`App::inbox`](crate::App::inbox), every
//! handler runs inside a PostgreSQL transaction that also records "message M was handled by
//! handler H" in `tchu_inbox`. A handler takes that transaction as its [`Tx`] argument, so
//! its writes and the record commit together, when it succeeds; a failure or panic rolls both
//! back (and the delivery is retried as usual).
//!
//! A redelivered or duplicate message (same message id, same handler) finds the record, skips
//! the handler and is acknowledged. Two copies handled at once do not both run: the second
//! waits on the first's uncommitted record, then skips (or runs, if the first rolled back).
//!
//! # Dedup window
//! Records are kept for [`Inbox::dedup_window`] (default **7 days**, as NServiceBus does), then
//! deleted by a sweep the app runs every hour (or every tenth of the window, if shorter). A
//! copy arriving later than the window after the first is handled again.
//!
//! RPC requests run in a transaction too (a `Tx` works in their handlers) but are not recorded:
//! a caller waiting for a reply must get one. Messages without a message id (foreign
//! publishers) run in a transaction without a record, with a warning.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::handler::{Delivery, Failure, FromDelivery, Outcome, Rejection, RejectionKind};
use crate::registry::HandlerEntry;

/// Counter: duplicate deliveries skipped by the inbox, by `handler`.
pub const DUPLICATES_TOTAL: &str = "tchu_inbox_duplicates_total";

/// The default dedup window: 7 days.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The inbox settings given to [`App::inbox`](crate::App::inbox).
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    window: Duration,
}

impl Inbox {
    /// An inbox in `pool`'s database (run [`crate::outbox::migrate`] first, or let the app do
    /// it at start), with the default 7-day dedup window.
    pub fn new(pool: PgPool) -> Inbox {
        Inbox {
            pool,
            window: DEFAULT_DEDUP_WINDOW,
        }
    }

    /// Sets how long "handled" records are kept (see the [module docs](self)).
    #[must_use]
    pub fn dedup_window(mut self, window: Duration) -> Inbox {
        self.window = window;
        self
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Deletes the records older than the window, 5,000 at a time; returns how many.
    ///
    /// # Errors
    /// A database failure.
    pub async fn sweep(&self) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM tchu_inbox WHERE ctid IN (
                     SELECT ctid FROM tchu_inbox
                     WHERE handled_at < now() - make_interval(secs => $1) LIMIT 5000)",
            )
            .bind(self.window.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }

    /// Sweeps periodically until `stop` completes.
    pub(crate) async fn sweep_loop(self, stop: impl Future<Output = ()> + Send) {
        tokio::pin!(stop);
        let every = (self.window / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "inbox records past the dedup window"),
                Err(e) => tracing::warn!(error = %e, "inbox sweep failed"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

type Slot = Arc<Mutex<Option<Transaction<'static, Postgres>>>>;

tokio::task_local! {
    /// The transaction of the handler running in this future (set by [`run`]).
    static CURRENT: Slot;
}

/// The handler's database transaction, from the inbox: `async fn h(e: MyEvent, mut tx: Tx)`.
/// Use it as a connection (`query.execute(&mut *tx)`); it commits with the inbox record when
/// the handler returns success, and rolls back otherwise. Do not keep it past the handler.
///
/// Outbox writes work on it too (`event.publish_in(&mut tx)`): an event published by a
/// handler then goes out exactly when its handling commits.
pub struct Tx {
    guard: OwnedMappedMutexGuard<
        Option<Transaction<'static, Postgres>>,
        Transaction<'static, Postgres>,
    >,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Deref for Tx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.guard
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.guard
    }
}

impl FromDelivery for Tx {
    fn from_delivery(_: &Delivery) -> Result<Self, Rejection> {
        let slot = CURRENT.try_with(Arc::clone).map_err(|_| {
            Rejection::new(
                RejectionKind::Missing,
                "a `Tx` argument needs an inbox: give the app one with `App::inbox`",
            )
        })?;
        let guard: OwnedMutexGuard<_> = slot.try_lock_owned().map_err(|_| {
            Rejection::new(RejectionKind::Missing, "a handler can take one `Tx` only")
        })?;
        let guard = OwnedMutexGuard::try_map(guard, Option::as_mut).map_err(|_| {
            Rejection::new(RejectionKind::Missing, "a handler can take one `Tx` only")
        })?;
        Ok(Tx { guard })
    }
}

/// Runs one handler for one delivery: directly when the app has no inbox; otherwise in a
/// transaction with the inbox record (skipping a duplicate). Called by the dispatcher.
pub(crate) async fn run(entry: &HandlerEntry, delivery: Arc<Delivery>) -> Outcome {
    let Some(inbox) = delivery.state.get::<Inbox>() else {
        return (entry.handler)(delivery).await;
    };
    let mut tx = inbox
        .pool
        .begin()
        .await
        .map_err(|e| Failure::Transient(format!("inbox: cannot begin a transaction: {e}")))?;
    let record = match (&delivery.meta.message_id, delivery.meta.is_rpc) {
        (Some(id), false) => Some(id.clone()),
        (None, false) => {
            tracing::warn!(handler = %entry.id, topic = %delivery.meta.topic, "message without an id: handled without dedup");
            None
        }
        (_, true) => None,
    };
    if let Some(id) = &record {
        let inserted = sqlx::query(
            "INSERT INTO tchu_inbox (message_id, handler) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&entry.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| Failure::Transient(format!("inbox: cannot record the message: {e}")))?
        .rows_affected();
        if inserted == 0 {
            drop(tx);
            tracing::info!(handler = %entry.id, message_id = %id, "duplicate message skipped (inbox)");
            metrics::counter!(DUPLICATES_TOTAL, "handler" => entry.id.clone()).increment(1);
            return Ok(serde_json::Value::Null);
        }
    }
    let slot: Slot = Arc::new(Mutex::new(Some(tx)));
    // The handler's future is made and polled in the scope (a closure handler may extract
    // its `Tx` before its first await).
    let fut = CURRENT.sync_scope(Arc::clone(&slot), || (entry.handler)(delivery));
    let outcome = CURRENT.scope(Arc::clone(&slot), fut).await;
    let taken = slot.try_lock().ok().and_then(|mut g| g.take());
    match (outcome, taken) {
        (Ok(v), Some(tx)) => match tx.commit().await {
            Ok(()) => Ok(v),
            Err(e) => Err(Failure::Transient(format!(
                "inbox: the handler's transaction did not commit: {e}"
            ))),
        },
        (Ok(_), None) => Err(Failure::Transient(
            "the handler kept its `Tx` after returning; rolled back".to_owned(),
        )),
        // Dropping the transaction rolls it back.
        (Err(f), _) => Err(f),
    }
}
