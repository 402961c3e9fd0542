//! Handler arguments on the in-memory broker (no RabbitMQ): every kind of extractor, the
//! context helper (app-wide, per event type, required), and run-time handlers.

use std::sync::Arc;
use std::time::Duration;

use tchu::testing::TestApp;
use tchu::{App, Client, Config, Context, ContextError, Delivery, Meta, State};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

const WAIT: Duration = Duration::from_secs(5);

/// The request context the helper rebuilds.
#[derive(Debug, Clone, PartialEq)]
struct User {
    id: u64,
    company: String,
}

/// An order; its handlers need to know who placed it.
#[tchu::event(topic = "order.placed")]
#[derive(Debug)]
pub struct OrderPlaced {
    order_id: u64,
    #[serde(default)]
    user_id: Option<u64>,
}

/// An admin event whose context is built differently.
#[tchu::event(topic = "admin.audit")]
#[derive(Debug)]
pub struct AdminAudit {
    admin: String,
}

type Seen = UnboundedSender<String>;

mod every_argument {
    use super::*;

    #[tchu::subscribe(OrderPlaced)]
    async fn all_kinds(
        order: OrderPlaced,
        raw: serde_json::Value,
        meta: Meta,
        seen: State<Seen>,
        user: Context<User>,
        client: Client,
    ) -> Result<(), tchu::PublishError> {
        let _ = seen.send(format!(
            "order {} raw {} topic {} attempt {} user {} of {}",
            order.order_id, raw["order_id"], meta.topic, meta.attempt, user.id, user.company
        ));
        client
            .publish(
                "order.confirmed",
                &serde_json::json!({ "order_id": order.order_id }),
            )
            .await?;
        Ok(())
    }

    #[tchu::subscribe(AdminAudit)]
    async fn audit(_e: AdminAudit, user: Context<User>, seen: State<Seen>) {
        let _ = seen.send(format!("audit by {} of {}", user.id, user.company));
    }
}

fn user_from_event(event: &serde_json::Value, _meta: &Meta) -> Result<User, ContextError> {
    let id = event["user_id"].as_u64().ok_or("no user_id in the event")?;
    Ok(User {
        id,
        company: "acme".into(),
    })
}

fn app(seen: Seen) -> App {
    App::new(Config::memory())
        .service("orders")
        .only_module("handlers::every_argument")
        .state(seen)
        .context_helper(user_from_event)
        .context_helper_for::<AdminAudit, User, _>(|e: &serde_json::Value, _m: &Meta| {
            Ok(User {
                id: 0,
                company: format!("admin:{}", e["admin"].as_str().unwrap_or("?")),
            })
        })
        .require_context::<OrderPlaced, User>()
}

#[tokio::test]
async fn a_handler_takes_every_kind_of_argument() {
    let (tx, mut rx) = unbounded_channel();
    let t = TestApp::start(app(tx)).await.expect("start");
    OrderPlaced {
        order_id: 7,
        user_id: Some(42),
    }
    .publish_with(t.client())
    .await
    .expect("publish");
    let line = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled");
    assert_eq!(
        line.as_deref(),
        Some("order 7 raw 7 topic order.placed attempt 1 user 42 of acme")
    );
    let confirmed = t
        .published_json("order.confirmed", 1, WAIT)
        .await
        .expect("nested publish");
    assert_eq!(confirmed[0]["order_id"], 7);

    // The per-event-type helper overrides the app's.
    AdminAudit {
        admin: "root".into(),
    }
    .publish_with(t.client())
    .await
    .expect("publish");
    let line = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled");
    assert_eq!(line.as_deref(), Some("audit by 0 of admin:root"));
    t.shutdown().await;
}

#[tokio::test]
async fn a_required_context_that_cannot_be_built_dead_letters_as_unauthorized() {
    let (tx, mut rx) = unbounded_channel();
    let t = TestApp::start(app(tx)).await.expect("start");
    OrderPlaced {
        order_id: 8,
        user_id: None,
    }
    .publish_with(t.client())
    .await
    .expect("publish");
    // A later valid one is handled, so the first one was processed (in order) before it.
    OrderPlaced {
        order_id: 9,
        user_id: Some(1),
    }
    .publish_with(t.client())
    .await
    .expect("publish");
    let line = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled");
    assert!(
        line.as_deref().is_some_and(|l| l.starts_with("order 9 ")),
        "{line:?}"
    );
    let dead = t
        .client()
        .dead_letters("orders", 10_000)
        .await
        .expect("dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    // Bounded by its limit, and reading removes nothing.
    let none = t.client().dead_letters("orders", 0).await.expect("dlq");
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(t.client().queue_len("orders.dlq").await.expect("len"), 1);
    assert!(
        dead[0].reason.starts_with("unauthorized: no user_id"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].original_routing_key, "order.placed");
    assert!(rx.try_recv().is_err(), "the handler never ran for order 8");
    t.shutdown().await;
}

#[tokio::test]
async fn run_time_handlers_get_bindings_like_static_ones() {
    let (tx, mut rx) = unbounded_channel::<String>();
    let app = App::new(Config::memory())
        .service("plugins")
        .only_module("none")
        .subscribe("plugin.*", "plugin-listener", move |d: Arc<Delivery>| {
            let _ = tx.send(d.meta.topic.clone());
            async { Ok::<(), std::convert::Infallible>(()) }
        });
    let t = TestApp::start(app).await.expect("start");
    t.client()
        .publish("plugin.loaded", &serde_json::json!({}))
        .await
        .expect("publish");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled");
    assert_eq!(got.as_deref(), Some("plugin.loaded"));
    t.shutdown().await;
}

/// The service-wide handler timeout (`App::handler_timeout`, `TCHU_HANDLER_TIMEOUT`): a run
/// that takes longer is stopped and is a failure like any other (here with no retries: it is
/// dead-lettered with the reason), and the next delivery is handled.
#[tokio::test]
async fn a_run_longer_than_the_service_timeout_is_stopped_and_dead_lettered() {
    let (tx, mut rx) = unbounded_channel::<u64>();
    let app = App::new(Config::memory())
        .service("slow")
        .only_module("none")
        .handler_timeout(Duration::from_millis(200))
        .retry(tchu::RetryPolicy::NONE)
        .subscribe("job.slow", "slow", move |d: Arc<Delivery>| {
            let n = d.event()["n"].as_u64().unwrap_or_default();
            let tx = tx.clone();
            async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let _ = tx.send(n);
                Ok::<(), std::convert::Infallible>(())
            }
        });
    let t = TestApp::start(app).await.expect("start");
    for n in 0..2 {
        t.client()
            .publish("job.slow", &serde_json::json!({ "n": n }))
            .await
            .expect("publish");
    }
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled");
    assert_eq!(got, Some(1));
    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        let dead = t.client().dead_letters("slow", 10_000).await.expect("dlq");
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].reason,
        "handler timed out after 200ms (after 1 attempts)"
    );
    let s = t.stats();
    assert_eq!((s.timed_out, s.handled), (1, 1), "{s:?}");
    t.shutdown().await;
}

/// Two apps in one process (#15 "no hidden global between apps"): a handler's
/// `tchu::publish` (and `event.publish()`) goes through the app that runs it, not through the
/// process's default client, which the first app started set for good.
#[tokio::test]
async fn a_handler_publishes_through_its_own_app() {
    let first = TestApp::start(
        App::new(Config::memory())
            .service("first")
            .only_module("none")
            .subscribe("first.ping", "first-ping", |_d: Arc<Delivery>| async {
                tchu::publish("pong", &serde_json::json!({ "from": "first" })).await?;
                Ok::<(), tchu::PublishError>(())
            }),
    )
    .await
    .expect("start first");
    // Started second: the process default client is the first app's (or an earlier one's).
    let second = TestApp::start(
        App::new(Config::memory())
            .service("second")
            .only_module("none")
            .subscribe("second.ping", "second-ping", |_d: Arc<Delivery>| async {
                tchu::publish("pong", &serde_json::json!({ "from": "second" })).await?;
                OrderPlaced {
                    order_id: 2,
                    user_id: None,
                }
                .publish()
                .await?;
                Ok::<(), tchu::PublishError>(())
            }),
    )
    .await
    .expect("start second");
    second
        .client()
        .publish("second.ping", &serde_json::json!({}))
        .await
        .expect("publish");
    first
        .client()
        .publish("first.ping", &serde_json::json!({}))
        .await
        .expect("publish");
    let got = second.published_json("pong", 1, WAIT).await.expect("pong");
    assert_eq!(got[0]["from"], "second");
    let typed = second
        .published_json("order.placed", 1, WAIT)
        .await
        .expect("typed publish");
    assert_eq!(typed[0]["order_id"], 2);
    let got = first.published_json("pong", 1, WAIT).await.expect("pong");
    assert_eq!(got[0]["from"], "first");
    // Nothing crossed over: each app's capture holds its own pong only.
    assert!(
        second
            .published_json("pong", 2, Duration::from_millis(200))
            .await
            .is_err()
    );
    assert!(
        first
            .published_json("pong", 2, Duration::from_millis(200))
            .await
            .is_err()
    );
    first.shutdown().await;
    second.shutdown().await;
}
