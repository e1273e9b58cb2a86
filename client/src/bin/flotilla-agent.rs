//! `flotilla-agent`: the Flotilla agent. Standalone subcommands work without a
//! coordinator and read and write duplicity 0.8.22-compatible archives.

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use flotilla_client::engine::backup::{BackupMode, BackupOptions};
use flotilla_client::engine::codec::Codec;
use flotilla_client::engine::progress::{NoProgress, SharedProgress};
use flotilla_client::engine::restore::RestoreOptions;
use flotilla_client::engine::select::Rule;
use flotilla_client::engine::{self, Context, EngineError, cache::default_state_dir};
use flotilla_client::terminal::stdout_failed;
use flotilla_client::{out, outln};
use flotilla_common::archive::{Index, format_time};
use flotilla_common::crypto::{
    Compression, DecryptionKeys, EncryptionSpec, Passphrase, PublicKey, SecretKey,
};
use flotilla_common::storage::{
    BlockingStore, Credentials, Destination, OpenOptions, RetryPolicy, ScopedCredential,
    open_blocking_with,
};
use flotilla_common::timespec::{parse_interval, parse_time};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

const AFTER_HELP: &str = "\
Fleet: `flotilla-agent enroll --coordinator URL --token T --ca-cert ca.pem` once, then
`flotilla-agent run` (systemd: deploy/flotilla-agent.service). The coordinator pushes the
policy and jobs with short-lived storage credentials; the commands below work without one.

Encryption: by default objects are OpenPGP-encrypted. Give --encrypt-key FILE (public keys,
repeatable) and/or a passphrase in FLOTILLA_PASSPHRASE (PASSPHRASE also works, as with
duplicity). Restores need the passphrase or --decrypt-key FILE (a secret key; its passphrase,
if any, from FLOTILLA_PASSPHRASE/PASSPHRASE). --no-encryption stores gzip'd objects.

URLs: file:///absolute/dir or file://relative/dir; azure://CONTAINER[/PREFIX];
swift://CONTAINER[/PREFIX].
Azure credentials: AZURE_STORAGE_CONNECTION_STRING (or duplicity's AZURE_CONNECTION_STRING),
or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN
(AZURE_STORAGE_ENDPOINT for Azurite or sovereign clouds).
Swift credentials as for duplicity: SWIFT_AUTHURL, SWIFT_USERNAME (tenant:user for v1),
SWIFT_PASSWORD, SWIFT_AUTHVERSION (1, 2 or 3), SWIFT_TENANTNAME, SWIFT_REGIONNAME,
SWIFT_USER_DOMAIN_NAME, SWIFT_PROJECT_NAME, SWIFT_PROJECT_DOMAIN_NAME; or
SWIFT_PREAUTHURL + SWIFT_PREAUTHTOKEN. With --credentials FILE the agent uses only the
scoped credential in FILE (minted by the coordinator) and no account credentials.
A backup with account credentials creates a missing container, as duplicity does.

Times (--time, remove-older-than, --full-if-older-than) use duplicity's syntax: now, epoch
seconds, intervals before now (90s, 3D, 2W1D; units s m h D W M Y), 20261120T041741Z,
2026-11-20T04:17:41[+01:00], 2026-11-20, 2026/11/20, 11/20/2026.

Stock duplicity reads what flotilla-agent writes, and the other way round:
  PASSPHRASE=... duplicity restore file:///backups/web-01 /tmp/r";

#[derive(Parser)]
#[command(
    name = "flotilla-agent",
    version,
    about = "Flotilla agent: duplicity-compatible encrypted backups of this host, standalone or \
             as a daemon of a Flotilla coordinator",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Settings file (TOML: state_dir, passphrase_file, log; see deploy/agent.toml).
    /// Flags given here win over it. The packaged unit uses /etc/flotilla/agent.toml.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_AGENT_CONFIG"
    )]
    config: Option<PathBuf>,
    /// State directory (signature cache, identity). Default: /var/lib/flotilla-agent as
    /// root, else $XDG_STATE_HOME/flotilla-agent.
    #[arg(long, global = true, env = "FLOTILLA_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bar even on a terminal.
    #[arg(long, global = true)]
    no_progress: bool,
    /// Print a machine-readable JSON result on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Use the scoped storage credential in FILE (JSON, minted by the coordinator for
    /// one container) instead of account credentials from the environment.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_CREDENTIALS_FILE"
    )]
    credentials: Option<PathBuf>,
    /// Retries of a failing storage request (5xx, timeouts, dropped connections),
    /// with exponential backoff; also bounds resuming an interrupted download.
    #[arg(long, global = true, value_name = "N", default_value_t = 8)]
    storage_retries: u32,
    /// No storage retry starts later than SECS after a request's first attempt: a
    /// store that stays down fails the run instead of stalling it.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120.0)]
    storage_retry_time: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DecryptArgs {
    /// Secret key file (ASCII-armored or binary) to decrypt with; repeatable. Its
    /// passphrase comes from FLOTILLA_PASSPHRASE / PASSPHRASE.
    #[arg(long = "decrypt-key", value_name = "FILE")]
    decrypt_keys: Vec<PathBuf>,
    /// Require every volume to be signed by this public key (file); fail otherwise.
    #[arg(long = "require-signature", value_name = "FILE")]
    require_signature: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host with a coordinator: makes a key (kept in the state directory),
    /// exchanges the one-time TOKEN for a certificate naming this host, and stores the
    /// identity in STATE_DIR/identity.
    Enroll {
        /// Coordinator URL, e.g. https://coordinator.example:7443.
        #[arg(long)]
        coordinator: String,
        /// One-time enrollment token (`flotilla token create`).
        #[arg(long, env = "FLOTILLA_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// The coordinator's CA certificate (pki/ca.pem from `flotilla init`).
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// Extra labels k=v,k=v (the token's labels win).
        #[arg(long, default_value = "")]
        labels: String,
        /// Host name to register (default: this machine's).
        #[arg(long)]
        hostname: Option<String>,
        /// Name in the coordinator's certificate (default: the URL's host; localhost for
        /// an IP address).
        #[arg(long)]
        server_name: Option<String>,
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// The daemon: keeps a session with the coordinator (reconnecting with backoff),
    /// applies pushed policies, runs jobs one at a time, and while the coordinator is
    /// unreachable runs the cached policy's schedule itself, keeping results until they
    /// are delivered. SIGTERM/SIGINT: finish the running job, then exit.
    Run {
        /// Passphrase for symmetric encryption (policies without encrypt_to keys) and to
        /// read signatures of adopted duplicity chains. Also FLOTILLA_PASSPHRASE.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Back up SRC to URL: incremental when a chain exists, else full.
    Backup {
        /// Directory to back up.
        src: PathBuf,
        /// Destination, e.g. file:///var/backups/web-01.
        url: String,
        /// Start a new chain with a full backup.
        #[arg(long)]
        full: bool,
        /// Make a full backup when the chain's full is older than this (e.g. 7D).
        #[arg(long, value_name = "TIME")]
        full_if_older_than: Option<String>,
        /// Volume size in MiB, as duplicity's --volsize.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=65536))]
        volsize: u64,
        /// Exclude paths matching this glob (absolute, **/..., or relative to SRC); repeatable,
        /// first matching --include/--exclude wins.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Include paths matching this glob (see --exclude).
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Encrypt to this public key (file, armored or binary); repeatable.
        #[arg(long = "encrypt-key", value_name = "FILE")]
        encrypt_keys: Vec<PathBuf>,
        /// Sign every object with this secret key (file). Its passphrase comes from
        /// FLOTILLA_SIGN_PASSPHRASE / SIGN_PASSPHRASE.
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// Store objects unencrypted (gzip).
        #[arg(long)]
        no_encryption: bool,
        /// Compression inside the OpenPGP messages or gzip objects: `auto`, or a level 0-9
        /// (0 = none, 1 = fastest, 9 = smallest; gpg's default is 6). `auto` picks per 1 MiB
        /// chunk from samples: stored if it does not compress (media, archives), level 2
        /// where that beats level 1 by 20% (logs, tables), else level 1; on server data it
        /// is nearly as fast as level 1 and within about 5% of level 6 in size. With a level,
        /// incompressible chunks are still stored as they are. Without encryption (gzip)
        /// `auto` means level 1.
        #[arg(long, default_value = "auto", value_parser = parse_compress_level)]
        compress_level: CompressLevel,
        /// Threads compressing in parallel (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        decrypt: DecryptArgs,
        /// Set time instead of now (epoch seconds or any --time form); for tests and
        /// imports, like duplicity's --current-time.
        #[arg(long, hide = true)]
        current_time: Option<String>,
    },
    /// Restore the tree (or --path) as it was at --time into TARGET.
    Restore {
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
        /// Directory to restore into: must be absent or empty unless --force.
        target: PathBuf,
        /// Point in time (default: now, i.e. the latest backup): now, 3D, 2W1D,
        /// 2026-11-20, 2026-11-20T04:17:41, 20261120T041741Z or epoch seconds.
        #[arg(short, long, value_name = "TIME")]
        time: Option<String>,
        /// Restore only this file or directory (relative to the backed-up root); a file
        /// is written at TARGET (or inside TARGET if it is an existing directory).
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
        /// Restore into a non-empty target, replacing paths the backup holds.
        #[arg(long)]
        force: bool,
        /// Do not set file owners (default: set them when running as root).
        #[arg(long)]
        no_owner: bool,
        /// Set owners from the stored numeric ids, not the user/group names.
        #[arg(long)]
        numeric_owner: bool,
        /// Skip the check against the backup's signature files, which are stored apart
        /// from the data: by default every file's data is hashed as it is written, and
        /// the restored tree's paths and metadata are compared after the restore. (To
        /// compare a tree on disk with the backup byte for byte, use `verify`.)
        #[arg(long)]
        no_verify: bool,
        #[command(flatten)]
        decrypt: DecryptArgs,
    },
    /// List the files of the backup at --time (from the signature files).
    Ls {
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
        /// Point in time (default: now, i.e. the latest backup): now, 3D, 2W1D,
        /// 2026-11-20, 2026-11-20T04:17:41, 20261120T041741Z or epoch seconds.
        #[arg(short, long, value_name = "TIME")]
        time: Option<String>,
        #[command(flatten)]
        decrypt: DecryptArgs,
    },
    /// Show chains and sets, like duplicity collection-status. Needs no key.
    Status {
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
    },
    /// Compare the backup at --time with directory SRC (data and metadata); exit 1 when
    /// anything differs.
    Verify {
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
        /// The directory to compare with (the backed-up source, or a restored copy).
        src: PathBuf,
        /// Point in time (default: now, i.e. the latest backup); the forms of `ls --time`.
        #[arg(short, long, value_name = "TIME")]
        time: Option<String>,
        /// Compare only this path of the backup (SRC then corresponds to it).
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
        #[command(flatten)]
        decrypt: DecryptArgs,
    },
    /// Delete chains that ended before TIME (never the latest chain). Dry run unless --force.
    RemoveOlderThan {
        /// Cut-off time, e.g. 30D or 2026-11-01.
        time: String,
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
        /// Delete for real (without it, only show what would be deleted).
        #[arg(long)]
        force: bool,
    },
    /// Keep the N most recent chains, delete older ones. Dry run unless --force.
    RemoveAllButNFull {
        /// How many full chains to keep (at least 1).
        n: usize,
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
        /// Delete for real (without it, only show what would be deleted).
        #[arg(long)]
        force: bool,
    },
    /// Delete incomplete sets left by interrupted backups. Dry run unless --force.
    Cleanup {
        /// Where the backups are, e.g. file:///var/backups/web-01.
        url: String,
        /// Delete for real (without it, only show what would be deleted).
        #[arg(long)]
        force: bool,
    },
}

/// `--compress-level`: `auto` or 0-9.
#[derive(Clone, Copy, Debug)]
enum CompressLevel {
    Auto,
    Level(u32),
}

fn parse_compress_level(s: &str) -> std::result::Result<CompressLevel, String> {
    if s == "auto" {
        return Ok(CompressLevel::Auto);
    }
    match s.parse::<u32>() {
        Ok(n) if n <= 9 => Ok(CompressLevel::Level(n)),
        _ => Err(format!("{s:?} is neither `auto` nor a level 0-9")),
    }
}

fn env_secret(names: &[&str]) -> Option<Passphrase> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .map(Passphrase::new)
}

fn passphrase() -> Option<Passphrase> {
    env_secret(&["FLOTILLA_PASSPHRASE", "PASSPHRASE"])
}

fn decryption_keys(args: &DecryptArgs) -> Result<DecryptionKeys> {
    let pass = passphrase();
    let mut keys = DecryptionKeys::default();
    for f in &args.decrypt_keys {
        keys.secret_keys.push(
            SecretKey::from_file(f, pass.clone())
                .with_context(|| format!("--decrypt-key {}", f.display()))?,
        );
    }
    for f in &args.require_signature {
        keys.expected_signers.push(
            PublicKey::from_file(f)
                .with_context(|| format!("--require-signature {}", f.display()))?,
        );
    }
    if let Some(p) = pass {
        keys.passphrases.push(p);
    }
    Ok(keys)
}

fn progress(cli: &Cli) -> SharedProgress {
    if cli.no_progress || cli.json || !std::io::stderr().is_terminal() {
        return Arc::new(NoProgress);
    }
    Arc::new(flotilla_client::terminal::TerminalProgress::new())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn time_arg(t: &Option<String>) -> Result<i64> {
    match t {
        None => Ok(now()),
        Some(s) => Ok(parse_time(s, now())?),
    }
}

/// `--path` as raw bytes: names need not be UTF-8.
fn path_arg(p: &Option<PathBuf>) -> Result<Index> {
    use std::os::unix::ffi::OsStrExt;
    match p {
        None => Ok(Index::root()),
        Some(s) => Index::parse(s.as_os_str().as_bytes())
            .map_err(|e| anyhow!("--path {}: {e}", s.display())),
    }
}

/// `--include` and `--exclude` in command-line order (the first match wins).
fn selection_rules(m: &ArgMatches) -> Vec<(Rule, String)> {
    let mut rules: Vec<(usize, Rule, String)> = Vec::new();
    for (id, rule) in [("include", Rule::Include), ("exclude", Rule::Exclude)] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            for (i, v) in idx.zip(vals) {
                rules.push((i, rule, v.clone()));
            }
        }
    }
    rules.sort_by_key(|r| r.0);
    rules.into_iter().map(|(_, r, v)| (r, v)).collect()
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() {
    // glibc gives each thread that allocates its own malloc arena and keeps what they
    // free: with the compression, encryption and writer threads that was about 10 MB of
    // a backup's peak memory. Two arenas are enough for this many threads.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let config = match &cli.config {
        Some(path) => match flotilla_client::config::AgentConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("flotilla-agent: error: {e}");
                std::process::exit(2);
            }
        },
        None => Default::default(),
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| match cli.verbose {
        0 => config.log.clone().unwrap_or_else(|| "warn".into()),
        1 => "info".into(),
        _ => "debug".into(),
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour only for people: logs under systemd or in files stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(&cli, &config, &matches) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("flotilla-agent: error: {e:#}");
            let retry = e
                .downcast_ref::<EngineError>()
                .is_some_and(|e| e.is_retryable());
            if retry {
                eprintln!("(this may be temporary: trying again later can help)");
            }
            std::process::exit(1);
        }
    }
}

/// Opens the destination with the scoped credential, or account credentials from the
/// environment; a backup with account credentials first creates a missing container.
fn open_store(cli: &Cli, url: &str, rt: &tokio::runtime::Runtime) -> Result<BlockingStore> {
    let credentials = match &cli.credentials {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the credential file {}", file.display()))?;
            let cred = ScopedCredential::from_json(&text)
                .with_context(|| format!("credential file {}", file.display()))?;
            Credentials::Scoped(cred)
        }
        None => Credentials::FromEnvironment,
    };
    anyhow::ensure!(
        cli.storage_retry_time.is_finite() && cli.storage_retry_time >= 0.0,
        "--storage-retry-time must be a number of seconds >= 0"
    );
    let retry = RetryPolicy {
        max_retries: cli.storage_retries,
        max_elapsed: std::time::Duration::from_secs_f64(cli.storage_retry_time),
        ..RetryPolicy::default()
    };
    let options = OpenOptions { credentials, retry };
    if matches!(cli.command, Command::Backup { .. })
        && matches!(options.credentials, Credentials::FromEnvironment)
    {
        let dest = Destination::parse(url)?;
        if dest.container().is_some() {
            match rt.block_on(dest.create_container(&options)) {
                Ok(true) => tracing::info!("created container for {dest}"),
                Ok(false) => {}
                // E.g. a SAS without container rights: the backup itself will say
                // whether the container is usable.
                Err(e) => tracing::warn!("could not create the container: {e}"),
            }
        }
    }
    Ok(open_blocking_with(url, &options, rt.handle().clone())?)
}

/// `enroll` and `run`: the fleet side.
fn run_fleet(
    cli: &Cli,
    config: &flotilla_client::config::AgentConfig,
    rt: &tokio::runtime::Runtime,
    state_dir: PathBuf,
) -> Result<i32> {
    use flotilla_client::fleet;
    match &cli.command {
        Command::Enroll {
            coordinator,
            token,
            ca_cert,
            labels,
            hostname,
            server_name,
            force,
        } => {
            let ca_pem = std::fs::read_to_string(ca_cert)
                .with_context(|| format!("--ca-cert {}", ca_cert.display()))?;
            let mut label_map = std::collections::HashMap::new();
            for part in labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--labels: {part:?} is not k=v"))?;
                label_map.insert(k.to_string(), v.to_string());
            }
            let ident = rt.block_on(fleet::enroll(fleet::EnrollRequest {
                state_dir: &state_dir,
                coordinator_url: coordinator,
                token,
                ca_pem: &ca_pem,
                labels: label_map,
                hostname: hostname.clone().unwrap_or_else(engine::backup::hostname),
                server_name: server_name.clone(),
                force: *force,
            }))?;
            if cli.json {
                print_json(&serde_json::json!({
                    "host_id": ident.host_id,
                    "coordinator": ident.coordinator_url,
                    "state_dir": state_dir,
                }))?;
            } else {
                outln!(
                    "Enrolled as {} with {}; identity in {}. Start the daemon: flotilla-agent run",
                    ident.host_id,
                    ident.coordinator_url,
                    state_dir.join("identity").display()
                );
            }
            Ok(0)
        }
        Command::Run { passphrase_file } => {
            let passphrase = match passphrase_file.as_ref().or(config.passphrase_file.as_ref()) {
                Some(f) => Some(Passphrase::new(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("passphrase file {}", f.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                )),
                None => passphrase(),
            };
            rt.block_on(async {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    let _ = stop_tx.send(true);
                });
                fleet::run(state_dir, passphrase, stop_rx).await
            })?;
            Ok(0)
        }
        _ => unreachable!("not a fleet command"),
    }
}

fn run(
    cli: &Cli,
    config: &flotilla_client::config::AgentConfig,
    matches: &ArgMatches,
) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let state_dir = cli
        .state_dir
        .clone()
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(default_state_dir);
    if matches!(cli.command, Command::Enroll { .. } | Command::Run { .. }) {
        return run_fleet(cli, config, &rt, state_dir);
    }
    let url = match &cli.command {
        Command::Backup { url, .. }
        | Command::Restore { url, .. }
        | Command::Ls { url, .. }
        | Command::Status { url }
        | Command::Verify { url, .. }
        | Command::RemoveOlderThan { url, .. }
        | Command::RemoveAllButNFull { url, .. }
        | Command::Cleanup { url, .. } => url,
        Command::Enroll { .. } | Command::Run { .. } => unreachable!("handled above"),
    };
    if let Command::Backup { src, .. } = &cli.command {
        // Before the store is opened (which creates a local store's directory).
        if !src.is_dir() {
            bail!(
                "source {} is not a directory (or does not exist)",
                src.display()
            );
        }
    }
    let store = open_store(cli, url, &rt)?;
    let ctx = Context {
        store,
        state_dir: state_dir.clone(),
        progress: progress(cli),
    };
    match &cli.command {
        Command::Backup {
            src,
            full,
            full_if_older_than,
            volsize,
            encrypt_keys,
            sign_key,
            no_encryption,
            compress_level,
            threads,
            decrypt,
            current_time,
            ..
        } => {
            let sub = matches
                .subcommand_matches("backup")
                .expect("backup matches");
            let compression = match *compress_level {
                CompressLevel::Auto => Compression::Auto,
                CompressLevel::Level(0) => Compression::None,
                CompressLevel::Level(level) => Compression::Zip { level },
            };
            let codec = if *no_encryption {
                if !encrypt_keys.is_empty() || sign_key.is_some() {
                    bail!("--no-encryption cannot be combined with --encrypt-key or --sign-key");
                }
                Codec::Gzip {
                    level: match *compress_level {
                        CompressLevel::Auto => 1,
                        CompressLevel::Level(level) => level,
                    },
                }
            } else {
                let mut recipients = Vec::new();
                for f in encrypt_keys {
                    let k = PublicKey::from_file(f)
                        .with_context(|| format!("--encrypt-key {}", f.display()))?;
                    recipients.push(k);
                }
                let pass = if recipients.is_empty() {
                    passphrase()
                } else {
                    None
                };
                if recipients.is_empty() && pass.is_none() {
                    bail!(
                        "no encryption configured: set FLOTILLA_PASSPHRASE (or PASSPHRASE), give \
                         --encrypt-key FILE, or use --no-encryption"
                    );
                }
                let signer = match sign_key {
                    Some(f) => Some(
                        SecretKey::from_file(
                            f,
                            env_secret(&["FLOTILLA_SIGN_PASSPHRASE", "SIGN_PASSPHRASE"]),
                        )
                        .with_context(|| format!("--sign-key {}", f.display()))?,
                    ),
                    None => None,
                };
                let spec = EncryptionSpec {
                    recipients,
                    passphrase: pass,
                    signer,
                    compression,
                    compression_threads: threads.unwrap_or_else(|| {
                        std::thread::available_parallelism()
                            .map(|n| n.get())
                            .unwrap_or(2)
                    }),
                };
                // Unusable keys (expired, no signing subkey, locked without its passphrase in
                // FLOTILLA_SIGN_PASSPHRASE) are reported before anything is written.
                spec.validate()
                    .context("checking the encryption and signing keys")?;
                Codec::Encrypted(spec)
            };
            let mut skip = vec![state_dir.clone()];
            if let Ok(p) = std::fs::canonicalize(&state_dir) {
                skip.push(p);
            }
            if let Some(p) = url
                .strip_prefix("file://")
                .and_then(|p| std::fs::canonicalize(p).ok())
            {
                skip.push(p);
            }
            let opts = BackupOptions {
                source: src.clone(),
                mode: if *full {
                    BackupMode::Full
                } else {
                    BackupMode::Auto
                },
                full_if_older_than: full_if_older_than
                    .as_deref()
                    .map(parse_interval)
                    .transpose()
                    .context("--full-if-older-than")?,
                volsize: volsize * 1024 * 1024,
                selection: selection_rules(sub),
                codec,
                decrypt_keys: decryption_keys(decrypt)?,
                time: current_time
                    .as_deref()
                    .map(|t| parse_time(t, now()))
                    .transpose()
                    .context("--current-time")?,
                hostname: None,
                skip,
            };
            let report = engine::backup::backup(&ctx, &opts)?;
            if cli.json {
                print_json(&report)?;
            } else {
                if let Some(r) = &report.full_reason {
                    eprintln!("Full backup: {r}.");
                }
                eprintln!(
                    "{} backup {} complete: {} volume(s), {} objects.",
                    if report.kind == "full" {
                        "Full"
                    } else {
                        "Incremental"
                    },
                    format_time(report.set_time),
                    report.volumes,
                    report.objects.len()
                );
                out!("{}", report.stats.render());
            }
            Ok(if report.stats.errors > 0 { 1 } else { 0 })
        }
        Command::Restore {
            target,
            time,
            path,
            force,
            no_owner,
            numeric_owner,
            no_verify,
            decrypt,
            ..
        } => {
            let opts = RestoreOptions {
                time: time_arg(time)?,
                path: path_arg(path)?,
                target: target.clone(),
                force: *force,
                keys: decryption_keys(decrypt)?,
                // SAFETY: geteuid has no preconditions.
                restore_owner: !*no_owner && unsafe { libc::geteuid() } == 0,
                numeric_owner: *numeric_owner,
                verify: !*no_verify,
            };
            let report = engine::restore::restore(&ctx, &opts)?;
            if cli.json {
                print_json(&report)?;
            } else {
                for w in &report.warnings {
                    eprintln!("not restored: {w}");
                }
                eprintln!(
                    "Restored {} path(s), {} bytes from {} set(s) ({} volume(s)) into {} (backup time {}).",
                    report.stats.files,
                    report.stats.bytes,
                    report.sets.len(),
                    report.stats.volumes,
                    report.target.display(),
                    format_time(report.backup_time)
                );
                if let Some(check) = &report.check {
                    for d in &check.differences {
                        eprintln!("differs: {}: {}", d.path, d.what);
                    }
                    eprintln!("{}", check.summary());
                }
            }
            // Unverifiable (no signatures to check against) is said, not failed: the
            // restore itself is complete.
            let failed = !report.warnings.is_empty()
                || report.check.as_ref().is_some_and(|c| c.mismatches > 0);
            Ok(if failed { 1 } else { 0 })
        }
        Command::Ls { time, decrypt, .. } => {
            let keys = decryption_keys(decrypt)?;
            let mut items = Vec::new();
            let json = cli.json;
            engine::inspect::list(&ctx, time_arg(time)?, &keys, |p| {
                if json {
                    items.push(p);
                } else {
                    use std::io::Write;
                    let mut line = p.render_bytes();
                    line.push(b'\n');
                    if let Err(e) = std::io::stdout().lock().write_all(&line) {
                        stdout_failed(e);
                    }
                }
            })?;
            if json {
                print_json(&items)?;
            }
            Ok(0)
        }
        Command::Status { .. } => {
            let st = engine::inspect::status(&ctx)?;
            if cli.json {
                print_json(&st)?;
            } else {
                out!("{}", st.render());
            }
            Ok(0)
        }
        Command::Verify {
            src,
            time,
            path,
            decrypt,
            ..
        } => {
            let keys = decryption_keys(decrypt)?;
            let report =
                engine::verify::verify(&ctx, time_arg(time)?, &path_arg(path)?, src, &keys)?;
            if cli.json {
                print_json(&report)?;
            } else {
                for d in &report.differences {
                    outln!("Difference found: {}: {}", d.path, d.what);
                }
                outln!(
                    "Verify complete: {} path(s) compared, {} difference(s) found.",
                    report.compared,
                    report.differences.len()
                );
            }
            Ok(if report.differences.is_empty() { 0 } else { 1 })
        }
        Command::RemoveOlderThan { time, force, .. } => {
            let t = parse_time(time, now())?;
            let plan = engine::retention::remove_older_than(&ctx, t, *force)?;
            report_retention(cli, &plan)
        }
        Command::RemoveAllButNFull { n, force, .. } => {
            if *n == 0 {
                bail!("N must be at least 1 (the latest chain is always kept)");
            }
            let plan = engine::retention::remove_all_but_n_full(&ctx, *n, *force)?;
            report_retention(cli, &plan)
        }
        Command::Cleanup { force, .. } => {
            let plan = engine::retention::cleanup(&ctx, *force)?;
            report_retention(cli, &plan)
        }
        Command::Enroll { .. } | Command::Run { .. } => unreachable!("handled above"),
    }
}

fn report_retention(cli: &Cli, plan: &engine::retention::RetentionPlan) -> Result<i32> {
    if cli.json {
        print_json(plan)?;
        return Ok(0);
    }
    if plan.objects.is_empty() {
        outln!("Nothing to delete ({} chain(s) kept).", plan.kept_chains);
        return Ok(0);
    }
    let verb = if plan.deleted {
        "Deleted"
    } else {
        "Would delete"
    };
    for s in &plan.sets {
        outln!("{verb} set: {s}");
    }
    for o in &plan.objects {
        outln!("  {o}");
    }
    if !plan.deleted {
        outln!("Dry run: nothing was deleted. Run again with --force to delete.");
    }
    Ok(0)
}
