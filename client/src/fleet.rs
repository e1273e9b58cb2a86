//! The agent's side of the fleet: enrollment and the daemon (`flotilla-agent run`).
//!
//! State directory layout (all under `--state-dir`):
//! - `identity/` — `key.pem` (0600), `cert.pem`, `ca.pem`, `agent.json` (host id,
//!   coordinator URL, TLS server name).
//! - `policy.pb` (0600) — the last pushed policy (protobuf), with its offline credential.
//! - `outbox/*.pb` — job results not yet acknowledged; re-sent on every connect.
//! - `agent-state.json` — last served schedule slot and last successful backup.
//!
//! The session protocol is described in `proto/flotilla/v1/agent.proto`.

use crate::engine::backup::{BackupMode, BackupOptions};
use crate::engine::codec::Codec;
use crate::engine::progress::Progress;
use crate::engine::select::Rule;
use crate::engine::{self, Context};
use flotilla_common::crypto::{Compression, DecryptionKeys, EncryptionSpec, Passphrase, PublicKey};
use flotilla_common::proto::v1 as pb;
use flotilla_common::schedule::HostSchedule;
use flotilla_common::storage::{
    Credentials, OpenOptions, RetryPolicy, ScopedCredential, open_blocking_with,
};
use pb::agent_message::Body as Out;
use pb::coordinator_message::Body as In;
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("this agent is already enrolled as {0} (enroll --force replaces the identity)")]
    AlreadyEnrolled(String),
    #[error("not enrolled: {0} is missing (run `flotilla-agent enroll` first)")]
    NotEnrolled(PathBuf),
    #[error("coordinator {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("coordinator refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FleetError + '_ {
    move |error| FleetError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes a file atomically (temp + rename), with `mode`, durably.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), FleetError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The agent's identity (`identity/`).
#[derive(Clone)]
pub struct AgentIdentity {
    pub host_id: String,
    pub coordinator_url: String,
    pub server_name: String,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AgentFile {
    host_id: String,
    coordinator_url: String,
    server_name: String,
    enrolled_at: i64,
}

/// The TLS name to expect: the URL's host, or `localhost` for an IP address (what
/// `flotilla init` certifies by default).
pub fn default_server_name(url: &str) -> String {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        "localhost".into()
    } else {
        host.into()
    }
}

async fn channel(
    url: &str,
    server_name: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, FleetError> {
    flotilla_common::storage::ensure_tls_provider();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name);
    if let Some((cert, key)) = identity {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    let bad = |reason: String| FleetError::Connect {
        url: url.to_string(),
        reason,
    };
    Channel::from_shared(url.to_string())
        .map_err(|e| bad(format!("not a URL: {e}")))?
        .tls_config(tls)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| {
            use std::error::Error;
            let mut reason = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                reason.push_str(&format!(": {s}"));
                src = s.source();
            }
            bad(reason)
        })
}

/// What `enroll` needs.
pub struct EnrollRequest<'a> {
    pub state_dir: &'a Path,
    pub coordinator_url: &'a str,
    pub token: &'a str,
    pub ca_pem: &'a str,
    pub labels: std::collections::HashMap<String, String>,
    pub hostname: String,
    pub server_name: Option<String>,
    pub force: bool,
}

/// Enrolls this host: a new key (kept here), a CSR, the token; stores the identity.
pub async fn enroll(r: EnrollRequest<'_>) -> Result<AgentIdentity, FleetError> {
    let dir = r.state_dir.join("identity");
    if let Ok(existing) = load_identity(r.state_dir)
        && !r.force
    {
        return Err(FleetError::AlreadyEnrolled(existing.host_id));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| FleetError::Invalid(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| FleetError::Invalid(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "host:pending");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| FleetError::Invalid(e.to_string()))?;
    let server_name = r
        .server_name
        .clone()
        .unwrap_or_else(|| default_server_name(r.coordinator_url));
    let ch = channel(r.coordinator_url, &server_name, r.ca_pem, None).await?;
    let resp = pb::agent_service_client::AgentServiceClient::new(ch)
        .enroll(pb::EnrollRequest {
            token: r.token.to_string(),
            hostname: r.hostname.clone(),
            labels: r.labels,
            csr_der: csr.der().to_vec(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            signing_public_key: String::new(),
        })
        .await
        .map_err(|s| FleetError::Refused(s.message().to_string()))?
        .into_inner();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let ident = AgentIdentity {
        host_id: resp.host_id.clone(),
        coordinator_url: r.coordinator_url.to_string(),
        server_name: server_name.clone(),
        key_pem: key.serialize_pem(),
        cert_pem: der_to_pem("CERTIFICATE", &resp.certificate_der),
        ca_pem: der_to_pem("CERTIFICATE", &resp.ca_certificate_der),
    };
    write_file(&dir.join("key.pem"), ident.key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join("cert.pem"), ident.cert_pem.as_bytes(), 0o644)?;
    write_file(&dir.join("ca.pem"), ident.ca_pem.as_bytes(), 0o644)?;
    let meta = AgentFile {
        host_id: resp.host_id,
        coordinator_url: r.coordinator_url.to_string(),
        server_name,
        enrolled_at: now(),
    };
    write_file(
        &dir.join("agent.json"),
        serde_json::to_string_pretty(&meta)
            .expect("serializable")
            .as_bytes(),
        0o644,
    )?;
    Ok(ident)
}

pub fn load_identity(state_dir: &Path) -> Result<AgentIdentity, FleetError> {
    let dir = state_dir.join("identity");
    let read = |name: &str| {
        let p = dir.join(name);
        if !p.exists() {
            return Err(FleetError::NotEnrolled(p));
        }
        std::fs::read_to_string(&p).map_err(io_err(&p))
    };
    let meta: AgentFile = serde_json::from_str(&read("agent.json")?)
        .map_err(|e| FleetError::Invalid(format!("{}: {e}", dir.join("agent.json").display())))?;
    Ok(AgentIdentity {
        host_id: meta.host_id,
        coordinator_url: meta.coordinator_url,
        server_name: meta.server_name,
        key_pem: read("key.pem")?,
        cert_pem: read("cert.pem")?,
        ca_pem: read("ca.pem")?,
    })
}

// ------------------------------------------------------------------ daemon state

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct LocalState {
    /// The last schedule slot served (by a coordinator job or an offline run).
    last_slot: i64,
    /// End of the last successful backup.
    last_backup_at: i64,
}

struct Paths {
    state_dir: PathBuf,
}

impl Paths {
    fn policy(&self) -> PathBuf {
        self.state_dir.join("policy.pb")
    }
    fn outbox(&self) -> PathBuf {
        self.state_dir.join("outbox")
    }
    fn local_state(&self) -> PathBuf {
        self.state_dir.join("agent-state.json")
    }

    fn load_policy(&self) -> Option<pb::PolicyPush> {
        let bytes = std::fs::read(self.policy()).ok()?;
        match pb::PolicyPush::decode(bytes.as_slice()) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("{}: unreadable cached policy: {e}", self.policy().display());
                None
            }
        }
    }

    fn load_state(&self) -> LocalState {
        std::fs::read(self.local_state())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn update_state(&self, f: impl FnOnce(&mut LocalState)) {
        let mut s = self.load_state();
        f(&mut s);
        let json = serde_json::to_vec(&s).expect("serializable");
        if let Err(e) = write_file(&self.local_state(), &json, 0o644) {
            tracing::error!("{e}");
        }
    }

    /// Results waiting for an acknowledgement, oldest first.
    fn outbox_results(&self) -> Vec<pb::JobResult> {
        let Ok(rd) = std::fs::read_dir(self.outbox()) else {
            return vec![];
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pb"))
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| {
                let bytes = std::fs::read(p).ok()?;
                pb::JobResult::decode(bytes.as_slice()).ok()
            })
            .collect()
    }

    fn outbox_put(&self, r: &pb::JobResult) -> Result<(), FleetError> {
        let dir = self.outbox();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Named by finish time first so re-sending keeps the order.
        let name = format!("{:012}-{}.pb", r.finished_at.max(0), r.result_id);
        write_file(&dir.join(name), &r.encode_to_vec(), 0o600)
    }

    fn outbox_ack(&self, result_id: &str) {
        if let Ok(rd) = std::fs::read_dir(self.outbox()) {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("-{result_id}.pb"))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

// ------------------------------------------------------------------ jobs

/// Events from the job worker to the session.
enum Event {
    Progress(pb::Progress),
    Result(Box<pb::JobResult>),
}

struct JobProgress {
    job_id: String,
    /// Set when the coordinator asks to cancel the job; the engine stops at its next
    /// file.
    cancel: Arc<std::sync::atomic::AtomicBool>,
    phase: Mutex<String>,
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    totals: Mutex<(u64, u64)>,
    last: Mutex<Instant>,
    tx: mpsc::UnboundedSender<Event>,
}

impl JobProgress {
    fn maybe_send(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        let (bytes_total, files_total) = *self.totals.lock().expect("totals");
        let _ = self.tx.send(Event::Progress(pb::Progress {
            job_id: self.job_id.clone(),
            phase: self.phase.lock().expect("phase").clone(),
            files_done: self.files.load(Relaxed),
            bytes_done: self.bytes.load(Relaxed),
            files_total,
            bytes_total,
        }));
    }
}

impl JobProgress {
    fn shared(
        job_id: &str,
        events: &mpsc::UnboundedSender<Event>,
        cancel: Arc<std::sync::atomic::AtomicBool>,
    ) -> Arc<JobProgress> {
        Arc::new(JobProgress {
            job_id: job_id.to_string(),
            cancel,
            phase: Mutex::new(String::new()),
            files: Default::default(),
            bytes: Default::default(),
            totals: Mutex::new((0, 0)),
            last: Mutex::new(Instant::now()),
            tx: events.clone(),
        })
    }
}

impl Progress for JobProgress {
    fn start(&self, phase: &str, total: Option<u64>) {
        *self.phase.lock().expect("phase") = phase.to_string();
        if let Some(t) = total {
            self.totals.lock().expect("totals").0 = t;
        }
    }
    fn set_total(&self, bytes: u64, files: u64) {
        *self.totals.lock().expect("totals") = (bytes, files);
    }
    fn bytes(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.maybe_send();
    }
    fn file(&self) {
        self.files
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.maybe_send();
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The job the worker runs now, shared with the session, which reports it in Hello and
/// relays the coordinator's cancellation to it.
#[derive(Default)]
struct RunningJob(Mutex<Option<(String, Arc<std::sync::atomic::AtomicBool>)>>);

impl RunningJob {
    /// Marks `job_id` as running; returns its cancellation flag.
    fn begin(&self, job_id: &str) -> Arc<std::sync::atomic::AtomicBool> {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        *self.0.lock().expect("running") = Some((job_id.to_string(), flag.clone()));
        flag
    }

    fn end(&self) {
        *self.0.lock().expect("running") = None;
    }

    fn id(&self) -> Option<String> {
        self.0
            .lock()
            .expect("running")
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// Asks the running job to stop, if it is `job_id`.
    fn cancel(&self, job_id: &str) -> bool {
        match &*self.0.lock().expect("running") {
            Some((id, flag)) if id == job_id => {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}

struct Worker {
    paths: Arc<Paths>,
    passphrase: Option<Passphrase>,
    events: mpsc::UnboundedSender<Event>,
    running: Arc<RunningJob>,
    rt: tokio::runtime::Runtime,
}

/// The keys of a restore: an armored secret key (may be empty) and a passphrase (for
/// the key, or for symmetric encryption; may be empty).
pub fn restore_keys(armored_key: &str, passphrase: &str) -> Result<DecryptionKeys, String> {
    let mut keys = DecryptionKeys::default();
    let pass = (!passphrase.is_empty()).then(|| Passphrase::new(passphrase.to_string()));
    if !armored_key.is_empty() {
        keys.secret_keys.push(
            flotilla_common::crypto::SecretKey::from_bytes(armored_key.as_bytes(), pass.clone())
                .map_err(|e| format!("the decryption key: {e}"))?,
        );
    }
    keys.passphrases.extend(pass);
    Ok(keys)
}

/// What to restore where, on this machine ([`restore_paths`]).
pub struct RestoreInto<'a> {
    /// Unix seconds; 0 for the latest backup.
    pub time: i64,
    /// Paths of the backup (empty: the whole tree).
    pub paths: &'a [String],
    pub target: &'a Path,
    pub force: bool,
    pub keys: &'a DecryptionKeys,
}

/// Restores `req.paths` of the backup into one target, each checked against the
/// backup's signatures: the outcome (as the coordinator records it), a one-line note
/// naming `shown_target`, and the problems that make the restore a failure (paths not
/// restored, differences). Used by the agent's restore jobs and `flotilla restore
/// --local`.
pub fn restore_paths(
    ctx: &Context,
    req: &RestoreInto<'_>,
    shown_target: &str,
) -> Result<(pb::RestoreOutcome, String, Vec<String>), String> {
    let paths: Vec<&str> = if req.paths.is_empty() {
        vec![""]
    } else {
        req.paths.iter().map(String::as_str).collect()
    };
    let indexes = paths
        .iter()
        .map(|p| {
            if p.trim_matches('/').is_empty() {
                Ok(flotilla_common::archive::Index::root())
            } else {
                flotilla_common::archive::Index::parse(p.trim_start_matches('/').as_bytes())
                    .map_err(|e| format!("path {p:?}: {e}"))
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut outcome = pb::RestoreOutcome {
        target: req.target.display().to_string(),
        verified: true,
        ..Default::default()
    };
    let mut unverifiable: Option<String> = None;
    for (i, index) in indexes.into_iter().enumerate() {
        let opts = engine::restore::RestoreOptions {
            time: if req.time > 0 { req.time } else { now() },
            path: index,
            target: req.target.to_path_buf(),
            // Several paths go into one target: the first checks emptiness.
            force: req.force || i > 0,
            keys: req.keys.clone(),
            // SAFETY: geteuid has no preconditions.
            restore_owner: unsafe { libc::geteuid() } == 0,
            numeric_owner: false,
            verify: true,
        };
        let started = Instant::now();
        let report = engine::restore::restore(ctx, &opts).map_err(|e| e.to_string())?;
        outcome.files += report.stats.files;
        outcome.bytes += report.stats.bytes;
        outcome.backup_time = report.backup_time;
        outcome.not_restored_count += report.warnings.len() as u64;
        outcome
            .not_restored
            .extend(report.warnings.iter().take(20).cloned());
        if let Some(check) = &report.check {
            outcome.verified &= check.verified();
            if let Some(reason) = &check.unverifiable {
                unverifiable.get_or_insert_with(|| reason.clone());
            }
            outcome.paths_checked += check.checked;
            outcome.bytes_hashed += check.bytes_hashed;
            outcome.mismatches += check.mismatches;
            outcome.differences.extend(
                check
                    .differences
                    .iter()
                    .take(20)
                    .map(|d| format!("{}: {}", d.path, d.what)),
            );
            outcome.verify_ms += check.millis;
        }
        outcome.restore_ms += (started.elapsed().as_millis() as u64)
            .saturating_sub(report.check.as_ref().map_or(0, |c| c.millis));
    }
    let note = format!(
        "restored {} path(s), {} bytes into {} (backup time {}); {}",
        outcome.files,
        outcome.bytes,
        shown_target,
        flotilla_common::archive::format_time(outcome.backup_time),
        if outcome.verified {
            format!(
                "verified against the backup's signatures ({} path(s), {} bytes hashed)",
                outcome.paths_checked, outcome.bytes_hashed
            )
        } else if outcome.mismatches == 0 {
            format!("not verified: {}", unverifiable.as_deref().unwrap_or("?"))
        } else {
            format!("{} difference(s) from the backup", outcome.mismatches)
        }
    );
    let mut problems = Vec::new();
    if outcome.not_restored_count > 0 {
        problems.push(format!(
            "{} path(s) could not be restored: {}",
            outcome.not_restored_count,
            outcome.not_restored.join("; ")
        ));
    }
    if outcome.mismatches > 0 {
        problems.push(format!(
            "the restored tree differs from the backup in {} place(s): {}",
            outcome.mismatches,
            outcome.differences.join("; ")
        ));
    }
    Ok((outcome, note, problems))
}

impl Worker {
    fn run_job(&self, a: pb::JobAssignment) {
        let started_at = now();
        let cancel = self.running.begin(&a.job_id);
        let policy = self.paths.load_policy().and_then(|p| p.policy);
        let kind = pb::JobKind::try_from(a.kind).unwrap_or(pb::JobKind::Unspecified);
        let scheduled_for = match &a.spec {
            Some(pb::job_assignment::Spec::Backup(b)) => b.scheduled_for,
            _ => 0,
        };
        let mut result = pb::JobResult {
            result_id: format!("{:032x}", rand::random::<u128>()),
            job_id: a.job_id.clone(),
            kind: a.kind,
            state: pb::JobState::Succeeded as i32,
            started_at,
            policy_revision: policy.as_ref().map_or(0, |p| p.revision),
            scheduled_for,
            ..Default::default()
        };
        let outcome = match (&policy, kind) {
            // A restore needs no policy of this host (it may restore another host's data).
            (_, pb::JobKind::Restore) => self.restore(&a, &mut result, &cancel),
            (None, _) => {
                Err("this agent has no policy (none pushed, or none selects this host)".into())
            }
            (Some(policy), _) => self.execute(&a, policy, kind, &mut result, &cancel),
        };
        match outcome {
            Err(e) if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                tracing::warn!("job {} cancelled: {e}", a.job_id);
                result.state = pb::JobState::Cancelled as i32;
                result.error = format!(
                    "cancelled on request ({e}); {}",
                    match kind {
                        pb::JobKind::Restore =>
                            "a target the restore created was removed, files already \
                             restored into an existing target stay",
                        pb::JobKind::Backup =>
                            "the incomplete set has no manifest and is not counted",
                        _ => "nothing was counted",
                    }
                );
            }
            Err(e) => {
                tracing::error!("job {}: {e}", a.job_id);
                result.state = pb::JobState::Failed as i32;
                result.error = e;
            }
            Ok(()) => tracing::info!("job {} succeeded: {}", a.job_id, result.note),
        }
        result.finished_at = now();
        if kind == pb::JobKind::Backup && result.state == pb::JobState::Succeeded as i32 {
            let end = result.set.as_ref().map_or(0, |s| s.end_time);
            self.paths.update_state(|s| {
                s.last_backup_at = s.last_backup_at.max(end);
                s.last_slot = s.last_slot.max(scheduled_for);
            });
        }
        if let Err(e) = self.paths.outbox_put(&result) {
            tracing::error!("cannot keep the result of job {}: {e}", a.job_id);
        }
        self.running.end();
        let _ = self.events.send(Event::Result(Box::new(result)));
    }

    fn execute(
        &self,
        a: &pb::JobAssignment,
        policy: &pb::AgentPolicy,
        kind: pb::JobKind,
        result: &mut pb::JobResult,
        cancel: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), String> {
        let mut store = self.open_store(a)?;
        // The policy's limit is for the host's routine work; restores run at full speed.
        if policy.bandwidth_limit_bytes_per_sec > 0 {
            store.set_bandwidth_limit(policy.bandwidth_limit_bytes_per_sec);
        }
        let ctx = Context {
            store,
            state_dir: self.paths.state_dir.clone(),
            progress: JobProgress::shared(&a.job_id, &self.events, cancel.clone()),
        };
        let keys = DecryptionKeys {
            passphrases: self.passphrase.iter().cloned().collect(),
            ..Default::default()
        };
        match kind {
            pb::JobKind::Backup => {
                let force_full =
                    matches!(&a.spec, Some(pb::job_assignment::Spec::Backup(b)) if b.force_full);
                let opts = backup_options(
                    policy,
                    force_full,
                    self.passphrase.clone(),
                    keys,
                    &self.paths.state_dir,
                )?;
                let report = engine::backup::backup(&ctx, &opts).map_err(|e| e.to_string())?;
                if a.job_id.is_empty() {
                    self.remember_offline_writes(&ctx.store, &a.credential_json);
                }
                result.errors = report.stats.errors;
                result.note = report.full_reason.clone().unwrap_or_default();
                result.set = Some(pb::BackupSet {
                    kind: report.kind.to_string(),
                    start_time: report.set_start.unwrap_or(0),
                    end_time: report.set_time,
                    volumes: report.volumes,
                    bytes: report.stats.total_destination_size_change,
                    files: report.stats.source_files,
                });
                Ok(())
            }
            pb::JobKind::Prune => {
                let rule = match &a.spec {
                    Some(pb::job_assignment::Spec::Prune(p)) => {
                        p.retention.as_ref().and_then(|r| r.rule)
                    }
                    _ => None,
                };
                let plan = match rule {
                    Some(pb::retention::Rule::KeepFullChains(n)) => {
                        engine::retention::remove_all_but_n_full(&ctx, n.max(1) as usize, true)
                    }
                    Some(pb::retention::Rule::RemoveOlderThanSecs(s)) => {
                        engine::retention::remove_older_than(&ctx, now() - s as i64, true)
                    }
                    None => return Err("prune job without a retention rule".into()),
                }
                .map_err(|e| e.to_string())?;
                result.note = format!(
                    "deleted {} set(s) ({} object(s)), kept {} chain(s)",
                    plan.sets.len(),
                    plan.objects.len(),
                    plan.kept_chains
                );
                Ok(())
            }
            other => Err(format!("{other:?} jobs are not supported by this agent")),
        }
    }
}

impl Worker {
    fn open_store(
        &self,
        a: &pb::JobAssignment,
    ) -> Result<flotilla_common::storage::BlockingStore, String> {
        let credentials = if a.credential_json.is_empty() {
            Credentials::FromEnvironment
        } else {
            Credentials::Scoped(
                ScopedCredential::from_json(&a.credential_json).map_err(|e| e.to_string())?,
            )
        };
        let options = OpenOptions {
            credentials,
            retry: RetryPolicy::default(),
        };
        open_blocking_with(&a.destination, &options, self.rt.handle().clone())
            .map_err(|e| e.to_string())
    }

    /// A restore job: the key arrives in the assignment, lives in memory for this job
    /// only, and is dropped with it.
    fn restore(
        &self,
        a: &pb::JobAssignment,
        result: &mut pb::JobResult,
        cancel: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), String> {
        let Some(pb::job_assignment::Spec::Restore(spec)) = &a.spec else {
            return Err("restore job without a restore spec".into());
        };
        let mut keys = restore_keys(&spec.decryption_key, &spec.passphrase)?;
        if keys.secret_keys.is_empty() && keys.passphrases.is_empty() {
            keys.passphrases.extend(self.passphrase.clone());
        }
        let store = self.open_store(a)?;
        let ctx = Context {
            store,
            state_dir: self.paths.state_dir.clone(),
            progress: JobProgress::shared(&a.job_id, &self.events, cancel.clone()),
        };
        // A drill restores into a directory of its own, removed when the job ends.
        let drill_dir = if spec.drill {
            Some(
                tempfile::Builder::new()
                    .prefix("restore-test-")
                    .tempdir_in(&self.paths.state_dir)
                    .map_err(|e| format!("a directory for the restore test: {e}"))?,
            )
        } else {
            None
        };
        let target = match &drill_dir {
            Some(d) => d.path().join("tree"),
            None if spec.target.starts_with('/') => PathBuf::from(&spec.target),
            None => {
                return Err(format!(
                    "restore target {:?} must be an absolute path",
                    spec.target
                ));
            }
        };
        let (outcome, note, problems) = restore_paths(
            &ctx,
            &RestoreInto {
                time: spec.time,
                paths: &spec.paths,
                target: &target,
                force: spec.force,
                keys: &keys,
            },
            if spec.drill {
                "a temporary directory (removed)"
            } else {
                spec.target.as_str()
            },
        )?;
        result.note = note;
        result.restore = Some(outcome);
        drop(drill_dir);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// A Swift offline credential carries the container listing as of its minting
    /// (TempURLs cannot list); after an offline backup the cached credential gets the
    /// sets just written, so the next offline run continues from them and not from an
    /// older set.
    fn remember_offline_writes(
        &self,
        store: &flotilla_common::storage::BlockingStore,
        credential: &str,
    ) {
        let Ok(ScopedCredential::Swift { access, mut grant }) =
            ScopedCredential::from_json(credential)
        else {
            return;
        };
        let listing = match store.list() {
            Ok(l) => l,
            Err(e) => return tracing::warn!("re-listing after the offline backup: {e}"),
        };
        let old: std::collections::HashMap<String, flotilla_common::storage::swift::GrantedObject> =
            grant
                .listing
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|o| (o.name.clone(), o))
                .collect();
        let full = |n: &str| {
            if grant.prefix.is_empty() || n.starts_with(&grant.prefix) {
                n.to_string()
            } else {
                format!("{}{n}", grant.prefix)
            }
        };
        grant.listing = Some(
            listing
                .iter()
                .map(|o| {
                    let name = full(&o.name);
                    old.get(&name).cloned().unwrap_or(
                        flotilla_common::storage::swift::GrantedObject {
                            name,
                            size: o.size,
                            last_modified: chrono::Utc::now(),
                            e_tag: None,
                        },
                    )
                })
                .collect(),
        );
        let Some(mut push) = self.paths.load_policy() else {
            return;
        };
        if let Some(p) = push.policy.as_mut() {
            p.offline_credential_json = ScopedCredential::Swift { access, grant }.to_json();
        }
        if let Err(e) = write_file(&self.paths.policy(), &push.encode_to_vec(), 0o600) {
            tracing::error!("{e}");
        }
    }
}

/// The engine's options for a policy. One source is the backup's root; several are
/// included under `/` (everything else excluded), as duplicity does with --include.
fn backup_options(
    policy: &pb::AgentPolicy,
    force_full: bool,
    passphrase: Option<Passphrase>,
    decrypt_keys: DecryptionKeys,
    state_dir: &Path,
) -> Result<BackupOptions, String> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let codec = if !policy.encrypt_to.is_empty() {
        let mut recipients = Vec::new();
        for k in &policy.encrypt_to {
            recipients
                .push(PublicKey::from_bytes(k.as_bytes()).map_err(|e| format!("policy key: {e}"))?);
        }
        Codec::Encrypted(EncryptionSpec {
            recipients,
            passphrase: None,
            signer: None,
            compression: Compression::Auto,
            compression_threads: threads,
        })
    } else if let Some(p) = passphrase {
        Codec::Encrypted(EncryptionSpec {
            recipients: vec![],
            passphrase: Some(p),
            signer: None,
            compression: Compression::Auto,
            compression_threads: threads,
        })
    } else {
        return Err(
            "no encryption configured: the policy has no encrypt_to keys and the agent has no \
             passphrase (FLOTILLA_PASSPHRASE or run --passphrase-file)"
                .into(),
        );
    };
    let (source, selection) = selection_for(&policy.sources, &policy.exclude)?;
    Ok(BackupOptions {
        source,
        mode: if force_full {
            BackupMode::Full
        } else {
            BackupMode::Auto
        },
        full_if_older_than: (policy.full_if_older_than_secs > 0)
            .then_some(policy.full_if_older_than_secs as i64),
        volsize: u64::from(if policy.volsize_mb == 0 {
            200
        } else {
            policy.volsize_mb
        }) << 20,
        selection,
        codec,
        decrypt_keys,
        time: None,
        hostname: None,
        skip: vec![state_dir.to_path_buf()],
    })
}

/// The root and the include/exclude rules for a policy's sources.
fn selection_for(
    sources: &[String],
    exclude: &[String],
) -> Result<(PathBuf, Vec<(Rule, String)>), String> {
    let mut rules: Vec<(Rule, String)> =
        exclude.iter().map(|g| (Rule::Exclude, g.clone())).collect();
    match sources {
        [] => Err("the policy lists no sources".into()),
        [one] => Ok((PathBuf::from(one), rules)),
        many => {
            for s in many {
                if !s.starts_with('/') {
                    return Err(format!("source {s:?} must be an absolute path"));
                }
                rules.push((Rule::Include, s.clone()));
            }
            rules.push((Rule::Exclude, "**".into()));
            Ok((PathBuf::from("/"), rules))
        }
    }
}

// ------------------------------------------------------------------ the daemon

/// The longest pause between reconnection attempts (before jitter of 0.5-1.5x): a
/// restarted coordinator has its agents back within about 45 s, and 10,000 agents
/// reconnecting spread over that window (about 300 per second).
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    state_dir: PathBuf,
    passphrase: Option<Passphrase>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FleetError> {
    let ident = load_identity(&state_dir)?;
    let paths = Arc::new(Paths { state_dir });
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<pb::JobAssignment>();
    let running = Arc::new(RunningJob::default());
    let queued = Arc::new(Mutex::new(Vec::<String>::new()));
    let worker = {
        let w = Worker {
            paths: paths.clone(),
            passphrase,
            events: events_tx.clone(),
            running: running.clone(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| FleetError::Invalid(e.to_string()))?,
        };
        let queued = queued.clone();
        std::thread::Builder::new()
            .name("job-worker".into())
            .spawn(move || {
                while let Ok(a) = jobs_rx.recv() {
                    queued.lock().expect("queued").retain(|j| j != &a.job_id);
                    w.run_job(a);
                }
            })
            .map_err(|e| FleetError::Invalid(e.to_string()))?
    };
    let mut backoff = Duration::from_secs(1);
    let mut disconnected_since = now();
    tracing::info!("agent {} starting", ident.host_id);
    while !*shutdown.borrow() {
        let connected_at = Instant::now();
        let r = session(
            &ident,
            &paths,
            &jobs_tx,
            &running,
            &queued,
            &mut events_rx,
            &mut shutdown,
        )
        .await;
        if *shutdown.borrow() {
            break;
        }
        match r {
            Ok(()) => tracing::info!("session ended; reconnecting"),
            Err(e) => tracing::warn!("coordinator: {e}"),
        }
        if connected_at.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        disconnected_since = if connected_at.elapsed() > Duration::from_secs(1) {
            now()
        } else {
            disconnected_since
        };
        // Wait with jitter; meanwhile run scheduled backups from the cached policy.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>());
        let until = Instant::now() + wait;
        while Instant::now() < until && !*shutdown.borrow() {
            offline_schedule(&ident, &paths, &jobs_tx, &queued, disconnected_since);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => {}
            }
        }
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
    }
    tracing::info!("shutting down: finishing the running job, if any");
    drop(jobs_tx);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    Ok(())
}

/// While disconnected: a slot of the cached schedule that fell after the session was
/// lost (and that no one served) runs here, with the offline credential.
fn offline_schedule(
    ident: &AgentIdentity,
    paths: &Paths,
    jobs: &std::sync::mpsc::Sender<pb::JobAssignment>,
    queued: &Mutex<Vec<String>>,
    disconnected_since: i64,
) {
    let Some(policy) = paths.load_policy().and_then(|p| p.policy) else {
        return;
    };
    if policy.schedule.is_empty() {
        return;
    }
    let offset = chrono::Local::now().offset().local_minus_utc();
    let Ok(schedule) = HostSchedule::new(
        &policy.schedule,
        &ident.host_id,
        &policy.name,
        policy.jitter_secs,
        offset,
    ) else {
        return;
    };
    let Some(slot) = schedule.last_at_or_before(now()) else {
        return;
    };
    let state = paths.load_state();
    if slot <= state.last_slot || slot < disconnected_since || !queued.lock().expect("q").is_empty()
    {
        return;
    }
    tracing::info!("coordinator unreachable: running the scheduled backup of slot {slot} myself");
    paths.update_state(|s| s.last_slot = slot);
    let id = String::new();
    queued.lock().expect("queued").push(id.clone());
    let _ = jobs.send(pb::JobAssignment {
        job_id: id,
        kind: pb::JobKind::Backup as i32,
        attempt: 1,
        destination: policy.destination.clone(),
        credential_json: policy.offline_credential_json.clone(),
        spec: Some(pb::job_assignment::Spec::Backup(pb::BackupSpec {
            force_full: false,
            scheduled_for: slot,
        })),
    });
}

#[allow(clippy::too_many_arguments)]
async fn session(
    ident: &AgentIdentity,
    paths: &Paths,
    jobs: &std::sync::mpsc::Sender<pb::JobAssignment>,
    running: &RunningJob,
    queued: &Mutex<Vec<String>>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), FleetError> {
    let ch = channel(
        &ident.coordinator_url,
        &ident.server_name,
        &ident.ca_pem,
        Some((&ident.cert_pem, &ident.key_pem)),
    )
    .await?;
    let (tx, mut rx) = mpsc::channel::<pb::AgentMessage>(256);
    let send = |body: Out| pb::AgentMessage { body: Some(body) };
    // Queued results are in the outbox too: drop them, then send the outbox (in this
    // order, so a result finishing now is in one or the other).
    while let Ok(ev) = events.try_recv() {
        drop(ev);
    }
    // Results first, then Hello (see the protocol).
    for r in paths.outbox_results() {
        let _ = tx.send(send(Out::Result(r))).await;
    }
    let state = paths.load_state();
    let mut running_jobs: Vec<String> = running.id().into_iter().collect();
    running_jobs.extend(queued.lock().expect("queued").iter().cloned());
    running_jobs.retain(|j| !j.is_empty());
    let hello = pb::Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        policy_revision: paths.load_policy().map_or(0, |p| p.revision),
        running_jobs,
        last_backup_at: state.last_backup_at,
        utc_offset_secs: chrono::Local::now().offset().local_minus_utc(),
    };
    let _ = tx.send(send(Out::Hello(hello))).await;
    let outbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut client = pb::agent_service_client::AgentServiceClient::new(ch);
    let mut inbound = client
        .session(outbound)
        .await
        .map_err(|s| FleetError::Refused(s.message().to_string()))?
        .into_inner();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
    let mut seq = 0u64;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| FleetError::Connect {
                    url: ident.coordinator_url.clone(),
                    reason: s.message().to_string(),
                })?;
                let Some(msg) = msg else { return Ok(()) };
                match msg.body {
                    Some(In::Welcome(w)) => {
                        tracing::info!("connected as {}", w.host_id);
                        let secs = u64::from(w.heartbeat_interval_secs.max(1));
                        heartbeat = tokio::time::interval(Duration::from_secs(secs));
                        heartbeat.reset();
                    }
                    Some(In::HeartbeatAck(_)) => {}
                    Some(In::Policy(push)) => {
                        let revision = push.revision;
                        let (applied, error) = match write_file(&paths.policy(), &push.encode_to_vec(), 0o600) {
                            Ok(()) => (true, String::new()),
                            Err(e) => (false, e.to_string()),
                        };
                        tracing::info!("policy revision {revision} ({})", push.policy.as_ref().map_or("none", |p| p.name.as_str()));
                        let _ = tx.send(send(Out::PolicyAck(pb::PolicyAck { revision, applied, error }))).await;
                    }
                    Some(In::Job(a)) => {
                        tracing::info!(
                            "job {}: {}",
                            a.job_id,
                            pb::JobKind::try_from(a.kind).map_or("unknown kind", |k| k.as_str_name())
                        );
                        let _ = tx.send(send(Out::JobAccepted(pb::JobAccepted { job_id: a.job_id.clone() }))).await;
                        queued.lock().expect("queued").push(a.job_id.clone());
                        if jobs.send(a).is_err() {
                            return Ok(());
                        }
                    }
                    Some(In::Cancel(c)) => {
                        if running.cancel(&c.job_id) {
                            tracing::info!("job {}: cancel requested; stopping at the next file", c.job_id);
                        } else {
                            tracing::info!("job {}: cancel requested, but it is not running here", c.job_id);
                        }
                    }
                    Some(In::ResultAck(ack)) => paths.outbox_ack(&ack.result_id),
                    None => {}
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                let hb = pb::Heartbeat { seq, sent_at_ms: chrono::Utc::now().timestamp_millis() };
                if tx.send(send(Out::Heartbeat(hb))).await.is_err() {
                    return Ok(());
                }
            }
            ev = events.recv() => {
                let body = match ev {
                    Some(Event::Progress(p)) => Out::Progress(p),
                    Some(Event::Result(r)) => Out::Result(*r),
                    None => return Ok(()),
                };
                if tx.send(send(body)).await.is_err() {
                    return Ok(());
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_default_sensibly() {
        assert_eq!(default_server_name("https://127.0.0.1:7443"), "localhost");
        assert_eq!(
            default_server_name("https://coord.example:7443/"),
            "coord.example"
        );
        assert_eq!(default_server_name("https://[::1]:7443"), "localhost");
    }

    #[test]
    fn sources_map_to_root_and_rules() {
        let (root, rules) = selection_for(&["/srv/app".into()], &["**/*.tmp".into()]).unwrap();
        assert_eq!(root, PathBuf::from("/srv/app"));
        assert_eq!(rules, vec![(Rule::Exclude, "**/*.tmp".to_string())]);
        let (root, rules) = selection_for(
            &["/etc".into(), "/var/www".into()],
            &["/var/www/cache".into()],
        )
        .unwrap();
        assert_eq!(root, PathBuf::from("/"));
        assert_eq!(rules.first().unwrap().0, Rule::Exclude);
        assert_eq!(rules.last().unwrap(), &(Rule::Exclude, "**".to_string()));
        assert!(selection_for(&[], &[]).is_err());
        assert!(selection_for(&["/a".into(), "b".into()], &[]).is_err());
    }

    #[test]
    fn outbox_keeps_results_until_acknowledged_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            state_dir: dir.path().to_path_buf(),
        };
        for (id, t) in [("b", 20), ("a", 10)] {
            paths
                .outbox_put(&pb::JobResult {
                    result_id: id.into(),
                    finished_at: t,
                    ..Default::default()
                })
                .unwrap();
        }
        let ids: Vec<String> = paths
            .outbox_results()
            .into_iter()
            .map(|r| r.result_id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
        paths.outbox_ack("a");
        let ids: Vec<String> = paths
            .outbox_results()
            .into_iter()
            .map(|r| r.result_id)
            .collect();
        assert_eq!(ids, vec!["b"]);
    }
}
