//! The `tchu` binary against the real RabbitMQ at 127.0.0.1:5672 (or `TCHU_TEST_BROKER_URL`),
//! one unique exchange per test: publish + tail, call, the dead-letter commands, and that a
//! password never shows in any output. `cargo test -p tchu-cli`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tchu::{App, BrokerUrl, Client, Config, Delivery, HandlerError, RpcError, Running};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A bound for every wait on the broker or on a child process.
const WAIT: Duration = Duration::from_secs(30);

fn broker_url() -> String {
    std::env::var("TCHU_TEST_BROKER_URL")
        .unwrap_or_else(|_| tchu::config::DEFAULT_BROKER_URL.to_owned())
}

/// A unique exchange and service prefix.
struct Names {
    exchange: String,
    service: String,
}

impl Names {
    fn new(test: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Names {
            exchange: format!("tchu_test.cli.{test}.{id}"),
            service: format!("t.cli.{test}.{id}"),
        }
    }

    fn config(&self) -> Config {
        let mut c = Config::new(BrokerUrl::parse(&broker_url()).expect("broker url"));
        c.exchange = self.exchange.clone();
        c.service = Some(self.service.clone());
        c
    }

    /// `tchu --exchange <ours> <args>`, with the broker from the test settings only.
    fn tchu(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tchu"));
        cmd.env_remove("AMQP_URL")
            .env_remove("TCHU_EXCHANGE")
            .env_remove("TCHU_FORMAT")
            .env("TCHU_BROKER_URL", broker_url())
            .arg("--exchange")
            .arg(&self.exchange)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn cleanup(&self, client: &Client) {
        for q in [
            self.service.clone(),
            format!("{}.dlq", self.service),
            format!("{}.tchu.bindings", self.service),
        ] {
            let _ = client.delete_queue(&q).await;
        }
        let _ = client.delete_exchange(&self.exchange).await;
        client.close().await;
    }
}

/// What a finished command printed.
#[derive(Debug)]
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command) -> Output {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("command timed out")
        .expect("command runs");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn run_ok(cmd: Command) -> Output {
    let out = run(cmd).await;
    assert!(out.ok, "command failed: {out:?}");
    out
}

/// Polls `f` until it is true, for at most [`WAIT`].
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tick.tick().await;
    }
}

#[tokio::test]
async fn publish_then_tail_shows_both_formats() {
    let names = Names::new("tail");
    let mut tail = names
        .tchu(&["tail", "cli.#", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    // Publish only once the tail's queue is bound: it says so on stderr.
    let mut stderr = BufReader::new(tail.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, stderr.next_line())
        .await
        .expect("no `listening` line in time")
        .expect("read stderr")
        .expect("tail exited early");
    assert!(line.contains("listening"), "{line}");

    let celery = run_ok(names.tchu(&["publish", "cli.hello", r#"{"greeting": "hi"}"#])).await;
    let celery_id = celery.stdout.trim().to_owned();
    assert_eq!(celery_id.len(), 36, "a uuid: {celery:?}");
    run_ok(names.tchu(&["publish", "other.topic", r#"{"ignored": true}"#])).await;
    let native = run_ok(names.tchu(&[
        "--format",
        "native",
        "publish",
        "cli.bye",
        r#"{"farewell": 1}"#,
    ]))
    .await;

    let out = tokio::time::timeout(WAIT, tail.wait_with_output())
        .await
        .expect("tail did not exit after 2 messages")
        .expect("tail output");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("# cli.hello  (celery, event, id {celery_id})")),
        "{stdout}"
    );
    assert!(stdout.contains(r#""greeting": "hi""#), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "# cli.bye  (native, event, id {})",
            native.stdout.trim()
        )),
        "{stdout}"
    );
    assert!(stdout.contains(r#""farewell": 1"#), "{stdout}");
    assert!(!stdout.contains("other.topic"), "{stdout}");

    let client = Client::connect(names.config()).await.unwrap();
    names.cleanup(&client).await;
}

#[tokio::test]
async fn call_prints_the_reply_or_the_error_kind() {
    let names = Names::new("call");
    let responder: Running = App::new(names.config())
        .only_module("none")
        .subscribe("cli.rpc.echo", "echo", |d: Arc<Delivery>| async move {
            Ok::<_, RpcError>(serde_json::json!({ "echo": d.event().clone() }))
        })
        .subscribe("cli.rpc.missing", "missing", |_d: Arc<Delivery>| async {
            Err::<(), _>(RpcError::new("NOT_FOUND", "no such user"))
        })
        .start()
        .await
        .expect("start responder");

    let out =
        run_ok(names.tchu(&["call", "cli.rpc.echo", r#"{"x": 1}"#, "--timeout", "10s"])).await;
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).expect("reply is JSON");
    assert_eq!(reply, serde_json::json!({ "echo": { "x": 1 } }));

    let out = run(names.tchu(&["call", "cli.rpc.missing", "{}", "--timeout", "10s"])).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("error[Remote]"), "{out:?}");
    assert!(out.stderr.contains("no such user"), "{out:?}");

    let out = run(names.tchu(&["call", "cli.rpc.nobody", "{}", "--timeout", "2s"])).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("error[NoRoute]"), "{out:?}");

    let out = run(names.tchu(&["call", "cli.rpc.echo", "not json"])).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("invalid JSON"), "{out:?}");

    let client = responder.client().clone();
    responder.shutdown().await;
    names.cleanup(&client).await;
}

#[tokio::test]
async fn dead_letters_list_show_replay_purge() {
    let names = Names::new("dlq");
    let svc = names.service.clone();
    let running = App::new(names.config())
        .only_module("none")
        .subscribe("cli.job.*", "broken", |_d: Arc<Delivery>| async {
            Err::<(), _>(HandlerError::permanent("disk on fire"))
        })
        .start()
        .await
        .expect("start service");
    let dead = |n: u64| {
        let r = &running;
        move || r.stats().dead_lettered >= n
    };

    run_ok(names.tchu(&["publish", "cli.job.a", r#"{"n": 1}"#])).await;
    run_ok(names.tchu(&["publish", "cli.job.b", r#"{"n": 2}"#])).await;
    wait_until("two dead letters", dead(2)).await;

    let list = run_ok(names.tchu(&["dlq", "list", &svc])).await;
    assert!(list.stdout.starts_with("#      TOPIC"), "{list:?}");
    assert!(list.stdout.contains("cli.job.a"), "{list:?}");
    assert!(list.stdout.contains("cli.job.b"), "{list:?}");
    assert!(list.stdout.contains("broken"), "{list:?}");
    assert!(list.stdout.contains("disk on fire"), "{list:?}");
    assert!(list.stderr.contains("2 dead letter(s)"), "{list:?}");

    let show = run_ok(names.tchu(&["dlq", "show", &svc, "0"])).await;
    assert!(
        show.stdout.contains("reason:         disk on fire"),
        "{show:?}"
    );
    assert!(show.stdout.contains("handler:        broken"), "{show:?}");
    assert!(
        show.stdout.contains("x-tchu-dead-letter-reason"),
        "{show:?}"
    );
    assert!(show.stdout.contains(r#""n": 1"#), "{show:?}");
    let missing = run(names.tchu(&["dlq", "show", &svc, "9"])).await;
    assert!(
        !missing.ok && missing.stderr.contains("no dead letter 9"),
        "{missing:?}"
    );

    // Paging.
    let page = run_ok(names.tchu(&["dlq", "list", &svc, "--skip", "1", "--limit", "5"])).await;
    assert!(page.stdout.contains("cli.job.b"), "{page:?}");
    assert!(!page.stdout.contains("cli.job.a"), "{page:?}");
    assert!(page.stderr.contains("1 dead letter(s)"), "{page:?}");
    // Listing removed nothing.
    let list = run_ok(names.tchu(&["dlq", "list", &svc])).await;
    assert!(list.stderr.contains("2 dead letter(s)"), "{list:?}");

    // Filters: a handler with no dead letter is refused with the ids there are; the topic
    // filter picks one.
    let none = run(names.tchu(&["dlq", "replay", &svc, "--filter-handler", "other"])).await;
    assert!(!none.ok, "{none:?}");
    assert!(
        none.stderr.contains("matches no dead letter") && none.stderr.contains("broken (2)"),
        "{none:?}"
    );
    let one = run_ok(names.tchu(&[
        "dlq",
        "replay",
        &svc,
        "--filter-handler",
        "broken",
        "--filter-topic",
        "cli.job.b",
    ]))
    .await;
    assert!(one.stdout.contains("replayed 1"), "{one:?}");
    // It fails again, permanently: back in the queue.
    wait_until("the replayed one dead again", dead(3)).await;

    // Purge asks first (stdin is empty here: no).
    let refused = run(names.tchu(&["dlq", "purge", &svc])).await;
    assert!(!refused.ok, "{refused:?}");
    assert!(refused.stderr.contains("[y/N]"), "{refused:?}");
    assert!(refused.stderr.contains("nothing purged"), "{refused:?}");
    let purge = run_ok(names.tchu(&["dlq", "purge", &svc, "--yes"])).await;
    assert!(purge.stdout.contains("purged 2"), "{purge:?}");
    let list = run_ok(names.tchu(&["dlq", "list", &svc])).await;
    assert!(list.stderr.contains("0 dead letter(s)"), "{list:?}");

    let client = running.client().clone();
    running.shutdown().await;
    names.cleanup(&client).await;
}

#[tokio::test]
async fn passwords_never_show() {
    let names = Names::new("secret");
    let password = "Sup3rSecretPw";
    let url = format!("amqp://guest:{password}@127.0.0.1:5672/%2f");
    let commands: [&[&str]; 5] = [
        &["publish", "cli.x", "{}"],
        &["call", "cli.x", "{}", "--timeout", "1s"],
        &["tail", "#", "--count", "1"],
        &["dlq", "list", "svc"],
        &["dlq", "purge", "svc"],
    ];
    for args in commands {
        // In `--url`...
        let mut cmd = names.tchu(&["--url", &url]);
        cmd.args(args);
        let out = run(cmd).await;
        assert!(!out.ok, "{args:?}: {out:?}");
        assert!(!out.stdout.contains(password), "{args:?}: {out:?}");
        assert!(!out.stderr.contains(password), "{args:?}: {out:?}");
        assert!(out.stderr.contains("guest:***@"), "{args:?}: {out:?}");
        // ... and in the environment.
        let mut cmd = names.tchu(args);
        cmd.env("TCHU_BROKER_URL", &url);
        let out = run(cmd).await;
        assert!(!out.ok, "{args:?}: {out:?}");
        assert!(!out.stdout.contains(password), "{args:?}: {out:?}");
        assert!(!out.stderr.contains(password), "{args:?}: {out:?}");
    }
    // A bad scheme is reported without the password too.
    let out = run(names.tchu(&[
        "--url",
        &format!("http://guest:{password}@host/"),
        "publish",
        "a.b",
        "{}",
    ]))
    .await;
    assert!(!out.ok);
    assert!(!out.stderr.contains(password), "{out:?}");
}
