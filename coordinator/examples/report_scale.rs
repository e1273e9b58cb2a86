//! Scale benchmark of the freshness report (`flotilla report`): 10,000 hosts and
//! 1,000,000 backup sets in the catalog should give a report in under a second.
//!
//! What it does:
//!
//! 1. Loads a fresh sled catalog in `DIR/catalog` (`--dir`, default a temporary
//!    directory under /tmp, removed at the end unless `--keep`): `--hosts` hosts with
//!    labels, agent versions and so on; `--sets-per-host` backup sets per host, one a
//!    day ending about now, a full every 7th set; one finished backup job per day for
//!    the last `--jobs-per-host` days (the coordinator keeps 90 days of job history by
//!    default; none older than that), about 3% of them failed (no set that day);
//!    weekly verified restore tests for one host in 7; and a policy file (revision 1)
//!    that selects the hosts.
//!    The statuses are varied on purpose: 2% unprotected (no policy selects them), 1%
//!    never backed up, 4% stale, 5% failing, 3% offline, the rest fresh (1% of hosts
//!    hold twice the sets, making up for the never-backed-up ones). Bulk jobs go
//!    through `Catalog::put_job_unflushed` (`put_job` waits for the disk on every job,
//!    which would take hours here).
//! 2. Times, in this process, the report as the coordinator builds it
//!    (`report::build`, as `Fleet::report` calls it): with no history (`report
//!    --json`, the table and CSV), with 30 days of history (the HTML page's window),
//!    the JSON the coordinator sends and the HTML page the CLI renders, plus the CLI's
//!    side of the JSON (parse and pretty-print), each `--repeat` times (min, median,
//!    max); then the first report after reopening the catalog (sled's cache empty;
//!    the operating system's page cache is not dropped), and a breakdown (host records
//!    vs the per-host range scans of `report::host_facts`).
//! 3. With `--serve`, end to end through the real binaries: `flotilla init --dir DIR`
//!    before the load (so the catalog is the coordinator's `STATE/catalog`), then
//!    `flotilla serve` on a free port on 127.0.0.1, and the wall-clock time of
//!    `flotilla report --json` and `flotilla report --format html` (output to
//!    /dev/null) with the admin certificate, then the server is stopped (SIGTERM).
//!    The policy has a daily schedule 12 hours away and no restore tests, so the
//!    coordinator does not start creating jobs while it is measured.
//!
//! Run it (release build; the `flotilla` binary must be built for `--serve`):
//!
//! ```text
//! cargo build --release -p flotilla-coordinator --bin flotilla
//! cargo run --release -p flotilla-coordinator --example report_scale -- --hosts 10000 --sets-per-host 100
//! cargo run --release -p flotilla-coordinator --example report_scale -- --hosts 10000 --sets-per-host 100 --serve --dir /tmp/flotilla-scale --keep
//! ```
//!
//! `--reuse` measures a catalog kept earlier with `--keep` (same `--dir`) without
//! loading it again; the report is then evaluated as of shortly after that load
//! (`--at`), so the statuses are the same.

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use flotilla_common::policy::{Policy, PolicySet};
use flotilla_coordinator::catalog::{
    Catalog, HostRecord, JobKind, JobRecord, JobState, RestoreEvidence, RestoreOutcome, SetRecord,
};
use flotilla_coordinator::report::{self, FleetReport, HostStatus, ReportOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DAY: i64 = 86_400;
/// The coordinator's default `offline_after_secs`.
const OFFLINE_AFTER_SECS: i64 = 3600;
/// The coordinator's default `job_history_days`: older finished jobs are pruned.
const JOB_HISTORY_DAYS: i64 = 90;
/// Days of history the HTML page charts (`report_cli::HTML_HISTORY_DAYS`).
const HTML_HISTORY_DAYS: u32 = 30;

#[derive(Parser)]
#[command(about = "Times `flotilla report` over a large generated catalog")]
struct Args {
    /// Hosts in the catalog.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Backup sets per host (one a day).
    #[arg(long, default_value_t = 100)]
    sets_per_host: usize,
    /// Finished backup jobs per host (one a day; the coordinator keeps 90 days).
    #[arg(long, default_value_t = 90)]
    jobs_per_host: usize,
    /// Timed runs of each measurement.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// State directory (the catalog goes to DIR/catalog); default: a new temporary
    /// directory under /tmp.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory at the end.
    #[arg(long)]
    keep: bool,
    /// Measure the catalog already in --dir (from an earlier --keep) instead of
    /// loading one.
    #[arg(long, requires = "dir")]
    reuse: bool,
    /// Also time `flotilla report` through `flotilla serve` (the real binaries).
    #[arg(long)]
    serve: bool,
    /// The `flotilla` binary for --serve (default: the one next to this example's
    /// directory, i.e. target/release/flotilla).
    #[arg(long)]
    flotilla: Option<PathBuf>,
}

/// The status a host is made to have (2% unprotected, 1% never, 4% stale, 5% failing,
/// 3% offline, the rest fresh).
fn planned(i: usize) -> HostStatus {
    match i % 100 {
        0 | 1 => HostStatus::Unprotected,
        2 => HostStatus::Never,
        3..=6 => HostStatus::Stale,
        7..=11 => HostStatus::Failing,
        12..=14 => HostStatus::Offline,
        _ => HostStatus::Fresh,
    }
}

/// A deterministic pseudo-random number from two inputs (splitmix64).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b)
        .wrapping_add(0x632b_e59b_d9b4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn host_id(i: usize) -> String {
    format!("host-{i:05}")
}

fn role(i: usize) -> &'static str {
    if planned(i) == HostStatus::Unprotected {
        "batch"
    } else {
        ["web", "app", "db"][i % 3]
    }
}

fn policy_toml(now: i64) -> String {
    // A daily schedule 12 hours from now: `flotilla serve` creates no jobs while it is
    // measured. No restore_test for the same reason.
    let hour = (now / 3600 + 12) % 24;
    format!(
        r#"# report_scale benchmark policies
[destination.main]
kind = "file"
path = "/srv/flotilla"

[policy.web]
select = {{ role = "web" }}
sources = ["/etc", "/var/www"]
exclude = ["/var/www/cache"]
schedule = "0 {hour} * * *"
jitter = "30m"
full_if_older_than = "7D"
keep_full_chains = 4
destination = "main"
max_age = "26h"

[policy.app]
select = {{ role = "app" }}
sources = ["/etc", "/srv/app"]
schedule = "15 {hour} * * *"
jitter = "30m"
full_if_older_than = "7D"
remove_older_than = "120D"
destination = "main"
max_age = "26h"

[policy.db]
select = {{ role = "db" }}
sources = ["/etc", "/var/lib/postgresql"]
schedule = "30 {hour} * * *"
jitter = "20m"
full_if_older_than = "7D"
keep_full_chains = 2
destination = "main"
max_age = "2D"
"#
    )
}

const ERRORS: [&str; 4] = [
    "storage: PUT duplicity-inc.vol3.difftar.gpg: 503 Service Unavailable (after 5 tries)",
    "source /var/lib/postgresql/16/main: permission denied (os error 13)",
    "local cache: no space left on device (os error 28)",
    "the agent lost its connection while the job ran (failed after 600 s)",
];

/// Counts of what was written.
#[derive(Default)]
struct Loaded {
    hosts: u64,
    sets: u64,
    jobs: u64,
    failed_jobs: u64,
    restores: u64,
}

/// Writes the catalog as of now; returns the counts.
fn load(catalog: &Catalog, args: &Args) -> Result<Loaded> {
    let now = unix_now();
    let mut n = Loaded::default();
    let toml = policy_toml(now);
    catalog.put_policy("policies.toml", &toml, "admin:bench", now)?;
    let mut job_n: u64 = 0;
    let mut next_job_id = |created_at: i64| {
        job_n += 1;
        format!("j{:011x}{:05x}", created_at.max(0) * 1000, job_n & 0xfffff)
    };
    let started = Instant::now();
    let mut hosts = Vec::with_capacity(args.hosts);
    for i in 0..args.hosts {
        let id = host_id(i);
        let plan = planned(i);
        let r = |salt: u64| mix(i as u64, salt);
        // The newest daily slot: within the last hour, staggered like a jittered schedule.
        let lag = 60 + (r(1) % 3600) as i64;
        let base_end = now
            - lag
            - match plan {
                HostStatus::Stale => (3 + (r(2) % 10) as i64) * DAY,
                HostStatus::Offline => 2 * 3600 + (r(3) % (20 * 3600)) as i64,
                _ => 0,
            };
        let slot_end = |d: usize| base_end - d as i64 * DAY;
        // Day d's backup failed (no set that day): about 3% of days, never the newest
        // (it decides the status); failing hosts fail on day 0 and back up on day 1.
        let failed_day = |d: usize| match plan {
            HostStatus::Never => true,
            HostStatus::Failing if d == 0 => true,
            HostStatus::Failing if d == 1 => false,
            _ => d > 0 && mix(i as u64 ^ 0x5eed, d as u64).is_multiple_of(33),
        };
        let wanted_sets = match plan {
            HostStatus::Never => 0,
            _ if i % 100 == 99 => 2 * args.sets_per_host,
            _ => args.sets_per_host,
        };
        let jobs = match plan {
            HostStatus::Never => args.jobs_per_host.min(3),
            _ => args.jobs_per_host,
        };
        // Days with a set, newest first.
        let mut set_days = Vec::with_capacity(wanted_sets);
        let mut d = 0;
        while set_days.len() < wanted_sets {
            if !failed_day(d) {
                set_days.push(d);
            }
            d += 1;
        }
        let mut sets_by_day = BTreeMap::new();
        let mut prev_end = 0;
        // A full every 7th set, each host at its own point of the cycle (and the first).
        let phase = (r(4) % 7) as usize;
        for (j, &d) in set_days.iter().rev().enumerate() {
            let full = j == 0 || (j + phase).is_multiple_of(7);
            let end = slot_end(d);
            let x = r(100 + d as u64);
            let set = SetRecord {
                host_id: id.clone(),
                kind: if full { "full" } else { "incremental" }.into(),
                start_time: if full { 0 } else { prev_end },
                end_time: end,
                volumes: if full {
                    8 + (x % 40) as u32
                } else {
                    1 + (x % 3) as u32
                },
                bytes: if full {
                    2_000_000_000 + x % 8_000_000_000
                } else {
                    5_000_000 + x % 600_000_000
                },
                files: if full {
                    150_000 + x % 50_000
                } else {
                    20 + x % 5_000
                },
            };
            catalog.put_set(&set)?;
            n.sets += 1;
            prev_end = end;
            sets_by_day.insert(d, set);
        }
        for d in (0..jobs).rev() {
            let end = slot_end(d);
            if end < now - JOB_HISTORY_DAYS * DAY + 3600 {
                continue; // the coordinator would have pruned it (job_history_days)
            }
            let set = sets_by_day.get(&d).cloned();
            let duration = match &set {
                Some(s) if s.kind == "full" => 1200 + (r(200 + d as u64) % 4000) as i64,
                _ => 30 + (r(200 + d as u64) % 900) as i64,
            };
            let failed = set.is_none();
            let created_at = end - duration - 40;
            let job = JobRecord {
                state: if failed {
                    JobState::Failed
                } else {
                    JobState::Succeeded
                },
                started_at: end - duration,
                finished_at: end + 2,
                attempt: if failed { 3 } else { 1 },
                scheduled_for: created_at - 5,
                error: if failed {
                    ERRORS[(r(300 + d as u64) % ERRORS.len() as u64) as usize].into()
                } else {
                    String::new()
                },
                set,
                ..JobRecord::queued(
                    next_job_id(created_at),
                    &id,
                    JobKind::Backup,
                    "schedule",
                    created_at,
                )
            };
            catalog.put_job_unflushed(&job)?;
            n.jobs += 1;
            n.failed_jobs += u64::from(failed);
        }
        // Weekly restore tests of one host in 7, 12 hours before a backup.
        if i % 7 == 0 && !set_days.is_empty() {
            let oldest = *set_days.last().expect("not empty");
            for (w, d) in (1..=oldest).step_by(7).enumerate() {
                let finished_at = slot_end(d) + DAY / 2;
                let backup_time = slot_end(d);
                let newest = w == 0;
                let unverified = newest && i % 70 == 0;
                let failed = newest && i % 91 == 0;
                let drill = i % 49 != 0;
                let x = r(400 + d as u64);
                let created_at = finished_at - 600;
                n.restores += 1;
                catalog.put_restore(&RestoreEvidence {
                    job_id: next_job_id(created_at),
                    source_host: id.clone(),
                    target_host: if drill {
                        id.clone()
                    } else {
                        host_id((i + 1) % args.hosts)
                    },
                    drill,
                    state: if failed {
                        JobState::Failed
                    } else {
                        JobState::Succeeded
                    },
                    finished_at,
                    error: if failed {
                        "restore: volume 12 of the full set is missing in storage".into()
                    } else {
                        String::new()
                    },
                    origin: if drill {
                        "schedule".into()
                    } else {
                        "admin:ops".into()
                    },
                    outcome: (!failed).then(|| RestoreOutcome {
                        backup_time,
                        files: 150_000 + x % 50_000,
                        bytes: 2_000_000_000 + x % 8_000_000_000,
                        verified: !unverified,
                        paths_checked: 150_000 + x % 50_000,
                        bytes_hashed: 2_000_000_000 + x % 8_000_000_000,
                        mismatches: if unverified { 2 } else { 0 },
                        differences: if unverified {
                            vec![
                                "etc/hosts: content differs".into(),
                                "var/www/index.html: size differs".into(),
                            ]
                        } else {
                            vec![]
                        },
                        not_restored: vec![],
                        not_restored_count: 0,
                        target: format!("/var/tmp/flotilla-drill-{d}"),
                        restore_ms: 60_000 + x % 600_000,
                        verify_ms: 20_000 + x % 200_000,
                    }),
                })?;
            }
        }
        hosts.push((i, base_end, set_days.first().map(|&d| slot_end(d))));
        if (i + 1) % (args.hosts / 10).max(1) == 0 {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  loaded {:>6} hosts, {:>8} sets, {:>8} jobs in {:6.1} s ({:.0} records/s)",
                i + 1,
                n.sets,
                n.jobs,
                secs,
                (n.sets + n.jobs + n.restores) as f64 / secs
            );
        }
    }
    // The host records last, seen "now" (as connected agents' heartbeats keep them).
    let seen = unix_now();
    let versions = ["0.1.0", "0.1.0", "0.1.0", "0.1.1", "0.0.9"];
    let offsets = [0, 3600, 7200, -18_000, -25_200, 19_800, 32_400];
    for (i, base_end, newest_set) in hosts {
        let plan = planned(i);
        let r = |salt: u64| mix(i as u64, salt);
        let enrolled_at = match plan {
            HostStatus::Never => now - 3 * DAY - 7200,
            _ => base_end - (args.sets_per_host as i64 * 2 + 5) * DAY,
        };
        let labels: BTreeMap<String, String> = [
            ("role", role(i).to_string()),
            ("env", if i % 4 == 0 { "staging" } else { "prod" }.into()),
            ("dc", format!("dc-{}", i % 3)),
            ("team", format!("team-{:02}", r(10) % 17)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        catalog.put_host(&HostRecord {
            host_id: host_id(i),
            hostname: format!("{}.dc-{}.example.net", host_id(i), i % 3),
            labels,
            cert_fingerprint: format!("{:016x}{:016x}{:016x}{:016x}", r(20), r(21), r(22), r(23)),
            signing_public_key: format!("ed25519:{:016x}{:016x}{:016x}", r(30), r(31), r(32)),
            agent_version: versions[(r(40) % versions.len() as u64) as usize].into(),
            enrolled_at,
            last_seen: match plan {
                HostStatus::Stale | HostStatus::Offline => base_end + 30,
                _ => seen - (r(50) % 30) as i64,
            },
            policy_revision_applied: 1,
            utc_offset_secs: offsets[(r(60) % offsets.len() as u64) as usize],
            last_backup_at: newest_set.unwrap_or(0),
            destination_override: (i % 101 == 50)
                .then(|| format!("file:///srv/adopted/{}", host_id(i))),
        })?;
        n.hosts += 1;
    }
    catalog.flush()?;
    Ok(n)
}

fn du(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let (mut apparent, mut allocated) = (0, 0);
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    (apparent, allocated)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// min, median, max.
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(times: &[Duration]) -> Stats {
        let mut s: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        Stats {
            min: s[0],
            median: s[s.len() / 2],
            max: s[s.len() - 1],
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} s median (min {:.3}, max {:.3})",
            self.median, self.min, self.max
        )
    }
}

/// Runs `f` `n` times; the times and the last result.
fn timed<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Stats, T)> {
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n.max(1) {
        let t = Instant::now();
        let out = f()?;
        times.push(t.elapsed());
        last = Some(out);
    }
    Ok((Stats::of(&times), last.expect("ran at least once")))
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<44} {value}");
}

/// The policy file as the coordinator parses it (`Fleet::new`).
fn policy_set(catalog: &Catalog) -> Result<(u64, PolicySet)> {
    let rev = catalog
        .current_policy()?
        .context("the catalog has no policy")?;
    let set = PolicySet::parse(&rev.file_name, &rev.toml, |_| {
        Err("keys are stored inline".into())
    })
    .map_err(|e| anyhow::anyhow!("policy: {e:?}"))?;
    Ok((rev.revision, set))
}

/// The report as `Fleet::report` builds it (no agent is connected).
fn build(
    catalog: &Catalog,
    policies: &(u64, PolicySet),
    at: Option<i64>,
    history_days: u32,
) -> Result<FleetReport> {
    let opts = ReportOptions {
        now: at.unwrap_or_else(unix_now),
        offline_after_secs: OFFLINE_AFTER_SECS,
        labels: BTreeMap::new(),
        history_days,
    };
    let policy_for = |l: &BTreeMap<String, String>| -> Option<&Policy> {
        policies.1.policies.values().find(|p| p.selects(l))
    };
    Ok(report::build(
        catalog,
        policy_for,
        policies.0,
        |_| false,
        &opts,
    )?)
}

fn vm_hwm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("flotilla-report-scale-")
                .tempdir_in("/tmp")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let catalog_dir = dir.join("catalog");
    let flotilla = match &args.flotilla {
        Some(f) => f.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no directory above this example")?
            .join("flotilla"),
    };
    if args.serve && !flotilla.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p flotilla-coordinator --bin \
             flotilla) or give --flotilla",
            flotilla.display()
        );
    }
    println!("report_scale: state directory {}", dir.display());

    // ------------------------------------------------------------------ load
    if args.serve && !dir.join("pki").join("ca.pem").exists() {
        let out = Command::new(&flotilla)
            .args(["init", "--dir"])
            .arg(&dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "flotilla init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let (catalog, counts, at) = if args.reuse {
        if !catalog_dir.exists() {
            bail!("--reuse: {} does not exist", catalog_dir.display());
        }
        let t = Instant::now();
        let catalog = Catalog::open(&catalog_dir)?;
        let hosts = catalog.hosts()?;
        let at = hosts.iter().map(|h| h.last_seen).max().unwrap_or(0) + 60;
        let sets: u64 = hosts
            .iter()
            .map(|h| catalog.sets(&h.host_id).map(|s| s.len() as u64))
            .sum::<Result<_, _>>()?;
        let jobs: u64 = catalog
            .job_counts()?
            .iter()
            .filter(|((kind, _), _)| kind == "backup")
            .map(|(_, n)| n)
            .sum();
        let restores = catalog.restores(None, 0)?.len() as u64;
        println!(
            "reused the catalog ({:.1} s to open and count); evaluated as of {at} (--at)",
            t.elapsed().as_secs_f64()
        );
        let counts = Loaded {
            hosts: hosts.len() as u64,
            sets,
            jobs,
            failed_jobs: catalog
                .job_counts()?
                .get(&("backup".to_string(), "failed".to_string()))
                .copied()
                .unwrap_or(0),
            restores,
        };
        (catalog, counts, Some(at))
    } else {
        if catalog_dir.exists() {
            bail!(
                "{} exists: remove it, or measure it with --reuse",
                catalog_dir.display()
            );
        }
        println!(
            "loading {} hosts x {} sets, {} jobs per host ...",
            args.hosts, args.sets_per_host, args.jobs_per_host
        );
        let t = Instant::now();
        let catalog = Catalog::open(&catalog_dir)?;
        let counts = load(&catalog, &args)?;
        let load_secs = t.elapsed().as_secs_f64();
        // job_counts counts each job id once: fewer than written means ids collided.
        let counted: u64 = catalog
            .job_counts()?
            .iter()
            .filter(|((kind, _), _)| kind == "backup")
            .map(|(_, n)| n)
            .sum();
        if counted != counts.jobs {
            bail!(
                "{} jobs written, {counted} counted: job ids collided",
                counts.jobs
            );
        }
        println!(
            "loaded in {load_secs:.1} s ({:.0} records/s, flushed)",
            (counts.hosts + counts.sets + counts.jobs + counts.restores) as f64 / load_secs
        );
        (catalog, counts, None)
    };
    let (apparent, allocated) = du(&catalog_dir);
    println!(
        "catalog: {} hosts, {} sets, {} backup jobs ({} failed), {} restore records; \
         {} on disk ({} apparent) in {}",
        counts.hosts,
        counts.sets,
        counts.jobs,
        counts.failed_jobs,
        counts.restores,
        mb(allocated),
        mb(apparent),
        catalog_dir.display()
    );
    let mut plan: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..counts.hosts as usize {
        *plan.entry(planned(i).as_str()).or_default() += 1;
    }
    println!("planned statuses: {plan:?}");

    // ------------------------------------------------------------ in process
    let n = args.repeat;
    let policies = policy_set(&catalog)?;
    println!("\nin process, warm (sled cache filled by the load or the count), {n} runs each:");
    let (build0, r0) = timed(n, || build(&catalog, &policies, at, 0))?;
    line("report::build, history_days 0", &build0);
    let (build30, r30) = timed(n, || build(&catalog, &policies, at, HTML_HISTORY_DAYS))?;
    line("report::build, history_days 30", &build30);
    let (json0, j0) = timed(n, || Ok(serde_json::to_string(&r0)?))?;
    line(
        "serde_json::to_string (0 days)",
        format!("{json0}, {}", mb(j0.len() as u64)),
    );
    let (json30, j30) = timed(n, || Ok(serde_json::to_string(&r30)?))?;
    line(
        "serde_json::to_string (30 days)",
        format!("{json30}, {}", mb(j30.len() as u64)),
    );
    let (html, page) = timed(n, || Ok(flotilla_coordinator::report_html::to_html(&r30)))?;
    line(
        "report_html::to_html (30 days)",
        format!("{html}, {}", mb(page.len() as u64)),
    );
    // The CLI's side: `--json` parses the coordinator's JSON and pretty-prints it;
    // `--format html` goes through the typed report to the page.
    let (cli_json, pretty) = timed(n, || {
        let v: serde_json::Value = serde_json::from_str(&j0)?;
        Ok(serde_json::to_string_pretty(&v)?)
    })?;
    line(
        "CLI --json: parse + pretty-print",
        format!("{cli_json}, {}", mb(pretty.len() as u64)),
    );
    let (cli_html, _) = timed(n, || {
        let v: serde_json::Value = serde_json::from_str(&j30)?;
        let typed: FleetReport = serde_json::from_value(v)?;
        Ok(flotilla_coordinator::report_html::to_html(&typed).len())
    })?;
    line("CLI --format html: parse + typed + to_html", &cli_html);
    println!("  statuses: {:?}", r0.summary.by_status);

    // Where the time goes: the host records, then the per-host range scans.
    println!("\nbreakdown, {n} runs each:");
    let (hosts_t, hosts) = timed(n, || Ok(catalog.hosts()?))?;
    line("catalog.hosts() (decode all host records)", &hosts_t);
    for days in [0, HTML_HISTORY_DAYS] {
        let opts = ReportOptions {
            now: at.unwrap_or_else(unix_now),
            offline_after_secs: OFFLINE_AFTER_SECS,
            labels: BTreeMap::new(),
            history_days: days,
        };
        let (facts_t, chain) = timed(n, || {
            let mut sets = 0u64;
            for h in &hosts {
                let (f, _) = report::host_facts(&catalog, &h.host_id, &opts)?;
                sets += u64::from(f.chain_length);
            }
            Ok(sets)
        })?;
        line(
            &format!("host_facts for every host, {days} days"),
            format!(
                "{facts_t} ({:.1} µs/host, chains of {:.1} sets on average)",
                facts_t.median * 1e6 / hosts.len().max(1) as f64,
                chain as f64 / hosts.len().max(1) as f64
            ),
        );
    }
    // The cost of one set read newest first (what host_facts does, 31 sets deep with
    // the 30-day window) against one read oldest first (`Catalog::sets`, all of them).
    let scan_at = at.unwrap_or_else(unix_now);
    let (rev_t, rev_n) = timed(n, || {
        let mut k = 0u64;
        for h in &hosts {
            for s in catalog.sets_newest_first(&h.host_id, scan_at).take(31) {
                s?;
                k += 1;
            }
        }
        Ok(k)
    })?;
    line(
        "sets newest first, 31 per host (rev + decode)",
        format!(
            "{rev_t} ({:.2} µs/set, {rev_n} sets)",
            rev_t.median * 1e6 / rev_n.max(1) as f64
        ),
    );
    let (fwd_t, fwd_n) = timed(n, || {
        let mut k = 0u64;
        for h in &hosts {
            k += catalog.sets(&h.host_id)?.len() as u64;
        }
        Ok(k)
    })?;
    line(
        "sets oldest first, all (forward + decode)",
        format!(
            "{fwd_t} ({:.2} µs/set, {fwd_n} sets)",
            fwd_t.median * 1e6 / fwd_n.max(1) as f64
        ),
    );
    drop((r0, r30, j0, j30, page, pretty, hosts));

    // ------------------------------------------------------------------ cold
    println!("\ncold: catalog reopened (sled cache empty; OS page cache not dropped):");
    drop(catalog);
    let t = Instant::now();
    let catalog = Catalog::open(&catalog_dir)?;
    line(
        "Catalog::open",
        format!("{:.3} s", t.elapsed().as_secs_f64()),
    );
    let policies = policy_set(&catalog)?;
    let t = Instant::now();
    let cold0 = build(&catalog, &policies, at, 0)?;
    line(
        "first report::build after open, 0 days",
        format!("{:.3} s", t.elapsed().as_secs_f64()),
    );
    let (again, _) = timed(1, || build(&catalog, &policies, at, 0))?;
    line("the next one", format!("{:.3} s", again.median));
    drop((cold0, catalog));
    let catalog = Catalog::open(&catalog_dir)?;
    let policies = policy_set(&catalog)?;
    let t = Instant::now();
    build(&catalog, &policies, at, HTML_HISTORY_DAYS)?;
    line(
        "first report::build after open, 30 days",
        format!("{:.3} s", t.elapsed().as_secs_f64()),
    );
    drop(catalog);

    // ----------------------------------------------------------------- serve
    let (serve_summary, serve_verdict) = if args.serve {
        serve(&args, &flotilla, &dir, at)?
    } else {
        (String::new(), String::new())
    };

    let hwm = vm_hwm("self");
    println!("\npeak RSS of this process (VmHWM): {hwm}");
    let yes = |secs: f64| if secs < 1.0 { "yes" } else { "NO" };
    println!(
        "\nSUMMARY: {} hosts, {} sets, {} jobs, {} restore records ({} on disk): \
         build {:.3} s median ({:.3}-{:.3}), build+30d {:.3} s ({:.3}-{:.3}), \
         json {:.3} s, html {:.3} s; peak RSS {hwm}{serve_summary}. \
         Under 1 s (median): report::build {}, with 30 days {}{serve_verdict}",
        counts.hosts,
        counts.sets,
        counts.jobs,
        counts.restores,
        mb(allocated),
        build0.median,
        build0.min,
        build0.max,
        build30.median,
        build30.min,
        build30.max,
        json0.median,
        html.median,
        yes(build0.median),
        yes(build30.median),
    );
    if args.keep || args.dir.is_some() {
        if let Some(t) = temp {
            let kept = t.keep();
            println!("kept {}", kept.display());
        } else {
            println!("kept {}", dir.display());
        }
    }
    Ok(())
}

/// `flotilla serve` on the catalog, `flotilla report` against it; the summary's
/// fragments (figures, verdicts).
fn serve(args: &Args, flotilla: &Path, dir: &Path, at: Option<i64>) -> Result<(String, String)> {
    println!(
        "\nend to end: flotilla serve + flotilla report ({} runs each):",
        args.repeat
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("report_scale.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\noffline_after_secs = {OFFLINE_AFTER_SECS}\n",
            dir.display().to_string()
        ),
    )?;
    let log_path = dir.join("report_scale-serve.log");
    let log = std::fs::File::create(&log_path)?;
    let t = Instant::now();
    let mut child = Command::new(flotilla)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting flotilla serve")?;
    let pid = child.id().to_string();
    let result = (|| -> Result<(String, String)> {
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "flotilla serve exited ({status}); see {}",
                    log_path.display()
                );
            }
            if t.elapsed() > Duration::from_secs(300) {
                bail!("flotilla serve is not listening after 300 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        line(
            "flotilla serve: start until listening",
            format!("{:.2} s", t.elapsed().as_secs_f64()),
        );
        let url = format!("https://127.0.0.1:{port}");
        let report = |extra: &[&str], out: Stdio| -> Result<std::process::Output> {
            let mut cmd = Command::new(flotilla);
            cmd.arg("report")
                .args(extra)
                .args(["--coordinator", &url, "--dir"])
                .arg(dir)
                .stdout(out)
                .stderr(Stdio::piped());
            if let Some(at) = at {
                cmd.args(["--at", &at.to_string()]);
            }
            let out = cmd.output()?;
            if !out.status.success() {
                bail!(
                    "flotilla report {extra:?}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out)
        };
        // One untimed run first that checks the output (and warms the server's cache,
        // as a second report after a restart would find it); the first timed one is
        // printed separately anyway.
        let t = Instant::now();
        let first = report(&["--json"], Stdio::piped())?;
        let first_secs = t.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_slice(&first.stdout)
            .context("flotilla report --json printed no JSON")?;
        line(
            "first `report --json` after start (captured)",
            format!(
                "{first_secs:.3} s, {}, {} hosts, {}",
                mb(first.stdout.len() as u64),
                v["summary"]["hosts"],
                v["summary"]["by_status"]
            ),
        );
        let (json_t, _) = timed(args.repeat, || report(&["--json"], Stdio::null()))?;
        line("flotilla report --json > /dev/null", &json_t);
        let (html_t, _) = timed(args.repeat, || report(&["--format", "html"], Stdio::null()))?;
        line("flotilla report --format html > /dev/null", &html_t);
        let (table_t, _) = timed(args.repeat, || report(&[], Stdio::null()))?;
        line("flotilla report (table) > /dev/null", &table_t);
        let hwm = vm_hwm(&pid);
        line("peak RSS of flotilla serve (VmHWM)", &hwm);
        let yes = |secs: f64| if secs < 1.0 { "yes" } else { "NO" };
        Ok((
            format!(
                "; end to end `flotilla report --json` {:.3} s median ({:.3}-{:.3}), \
                 `--format html` {:.3} s median ({:.3}-{:.3}), table {:.3} s, \
                 first --json after start {first_secs:.3} s",
                json_t.median,
                json_t.min,
                json_t.max,
                html_t.median,
                html_t.min,
                html_t.max,
                table_t.median
            ),
            format!(
                ", end to end --json {}, table {}, --format html {}, first --json after \
                 start {}",
                yes(json_t.median),
                yes(table_t.median),
                yes(html_t.median),
                yes(first_secs)
            ),
        ))
    })();
    // Stop the server (by its pid): SIGTERM, then SIGKILL if it does not go.
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    line(
        "flotilla serve stopped",
        format!("log: {}", log_path.display()),
    );
    result
}
