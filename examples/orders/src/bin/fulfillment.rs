//! The `fulfillment` service: consumes `OrderPlaced` through the inbox, writing a shipment in
//! its own table. The handler's insert and the inbox record commit together, so a redelivered
//! event never makes a second shipment.
//!
//! ```sh
//! cargo run -p orders-example --bin fulfillment
//! psql -c 'SELECT * FROM shipments'
//! ```

use orders_example::{OrderPlaced, database_url};
use tchu::sqlx::{self, PgPool};
use tchu::{Inbox, Tx};

/// One shipment per order, exactly: its write commits with the inbox record.
#[tchu::subscribe(OrderPlaced)]
async fn ship(order: OrderPlaced, mut tx: Tx) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO shipments (order_id, customer) VALUES ($1, $2)")
        .bind(order.order_id)
        .bind(&order.customer)
        .execute(&mut *tx)
        .await?;
    tracing::info!(order_id = order.order_id, "shipment created");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let pool = PgPool::connect(&database_url("FULFILLMENT_DATABASE_URL")).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS shipments (
             id bigserial PRIMARY KEY,
             order_id bigint NOT NULL,
             customer text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    tchu::App::from_env()?
        .service("fulfillment")
        .inbox(Inbox::new(pool))
        .run()
        .await?;
    Ok(())
}
