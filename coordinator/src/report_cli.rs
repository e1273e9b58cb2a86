//! `flotilla report` output (part of the binary): the coordinator sends the report as
//! its JSON document; this renders it as a table, CSV, HTML or JSON.

use anyhow::{Context as _, Result};
use flotilla_coordinator::report::{FleetReport, HostStatus, SetMismatch};
use flotilla_coordinator::report_html::age_text;

/// Days of history the HTML page charts.
pub const HTML_HISTORY_DAYS: u32 = 30;

/// The coordinator's report, typed (one parse, no intermediate JSON tree: reports of
/// large fleets are megabytes).
pub fn parse(json: &str) -> Result<FleetReport> {
    serde_json::from_str(json).context("the coordinator's report does not have the expected schema")
}

/// The report in `format` (table, json, csv, html). JSON is the coordinator's document
/// as sent, pretty-printed.
pub fn render(json: &str, report: &FleetReport, format: &str) -> Result<String> {
    Ok(match format {
        "json" => {
            let value: serde_json::Value =
                serde_json::from_str(json).context("the coordinator's report")?;
            serde_json::to_string_pretty(&value)? + "\n"
        }
        "csv" => flotilla_coordinator::report::to_csv(report),
        "html" => flotilla_coordinator::report_html::to_html(report),
        _ => table(report) + &storage_table(report),
    })
}

/// Host ids whose status is one of `states`.
pub fn hosts_in(report: &FleetReport, states: &[HostStatus]) -> Vec<String> {
    report
        .hosts
        .iter()
        .filter(|h| states.contains(&h.status))
        .map(|h| h.host_id.clone())
        .collect()
}

fn mismatch_text(m: &SetMismatch) -> String {
    format!("{} {}: {}", m.kind, crate::time_text(m.end_time), m.problem)
}

/// With a storage check in the report: one line per disagreement (empty when storage
/// and catalog agree). None without a storage check.
pub fn storage_disagreements(report: &FleetReport) -> Option<Vec<String>> {
    let check = report.storage_check.as_ref()?;
    let mut lines = Vec::new();
    for h in &check.hosts {
        let id = &h.host_id;
        if let Some(e) = &h.error {
            lines.push(format!("{id}: storage could not be listed: {e}"));
        }
        for m in &h.missing_from_storage {
            lines.push(format!(
                "{id}: catalog set not usable in storage: {}",
                mismatch_text(m)
            ));
        }
        for m in &h.missing_from_catalog {
            lines.push(format!(
                "{id}: stored set missing from the catalog: {}",
                mismatch_text(m)
            ));
        }
    }
    Some(lines)
}

fn storage_table(report: &FleetReport) -> String {
    let Some(check) = &report.storage_check else {
        return String::new();
    };
    let rows = check.hosts.iter().map(|h| {
        let mut problems: Vec<String> = Vec::new();
        if let Some(e) = &h.error {
            problems.push(format!("listing failed: {e}"));
        }
        for m in &h.missing_from_storage {
            problems.push(format!("catalog has, storage lacks: {}", mismatch_text(m)));
        }
        for m in &h.missing_from_catalog {
            problems.push(format!("storage has, catalog lacks: {}", mismatch_text(m)));
        }
        if !h.note.is_empty() {
            problems.push(h.note.clone());
        }
        if h.incomplete_in_storage > 0 {
            problems.push(format!(
                "{} incomplete set(s) in storage (not counted)",
                h.incomplete_in_storage
            ));
        }
        vec![
            h.host_id.clone(),
            if h.destination.is_empty() {
                "-".into()
            } else {
                h.destination.clone()
            },
            h.catalog_sets.to_string(),
            h.storage_sets.to_string(),
            if problems.is_empty() {
                "agree".into()
            } else {
                problems.join("\n")
            },
        ]
    });
    format!(
        "\nStorage check ({} host(s) checked, {} disagree):\n{}",
        check.hosts_checked,
        check.hosts_differing,
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

fn table(report: &FleetReport) -> String {
    let rows = report.hosts.iter().map(|h| {
        let f = &h.facts;
        let failure = if f.consecutive_failures > 0 {
            format!(
                "{} ×{}: {}",
                crate::time_text(f.last_failure_at),
                f.consecutive_failures,
                f.last_error
            )
        } else {
            "-".into()
        };
        vec![
            h.host_id.clone(),
            h.status.as_str().to_string(),
            h.policy.clone().unwrap_or_else(|| "-".into()),
            crate::time_text(f.last_success_at),
            h.age_secs.map_or("-".into(), age_text),
            h.max_age_secs.map_or("-".into(), |s| age_text(s as i64)),
            if f.last_full_at > 0 {
                format!(
                    "{} (+{})",
                    crate::time_text(f.last_full_at),
                    f.chain_length.saturating_sub(1)
                )
            } else {
                "-".into()
            },
            crate::time_text(f.last_verified_restore_at),
            format!("{}/{}", h.policy_revision_applied, h.policy_revision_wanted),
            if h.connected {
                "connected".into()
            } else {
                crate::time_text(h.last_seen)
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
    let s = &report.summary;
    let counts: Vec<String> = HostStatus::ALL
        .iter()
        .filter_map(|st| {
            let n = s.by_status.get(st.as_str()).copied().unwrap_or(0);
            (n > 0).then(|| format!("{n} {}", st.as_str()))
        })
        .collect();
    out.push_str(&format!(
        "\n{} host(s): {}; {:.0}% fresh.\n",
        s.hosts,
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        },
        s.fresh_share * 100.0
    ));
    out
}
