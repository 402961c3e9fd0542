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

    /// [`TestDb::new`] with the tests' own tables ([`TEST_TABLES`]).
    async fn with_tables(test: &str) -> TestDb {
        let db = TestDb::new(test).await;
        sqlx::raw_sql(TEST_TABLES)
            .execute(&db.pool)
            .await
            .expect("tables");
        db
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
            if let (Some(id), Ok(step)) = (d.message_id, serde_json::from_value::<Step>(d.event)) {
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
    wait_empty_within(pool, WAIT).await;
}

async fn wait_empty_within(pool: &PgPool, within: Duration) {
    let deadline = Instant::now() + within;
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
        assert!(
            !s.rolled_back,
            "an event of a rolled-back transaction arrived: {s:?}"
        );
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
    let db = TestDb::with_tables("order").await;
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
    let per_key: BTreeMap<&str, i64> = received.iter().fold(BTreeMap::new(), |mut m, (_, s)| {
        let e = m.entry(s.key.as_str()).or_insert(0);
        *e = (*e).max(s.n);
        m
    });
    assert_eq!(
        per_key.values().sum::<i64>() as usize,
        expected,
        "{per_key:?}"
    );

    relay.stop().await;
    names.cleanup(&client, &[], &[]).await;
    client.close().await;
    db.drop_db().await;
}

// --- inbox: a duplicate skips the handler -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_runs_a_handler_once_per_message_and_commits_with_it() {
    let names = Names::new("outbox_inbox");
    let db = TestDb::with_tables("inbox").await;
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
        .subscribe(
            "outbox_test.#",
            "inbox_test.write",
            move |d: Arc<Delivery>| {
                let (r, f) = (Arc::clone(&r), Arc::clone(&f));
                async move {
                    let mut tx = Tx::from_delivery(&d).map_err(|e| e.reason)?;
                    let s: Step =
                        serde_json::from_value(d.event().clone()).map_err(|e| e.to_string())?;
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
            },
        );
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
    assert_eq!(
        handled, 1,
        "the failed run's write rolled back; duplicates skipped"
    );
    assert_eq!(
        runs.load(Ordering::Relaxed),
        2,
        "one failed run, one good run, then skips"
    );

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
    // The handler's retry wait queues too (`<queue>.retry.<delay>ms`, declared on first use;
    // the policy's first delays: 50 ms doubled).
    let wait_queues: Vec<String> = [50, 100, 200, 400]
        .iter()
        .map(|ms| format!("{}.retry.{ms}ms", names.service("inbox")))
        .collect();
    let wait_queues: Vec<&str> = wait_queues.iter().map(String::as_str).collect();
    names.cleanup(&client, &["inbox"], &wait_queues).await;
    raw.close().await;
    client.close().await;
    db.drop_db().await;
}

// --- 2. kill -9 at every step ------------------------------------------------------------------

/// Where the child stops (and is killed): after a pass fetched committed rows and before it
/// published any (`fetched`), after every publish of a pass was confirmed and before the rows
/// are marked (`confirmed`), or half way through a pass's confirms (`midbatch`). A producer
/// transaction open at that moment dies with the process (rolled back).
const KILL_KINDS: [&str; 3] = ["fetched", "confirmed", "midbatch"];
const KILL_EVENTS: i64 = 10_000;
const KILLS: usize = 21;

/// The child process of `kill_9_at_every_step` (this test binary run again): produces events
/// in transactions and relays them, and freezes at its kill point for the parent to kill it.
#[test]
#[ignore = "run by kill_9_at_every_step as a child process"]
fn outbox_child() {
    let Ok(url) = std::env::var("CHILD_DB_URL") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(child_main(url));
}

async fn child_main(url: String) {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let kind = env("CHILD_KILL");
    let after: usize = env("CHILD_KILL_AFTER").parse().unwrap_or(1);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("child: connect db");
    let mut config =
        tchu::Config::new(tchu::BrokerUrl::parse(&common::broker_url()).expect("broker url"));
    config.exchange = env("CHILD_EXCHANGE");
    config.publish_timeout = WAIT;
    let client = Client::connect(config)
        .await
        .expect("child: connect broker");
    let mut rc = RelayConfig::default();
    rc.relay_id = env("CHILD_RELAY_ID");
    rc.lease = Duration::from_secs(2);
    // Small passes in the lives that are killed (more steps to stop at); the last life
    // relays with the default batch.
    if kind != "none" {
        rc.batch = 50;
    }
    let hits = Arc::new(AtomicU64::new(0));
    let relay = Relay::new(pool.clone(), client.clone())
        .with_config(rc)
        .expect("relay config")
        .observe(move |step| {
            let hit = match (kind.as_str(), step) {
                ("fetched", RelayStep::Fetched { .. }) => true,
                ("confirmed", RelayStep::Confirmed { confirmed, of }) => confirmed == of,
                ("midbatch", RelayStep::Confirmed { confirmed, of }) => {
                    of >= 2 && confirmed == of / 2
                }
                _ => false,
            };
            if hit && hits.fetch_add(1, Ordering::SeqCst) + 1 == after as u64 {
                println!("KILLPOINT {kind} {step:?}");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                // Frozen here until the parent's SIGKILL.
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
        .spawn();
    let mut rng_state = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    loop {
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM produced")
            .fetch_one(&pool)
            .await
            .expect("count");
        if committed >= KILL_EVENTS {
            break;
        }
        let events = (1 + rand(4) as i64).min(KILL_EVENTS - committed);
        let rollback = rand(10) == 0;
        let key = format!("k{}", rand(16));
        let mut tx = pool.begin().await.expect("begin");
        for _ in 0..events {
            let n = next_n(&mut tx, &key).await;
            Step {
                key: key.clone(),
                n,
                rolled_back: rollback,
            }
            .publish_in_keyed(&mut tx, &key)
            .await
            .expect("publish_in");
            sqlx::query("INSERT INTO produced (key, n) VALUES ($1, $2)")
                .bind(&key)
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("produced");
        }
        if rollback {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
        }
    }
    println!("PRODUCED");
    // Bounded, but generous: on a loaded machine the last life may have thousands to relay.
    wait_empty_within(&pool, Duration::from_secs(150)).await;
    println!("DRAINED");
    relay.stop().await;
    client.close().await;
}

fn spawn_child(
    db: &TestDb,
    names: &Names,
    kind: &str,
    after: usize,
    relay_id: &str,
) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "outbox_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CHILD_DB_URL", &db.url)
        .env("CHILD_EXCHANGE", &names.exchange)
        .env("CHILD_KILL", kind)
        .env("CHILD_KILL_AFTER", after.to_string())
        .env("CHILD_RELAY_ID", relay_id)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the child")
}

/// Reads the child's stdout until a line has `marker` (true) or it ends (false),
/// within `within`.
fn wait_line(child: &mut std::process::Child, marker: &str, within: Duration) -> bool {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // The harness prints `test outbox_child ... ` before the child's first line.
            if !found && line.contains(&marker) {
                found = true;
                let _ = tx.send(true);
            }
            // Read on to the end, so the child never writes to a closed pipe.
        }
        if !found {
            let _ = tx.send(false);
        }
    });
    rx.recv_timeout(within)
        .expect("the child neither reached its point nor ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_step() {
    if !heavy_tests_on() {
        eprintln!("set TCHU_OUTBOX_TEST=1 to run (about a minute)");
        return;
    }
    let names = Names::new("outbox_kill");
    let db = TestDb::with_tables("kill").await;
    let client = names.client().await;
    let mut rx = tail_steps(&client).await;
    // The consumer with an inbox: one row per event in its table, whatever the duplicates.
    let app = App::new(names.config())
        .service(names.service("handler"))
        .client(client.clone())
        .concurrency(16)
        .inbox(Inbox::new(db.pool.clone()))
        .subscribe(
            "outbox_test.#",
            "kill_test.write",
            |d: Arc<Delivery>| async move {
                let mut tx = Tx::from_delivery(&d).map_err(|e| e.reason)?;
                let s: Step =
                    serde_json::from_value(d.event().clone()).map_err(|e| e.to_string())?;
                sqlx::query("INSERT INTO handled (key, n, message_id) VALUES ($1, $2, $3)")
                    .bind(&s.key)
                    .bind(s.n)
                    .bind(d.meta.message_id.clone().unwrap_or_default())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            },
        );
    let running = app.start().await.expect("start the consumer");

    let started = Instant::now();
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let mut fresh_ids = 0;
    for i in 0..KILLS {
        let kind = KILL_KINDS[i % 3];
        // Mostly one relay id (a restart takes its slots back at once); every fourth life a
        // new id, which waits for the dead relay's 2 s lease to expire.
        let relay_id = if i % 4 == 3 {
            fresh_ids += 1;
            format!("relay-{i}")
        } else {
            "relay-stable".to_owned()
        };
        let after = 1 + (i * 7) % 6;
        let mut child = spawn_child(&db, &names, kind, after, &relay_id);
        let hit = wait_line(&mut child, "KILLPOINT", Duration::from_secs(120));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert!(hit, "life {i}: the child ended before its {kind} point");
        *kills.entry(kind).or_default() += 1;
    }
    let produced_before: i64 = sqlx::query_scalar("SELECT count(*) FROM produced")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    // The last life runs to the end.
    let mut child = spawn_child(&db, &names, "none", 0, "relay-stable");
    assert!(
        wait_line(&mut child, "DRAINED", Duration::from_secs(180)),
        "last life did not drain"
    );
    let _ = child.wait();

    let produced: HashSet<(String, i64)> = sqlx::query_as("SELECT key, n FROM produced")
        .fetch_all(&db.pool)
        .await
        .expect("produced")
        .into_iter()
        .collect();
    assert_eq!(produced.len() as i64, KILL_EVENTS);
    let mut received = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < produced.len() {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some((id, s))) => {
                distinct.insert(id.clone());
                received.push((id, s));
            }
            _ => panic!("{} of {} events arrived", distinct.len(), produced.len()),
        }
    }
    let (n_distinct, dups) = check_order(&received);
    let got: HashSet<(String, i64)> = received.iter().map(|(_, s)| (s.key.clone(), s.n)).collect();
    assert_eq!(
        got, produced,
        "every committed event arrived, and nothing else"
    );
    // The inbox: exactly one row per event in the handler's table.
    let deadline = Instant::now() + WAIT;
    let (rows, keys): (i64, i64) = loop {
        let r: (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT (key, n)) FROM handled")
                .fetch_one(&db.pool)
                .await
                .expect("handled");
        if r.0 >= KILL_EVENTS || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_after: i64 = sqlx::query_scalar("SELECT count(*) FROM handled")
        .fetch_one(&db.pool)
        .await
        .expect("handled");
    assert_eq!(
        (rows, keys, rows_after),
        (KILL_EVENTS, KILL_EVENTS, KILL_EVENTS)
    );
    let stats = running.shutdown().await;
    println!(
        "kill -9: {} kills {kills:?} ({fresh_ids} with a new relay id), {produced_before} events \
         committed before the last life, {n_distinct} distinct delivered, {dups} duplicates \
         delivered, consumer received {} (inbox skipped the duplicates), handler table {rows_after} \
         rows, {:.1} s",
        kills.values().sum::<usize>(),
        stats.received,
        started.elapsed().as_secs_f64()
    );
    assert!(kills.values().sum::<usize>() >= 20);
    names.cleanup(&client, &["handler"], &[]).await;
    client.close().await;
    db.drop_db().await;
}

// --- 3. the broker unreachable for 30 s ---------------------------------------------------------

/// A TCP proxy to RabbitMQ that can be cut: `cut` closes every connection through it and
/// refuses new ones until `restore`.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, l) = (Arc::clone(&cut), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(down); // refused: closed at once
                    continue;
                }
                let t = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                l.lock().expect("lock").push(t.abort_handle());
            }
        });
        Proxy {
            port,
            cut,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort(); // drops both sockets
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_cut_for_30s_while_5000_transactions_commit() {
    if !heavy_tests_on() {
        eprintln!("set TCHU_OUTBOX_TEST=1 to run (about 45 s)");
        return;
    }
    let names = Names::new("outbox_cut");
    let db = TestDb::new("cut").await;
    let client = names.client().await;
    let mut rx = tail_steps(&client).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut config = names.config();
    config.broker =
        tchu::BrokerUrl::parse(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port))
            .expect("url");
    config.publish_timeout = Duration::from_secs(5);
    let relay_client = Client::connect(config)
        .await
        .expect("connect through the proxy");
    let relay = Relay::new(db.pool.clone(), relay_client.clone()).spawn();

    let write = |pool: PgPool, from: i64, to: i64| async move {
        let mut slowest = Duration::ZERO;
        for n in from..to {
            let t = Instant::now();
            let mut tx = pool.begin().await.expect("begin");
            Step {
                key: "cut".into(),
                n,
                rolled_back: false,
            }
            .publish_in(&mut tx)
            .await
            .expect("publish_in");
            tx.commit().await.expect("commit");
            slowest = slowest.max(t.elapsed());
        }
        slowest
    };
    // Through the proxy first: 10 events arrive.
    write(db.pool.clone(), 0, 10).await;
    for _ in 0..10 {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("warm-up event")
            .expect("open");
    }
    // A warm-up event can reach the consumer before its confirm reaches the relay: wait until
    // the relay has marked all ten published, so the count at the end of the cut is exact.
    let marked = async {
        while tchu::outbox::status(&db.pool)
            .await
            .expect("status")
            .pending
            > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, marked)
        .await
        .expect("the relay marks the warm-up rows published");

    proxy.cut();
    let cut_at = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write(db.pool.clone(), 10 + w * 1250, 10 + (w + 1) * 1250)))
        .collect();
    let mut slowest = Duration::ZERO;
    for w in writers {
        slowest = slowest.max(w.await.expect("writer"));
    }
    let committed_in = cut_at.elapsed();
    assert!(
        committed_in < Duration::from_secs(30),
        "5,000 commits took {committed_in:?}"
    );
    // Nothing gets through while the network is cut.
    let during = tokio::time::timeout(
        Duration::from_secs(30).saturating_sub(cut_at.elapsed()),
        rx.recv(),
    )
    .await;
    assert!(
        during.is_err(),
        "an event arrived while the broker was unreachable"
    );
    let pending = tchu::outbox::status(&db.pool)
        .await
        .expect("status")
        .pending;
    proxy.restore();
    let restored_at = Instant::now();
    let mut got = HashSet::new();
    while got.len() < 5000 {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some((_, s))) => {
                got.insert(s.n);
            }
            _ => panic!("{} of 5,000 arrived after the broker came back", got.len()),
        }
    }
    let drained_in = restored_at.elapsed();
    println!(
        "broker cut 30 s: 5,000 transactions committed in {:.2} s during the cut (slowest \
         {:.1} ms), {pending} pending at the end of the cut, all 5,000 delivered {:.2} s after \
         the network came back",
        committed_in.as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
        drained_in.as_secs_f64()
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a transaction waited {slowest:?}"
    );
    assert_eq!(pending, 5000, "nothing was published during the cut");
    relay.stop().await;
    relay_client.close().await;
    proxy.accept.abort();
    names.cleanup(&client, &[], &[]).await;
    client.close().await;
    db.drop_db().await;
}

// --- two relays share the slots; replay publishes retained rows again ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_the_slots_and_replay_publishes_again() {
    let names = Names::new("outbox_share");
    let db = TestDb::with_tables("share").await;
    let client = names.client().await;
    let mut rx = tail_steps(&client).await;
    let relay = |id: &str| {
        let mut c = RelayConfig::default();
        c.relay_id = id.to_owned();
        c.lease = Duration::from_secs(3);
        Relay::new(db.pool.clone(), client.clone())
            .with_config(c)
            .expect("config")
            .spawn()
    };
    let a = relay("share-a");
    let b = relay("share-b");
    // Within two renewals (lease / 3 each) both hold a fair share: 32 slots each.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = tchu::outbox::status(&db.pool).await.expect("status");
        let slots: Vec<u64> = s.relays.iter().map(|(_, n)| *n).collect();
        if slots == [32, 32] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots not shared: {:?}",
            s.relays
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 1,000 keyed events over 32 keys, from 4 writers.
    let mut writers = Vec::new();
    for w in 0..4 {
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                let key = format!("s{}", (w * 250 + i) % 32);
                let mut tx = pool.begin().await.expect("begin");
                let n = next_n(&mut tx, &key).await;
                Step {
                    key: key.clone(),
                    n,
                    rolled_back: false,
                }
                .publish_in_keyed(&mut tx, &key)
                .await
                .expect("publish_in");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let mut received = Vec::new();
    while received.len() < 1000 {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(x)) => received.push(x),
            _ => panic!("{} of 1,000 arrived", received.len()),
        }
    }
    let (distinct, dups) = check_order(&received);
    assert_eq!((distinct, dups), (1000, 0));
    wait_empty(&db.pool).await;
    // Both relays had rows to publish: the keys' slots are held by both.
    let owners: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT l.owner) FROM tchu_outbox o JOIN tchu_outbox_lease l USING (slot)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("owners");
    assert_eq!(owners, 2, "the 32 keys' slots are held by both relays");

    // Replay: the retained rows are published again, same ids.
    let n = tchu::outbox::replay(
        &db.pool,
        Duration::from_secs(3600),
        Some("outbox_test.step"),
    )
    .await
    .expect("replay");
    assert_eq!(n, 1000);
    let first: HashSet<String> = received.iter().map(|(id, _)| id.clone()).collect();
    let mut again = HashSet::new();
    while again.len() < 1000 {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some((id, _))) => {
                assert!(first.contains(&id), "a replayed event has a new id");
                again.insert(id);
            }
            _ => panic!("{} of 1,000 replayed arrived", again.len()),
        }
    }
    // A stopped relay gives its slots back at once: the other takes all 64 on its next renewal.
    a.stop().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let s = tchu::outbox::status(&db.pool).await.expect("status");
        if s.relays.iter().map(|(_, n)| *n).collect::<Vec<_>>() == [64] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots not taken over: {:?}",
            s.relays
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.stop().await;
    names.cleanup(&client, &[], &[]).await;
    client.close().await;
    db.drop_db().await;
}
