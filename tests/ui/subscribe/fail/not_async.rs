#[tchu::subscribe("user.*")]
fn audit(_event: serde_json::Value) {}

fn main() {}
