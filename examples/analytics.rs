//! The `analytics` service: sees every event on the exchange (`#`).
//!
//! ```sh
//! cargo run --example analytics
//! cargo run --example analytics -- --catalog    # its catalog file (tchu lint/diff/map), then exit
//! cargo run --example analytics -- --asyncapi   # its AsyncAPI 3.0 document, then exit
//! ```

#[tchu::subscribe("#")]
async fn record(event: serde_json::Value, meta: tchu::Meta) {
    println!("[analytics] {} {event}", meta.topic);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tchu::catalog_flags!();
    tracing_subscriber::fmt().with_env_filter("info").init();
    Ok(tchu::run().await?)
}
