//! The `prometheus` feature: installs a Prometheus recorder for the [`metrics`] facade (once
//! per process) and serves it with a tiny HTTP/1.1 responder on a [`TcpListener`]: `GET
//! /metrics` (Prometheus text format), `GET /healthz` and `GET /readyz` (200 when healthy,
//! 503 otherwise). One request per connection, `Connection: close`; no HTTP server crate.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::health::HealthCheck;

/// Histogram buckets of the `*_seconds` metrics: 1 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Connections answered at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// The longest one connection may take, from accept to the last byte written.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. `None` when another recorder
/// was installed first (the application's own choice wins; `/metrics` then answers 503).
fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(h) => {
                    crate::telemetry::describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the Prometheus recorder (another metrics recorder is installed?); /metrics answers 503");
                    None
                }
            }
        })
        .as_ref()
}

/// Binds `addr` and serves in a background task; returns the bound address and the task.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: HealthCheck,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let prom = prometheus();
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(accept_loop(listener, health, prom))))
}

async fn accept_loop(
    listener: TcpListener,
    health: HealthCheck,
    prom: Option<&'static PrometheusHandle>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let health = health.clone();
        tokio::spawn(async move {
            if let Ok(Err(e)) =
                tokio::time::timeout(IO_TIMEOUT, answer(stream, &health, prom)).await
            {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and writes the response.
async fn answer(
    mut stream: TcpStream,
    health: &HealthCheck,
    prom: Option<&'static PrometheusHandle>,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0_u8; 1024];
    while !head_complete(&head) && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let method = words.next().unwrap_or_default();
    let path = words
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let (status, content_type, body) = route(method, path, health, prom);
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The response to one request: status line, content type and body.
fn route(
    method: &str,
    path: &str,
    health: &HealthCheck,
    prom: Option<&'static PrometheusHandle>,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "only GET and HEAD\n".to_owned(),
        );
    }
    match path {
        "/metrics" => match prom {
            Some(h) => {
                crate::telemetry::connected(health.health().connected);
                h.run_upkeep();
                ("200 OK", PROMETHEUS_TEXT, h.render())
            }
            None => (
                "503 Service Unavailable",
                TEXT,
                "another metrics recorder is installed\n".to_owned(),
            ),
        },
        "/healthz" | "/readyz" => {
            let h = health.health();
            let body = format!("connected {}\nconsuming {}\n", h.connected, h.consuming);
            if h.is_healthy() {
                ("200 OK", TEXT, body)
            } else {
                ("503 Service Unavailable", TEXT, body)
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}
