//! `--pin`: the broker on one core, the benchmark's client processes on another, so the
//! client's own cost shows in the throughput.
//!
//! Every thread of RabbitMQ's `beam.smp` goes to core [`BROKER_CORE`] (`taskset -a -cp`), and
//! the harness's own threads to [`CLIENT_CORE`]; children (the split layout's processes, the
//! tchu-tchu driver and its Celery worker) inherit that. [`BrokerPin`] remembers each broker
//! thread's affinity list before and restores it when dropped: at the end of the run, on an
//! error, and on Ctrl-C or SIGTERM (the harness turns those into an error). Only a SIGKILL of
//! the harness skips it; the command to restore by hand is printed when pinning starts.

use std::process::{Command, Stdio};

use crate::common::Res;

/// The core the broker is pinned to.
pub(crate) const BROKER_CORE: u32 = 0;
/// The core the benchmark's client processes are pinned to.
pub(crate) const CLIENT_CORE: u32 = 1;

/// The broker's affinity as it was before pinning; restored on drop.
#[derive(Debug)]
pub(crate) struct BrokerPin {
    pid: u32,
    /// (thread id, its `Cpus_allowed_list`), the process's main thread first.
    saved: Vec<(u32, String)>,
}

/// `Cpus_allowed_list` of a thread of `pid`.
fn allowed(pid: u32, tid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// The thread ids of `pid`, the main thread first.
fn threads(pid: u32) -> Res<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable_by_key(|t| (*t != pid, *t));
    Ok(tids)
}

fn taskset(args: &[&str]) -> Res<()> {
    let out = Command::new("taskset")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into())
    }
}

/// The broker's pid: `TCHU_BENCH_BROKER_PID`, else the only `beam.smp` process.
fn broker_pid() -> Res<u32> {
    if let Ok(p) = std::env::var("TCHU_BENCH_BROKER_PID") {
        return Ok(p.trim().parse()?);
    }
    let out = Command::new("pidof")
        .arg("beam.smp")
        .output()
        .map_err(|e| format!("pidof: {e}"))?;
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => Err("--pin: no beam.smp process (set TCHU_BENCH_BROKER_PID)".into()),
        _ => Err(format!(
            "--pin: several beam.smp processes {pids:?}: set TCHU_BENCH_BROKER_PID to the \
             broker's"
        )
        .into()),
    }
}

impl BrokerPin {
    /// Pins the broker to [`BROKER_CORE`] and this process to [`CLIENT_CORE`].
    pub(crate) fn start() -> Res<Self> {
        let pid = broker_pid()?;
        let saved: Vec<(u32, String)> = threads(pid)?
            .into_iter()
            .filter_map(|t| Some((t, allowed(pid, t)?)))
            .collect();
        let before = saved.first().map_or("?", |(_, l)| l.as_str()).to_owned();
        // From here on, dropping the guard restores what was saved.
        let guard = BrokerPin { pid, saved };
        taskset(&["-a", "-cp", &BROKER_CORE.to_string(), &pid.to_string()])?;
        let me = std::process::id();
        taskset(&["-a", "-cp", &CLIENT_CORE.to_string(), &me.to_string()])?;
        println!(
            "pinned: broker beam.smp {pid} ({} threads, affinity was {before}) to core \
             {BROKER_CORE}, this harness and its children to core {CLIENT_CORE}; if this process \
             is killed (SIGKILL), restore by hand: taskset -a -cp {before} {pid}",
            guard.saved.len()
        );
        Ok(guard)
    }

    /// Whether every saved broker thread has its old affinity again.
    fn restored(&self) -> bool {
        self.saved
            .iter()
            .all(|(t, l)| allowed(self.pid, *t).is_none_or(|now| now == *l))
    }
}

impl Drop for BrokerPin {
    fn drop(&mut self) {
        let Some((_, main)) = self.saved.first() else {
            return;
        };
        // Every thread (also those started since) to the main thread's old list, then each
        // saved thread whose list differed to its own.
        let mut ok = taskset(&["-a", "-cp", main, &self.pid.to_string()]).is_ok();
        for (t, l) in &self.saved {
            if l != main && allowed(self.pid, *t).is_some() {
                ok &= taskset(&["-cp", l, &t.to_string()]).is_ok();
            }
        }
        if ok && self.restored() {
            println!("unpinned: broker beam.smp {} back to {main}", self.pid);
        } else {
            eprintln!(
                "WARNING: could not restore the broker's affinity: run taskset -a -cp {main} {}",
                self.pid
            );
        }
    }
}
