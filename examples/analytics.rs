//! The `analytics` service: sees every event on the exchange (`#`).
//!
//! ```sh
//! cargo run --example analytics
//! ```

#[tchu::subscribe("#")]
async fn record(event: serde_json::Value, meta: tchu::Meta) {
    println!("[analytics] {} {event}", meta.topic);
}

#[tokio::main]
async fn main() -> Result<(), tchu::Error> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    tchu::run().await
}
