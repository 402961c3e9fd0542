//! The workloads. Each run uses fresh exchange and queue names and deletes them afterwards,
//! and returns its measurements as (row key, value) pairs.
//!
//! Each workload runs in one of two [`Layout`]s: `same` (publisher, service and caller in the
//! harness's own process) or `split` (each in a child process of its own, `tchu-bench child
//! ROLE ...`, see [`child`] and `procs`). Both measure the CPU time used per message: of the
//! one process in `same`, of each process in `split`.

use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use crate::common::{
    Counter, Names, Res, WAIT, cpu_ns, cpu_us_per, now_ns, payload, per_sec, percentiles_ms,
    proc_status_kb, shares,
};
use crate::procs::{Child, Figures, guarded, stdin_closed};
use crate::raw;
use crate::sides::{Caller, Publisher, Service, Side, cleanup};

/// Where the publisher, the service(s) and the caller run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Layout {
    /// All in the harness's process (as the harness always did).
    Same,
    /// Each in a child process of its own, as in production.
    Split,
}

impl Layout {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Layout::Same => "same",
            Layout::Split => "split",
        }
    }

    /// What the layout means, for the report.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Layout::Same => "publisher, service(s) and caller in one process (the harness's own)",
            Layout::Split => {
                "each service, the responder, the publisher and the caller in a process of its \
                 own (children of the harness, which only coordinates)"
            }
        }
    }
}

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
    /// How long the memory workload's idle service waits before its RSS is read.
    pub(crate) idle_ms: u64,
    /// The pause between two runs, for the broker to settle (none in smoke, which measures
    /// nothing).
    pub(crate) settle_ms: u64,
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
        idle_ms: 2_000,
        settle_ms: 300,
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
        idle_ms: 500,
        settle_ms: 0,
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
async fn publish_many(p: &Arc<Publisher>, topic: &str, n: usize) -> Res<()> {
    let topic: Arc<str> = topic.into();
    in_tasks(n, IN_FLIGHT, |range| {
        let p = Arc::clone(p);
        let topic = Arc::clone(&topic);
        async move {
            for i in range {
                p.publish(&topic, &payload(i, now_ns())).await?;
            }
            Ok(())
        }
    })
    .await
}

/// The names (and service names) of runs in progress, for [`cleanup_unfinished`].
static IN_USE: std::sync::Mutex<Vec<(Names, Vec<String>)>> = std::sync::Mutex::new(Vec::new());

/// Runs `run` on fresh exchange and queue names ([`Names::new`]), then deletes the queues of
/// `services` and the exchange, whether it succeeded or not. A run dropped before it ends
/// (timed out, interrupted) leaves its names to [`cleanup_unfinished`].
async fn on_fresh_names<T>(
    workload: &str,
    services: &[&str],
    run: impl AsyncFnOnce(&Names) -> Res<T>,
) -> Res<T> {
    let names = Names::new(workload);
    if let Ok(mut v) = IN_USE.lock() {
        v.push((
            names.clone(),
            services.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    let out = run(&names).await;
    cleanup(&names, services).await;
    if let Ok(mut v) = IN_USE.lock() {
        v.retain(|(n, _)| n.exchange != names.exchange);
    }
    out
}

/// Deletes what runs that were dropped before their end declared.
pub(crate) async fn cleanup_unfinished() {
    let left = IN_USE.lock().map(|mut v| std::mem::take(&mut *v));
    for (names, services) in left.unwrap_or_default() {
        let services: Vec<&str> = services.iter().map(String::as_str).collect();
        cleanup(&names, &services).await;
    }
}

/// Workload 1, the part that publishes: 100 warm-up events, then one task awaiting each
/// confirm, then 64 tasks at once (with the CPU this process used for those, per event).
async fn publish_phases(p: &Arc<Publisher>, s: &Sizes) -> Res<Measured> {
    for i in 0..100 {
        p.publish("bench.pub.warm", &payload(i, now_ns())).await?;
    }
    let t = Instant::now();
    for i in 0..s.publish_seq as u64 {
        p.publish("bench.pub.seq", &payload(i, now_ns())).await?;
    }
    let seq = per_sec(s.publish_seq, t.elapsed());
    let t = Instant::now();
    let cpu = cpu_ns();
    publish_many(p, "bench.pub.conc", s.publish_conc).await?;
    let conc = per_sec(s.publish_conc, t.elapsed());
    let cpu = cpu_us_per(cpu, s.publish_conc);
    Ok(vec![
        ("publish_seq", seq),
        ("publish_conc", conc),
        ("cpu_pub_conc", cpu),
    ])
}

/// Workload 1: Publish throughput: one task awaiting each confirm, then 64 tasks at once.
pub(crate) async fn publish(side: Side, s: &Sizes, layout: Layout) -> Res<Measured> {
    on_fresh_names("publish", &["sink"], async |names| {
        let setup = raw::connect(&crate::common::broker_url()).await?;
        let ch = setup.create_channel().await?;
        raw::declare(&ch, &names.exchange, &names.queue("sink"), "bench.pub.#").await?;
        let _ = setup.close(200, "bye".into()).await;
        match layout {
            Layout::Same => {
                let p = Publisher::connect(side, &names.exchange).await?;
                let m = publish_phases(&p, s).await?;
                p.close().await;
                Ok(m)
            }
            Layout::Split => {
                let args = [s.publish_seq.to_string(), s.publish_conc.to_string()];
                let f = Child::spawn(&role("publish", side, names, &args))?
                    .result()
                    .await?;
                Ok(vec![
                    ("publish_seq", f.f64("publish_seq")?),
                    ("publish_conc", f.f64("publish_conc")?),
                    ("cpu_pub_conc", f.f64("cpu_pub_conc")?),
                ])
            }
        }
    })
    .await
}

/// The arguments of `tchu-bench child ROLE SIDE EXCHANGE PREFIX REST..`.
fn role(role: &str, side: Side, names: &Names, rest: &[String]) -> Vec<String> {
    let mut v = vec![
        role.to_owned(),
        side.label().to_owned(),
        names.exchange.clone(),
        names.prefix.clone(),
    ];
    v.extend_from_slice(rest);
    v
}

/// A counting service child on `pattern` (queue `name`) that reports when it handled `n`
/// events (`done_ns`), its CPU time from set-up to then (`cpu_ns`) and, with `latency`, the
/// percentiles of publish→handler latency (`p50`, `p95`, `p99`, ms). Returned once `READY`.
async fn service_child(
    side: Side,
    names: &Names,
    (name, pattern): (&str, &str),
    n: usize,
    latency: bool,
) -> Res<Child> {
    let args = [
        name.to_owned(),
        pattern.to_owned(),
        n.to_string(),
        u8::from(latency).to_string(),
    ];
    let mut c = Child::spawn(&role("service", side, names, &args))?;
    c.ready().await?;
    Ok(c)
}

/// A publisher child that publishes `n` events under `topic` from 64 tasks and reports when it
/// started and ended (`start_ns`, `end_ns`) and its CPU time for that (`cpu_ns`).
fn publisher_child(side: Side, names: &Names, topic: &str, n: usize) -> Res<Child> {
    Child::spawn(&role(
        "publisher",
        side,
        names,
        &[topic.to_owned(), n.to_string()],
    ))
}

/// Events per second from a publisher's start to the last service's last event, both
/// read on the system-wide monotonic clock in different processes.
fn split_rate(n: usize, publisher: &Figures, services: &[Figures]) -> Res<f64> {
    let start = publisher.u64("start_ns")?;
    let mut done = 0;
    for f in services {
        done = done.max(f.u64("done_ns")?);
    }
    Ok(per_sec(
        n,
        Duration::from_nanos(done.saturating_sub(start).max(1)),
    ))
}

/// `cpu_ns` of a child's figures, in µs per `n` items.
fn cpu_per(f: &Figures, n: usize) -> Res<f64> {
    Ok(f.f64("cpu_ns")? / 1e3 / n.max(1) as f64)
}

/// Workload 2: End to end: events through one service until all were handled.
pub(crate) async fn e2e(side: Side, s: &Sizes, layout: Layout) -> Res<Measured> {
    on_fresh_names("e2e", &["svc"], async |names| match layout {
        Layout::Same => {
            let counter = Arc::new(Counter::new(s.e2e as u64, false));
            let svc =
                Service::start(side, names, "svc", "bench.e2e.*", Arc::clone(&counter)).await?;
            let p = Publisher::connect(side, &names.exchange).await?;
            let t = Instant::now();
            let cpu = cpu_ns();
            publish_many(&p, "bench.e2e.created", s.e2e).await?;
            counter.wait("e2e").await?;
            let rate = per_sec(s.e2e, t.elapsed());
            let cpu = cpu_us_per(cpu, s.e2e);
            p.close().await;
            svc.stop().await;
            Ok(vec![("e2e", rate), ("cpu_all_e2e", cpu)])
        }
        Layout::Split => {
            let mut svc = service_child(side, names, ("svc", "bench.e2e.*"), s.e2e, false).await?;
            let mut p = publisher_child(side, names, "bench.e2e.created", s.e2e)?;
            let (pf, sf) = tokio::try_join!(p.result(), svc.result())?;
            Ok(vec![
                ("e2e", split_rate(s.e2e, &pf, std::slice::from_ref(&sf))?),
                ("cpu_pub_e2e", cpu_per(&pf, s.e2e)?),
                ("cpu_svc_e2e", cpu_per(&sf, s.e2e)?),
            ])
        }
    })
    .await
}

/// Workload 3, the publishing part: `rate` events per second for `ms`, each publish in its own
/// task so a slow confirm does not delay the schedule.
async fn paced_publish(p: &Arc<Publisher>, rate: u64, n: u64) -> Res<()> {
    let start = tokio::time::Instant::now();
    let interval_ns = 1_000_000_000 / rate.max(1);
    let mut set = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_nanos(i * interval_ns)).await;
        let p = Arc::clone(p);
        set.spawn(async move { p.publish("bench.paced.tick", &payload(i, now_ns())).await });
        while let Some(r) = set.try_join_next() {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Workload 3, paced latency: a fixed rate; the handler records now − `t_ns` (the monotonic
/// clock is system-wide, so this holds across processes too).
pub(crate) async fn paced(side: Side, s: &Sizes, layout: Layout) -> Res<Measured> {
    on_fresh_names("paced", &["svc"], async |names| {
        let n = s.paced_rate * s.paced_ms / 1000;
        let [p50, p95, p99] = match layout {
            Layout::Same => {
                let counter = Arc::new(Counter::new(n, true));
                let svc = Service::start(side, names, "svc", "bench.paced.*", Arc::clone(&counter))
                    .await?;
                let p = Publisher::connect(side, &names.exchange).await?;
                paced_publish(&p, s.paced_rate, n).await?;
                counter.wait("paced").await?;
                p.close().await;
                svc.stop().await;
                percentiles_ms(counter.latencies())
            }
            Layout::Split => {
                let n = usize::try_from(n)?;
                let mut svc = service_child(side, names, ("svc", "bench.paced.*"), n, true).await?;
                let args = [s.paced_rate.to_string(), n.to_string()];
                let mut p = Child::spawn(&role("paced", side, names, &args))?;
                let (_, sf) = tokio::try_join!(p.result(), svc.result())?;
                [sf.f64("p50")?, sf.f64("p95")?, sf.f64("p99")?]
            }
        };
        Ok(vec![
            ("paced_p50", p50),
            ("paced_p95", p95),
            ("paced_p99", p99),
        ])
    })
    .await
}

/// RPC warm-up calls before the measured ones.
const RPC_WARM: usize = 50;

/// Workload 4, the calling part: warm-up, sequential calls (latency percentiles and rate),
/// then 16 concurrent callers.
async fn rpc_calls(caller: &Arc<Caller>, s: &Sizes) -> Res<Measured> {
    let req = payload(0, 0);
    for _ in 0..RPC_WARM {
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
        let c = Arc::clone(caller);
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
    Ok(vec![
        ("rpc_p50", p50),
        ("rpc_p95", p95),
        ("rpc_p99", p99),
        ("rpc_seq", seq_rate),
        ("rpc_conc", conc_rate),
    ])
}

/// Workload 4: RPC: sequential calls (latency percentiles and rate), then 16 concurrent callers.
pub(crate) async fn rpc(side: Side, s: &Sizes, layout: Layout) -> Res<Measured> {
    let calls = RPC_WARM + s.rpc_seq + s.rpc_conc;
    on_fresh_names("rpc", &["responder"], async |names| match layout {
        Layout::Same => {
            // The exact topic: only a responder (not a wildcard observer) answers a request.
            let responder = Service::responder(side, names, "responder", "bench.rpc.echo").await?;
            let caller = Caller::connect(side, &names.exchange).await?;
            let cpu = cpu_ns();
            let mut m = rpc_calls(&caller, s).await?;
            m.push(("cpu_all_rpc", cpu_us_per(cpu, calls)));
            caller.close().await;
            responder.stop().await;
            Ok(m)
        }
        Layout::Split => {
            let mut responder = Child::spawn(&role("responder", side, names, &[]))?;
            responder.ready().await?;
            let args = [s.rpc_seq.to_string(), s.rpc_conc.to_string()];
            let cf = Child::spawn(&role("caller", side, names, &args))?
                .result()
                .await?;
            responder.stop();
            let rf = responder.result().await?;
            let mut m = Vec::new();
            for k in ["rpc_p50", "rpc_p95", "rpc_p99", "rpc_seq", "rpc_conc"] {
                m.push((k, cf.f64(k)?));
            }
            m.push(("cpu_caller_rpc", cpu_per(&cf, calls)?));
            m.push(("cpu_resp_rpc", cpu_per(&rf, calls)?));
            Ok(m)
        }
    })
    .await
}

const FANOUT: [&str; 4] = ["s0", "s1", "s2", "s3"];

/// Workload 5: Fan-out: four services bound to the same pattern; events/s until all four handled all.
pub(crate) async fn fanout(side: Side, s: &Sizes, layout: Layout) -> Res<Measured> {
    on_fresh_names("fanout", &FANOUT, async |names| match layout {
        Layout::Same => {
            let mut counters = Vec::new();
            let mut services = Vec::new();
            for name in FANOUT {
                let c = Arc::new(Counter::new(s.fanout as u64, false));
                services
                    .push(Service::start(side, names, name, "bench.fan.*", Arc::clone(&c)).await?);
                counters.push(c);
            }
            let p = Publisher::connect(side, &names.exchange).await?;
            let t = Instant::now();
            let cpu = cpu_ns();
            publish_many(&p, "bench.fan.event", s.fanout).await?;
            for c in &counters {
                c.wait("fan-out").await?;
            }
            let rate = per_sec(s.fanout, t.elapsed());
            let cpu = cpu_us_per(cpu, s.fanout);
            p.close().await;
            for svc in services {
                svc.stop().await;
            }
            Ok(vec![("fanout", rate), ("cpu_all_fan", cpu)])
        }
        Layout::Split => {
            let mut services = Vec::new();
            for name in FANOUT {
                let args = [
                    name.to_owned(),
                    "bench.fan.*".to_owned(),
                    s.fanout.to_string(),
                    "0".to_owned(),
                ];
                services.push(Child::spawn(&role("service", side, names, &args))?);
            }
            for svc in &mut services {
                svc.ready().await?;
            }
            let mut p = publisher_child(side, names, "bench.fan.event", s.fanout)?;
            let (pf, sfs) = tokio::try_join!(
                p.result(),
                futures_util::future::try_join_all(services.iter_mut().map(Child::result))
            )?;
            let mut svc_cpu = 0.0;
            for f in &sfs {
                svc_cpu += cpu_per(f, s.fanout)? / sfs.len() as f64;
            }
            Ok(vec![
                ("fanout", split_rate(s.fanout, &pf, &sfs)?),
                ("cpu_pub_fan", cpu_per(&pf, s.fanout)?),
                ("cpu_svc_fan", svc_cpu),
            ])
        }
    })
    .await
}

/// Prints a child's `RESULT` line.
fn result_line(pairs: &[(&str, String)]) {
    let kv: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", kv.join(" "));
}

fn ready_line() {
    println!("READY");
}

/// A child process of the split layout (`tchu-bench child ROLE SIDE EXCHANGE PREFIX ARGS..`):
///
/// - `service NAME PATTERN N LATENCY`: a counting service; `READY` once it consumes, then
///   `done_ns`, `cpu_ns` (from `READY`) and with `LATENCY` 1 `p50`, `p95`, `p99` (ms);
/// - `publisher TOPIC N`: `N` events from 64 tasks; `start_ns`, `end_ns`, `cpu_ns`;
/// - `publish SEQ CONC`: workload 1's publishing part; its figures and `cpu_pub_conc`;
/// - `paced RATE N`: `N` events at `RATE` per second; `cpu_ns`;
/// - `responder`: the echo responder; `READY`, then at the end of stdin `cpu_ns`;
/// - `caller SEQ CONC`: workload 4's calls; its figures and `cpu_ns` (warm-up included).
pub(crate) async fn child(args: &[String]) -> Res<()> {
    let [role, side, exchange, prefix, rest @ ..] = args else {
        return Err("child: ROLE SIDE EXCHANGE PREFIX ARGS..".into());
    };
    let side = Side::parse(side).ok_or("bad side")?;
    let names = Names {
        exchange: exchange.clone(),
        prefix: prefix.clone(),
    };
    let num = |i: usize| -> Res<usize> {
        Ok(rest
            .get(i)
            .ok_or_else(|| format!("child {role}: missing argument {i}"))?
            .parse()?)
    };
    let arg = |i: usize| -> Res<&str> {
        rest.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("child {role}: missing argument {i}").into())
    };
    match role.as_str() {
        "service" => {
            let (name, pattern, n, latency) = (arg(0)?, arg(1)?, num(2)?, num(3)? == 1);
            let counter = Arc::new(Counter::new(n as u64, latency));
            let svc = Service::start(side, &names, name, pattern, Arc::clone(&counter)).await?;
            let cpu = cpu_ns();
            ready_line();
            guarded(counter.wait("service")).await?;
            let done = now_ns();
            let cpu = cpu_ns() - cpu;
            let mut out = vec![("done_ns", done.to_string()), ("cpu_ns", cpu.to_string())];
            if latency {
                let [p50, p95, p99] = percentiles_ms(counter.latencies());
                out.extend([
                    ("p50", p50.to_string()),
                    ("p95", p95.to_string()),
                    ("p99", p99.to_string()),
                ]);
            }
            svc.stop().await;
            result_line(&out);
        }
        "publisher" => {
            let (topic, n) = (arg(0)?, num(1)?);
            let p = Publisher::connect(side, &names.exchange).await?;
            let start = now_ns();
            let cpu = cpu_ns();
            guarded(publish_many(&p, topic, n)).await?;
            let (end, cpu) = (now_ns(), cpu_ns() - cpu);
            p.close().await;
            result_line(&[
                ("start_ns", start.to_string()),
                ("end_ns", end.to_string()),
                ("cpu_ns", cpu.to_string()),
            ]);
        }
        "publish" => {
            let s = Sizes {
                publish_seq: num(0)?,
                publish_conc: num(1)?,
                ..Sizes::SMOKE
            };
            let p = Publisher::connect(side, &names.exchange).await?;
            let m = guarded(publish_phases(&p, &s)).await?;
            p.close().await;
            let out: Vec<(&str, String)> = m.iter().map(|(k, v)| (*k, v.to_string())).collect();
            result_line(&out);
        }
        "paced" => {
            let (rate, n) = (num(0)? as u64, num(1)? as u64);
            let p = Publisher::connect(side, &names.exchange).await?;
            let cpu = cpu_ns();
            guarded(paced_publish(&p, rate, n)).await?;
            let cpu = cpu_ns() - cpu;
            p.close().await;
            result_line(&[("cpu_ns", cpu.to_string())]);
        }
        "responder" => {
            let responder = Service::responder(side, &names, "responder", "bench.rpc.echo").await?;
            let cpu = cpu_ns();
            ready_line();
            // Answers until the harness closes stdin, bounded like every wait.
            tokio::time::timeout(crate::RUN_LIMIT, stdin_closed())
                .await
                .map_err(|_| "responder: never told to stop")?;
            let cpu = cpu_ns() - cpu;
            responder.stop().await;
            result_line(&[("cpu_ns", cpu.to_string())]);
        }
        "caller" => {
            let s = Sizes {
                rpc_seq: num(0)?,
                rpc_conc: num(1)?,
                ..Sizes::SMOKE
            };
            let caller = Caller::connect(side, &names.exchange).await?;
            let cpu = cpu_ns();
            let m = guarded(rpc_calls(&caller, &s)).await?;
            let cpu = cpu_ns() - cpu;
            caller.close().await;
            let mut out: Vec<(&str, String)> = m.iter().map(|(k, v)| (*k, v.to_string())).collect();
            out.push(("cpu_ns", cpu.to_string()));
            result_line(&out);
        }
        other => return Err(format!("unknown child role `{other}`").into()),
    }
    Ok(())
}

/// The child process: a service that reports its memory. With `n == 0` it idles `idle_ms`
/// and reports VmRSS; otherwise it prints `READY`, handles `n` events and reports VmHWM.
pub(crate) async fn child_service(
    side: Side,
    exchange: &str,
    prefix: &str,
    n: u64,
    idle_ms: u64,
) -> Res<()> {
    let names = Names {
        exchange: exchange.to_owned(),
        prefix: prefix.to_owned(),
    };
    let counter = Arc::new(Counter::new(n.max(1), false));
    let svc = Service::start(side, &names, "svc", "bench.mem.*", Arc::clone(&counter)).await?;
    if n == 0 {
        tokio::time::sleep(Duration::from_millis(idle_ms)).await;
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
    let idle = run_child(side, 0, s.idle_ms).await?.0;
    let peak = run_child(side, s.peak, s.idle_ms).await?.1;
    Ok(vec![
        ("rss_idle", idle as f64 / 1024.0),
        ("rss_peak", peak as f64 / 1024.0),
    ])
}

async fn run_child(side: Side, n: usize, idle_ms: u64) -> Res<(u64, u64)> {
    on_fresh_names("mem", &["svc"], async |names| {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "child-service",
                side.label(),
                &names.exchange,
                &names.prefix,
                &n.to_string(),
                &idle_ms.to_string(),
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
