//! tchu against raw lapin on a real RabbitMQ.
//!
//! ```text
//! tchu-bench all      [--out DIR] [--only w1,w2,..] [--sides s1,s2,..] [--reps N]
//!                     [--layout same|split|both] [--pin]                      full run
//! tchu-bench smoke    [same options]                             every workload at tiny sizes
//! tchu-bench tchutchu [--out DIR] [--only ..] [--sides ..] [--reps N]   only tchu-tchu
//! tchu-bench child ROLE SIDE EXCHANGE PREFIX ARGS..   (internal: a split-layout process)
//! tchu-bench child-service SIDE EXCHANGE PREFIX N IDLE_MS        (internal: memory child)
//! ```
//! `--layout` (default `both`): `same` runs publisher, services and caller in the harness's
//! process, `split` each in a process of its own (see `workloads::Layout`); `both` alternates
//! the two within each repetition. `--pin` pins the broker to core 0 and the client processes
//! to core 1 for the run (see `pin`) and writes `results-pinned.{md,svg}`.
//!
//! Workloads: publish, e2e, paced, rpc, fanout, memory. Sides: raw, raw-celery (raw lapin with
//! tchu's Celery bytes, RPC replies in the Celery result format), tchu-celery, tchu-native,
//! tchu-tchu (the Python library with Celery workers; runs e2e, paced and rpc, and reports
//! its memory from e2e; only when a venv is found, see `tchutchu`). `all` runs every side,
//! `smoke` runs tchu-tchu once, tiny, on one worker, `tchutchu` runs only tchu-tchu (writes to
//! `benchmarks/tchutchu/` unless `--out`). The broker is `TCHU_BENCH_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool: its output is the report"
)]

mod common;
mod pin;
mod procs;
mod raw;
mod report;
mod sides;
mod tchutchu;
mod workloads;

use std::path::PathBuf;
use std::time::Instant;

use common::Res;
use report::Samples;
use sides::Side;
use workloads::{Layout, Sizes};

const WORKLOADS: [&str; 6] = ["publish", "e2e", "paced", "rpc", "fanout", "memory"];

fn usage() -> ! {
    eprintln!(
        "usage: tchu-bench all|smoke|tchutchu [--out DIR] [--only {}] \
         [--sides raw,raw-celery,tchu-celery,tchu-native,tchu-tchu] [--reps N] \
         [--layout same|split|both] [--pin]",
        WORKLOADS.join(",")
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("child") => {
            // Exit at once: the runtime would wait for the blocking read of stdin.
            let code = match workloads::child(&args[1..]).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!(
                        "error: child {}: {}",
                        args[1..].join(" "),
                        common::chain(&*e)
                    );
                    1
                }
            };
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(code);
        }
        Some("child-service") => child(&args[1..]).await,
        Some("all") => harness(Sizes::FULL, &args[1..], Mode::All).await,
        Some("smoke") => harness(Sizes::SMOKE, &args[1..], Mode::Smoke).await,
        Some("tchutchu") => harness(Sizes::FULL, &args[1..], Mode::TchuTchu).await,
        _ => usage(),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn child(args: &[String]) -> Res<()> {
    let [side, exchange, prefix, n, idle_ms] = args else {
        usage()
    };
    let side = Side::parse(side).ok_or("bad side")?;
    workloads::child_service(side, exchange, prefix, n.parse()?, idle_ms.parse()?).await
}

/// A run that takes longer than this is failed (and retried once).
pub(crate) const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(240);

/// Which command runs the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Smoke,
    TchuTchu,
}

async fn run_one(
    w: &str,
    side: Side,
    layout: Layout,
    sizes: &Sizes,
    tt: &[&str],
    venv: Option<&std::path::Path>,
) -> Res<workloads::Measured> {
    if side == Side::TchuTchu {
        let venv = venv.ok_or("no venv")?;
        // Combined: one driver run for all of tt; otherwise just this workload.
        let ws = if sizes.tt_combined {
            tt.to_vec()
        } else {
            vec![w]
        };
        return tchutchu::run(venv, &ws, sizes).await;
    }
    match w {
        "publish" => workloads::publish(side, sizes, layout).await,
        "e2e" => workloads::e2e(side, sizes, layout).await,
        "paced" => workloads::paced(side, sizes, layout).await,
        "rpc" => workloads::rpc(side, sizes, layout).await,
        "fanout" => workloads::fanout(side, sizes, layout).await,
        _ => workloads::memory(side, sizes).await,
    }
}

/// Runs the harness until it is done or interrupted (Ctrl-C, SIGTERM: an error, so that guards
/// such as the broker's pinning are dropped and restore what they changed).
async fn harness(sizes: Sizes, args: &[String], mode: Mode) -> Res<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let r = tokio::select! {
        r = harness_run(sizes, args, mode) => return r,
        r = tokio::signal::ctrl_c() => r.map_err(Into::into).and(Err("interrupted (Ctrl-C)".into())),
        _ = term.recv() => Err("terminated (SIGTERM)".into()),
    };
    // The run was dropped (its children killed, the broker unpinned): delete its queues.
    workloads::cleanup_unfinished().await;
    r
}

async fn harness_run(mut sizes: Sizes, args: &[String], mode: Mode) -> Res<()> {
    let mut out: Option<PathBuf> = None;
    let mut layouts = vec![Layout::Same, Layout::Split];
    let mut pin = false;
    let mut only: Vec<String> = if mode == Mode::TchuTchu {
        tchutchu::WORKLOADS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        WORKLOADS.iter().map(|s| (*s).to_owned()).collect()
    };
    let mut sides: Vec<Side> = if mode == Mode::TchuTchu {
        vec![Side::TchuTchu]
    } else {
        vec![
            Side::Raw,
            Side::RawCelery,
            Side::Celery,
            Side::Native,
            Side::TchuTchu,
        ]
    };
    let list = |it: &mut std::slice::Iter<'_, String>| -> Vec<String> {
        it.next()
            .unwrap_or_else(|| usage())
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = Some(it.next().unwrap_or_else(|| usage()).into()),
            "--only" => only = list(&mut it),
            "--sides" => {
                sides = list(&mut it)
                    .iter()
                    .map(|s| Side::parse(s).ok_or_else(|| format!("unknown side `{s}`")))
                    .collect::<Result<_, _>>()?;
            }
            "--reps" => sizes.reps = it.next().unwrap_or_else(|| usage()).parse()?,
            "--layout" => {
                layouts = match it.next().map(String::as_str) {
                    Some("same") => vec![Layout::Same],
                    Some("split") => vec![Layout::Split],
                    Some("both") => vec![Layout::Same, Layout::Split],
                    _ => usage(),
                };
            }
            "--pin" => pin = true,
            _ => usage(),
        }
    }
    if let Some(w) = only.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        return Err(format!("unknown workload `{w}`").into());
    }
    let venv = tchutchu::venv();
    if sides.contains(&Side::TchuTchu) {
        match &venv {
            Some(v) => println!("tchu-tchu: venv {}", v.display()),
            None if mode == Mode::TchuTchu => {
                return Err(
                    "tchu-tchu: no venv with bin/celery (TCHU_BENCH_VENV or .venv; \
                            `bash .ci/python-venv.sh` makes .venv)"
                        .into(),
                );
            }
            None => {
                println!("tchu-tchu: skipped, no venv with bin/celery (TCHU_BENCH_VENV or .venv)");
                sides.retain(|s| *s != Side::TchuTchu);
            }
        }
    }
    if sides.is_empty() {
        println!("no side left to run");
    }
    // The tchu-tchu side's workloads in this run, in order.
    let tt: Vec<&str> = tchutchu::WORKLOADS
        .into_iter()
        .filter(|w| only.iter().any(|o| o == w))
        .collect();
    let out = out.unwrap_or_else(|| match mode {
        Mode::All => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../benchmarks")),
        Mode::TchuTchu => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../benchmarks/tchutchu"
        )),
        Mode::Smoke => std::env::temp_dir().join("tchu-bench-smoke"),
    });
    std::fs::create_dir_all(&out)?;
    // Workloads that do not depend on the layout (memory: the service is always a child; the
    // tchu-tchu driver always runs its Celery worker apart) run once, filed under this one.
    let primary = if layouts.contains(&Layout::Split) {
        Layout::Split
    } else {
        Layout::Same
    };
    let _pinned = if pin {
        Some(pin::BrokerPin::start()?)
    } else {
        None
    };
    let pinning = if pin {
        format!(
            "on: broker (beam.smp, all threads) on core {}, client processes on core {}",
            pin::BROKER_CORE,
            pin::CLIENT_CORE
        )
    } else {
        "off".to_owned()
    };
    println!("sizes: {sizes:?}");
    let shown: Vec<&str> = layouts.iter().map(|l| l.label()).collect();
    println!("layouts: {}; pinning: {pinning}", shown.join(", "));
    println!("broker: {}", tchu::config::redact(&common::broker_url()));
    let load_before = loadavg();
    println!("load average: {load_before}");
    let mut samples = Samples::new();
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();
    for w in WORKLOADS.iter().filter(|w| only.iter().any(|o| o == *w)) {
        for rep in 0..sizes.reps {
            for (&layout, &side) in layouts
                .iter()
                .flat_map(|l| sides.iter().map(move |s| (l, s)))
            {
                let once = *w == "memory" || side == Side::TchuTchu;
                if once && layout != primary {
                    continue;
                }
                if side == Side::TchuTchu {
                    let first = tt.first() == Some(w);
                    if !tt.contains(w) || (sizes.tt_combined && !first) {
                        continue;
                    }
                }
                let t = Instant::now();
                let mut attempt = 0;
                let m = loop {
                    attempt += 1;
                    let run = run_one(w, side, layout, &sizes, &tt, venv.as_deref());
                    let r = match tokio::time::timeout(RUN_LIMIT, run).await {
                        Ok(r) => r,
                        Err(_) => {
                            workloads::cleanup_unfinished().await;
                            Err(format!("no result within {RUN_LIMIT:?}").into())
                        }
                    };
                    match r {
                        Ok(m) => break m,
                        Err(e) => {
                            let msg = format!(
                                "{w} ({}, {}, run {}, attempt {attempt}): {}",
                                side.label(),
                                layout.label(),
                                rep + 1,
                                common::chain(&*e)
                            );
                            println!("FAILED {msg}");
                            failures.push(msg.clone());
                            if attempt >= 2 {
                                return Err(msg.into());
                            }
                        }
                    }
                };
                let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
                println!(
                    "{w:8} run {} {:5} {:12} {:5.1}s  {}",
                    rep + 1,
                    layout.label(),
                    side.label(),
                    t.elapsed().as_secs_f64(),
                    shown.join(" ")
                );
                for (k, v) in m {
                    samples.entry((k, side, layout)).or_default().push(v);
                }
                tokio::time::sleep(std::time::Duration::from_millis(sizes.settle_ms)).await;
            }
        }
    }
    let total = started.elapsed();
    let mut table = String::new();
    for &layout in &layouts {
        if samples
            .keys()
            .any(|(_, s, l)| *s != Side::TchuTchu && *l == layout)
        {
            table.push_str(&format!(
                "Layout `{}`: {}. Pinning: {pinning}.\n\n{}\n",
                layout.label(),
                layout.describe(),
                report::table(&samples, layout)
            ));
        }
    }
    if samples.keys().any(|(_, s, _)| *s == Side::TchuTchu) {
        table.push_str(&format!(
            "\ntchu vs tchu-tchu (tchu Celery format, layout `{}`, this run; tchu-tchu at its own sizes: \
             {} events end to end, paced {}/s for {} ms, {} sequential calls, {} calls from {} \
             threads):\n\n{}",
            primary.label(),
            sizes.tt_e2e,
            sizes.tt_paced_rate,
            sizes.tt_paced_ms,
            sizes.tt_rpc_seq,
            sizes.tt_rpc_conc,
            sizes.tt_callers,
            report::versus_table(&samples, primary)
        ));
    }
    println!("\n{table}");
    println!("total time: {:.0} s", total.as_secs_f64());
    let load_after = loadavg();
    println!("load average: {load_after}");
    let mut md = format!(
        "Sizes: {sizes:?}\n\nLayouts: {}. Pinning: {pinning}.\n\nTotal harness time: {:.0} s\n\n\
         Load average (/proc/loadavg) before: {load_before}; after: {load_after}\n\n{table}",
        shown.join(", "),
        total.as_secs_f64()
    );
    md.push_str("\nRaw samples (one per run, in run order):\n\n```\n");
    for ((k, side, layout), v) in &samples {
        let vs: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
        md.push_str(&format!(
            "{k:14} {:5} {:12} {}\n",
            layout.label(),
            side.label(),
            vs.join(" ")
        ));
    }
    md.push_str("```\n");
    if !failures.is_empty() {
        md.push_str("\nFailed attempts (each retried once):\n\n");
        for f in &failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    let stem = if pin { "results-pinned" } else { "results" };
    let md_path = out.join(format!("{stem}.md"));
    std::fs::write(&md_path, md)?;
    let svg = out.join(format!("{stem}.svg"));
    report::plot(&samples, &layouts, &svg)?;
    println!("wrote {} and {}", md_path.display(), svg.display());
    Ok(())
}

/// The first three fields of /proc/loadavg (other jobs on the machine skew the figures).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
