#[tchu::subscribe("user.*", nam = "audit", retries = "5", name = "a", name = "b")]
async fn audit(_event: serde_json::Value) {}

#[tchu::subscribe(name = "no-pattern")]
async fn no_pattern(_event: serde_json::Value) {}

fn main() {}
