//! `flotilla`: the coordinator (`flotilla serve`) and its admin CLI. Everything here is
//! argument parsing and output; the work is in the `flotilla_coordinator` library.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use flotilla_client::{out, outln};
use flotilla_common::policy::PolicySet;
use flotilla_common::proto::v1 as pb;
use flotilla_common::storage::{Access, Credentials, Destination, scoped};
use flotilla_common::timespec::parse_interval;
use flotilla_coordinator::server::{CoordinatorConfig, serve};
use std::path::PathBuf;

mod report_cli;
mod restore_cli;

type AdminClient = pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla coordinator and admin CLI",
    long_about = "Flotilla coordinator and admin CLI.\n\n\
                  Set up: `flotilla init` (certificate authority), `flotilla serve --config \
                  coordinator.toml`, `flotilla token create --labels role=web`, then on each host \
                  `flotilla-agent enroll --coordinator URL --token T --ca-cert ca.pem` and \
                  `flotilla-agent run`.\n\
                  Run the fleet: `flotilla policy apply policies.toml`, `flotilla hosts`, \
                  `flotilla jobs --watch`, `flotilla chains HOST`, `flotilla backup HOST`.\n\
                  Admin commands reach the coordinator at --coordinator (FLOTILLA_COORDINATOR) \
                  with the admin certificate in --dir/pki (FLOTILLA_COORDINATOR_DIR)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the admin CLI reaches the coordinator.
#[derive(clap::Args, Clone)]
struct Connect {
    /// Coordinator URL.
    #[arg(
        long,
        default_value = "https://127.0.0.1:7443",
        env = "FLOTILLA_COORDINATOR"
    )]
    coordinator: String,
    /// Directory holding pki/ca.pem, pki/admin.pem and pki/admin.key (from `flotilla init`).
    #[arg(
        long,
        default_value = "/var/lib/flotilla",
        env = "FLOTILLA_COORDINATOR_DIR"
    )]
    dir: PathBuf,
    /// Name in the coordinator's server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

/// The decryption key of a restore or listing.
#[derive(clap::Args, Clone)]
struct KeyArg {
    /// Secret key file (armored) for backups encrypted to public keys; its passphrase,
    /// or that of symmetrically encrypted backups, comes from FLOTILLA_PASSPHRASE or
    /// PASSPHRASE, else from a prompt.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create one-time enrollment tokens (one per host); enrolled hosts get these
    /// labels. Prints one token per line (JSON: `tokens`, and `token` for the first).
    Create {
        /// Labels as k=v,k=v.
        #[arg(long, default_value = "")]
        labels: String,
        /// Lifetime (duplicity interval syntax: 30m, 12h, 2D).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many tokens, e.g. one per host of a rollout (deploy/enroll-hosts.sh).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate FILE, show which hosts change how, store it as a new revision and push
    /// it to the agents. Keys given as public_key_file are read here (relative to FILE)
    /// and sent inline.
    Apply {
        file: PathBuf,
        /// Only validate and show the changes.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print the current policy file (or --revision N).
    Show {
        #[arg(long, default_value_t = 0)]
        revision: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Forget a host: its certificate stops working, its queued jobs are cancelled. Its
    /// backups are kept unless --delete-backups.
    Remove {
        host: String,
        /// Also delete every object in the host's container.
        #[arg(long)]
        delete_backups: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Register the chains stock duplicity wrote at URL for an enrolled host (from the
    /// object listing; no key needed). The host's next backups go to URL: they continue
    /// the chain when the agent can read its signatures (same passphrase), else start a
    /// new full chain and say why.
    Adopt {
        host: String,
        /// azure://CONTAINER, swift://CONTAINER[/PREFIX] or file:///DIR.
        #[arg(long = "from", value_name = "URL")]
        url: String,
        /// Coordinator account ([account.NAME] in its config) that can read URL.
        #[arg(long, default_value = "")]
        account: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Rebuild the backup sets of every host (or --host) from the storage listings.
    Rebuild {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve {
        /// Config file (TOML): listen, state_dir, heartbeat_secs, job_max_attempts,
        /// job_retry_delay_secs, job_credential_ttl_secs, offline_credential_ttl_secs and
        /// [account.NAME] env_file = "FILE" (storage credentials as KEY=VALUE lines;
        /// without env_file the coordinator's environment). See deploy/coordinator.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides the config's state_dir.
        #[arg(long, env = "FLOTILLA_COORDINATOR_DIR")]
        dir: Option<PathBuf>,
        /// Overrides the config's listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Serve Prometheus metrics at http://ADDR/metrics (overrides metrics_listen).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled hosts.
    Hosts {
        /// Only hosts with these labels (k=v,k=v).
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Policies: validate, apply (new revision pushed to every agent), show.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Jobs, newest first (scheduled, on-demand, retention, and runs agents made
    /// while the coordinator was unreachable).
    Jobs {
        /// Only this host's jobs.
        #[arg(long)]
        host: Option<String>,
        /// How many (0: all).
        #[arg(long, default_value_t = 30)]
        limit: u32,
        /// After the list, print job changes as they happen (Ctrl-C ends).
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// A host's backup chains and sets, as the catalog records them.
    Chains {
        host: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Back up a host now (incremental unless --full); prints the job.
    Backup {
        host: String,
        /// Start a new chain.
        #[arg(long)]
        full: bool,
        /// Wait until the job ends; exit 1 if it failed.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Restore HOST's backup (as of --time) on HOST or --to another host, into --target
    /// there, and follow the job (progress bar, then what was restored and whether it
    /// matches the backup's signatures). Or --local DIR: restore on this machine, with a
    /// read-only credential from the coordinator. The key (--key FILE; passphrase from
    /// FLOTILLA_PASSPHRASE or PASSPHRASE, else asked for) goes to the agent inside the
    /// mutual-TLS session for this job only; it is never stored. The target must be
    /// absent or empty unless --force. Exit 1 when a path could not be restored or
    /// differs from the backup.
    Restore {
        host: String,
        /// Point in time (duplicity syntax: 3D, 2026-11-20, epoch seconds); default latest.
        #[arg(long, short)]
        time: Option<String>,
        /// Restore only this path of the backup (repeatable).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<String>,
        /// The host that restores (default: HOST itself).
        #[arg(long = "to", value_name = "TARGET_HOST", conflicts_with = "local")]
        to: Option<String>,
        /// Absolute directory on the restoring host.
        #[arg(long, required_unless_present = "local")]
        target: Option<String>,
        /// Restore into DIR on this machine instead of through an agent.
        #[arg(long, value_name = "DIR", conflicts_with = "target")]
        local: Option<PathBuf>,
        #[command(flatten)]
        key: KeyArg,
        /// Restore into a non-empty target.
        #[arg(long)]
        force: bool,
        /// Fail the restore if it has not started within this time (target host offline
        /// or busy; its key is dropped then). 0: wait indefinitely.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        start_within: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Restore test (drill): restore HOST's backup into a temporary directory on
    /// DRILL_HOST, check every file against the backup's signatures, record the evidence
    /// (`flotilla restores`) and remove the directory. Exit 1 unless verified.
    RestoreTest {
        host: String,
        /// The host that runs the drill (it needs no access of its own: the job brings
        /// a read-only credential and the key).
        #[arg(long = "to", value_name = "DRILL_HOST")]
        to: Option<String>,
        /// Point in time; default latest.
        #[arg(long, short)]
        time: Option<String>,
        #[command(flatten)]
        key: KeyArg,
        /// Fail if the drill has not started within this time. 0: wait indefinitely.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        start_within: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Restore evidence, newest first: restores and drills, what they restored and
    /// whether it matched the backup.
    Restores {
        /// Only restores of this host's backups.
        host: Option<String>,
        /// How many (0: all).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// What HOST's backup held at a time (under PATH): mode, owner, size, mtime, path.
    /// Read on this machine from the signature files with a read-only credential from
    /// the coordinator; the key stays here.
    Ls {
        host: String,
        /// Only this path and what is under it.
        path: Option<String>,
        /// Point in time; default latest.
        #[arg(long, short)]
        time: Option<String>,
        #[command(flatten)]
        key: KeyArg,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// The freshness report: one row per host (status, last successful backup and its
    /// age against the policy's max_age, chain, last failure, last verified restore,
    /// agent version, policy revision, last seen) and a summary. Statuses, worst first:
    /// unprotected (no policy), never (no backup yet), stale (older than max_age),
    /// failing (the last backup job failed), offline (not connected, not seen within
    /// offline_after_secs), fresh. Exit 2 with --fail-on when a host is in one of those
    /// states (for cron and monitoring), and with --check-storage when the catalog and
    /// storage disagree.
    ///
    /// --format html writes one self-contained page (no external assets): the summary,
    /// a table sortable by clicking its headers, coloured by status, and each host's
    /// freshness over the last 30 days.
    Report {
        /// table, json, csv or html.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
        /// Only hosts with these labels (k=v,k=v).
        #[arg(long, default_value = "")]
        label: String,
        /// Exit 2 when any host is in one of these states (comma-separated, e.g.
        /// stale,failing,never).
        #[arg(long, value_name = "STATES")]
        fail_on: Option<String>,
        /// Evaluate as of this time instead of now (duplicity time syntax).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Also compare the catalog with each host's storage listing (listings only, no
        /// keys): sets the catalog counts that storage lacks or holds damaged, and complete
        /// sets in storage the catalog lacks. Exit 2 when they disagree.
        #[arg(long)]
        check_storage: bool,
        /// Days of backup history per host in the report (the HTML chart uses 30).
        #[arg(long, value_name = "DAYS")]
        history_days: Option<u32>,
        /// Same as --format json.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Cancel a job: a queued one at once, a running one by asking its agent to stop at
    /// the next file (a backup's incomplete set is not counted). Prints the job.
    Cancel {
        job_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Hosts: remove, adopt existing duplicity backups.
    #[command(subcommand)]
    Host(HostCommand),
    /// The catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Create the coordinator's certificate authority, its server certificate and an
    /// admin certificate in DIR/pki (refuses an initialised directory).
    Init {
        /// Coordinator state directory.
        #[arg(
            long,
            default_value = "/var/lib/flotilla",
            env = "FLOTILLA_COORDINATOR_DIR"
        )]
        dir: PathBuf,
        /// Names agents use to reach the coordinator (DNS names or IP addresses);
        /// repeatable.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
        /// Name in the admin certificate (audit log actor).
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mint a short-lived credential for one container from the account credentials in
    /// the environment (the same variables flotilla-agent reads), for
    /// `flotilla-agent --credentials FILE`.
    ///
    /// backup: create, read and list objects (Azure: no overwrite, no delete; Swift:
    /// TempURL GET/HEAD/PUT under the prefix). restore: read and list. prune: read,
    /// list and delete. Swift TempURLs cannot list, so the credential carries the
    /// container listing as of now: mint it right before the job.
    MintCredential {
        /// Destination: azure://CONTAINER or swift://CONTAINER[/PREFIX].
        url: String,
        /// What the holder may do.
        #[arg(long, value_parser = ["backup", "restore", "prune"])]
        access: String,
        /// Lifetime, in duplicity's interval syntax (30m, 12h, 2D).
        #[arg(long, default_value = "12h")]
        ttl: String,
        /// Write the credential (a secret) to FILE with mode 0600 instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("flotilla: error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_labels(text: &str) -> Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("label {part:?} is not k=v"))?;
        anyhow::ensure!(!k.is_empty(), "label {part:?} has an empty name");
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

async fn admin_client(c: &Connect) -> Result<AdminClient> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let pki = c.dir.join("pki");
    let read = |name: &str| {
        std::fs::read_to_string(pki.join(name)).with_context(|| {
            format!(
                "reading {} (the admin certificate from `flotilla init`)",
                pki.join(name).display()
            )
        })
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("admin.pem")?, read("admin.key")?))
        .domain_name(&c.server_name);
    let channel = Channel::from_shared(c.coordinator.clone())
        .with_context(|| format!("coordinator URL {:?}", c.coordinator))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator at {}", c.coordinator))?;
    // Reports of large fleets exceed tonic's 4 MiB default for one message.
    Ok(pb::admin_service_client::AdminServiceClient::new(channel)
        .max_decoding_message_size(1 << 30))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", e.message(), e.code())
}

fn run(cli: Cli) -> Result<()> {
    flotilla_common::storage::ensure_tls_provider();
    match cli.command {
        Command::Serve {
            config,
            dir,
            listen,
            metrics_listen,
        } => {
            let mut cfg = match &config {
                Some(path) => CoordinatorConfig::load(path)?,
                None => CoordinatorConfig::default(),
            };
            if let Some(d) = dir {
                cfg.state_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if metrics_listen.is_some() {
                cfg.metrics_listen = metrics_listen;
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let shutdown = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    tracing::info!("shutting down");
                };
                serve(cfg, shutdown).await
            })?;
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            labels,
            ttl,
            count,
            json,
            connect,
        }) => {
            let labels = parse_labels(&labels)?;
            let secs = parse_interval(&ttl).with_context(|| format!("--ttl {ttl}"))?;
            anyhow::ensure!(secs > 0, "--ttl {ttl}: must be positive");
            let rt = tokio::runtime::Runtime::new()?;
            let (tokens, expires_at) = rt.block_on(async {
                let mut c = admin_client(&connect).await?;
                let mut tokens = Vec::with_capacity(count as usize);
                let mut expires_at = 0;
                for _ in 0..count {
                    let resp = c
                        .create_token(pb::CreateTokenRequest {
                            labels: labels.clone(),
                            ttl_secs: secs as u64,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    tokens.push(resp.token);
                    expires_at = resp.expires_at;
                }
                anyhow::Ok((tokens, expires_at))
            })?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "token": tokens[0], "tokens": tokens, "expires_at": expires_at })
                );
            } else {
                for t in &tokens {
                    outln!("{t}");
                }
                eprintln!(
                    "single use (one per host), expires {}; enroll a host with: flotilla-agent enroll --coordinator {} --token TOKEN",
                    chrono::DateTime::from_timestamp(expires_at, 0).unwrap_or_default(),
                    connect.coordinator
                );
            }
            Ok(())
        }
        Command::Hosts {
            label,
            json,
            connect,
        } => {
            let labels = parse_labels(&label)?;
            let hosts = block(async {
                let mut c = admin_client(&connect).await?;
                c.list_hosts(pb::ListHostsRequest { labels })
                    .await
                    .map_err(status_error)
            })?
            .into_inner()
            .hosts;
            if json {
                let v: Vec<_> = hosts
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "host_id": h.host_id, "hostname": h.hostname, "labels": h.labels,
                            "agent_version": h.agent_version, "enrolled_at": h.enrolled_at,
                            "last_seen": h.last_seen, "connected": h.connected,
                            "policy": h.policy,
                            "policy_revision_applied": h.policy_revision_applied,
                            "policy_revision_wanted": h.policy_revision_wanted,
                            "certificate_fingerprint": h.certificate_fingerprint,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows = hosts.iter().map(|h| {
                    let mut labels: Vec<String> =
                        h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    let revision = if h.policy.is_empty() {
                        "-".to_string()
                    } else if h.policy_revision_applied == h.policy_revision_wanted {
                        format!("{} (current)", h.policy_revision_applied)
                    } else {
                        format!(
                            "{} (wants {})",
                            h.policy_revision_applied, h.policy_revision_wanted
                        )
                    };
                    vec![
                        h.host_id.clone(),
                        h.hostname.clone(),
                        labels.join(","),
                        if h.connected { "yes" } else { "no" }.to_string(),
                        or_dash(&h.policy),
                        revision,
                        time_text(h.last_seen),
                    ]
                });
                out!(
                    "{}",
                    table(
                        &[
                            "HOST",
                            "HOSTNAME",
                            "LABELS",
                            "CONNECTED",
                            "POLICY",
                            "REVISION",
                            "LAST SEEN"
                        ],
                        rows
                    )
                );
            }
            Ok(())
        }
        Command::Policy(PolicyCommand::Apply {
            file,
            dry_run,
            json,
            connect,
        }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = file.display().to_string();
            // Validate here first: errors name lines of the file as written.
            let base = file.parent().map(PathBuf::from).unwrap_or_default();
            if let Err(errors) = PolicySet::parse(&name, &text, |f| {
                std::fs::read_to_string(base.join(f)).map_err(|e| e.to_string())
            }) {
                for e in &errors {
                    eprintln!("{e}");
                }
                anyhow::bail!("{} problem(s) in {name}; nothing applied", errors.len());
            }
            let inlined = inline_key_files(&text, &base)?;
            let resp = block(async {
                let mut c = admin_client(&connect).await?;
                c.apply_policy(pb::ApplyPolicyRequest {
                    file_name: name.clone(),
                    toml: inlined,
                    dry_run,
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            if json {
                let changes: Vec<_> = resp
                    .changes
                    .iter()
                    .map(|c| {
                        serde_json::json!({"host_id": c.host_id, "hostname": c.hostname,
                            "old_policy": c.old_policy, "new_policy": c.new_policy,
                            "changes": c.changes})
                    })
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "revision": resp.revision, "stored": resp.stored, "changes": changes
                    }))?
                );
            } else {
                if resp.changes.is_empty() {
                    outln!("No host changes.");
                }
                for c in &resp.changes {
                    outln!("{} ({}):", c.host_id, c.hostname);
                    for line in &c.changes {
                        outln!("  {line}");
                    }
                }
                if resp.stored {
                    outln!(
                        "Stored as revision {}; pushing to connected agents (see `flotilla hosts`).",
                        resp.revision
                    );
                } else {
                    outln!(
                        "Dry run: valid; would be revision {}. Nothing stored.",
                        resp.revision
                    );
                }
            }
            Ok(())
        }
        Command::Policy(PolicyCommand::Show {
            revision,
            json,
            connect,
        }) => {
            let p = block(async {
                let mut c = admin_client(&connect).await?;
                c.get_policy(pb::GetPolicyRequest { revision })
                    .await
                    .map_err(status_error)
            })?
            .into_inner();
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"revision": p.revision, "applied_at": p.applied_at, "toml": p.toml})
                );
            } else {
                eprintln!(
                    "# revision {}, applied {}",
                    p.revision,
                    time_text(p.applied_at)
                );
                out!("{}", p.toml);
            }
            Ok(())
        }
        Command::Jobs {
            host,
            limit,
            watch,
            json,
            connect,
        } => block(async {
            let mut c = admin_client(&connect).await?;
            let req = pb::ListJobsRequest {
                host_id: host.unwrap_or_default(),
                limit,
            };
            let mut jobs = c
                .list_jobs(req.clone())
                .await
                .map_err(status_error)?
                .into_inner()
                .jobs;
            jobs.reverse();
            if json && !watch {
                let v: Vec<_> = jobs.iter().map(job_json).collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else if json {
                for j in &jobs {
                    outln!("{}", job_json(j));
                }
            } else {
                out!("{}", table(JOB_HEADERS, jobs.iter().map(job_row)));
            }
            if watch {
                let mut stream = c.watch_jobs(req).await.map_err(status_error)?.into_inner();
                while let Some(j) = stream.message().await.map_err(status_error)? {
                    if json {
                        outln!("{}", job_json(&j));
                    } else {
                        outln!("{}", job_row(&j).join("  "));
                    }
                }
            }
            Ok(())
        }),
        Command::Chains {
            host,
            json,
            connect,
        } => {
            let r = block(async {
                let mut c = admin_client(&connect).await?;
                c.list_chains(pb::ListChainsRequest {
                    host_id: host.clone(),
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            if json {
                let chains: Vec<_> = r
                    .chains
                    .iter()
                    .map(|c| c.sets.iter().map(set_json).collect::<Vec<_>>())
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"host_id": host, "destination": r.destination, "chains": chains})
                    )?
                );
            } else {
                outln!("{host}: {}", or_dash(&r.destination));
                if r.chains.is_empty() {
                    outln!("No backup sets recorded.");
                }
                for (i, chain) in r.chains.iter().enumerate() {
                    outln!("Chain {} ({} set(s)):", i + 1, chain.sets.len());
                    let rows = chain.sets.iter().map(|s| {
                        vec![
                            s.kind.clone(),
                            time_text(s.end_time),
                            s.volumes.to_string(),
                            bytes_text(s.bytes),
                            if s.files > 0 {
                                s.files.to_string()
                            } else {
                                "-".into()
                            },
                        ]
                    });
                    out!(
                        "{}",
                        table(&["  KIND", "TIME", "VOLUMES", "STORED", "FILES"], rows)
                    );
                }
            }
            Ok(())
        }
        Command::Backup {
            host,
            full,
            wait,
            json,
            connect,
        } => block(async {
            let mut c = admin_client(&connect).await?;
            let mut job = c
                .trigger_backup(pb::TriggerBackupRequest {
                    host_id: host.clone(),
                    full,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if !json {
                eprintln!("Job {} for {host} created.", job.job_id);
            }
            if wait {
                job = follow_job(&mut c, job, json).await?;
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&job_json(&job))?);
            } else {
                out!("{}", table(JOB_HEADERS, std::iter::once(job_row(&job))));
            }
            if wait && job.state != pb::JobState::Succeeded as i32 {
                anyhow::bail!("job {} did not succeed: {}", job.job_id, job.error);
            }
            Ok(())
        }),
        Command::Restore {
            host,
            time,
            paths,
            to,
            target,
            local,
            key,
            force,
            start_within,
            json,
            connect,
        } => {
            let time = time_arg(&time)?;
            let key = restore_cli::RestoreKey::load(&key.key)?;
            if let Some(dir) = local {
                return restore_cli::restore_local(
                    admin_client(&connect),
                    &restore_cli::LocalRestore {
                        host: &host,
                        time,
                        paths: &paths,
                        dir: &dir,
                        force,
                    },
                    &key,
                    json,
                );
            }
            run_restore_job(
                &connect,
                pb::RestoreRequest {
                    source_host_id: host,
                    target_host_id: to.unwrap_or_default(),
                    time,
                    paths,
                    target: target.unwrap_or_default(),
                    force,
                    decryption_key: key.armored,
                    passphrase: key.passphrase,
                    drill: false,
                    start_within_secs: start_within_arg(&start_within)?,
                },
                json,
            )
        }
        Command::RestoreTest {
            host,
            to,
            time,
            key,
            start_within,
            json,
            connect,
        } => {
            let time = time_arg(&time)?;
            let key = restore_cli::RestoreKey::load(&key.key)?;
            run_restore_job(
                &connect,
                pb::RestoreRequest {
                    source_host_id: host,
                    target_host_id: to.unwrap_or_default(),
                    time,
                    drill: true,
                    decryption_key: key.armored,
                    passphrase: key.passphrase,
                    start_within_secs: start_within_arg(&start_within)?,
                    ..Default::default()
                },
                json,
            )
        }
        Command::Restores {
            host,
            limit,
            json,
            connect,
        } => {
            let list = block(async {
                let mut c = admin_client(&connect).await?;
                c.list_restores(pb::ListRestoresRequest {
                    source_host_id: host.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            out!("{}", restore_cli::evidence_output(&list.restores, json)?);
            Ok(())
        }
        Command::Ls {
            host,
            path,
            time,
            key,
            json,
            connect,
        } => {
            let time = time_arg(&time)?;
            let key = restore_cli::RestoreKey::load(&key.key)?;
            restore_cli::ls(
                admin_client(&connect),
                &host,
                time,
                path.as_deref(),
                &key,
                json,
            )
        }
        Command::Report {
            format,
            label,
            fail_on,
            at,
            check_storage,
            history_days,
            json,
            connect,
        } => {
            let format = if json { "json" } else { format.as_str() };
            let history_days = history_days.unwrap_or(if format == "html" {
                report_cli::HTML_HISTORY_DAYS
            } else {
                0
            });
            let fail_on: Vec<flotilla_coordinator::report::HostStatus> = fail_on
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(|w| {
                    flotilla_coordinator::report::HostStatus::parse(w).with_context(|| {
                        format!(
                            "--fail-on {w:?}: not a status (unprotected, never, stale, failing, \
                             offline, fresh)"
                        )
                    })
                })
                .collect::<Result<_>>()?;
            let labels = parse_labels(&label)?;
            let at = time_arg(&at)?;
            let r = block(async {
                let mut c = admin_client(&connect).await?;
                c.report(pb::ReportRequest {
                    labels,
                    at,
                    history_days,
                    check_storage,
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            let report = report_cli::parse(&r.json)?;
            out!("{}", report_cli::render(&r.json, &report, format)?);
            let mut failed = false;
            if let Some(lines) = report_cli::storage_disagreements(&report) {
                for line in &lines {
                    eprintln!("flotilla: {line}");
                }
                failed = !lines.is_empty();
            }
            let hit = report_cli::hosts_in(&report, &fail_on);
            if !hit.is_empty() {
                eprintln!(
                    "flotilla: {} host(s) {}: {}",
                    hit.len(),
                    fail_on
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("/"),
                    hit.join(", ")
                );
                failed = true;
            }
            if failed {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Cancel {
            job_id,
            json,
            connect,
        } => {
            let job = block(async {
                let mut c = admin_client(&connect).await?;
                c.cancel_job(pb::CancelJobRequest { job_id })
                    .await
                    .map_err(status_error)
            })?
            .into_inner();
            if json {
                outln!("{}", serde_json::to_string_pretty(&job_json(&job))?);
            } else {
                out!("{}", table(JOB_HEADERS, std::iter::once(job_row(&job))));
                if !job_done(&job) {
                    eprintln!("Cancel requested; the agent stops the job at the next file.");
                }
            }
            Ok(())
        }
        Command::Host(HostCommand::Remove {
            host,
            delete_backups,
            connect,
        }) => {
            let r = block(async {
                let mut c = admin_client(&connect).await?;
                c.remove_host(pb::RemoveHostRequest {
                    host_id: host.clone(),
                    delete_backups,
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            if delete_backups {
                outln!(
                    "Removed {host}; deleted {} stored object(s).",
                    r.deleted_objects
                );
            } else {
                outln!("Removed {host}; its backups are kept (--delete-backups deletes them).");
            }
            Ok(())
        }
        Command::Host(HostCommand::Adopt {
            host,
            url,
            account,
            json,
            connect,
        }) => {
            let r = block(async {
                let mut c = admin_client(&connect).await?;
                c.adopt_host(pb::AdoptHostRequest {
                    host_id: host.clone(),
                    url: url.clone(),
                    account,
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"host_id": host, "url": url, "chains": r.chains,
                        "sets": r.sets, "incomplete": r.incomplete})
                );
            } else {
                outln!(
                    "Adopted {} chain(s), {} set(s) from {url} for {host}; its backups now go there.",
                    r.chains,
                    r.sets
                );
                if r.incomplete > 0 {
                    outln!(
                        "{} incomplete set(s) (no manifest) were not registered.",
                        r.incomplete
                    );
                }
            }
            Ok(())
        }
        Command::Catalog(CatalogCommand::Rebuild {
            host,
            json,
            connect,
        }) => {
            let r = block(async {
                let mut c = admin_client(&connect).await?;
                c.rebuild_catalog(pb::RebuildCatalogRequest {
                    host_id: host.unwrap_or_default(),
                })
                .await
                .map_err(status_error)
            })?
            .into_inner();
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"hosts": r.hosts, "sets": r.sets, "errors": r.errors})
                );
            } else {
                outln!("Rebuilt {} host(s): {} set(s).", r.hosts, r.sets);
                for e in &r.errors {
                    eprintln!("error: {e}");
                }
            }
            anyhow::ensure!(
                r.errors.is_empty(),
                "{} host(s) could not be listed",
                r.errors.len()
            );
            Ok(())
        }
        Command::Init {
            dir,
            server_names,
            admin,
            json,
        } => {
            let report = flotilla_coordinator::pki::init(&dir.join("pki"), &server_names, &admin)?;
            if json {
                let files: Vec<String> = report
                    .files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({ "dir": dir, "files": files, "server_names": server_names })
                );
            } else {
                outln!("Initialised the coordinator in {}:", dir.display());
                for f in &report.files {
                    outln!("  {}", f.display());
                }
                outln!(
                    "The *.key files are secrets (mode 0600). Give admin.pem, admin.key and ca.pem \
                     to operators for the admin CLI; agents enroll with a token (`flotilla token create`)."
                );
            }
            Ok(())
        }
        Command::MintCredential {
            url,
            access,
            ttl,
            output,
        } => {
            let dest = Destination::parse(&url)?;
            let access: Access = access.parse().map_err(anyhow::Error::msg)?;
            let secs = parse_interval(&ttl).with_context(|| format!("--ttl {ttl}"))?;
            anyhow::ensure!(secs > 0, "--ttl {ttl}: must be positive");
            let ttl = std::time::Duration::from_secs(secs as u64);
            let rt = tokio::runtime::Runtime::new()?;
            let cred = rt.block_on(scoped::mint(
                &dest,
                &Credentials::FromEnvironment,
                access,
                ttl,
            ))?;
            let json = cred.to_json();
            match output {
                Some(path) => write_secret(&path, &json)?,
                None => outln!("{json}"),
            }
            Ok(())
        }
    }
}

/// Follows a job until it ends (its state changes on stderr unless `json`).
/// `--time`: 0 (latest) when absent.
fn time_arg(time: &Option<String>) -> Result<i64> {
    Ok(match time {
        Some(t) => flotilla_common::timespec::parse_time(t, chrono::Utc::now().timestamp())
            .with_context(|| format!("--time {t}"))?,
        None => 0,
    })
}

fn start_within_arg(text: &str) -> Result<u64> {
    Ok(if text.trim() == "0" {
        0
    } else {
        parse_interval(text)
            .with_context(|| format!("--start-within {text}"))?
            .max(1) as u64
    })
}

/// Creates a restore job (or drill) and follows it to its end; exit 1 unless it
/// succeeded.
fn run_restore_job(connect: &Connect, request: pb::RestoreRequest, json: bool) -> Result<()> {
    let drill = request.drill;
    block(async {
        let mut c = admin_client(connect).await?;
        let job = c.restore(request).await.map_err(status_error)?.into_inner();
        if !json {
            eprintln!(
                "{} job {} on {} created.",
                if drill { "Restore test" } else { "Restore" },
                job.job_id,
                job.host_id
            );
        }
        let job = follow_job(&mut c, job, json).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&job_json(&job))?);
        } else {
            out!("{}", table(JOB_HEADERS, std::iter::once(job_row(&job))));
            if let Some(o) = &job.restore {
                out!(
                    "{}",
                    restore_cli::restore_summary(&job.source_host_id, &job.host_id, o)
                );
            }
        }
        if job.state != pb::JobState::Succeeded as i32 {
            anyhow::bail!(
                "{} job {} did not succeed: {}",
                if drill { "restore test" } else { "restore" },
                job.job_id,
                job.error
            );
        }
        Ok(())
    })
}

async fn follow_job(
    c: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    mut job: pb::Job,
    json: bool,
) -> Result<pb::Job> {
    // Ctrl-C is ours from here on (before the first look at the job).
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for Ctrl-C")?;
    let mut stream = c
        .watch_jobs(pb::ListJobsRequest {
            host_id: job.host_id.clone(),
            limit: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    // The job may have ended before the watch began.
    let listed = c
        .list_jobs(pb::ListJobsRequest {
            host_id: job.host_id.clone(),
            limit: 50,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .jobs;
    if let Some(j) = listed.into_iter().find(|j| j.job_id == job.job_id) {
        job = j;
    }
    // On a terminal: a progress bar from the agent's reports, state changes above it.
    let bar = restore_cli::terminal_progress(json);
    let mut cancel_asked = false;
    while !job_done(&job) {
        let message = tokio::select! {
            m = stream.message() => m.map_err(status_error)?,
            _ = interrupts.recv() => {
                // Ctrl-C: on a terminal, ask; from a script, cancel. A second Ctrl-C
                // stops following.
                if cancel_asked {
                    anyhow::bail!("stopped following job {}; it may still be stopping", job.job_id);
                }
                let question = format!("Cancel job {} on {}?", job.job_id, job.host_id);
                let ask = || {
                    use std::io::IsTerminal as _;
                    std::io::stdin()
                        .is_terminal()
                        .then(|| flotilla_client::terminal::ask_yes_no(&question))
                        .flatten()
                };
                let answer = match &bar {
                    Some(b) => b.suspend(ask),
                    None => ask(),
                };
                if answer == Some(false) {
                    anyhow::bail!(
                        "stopped following job {} on {}; it goes on (`flotilla jobs --host {} --watch`)",
                        job.job_id, job.host_id, job.host_id
                    );
                }
                let now = c
                    .cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone() })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                cancel_asked = true;
                if !json {
                    let line = format!("Cancel requested; waiting for {} to stop the job.", job.host_id);
                    match &bar {
                        Some(b) => b.println(&line),
                        None => eprintln!("{line}"),
                    }
                }
                Some(now)
            }
        };
        match message {
            Some(j) if j.job_id == job.job_id => {
                if !json && j.state != job.state {
                    let line = job_row(&j).join("  ");
                    match &bar {
                        Some(b) => b.println(&line),
                        None => eprintln!("{line}"),
                    }
                }
                if let (Some(b), Some(p)) = (&bar, &j.progress) {
                    b.show(
                        &p.phase,
                        p.files_done,
                        p.bytes_done,
                        p.files_total,
                        p.bytes_total,
                    );
                }
                job = j;
            }
            Some(_) => {}
            None => anyhow::bail!("the coordinator ended the watch"),
        }
    }
    if let Some(b) = bar {
        use flotilla_client::engine::progress::Progress as _;
        b.finish();
    }
    Ok(job)
}

fn block<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// A table for people: aligned columns, no borders.
fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    let mut out: String = t.lines().map(|l| l.trim_end().to_string() + "\n").collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn time_text(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

fn bytes_text(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn kind_text(k: i32) -> &'static str {
    match pb::JobKind::try_from(k) {
        Ok(pb::JobKind::Backup) => "backup",
        Ok(pb::JobKind::Prune) => "prune",
        Ok(pb::JobKind::Restore) => "restore",
        Ok(pb::JobKind::Verify) => "verify",
        _ => "?",
    }
}

fn state_text(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "?",
    }
}

fn job_done(j: &pb::Job) -> bool {
    matches!(
        pb::JobState::try_from(j.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

const JOB_HEADERS: &[&str] = &[
    "JOB", "HOST", "KIND", "STATE", "ORIGIN", "ATTEMPT", "STARTED", "DETAIL",
];

fn job_row(j: &pb::Job) -> Vec<String> {
    let detail = if !j.error.is_empty() {
        j.error.clone()
    } else if let (Some(p), false) = (&j.progress, job_done(j)) {
        format!(
            "{} {} files {}",
            p.phase,
            p.files_done,
            bytes_text(p.bytes_done)
        )
    } else if let Some(s) = &j.set {
        format!(
            "{} set {} ({} vol, {})",
            s.kind,
            time_text(s.end_time),
            s.volumes,
            bytes_text(s.bytes)
        )
    } else {
        j.note.clone()
    };
    vec![
        j.job_id.clone(),
        j.host_id.clone(),
        kind_text(j.kind).into(),
        state_text(j.state).into(),
        j.origin.clone(),
        j.attempt.to_string(),
        time_text(j.started_at),
        detail,
    ]
}

fn set_json(s: &pb::BackupSet) -> serde_json::Value {
    serde_json::json!({"kind": s.kind, "start_time": s.start_time, "end_time": s.end_time,
        "volumes": s.volumes, "bytes": s.bytes, "files": s.files})
}

fn job_json(j: &pb::Job) -> serde_json::Value {
    serde_json::json!({
        "job_id": j.job_id, "host_id": j.host_id, "kind": kind_text(j.kind),
        "state": state_text(j.state), "origin": j.origin, "attempt": j.attempt,
        "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
        "scheduled_for": j.scheduled_for, "error": j.error, "note": j.note,
        "set": j.set.as_ref().map(set_json),
        "progress": j.progress.as_ref().map(|p| serde_json::json!({"phase": p.phase,
            "files_done": p.files_done, "bytes_done": p.bytes_done,
            "files_total": p.files_total, "bytes_total": p.bytes_total})),
        "source_host_id": j.source_host_id, "drill": j.drill,
        "restore": j.restore.as_ref().map(restore_cli::restore_json),
    })
}

/// Replaces each `public_key_file = "PATH"` line with `public_key = "<armored>"` on the
/// same line, so that line numbers in the coordinator's messages still match FILE.
fn inline_key_files(text: &str, base: &std::path::Path) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("public_key_file") && trimmed.contains('=') {
            let table: toml::Table = toml::from_str(trimmed)
                .with_context(|| format!("line {}: public_key_file", i + 1))?;
            let path = table
                .get("public_key_file")
                .and_then(|v| v.as_str())
                .with_context(|| format!("line {}: public_key_file must be a string", i + 1))?;
            let key = std::fs::read_to_string(base.join(path))
                .with_context(|| format!("line {}: reading {path}", i + 1))?;
            out.push_str(&format!("public_key = {}", toml::Value::String(key)));
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    Ok(out)
}

fn write_secret(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}
