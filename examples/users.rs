//! The `users` service of tchu-tchu's README scenario, against RabbitMQ: publishes
//! `user.created` and `user.deleted`, and handles `user.deleted`.
//!
//! ```sh
//! TCHU_SERVICE=users cargo run --example users
//! cargo run --example users -- --catalog    # its catalog file, then exit
//! ```
//! Run `notifications` and `analytics` beside it to see the broadcast. Ctrl-C stops it.

#[path = "fleet/events.rs"]
mod events;

use events::{UserCreated, UserDeleted};

#[tchu::subscribe(UserDeleted)]
async fn on_user_deleted(event: UserDeleted) -> Result<(), std::io::Error> {
    println!("[users] removing the data of user {}", event.user_id);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), tchu::Error> {
    // `--catalog` / `--asyncapi`; users also receives `user.deleted`, so it names what it sends.
    tchu::catalog_flags!(publishes = [UserCreated, UserDeleted]);
    tracing_subscriber::fmt().with_env_filter("info").init();
    let app = tchu::App::from_env()?.service("users");
    let running = app.start().await?;
    let id = UserCreated {
        user_id: 1,
        email: "ada@example.com".into(),
    }
    .publish()
    .await?;
    println!("[users] published user.created ({id})");
    let id = UserDeleted { user_id: 1 }.publish().await?;
    println!("[users] published user.deleted ({id})");
    tokio::signal::ctrl_c().await.ok();
    running.shutdown().await;
    Ok(())
}
