//! What an operator sees: [`status`] (`tchu outbox status`), [`replay`] (`tchu outbox replay`)
//! and the metrics the relay records.

use std::time::Duration;

use sqlx::{PgPool, Row as _};

use super::OutboxError;

/// Gauge: rows waiting to be published (exact up to 100,000; above, an upper bound from the
/// pending ids).
pub const DEPTH: &str = "tchu_outbox_depth";
/// Gauge: age in seconds of the oldest row waiting to be published (0 when none waits).
pub const OLDEST_AGE_SECONDS: &str = "tchu_outbox_oldest_age_seconds";
/// Histogram: relay lag, from the row's insert to its publisher confirm, in seconds.
pub const RELAY_LAG_SECONDS: &str = "tchu_outbox_relay_lag_seconds";
/// Counter: outbox rows published and confirmed.
pub const PUBLISHED_TOTAL: &str = "tchu_outbox_published_total";

const EXACT_UP_TO: i64 = 100_000;

/// The outbox's state, as `tchu outbox status` prints it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Whether `pending` is exact (up to 100,000) or an upper bound.
    pub pending_exact: bool,
    /// Age of the oldest waiting row.
    pub oldest_age: Option<Duration>,
    /// Waiting rows whose publish failed at least once.
    pub failing: u64,
    /// The last publish error of a waiting row, if any.
    pub last_error: Option<String>,
    /// Published rows still kept for replay.
    pub retained: u64,
    /// Live relays and how many slots each holds.
    pub relays: Vec<(String, u64)>,
    /// The tchu schema version.
    pub schema_version: i32,
}

/// Reads the outbox's state. Every query is bounded by an index (at most 100,000 index
/// entries are counted).
///
/// # Errors
/// A database failure (or tchu's tables missing: run `tchu outbox migrate`).
pub async fn status(pool: &PgPool) -> Result<OutboxStatus, OutboxError> {
    let db = OutboxError::db;
    let counted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM tchu_outbox WHERE published_at IS NULL LIMIT $1) t",
    )
    .bind(EXACT_UP_TO)
    .fetch_one(pool)
    .await
    .map_err(db("count pending rows"))?;
    let oldest = sqlx::query(
        "SELECT id, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age
         FROM tchu_outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(db("read the oldest row"))?;
    let (first_id, oldest_age) = match &oldest {
        Some(r) => (
            r.try_get::<i64, _>("id")
                .map_err(db("read the oldest row"))?,
            Some(Duration::from_secs_f64(
                r.try_get::<f64, _>("age")
                    .map_err(db("read the oldest row"))?
                    .max(0.0),
            )),
        ),
        None => (0, None),
    };
    let (pending, pending_exact) = if counted < EXACT_UP_TO {
        (counted, true)
    } else {
        let last: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(id), 0) FROM tchu_outbox WHERE published_at IS NULL",
        )
        .fetch_one(pool)
        .await
        .map_err(db("read the newest row"))?;
        (last - first_id + 1, false)
    };
    let failing_row = sqlx::query(
        "SELECT count(*) AS n, max(last_error) AS err FROM (
             SELECT last_error FROM tchu_outbox
             WHERE published_at IS NULL AND attempts > 0 LIMIT 10000) t",
    )
    .fetch_one(pool)
    .await
    .map_err(db("count failing rows"))?;
    let failing: i64 = failing_row.try_get("n").map_err(db("count failing rows"))?;
    let last_error: Option<String> = failing_row
        .try_get("err")
        .map_err(db("count failing rows"))?;
    let retained: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM tchu_outbox WHERE published_at IS NOT NULL LIMIT $1) t",
    )
    .bind(EXACT_UP_TO)
    .fetch_one(pool)
    .await
    .map_err(db("count retained rows"))?;
    let relays = sqlx::query(
        "SELECT r.relay_id, count(l.slot) AS slots FROM tchu_outbox_relay r
         LEFT JOIN tchu_outbox_lease l ON l.owner = r.relay_id AND l.leased_until > now()
         WHERE r.seen_until > now() GROUP BY r.relay_id ORDER BY r.relay_id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("list relays"))?
    .into_iter()
    .map(|r| {
        Ok((
            r.try_get::<String, _>("relay_id")?,
            u64::try_from(r.try_get::<i64, _>("slots")?).unwrap_or(0),
        ))
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(db("list relays"))?;
    let schema_version: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tchu_schema")
            .fetch_one(pool)
            .await
            .map_err(db("read tchu_schema"))?;
    let u = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(OutboxStatus {
        pending: u(pending),
        pending_exact,
        oldest_age,
        failing: u(failing),
        last_error,
        retained: u(retained),
        relays,
        schema_version,
    })
}

/// Marks published rows kept for replay (see `RelayConfig::retention`) as pending again, so
/// the relays publish them once more, with their original message ids (consumers with an
/// inbox skip the ones they handled). `since`: rows published within that long ago; `topic`:
/// only that topic. Returns how many rows will be published again.
///
/// # Errors
/// A database failure.
pub async fn replay(
    pool: &PgPool,
    since: Duration,
    topic: Option<&str>,
) -> Result<u64, OutboxError> {
    let n = sqlx::query(
        "UPDATE tchu_outbox SET published_at = NULL, attempts = 0, last_error = NULL
         WHERE published_at IS NOT NULL
           AND published_at >= now() - make_interval(secs => $1)
           AND ($2::text IS NULL OR topic = $2)",
    )
    .bind(since.as_secs_f64())
    .bind(topic)
    .execute(pool)
    .await
    .map_err(OutboxError::db("mark rows for replay"))?
    .rows_affected();
    if n > 0 {
        sqlx::query("SELECT pg_notify('tchu_outbox', '')")
            .execute(pool)
            .await
            .map_err(OutboxError::db("wake the relays"))?;
    }
    Ok(n)
}

pub(crate) fn record_gauges(s: &OutboxStatus) {
    let depth = s.pending as f64;
    metrics::gauge!(DEPTH).set(depth);
    metrics::gauge!(OLDEST_AGE_SECONDS).set(s.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
}

pub(crate) fn record_published(lag: Duration) {
    metrics::counter!(PUBLISHED_TOTAL).increment(1);
    metrics::histogram!(RELAY_LAG_SECONDS).record(lag);
}
