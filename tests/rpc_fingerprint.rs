//! A typed RPC request carries its schema fingerprint (`tchu-schema`) like a typed publish, so
//! a responder compiled against another schema of the request sees the mismatch; an untyped
//! call carries none. On the in-memory broker: `cargo test -p tchu --test rpc_fingerprint`.

use std::time::Duration;

use tchu::testing::TestApp;
use tchu::{App, Config, Meta};

/// The reply: the fingerprint the responder received, if any.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// The `tchu-schema` header of the request.
    pub fingerprint: Option<String>,
}

/// A request whose schema has a fingerprint.
#[tchu::event(topic = "rpcfp.quote", response = Seen)]
#[derive(Debug)]
pub struct Quote {
    /// The item.
    pub item: u64,
}

#[tchu::subscribe(Quote)]
async fn quote(_q: Quote, meta: Meta) -> Seen {
    Seen {
        fingerprint: meta
            .headers
            .get(tchu::fingerprint::SCHEMA_HEADER)
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    }
}

#[tokio::test]
async fn typed_calls_carry_the_request_fingerprint_untyped_ones_none() {
    let app = App::new(Config::memory()).service("rpcfp");
    let t = TestApp::start(app).await.expect("start");
    let wait = Some(Duration::from_secs(5));
    let expected = tchu::fingerprint::of::<Quote>().map(str::to_owned);
    assert!(expected.is_some(), "Quote has a schema, so a fingerprint");
    let typed = Quote { item: 1 }
        .call_with(t.client(), wait)
        .await
        .expect("typed call");
    assert_eq!(typed.fingerprint, expected);
    let untyped = t
        .client()
        .call("rpcfp.quote", &serde_json::json!({ "item": 2 }), wait)
        .await
        .expect("untyped call");
    assert_eq!(untyped["fingerprint"], serde_json::Value::Null);
    t.shutdown().await;
}
