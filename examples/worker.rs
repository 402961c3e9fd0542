//! A worker for the shutdown test: handles `work.item` events by appending their `n` to the
//! file named by `TCHU_WORKER_OUT`, and stops gracefully on SIGTERM/SIGINT.
//!
//! ```sh
//! TCHU_SERVICE=worker TCHU_WORKER_OUT=/tmp/seen.txt cargo run --example worker
//! ```

use std::io::Write;

#[tchu::subscribe("work.item")]
async fn record(event: serde_json::Value) -> Result<(), std::io::Error> {
    let Some(path) = std::env::var_os("TCHU_WORKER_OUT") else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", event["n"])
}

#[tokio::main]
async fn main() -> Result<(), tchu::Error> {
    tchu::App::from_env()?.run().await
}
