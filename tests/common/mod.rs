//! Helpers shared by the integration tests: unique names per test, clients on the real broker,
//! bounded waits, clean-up.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use tchu::{BrokerUrl, Client, Config};
use tokio::sync::mpsc;

/// A bound for every wait on the broker.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn broker_url() -> String {
    std::env::var("TCHU_TEST_BROKER_URL")
        .unwrap_or_else(|_| tchu::config::DEFAULT_BROKER_URL.to_owned())
}

/// Unique names for one test: an exchange and a prefix for service names.
#[derive(Debug, Clone)]
pub struct Names {
    pub exchange: String,
    pub prefix: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Names {
            exchange: format!("tchu_test.{test}.{id}"),
            prefix: format!("t.{test}.{id}"),
        }
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub fn config(&self) -> Config {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut c = Config::new(BrokerUrl::parse(&broker_url()).expect("broker url"));
        c.exchange = self.exchange.clone();
        c.publish_timeout = WAIT;
        if std::env::var("TCHU_TEST_FORMAT").as_deref() == Ok("native") {
            c.format = tchu::WireFormat::Native;
        }
        c
    }

    pub async fn client(&self) -> Client {
        tokio::time::timeout(WAIT, Client::connect(self.config()))
            .await
            .expect("connect timed out")
            .expect("connect")
    }

    /// Deletes the exchange and every queue of the given services (with their DLQ, binding
    /// record and retry queues given by `extra`).
    pub async fn cleanup(&self, client: &Client, services: &[&str], extra: &[&str]) {
        for s in services {
            let q = self.service(s);
            for name in [q.clone(), format!("{q}.dlq"), format!("{q}.tchu.bindings")] {
                let _ = client.delete_queue(&name).await;
            }
        }
        for e in extra {
            let _ = client.delete_queue(e).await;
        }
        let _ = client.delete_exchange(&self.exchange).await;
    }
}

/// Receives exactly `n` items within [`WAIT`], panicking with what arrived otherwise.
pub async fn recv_n<T: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) => out.push(v),
            Ok(None) => panic!("channel closed after {} of {n}: {out:?}", out.len()),
            Err(_) => panic!("timed out after {} of {n}", out.len()),
        }
    }
    out
}

/// Runs `rabbitmqctl` and returns its stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The routing keys binding `queue` to `exchange`, from `rabbitmqctl list_bindings`.
pub fn bindings(exchange: &str, queue: &str) -> Vec<String> {
    let out = rabbitmqctl(&[
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 3 && cols[0] == exchange && cols[1] == queue).then(|| cols[2].to_owned())
        })
        .collect();
    v.sort();
    v
}
