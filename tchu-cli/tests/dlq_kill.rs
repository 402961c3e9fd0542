//! `tchu dlq list` and `tchu dlq replay` killed with SIGKILL at random points lose nothing,
//! and `list` runs in bounded memory. Real RabbitMQ at 127.0.0.1:5672 (or
//! `TCHU_TEST_BROKER_URL`), one unique service per test.
//!
//! `cargo test -p tchu-cli --test dlq_kill -- --nocapture` prints the figures. The memory test
//! lists `TCHU_DLQ_RSS_LETTERS` dead letters (default 20,000; the recorded 200,000 run is in
//! `docs/operating.md`).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A bound for every wait on the broker or on a child process.
const WAIT: Duration = Duration::from_secs(120);

fn broker_url() -> String {
    std::env::var("TCHU_TEST_BROKER_URL")
        .unwrap_or_else(|_| tchu::config::DEFAULT_BROKER_URL.to_owned())
}

/// A random number below `n` (from a v4 UUID: good enough to pick kill points).
fn random_below(n: u64) -> u64 {
    let r = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    if n == 0 { 0 } else { r % n }
}

struct Fixture {
    service: String,
    conn: Connection,
    ch: Channel,
}

impl Fixture {
    async fn new(test: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let conn = tokio::time::timeout(
            WAIT,
            Connection::connect(&broker_url(), ConnectionProperties::default()),
        )
        .await
        .expect("connect timed out")
        .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let f = Fixture {
            service: format!("t.dlqkill.{test}.{id}"),
            conn,
            ch,
        };
        for q in [f.service.clone(), f.dlq()] {
            f.ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare");
        }
        f
    }

    fn dlq(&self) -> String {
        format!("{}.dlq", self.service)
    }

    /// `n` dead letters with message ids `0..n`, as the dispatcher writes them.
    async fn fill(&self, n: u64) {
        let dlq = self.dlq();
        let mut pending = Vec::new();
        for i in 0..n {
            let mut h = FieldTable::default();
            for (k, v) in [
                ("x-tchu-dead-letter-reason", "disk on fire"),
                ("x-tchu-handler", "myshop::reserve"),
                ("x-tchu-topic", "dlq.kill.test"),
            ] {
                h.insert(k.into(), AMQPValue::LongString(v.into()));
            }
            h.insert("x-tchu-attempts".into(), AMQPValue::LongLongInt(3));
            let confirm = self
                .ch
                .basic_publish(
                    "".into(),
                    dlq.as_str().into(),
                    BasicPublishOptions::default(),
                    br#"{"order_id": 1, "padding": "0123456789012345678901234567890123456789"}"#,
                    BasicProperties::default()
                        .with_message_id(ShortString::from(i.to_string()))
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_headers(h),
                )
                .await
                .expect("publish");
            pending.push(confirm);
            if pending.len() >= 1000 {
                for c in pending.drain(..) {
                    assert!(c.await.expect("confirm").is_ack());
                }
            }
        }
        for c in pending {
            assert!(c.await.expect("confirm").is_ack());
        }
        assert_eq!(self.ready(&dlq).await, n);
    }

    /// Ready messages in `queue` (passive declare).
    async fn ready(&self, queue: &str) -> u64 {
        let q = self
            .ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        u64::from(q.message_count())
    }

    /// Waits until DLQ + service queue hold at least `n` ready messages again (what a killed
    /// CLI held unacked goes back once the broker sees its connection close).
    async fn settled(&self, n: u64) -> (u64, u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (d, s) = (
                self.ready(&self.dlq()).await,
                self.ready(&self.service).await,
            );
            if d + s >= n {
                return (d, s);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {d} + {s} of {n} messages back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every message of `queue` and counts each message id.
    async fn drain(&self, queue: &str, seen: &mut HashMap<String, u32>) {
        while let Some(g) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            let id = g
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            *seen.entry(id).or_insert(0) += 1;
        }
    }

    async fn cleanup(self) {
        for q in [self.service.clone(), self.dlq()] {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "bye".into()).await;
    }

    fn tchu(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tchu"));
        cmd.env_remove("AMQP_URL")
            .env("TCHU_BROKER_URL", broker_url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// SIGKILL, and reap.
async fn kill9(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
}

/// Asserts that both queues together hold every id `0..n`; returns the duplicates.
async fn all_there(f: &Fixture, n: u64) -> u64 {
    let mut seen = HashMap::new();
    f.drain(&f.dlq(), &mut seen).await;
    f.drain(&f.service, &mut seen).await;
    let missing: Vec<u64> = (0..n)
        .filter(|i| !seen.contains_key(&i.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let total: u64 = seen.values().map(|&c| u64::from(c)).sum();
    assert_eq!(seen.len() as u64, n, "unexpected ids");
    total - n
}

#[tokio::test]
async fn killed_list_and_replay_lose_nothing() {
    const N: u64 = 10_000;
    const KILLS: usize = 6;
    let f = Fixture::new("kill").await;
    f.fill(N).await;

    // `list`, killed after a random number of printed rows (0 = before the first one).
    for k in 0..KILLS {
        let rows = random_below(N);
        let mut child = f.tchu(&["dlq", "list", &f.service]).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut read = 0u64;
        // The header, then `rows` rows.
        while read <= rows {
            match tokio::time::timeout(WAIT, lines.next_line()).await {
                Ok(Ok(Some(_))) => read += 1,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("reading list output: {e}"),
                Err(_) => panic!("list printed nothing for {WAIT:?}"),
            }
        }
        kill9(&mut child).await;
        let (d, s) = f.settled(N).await;
        println!(
            "list kill {k}: after {} row(s); DLQ {d}, service queue {s}",
            read.saturating_sub(1)
        );
        assert_eq!((d, s), (N, 0), "list changed the queues");
    }

    // `replay`, killed once the service queue holds a random number more.
    let mut kills = 0;
    while kills < KILLS {
        let moved = f.ready(&f.service).await;
        let left = f.ready(&f.dlq()).await;
        if left < 100 {
            break;
        }
        let target = moved + 1 + random_below(left / 2);
        let mut child = f
            .tchu(&["dlq", "replay", &f.service, "--filter-handler", "reserve"])
            .spawn()
            .expect("spawn");
        let deadline = tokio::time::Instant::now() + WAIT;
        while f.ready(&f.service).await < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replay made no progress"
            );
            if let Ok(Some(status)) = child.try_wait() {
                panic!("replay ended before the kill: {status}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill9(&mut child).await;
        kills += 1;
        let (d, s) = f.settled(N).await;
        println!(
            "replay kill {kills}: DLQ {d}, service queue {s} (duplicates so far {})",
            (d + s) - N
        );
    }
    assert!(kills >= 5, "only {kills} replay kills");

    // A full replay at the end moves the rest.
    let out = tokio::time::timeout(
        WAIT,
        f.tchu(&["dlq", "replay", &f.service, "--filter-handler", "reserve"])
            .output(),
    )
    .await
    .expect("replay timed out")
    .expect("replay runs");
    assert!(out.status.success(), "{out:?}");
    let (d, s) = f.settled(N).await;
    assert_eq!(d, 0, "a full replay leaves nothing behind");
    let dups = all_there(&f, N).await;
    println!(
        "after {KILLS} list kills and {kills} replay kills: all {N} there, {s} in the service queue, {dups} duplicate(s)"
    );
    f.cleanup().await;
}

/// Peak resident memory of a process, from `/proc/<pid>/status` (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test]
async fn list_runs_in_bounded_memory() {
    let n: u64 = std::env::var("TCHU_DLQ_RSS_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let f = Fixture::new("rss").await;
    f.fill(n).await;
    let started = std::time::Instant::now();
    let mut child = f.tchu(&["dlq", "list", &f.service]).spawn().expect("spawn");
    let pid = child.id().expect("pid");
    let stdout = child.stdout.take().expect("stdout");
    let counting = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut rows = 0u64;
        while let Ok(Some(_)) = lines.next_line().await {
            rows += 1;
        }
        rows.saturating_sub(1)
    });
    // VmHWM is the peak so far: the last reading before the process exits is its peak.
    let mut peak = 0;
    let deadline = tokio::time::Instant::now() + WAIT * 5;
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "list of {n} timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = counting.await.expect("rows");
    println!(
        "dlq list of {n} dead letters: {rows} rows in {:.1} s, peak RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        peak as f64 / 1024.0
    );
    assert_eq!(rows, n);
    assert!(peak > 0, "no RSS reading");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert_eq!(f.ready(&f.dlq()).await, n, "listing removed something");
    f.cleanup().await;
}
