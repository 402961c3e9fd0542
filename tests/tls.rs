//! `amqps://` against a real RabbitMQ node with TLS (only with `TCHU_TLS_TEST=1`, as root, and
//! the `tls` feature).
//!
//! The test makes a CA, a server certificate for `localhost`, a client certificate and a server
//! certificate for a wrong name with the `openssl` CLI in a temporary directory, and starts a
//! RabbitMQ node `tchu-tls@localhost` beside the machine's broker: TLS listener on 5691, plain
//! listener on 5690, distribution port 25691, `verify_peer`. It checks that
//!
//! - publishing and handling over `amqps://` with the custom CA works;
//! - without the CA, the connection fails with a clear error;
//! - a server whose certificate is for another name is refused (an `openssl s_server` on 5692
//!   with the wrong-name certificate, and the node itself reached as `127.0.0.1`);
//! - `amqps://` to a plain AMQP port fails clearly;
//! - once the node requires client certificates (`fail_if_no_peer_cert = true`, app
//!   restarted), a client with its certificate works and one without is refused.
//!
//! The node and `s_server` are stopped and the directory removed at the end, even on failure.
//!
//! `TCHU_TLS_TEST=1 cargo test -p tchu --features tls --test tls -- --nocapture`

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Names, WAIT, recv_n};
use serde_json::json;
use tchu::{App, BrokerUrl, Client, Config, Delivery, TlsConfig};
use tokio::sync::mpsc;

const NODE: &str = "tchu-tls@localhost";
const PLAIN_PORT: u16 = 5690;
const TLS_PORT: u16 = 5691;
const DIST_PORT: u16 = 25691;
/// `openssl s_server` presenting the wrong-name certificate.
const WRONG_PORT: u16 = 5692;

fn tls_test_enabled() -> bool {
    if std::env::var("TCHU_TLS_TEST").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "note: the TLS test is skipped; run it as root with TCHU_TLS_TEST=1 (it starts the \
         RabbitMQ node {NODE} on ports {PLAIN_PORT}-{WRONG_PORT} beside the machine's broker)"
    );
    false
}

/// Runs a command, bounded, and panics with its output when it fails.
fn run(cmd: &str, args: &[&str], cwd: &Path) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(cmd)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rabbitmqctl -n NODE args…`, bounded and quiet; whether it succeeded.
fn ctl(args: &[&str]) -> bool {
    Command::new("timeout")
        .arg("90")
        .arg("rabbitmqctl")
        .args(["-n", NODE])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Makes a P-256 key and a certificate for `name` signed by the CA in `dir`.
fn leaf(dir: &Path, file: &str, name: &str, usage: &str) {
    let key = format!("{file}.key");
    let csr = format!("{file}.csr");
    let ext = format!("{file}.ext");
    let pem = format!("{file}.pem");
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
        dir,
    );
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
        ),
    )
    .expect("ext file");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
        dir,
    );
}

/// The node's config: TLS with `verify_peer`; client certificates required or not.
fn node_config(dir: &Path, require_client_cert: bool) -> String {
    let d = dir.display();
    format!(
        "listeners.tcp.1 = 127.0.0.1:{PLAIN_PORT}\n\
         listeners.ssl.1 = 127.0.0.1:{TLS_PORT}\n\
         ssl_options.cacertfile = {d}/ca.pem\n\
         ssl_options.certfile = {d}/server.pem\n\
         ssl_options.keyfile = {d}/server.key\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = {require_client_cert}\n"
    )
}

/// The certificates, the RabbitMQ node and the wrong-name TLS server of this test; dropping it
/// stops both and removes the directory.
struct TlsNode {
    dir: PathBuf,
    server: Option<Child>,
    wrong: Option<Child>,
}

impl TlsNode {
    fn start() -> TlsNode {
        let dir = std::env::temp_dir().join(format!(
            "tchu-tls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let mut node = TlsNode {
            dir: dir.clone(),
            server: None,
            wrong: None,
        };
        common::prepare_node_dir(&dir, &node_config(&dir, false));

        let t = Instant::now();
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tchu test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &dir,
        );
        leaf(&dir, "server", "localhost", "serverAuth");
        leaf(&dir, "client", "tchu-client", "clientAuth");
        leaf(&dir, "wrong", "wrong.example", "serverAuth");
        eprintln!("tls: certificates made in {:?}", t.elapsed());

        common::chown_to_rabbitmq(&dir);
        node.server = Some(common::spawn_rabbit_node(NODE, &dir, PLAIN_PORT, DIST_PORT));
        let wrong_log = std::fs::File::create(dir.join("s_server.out")).expect("s_server log");
        node.wrong = Some(
            Command::new("openssl")
                .args(["s_server", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{WRONG_PORT}"))
                .args(["-cert", "wrong.pem", "-key", "wrong.key"])
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(wrong_log.try_clone().expect("log handle"))
                .stderr(wrong_log)
                .spawn()
                .expect("start openssl s_server"),
        );
        node.await_up();
        eprintln!("tls: node {NODE} up in {:?}", t.elapsed());
        node
    }

    /// Waits (bounded) until the node runs and both TLS ports accept connections.
    fn await_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        // `await_startup` needs the node's Erlang distribution up: poll until it answers.
        while !ctl(&["await_startup", "--timeout", "60"]) {
            assert!(
                Instant::now() < deadline,
                "{NODE} did not start; see {:?}",
                self.dir.join("server.out")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        while !(port_open(TLS_PORT) && port_open(WRONG_PORT)) {
            assert!(
                Instant::now() < deadline,
                "ports {TLS_PORT}/{WRONG_PORT} not open"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Rewrites the config to require client certificates and restarts the node's app (the
    /// config file is read again at `start_app`).
    fn require_client_certs(&self) {
        std::fs::write(self.dir.join("rabbitmq.conf"), node_config(&self.dir, true))
            .expect("config");
        assert!(ctl(&["stop_app"]), "stop_app");
        assert!(ctl(&["start_app"]), "start_app");
        self.await_up();
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn ca(&self) -> TlsConfig {
        TlsConfig::new()
            .with_ca_file(self.path("ca.pem"))
            .expect("CA file")
    }

    fn ca_and_client_cert(&self) -> TlsConfig {
        self.ca()
            .with_client_cert_files(self.path("client.pem"), self.path("client.key"))
            .expect("client certificate files")
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.wrong.take() {
            // Our own child process.
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.server.take() {
            ctl(&["stop"]);
            if matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_secs(2));
                if matches!(c.try_wait(), Ok(None)) {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {:?}: {e}", self.dir);
        }
        eprintln!("tls: node stopped and {:?} removed", self.dir);
    }
}

fn config(names: &Names, url: &str, tls: TlsConfig) -> Config {
    let mut c = names.config();
    c.broker = BrokerUrl::parse(url).expect("url");
    c.tls = tls;
    c
}

fn url(host: &str, port: u16) -> String {
    format!("amqps://guest:guest@{host}:{port}/%2f")
}

/// A connect that must fail: returns the error's text with its sources.
async fn connect_fails(config: Config, what: &str) -> String {
    let r = tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .unwrap_or_else(|_| panic!("{what}: connect did not end within {WAIT:?}"));
    let Err(err) = r else {
        panic!("{what}: the connection must be refused")
    };
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("tls: {what}: {text}");
    text
}

/// Starts a service over `tls`, publishes one event with a client, and checks it is handled.
async fn publish_and_handle(names: &Names, tls: TlsConfig) {
    let svc = names.service("svc");
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let r = App::new(config(names, &url("localhost", TLS_PORT), tls.clone()))
        .service(svc.clone())
        .only_module("none")
        .subscribe("tls.ping", "ping", move |d: Arc<Delivery>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(d.event().clone());
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .start()
        .await
        .expect("service over amqps");
    let client = tokio::time::timeout(
        WAIT,
        Client::connect(config(names, &url("localhost", TLS_PORT), tls)),
    )
    .await
    .expect("connect timed out")
    .expect("client over amqps");
    client
        .publish("tls.ping", &json!({"n": 1}))
        .await
        .expect("publish over amqps");
    assert_eq!(recv_n(&mut rx, 1).await, vec![json!({"n": 1})]);
    // The service's connection too: `shutdown` leaves a client open (it may be the process's
    // default client). Both are closed before the node restarts and the runtime ends, or
    // lapin's I/O thread reconnects through a runtime that is going away (the README's rule).
    let service_client = r.client().clone();
    r.shutdown().await;
    service_client.close().await;
    names.cleanup(&client, &["svc"], &[]).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_custom_ca_server_name_and_client_certificates() {
    if !tls_test_enabled() {
        return;
    }
    let t_all = Instant::now();
    let node = tokio::task::spawn_blocking(TlsNode::start)
        .await
        .expect("node start");
    let node = Arc::new(node);
    let result = tokio::time::timeout(Duration::from_secs(150), scenario(Arc::clone(&node))).await;
    drop(tokio::task::spawn_blocking(move || drop(node)).await);
    result.expect("the TLS scenario took over 150 s");
    eprintln!("tls: whole test took {:?}", t_all.elapsed());
}

async fn scenario(node: Arc<TlsNode>) {
    let names = Names::new("tls");

    // The custom CA: publish and handle over amqps.
    let t = Instant::now();
    publish_and_handle(&names, node.ca()).await;
    eprintln!(
        "tls: publish + handle with the custom CA in {:?}",
        t.elapsed()
    );

    // Without the CA: the server's certificate is not trusted.
    let text = connect_fails(
        config(&names, &url("localhost", TLS_PORT), TlsConfig::new()),
        "without the CA",
    )
    .await;
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    assert!(text.contains("TCHU_TLS_CA_FILE"), "{text}");

    // A server with a certificate (from the trusted CA) for another name.
    let text = connect_fails(
        config(&names, &url("localhost", WRONG_PORT), node.ca()),
        "a certificate for wrong.example",
    )
    .await;
    assert!(text.contains("not valid for the host name"), "{text}");
    // The node itself, by an address its certificate does not name.
    let text = connect_fails(
        config(&names, &url("127.0.0.1", TLS_PORT), node.ca()),
        "the node as 127.0.0.1",
    )
    .await;
    assert!(text.contains("not valid for the host name"), "{text}");

    // amqps:// to a plain AMQP port.
    let text = connect_fails(
        config(&names, &url("localhost", PLAIN_PORT), node.ca()),
        "amqps to the plain port",
    )
    .await;
    assert!(text.contains("TLS connection to"), "{text}");

    // A client certificate is accepted while optional.
    publish_and_handle(&names, node.ca_and_client_cert()).await;

    // The node now requires client certificates.
    let t = Instant::now();
    tokio::task::spawn_blocking({
        let node = Arc::clone(&node);
        move || node.require_client_certs()
    })
    .await
    .expect("restart");
    eprintln!(
        "tls: app restarted requiring client certificates in {:?}",
        t.elapsed()
    );
    let text = connect_fails(
        config(&names, &url("localhost", TLS_PORT), node.ca()),
        "without a client certificate",
    )
    .await;
    assert!(text.contains("client certificate"), "{text}");
    assert!(text.contains("TCHU_TLS_CERT_FILE"), "{text}");
    let t = Instant::now();
    publish_and_handle(&names, node.ca_and_client_cert()).await;
    eprintln!(
        "tls: publish + handle with a client certificate in {:?}",
        t.elapsed()
    );
}
