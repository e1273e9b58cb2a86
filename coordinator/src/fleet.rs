//! The fleet: who is connected, which policy each host runs, and the jobs — created by
//! schedules, by admins and by retention, delivered to one host at a time, retried when
//! they fail, recorded (idempotently) when their results come back.
//!
//! All durable state is in the [`Catalog`]; what lives only here (sessions, the next
//! schedule slot of each host, the parsed policy) is rebuilt from it at start.

use crate::catalog::{
    Catalog, CatalogError, HostRecord, JobKind, JobProgress, JobRecord, JobState, SetRecord,
};
use crate::config::CoordinatorConfig;
use flotilla_common::archive::collection::Collection;
use flotilla_common::policy::{DestinationSpec, Policy, PolicyError, PolicySet, Retention};
use flotilla_common::proto::v1 as pb;
use flotilla_common::schedule::HostSchedule;
use flotilla_common::storage::{Access, Destination, OpenOptions, StorageError, scoped};
use pb::coordinator_message::Body as Out;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

pub type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// Errors of fleet operations, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<PolicyError>),
    #[error("host {0} is not enrolled")]
    UnknownHost(String),
    #[error("host {0} has no policy (no policy selects its labels)")]
    NoPolicy(String),
    #[error(
        "restore job {0}: its key was held in memory only and the coordinator restarted; run the restore again"
    )]
    RestoreKeyLost(String),
    /// A request that cannot be served as asked (the message says why).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        match &e {
            FleetError::Policy(_) | FleetError::Invalid(_) => {
                Status::invalid_argument(e.to_string())
            }
            FleetError::UnknownHost(_) => Status::not_found(e.to_string()),
            FleetError::NoPolicy(_) | FleetError::RestoreKeyLost(_) => {
                Status::failed_precondition(e.to_string())
            }
            FleetError::Storage(s) if s.is_retryable() => Status::unavailable(e.to_string()),
            FleetError::Storage(_) | FleetError::Config(_) => {
                Status::failed_precondition(e.to_string())
            }
            FleetError::Catalog(_) => Status::internal(e.to_string()),
        }
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The current policy file, parsed.
struct PolicyState {
    revision: u64,
    set: Option<PolicySet>,
}

impl PolicyState {
    /// The policy that selects these labels (the first, should a host enrolled after
    /// `policy apply` match two).
    fn policy_for(&self, labels: &BTreeMap<String, String>) -> Option<&Policy> {
        self.set
            .as_ref()?
            .policies
            .values()
            .find(|p| p.selects(labels))
    }
}

struct Session {
    conn: u64,
    tx: Outbound,
    /// Hello processed: jobs may be sent (not before the agent said what it runs).
    ready: bool,
}

/// What a host's backups need: its policy, where they go and with which account.
#[derive(Clone)]
pub struct HostPlan {
    pub revision: u64,
    pub policy: Policy,
    pub url: String,
    pub spec: DestinationSpec,
    pub keys: Vec<String>,
    pub options: OpenOptions,
}

pub struct Fleet {
    pub catalog: Catalog,
    pub config: CoordinatorConfig,
    sessions: Mutex<HashMap<String, Session>>,
    /// When hosts with running jobs lost their session.
    disconnected_at: Mutex<HashMap<String, i64>>,
    next_conn: AtomicU64,
    policy: RwLock<Arc<PolicyState>>,
    /// Next schedule slot per host with a schedule.
    next_slots: Mutex<HashMap<String, i64>>,
    /// Job state transitions are serialised (a host never gets two running jobs).
    transitions: Mutex<()>,
    containers_ready: Mutex<HashSet<String>>,
    /// Decryption keys of restore jobs (key, passphrase), in memory only: a coordinator
    /// restart loses them and the job fails asking to run it again.
    restore_keys: Mutex<HashMap<String, (String, String)>>,
    job_events: broadcast::Sender<JobRecord>,
    /// When the last pass over policies' restore tests ran.
    last_drill_pass: Mutex<i64>,
}

impl Fleet {
    pub fn new(catalog: Catalog, config: CoordinatorConfig) -> Result<Arc<Fleet>, FleetError> {
        let current = catalog.current_policy()?;
        let state = match current {
            Some(rev) => {
                let set = PolicySet::parse(&rev.file_name, &rev.toml, |_| {
                    Err("keys are stored inline".into())
                })
                .map_err(FleetError::Policy)?;
                PolicyState {
                    revision: rev.revision,
                    set: Some(set),
                }
            }
            None => PolicyState {
                revision: 0,
                set: None,
            },
        };
        let (job_events, _) = broadcast::channel(1024);
        let fleet = Arc::new(Fleet {
            catalog,
            config,
            sessions: Mutex::new(HashMap::new()),
            disconnected_at: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            policy: RwLock::new(Arc::new(state)),
            next_slots: Mutex::new(HashMap::new()),
            transitions: Mutex::new(()),
            containers_ready: Mutex::new(HashSet::new()),
            restore_keys: Mutex::new(HashMap::new()),
            job_events,
            last_drill_pass: Mutex::new(0),
        });
        for host in fleet.catalog.hosts()? {
            let last = fleet.catalog.last_slot(&host.host_id)?;
            // From the last slot that got a job: a slot missed while the coordinator was
            // down still gets its (one) job.
            fleet.reschedule(&host, last.unwrap_or_else(now));
        }
        Ok(fleet)
    }

    fn policy_state(&self) -> Arc<PolicyState> {
        self.policy.read().expect("policy lock").clone()
    }

    pub fn policy_revision(&self) -> u64 {
        self.policy_state().revision
    }

    pub fn policy_name(&self, host: &HostRecord) -> Option<String> {
        self.policy_state()
            .policy_for(&host.labels)
            .map(|p| p.name.clone())
    }

    pub fn subscribe_jobs(&self) -> broadcast::Receiver<JobRecord> {
        self.job_events.subscribe()
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .contains_key(host_id)
    }

    pub fn connected_count(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }

    /// The plan of a host: policy, destination URL (an adopted URL wins) and account.
    pub fn plan(&self, host: &HostRecord) -> Result<HostPlan, FleetError> {
        let state = self.policy_state();
        let policy = state
            .policy_for(&host.labels)
            .ok_or_else(|| FleetError::NoPolicy(host.host_id.clone()))?
            .clone();
        let set = state.set.as_ref().expect("a policy implies a set");
        let spec = set.destinations[&policy.destination].clone();
        let url = host
            .destination_override
            .clone()
            .unwrap_or_else(|| spec.url_for(&host.host_id));
        let keys = policy
            .encrypt_to
            .iter()
            .filter_map(|k| set.keys.get(k).cloned())
            .collect();
        let options = self.config.credentials_for(&spec)?;
        Ok(HostPlan {
            revision: state.revision,
            policy,
            url,
            spec,
            keys,
            options,
        })
    }

    // ------------------------------------------------------------- sessions

    /// Registers a session; an older session of the same host is dropped (its stream
    /// ends). Returns the connection number for [`Fleet::disconnected`].
    pub fn connected(&self, host_id: &str, tx: Outbound) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.sessions.lock().expect("sessions lock").insert(
            host_id.to_string(),
            Session {
                conn,
                tx,
                ready: false,
            },
        );
        self.disconnected_at
            .lock()
            .expect("disconnected lock")
            .remove(host_id);
        conn
    }

    pub fn disconnected(&self, host_id: &str, conn: u64) {
        let mut s = self.sessions.lock().expect("sessions lock");
        if s.get(host_id).is_some_and(|x| x.conn == conn) {
            s.remove(host_id);
            self.disconnected_at
                .lock()
                .expect("disconnected lock")
                .insert(host_id.to_string(), now());
        }
    }

    /// Whether `conn` is still the host's session (not replaced, host not removed).
    pub fn is_current(&self, host_id: &str, conn: u64) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(host_id)
            .is_some_and(|s| s.conn == conn)
    }

    fn sender(&self, host_id: &str) -> Option<Outbound> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(host_id)
            .map(|s| s.tx.clone())
    }

    async fn send(&self, host_id: &str, body: Out) -> bool {
        match self.sender(host_id) {
            Some(tx) => tx
                .send(Ok(pb::CoordinatorMessage { body: Some(body) }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// An agent's Hello: jobs it no longer runs were lost; scheduled jobs for slots it
    /// already served offline are dropped; then its policy and its queued jobs.
    pub async fn hello(self: &Arc<Self>, host_id: &str, hello: pb::Hello) {
        let result = (|| -> Result<(), FleetError> {
            let _t = self.transitions.lock().expect("transitions lock");
            let mut host = self
                .catalog
                .host(host_id)?
                .ok_or_else(|| FleetError::UnknownHost(host_id.to_string()))?;
            let offset_changed = host.utc_offset_secs != hello.utc_offset_secs;
            host.agent_version = hello.agent_version.clone();
            host.policy_revision_applied = hello.policy_revision;
            host.utc_offset_secs = hello.utc_offset_secs;
            host.last_backup_at = host.last_backup_at.max(hello.last_backup_at);
            host.last_seen = now();
            self.catalog.put_host(&host)?;
            for mut job in self.catalog.active_jobs(host_id)? {
                if job.state == JobState::Running && !hello.running_jobs.contains(&job.job_id) {
                    job.error = "the agent stopped during the job (killed or restarted); no set \
                                 without a manifest is counted"
                        .into();
                    self.fail_or_retry(&mut job);
                    self.save_job(&job)?;
                } else if job.state == JobState::Queued
                    && job.kind == JobKind::Backup
                    && job.scheduled_for > 0
                    && job.scheduled_for <= host.last_backup_at
                {
                    job.state = JobState::Cancelled;
                    job.note = "the agent ran this slot itself while the coordinator was \
                                unreachable"
                        .into();
                    job.finished_at = now();
                    self.save_job(&job)?;
                }
            }
            if offset_changed {
                self.reschedule(&host, now());
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!("{host_id}: hello: {e}");
        }
        if let Some(s) = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get_mut(host_id)
        {
            s.ready = true;
        }
        self.push_policy(host_id).await;
        self.dispatch(host_id).await;
    }

    pub fn heartbeat(&self, host_id: &str) {
        // last_seen is kept in memory-cheap form: written at most once a minute.
        if let Ok(Some(mut host)) = self.catalog.host(host_id)
            && now() - host.last_seen >= 60
        {
            host.last_seen = now();
            let _ = self.catalog.put_host(&host);
        }
    }

    pub fn policy_ack(&self, host_id: &str, ack: pb::PolicyAck) {
        if !ack.applied {
            tracing::warn!(
                "{host_id} could not apply policy revision {}: {}",
                ack.revision,
                ack.error
            );
            return;
        }
        let _t = self.transitions.lock().expect("transitions lock");
        if let Ok(Some(mut host)) = self.catalog.host(host_id) {
            host.policy_revision_applied = ack.revision;
            host.last_seen = now();
            if let Err(e) = self.catalog.put_host(&host) {
                tracing::error!("{host_id}: {e}");
            }
        }
    }

    // --------------------------------------------------------------- policy

    /// The message pushing a host's current policy, with a fresh offline credential.
    async fn policy_push(&self, host: &HostRecord) -> Result<pb::PolicyPush, FleetError> {
        let revision = self.policy_revision();
        let plan = match self.plan(host) {
            Ok(p) => p,
            Err(FleetError::NoPolicy(_)) => {
                return Ok(pb::PolicyPush {
                    policy: None,
                    revision,
                });
            }
            Err(e) => return Err(e),
        };
        let credential = self
            .credential(
                &plan,
                Access::Backup,
                Duration::from_secs(self.config.offline_credential_ttl_secs),
            )
            .await?;
        let p = &plan.policy;
        Ok(pb::PolicyPush {
            revision,
            policy: Some(pb::AgentPolicy {
                name: p.name.clone(),
                revision,
                sources: p.sources.clone(),
                exclude: p.exclude.clone(),
                schedule: p.schedule.clone().unwrap_or_default(),
                jitter_secs: p.jitter_secs,
                full_if_older_than_secs: p.full_if_older_than_secs.unwrap_or(0),
                volsize_mb: p.volsize_mb,
                encrypt_to: plan.keys.clone(),
                destination: plan.url.clone(),
                bandwidth_limit_bytes_per_sec: p
                    .bandwidth_limit_mb
                    .map_or(0, |mb| u64::from(mb) * 1_000_000),
                max_age_secs: p.max_age_secs.unwrap_or(0),
                retention: p.retention.map(retention_pb),
                offline_credential_json: credential,
                host_id: host.host_id.clone(),
            }),
        })
    }

    async fn push_policy(&self, host_id: &str) {
        let host = match self.catalog.host(host_id) {
            Ok(Some(h)) => h,
            _ => return,
        };
        match self.policy_push(&host).await {
            Ok(push) => {
                self.send(host_id, Out::Policy(push)).await;
            }
            Err(e) => tracing::error!("{host_id}: cannot push the policy: {e}"),
        }
    }

    /// Validates a policy file against the enrolled hosts; unless `dry_run`, stores it
    /// as the next revision, reschedules and pushes it to every connected agent.
    pub async fn apply_policy(
        self: &Arc<Self>,
        file_name: &str,
        toml: &str,
        dry_run: bool,
        by: &str,
    ) -> Result<pb::ApplyPolicyResponse, FleetError> {
        let set = PolicySet::parse(file_name, toml, |f| {
            Err(format!(
                "public_key_file {f:?} must be inlined as public_key (`flotilla policy apply` \
                 does this)"
            ))
        })
        .map_err(FleetError::Policy)?;
        let hosts = self.catalog.hosts()?;
        set.assign(
            file_name,
            hosts.iter().map(|h| (h.host_id.as_str(), &h.labels)),
        )
        .map_err(FleetError::Policy)?;
        for p in set.policies.values() {
            if let Some(on) = &p.restore_test_on
                && !hosts.iter().any(|h| &h.host_id == on)
            {
                return Err(FleetError::Policy(vec![PolicyError {
                    file: file_name.to_string(),
                    line: p.line,
                    message: format!(
                        "policy {:?}: restore_test_on {on:?} is not an enrolled host",
                        p.name
                    ),
                }]));
            }
        }
        for (name, dest) in &set.destinations {
            // An account the coordinator has no credentials for fails now, not at 3 am.
            self.config.credentials_for(dest).map_err(|e| {
                FleetError::Policy(vec![PolicyError {
                    file: file_name.to_string(),
                    line: 0,
                    message: format!("destination {name:?}: {e}"),
                }])
            })?;
        }
        let old = self.policy_state();
        let new = PolicyState {
            revision: old.revision + 1,
            set: Some(set),
        };
        let mut changes = Vec::new();
        for h in &hosts {
            let before = old.policy_for(&h.labels);
            let after = new.policy_for(&h.labels);
            let diff = policy_diff(before, after);
            if !diff.is_empty() {
                changes.push(pb::HostChange {
                    host_id: h.host_id.clone(),
                    hostname: h.hostname.clone(),
                    old_policy: before.map(|p| p.name.clone()).unwrap_or_default(),
                    new_policy: after.map(|p| p.name.clone()).unwrap_or_default(),
                    changes: diff,
                });
            }
        }
        if dry_run {
            return Ok(pb::ApplyPolicyResponse {
                revision: new.revision,
                changes,
                stored: false,
            });
        }
        let revision = self.catalog.put_policy(file_name, toml, by, now())?;
        let new = PolicyState { revision, ..new };
        *self.policy.write().expect("policy lock") = Arc::new(new);
        for h in &hosts {
            self.reschedule(h, now());
        }
        // Push to everyone connected, a bounded number at a time (minting a Swift
        // credential lists the container).
        let connected: Vec<String> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .keys()
            .cloned()
            .collect();
        let fleet = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(connected)
                .for_each_concurrent(256, |h| {
                    let fleet = fleet.clone();
                    async move { fleet.push_policy(&h).await }
                })
                .await;
        });
        Ok(pb::ApplyPolicyResponse {
            revision,
            changes,
            stored: true,
        })
    }

    // ------------------------------------------------------------- schedule

    /// Computes the next slot of a host after `after`, or forgets it (no schedule).
    fn reschedule(&self, host: &HostRecord, after: i64) {
        let state = self.policy_state();
        let slot = state.policy_for(&host.labels).and_then(|p| {
            let expr = p.schedule.as_deref()?;
            let s = HostSchedule::new(
                expr,
                &host.host_id,
                &p.name,
                p.jitter_secs,
                host.utc_offset_secs,
            )
            .ok()?;
            s.next_after(after)
        });
        let mut slots = self.next_slots.lock().expect("slots lock");
        match slot {
            Some(t) => slots.insert(host.host_id.clone(), t),
            None => slots.remove(&host.host_id),
        };
    }

    pub fn forget_schedule(&self, host_id: &str) {
        self.next_slots.lock().expect("slots lock").remove(host_id);
    }

    pub fn host_enrolled(&self, host: &HostRecord) {
        self.reschedule(host, now());
    }

    /// One scheduler pass: jobs for due slots, then delivery of queued jobs (new ones,
    /// retries whose delay is over) to connected hosts.
    pub async fn tick(self: &Arc<Self>) {
        let t = now();
        let due: Vec<(String, i64)> = self
            .next_slots
            .lock()
            .expect("slots lock")
            .iter()
            .filter(|(_, slot)| **slot <= t)
            .map(|(h, s)| (h.clone(), *s))
            .collect();
        for (host_id, slot) in due {
            if let Err(e) = self.schedule_slot(&host_id, slot) {
                tracing::error!("{host_id}: scheduling: {e}");
            }
        }
        let drills_due = {
            let mut last = self.last_drill_pass.lock().expect("drill lock");
            let due = t - *last >= self.config.drill_check_secs.max(1) as i64;
            if due {
                *last = t;
            }
            due
        };
        if drills_due && let Err(e) = self.schedule_drills(t) {
            tracing::error!("scheduling restore tests: {e}");
        }
        let hosts = match self.catalog.hosts_with_active_jobs() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("scheduler: {e}");
                return;
            }
        };
        for host_id in hosts {
            self.expire_unstarted(&host_id, t);
            if self.is_connected(&host_id) {
                self.dispatch(&host_id).await;
            } else {
                self.fail_lost_jobs(&host_id, t);
            }
        }
    }

    /// Restore tests that policies ask for (`restore_test`): for each backed-up host
    /// whose last drill is older than the interval, one drill job on the drill host
    /// (the host itself by default), which restores with its own key. A drill that
    /// cannot start within one interval is dropped rather than piled up.
    fn schedule_drills(&self, t: i64) -> Result<(), FleetError> {
        let state = self.policy_state();
        for host in self.catalog.hosts()? {
            let Some(policy) = state.policy_for(&host.labels) else {
                continue;
            };
            let Some(every) = policy.restore_test_secs else {
                continue;
            };
            if host.last_backup_at == 0 {
                continue; // nothing to restore yet
            }
            let drill_host = policy
                .restore_test_on
                .clone()
                .unwrap_or_else(|| host.host_id.clone());
            if self.catalog.host(&drill_host)?.is_none() {
                tracing::warn!(
                    "policy {:?}: restore_test_on host {drill_host} is not enrolled; no drill for {}",
                    policy.name,
                    host.host_id
                );
                continue;
            }
            let last = self
                .catalog
                .restores(Some(&host.host_id), 0)?
                .into_iter()
                .filter(|e| e.drill)
                .map(|e| e.finished_at)
                .max()
                .unwrap_or(0);
            if t - last < every as i64 {
                continue;
            }
            let _t = self.transitions.lock().expect("transitions lock");
            let pending = self.catalog.active_jobs(&drill_host)?.into_iter().any(|j| {
                j.restore
                    .as_ref()
                    .is_some_and(|r| r.drill && r.source_host == host.host_id)
            });
            if pending {
                continue;
            }
            let mut job = self.new_job(&drill_host, JobKind::Restore, "schedule")?;
            job.restore = Some(crate::catalog::RestoreParams {
                source_host: host.host_id.clone(),
                time: 0,
                paths: Vec::new(),
                target: String::new(),
                force: false,
                drill: true,
                agent_key: true,
            });
            job.start_by = job.created_at.saturating_add(every as i64);
            self.save_job(&job)?;
            tracing::info!(
                "restore test of {} on {drill_host}: job {}",
                host.host_id,
                job.job_id
            );
        }
        Ok(())
    }

    /// Running jobs of a host gone longer than the grace period: failed, and retried
    /// when it returns. (A host that was merely disconnected and still runs the job
    /// reports the result anyway; it is recorded when it arrives.)
    fn fail_lost_jobs(&self, host_id: &str, t: i64) {
        let since = self
            .disconnected_at
            .lock()
            .expect("disconnected lock")
            .get(host_id)
            .copied();
        // Not seen since the coordinator started: measured from the start.
        let since = match since {
            Some(s) => s,
            None => {
                self.disconnected_at
                    .lock()
                    .expect("disconnected lock")
                    .insert(host_id.to_string(), t);
                return;
            }
        };
        if t - since < self.config.lost_job_grace_secs as i64 {
            return;
        }
        let _t = self.transitions.lock().expect("transitions lock");
        let Ok(active) = self.catalog.active_jobs(host_id) else {
            return;
        };
        for mut job in active {
            if job.state == JobState::Running {
                job.error = format!(
                    "the agent has been unreachable for {}s during the job",
                    t - since
                );
                self.fail_or_retry(&mut job);
                if let Err(e) = self.save_job(&job) {
                    tracing::error!("{host_id}: {e}");
                }
            }
        }
    }

    /// Queued jobs whose start deadline passed (a restore for a host that stayed
    /// offline): failed, with the reason, and a restore's key dropped.
    fn expire_unstarted(&self, host_id: &str, t: i64) {
        let _t = self.transitions.lock().expect("transitions lock");
        let Ok(active) = self.catalog.active_jobs(host_id) else {
            return;
        };
        for mut job in active {
            if job.state != JobState::Queued || job.start_by == 0 || t < job.start_by {
                continue;
            }
            let why = if self.is_connected(host_id) {
                "was busy with other jobs"
            } else {
                "was not connected"
            };
            job.state = JobState::Failed;
            job.finished_at = t;
            job.error = format!(
                "not started: {host_id} {why} within {}s of the request; nothing was written{}",
                job.start_by - job.created_at,
                if job.kind == JobKind::Restore {
                    " and the key was dropped"
                } else {
                    ""
                }
            );
            self.restore_keys
                .lock()
                .expect("keys lock")
                .remove(&job.job_id);
            if let Err(e) = self.save_job(&job) {
                tracing::error!("{host_id}: {e}");
            }
            self.record_restore_evidence(&job);
        }
    }

    /// Cancels a job at an admin's request: a queued one at once (a restore's key is
    /// dropped); a running one by asking its agent, which stops at the next file and
    /// reports it cancelled (a backup's incomplete set has no manifest and is not
    /// counted). Returns the job as it stands.
    pub async fn cancel_job(&self, job_id: &str, by: &str) -> Result<pb::Job, FleetError> {
        let job = {
            let _t = self.transitions.lock().expect("transitions lock");
            let mut job = self
                .catalog
                .job(job_id)?
                .ok_or_else(|| FleetError::Invalid(format!("no job {job_id}")))?;
            match job.state {
                JobState::Queued => {
                    job.state = JobState::Cancelled;
                    job.finished_at = now();
                    job.error = format!("cancelled by {by} before it started; nothing was written");
                    self.restore_keys
                        .lock()
                        .expect("keys lock")
                        .remove(&job.job_id);
                    self.save_job(&job)?;
                    self.record_restore_evidence(&job);
                    return Ok(job_pb(&job));
                }
                JobState::Running => job,
                done => {
                    return Err(FleetError::Invalid(format!(
                        "job {job_id} has already ended ({done:?})"
                    )));
                }
            }
        };
        let asked = self
            .send(
                &job.host_id,
                Out::Cancel(pb::CancelJob {
                    job_id: job.job_id.clone(),
                }),
            )
            .await;
        if !asked {
            return Err(FleetError::Invalid(format!(
                "{} is not connected: its running job {job_id} cannot be asked to stop now \
                 (it is marked failed if the agent comes back without it)",
                job.host_id
            )));
        }
        tracing::info!("job {job_id} on {}: cancel requested by {by}", job.host_id);
        Ok(job_pb(&job))
    }

    /// The freshness report as of `at` (0: now), for hosts with all `labels`.
    pub fn report(
        &self,
        labels: BTreeMap<String, String>,
        at: i64,
        history_days: u32,
    ) -> Result<crate::report::FleetReport, FleetError> {
        let state = self.policy_state();
        let opts = crate::report::ReportOptions {
            now: if at > 0 { at } else { now() },
            offline_after_secs: self.config.offline_after_secs as i64,
            labels,
            history_days,
        };
        Ok(crate::report::build(
            &self.catalog,
            |l| state.policy_for(l),
            state.revision,
            |h| self.is_connected(h),
            &opts,
        )?)
    }

    /// Keeps a finished restore job as evidence.
    fn record_restore_evidence(&self, job: &JobRecord) {
        let Some(params) = &job.restore else { return };
        let evidence = crate::catalog::RestoreEvidence {
            job_id: job.job_id.clone(),
            source_host: params.source_host.clone(),
            target_host: job.host_id.clone(),
            drill: params.drill,
            state: job.state,
            finished_at: job.finished_at,
            error: job.error.clone(),
            origin: job.origin.clone(),
            outcome: job.restore_outcome.clone(),
        };
        if let Err(e) = self.catalog.put_restore(&evidence) {
            tracing::error!("{}: restore evidence of {}: {e}", job.host_id, job.job_id);
        }
    }

    fn schedule_slot(&self, host_id: &str, slot: i64) -> Result<(), FleetError> {
        let Some(host) = self.catalog.host(host_id)? else {
            self.forget_schedule(host_id);
            return Ok(());
        };
        {
            let _t = self.transitions.lock().expect("transitions lock");
            // One pending scheduled backup per host: a newer slot replaces a queued one
            // (an offline host gets one backup when it returns, not one per slot).
            let active = self.catalog.active_jobs(host_id)?;
            if let Some(mut queued) = active.into_iter().find(|j| {
                j.state == JobState::Queued && j.kind == JobKind::Backup && j.scheduled_for > 0
            }) {
                queued.scheduled_for = slot;
                self.save_job(&queued)?;
            } else if slot > host.last_backup_at {
                let mut job = self.new_job(host_id, JobKind::Backup, "schedule")?;
                job.scheduled_for = slot;
                self.save_job(&job)?;
            }
            self.catalog.set_last_slot(host_id, slot)?;
        }
        self.reschedule(&host, slot.max(now()));
        Ok(())
    }

    // ----------------------------------------------------------------- jobs

    fn new_job(&self, host_id: &str, kind: JobKind, origin: &str) -> Result<JobRecord, FleetError> {
        let t = chrono::Utc::now();
        Ok(JobRecord::queued(
            self.catalog.new_job_id(t.timestamp_millis())?,
            host_id,
            kind,
            origin,
            t.timestamp(),
        ))
    }

    fn save_job(&self, job: &JobRecord) -> Result<(), FleetError> {
        self.catalog.put_job(job)?;
        let _ = self.job_events.send(job.clone());
        Ok(())
    }

    /// A failed attempt: queued again after a growing delay while attempts remain.
    fn fail_or_retry(&self, job: &mut JobRecord) {
        if job.attempt < self.config.job_max_attempts {
            let delay = self
                .config
                .job_retry_delay_secs
                .saturating_mul(1 << job.attempt.saturating_sub(1).min(16));
            job.state = JobState::Queued;
            job.not_before = now() + delay as i64;
            job.note = format!(
                "attempt {} of {} failed; retrying after {delay}s",
                job.attempt, self.config.job_max_attempts
            );
        } else {
            job.state = JobState::Failed;
            job.finished_at = now();
        }
    }

    /// An on-demand backup (`flotilla backup HOST`).
    pub async fn trigger_backup(
        self: &Arc<Self>,
        host_id: &str,
        full: bool,
        by: &str,
    ) -> Result<JobRecord, FleetError> {
        let host = self
            .catalog
            .host(host_id)?
            .ok_or_else(|| FleetError::UnknownHost(host_id.to_string()))?;
        self.plan(&host)?;
        let job = {
            let _t = self.transitions.lock().expect("transitions lock");
            let mut job = self.new_job(host_id, JobKind::Backup, by)?;
            job.force_full = full;
            self.save_job(&job)?;
            job
        };
        self.dispatch(host_id).await;
        Ok(self.catalog.job(&job.job_id)?.unwrap_or(job))
    }

    /// Sends the host its next queued job, unless one is running or it is offline.
    pub async fn dispatch(self: &Arc<Self>, host_id: &str) {
        let ready = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(host_id)
            .is_some_and(|s| s.ready);
        if !ready {
            return;
        }
        let picked = (|| -> Result<Option<JobRecord>, FleetError> {
            let _t = self.transitions.lock().expect("transitions lock");
            let active = self.catalog.active_jobs(host_id)?;
            if active.iter().any(|j| j.state == JobState::Running) {
                return Ok(None);
            }
            let t = now();
            let Some(mut job) = active
                .into_iter()
                .find(|j| j.state == JobState::Queued && j.not_before <= t)
            else {
                return Ok(None);
            };
            job.state = JobState::Running;
            job.attempt += 1;
            job.started_at = t;
            job.progress = None;
            self.save_job(&job)?;
            Ok(Some(job))
        })();
        let mut job = match picked {
            Ok(Some(j)) => j,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("{host_id}: dispatch: {e}");
                return;
            }
        };
        match self.assignment(&job).await {
            Ok(a) => {
                if !self.send(host_id, Out::Job(a)).await {
                    // The agent's next Hello will not list it: failed and retried then.
                    tracing::info!("{host_id}: session ended while sending {}", job.job_id);
                }
            }
            Err(e) => {
                let _t = self.transitions.lock().expect("transitions lock");
                job.error = e.to_string();
                self.fail_or_retry(&mut job);
                if let Err(e) = self.save_job(&job) {
                    tracing::error!("{host_id}: {e}");
                }
            }
        }
    }

    /// A restore of `source`'s backups on `target` (the key stays in memory).
    #[allow(clippy::too_many_arguments)]
    pub async fn restore(
        self: &Arc<Self>,
        r: pb::RestoreRequest,
        by: &str,
    ) -> Result<JobRecord, FleetError> {
        let source = self
            .catalog
            .host(&r.source_host_id)?
            .ok_or_else(|| FleetError::UnknownHost(r.source_host_id.clone()))?;
        let target_host = if r.target_host_id.is_empty() {
            r.source_host_id.clone()
        } else {
            r.target_host_id.clone()
        };
        self.catalog
            .host(&target_host)?
            .ok_or_else(|| FleetError::UnknownHost(target_host.clone()))?;
        self.plan(&source)?;
        if r.drill && !r.target.is_empty() {
            return Err(FleetError::Invalid(
                "a restore test restores into a temporary directory of the agent's; give no target"
                    .into(),
            ));
        }
        if !r.drill && !r.target.starts_with('/') {
            return Err(FleetError::Invalid(format!(
                "restore target {:?} must be an absolute path on {target_host}",
                r.target
            )));
        }
        let job = {
            let _t = self.transitions.lock().expect("transitions lock");
            let mut job = self.new_job(&target_host, JobKind::Restore, by)?;
            job.restore = Some(crate::catalog::RestoreParams {
                source_host: r.source_host_id.clone(),
                time: r.time,
                paths: r.paths.clone(),
                target: r.target.clone(),
                force: r.force,
                drill: r.drill,
                agent_key: false,
            });
            if r.start_within_secs > 0 {
                job.start_by = job.created_at.saturating_add(r.start_within_secs as i64);
            }
            self.restore_keys
                .lock()
                .expect("keys lock")
                .insert(job.job_id.clone(), (r.decryption_key, r.passphrase));
            self.save_job(&job)?;
            job
        };
        self.dispatch(&target_host).await;
        Ok(self.catalog.job(&job.job_id)?.unwrap_or(job))
    }

    /// A read-only credential for `host`'s container (for the admin CLI).
    pub async fn read_access(&self, host_id: &str) -> Result<pb::ReadAccessResponse, FleetError> {
        let host = self
            .catalog
            .host(host_id)?
            .ok_or_else(|| FleetError::UnknownHost(host_id.to_string()))?;
        let plan = self.plan(&host)?;
        let ttl = Duration::from_secs(self.config.job_credential_ttl_secs);
        let credential_json = self.credential(&plan, Access::Restore, ttl).await?;
        Ok(pb::ReadAccessResponse {
            destination: plan.url.clone(),
            credential_json,
        })
    }

    /// The assignment of a job, with a credential minted for it alone.
    async fn assignment(&self, job: &JobRecord) -> Result<pb::JobAssignment, FleetError> {
        let host = self
            .catalog
            .host(&job.host_id)?
            .ok_or_else(|| FleetError::UnknownHost(job.host_id.clone()))?;
        let ttl = Duration::from_secs(self.config.job_credential_ttl_secs);
        if job.kind == JobKind::Restore {
            let params = job.restore.clone().ok_or_else(|| {
                FleetError::NoPolicy(format!("{} (restore job without parameters)", job.host_id))
            })?;
            let (key, passphrase) = if params.agent_key {
                (String::new(), String::new())
            } else {
                self.restore_keys
                    .lock()
                    .expect("keys lock")
                    .get(&job.job_id)
                    .cloned()
                    .ok_or_else(|| FleetError::RestoreKeyLost(job.job_id.clone()))?
            };
            let source = self
                .catalog
                .host(&params.source_host)?
                .ok_or_else(|| FleetError::UnknownHost(params.source_host.clone()))?;
            let plan = self.plan(&source)?;
            let credential_json = self.credential(&plan, Access::Restore, ttl).await?;
            return Ok(pb::JobAssignment {
                job_id: job.job_id.clone(),
                kind: pb::JobKind::Restore as i32,
                attempt: job.attempt,
                destination: plan.url.clone(),
                credential_json,
                spec: Some(pb::job_assignment::Spec::Restore(pb::RestoreSpec {
                    time: params.time,
                    paths: params.paths.clone(),
                    target: params.target.clone(),
                    force: params.force,
                    decryption_key: key,
                    passphrase,
                    drill: params.drill,
                })),
            });
        }
        let plan = self.plan(&host)?;
        let (kind, access, spec) = match job.kind {
            JobKind::Backup => (
                pb::JobKind::Backup,
                Access::Backup,
                pb::job_assignment::Spec::Backup(pb::BackupSpec {
                    force_full: job.force_full,
                    scheduled_for: job.scheduled_for,
                }),
            ),
            JobKind::Prune => (
                pb::JobKind::Prune,
                Access::Prune,
                pb::job_assignment::Spec::Prune(pb::PruneSpec {
                    retention: plan.policy.retention.map(retention_pb),
                }),
            ),
            JobKind::Restore | JobKind::Verify => {
                return Err(FleetError::NoPolicy(format!(
                    "{} ({:?} jobs are not delivered by this coordinator yet)",
                    job.host_id, job.kind
                )));
            }
        };
        let credential_json = self.credential(&plan, access, ttl).await?;
        Ok(pb::JobAssignment {
            job_id: job.job_id.clone(),
            kind: kind as i32,
            attempt: job.attempt,
            destination: plan.url.clone(),
            credential_json,
            spec: Some(spec),
        })
    }

    /// A scoped credential for the host's container (none for local directories); the
    /// container is created first, with the account credentials, when a backup needs it.
    async fn credential(
        &self,
        plan: &HostPlan,
        access: Access,
        ttl: Duration,
    ) -> Result<String, FleetError> {
        let dest = Destination::parse(&plan.url)?;
        if dest.container().is_none() {
            return Ok(String::new());
        }
        if access == Access::Backup {
            let ready = self
                .containers_ready
                .lock()
                .expect("containers lock")
                .contains(&plan.url);
            if !ready {
                if dest.create_container(&plan.options).await? {
                    tracing::info!("created {dest}");
                }
                self.containers_ready
                    .lock()
                    .expect("containers lock")
                    .insert(plan.url.clone());
            }
        }
        Ok(scoped::mint(&dest, &plan.options.credentials, access, ttl)
            .await?
            .to_json())
    }

    pub fn progress(&self, host_id: &str, p: pb::Progress) {
        let _t = self.transitions.lock().expect("transitions lock");
        if let Ok(Some(mut job)) = self.catalog.job(&p.job_id)
            && job.host_id == host_id
            && job.state == JobState::Running
        {
            job.progress = Some(JobProgress {
                phase: p.phase,
                files_done: p.files_done,
                bytes_done: p.bytes_done,
                files_total: p.files_total,
                bytes_total: p.bytes_total,
            });
            let _ = self.catalog.put_job_progress(&job);
            let _ = self.job_events.send(job);
        }
    }

    /// A job result. Idempotent: a result already recorded is only acknowledged again.
    pub async fn result(self: &Arc<Self>, host_id: &str, r: pb::JobResult) {
        let result_id = r.result_id.clone();
        let outcome = self.record_result(host_id, r);
        match outcome {
            Ok(after) => {
                self.send(
                    host_id,
                    Out::ResultAck(pb::ResultAck {
                        result_id: result_id.clone(),
                    }),
                )
                .await;
                if after.refresh_sets {
                    let fleet = self.clone();
                    let host_id = host_id.to_string();
                    tokio::spawn(async move {
                        if let Err(e) = fleet.refresh_sets(&host_id).await {
                            tracing::warn!("{host_id}: re-listing after prune: {e}");
                        }
                    });
                }
            }
            // No ack: the agent keeps the result and sends it again.
            Err(e) => tracing::error!("{host_id}: result {result_id}: {e}"),
        }
        self.dispatch(host_id).await;
    }

    fn record_result(&self, host_id: &str, r: pb::JobResult) -> Result<AfterResult, FleetError> {
        let _t = self.transitions.lock().expect("transitions lock");
        let mut after = AfterResult::default();
        if r.result_id.is_empty() || self.catalog.result_seen(&r.result_id)? {
            return Ok(after);
        }
        let state = match pb::JobState::try_from(r.state) {
            Ok(pb::JobState::Succeeded) => JobState::Succeeded,
            Ok(pb::JobState::Cancelled) => JobState::Cancelled,
            _ => JobState::Failed,
        };
        let kind = match pb::JobKind::try_from(r.kind) {
            Ok(pb::JobKind::Prune) => JobKind::Prune,
            Ok(pb::JobKind::Restore) => JobKind::Restore,
            Ok(pb::JobKind::Verify) => JobKind::Verify,
            _ => JobKind::Backup,
        };
        let mut job = match self.catalog.job(&r.job_id)? {
            Some(j) if !r.job_id.is_empty() && j.host_id == host_id => j,
            Some(_) => {
                tracing::warn!("{host_id} reported job {} of another host", r.job_id);
                return Ok(after);
            }
            None => {
                // A run the agent started itself (offline schedule), or a job this
                // catalog no longer knows: recorded as it happened.
                let mut j = self.new_job(host_id, kind, "agent")?;
                j.scheduled_for = r.scheduled_for;
                j.attempt = 1;
                j
            }
        };
        job.started_at = r.started_at;
        job.finished_at = r.finished_at;
        job.error = r.error.clone();
        job.note = r.note.clone();
        job.progress = None;
        let set = r
            .set
            .as_ref()
            .filter(|s| s.end_time > 0)
            .map(|s| SetRecord {
                host_id: host_id.to_string(),
                kind: s.kind.clone(),
                start_time: s.start_time,
                end_time: s.end_time,
                volumes: s.volumes,
                bytes: s.bytes,
                files: s.files,
            });
        job.set = set.clone();
        if kind == JobKind::Restore {
            // Not retried: the operator sees the failure; the key leaves memory now.
            job.state = state;
            job.restore_outcome = r.restore.as_ref().map(restore_outcome_record);
            if job.state.is_final() {
                self.restore_keys
                    .lock()
                    .expect("keys lock")
                    .remove(&job.job_id);
                self.record_restore_evidence(&job);
            }
        } else if state == JobState::Failed
            && !r.job_id.is_empty()
            && job.state == JobState::Running
        {
            self.fail_or_retry(&mut job);
        } else {
            job.state = state;
        }
        if kind == JobKind::Backup && state == JobState::Succeeded {
            if let Some(set) = &set {
                self.catalog.put_set(set)?;
                if let Some(mut host) = self.catalog.host(host_id)? {
                    host.last_backup_at = host.last_backup_at.max(set.end_time);
                    self.catalog.put_host(&host)?;
                }
            }
            // Queued scheduled runs for slots this backup already covers are moot.
            for mut q in self.catalog.active_jobs(host_id)? {
                if q.state == JobState::Queued
                    && q.kind == JobKind::Backup
                    && q.scheduled_for > 0
                    && q.scheduled_for <= job.scheduled_for.max(job.started_at)
                    && q.job_id != job.job_id
                {
                    q.state = JobState::Cancelled;
                    q.finished_at = now();
                    q.note = format!("covered by job {}", job.job_id);
                    self.save_job(&q)?;
                }
            }
            let host = self.catalog.host(host_id)?;
            let retention = host
                .as_ref()
                .and_then(|h| self.policy_state().policy_for(&h.labels).cloned())
                .and_then(|p| p.retention);
            if retention.is_some() {
                let prune = self.new_job(host_id, JobKind::Prune, "retention")?;
                self.save_job(&prune)?;
            }
        }
        if kind == JobKind::Prune && state == JobState::Succeeded {
            after.refresh_sets = true;
        }
        self.save_job(&job)?;
        // Last: a crash before this line makes the agent send the result again, and
        // everything above is safe to repeat.
        self.catalog.mark_result(&r.result_id, now())?;
        Ok(after)
    }

    // ----------------------------------------------------------- inventory

    /// The complete sets at a URL, from its listing alone (no key needed).
    pub async fn list_sets(
        &self,
        host_id: &str,
        url: &str,
        options: &OpenOptions,
    ) -> Result<(Vec<SetRecord>, usize, usize), FleetError> {
        let coll = list_collection(url, options).await?;
        let mut sets = Vec::new();
        for chain in &coll.chains {
            for s in chain.sets() {
                sets.push(set_record(host_id, s));
            }
        }
        Ok((sets, coll.chains.len(), coll.incomplete.len()))
    }

    /// `report --check-storage`: each selected host's storage listing against its
    /// catalog sets (listings only: no keys, nothing read or written), eight hosts at a
    /// time.
    pub async fn check_storage(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<crate::report::StorageCheck, FleetError> {
        use futures::StreamExt;
        let hosts: Vec<HostRecord> = self
            .catalog
            .hosts()?
            .into_iter()
            .filter(|h| labels.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
            .collect();
        let checked_at = now();
        let mut rows: Vec<crate::report::HostStorageCheck> =
            futures::stream::iter(hosts.into_iter().map(|host| self.check_host_storage(host)))
                .buffer_unordered(8)
                .collect()
                .await;
        rows.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(crate::report::StorageCheck::new(checked_at, rows))
    }

    async fn check_host_storage(&self, host: HostRecord) -> crate::report::HostStorageCheck {
        let mut row = crate::report::HostStorageCheck {
            host_id: host.host_id.clone(),
            ..Default::default()
        };
        let plan = match self.plan(&host) {
            Ok(plan) => plan,
            Err(FleetError::NoPolicy(_)) if host.destination_override.is_none() => {
                row.note = "no policy selects the host: no destination to check".into();
                return row;
            }
            Err(e) => {
                row.error = Some(e.to_string());
                return row;
            }
        };
        row.destination = plan.url.clone();
        let catalog_sets = match self.catalog.sets(&host.host_id) {
            Ok(s) => s,
            Err(e) => {
                row.error = Some(e.to_string());
                return row;
            }
        };
        match list_collection(&plan.url, &plan.options).await {
            Ok(coll) => row.compare(&host.host_id, &catalog_sets, &coll),
            Err(e) => row.error = Some(e.to_string()),
        }
        row
    }

    /// Replaces a host's sets with what its container holds. File counts reported by
    /// agents are kept for sets that are still there.
    pub async fn refresh_sets(&self, host_id: &str) -> Result<usize, FleetError> {
        let host = self
            .catalog
            .host(host_id)?
            .ok_or_else(|| FleetError::UnknownHost(host_id.to_string()))?;
        let plan = self.plan(&host)?;
        let (mut sets, _, _) = self.list_sets(host_id, &plan.url, &plan.options).await?;
        let known: HashMap<i64, SetRecord> = self
            .catalog
            .sets(host_id)?
            .into_iter()
            .map(|s| (s.end_time, s))
            .collect();
        for s in &mut sets {
            if let Some(k) = known.get(&s.end_time) {
                s.files = k.files;
            }
        }
        self.catalog.replace_sets(host_id, &sets)?;
        Ok(sets.len())
    }

    /// `host adopt`: registers the chains at `url` for the host and points its backups
    /// there.
    pub async fn adopt(
        &self,
        host_id: &str,
        url: &str,
        account: &str,
    ) -> Result<pb::AdoptHostResponse, FleetError> {
        let mut host = self
            .catalog
            .host(host_id)?
            .ok_or_else(|| FleetError::UnknownHost(host_id.to_string()))?;
        let dest = Destination::parse(url)?;
        let kind = match dest {
            Destination::Azure { .. } => "azure",
            Destination::Swift { .. } => "swift",
            Destination::File { .. } => "file",
        };
        let options = if kind == "file" {
            OpenOptions::default()
        } else if !account.is_empty() {
            self.config.credentials_for_account(account, kind)?
        } else {
            match self.plan(&host) {
                Ok(plan) if plan.url.starts_with(kind) => plan.options,
                _ => OpenOptions::default(),
            }
        };
        let (sets, chains, incomplete) = self.list_sets(host_id, url, &options).await?;
        let _t = self.transitions.lock().expect("transitions lock");
        self.catalog.replace_sets(host_id, &sets)?;
        host.destination_override = Some(url.to_string());
        host.last_backup_at = sets.iter().map(|s| s.end_time).max().unwrap_or(0);
        self.catalog.put_host(&host)?;
        Ok(pb::AdoptHostResponse {
            chains: chains as u64,
            sets: sets.len() as u64,
            incomplete: incomplete as u64,
        })
    }

    /// `host remove`: forgets the host (its session ends, its certificate is refused);
    /// the backups stay unless `delete_backups`.
    pub async fn remove_host(
        &self,
        host_id: &str,
        delete_backups: bool,
    ) -> Result<u64, FleetError> {
        let host = self
            .catalog
            .host(host_id)?
            .ok_or_else(|| FleetError::UnknownHost(host_id.to_string()))?;
        let mut deleted = 0;
        if delete_backups {
            use futures::{StreamExt, TryStreamExt};
            let plan = self.plan(&host)?;
            let dest = Destination::parse(&plan.url)?;
            let store = dest.open(&plan.options)?;
            let backend = |error: object_store::Error| StorageError::Backend {
                destination: dest.to_string(),
                operation: "delete all",
                name: String::new(),
                error: Box::new(error),
            };
            let names: Vec<object_store::path::Path> = store
                .list(None)
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(backend)?;
            let mut results =
                store.delete_stream(futures::stream::iter(names.into_iter().map(Ok)).boxed());
            while let Some(r) = results.next().await {
                r.map_err(backend)?;
                deleted += 1;
            }
            // A local directory may also hold upload leftovers the listing hides
            // (object_store's `name#N` temporaries): the host's directory goes entirely.
            if let Destination::File { path } = &dest
                && path.exists()
            {
                std::fs::remove_dir_all(path).map_err(|error| StorageError::Io {
                    destination: dest.to_string(),
                    operation: "delete all",
                    name: path.display().to_string(),
                    error,
                })?;
            }
        }
        {
            let _t = self.transitions.lock().expect("transitions lock");
            self.catalog.remove_host(host_id)?;
            self.catalog.forget_host(host_id)?;
            self.catalog.flush()?;
        }
        self.forget_schedule(host_id);
        self.sessions.lock().expect("sessions lock").remove(host_id);
        Ok(deleted)
    }

    /// Re-lists the storage of one host or all: `catalog rebuild`.
    pub async fn rebuild(
        &self,
        host_id: Option<&str>,
    ) -> Result<pb::RebuildCatalogResponse, FleetError> {
        let hosts: Vec<HostRecord> = match host_id {
            Some(h) => vec![
                self.catalog
                    .host(h)?
                    .ok_or_else(|| FleetError::UnknownHost(h.to_string()))?,
            ],
            None => self.catalog.hosts()?,
        };
        let mut resp = pb::RebuildCatalogResponse::default();
        for h in hosts {
            match self.refresh_sets(&h.host_id).await {
                Ok(n) => {
                    resp.hosts += 1;
                    resp.sets += n as u64;
                }
                Err(FleetError::NoPolicy(_)) if h.destination_override.is_none() => {}
                Err(e) => resp.errors.push(format!("{}: {e}", h.host_id)),
            }
        }
        Ok(resp)
    }
}

#[derive(Default)]
struct AfterResult {
    refresh_sets: bool,
}

fn retention_pb(r: Retention) -> pb::Retention {
    pb::Retention {
        rule: Some(match r {
            Retention::KeepFullChains(n) => pb::retention::Rule::KeepFullChains(n),
            Retention::RemoveOlderThanSecs(s) => pb::retention::Rule::RemoveOlderThanSecs(s),
        }),
    }
}

/// What changes for a host between two policies, for `policy apply`'s report.
fn policy_diff(before: Option<&Policy>, after: Option<&Policy>) -> Vec<String> {
    match (before, after) {
        (None, None) => vec![],
        (None, Some(p)) => vec![format!("now protected by policy {:?}", p.name)],
        (Some(p), None) => vec![format!(
            "no longer selected by any policy (was {:?}): no more scheduled backups",
            p.name
        )],
        (Some(a), Some(b)) => {
            let mut out = Vec::new();
            if a.name != b.name {
                out.push(format!("policy {:?} → {:?}", a.name, b.name));
            }
            macro_rules! field {
                ($f:ident) => {
                    if a.$f != b.$f {
                        out.push(format!("{}: {:?} → {:?}", stringify!($f), a.$f, b.$f));
                    }
                };
            }
            field!(sources);
            field!(exclude);
            field!(schedule);
            field!(jitter_secs);
            field!(full_if_older_than_secs);
            field!(retention);
            field!(volsize_mb);
            field!(destination);
            field!(encrypt_to);
            field!(max_age_secs);
            field!(bandwidth_limit_mb);
            out
        }
    }
}

/// The proto form of a job.
fn job_state_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn job_pb(j: &JobRecord) -> pb::Job {
    pb::Job {
        job_id: j.job_id.clone(),
        host_id: j.host_id.clone(),
        kind: match j.kind {
            JobKind::Backup => pb::JobKind::Backup,
            JobKind::Prune => pb::JobKind::Prune,
            JobKind::Restore => pb::JobKind::Restore,
            JobKind::Verify => pb::JobKind::Verify,
        } as i32,
        state: job_state_pb(j.state) as i32,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        attempt: j.attempt,
        progress: j.progress.as_ref().map(|p| pb::Progress {
            job_id: j.job_id.clone(),
            phase: p.phase.clone(),
            files_done: p.files_done,
            bytes_done: p.bytes_done,
            files_total: p.files_total,
            bytes_total: p.bytes_total,
        }),
        error: j.error.clone(),
        set: j.set.as_ref().map(set_pb),
        origin: j.origin.clone(),
        note: j.note.clone(),
        scheduled_for: j.scheduled_for,
        source_host_id: j
            .restore
            .as_ref()
            .map(|r| r.source_host.clone())
            .unwrap_or_default(),
        restore: j.restore_outcome.as_ref().map(restore_outcome_pb),
        drill: j.restore.as_ref().is_some_and(|r| r.drill),
    }
}

fn restore_outcome_record(o: &pb::RestoreOutcome) -> crate::catalog::RestoreOutcome {
    crate::catalog::RestoreOutcome {
        backup_time: o.backup_time,
        files: o.files,
        bytes: o.bytes,
        verified: o.verified,
        paths_checked: o.paths_checked,
        bytes_hashed: o.bytes_hashed,
        mismatches: o.mismatches,
        differences: o.differences.clone(),
        not_restored: o.not_restored.clone(),
        not_restored_count: o.not_restored_count,
        target: o.target.clone(),
        restore_ms: o.restore_ms,
        verify_ms: o.verify_ms,
    }
}

pub fn restore_outcome_pb(o: &crate::catalog::RestoreOutcome) -> pb::RestoreOutcome {
    pb::RestoreOutcome {
        backup_time: o.backup_time,
        files: o.files,
        bytes: o.bytes,
        verified: o.verified,
        paths_checked: o.paths_checked,
        bytes_hashed: o.bytes_hashed,
        mismatches: o.mismatches,
        differences: o.differences.clone(),
        not_restored: o.not_restored.clone(),
        not_restored_count: o.not_restored_count,
        target: o.target.clone(),
        restore_ms: o.restore_ms,
        verify_ms: o.verify_ms,
    }
}

pub fn restore_evidence_pb(e: &crate::catalog::RestoreEvidence) -> pb::RestoreEvidence {
    pb::RestoreEvidence {
        job_id: e.job_id.clone(),
        source_host_id: e.source_host.clone(),
        target_host_id: e.target_host.clone(),
        drill: e.drill,
        state: job_state_pb(e.state) as i32,
        finished_at: e.finished_at,
        error: e.error.clone(),
        outcome: e.outcome.as_ref().map(restore_outcome_pb),
        origin: e.origin.clone(),
    }
}

pub fn set_pb(s: &SetRecord) -> pb::BackupSet {
    pb::BackupSet {
        kind: s.kind.clone(),
        start_time: s.start_time,
        end_time: s.end_time,
        volumes: s.volumes,
        bytes: s.bytes,
        files: s.files,
    }
}

/// A storage listing, grouped into chains and sets.
async fn list_collection(url: &str, options: &OpenOptions) -> Result<Collection, FleetError> {
    use futures::TryStreamExt;
    let dest = Destination::parse(url)?;
    let store = dest.open(options)?;
    let listing: Vec<(String, u64)> = store
        .list(None)
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .map_err(|e| StorageError::Backend {
            destination: dest.to_string(),
            operation: "list",
            name: String::new(),
            error: Box::new(e),
        })?;
    Ok(Collection::from_listing(listing))
}

/// The catalog's record of a set found in storage (file counts are not in listings).
pub fn set_record(host_id: &str, s: &flotilla_common::archive::collection::BackupSet) -> SetRecord {
    let (kind, start, end) = match s.times {
        flotilla_common::archive::names::SetTimes::Full { time } => ("full", 0, time),
        flotilla_common::archive::names::SetTimes::Incremental { start, end } => {
            ("incremental", start, end)
        }
    };
    SetRecord {
        host_id: host_id.to_string(),
        kind: kind.into(),
        start_time: start,
        end_time: end,
        volumes: s.volumes.len() as u32,
        bytes: s.stored_bytes(),
        files: 0,
    }
}
