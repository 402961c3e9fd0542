//! Helpers shared by the integration tests: unique names per test, clients on the real broker,
//! bounded waits, clean-up.
#![allow(
    dead_code,
    reason = "each test binary includes this module and uses a different part of it"
)]
#![expect(
    unreachable_pub,
    reason = "`pub` is how the test files reach these helpers"
)]

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

/// What [`publish_load`] achieved.
#[derive(Debug)]
pub struct LoadResult {
    /// The numbers whose publish was confirmed.
    pub confirmed: std::collections::BTreeSet<u64>,
    /// Publish attempts that failed and were tried again.
    pub publish_errors: u64,
    /// Numbers given up after the deadline.
    pub gave_up: u64,
}

/// Publishes `{"n": 0..total}` on `topic` with `tasks` publishers, each awaiting its confirm
/// and retrying on error (for at most 120 s); `at` runs once when `trigger` confirms are
/// reached (never when `trigger > total`).
pub async fn publish_load(
    client: &Client,
    topic: &'static str,
    total: u64,
    tasks: u64,
    trigger: u64,
    at: impl FnOnce() + Send + 'static,
) -> LoadResult {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let confirms = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let fire = {
        let reached = Arc::clone(&reached);
        tokio::spawn(async move {
            reached.notified().await;
            at();
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (client, confirms, errors, reached) = (
            client.clone(),
            Arc::clone(&confirms),
            Arc::clone(&errors),
            Arc::clone(&reached),
        );
        set.spawn(async move {
            let mut mine = Vec::new();
            let mut gave_up = 0u64;
            for n in (t..total).step_by(usize::try_from(tasks).unwrap_or(1)) {
                loop {
                    let payload = serde_json::json!({ "n": n });
                    match tokio::time::timeout(WAIT, client.publish(topic, &payload)).await {
                        Ok(Ok(_)) => {
                            mine.push(n);
                            if confirms.fetch_add(1, Ordering::SeqCst) + 1 == trigger {
                                reached.notify_one();
                            }
                            break;
                        }
                        Ok(Err(_)) | Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            if std::time::Instant::now() > deadline {
                                gave_up += 1;
                                break;
                            }
                            // Back off before trying again (the broker is recovering).
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            (mine, gave_up)
        });
    }
    let mut confirmed = std::collections::BTreeSet::new();
    let mut gave_up = 0;
    while let Some(r) = set.join_next().await {
        let (mine, g) = r.expect("publisher task");
        confirmed.extend(mine);
        gave_up += g;
    }
    if trigger <= total {
        tokio::time::timeout(WAIT, fire)
            .await
            .expect("the trigger never fired")
            .expect("trigger task");
    } else {
        fire.abort();
    }
    LoadResult {
        confirmed,
        publish_errors: errors.load(Ordering::SeqCst),
        gave_up,
    }
}

/// Lays out `dir` for an extra RabbitMQ node beside the machine's broker: `mnesia/`, `log/`,
/// an empty plugins file, and `rabbitmq.conf` with `config` (the machine's own config pins the
/// listener to 5672, so every extra node needs its own).
pub fn prepare_node_dir(dir: &std::path::Path, config: &str) {
    std::fs::create_dir_all(dir.join("mnesia")).expect("mkdir mnesia");
    std::fs::create_dir_all(dir.join("log")).expect("mkdir log");
    std::fs::write(dir.join("plugins"), "[].\n").expect("plugins file");
    std::fs::write(dir.join("rabbitmq.conf"), config).expect("config file");
}

/// Gives `dir` to the `rabbitmq` user: the server drops to it and exits silently otherwise.
pub fn chown_to_rabbitmq(dir: &std::path::Path) {
    let chown = std::process::Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown of {dir:?} to rabbitmq failed");
}

/// Starts `rabbitmq-server` as the `rabbitmq` user for the extra node `node` whose files
/// [`prepare_node_dir`] laid out in `dir`; its output goes to `dir/server.out`.
pub fn spawn_rabbit_node(
    node: &str,
    dir: &std::path::Path,
    amqp_port: u16,
    dist_port: u16,
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let log = std::fs::File::create(dir.join("server.out")).expect("server log");
    Command::new("su")
        .args([
            "rabbitmq",
            "-s",
            "/bin/sh",
            "-c",
            "exec /usr/lib/rabbitmq/bin/rabbitmq-server",
        ])
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
        .env("RABBITMQ_PID_FILE", dir.join("pid"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("start rabbitmq-server")
}
