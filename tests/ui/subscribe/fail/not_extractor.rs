#[tchu::subscribe("user.*")]
async fn audit(_event: serde_json::Value, _count: u32) {}

fn main() {}
