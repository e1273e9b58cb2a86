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

impl JobRecord {
    /// A new queued job: nothing run yet, no outcome.
    pub fn queued(
        job_id: String,
        host_id: &str,
        kind: JobKind,
        origin: &str,
        created_at: i64,
    ) -> JobRecord {
        JobRecord {
            job_id,
            host_id: host_id.to_string(),
            kind,
            state: JobState::Queued,
            created_at,
            started_at: 0,
            finished_at: 0,
            attempt: 0,
            not_before: 0,
            scheduled_for: 0,
            force_full: false,
            origin: origin.to_string(),
            error: String::new(),
            note: String::new(),
            progress: None,
            set: None,
            restore: None,
            restore_outcome: None,
            start_by: 0,
        }
    }
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

/// A finished backup job as the report needs it, indexed by host and finish time so a
/// host's newest outcomes are a short range scan, whatever the size of the job history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupOutcome {
    pub job_id: String,
    pub state: JobState,
    pub started_at: i64,
    pub finished_at: i64,
    pub error: String,
}

/// What `prune_history` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub results: u64,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Prune => "prune",
            JobKind::Restore => "restore",
            JobKind::Verify => "verify",
        }
    }
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
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
    /// host \0 finished_at \0 job id → [`BackupOutcome`] of every finished backup job.
    backup_outcomes: sled::Tree,
    /// kind \0 state → finished jobs so far (u64, big-endian): counters that pruning the
    /// job history does not lower.
    job_counts: sled::Tree,
    /// Markers of one-time migrations.
    meta: sled::Tree,
}

/// Set in `meta` once `backup_outcomes` and `job_counts` cover every job.
const JOB_INDEX_MARKER: &[u8] = b"job_index_v1";

/// `prefix \0 time`: the range-scan key of the per-host trees.
fn host_time_key(host_id: &str, time: i64) -> Vec<u8> {
    let mut k = host_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&time.max(0).to_be_bytes());
    k
}

/// The time in a [`host_time_key`] (its last eight bytes).
fn key_time(key: &[u8]) -> i64 {
    key.len()
        .checked_sub(8)
        .and_then(|start| <[u8; 8]>::try_from(&key[start..]).ok())
        .map_or(0, i64::from_be_bytes)
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()?;
        let catalog = Catalog {
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
            backup_outcomes: db.open_tree("backup_outcomes")?,
            job_counts: db.open_tree("job_counts")?,
            meta: db.open_tree("meta")?,
            db,
        };
        catalog.index_jobs_once()?;
        Ok(catalog)
    }

    /// Catalogs written before the job index existed get it built once, from the jobs.
    fn index_jobs_once(&self) -> Result<(), CatalogError> {
        if self.meta.contains_key(JOB_INDEX_MARKER)? {
            return Ok(());
        }
        self.backup_outcomes.clear()?;
        self.job_counts.clear()?;
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            let job: JobRecord = decode("jobs", &k, &v)?;
            self.index_job(None, &job)?;
        }
        self.meta.insert(JOB_INDEX_MARKER, &[])?;
        self.db.flush()?;
        Ok(())
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
        host_time_key(host_id, end_time)
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

    /// A host's sets that ended by `at`, newest first (a range scan: the report reads
    /// only as far back as it needs).
    pub fn sets_newest_first(
        &self,
        host_id: &str,
        at: i64,
    ) -> impl Iterator<Item = Result<SetRecord, CatalogError>> + use<> {
        self.sets
            .range(host_time_key(host_id, 0)..=host_time_key(host_id, at))
            .rev()
            .map(|kv| {
                let (k, v) = kv?;
                decode("sets", &k, &v)
            })
    }

    /// End times of a host's sets that ended in `from..=to`, oldest first, read from
    /// the keys alone (no values decoded: the report's history window).
    pub fn set_end_times(
        &self,
        host_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, CatalogError> {
        self.sets
            .range(host_time_key(host_id, from)..=host_time_key(host_id, to))
            .keys()
            .map(|k| Ok(key_time(&k?)))
            .collect()
    }

    /// End time of a host's newest set that ended before `before`.
    pub fn last_set_end_before(
        &self,
        host_id: &str,
        before: i64,
    ) -> Result<Option<i64>, CatalogError> {
        if before <= 0 {
            return Ok(None);
        }
        Ok(self
            .sets
            .range(host_time_key(host_id, 0)..host_time_key(host_id, before))
            .keys()
            .next_back()
            .transpose()?
            .map(|k| key_time(&k)))
    }

    /// Restore evidence about a source host's backups that finished by `at`, newest
    /// first.
    pub fn restores_newest_first(
        &self,
        source_host: &str,
        at: i64,
    ) -> impl Iterator<Item = Result<RestoreEvidence, CatalogError>> + use<> {
        self.restores
            .range(host_time_key(source_host, 0)..host_time_key(source_host, at.saturating_add(1)))
            .rev()
            .map(|kv| {
                let (k, v) = kv?;
                decode("restores", &k, &v)
            })
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
        self.put_job_unflushed(job)?;
        self.db.flush()?;
        Ok(())
    }

    /// Keeps the outcome index and the counters in step with a job going from `old` to
    /// `new` (a late result can turn a failed job into a succeeded one).
    fn index_job(&self, old: Option<&JobRecord>, new: &JobRecord) -> Result<(), CatalogError> {
        let outcome_key = |j: &JobRecord| {
            let mut k = host_time_key(&j.host_id, j.finished_at);
            k.push(0);
            k.extend_from_slice(j.job_id.as_bytes());
            k
        };
        if let Some(old) = old.filter(|o| o.state.is_final()) {
            if old.state == new.state && old.finished_at == new.finished_at {
                return Ok(());
            }
            self.count_job(old.kind, old.state, -1)?;
            if old.kind == JobKind::Backup {
                self.backup_outcomes.remove(outcome_key(old))?;
            }
        }
        if new.state.is_final() {
            self.count_job(new.kind, new.state, 1)?;
            if new.kind == JobKind::Backup {
                let outcome = BackupOutcome {
                    job_id: new.job_id.clone(),
                    state: new.state,
                    started_at: new.started_at,
                    finished_at: new.finished_at,
                    error: new.error.clone(),
                };
                self.backup_outcomes
                    .insert(outcome_key(new), encode(&outcome))?;
            }
        }
        Ok(())
    }

    fn count_job(&self, kind: JobKind, state: JobState, delta: i64) -> Result<(), CatalogError> {
        let key = format!("{}\0{}", kind.as_str(), state.as_str());
        self.job_counts.fetch_and_update(key.as_bytes(), |old| {
            let n = old
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map_or(0, u64::from_be_bytes);
            Some(n.saturating_add_signed(delta).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    /// Finished jobs so far by (kind, state); not lowered by pruning.
    pub fn job_counts(&self) -> Result<BTreeMap<(String, String), u64>, CatalogError> {
        let mut out = BTreeMap::new();
        for kv in self.job_counts.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let (kind, state) = key.split_once('\0').unwrap_or((&key, ""));
            let n = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            out.insert((kind.to_string(), state.to_string()), n);
        }
        Ok(out)
    }

    /// A host's finished backup jobs that finished by `at`, newest first.
    pub fn backup_outcomes_newest_first(
        &self,
        host_id: &str,
        at: i64,
    ) -> impl Iterator<Item = Result<BackupOutcome, CatalogError>> + use<> {
        self.backup_outcomes
            .range(host_time_key(host_id, 0)..host_time_key(host_id, at.saturating_add(1)))
            .rev()
            .map(|kv| {
                let (k, v) = kv?;
                decode("backup_outcomes", &k, &v)
            })
    }

    /// Forgets finished jobs (and their outcomes) that finished before `before`, and
    /// processed-result markers older than that; queued and running jobs, sets, restore
    /// evidence, the audit log and the job counters stay.
    pub fn prune_history(&self, before: i64) -> Result<Pruned, CatalogError> {
        let mut pruned = Pruned::default();
        // Job ids start with their creation time, so the candidates are a prefix range.
        let upper = format!("j{:011x}", before.max(0).saturating_mul(1000));
        for kv in self.jobs.range(..upper.as_bytes()) {
            let (k, v) = kv?;
            let job: JobRecord = decode("jobs", &k, &v)?;
            if !job.state.is_final() || job.finished_at >= before {
                continue;
            }
            self.jobs.remove(&k)?;
            if job.kind == JobKind::Backup {
                let mut key = host_time_key(&job.host_id, job.finished_at);
                key.push(0);
                key.extend_from_slice(job.job_id.as_bytes());
                self.backup_outcomes.remove(key)?;
            }
            pruned.jobs += 1;
        }
        for kv in self.results.iter() {
            let (k, v) = kv?;
            let at: i64 = decode("results", &k, &v)?;
            if at < before {
                self.results.remove(&k)?;
                pruned.results += 1;
            }
        }
        self.db.flush()?;
        Ok(pruned)
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
        let mut key = host_time_key(&r.source_host, r.finished_at);
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

    /// For bulk imports and benchmarks: like [`Catalog::put_job`] (the same indexes and
    /// counters) but without waiting for the disk; call [`Catalog::flush`] after.
    pub fn put_job_unflushed(&self, job: &JobRecord) -> Result<(), CatalogError> {
        let old = self.jobs.insert(job.job_id.as_bytes(), encode(job))?;
        let old: Option<JobRecord> = old
            .map(|v| decode("jobs", job.job_id.as_bytes(), &v))
            .transpose()?;
        self.index_job(old.as_ref(), job)?;
        let key = Self::active_key(&job.host_id, &job.job_id);
        if job.state.is_final() {
            self.active_jobs.remove(key)?;
        } else {
            self.active_jobs.insert(key, &[])?;
        }
        Ok(())
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

    fn job(id: &str, host: &str, kind: JobKind, state: JobState, finished_at: i64) -> JobRecord {
        JobRecord {
            state,
            started_at: finished_at - 5,
            finished_at,
            attempt: 1,
            ..JobRecord::queued(id.into(), host, kind, "test", finished_at - 10)
        }
    }

    fn counts(c: &Catalog) -> Vec<(String, String, u64)> {
        c.job_counts()
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((k, s), n)| (k, s, n))
            .collect()
    }

    #[test]
    fn job_counters_and_outcomes_follow_every_state_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        // Ids carry the creation time in ms, as new_job_id makes them.
        let id = |t: i64| format!("j{:011x}{:05x}", (t - 10) * 1000, 0);
        let mut a = job(&id(100), "h1", JobKind::Backup, JobState::Queued, 0);
        c.put_job(&a).unwrap();
        assert!(counts(&c).is_empty(), "queued jobs are not counted");
        a.state = JobState::Failed;
        a.finished_at = 100;
        a.error = "disk full".into();
        c.put_job(&a).unwrap();
        c.put_job(&a).unwrap(); // the same state again counts once
        // A late result turns the failure into a success: moved, not added.
        let mut b = job(&id(200), "h1", JobKind::Backup, JobState::Failed, 200);
        c.put_job(&b).unwrap();
        b.state = JobState::Succeeded;
        b.finished_at = 210;
        c.put_job(&b).unwrap();
        c.put_job(&job(
            &id(300),
            "h1",
            JobKind::Prune,
            JobState::Succeeded,
            300,
        ))
        .unwrap();
        c.put_job(&job(
            &id(400),
            "h10",
            JobKind::Backup,
            JobState::Failed,
            400,
        ))
        .unwrap();
        let s = |a: &str, b: &str, n| (a.to_string(), b.to_string(), n);
        assert_eq!(
            counts(&c),
            vec![
                s("backup", "failed", 2),
                s("backup", "succeeded", 1),
                s("prune", "succeeded", 1)
            ]
        );
        let outcomes = |host: &str, at: i64| -> Vec<(i64, JobState)> {
            c.backup_outcomes_newest_first(host, at)
                .map(|o| o.map(|o| (o.finished_at, o.state)).unwrap())
                .collect()
        };
        assert_eq!(
            outcomes("h1", i64::MAX),
            vec![(210, JobState::Succeeded), (100, JobState::Failed)]
        );
        assert_eq!(outcomes("h1", 209), vec![(100, JobState::Failed)]);
        assert_eq!(outcomes("h10", i64::MAX), vec![(400, JobState::Failed)]);

        // The index is rebuilt from the jobs when a catalog predates it.
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        c.meta.remove(JOB_INDEX_MARKER).unwrap();
        c.job_counts.clear().unwrap();
        c.backup_outcomes.clear().unwrap();
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(counts(&c).len(), 3);
        assert_eq!(c.backup_outcomes_newest_first("h1", i64::MAX).count(), 2);

        // Pruning before 250 forgets the two h1 backups, keeps the rest and the counters.
        c.put_job(&job(&id(150), "h1", JobKind::Backup, JobState::Running, 0))
            .unwrap();
        assert!(c.mark_result("old", 100).unwrap());
        assert!(c.mark_result("new", 300).unwrap());
        let p = c.prune_history(250).unwrap();
        assert_eq!((p.jobs, p.results), (2, 1));
        assert!(c.job(&id(100)).unwrap().is_none());
        assert!(c.job(&id(150)).unwrap().is_some(), "running jobs stay");
        assert!(c.job(&id(300)).unwrap().is_some());
        assert_eq!(c.backup_outcomes_newest_first("h1", i64::MAX).count(), 0);
        assert_eq!(c.backup_outcomes_newest_first("h10", i64::MAX).count(), 1);
        assert!(!c.result_seen("old").unwrap() && c.result_seen("new").unwrap());
        assert_eq!(counts(&c).len(), 3, "counters are totals, not history");
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
