//! tchu against raw lapin on a real RabbitMQ.
//!
//! ```text
//! tchu-bench all      [--out DIR] [--only w1,w2,..] [--sides s1,s2,..] [--reps N]   full run
//! tchu-bench smoke    [--out DIR] [--only ..] [--sides ..]       every workload at tiny sizes
//! tchu-bench tchutchu [--out DIR] [--only ..] [--sides ..] [--reps N]   only tchu-tchu
//! tchu-bench child-service SIDE EXCHANGE PREFIX N                (internal: memory child)
//! ```
//! Workloads: publish, e2e, paced, rpc, fanout, memory. Sides: raw, raw-celery (raw lapin with
//! tchu's Celery bytes; no rpc), tchu-celery, tchu-native,
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
use workloads::Sizes;

const WORKLOADS: [&str; 6] = ["publish", "e2e", "paced", "rpc", "fanout", "memory"];

fn usage() -> ! {
    eprintln!(
        "usage: tchu-bench all|smoke|tchutchu [--out DIR] [--only {}] \
         [--sides raw,raw-celery,tchu-celery,tchu-native,tchu-tchu] [--reps N]",
        WORKLOADS.join(",")
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
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
    let [side, exchange, prefix, n] = args else {
        usage()
    };
    let side = Side::parse(side).ok_or("bad side")?;
    workloads::child_service(side, exchange, prefix, n.parse()?).await
}

/// A run that takes longer than this is failed (and retried once).
const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(240);

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
        "publish" => workloads::publish(side, sizes).await,
        "e2e" => workloads::e2e(side, sizes).await,
        "paced" => workloads::paced(side, sizes).await,
        "rpc" => workloads::rpc(side, sizes).await,
        "fanout" => workloads::fanout(side, sizes).await,
        _ => workloads::memory(side, sizes).await,
    }
}

async fn harness(mut sizes: Sizes, args: &[String], mode: Mode) -> Res<()> {
    let mut out: Option<PathBuf> = None;
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
    println!("sizes: {sizes:?}");
    println!("broker: {}", tchu::config::redact(&common::broker_url()));
    let load_before = loadavg();
    println!("load average: {load_before}");
    let mut samples = Samples::new();
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();
    for w in WORKLOADS.iter().filter(|w| only.iter().any(|o| o == *w)) {
        for rep in 0..sizes.reps {
            for &side in &sides {
                if !side.runs(w) {
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
                    let run = run_one(w, side, &sizes, &tt, venv.as_deref());
                    let r = match tokio::time::timeout(RUN_LIMIT, run).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no result within {RUN_LIMIT:?}").into()),
                    };
                    match r {
                        Ok(m) => break m,
                        Err(e) => {
                            let msg = format!(
                                "{w} ({}, run {}, attempt {attempt}): {}",
                                side.label(),
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
                    "{w:8} run {} {:12} {:5.1}s  {}",
                    rep + 1,
                    side.label(),
                    t.elapsed().as_secs_f64(),
                    shown.join(" ")
                );
                for (k, v) in m {
                    samples.entry((k, side)).or_default().push(v);
                }
                raw::settle().await;
            }
        }
    }
    let total = started.elapsed();
    let mut table = if samples.keys().any(|(_, s)| *s != Side::TchuTchu) {
        report::table(&samples)
    } else {
        String::new()
    };
    if samples.keys().any(|(_, s)| *s == Side::TchuTchu) {
        table.push_str(&format!(
            "\ntchu vs tchu-tchu (tchu Celery format, this run; tchu-tchu at its own sizes: \
             {} events end to end, paced {}/s for {} ms, {} sequential calls, {} calls from {} \
             threads):\n\n{}",
            sizes.tt_e2e,
            sizes.tt_paced_rate,
            sizes.tt_paced_ms,
            sizes.tt_rpc_seq,
            sizes.tt_rpc_conc,
            sizes.tt_callers,
            report::versus_table(&samples)
        ));
    }
    println!("\n{table}");
    println!("total time: {:.0} s", total.as_secs_f64());
    let load_after = loadavg();
    println!("load average: {load_after}");
    let mut md = format!(
        "Sizes: {sizes:?}\n\nTotal harness time: {:.0} s\n\n\
         Load average (/proc/loadavg) before: {load_before}; after: {load_after}\n\n{table}",
        total.as_secs_f64()
    );
    md.push_str("\nRaw samples (one per run, in run order):\n\n```\n");
    for ((k, side), v) in &samples {
        let vs: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
        md.push_str(&format!("{k:14} {:12} {}\n", side.label(), vs.join(" ")));
    }
    md.push_str("```\n");
    if !failures.is_empty() {
        md.push_str("\nFailed attempts (each retried once):\n\n");
        for f in &failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    std::fs::write(out.join("results.md"), md)?;
    let svg = out.join("results.svg");
    report::plot(&samples, &svg)?;
    println!(
        "wrote {} and {}",
        out.join("results.md").display(),
        svg.display()
    );
    Ok(())
}

/// The first three fields of /proc/loadavg (other jobs on the machine skew the figures).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
