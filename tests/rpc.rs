//! RPC on the real broker: one test per failure kind, concurrency, the pending-call table.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Names;
use tchu::{App, CallError, Delivery, HandlerError, RpcError};

fn responder(names: &Names) -> App {
    App::new(names.config())
        .service(names.service("responder"))
        .only_module("none")
        .subscribe("rpc.echo", "echo", |d: Arc<Delivery>| async move {
            Ok::<_, RpcError>(serde_json::json!({ "echo": d.event().clone() }))
        })
        .subscribe("rpc.business", "business", |_d: Arc<Delivery>| async {
            Err::<(), _>(
                RpcError::new("NOT_FOUND", "no such user")
                    .with_details(serde_json::json!({"id": 7})),
            )
        })
        .subscribe("rpc.fails", "fails", |_d: Arc<Delivery>| async {
            Err::<(), _>(HandlerError::transient("database unreachable"))
        })
        .subscribe("rpc.panics", "panics", |_d: Arc<Delivery>| async {
            if true {
                panic!("handler exploded");
            }
            Ok::<(), RpcError>(())
        })
        .subscribe("rpc.slow", "slow", |_d: Arc<Delivery>| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<(), RpcError>(())
        })
}

#[tokio::test]
async fn each_failure_is_its_own_variant() {
    let names = Names::new("rpcfail");
    let r = responder(&names).start().await.expect("start");
    let c = r.client().clone();
    let t = Some(Duration::from_secs(10));

    let started = Instant::now();
    let v = c
        .call("rpc.echo", &serde_json::json!({"x": 1}), t)
        .await
        .expect("echo");
    assert_eq!(v, serde_json::json!({"echo": {"x": 1}}));
    eprintln!("success: {:?}", started.elapsed());

    let started = Instant::now();
    match c.call("rpc.business", &serde_json::json!({}), t).await {
        Err(CallError::Remote {
            code,
            message,
            details,
        }) => {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("NOT_FOUND", "no such user")
            );
            assert_eq!(details, serde_json::json!({"id": 7}));
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    eprintln!("remote: {:?}", started.elapsed());

    let started = Instant::now();
    match c.call("rpc.fails", &serde_json::json!({}), t).await {
        Err(CallError::HandlerFailed { message }) => {
            assert!(message.contains("database unreachable"), "{message}")
        }
        other => panic!("expected HandlerFailed, got {other:?}"),
    }
    eprintln!("handler failed: {:?}", started.elapsed());

    let started = Instant::now();
    match c.call("rpc.panics", &serde_json::json!({}), t).await {
        Err(CallError::HandlerFailed { message }) => {
            assert!(message.contains("handler exploded"), "{message}")
        }
        other => panic!("expected HandlerFailed on panic, got {other:?}"),
    }
    eprintln!("handler panicked: {:?}", started.elapsed());

    let started = Instant::now();
    match c
        .call("rpc.nobody.listens", &serde_json::json!({}), t)
        .await
    {
        Err(CallError::NoRoute { topic }) => assert_eq!(topic, "rpc.nobody.listens"),
        other => panic!("expected NoRoute, got {other:?}"),
    }
    let no_route = started.elapsed();
    eprintln!("no route: {no_route:?}");
    assert!(
        no_route < Duration::from_secs(5),
        "no route is reported at once, not at the deadline"
    );

    let started = Instant::now();
    match c
        .call(
            "rpc.slow",
            &serde_json::json!({}),
            Some(Duration::from_millis(300)),
        )
        .await
    {
        Err(CallError::Timeout { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(300)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    eprintln!("timeout (300 ms): {:?}", started.elapsed());

    // The service goes on after the panic.
    assert!(
        c.call("rpc.echo", &serde_json::json!({"n": 2}), t)
            .await
            .is_ok()
    );
    assert!(matches!(
        c.call("rpc.echo", &serde_json::json!([1]), t).await,
        Err(CallError::Publish(tchu::PublishError::NotAnObject { .. }))
    ));
    assert_eq!(c.pending_calls(), 0);
    r.shutdown().await;
    names.cleanup(&c, &["responder"], &[]).await;
}

#[tokio::test]
async fn concurrent_calls_never_cross() {
    let names = Names::new("rpcconc");
    let r = responder(&names).start().await.expect("start");
    let c = r.client().clone();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16u64 {
        let c = c.clone();
        tasks.spawn(async move {
            for i in 0..63u64 {
                let n = task * 1000 + i;
                let v = c
                    .call(
                        "rpc.echo",
                        &serde_json::json!({ "n": n }),
                        Some(Duration::from_secs(20)),
                    )
                    .await
                    .expect("call");
                assert_eq!(v["echo"]["n"], n, "reply belongs to this call");
            }
            63u64
        });
    }
    let mut total = 0;
    while let Some(n) = tokio::time::timeout(common::WAIT * 3, tasks.join_next())
        .await
        .expect("bounded")
    {
        total += n.expect("task");
    }
    assert_eq!(total, 1008);
    assert_eq!(c.pending_calls(), 0);
    r.shutdown().await;
    names.cleanup(&c, &["responder"], &[]).await;
}

/// Requests share the publish channel, pipelined with each other and with events, and lapin
/// hands a channel's returns to whichever confirm completes next: a returned request is found
/// by its correlation id wherever it comes back. Each call to a topic nobody consumes fails
/// with `NoRoute` (not a timeout), each other call gets its own reply, none is lost.
#[tokio::test]
async fn returned_requests_fail_fast_whichever_confirm_carries_them() {
    let names = Names::new("rpcret");
    let r = responder(&names).start().await.expect("start");
    let c = r.client().clone();
    // A call that is misreported as a timeout would take this long: the assertions tell.
    let t = Some(Duration::from_secs(15));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16u64 {
        let c = c.clone();
        tasks.spawn(async move {
            let (mut replied, mut no_route) = (0u64, 0u64);
            for i in 0..40u64 {
                let n = task * 1000 + i;
                if (task + i) % 2 == 0 {
                    let v = c
                        .call("rpc.echo", &serde_json::json!({ "n": n }), t)
                        .await
                        .unwrap_or_else(|e| panic!("call {n} to rpc.echo: {e:?}"));
                    assert_eq!(v["echo"]["n"], n, "reply belongs to this call");
                    replied += 1;
                } else {
                    match c
                        .call("rpc.nobody.listens", &serde_json::json!({ "n": n }), t)
                        .await
                    {
                        Err(CallError::NoRoute { topic }) => {
                            assert_eq!(topic, "rpc.nobody.listens")
                        }
                        other => panic!("call {n}: expected NoRoute, got {other:?}"),
                    }
                    no_route += 1;
                }
            }
            (replied, no_route)
        });
    }
    // Events on the same channel: their confirms carry returns too.
    for _ in 0..2 {
        let c = c.clone();
        tasks.spawn(async move {
            for i in 0..200u64 {
                c.publish("rpc.noise", &serde_json::json!({ "i": i }))
                    .await
                    .expect("publish");
            }
            (0, 0)
        });
    }
    let started = Instant::now();
    let (mut replied, mut no_route) = (0, 0);
    while let Some(res) = tokio::time::timeout(common::WAIT * 3, tasks.join_next())
        .await
        .expect("bounded")
    {
        let (a, b) = res.expect("task");
        replied += a;
        no_route += b;
    }
    eprintln!("640 calls and 400 events in {:?}", started.elapsed());
    assert_eq!((replied, no_route), (320, 320));
    assert_eq!(c.pending_calls(), 0);
    r.shutdown().await;
    names.cleanup(&c, &["responder"], &[]).await;
}

#[tokio::test]
async fn late_replies_are_dropped_and_the_pending_table_does_not_grow() {
    let names = Names::new("rpclate");
    let r = responder(&names).start().await.expect("start");
    let c = r.client().clone();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let c = c.clone();
        tasks.spawn(async move {
            c.call(
                "rpc.slow",
                &serde_json::json!({}),
                Some(Duration::from_millis(100)),
            )
            .await
        });
    }
    while let Some(res) = tasks.join_next().await {
        assert!(matches!(res.expect("task"), Err(CallError::Timeout { .. })));
    }
    assert_eq!(c.pending_calls(), 0, "timed-out calls leave the table");
    // The late replies arrive and are dropped; a fresh call still works and nothing leaks.
    let v = c
        .call(
            "rpc.echo",
            &serde_json::json!({"n": 1}),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("call");
    assert_eq!(v["echo"]["n"], 1);
    assert_eq!(c.pending_calls(), 0);
    r.shutdown().await;
    names.cleanup(&c, &["responder"], &[]).await;
}

#[tokio::test]
async fn rpc_and_broadcast_handlers_in_one_service_do_not_interfere() {
    let names = Names::new("rpcmix");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = responder(&names)
        .subscribe("news.*", "news", move |d: Arc<Delivery>| {
            let _ = tx.send(d.meta.topic.clone());
            async { Ok::<(), std::convert::Infallible>(()) }
        })
        .start()
        .await
        .expect("start");
    let c = r.client().clone();
    for i in 0..20 {
        c.publish("news.item", &serde_json::json!({ "i": i }))
            .await
            .expect("publish");
        let v = c
            .call(
                "rpc.echo",
                &serde_json::json!({"i": i}),
                Some(Duration::from_secs(10)),
            )
            .await
            .expect("call");
        assert_eq!(v["echo"]["i"], i);
    }
    let got = common::recv_n(&mut rx, 20).await;
    assert!(got.iter().all(|t| t == "news.item"));
    let s = r.shutdown().await;
    assert_eq!(s.replied, 20, "only requests are answered");
    assert_eq!(s.dead_lettered, 0);
    names.cleanup(&c, &["responder"], &[]).await;
}

/// A typed request.
#[tchu::event(topic = "rpc.typed.validate", response = ValidateReply)]
#[derive(Debug)]
pub struct ValidateUser {
    #[validate(email)]
    email: String,
}

/// Its reply.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ValidateReply {
    ok: bool,
}

/// A request whose declared reply does not match what the responder sends.
#[tchu::event(topic = "rpc.typed.validate", response = Mismatched)]
#[derive(Debug)]
pub struct ValidateMismatched {
    email: String,
}

/// Not what the responder sends.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Mismatched {
    count: u64,
}

#[tchu::subscribe(ValidateUser)]
async fn validate(req: ValidateUser) -> Result<ValidateReply, RpcError> {
    Ok(ValidateReply {
        ok: !req.email.starts_with("taken"),
    })
}

#[tokio::test]
async fn typed_calls_validate_both_ends_and_check_the_reply_type() {
    let names = Names::new("rpctyped");
    let r = App::new(names.config())
        .service(names.service("typed"))
        .only_module(module_path!())
        .start()
        .await
        .expect("start");
    let c = r.client().clone();
    let t = Duration::from_secs(10);
    let reply = ValidateUser {
        email: "a@b.co".into(),
    }
    .call_with(&c, Some(t))
    .await
    .expect("call");
    assert!(reply.ok);

    let started = Instant::now();
    match (ValidateUser {
        email: "nope".into(),
    })
    .call_with(&c, Some(t))
    .await
    {
        Err(CallError::Invalid {
            errors: Some(e), ..
        }) => assert!(e.field_errors().contains_key("email")),
        other => panic!("expected local Invalid, got {other:?}"),
    }
    eprintln!("invalid (local): {:?}", started.elapsed());
    assert_eq!(r.stats().received, 1, "the invalid request was never sent");

    let started = Instant::now();
    match c
        .call(
            "rpc.typed.validate",
            &serde_json::json!({"email": "nope"}),
            Some(t),
        )
        .await
    {
        Err(CallError::Invalid {
            errors: None,
            message,
        }) => assert!(message.contains("email"), "{message}"),
        other => panic!("expected remote Invalid, got {other:?}"),
    }
    eprintln!("invalid (remote): {:?}", started.elapsed());

    let started = Instant::now();
    match (ValidateMismatched {
        email: "a@b.co".into(),
    })
    .call_with(&c, Some(t))
    .await
    {
        Err(CallError::BadReply { topic, .. }) => assert_eq!(topic, "rpc.typed.validate"),
        other => panic!("expected BadReply, got {other:?}"),
    }
    eprintln!("bad reply: {:?}", started.elapsed());
    r.shutdown().await;
    names.cleanup(&c, &["typed"], &[]).await;
}

/// #12 §5: a responder in one service and a failing `#` observer (an audit log whose store is
/// down) in another. The observer never answers, so every caller gets the real reply; its
/// failures are retried, then dead-lettered with their reason, so no audit record is lost.
#[tokio::test]
async fn a_failing_observer_neither_answers_nor_loses_its_records() {
    const CALLS: usize = 100;
    let names = Names::new("rpcobserver");
    let responder = App::new(names.config())
        .service(names.service("orders"))
        .only_module("none")
        .subscribe("rpc.orders.quote", "quote", |d: Arc<Delivery>| async move {
            Ok::<_, RpcError>(serde_json::json!({ "n": d.event()["n"], "price": 42 }))
        })
        .start()
        .await
        .expect("start responder");
    let (tx, mut attempts) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let audit = App::new(names.config())
        .service(names.service("audit"))
        .only_module("none")
        .retry(tchu::RetryPolicy {
            retries: 2,
            backoff: tchu::Backoff::Fixed,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(100),
            jitter: false,
        })
        .subscribe("#", "audit", move |d: Arc<Delivery>| {
            let _ = tx.send(d.meta.attempt);
            async { Err::<(), _>(HandlerError::transient("audit store down")) }
        })
        .start()
        .await
        .expect("start audit");
    let c = responder.client().clone();
    let t = Some(Duration::from_secs(10));

    let started = Instant::now();
    let calls = (0..CALLS).map(|n| {
        let c = c.clone();
        async move {
            c.call("rpc.orders.quote", &serde_json::json!({ "n": n }), t)
                .await
        }
    });
    let replies = futures_util::future::join_all(calls).await;
    let real = replies
        .iter()
        .enumerate()
        .filter(|(n, r)| matches!(r, Ok(v) if *v == serde_json::json!({ "n": n, "price": 42 })))
        .count();
    let failed: Vec<_> = replies.iter().filter(|r| r.is_err()).take(3).collect();
    eprintln!(
        "{real} of {CALLS} real replies in {:?}; failures: {failed:?}",
        started.elapsed()
    );
    assert_eq!(real, CALLS, "every caller gets the responder's answer");

    // Each request reaches the observer 3 times (1 + 2 retries), then is dead-lettered.
    let seen = common::recv_n(&mut attempts, 3 * CALLS).await;
    for a in 1..=3 {
        assert_eq!(
            seen.iter().filter(|&&x| x == a).count(),
            CALLS,
            "attempt {a}"
        );
    }
    let audit_svc = names.service("audit");
    let deadline = Instant::now() + common::WAIT;
    while audit.stats().dead_lettered < CALLS as u64 {
        assert!(
            Instant::now() < deadline,
            "dead letters: {:?}",
            audit.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = c
        .dead_letters(&audit_svc, 10_000)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), CALLS);
    for d in &dead {
        assert_eq!(d.reason, "audit store down (after 3 attempts)");
        assert_eq!(d.handler.as_deref(), Some("audit"));
        assert_eq!(d.original_routing_key, "rpc.orders.quote");
    }
    let (r, a) = (responder.stats(), audit.stats());
    eprintln!("responder {r:?}\naudit {a:?}");
    assert_eq!(a.replied, 0, "the observer's service never answers");
    assert_eq!(r.replied, CALLS as u64);
    assert_eq!(
        (a.retried, a.dead_lettered),
        (2 * CALLS as u64, CALLS as u64)
    );
    assert_eq!(c.pending_calls(), 0);

    responder.shutdown().await;
    audit.shutdown().await;
    names
        .cleanup(
            &c,
            &["orders", "audit"],
            &[&format!("{audit_svc}.retry.100ms")],
        )
        .await;
}
