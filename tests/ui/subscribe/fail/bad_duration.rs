#[tchu::subscribe("user.*", delay = "1d", max_delay = "fast", backoff = "linear")]
async fn audit(_event: serde_json::Value) {}

fn main() {}
