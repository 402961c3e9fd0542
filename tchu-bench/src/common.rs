//! Shared pieces: broker URL, unique names, payloads, the system-wide monotonic clock and the
//! process's CPU clock, counters, statistics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::time::{ClockId, Timespec, clock_gettime};

use tokio::sync::Notify;

/// Any error, with a message.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`BoxError`].
pub(crate) type Res<T> = Result<T, BoxError>;

/// An error with its chain of sources.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The longest any single wait on the broker may take before a run is declared failed.
pub(crate) const WAIT: Duration = Duration::from_secs(120);

/// The broker URL: `TCHU_BENCH_URL`, default the local RabbitMQ.
pub(crate) fn broker_url() -> String {
    std::env::var("TCHU_BENCH_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Unique exchange and queue names for one run.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) exchange: String,
    pub(crate) prefix: String,
}

impl Names {
    pub(crate) fn new(workload: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Names {
            exchange: format!("tchu_bench.{workload}.{id}"),
            prefix: format!("bench.{workload}.{id}"),
        }
    }

    /// A queue (service) name.
    pub(crate) fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

fn ns(t: Timespec) -> u64 {
    let s = u64::try_from(t.tv_sec).unwrap_or(0);
    let n = u64::try_from(t.tv_nsec).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(n)
}

/// Nanoseconds on the system-wide `CLOCK_MONOTONIC`: the same clock in every process on the
/// machine (Linux), so a send time taken in a publisher process and a receive time taken in a
/// service process can be subtracted.
pub(crate) fn now_ns() -> u64 {
    ns(clock_gettime(ClockId::Monotonic))
}

/// CPU time (user + system, all threads) this process has used, in nanoseconds
/// (`CLOCK_PROCESS_CPUTIME_ID`, the precise sum `getrusage` rounds and splits).
pub(crate) fn cpu_ns() -> u64 {
    ns(clock_gettime(ClockId::ProcessCPUTime))
}

/// CPU used since `from` (a [`cpu_ns`] reading), in µs per `n` items.
pub(crate) fn cpu_us_per(from: u64, n: usize) -> f64 {
    cpu_ns().saturating_sub(from) as f64 / 1e3 / n.max(1) as f64
}

/// An event payload of about 100 bytes as JSON, carrying its send time.
pub(crate) fn payload(seq: u64, t_ns: u64) -> serde_json::Value {
    serde_json::json!({
        "seq": seq,
        "t_ns": t_ns,
        "user": "user-000042",
        "action": "profile.updated",
        "pad": "abcdefghijklmnopqrst",
    })
}

/// Counts handled events and wakes the waiter when `target` is reached; optionally records
/// publish→handler latencies from the `t_ns` field of the payload.
#[derive(Debug)]
pub(crate) struct Counter {
    n: AtomicU64,
    target: u64,
    done: Notify,
    latencies: Option<Mutex<Vec<u64>>>,
}

impl Counter {
    pub(crate) fn new(target: u64, record_latency: bool) -> Self {
        Counter {
            n: AtomicU64::new(0),
            target,
            done: Notify::new(),
            latencies: record_latency.then(|| Mutex::new(Vec::with_capacity(16_384))),
        }
    }

    /// One event handled; `event` is its JSON payload.
    pub(crate) fn hit(&self, event: &serde_json::Value) {
        if let Some(l) = &self.latencies
            && let Some(t) = event.get("t_ns").and_then(serde_json::Value::as_u64)
        {
            let now = now_ns();
            if let Ok(mut v) = l.lock() {
                v.push(now.saturating_sub(t));
            }
        }
        if self.n.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.done.notify_one();
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.n.load(Ordering::Acquire)
    }

    /// Waits until `target` events were handled.
    pub(crate) async fn wait(&self, what: &str) -> Res<()> {
        let fut = async {
            while self.count() < self.target {
                // notify_one stores a permit, so a hit between the check and here is not lost.
                self.done.notified().await;
            }
        };
        tokio::time::timeout(WAIT, fut).await.map_err(|_| {
            format!(
                "{what}: only {} of {} events handled within {WAIT:?}",
                self.count(),
                self.target
            )
        })?;
        Ok(())
    }

    /// The recorded latencies (ns).
    pub(crate) fn latencies(&self) -> Vec<u64> {
        self.latencies
            .as_ref()
            .and_then(|l| l.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64
}

/// p50, p95, p99 of latencies in ns, as milliseconds.
pub(crate) fn percentiles_ms(mut ns: Vec<u64>) -> [f64; 3] {
    ns.sort_unstable();
    [0.50, 0.95, 0.99].map(|q| quantile(&ns, q) / 1e6)
}

/// Rate per second.
pub(crate) fn per_sec(n: usize, d: Duration) -> f64 {
    let n = n as f64;
    n / d.as_secs_f64()
}

/// Median of a few values (mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        f64::midpoint(s[n / 2 - 1], s[n / 2])
    }
}

/// Reads a field (in kB) of /proc/self/status, e.g. `VmRSS` or `VmHWM`.
pub(crate) fn proc_status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Splits `total` into `parts` nearly equal shares.
pub(crate) fn shares(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}
