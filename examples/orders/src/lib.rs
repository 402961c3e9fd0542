//! The event the two services of the outbox example share (in a real system, a small crate
//! both depend on, or the catalog).

/// An order was placed: published by `orders` in the transaction that inserted the order.
#[tchu::event(topic = "orders.placed")]
#[derive(Debug, Clone)]
pub struct OrderPlaced {
    /// The order's id (also the ordering key: events of one order keep their order).
    pub order_id: i64,
    /// Who ordered.
    #[validate(length(min = 1, max = 200))]
    pub customer: String,
    /// The amount, in cents.
    #[validate(range(min = 1))]
    pub amount_cents: i64,
}

/// `ORDERS_DATABASE_URL` / `FULFILLMENT_DATABASE_URL`, then `DATABASE_URL`, then the local
/// PostgreSQL's `test` database.
pub fn database_url(var: &str) -> String {
    std::env::var(var)
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}
