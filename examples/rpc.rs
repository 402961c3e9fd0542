//! RPC: a responder and a caller in one binary, against RabbitMQ.
//!
//! ```sh
//! cargo run --example rpc
//! cargo run --example rpc -- --catalog    # its catalog file, then exit
//! ```
//! The caller gets a typed reply, a typed business error, a local validation error and a
//! no-route error, each as its own `CallError` variant.

use std::time::Duration;

use tchu::{CallError, RpcError};

/// Is this email free?
#[tchu::event(topic = "rpc.users.validate", response = ValidateReply)]
#[derive(Debug)]
pub struct ValidateUser {
    /// The email to check.
    #[validate(email)]
    pub email: String,
}

/// The answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ValidateReply {
    /// `true` when the email is free.
    pub ok: bool,
}

#[tchu::subscribe(ValidateUser)]
async fn validate(req: ValidateUser) -> Result<ValidateReply, RpcError> {
    if req.email.ends_with("@taken.example") {
        return Err(RpcError::new("EMAIL_TAKEN", "already registered"));
    }
    Ok(ValidateReply { ok: true })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // It also calls what it serves.
    tchu::catalog_flags!(publishes = [ValidateUser]);
    let responder = tchu::App::from_env()?
        .service("rpc-example")
        .start()
        .await?;
    let t = Duration::from_secs(5);

    let reply = ValidateUser {
        email: "ada@example.com".into(),
    }
    .call_with_timeout(t)
    .await?;
    println!("ada@example.com -> ok = {}", reply.ok);

    match (ValidateUser {
        email: "bob@taken.example".into(),
    })
    .call_with_timeout(t)
    .await
    {
        Err(CallError::Remote { code, message, .. }) => {
            println!("bob@taken.example -> {code}: {message}")
        }
        other => println!("unexpected: {other:?}"),
    }
    match (ValidateUser {
        email: "not-an-email".into(),
    })
    .call_with_timeout(t)
    .await
    {
        Err(e @ CallError::Invalid { .. }) => println!("not-an-email -> refused locally: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    match tchu::call("rpc.nobody.home", &serde_json::json!({}), Some(t)).await {
        Err(e @ CallError::NoRoute { .. }) => println!("rpc.nobody.home -> {e}"),
        other => println!("unexpected: {other:?}"),
    }
    responder.shutdown().await;
    Ok(())
}
