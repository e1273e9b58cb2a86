//! The freshness report (`flotilla report`): one row per host — is it backed up,
//! recently, restorably? — and a fleet summary. Each host's facts come from short range
//! scans, newest first ([`host_facts`]), so the cost grows with the number of hosts and
//! the length of their current chains, not with the history kept. The status rules are in [`classify`], a pure function.

use crate::catalog::{Catalog, CatalogError, HostRecord, JobState};
use flotilla_common::policy::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Days of backup history per host (`recent_backups`; 0: none).
    pub history_days: u32,
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
    /// With a history window (`history_days`): end times of the successful backups in
    /// it, oldest first, preceded by the last one before it, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_backups: Vec<i64>,
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
    #[serde(default)]
    pub history_days: u32,
    pub summary: Summary,
    pub hosts: Vec<HostRow>,
    /// With `--check-storage`: the catalog compared with each host's storage listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_check: Option<StorageCheck>,
}

/// A set that the catalog and storage disagree about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMismatch {
    /// "full" or "incremental".
    pub kind: String,
    pub end_time: i64,
    pub problem: String,
}

/// One host's storage against its catalog sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostStorageCheck {
    pub host_id: String,
    pub destination: String,
    pub catalog_sets: usize,
    /// Complete sets (with a manifest) in storage.
    pub storage_sets: usize,
    /// Sets the catalog counts that storage lacks or holds damaged (deleted or lost):
    /// a restore that needs them fails.
    pub missing_from_storage: Vec<SetMismatch>,
    /// Complete sets in storage the catalog does not know (`flotilla catalog rebuild`
    /// adds them).
    pub missing_from_catalog: Vec<SetMismatch>,
    /// Sets in storage without a manifest: an upload that was interrupted or is running;
    /// never counted and never restored.
    pub incomplete_in_storage: usize,
    /// Why a host was not checked, when that is expected (no destination).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Why the check failed (the listing could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HostStorageCheck {
    /// Storage and catalog agree (or there was nothing to check).
    pub fn agrees(&self) -> bool {
        self.error.is_none()
            && self.missing_from_storage.is_empty()
            && self.missing_from_catalog.is_empty()
    }

    /// Compares the catalog's sets of `host_id` with a listing of its storage.
    pub fn compare(
        &mut self,
        host_id: &str,
        catalog: &[crate::catalog::SetRecord],
        stored: &flotilla_common::archive::collection::Collection,
    ) {
        use flotilla_common::archive::collection::BackupSet;
        let key = |s: &BackupSet| {
            let kind = if s.times.is_full() {
                "full"
            } else {
                "incremental"
            };
            (kind.to_string(), s.times.end())
        };
        let mut usable: BTreeMap<(String, i64), &BackupSet> = BTreeMap::new();
        for chain in &stored.chains {
            for s in chain.sets() {
                usable.insert(key(s), s);
            }
        }
        let orphaned: BTreeMap<(String, i64), &BackupSet> =
            stored.orphaned.iter().map(|s| (key(s), s)).collect();
        let incomplete: BTreeMap<(String, i64), &BackupSet> =
            stored.incomplete.iter().map(|s| (key(s), s)).collect();
        self.catalog_sets = catalog.len();
        self.storage_sets = usable.len() + orphaned.len();
        self.incomplete_in_storage = stored.incomplete.len();
        let mut known = std::collections::BTreeSet::new();
        for c in catalog {
            let k = (c.kind.clone(), c.end_time);
            known.insert(k.clone());
            let mismatch = |problem: String| SetMismatch {
                kind: c.kind.clone(),
                end_time: c.end_time,
                problem,
            };
            let problem = if let Some(s) = usable.get(&k).or_else(|| orphaned.get(&k)) {
                let missing = s.missing_volumes(
                    1..=c
                        .volumes
                        .max(s.volumes.keys().next_back().copied().unwrap_or(0)),
                );
                if !missing.is_empty() {
                    let list: Vec<String> = missing.iter().map(u32::to_string).collect();
                    Some(format!(
                        "volume(s) {} missing of {}",
                        list.join(", "),
                        c.volumes
                    ))
                } else if orphaned.contains_key(&k) {
                    Some(
                        "stored, but an earlier set of its chain is missing: it cannot be restored"
                            .into(),
                    )
                } else if s.signatures.is_none() {
                    Some("signature file missing: restores of it are not verified and the next backup starts a new chain".into())
                } else {
                    None
                }
            } else if incomplete.contains_key(&k) {
                Some(
                    "manifest missing: the set is incomplete in storage and cannot be restored"
                        .into(),
                )
            } else {
                Some("not in storage (deleted or lost)".into())
            };
            if let Some(p) = problem {
                self.missing_from_storage.push(mismatch(p));
            }
        }
        for (k, _) in usable.iter().chain(orphaned.iter()) {
            if !known.contains(k) {
                self.missing_from_catalog.push(SetMismatch {
                    kind: k.0.clone(),
                    end_time: k.1,
                    problem: format!("in storage, not in the catalog of {host_id}"),
                });
            }
        }
        self.missing_from_catalog.sort_by_key(|m| m.end_time);
    }
}

/// `flotilla report --check-storage`: every selected host's storage listing against
/// the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageCheck {
    pub checked_at: i64,
    pub hosts_checked: usize,
    /// Hosts whose storage and catalog disagree, or whose storage could not be listed.
    pub hosts_differing: usize,
    pub hosts: Vec<HostStorageCheck>,
}

impl StorageCheck {
    pub fn new(checked_at: i64, hosts: Vec<HostStorageCheck>) -> StorageCheck {
        StorageCheck {
            checked_at,
            hosts_checked: hosts.iter().filter(|h| h.note.is_empty()).count(),
            hosts_differing: hosts.iter().filter(|h| !h.agrees()).count(),
            hosts,
        }
    }
}

/// Gathers one host's facts as of `opts.now` with short range scans, newest first:
/// sets back to the newest full (and through the history window), backup outcomes
/// back to the newest success, restore evidence back to the newest verified one. The
/// cost per host is the length of its current chain, not of its history.
pub fn host_facts(
    catalog: &Catalog,
    host_id: &str,
    opts: &ReportOptions,
) -> Result<(HostFacts, Vec<i64>), CatalogError> {
    let mut f = HostFacts::default();
    for set in catalog.sets_newest_first(host_id, opts.now) {
        let s = set?;
        if f.last_success_at == 0 {
            f.last_success_at = s.end_time;
            f.last_backup_bytes = s.bytes;
        }
        f.chain_length += 1;
        if s.kind == "full" {
            f.last_full_at = s.end_time;
            break;
        }
    }
    let mut history = Vec::new();
    if opts.history_days > 0 {
        // End times only, from the keys: the window can hold many more sets than the
        // chain, and decoding them is most of the cost.
        let history_from = opts.now - i64::from(opts.history_days) * 86_400;
        history.extend(catalog.last_set_end_before(host_id, history_from + 1)?);
        history.extend(catalog.set_end_times(host_id, history_from + 1, opts.now)?);
    }
    for outcome in catalog.backup_outcomes_newest_first(host_id, opts.now) {
        let o = outcome?;
        match o.state {
            JobState::Succeeded => {
                f.last_success_job_at = o.finished_at;
                f.last_backup_duration_secs = (o.finished_at - o.started_at).max(0);
                break;
            }
            JobState::Failed => {
                if f.consecutive_failures == 0 {
                    f.last_failure_at = o.finished_at;
                    f.last_error = o.error;
                }
                f.consecutive_failures += 1;
            }
            _ => {}
        }
    }
    for evidence in catalog.restores_newest_first(host_id, opts.now) {
        let r = evidence?;
        if r.state == JobState::Succeeded && r.outcome.as_ref().is_some_and(|o| o.verified) {
            f.last_verified_restore_at = r.finished_at;
            f.last_verified_restore_drill = r.drill;
            break;
        }
    }
    Ok((f, history))
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
    let mut rows = Vec::with_capacity(hosts.len());
    for host in hosts {
        let policy = policy_for(&host.labels);
        let (f, recent_backups) = host_facts(catalog, &host.host_id, opts)?;
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
            recent_backups,
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
        history_days: opts.history_days,
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
        storage_check: None,
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
            history_days: 0,
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
            history_days: 0,
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
                recent_backups: vec![],
            }],
            storage_check: None,
        };
        let csv = to_csv(&report);
        assert!(
            csv.contains(",\"disk \"\"full\"\", again\nand again\","),
            "{csv}"
        );
        assert_eq!(csv.lines().next().unwrap().split(',').count(), 20);
    }

    fn set(
        host: &str,
        kind: &str,
        start: i64,
        end: i64,
        volumes: u32,
    ) -> crate::catalog::SetRecord {
        crate::catalog::SetRecord {
            host_id: host.into(),
            kind: kind.into(),
            start_time: start,
            end_time: end,
            volumes,
            bytes: end as u64,
            files: 1,
        }
    }

    #[test]
    fn host_facts_come_from_the_current_chain_and_the_window() {
        use crate::catalog::{Catalog, JobKind, JobRecord, RestoreEvidence, RestoreOutcome};
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        const D: i64 = 86_400;
        // Two chains: fulls on days 1 and 10, an incremental every day after each.
        let mut last = 0;
        for day in 1..=14 {
            let full = day == 1 || day == 10;
            let t = day * D;
            c.put_set(&set(
                "h",
                if full { "full" } else { "incremental" },
                if full { 0 } else { last },
                t,
                1,
            ))
            .unwrap();
            last = t;
        }
        c.put_set(&set("h2", "full", 0, 3 * D, 1)).unwrap();
        let job = |id: &str, state: JobState, finished_at: i64, error: &str| JobRecord {
            state,
            started_at: finished_at - 60,
            finished_at,
            attempt: 1,
            error: error.into(),
            ..JobRecord::queued(id.into(), "h", JobKind::Backup, "", finished_at - 100)
        };
        c.put_job(&job("j1", JobState::Succeeded, 14 * D + 5, ""))
            .unwrap();
        c.put_job(&job("j2", JobState::Failed, 15 * D, "disk full"))
            .unwrap();
        c.put_job(&job("j3", JobState::Failed, 16 * D, "source gone"))
            .unwrap();
        let evidence = |id: &str, at: i64, verified: bool| RestoreEvidence {
            job_id: id.into(),
            source_host: "h".into(),
            target_host: "h2".into(),
            drill: true,
            state: JobState::Succeeded,
            finished_at: at,
            error: String::new(),
            origin: String::new(),
            outcome: Some(RestoreOutcome {
                verified,
                ..Default::default()
            }),
        };
        c.put_restore(&evidence("r1", 11 * D, true)).unwrap();
        c.put_restore(&evidence("r2", 12 * D, false)).unwrap();
        let opts = |now: i64, history_days: u32| ReportOptions {
            now,
            offline_after_secs: 3600,
            labels: BTreeMap::new(),
            history_days,
        };

        let (f, history) = host_facts(&c, "h", &opts(17 * D, 0)).unwrap();
        assert_eq!(f.last_success_at, 14 * D);
        assert_eq!(f.last_backup_bytes, 14 * D as u64);
        assert_eq!((f.last_full_at, f.chain_length), (10 * D, 5));
        assert_eq!(f.consecutive_failures, 2);
        assert_eq!(
            (f.last_failure_at, f.last_error.as_str()),
            (16 * D, "source gone")
        );
        assert_eq!(f.last_success_job_at, 14 * D + 5);
        assert_eq!(f.last_backup_duration_secs, 60);
        assert_eq!(
            (f.last_verified_restore_at, f.last_verified_restore_drill),
            (11 * D, true)
        );
        assert!(history.is_empty(), "no window asked for");

        // As of day 12 (the --at clock): later sets, jobs and evidence do not exist yet.
        let (f, history) = host_facts(&c, "h", &opts(12 * D, 3)).unwrap();
        assert_eq!(
            (f.last_success_at, f.last_full_at, f.chain_length),
            (12 * D, 10 * D, 3)
        );
        assert_eq!(f.consecutive_failures, 0);
        assert_eq!(f.last_success_job_at, 0);
        // Days 10..=12 in the window, preceded by the last backup before it (day 9).
        assert_eq!(history, vec![9 * D, 10 * D, 11 * D, 12 * D]);

        // The window reaches back past the current chain's full.
        let (_, history) = host_facts(&c, "h", &opts(12 * D, 5)).unwrap();
        assert_eq!(history, vec![7 * D, 8 * D, 9 * D, 10 * D, 11 * D, 12 * D]);

        let (f, _) = host_facts(&c, "h2", &opts(17 * D, 30)).unwrap();
        assert_eq!(
            (f.last_success_at, f.chain_length, f.consecutive_failures),
            (3 * D, 1, 0)
        );
        assert_eq!(
            f.last_verified_restore_at, 0,
            "evidence is the source host's"
        );
    }

    #[test]
    fn storage_check_names_every_disagreement() {
        use flotilla_common::archive::collection::Collection;
        let t = |day: u32| format!("202612{day:02}T000000Z");
        let t_unix = |day: i64| 1_796_083_200 + (day - 1) * 86_400; // 2026-12-01
        let full = |day: u32, vols: &[u32], manifest: bool| {
            let mut names: Vec<String> = vols
                .iter()
                .map(|v| format!("duplicity-full.{}.vol{v}.difftar.gpg", t(day)))
                .collect();
            if manifest {
                names.push(format!("duplicity-full.{}.manifest.gpg", t(day)));
            }
            names.push(format!("duplicity-full-signatures.{}.sigtar.gpg", t(day)));
            names
        };
        let inc = |from: u32, to: u32, sig: bool| {
            let mut names = vec![
                format!("duplicity-inc.{}.to.{}.vol1.difftar.gpg", t(from), t(to)),
                format!("duplicity-inc.{}.to.{}.manifest.gpg", t(from), t(to)),
            ];
            if sig {
                names.push(format!(
                    "duplicity-new-signatures.{}.to.{}.sigtar.gpg",
                    t(from),
                    t(to)
                ));
            }
            names
        };
        // Storage: full 1 with volume 2 of 2 lost; inc 1→2 fine; inc 2→3 without its
        // signatures; full 5 with no manifest (interrupted); full 7 the catalog lacks.
        let mut listing = full(1, &[1], true);
        listing.extend(inc(1, 2, true));
        listing.extend(inc(2, 3, false));
        listing.extend(full(5, &[1], false));
        listing.extend(full(7, &[1], true));
        let stored = Collection::from_listing(listing.into_iter().map(|n| (n, 10u64)));
        let catalog = vec![
            set("h", "full", 0, t_unix(1), 2),
            set("h", "incremental", t_unix(1), t_unix(2), 1),
            set("h", "incremental", t_unix(2), t_unix(3), 1),
            set("h", "incremental", t_unix(3), t_unix(4), 1), // deleted from storage
            set("h", "full", 0, t_unix(5), 1),
        ];
        let mut check = HostStorageCheck::default();
        check.compare("h", &catalog, &stored);
        let problems: Vec<(i64, &str)> = check
            .missing_from_storage
            .iter()
            .map(|m| (m.end_time, m.problem.as_str()))
            .collect();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert_eq!(problems[0].0, t_unix(1));
        assert!(
            problems[0].1.contains("volume(s) 2 missing of 2"),
            "{problems:?}"
        );
        assert_eq!(problems[1].0, t_unix(3));
        assert!(
            problems[1].1.contains("signature file missing"),
            "{problems:?}"
        );
        assert_eq!(problems[2].0, t_unix(4));
        assert!(problems[2].1.contains("not in storage"), "{problems:?}");
        assert_eq!(problems[3].0, t_unix(5));
        assert!(problems[3].1.contains("manifest missing"), "{problems:?}");
        assert_eq!(check.missing_from_catalog.len(), 1);
        assert_eq!(check.missing_from_catalog[0].end_time, t_unix(7));
        assert_eq!(check.missing_from_catalog[0].kind, "full");
        assert_eq!(check.incomplete_in_storage, 1);
        assert!(!check.agrees());

        // The same listing with a catalog that matches it agrees.
        let clean = Collection::from_listing(
            full(7, &[1], true)
                .into_iter()
                .chain(inc(7, 8, true))
                .map(|n| (n, 1u64)),
        );
        let mut ok = HostStorageCheck::default();
        ok.compare(
            "h",
            &[
                set("h", "full", 0, t_unix(7), 1),
                set("h", "incremental", t_unix(7), t_unix(8), 1),
            ],
            &clean,
        );
        assert!(ok.agrees(), "{ok:?}");
        assert_eq!((ok.catalog_sets, ok.storage_sets), (2, 2));
    }
}
