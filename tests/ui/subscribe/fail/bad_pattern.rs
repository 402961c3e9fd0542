#[tchu::subscribe("user*")]
async fn audit(_event: serde_json::Value) {}

fn main() {}
