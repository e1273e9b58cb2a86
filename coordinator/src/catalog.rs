//! The coordinator's catalog in sled: hosts, enrollment tokens, policy revisions,
//! jobs, backup sets, processed results and the audit log.
//!
//! Every value is stored as one version byte followed by JSON, so the schema can
//! evolve: a reader that meets a newer version refuses with a clear error instead of
//! misreading. Keys are chosen so that range scans answer the reports (sets by host
//! and time, audit by time). sled flushes on every write that must survive a crash
//! (tokens, results, sets); the rest is flushed every few hundred milliseconds by sled.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Schema version of the values this build writes.
const VALUE_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog: {0}")]
    Storage(#[from] sled::Error),
    #[error(
        "catalog: {tree}/{key}: value version {found} is newer than this coordinator understands ({VALUE_VERSION}); upgrade the coordinator"
    )]
    NewerVersion {
        tree: &'static str,
        key: String,
        found: u8,
    },
    #[error("catalog: {tree}/{key}: corrupt value: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("enrollment token refused: {0}")]
    Token(TokenRefusal),
    #[error("{what} {key:?} not found")]
    NotFound { what: &'static str, key: String },
}

/// Why an enrollment token was refused (recorded in the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRefusal {
    Unknown,
    AlreadyUsed,
    Expired,
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRefusal::Unknown => "unknown token",
            TokenRefusal::AlreadyUsed => "token already used",
            TokenRefusal::Expired => "token expired",
        })
    }
}

/// An enrollment token, stored by its SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub expires_at: i64,
    /// Host that used it; a token works once.
    pub used_by: Option<String>,
}

/// An enrolled host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// SHA-256 of the client certificate (DER), hex.
    pub cert_fingerprint: String,
    pub signing_public_key: String,
    pub agent_version: String,
    pub enrolled_at: i64,
    pub last_seen: i64,
    pub policy_revision_applied: u64,
    /// The host's UTC offset (from its last Hello): schedules are in host local time.
    #[serde(default)]
    pub utc_offset_secs: i32,
    /// End of the last successful backup the agent reported.
    #[serde(default)]
    pub last_backup_at: i64,
    /// A destination URL that replaces the policy's (set by `host adopt`, so the host
    /// continues the adopted chain).
    #[serde(default)]
    pub destination_override: Option<String>,
}

/// One stored revision of the policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRevision {
    pub revision: u64,
    pub file_name: String,
    pub toml: String,
    pub applied_at: i64,
    pub applied_by: String,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Prune,
    Restore,
    Verify,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Progress last reported for a running job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub phase: String,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: u64,
    pub bytes_total: u64,
}

/// A job for one host. Job ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub host_id: String,
    pub kind: JobKind,
    pub state: JobState,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
    /// Attempts made so far (1 while the first runs).
    #[serde(default)]
    pub attempt: u32,
    /// A queued retry waits until then (unix seconds).
    #[serde(default)]
    pub not_before: i64,
    /// The schedule slot this job serves; 0: on demand.
    #[serde(default)]
    pub scheduled_for: i64,
    #[serde(default)]
    pub force_full: bool,
    /// Who asked: "schedule", "admin:NAME", "retention", "agent" (ran while offline).
    pub origin: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub progress: Option<JobProgress>,
    #[serde(default)]
    pub set: Option<SetRecord>,
    /// Restore jobs: what to restore (never the key: that stays in memory).
    #[serde(default)]
    pub restore: Option<RestoreParams>,
    /// Restore jobs, once finished: what was restored and how it checked out.
    #[serde(default)]
    pub restore_outcome: Option<RestoreOutcome>,
    /// A job still queued then (unix seconds) is failed instead of started; 0: never.
    #[serde(default)]
    pub start_by: i64,
}

/// A restore job's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreParams {
    pub source_host: String,
    pub time: i64,
    pub paths: Vec<String>,
    pub target: String,
    pub force: bool,
    /// A restore test: into a temporary directory of the agent's, checked, removed.
    #[serde(default)]
    pub drill: bool,
    /// The restoring agent uses its own key (scheduled drills: the coordinator holds no
    /// key to send).
    #[serde(default)]
    pub agent_key: bool,
}

/// What a restore did and how its check against the backup's signatures went (as the
/// agent reported it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    pub backup_time: i64,
    pub files: u64,
    pub bytes: u64,
    pub verified: bool,
    pub paths_checked: u64,
    pub bytes_hashed: u64,
    pub mismatches: u64,
    pub differences: Vec<String>,
    pub not_restored: Vec<String>,
    pub not_restored_count: u64,
    pub target: String,
    pub restore_ms: u64,
    pub verify_ms: u64,
}

/// A finished restore, kept as evidence (restores and restore tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreEvidence {
    pub job_id: String,
    pub source_host: String,
    pub target_host: String,
    pub drill: bool,
    pub state: JobState,
    pub finished_at: i64,
    pub error: String,
    pub origin: String,
    pub outcome: Option<RestoreOutcome>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Who: `admin:<cert CN>`, `host:<id>`, `anonymous@<addr>`.
    pub actor: String,
    pub action: String,
    pub outcome: String,
}

/// A backup set known to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    pub host_id: String,
    /// "full" or "incremental".
    pub kind: String,
    /// Unix seconds; 0 for a full set.
    pub start_time: i64,
    pub end_time: i64,
    pub volumes: u32,
    pub bytes: u64,
    pub files: u64,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    serde_json::to_writer(&mut out, value).expect("catalog values serialize");
    out
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, CatalogError> {
    let key_text = || String::from_utf8_lossy(key).into_owned();
    match bytes.split_first() {
        Some((&VALUE_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| CatalogError::Corrupt {
                tree,
                key: key_text(),
                reason: e.to_string(),
            })
        }
        Some((&v, _)) if v > VALUE_VERSION => Err(CatalogError::NewerVersion {
            tree,
            key: key_text(),
            found: v,
        }),
        _ => Err(CatalogError::Corrupt {
            tree,
            key: key_text(),
            reason: "unknown value version".into(),
        }),
    }
}

/// SHA-256 of a token, hex: what the catalog keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The catalog.
#[derive(Clone)]
pub struct Catalog {
    db: sled::Db,
    hosts: sled::Tree,
    tokens: sled::Tree,
    policies: sled::Tree,
    sets: sled::Tree,
    results: sled::Tree,
    audit: sled::Tree,
    jobs: sled::Tree,
    /// host \0 job_id for every queued or running job: what the scheduler works on.
    active_jobs: sled::Tree,
    /// host → last schedule slot that has a job.
    slots: sled::Tree,
    /// source host \0 finished_at \0 job id → restore evidence.
    restores: sled::Tree,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()?;
        Ok(Catalog {
            hosts: db.open_tree("hosts")?,
            tokens: db.open_tree("tokens")?,
            policies: db.open_tree("policies")?,
            sets: db.open_tree("sets")?,
            results: db.open_tree("results")?,
            audit: db.open_tree("audit")?,
            jobs: db.open_tree("jobs")?,
            active_jobs: db.open_tree("active_jobs")?,
            slots: db.open_tree("slots")?,
            restores: db.open_tree("restores")?,
            db,
        })
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> Result<(), CatalogError> {
        self.db.flush()?;
        Ok(())
    }

    // ---------------------------------------------------------------- tokens

    /// Stores a new token (by hash) and returns the token itself, shown once.
    pub fn create_token(
        &self,
        labels: BTreeMap<String, String>,
        now: i64,
        ttl_secs: u64,
    ) -> Result<(String, TokenRecord), CatalogError> {
        let token = format!("flt1-{}", hex(&rand::random::<[u8; 24]>()));
        let rec = TokenRecord {
            labels,
            created_at: now,
            expires_at: now.saturating_add(ttl_secs as i64),
            used_by: None,
        };
        self.tokens.insert(token_hash(&token), encode(&rec))?;
        self.tokens.flush()?;
        Ok((token, rec))
    }

    /// Marks a token used by `host_id`, atomically: of two concurrent enrollments with
    /// the same token, exactly one wins.
    pub fn consume_token(
        &self,
        token: &str,
        host_id: &str,
        now: i64,
    ) -> Result<TokenRecord, CatalogError> {
        let key = token_hash(token);
        let mut refusal = None;
        let mut granted = None;
        self.tokens.fetch_and_update(key.as_bytes(), |old| {
            let old = old?;
            let Ok(mut rec) = decode::<TokenRecord>("tokens", key.as_bytes(), old) else {
                refusal = Some(TokenRefusal::Unknown);
                return Some(old.to_vec());
            };
            if rec.used_by.is_some() {
                refusal = Some(TokenRefusal::AlreadyUsed);
                return Some(old.to_vec());
            }
            if now >= rec.expires_at {
                refusal = Some(TokenRefusal::Expired);
                return Some(old.to_vec());
            }
            rec.used_by = Some(host_id.to_string());
            refusal = None;
            granted = Some(rec.clone());
            Some(encode(&rec))
        })?;
        self.tokens.flush()?;
        match (granted, refusal) {
            (Some(rec), _) => Ok(rec),
            (None, Some(r)) => Err(CatalogError::Token(r)),
            (None, None) => Err(CatalogError::Token(TokenRefusal::Unknown)),
        }
    }

    // ----------------------------------------------------------------- hosts

    pub fn put_host(&self, host: &HostRecord) -> Result<(), CatalogError> {
        self.hosts.insert(host.host_id.as_bytes(), encode(host))?;
        Ok(())
    }

    pub fn host(&self, host_id: &str) -> Result<Option<HostRecord>, CatalogError> {
        self.hosts
            .get(host_id.as_bytes())?
            .map(|v| decode("hosts", host_id.as_bytes(), &v))
            .transpose()
    }

    pub fn hosts(&self) -> Result<Vec<HostRecord>, CatalogError> {
        self.hosts
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("hosts", &k, &v)
            })
            .collect()
    }

    pub fn remove_host(&self, host_id: &str) -> Result<bool, CatalogError> {
        Ok(self.hosts.remove(host_id.as_bytes())?.is_some())
    }

    // -------------------------------------------------------------- policies

    /// Stores the next revision and returns its number.
    pub fn put_policy(
        &self,
        file_name: &str,
        toml: &str,
        by: &str,
        now: i64,
    ) -> Result<u64, CatalogError> {
        let revision = self.current_policy()?.map_or(1, |p| p.revision + 1);
        let rec = PolicyRevision {
            revision,
            file_name: file_name.to_string(),
            toml: toml.to_string(),
            applied_at: now,
            applied_by: by.to_string(),
        };
        self.policies.insert(revision.to_be_bytes(), encode(&rec))?;
        self.policies.flush()?;
        Ok(revision)
    }

    pub fn current_policy(&self) -> Result<Option<PolicyRevision>, CatalogError> {
        self.policies
            .last()?
            .map(|(k, v)| decode("policies", &k, &v))
            .transpose()
    }

    pub fn policy(&self, revision: u64) -> Result<Option<PolicyRevision>, CatalogError> {
        self.policies
            .get(revision.to_be_bytes())?
            .map(|v| decode("policies", &revision.to_be_bytes(), &v))
            .transpose()
    }

    // ------------------------------------------------------------------ sets

    fn set_key(host_id: &str, end_time: i64) -> Vec<u8> {
        let mut k = host_id.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&end_time.to_be_bytes());
        k
    }

    /// Records a backup set (idempotent: the same set again replaces itself).
    pub fn put_set(&self, set: &SetRecord) -> Result<(), CatalogError> {
        self.sets
            .insert(Self::set_key(&set.host_id, set.end_time), encode(set))?;
        Ok(())
    }

    /// A host's sets, oldest first.
    pub fn sets(&self, host_id: &str) -> Result<Vec<SetRecord>, CatalogError> {
        let mut prefix = host_id.as_bytes().to_vec();
        prefix.push(0);
        self.sets
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode("sets", &k, &v)
            })
            .collect()
    }

    /// Every set of every host, by host and then time (one pass, for reports).
    pub fn each_set(&self, mut f: impl FnMut(SetRecord)) -> Result<(), CatalogError> {
        for kv in self.sets.iter() {
            let (k, v) = kv?;
            f(decode("sets", &k, &v)?);
        }
        Ok(())
    }

    /// Every job, oldest first (one pass, for reports).
    pub fn each_job(&self, mut f: impl FnMut(JobRecord)) -> Result<(), CatalogError> {
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            f(decode("jobs", &k, &v)?);
        }
        Ok(())
    }

    /// All restore evidence (one pass, for reports).
    pub fn each_restore(&self, mut f: impl FnMut(RestoreEvidence)) -> Result<(), CatalogError> {
        for kv in self.restores.iter() {
            let (k, v) = kv?;
            f(decode("restores", &k, &v)?);
        }
        Ok(())
    }

    /// Replaces all of a host's sets (catalog rebuild from a storage listing).
    pub fn replace_sets(&self, host_id: &str, sets: &[SetRecord]) -> Result<(), CatalogError> {
        let mut prefix = host_id.as_bytes().to_vec();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        for kv in self.sets.scan_prefix(&prefix) {
            batch.remove(kv?.0);
        }
        for s in sets {
            batch.insert(Self::set_key(host_id, s.end_time), encode(s));
        }
        self.sets.apply_batch(batch)?;
        self.sets.flush()?;
        Ok(())
    }

    // --------------------------------------------------------------- results

    /// Whether a result was processed already.
    pub fn result_seen(&self, result_id: &str) -> Result<bool, CatalogError> {
        Ok(self.results.contains_key(result_id.as_bytes())?)
    }

    /// Records that a result was processed; false when it had been already (a result
    /// re-sent after a reconnect must not count twice).
    pub fn mark_result(&self, result_id: &str, now: i64) -> Result<bool, CatalogError> {
        let fresh = self
            .results
            .compare_and_swap(
                result_id.as_bytes(),
                None as Option<&[u8]>,
                Some(encode(&now)),
            )?
            .is_ok();
        self.results.flush()?;
        Ok(fresh)
    }

    // ------------------------------------------------------------------ jobs

    /// A new job id: creation time first, so ids sort (and list) by age.
    pub fn new_job_id(&self, now_ms: i64) -> Result<String, CatalogError> {
        Ok(format!(
            "j{:011x}{:05x}",
            now_ms.max(0),
            self.db.generate_id()? & 0xfffff
        ))
    }

    fn active_key(host_id: &str, job_id: &str) -> Vec<u8> {
        let mut k = host_id.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(job_id.as_bytes());
        k
    }

    /// Stores a job and keeps the active index in step with its state, durably: a job
    /// (and its outcome) must survive a crash of the coordinator.
    pub fn put_job(&self, job: &JobRecord) -> Result<(), CatalogError> {
        self.jobs.insert(job.job_id.as_bytes(), encode(job))?;
        let key = Self::active_key(&job.host_id, &job.job_id);
        if job.state.is_final() {
            self.active_jobs.remove(key)?;
        } else {
            self.active_jobs.insert(key, &[])?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Updates a running job's progress without waiting for the disk (progress is
    /// advisory; losing the last sample in a crash is harmless).
    pub fn put_job_progress(&self, job: &JobRecord) -> Result<(), CatalogError> {
        self.jobs.insert(job.job_id.as_bytes(), encode(job))?;
        Ok(())
    }

    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, CatalogError> {
        self.jobs
            .get(job_id.as_bytes())?
            .map(|v| decode("jobs", job_id.as_bytes(), &v))
            .transpose()
    }

    /// Queued and running jobs of a host, oldest first.
    pub fn active_jobs(&self, host_id: &str) -> Result<Vec<JobRecord>, CatalogError> {
        let mut prefix = host_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.active_jobs.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(job) = self.job(&id)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Hosts that have queued or running jobs.
    pub fn hosts_with_active_jobs(&self) -> Result<Vec<String>, CatalogError> {
        let mut out: Vec<String> = Vec::new();
        for kv in self.active_jobs.iter() {
            let (k, _) = kv?;
            let host = k.split(|&b| b == 0).next().unwrap_or_default();
            let host = String::from_utf8_lossy(host).into_owned();
            if out.last() != Some(&host) {
                out.push(host);
            }
        }
        Ok(out)
    }

    /// Jobs newest first, optionally of one host, at most `limit` (0: all).
    pub fn jobs(
        &self,
        host_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, CatalogError> {
        let mut out = Vec::new();
        for kv in self.jobs.iter().rev() {
            let (k, v) = kv?;
            let job: JobRecord = decode("jobs", &k, &v)?;
            if host_id.is_some_and(|h| h != job.host_id) {
                continue;
            }
            out.push(job);
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The last schedule slot of a host that got a job.
    pub fn last_slot(&self, host_id: &str) -> Result<Option<i64>, CatalogError> {
        self.slots
            .get(host_id.as_bytes())?
            .map(|v| decode("slots", host_id.as_bytes(), &v))
            .transpose()
    }

    pub fn set_last_slot(&self, host_id: &str, slot: i64) -> Result<(), CatalogError> {
        self.slots.insert(host_id.as_bytes(), encode(&slot))?;
        Ok(())
    }

    /// Forgets a host's queued jobs, slots and sets (after `host remove`); finished jobs
    /// stay in the history.
    pub fn forget_host(&self, host_id: &str) -> Result<(), CatalogError> {
        for mut job in self.active_jobs(host_id)? {
            job.state = JobState::Cancelled;
            job.error = "host removed".into();
            self.put_job(&job)?;
        }
        self.slots.remove(host_id.as_bytes())?;
        self.replace_sets(host_id, &[])?;
        Ok(())
    }

    // -------------------------------------------------------------- restores

    /// Records a finished restore (idempotent per job).
    pub fn put_restore(&self, r: &RestoreEvidence) -> Result<(), CatalogError> {
        let mut key = r.source_host.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&r.finished_at.to_be_bytes());
        key.push(0);
        key.extend_from_slice(r.job_id.as_bytes());
        self.restores.insert(key, encode(r))?;
        Ok(())
    }

    /// Restore evidence newest first, of one source host or all, at most `limit`
    /// (0: all).
    pub fn restores(
        &self,
        source_host: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RestoreEvidence>, CatalogError> {
        let prefix = source_host
            .map(|h| {
                let mut p = h.as_bytes().to_vec();
                p.push(0);
                p
            })
            .unwrap_or_default();
        let mut out: Vec<RestoreEvidence> = self
            .restores
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode("restores", &k, &v)
            })
            .collect::<Result<_, _>>()?;
        // Newest first; job ids grow with creation time, which orders equal seconds.
        out.sort_by(|a, b| (b.finished_at, &b.job_id).cmp(&(a.finished_at, &a.job_id)));
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }

    // ----------------------------------------------------------------- audit

    pub fn audit(&self, entry: &AuditEntry) -> Result<(), CatalogError> {
        // Time first for range scans; a sled id makes equal times distinct.
        let mut key = entry.at_ms.to_be_bytes().to_vec();
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.audit.insert(key, encode(entry))?;
        // Durable at once: a refusal must be on record even if the process dies next.
        self.audit.flush()?;
        Ok(())
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, CatalogError> {
        self.audit
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("audit", &k, &v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [("role".to_string(), "web".to_string())].into()
    }

    #[test]
    fn tokens_work_once_and_expire_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let (token, rec) = c.create_token(labels(), 1000, 60).unwrap();
        assert_eq!(rec.expires_at, 1060);
        assert!(
            c.tokens.get(token.as_bytes()).unwrap().is_none(),
            "stored in clear"
        );
        assert_eq!(
            c.consume_token(&token, "h1", 1001).unwrap().labels,
            labels()
        );
        assert!(matches!(
            c.consume_token(&token, "h2", 1002),
            Err(CatalogError::Token(TokenRefusal::AlreadyUsed))
        ));
        let (late, _) = c.create_token(labels(), 1000, 60).unwrap();
        assert!(matches!(
            c.consume_token(&late, "h3", 1060),
            Err(CatalogError::Token(TokenRefusal::Expired))
        ));
        assert!(matches!(
            c.consume_token("flt1-nope", "h4", 1000),
            Err(CatalogError::Token(TokenRefusal::Unknown))
        ));
    }

    #[test]
    fn survives_reopen_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            assert_eq!(c.put_policy("p.toml", "a", "admin", 1).unwrap(), 1);
            assert_eq!(c.put_policy("p.toml", "b", "admin", 2).unwrap(), 2);
            for (t, kind) in [(300, "incremental"), (100, "full"), (200, "incremental")] {
                c.put_set(&SetRecord {
                    host_id: "h1".into(),
                    kind: kind.into(),
                    start_time: 0,
                    end_time: t,
                    volumes: 1,
                    bytes: 1,
                    files: 1,
                })
                .unwrap();
            }
            assert!(c.mark_result("r1", 5).unwrap());
            assert!(!c.mark_result("r1", 6).unwrap());
            c.flush().unwrap();
        }
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.current_policy().unwrap().unwrap().toml, "b");
        let times: Vec<i64> = c.sets("h1").unwrap().iter().map(|s| s.end_time).collect();
        assert_eq!(times, vec![100, 200, 300]);
        assert!(c.sets("h").unwrap().is_empty(), "prefix of another host id");
        assert!(!c.mark_result("r1", 7).unwrap());
    }

    #[test]
    fn newer_or_corrupt_values_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        c.hosts.insert("h1", vec![9u8, b'{', b'}']).unwrap();
        let e = c.host("h1").unwrap_err().to_string();
        assert!(e.contains("newer") && e.contains("hosts/h1"), "{e}");
        c.hosts.insert("h2", vec![1u8, b'x']).unwrap();
        assert!(matches!(c.host("h2"), Err(CatalogError::Corrupt { .. })));
    }
}
