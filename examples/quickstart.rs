//! The tchu quickstart: three services in one process on the embedded in-memory broker, so it
//! runs with no RabbitMQ.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! `users` publishes `user.created` and `user.deleted` and handles `user.deleted` and an RPC;
//! `notifications` handles `user.created`; `analytics` handles everything (`#`). Each
//! service gets its own queue and bindings from its subscriptions, so every event reaches
//! every service whose patterns match.

use std::time::Duration;

use tchu::{App, Client, Config, Meta, RpcError, State};
use tokio::sync::mpsc::UnboundedSender;

/// What the handlers report to `main`, so the demo can print and end.
type Log = UnboundedSender<String>;

/// A user signed up.
#[tchu::event(topic = "user.created")]
#[derive(Debug)]
pub struct UserCreated {
    /// The new user's id.
    pub user_id: u64,
    /// Where to send the welcome email.
    #[validate(email)]
    pub email: String,
}

/// A user left.
#[tchu::event(topic = "user.deleted")]
#[derive(Debug)]
pub struct UserDeleted {
    /// The user's id.
    pub user_id: u64,
}

/// RPC: is this email acceptable?
#[tchu::event(topic = "rpc.users.validate", response = ValidateReply)]
#[derive(Debug)]
pub struct ValidateUser {
    /// The email to check.
    #[validate(email)]
    pub email: String,
}

/// The answer to [`ValidateUser`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ValidateReply {
    /// Whether the email is free.
    pub ok: bool,
}

mod users {
    use super::*;

    #[tchu::subscribe(UserDeleted)]
    async fn on_user_deleted(event: UserDeleted, log: State<Log>) -> Result<(), RpcError> {
        let _ = log.send(format!(
            "[users]         cleaning up after user {}",
            event.user_id
        ));
        Ok(())
    }

    #[tchu::subscribe(ValidateUser)]
    async fn validate(req: ValidateUser) -> Result<ValidateReply, RpcError> {
        if req.email.ends_with("@taken.example") {
            return Err(RpcError::new(
                "EMAIL_TAKEN",
                "that email is already registered",
            ));
        }
        Ok(ValidateReply { ok: true })
    }
}

mod notifications {
    use super::*;

    #[tchu::subscribe(UserCreated)]
    async fn send_welcome(event: UserCreated, log: State<Log>) -> Result<(), std::io::Error> {
        let _ = log.send(format!("[notifications] welcome email to {}", event.email));
        Ok(())
    }
}

mod analytics {
    use super::*;

    #[tchu::subscribe("#")]
    async fn count_everything(event: serde_json::Value, meta: Meta, log: State<Log>) {
        let _ = log.send(format!("[analytics]     {} {event}", meta.topic));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `memory://`: one in-process broker, made by this client and shared by the services below.
    let client = Client::connect(Config::memory()).await?;
    let _ = tchu::set_default(client.clone());
    let (log, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();

    let mut services = Vec::new();
    for (name, module) in [
        ("users", "quickstart::users"),
        ("notifications", "quickstart::notifications"),
        ("analytics", "quickstart::analytics"),
    ] {
        let app = App::new(Config::memory())
            .client(client.clone())
            .service(name)
            .only_module(module)
            .state(log.clone());
        services.push(app.start().await?);
    }

    UserCreated {
        user_id: 1,
        email: "ada@example.com".into(),
    }
    .publish()
    .await?;
    UserDeleted { user_id: 2 }.publish().await?;
    // Invalid events are refused before anything is sent.
    let err = UserCreated {
        user_id: 3,
        email: "not-an-email".into(),
    }
    .publish()
    .await
    .expect_err("invalid email");
    println!("refused before sending: {err}");

    // Four deliveries: notifications 1, users 1, analytics 2.
    let mut got = Vec::new();
    while got.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), lines.recv()).await {
            Ok(Some(line)) => got.push(line),
            _ => return Err("the demo's events did not all arrive".into()),
        }
    }
    got.sort();
    for line in &got {
        println!("{line}");
    }

    let reply = ValidateUser {
        email: "grace@example.com".into(),
    }
    .call_with_timeout(Duration::from_secs(5))
    .await?;
    println!(
        "rpc rpc.users.validate(grace@example.com) -> ok = {}",
        reply.ok
    );
    match (ValidateUser {
        email: "bob@taken.example".into(),
    })
    .call_with_timeout(Duration::from_secs(5))
    .await
    {
        Err(e) => println!("rpc rpc.users.validate(bob@taken.example) -> {e}"),
        Ok(r) => println!("rpc unexpectedly ok: {}", r.ok),
    }

    for s in services {
        s.shutdown().await;
    }
    Ok(())
}

/// The services' handlers tested with `tchu::testing`, no RabbitMQ: `cargo test --example quickstart`.
#[cfg(test)]
mod tests {
    use super::*;
    use tchu::CallError;
    use tchu::testing::TestApp;

    #[tokio::test]
    async fn users_answers_rpc_and_its_events_are_captured() {
        let (log, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let app = App::new(Config::memory())
            .service("users")
            .only_module("quickstart::users")
            .state(log);
        let t = TestApp::start(app).await.expect("start");
        let wait = Some(Duration::from_secs(5));
        let taken = ValidateUser {
            email: "bob@taken.example".into(),
        };
        assert!(
            matches!(taken.call_with(t.client(), wait).await, Err(CallError::Remote { code, .. }) if code == "EMAIL_TAKEN")
        );
        UserDeleted { user_id: 9 }
            .publish_with(t.client())
            .await
            .expect("publish");
        let seen = t
            .published::<UserDeleted>(1, Duration::from_secs(5))
            .await
            .expect("captured");
        assert_eq!(seen[0].user_id, 9);
        let line = tokio::time::timeout(Duration::from_secs(5), lines.recv())
            .await
            .expect("handled");
        assert_eq!(
            line.as_deref(),
            Some("[users]         cleaning up after user 9")
        );
        t.shutdown().await;
    }
}
