//! `verify`: reconstructs the backup at a time (downloading, hash-checking and
//! decrypting every volume) and compares it with a directory, like
//! `duplicity verify --compare-data`: existence and type; permission bits, owner and
//! integer mtime (not for symlinks); file data; symlink targets; device numbers.

use super::Context;
use super::error::{EngineError, Result};
use super::inspect::signature_sources;
use super::owners::Owners;
use super::restore::{Content, TreeSink, TreeStats, plan, reconstruct};
use super::select::Selection;
use super::sigstate::SignatureState;
use super::walk::{SourceEntry, Walker};
use super::writeout::DataChecked;
use flotilla_common::archive::tarfmt::read_full;
use flotilla_common::archive::{BackupSet, FileKind, FileMeta, Index};
use flotilla_common::crypto::DecryptionKeys;
use serde::Serialize;
use std::fs::File;
use std::io::{self, Read};
use std::iter::Peekable;
use std::path::{Path, PathBuf};

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
    /// Regular files whose data was hashed against their librsync signature (as it was
    /// written).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Every difference found (the list keeps the first `MAX_LISTED`).
    pub mismatches: u64,
    pub differences: Vec<Difference>,
    /// Why the tree could not be checked at all (a set without a signature file, as a
    /// hand-made or damaged archive may be): the restore stands, but is not verified.
    pub unverifiable: Option<String>,
    /// Time the check of the restored tree took after the restore (its metadata; the
    /// data is checked during the restore).
    pub millis: u64,
}

impl RestoreCheck {
    pub(crate) const MAX_LISTED: usize = 1000;

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

/// The signature state of the sets a restore comes from, for checking the restore, or
/// why it cannot be checked (a set without a signature file, as a hand-made or damaged
/// archive may be: the restore stands, but is not verified).
pub(crate) fn restore_signatures(
    ctx: &Context,
    sets: &[&BackupSet],
    keys: &DecryptionKeys,
) -> Result<std::result::Result<SignatureState, String>> {
    match signature_sources(ctx, sets.iter().copied(), keys) {
        Ok(sources) => Ok(Ok(SignatureState::open(sources)?)),
        // A set without a signature file, in the store or the local cache.
        Err(EngineError::NoBackup(why)) => {
            Ok(Err(format!("{why} to check the restored tree against")))
        }
        Err(e) => Err(e),
    }
}

/// Finishes the check of a restore against the signature files of the sets it came from
/// (`state`). The data was checked while it was written (`data`: every regular file's
/// bytes hashed against its librsync signature, MD4 per block; see `writeout`); this
/// walks the restored tree at `restored` and checks that every path of the backup under
/// `prefix` is there (re-rooted) with its type, mode, mtime, symlink target and owner
/// (with `check_owner`). The signatures are stored apart from the volumes the data came
/// from, so this checks the whole restore path end to end. Paths in `restored` that the
/// backup lacks are not differences (a forced restore into a directory that held other
/// files).
pub(crate) fn check_restored(
    ctx: &Context,
    state: SignatureState,
    prefix: &Index,
    restored: &Path,
    check_owner: bool,
    data: DataChecked,
) -> Result<RestoreCheck> {
    let started = std::time::Instant::now();
    // The signature files and the tree are read on threads of their own; this one compares.
    let mut state = state.metadata_only().ahead();
    let mut found = Walker::new(restored.to_path_buf(), Selection::default(), vec![])
        .ahead()
        .peekable();
    let mut owners = Owners::default();
    let mut check = RestoreCheck {
        files_hashed: data.files,
        bytes_hashed: data.bytes,
        ..Default::default()
    };
    // Data differences go into the report in backup order with the others.
    let unlisted = data.mismatches.saturating_sub(data.listed.len() as u64);
    let mut data_differences = data.listed;
    data_differences.sort_by(|a, b| b.0.cmp(&a.0));
    let mut report_data_until = |check: &mut RestoreCheck, index: Option<&Index>| {
        while data_differences
            .last()
            .is_some_and(|(i, _)| index.is_none_or(|index| i <= index))
        {
            let (i, what) = data_differences.pop().expect("non-empty");
            check.differ(&i, what);
        }
    };
    ctx.progress.start("verify", None);
    while let Some(entry) = state.next_entry()? {
        let Some(index) = entry.index.strip_prefix(prefix) else {
            continue;
        };
        report_data_until(&mut check, Some(&index));
        check.checked += 1;
        ctx.progress.file();
        if ctx.progress.cancelled() {
            return Err(EngineError::Interrupted);
        }
        while found.peek().is_some_and(|f| f.index < index) {
            found.next();
        }
        let Some(f) = found.next_if(|f| f.index == index) else {
            check.differ(
                &index,
                "in the backup, missing from the restored tree".to_string(),
            );
            continue;
        };
        let mut whats = Vec::new();
        meta_differences(
            &entry.meta,
            &f.meta,
            check_owner.then_some(&mut owners),
            &mut whats,
        );
        for what in whats {
            check.differ(&index, what);
        }
    }
    report_data_until(&mut check, None);
    check.mismatches += unlisted;
    ctx.progress.finish();
    check.millis = started.elapsed().as_millis() as u64;
    Ok(check)
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
