//! Every argument form, and the `crate = "..."` override through a re-export.
#![deny(warnings)]

mod reexport {
    pub use tchu;
}

#[tchu::event(topic = "order.placed", crate = "crate::reexport::tchu")]
struct OrderPlaced {
    #[validate(range(min = 1))]
    quantity: u32,
}

#[tchu::event(topic = "order.get", response = Vec<(u64, String)>)]
struct GetOrders {}

#[tchu::subscribe(OrderPlaced, crate = "crate::reexport::tchu")]
async fn on_order(order: OrderPlaced, _meta: tchu::Meta) {
    let _ = order.quantity;
}

#[tchu::subscribe(GetOrders, name = "orders", id = "orders::get", retries = 2)]
async fn get_orders(_req: GetOrders) -> Vec<(u64, String)> {
    vec![(1, "one".to_owned())]
}

#[tchu::subscribe("order.#", backoff = "exponential", delay = "100ms", max_delay = "1h", jitter)]
async fn audit(_event: serde_json::Value) -> std::io::Result<u8> {
    Ok(1)
}

fn main() {}
