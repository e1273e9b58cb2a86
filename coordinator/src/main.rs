//! `flotilla`: the coordinator (`flotilla serve`) and its admin CLI.
//!
//! The fleet side (enrollment, policies, scheduling, catalog) is the next piece of work.
//! What exists now is credential vending: minting a scoped storage credential from the
//! account credentials, the way the coordinator will for every job.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use flotilla_common::proto::v1 as pb;
use flotilla_common::storage::{Access, Credentials, Destination, scoped};
use flotilla_common::timespec::parse_interval;
use flotilla_coordinator::server::{CoordinatorConfig, serve};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla coordinator and admin CLI",
    long_about = "Flotilla coordinator and admin CLI.\n\nWorking today: `flotilla init` (certificate \
                  authority), `flotilla serve` (mutual-TLS gRPC: enrollment, agent sessions, \
                  admin service), `flotilla token create`, `flotilla hosts`, and \
                  `flotilla mint-credential` (scoped storage credentials). Policy rollout, \
                  scheduling and restores from the CLI are being built; until then back up a \
                  host with the standalone agent:\n  flotilla-agent backup /etc \
                  file:///var/backups/$(hostname)"
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

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a one-time enrollment token; enrolled hosts get these labels.
    Create {
        /// Labels as k=v,k=v.
        #[arg(long, default_value = "")]
        labels: String,
        /// Lifetime (duplicity interval syntax: 30m, 12h, 2D).
        #[arg(long, default_value = "1h")]
        ttl: String,
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
        /// Config file (TOML: listen, state_dir, heartbeat_secs); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides the config's state_dir.
        #[arg(long, env = "FLOTILLA_COORDINATOR_DIR")]
        dir: Option<PathBuf>,
        /// Overrides the config's listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
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

async fn admin_client(
    c: &Connect,
) -> Result<pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>> {
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
    Ok(pb::admin_service_client::AdminServiceClient::new(channel))
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
        } => {
            let mut cfg: CoordinatorConfig = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("{}", path.display()))?
                }
                None => CoordinatorConfig::default(),
            };
            if let Some(d) = dir {
                cfg.state_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
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
            json,
            connect,
        }) => {
            let labels = parse_labels(&labels)?;
            let secs = parse_interval(&ttl).with_context(|| format!("--ttl {ttl}"))?;
            anyhow::ensure!(secs > 0, "--ttl {ttl}: must be positive");
            let rt = tokio::runtime::Runtime::new()?;
            let resp = rt
                .block_on(async {
                    let mut c = admin_client(&connect).await?;
                    c.create_token(pb::CreateTokenRequest {
                        labels,
                        ttl_secs: secs as u64,
                    })
                    .await
                    .map_err(status_error)
                })?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "token": resp.token, "expires_at": resp.expires_at })
                );
            } else {
                println!("{}", resp.token);
                eprintln!(
                    "single use, expires {}; enroll a host with: flotilla-agent enroll --coordinator {} --token TOKEN",
                    chrono::DateTime::from_timestamp(resp.expires_at, 0).unwrap_or_default(),
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
            let rt = tokio::runtime::Runtime::new()?;
            let hosts = rt
                .block_on(async {
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
                            "last_seen": h.last_seen,
                            "policy_revision_applied": h.policy_revision_applied,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<24} {:<24} {:<30} LAST SEEN",
                    "HOST", "HOSTNAME", "LABELS"
                );
                for h in hosts {
                    let mut labels: Vec<String> =
                        h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    println!(
                        "{:<24} {:<24} {:<30} {}",
                        h.host_id,
                        h.hostname,
                        labels.join(","),
                        chrono::DateTime::from_timestamp(h.last_seen, 0).unwrap_or_default()
                    );
                }
            }
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
                println!(
                    "{}",
                    serde_json::json!({ "dir": dir, "files": files, "server_names": server_names })
                );
            } else {
                println!("Initialised the coordinator in {}:", dir.display());
                for f in &report.files {
                    println!("  {}", f.display());
                }
                println!(
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
                None => println!("{json}"),
            }
            Ok(())
        }
    }
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
