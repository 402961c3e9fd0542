//! The transactional outbox and the inbox on the machine's real PostgreSQL and RabbitMQ
//! (feature `postgres`). Each test creates its own database (`tchu_t_<test>_<random>`) and
//! drops it, and uses its own exchange.
//!
//! 1. `rollback_publishes_nothing_commit_publishes_in_order_per_key`
//! 2. `kill_9_at_every_step` (>= 20 kills of the publishing process over 10,000 events; the
//!    process is this test binary run again as a child)
//! 3. `broker_cut_for_30s_while_5000_transactions_commit` (a TCP proxy of the test's own
//!    between the relay and RabbitMQ, cut for 30 s)
//!
//! The PostgreSQL server: `TCHU_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Tests 2 and 3 run when `TCHU_OUTBOX_TEST=1`
//! (as `.ci/outbox.sh` does): they take a minute each.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Names, WAIT};
use futures_util::StreamExt as _;
use tchu::outbox::{PublishIn as _, Relay, RelayConfig, RelayStep};
use tchu::sqlx::{self, Executor as _, PgPool, postgres::PgPoolOptions};
use tchu::{App, Client, Delivery, FromDelivery as _, Inbox, Pattern, Tx};
use tokio::sync::mpsc;

fn server_url() -> String {
    std::env::var("TCHU_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn heavy_tests_on() -> bool {
    std::env::var("TCHU_OUTBOX_TEST").as_deref() == Ok("1")
}

fn db_url(name: &str) -> String {
    let base = server_url();
    match base.rfind('/') {
        Some(i) if base[..i].contains("://") && i > base.find("://").unwrap_or(0) + 2 => {
            format!("{}/{name}", &base[..i])
        }
        _ => format!("{base}/{name}"),
    }
}

/// A database of one test, dropped by [`TestDb::drop_db`].
struct TestDb {
    name: String,
    url: String,
    pool: PgPool,
}

impl TestDb {
    async fn new(test: &str) -> TestDb {
        let name = format!(
            "tchu_t_{test}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server_url())
            .await
            .expect("PostgreSQL answers (TCHU_TEST_DATABASE_URL)");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        admin.close().await;
        let url = db_url(&name);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(WAIT)
            .connect(&url)
            .await
            .expect("connect to the test database");
        tchu::outbox::migrate(&pool).await.expect("migrate");
        TestDb { name, url, pool }
    }

    async fn drop_db(self) {
        self.pool.close().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server_url())
            .await
            .expect("PostgreSQL answers");
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop database");
        admin.close().await;
    }
}

#[tchu::event(topic = "outbox_test.step")]
#[derive(Debug, Clone, PartialEq)]
struct Step {
    key: String,
    /// The commit order of this event among its key's events (1, 2, ...).
    n: i64,
    /// Set on events of transactions that are rolled back: they must never arrive.
    rolled_back: bool,
}

/// A consumer of every event on the exchange (a temporary queue): decoded steps with their
/// message ids.
async fn tail_steps(client: &Client) -> mpsc::UnboundedReceiver<(String, Step)> {
    let stream = client
        .tail(&Pattern::new("outbox_test.#").expect("pattern"))
        .await
        .expect("tail");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(t)) = stream.next().await {
            let Ok(d) = t.decoded else { continue };
            if let (Some(id), Ok(step)) = (d.message_id, serde_json::from_value::<Step>(d.event))
            {
                let _ = tx.send((id, step));
            }
        }
    });
    rx
}

/// The per-key counter: run inside the transaction before writing the event, it gives the
/// event's commit order among its key's events (the row lock is held until commit).
async fn next_n(conn: &mut sqlx::PgConnection, key: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO key_counter (key, n) VALUES ($1, 1)
         ON CONFLICT (key) DO UPDATE SET n = key_counter.n + 1 RETURNING n",
    )
    .bind(key)
    .fetch_one(conn)
    .await
    .expect("counter")
}

const TEST_TABLES: &str = "
    CREATE TABLE key_counter (key text PRIMARY KEY, n bigint NOT NULL);
    CREATE TABLE produced (key text NOT NULL, n bigint NOT NULL, PRIMARY KEY (key, n));
    CREATE TABLE handled (key text NOT NULL, n bigint NOT NULL, message_id text NOT NULL);
";

/// Waits (bounded) until no outbox row is pending.
async fn wait_empty(pool: &PgPool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = tchu::outbox::status(pool).await.expect("status");
        if s.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox not emptied: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks first deliveries per key come in commit order, and returns (distinct, duplicates).
fn check_order(received: &[(String, Step)]) -> (usize, usize) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut dups = 0;
    for (id, s) in received {
        assert!(!s.rolled_back, "an event of a rolled-back transaction arrived: {s:?}");
        if !seen.insert(id.clone()) {
            dups += 1;
            continue;
        }
        let prev = last.insert(&s.key, s.n).unwrap_or(0);
        assert_eq!(
            s.n,
            prev + 1,
            "key {}: first deliveries out of commit order ({} after {prev})",
            s.key,
            s.n
        );
    }
    (seen.len(), dups)
}

// --- 1. rollback / commit / order per key -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_publishes_nothing_commit_publishes_in_order_per_key() {
    let names = Names::new("outbox_order");
    let db = TestDb::new("order").await;
    sqlx::raw_sql(TEST_TABLES)
        .execute(&db.pool)
        .await
        .expect("tables");
    let client = names.client().await;
    let mut rx = tail_steps(&client).await;
    let relay = Relay::new(db.pool.clone(), client.clone()).spawn();

    // A rolled-back transaction: nothing may arrive.
    let mut tx = db.pool.begin().await.expect("begin");
    for _ in 0..3 {
        Step {
            key: "r".into(),
            n: 0,
            rolled_back: true,
        }
        .publish_in_keyed(&mut tx, "r")
        .await
        .expect("publish_in");
    }
    tx.rollback().await.expect("rollback");

    // An invalid untyped payload is refused before anything is written.
    let mut tx = db.pool.begin().await.expect("begin");
    let err = tchu::outbox::publish_in(&mut tx, "outbox_test.step", &[1, 2], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    let err = tchu::outbox::publish_in(&mut tx, "bad topic#", &serde_json::json!({}), None)
        .await
        .unwrap_err();
    assert!(!err.is_database(), "{err}");
    tx.rollback().await.expect("rollback");

    // 8 writers, 4 keys, 200 transactions of 1-3 events; one in five rolled back.
    let keys = ["a", "b", "c", "d"];
    let committed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let pool = db.pool.clone();
        let committed = Arc::clone(&committed);
        writers.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let key = keys[((w + i) % 4) as usize];
                let rollback = (w * 25 + i) % 5 == 0;
                let mut tx = pool.begin().await.expect("begin");
                let events = 1 + (i % 3);
                for _ in 0..events {
                    let n = next_n(&mut tx, key).await;
                    Step {
                        key: key.into(),
                        n,
                        rolled_back: rollback,
                    }
                    .publish_in_keyed(&mut tx, key)
                    .await
                    .expect("publish_in");
                }
                if rollback {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                    committed.fetch_add(events, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let expected = committed.load(Ordering::Relaxed) as usize;
    let mut received = Vec::new();
    while received.len() < expected {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(x)) => received.push(x),
            _ => panic!("{} of {expected} events arrived", received.len()),
        }
    }
    // Nothing more (a rolled-back event would come now): the outbox empties once the relay
    // marked what was confirmed.
    wait_empty(&db.pool).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an extra event arrived"
    );
    let (distinct, dups) = check_order(&received);
    assert_eq!(distinct, expected);
    assert_eq!(dups, 0, "no crash, so no duplicate");
    let per_key: BTreeMap<&str, i64> = received
        .iter()
        .fold(BTreeMap::new(), |mut m, (_, s)| {
            let e = m.entry(s.key.as_str()).or_insert(0);
            *e = (*e).max(s.n);
            m
        });
    assert_eq!(per_key.values().sum::<i64>() as usize, expected, "{per_key:?}");

    relay.stop().await;
    names.cleanup(&client, &[], &[]).await;
    client.close().await;
    db.drop_db().await;
}

// --- inbox: a duplicate skips the handler -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_runs_a_handler_once_per_message_and_commits_with_it() {
    let names = Names::new("outbox_inbox");
    let db = TestDb::new("inbox").await;
    sqlx::raw_sql(TEST_TABLES)
        .execute(&db.pool)
        .await
        .expect("tables");
    let client = names.client().await;
    let runs = Arc::new(AtomicU64::new(0));
    let fail_first = Arc::new(AtomicBool::new(true));
    let (r, f) = (Arc::clone(&runs), Arc::clone(&fail_first));
    let app = App::new(names.config())
        .service(names.service("inbox"))
        .client(client.clone())
        .inbox(Inbox::new(db.pool.clone()))
        .retry(tchu::RetryPolicy {
            delay: Duration::from_millis(50),
            ..tchu::RetryPolicy::DEFAULT
        })
        .subscribe("outbox_test.#", "inbox_test.write", move |d: Arc<Delivery>| {
            let (r, f) = (Arc::clone(&r), Arc::clone(&f));
            async move {
                let mut tx = Tx::from_delivery(&d).map_err(|e| e.reason)?;
                let s: Step = serde_json::from_value(d.event.clone()).map_err(|e| e.to_string())?;
                r.fetch_add(1, Ordering::Relaxed);
                sqlx::query("INSERT INTO handled (key, n, message_id) VALUES ($1, $2, $3)")
                    .bind(&s.key)
                    .bind(s.n)
                    .bind(d.meta.message_id.clone().unwrap_or_default())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                // The first run fails after writing: its row must be rolled back.
                if f.swap(false, Ordering::Relaxed) {
                    return Err("first attempt fails".to_owned());
                }
                Ok::<(), String>(())
            }
        });
    let running = app.start().await.expect("start");
    // The same message id three times, as a relay that crashed between the confirm and the
    // mark publishes it again.
    let id = uuid::Uuid::new_v4().to_string();
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO tchu_outbox (message_id, topic, payload, slot)
             VALUES ($1::uuid, 'outbox_test.step', '{\"key\":\"k\",\"n\":1,\"rolled_back\":false}', 0)",
        )
        .bind(&id)
        .execute(&db.pool)
        .await
        .expect("insert");
    }
    let raw = Client::connect(names.config()).await.expect("connect");
    let relay = Relay::new(db.pool.clone(), raw.clone()).spawn();
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tchu_inbox")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        let stats = running.stats();
        if n == 1 && stats.received >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "inbox rows {n}, {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any straggler run, then: one row in the handler's table, one inbox record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled: i64 = sqlx::query_scalar("SELECT count(*) FROM handled")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(handled, 1, "the failed run's write rolled back; duplicates skipped");
    assert_eq!(runs.load(Ordering::Relaxed), 2, "one failed run, one good run, then skips");

    // The dedup window: records older than it are swept.
    let inbox = Inbox::new(db.pool.clone()).dedup_window(Duration::from_secs(3600));
    assert_eq!(inbox.sweep().await.expect("sweep"), 0);
    sqlx::query("UPDATE tchu_inbox SET handled_at = now() - interval '2 hours'")
        .execute(&db.pool)
        .await
        .expect("age");
    assert_eq!(inbox.sweep().await.expect("sweep"), 1);

    relay.stop().await;
    running.shutdown().await;
    names.cleanup(&client, &["inbox"], &[]).await;
    raw.close().await;
    client.close().await;
    db.drop_db().await;
}

