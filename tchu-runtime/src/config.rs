//! Settings of a client or service, from the environment or set in code.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
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
/// Default largest number of (top-level) AMQP headers accepted on a received message; a message
/// with more is dead-lettered. tchu and Celery set about 20 at most.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default RPC timeout, as in tchu-tchu.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`Config::handler_timeout`]: 5 minutes. Far above what an event handler should
/// take, and far below RabbitMQ's `consumer_timeout` (30 minutes), after which the broker
/// closes the channel and redelivers every delivery in flight on it, not just the stuck one.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = crate::handler::DEFAULT_HANDLER_TIMEOUT;

/// Where the broker is. Displays and debugs without credentials.
#[derive(Clone)]
pub enum BrokerUrl {
    /// RabbitMQ (`amqp://` or `amqps://`): one URL per node of a cluster, tried in order. The
    /// client connects to the first that answers and, when the connection is lost and cannot be
    /// recovered, to the next ones (see `docs/cluster.md`).
    Amqp(Vec<String>),
    /// The in-process broker.
    Memory(MemoryBroker),
}

impl BrokerUrl {
    /// Parses a URL: `memory://` makes a new in-process broker. An `amqp://` URL may name
    /// several nodes, either in its host part (`amqp://user:pass@h1:5672,h2:5673/%2f`: the
    /// credentials, virtual host and query apply to every node) or as comma-separated full URLs
    /// (`amqp://u:p@h1/%2f,amqp://u:p@h2/%2f`, as in `TCHU_BROKER_URLS`).
    ///
    /// # Errors
    /// An unknown scheme, an empty host in a list, or a URL lapin cannot read (a bad port or
    /// query parameter).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if url.starts_with("memory://") {
            return Ok(BrokerUrl::Memory(MemoryBroker::new()));
        }
        let mut urls = Vec::new();
        for one in split_full_urls(url) {
            if !(one.starts_with("amqp://") || one.starts_with("amqps://")) {
                return Err(ConfigError::BrokerUrl(format!(
                    "`{}`: expected amqp://, amqps:// or memory://",
                    redact(one)
                )));
            }
            for u in expand_hosts(one)? {
                // Checked now, so that a bad port or query is a configuration error.
                if let Err(e) = u.parse::<lapin::uri::AMQPUri>() {
                    return Err(ConfigError::BrokerUrl(format!(
                        "`{}`: {}",
                        redact(&u),
                        e.replace(&u, &redact(&u))
                    )));
                }
                urls.push(u);
            }
        }
        Ok(BrokerUrl::Amqp(urls))
    }

    /// The `amqp://` URLs of the nodes, in the order they are tried (empty for `memory://`).
    /// They hold credentials: do not log them (use [`redact`]).
    pub fn amqp_urls(&self) -> &[String] {
        match self {
            BrokerUrl::Amqp(urls) => urls,
            BrokerUrl::Memory(_) => &[],
        }
    }
}

/// Splits `a,amqp://b,amqps://c` at the commas that start another URL (a comma elsewhere
/// belongs to a host list or to a password).
fn split_full_urls(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in s.match_indices(',') {
        if starts_with_scheme(s[i + 1..].trim_start()) {
            out.push(s[start..i].trim());
            start = i + 1;
        }
    }
    out.push(s[start..].trim());
    out
}

/// Whether `s` starts with `scheme://`.
fn starts_with_scheme(s: &str) -> bool {
    let Some(end) = s.find("://") else {
        return false;
    };
    let scheme = &s[..end];
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Where the authority of a URL ends (the first `/`, `?` or `#` after the scheme).
fn authority_range(url: &str) -> Option<(usize, usize)> {
    let begin = url.find("://")? + 3;
    let end = url[begin..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| begin + i);
    Some((begin, end))
}

/// `amqp://u:p@h1,h2:5673/v` becomes `amqp://u:p@h1/v` and `amqp://u:p@h2:5673/v`.
fn expand_hosts(url: &str) -> Result<Vec<String>, ConfigError> {
    let Some((begin, end)) = authority_range(url) else {
        return Ok(vec![url.to_owned()]);
    };
    let authority = &url[begin..end];
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return Ok(vec![url.to_owned()]);
    }
    hosts
        .split(',')
        .map(|h| {
            let h = h.trim();
            if h.is_empty() {
                Err(ConfigError::BrokerUrl(format!(
                    "`{}`: empty host in the host list",
                    redact(url)
                )))
            } else {
                Ok(format!("{}{userinfo}{h}{}", &url[..begin], &url[end..]))
            }
        })
        .collect()
}

/// Replaces the password in a URL by `***` (in every URL of a comma-separated list).
pub fn redact(url: &str) -> String {
    split_full_urls(url)
        .into_iter()
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let Some((begin, end)) = authority_range(url) else {
        return url.to_owned();
    };
    let authority = &url[begin..end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..begin], &url[begin + at..])
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
            BrokerUrl::Amqp(urls) => {
                for (i, u) in urls.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&redact_one(u))?;
                }
                Ok(())
            }
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
    /// Largest accepted body, in bytes (default [`DEFAULT_MAX_BODY`], 16 MiB); a bigger
    /// message is dead-lettered.
    pub max_body: usize,
    /// Most top-level AMQP headers accepted on a received message (default
    /// [`DEFAULT_MAX_HEADERS`]); a message with more is dead-lettered.
    pub max_headers: usize,
    /// Format for outgoing events and requests (default: Celery, for mixed fleets).
    pub format: WireFormat,
    /// Default RPC timeout.
    pub call_timeout: Duration,
    /// How long a publish may wait for a confirm, including reconnection.
    pub publish_timeout: Duration,
    /// Grace period for in-flight handlers at shutdown.
    pub shutdown_grace: Duration,
    /// The longest one handler run may take (`TCHU_HANDLER_TIMEOUT`, default
    /// [`DEFAULT_HANDLER_TIMEOUT`]); a run stopped at it is a failure that follows the retry
    /// policy. Handlers with `timeout = "..."` keep theirs.
    pub handler_timeout: Duration,
    /// Queue type of the service's queues.
    pub queue_type: QueueType,
    /// Service-wide retry policy for handlers without their own.
    pub retry: RetryPolicy,
    /// Where [`App::start`](crate::App::start) serves `/metrics`, `/healthz` and `/readyz`
    /// (`TCHU_METRICS_ADDR`, e.g. `127.0.0.1:9464`; port 0 picks a free port). Needs the
    /// `prometheus` feature; without it a set address is ignored with a warning.
    pub metrics_addr: Option<SocketAddr>,
    /// TLS settings for `amqps://` URLs (custom CA, client certificate). Needs the `tls`
    /// feature.
    pub tls: TlsConfig,
    /// Dead-letter messages whose `tchu-schema` fingerprint differs from the typed handler's
    /// event schema (`TCHU_SCHEMA_STRICT=true`); by default they are counted, logged and
    /// handled. Messages without a fingerprint (Python tchu-tchu) are always handled.
    pub schema_strict: bool,
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
            max_headers: DEFAULT_MAX_HEADERS,
            format: WireFormat::Celery,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            publish_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            queue_type: QueueType::Classic,
            retry: RetryPolicy::DEFAULT,
            metrics_addr: None,
            tls: TlsConfig::default(),
            schema_strict: false,
        }
    }

    /// Defaults on a given in-process broker.
    pub fn memory(broker: &MemoryBroker) -> Self {
        Config::new(BrokerUrl::Memory(broker.clone()))
    }

    /// Reads `TCHU_BROKER_URLS` (comma-separated full URLs, one per cluster node), else
    /// `TCHU_BROKER_URL` (then `AMQP_URL`, default [`DEFAULT_BROKER_URL`]; it may list several
    /// hosts, see [`BrokerUrl::parse`]), `TCHU_EXCHANGE`, `TCHU_SERVICE` (default: the
    /// executable's file name), `TCHU_PREFETCH`, `TCHU_CONCURRENCY`, `TCHU_FORMAT` (`celery` or
    /// `native`), `TCHU_QUEUE_TYPE` (`classic` or `quorum`), `TCHU_METRICS_ADDR`,
    /// `TCHU_MAX_BODY` (bytes) and `TCHU_MAX_HEADERS`, and for
    /// `amqps://` the TLS files of [`TlsConfig::from_env`] (`TCHU_TLS_CA_FILE`,
    /// `TCHU_TLS_CERT_FILE`, `TCHU_TLS_KEY_FILE`).
    ///
    /// # Errors
    /// A bad value, or a TLS file that cannot be read.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = std::env::var("TCHU_BROKER_URLS")
            .or_else(|_| std::env::var("TCHU_BROKER_URL"))
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
        if let Ok(n) = std::env::var("TCHU_MAX_BODY") {
            c.max_body = n.trim().parse().map_err(|e| ConfigError::Env {
                name: "TCHU_MAX_BODY",
                reason: format!("`{n}`: {e} (expected a number of bytes)"),
            })?;
        }
        if let Ok(n) = std::env::var("TCHU_MAX_HEADERS") {
            c.max_headers = n.trim().parse().map_err(|e| ConfigError::Env {
                name: "TCHU_MAX_HEADERS",
                reason: format!("`{n}`: {e}"),
            })?;
        }
        if let Ok(v) = std::env::var("TCHU_SCHEMA_STRICT") {
            c.schema_strict = crate::catalog::fingerprint::parse_strict(&v)?;
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
        if let Ok(t) = std::env::var("TCHU_QUEUE_TYPE") {
            c.queue_type = t.parse().map_err(|e: ConfigError| ConfigError::Env {
                name: "TCHU_QUEUE_TYPE",
                reason: e.to_string(),
            })?;
        }
        if let Ok(t) = std::env::var("TCHU_HANDLER_TIMEOUT") {
            c.handler_timeout =
                crate::handler::parse_timeout(&t).map_err(|reason| ConfigError::Env {
                    name: "TCHU_HANDLER_TIMEOUT",
                    reason,
                })?;
        }
        c.tls = TlsConfig::from_env()?;
        Ok(c)
    }
}

/// TLS settings for `amqps://` connections (rustls; needs the `tls` feature).
///
/// The server's certificate is checked against the system's root certificates plus
/// [`ca_pem`](Self::ca_pem), and its name against the host of the URL (there is no override:
/// use the name the certificate was issued for, e.g. `amqps://rabbit.internal:5671`). A client
/// certificate is presented when set, for brokers with `ssl_options.verify = verify_peer` and
/// `fail_if_no_peer_cert = true`.
///
/// `Debug` shows neither the private key nor the PKCS#12 password.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Extra trusted CA certificates (PEM, one or more), e.g. a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate to present, if any.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate with its private key.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCert {
    /// A PEM certificate chain (the client's certificate first) and its unencrypted PEM private
    /// key (PKCS#8, PKCS#1 or SEC1).
    Pem {
        /// The certificate chain, PEM.
        cert_chain: Vec<u8>,
        /// The private key, PEM.
        key: Vec<u8>,
    },
    /// A PKCS#12 (`.p12`/`.pfx`) archive, DER, with its password.
    Pkcs12 {
        /// The archive.
        der: Vec<u8>,
        /// Its password.
        password: String,
    },
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCert::Pem { cert_chain, .. } => f
                .debug_struct("Pem")
                .field("cert_chain", &format_args!("<{} bytes>", cert_chain.len()))
                .field("key", &format_args!("<redacted>"))
                .finish(),
            ClientCert::Pkcs12 { der, .. } => f
                .debug_struct("Pkcs12")
                .field("der", &format_args!("<{} bytes, redacted>", der.len()))
                .field("password", &format_args!("<redacted>"))
                .finish(),
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// What a PEM file must contain.
#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

fn read_pem(what: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, ConfigError> {
    let bad = |reason: String| ConfigError::TlsFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let ok = match kind {
        PemKind::Certificate => text.contains("-----BEGIN CERTIFICATE-----"),
        PemKind::PrivateKey => text.contains("-----BEGIN ") && text.contains("PRIVATE KEY-----"),
    };
    if !ok {
        return Err(bad(match kind {
            PemKind::Certificate => "no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it",
            PemKind::PrivateKey => "no PEM private key (`-----BEGIN PRIVATE KEY-----`) in it",
        }
        .to_owned()));
    }
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            "the private key is encrypted: decrypt it (`openssl pkey -in k.pem -out k2.pem`) or \
             use a PKCS#12 archive with its password"
                .to_owned(),
        ));
    }
    Ok(bytes)
}

impl TlsConfig {
    /// No custom CA and no client certificate: the server must have a certificate signed by a
    /// root the system trusts.
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.client_cert.is_none()
    }

    /// Also trusts the CA certificates of this PEM text.
    #[must_use]
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Also trusts the CA certificates of this PEM file.
    ///
    /// # Errors
    /// The file cannot be read or holds no PEM certificate.
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let pem = read_pem("CA certificate file", path.as_ref(), PemKind::Certificate)?;
        Ok(self.with_ca_pem(pem))
    }

    /// Presents this client certificate chain (PEM) with its unencrypted private key (PEM).
    #[must_use]
    pub fn with_client_cert_pem(
        mut self,
        cert_chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_cert = Some(ClientCert::Pem {
            cert_chain: cert_chain.into(),
            key: key.into(),
        });
        self
    }

    /// Presents the client certificate of these PEM files (certificate chain, private key).
    ///
    /// # Errors
    /// A file cannot be read, holds no PEM certificate or key, or the key is encrypted.
    pub fn with_client_cert_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let cert = read_pem(
            "client certificate file",
            cert_chain.as_ref(),
            PemKind::Certificate,
        )?;
        let key = read_pem("client key file", key.as_ref(), PemKind::PrivateKey)?;
        Ok(self.with_client_cert_pem(cert, key))
    }

    /// Presents the client certificate and key of a PKCS#12 archive (DER).
    #[must_use]
    pub fn with_client_pkcs12(
        mut self,
        der: impl Into<Vec<u8>>,
        password: impl Into<String>,
    ) -> Self {
        self.client_cert = Some(ClientCert::Pkcs12 {
            der: der.into(),
            password: password.into(),
        });
        self
    }

    /// Reads `TCHU_TLS_CA_FILE` (PEM CA certificates to trust besides the system's roots),
    /// `TCHU_TLS_CERT_FILE` and `TCHU_TLS_KEY_FILE` (a PEM client certificate chain and its
    /// unencrypted PEM private key; both or neither). Unset or empty variables are ignored.
    ///
    /// # Errors
    /// A file cannot be read or is not PEM, or only one of the certificate and key is set.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let mut tls = TlsConfig::new();
        if let Some(ca) = var("TCHU_TLS_CA_FILE") {
            tls = tls.with_ca_file(ca)?;
        }
        match (var("TCHU_TLS_CERT_FILE"), var("TCHU_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => tls = tls.with_client_cert_files(cert, key)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::Tls(
                    "TCHU_TLS_CERT_FILE is set without TCHU_TLS_KEY_FILE".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Tls(
                    "TCHU_TLS_KEY_FILE is set without TCHU_TLS_CERT_FILE".to_owned(),
                ));
            }
        }
        Ok(tls)
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

    fn urls(s: &str) -> Vec<String> {
        BrokerUrl::parse(s).unwrap().amqp_urls().to_vec()
    }

    #[test]
    fn a_host_list_expands_to_one_url_per_node() {
        assert_eq!(
            urls("amqp://user:pass@h1:5672,h2:5673,h3:5674/%2f"),
            vec![
                "amqp://user:pass@h1:5672/%2f",
                "amqp://user:pass@h2:5673/%2f",
                "amqp://user:pass@h3:5674/%2f",
            ]
        );
        assert_eq!(
            urls("amqps://h1, h2?heartbeat=10"),
            vec!["amqps://h1?heartbeat=10", "amqps://h2?heartbeat=10"]
        );
        assert_eq!(urls("amqp://u:p@one:5672"), vec!["amqp://u:p@one:5672"]);
        // A comma in a password is not a host separator.
        assert_eq!(urls("amqp://u:a,b@h/%2f"), vec!["amqp://u:a,b@h/%2f"]);
        assert!(BrokerUrl::parse("amqp://u:p@h1,,h2/").is_err());
    }

    #[test]
    fn a_list_of_full_urls_is_split_and_may_mix_host_lists() {
        assert_eq!(
            urls("amqp://a:1@h1:5681/%2f, amqp://b:2@h2:5682/%2f,amqps://c:3@h3,h4/v"),
            vec![
                "amqp://a:1@h1:5681/%2f",
                "amqp://b:2@h2:5682/%2f",
                "amqps://c:3@h3/v",
                "amqps://c:3@h4/v",
            ]
        );
        assert!(BrokerUrl::parse("amqp://h1,http://h2").is_err());
        assert!(BrokerUrl::parse("amqp://h1/,http://h2").is_err());
    }

    #[test]
    fn every_password_is_redacted() {
        let u =
            BrokerUrl::parse("amqp://alice:s1@h1:5672,h2:5673/%2f,amqp://bob:s2@h3/%2f").unwrap();
        let shown = u.to_string();
        assert_eq!(
            shown,
            "amqp://alice:***@h1:5672/%2f,amqp://alice:***@h2:5673/%2f,amqp://bob:***@h3/%2f"
        );
        assert!(!format!("{u:?}").contains("s1") && !shown.contains("s2"));
        assert_eq!(
            redact("amqp://alice:s1@h1,h2/%2f,amqp://bob:s2@h3/%2f"),
            "amqp://alice:***@h1,h2/%2f,amqp://bob:***@h3/%2f"
        );
        let err = BrokerUrl::parse("amqp://a:secret@h/,ftp://b:secret2@h")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_url_lapin_cannot_read_is_a_config_error_without_the_password() {
        for bad in [
            "amqp://alice:s3cret@host:99999/%2f",
            "amqp://alice:s3cret@host/%2f?heartbeat=soon",
        ] {
            let err = BrokerUrl::parse(bad).err().unwrap();
            let text = err.to_string();
            assert!(text.contains("alice:***@host"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn tls_debug_hides_keys_and_passwords() {
        let tls = TlsConfig::new()
            .with_ca_pem("-----BEGIN CERTIFICATE-----")
            .with_client_cert_pem("-----BEGIN CERTIFICATE-----", "KEY-SECRET");
        let shown = format!("{tls:?} {tls:#?}");
        assert!(!shown.contains("KEY-SECRET"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let p12 = TlsConfig::new().with_client_pkcs12(b"P12-SECRET".to_vec(), "PW-SECRET");
        let shown = format!("{p12:?}");
        assert!(
            !shown.contains("PW-SECRET") && !shown.contains("80, 49, 50"),
            "{shown}"
        );
        let mut c = Config::new(BrokerUrl::parse("amqps://u:p@h/").unwrap());
        c.tls = tls;
        assert!(!format!("{c:?}").contains("KEY-SECRET"));
        assert!(TlsConfig::new().is_empty() && !c.tls.is_empty());
    }

    #[test]
    fn tls_files_are_checked_when_read() {
        let dir = std::env::temp_dir().join(format!("tchu-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TlsConfig::new()
            .with_ca_file(dir.join("missing.pem"))
            .unwrap_err();
        assert!(
            matches!(
                &missing,
                ConfigError::TlsFile {
                    what: "CA certificate file",
                    ..
                }
            ),
            "{missing}"
        );
        assert!(missing.to_string().contains("missing.pem"), "{missing}");

        std::fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nAA==\n").unwrap();
        std::fs::write(dir.join("not.pem"), "hello").unwrap();
        std::fs::write(
            dir.join("enc.key"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = TlsConfig::new()
            .with_ca_file(dir.join("not.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = TlsConfig::new()
            .with_client_cert_files(dir.join("cert.pem"), dir.join("not.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        let err = TlsConfig::new()
            .with_client_cert_files(dir.join("cert.pem"), dir.join("enc.key"))
            .unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        let ok = TlsConfig::new().with_ca_file(dir.join("cert.pem")).unwrap();
        assert!(ok.ca_pem.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn queue_types_parse() {
        assert_eq!("quorum".parse::<QueueType>().unwrap(), QueueType::Quorum);
        assert_eq!("Classic".parse::<QueueType>().unwrap(), QueueType::Classic);
        assert!("stream".parse::<QueueType>().is_err());
        assert_eq!(QueueType::Quorum.to_string(), "quorum");
    }
}
