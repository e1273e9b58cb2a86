//! `flotilla report` against a real coordinator with hosts in every status (separate
//! agent processes, a file store): statuses, summary, exit codes, label filter, CSV,
//! the JSON schema, and `--at` as the controllable clock.

use flotilla_tests::fleet::{Agent, Coordinator, free_port, job_state, wait_for};
use flotilla_tests::{TreeBuilder, deterministic_bytes};
use std::path::Path;
use std::time::Duration;

const PASSPHRASE: &str = "report-test-passphrase";

fn policies(root: &Path) -> String {
    format!(
        r#"
[destination.local]
kind = "file"
path = "{root}/store"

[policy.app]
select = {{ role = "app" }}
sources = ["{root}/src"]
destination = "local"
max_age = "1h"

[policy.tight]
select = {{ role = "tight" }}
sources = ["{root}/src"]
destination = "local"
max_age = "2s"

[policy.broken]
select = {{ role = "broken" }}
sources = ["{root}/fsrc"]
destination = "local"
max_age = "1h"
"#,
        root = root.display()
    )
}

fn report(c: &Coordinator, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["report"];
    args.extend_from_slice(extra);
    c.json(&args)
}

fn statuses(r: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["hostname"].as_str().unwrap().to_string(),
                h["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn report_shows_every_status_and_fails_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    TreeBuilder::new(root.join("src"))
        .file("a", deterministic_bytes(1, 10_000))
        .file("b/c", "c\n");
    TreeBuilder::new(root.join("fsrc")).file("x", "x\n");
    let metrics_port = free_port();
    let c = Coordinator::start(
        &root.join("coordinator"),
        &format!(
            "heartbeat_secs = 1\njob_retry_delay_secs = 1\njob_max_attempts = 1\n\
             offline_after_secs = 2\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"
        ),
    );
    let f = root.join("policies.toml");
    std::fs::write(&f, policies(root)).unwrap();
    c.json(&["policy", "apply", f.to_str().unwrap()]);
    let pass = [("FLOTILLA_PASSPHRASE", PASSPHRASE)];
    let mut agents = Vec::new();
    for (name, role) in [
        ("fresh", "app"),
        ("stale", "tight"),
        ("never", "app"),
        ("failing", "broken"),
        ("offline", "app"),
        ("unprotected", "other"),
    ] {
        let mut a = Agent::enroll(&c, root, name, &format!("role={role}"), &pass);
        a.start();
        agents.push(a);
    }
    let ids: std::collections::BTreeMap<String, String> = agents
        .iter()
        .map(|a| (a.name.clone(), a.host_id.clone()))
        .collect();
    let id = |name: &str| ids[name].clone();
    for name in ["fresh", "stale", "failing", "offline"] {
        let job = c.json(&["backup", &id(name), "--wait"]);
        assert_eq!(job_state(&job), "succeeded", "{name}: {job}");
    }
    // failing: its source disappears, the next backup fails
    std::fs::remove_dir_all(root.join("fsrc")).unwrap();
    let out = c.run(&["backup", &id("failing"), "--wait", "--json"]);
    assert!(!out.status.success(), "{out}");
    // offline: stopped, and not seen for longer than offline_after_secs
    agents
        .iter_mut()
        .find(|a| a.name == "offline")
        .unwrap()
        .kill();
    // a verified restore of fresh's backup
    c.admin()
        .args(["restore-test", &id("fresh")])
        .env("FLOTILLA_PASSPHRASE", PASSPHRASE)
        .run_ok();
    std::thread::sleep(Duration::from_secs(3)); // stale's max_age is 2 s

    let r = wait_for(Duration::from_secs(10), "the offline host", || {
        let r = report(&c, &[]);
        (statuses(&r)["offline"] == "offline").then_some(r)
    });
    let want: std::collections::BTreeMap<String, String> = [
        ("fresh", "fresh"),
        ("stale", "stale"),
        ("never", "never"),
        ("failing", "failing"),
        ("offline", "offline"),
        ("unprotected", "unprotected"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses(&r), want, "{r:#}");
    // worst first
    let order: Vec<&str> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "unprotected",
            "never",
            "stale",
            "failing",
            "offline",
            "fresh"
        ]
    );
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["summary"]["hosts"], 6);
    for s in [
        "fresh",
        "stale",
        "never",
        "failing",
        "offline",
        "unprotected",
    ] {
        assert_eq!(r["summary"]["by_status"][s], 1, "{s}: {r:#}");
    }
    let share = r["summary"]["fresh_share"].as_f64().unwrap();
    assert!((share - 1.0 / 6.0).abs() < 1e-9, "{share}");
    let host = |name: &str| {
        r["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hostname"] == name)
            .unwrap()
            .clone()
    };
    let fresh = host("fresh");
    for key in [
        "host_id",
        "policy",
        "max_age_secs",
        "last_success_at",
        "age_secs",
        "last_full_at",
        "chain_length",
        "consecutive_failures",
        "last_verified_restore_at",
        "encrypt_to",
        "agent_version",
        "policy_revision_applied",
        "policy_revision_wanted",
        "last_seen",
        "connected",
        "labels",
    ] {
        assert!(fresh.get(key).is_some(), "no {key}: {fresh:#}");
    }
    assert_eq!(fresh["policy"], "app");
    assert_eq!(fresh["max_age_secs"], 3600);
    assert_eq!(fresh["chain_length"], 1);
    assert!(
        fresh["last_verified_restore_at"].as_i64().unwrap() > 0,
        "{fresh:#}"
    );
    assert_eq!(fresh["policy_revision_applied"], 1);
    let failing = host("failing");
    assert_eq!(failing["consecutive_failures"], 1, "{failing:#}");
    assert!(
        failing["last_error"].as_str().unwrap().contains("fsrc"),
        "{failing:#}"
    );
    assert!(host("unprotected")["policy"].is_null());

    // Exit codes: 2 naming the hosts with --fail-on; 0 when none is in that state.
    let out = c.run(&["report", "--fail-on", "stale,failing"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.stderr_str().contains(&id("stale")) && out.stderr_str().contains(&id("failing")),
        "{out}"
    );
    let out = c.run(&["report", "--label", "role=app", "--fail-on", "stale"]);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(out.stdout_str().contains("% fresh"), "{out}");
    let out = c.run(&["report", "--fail-on", "sideways"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr_str().contains("sideways"), "{out}");

    // Label filter, CSV.
    let only = report(&c, &["--label", "role=tight"]);
    assert_eq!(statuses(&only).len(), 1);
    let csv = c.run(&["report", "--format", "csv"]);
    csv.assert_success();
    let text = csv.stdout_str().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[0].starts_with("host_id,hostname,status,"));

    // The same state as Prometheus metrics.
    let text = http_get(metrics_port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    let fresh_id = id("fresh");
    assert_eq!(
        value(&format!(
            "flotilla_host_status{{host=\"{fresh_id}\",status=\"fresh\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "flotilla_host_status{{host=\"{fresh_id}\",status=\"stale\"}}"
        )),
        0.0
    );
    assert_eq!(
        value(&format!(
            "flotilla_host_last_success_timestamp_seconds{{host=\"{fresh_id}\"}}"
        )),
        fresh["last_success_at"].as_f64().unwrap()
    );
    assert!(
        value(&format!(
            "flotilla_host_last_backup_bytes{{host=\"{fresh_id}\"}}"
        )) > 0.0
    );
    assert_eq!(
        value(&format!(
            "flotilla_host_consecutive_failures{{host=\"{}\"}}",
            id("failing")
        )),
        1.0
    );
    for s in [
        "fresh",
        "stale",
        "never",
        "failing",
        "offline",
        "unprotected",
    ] {
        assert_eq!(
            value(&format!("flotilla_hosts{{status=\"{s}\"}}")),
            1.0,
            "{s}"
        );
    }
    assert_eq!(
        value("flotilla_jobs_total{kind=\"backup\",state=\"failed\"}"),
        1.0
    );
    assert_eq!(
        value("flotilla_jobs_total{kind=\"backup\",state=\"succeeded\"}"),
        4.0
    );
    assert!(
        text.contains("# TYPE flotilla_jobs_total counter"),
        "{text}"
    );
    assert!(http_get(metrics_port, "/other").starts_with("HTTP/1.1 404"));

    // The clock: two hours on, the fresh host is stale too.
    let later = (chrono_now() + 7200).to_string();
    let r = report(&c, &["--at", &later]);
    assert_eq!(statuses(&r)["fresh"], "stale", "{r:#}");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
