//! `flotilla serve`: the gRPC services over mutual TLS.
//!
//! One port. Client certificates are optional at the TLS layer so that a new agent can
//! call `Enroll` with its token; every other call checks the verified certificate's
//! identity (`host:ID` for the agent session, `admin:NAME` for the admin service) and
//! refusals are written to the audit log.

use crate::catalog::{AuditEntry, Catalog, CatalogError, HostRecord};
use crate::fleet::{Fleet, FleetError, job_pb, restore_evidence_pb, set_pb};
use crate::pki::{self, Authority, Identity};
use flotilla_common::proto::v1 as pb;
use pb::admin_service_server::{AdminService, AdminServiceServer};
use pb::agent_service_server::{AgentService, AgentServiceServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

pub use crate::config::CoordinatorConfig;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn internal(e: CatalogError) -> Status {
    Status::internal(e.to_string())
}

struct Shared {
    catalog: Catalog,
    authority: Authority,
    heartbeat_secs: u32,
    fleet: Arc<Fleet>,
}

impl Shared {
    fn audit(&self, actor: &str, action: &str, outcome: &str) {
        let entry = AuditEntry {
            at_ms: chrono::Utc::now().timestamp_millis(),
            actor: actor.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.catalog.audit(&entry) {
            tracing::error!("audit log: {e}");
        }
    }

    /// The verified identity of the caller, or who it is for the audit log.
    fn identity<T>(&self, req: &Request<T>) -> Result<Identity, String> {
        let anonymous = || {
            format!(
                "anonymous@{}",
                req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
            )
        };
        let certs = req.peer_certs().ok_or_else(anonymous)?;
        let leaf = certs.first().ok_or_else(anonymous)?;
        pki::identity_of(leaf).map_err(|e| format!("{}: {e}", anonymous()))
    }

    fn require_admin<T>(&self, req: &Request<T>, action: &str) -> Result<String, Status> {
        match self.identity(req) {
            Ok(Identity::Admin(name)) => Ok(name),
            Ok(Identity::Host(id)) => {
                self.audit(
                    &format!("host:{id}"),
                    action,
                    "refused: not an admin certificate",
                );
                Err(Status::permission_denied(
                    "the admin service needs the admin certificate",
                ))
            }
            Err(who) => {
                self.audit(&who, action, "refused: no admin certificate");
                Err(Status::unauthenticated(
                    "the admin service needs the admin certificate (flotilla init wrote admin.pem)",
                ))
            }
        }
    }
}

/// A host id from a hostname: lowercase letters, digits and '-', unique in the catalog.
fn host_id_for(catalog: &Catalog, hostname: &str) -> Result<String, CatalogError> {
    let mut base: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base = base.trim_matches('-').chars().take(40).collect();
    if base.is_empty() {
        base = "host".into();
    }
    let mut id = base.clone();
    let mut n = 2;
    while catalog.host(&id)?.is_some() {
        id = format!("{base}-{n}");
        n += 1;
    }
    Ok(id)
}

struct AgentSvc(Arc<Shared>);

type SessionStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentSvc {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let s = &self.0;
        let who = format!(
            "anonymous@{}",
            req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let r = req.into_inner();
        let host_id = host_id_for(&s.catalog, &r.hostname).map_err(internal)?;
        let token = match s.catalog.consume_token(&r.token, &host_id, now()) {
            Ok(t) => t,
            Err(CatalogError::Token(refusal)) => {
                s.audit(
                    &who,
                    &format!("enroll {}", r.hostname),
                    &format!("refused: {refusal}"),
                );
                return Err(Status::permission_denied(format!(
                    "enrollment refused: {refusal}"
                )));
            }
            Err(e) => return Err(internal(e)),
        };
        let cert = match s.authority.sign_agent(&r.csr_der, &host_id) {
            Ok(c) => c,
            Err(e) => {
                s.audit(
                    &who,
                    &format!("enroll {}", r.hostname),
                    &format!("refused: {e}"),
                );
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        // Labels: the token's, overridden by none (the operator chose them).
        let mut labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        labels.extend(token.labels);
        let host = HostRecord {
            host_id: host_id.clone(),
            hostname: r.hostname.clone(),
            labels,
            cert_fingerprint: pki::fingerprint(&cert),
            signing_public_key: r.signing_public_key,
            agent_version: r.agent_version,
            enrolled_at: now(),
            last_seen: now(),
            policy_revision_applied: 0,
            utc_offset_secs: 0,
            last_backup_at: 0,
            destination_override: None,
        };
        s.catalog.put_host(&host).map_err(internal)?;
        s.catalog.flush().map_err(internal)?;
        s.fleet.host_enrolled(&host);
        s.audit(
            &who,
            &format!("enroll {}", r.hostname),
            &format!("enrolled as {host_id}"),
        );
        let ca_der = pem_body(s.authority.ca_pem());
        Ok(Response::new(pb::EnrollResponse {
            host_id,
            certificate_der: cert,
            ca_certificate_der: ca_der,
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let s = self.0.clone();
        let host_id = match s.identity(&req) {
            Ok(Identity::Host(id)) => id,
            Ok(Identity::Admin(name)) => {
                s.audit(
                    &format!("admin:{name}"),
                    "session",
                    "refused: not a host certificate",
                );
                return Err(Status::permission_denied(
                    "the agent session needs a host certificate",
                ));
            }
            Err(who) => {
                s.audit(&who, "session", "refused: no host certificate");
                return Err(Status::unauthenticated(
                    "the agent session needs a host certificate",
                ));
            }
        };
        let Some(host) = s.catalog.host(&host_id).map_err(internal)? else {
            s.audit(
                &format!("host:{host_id}"),
                "session",
                "refused: host removed",
            );
            return Err(Status::permission_denied(format!(
                "host {host_id} is not enrolled (removed?)"
            )));
        };
        // The certificate must be the one issued at enrollment (not a re-issued twin).
        let leaf = req
            .peer_certs()
            .and_then(|c| c.first().map(|c| pki::fingerprint(c)));
        if leaf.as_deref() != Some(host.cert_fingerprint.as_str()) {
            s.audit(
                &format!("host:{host_id}"),
                "session",
                "refused: certificate not the enrolled one",
            );
            return Err(Status::permission_denied(
                "certificate is not the one issued to this host",
            ));
        }
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let _ = tx
            .send(Ok(pb::CoordinatorMessage {
                body: Some(pb::coordinator_message::Body::Welcome(pb::Welcome {
                    host_id: host_id.clone(),
                    heartbeat_interval_secs: s.heartbeat_secs,
                })),
            }))
            .await;
        let fleet = s.fleet.clone();
        let conn = fleet.connected(&host_id, tx.clone());
        tracing::info!("{host_id} connected");
        tokio::spawn(async move {
            use futures::StreamExt;
            use pb::agent_message::Body as In;
            // In order: results re-sent before Hello are recorded before Hello is read.
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                // Replaced by a newer session of the host, or the host was removed: end
                // this stream (the agent reconnects, or is refused).
                if !fleet.is_current(&host_id, conn) {
                    break;
                }
                match msg.body {
                    Some(In::Hello(h)) => fleet.hello(&host_id, h).await,
                    Some(In::Heartbeat(hb)) => {
                        fleet.heartbeat(&host_id);
                        let ack = pb::CoordinatorMessage {
                            body: Some(pb::coordinator_message::Body::HeartbeatAck(
                                pb::HeartbeatAck { seq: hb.seq },
                            )),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    Some(In::PolicyAck(a)) => fleet.policy_ack(&host_id, a),
                    Some(In::Progress(p)) => fleet.progress(&host_id, p),
                    Some(In::Result(r)) => fleet.result(&host_id, r).await,
                    Some(In::JobAccepted(_)) | None => {}
                }
            }
            fleet.disconnected(&host_id, conn);
            tracing::info!("{host_id} disconnected");
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The DER inside a PEM certificate.
fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_default()
}

struct AdminSvc(Arc<Shared>);

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let admin = self.0.require_admin(&req, "token create")?;
        let r = req.into_inner();
        if r.ttl_secs == 0 {
            return Err(Status::invalid_argument("ttl must be positive"));
        }
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let (token, rec) = self
            .0
            .catalog
            .create_token(labels.clone(), now(), r.ttl_secs)
            .map_err(internal)?;
        self.0.audit(
            &format!("admin:{admin}"),
            "token create",
            &format!("labels {labels:?}, expires {}", rec.expires_at),
        );
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            expires_at: rec.expires_at,
        }))
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.0.require_admin(&req, "hosts")?;
        let want = req.into_inner().labels;
        let fleet = &self.0.fleet;
        let wanted = fleet.policy_revision();
        let hosts = self
            .0
            .catalog
            .hosts()
            .map_err(internal)?
            .into_iter()
            .filter(|h| want.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
            .map(|h| pb::Host {
                connected: fleet.is_connected(&h.host_id),
                policy: fleet.policy_name(&h).unwrap_or_default(),
                policy_revision_wanted: wanted,
                host_id: h.host_id,
                hostname: h.hostname,
                labels: h.labels.into_iter().collect(),
                agent_version: h.agent_version,
                enrolled_at: h.enrolled_at,
                last_seen: h.last_seen,
                policy_revision_applied: h.policy_revision_applied,
                certificate_fingerprint: h.cert_fingerprint,
            })
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn remove_host(
        &self,
        req: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        let admin = self.0.require_admin(&req, "host remove")?;
        let r = req.into_inner();
        let deleted = self
            .0
            .fleet
            .remove_host(&r.host_id, r.delete_backups)
            .await?;
        self.0.audit(
            &format!("admin:{admin}"),
            &format!("host remove {}", r.host_id),
            &if r.delete_backups {
                format!("removed, {deleted} stored object(s) deleted")
            } else {
                "removed (backups kept)".to_string()
            },
        );
        Ok(Response::new(pb::RemoveHostResponse {
            deleted_objects: deleted,
        }))
    }

    async fn apply_policy(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let admin = self.0.require_admin(&req, "policy apply")?;
        let r = req.into_inner();
        let actor = format!("admin:{admin}");
        match self
            .0
            .fleet
            .apply_policy(&r.file_name, &r.toml, r.dry_run, &actor)
            .await
        {
            Ok(resp) => {
                if resp.stored {
                    self.0.audit(
                        &actor,
                        &format!("policy apply {}", r.file_name),
                        &format!(
                            "revision {} stored, {} host(s) change",
                            resp.revision,
                            resp.changes.len()
                        ),
                    );
                }
                Ok(Response::new(resp))
            }
            Err(e) => {
                if !r.dry_run {
                    self.0.audit(
                        &actor,
                        &format!("policy apply {}", r.file_name),
                        "refused: invalid",
                    );
                }
                Err(e.into())
            }
        }
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        self.0.require_admin(&req, "policy show")?;
        let rev = req.into_inner().revision;
        let p = if rev == 0 {
            self.0.catalog.current_policy()
        } else {
            self.0.catalog.policy(rev)
        }
        .map_err(internal)?;
        let p = p.ok_or_else(|| {
            Status::not_found(if rev == 0 {
                "no policy applied yet (flotilla policy apply FILE)".to_string()
            } else {
                format!("no policy revision {rev}")
            })
        })?;
        Ok(Response::new(pb::GetPolicyResponse {
            revision: p.revision,
            toml: p.toml,
            applied_at: p.applied_at,
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.0.require_admin(&req, "jobs")?;
        let r = req.into_inner();
        let host = (!r.host_id.is_empty()).then_some(r.host_id.as_str());
        let jobs = self
            .0
            .catalog
            .jobs(host, r.limit as usize)
            .map_err(internal)?
            .iter()
            .map(job_pb)
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type WatchJobsStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Job, Status>> + Send>>;

    async fn watch_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        self.0.require_admin(&req, "jobs --watch")?;
        let r = req.into_inner();
        let mut events = self.0.fleet.subscribe_jobs();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let job = match events.recv().await {
                    Ok(j) => j,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("jobs --watch fell {n} events behind");
                        continue;
                    }
                    Err(_) => break,
                };
                if !r.host_id.is_empty() && r.host_id != job.host_id {
                    continue;
                }
                if tx.send(Ok(job_pb(&job))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn list_chains(
        &self,
        req: Request<pb::ListChainsRequest>,
    ) -> Result<Response<pb::ListChainsResponse>, Status> {
        self.0.require_admin(&req, "chains")?;
        let id = req.into_inner().host_id;
        let host = self
            .0
            .catalog
            .host(&id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("host {id} is not enrolled")))?;
        let destination = match self.0.fleet.plan(&host) {
            Ok(p) => p.url,
            Err(_) => host.destination_override.clone().unwrap_or_default(),
        };
        let mut chains: Vec<pb::Chain> = Vec::new();
        for set in self.0.catalog.sets(&id).map_err(internal)? {
            if set.kind == "full" || chains.is_empty() {
                chains.push(pb::Chain::default());
            }
            chains.last_mut().expect("pushed").sets.push(set_pb(&set));
        }
        Ok(Response::new(pb::ListChainsResponse {
            destination,
            chains,
        }))
    }

    async fn trigger_backup(
        &self,
        req: Request<pb::TriggerBackupRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let admin = self.0.require_admin(&req, "backup")?;
        let r = req.into_inner();
        let actor = format!("admin:{admin}");
        let job = self
            .0
            .fleet
            .trigger_backup(&r.host_id, r.full, &actor)
            .await?;
        self.0.audit(
            &actor,
            &format!(
                "backup {}{}",
                r.host_id,
                if r.full { " --full" } else { "" }
            ),
            &format!("job {}", job.job_id),
        );
        Ok(Response::new(job_pb(&job)))
    }

    async fn rebuild_catalog(
        &self,
        req: Request<pb::RebuildCatalogRequest>,
    ) -> Result<Response<pb::RebuildCatalogResponse>, Status> {
        let admin = self.0.require_admin(&req, "catalog rebuild")?;
        let id = req.into_inner().host_id;
        let resp = self
            .0
            .fleet
            .rebuild((!id.is_empty()).then_some(id.as_str()))
            .await?;
        self.0.audit(
            &format!("admin:{admin}"),
            "catalog rebuild",
            &format!(
                "{} host(s), {} set(s), {} error(s)",
                resp.hosts,
                resp.sets,
                resp.errors.len()
            ),
        );
        Ok(Response::new(resp))
    }

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Result<Response<pb::Job>, Status> {
        let admin = self.0.require_admin(&req, "restore")?;
        let r = req.into_inner();
        let actor = format!("admin:{admin}");
        let what = format!(
            "restore {} --to {} --target {} --time {} {:?}",
            r.source_host_id, r.target_host_id, r.target, r.time, r.paths
        );
        let what = if r.drill {
            format!(
                "restore-test {} --to {}",
                r.source_host_id, r.target_host_id
            )
        } else {
            what
        };
        match self.0.fleet.restore(r, &actor).await {
            Ok(job) => {
                self.0.audit(&actor, &what, &format!("job {}", job.job_id));
                Ok(Response::new(job_pb(&job)))
            }
            Err(e) => {
                self.0.audit(&actor, &what, &format!("refused: {e}"));
                Err(e.into())
            }
        }
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        self.0.require_admin(&req, "report")?;
        let r = req.into_inner();
        let fleet = self.0.fleet.clone();
        let labels: std::collections::BTreeMap<String, String> = r.labels.into_iter().collect();
        let selection = labels.clone();
        // Catalog scans: off the async workers.
        let mut report = tokio::task::spawn_blocking(move || {
            fleet.report(selection, r.at, r.history_days.min(366))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        if r.check_storage {
            report.storage_check = Some(self.0.fleet.check_storage(&labels).await?);
        }
        let json = serde_json::to_string(&report).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ReportResponse { json }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let admin = self.0.require_admin(&req, "cancel job")?;
        let r = req.into_inner();
        let actor = format!("admin:{admin}");
        let what = format!("cancel job {}", r.job_id);
        match self.0.fleet.cancel_job(&r.job_id, &actor).await {
            Ok(job) => {
                self.0.audit(&actor, &what, state_word(job.state));
                Ok(Response::new(job))
            }
            Err(e) => {
                self.0.audit(&actor, &what, &format!("refused: {e}"));
                Err(e.into())
            }
        }
    }

    async fn list_restores(
        &self,
        req: Request<pb::ListRestoresRequest>,
    ) -> Result<Response<pb::ListRestoresResponse>, Status> {
        self.0.require_admin(&req, "restores")?;
        let r = req.into_inner();
        let host = (!r.source_host_id.is_empty()).then_some(r.source_host_id.as_str());
        let restores = self
            .0
            .fleet
            .catalog
            .restores(host, r.limit as usize)
            .map_err(FleetError::from)?;
        Ok(Response::new(pb::ListRestoresResponse {
            restores: restores.iter().map(restore_evidence_pb).collect(),
        }))
    }

    async fn read_access(
        &self,
        req: Request<pb::ReadAccessRequest>,
    ) -> Result<Response<pb::ReadAccessResponse>, Status> {
        let admin = self.0.require_admin(&req, "read access")?;
        let r = req.into_inner();
        let actor = format!("admin:{admin}");
        let what = format!("read access to {}'s backups", r.host_id);
        match self.0.fleet.read_access(&r.host_id).await {
            Ok(resp) => {
                self.0.audit(&actor, &what, "granted");
                Ok(Response::new(resp))
            }
            Err(e) => {
                self.0.audit(&actor, &what, &format!("refused: {e}"));
                Err(e.into())
            }
        }
    }

    async fn adopt_host(
        &self,
        req: Request<pb::AdoptHostRequest>,
    ) -> Result<Response<pb::AdoptHostResponse>, Status> {
        let admin = self.0.require_admin(&req, "host adopt")?;
        let r = req.into_inner();
        let resp = self.0.fleet.adopt(&r.host_id, &r.url, &r.account).await?;
        self.0.audit(
            &format!("admin:{admin}"),
            &format!("host adopt {} --from {}", r.host_id, r.url),
            &format!("{} chain(s), {} set(s)", resp.chains, resp.sets),
        );
        Ok(Response::new(resp))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // The source is the detail (`{:#}` prints it after the colon), not repeated here.
    #[error("the coordinator's certificates (run `flotilla init` first?)")]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("metrics listen on {addr}: {error}")]
    Metrics { addr: SocketAddr, error: String },
    #[error("listen on {addr}: {error}")]
    Transport {
        addr: SocketAddr,
        error: tonic::transport::Error,
    },
}

/// Runs the coordinator until `shutdown` resolves.
pub async fn serve(
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    flotilla_common::storage::ensure_tls_provider();
    let pki_dir = config.state_dir.join("pki");
    let authority = Authority::load(&pki_dir)?;
    let read = |name: &str| {
        std::fs::read_to_string(pki_dir.join(name)).map_err(|error| pki::PkiError::Io {
            path: pki_dir.join(name),
            error,
        })
    };
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(
            read(pki::SERVER_CERT)?,
            read(pki::SERVER_KEY)?,
        ))
        .client_ca_root(Certificate::from_pem(authority.ca_pem()))
        .client_auth_optional(true);
    let catalog = Catalog::open(&config.state_dir.join("catalog"))?;
    let fleet = Fleet::new(catalog.clone(), config.clone())?;
    let shared = Arc::new(Shared {
        catalog,
        authority,
        heartbeat_secs: config.heartbeat_secs,
        fleet: fleet.clone(),
    });
    // The scheduler: due slots become jobs, queued jobs go to connected hosts.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => fleet.tick().await,
                _ = stop_rx.changed() => break,
            }
        }
    });
    // The history pruner: finished jobs older than `job_history_days` go, hourly.
    let pruner = (config.job_history_days > 0).then(|| {
        let catalog = shared.catalog.clone();
        let keep_secs = i64::from(config.job_history_days) * 86_400;
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let catalog = catalog.clone();
                let before = crate::fleet::now() - keep_secs;
                match tokio::task::spawn_blocking(move || catalog.prune_history(before)).await {
                    Ok(Ok(p)) if p.jobs + p.results > 0 => tracing::info!(
                        "pruned {} finished job(s) and {} result marker(s) older than {} days",
                        p.jobs,
                        p.results,
                        keep_secs / 86_400
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!("pruning the job history: {e}"),
                    Err(e) => tracing::error!("pruning the job history: {e}"),
                }
            }
        })
    });
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let fleet = shared.fleet.clone();
            let stop = stop_tx.subscribe();
            // Bound now: a wrong address fails the start, not the first scrape.
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| ServeError::Metrics {
                    addr,
                    error: e.to_string(),
                })?;
            Some(tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve_metrics(listener, fleet, stop).await {
                    tracing::error!("metrics at {addr}: {e}");
                }
            }))
        }
        None => None,
    };
    tracing::info!("coordinator listening on {}", config.listen);
    Server::builder()
        .tls_config(tls)
        .map_err(|error| ServeError::Transport {
            addr: config.listen,
            error,
        })?
        .add_service(AgentServiceServer::new(AgentSvc(shared.clone())))
        .add_service(AdminServiceServer::new(AdminSvc(shared.clone())))
        .serve_with_shutdown(config.listen, shutdown)
        .await
        .map_err(|error| ServeError::Transport {
            addr: config.listen,
            error,
        })?;
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    if let Some(p) = pruner {
        let _ = p.await;
    }
    if let Some(m) = metrics {
        let _ = m.await;
    }
    shared.catalog.flush()?;
    Ok(())
}

fn state_word(state: i32) -> &'static str {
    if state == pb::JobState::Cancelled as i32 {
        "cancelled"
    } else {
        "cancel requested from the agent"
    }
}
