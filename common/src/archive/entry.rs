//! Entries of difftar volumes and sigtar signature files (duplicity-format.md §3.1, §4.1):
//! what an entry name means, and the metadata a header carries.

use super::index::{Index, IndexError};
use super::tarfmt::{self, TarHeader};

/// The type of a path in the tree (sockets are never stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    pub fn typeflag(self) -> u8 {
        match self {
            FileKind::Regular => tarfmt::TYPE_REGULAR,
            FileKind::Directory => tarfmt::TYPE_DIR,
            FileKind::Symlink => tarfmt::TYPE_SYMLINK,
            FileKind::Fifo => tarfmt::TYPE_FIFO,
            FileKind::CharDevice => tarfmt::TYPE_CHAR,
            FileKind::BlockDevice => tarfmt::TYPE_BLOCK,
        }
    }

    pub fn from_typeflag(t: u8) -> Option<FileKind> {
        Some(match t {
            tarfmt::TYPE_REGULAR | 0 | b'7' => FileKind::Regular,
            tarfmt::TYPE_DIR => FileKind::Directory,
            tarfmt::TYPE_SYMLINK => FileKind::Symlink,
            tarfmt::TYPE_FIFO => FileKind::Fifo,
            tarfmt::TYPE_CHAR => FileKind::CharDevice,
            tarfmt::TYPE_BLOCK => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// One letter, as `ls -l` shows it.
    pub fn letter(self) -> char {
        match self {
            FileKind::Regular => '-',
            FileKind::Directory => 'd',
            FileKind::Symlink => 'l',
            FileKind::Fifo => 'p',
            FileKind::CharDevice => 'c',
            FileKind::BlockDevice => 'b',
        }
    }
}

/// The metadata duplicity stores for a path (§3.3): no atime/ctime, no xattrs, integer
/// mtime, permission bits only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub kind: FileKind,
    /// `st_mode & 0o7777`.
    pub perms: u32,
    pub uid: u64,
    pub gid: u64,
    /// User name on the backup host (empty when unknown).
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Whole seconds; negative times are stored as 0.
    pub mtime: i64,
    /// Symlink target.
    pub link_target: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

impl FileMeta {
    /// Builds the tar header for entry `name` carrying this metadata (size 0; the writer
    /// sets it). Symlinks are stored with mode 0777, as Python's tarfile reads them.
    pub fn to_header(&self, name: Vec<u8>) -> TarHeader {
        TarHeader {
            name,
            typeflag: self.kind.typeflag(),
            mode: self.perms & 0o7777,
            uid: self.uid,
            gid: self.gid,
            size: 0,
            mtime: self.mtime.max(0),
            linkname: if self.kind == FileKind::Symlink {
                self.link_target.clone()
            } else {
                Vec::new()
            },
            uname: self.uname.clone(),
            gname: self.gname.clone(),
            devmajor: self.devmajor,
            devminor: self.devminor,
        }
    }

    pub fn from_header(h: &TarHeader) -> Option<FileMeta> {
        Some(FileMeta {
            kind: FileKind::from_typeflag(h.typeflag)?,
            perms: h.mode & 0o7777,
            uid: h.uid,
            gid: h.gid,
            uname: h.uname.clone(),
            gname: h.gname.clone(),
            mtime: h.mtime,
            link_target: h.linkname.clone(),
            devmajor: h.devmajor,
            devminor: h.devminor,
        })
    }

    /// duplicity 0.8.22's "unchanged" test (§3.2), given the previous metadata with its
    /// owner already mapped to local ids. Size and ctime are not compared.
    pub fn same_as(&self, old: &FileMeta) -> bool {
        if self.kind != old.kind {
            return false;
        }
        match self.kind {
            FileKind::Symlink => self.link_target == old.link_target,
            FileKind::CharDevice | FileKind::BlockDevice => {
                self.perms == old.perms
                    && self.uid == old.uid
                    && self.gid == old.gid
                    && self.devmajor == old.devmajor
                    && self.devminor == old.devminor
            }
            _ => {
                self.perms == old.perms
                    && self.uid == old.uid
                    && self.gid == old.gid
                    && self.mtime == old.mtime
            }
        }
    }
}

/// What an entry of a difftar or sigtar says about its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Full copy (file data, or the metadata of other types).
    Snapshot,
    /// librsync delta against the previous version.
    Diff,
    /// The path no longer exists.
    Deleted,
    /// librsync signature (sigtars only).
    Signature,
}

impl EntryKind {
    pub fn prefix(self) -> &'static str {
        match self {
            EntryKind::Snapshot => "snapshot",
            EntryKind::Diff => "diff",
            EntryKind::Deleted => "deleted",
            EntryKind::Signature => "signature",
        }
    }
}

/// A parsed entry name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryName {
    pub kind: EntryKind,
    pub index: Index,
    /// `Some(k)` for `multivol_*/<path>/<k>` pieces.
    pub piece: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryNameError {
    #[error(
        "unrecognized entry {0:?} (expected snapshot/, diff/, deleted/, signature/ or multivol_*/)"
    )]
    Unrecognized(String),
    #[error("entry {0:?} has an absolute path")]
    Absolute(String),
    #[error("entry {name:?}: {source}")]
    BadPath { name: String, source: IndexError },
}

impl EntryName {
    /// Parses a tar entry name (§3.1). Refuses `..` components and absolute paths.
    pub fn parse(name: &[u8]) -> Result<EntryName, EntryNameError> {
        let lossy = || String::from_utf8_lossy(name).into_owned();
        let (kind, multivol, rest) = if let Some(r) = name.strip_prefix(b"multivol_snapshot/") {
            (EntryKind::Snapshot, true, r)
        } else if let Some(r) = name.strip_prefix(b"multivol_diff/") {
            (EntryKind::Diff, true, r)
        } else if let Some(r) = name.strip_prefix(b"snapshot/") {
            (EntryKind::Snapshot, false, r)
        } else if let Some(r) = name.strip_prefix(b"diff/") {
            (EntryKind::Diff, false, r)
        } else if let Some(r) = name.strip_prefix(b"deleted/") {
            (EntryKind::Deleted, false, r)
        } else if let Some(r) = name.strip_prefix(b"signature/") {
            (EntryKind::Signature, false, r)
        } else if name == b"snapshot" {
            (EntryKind::Snapshot, false, &b""[..])
        } else {
            return Err(EntryNameError::Unrecognized(lossy()));
        };
        let (path, piece) = if multivol {
            let trimmed = rest.strip_suffix(b"/").unwrap_or(rest);
            let slash = trimmed
                .iter()
                .rposition(|&b| b == b'/')
                .ok_or_else(|| EntryNameError::Unrecognized(lossy()))?;
            let digits = &trimmed[slash + 1..];
            let k = std::str::from_utf8(digits)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| EntryNameError::Unrecognized(lossy()))?;
            (&trimmed[..slash], Some(k))
        } else {
            (rest, None)
        };
        if path.starts_with(b"/") {
            return Err(EntryNameError::Absolute(lossy()));
        }
        let index = Index::parse(path).map_err(|source| EntryNameError::BadPath {
            name: lossy(),
            source,
        })?;
        Ok(EntryName { kind, index, piece })
    }

    /// The tar name for an entry of a difftar volume. Directories get a trailing `/`;
    /// the root is `snapshot/./` in volumes.
    pub fn volume_name(
        kind: EntryKind,
        index: &Index,
        file_kind: Option<FileKind>,
        piece: Option<u64>,
    ) -> Vec<u8> {
        let mut n = Vec::with_capacity(index.as_bytes().len() + 24);
        if piece.is_some() {
            n.extend_from_slice(b"multivol_");
        }
        n.extend_from_slice(kind.prefix().as_bytes());
        n.push(b'/');
        if index.is_root() {
            n.push(b'.');
        } else {
            n.extend_from_slice(index.as_bytes());
        }
        if let Some(k) = piece {
            n.push(b'/');
            n.extend_from_slice(k.to_string().as_bytes());
        } else if file_kind == Some(FileKind::Directory) {
            n.push(b'/');
        }
        n
    }

    /// The tar name for an entry of a sigtar: like volumes, except that the root is
    /// `snapshot/`.
    pub fn sigtar_name(kind: EntryKind, index: &Index, file_kind: Option<FileKind>) -> Vec<u8> {
        if index.is_root() {
            let mut n = kind.prefix().as_bytes().to_vec();
            n.push(b'/');
            return n;
        }
        Self::volume_name(kind, index, file_kind, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(s: &str) -> Index {
        Index::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_entry_names() {
        let e = EntryName::parse(b"snapshot/./").unwrap();
        assert!(e.index.is_root() && e.kind == EntryKind::Snapshot);
        assert!(EntryName::parse(b"snapshot/").unwrap().index.is_root());
        let e = EntryName::parse(b"multivol_snapshot/big.bin/17").unwrap();
        assert_eq!((e.index, e.piece), (idx("big.bin"), Some(17)));
        let e = EntryName::parse(b"multivol_diff/a/b c/3").unwrap();
        assert_eq!(
            (e.kind, e.index, e.piece),
            (EntryKind::Diff, idx("a/b c"), Some(3))
        );
        let e = EntryName::parse(b"deleted/x/y").unwrap();
        assert_eq!((e.kind, e.index), (EntryKind::Deleted, idx("x/y")));
        assert!(matches!(
            EntryName::parse(b"snapshot/../etc/passwd"),
            Err(EntryNameError::BadPath { .. })
        ));
        assert!(matches!(
            EntryName::parse(b"snapshot//etc/passwd"),
            Err(EntryNameError::Absolute(_))
        ));
        assert!(matches!(
            EntryName::parse(b"/etc/passwd"),
            Err(EntryNameError::Unrecognized(_))
        ));
        assert!(matches!(
            EntryName::parse(b"multivol_snapshot/x/abc"),
            Err(EntryNameError::Unrecognized(_))
        ));
    }

    #[test]
    fn formats_entry_names() {
        let d = Some(FileKind::Directory);
        let f = Some(FileKind::Regular);
        assert_eq!(
            EntryName::volume_name(EntryKind::Snapshot, &Index::root(), d, None),
            b"snapshot/./"
        );
        assert_eq!(
            EntryName::sigtar_name(EntryKind::Snapshot, &Index::root(), d),
            b"snapshot/"
        );
        assert_eq!(
            EntryName::volume_name(EntryKind::Snapshot, &idx("a"), d, None),
            b"snapshot/a/"
        );
        assert_eq!(
            EntryName::volume_name(EntryKind::Diff, &idx("a/b"), f, Some(2)),
            b"multivol_diff/a/b/2"
        );
        assert_eq!(
            EntryName::sigtar_name(EntryKind::Signature, &idx("a/b"), f),
            b"signature/a/b"
        );
    }
}
