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
                let n = d.event()["n"].as_u64().unwrap_or(u64::MAX);
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
                    let _ = tx.send(d.event()["n"].as_u64().unwrap_or(u64::MAX));
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

/// A typed event for the refusal test.
#[tchu::event(topic = "signup.done")]
#[derive(Debug)]
pub struct SignupDone {
    #[validate(email)]
    email: String,
    #[validate(range(min = 13))]
    age: u32,
}

#[tchu::subscribe(SignupDone)]
async fn on_signup(e: SignupDone, done: tchu::State<mpsc::UnboundedSender<String>>) {
    let _ = done.send(e.email);
}

#[tokio::test]
async fn an_invalid_event_is_refused_and_nothing_is_sent() {
    let names = Names::new("invalid");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let r = App::new(names.config())
        .service(names.service("signup"))
        .only_module(module_path!())
        .state(tx)
        .start()
        .await
        .expect("start");
    let client = r.client().clone();
    let err = SignupDone {
        email: "nope".into(),
        age: 3,
    }
    .publish_with(&client)
    .await
    .expect_err("invalid");
    match &err {
        tchu::PublishError::Invalid { topic, errors } => {
            assert_eq!(topic, "signup.done");
            let field_errors = errors.field_errors();
            let fields: Vec<&str> = field_errors.keys().map(|k| k.as_ref()).collect();
            assert!(
                fields.contains(&"email") && fields.contains(&"age"),
                "{fields:?}"
            );
        }
        other => panic!("expected Invalid, got {other}"),
    }
    // A valid one goes through; then the queue is empty and the DLQ too: the invalid one
    // never left the process.
    SignupDone {
        email: "a@b.co".into(),
        age: 30,
    }
    .publish_with(&client)
    .await
    .expect("valid");
    let q = names.service("signup");
    assert_eq!(recv_n(&mut rx, 1).await, vec!["a@b.co".to_owned()]);
    assert_eq!(
        r.stats().received,
        1,
        "only the valid event reached the queue"
    );
    assert_eq!(client.queue_len(&format!("{q}.dlq")).await.expect("dlq"), 0);
    r.shutdown().await;
    names.cleanup(&client, &["signup"], &[]).await;
}

/// The trie against what RabbitMQ itself routes, for a few hundred random patterns and keys.
#[tokio::test]
async fn matcher_agrees_with_rabbitmq_routing() {
    use rand::{Rng, SeedableRng};
    let names = Names::new("matcher");
    let client = names.client().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7c40);
    let words = ["a", "b", "c"];
    let gen_words = |wild: bool, rng: &mut rand::rngs::StdRng| -> String {
        let n = rng.random_range(1..=4);
        (0..n)
            .map(|_| {
                let k = rng.random_range(0..if wild { 5 } else { 3 });
                match k {
                    3 => "*",
                    4 => "#",
                    k => words[k],
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut patterns: Vec<String> = (0..300).map(|_| gen_words(true, &mut rng)).collect();
    patterns.sort();
    patterns.dedup();
    let keys: Vec<String> = (0..60).map(|_| gen_words(false, &mut rng)).collect();

    let mut trie = tchu_runtime_trie::Trie::default();
    for (i, p) in patterns.iter().enumerate() {
        trie.insert(p, i);
    }
    let conn = lapin::Connection::connect(
        &common::broker_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("lapin");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    for (i, p) in patterns.iter().enumerate() {
        let q = format!("{}.q{i}", names.prefix);
        ch.queue_declare(
            q.as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("declare");
        ch.queue_bind(
            q.as_str().into(),
            names.exchange.as_str().into(),
            p.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("bind");
    }
    for k in &keys {
        ch.basic_publish(
            names.exchange.as_str().into(),
            k.as_str().into(),
            Default::default(),
            b"{}",
            Default::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let mut disagreements = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let q = format!("{}.q{i}", names.prefix);
        let routed = ch
            .queue_declare(
                q.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("passive")
            .message_count() as usize;
        let ours = keys.iter().filter(|k| trie.matches(k).contains(&i)).count();
        if routed != ours {
            disagreements.push(format!("{p}: rabbitmq {routed}, tchu {ours}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:?}");
    eprintln!(
        "{} patterns x {} keys agree with RabbitMQ",
        patterns.len(),
        keys.len()
    );
    let _ = conn.close(200, "bye".into()).await;
    let _ = client.delete_exchange(&names.exchange).await;
}

/// The runtime's trie, through the facade's hidden module.
mod tchu_runtime_trie {
    #[derive(Default)]
    pub(super) struct Trie(tchu::__private::TopicTrie<usize>);
    impl Trie {
        pub(super) fn insert(&mut self, p: &str, i: usize) {
            self.0.insert(&tchu::Pattern::new(p).expect("pattern"), i);
        }
        pub(super) fn matches(&self, key: &str) -> Vec<usize> {
            self.0.matches(key).into_iter().copied().collect()
        }
    }
}
