//! The `analytics` service: sees every event on the exchange (`#`).
//!
//! ```sh
//! cargo run --example analytics
//! cargo run --example analytics -- --catalog    # its events and subscriptions as JSON, then exit
//! cargo run --example analytics -- --asyncapi   # its AsyncAPI 3.0 document, then exit
//! ```

#[tchu::subscribe("#")]
async fn record(event: serde_json::Value, meta: tchu::Meta) {
    println!("[analytics] {} {event}", meta.topic);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `--catalog` / `--asyncapi`: describe the service from its linked items, and exit.
    if let Some(flag) = std::env::args().nth(1) {
        let catalog = tchu::catalog();
        let doc = match flag.as_str() {
            "--catalog" => serde_json::to_value(&catalog)?,
            "--asyncapi" => catalog.asyncapi("analytics"),
            other => {
                return Err(format!(
                    "unknown flag `{other}`; expected `--catalog` or `--asyncapi`"
                )
                .into());
            }
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    tracing_subscriber::fmt().with_env_filter("info").init();
    Ok(tchu::run().await?)
}
