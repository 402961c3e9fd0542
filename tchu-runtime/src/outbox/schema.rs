//! The outbox and inbox tables, shipped with the crate as embedded migrations and applied by
//! [`migrate`] (or `tchu outbox migrate`).
//!
//! tchu keeps its own migration record (`tchu_schema`) rather than sqlx's `_sqlx_migrations`:
//! an application that runs its own sqlx migrations on the same database would otherwise see
//! tchu's versions as unknown ones and refuse to start.

use sqlx::{Connection as _, PgConnection, PgPool};

use super::OutboxError;

/// How many lease slots the outbox is split into: a row's slot is a hash of its ordering key
/// (a random slot when it has none); each relay leases a share of the slots.
pub const SLOTS: i16 = 64;

/// The `classid` of tchu's advisory locks (`pg_advisory_xact_lock(classid, objid)`), so they
/// never collide with an application's own single-key advisory locks.
pub(crate) const LOCK_CLASS: i32 = 0x7463_6875; // "tchu"

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "outbox, lease slots, relays and inbox",
    sql: r#"
CREATE TABLE tchu_outbox (
    id           bigserial PRIMARY KEY,
    message_id   uuid        NOT NULL,
    topic        text        NOT NULL,
    payload      jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    ordering_key text,
    slot         smallint    NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);
-- The relay's fetch: per slot, the pending rows in id (= commit, per key) order.
CREATE INDEX tchu_outbox_pending ON tchu_outbox (slot, id) WHERE published_at IS NULL;
-- Status: the oldest pending row.
CREATE INDEX tchu_outbox_pending_id ON tchu_outbox (id) WHERE published_at IS NULL;
-- The retention sweep and `replay --since`.
CREATE INDEX tchu_outbox_published ON tchu_outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE tchu_outbox_lease (
    slot         smallint PRIMARY KEY,
    owner        text,
    leased_until timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO tchu_outbox_lease (slot) SELECT generate_series(0, 63);

CREATE TABLE tchu_outbox_relay (
    relay_id   text PRIMARY KEY,
    seen_until timestamptz NOT NULL
);

-- Wakes the relays (LISTEN tchu_outbox) when a transaction that wrote rows commits.
CREATE FUNCTION tchu_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tchu_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER tchu_outbox_notify AFTER INSERT ON tchu_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tchu_outbox_notify();

CREATE TABLE tchu_inbox (
    message_id text        NOT NULL,
    handler    text        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, handler)
);
-- The dedup window's sweep.
CREATE INDEX tchu_inbox_handled_at ON tchu_inbox (handled_at);
"#,
}];

/// The channel the relays `LISTEN` on.
pub(crate) const NOTIFY_CHANNEL: &str = "tchu_outbox";

/// The latest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Creates or upgrades tchu's tables (`tchu_outbox`, `tchu_outbox_lease`, `tchu_outbox_relay`,
/// `tchu_inbox`) in the pool's database (in the first schema of its `search_path`). Safe to
/// call from every instance at start: it takes an advisory lock, applies only the missing
/// migrations, each in one transaction, and records them in `tchu_schema`. Returns the
/// versions it applied (empty when the schema was up to date).
///
/// # Errors
/// A database error (the failed migration is rolled back), or a schema newer than this build.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i32>, OutboxError> {
    let mut conn = pool.acquire().await.map_err(OutboxError::db("connect"))?;
    migrate_conn(&mut conn).await
}

/// [`migrate`] on one connection.
///
/// # Errors
/// See [`migrate`].
pub async fn migrate_conn(conn: &mut PgConnection) -> Result<Vec<i32>, OutboxError> {
    let mut tx = conn.begin().await.map_err(OutboxError::db("begin"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_CLASS)
        .execute(&mut *tx)
        .await
        .map_err(OutboxError::db("lock the schema"))?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tchu_schema (
             version     integer PRIMARY KEY,
             description text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(&mut *tx)
    .await
    .map_err(OutboxError::db("create tchu_schema"))?;
    let current: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tchu_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(OutboxError::db("read tchu_schema"))?;
    if current > latest_version() {
        return Err(OutboxError::SchemaTooNew {
            found: current,
            known: latest_version(),
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(OutboxError::db("apply a migration"))?;
        sqlx::query("INSERT INTO tchu_schema (version, description) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.description)
            .execute(&mut *tx)
            .await
            .map_err(OutboxError::db("record a migration"))?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "tchu schema migrated"
        );
        applied.push(m.version);
    }
    tx.commit()
        .await
        .map_err(OutboxError::db("commit the migration"))?;
    Ok(applied)
}

/// The slot of an ordering key: FNV-1a, stable across builds and platforms (it is stored).
pub(crate) fn slot_of(key: &str) -> i16 {
    let h = key_hash(key);
    i16::try_from(h % u64::from(SLOTS.unsigned_abs())).unwrap_or(0)
}

/// FNV-1a over the key's bytes.
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The advisory lock id of an ordering key (the low 32 bits of its hash).
pub(crate) fn key_lock(key: &str) -> i32 {
    // Truncation on purpose: a collision only makes two keys wait for each other.
    key_hash(key) as u32 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_in_range() {
        // Stored in rows: these values must never change.
        assert_eq!(key_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(slot_of("order-42"), slot_of("order-42"));
        for k in ["", "a", "order-1", "order-2", "ünïcode"] {
            let s = slot_of(k);
            assert!((0..SLOTS).contains(&s), "{k}: {s}");
        }
        let distinct: std::collections::HashSet<i16> =
            (0..1000).map(|i| slot_of(&format!("k{i}"))).collect();
        assert_eq!(
            distinct.len(),
            SLOTS as usize,
            "keys spread over every slot"
        );
    }

    #[test]
    fn versions_increase() {
        let v: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(latest_version(), 1);
    }
}
