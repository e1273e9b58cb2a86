//! `verify`: reconstructs the backup at a time (downloading, hash-checking and
//! decrypting every volume) and compares it with a directory, like
//! `duplicity verify --compare-data`: existence and type; permission bits, owner and
//! integer mtime (not for symlinks); file data; symlink targets; device numbers.

use super::Context;
use super::error::{EngineError, Result};
use super::owners::Owners;
use super::restore::{Content, TreeSink, TreeStats, plan, reconstruct};
use super::select::Selection;
use super::walk::{SourceEntry, Walker};
use flotilla_common::archive::tarfmt::read_full;
use flotilla_common::archive::{FileKind, FileMeta, Index};
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
        if backup.kind != src.meta.kind {
            self.diff(
                index,
                format!(
                    "type differs: backup {:?}, directory {:?}",
                    backup.kind, src.meta.kind
                ),
            );
            return;
        }
        match backup.kind {
            FileKind::Symlink => {
                if backup.link_target != src.meta.link_target {
                    self.diff(
                        index,
                        format!(
                            "symlink target differs: backup {:?}, directory {:?}",
                            String::from_utf8_lossy(&backup.link_target),
                            String::from_utf8_lossy(&src.meta.link_target)
                        ),
                    );
                }
                return;
            }
            FileKind::CharDevice | FileKind::BlockDevice
                if (backup.devmajor, backup.devminor) != (src.meta.devmajor, src.meta.devminor) =>
            {
                self.diff(index, "device numbers differ");
            }
            _ => {}
        }
        if backup.perms != src.meta.perms {
            self.diff(
                index,
                format!(
                    "mode differs: backup {:o}, directory {:o}",
                    backup.perms, src.meta.perms
                ),
            );
        }
        let uid = self.owners.local_uid(&backup.uname, backup.uid);
        let gid = self.owners.local_gid(&backup.gname, backup.gid);
        if (uid, gid) != (src.meta.uid, src.meta.gid) {
            self.diff(
                index,
                format!(
                    "owner differs: backup {uid}:{gid}, directory {}:{}",
                    src.meta.uid, src.meta.gid
                ),
            );
        }
        if backup.mtime.max(0) != src.meta.mtime.max(0) {
            self.diff(
                index,
                format!(
                    "mtime differs: backup {}, directory {}",
                    backup.mtime, src.meta.mtime
                ),
            );
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
