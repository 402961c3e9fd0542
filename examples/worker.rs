//! A worker for the SIGTERM test (`tests/reliability.rs`): appends the `n` of each `work.item`
//! event to the file named by `WORKER_OUT`, one per line, then runs until SIGINT/SIGTERM with
//! [`tchu::App::run`]. Settings come from the environment (`TCHU_BROKER_URL`, `TCHU_EXCHANGE`,
//! `TCHU_SERVICE`); `WORKER_DELAY_MS` slows each event down.

use std::io::Write as _;
use std::time::Duration;

#[tchu::subscribe("work.item")]
async fn record(event: serde_json::Value) -> Result<(), std::io::Error> {
    if let Some(ms) = std::env::var("WORKER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let n = event["n"]
        .as_u64()
        .ok_or_else(|| std::io::Error::other("no n"))?;
    let path = std::env::var("WORKER_OUT").map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: appends from concurrent handlers do not interleave.
    f.write_all(format!("{n}\n").as_bytes())
}

#[tokio::main]
async fn main() -> Result<(), tchu::Error> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    tchu::App::from_env()?.only_module("worker::").run().await
}
