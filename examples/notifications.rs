//! The `notifications` service: sends a welcome email on `user.created`.
//!
//! ```sh
//! cargo run --example notifications
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
async fn main() -> Result<(), tchu::Error> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    tchu::run().await
}
