//! The `notifications` service: sends a welcome email on `user.created`.
//!
//! ```sh
//! cargo run --example notifications
//! cargo run --example notifications -- --catalog    # its catalog file (tchu lint/diff/map), then exit
//! cargo run --example notifications -- --asyncapi   # its AsyncAPI 3.0 document, then exit
//! ```
//! The service (and queue) name defaults to the executable's name, `notifications`.

#[path = "fleet/events.rs"]
mod events;

use events::UserCreated;

#[tchu::subscribe(UserCreated)]
async fn send_welcome(event: UserCreated, meta: tchu::Meta) -> Result<(), std::io::Error> {
    println!(
        "[notifications] welcome email to {} (message {:?})",
        event.email, meta.message_id
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // It links the fleet's events but publishes none of them.
    tchu::catalog_flags!(publishes = []);
    tracing_subscriber::fmt().with_env_filter("info").init();
    Ok(tchu::run().await?)
}
