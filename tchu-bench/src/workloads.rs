//! The workloads. Each run uses fresh exchange and queue names and deletes them afterwards,
//! and returns its measurements as (row key, value) pairs.

use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use crate::common::{
    Counter, Names, Res, WAIT, now_ns, payload, per_sec, percentiles_ms, proc_status_kb, shares,
};
use crate::raw;
use crate::sides::{Caller, Publisher, Service, Side, cleanup};

/// Sizes of one harness run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) reps: usize,
    pub(crate) publish_seq: usize,
    pub(crate) publish_conc: usize,
    pub(crate) e2e: usize,
    pub(crate) paced_rate: u64,
    pub(crate) paced_ms: u64,
    pub(crate) rpc_seq: usize,
    pub(crate) rpc_conc: usize,
    pub(crate) fanout: usize,
    pub(crate) peak: usize,
    /// tchu-tchu side (see `tchutchu`): events of workload 2 (the worker's peak memory too).
    pub(crate) tt_e2e: usize,
    pub(crate) tt_paced_rate: u64,
    pub(crate) tt_paced_ms: u64,
    pub(crate) tt_rpc_seq: usize,
    pub(crate) tt_rpc_conc: usize,
    /// Python threads calling at once.
    pub(crate) tt_callers: usize,
    /// How long the worker idles before its idle memory is read.
    pub(crate) tt_idle_ms: u64,
    /// One driver run (one worker) for all of this side's workloads, instead of one each.
    pub(crate) tt_combined: bool,
}

impl Sizes {
    pub(crate) const FULL: Sizes = Sizes {
        reps: 3,
        publish_seq: 2_000,
        publish_conc: 20_000,
        e2e: 100_000,
        paced_rate: 1_000,
        paced_ms: 10_000,
        rpc_seq: 5_000,
        rpc_conc: 20_000,
        fanout: 20_000,
        peak: 100_000,
        tt_e2e: 5_000,
        tt_paced_rate: 200,
        tt_paced_ms: 10_000,
        tt_rpc_seq: 500,
        tt_rpc_conc: 500,
        tt_callers: 8,
        tt_idle_ms: 2_000,
        tt_combined: false,
    };

    pub(crate) const SMOKE: Sizes = Sizes {
        reps: 1,
        publish_seq: 200,
        publish_conc: 1_000,
        e2e: 2_000,
        paced_rate: 1_000,
        paced_ms: 500,
        rpc_seq: 200,
        rpc_conc: 500,
        fanout: 500,
        peak: 2_000,
        tt_e2e: 200,
        tt_paced_rate: 50,
        tt_paced_ms: 1_000,
        tt_rpc_seq: 30,
        tt_rpc_conc: 40,
        tt_callers: 4,
        tt_idle_ms: 500,
        tt_combined: true,
    };
}

/// Publishers in flight at once in the "64 tasks" mode and when feeding consumers.
pub(crate) const IN_FLIGHT: usize = 64;
/// Concurrent RPC callers.
pub(crate) const CALLERS: usize = 16;

pub(crate) type Measured = Vec<(&'static str, f64)>;

/// Splits `n` numbered jobs into [`shares`] for `tasks` tasks, spawns `task(range)` for each
/// task's consecutive range of job numbers, and waits for them all; the first error fails it.
async fn in_tasks<F, Fut>(n: usize, tasks: usize, mut task: F) -> Res<()>
where
    F: FnMut(Range<u64>) -> Fut,
    Fut: Future<Output = Res<()>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut seq = 0u64;
    for share in shares(n, tasks) {
        let first = seq;
        seq += share as u64;
        set.spawn(task(first..seq));
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Publishes `n` events under `topic` from [`IN_FLIGHT`] tasks sharing one publisher.
async fn publish_many(p: &Arc<Publisher>, topic: &'static str, n: usize) -> Res<()> {
    in_tasks(n, IN_FLIGHT, |range| {
        let p = Arc::clone(p);
        async move {
            for i in range {
                p.publish(topic, &payload(i, now_ns())).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Runs `run` on fresh exchange and queue names ([`Names::new`]), then deletes the queues of
/// `services` and the exchange, whether it succeeded or not.
async fn on_fresh_names<T>(
    workload: &str,
    services: &[&str],
    run: impl AsyncFnOnce(&Names) -> Res<T>,
) -> Res<T> {
    let names = Names::new(workload);
    let out = run(&names).await;
    cleanup(&names, services).await;
    out
}

/// Workload 1: Publish throughput: one task awaiting each confirm, then 64 tasks at once.
pub(crate) async fn publish(side: Side, s: &Sizes) -> Res<Measured> {
    on_fresh_names("publish", &["sink"], async |names| {
        let setup = raw::connect(&crate::common::broker_url()).await?;
        let ch = setup.create_channel().await?;
        raw::declare(&ch, &names.exchange, &names.queue("sink"), "bench.pub.#").await?;
        let _ = setup.close(200, "bye".into()).await;
        let p = Publisher::connect(side, &names.exchange).await?;
        for i in 0..100 {
            p.publish("bench.pub.warm", &payload(i, now_ns())).await?;
        }
        let t = Instant::now();
        for i in 0..s.publish_seq as u64 {
            p.publish("bench.pub.seq", &payload(i, now_ns())).await?;
        }
        let seq = per_sec(s.publish_seq, t.elapsed());
        let t = Instant::now();
        publish_many(&p, "bench.pub.conc", s.publish_conc).await?;
        let conc = per_sec(s.publish_conc, t.elapsed());
        p.close().await;
        Ok(vec![("publish_seq", seq), ("publish_conc", conc)])
    })
    .await
}

/// Workload 2: End to end: events through one service until all were handled.
pub(crate) async fn e2e(side: Side, s: &Sizes) -> Res<Measured> {
    on_fresh_names("e2e", &["svc"], async |names| {
        let counter = Arc::new(Counter::new(s.e2e as u64, false));
        let svc = Service::start(side, names, "svc", "bench.e2e.*", Arc::clone(&counter)).await?;
        let p = Publisher::connect(side, &names.exchange).await?;
        let t = Instant::now();
        publish_many(&p, "bench.e2e.created", s.e2e).await?;
        counter.wait("e2e").await?;
        let rate = per_sec(s.e2e, t.elapsed());
        p.close().await;
        svc.stop().await;
        Ok(vec![("e2e", rate)])
    })
    .await
}

/// Workload 3, paced latency: a fixed rate, each publish in its own task so a slow confirm does not
/// delay the schedule; the handler records now − `t_ns`.
pub(crate) async fn paced(side: Side, s: &Sizes) -> Res<Measured> {
    on_fresh_names("paced", &["svc"], async |names| {
        let n = s.paced_rate * s.paced_ms / 1000;
        let counter = Arc::new(Counter::new(n, true));
        let svc = Service::start(side, names, "svc", "bench.paced.*", Arc::clone(&counter)).await?;
        let p = Publisher::connect(side, &names.exchange).await?;
        let start = tokio::time::Instant::now();
        let interval_ns = 1_000_000_000 / s.paced_rate;
        let mut set = JoinSet::new();
        for i in 0..n {
            tokio::time::sleep_until(start + Duration::from_nanos(i * interval_ns)).await;
            let p = Arc::clone(&p);
            set.spawn(async move { p.publish("bench.paced.tick", &payload(i, now_ns())).await });
            while let Some(r) = set.try_join_next() {
                r??;
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        counter.wait("paced").await?;
        let [p50, p95, p99] = percentiles_ms(counter.latencies());
        p.close().await;
        svc.stop().await;
        Ok(vec![
            ("paced_p50", p50),
            ("paced_p95", p95),
            ("paced_p99", p99),
        ])
    })
    .await
}

/// Workload 4: RPC: sequential calls (latency percentiles and rate), then 16 concurrent callers.
pub(crate) async fn rpc(side: Side, s: &Sizes) -> Res<Measured> {
    on_fresh_names("rpc", &["responder"], async |names| {
        // The exact topic: only a responder (not a wildcard observer) answers a request.
        let responder = Service::responder(side, names, "responder", "bench.rpc.echo").await?;
        let caller = Caller::connect(side, &names.exchange).await?;
        let req = payload(0, 0);
        for _ in 0..50 {
            caller.call("bench.rpc.echo", &req).await?;
        }
        let mut lat = Vec::with_capacity(s.rpc_seq);
        let t = Instant::now();
        for _ in 0..s.rpc_seq {
            let t0 = Instant::now();
            let v = caller.call("bench.rpc.echo", &req).await?;
            lat.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
            if v.get("echo").is_none() {
                return Err(format!("unexpected reply {v}").into());
            }
        }
        let seq_rate = per_sec(s.rpc_seq, t.elapsed());
        let [p50, p95, p99] = percentiles_ms(lat);
        let t = Instant::now();
        in_tasks(s.rpc_conc, CALLERS, |range| {
            let c = Arc::clone(&caller);
            let req = req.clone();
            async move {
                for _ in range {
                    c.call("bench.rpc.echo", &req).await?;
                }
                Ok(())
            }
        })
        .await?;
        let conc_rate = per_sec(s.rpc_conc, t.elapsed());
        caller.close().await;
        responder.stop().await;
        Ok(vec![
            ("rpc_p50", p50),
            ("rpc_p95", p95),
            ("rpc_p99", p99),
            ("rpc_seq", seq_rate),
            ("rpc_conc", conc_rate),
        ])
    })
    .await
}

const FANOUT: [&str; 4] = ["s0", "s1", "s2", "s3"];

/// Workload 5: Fan-out: four services bound to the same pattern; events/s until all four handled all.
pub(crate) async fn fanout(side: Side, s: &Sizes) -> Res<Measured> {
    on_fresh_names("fanout", &FANOUT, async |names| {
        let mut counters = Vec::new();
        let mut services = Vec::new();
        for name in FANOUT {
            let c = Arc::new(Counter::new(s.fanout as u64, false));
            services.push(Service::start(side, names, name, "bench.fan.*", Arc::clone(&c)).await?);
            counters.push(c);
        }
        let p = Publisher::connect(side, &names.exchange).await?;
        let t = Instant::now();
        publish_many(&p, "bench.fan.event", s.fanout).await?;
        for c in &counters {
            c.wait("fan-out").await?;
        }
        let rate = per_sec(s.fanout, t.elapsed());
        p.close().await;
        for svc in services {
            svc.stop().await;
        }
        Ok(vec![("fanout", rate)])
    })
    .await
}

/// The child process: a service that reports its memory. With `n == 0` it idles two seconds
/// and reports VmRSS; otherwise it prints `READY`, handles `n` events and reports VmHWM.
pub(crate) async fn child_service(side: Side, exchange: &str, prefix: &str, n: u64) -> Res<()> {
    let names = Names {
        exchange: exchange.to_owned(),
        prefix: prefix.to_owned(),
    };
    let counter = Arc::new(Counter::new(n.max(1), false));
    let svc = Service::start(side, &names, "svc", "bench.mem.*", Arc::clone(&counter)).await?;
    if n == 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else {
        println!("READY");
        counter.wait("child service").await?;
    }
    let rss = proc_status_kb("VmRSS").unwrap_or_default();
    let hwm = proc_status_kb("VmHWM").unwrap_or_default();
    println!("RESULT {rss} {hwm}");
    svc.stop().await;
    Ok(())
}

/// Workload 6, memory: idle RSS of a service, and its peak RSS while it handles the e2e workload, each
/// measured in a child process (this binary's `child-service`).
pub(crate) async fn memory(side: Side, s: &Sizes) -> Res<Measured> {
    let idle = run_child(side, 0).await?.0;
    let peak = run_child(side, s.peak).await?.1;
    Ok(vec![
        ("rss_idle", idle as f64 / 1024.0),
        ("rss_peak", peak as f64 / 1024.0),
    ])
}

async fn run_child(side: Side, n: usize) -> Res<(u64, u64)> {
    on_fresh_names("mem", &["svc"], async |names| {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "child-service",
                side.label(),
                &names.exchange,
                &names.prefix,
                &n.to_string(),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut result = None;
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if line == "READY" {
                    let p = Publisher::connect(side, &names.exchange).await?;
                    publish_many(&p, "bench.mem.event", n).await?;
                    p.close().await;
                } else if let Some(rest) = line.strip_prefix("RESULT ") {
                    let mut it = rest.split_whitespace().map(str::parse::<u64>);
                    if let (Some(Ok(rss)), Some(Ok(hwm))) = (it.next(), it.next()) {
                        result = Some((rss, hwm));
                    }
                }
            }
            Ok::<(), crate::common::BoxError>(())
        };
        tokio::time::timeout(WAIT, read)
            .await
            .map_err(|_| "child service timed out")??;
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("child service failed: {status}").into());
        }
        result.ok_or_else(|| "child printed no RESULT".into())
    })
    .await
}
