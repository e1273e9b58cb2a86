//! `flotilla`: the coordinator (`flotilla serve`) and its admin CLI.
//!
//! The fleet side (enrollment, policies, scheduling, catalog) is the next piece of work.
//! What exists now is credential vending: minting a scoped storage credential from the
//! account credentials, the way the coordinator will for every job.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use flotilla_common::storage::{Access, Credentials, Destination, scoped};
use flotilla_common::timespec::parse_interval;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla coordinator and admin CLI",
    long_about = "Flotilla coordinator and admin CLI.\n\nThe coordinator (enrollment, policy \
                  rollout, scheduling, catalog, restores from the CLI) is not part of this \
                  release yet. Back up a host with the standalone agent:\n  flotilla-agent \
                  backup /etc file:///var/backups/$(hostname)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
