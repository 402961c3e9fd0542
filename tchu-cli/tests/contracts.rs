//! `tchu lint`, `tchu diff` and `tchu map` on the example fleet's catalog files
//! (`tests/contracts/fleet/`, written by the examples' `--catalog`; `.ci/contracts.sh` checks
//! they are current), with seeded mistakes, and the diff suite (`tests/contracts/diff-suite.json`).
//! No broker needed: `cargo test -p tchu-cli --test contracts`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn fleet_dir() -> PathBuf {
    std::env::var_os("TCHU_FLEET_CATALOGS")
        .map_or_else(|| repo().join("tests/contracts/fleet"), PathBuf::from)
}

fn fleet() -> Vec<(String, Value)> {
    ["users", "notifications", "analytics", "rpc"]
        .iter()
        .map(|s| {
            let text = std::fs::read_to_string(fleet_dir().join(format!("{s}.json")))
                .unwrap_or_else(|e| panic!("{s}.json: {e}"));
            ((*s).to_owned(), serde_json::from_str(&text).expect("JSON"))
        })
        .collect()
}

/// A scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let d = std::env::temp_dir().join(format!("tchu-contracts-{test}-{id}"));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write_all(dir: &Path, files: &[(String, Value)]) -> Vec<PathBuf> {
    files
        .iter()
        .map(|(name, v)| {
            let p = dir.join(format!("{name}.json"));
            std::fs::write(&p, serde_json::to_string_pretty(v).expect("JSON")).expect("write");
            p
        })
        .collect()
}

fn tchu(args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tchu"))
        .args(args)
        .env_remove("TCHU_BROKER_URL")
        .output()
        .expect("run tchu")
}

fn lint(files: &[(String, Value)], test: &str) -> (i32, Value, String) {
    let dir = scratch(test);
    let paths = write_all(&dir, files);
    let mut args: Vec<&std::ffi::OsStr> = vec!["lint".as_ref(), "--json".as_ref()];
    args.extend(paths.iter().map(|p| p.as_os_str()));
    let json_out = tchu(&args);
    args.remove(1);
    let text_out = tchu(&args);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(json_out.status.code(), text_out.status.code());
    let report: Value = serde_json::from_slice(&json_out.stdout).expect("JSON report");
    (
        json_out.status.code().expect("exit code"),
        report,
        String::from_utf8_lossy(&text_out.stdout).into_owned(),
    )
}

fn with(files: &[(String, Value)], name: &str, f: impl FnOnce(&mut Value)) -> Vec<(String, Value)> {
    let mut out = files.to_vec();
    let entry = out.iter_mut().find(|(n, _)| n == name).expect("service");
    f(&mut entry.1);
    out
}

fn findings<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

#[test]
fn the_example_fleet_passes() {
    let (code, report, text) = lint(&fleet(), "clean");
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["warnings"], 0);
    assert_eq!(
        report["services"],
        json!(["users", "notifications", "analytics", "rpc"])
    );
    assert!(
        text.contains("0 error(s), 0 warning(s) in 4 catalog(s)"),
        "{text}"
    );
}

#[test]
fn a_pattern_typo_is_found_with_a_suggestion() {
    let files = with(&fleet(), "notifications", |n| {
        n["subscribes"][0]["pattern"] = json!("user.craeted");
        n["subscribes"][0]["event"] = Value::Null;
        n["subscribes"][0]["schema"] = Value::Null;
    });
    let (code, report, text) = lint(&files, "typo");
    assert_eq!(code, 1);
    let f = findings(&report, "unmatched-subscription");
    assert_eq!(f.len(), 1, "{text}");
    assert_eq!(f[0]["pattern"], "user.craeted");
    assert_eq!(f[0]["services"], json!(["notifications"]));
    assert!(text.contains("did you mean `user.created`?"), "{text}");
    // Nobody receives user.created any more: a warning too.
    assert_eq!(
        findings(&report, "unconsumed-topic").len(),
        0,
        "analytics takes `#`"
    );
}

#[test]
fn a_renamed_field_breaks_the_typed_handler() {
    let files = with(&fleet(), "users", |u| {
        let s = &mut u["schemas"]["UserCreated"];
        let email = s["properties"]["email"].take();
        let props = s["properties"].as_object_mut().expect("properties");
        props.remove("email");
        props.insert("email_address".into(), email);
        s["required"] = json!(["user_id", "email_address"]);
    });
    let (code, report, text) = lint(&files, "renamed");
    assert_eq!(code, 1);
    let f = findings(&report, "incompatible-handler");
    assert_eq!(f.len(), 1, "{text}");
    assert_eq!(f[0]["services"], json!(["notifications", "users"]));
    assert_eq!(f[0]["topic"], "user.created");
    assert_eq!(
        f[0]["fields"],
        json!(["field `email`: required by the receiver, not sent by the sender"])
    );
    assert!(text.contains("notifications::send_welcome"), "{text}");
}

#[test]
fn a_type_mismatch_breaks_the_typed_handler() {
    let files = with(&fleet(), "users", |u| {
        u["schemas"]["UserCreated"]["properties"]["user_id"] = json!({"type": "string"});
    });
    let (code, report, text) = lint(&files, "mismatch");
    assert_eq!(code, 1);
    let f = findings(&report, "incompatible-handler");
    assert_eq!(f.len(), 1, "{text}");
    assert_eq!(
        f[0]["fields"],
        json!([
            "field `user_id`: type mismatch: the sender sends string, the receiver accepts integer"
        ])
    );
}

#[test]
fn a_second_rpc_responder_is_found() {
    let fleet = fleet();
    let rpc = fleet
        .iter()
        .find(|(n, _)| n == "rpc")
        .expect("rpc")
        .1
        .clone();
    let files = with(&fleet, "analytics", |a| {
        let mut served = rpc["serves"][0].clone();
        served["handler"] = json!("analytics::validate");
        a["serves"] = json!([served]);
        a["schemas"] = rpc["schemas"].clone();
    });
    let (code, report, text) = lint(&files, "responders");
    assert_eq!(code, 1);
    let f = findings(&report, "rpc-several-responders");
    assert_eq!(f.len(), 1, "{text}");
    assert_eq!(f[0]["topic"], "rpc.users.validate");
    assert_eq!(f[0]["services"], json!(["analytics", "rpc"]));
    assert!(text.contains("analytics `analytics::validate`"), "{text}");
}

#[test]
fn an_rpc_topic_removed_leaves_its_callers_without_responder() {
    let files = with(&fleet(), "rpc", |r| r["serves"] = json!([]));
    let (code, report, text) = lint(&files, "removed");
    assert_eq!(code, 1);
    let f = findings(&report, "rpc-no-responder");
    assert_eq!(f.len(), 1, "{text}");
    assert_eq!(f[0]["topic"], "rpc.users.validate");
    // And `tchu diff` calls it breaking.
    let old = fleet().into_iter().find(|(n, _)| n == "rpc").expect("rpc");
    let new = files.into_iter().find(|(n, _)| n == "rpc").expect("rpc");
    let (code, report) = diff(&old.1, &new.1, false, "rpc-removed");
    assert_eq!(code, 1);
    assert_eq!(report["changes"][0]["kind"], "rpc-removed");
}

#[test]
fn conflicting_schemas_and_unconsumed_topics() {
    let mut files = fleet();
    // A Python service (described by hand) publishing user.created with another shape.
    files.push((
        "legacy".into(),
        json!({
            "tchu_catalog": 1,
            "service": "legacy",
            "language": "python",
            "publishes": [
                { "topic": "user.created", "schema": {
                    "type": "object",
                    "properties": { "user_id": { "type": "string" } },
                    "required": ["user_id"] } },
                { "topic": "legacy.audit" }
            ]
        }),
    ));
    files = with(&files, "analytics", |a| {
        a["subscribes"][0]["pattern"] = json!("user.#")
    });
    let (code, report, text) = lint(&files, "conflict");
    assert_eq!(code, 1);
    let c = findings(&report, "conflicting-schemas");
    assert_eq!(c.len(), 1, "{text}");
    assert_eq!(c[0]["services"], json!(["legacy", "users"]));
    let h = findings(&report, "incompatible-handler");
    assert_eq!(h.len(), 1, "{text}");
    assert_eq!(h[0]["services"], json!(["legacy", "notifications"]));
    let w = findings(&report, "unconsumed-topic");
    assert_eq!(w.len(), 1, "{text}");
    assert_eq!(w[0]["severity"], "warning");
    assert_eq!(w[0]["topic"], "legacy.audit");
    assert!(text.contains("warning[unconsumed-topic]: `legacy.audit` is published by legacy"));
}

#[test]
fn a_python_service_described_by_hand_is_linted() {
    let text = std::fs::read_to_string(repo().join("tests/contracts/python-billing.json"))
        .expect("example file");
    let billing: Value = serde_json::from_str(&text).expect("JSON");
    let mut files = fleet();
    files.push(("billing".into(), billing));
    let (code, report, out) = lint(&files, "python");
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["errors"], 0);
}

fn diff(old: &Value, new: &Value, allow: bool, test: &str) -> (i32, Value) {
    let dir = scratch(test);
    let paths = write_all(
        &dir,
        &[("old".into(), old.clone()), ("new".into(), new.clone())],
    );
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "diff".as_ref(),
        "--json".as_ref(),
        paths[0].as_os_str(),
        paths[1].as_os_str(),
    ];
    if allow {
        args.push("--allow-breaking".as_ref());
    }
    let out = tchu(&args);
    std::fs::remove_dir_all(&dir).ok();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exit code"), report)
}

/// One service's catalog with the case's schema in its place.
fn catalog_for(case: &Value, side: &str) -> Value {
    let schema = &case[side];
    let mut c = json!({ "tchu_catalog": 1, "service": "svc", "version": side,
        "publishes": [], "subscribes": [], "serves": [], "calls": [] });
    if let Some(s) = case.get(format!("{side}_schemas")) {
        c["schemas"] = s.clone();
    }
    let topic = match (side, case.get("new_topic")) {
        ("new", Some(t)) => t.clone(),
        _ => json!("user.created"),
    };
    let reply = match (side, case.get("new_reply")) {
        ("new", Some(r)) => r.clone(),
        _ => json!("Reply"),
    };
    let any = json!({"type": "object"});
    match case["kind"].as_str().expect("kind") {
        "publish" if !schema.is_null() => {
            c["publishes"] =
                json!([{ "topic": topic, "type": "svc::UserCreated", "schema": schema }]);
        }
        "subscribe" if !schema.is_null() => {
            c["subscribes"] = json!([{ "id": "svc::on_user", "pattern": "user.created",
                "event": "svc::UserCreated", "schema": schema }]);
        }
        "serve-reply" => {
            let mut s = json!({ "topic": "rpc.check", "handler": "svc::check",
                "schema": any, "reply": reply });
            if !schema.is_null() {
                s["reply_schema"] = schema.clone();
            }
            c["serves"] = json!([s]);
        }
        "serve-request" if !schema.is_null() => {
            c["serves"] = json!([{ "topic": "rpc.check", "handler": "svc::check",
                "schema": schema, "reply": "Reply", "reply_schema": any }]);
        }
        _ => {}
    }
    c
}

#[test]
fn the_diff_suite_gives_each_pair_its_verdict() {
    let text = std::fs::read_to_string(repo().join("tests/contracts/diff-suite.json"))
        .expect("diff suite");
    let suite: Value = serde_json::from_str(&text).expect("JSON");
    let cases = suite["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let (code, report) = diff(
            &catalog_for(case, "old"),
            &catalog_for(case, "new"),
            false,
            "suite",
        );
        let changes = report["changes"].as_array().expect("changes");
        let want = case["verdict"].as_str().expect("verdict");
        let ok = match want {
            "none" => changes.is_empty() && code == 0,
            "breaking" => {
                code == 1
                    && changes
                        .iter()
                        .any(|c| c["verdict"] == "breaking" && c["kind"] == case["change"])
            }
            _ => {
                code == 0
                    && report["breaking"] == 0
                    && changes.iter().any(|c| c["kind"] == case["change"])
            }
        };
        if !ok {
            failures.push(format!("{name}: want {want}, got exit {code}: {report}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn breaking_changes_can_be_allowed() {
    let users = fleet()
        .into_iter()
        .find(|(n, _)| n == "users")
        .expect("users")
        .1;
    let mut new = users.clone();
    new["publishes"] = json!([users["publishes"][0].clone()]);
    let (code, report) = diff(&users, &new, false, "deny");
    assert_eq!((code, report["breaking"].clone()), (1, json!(1)));
    assert_eq!(report["changes"][0]["subject"], "user.deleted");
    let (code, _) = diff(&users, &new, true, "allow");
    assert_eq!(code, 0);
}

#[test]
fn other_format_versions_and_services_are_refused() {
    let dir = scratch("refused");
    let users = fleet()
        .into_iter()
        .find(|(n, _)| n == "users")
        .expect("users")
        .1;
    let mut v2 = users.clone();
    v2["tchu_catalog"] = json!(2);
    let mut other = users.clone();
    other["service"] = json!("billing");
    let p = write_all(
        &dir,
        &[
            ("v2".into(), v2),
            ("users".into(), users),
            ("other".into(), other),
        ],
    );
    let out = tchu(&["lint".as_ref(), p[0].as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("catalog format 2; this tchu reads format 1"),
        "{err}"
    );
    let out = tchu(&["diff".as_ref(), p[1].as_os_str(), p[2].as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("diff compares two versions of one service"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_map_is_one_self_contained_page() {
    let dir = scratch("map");
    let out_path = dir.join("fleet.html");
    let out = tchu(&[
        "map".as_ref(),
        fleet_dir().as_os_str(),
        repo()
            .join("tests/contracts/python-billing.json")
            .as_os_str(),
        "-o".as_ref(),
        out_path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&out_path).expect("page");
    std::fs::remove_dir_all(&dir).ok();
    for id in [
        "out:users",
        "out:billing",
        "topic:user.created",
        "topic:rpc.users.validate",
        "topic:billing.invoice.paid",
        "pattern:#",
        "pattern:user.created",
        "in:notifications",
        "in:analytics",
        "in:rpc",
        "in:billing",
    ] {
        assert!(page.contains(&format!("data-id=\"{id}\"")), "{id} drawn");
    }
    assert!(
        page.contains(r#"class="node service python""#),
        "billing is marked Python"
    );
    assert!(page.contains("5 services, 4 topics, 3 patterns"), "summary");
    // Nothing is fetched at view time: the only URL is the SVG namespace.
    let urls: Vec<&str> = page
        .match_indices("http")
        .map(|(i, _)| &page[i..i + 27])
        .collect();
    assert_eq!(
        urls,
        [
            "http-equiv=\"Content-Securit",
            "http://www.w3.org/2000/svg\""
        ]
    );
    assert!(!page.contains(" src=") && !page.contains("@import") && !page.contains("url(http"));
}
