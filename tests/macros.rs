//! `#[tchu::event]` and `#[tchu::subscribe]` expansions: they compile, validate, register and
//! turn handler results into outcomes. No broker needed: `cargo test -p tchu --test macros`.

use std::time::Duration;

use serde_json::json;
use tchu::__private::{Registry, Subscription};
use tchu::validator::Validate;
use tchu::{
    Backoff, Delivery, Event, Failure, HandlerError, Meta, RejectionKind, RetryPolicy, RpcError,
};

#[derive(
    Debug,
    Clone,
    PartialEq,
    serde::Serialize,
    serde::Deserialize,
    tchu::validator::Validate,
    tchu::JsonSchema,
)]
#[validate(crate = "tchu::validator")]
#[schemars(crate = "tchu::schemars")]
/// A nested, validated type (with a schema, for the catalog).
pub struct Address {
    /// At least 2 characters.
    #[validate(length(min = 2))]
    pub city: String,
}

/// A broadcast event with every kind of field validation.
#[tchu::event(topic = "user.created")]
#[derive(Debug, Clone, PartialEq)]
pub struct UserCreated {
    /// An email address.
    #[validate(email)]
    pub email: String,
    /// 1 to 20 characters.
    #[validate(length(min = 1, max = 20))]
    pub name: String,
    /// 13 to 150.
    #[validate(range(min = 13, max = 150))]
    pub age: u32,
    /// Validated too.
    #[validate(nested)]
    pub address: Address,
    /// Renamed on the wire.
    #[serde(default, rename = "tags_list")]
    pub tags: Vec<String>,
}

/// An RPC request.
#[tchu::event(topic = "user.get", response = UserReply)]
#[derive(Debug)]
pub struct GetUser {
    /// Positive.
    #[validate(range(min = 1))]
    pub id: u64,
}

/// The reply to [`GetUser`].
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserReply {
    /// The user's name.
    pub name: String,
}

/// A private event: its generated methods must not trigger `dead_code`.
#[tchu::event(topic = "audit.logged")]
struct AuditLogged {}

fn user() -> UserCreated {
    UserCreated {
        email: "ada@example.com".into(),
        name: "Ada".into(),
        age: 36,
        address: Address {
            city: "London".into(),
        },
        tags: vec![],
    }
}

fn user_json() -> serde_json::Value {
    serde_json::to_value(user()).expect("an event serializes")
}

#[test]
fn topic_and_response() {
    assert_eq!(UserCreated::TOPIC, "user.created");
    assert_eq!(<GetUser as Event>::TOPIC, "user.get");
    assert_eq!(AuditLogged::TOPIC, "audit.logged");
    let _: fn() -> <UserCreated as Event>::Response = || ();
    let _: fn(UserReply) -> <GetUser as Event>::Response = |r| r;
}

#[test]
fn validation() {
    assert!(user().validate().is_ok());
    let bad_email = UserCreated {
        email: "nope".into(),
        ..user()
    };
    let errors = bad_email.validate().unwrap_err();
    assert!(errors.field_errors().contains_key("email"));
    let bad = UserCreated {
        name: String::new(),
        age: 3,
        ..user()
    };
    let errors = bad.validate().unwrap_err();
    assert!(errors.field_errors().contains_key("name"));
    assert!(errors.field_errors().contains_key("age"));
    let bad_nested = UserCreated {
        address: Address { city: "X".into() },
        ..user()
    };
    assert!(
        bad_nested
            .validate()
            .unwrap_err()
            .errors()
            .contains_key("address")
    );
    assert!(GetUser { id: 0 }.validate().is_err());
}

#[test]
fn serde_roundtrip_keeps_field_attributes() {
    let v = user_json();
    assert_eq!(v["tags_list"], json!([]));
    let back: UserCreated = serde_json::from_value(v).unwrap();
    assert_eq!(back, user());
}

#[tokio::test]
async fn publish_with_validates_first() {
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::connect_memory(tchu::Config::memory(), &broker)
        .await
        .unwrap();
    let bad = UserCreated {
        email: "nope".into(),
        ..user()
    };
    let err = bad.publish_with(&client).await.unwrap_err();
    assert!(matches!(err, tchu::PublishError::Invalid { .. }), "{err:?}");
}

// --- handlers -------------------------------------------------------------------------------

#[tchu::subscribe(UserCreated)]
async fn on_user_created(event: UserCreated, meta: Meta) -> Result<(), HandlerError> {
    match event.name.as_str() {
        "transient" => Err(HandlerError::transient("try again")),
        "permanent" => Err(HandlerError::permanent("never")),
        _ => {
            assert_eq!(meta.topic, "user.created");
            Ok(())
        }
    }
}

#[tchu::subscribe("user.*", name = "user-audit", id = "tests::audit")]
async fn audit(_event: serde_json::Value) {}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

#[tchu::subscribe("order.#")]
async fn plain_error(_event: serde_json::Value) -> Result<(), Boom> {
    Err(Boom)
}

#[tchu::subscribe("value.returned")]
async fn returns_value(_event: serde_json::Value) -> u32 {
    42
}

#[tchu::subscribe(
    GetUser,
    retries = 5,
    backoff = "fixed",
    delay = "250ms",
    max_delay = "2m"
)]
async fn get_user(req: GetUser) -> Result<UserReply, RpcError> {
    if req.id == 404 {
        return Err(RpcError::new("NOT_FOUND", "no such user"));
    }
    Ok(UserReply {
        name: format!("user {}", req.id),
    })
}

#[tchu::subscribe("retry.jitter", jitter)]
async fn with_jitter_only(_event: serde_json::Value) {}

#[tchu::subscribe("retry.none.*", jitter = false, retries = 0)]
async fn with_jitter_off(_event: serde_json::Value) {}

// --- return kinds, decided by the type and not by its spelling ----------------------------

/// An error that also serializes: were an aliased `Result` taken for a plain value, its `Err`
/// would become a successful reply `{"Err": ...}` instead of a failure.
#[derive(Debug, serde::Serialize)]
struct Refused {
    code: u16,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused {}", self.code)
    }
}

type Res = Result<(), Refused>;

#[tchu::subscribe("alias.result")]
async fn aliased_result(event: serde_json::Value) -> Res {
    if event["fail"] == json!(true) {
        Err(Refused { code: 7 })
    } else {
        Ok(())
    }
}

type Reply<T> = Result<T, RpcError>;

#[tchu::subscribe(GetUser, id = "macros::aliased_rpc")]
async fn aliased_rpc(req: GetUser) -> Reply<UserReply> {
    match req.id {
        404 => Err(RpcError::new("NOT_FOUND", "no such user")),
        id => Ok(UserReply {
            name: format!("alias {id}"),
        }),
    }
}

mod handler_result {
    /// A module's own `Result` alias, as `std::io::Result`.
    pub(crate) type Result<T> = core::result::Result<T, tchu::HandlerError>;
}

#[tchu::subscribe("alias.module")]
async fn module_result(_event: serde_json::Value) -> handler_result::Result<u8> {
    Err(HandlerError::permanent("not fixable"))
}

mod shadow {
    /// Not a `Result`, whatever its name: a plain reply.
    #[derive(serde::Serialize)]
    pub(crate) struct Result {
        pub(crate) n: u32,
    }
}

#[tchu::subscribe("alias.shadow")]
async fn named_result_is_a_value(_event: serde_json::Value) -> shadow::Result {
    shadow::Result { n: 5 }
}

#[tokio::test]
async fn aliased_results_fail_with_their_err() {
    assert_eq!(
        run(
            "macros::aliased_result",
            "alias.result",
            json!({"fail": true})
        )
        .await,
        Err(Failure::Transient("refused 7".into()))
    );
    assert_eq!(
        run("macros::aliased_result", "alias.result", json!({})).await,
        Ok(serde_json::Value::Null)
    );
    assert_eq!(
        run("macros::module_result", "alias.module", json!({})).await,
        Err(Failure::Permanent("not fixable".into()))
    );
}

#[tokio::test]
async fn aliased_rpc_results() {
    assert_eq!(
        run("macros::aliased_rpc", "user.get", json!({"id": 3})).await,
        Ok(json!({"name": "alias 3"}))
    );
    assert_eq!(
        run("macros::aliased_rpc", "user.get", json!({"id": 404})).await,
        Err(Failure::Remote(RpcError::new("NOT_FOUND", "no such user")))
    );
}

#[tokio::test]
async fn a_type_named_result_is_a_value() {
    assert_eq!(
        run("macros::named_result_is_a_value", "alias.shadow", json!({})).await,
        Ok(json!({"n": 5}))
    );
}

fn subscription(id: &str) -> Subscription {
    Registry::static_subscriptions()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no subscription `{id}`"))
}

async fn run(id: &str, topic: &str, event: serde_json::Value) -> tchu::__private::Outcome {
    let s = subscription(id);
    (s.handler)(std::sync::Arc::new(Delivery::for_test(topic, event))).await
}

#[test]
fn handlers_are_registered() {
    let s = subscription("macros::on_user_created");
    assert_eq!(s.name, "on_user_created");
    assert_eq!(s.pattern, "user.created");
    assert_eq!(s.retry, None);

    let s = subscription("tests::audit");
    assert_eq!(s.name, "user-audit");
    assert_eq!(s.pattern, "user.*");

    let s = subscription(concat!(module_path!(), "::get_user"));
    assert_eq!(s.pattern, "user.get");
}

#[test]
fn retry_policies() {
    assert_eq!(
        subscription("macros::get_user").retry,
        Some(RetryPolicy {
            retries: 5,
            backoff: Backoff::Fixed,
            delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(120),
            jitter: RetryPolicy::DEFAULT.jitter,
        })
    );
    assert_eq!(
        subscription("macros::with_jitter_only").retry,
        Some(RetryPolicy {
            jitter: true,
            ..RetryPolicy::DEFAULT
        })
    );
    assert_eq!(
        subscription("macros::with_jitter_off").retry,
        Some(RetryPolicy {
            retries: 0,
            jitter: false,
            ..RetryPolicy::DEFAULT
        })
    );
}

#[tokio::test]
async fn typed_event_ok() {
    let out = run("macros::on_user_created", "user.created", user_json()).await;
    assert_eq!(out, Ok(serde_json::Value::Null));
}

#[tokio::test]
async fn invalid_payload_is_rejected() {
    let mut v = user_json();
    v["email"] = json!("not-an-email");
    match run("macros::on_user_created", "user.created", v).await {
        Err(Failure::Rejected(r)) => assert_eq!(r.kind, RejectionKind::Invalid, "{r}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_shape_is_rejected() {
    match run(
        "macros::on_user_created",
        "user.created",
        json!({"email": 3}),
    )
    .await
    {
        Err(Failure::Rejected(r)) => assert_eq!(r.kind, RejectionKind::Decode, "{r}"),
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[tokio::test]
async fn handler_errors() {
    let mut v = user_json();
    v["name"] = json!("transient");
    assert_eq!(
        run("macros::on_user_created", "user.created", v.clone()).await,
        Err(Failure::Transient("try again".into()))
    );
    v["name"] = json!("permanent");
    assert_eq!(
        run("macros::on_user_created", "user.created", v).await,
        Err(Failure::Permanent("never".into()))
    );
    assert_eq!(
        run("macros::plain_error", "order.x", json!({})).await,
        Err(Failure::Transient("boom".into()))
    );
}

#[tokio::test]
async fn unit_and_value_returns() {
    assert_eq!(
        run("tests::audit", "user.x", json!({"any": 1})).await,
        Ok(serde_json::Value::Null)
    );
    assert_eq!(
        run("macros::returns_value", "value.returned", json!({})).await,
        Ok(json!(42))
    );
}

#[tokio::test]
async fn rpc_replies() {
    assert_eq!(
        run("macros::get_user", "user.get", json!({"id": 7})).await,
        Ok(json!({"name": "user 7"}))
    );
    assert_eq!(
        run("macros::get_user", "user.get", json!({"id": 404})).await,
        Err(Failure::Remote(RpcError::new("NOT_FOUND", "no such user")))
    );
    // Validation of the request runs before the handler.
    assert!(matches!(
        run("macros::get_user", "user.get", json!({"id": 0})).await,
        Err(Failure::Rejected(_))
    ));
}

#[tokio::test]
async fn user_fn_stays_callable() {
    assert_eq!(
        get_user(GetUser { id: 1 }).await.unwrap(),
        UserReply {
            name: "user 1".into()
        }
    );
}
