//! Settings of a client or service, from the environment or set in code.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::QueueType;
use crate::broker::memory::MemoryBroker;
use crate::error::ConfigError;
use crate::retry::RetryPolicy;
use crate::wire::WireFormat;

/// The default broker URL.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default exchange, shared with Python tchu-tchu.
pub const DEFAULT_EXCHANGE: &str = "tchu_events";
/// Default prefetch (unacknowledged deliveries the broker sends ahead).
pub const DEFAULT_PREFETCH: u16 = 256;
/// Default number of deliveries handled at once.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default largest body accepted (bytes); bigger messages are dead-lettered.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Default RPC timeout, as in tchu-tchu.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the broker is. Displays and debugs without credentials.
#[derive(Clone)]
pub enum BrokerUrl {
    /// RabbitMQ (`amqp://` or `amqps://`).
    Amqp(String),
    /// The in-process broker.
    Memory(MemoryBroker),
}

impl BrokerUrl {
    /// Parses a URL: `memory://` makes a new in-process broker.
    ///
    /// # Errors
    /// An unknown scheme.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        if url.starts_with("memory://") {
            Ok(BrokerUrl::Memory(MemoryBroker::new()))
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Ok(BrokerUrl::Amqp(url.to_owned()))
        } else {
            Err(ConfigError::BrokerUrl(format!(
                "`{}`: expected amqp://, amqps:// or memory://",
                redact(url)
            )))
        }
    }
}

/// Replaces the password in a URL by `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Amqp(u) => f.write_str(&redact(u)),
            BrokerUrl::Memory(_) => f.write_str("memory://"),
        }
    }
}

/// Settings of a client and of a service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The broker.
    pub broker: BrokerUrl,
    /// The topic exchange (default `tchu_events`).
    pub exchange: String,
    /// The service name: its queue is named after it. `None` for a pure client.
    pub service: Option<String>,
    /// Prefetch window.
    pub prefetch: u16,
    /// Deliveries handled concurrently.
    pub concurrency: usize,
    /// Largest accepted body.
    pub max_body: usize,
    /// Format for outgoing events and requests (default: Celery, for mixed fleets).
    pub format: WireFormat,
    /// Default RPC timeout.
    pub call_timeout: Duration,
    /// How long a publish may wait for a confirm, including reconnection.
    pub publish_timeout: Duration,
    /// Grace period for in-flight handlers at shutdown.
    pub shutdown_grace: Duration,
    /// Queue type of the service's queues.
    pub queue_type: QueueType,
    /// Service-wide retry policy for handlers without their own.
    pub retry: RetryPolicy,
    /// Where [`App::start`](crate::App::start) serves `/metrics`, `/healthz` and `/readyz`
    /// (`TCHU_METRICS_ADDR`, e.g. `127.0.0.1:9464`; port 0 picks a free port). Needs the
    /// `prometheus` feature; without it a set address is ignored with a warning.
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Defaults with the given broker.
    pub fn new(broker: BrokerUrl) -> Self {
        Config {
            broker,
            exchange: DEFAULT_EXCHANGE.to_owned(),
            service: None,
            prefetch: DEFAULT_PREFETCH,
            concurrency: DEFAULT_CONCURRENCY,
            max_body: DEFAULT_MAX_BODY,
            format: WireFormat::Celery,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            publish_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            queue_type: QueueType::Classic,
            retry: RetryPolicy::DEFAULT,
            metrics_addr: None,
        }
    }

    /// Defaults on a given in-process broker.
    pub fn memory(broker: &MemoryBroker) -> Self {
        Config::new(BrokerUrl::Memory(broker.clone()))
    }

    /// Reads `TCHU_BROKER_URL` (then `AMQP_URL`, default [`DEFAULT_BROKER_URL`]),
    /// `TCHU_EXCHANGE`, `TCHU_SERVICE` (default: the executable's file name), `TCHU_PREFETCH`,
    /// `TCHU_CONCURRENCY`, `TCHU_FORMAT` (`celery` or `native`), `TCHU_METRICS_ADDR`.
    ///
    /// # Errors
    /// A bad value.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = std::env::var("TCHU_BROKER_URL")
            .or_else(|_| std::env::var("AMQP_URL"))
            .unwrap_or_else(|_| DEFAULT_BROKER_URL.to_owned());
        let mut c = Config::new(BrokerUrl::parse(&url)?);
        if let Ok(x) = std::env::var("TCHU_EXCHANGE") {
            c.exchange = x;
        }
        c.service = std::env::var("TCHU_SERVICE").ok().or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        });
        if let Ok(p) = std::env::var("TCHU_PREFETCH") {
            c.prefetch = p.parse().map_err(|e| ConfigError::Env {
                name: "TCHU_PREFETCH",
                reason: format!("{e}"),
            })?;
        }
        if let Ok(p) = std::env::var("TCHU_CONCURRENCY") {
            c.concurrency = p.parse().map_err(|e| ConfigError::Env {
                name: "TCHU_CONCURRENCY",
                reason: format!("{e}"),
            })?;
        }
        if let Ok(a) = std::env::var("TCHU_METRICS_ADDR")
            && !a.trim().is_empty()
        {
            c.metrics_addr = Some(a.trim().parse().map_err(|e| ConfigError::Env {
                name: "TCHU_METRICS_ADDR",
                reason: format!("`{a}`: {e} (expected e.g. `127.0.0.1:9464`)"),
            })?);
        }
        if let Ok(f) = std::env::var("TCHU_FORMAT") {
            c.format = match f.as_str() {
                "celery" => WireFormat::Celery,
                "native" => WireFormat::Native,
                other => {
                    return Err(ConfigError::Env {
                        name: "TCHU_FORMAT",
                        reason: format!("`{other}`: expected `celery` or `native`"),
                    });
                }
            };
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        let u = BrokerUrl::parse("amqp://alice:s3cret@host:5672/%2f").unwrap();
        assert_eq!(u.to_string(), "amqp://alice:***@host:5672/%2f");
        assert!(!format!("{u:?}").contains("s3cret"));
        let c = Config::new(u);
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(redact("amqp://host/"), "amqp://host/");
    }
}
