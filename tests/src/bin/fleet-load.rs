//! `fleet-load`: how many agent sessions one coordinator holds.
//!
//! Enrolls N simulated hosts (token + CSR each, as real agents do), opens one mutual-TLS
//! session per host (its own certificate, its own connection), sends Hello and then
//! heartbeats, answers policy pushes with acknowledgements, and measures:
//! - enrollment rate and the time to connect all N sessions,
//! - heartbeat round trips (p50/p90/p99/max) at steady state,
//! - the coordinator's resident memory (when it started it, or `--coordinator-pid`),
//! - the time from `policy apply` until every session has acknowledged the new revision.
//!
//! ```sh
//! cargo build --release -p flotilla-coordinator -p flotilla-tests --bin flotilla --bin fleet-load
//! target/release/fleet-load --spawn --agents 10000 --heartbeat-secs 5 --duration 30
//! ```
//!
//! The tool and a spawned coordinator share the machine, which is part of the figure.
//!
//! Measured 2026-11-22 on the 2-core / 24 GiB build machine, release build, tool and
//! coordinator on the same cores (`--spawn`), 20-30 s of steady state:
//!
//! | sessions | heartbeat | enroll    | connect | p50    | p99    | max    | RSS     | rollout |
//! |---------:|----------:|----------:|--------:|-------:|-------:|-------:|--------:|--------:|
//! |    1 000 | 5 s       | 0.8 s     | 0.6 s   | 0.3 ms | 0.8 ms | 3.6 ms |  73 MiB | 0.08 s  |
//! |   10 000 | 5 s       | 7.7 s     | 5.9 s   | 0.2 ms | 1.0 ms | 6.4 ms | 552 MiB | 0.81 s  |
//! |   10 000 | 1 s       | —         | 6.7 s   | 0.4 ms | 1.6 ms | 7.2 ms | 577 MiB | 0.99 s  |
//! |   15 000 | 5 s       | —         | 9.7 s   | 0.3 ms | 1.1 ms | 6.4 ms | 812 MiB | 1.09 s  |
//!
//! (Rollout: from `ApplyPolicy` until every session has received and acknowledged the
//! new revision. The agents' default heartbeat is 15 s; 15 000 sessions is the open-file
//! limit of this machine, 20 000, for two processes.)

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use flotilla_common::proto::v1 as pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Parser)]
#[command(
    name = "fleet-load",
    about = "Open N simulated agent sessions against a coordinator and measure heartbeat \
             latency, coordinator memory and policy rollout time"
)]
struct Args {
    /// Simulated agents (sessions).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Start a fresh coordinator (`flotilla init` + `flotilla serve`) next to this binary.
    #[arg(long)]
    spawn: bool,
    /// Coordinator URL (without --spawn).
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    coordinator: String,
    /// Coordinator state directory with pki/ (admin certificate, CA), without --spawn.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PID of the coordinator, for its memory (without --spawn).
    #[arg(long)]
    coordinator_pid: Option<u32>,
    /// Seconds between heartbeats of each session.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Seconds of steady state measured.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Concurrent TLS handshakes while connecting.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Spawned {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_coordinator() -> Result<(Spawned, String, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("fleet-load-").tempdir()?;
    let bin = flotilla_tests::coordinator_bin();
    let st = std::process::Command::new(&bin)
        .args(["init", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(st.success(), "flotilla init failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(&bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the coordinator did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = dir.path().to_path_buf();
    Ok((
        Spawned { child, _dir: dir },
        format!("https://127.0.0.1:{port}"),
        path,
    ))
}

async fn connect(url: &str, ca: &str, identity: Option<(&str, &str)>) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Ok(Channel::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await?)
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for c in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(c).expect("ascii"));
        out.push('\n');
    }
    out + "-----END CERTIFICATE-----\n"
}

struct Host {
    cert: String,
    key: String,
}

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    /// Heartbeat round trips in microseconds, while `measuring`.
    latencies: std::sync::Mutex<Vec<u32>>,
    measuring: std::sync::atomic::AtomicBool,
    acked_revision: AtomicU64,
    hosts_at_revision: std::sync::Mutex<HashMap<u64, usize>>,
    errors: std::sync::Mutex<HashMap<String, usize>>,
}

impl Stats {
    fn error(&self, e: impl std::fmt::Display) {
        let mut m = self.errors.lock().expect("errors");
        *m.entry(e.to_string()).or_default() += 1;
    }
}

async fn run_session(
    url: String,
    ca: Arc<String>,
    host: Host,
    heartbeat: Duration,
    handshakes: Arc<Semaphore>,
    stats: Arc<Stats>,
) {
    let permit = handshakes.acquire().await;
    let ch = match connect(&url, &ca, Some((&host.cert, &host.key))).await {
        Ok(c) => c,
        Err(e) => return stats.error(format!("connect: {e}")),
    };
    let (tx, mut rx) = mpsc::channel::<pb::AgentMessage>(16);
    let msg = |b| pb::AgentMessage { body: Some(b) };
    let _ = tx
        .send(msg(pb::agent_message::Body::Hello(pb::Hello {
            agent_version: "load".into(),
            ..Default::default()
        })))
        .await;
    let outbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut inbound = match pb::agent_service_client::AgentServiceClient::new(ch)
        .session(outbound)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return stats.error(format!("session: {}", e.message())),
    };
    drop(permit);
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let hb_tx = tx.clone();
    let hb_sent = sent.clone();
    let ticker = tokio::spawn(async move {
        // Spread the sessions over the interval.
        tokio::time::sleep(heartbeat.mul_f64(rand::random::<f64>())).await;
        let mut tick = tokio::time::interval(heartbeat);
        for seq in 1u64.. {
            tick.tick().await;
            hb_sent.lock().await.insert(seq, Instant::now());
            let hb = pb::Heartbeat {
                seq,
                sent_at_ms: chrono::Utc::now().timestamp_millis(),
            };
            if hb_tx
                .send(msg(pb::agent_message::Body::Heartbeat(hb)))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    use pb::coordinator_message::Body as In;
    let mut revision = 0;
    loop {
        match inbound.message().await {
            Ok(Some(m)) => match m.body {
                Some(In::HeartbeatAck(a)) => {
                    let t = sent.lock().await.remove(&a.seq);
                    if let Some(t) = t
                        && stats.measuring.load(Ordering::Relaxed)
                    {
                        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        stats.latencies.lock().expect("lat").push(us);
                    }
                }
                Some(In::Policy(p)) => {
                    {
                        let mut m = stats.hosts_at_revision.lock().expect("rev");
                        if revision > 0 {
                            *m.entry(revision).or_default() -= 1;
                        }
                        revision = p.revision;
                        *m.entry(revision).or_default() += 1;
                    }
                    stats.acked_revision.fetch_max(revision, Ordering::Relaxed);
                    let _ = tx
                        .send(msg(pb::agent_message::Body::PolicyAck(pb::PolicyAck {
                            revision,
                            applied: true,
                            error: String::new(),
                        })))
                        .await;
                }
                // Simulated agents run no jobs; none are scheduled by the load policy.
                _ => {}
            },
            Ok(None) => {
                stats.error("session ended by the coordinator");
                break;
            }
            Err(e) => {
                stats.error(format!("session: {}", e.message()));
                break;
            }
        }
    }
    ticker.abort();
    stats.connected.fetch_sub(1, Ordering::Relaxed);
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    flotilla_common::storage::ensure_tls_provider();
    let nofile = raise_nofile();
    if args.agents as u64 + 100 > nofile {
        bail!(
            "{} sessions need more open files than the limit ({nofile}); raise it (ulimit -Hn)",
            args.agents
        );
    }
    let (spawned, url, dir) = if args.spawn {
        let (s, u, d) = spawn_coordinator()?;
        (Some(s), u, d)
    } else {
        let d = args
            .dir
            .clone()
            .context("--dir (coordinator state dir) or --spawn")?;
        (None, args.coordinator.clone(), d)
    };
    let pid = spawned
        .as_ref()
        .map(|s| s.child.id())
        .or(args.coordinator_pid);
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
    let ca = Arc::new(read(&dir.join("pki/ca.pem"))?);
    let admin = connect(
        &url,
        &ca,
        Some((
            &read(&dir.join("pki/admin.pem"))?,
            &read(&dir.join("pki/admin.key"))?,
        )),
    )
    .await?;
    let anon = connect(&url, &ca, None).await?;

    // Enrollment.
    let t0 = Instant::now();
    let enrolled: Arc<Mutex<Vec<Host>>> = Arc::default();
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        let (admin, anon, gate, enrolled) =
            (admin.clone(), anon.clone(), gate.clone(), enrolled.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await;
            let token = pb::admin_service_client::AdminServiceClient::new(admin)
                .create_token(pb::CreateTokenRequest {
                    labels: [("load".to_string(), "yes".to_string())].into(),
                    ttl_secs: 3600,
                })
                .await?
                .into_inner()
                .token;
            let (key, csr) = flotilla_coordinator::pki::agent_key_and_csr()?;
            let r = pb::agent_service_client::AgentServiceClient::new(anon)
                .enroll(pb::EnrollRequest {
                    token,
                    hostname: format!("load-{i:05}"),
                    csr_der: csr,
                    agent_version: "load".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            enrolled.lock().await.push(Host {
                cert: der_to_pem(&r.certificate_der),
                key,
            });
            anyhow::Ok(())
        }));
    }
    let mut enroll_errors = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            enroll_errors += 1;
        }
    }
    let enroll_secs = t0.elapsed().as_secs_f64();
    let hosts = std::mem::take(&mut *enrolled.lock().await);
    eprintln!(
        "enrolled {} hosts in {enroll_secs:.1}s ({:.0}/s), {enroll_errors} failed",
        hosts.len(),
        hosts.len() as f64 / enroll_secs
    );

    // Sessions.
    let stats = Arc::new(Stats::default());
    let handshakes = Arc::new(Semaphore::new(args.connect_concurrency));
    let t1 = Instant::now();
    let n = hosts.len();
    for h in hosts {
        tokio::spawn(run_session(
            url.clone(),
            ca.clone(),
            h,
            Duration::from_secs(args.heartbeat_secs),
            handshakes.clone(),
            stats.clone(),
        ));
    }
    let mut peak_rss = 0;
    loop {
        let c = stats.connected.load(Ordering::Relaxed);
        let errs: usize = stats.errors.lock().expect("errors").values().sum();
        peak_rss = peak_rss.max(pid.and_then(rss_kib).unwrap_or(0));
        if c + errs >= n {
            break;
        }
        if t1.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up waiting for sessions: {c} connected");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "{} sessions up in {connect_secs:.1}s",
        stats.connected.load(Ordering::Relaxed)
    );

    // Steady state.
    tokio::time::sleep(Duration::from_secs(args.heartbeat_secs)).await;
    stats.measuring.store(true, Ordering::Relaxed);
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(args.duration) {
        peak_rss = peak_rss.max(pid.and_then(rss_kib).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stats.measuring.store(false, Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *stats.latencies.lock().expect("lat"));
    lat.sort_unstable();
    let rss_steady = pid.and_then(rss_kib).unwrap_or(0);

    // Rollout.
    let before = stats.acked_revision.load(Ordering::Relaxed);
    let policy = "[destination.local]\nkind = \"file\"\npath = \"/var/backups\"\n\n\
                  [policy.load]\nselect = { load = \"yes\" }\nsources = [\"/etc\"]\n\
                  destination = \"local\"\n";
    let t2 = Instant::now();
    let applied = pb::admin_service_client::AdminServiceClient::new(admin.clone())
        .apply_policy(pb::ApplyPolicyRequest {
            file_name: "load.toml".into(),
            toml: policy.into(),
            dry_run: false,
        })
        .await;
    let rollout = match applied {
        Ok(r) => {
            let rev = r.into_inner().revision;
            let connected = stats.connected.load(Ordering::Relaxed);
            loop {
                let at = stats
                    .hosts_at_revision
                    .lock()
                    .expect("rev")
                    .get(&rev)
                    .copied()
                    .unwrap_or(0);
                if at >= connected {
                    break Some(t2.elapsed().as_secs_f64());
                }
                if t2.elapsed() > Duration::from_secs(120) {
                    eprintln!("rollout: only {at}/{connected} after 120 s");
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(e) => {
            eprintln!("rollout: {}", e.message());
            None
        }
    };
    let _ = before;
    let errors = stats.errors.lock().expect("errors").clone();
    let summary = serde_json::json!({
        "agents": n,
        "sessions_alive": stats.connected.load(Ordering::Relaxed),
        "enroll_secs": enroll_secs,
        "connect_secs": connect_secs,
        "heartbeat_secs": args.heartbeat_secs,
        "heartbeats_measured": lat.len(),
        "latency_ms": {
            "p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9),
            "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0),
        },
        "coordinator_rss_mib": { "steady": rss_steady / 1024, "peak": peak_rss / 1024 },
        "rollout_secs": rollout,
        "errors": errors,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "sessions {}/{n}; heartbeat every {}s, {} measured: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            stats.connected.load(Ordering::Relaxed),
            args.heartbeat_secs,
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0)
        );
        println!(
            "coordinator RSS: {} MiB steady, {} MiB peak; rollout to all: {}",
            rss_steady / 1024,
            peak_rss / 1024,
            rollout.map_or("n/a".into(), |s| format!("{s:.2} s"))
        );
        for (e, c) in &errors {
            println!("error ×{c}: {e}");
        }
    }
    drop(spawned);
    Ok(())
}
