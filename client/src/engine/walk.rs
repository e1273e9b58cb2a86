//! Walks the source tree in duplicity's order (depth-first, each directory sorted
//! bytewise; duplicity-format.md §2), applying the selection.
//!
//! Memory: one sorted name list per directory on the current path, never the whole tree.

use super::ahead::Ahead;
use super::owners::Owners;
use super::select::Selection;
use flotilla_common::archive::{FileKind, FileMeta, Index};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A path of the source tree with its metadata.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    pub index: Index,
    pub path: PathBuf,
    pub meta: FileMeta,
    /// Size in bytes for regular files (at the time of the walk).
    pub size: u64,
}

struct DirFrame {
    index: Index,
    path: PathBuf,
    names: Vec<Vec<u8>>,
    pos: usize,
}

/// Iterator over the selected paths of a tree, root first.
pub struct Walker {
    root: PathBuf,
    selection: Selection,
    skip: Vec<PathBuf>,
    owners: Owners,
    stack: Vec<DirFrame>,
    root_pending: bool,
    /// Problems met (unreadable directories, vanished files), for the summary.
    pub warnings: Vec<String>,
}

/// A [`Walker`] running on a thread of its own (see [`Ahead`]): the `lstat`s and directory
/// reads (kernel time, a good part of a walk) overlap the reader's work.
pub struct WalkAhead(Ahead<SourceEntry, Walker>);

impl Walker {
    /// Runs the walk on a thread of its own (see [`WalkAhead`]).
    pub fn ahead(self) -> WalkAhead {
        WalkAhead(Ahead::spawn("walk", self, |walker| walker.next()))
    }
}

impl Iterator for WalkAhead {
    type Item = SourceEntry;

    fn next(&mut self) -> Option<SourceEntry> {
        self.0.next_item()
    }
}

impl WalkAhead {
    /// The problems the walk met (see [`Walker::warnings`]); waits for the walk to end.
    pub fn finish(self) -> Vec<String> {
        self.0.finish().warnings
    }
}

/// Builds the stored metadata of a path from `lstat`.
pub fn meta_of(path: &Path, md: &Metadata, owners: &mut Owners) -> Option<FileMeta> {
    let ft = md.file_type();
    let kind = if ft.is_file() {
        FileKind::Regular
    } else if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else {
        return None; // sockets are not stored
    };
    let link_target = if kind == FileKind::Symlink {
        std::fs::read_link(path).ok()?.into_os_string().into_vec()
    } else {
        Vec::new()
    };
    let rdev = md.rdev();
    let (devmajor, devminor) = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
        (libc::major(rdev), libc::minor(rdev))
    } else {
        (0, 0)
    };
    let uid = u64::from(md.uid());
    let gid = u64::from(md.gid());
    Some(FileMeta {
        kind,
        perms: md.mode() & 0o7777,
        uid,
        gid,
        uname: owners.user_name(uid),
        gname: owners.group_name(gid),
        mtime: md.mtime(),
        link_target,
        devmajor,
        devminor,
    })
}

impl Walker {
    /// `root` must be an absolute, canonical directory. Paths in `skip` (e.g. the local
    /// store or the state directory when they lie inside the source) are left out.
    pub fn new(root: PathBuf, selection: Selection, skip: Vec<PathBuf>) -> Self {
        Walker {
            root,
            selection,
            skip,
            owners: Owners::default(),
            stack: Vec::new(),
            root_pending: true,
            warnings: Vec::new(),
        }
    }

    fn read_names(&mut self, path: &Path) -> Vec<Vec<u8>> {
        match std::fs::read_dir(path) {
            Ok(rd) => {
                let mut names = Vec::new();
                for e in rd {
                    match e {
                        Ok(e) => names.push(e.file_name().into_vec()),
                        Err(e) => {
                            self.warn(format!("{}: error listing directory: {e}", path.display()));
                            break;
                        }
                    }
                }
                names.sort_unstable();
                names
            }
            Err(e) => {
                self.warn(format!("{}: cannot list directory: {e}", path.display()));
                Vec::new()
            }
        }
    }

    fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.warnings.push(msg);
    }

    pub fn owners(&mut self) -> &mut Owners {
        &mut self.owners
    }
}

impl Iterator for Walker {
    type Item = SourceEntry;

    fn next(&mut self) -> Option<SourceEntry> {
        if self.root_pending {
            self.root_pending = false;
            let root = self.root.clone();
            let md = match std::fs::symlink_metadata(&root) {
                Ok(md) => md,
                Err(e) => {
                    self.warn(format!("{}: {e}", root.display()));
                    return None;
                }
            };
            let meta = meta_of(&root, &md, &mut self.owners)?;
            // A root that is not a directory (a restored single file) is the only entry.
            if meta.kind == FileKind::Directory {
                let names = self.read_names(&root);
                self.stack.push(DirFrame {
                    index: Index::root(),
                    path: root.clone(),
                    names,
                    pos: 0,
                });
            }
            let size = if meta.kind == FileKind::Regular {
                md.len()
            } else {
                0
            };
            return Some(SourceEntry {
                index: Index::root(),
                path: root,
                meta,
                size,
            });
        }
        loop {
            let frame = self.stack.last_mut()?;
            if frame.pos >= frame.names.len() {
                self.stack.pop();
                continue;
            }
            let name = std::mem::take(&mut frame.names[frame.pos]);
            frame.pos += 1;
            let path = frame.path.join(OsStr::from_bytes(&name));
            let index = frame.index.join(&name);
            if self.skip.iter().any(|s| s == &path) {
                continue;
            }
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        self.warn(format!("{}: {e}", path.display()));
                    }
                    continue;
                }
            };
            let is_dir = md.is_dir();
            if !self.selection.is_empty() && !self.selection.includes(&path, is_dir) {
                continue;
            }
            let Some(meta) = meta_of(&path, &md, &mut self.owners) else {
                if md.file_type().is_socket() {
                    tracing::debug!("skipping socket {}", path.display());
                } else {
                    self.warn(format!("{}: cannot read symlink target", path.display()));
                }
                continue;
            };
            if is_dir {
                let names = self.read_names(&path);
                self.stack.push(DirFrame {
                    index: index.clone(),
                    path: path.clone(),
                    names,
                    pos: 0,
                });
            }
            let size = if meta.kind == FileKind::Regular {
                md.len()
            } else {
                0
            };
            return Some(SourceEntry {
                index,
                path,
                meta,
                size,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::select::Rule;

    /// The walk on its own thread yields what the walk does, in order, across many
    /// hand-offs; stopping early and finishing does not wait for the rest of the tree.
    #[test]
    fn walk_ahead_yields_the_walk_and_can_stop_early() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..300 {
            let dir = d.path().join(format!("d{}", i % 7));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{i:03}")), "x").unwrap();
        }
        let root = std::fs::canonicalize(d.path()).unwrap();
        let walk = || Walker::new(root.clone(), Selection::default(), vec![]);
        let direct: Vec<String> = walk().map(|e| e.index.display()).collect();
        let mut ahead = walk().ahead();
        let got: Vec<String> = ahead.by_ref().map(|e| e.index.display()).collect();
        assert_eq!(got.len(), 308);
        assert_eq!(got, direct);
        assert!(ahead.finish().is_empty());
        let mut early = walk().ahead();
        assert_eq!(
            early.next().map(|e| e.index.display()).as_deref(),
            Some(".")
        );
        assert!(early.finish().is_empty());
    }

    #[test]
    fn walks_in_duplicity_order_and_selects() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("a")).unwrap();
        std::fs::write(r.join("a/b"), "x").unwrap();
        std::fs::write(r.join("a-b"), "x").unwrap();
        std::fs::write(r.join("a.txt"), "x").unwrap();
        std::fs::create_dir(r.join("skip")).unwrap();
        std::fs::write(r.join("skip/f"), "x").unwrap();
        std::os::unix::fs::symlink("a.txt", r.join("link")).unwrap();
        let root = std::fs::canonicalize(r).unwrap();
        let sel = Selection::new(&[(Rule::Exclude, "skip".into())], &root).unwrap();
        let got: Vec<(String, FileKind)> = Walker::new(root, sel, vec![])
            .map(|e| (e.index.display(), e.meta.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                (".".into(), FileKind::Directory),
                ("a".into(), FileKind::Directory),
                ("a/b".into(), FileKind::Regular),
                ("a-b".into(), FileKind::Regular),
                ("a.txt".into(), FileKind::Regular),
                ("link".into(), FileKind::Symlink),
            ]
        );
    }
}
