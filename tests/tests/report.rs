//! `flotilla report` against a real coordinator with hosts in every status (separate
//! agent processes, a file store): statuses, summary, exit codes, label filter, CSV,
//! the JSON schema, `--at` as the controllable clock, the HTML page rendered by headless
//! Chromium, and `--check-storage` against a damaged store.

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
sources = ["{root}/f<b>src"]
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
    TreeBuilder::new(root.join("f<b>src")).file("x", "x\n");
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
    std::fs::remove_dir_all(root.join("f<b>src")).unwrap();
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
        failing["last_error"].as_str().unwrap().contains("f<b>src"),
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

    html_page_renders_in_chromium(&c, root, &id);
    storage_check_names_what_storage_and_catalog_disagree_on(&c, root, &id);
}

/// The rows of the hosts table as Chromium left them: (host id, status, age sort key).
fn dom_rows(dom: &str) -> Vec<(String, String, i64)> {
    let attr = |s: &str, name: &str| -> String {
        let start = s
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in {s}"))
            + name.len()
            + 2;
        s[start..start + s[start..].find('"').unwrap()].to_string()
    };
    let table = &dom[dom.find("<table id=\"hosts\"").expect("hosts table")..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<tr data-order=")
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row.split("<td data-sort=\"").skip(1).collect();
            let age = cells[3][..cells[3].find('"').unwrap()].parse().unwrap();
            (attr(row, "data-host"), attr(row, "data-status"), age)
        })
        .collect()
}

fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian package chromium; deploy/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn html_page_renders_in_chromium(c: &Coordinator, root: &Path, id: &dyn Fn(&str) -> String) {
    let out = c.run(&["report", "--format", "html"]);
    out.assert_success();
    let html = out.stdout_str();
    let page = root.join("report.html");
    std::fs::write(&page, &html).unwrap();
    // Self-contained: nothing loaded from elsewhere.
    for external in ["<link", " src=", "href=", "@import"] {
        assert!(!html.contains(external), "{external} in the page");
    }
    // url() only for the page's own SVG pattern.
    assert!(
        html.split("url(").skip(1).all(|rest| rest.starts_with('#')),
        "url() to elsewhere in the page"
    );
    assert!(html.contains("<svg class=\"strip\""), "no freshness strip");
    let url = |fragment: &str| format!("file://{}{fragment}", page.display());
    let profile = root.join("chromium-profile");

    // The page's own order (worst first), escaped text, the strips, the summary.
    let dom = String::from_utf8(chromium(&profile, &["--dump-dom", &url("")]).stdout).unwrap();
    let rows = dom_rows(&dom);
    let order: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        order,
        [
            "unprotected",
            "never",
            "stale",
            "failing",
            "offline",
            "fresh"
        ],
        "{dom}"
    );
    let failing_row = &dom[dom
        .find(&format!("data-host=\"{}\"", id("failing")))
        .unwrap()..];
    let failing_row = &failing_row[..failing_row.find("</tr>").unwrap()];
    assert!(failing_row.contains("f&lt;b&gt;src"), "{failing_row}");
    assert!(
        !failing_row.contains("<b>src"),
        "markup from an error message: {failing_row}"
    );
    let row_of = |name: &str| {
        let r = &dom[dom.find(&format!("data-host=\"{}\"", id(name))).unwrap()..];
        r[..r.find("</tr>").unwrap()].to_string()
    };
    // Days per state: the strip draws runs of days (data-days each).
    let cells = |row: &str, state: &str| -> usize {
        row.split(&format!("data-state=\"{state}\" data-days=\""))
            .skip(1)
            .map(|rest| rest[..rest.find('"').unwrap()].parse::<usize>().unwrap())
            .sum()
    };
    // Backed up today: 29 days before the first backup, today fresh (or stale for the
    // host whose max_age is 2 s); never: 30 days without a backup.
    let (fresh, stale) = (row_of("fresh"), row_of("stale"));
    assert!(cells(&fresh, "fresh") >= 1, "{fresh}");
    assert_eq!(
        cells(&fresh, "no backup yet") + cells(&fresh, "fresh"),
        30,
        "{fresh}"
    );
    assert!(cells(&stale, "stale") >= 1, "{stale}");
    assert_eq!(
        cells(&stale, "no backup yet") + cells(&stale, "stale"),
        30,
        "{stale}"
    );
    assert_eq!(cells(&row_of("never"), "no backup yet"), 30);
    assert!(dom.contains("data-status=\"fresh\""));
    let summary = &dom[dom.find("id=\"summary\"").unwrap()..];
    assert!(summary.contains("<b>17%</b>of hosts fresh"), "{summary}");

    // Sorting by a fragment: age, oldest last (never backed up sorts oldest); status,
    // best first.
    let dom =
        String::from_utf8(chromium(&profile, &["--dump-dom", &url("#sort=age")]).stdout).unwrap();
    assert!(
        dom.contains("data-sorted=\"age\""),
        "the script did not run"
    );
    let ages: Vec<i64> = dom_rows(&dom).iter().map(|r| r.2).collect();
    assert!(ages.windows(2).all(|w| w[0] <= w[1]), "{ages:?}");
    let tail: Vec<String> = dom_rows(&dom)[4..].iter().map(|r| r.1.clone()).collect();
    assert_eq!(tail, ["unprotected", "never"]);
    let dom = String::from_utf8(chromium(&profile, &["--dump-dom", &url("#sort=-status")]).stdout)
        .unwrap();
    let order: Vec<String> = dom_rows(&dom).iter().map(|r| r.1.clone()).collect();
    assert_eq!(
        order,
        [
            "fresh",
            "offline",
            "failing",
            "stale",
            "never",
            "unprotected"
        ]
    );

    // A screenshot for people to look at (kept under the target directory).
    let shot = root.join("report.png");
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1500,700",
            &url(""),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    std::fs::copy(&shot, &keep).unwrap();
    std::fs::copy(&page, keep.with_extension("html")).unwrap();
    eprintln!("screenshot: {}", keep.display());
}

fn storage_check_names_what_storage_and_catalog_disagree_on(
    c: &Coordinator,
    root: &Path,
    id: &dyn Fn(&str) -> String,
) {
    let check = |extra: &[&str]| {
        let mut args = vec!["report", "--check-storage", "--json"];
        args.extend_from_slice(extra);
        let out = c.run(&args);
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
        (out, json["storage_check"].clone())
    };
    let host = |check: &serde_json::Value, name: &str| {
        check["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host_id"] == id(name).as_str())
            .unwrap_or_else(|| panic!("no {name} in {check:#}"))
            .clone()
    };
    let (out, sc) = check(&[]);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert_eq!(sc["hosts_checked"], 5, "{sc:#}");
    assert_eq!(sc["hosts_differing"], 0, "{sc:#}");
    assert!(
        host(&sc, "unprotected")["note"]
            .as_str()
            .unwrap()
            .contains("no policy")
    );
    assert_eq!(host(&sc, "fresh")["catalog_sets"], 1);
    assert_eq!(host(&sc, "fresh")["storage_sets"], 1);

    let dir = |name: &str| root.join("store").join(format!("flotilla-{}", id(name)));
    let files = |name: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir(name))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    };
    // stale: its only volume is lost.
    let vol = files("stale")
        .into_iter()
        .find(|p| p.to_string_lossy().contains(".vol1.difftar"))
        .expect("a volume");
    std::fs::remove_file(vol).unwrap();
    // offline: the whole set is deleted.
    for f in files("offline") {
        std::fs::remove_file(f).unwrap();
    }
    // fresh: a complete set appears in storage that the catalog never heard of (a
    // copy of its full under a later time).
    for f in files("fresh") {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let stamp = name.split('.').nth(1).unwrap().to_string();
        std::fs::copy(
            &f,
            dir("fresh").join(name.replace(&stamp, "20300101T000000Z")),
        )
        .unwrap();
    }

    let (out, sc) = check(&[]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(sc["hosts_differing"], 3, "{sc:#}");
    let stale = host(&sc, "stale");
    assert!(
        stale["missing_from_storage"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("volume(s) 1 missing"),
        "{stale:#}"
    );
    let offline = host(&sc, "offline");
    assert_eq!(offline["storage_sets"], 0);
    assert!(
        offline["missing_from_storage"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("not in storage"),
        "{offline:#}"
    );
    let fresh = host(&sc, "fresh");
    assert_eq!(
        fresh["missing_from_storage"],
        serde_json::json!([]),
        "{fresh:#}"
    );
    assert_eq!(
        fresh["missing_from_catalog"][0]["kind"], "full",
        "{fresh:#}"
    );
    assert_eq!(
        fresh["missing_from_catalog"][0]["end_time"], 1_893_456_000,
        "{fresh:#}"
    );
    for name in ["stale", "offline", "fresh"] {
        assert!(out.stderr_str().contains(&id(name)), "{name}: {out}");
    }
    assert!(
        host(&sc, "failing")["missing_from_storage"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The table says the same to a person; the label filter narrows the check.
    let out = c.run(&["report", "--check-storage", "--label", "role=tight"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    let text = out.stdout_str();
    assert!(
        text.contains("Storage check (1 host(s) checked, 1 disagree)"),
        "{text}"
    );
    assert!(text.contains("volume(s) 1 missing"), "{text}");
    assert!(!text.contains(&id("offline")), "{text}");

    // catalog rebuild takes in what storage has: fresh agrees again.
    c.json(&["catalog", "rebuild", "--host", &id("fresh")]);
    let (_, sc) = check(&[]);
    assert!(
        host(&sc, "fresh")["missing_from_catalog"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{sc:#}"
    );
    assert_eq!(sc["hosts_differing"], 2, "{sc:#}");
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
