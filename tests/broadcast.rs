//! Foundation tests on the real broker: broadcast, competing consumers, topology, shutdown,
//! and the matcher against RabbitMQ's own routing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Names, WAIT, recv_n};
use tchu::{App, Delivery, Error};
use tokio::sync::mpsc;

type Seen = mpsc::UnboundedSender<(String, String)>;

/// A service subscribed to `patterns` (plus `barrier`), reporting (service, topic) for each event.
fn service(names: &Names, name: &str, patterns: &[&str], tx: &Seen) -> App {
    let mut app = App::new(names.config())
        .service(names.service(name))
        .only_module("none")
        .concurrency(1);
    for p in patterns.iter().chain(&["barrier"]) {
        let tx = tx.clone();
        let svc = name.to_owned();
        app = app.subscribe(p, &format!("{name}:{p}"), move |d: Arc<Delivery>| {
            let _ = tx.send((svc.clone(), d.meta.topic.clone()));
            async { Ok::<(), std::convert::Infallible>(()) }
        });
    }
    app
}

#[tokio::test]
async fn broadcast_reaches_every_matching_service_and_no_other() {
    let names = Names::new("broadcast");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let specs: &[(&str, &[&str])] = &[
        ("users", &["user.deleted"]),
        ("notifications", &["user.created"]),
        ("analytics", &["#"]),
        ("orders", &["order.*"]),
    ];
    let mut running = Vec::new();
    for (name, patterns) in specs {
        running.push(
            service(&names, name, patterns, &tx)
                .start()
                .await
                .expect("start"),
        );
    }
    let client = running[0].client().clone();
    for topic in [
        "user.created",
        "user.deleted",
        "order.created",
        "order.item.added",
    ] {
        client
            .publish(topic, &serde_json::json!({"t": topic}))
            .await
            .expect("publish");
    }
    client
        .publish("barrier", &serde_json::json!({}))
        .await
        .expect("publish");

    // Each service handles its queue in order (concurrency 1), so once all four saw the
    // barrier, everything published before it has been handled.
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut barriers = 0;
    while barriers < specs.len() {
        let (svc, topic) = recv_n(&mut rx, 1).await.remove(0);
        if topic == "barrier" {
            barriers += 1;
        } else {
            got.entry(svc).or_default().push(topic);
        }
    }
    for v in got.values_mut() {
        v.sort();
    }
    let want: BTreeMap<String, Vec<String>> = [
        (
            "analytics",
            vec![
                "order.created",
                "order.item.added",
                "user.created",
                "user.deleted",
            ],
        ),
        ("notifications", vec!["user.created"]),
        ("orders", vec!["order.created"]),
        ("users", vec!["user.deleted"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(got, want);
    for r in running {
        r.shutdown().await;
    }
    names
        .cleanup(
            &client,
            &["users", "notifications", "analytics", "orders"],
            &[],
        )
        .await;
}

#[tokio::test]
async fn instances_of_one_service_share_its_queue() {
    let names = Names::new("competing");
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64)>();
    let mut running = Vec::new();
    for instance in 0..2 {
        let tx = tx.clone();
        let app = App::new(names.config())
            .service(names.service("workers"))
            .only_module("none")
            .prefetch(5)
            .subscribe("job.*", "worker", move |d: Arc<Delivery>| {
                let n = d.event["n"].as_u64().unwrap_or(u64::MAX);
                let _ = tx.send((instance, n));
                async { Ok::<(), std::convert::Infallible>(()) }
            });
        running.push(app.start().await.expect("start"));
    }
    let client = running[0].client().clone();
    const N: u64 = 300;
    for n in 0..N {
        client
            .publish("job.run", &serde_json::json!({ "n": n }))
            .await
            .expect("publish");
    }
    let got = recv_n(&mut rx, N as usize).await;
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_instance = [0usize; 2];
    for (i, n) in &got {
        *count.entry(*n).or_default() += 1;
        per_instance[*i] += 1;
    }
    assert_eq!(count.len(), N as usize, "every event handled");
    assert!(
        count.values().all(|&c| c == 1),
        "each handled once by the service"
    );
    eprintln!("split between instances: {per_instance:?}");
    for r in running {
        r.shutdown().await;
    }
    // Nothing left over, nothing duplicated after the fact.
    assert_eq!(
        client
            .queue_len(&names.service("workers"))
            .await
            .expect("len"),
        0
    );
    assert!(rx.try_recv().is_err());
    names.cleanup(&client, &["workers"], &[]).await;
}

fn noop_app(names: &Names, service: &str, patterns: &[&str]) -> App {
    let mut app = App::new(names.config())
        .service(names.service(service))
        .only_module("none");
    for (i, p) in patterns.iter().enumerate() {
        app = app.subscribe(p, &format!("h{i}"), |_d: Arc<Delivery>| async {
            Ok::<(), std::convert::Infallible>(())
        });
    }
    app
}

#[tokio::test]
async fn topology_equals_subscriptions_and_stale_bindings_go() {
    let names = Names::new("topology");
    let queue = names.service("svc");
    let r = noop_app(&names, "svc", &["a.*", "b.#", "a.*"])
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    assert_eq!(
        common::bindings(&names.exchange, &queue),
        vec!["a.*", "b.#"],
        "one binding per distinct pattern"
    );
    r.shutdown().await;

    // Idempotent.
    let r = noop_app(&names, "svc", &["a.*", "b.#"])
        .start()
        .await
        .expect("restart");
    assert_eq!(
        common::bindings(&names.exchange, &queue),
        vec!["a.*", "b.#"]
    );
    r.shutdown().await;

    // A renamed handler: `b.#` is gone, `c.x` is new; the stale binding is removed.
    let r = noop_app(&names, "svc", &["a.*", "c.x"])
        .start()
        .await
        .expect("restart");
    assert_eq!(
        common::bindings(&names.exchange, &queue),
        vec!["a.*", "c.x"]
    );
    r.shutdown().await;
    names.cleanup(&client, &["svc"], &[]).await;
}

#[tokio::test]
async fn no_subscriptions_is_refused_unless_publish_only() {
    let names = Names::new("empty");
    let err = App::new(names.config())
        .service(names.service("x"))
        .only_module("nothing::here")
        .start()
        .await
        .expect_err("must refuse");
    assert!(matches!(err, Error::NoSubscriptions), "{err}");
    assert!(err.to_string().contains("use that_crate as _"));
    let r = App::new(names.config())
        .service(names.service("x"))
        .only_module("nothing::here")
        .publish_only()
        .start()
        .await
        .expect("publish-only starts");
    let client = r.client().clone();
    r.shutdown().await;
    names.cleanup(&client, &[], &[]).await;
}

#[tokio::test]
async fn graceful_shutdown_loses_nothing() {
    let names = Names::new("shutdown");
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let make = |tx: mpsc::UnboundedSender<u64>| {
        App::new(names.config())
            .service(names.service("slow"))
            .only_module("none")
            .prefetch(50)
            .concurrency(4)
            .shutdown_grace(Duration::from_secs(10))
            .subscribe("work.item", "slow", move |d: Arc<Delivery>| {
                let tx = tx.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await; // simulated work
                    let _ = tx.send(d.event["n"].as_u64().unwrap_or(u64::MAX));
                    Ok::<(), std::convert::Infallible>(())
                }
            })
    };
    let first = make(tx.clone()).start().await.expect("start");
    let client = first.client().clone();
    const N: u64 = 200;
    for n in 0..N {
        client
            .publish("work.item", &serde_json::json!({ "n": n }))
            .await
            .expect("publish");
    }
    let early = recv_n(&mut rx, 20).await;
    first.shutdown().await;
    let second = make(tx.clone()).start().await.expect("restart");
    let mut seen: std::collections::BTreeSet<u64> = early.into_iter().collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < N as usize {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => {
                seen.insert(n);
            }
            _ => panic!("only {} of {N} handled after restart", seen.len()),
        }
    }
    second.shutdown().await;
    names.cleanup(&client, &["slow"], &[]).await;
}
