//! `flotilla report` output (part of the binary): the coordinator sends the report as
//! its JSON document; this renders it as a table, CSV, HTML or JSON.

use anyhow::{Context as _, Result};
use flotilla_coordinator::report::{FleetReport, HostStatus};
use serde_json::Value;

/// Days of history the HTML page charts.
pub const HTML_HISTORY_DAYS: u32 = 30;

/// The report in `format` (table, json, csv, html).
pub fn render(report: &Value, format: &str) -> Result<String> {
    Ok(match format {
        "json" => serde_json::to_string_pretty(report)? + "\n",
        "csv" => flotilla_coordinator::report::to_csv(&typed(report)?),
        "html" => flotilla_coordinator::report_html::to_html(&typed(report)?),
        _ => table(report) + &storage_table(report),
    })
}

/// Through the typed report, so the CSV and HTML follow the schema.
fn typed(report: &Value) -> Result<FleetReport> {
    serde_json::from_value(report.clone())
        .context("the coordinator's report does not have the expected schema")
}

/// With a storage check in the report: one line per disagreement (empty when storage
/// and catalog agree). None without a storage check.
pub fn storage_disagreements(report: &Value) -> Option<Vec<String>> {
    let hosts = report["storage_check"]["hosts"].as_array()?;
    let mut lines = Vec::new();
    for h in hosts {
        let id = h["host_id"].as_str().unwrap_or("?");
        if let Some(e) = h["error"].as_str() {
            lines.push(format!("{id}: storage could not be listed: {e}"));
        }
        for (list, what) in [
            ("missing_from_storage", "catalog set not usable in storage"),
            (
                "missing_from_catalog",
                "stored set missing from the catalog",
            ),
        ] {
            for m in h[list].as_array().into_iter().flatten() {
                lines.push(format!(
                    "{id}: {what}: {} {}: {}",
                    m["kind"].as_str().unwrap_or(""),
                    crate::time_text(m["end_time"].as_i64().unwrap_or(0)),
                    m["problem"].as_str().unwrap_or("")
                ));
            }
        }
    }
    Some(lines)
}

fn storage_table(report: &Value) -> String {
    let check = &report["storage_check"];
    let Some(hosts) = check["hosts"].as_array() else {
        return String::new();
    };
    let rows = hosts.iter().map(|h| {
        let mut problems: Vec<String> = Vec::new();
        if let Some(e) = h["error"].as_str() {
            problems.push(format!("listing failed: {e}"));
        }
        for (list, prefix) in [
            ("missing_from_storage", "catalog has, storage lacks"),
            ("missing_from_catalog", "storage has, catalog lacks"),
        ] {
            for m in h[list].as_array().into_iter().flatten() {
                problems.push(format!(
                    "{prefix}: {} {}: {}",
                    m["kind"].as_str().unwrap_or(""),
                    crate::time_text(m["end_time"].as_i64().unwrap_or(0)),
                    m["problem"].as_str().unwrap_or("")
                ));
            }
        }
        if let Some(note) = h["note"].as_str() {
            problems.push(note.to_string());
        }
        let incomplete = h["incomplete_in_storage"].as_u64().unwrap_or(0);
        if incomplete > 0 {
            problems.push(format!(
                "{incomplete} incomplete set(s) in storage (not counted)"
            ));
        }
        vec![
            h["host_id"].as_str().unwrap_or("").to_string(),
            h["destination"].as_str().unwrap_or("-").to_string(),
            h["catalog_sets"].as_u64().unwrap_or(0).to_string(),
            h["storage_sets"].as_u64().unwrap_or(0).to_string(),
            if problems.is_empty() {
                "agree".into()
            } else {
                problems.join("\n")
            },
        ]
    });
    format!(
        "\nStorage check ({} host(s) checked, {} disagree):\n{}",
        check["hosts_checked"].as_u64().unwrap_or(0),
        check["hosts_differing"].as_u64().unwrap_or(0),
        crate::table(
            &[
                "HOST",
                "DESTINATION",
                "CATALOG SETS",
                "STORED SETS",
                "PROBLEMS"
            ],
            rows
        )
    )
}

/// Host ids whose status is one of `states`.
pub fn hosts_in(report: &Value, states: &[HostStatus]) -> Vec<String> {
    let words: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    report["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter(|h| h["status"].as_str().is_some_and(|s| words.contains(&s)))
                .filter_map(|h| h["host_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn age_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn table(report: &Value) -> String {
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let rows = report["hosts"].as_array().into_iter().flatten().map(|h| {
        let failure = if int(&h["consecutive_failures"]) > 0 {
            format!(
                "{} ×{}: {}",
                crate::time_text(int(&h["last_failure_at"])),
                int(&h["consecutive_failures"]),
                h["last_error"].as_str().unwrap_or("")
            )
        } else {
            "-".into()
        };
        vec![
            h["host_id"].as_str().unwrap_or("").to_string(),
            h["status"].as_str().unwrap_or("").to_string(),
            h["policy"].as_str().unwrap_or("-").to_string(),
            crate::time_text(int(&h["last_success_at"])),
            h["age_secs"].as_i64().map_or("-".into(), age_text),
            h["max_age_secs"].as_i64().map_or("-".into(), age_text),
            if int(&h["last_full_at"]) > 0 {
                format!(
                    "{} (+{})",
                    crate::time_text(int(&h["last_full_at"])),
                    int(&h["chain_length"]).saturating_sub(1)
                )
            } else {
                "-".into()
            },
            crate::time_text(int(&h["last_verified_restore_at"])),
            format!(
                "{}/{}",
                int(&h["policy_revision_applied"]),
                int(&h["policy_revision_wanted"])
            ),
            if h["connected"].as_bool() == Some(true) {
                "connected".into()
            } else {
                crate::time_text(int(&h["last_seen"]))
            },
            failure,
        ]
    });
    let mut out = crate::table(
        &[
            "HOST",
            "STATUS",
            "POLICY",
            "LAST BACKUP",
            "AGE",
            "MAX AGE",
            "FULL (+INCR)",
            "LAST VERIFIED RESTORE",
            "REV",
            "SEEN",
            "LAST FAILURE",
        ],
        rows,
    );
    let s = &report["summary"];
    let counts: Vec<String> = HostStatus::ALL
        .iter()
        .filter_map(|st| {
            let n = s["by_status"][st.as_str()].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{n} {}", st.as_str()))
        })
        .collect();
    out.push_str(&format!(
        "\n{} host(s): {}; {:.0}% fresh.\n",
        s["hosts"].as_u64().unwrap_or(0),
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        },
        s["fresh_share"].as_f64().unwrap_or(0.0) * 100.0
    ));
    out
}
