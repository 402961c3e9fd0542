//! A broker password never shows: not in `Debug`/`Display` of `Config`, `BrokerUrl`, `Client`,
//! not in the errors of failed connects (wrong password, unknown host, closed port) or bad URLs,
//! and not in anything logged meanwhile (captured at TRACE level, lapin's logs included).
//!
//! Runs against the machine's broker (`TCHU_TEST_BROKER_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) for the successful connect and the wrong password.
//! One test in this binary: it installs the global tracing subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tchu::{BrokerUrl, Client, Config, TlsConfig};

const SECRET: &str = "Pw-d0nt-l3ak-7f3a";

/// A `MakeWriter` appending everything to one buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => b.extend_from_slice(buf),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `Display`, `Debug` and pretty `Debug` of an error and of each of its sources.
fn all_forms(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{err}\n{err:?}\n{err:#?}\n");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!("{s}\n{s:?}\n"));
        source = s.source();
    }
    out
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "the password shows in {what}:\n{text}"
    );
}

/// The local broker's URL with its password replaced by [`SECRET`].
fn local_with_wrong_password() -> String {
    let url = common::broker_url();
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://tchu-redaction:{SECRET}@{host}")
}

#[tokio::test]
async fn passwords_never_show_in_debug_display_errors_or_logs() {
    let logs = Buffer::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(logs.clone())
        .with_ansi(false)
        .try_init()
        .expect("global subscriber");

    // URLs lapin cannot read are refused when parsed, without the password.
    for bad in [
        format!("amqp://alice:{SECRET}@127.0.0.1:99999/%2f"),
        format!("amqp://alice:{SECRET}@127.0.0.1:1/%2f?heartbeat=x"),
        format!("ftp://alice:{SECRET}@127.0.0.1:1/%2f"),
    ] {
        let Err(err) = BrokerUrl::parse(&bad) else {
            panic!("{bad} must be refused")
        };
        let text = all_forms(&err);
        eprintln!("bad url: {err}");
        assert_clean("a URL error", &text);
        assert!(text.contains("alice:***@"), "{text}");
    }

    let failing = [
        ("a wrong password", local_with_wrong_password()),
        (
            "an unknown host",
            format!("amqp://alice:{SECRET}@no-such-host.invalid:5672/%2f"),
        ),
        (
            "a closed port",
            format!("amqp://alice:{SECRET}@127.0.0.1:1/%2f"),
        ),
        (
            "TLS settings on amqp://",
            format!("amqp://alice:{SECRET}@127.0.0.1:1/%2f"),
        ),
    ];
    // Concurrently: lapin retries an unreachable node until tchu's connect timeout (10 s).
    let attempts = failing.into_iter().map(|(what, url)| async move {
        let broker = BrokerUrl::parse(&url).expect("url");
        assert_clean(what, &format!("{broker}\n{broker:?}\n{broker:#?}"));
        let mut config = Config::new(broker);
        config.publish_timeout = Duration::from_secs(5);
        if what.starts_with("TLS") {
            config.tls = TlsConfig::new().with_ca_pem("-----BEGIN CERTIFICATE-----");
        }
        assert_clean(what, &format!("{config:?}\n{config:#?}"));
        let r = tokio::time::timeout(Duration::from_secs(40), Client::connect(config))
            .await
            .unwrap_or_else(|_| panic!("{what}: connect did not end"));
        let Err(err) = r else {
            panic!("{what}: the connect must fail")
        };
        let text = all_forms(&err);
        eprintln!("{what}: {err}");
        assert_clean(what, &text);
        // The error still says where it tried (user and host, password hidden).
        if !what.starts_with("TLS") {
            assert!(
                text.contains("alice:***@") || text.contains("redaction:***@"),
                "{what}: {text}"
            );
        }
    });
    futures_util::future::join_all(attempts).await;

    // A client that connected: its Debug shows the URL without the password.
    let mut config = Config::new(BrokerUrl::parse(&common::broker_url()).expect("url"));
    config.exchange = format!(
        "tchu_test.redaction.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let client = tokio::time::timeout(Duration::from_secs(20), Client::connect(config))
        .await
        .expect("connect timed out")
        .expect("connect to the local broker");
    let password = common::broker_url()
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("the local broker URL has a password");
    let shown = format!("{client:?}\n{client:#?}\n{:?}", client.config());
    assert!(shown.contains(":***@"), "{shown}");
    assert!(!shown.contains(&format!(":{password}@")), "{shown}");
    let _ = client.delete_exchange(&client.config().exchange).await;

    let logs = String::from_utf8_lossy(&logs.0.lock().expect("log buffer")).into_owned();
    assert!(
        logs.contains("cannot connect"),
        "the failed connects were logged: {logs}"
    );
    assert_clean("the logs", &logs);
}
