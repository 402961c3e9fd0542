//! Child processes of the split layout: `tchu-bench child ROLE ...` (this binary), driven
//! through pipes.
//!
//! The protocol, one line each on the child's stdout: `READY` once the role is set up (a
//! service consumes, a responder answers), then `RESULT key=value ...` with its figures; then
//! it exits 0. The child's stdin stays open while the parent wants it: end of stdin (the
//! parent closed it, or died) tells a responder to stop and makes any other role fail at once,
//! so a child never outlives its parent. Every wait is bounded ([`WAIT`]); a child that is
//! dropped before it finished is killed (`kill_on_drop`). Errors go to the child's stderr,
//! which is the harness's.

use std::collections::HashMap;
use std::io::Read as _;
use std::process::Stdio;
use std::sync::OnceLock;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::watch;

use crate::common::{Res, WAIT};

/// A running child and its pipes.
#[derive(Debug)]
pub(crate) struct Child {
    what: String,
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

/// The figures of a child's `RESULT` line.
#[derive(Debug, Default)]
pub(crate) struct Figures(HashMap<String, String>);

impl Figures {
    fn parse(line: &str) -> Self {
        Figures(
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    pub(crate) fn u64(&self, key: &str) -> Res<u64> {
        let v = self
            .0
            .get(key)
            .ok_or_else(|| format!("no `{key}` in RESULT"))?;
        Ok(v.parse()?)
    }

    pub(crate) fn f64(&self, key: &str) -> Res<f64> {
        let v = self
            .0
            .get(key)
            .ok_or_else(|| format!("no `{key}` in RESULT"))?;
        Ok(v.parse()?)
    }
}

impl Child {
    /// Starts `tchu-bench child <args>`.
    pub(crate) fn spawn(args: &[String]) -> Res<Self> {
        let what = format!("child {}", args.join(" "));
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("child")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        Ok(Child {
            what,
            stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    async fn expect(&mut self, prefix: &str) -> Res<String> {
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.to_owned());
                }
            }
            let status = self.child.wait().await?;
            Err::<String, crate::common::BoxError>(
                format!("{} ended ({status}) before `{prefix}`", self.what).into(),
            )
        };
        tokio::time::timeout(WAIT, read)
            .await
            .map_err(|_| format!("{}: no `{prefix}` within {WAIT:?}", self.what))?
    }

    /// Waits until the child is set up.
    pub(crate) async fn ready(&mut self) -> Res<()> {
        self.expect("READY").await.map(drop)
    }

    /// Closes the child's stdin (a responder's signal to stop).
    pub(crate) fn stop(&mut self) {
        self.stdin = None;
    }

    /// Waits for the `RESULT` line and the child's successful exit.
    pub(crate) async fn result(&mut self) -> Res<Figures> {
        let line = self.expect("RESULT ").await?;
        self.stop();
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .map_err(|_| format!("{}: did not exit within {WAIT:?}", self.what))??;
        if !status.success() {
            return Err(format!("{} failed: {status}", self.what).into());
        }
        Ok(Figures::parse(&line))
    }
}

/// In the child: resolves when stdin ends (the parent closed it or is gone). A plain thread
/// reads stdin (blocking) and flips a watch at its end.
pub(crate) async fn stdin_closed() {
    static CLOSED: OnceLock<watch::Receiver<bool>> = OnceLock::new();
    let mut rx = CLOSED
        .get_or_init(|| {
            let (tx, rx) = watch::channel(false);
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = std::io::stdin().lock().read_to_end(&mut sink);
                let _ = tx.send(true);
            });
            rx
        })
        .clone();
    let _ = rx.wait_for(|closed| *closed).await;
}

/// In the child: runs `role` until it is done; the end of stdin before that fails it.
pub(crate) async fn guarded<T>(role: impl Future<Output = Res<T>>) -> Res<T> {
    tokio::select! {
        r = role => r,
        () = stdin_closed() => Err("stdin closed: the harness stopped this child".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Figures;

    #[test]
    fn reads_a_result_line() {
        let f = Figures::parse("done_ns=1234567890123 cpu_ns=42 p50=0.5 junk");
        assert_eq!(f.u64("done_ns").ok(), Some(1_234_567_890_123));
        assert_eq!(f.f64("p50").ok(), Some(0.5));
        assert!(f.u64("start_ns").is_err());
    }
}
