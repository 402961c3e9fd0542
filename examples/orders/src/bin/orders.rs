//! The `orders` service: `POST /orders` inserts the order and publishes `OrderPlaced` in one
//! transaction (the Rust form of a Django view plus `post_save`); the outbox relay runs in
//! the same process and publishes the event once the transaction committed.
//!
//! ```sh
//! cargo run -p orders-example --bin orders          # listens on 127.0.0.1:3000 (ORDERS_ADDR)
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"customer": "ada", "amount_cents": 1250}'
//! ```

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use orders_example::{OrderPlaced, database_url};
use serde::Deserialize;
use tchu::outbox::PublishIn as _;
use tchu::sqlx::{self, PgPool};

#[derive(Debug, Deserialize)]
struct NewOrder {
    customer: String,
    amount_cents: i64,
}

async fn place_order(
    State(pool): State<PgPool>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<serde_json::Value>), (StatusCode, String)> {
    let internal = |e: &dyn std::fmt::Display| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut tx = pool.begin().await.map_err(|e| internal(&e))?;
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (customer, amount_cents) VALUES ($1, $2) RETURNING id",
    )
    .bind(&order.customer)
    .bind(order.amount_cents)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| internal(&e))?;
    let event = OrderPlaced {
        order_id,
        customer: order.customer,
        amount_cents: order.amount_cents,
    };
    // Validated first: an invalid order is refused with 422 and nothing is written.
    let message_id = match event.publish_in_keyed(&mut tx, &order_id.to_string()).await {
        Ok(id) => id,
        Err(e) if !e.is_database() => {
            return Err((StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        Err(e) => return Err(internal(&e)),
    };
    tx.commit().await.map_err(|e| internal(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"order_id": order_id, "message_id": message_id.to_string()})),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let pool = PgPool::connect(&database_url("ORDERS_DATABASE_URL")).await?;
    tchu::outbox::migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS orders (
             id bigserial PRIMARY KEY,
             customer text NOT NULL,
             amount_cents bigint NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    // The relay: publishes what the handlers commit (stops with the app).
    let running = tchu::App::from_env()?
        .service("orders")
        .publish_only()
        .outbox(pool.clone())
        .start()
        .await?;
    let addr = std::env::var("ORDERS_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "orders: POST /orders");
    let app = Router::new()
        .route("/orders", post(place_order))
        .with_state(pool);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    running.shutdown().await;
    Ok(())
}
