//! Settings of a client or service, from the environment or set in code: plain data, checked
//! at start ([`Config::check`]). Broker URLs are [`BrokerUrl`]s, TLS settings in
//! [`TlsConfig`], defaults in one leaf module.

use std::net::SocketAddr;
use std::time::Duration;

use crate::defaults::*;
use crate::error::ConfigError;
use crate::queue_type::QueueType;
use crate::retry::RetryPolicy;
use crate::tls::TlsConfig;
use crate::url::BrokerUrl;
use crate::wire::{CeleryEncoding, WireFormat};

/// The longest service name: the queue names derived from it (`<service>.retry.<ms>ms`,
/// `<service>.tchu.bindings`) must fit AMQP's 255-byte limit.
pub const MAX_SERVICE_BYTES: usize = MAX_NAME_BYTES - 32;

/// Settings of a client and of a service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The broker (`TCHU_BROKER_URLS`, `TCHU_BROKER_URL` or `AMQP_URL`).
    pub broker: BrokerUrl,
    /// The topic exchange (`TCHU_EXCHANGE`, default `tchu_events`; 1 to 255 bytes).
    pub exchange: String,
    /// The service name (`TCHU_SERVICE`, default: the executable's name): its queue is named
    /// after it. `None` for a pure client. 1 to [`MAX_SERVICE_BYTES`] bytes.
    pub service: Option<String>,
    /// Prefetch window (`TCHU_PREFETCH`, default [`DEFAULT_PREFETCH`]; 1 to 65535).
    pub prefetch: u16,
    /// Deliveries handled concurrently (`TCHU_CONCURRENCY`, default [`DEFAULT_CONCURRENCY`];
    /// at least 1).
    pub concurrency: usize,
    /// Largest accepted body, in bytes (`TCHU_MAX_BODY`, default [`DEFAULT_MAX_BODY`], 16 MiB);
    /// a bigger message is dead-lettered.
    pub max_body: usize,
    /// Most top-level AMQP headers accepted on a received message (`TCHU_MAX_HEADERS`, default
    /// [`DEFAULT_MAX_HEADERS`]); a message with more is dead-lettered.
    pub max_headers: usize,
    /// Format for outgoing events and requests (`TCHU_FORMAT`, default: Celery, for mixed
    /// fleets).
    pub format: WireFormat,
    /// Which headers and properties Celery messages carry (`TCHU_CELERY_ENCODING`, `lean` or
    /// `full`, default [`CeleryEncoding::Lean`]): only what a Celery worker reads, or byte for
    /// byte what `TchuClient` writes. Only used with [`WireFormat::Celery`]; see
    /// `docs/interop.md`.
    pub celery_encoding: CeleryEncoding,
    /// Default RPC timeout (`TCHU_CALL_TIMEOUT`, default [`DEFAULT_CALL_TIMEOUT`]).
    pub call_timeout: Duration,
    /// How long a publish may wait for a confirm, including reconnection
    /// (`TCHU_PUBLISH_TIMEOUT`, default [`DEFAULT_PUBLISH_TIMEOUT`]).
    pub publish_timeout: Duration,
    /// How long one broker node may take to accept a connection before the next is tried
    /// (`TCHU_CONNECT_TIMEOUT`, default [`DEFAULT_CONNECT_TIMEOUT`]). A refused connection or
    /// an unknown host fails at once.
    pub connect_timeout: Duration,
    /// Grace period for in-flight handlers at shutdown (`TCHU_SHUTDOWN_GRACE`, default
    /// [`DEFAULT_SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
    /// The longest one handler run may take (`TCHU_HANDLER_TIMEOUT`, default
    /// [`DEFAULT_HANDLER_TIMEOUT`]); a run stopped at it is a failure that follows the retry
    /// policy. Handlers with `timeout = "..."` keep theirs.
    pub handler_timeout: Duration,
    /// Queue type of the service's queues (`TCHU_QUEUE_TYPE`, default classic).
    pub queue_type: QueueType,
    /// Service-wide retry policy for handlers without their own.
    pub retry: RetryPolicy,
    /// Where [`App::start`](crate::App::start) serves `/metrics`, `/healthz` and `/readyz`
    /// (`TCHU_METRICS_ADDR`, e.g. `127.0.0.1:9464`; port 0 picks a free port). Needs the
    /// `prometheus` feature; without it a set address is refused at start.
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
            celery_encoding: CeleryEncoding::Lean,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            queue_type: QueueType::Classic,
            retry: RetryPolicy::DEFAULT,
            metrics_addr: None,
            tls: TlsConfig::default(),
            schema_strict: false,
        }
    }

    /// Defaults on `memory://`: a client connected with them gets a new in-process broker.
    /// To share one [`MemoryBroker`](crate::MemoryBroker) between clients and apps, hand it
    /// over where they are made: [`Client::connect_memory`](crate::Client::connect_memory),
    /// [`App::broker`](crate::App::broker).
    pub fn memory() -> Self {
        Config::new(BrokerUrl::Memory)
    }

    /// Reads every `TCHU_*` setting of the README's table: `TCHU_BROKER_URLS` (comma-separated
    /// full URLs, one per cluster node), else `TCHU_BROKER_URL` (then `AMQP_URL`, default
    /// [`DEFAULT_BROKER_URL`]; it may list several hosts, see [`BrokerUrl::parse`]),
    /// `TCHU_EXCHANGE`, `TCHU_SERVICE` (default: the executable's file name), `TCHU_PREFETCH`,
    /// `TCHU_CONCURRENCY`, `TCHU_FORMAT` (`celery` or `native`), `TCHU_CELERY_ENCODING`
    /// (`lean` or `full`), `TCHU_QUEUE_TYPE` (`classic`
    /// or `quorum`), `TCHU_METRICS_ADDR`, `TCHU_MAX_BODY` (bytes), `TCHU_MAX_HEADERS`,
    /// `TCHU_CALL_TIMEOUT`, `TCHU_PUBLISH_TIMEOUT`, `TCHU_CONNECT_TIMEOUT`,
    /// `TCHU_HANDLER_TIMEOUT` and `TCHU_SHUTDOWN_GRACE` (durations: `30`, `2.5s`, `500ms`,
    /// `1m`, `1h`), and for `amqps://` the
    /// TLS files of [`TlsConfig::from_env`]. Then [`Config::check`]s them.
    ///
    /// # Errors
    /// A value that is not accepted (the error names the variable, the value and what is
    /// accepted), or a TLS file that cannot be read.
    pub fn from_env() -> Result<Self, ConfigError> {
        let c = Config::read_env().map_err(refused)?;
        c.check()?;
        Ok(c)
    }

    fn read_env() -> Result<Self, ConfigError> {
        let url = std::env::var("TCHU_BROKER_URLS")
            .or_else(|_| std::env::var("TCHU_BROKER_URL"))
            .or_else(|_| std::env::var("AMQP_URL"))
            .unwrap_or_else(|_| DEFAULT_BROKER_URL.to_owned());
        let mut c = Config::new(BrokerUrl::parse(&url)?);
        set(&mut c.exchange, "TCHU_EXCHANGE", NAME, |s| {
            Some(s.to_owned())
        })?;
        c.service = match env("TCHU_SERVICE", NAME, |s| Some(s.to_owned()))? {
            Some(s) => Some(s),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())),
        };
        set(&mut c.prefetch, "TCHU_PREFETCH", PREFETCH, |s| {
            s.parse().ok()
        })?;
        set(&mut c.concurrency, "TCHU_CONCURRENCY", AT_LEAST_ONE, |s| {
            s.parse().ok()
        })?;
        set(&mut c.max_body, "TCHU_MAX_BODY", BYTES, |s| s.parse().ok())?;
        set(&mut c.max_headers, "TCHU_MAX_HEADERS", COUNT, |s| {
            s.parse().ok()
        })?;
        c.metrics_addr = env("TCHU_METRICS_ADDR", SOCKET_ADDR, |s| {
            if s.is_empty() {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        })?
        .flatten();
        set(&mut c.format, "TCHU_FORMAT", FORMAT, |s| match s {
            "celery" => Some(WireFormat::Celery),
            "native" => Some(WireFormat::Native),
            _ => None,
        })?;
        set(
            &mut c.celery_encoding,
            "TCHU_CELERY_ENCODING",
            CELERY_ENCODING,
            parse_celery_encoding,
        )?;
        set(&mut c.queue_type, "TCHU_QUEUE_TYPE", QUEUE_TYPE, |s| {
            s.parse().ok()
        })?;
        set(
            &mut c.call_timeout,
            "TCHU_CALL_TIMEOUT",
            DURATION,
            parse_duration,
        )?;
        set(
            &mut c.publish_timeout,
            "TCHU_PUBLISH_TIMEOUT",
            DURATION,
            parse_duration,
        )?;
        set(
            &mut c.connect_timeout,
            "TCHU_CONNECT_TIMEOUT",
            DURATION,
            parse_duration,
        )?;
        set(
            &mut c.shutdown_grace,
            "TCHU_SHUTDOWN_GRACE",
            DURATION_OR_ZERO,
            parse_duration_or_zero,
        )?;
        set(
            &mut c.handler_timeout,
            "TCHU_HANDLER_TIMEOUT",
            DURATION,
            parse_duration,
        )?;
        set(
            &mut c.schema_strict,
            "TCHU_SCHEMA_STRICT",
            BOOL,
            parse_strict,
        )?;
        c.tls = TlsConfig::from_env()?;
        Ok(c)
    }

    /// Checks every setting, whether it came from the environment or from code; an error names
    /// the setting's variable, its value and what is accepted. [`App::start`](crate::App::start)
    /// and [`Client::connect`](crate::Client::connect) call it before connecting.
    ///
    /// # Errors
    /// The first setting that is not accepted.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |name: &'static str, value: String, expected: &'static str| {
            Err(refused(ConfigError::Env {
                name,
                value,
                expected,
            }))
        };
        if self.prefetch == 0 {
            return bad("TCHU_PREFETCH", "0".into(), PREFETCH);
        }
        if self.concurrency == 0 {
            return bad("TCHU_CONCURRENCY", "0".into(), AT_LEAST_ONE);
        }
        if !valid_name(&self.exchange, MAX_NAME_BYTES) {
            return bad("TCHU_EXCHANGE", shorten(&self.exchange), NAME);
        }
        if let Some(s) = &self.service
            && !valid_name(s, MAX_SERVICE_BYTES)
        {
            return bad("TCHU_SERVICE", shorten(s), SERVICE);
        }
        for (name, d) in [
            ("TCHU_CALL_TIMEOUT", self.call_timeout),
            ("TCHU_PUBLISH_TIMEOUT", self.publish_timeout),
            ("TCHU_CONNECT_TIMEOUT", self.connect_timeout),
            ("TCHU_HANDLER_TIMEOUT", self.handler_timeout),
        ] {
            if d.is_zero() {
                return bad(name, "0".into(), DURATION);
            }
        }
        if let Some(addr) = self.metrics_addr
            && !cfg!(feature = "prometheus")
        {
            return bad(
                "TCHU_METRICS_ADDR",
                addr.to_string(),
                "unset: this binary was built without tchu's `prometheus` feature (enable it \
                 to serve /metrics, /healthz and /readyz)",
            );
        }
        Ok(())
    }
}

const NAME: &str = "a name of 1 to 255 bytes";
const SERVICE: &str = "a name of 1 to 223 bytes (the queue names made from it must fit AMQP's \
                       255-byte limit)";
const PREFETCH: &str = "a whole number from 1 to 65535 (0 would let the broker send without limit)";
const AT_LEAST_ONE: &str = "a whole number of at least 1";
const BYTES: &str = "a number of bytes";
const COUNT: &str = "a whole number";
const BOOL: &str = "`true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`)";
const SOCKET_ADDR: &str = "an address and port such as `127.0.0.1:9464`, or empty for none";
const FORMAT: &str = "`celery` or `native`";
const CELERY_ENCODING: &str = "`lean` (only the headers a Celery worker reads) or `full` (every \
                               header tchu-tchu's `TchuClient` writes)";
const QUEUE_TYPE: &str = "`classic` or `quorum`";
const DURATION: &str = "a duration above zero: seconds (`30`, `2.5`) or with a unit (`500ms`, \
                        `10s`, `5m`, `1h`)";
const DURATION_OR_ZERO: &str = "a duration: seconds (`30`, `2.5`) or with a unit (`500ms`, \
                                `10s`, `5m`, `1h`)";

/// Whether `s` can name an exchange or queue.
fn valid_name(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.len() <= max
}

/// A value as shown in an error: long ones cut, with their length.
fn shorten(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 48;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// Reads and checks one environment setting: `None` when the variable is unset; otherwise
/// `parse` turns its (trimmed) value into the setting, and a value it refuses is an error that
/// names the variable, the value and what is `expected`.
/// Logs a refused setting at `warn` (for the service's log pipeline; `main` prints the error
/// too) and hands it back.
fn refused(e: ConfigError) -> ConfigError {
    tracing::warn!(error = %e, "setting refused");
    e
}

fn env<T>(
    name: &'static str,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    let Some(raw) = std::env::var_os(name) else {
        return Ok(None);
    };
    let value = raw.to_string_lossy();
    match parse(value.trim()) {
        Some(v) => Ok(Some(v)),
        None => Err(ConfigError::Env {
            name,
            value: shorten(&value),
            expected,
        }),
    }
}

/// [`env`] into `slot` when the variable is set.
fn set<T>(
    slot: &mut T,
    name: &'static str,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<(), ConfigError> {
    if let Some(v) = env(name, expected, parse)? {
        *slot = v;
    }
    Ok(())
}

/// Reads `TCHU_SCHEMA_STRICT`.
fn parse_strict(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "" | "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads `TCHU_CELERY_ENCODING`: `lean` or `full`, any case.
fn parse_celery_encoding(s: &str) -> Option<CeleryEncoding> {
    match s.to_ascii_lowercase().as_str() {
        "lean" => Some(CeleryEncoding::Lean),
        "full" => Some(CeleryEncoding::Full),
        _ => None,
    }
}

/// `30`, `2.5` (seconds), `500ms`, `10s`, `1m`, `1h`; above zero.
fn parse_duration(s: &str) -> Option<Duration> {
    parse_duration_or_zero(s).filter(|d| !d.is_zero())
}

/// [`parse_duration`], zero allowed.
fn parse_duration_or_zero(s: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let x: f64 = number.trim().parse().ok()?;
    Duration::try_from_secs_f64(x * scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_password() {
        let c = Config::new(BrokerUrl::parse("amqp://alice:s3cret@host:5672/%2f").unwrap());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration_or_zero("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(DEFAULT_HANDLER_TIMEOUT, Duration::from_secs(300));
        for bad in ["", "soon", "-1", "1d", "NaN"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn celery_encodings_parse() {
        assert_eq!(Config::memory().celery_encoding, CeleryEncoding::Lean);
        assert_eq!(CeleryEncoding::default(), CeleryEncoding::Lean);
        for (text, want) in [
            ("lean", CeleryEncoding::Lean),
            ("full", CeleryEncoding::Full),
            ("FULL", CeleryEncoding::Full),
        ] {
            assert_eq!(parse_celery_encoding(text), Some(want), "{text}");
        }
        for e in [CeleryEncoding::Lean, CeleryEncoding::Full] {
            assert_eq!(parse_celery_encoding(&e.to_string()), Some(e));
        }
        for bad in ["", "lite", "ful", "celery", "native"] {
            assert_eq!(parse_celery_encoding(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_in_code_are_checked() {
        let ok = Config::new(BrokerUrl::Memory);
        assert!(ok.check().is_ok());
        let mut c = ok.clone();
        c.prefetch = 0;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("TCHU_PREFETCH") && e.contains("`0`"), "{e}");
        let mut c = ok.clone();
        c.concurrency = 0;
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("TCHU_CONCURRENCY")
        );
        let mut c = ok.clone();
        c.exchange = String::new();
        assert!(c.check().unwrap_err().to_string().contains("TCHU_EXCHANGE"));
        let mut c = ok.clone();
        c.service = Some("x".repeat(300));
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("(300 bytes)") && e.contains("223 bytes"), "{e}");
        let mut c = ok;
        c.metrics_addr = Some(([127, 0, 0, 1], 9464).into());
        assert_eq!(c.check().is_ok(), cfg!(feature = "prometheus"));
    }
}
