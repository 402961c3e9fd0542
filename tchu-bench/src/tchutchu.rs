//! The "tchu-tchu" side: the Python library tchu-tchu 3.0.4 with a Celery 5.7 worker (prefork
//! pool, 2 processes), driven by `python/tchutchu_bench.py` in the venv's Python. The driver
//! starts the worker on the run's own exchange and queue, publishes and calls with
//! `TchuClient`, stops the worker, deletes what the run declared and prints one JSON line.
//!
//! It runs workloads 2 (end to end, plus the worker's memory of workload 6), 3 (paced latency)
//! and 4 (RPC) at the smaller `tt_*` sizes of [`Sizes`]. It needs a venv with tchu-tchu and
//! Celery: `TCHU_BENCH_VENV`, or `.venv` at the repository root (`bash .ci/python-venv.sh`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{Names, Res, broker_url};
use crate::workloads::{Measured, Sizes};

/// The workloads this side runs (workload 6's rows come from the `e2e` run).
pub(crate) const WORKLOADS: [&str; 3] = ["e2e", "paced", "rpc"];

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tchutchu_bench.py");

/// The metrics the driver reports, under the harness's row keys.
const KEYS: [&str; 12] = [
    "e2e",
    "py_publish",
    "paced_p50",
    "paced_p95",
    "paced_p99",
    "rpc_p50",
    "rpc_p95",
    "rpc_p99",
    "rpc_seq",
    "rpc_conc",
    "rss_idle",
    "rss_peak",
];

/// The driver's own limit for one run (the harness's is 240 s; the driver cleans up first).
const DRIVER_LIMIT_S: u64 = 200;

/// The venv to use: `TCHU_BENCH_VENV`, else `.venv` at the repository root; `None` unless it
/// holds `bin/celery`.
pub(crate) fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("TCHU_BENCH_VENV").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv")),
        PathBuf::from,
    );
    dir.join("bin/celery").is_file().then_some(dir)
}

/// Kills the driver's process group (the driver and its Celery worker) and deletes the run's
/// queue and exchanges, unless disarmed after the driver finished on its own.
struct Guard<'a> {
    pgid: Option<u32>,
    python: &'a Path,
    names: &'a Names,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let Some(pgid) = self.pgid else { return };
        // The group was created for the driver (process_group(0)): only its processes.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new(self.python)
            .arg(SCRIPT)
            .args(["cleanup", "--broker", &broker_url()])
            .args(["--exchange", &self.names.exchange])
            .args(["--prefix", &self.names.prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One driver run of `workloads` (a subset of [`WORKLOADS`]) on a fresh worker.
pub(crate) async fn run(venv: &Path, workloads: &[&str], s: &Sizes) -> Res<Measured> {
    let names = Names::new("tt");
    let python = venv.join("bin/python");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(SCRIPT)
        .args(["run", "--broker", &broker_url()])
        .args(["--exchange", &names.exchange, "--prefix", &names.prefix])
        .args(["--workloads", &workloads.join(",")])
        .args(["--e2e", &s.tt_e2e.to_string()])
        .args(["--paced-rate", &s.tt_paced_rate.to_string()])
        .args(["--paced-ms", &s.tt_paced_ms.to_string()])
        .args(["--rpc-seq", &s.tt_rpc_seq.to_string()])
        .args(["--rpc-conc", &s.tt_rpc_conc.to_string()])
        .args(["--callers", &s.tt_callers.to_string()])
        .args(["--idle-s", &format!("{:.3}", s.tt_idle_ms as f64 / 1000.0)])
        .args(["--timeout", &DRIVER_LIMIT_S.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let mut guard = Guard {
        pgid: child.id(),
        python: &python,
        names: &names,
    };
    let out = child.wait_with_output().await?;
    guard.pgid = None; // the driver stopped its worker and cleaned up itself
    drop(guard);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |s: &str| {
        s.chars()
            .rev()
            .take(1500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "tchu-tchu driver printed no result ({}); stderr: {}",
                out.status,
                tail(&stderr)
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    if v["ok"] != serde_json::Value::Bool(true) {
        return Err(format!(
            "tchu-tchu driver: {}; stderr: {}",
            v["error"].as_str().unwrap_or("failed"),
            tail(&stderr)
        )
        .into());
    }
    println!("  tchu-tchu info: {}", v["info"]);
    Ok(KEYS
        .iter()
        .filter_map(|k| Some((*k, v["metrics"].get(*k)?.as_f64()?)))
        .collect())
}
