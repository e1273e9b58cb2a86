//! The freshness report (`flotilla report`): one row per host — is it backed up,
//! recently, restorably? — and a fleet summary. Built in one pass over each catalog
//! tree (hosts, sets, jobs, restore evidence), so its cost grows with the catalog, not
//! with hosts × sets. The status rules are in [`classify`], a pure function.

use crate::catalog::{Catalog, CatalogError, HostRecord, JobKind, JobState};
use flotilla_common::policy::Policy;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Version of the report's JSON document (bumped on incompatible changes).
pub const SCHEMA_VERSION: u32 = 1;

/// One word per host, by severity: the first rule that holds wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// No policy selects the host's labels: nothing backs it up.
    Unprotected,
    /// Enrolled and selected by a policy, no successful backup yet.
    Never,
    /// The last successful backup is older than the policy's `max_age`.
    Stale,
    /// The last backup job failed (after its retries).
    Failing,
    /// Not connected, and not seen within the offline window.
    Offline,
    Fresh,
}

impl HostStatus {
    pub const ALL: [HostStatus; 6] = [
        HostStatus::Unprotected,
        HostStatus::Never,
        HostStatus::Stale,
        HostStatus::Failing,
        HostStatus::Offline,
        HostStatus::Fresh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Unprotected => "unprotected",
            HostStatus::Never => "never",
            HostStatus::Stale => "stale",
            HostStatus::Failing => "failing",
            HostStatus::Offline => "offline",
            HostStatus::Fresh => "fresh",
        }
    }

    pub fn parse(word: &str) -> Option<HostStatus> {
        HostStatus::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// What the catalog says about one host's backups, gathered in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// End time of the newest set (unix seconds; 0: none).
    pub last_success_at: i64,
    pub last_backup_bytes: u64,
    pub last_full_at: i64,
    /// Sets in the newest chain (its full and the incrementals after it).
    pub chain_length: u32,
    /// The newest failed backup job, if no successful one came after it.
    pub last_failure_at: i64,
    pub last_error: String,
    /// Failed backup jobs since the last successful one.
    pub consecutive_failures: u32,
    /// When the newest successful backup job finished (0: none through a job).
    pub last_success_job_at: i64,
    /// How long that job ran (seconds).
    #[serde(default)]
    pub last_backup_duration_secs: i64,
    /// The newest restore or drill of this host's backups that succeeded verified.
    pub last_verified_restore_at: i64,
    pub last_verified_restore_drill: bool,
}

/// When a status is computed, and how long "offline" is.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub now: i64,
    pub offline_after_secs: i64,
    /// Only hosts with all these labels.
    pub labels: BTreeMap<String, String>,
}

/// The status rules, in order: unprotected (no policy), never (no successful backup),
/// stale (older than `max_age`), failing (the last backup job failed), offline (not
/// connected and not seen within the window), else fresh.
pub fn classify(
    host: &HostRecord,
    facts: &HostFacts,
    policy: Option<&Policy>,
    connected: bool,
    opts: &ReportOptions,
) -> HostStatus {
    let Some(policy) = policy else {
        return HostStatus::Unprotected;
    };
    if facts.last_success_at == 0 {
        return HostStatus::Never;
    }
    if let Some(max_age) = policy.max_age_secs
        && opts.now - facts.last_success_at > max_age as i64
    {
        return HostStatus::Stale;
    }
    if facts.consecutive_failures > 0 {
        return HostStatus::Failing;
    }
    if !connected && opts.now - host.last_seen > opts.offline_after_secs {
        return HostStatus::Offline;
    }
    HostStatus::Fresh
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRow {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub status: HostStatus,
    pub policy: Option<String>,
    pub max_age_secs: Option<u64>,
    /// Seconds since the last successful backup (None: never).
    pub age_secs: Option<i64>,
    #[serde(flatten)]
    pub facts: HostFacts,
    pub encrypt_to: Vec<String>,
    pub agent_version: String,
    pub policy_revision_applied: u64,
    pub policy_revision_wanted: u64,
    pub last_seen: i64,
    pub connected: bool,
}

/// Hosts per status and the share that is fresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub hosts: usize,
    pub by_status: BTreeMap<String, usize>,
    /// Fresh hosts / hosts (1.0 for an empty selection).
    pub fresh_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetReport {
    pub schema_version: u32,
    pub generated_at: i64,
    pub offline_after_secs: i64,
    pub summary: Summary,
    pub hosts: Vec<HostRow>,
}

/// Builds the report from the catalog. `policy_for` resolves a host's policy,
/// `connected` says whether it has a session now.
pub fn build<'p>(
    catalog: &Catalog,
    policy_for: impl Fn(&BTreeMap<String, String>) -> Option<&'p Policy>,
    wanted_revision: u64,
    connected: impl Fn(&str) -> bool,
    opts: &ReportOptions,
) -> Result<FleetReport, CatalogError> {
    let hosts: Vec<HostRecord> = catalog
        .hosts()?
        .into_iter()
        .filter(|h| opts.labels.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
        .collect();
    let mut facts: HashMap<String, HostFacts> = hosts
        .iter()
        .map(|h| (h.host_id.clone(), HostFacts::default()))
        .collect();
    // Sets come by host, then time: the chain length restarts at each full.
    catalog.each_set(|s| {
        let Some(f) = facts.get_mut(&s.host_id) else {
            return;
        };
        if s.end_time > opts.now {
            return; // not yet, as of the report's time
        }
        f.last_success_at = s.end_time;
        f.last_backup_bytes = s.bytes;
        if s.kind == "full" {
            f.last_full_at = s.end_time;
            f.chain_length = 1;
        } else {
            f.chain_length += 1;
        }
    })?;
    // Jobs come oldest first: a success resets the failure count.
    catalog.each_job(|j| {
        if j.kind != JobKind::Backup || j.finished_at == 0 || j.finished_at > opts.now {
            return;
        }
        let Some(f) = facts.get_mut(&j.host_id) else {
            return;
        };
        match j.state {
            JobState::Succeeded => {
                if j.finished_at >= f.last_success_job_at {
                    f.last_success_job_at = j.finished_at;
                    f.last_backup_duration_secs = (j.finished_at - j.started_at).max(0);
                }
                f.consecutive_failures = 0;
                f.last_failure_at = 0;
                f.last_error.clear();
            }
            JobState::Failed => {
                f.consecutive_failures += 1;
                f.last_failure_at = j.finished_at;
                f.last_error = j.error;
            }
            _ => {}
        }
    })?;
    catalog.each_restore(|r| {
        let Some(f) = facts.get_mut(&r.source_host) else {
            return;
        };
        let verified = r.state == JobState::Succeeded
            && r.outcome.as_ref().is_some_and(|o| o.verified)
            && r.finished_at <= opts.now;
        if verified && r.finished_at >= f.last_verified_restore_at {
            f.last_verified_restore_at = r.finished_at;
            f.last_verified_restore_drill = r.drill;
        }
    })?;
    let mut rows = Vec::with_capacity(hosts.len());
    for host in hosts {
        let policy = policy_for(&host.labels);
        let f = facts.remove(&host.host_id).unwrap_or_default();
        let is_connected = connected(&host.host_id);
        rows.push(HostRow {
            status: classify(&host, &f, policy, is_connected, opts),
            policy: policy.map(|p| p.name.clone()),
            max_age_secs: policy.and_then(|p| p.max_age_secs),
            age_secs: (f.last_success_at > 0).then(|| opts.now - f.last_success_at),
            encrypt_to: policy.map(|p| p.encrypt_to.clone()).unwrap_or_default(),
            facts: f,
            agent_version: host.agent_version,
            policy_revision_applied: host.policy_revision_applied,
            policy_revision_wanted: wanted_revision,
            last_seen: host.last_seen,
            connected: is_connected,
            host_id: host.host_id,
            hostname: host.hostname,
            labels: host.labels,
        });
    }
    // Worst first, then the oldest backup first.
    rows.sort_by(|a, b| {
        (
            a.status,
            std::cmp::Reverse(a.age_secs.unwrap_or(i64::MAX)),
            &a.host_id,
        )
            .cmp(&(
                b.status,
                std::cmp::Reverse(b.age_secs.unwrap_or(i64::MAX)),
                &b.host_id,
            ))
    });
    let mut by_status: BTreeMap<String, usize> = HostStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for r in &rows {
        *by_status.entry(r.status.as_str().to_string()).or_default() += 1;
    }
    let fresh = by_status["fresh"];
    Ok(FleetReport {
        schema_version: SCHEMA_VERSION,
        generated_at: opts.now,
        offline_after_secs: opts.offline_after_secs,
        summary: Summary {
            hosts: rows.len(),
            fresh_share: if rows.is_empty() {
                1.0
            } else {
                fresh as f64 / rows.len() as f64
            },
            by_status,
        },
        hosts: rows,
    })
}

/// The report as CSV (RFC 4180 quoting), one row per host.
pub fn to_csv(report: &FleetReport) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from(
        "host_id,hostname,status,policy,max_age_secs,last_success_at,age_secs,last_full_at,\
         chain_length,last_failure_at,consecutive_failures,last_error,last_verified_restore_at,\
         encrypt_to,agent_version,policy_revision_applied,policy_revision_wanted,last_seen,\
         connected,labels\n",
    );
    for r in &report.hosts {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cells = [
            r.host_id.clone(),
            r.hostname.clone(),
            r.status.as_str().to_string(),
            r.policy.clone().unwrap_or_default(),
            r.max_age_secs.map(|m| m.to_string()).unwrap_or_default(),
            r.facts.last_success_at.to_string(),
            r.age_secs.map(|a| a.to_string()).unwrap_or_default(),
            r.facts.last_full_at.to_string(),
            r.facts.chain_length.to_string(),
            r.facts.last_failure_at.to_string(),
            r.facts.consecutive_failures.to_string(),
            r.facts.last_error.clone(),
            r.facts.last_verified_restore_at.to_string(),
            r.encrypt_to.join(" "),
            r.agent_version.clone(),
            r.policy_revision_applied.to_string(),
            r.policy_revision_wanted.to_string(),
            r.last_seen.to_string(),
            r.connected.to_string(),
            labels.join(" "),
        ];
        let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(last_seen: i64) -> HostRecord {
        HostRecord {
            host_id: "h".into(),
            hostname: "h".into(),
            labels: BTreeMap::new(),
            cert_fingerprint: String::new(),
            signing_public_key: String::new(),
            agent_version: "0.1.0".into(),
            enrolled_at: 0,
            last_seen,
            policy_revision_applied: 1,
            utc_offset_secs: 0,
            last_backup_at: 0,
            destination_override: None,
        }
    }

    fn policy(max_age: Option<u64>) -> Policy {
        let set = flotilla_common::policy::PolicySet::parse(
            "p.toml",
            &format!(
                "[destination.d]\nkind = \"file\"\npath = \"/b\"\n[policy.p]\nsources = [\"/s\"]\n\
                 destination = \"d\"\n{}",
                max_age.map_or(String::new(), |m| format!("max_age = \"{m}s\""))
            ),
            |_| Err("no keys".into()),
        )
        .unwrap();
        set.policies["p"].clone()
    }

    #[test]
    fn statuses_follow_the_rules_in_order() {
        let opts = ReportOptions {
            now: 100_000,
            offline_after_secs: 3600,
            labels: BTreeMap::new(),
        };
        let p = policy(Some(86_400));
        let seen = host(99_990);
        let ok = HostFacts {
            last_success_at: 90_000,
            ..Default::default()
        };
        let classify = |h: &HostRecord, f: &HostFacts, p: Option<&Policy>, c: bool| {
            classify(h, f, p, c, &opts)
        };
        assert_eq!(classify(&seen, &ok, None, true), HostStatus::Unprotected);
        assert_eq!(
            classify(&seen, &HostFacts::default(), Some(&p), true),
            HostStatus::Never
        );
        assert_eq!(classify(&seen, &ok, Some(&p), true), HostStatus::Fresh);
        let old = HostFacts {
            last_success_at: 100_000 - 86_401,
            consecutive_failures: 2,
            ..Default::default()
        };
        assert_eq!(classify(&seen, &old, Some(&p), true), HostStatus::Stale);
        let failing = HostFacts {
            consecutive_failures: 1,
            ..ok.clone()
        };
        assert_eq!(
            classify(&seen, &failing, Some(&p), true),
            HostStatus::Failing
        );
        let gone = host(100_000 - 3601);
        assert_eq!(classify(&gone, &ok, Some(&p), false), HostStatus::Offline);
        assert_eq!(classify(&gone, &ok, Some(&p), true), HostStatus::Fresh);
        // Without max_age a backup never goes stale.
        assert_eq!(
            classify(&seen, &old, Some(&policy(None)), true),
            HostStatus::Failing
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let report = FleetReport {
            schema_version: SCHEMA_VERSION,
            generated_at: 0,
            offline_after_secs: 0,
            summary: Summary {
                hosts: 1,
                by_status: BTreeMap::new(),
                fresh_share: 0.0,
            },
            hosts: vec![HostRow {
                host_id: "h".into(),
                hostname: "h".into(),
                labels: BTreeMap::new(),
                status: HostStatus::Failing,
                policy: None,
                max_age_secs: None,
                age_secs: None,
                facts: HostFacts {
                    last_error: "disk \"full\", again\nand again".into(),
                    ..Default::default()
                },
                encrypt_to: vec![],
                agent_version: String::new(),
                policy_revision_applied: 0,
                policy_revision_wanted: 0,
                last_seen: 0,
                connected: false,
            }],
        };
        let csv = to_csv(&report);
        assert!(
            csv.contains(",\"disk \"\"full\"\", again\nand again\","),
            "{csv}"
        );
        assert_eq!(csv.lines().next().unwrap().split(',').count(), 20);
    }
}
