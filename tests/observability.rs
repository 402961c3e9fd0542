//! Observability on the in-memory broker (no RabbitMQ): W3C trace context through a handler's
//! nested publish, the health flags, and (with the `prometheus` feature) the HTTP endpoint.
//!
//! `cargo test -p tchu --test observability` and
//! `cargo test -p tchu --features prometheus --test observability`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tchu::trace::TraceContext;
use tchu::{App, Config, Delivery, MemoryBroker, Meta};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// An app on `broker` with only the run-time handlers given (this binary has no link-time
/// ones, but stay explicit).
fn app(broker: &MemoryBroker, service: &str) -> App {
    App::new(Config::memory())
        .broker(broker)
        .service(service)
        .only_module("none")
}

#[tokio::test]
async fn a_handlers_nested_publish_continues_the_trace() {
    let broker = MemoryBroker::new();
    // The relay: gets `order.placed`, publishes `order.relayed` with the delivery's client
    // (the `Client` extractor is the same client), and `order.audited` with a client of its
    // own, to show that any client picks the context up.
    let other = tchu::Client::connect_memory(Config::memory(), &broker)
        .await
        .unwrap();
    let relay =
        app(&broker, "obs.relay").subscribe("order.placed", "relay", move |d: Arc<Delivery>| {
            let client = d.client().cloned();
            let other = other.clone();
            async move {
                let client = client.ok_or_else(|| tchu::HandlerError::permanent("no client"))?;
                client
                    .publish("order.relayed", &json!({ "via": "delivery client" }))
                    .await
                    .map_err(tchu::HandlerError::transient)?;
                other
                    .publish("order.audited", &json!({ "via": "other client" }))
                    .await
                    .map_err(tchu::HandlerError::transient)?;
                Ok::<(), tchu::HandlerError>(())
            }
        });
    let (tx, mut rx) = mpsc::unbounded_channel::<Meta>();
    let sink = app(&broker, "obs.sink").subscribe("order.#", "sink", move |d: Arc<Delivery>| {
        let _ = tx.send(d.meta.clone());
        async { Ok::<(), std::convert::Infallible>(()) }
    });
    let relay = relay.start().await.unwrap();
    let sink = sink.start().await.unwrap();

    let root: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let publisher = relay.client().clone();
    tchu::trace::scope(root.clone(), async move {
        publisher.publish("order.placed", &json!({ "id": 1 })).await
    })
    .await
    .unwrap();

    let mut by_topic = std::collections::BTreeMap::new();
    while by_topic.len() < 3 {
        let meta = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the sink saw fewer than 3 messages")
            .expect("sink channel closed");
        by_topic.insert(meta.topic.clone(), meta);
    }
    let placed = by_topic["order.placed"]
        .trace_context()
        .expect("traceparent on the publish");
    assert_eq!(placed.trace_id(), root.trace_id());
    assert_ne!(placed.span_id(), root.span_id(), "a publish is a new span");
    for topic in ["order.relayed", "order.audited"] {
        let ctx = by_topic[topic]
            .trace_context()
            .unwrap_or_else(|| panic!("no traceparent on `{topic}`"));
        assert_eq!(ctx.trace_id(), root.trace_id(), "`{topic}` left the trace");
        assert_ne!(
            ctx.span_id(),
            placed.span_id(),
            "`{topic}` reuses its parent's span id"
        );
        assert_eq!(ctx.flags(), 1);
    }
    assert!(
        by_topic["order.relayed"]
            .headers
            .contains_key(tchu::trace::TRACEPARENT_HEADER),
        "the header is in `Meta::headers` too"
    );
    relay.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test]
async fn a_delivery_without_traceparent_starts_a_trace_and_plain_publishes_carry_none() {
    let broker = MemoryBroker::new();
    let relay = app(&broker, "obs.root").subscribe("job.started", "relay", |d: Arc<Delivery>| {
        let client = d.client().cloned();
        async move {
            if let Some(c) = client {
                c.publish("job.relayed", &json!({})).await?;
            }
            Ok::<(), tchu::PublishError>(())
        }
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<Meta>();
    let sink = app(&broker, "obs.root.sink").subscribe("job.#", "sink", move |d: Arc<Delivery>| {
        let _ = tx.send(d.meta.clone());
        async { Ok::<(), std::convert::Infallible>(()) }
    });
    let relay = relay.start().await.unwrap();
    let sink = sink.start().await.unwrap();
    relay
        .client()
        .publish("job.started", &json!({}))
        .await
        .unwrap();
    let mut started = None;
    let mut relayed = None;
    while started.is_none() || relayed.is_none() {
        let meta = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        match meta.topic.as_str() {
            "job.started" => started = Some(meta),
            _ => relayed = Some(meta),
        }
    }
    assert!(
        started.unwrap().trace_context().is_none(),
        "a publish outside any trace adds no header"
    );
    assert!(
        relayed.unwrap().trace_context().is_some(),
        "the handler ran in a new trace"
    );
    relay.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test]
async fn health_is_consuming_after_start_and_not_after_shutdown() {
    let broker = MemoryBroker::new();
    let running = app(&broker, "obs.health")
        .subscribe("health.ping", "ping", |_: Arc<Delivery>| async {
            Ok::<(), std::convert::Infallible>(())
        })
        .start()
        .await
        .unwrap();
    let h = running.health();
    assert!(h.connected && h.consuming && h.is_healthy(), "{h:?}");
    let check = running.health_check();
    running.shutdown().await;
    let h = check.health();
    assert!(!h.consuming, "{h:?}");
    assert!(!h.is_healthy());
}

#[tokio::test]
async fn a_publish_only_service_is_healthy_without_consuming() {
    let broker = MemoryBroker::new();
    let running = app(&broker, "obs.publisher")
        .publish_only()
        .start()
        .await
        .unwrap();
    let h = running.health();
    assert!(h.connected && !h.consuming && h.is_healthy(), "{h:?}");
    assert_eq!(running.metrics_addr(), None);
    running.shutdown().await;
}

#[cfg(feature = "prometheus")]
mod prometheus {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// One HTTP/1.1 GET on a fresh connection: (status code, body).
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
                .await
                .expect("write the request");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read the response");
            out
        };
        let out = tokio::time::timeout(WAIT, exchange)
            .await
            .expect("no answer");
        let (head, body) = out.split_once("\r\n\r\n").expect("no head");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_owned())
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_health() {
        let broker = MemoryBroker::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let running = app(&broker, "obs.prom")
            .metrics_addr("127.0.0.1:0".parse().unwrap())
            .subscribe("metric.seen", "seen", move |_: Arc<Delivery>| {
                let _ = tx.send(());
                async { Ok::<(), std::convert::Infallible>(()) }
            })
            .start()
            .await
            .unwrap();
        let addr = running.metrics_addr().expect("metrics served");
        running
            .client()
            .publish("metric.seen", &json!({}))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(r#"tchu_published_total{topic="metric.seen"} "#),
            "{body}"
        );
        assert!(body.contains("tchu_received_total"), "{body}");
        assert!(body.contains("tchu_connected 1"), "{body}");
        assert!(body.contains("tchu_confirmed_total"), "{body}");
        // The handler's handles (registered once, after the recorder was installed).
        assert!(
            body.lines()
                .any(|l| l.starts_with("tchu_handled_total{") && l.contains(r#"outcome="ok""#)),
            "{body}"
        );
        assert!(
            body.contains("tchu_handler_duration_seconds_count{"),
            "{body}"
        );

        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        running.shutdown().await;
        let refused = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
            .await
            .unwrap();
        assert!(refused.is_err(), "the endpoint stops with the service");
    }
}
