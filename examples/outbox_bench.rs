//! Outbox benchmarks on the machine's PostgreSQL and RabbitMQ (feature `postgres`):
//!
//! ```sh
//! # Commit-to-delivered latency at 500 commits/s for 20 s (p50/p99/max):
//! cargo run --release --features postgres --example outbox_bench -- latency 500 20
//! # A backlog of 1,000,000 rows drained: slowest relay query, rows/s, peak memory:
//! cargo run --release --features postgres --example outbox_bench -- backlog 1000000
//! ```
//!
//! Each run creates its own database (`tchu_bench_<random>`) on `TCHU_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and drops it, and its own exchange.
//! The relay's connections run with `statement_timeout = 1s`: a query over 1 s would fail the
//! pass and be counted (`slow queries`), so "0" means no query took a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tchu::outbox::{PublishIn as _, Relay, RelayConfig, RelayStep};
use tchu::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tchu::sqlx::{self, Executor as _, PgPool};
use tchu::{BrokerUrl, Client, Config, Pattern};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tchu::event(topic = "bench.outbox")]
struct Tick {
    i: u64,
}

fn server_url() -> String {
    std::env::var("TCHU_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn create_db(name: &str) -> Result<(PgPool, PgPool), BoxError> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server_url())
        .await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    admin.close().await;
    let opts: PgConnectOptions = server_url().parse()?;
    let opts = opts.database(name);
    let app = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(opts.clone())
        .await?;
    let relay = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.options([("statement_timeout", "1000")]))
        .await?;
    tchu::outbox::migrate(&app).await?;
    Ok((app, relay))
}

async fn drop_db(name: &str) -> Result<(), BoxError> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server_url())
        .await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    admin.close().await;
    Ok(())
}

async fn client(exchange: &str) -> Result<Client, BoxError> {
    let url = std::env::var("TCHU_BROKER_URL")
        .unwrap_or_else(|_| tchu::config::DEFAULT_BROKER_URL.to_owned());
    let mut c = Config::new(BrokerUrl::parse(&url)?);
    c.exchange = exchange.to_owned();
    c.service = Some("outbox-bench".to_owned());
    Ok(Client::connect(c).await?)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn latency(rate: u64, secs: u64) -> Result<(), BoxError> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let name = format!("tchu_bench_{id}");
    let exchange = format!("tchu_bench.outbox.{id}");
    let (pool, relay_pool) = create_db(&name).await?;
    let client = client(&exchange).await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stream = client.tail(&Pattern::new("bench.#")?).await?;
    let total = rate * secs;
    let s2 = Arc::clone(&sent);
    let consumer = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut lat = Vec::with_capacity(total as usize);
        while (lat.len() as u64) < total {
            let Ok(Some(Ok(t))) =
                tokio::time::timeout(Duration::from_secs(30), stream.next()).await
            else {
                break;
            };
            let now = Instant::now();
            let Some(mid) = t.decoded.ok().and_then(|d| d.message_id) else {
                continue;
            };
            // The producer records the id right after its commit; wait for it if needed.
            loop {
                let at = s2.lock().ok().and_then(|mut m| m.remove(&mid));
                if let Some(at) = at {
                    lat.push(now.saturating_duration_since(at));
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        lat
    });
    let relay = Relay::new(relay_pool.clone(), client.clone()).spawn();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (pool, sent) = (pool.clone(), Arc::clone(&sent));
        writers.spawn(async move {
            let mut tx = pool.begin().await?;
            let mid = Tick { i }.publish_in(&mut tx).await?;
            tx.commit().await?;
            let at = Instant::now();
            if let Ok(mut m) = sent.lock() {
                m.insert(mid.to_string(), at);
            }
            Ok::<(), BoxError>(())
        });
        while writers.try_join_next().is_some() {}
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    let offered = started.elapsed();
    let mut lat = consumer.await?;
    lat.sort_unstable();
    println!(
        "outbox latency: {} commits at {rate}/s offered ({:.1} s), {} delivered; commit to \
         delivered (includes the publisher confirm): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms; peak RSS {:.1} MiB",
        total,
        offered.as_secs_f64(),
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        peak_rss_mib()
    );
    relay.stop().await;
    let _ = client.delete_exchange(&exchange).await;
    client.close().await;
    pool.close().await;
    relay_pool.close().await;
    drop_db(&name).await?;
    if lat.len() as u64 != total {
        return Err(format!("{} of {total} delivered", lat.len()).into());
    }
    Ok(())
}

async fn backlog(rows: u64) -> Result<(), BoxError> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let name = format!("tchu_bench_{id}");
    let exchange = format!("tchu_bench.outbox.{id}");
    let (pool, relay_pool) = create_db(&name).await?;
    let client = client(&exchange).await?;
    let t = Instant::now();
    // 1,000 keys (so per-key order applies), about 100-byte payloads.
    sqlx::query(
        "INSERT INTO tchu_outbox (message_id, topic, payload, ordering_key, slot)
         SELECT gen_random_uuid(), 'bench.backlog',
                jsonb_build_object('i', i, 'pad', repeat('x', 80)), 'k' || (i % 1000), (i % 64)
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(i64::try_from(rows)?)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE tchu_outbox").execute(&pool).await?;
    println!(
        "backlog: {rows} rows inserted in {:.1} s; peak RSS before relaying {:.1} MiB",
        t.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    // Timings between relay steps: fetch (Marked/Leased -> Fetched) and publish+mark
    // (Fetched -> Marked); failures (a query over 1 s fails by statement_timeout).
    #[derive(Default)]
    struct Timings {
        last: Option<Instant>,
        fetch_max: Duration,
        pass_max: Duration,
        failed: usize,
        passes: usize,
    }
    let timings: Arc<Mutex<Timings>> = Arc::default();
    let tm = Arc::clone(&timings);
    let mut cfg = RelayConfig::default();
    cfg.retention = Duration::ZERO;
    let relay = Relay::new(relay_pool.clone(), client.clone())
        .with_config(cfg)?
        .observe(move |step| {
            let Ok(mut t) = tm.lock() else { return };
            let now = Instant::now();
            let since = t.last.map_or(Duration::ZERO, |l| now - l);
            match step {
                RelayStep::Fetched { .. } => {
                    t.fetch_max = t.fetch_max.max(since);
                    t.last = Some(now);
                }
                RelayStep::Marked { .. } => {
                    t.pass_max = t.pass_max.max(since);
                    t.passes += 1;
                    t.last = Some(now);
                }
                RelayStep::Failed { rows } => t.failed += rows,
                RelayStep::Leased { .. } => t.last = Some(now),
                _ => {}
            }
        });
    let t = Instant::now();
    let mut published = 0;
    let mut slowest_status = Duration::ZERO;
    while published < rows as usize {
        published += relay.drain(50).await?;
        let s = Instant::now();
        let st = tchu::outbox::status(&relay_pool).await?;
        slowest_status = slowest_status.max(s.elapsed());
        if st.pending == 0 {
            break;
        }
    }
    let took = t.elapsed();
    let (fetch_max, pass_max, failed, passes) = {
        let tm = timings.lock().map_err(|_| "poisoned")?;
        (tm.fetch_max, tm.pass_max, tm.failed, tm.passes)
    };
    println!(
        "backlog: {published} rows drained in {:.1} s ({:.0} rows/s), {} passes; slowest fetch \
         {:.1} ms, slowest pass (publish + mark) {:.1} ms, slowest status {:.1} ms; slow \
         queries (over 1 s, statement_timeout): {}; peak RSS {:.1} MiB",
        took.as_secs_f64(),
        published as f64 / took.as_secs_f64(),
        passes,
        fetch_max.as_secs_f64() * 1e3,
        pass_max.as_secs_f64() * 1e3,
        slowest_status.as_secs_f64() * 1e3,
        failed,
        peak_rss_mib()
    );
    let _ = client.delete_exchange(&exchange).await;
    client.close().await;
    pool.close().await;
    relay_pool.close().await;
    drop_db(&name).await?;
    if published != rows as usize || failed > 0 {
        return Err(format!("published {published} of {rows}, {failed} failed").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("latency") => latency(num(1, 500), num(2, 20)).await,
        Some("backlog") => backlog(num(1, 1_000_000)).await,
        _ => Err("usage: outbox_bench latency [RATE] [SECS] | backlog [ROWS]".into()),
    }
}
