//! The relay: publishes committed outbox rows with publisher confirms, then marks them.
//!
//! # How the work is shared
//! The outbox is split into 64 slots ([`super::schema::SLOTS`]) (a row's slot is a hash of
//! its ordering key). Each relay leases a fair share of the slots in `tchu_outbox_lease`
//! (`FOR UPDATE SKIP LOCKED`, so relays never wait on each other) and publishes only the rows
//! of its slots. A lease lasts [`RelayConfig::lease`] (default **15 s**) and is renewed every
//! third of that; a relay that dies stops renewing, and its slots go to the others once its
//! lease has expired, i.e. at most 15 s later by default. A relay restarted with the same
//! [`RelayConfig::relay_id`] takes its own slots back at once.
//!
//! # Order
//! Rows of one slot are fetched in id order, and the rows of one ordering key are published
//! one after the other, each only after the previous one was confirmed; the first failure
//! stops that key until the next pass. Together with the key's advisory lock at write time
//! (ids follow commit order per key), the first delivery of each event of a key comes in
//! commit order. After a crash between the confirm and the mark, a suffix may be delivered
//! again (at least once): consumers deduplicate by message id (the [inbox](crate::inbox)).
//!
//! # When it runs
//! A statement trigger on `tchu_outbox` sends `NOTIFY tchu_outbox` when a writing transaction
//! commits; the relay `LISTEN`s and runs a pass at once. It also polls every
//! [`RelayConfig::poll_interval`] (default 1 s) in case a notification was lost (for example
//! while its listening connection was down), and runs passes back to back while batches come
//! back full.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use sqlx::{PgPool, Row as _};
use tokio::sync::{Notify, watch};

use super::OutboxError;
use super::schema::{NOTIFY_CHANNEL, SLOTS};
use super::status;
use crate::client::Client;
use crate::message::HeaderValue;

/// Settings of a relay. [`RelayConfig::default`] is what `tchu::run()` uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// This relay's name in the lease table (default: host name, process id and a random
    /// suffix; `TCHU_OUTBOX_RELAY_ID`). Give a stable one (e.g. the pod name) so a restarted
    /// relay takes its slots back without waiting for its lease to expire.
    pub relay_id: String,
    /// How long a lease lasts without renewal (default 15 s; `TCHU_OUTBOX_LEASE_SECS`): the
    /// longest a dead relay's slots wait before another relay takes them. At least 1 s.
    pub lease: Duration,
    /// The polling fallback when no notification arrives (default 1 s).
    pub poll_interval: Duration,
    /// Rows fetched per pass, at most (default 1,000): bounds the relay's memory.
    pub batch: u16,
    /// Publishes awaiting their confirm at once, at most (default 256).
    pub concurrency: usize,
    /// How long published rows are kept (marked `published_at`) for `tchu outbox replay`
    /// before being deleted (default 1 h; `TCHU_OUTBOX_RETENTION_SECS`). Zero deletes them as
    /// soon as they are confirmed.
    pub retention: Duration,
    /// How often the depth and oldest-age gauges are refreshed (default 10 s).
    pub metrics_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "relay".to_owned());
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        RelayConfig {
            relay_id: format!("{host}-{}-{suffix}", std::process::id()),
            lease: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            batch: 1000,
            concurrency: 256,
            retention: Duration::from_secs(3600),
            metrics_interval: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// The defaults, overridden by `TCHU_OUTBOX_RELAY_ID`, `TCHU_OUTBOX_LEASE_SECS` and
    /// `TCHU_OUTBOX_RETENTION_SECS` where set.
    ///
    /// # Errors
    /// [`OutboxError::BadSetting`] for a value that is not a number of seconds in range.
    pub fn from_env() -> Result<RelayConfig, OutboxError> {
        let mut c = RelayConfig::default();
        if let Ok(id) = std::env::var("TCHU_OUTBOX_RELAY_ID")
            && !id.trim().is_empty()
        {
            c.relay_id = id.trim().to_owned();
        }
        if let Some(d) = secs_var("TCHU_OUTBOX_LEASE_SECS")? {
            c.lease = d;
        }
        if let Some(d) = secs_var("TCHU_OUTBOX_RETENTION_SECS")? {
            c.retention = d;
        }
        c.check()?;
        Ok(c)
    }

    /// Refuses settings out of range.
    ///
    /// # Errors
    /// [`OutboxError::BadSetting`] naming the setting, its value and what is accepted.
    pub fn check(&self) -> Result<(), OutboxError> {
        if self.lease < Duration::from_secs(1) || self.lease > Duration::from_secs(3600) {
            return Err(OutboxError::BadSetting {
                name: "lease",
                value: format!("{:?}", self.lease),
                expected: "from 1 s to 1 h",
            });
        }
        if self.batch == 0 {
            return Err(OutboxError::BadSetting {
                name: "batch",
                value: "0".to_owned(),
                expected: "1 to 65535 rows",
            });
        }
        if self.concurrency == 0 {
            return Err(OutboxError::BadSetting {
                name: "concurrency",
                value: "0".to_owned(),
                expected: "at least 1",
            });
        }
        if self.poll_interval.is_zero() {
            return Err(OutboxError::BadSetting {
                name: "poll_interval",
                value: "0s".to_owned(),
                expected: "more than zero",
            });
        }
        if self.relay_id.is_empty() {
            return Err(OutboxError::BadSetting {
                name: "relay_id",
                value: "\"\"".to_owned(),
                expected: "a non-empty name",
            });
        }
        Ok(())
    }
}

fn secs_var(name: &'static str) -> Result<Option<Duration>, OutboxError> {
    let Ok(v) = std::env::var(name) else {
        return Ok(None);
    };
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9)
        .map(|s| Some(Duration::from_secs_f64(s)))
        .ok_or(OutboxError::BadSetting {
            name,
            value: v,
            expected: "a number of seconds, e.g. 15 or 0.5",
        })
}

/// A point in a relay's pass, reported to a [`Relay::observe`] callback (tests use it to
/// kill the process at an exact step; it can also feed logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayStep {
    /// The relay now holds `slots` slots.
    Leased {
        /// How many.
        slots: usize,
    },
    /// A pass fetched `rows` rows to publish.
    Fetched {
        /// How many.
        rows: usize,
    },
    /// One more publish of the pass was confirmed (`confirmed` of `of` so far); its row is not
    /// marked yet.
    Confirmed {
        /// Confirmed so far in this pass.
        confirmed: usize,
        /// Rows in the pass.
        of: usize,
    },
    /// The pass marked (or deleted) `rows` published rows.
    Marked {
        /// How many.
        rows: usize,
    },
    /// `rows` rows of the pass failed to publish and stay pending.
    Failed {
        /// How many.
        rows: usize,
    },
}

type Observer = Arc<dyn Fn(RelayStep) + Send + Sync>;

/// Publishes the outbox's committed rows. See the [module docs](self).
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    client: Client,
    config: RelayConfig,
    observer: Option<Observer>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("client", &self.client)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The slots this relay holds and until when (by its own clock, conservatively).
#[derive(Debug)]
struct Leases {
    slots: Vec<i16>,
    valid_until: Instant,
    renew_at: Instant,
}

/// One fetched row.
#[derive(Debug)]
struct Row {
    id: i64,
    message_id: String,
    topic: String,
    payload: String,
    headers: String,
    key: Option<String>,
    created_at: f64,
}

/// What publishing one key's rows gave: the confirmed (id, created_at) and the failed
/// (id, error).
type GroupResult = (Vec<(i64, f64)>, Vec<(i64, String)>);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass {
    pub(crate) fetched: usize,
    pub(crate) published: usize,
    pub(crate) failed: usize,
}

impl Relay {
    /// A relay publishing with `client` the outbox rows of `pool`'s database, with
    /// [`RelayConfig::default`].
    pub fn new(pool: PgPool, client: Client) -> Relay {
        Relay {
            pool,
            client,
            config: RelayConfig::default(),
            observer: None,
        }
    }

    /// Replaces the settings.
    ///
    /// # Errors
    /// Settings out of range (see [`RelayConfig::check`]).
    pub fn with_config(mut self, config: RelayConfig) -> Result<Relay, OutboxError> {
        config.check()?;
        self.config = config;
        Ok(self)
    }

    /// Calls `f` at each [`RelayStep`]. It runs inside the relay: keep it short.
    #[must_use]
    pub fn observe(mut self, f: impl Fn(RelayStep) + Send + Sync + 'static) -> Relay {
        self.observer = Some(Arc::new(f));
        self
    }

    /// The settings.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    fn step(&self, s: RelayStep) {
        if let Some(o) = &self.observer {
            o(s);
        }
    }

    /// Runs in the background until [`RelayHandle::stop`].
    pub fn spawn(self) -> RelayHandle {
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = self.run(stop).await {
                tracing::error!(error = %e, "outbox relay stopped");
            }
        });
        RelayHandle { stop: tx, task }
    }

    /// Runs until `stop` completes, then releases its leases. Database and broker failures
    /// are logged and retried with backoff; they never end the relay.
    ///
    /// # Errors
    /// None today (kept for failures that should stop it).
    pub async fn run(self, stop: impl Future<Output = ()> + Send) -> Result<(), OutboxError> {
        tokio::pin!(stop);
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), Arc::clone(&wake)));
        tracing::info!(
            relay = %self.config.relay_id,
            table = "tchu_outbox",
            lease = ?self.config.lease,
            "outbox relay started"
        );
        let mut leases = Leases {
            slots: Vec::new(),
            valid_until: Instant::now(),
            renew_at: Instant::now(),
        };
        let mut backoff = Duration::from_millis(100);
        let mut next_metrics = Instant::now();
        let mut next_sweep = Instant::now();
        loop {
            let now = Instant::now();
            if now >= leases.renew_at
                && let Err(e) = self.claim(&mut leases).await
            {
                tracing::warn!(error = %e, "outbox relay: cannot renew its leases");
                leases.renew_at = Instant::now() + backoff.min(self.config.lease / 3);
            }
            if now >= next_metrics {
                next_metrics = now + self.config.metrics_interval;
                match status::status(&self.pool).await {
                    Ok(s) => status::record_gauges(&s),
                    Err(e) => tracing::debug!(error = %e, "outbox status for metrics"),
                }
            }
            if now >= next_sweep {
                next_sweep = now + Duration::from_secs(60);
                if let Err(e) = self.sweep().await {
                    tracing::warn!(error = %e, "outbox relay: retention sweep failed");
                }
            }
            let pass = if Instant::now() < leases.valid_until && !leases.slots.is_empty() {
                self.pass(&leases).await
            } else {
                Ok(Pass::default())
            };
            let wait = match pass {
                Ok(p) if p.failed == 0 => {
                    backoff = Duration::from_millis(100);
                    if p.fetched >= usize::from(self.config.batch) {
                        continue;
                    }
                    self.config.poll_interval
                }
                Ok(p) => {
                    tracing::warn!(
                        failed = p.failed,
                        ?backoff,
                        "outbox rows not published yet; retrying"
                    );
                    next_backoff(&mut backoff)
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "outbox relay pass failed; retrying");
                    next_backoff(&mut backoff)
                }
            };
            let until = (Instant::now() + wait).min(leases.renew_at.max(Instant::now()));
            tokio::select! {
                () = &mut stop => break,
                () = wake.notified() => {}
                () = tokio::time::sleep_until(until.into()) => {}
            }
        }
        listener.abort();
        self.release().await;
        tracing::info!(relay = %self.config.relay_id, "outbox relay stopped");
        Ok(())
    }

    /// Runs passes until the relay's slots hold no pending row or `max_passes` ran; returns the
    /// rows published. For tools and tests (`tchu outbox relay --once`).
    ///
    /// # Errors
    /// A database failure while leasing or fetching.
    pub async fn drain(&self, max_passes: usize) -> Result<usize, OutboxError> {
        let mut leases = Leases {
            slots: Vec::new(),
            valid_until: Instant::now(),
            renew_at: Instant::now(),
        };
        let mut published = 0;
        for _ in 0..max_passes {
            if Instant::now() >= leases.renew_at {
                self.claim(&mut leases).await?;
            }
            let p = self.pass(&leases).await?;
            published += p.published;
            if p.fetched == 0 {
                break;
            }
        }
        self.release().await;
        Ok(published)
    }

    /// Registers this relay, renews its leases and takes or gives back slots to hold a fair
    /// share (all the slots divided by the live relays).
    async fn claim(&self, leases: &mut Leases) -> Result<(), OutboxError> {
        let started = Instant::now();
        let lease = self.config.lease.as_secs_f64();
        let me = self.config.relay_id.as_str();
        let db = OutboxError::db;
        let mut tx = self.pool.begin().await.map_err(db("begin the lease"))?;
        sqlx::query(
            "INSERT INTO tchu_outbox_relay (relay_id, seen_until)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (relay_id) DO UPDATE SET seen_until = EXCLUDED.seen_until",
        )
        .bind(me)
        .bind(lease)
        .execute(&mut *tx)
        .await
        .map_err(db("register the relay"))?;
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tchu_outbox_relay WHERE seen_until > now()")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("count the relays"))?;
        let live = usize::try_from(live.max(1)).unwrap_or(1);
        let total = usize::from(SLOTS.unsigned_abs());
        let share = total.div_ceil(live);
        let mut mine: Vec<i16> = sqlx::query_scalar(
            "UPDATE tchu_outbox_lease SET leased_until = now() + make_interval(secs => $2)
             WHERE owner = $1 RETURNING slot",
        )
        .bind(me)
        .bind(lease)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("renew the leases"))?;
        mine.sort_unstable();
        if mine.len() > share {
            let extra = mine.split_off(share);
            sqlx::query(
                "UPDATE tchu_outbox_lease SET owner = NULL, leased_until = '-infinity'
                 WHERE owner = $1 AND slot = ANY($2)",
            )
            .bind(me)
            .bind(&extra)
            .execute(&mut *tx)
            .await
            .map_err(db("give back slots"))?;
        } else if mine.len() < share {
            let want = i64::try_from(share - mine.len()).unwrap_or(0);
            let got: Vec<i16> = sqlx::query_scalar(
                "UPDATE tchu_outbox_lease
                 SET owner = $1, leased_until = now() + make_interval(secs => $2)
                 WHERE slot IN (SELECT slot FROM tchu_outbox_lease WHERE leased_until <= now()
                                ORDER BY slot LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING slot",
            )
            .bind(me)
            .bind(lease)
            .bind(want)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("take free slots"))?;
            mine.extend(got);
            mine.sort_unstable();
        }
        tx.commit().await.map_err(db("commit the lease"))?;
        let changed = mine != leases.slots;
        leases.slots = mine;
        // Counted from before the transaction: the database's lease ends later than this.
        leases.valid_until = started + self.config.lease;
        leases.renew_at = started + self.config.lease / 3;
        if changed {
            tracing::debug!(
                relay = me,
                slots = leases.slots.len(),
                live,
                "outbox leases"
            );
            self.step(RelayStep::Leased {
                slots: leases.slots.len(),
            });
        }
        Ok(())
    }

    /// Gives the slots back (at a clean stop) so other relays need not wait for the lease.
    async fn release(&self) {
        let me = self.config.relay_id.as_str();
        let r = async {
            sqlx::query(
                "UPDATE tchu_outbox_lease SET owner = NULL, leased_until = '-infinity'
                 WHERE owner = $1",
            )
            .bind(me)
            .execute(&self.pool)
            .await?;
            sqlx::query("DELETE FROM tchu_outbox_relay WHERE relay_id = $1")
                .bind(me)
                .execute(&self.pool)
                .await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut))
        {
            tracing::warn!(error = %e, "outbox relay: leases not released; they expire");
        }
    }

    /// Fetches the pending rows of the leased slots, publishes them, marks the confirmed ones.
    async fn pass(&self, leases: &Leases) -> Result<Pass, OutboxError> {
        let rows = self.fetch(&leases.slots).await?;
        if rows.is_empty() {
            return Ok(Pass::default());
        }
        let n = rows.len();
        self.step(RelayStep::Fetched { rows: n });
        // Publishing stops short of the lease's end, so no other relay publishes these rows
        // while this one still does.
        let deadline = leases.valid_until - Duration::from_millis(500).min(self.config.lease / 4);
        let mut groups: Vec<Vec<Row>> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for row in rows {
            match row.key.clone() {
                Some(k) => match by_key.get(&k) {
                    Some(&g) => groups[g].push(row),
                    None => {
                        by_key.insert(k, groups.len());
                        groups.push(vec![row]);
                    }
                },
                None => groups.push(vec![row]),
            }
        }
        let confirmed = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<GroupResult> = futures_util::stream::iter(groups)
            .map(|group| self.publish_group(group, deadline, &confirmed, n))
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut done = Vec::with_capacity(n);
        let mut failed = Vec::new();
        for (d, f) in results {
            done.extend(d);
            failed.extend(f);
        }
        let ids: Vec<i64> = done.iter().map(|(id, _)| *id).collect();
        self.mark(&ids).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for (_, created) in &done {
            status::record_published(Duration::from_secs_f64((now - created).max(0.0)));
        }
        self.step(RelayStep::Marked { rows: ids.len() });
        if !failed.is_empty() {
            self.step(RelayStep::Failed { rows: failed.len() });
            let (fids, errs): (Vec<i64>, Vec<String>) = failed.iter().cloned().unzip();
            sqlx::query(
                "UPDATE tchu_outbox o SET attempts = o.attempts + 1, last_error = f.err
                 FROM unnest($1::bigint[], $2::text[]) AS f(id, err) WHERE o.id = f.id",
            )
            .bind(&fids)
            .bind(&errs)
            .execute(&self.pool)
            .await
            .map_err(OutboxError::db("record failed publishes"))?;
        }
        Ok(Pass {
            fetched: n,
            published: ids.len(),
            failed: failed.len(),
        })
    }

    /// Publishes one key's rows in order, each after the previous one's confirm; stops at the
    /// first failure. Returns the confirmed (id, created_at) and the failed (id, error).
    async fn publish_group(
        &self,
        group: Vec<Row>,
        deadline: Instant,
        confirmed: &std::sync::atomic::AtomicUsize,
        of: usize,
    ) -> GroupResult {
        let mut done = Vec::with_capacity(group.len());
        for row in group {
            let r = tokio::time::timeout_at(deadline.into(), self.publish_row(&row)).await;
            let err = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(error_chain(&e)),
                Err(_) => Some("the relay's lease ends before the confirm".to_owned()),
            };
            if let Some(e) = err {
                return (done, vec![(row.id, e)]);
            }
            done.push((row.id, row.created_at));
            let c = confirmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            self.step(RelayStep::Confirmed { confirmed: c, of });
        }
        (done, Vec::new())
    }

    async fn publish_row(&self, row: &Row) -> Result<(), crate::error::PublishError> {
        let config = self.client.config();
        let mut msg = crate::wire::encode_with(
            config.format,
            config.celery_encoding,
            &row.topic,
            row.payload.as_bytes(),
            &row.message_id,
            false,
        );
        msg.properties.persistent = true;
        if let Ok(serde_json::Value::Object(h)) = serde_json::from_str(&row.headers) {
            for (k, v) in h {
                if let serde_json::Value::String(s) = v {
                    msg.properties
                        .headers
                        .insert(k, HeaderValue::from(s.as_str()));
                }
            }
        }
        self.client.send(&row.topic, msg, false).await.map(|_| ())
    }

    async fn fetch(&self, slots: &[i16]) -> Result<Vec<Row>, OutboxError> {
        let rows = sqlx::query(
            "SELECT r.id, r.message_id::text AS message_id, r.topic, r.payload::text AS payload,
                    r.headers::text AS headers, r.ordering_key,
                    extract(epoch FROM r.created_at)::float8 AS created_at
             FROM unnest($1::smallint[]) AS s(slot)
             CROSS JOIN LATERAL (
                 SELECT o.id, o.message_id, o.topic, o.payload, o.headers, o.ordering_key,
                        o.created_at
                 FROM tchu_outbox o
                 WHERE o.slot = s.slot AND o.published_at IS NULL
                 ORDER BY o.id
                 LIMIT $3
             ) AS r
             ORDER BY r.id
             LIMIT $2",
        )
        .bind(slots)
        .bind(i64::from(self.config.batch))
        .bind(per_slot(self.config.batch, slots.len()))
        .fetch_all(&self.pool)
        .await
        .map_err(OutboxError::db("fetch pending rows"))?;
        rows.into_iter()
            .map(|r| {
                Ok(Row {
                    id: r.try_get("id")?,
                    message_id: r.try_get("message_id")?,
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                    headers: r.try_get("headers")?,
                    key: r.try_get("ordering_key")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<Row>, sqlx::Error>>()
            .map_err(OutboxError::db("read pending rows"))
    }

    async fn mark(&self, ids: &[i64]) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = if self.config.retention.is_zero() {
            "DELETE FROM tchu_outbox WHERE id = ANY($1)"
        } else {
            "UPDATE tchu_outbox SET published_at = now() WHERE id = ANY($1)"
        };
        sqlx::query(sql)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(OutboxError::db("mark published rows"))?;
        Ok(())
    }

    /// Deletes published rows older than the retention, 5,000 at a time.
    async fn sweep(&self) -> Result<u64, OutboxError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM tchu_outbox WHERE id IN (
                     SELECT id FROM tchu_outbox
                     WHERE published_at < now() - make_interval(secs => $1)
                     LIMIT 5000 FOR UPDATE SKIP LOCKED)",
            )
            .bind(self.config.retention.as_secs_f64())
            .execute(&self.pool)
            .await
            .map_err(OutboxError::db("delete old published rows"))?
            .rows_affected();
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}

/// Rows read per slot in one fetch: the slots' prefixes together cover a batch twice over, so
/// one busy slot still fills a good part of it. Each slot's rows in the batch stay a prefix of
/// its pending rows (the batch is the lowest ids of the union), which keeps order per key.
fn per_slot(batch: u16, slots: usize) -> i64 {
    let slots = i64::try_from(slots.max(1)).unwrap_or(1);
    (i64::from(batch) * 2 / slots).max(64)
}

fn next_backoff(b: &mut Duration) -> Duration {
    let now = *b;
    *b = (*b * 2).min(Duration::from_secs(5));
    now
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Forwards `NOTIFY tchu_outbox` to `wake`; a lost listening connection also wakes it (a
/// notification may have been missed), and is reconnected by sqlx.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: cannot LISTEN; polling meanwhile");
                tokio::time::sleep(next_backoff(&mut backoff)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "outbox relay: LISTEN failed; polling meanwhile");
            tokio::time::sleep(next_backoff(&mut backoff)).await;
            continue;
        }
        backoff = Duration::from_millis(200);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    while listener.next_buffered().is_some() {}
                    wake.notify_one();
                }
                Ok(None) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: LISTEN connection failed");
                    wake.notify_one();
                    tokio::time::sleep(next_backoff(&mut backoff)).await;
                    break;
                }
            }
        }
    }
}

/// A relay running in the background.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay after its current pass and waits for it (its leases are released).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
