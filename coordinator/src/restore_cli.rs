//! The restore half of the `flotilla` CLI (part of the binary, not the library):
//! keys from a file, the environment or a prompt; `ls` and `restore --local`, which
//! read a host's backups on this machine with a read-only credential the coordinator
//! mints; restore evidence; how a restore outcome is shown.

use anyhow::{Context as _, Result};
use flotilla_client::engine::{self, Context};
use flotilla_client::terminal::{TerminalProgress, prompt_secret};
use flotilla_client::{out, outln};
use flotilla_common::proto::v1 as pb;
use flotilla_common::storage::{
    Credentials, OpenOptions, RetryPolicy, ScopedCredential, open_blocking_with,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The decryption key of a restore: `--key FILE` (armored secret key) and a passphrase
/// from FLOTILLA_PASSPHRASE or PASSPHRASE, else asked for on the terminal (for the key,
/// or for symmetrically encrypted backups; empty for none).
pub struct RestoreKey {
    pub armored: String,
    pub passphrase: String,
}

impl RestoreKey {
    pub fn load(key: &Option<PathBuf>) -> Result<RestoreKey> {
        let armored = match key {
            Some(f) => {
                std::fs::read_to_string(f).with_context(|| format!("--key {}", f.display()))?
            }
            None => String::new(),
        };
        let passphrase =
            match std::env::var("FLOTILLA_PASSPHRASE").or_else(|_| std::env::var("PASSPHRASE")) {
                Ok(p) => p,
                Err(_) if std::io::stdin().is_terminal() => {
                    let prompt = if armored.is_empty() {
                        "Passphrase of the backups (empty if they are encrypted to a key): "
                    } else {
                        "Passphrase of the key (empty if it has none): "
                    };
                    prompt_secret(prompt)
                        .context("reading the passphrase from the terminal")?
                        .unwrap_or_default()
                }
                Err(_) => String::new(),
            };
        Ok(RestoreKey {
            armored,
            passphrase,
        })
    }

    fn decryption_keys(&self) -> Result<flotilla_common::crypto::DecryptionKeys> {
        let keys = flotilla_client::fleet::restore_keys(&self.armored, &self.passphrase)
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !keys.secret_keys.is_empty() || !keys.passphrases.is_empty(),
            "no key: pass --key FILE for backups encrypted to a public key, or set \
             FLOTILLA_PASSPHRASE for symmetrically encrypted ones"
        );
        Ok(keys)
    }
}

/// A host's backups opened on this machine: the coordinator mints a read-only
/// credential for the host's container; keys never leave this machine. The engine runs
/// on the calling thread, storage I/O on `rt`.
pub struct LocalBackups {
    pub ctx: Context,
    pub destination: String,
    _rt: tokio::runtime::Runtime,
    _scratch: tempfile::TempDir,
}

impl LocalBackups {
    pub fn open(
        admin: impl std::future::Future<Output = Result<crate::AdminClient>>,
        host: &str,
        progress: engine::progress::SharedProgress,
    ) -> Result<LocalBackups> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let access = rt.block_on(async {
            let mut c = admin.await?;
            c.read_access(pb::ReadAccessRequest {
                host_id: host.to_string(),
            })
            .await
            .map_err(crate::status_error)
        })?;
        let access = access.into_inner();
        // A file:// destination needs no credential: the coordinator sends none.
        let credentials = if access.credential_json.is_empty() {
            Credentials::FromEnvironment
        } else {
            Credentials::Scoped(
                ScopedCredential::from_json(&access.credential_json)
                    .context("the coordinator's read-only credential")?,
            )
        };
        let options = OpenOptions {
            credentials,
            retry: RetryPolicy::default(),
        };
        let store = open_blocking_with(&access.destination, &options, rt.handle().clone())
            .with_context(|| format!("opening {}", access.destination))?;
        // No signature cache: a scratch directory, removed afterwards.
        let scratch = tempfile::Builder::new()
            .prefix("flotilla-cli-")
            .tempdir()
            .context("a scratch directory")?;
        Ok(LocalBackups {
            ctx: Context {
                store,
                state_dir: scratch.path().to_path_buf(),
                progress,
            },
            destination: access.destination,
            _rt: rt,
            _scratch: scratch,
        })
    }
}

/// A progress bar when stderr is a terminal and the output is for people.
pub fn terminal_progress(json: bool) -> Option<Arc<TerminalProgress>> {
    (!json && std::io::stderr().is_terminal()).then(|| Arc::new(TerminalProgress::new()))
}

fn shared(p: &Option<Arc<TerminalProgress>>) -> engine::progress::SharedProgress {
    match p {
        Some(p) => p.clone(),
        None => Arc::new(engine::progress::NoProgress),
    }
}

/// `flotilla ls`: the paths of HOST's backup at `time` (under `path`), from the
/// signature files.
pub fn ls(
    admin: impl std::future::Future<Output = Result<crate::AdminClient>>,
    host: &str,
    time: i64,
    path: Option<&str>,
    key: &RestoreKey,
    json: bool,
) -> Result<()> {
    let keys = key.decryption_keys()?;
    let backups = LocalBackups::open(admin, host, Arc::new(engine::progress::NoProgress))?;
    let prefix: Option<Vec<u8>> = path
        .map(|p| p.trim_matches('/').as_bytes().to_vec())
        .filter(|p| !p.is_empty());
    let under = |b: &[u8]| match &prefix {
        None => true,
        Some(p) => b == &p[..] || (b.starts_with(p) && b.get(p.len()) == Some(&b'/')),
    };
    let mut items = Vec::new();
    let mut rows = Vec::new();
    let backup_time = engine::inspect::list(
        &backups.ctx,
        if time > 0 { time } else { now() },
        &keys,
        |p| {
            if !under(&p.path_bytes) {
                return;
            }
            if json {
                items.push(p);
            } else {
                rows.push(ls_row(&p));
            }
        },
    )
    .with_context(|| format!("listing {host}'s backup in {}", backups.destination))?;
    if let Some(p) = &prefix
        && items.is_empty()
        && rows.is_empty()
    {
        anyhow::bail!(
            "{} is not in {host}'s backup of {}",
            String::from_utf8_lossy(p),
            flotilla_common::archive::format_time(backup_time)
        );
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "host_id": host, "backup_time": backup_time, "paths": items,
            }))?
        );
    } else {
        eprintln!(
            "{host}: backup of {} ({} path(s)); sizes with ≤ are known to within one \
             signature block",
            flotilla_common::archive::format_time(backup_time),
            rows.len()
        );
        out!(
            "{}",
            crate::table(&["MODE", "OWNER", "SIZE", "MTIME", "PATH"], rows)
        );
    }
    Ok(())
}

fn ls_row(p: &engine::inspect::ListedPath) -> Vec<String> {
    let kind = match p.kind {
        "dir" => 'd',
        "symlink" => 'l',
        "fifo" => 'p',
        "char" => 'c',
        "block" => 'b',
        _ => '-',
    };
    let perms = u32::from_str_radix(&p.mode, 8).unwrap_or(0);
    let mut mode = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (perms >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let owner = format!(
        "{}:{}",
        if p.user.is_empty() {
            p.uid.to_string()
        } else {
            p.user.clone()
        },
        if p.group.is_empty() {
            p.gid.to_string()
        } else {
            p.group.clone()
        }
    );
    let size = match (p.size_min, p.size_max) {
        (Some(lo), Some(hi)) if lo == hi => crate::bytes_text(lo),
        (_, Some(hi)) => format!("≤{}", crate::bytes_text(hi)),
        _ => "-".into(),
    };
    let mut path = p.path.clone();
    if let Some(t) = &p.link_target {
        path.push_str(" -> ");
        path.push_str(t);
    }
    vec![mode, owner, size, crate::time_text(p.mtime), path]
}

/// What `flotilla restore --local` restores, and where.
pub struct LocalRestore<'a> {
    pub host: &'a str,
    /// Unix seconds; 0 for the latest backup.
    pub time: i64,
    pub paths: &'a [String],
    pub dir: &'a Path,
    pub force: bool,
}

/// `flotilla restore HOST --local DIR`: restores on this machine, checks the tree
/// against the backup's signatures, and says what it did. Exit 1 (an error) when a
/// path could not be restored or differs.
pub fn restore_local(
    admin: impl std::future::Future<Output = Result<crate::AdminClient>>,
    req: &LocalRestore<'_>,
    key: &RestoreKey,
    json: bool,
) -> Result<()> {
    let LocalRestore {
        host,
        time,
        paths,
        dir,
        force,
    } = *req;
    let keys = key.decryption_keys()?;
    let target = std::path::absolute(dir).with_context(|| format!("--local {}", dir.display()))?;
    let progress = terminal_progress(json);
    let backups = LocalBackups::open(admin, host, shared(&progress))?;
    let shown = target.display().to_string();
    let (outcome, note, problems) = flotilla_client::fleet::restore_paths(
        &backups.ctx,
        &flotilla_client::fleet::RestoreInto {
            time,
            paths,
            target: &target,
            force,
            keys: &keys,
        },
        &shown,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("restoring {host}'s backup from {}", backups.destination))?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "host_id": host, "local": true, "note": note,
                "restore": restore_json(&outcome), "problems": problems,
            }))?
        );
    } else {
        out!("{}", restore_summary(host, "this machine", &outcome));
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// What a restore did and how its check went, for people.
pub fn restore_summary(source: &str, restored_on: &str, o: &pb::RestoreOutcome) -> String {
    let secs = o.restore_ms as f64 / 1000.0;
    let mut out = format!(
        "Restored {} path(s), {} bytes of {} (backup {}) into {} on {} in {:.1} s ({:.1} MB/s).\n",
        o.files,
        o.bytes,
        source,
        flotilla_common::archive::format_time(o.backup_time),
        o.target,
        restored_on,
        secs,
        o.bytes as f64 / 1_048_576.0 / secs.max(0.001)
    );
    for p in &o.not_restored {
        out.push_str(&format!("not restored: {p}\n"));
    }
    for d in &o.differences {
        out.push_str(&format!("differs: {d}\n"));
    }
    out.push_str(&if o.verified {
        format!(
            "Verified: {} path(s) match the backup's signatures ({} bytes hashed in {:.1} s).\n",
            o.paths_checked,
            o.bytes_hashed,
            o.verify_ms as f64 / 1000.0
        )
    } else if o.mismatches == 0 {
        "Not verified: the backup has no signature file to check against.\n".to_string()
    } else {
        format!(
            "NOT verified: {} difference(s) from the backup's signatures.\n",
            o.mismatches
        )
    });
    out
}

pub fn restore_json(o: &pb::RestoreOutcome) -> serde_json::Value {
    serde_json::json!({
        "backup_time": o.backup_time, "files": o.files, "bytes": o.bytes,
        "verified": o.verified, "paths_checked": o.paths_checked,
        "bytes_hashed": o.bytes_hashed, "mismatches": o.mismatches,
        "differences": o.differences, "not_restored": o.not_restored,
        "not_restored_count": o.not_restored_count, "target": o.target,
        "restore_ms": o.restore_ms, "verify_ms": o.verify_ms,
    })
}

/// `flotilla restores`: the restore evidence, newest first.
pub fn evidence_output(list: &[pb::RestoreEvidence], json: bool) -> Result<String> {
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|e| {
                serde_json::json!({
                    "job_id": e.job_id, "source_host_id": e.source_host_id,
                    "target_host_id": e.target_host_id, "drill": e.drill,
                    "state": crate::state_text(e.state), "finished_at": e.finished_at,
                    "error": e.error, "origin": e.origin,
                    "restore": e.outcome.as_ref().map(restore_json),
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let rows = list.iter().map(|e| {
        let o = e.outcome.clone().unwrap_or_default();
        vec![
            crate::time_text(e.finished_at),
            e.source_host_id.clone(),
            e.target_host_id.clone(),
            if e.drill { "drill" } else { "restore" }.into(),
            crate::state_text(e.state).into(),
            if o.backup_time > 0 {
                crate::time_text(o.backup_time)
            } else {
                "-".into()
            },
            o.files.to_string(),
            crate::bytes_text(o.bytes),
            if o.verified { "yes" } else { "no" }.into(),
            if e.error.is_empty() {
                e.job_id.clone()
            } else {
                format!("{}: {}", e.job_id, e.error)
            },
        ]
    });
    Ok(crate::table(
        &[
            "FINISHED", "SOURCE", "ON", "KIND", "STATE", "BACKUP", "FILES", "BYTES", "VERIFIED",
            "JOB",
        ],
        rows,
    ))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
