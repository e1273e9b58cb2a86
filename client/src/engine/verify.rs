//! `verify`: reconstructs the backup at a time (downloading, hash-checking and
//! decrypting every volume) and compares it with a directory, like
//! `duplicity verify --compare-data`: existence and type; permission bits, owner and
//! integer mtime (not for symlinks); file data; symlink targets; device numbers.

use super::Context;
use super::error::{EngineError, Result};
use super::inspect::signature_sources;
use super::owners::Owners;
use super::progress::Progress;
use super::restore::{Content, TreeSink, TreeStats, plan, reconstruct};
use super::select::Selection;
use super::sigstate::SignatureState;
use super::walk::{SourceEntry, Walker};
use flotilla_common::archive::rsync::{SignatureBuilder, block_len_for};
use flotilla_common::archive::tarfmt::read_full;
use flotilla_common::archive::{BackupSet, FileKind, FileMeta, Index};
use flotilla_common::crypto::DecryptionKeys;
use serde::Serialize;
use std::fs::File;
use std::io::{self, Read};
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{channel, sync_channel};

/// One difference between the backup and the directory.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub path: String,
    pub what: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub time: i64,
    pub compared: u64,
    pub differences: Vec<Difference>,
    pub stats: TreeStats,
}

struct CompareSink {
    source: Peekable<Walker>,
    scratch: PathBuf,
    owners: Owners,
    differences: Vec<Difference>,
    compared: u64,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
}

impl CompareSink {
    fn diff(&mut self, index: &Index, what: impl Into<String>) {
        self.differences.push(Difference {
            path: index.display(),
            what: what.into(),
        });
    }

    /// Source paths before `index` are not in the backup.
    fn drain_source_before(&mut self, index: Option<&Index>) {
        while let Some(s) = self.source.peek() {
            if index.is_some_and(|i| s.index >= *i) {
                break;
            }
            let s = self.source.next().expect("peeked");
            self.diff(&s.index, "only in the directory, not in the backup");
        }
    }

    fn compare_meta(&mut self, index: &Index, backup: &FileMeta, src: &SourceEntry) {
        let mut found = Vec::new();
        meta_differences(backup, &src.meta, Some(&mut self.owners), &mut found);
        for what in found {
            self.diff(index, what);
        }
    }

    fn compare_data(&mut self, index: &Index, backup: &mut dyn Read, src: &Path) -> Result<()> {
        let mut f = match File::open(src) {
            Ok(f) => f,
            Err(e) => {
                self.diff(index, format!("cannot read the directory's file: {e}"));
                return Ok(());
            }
        };
        if self.buf_a.is_empty() {
            self.buf_a = vec![0u8; 1 << 20];
            self.buf_b = vec![0u8; 1 << 20];
        }
        let mut offset = 0u64;
        loop {
            let n = read_full(backup, &mut self.buf_a)
                .map_err(|e| EngineError::from_object_io(&index.display(), e))?;
            let m = read_full(&mut f, &mut self.buf_b[..n.max(1)])
                .map_err(|e| EngineError::io(src, e))?;
            if n == 0 && m == 0 {
                return Ok(());
            }
            if self.buf_a[..n] != self.buf_b[..m] {
                let at = self.buf_a[..n]
                    .iter()
                    .zip(&self.buf_b[..m])
                    .position(|(a, b)| a != b)
                    .unwrap_or(n.min(m)) as u64;
                self.diff(index, format!("data differs at byte {}", offset + at));
                io::copy(backup, &mut io::sink())
                    .map_err(|e| EngineError::from_object_io(&index.display(), e))?;
                return Ok(());
            }
            offset += n as u64;
        }
    }
}

impl TreeSink for CompareSink {
    fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    fn entry(&mut self, index: &Index, meta: &FileMeta, content: Content<'_>) -> Result<()> {
        self.drain_source_before(Some(index));
        self.compared += 1;
        let src = match self.source.peek() {
            Some(s) if s.index == *index => self.source.next().expect("peeked"),
            _ => {
                self.diff(index, "in the backup, missing from the directory");
                if let Content::Scratch(p) = content {
                    let _ = std::fs::remove_file(p);
                }
                return Ok(());
            }
        };
        self.compare_meta(index, meta, &src);
        if meta.kind == FileKind::Regular && src.meta.kind == FileKind::Regular {
            match content {
                Content::Stream(r) => self.compare_data(index, r, &src.path)?,
                Content::Scratch(p) => {
                    let mut f = File::open(&p).map_err(|e| EngineError::io(&p, e))?;
                    let r = self.compare_data(index, &mut f, &src.path);
                    let _ = std::fs::remove_file(&p);
                    r?;
                }
                Content::None => {}
            }
        } else if let Content::Scratch(p) = content {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

/// How `backup`'s metadata differs from `found` (owners only with `owners`).
fn meta_differences(
    backup: &FileMeta,
    found: &FileMeta,
    owners: Option<&mut Owners>,
    out: &mut Vec<String>,
) {
    if backup.kind != found.kind {
        out.push(format!(
            "type differs: backup {:?}, directory {:?}",
            backup.kind, found.kind
        ));
        return;
    }
    match backup.kind {
        FileKind::Symlink => {
            if backup.link_target != found.link_target {
                out.push(format!(
                    "symlink target differs: backup {:?}, directory {:?}",
                    String::from_utf8_lossy(&backup.link_target),
                    String::from_utf8_lossy(&found.link_target)
                ));
            }
            return;
        }
        FileKind::CharDevice | FileKind::BlockDevice
            if (backup.devmajor, backup.devminor) != (found.devmajor, found.devminor) =>
        {
            out.push("device numbers differ".into());
        }
        _ => {}
    }
    if backup.perms != found.perms {
        out.push(format!(
            "mode differs: backup {:o}, directory {:o}",
            backup.perms, found.perms
        ));
    }
    if let Some(owners) = owners {
        let uid = owners.local_uid(&backup.uname, backup.uid);
        let gid = owners.local_gid(&backup.gname, backup.gid);
        if (uid, gid) != (found.uid, found.gid) {
            out.push(format!(
                "owner differs: backup {uid}:{gid}, directory {}:{}",
                found.uid, found.gid
            ));
        }
    }
    if backup.mtime.max(0) != found.mtime.max(0) {
        out.push(format!(
            "mtime differs: backup {}, directory {}",
            backup.mtime, found.mtime
        ));
    }
}

/// A restored tree checked against the backup's signature files.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreCheck {
    /// Paths of the backup compared with the restored tree.
    pub checked: u64,
    /// Regular files whose data was hashed against their librsync signature.
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Every difference found (the list keeps the first `MAX_LISTED`).
    pub mismatches: u64,
    pub differences: Vec<Difference>,
    /// Why the tree could not be checked at all (a set without a signature file, as a
    /// hand-made or damaged archive may be): the restore stands, but is not verified.
    pub unverifiable: Option<String>,
    /// Time the check took.
    pub millis: u64,
}

impl RestoreCheck {
    const MAX_LISTED: usize = 1000;

    /// The check ran and found the tree equal to the backup.
    pub fn verified(&self) -> bool {
        self.mismatches == 0 && self.unverifiable.is_none()
    }

    /// A check that could not run because the backup holds nothing to check against.
    pub fn unverifiable(reason: String) -> Self {
        RestoreCheck {
            unverifiable: Some(reason),
            ..Default::default()
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        if let Some(reason) = &self.unverifiable {
            format!("Not verified: {reason}.")
        } else if self.verified() {
            format!(
                "Verified: {} path(s) match the backup's signatures ({} file(s), {} bytes hashed).",
                self.checked, self.files_hashed, self.bytes_hashed
            )
        } else {
            format!(
                "NOT verified: {} difference(s) from the backup's signatures among {} path(s).",
                self.mismatches, self.checked
            )
        }
    }

    fn differ(&mut self, index: &Index, what: String) {
        self.mismatches += 1;
        if self.differences.len() < Self::MAX_LISTED {
            self.differences.push(Difference {
                path: index.display(),
                what,
            });
        }
    }
}

/// Checks a restored tree against the signature files of the sets it came from: every
/// path of the backup under `prefix` must be at `restored` (re-rooted) with its type,
/// mode, mtime, symlink target, owner (with `check_owner`) and, for regular files, data
/// whose librsync signature equals the stored one (MD4 per block). The signatures are
/// stored apart from the volumes the data came from, so this checks the whole restore
/// path end to end. Paths in `restored` that the backup lacks are not differences (a
/// forced restore into a directory that held other files).
pub fn check_restored(
    ctx: &Context,
    sets: &[&BackupSet],
    prefix: &Index,
    restored: &Path,
    keys: &DecryptionKeys,
    check_owner: bool,
) -> Result<RestoreCheck> {
    let started = std::time::Instant::now();
    let cache = super::cache::ArchiveCache::open(&ctx.state_dir, ctx.store.label()).ok();
    if let Some(unsigned) = sets.iter().find(|s| {
        s.signatures.is_none()
            && !cache
                .as_ref()
                .is_some_and(|c| c.sigtar_path(s.times).exists())
    }) {
        return Ok(RestoreCheck::unverifiable(format!(
            "the {} set has no signature file to check the restored tree against",
            unsigned.times
        )));
    }
    let sources = signature_sources(ctx, sets.iter().copied(), keys)?;
    let mut state = SignatureState::open(sources)?;
    let mut found = Walker::new(restored.to_path_buf(), Selection::default(), vec![]).peekable();
    let mut owners = Owners::default();
    let mut check = RestoreCheck::default();
    ctx.progress.start("verify", None);
    // Files are hashed by a few threads (reading back and MD4 are most of the check);
    // the walk, the metadata comparison and the reporting, in backup order, stay here.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let (job_tx, job_rx) = sync_channel::<HashJob>(threads * 2);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel::<HashDone>();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..threads {
            let job_rx = &job_rx;
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let Ok(Ok(job)) = job_rx.lock().map(|rx| rx.recv()) else {
                        return;
                    };
                    let result = signature_of_file(&job.path, &job.stored, &mut buf)
                        .map(|(sig, n)| (sig == job.stored, n));
                    if done_tx.send((job.seq, job.index, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut order = InOrder::default();
        let mut seq = 0u64;
        let result = (|| -> Result<()> {
            while let Some(entry) = state.next_entry()? {
                let Some(index) = entry.index.strip_prefix(prefix) else {
                    continue;
                };
                check.checked += 1;
                while found.peek().is_some_and(|f| f.index < index) {
                    found.next();
                }
                let mut whats = Vec::new();
                let Some(f) = found.next_if(|f| f.index == index) else {
                    whats.push("in the backup, missing from the restored tree".to_string());
                    order.ready(seq, index, whats, &mut check);
                    seq += 1;
                    continue;
                };
                meta_differences(
                    &entry.meta,
                    &f.meta,
                    check_owner.then_some(&mut owners),
                    &mut whats,
                );
                if whats.is_empty()
                    && f.meta.kind == FileKind::Regular
                    && let Some(stored) = entry.signature
                {
                    order.pending.insert(seq);
                    let job = HashJob {
                        seq,
                        index,
                        path: f.path,
                        stored,
                    };
                    if job_tx.send(job).is_err() {
                        return Err(EngineError::io(
                            restored,
                            io::Error::other("the verify threads stopped"),
                        ));
                    }
                    // Take in what is done (waiting only while many files are queued).
                    while order.pending.len() > threads * 4 {
                        let done = done_rx.recv().expect("a job is pending");
                        order.hashed(done, &mut check, &*ctx.progress);
                    }
                    while let Ok(done) = done_rx.try_recv() {
                        order.hashed(done, &mut check, &*ctx.progress);
                    }
                    if ctx.progress.cancelled() {
                        return Err(EngineError::Interrupted);
                    }
                } else {
                    order.ready(seq, index, whats, &mut check);
                }
                seq += 1;
            }
            Ok(())
        })();
        drop(job_tx);
        while !order.pending.is_empty() {
            let Ok(done) = done_rx.recv() else { break };
            order.hashed(done, &mut check, &*ctx.progress);
        }
        result
    })?;
    ctx.progress.finish();
    check.millis = started.elapsed().as_millis() as u64;
    Ok(check)
}

/// A restored file to hash: its place in the backup's order, and the stored signature.
struct HashJob {
    seq: u64,
    index: Index,
    path: PathBuf,
    stored: Vec<u8>,
}

/// A hashed file: whether its signature matched, and its size (or why it was unreadable).
type HashDone = (u64, Index, io::Result<(bool, u64)>);

/// Reports differences in backup order although files are hashed out of order: the
/// differences of entries after one still being hashed wait here.
#[derive(Default)]
struct InOrder {
    /// Entries handed to the hashing threads and not back yet.
    pending: std::collections::BTreeSet<u64>,
    /// Entries with differences waiting for an earlier pending entry.
    waiting: std::collections::BTreeMap<u64, (Index, Vec<String>)>,
}

impl InOrder {
    fn ready(&mut self, seq: u64, index: Index, whats: Vec<String>, check: &mut RestoreCheck) {
        if whats.is_empty() {
            return;
        }
        if self.pending.first().is_some_and(|&p| p < seq) {
            self.waiting.insert(seq, (index, whats));
        } else {
            for what in whats {
                check.differ(&index, what);
            }
        }
    }

    fn hashed(&mut self, done: HashDone, check: &mut RestoreCheck, progress: &dyn Progress) {
        let (seq, index, result) = done;
        self.pending.remove(&seq);
        let whats = match result {
            Ok((matched, n)) => {
                check.files_hashed += 1;
                check.bytes_hashed += n;
                progress.bytes(n);
                progress.file();
                if matched {
                    Vec::new()
                } else {
                    vec!["data differs from the backup's signature".to_string()]
                }
            }
            Err(e) => vec![format!("cannot read the restored file: {e}")],
        };
        if !whats.is_empty() {
            self.waiting.insert(seq, (index, whats));
        }
        // Everything before the oldest pending entry can be reported now.
        let limit = self.pending.first().copied().unwrap_or(u64::MAX);
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let (index, whats) = entry.remove();
            for what in whats {
                check.differ(&index, what);
            }
        }
    }
}

/// The librsync signature of `path` with the block length of `stored`, and its size.
fn signature_of_file(path: &Path, stored: &[u8], buf: &mut [u8]) -> io::Result<(Vec<u8>, u64)> {
    let block_len = stored
        .get(4..8)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .filter(|&b| b > 0)
        .unwrap_or_else(|| block_len_for(0));
    let mut f = File::open(path)?;
    let mut sig = SignatureBuilder::new(block_len);
    let mut total = 0u64;
    loop {
        let n = read_full(&mut f, buf)?;
        if n == 0 {
            break;
        }
        sig.update(&buf[..n]);
        total += n as u64;
    }
    Ok((sig.finish(), total))
}

/// Compares the backup at `time` (restricted to `path`) with `directory`.
pub fn verify(
    ctx: &Context,
    time: i64,
    path: &Index,
    directory: &Path,
    keys: &DecryptionKeys,
) -> Result<VerifyReport> {
    let root = std::fs::canonicalize(directory).map_err(|e| EngineError::io(directory, e))?;
    let plan = plan(ctx, time, keys)?;
    let scratch = tempfile::Builder::new()
        .prefix("flotilla-verify-")
        .tempdir_in(&ctx.state_dir)
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| EngineError::io(&ctx.state_dir, e))?;
    ctx.progress.start("verify", None);
    let mut sink = CompareSink {
        source: Walker::new(root, Selection::default(), vec![]).peekable(),
        scratch: scratch.path().to_path_buf(),
        owners: Owners::default(),
        differences: Vec::new(),
        compared: 0,
        buf_a: Vec::new(),
        buf_b: Vec::new(),
    };
    let stats = reconstruct(ctx, &plan, path, keys, &mut sink)?;
    sink.drain_source_before(None);
    ctx.progress.finish();
    Ok(VerifyReport {
        time: plan.time,
        compared: sink.compared,
        differences: sink.differences,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::super::progress::NoProgress;
    use super::*;

    fn ix(p: &str) -> Index {
        Index::parse(p.as_bytes()).unwrap()
    }

    /// Files hashed out of order still have their differences reported in backup order.
    #[test]
    fn differences_are_reported_in_backup_order() {
        let mut check = RestoreCheck::default();
        let mut order = InOrder::default();
        let p = NoProgress;
        order.pending.insert(0); // a: being hashed
        order.pending.insert(1); // b: being hashed
        order.ready(2, ix("c"), vec!["mode differs".into()], &mut check);
        order.pending.insert(3); // d: being hashed
        assert_eq!(check.mismatches, 0, "c waits for a and b");
        order.hashed((3, ix("d"), Ok((false, 10))), &mut check, &p);
        order.hashed((1, ix("b"), Ok((true, 20))), &mut check, &p);
        assert_eq!(check.mismatches, 0, "everything waits for a");
        order.hashed((0, ix("a"), Err(io::Error::other("gone"))), &mut check, &p);
        let got: Vec<(String, String)> = check
            .differences
            .iter()
            .map(|d| (d.path.clone(), d.what.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), "cannot read the restored file: gone".into()),
                ("c".into(), "mode differs".into()),
                (
                    "d".into(),
                    "data differs from the backup's signature".into()
                ),
            ]
        );
        assert_eq!((check.files_hashed, check.bytes_hashed), (2, 30));
        assert!(order.pending.is_empty() && order.waiting.is_empty());
    }
}
