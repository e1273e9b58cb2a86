//! Capturing, comparing and building directory trees.
//!
//! [`TreeSnapshot::capture`] records what a restore is judged by (kind, permission
//! bits, owner, integer mtime, file size and SHA-256, symlink target, device number)
//! for every path under a root, without following symlinks and with paths kept as
//! raw bytes. [`compare`] lists the [`Difference`]s between two snapshots and
//! [`assert_trees_equal`] panics with all of them. [`TreeBuilder`] makes test trees.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The kind of a tree entry. Sockets are not recorded (duplicity drops them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

impl EntryKind {
    /// Short name, as in the fixture's `.list` files where they overlap
    /// (`dir`, `reg`, `sym`, `fifo`, `chr`, `blk`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::File => "reg",
            EntryKind::Symlink => "sym",
            EntryKind::Fifo => "fifo",
            EntryKind::CharDevice => "chr",
            EntryKind::BlockDevice => "blk",
        }
    }

    /// The kind of an `lstat` result; `None` for sockets.
    pub fn of(ft: fs::FileType) -> Option<EntryKind> {
        Some(if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else {
            return None;
        })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::Dir => "directory",
            EntryKind::File => "regular file",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::CharDevice => "char device",
            EntryKind::BlockDevice => "block device",
        })
    }
}

/// One path of a [`TreeSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits, `st_mode & 0o7777`.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, integer seconds (`st_mtime`).
    pub mtime: i64,
    /// File size in bytes; 0 for everything but regular files.
    pub size: u64,
    /// SHA-256 of the content, regular files only.
    pub sha256: Option<[u8; 32]>,
    /// Target bytes, symlinks only.
    pub link_target: Option<Vec<u8>>,
    /// Device number (`st_rdev`), devices only.
    pub rdev: Option<u64>,
}

impl Entry {
    /// The SHA-256 as lowercase hex, regular files only.
    pub fn sha256_hex(&self) -> Option<String> {
        self.sha256.map(|h| crate::hex(&h))
    }
}

/// Everything under a root, keyed by path relative to the root as raw bytes
/// (`.` for the root itself, `a/b` below it), in byte order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeSnapshot {
    /// All entries; the root is `b"."`.
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

/// The key of the root in [`TreeSnapshot::entries`].
pub const ROOT: &[u8] = b".";

impl TreeSnapshot {
    /// Walks `root` with `lstat` (symlinks are recorded, never followed; a symlink
    /// given as `root` is recorded as a symlink). Sockets are skipped.
    pub fn capture(root: &Path) -> io::Result<TreeSnapshot> {
        let mut snap = TreeSnapshot::default();
        let meta = fs::symlink_metadata(root).map_err(|e| with_path(e, root))?;
        snap.visit(root, ROOT.to_vec(), meta)?;
        Ok(snap)
    }

    fn visit(&mut self, full: &Path, rel: Vec<u8>, meta: fs::Metadata) -> io::Result<()> {
        let Some(kind) = EntryKind::of(meta.file_type()) else {
            return Ok(()); // socket
        };
        let mut entry = Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: 0,
            sha256: None,
            link_target: None,
            rdev: None,
        };
        match kind {
            EntryKind::File => {
                entry.size = meta.len();
                entry.sha256 = Some(sha256_file(full).map_err(|e| with_path(e, full))?);
            }
            EntryKind::Symlink => {
                let t = fs::read_link(full).map_err(|e| with_path(e, full))?;
                entry.link_target = Some(t.as_os_str().as_bytes().to_vec());
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => entry.rdev = Some(meta.rdev()),
            EntryKind::Dir | EntryKind::Fifo => {}
        }
        self.entries.insert(rel.clone(), entry);
        if kind == EntryKind::Dir {
            let mut children = Vec::new();
            for de in fs::read_dir(full).map_err(|e| with_path(e, full))? {
                let de = de.map_err(|e| with_path(e, full))?;
                children.push(de.file_name());
            }
            children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in children {
                let child = full.join(&name);
                let meta = fs::symlink_metadata(&child).map_err(|e| with_path(e, &child))?;
                let child_rel = if rel == ROOT {
                    name.as_bytes().to_vec()
                } else {
                    [&rel[..], b"/", name.as_bytes()].concat()
                };
                self.visit(&child, child_rel, meta)?;
            }
        }
        Ok(())
    }

    /// The entry at `path` (relative, `.` for the root).
    pub fn get(&self, path: impl AsRef<[u8]>) -> Option<&Entry> {
        self.entries.get(path.as_ref())
    }

    /// Number of entries, root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries (never true for a captured tree).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All paths, in byte order.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.keys().map(Vec::as_slice)
    }
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// SHA-256 of a file's content, streamed.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Shows a byte path readably: valid UTF-8 as is (control characters, `\` and `"`
/// escaped), other bytes as `\xNN`.
pub fn escape_path(path: &[u8]) -> String {
    let mut s = String::new();
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                c if c.is_control() => s.extend(c.escape_default()),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Options of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareOptions {
    /// Do not compare symlink mtimes (duplicity does not restore them). Default true.
    pub ignore_symlink_mtime: bool,
    /// Do not compare uid/gid. Default: true unless running as root (only root can
    /// restore ownership).
    pub ignore_owner: bool,
    /// Do not compare the mtime of the root directory. Default false.
    pub ignore_root_mtime: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            ignore_symlink_mtime: true,
            ignore_owner: !crate::is_root(),
            ignore_root_mtime: false,
        }
    }
}

/// What differs at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffKind {
    /// In the expected tree only. `below` counts the expected entries under it
    /// (not listed separately).
    Missing {
        /// Number of expected descendants, also missing.
        below: usize,
    },
    /// In the actual tree only. `below` counts its descendants (not listed).
    Unexpected {
        /// Number of actual descendants, also unexpected.
        below: usize,
    },
    /// Different kinds (nothing else is compared then).
    Kind {
        /// Expected kind.
        expected: EntryKind,
        /// Actual kind.
        actual: EntryKind,
    },
    /// Different permission bits.
    Mode {
        /// Expected `mode & 0o7777`.
        expected: u32,
        /// Actual `mode & 0o7777`.
        actual: u32,
    },
    /// Different uid or gid.
    Owner {
        /// Expected (uid, gid).
        expected: (u32, u32),
        /// Actual (uid, gid).
        actual: (u32, u32),
    },
    /// Different integer mtime.
    Mtime {
        /// Expected seconds.
        expected: i64,
        /// Actual seconds.
        actual: i64,
    },
    /// Different file size (the content differs too).
    Size {
        /// Expected bytes.
        expected: u64,
        /// Actual bytes.
        actual: u64,
    },
    /// Same size, different content.
    Content,
    /// Different symlink target.
    LinkTarget {
        /// Expected target bytes.
        expected: Vec<u8>,
        /// Actual target bytes.
        actual: Vec<u8>,
    },
    /// Different device number.
    Rdev {
        /// Expected `st_rdev`.
        expected: u64,
        /// Actual `st_rdev`.
        actual: u64,
    },
}

/// One difference found by [`compare`]; `Display` gives a one-line description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative path (`.` for the root), raw bytes.
    pub path: Vec<u8>,
    /// What differs.
    pub kind: DiffKind,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\": ", escape_path(&self.path))?;
        match &self.kind {
            DiffKind::Missing { below: 0 } => write!(f, "missing"),
            DiffKind::Missing { below } => write!(f, "missing (with {below} entries below it)"),
            DiffKind::Unexpected { below: 0 } => write!(f, "unexpected (not in expected tree)"),
            DiffKind::Unexpected { below } => {
                write!(
                    f,
                    "unexpected (not in expected tree, with {below} entries below it)"
                )
            }
            DiffKind::Kind { expected, actual } => {
                write!(f, "kind differs: expected {expected}, actual {actual}")
            }
            DiffKind::Mode { expected, actual } => {
                write!(
                    f,
                    "mode differs: expected {expected:04o}, actual {actual:04o}"
                )
            }
            DiffKind::Owner { expected, actual } => write!(
                f,
                "owner differs: expected {}:{}, actual {}:{}",
                expected.0, expected.1, actual.0, actual.1
            ),
            DiffKind::Mtime { expected, actual } => write!(
                f,
                "mtime differs: expected {expected}, actual {actual} ({:+} s)",
                actual - expected
            ),
            DiffKind::Size { expected, actual } => {
                write!(f, "size differs: expected {expected}, actual {actual}")
            }
            DiffKind::Content => write!(f, "content differs (same size, different SHA-256)"),
            DiffKind::LinkTarget { expected, actual } => write!(
                f,
                "symlink target differs: expected \"{}\", actual \"{}\"",
                escape_path(expected),
                escape_path(actual)
            ),
            DiffKind::Rdev { expected, actual } => {
                write!(
                    f,
                    "device number differs: expected {expected:#x}, actual {actual:#x}"
                )
            }
        }
    }
}

/// Whether `path` lies strictly below `dir` (both relative snapshot keys).
fn is_below(path: &[u8], dir: &[u8]) -> bool {
    if dir == ROOT {
        return path != ROOT;
    }
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// Number of entries of `snap` strictly below `dir`.
fn count_below(snap: &TreeSnapshot, dir: &[u8]) -> usize {
    if dir == ROOT {
        return snap.entries.len().saturating_sub(1);
    }
    // everything starting with "dir/" is contiguous in byte order, up to "dir0"
    let lo = [dir, b"/"].concat();
    let hi = [dir, b"0"].concat();
    snap.entries.range(lo..hi).count()
}

/// Lists how `actual` differs from `expected`, in path order. A missing or
/// unexpected directory, or a path whose kind differs, is reported once: what lies
/// below it is not listed (a missing/unexpected directory gives a count).
pub fn compare(
    expected: &TreeSnapshot,
    actual: &TreeSnapshot,
    opts: &CompareOptions,
) -> Vec<Difference> {
    let mut diffs = Vec::new();
    // paths whose subtrees are already accounted for
    let mut covered: Vec<&[u8]> = Vec::new();
    let mut all: Vec<&Vec<u8>> = expected
        .entries
        .keys()
        .chain(actual.entries.keys())
        .collect();
    all.sort();
    all.dedup();
    for path in all {
        if covered.iter().any(|dir| is_below(path, dir)) {
            continue;
        }
        let mut push = |kind| {
            diffs.push(Difference {
                path: path.clone(),
                kind,
            })
        };
        let (e, a) = match (expected.entries.get(path), actual.entries.get(path)) {
            (Some(e), Some(a)) => (e, a),
            (Some(_), None) => {
                push(DiffKind::Missing {
                    below: count_below(expected, path),
                });
                covered.push(path);
                continue;
            }
            (None, Some(_)) => {
                push(DiffKind::Unexpected {
                    below: count_below(actual, path),
                });
                covered.push(path);
                continue;
            }
            (None, None) => unreachable!(),
        };
        if e.kind != a.kind {
            push(DiffKind::Kind {
                expected: e.kind,
                actual: a.kind,
            });
            covered.push(path);
            continue;
        }
        if e.mode != a.mode {
            push(DiffKind::Mode {
                expected: e.mode,
                actual: a.mode,
            });
        }
        if !opts.ignore_owner && (e.uid, e.gid) != (a.uid, a.gid) {
            push(DiffKind::Owner {
                expected: (e.uid, e.gid),
                actual: (a.uid, a.gid),
            });
        }
        let skip_mtime = (opts.ignore_symlink_mtime && e.kind == EntryKind::Symlink)
            || (opts.ignore_root_mtime && path.as_slice() == ROOT);
        if !skip_mtime && e.mtime != a.mtime {
            push(DiffKind::Mtime {
                expected: e.mtime,
                actual: a.mtime,
            });
        }
        if e.size != a.size {
            push(DiffKind::Size {
                expected: e.size,
                actual: a.size,
            });
        } else if e.sha256 != a.sha256 {
            push(DiffKind::Content);
        }
        if e.link_target != a.link_target {
            push(DiffKind::LinkTarget {
                expected: e.link_target.clone().unwrap_or_default(),
                actual: a.link_target.clone().unwrap_or_default(),
            });
        }
        if e.rdev != a.rdev {
            push(DiffKind::Rdev {
                expected: e.rdev.unwrap_or(0),
                actual: a.rdev.unwrap_or(0),
            });
        }
    }
    diffs
}

/// Formats a list of differences, one per line, for a panic message.
pub fn format_differences(diffs: &[Difference]) -> String {
    let mut s = String::new();
    for d in diffs {
        s.push_str("  ");
        s.push_str(&d.to_string());
        s.push('\n');
    }
    s
}

/// Panics with every difference unless the tree at `actual_dir` matches the tree
/// at `expected_dir` under [`CompareOptions::default`].
#[track_caller]
pub fn assert_trees_equal(expected_dir: &Path, actual_dir: &Path) {
    assert_trees_equal_with(expected_dir, actual_dir, &CompareOptions::default());
}

/// [`assert_trees_equal`] with explicit options.
#[track_caller]
pub fn assert_trees_equal_with(expected_dir: &Path, actual_dir: &Path, opts: &CompareOptions) {
    let expected = TreeSnapshot::capture(expected_dir)
        .unwrap_or_else(|e| panic!("cannot capture expected tree: {e}"));
    let actual = TreeSnapshot::capture(actual_dir)
        .unwrap_or_else(|e| panic!("cannot capture actual tree: {e}"));
    assert_snapshots_equal(
        &expected,
        &actual,
        opts,
        &format!(
            "expected {}, actual {}",
            expected_dir.display(),
            actual_dir.display()
        ),
    );
}

/// Panics with every difference (and `context` in the message) unless the two
/// snapshots match under `opts`.
#[track_caller]
pub fn assert_snapshots_equal(
    expected: &TreeSnapshot,
    actual: &TreeSnapshot,
    opts: &CompareOptions,
    context: &str,
) {
    let diffs = compare(expected, actual, opts);
    if !diffs.is_empty() {
        panic!(
            "trees differ ({context}; {opts:?}): {} difference(s)\n{}",
            diffs.len(),
            format_differences(&diffs)
        );
    }
}

// ------------------------------------------------------------------ building

/// A relative path given as bytes (non-UTF-8 allowed) turned into a `Path`.
pub fn bytes_path(rel: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(rel))
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path contains a NUL byte")
}

/// Sets the mtime (and atime) of `path` to `secs`, not following a symlink.
pub fn set_mtime_nofollow(path: &Path, secs: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    let c = cstring(path);
    // SAFETY: valid NUL-terminated path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(with_path(io::Error::last_os_error(), path))
    }
}

/// Creates a named pipe (permission bits `mode`, before umask).
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let c = cstring(path);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) } == 0 {
        Ok(())
    } else {
        Err(with_path(io::Error::last_os_error(), path))
    }
}

/// Creates a character (`block = false`) or block device node; needs root.
pub fn mknod(path: &Path, block: bool, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cstring(path);
    let fmt = if block { libc::S_IFBLK } else { libc::S_IFCHR };
    let dev = libc::makedev(major, minor);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), fmt | mode as libc::mode_t, dev) } == 0 {
        Ok(())
    } else {
        Err(with_path(io::Error::last_os_error(), path))
    }
}

/// Builds test trees under a root. Paths are relative, given as anything that is
/// bytes (`"a/b"`, `b"x\xff"`), and parent directories are created as needed.
/// Every method panics on error (this is test set-up).
///
/// Creating an entry changes its parent directory's mtime: set directory mtimes
/// (with [`TreeBuilder::set_mtime`] or [`TreeBuilder::dir_with`] on an existing
/// directory) after filling them, or use [`TreeBuilder::set_all_mtimes`] last.
#[derive(Debug, Clone)]
pub struct TreeBuilder {
    root: PathBuf,
}

impl TreeBuilder {
    /// A builder for `root`, which is created (with parents) if absent.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        TreeBuilder { root }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of `rel` under the root.
    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        let rel = rel.as_ref();
        if rel == ROOT || rel.is_empty() {
            return self.root.clone();
        }
        self.root.join(bytes_path(rel))
    }

    fn parent_dirs(&self, p: &Path) {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
    }

    /// Writes a regular file (replacing an existing file).
    pub fn file(&self, rel: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        self.parent_dirs(&p);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self
    }

    /// Writes a regular file, then sets its permission bits and mtime.
    pub fn file_with(
        &self,
        rel: impl AsRef<[u8]>,
        content: impl AsRef<[u8]>,
        mode: u32,
        mtime: i64,
    ) -> &Self {
        let rel = rel.as_ref();
        self.file(rel, content)
            .chmod(rel, mode)
            .set_mtime(rel, mtime)
    }

    /// Creates a directory (with parents; existing is fine).
    pub fn dir(&self, rel: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
        self
    }

    /// Creates a directory (if absent), then sets its permission bits and mtime.
    pub fn dir_with(&self, rel: impl AsRef<[u8]>, mode: u32, mtime: i64) -> &Self {
        let rel = rel.as_ref();
        self.dir(rel).chmod(rel, mode).set_mtime(rel, mtime)
    }

    /// Creates a symlink to `target` (bytes, need not exist).
    pub fn symlink(&self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        self.parent_dirs(&p);
        std::os::unix::fs::symlink(bytes_path(target.as_ref()), &p)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
        self
    }

    /// Creates a symlink and sets its own mtime (not the target's).
    pub fn symlink_with(
        &self,
        rel: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
        mtime: i64,
    ) -> &Self {
        let rel = rel.as_ref();
        self.symlink(rel, target).set_mtime(rel, mtime)
    }

    /// Creates a hard link `rel` to the existing `existing`.
    pub fn hard_link(&self, rel: impl AsRef<[u8]>, existing: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        self.parent_dirs(&p);
        fs::hard_link(self.path(existing), &p)
            .unwrap_or_else(|e| panic!("link {}: {e}", p.display()));
        self
    }

    /// Creates a named pipe with permission bits `mode` (umask is corrected for).
    pub fn fifo(&self, rel: impl AsRef<[u8]>, mode: u32) -> &Self {
        let rel = rel.as_ref();
        let p = self.path(rel);
        self.parent_dirs(&p);
        mkfifo(&p, mode).unwrap_or_else(|e| panic!("mkfifo: {e}"));
        self.chmod(rel, mode)
    }

    /// Creates a character (`block = false`) or block device; needs root.
    pub fn device(
        &self,
        rel: impl AsRef<[u8]>,
        block: bool,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &Self {
        let rel = rel.as_ref();
        let p = self.path(rel);
        self.parent_dirs(&p);
        mknod(&p, block, mode, major, minor).unwrap_or_else(|e| panic!("mknod: {e}"));
        self.chmod(rel, mode)
    }

    /// Sets permission bits (not on symlinks: that would follow them).
    pub fn chmod(&self, rel: impl AsRef<[u8]>, mode: u32) -> &Self {
        let p = self.path(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
        self
    }

    /// Sets the mtime without following symlinks.
    pub fn set_mtime(&self, rel: impl AsRef<[u8]>, mtime: i64) -> &Self {
        let p = self.path(rel);
        set_mtime_nofollow(&p, mtime).unwrap_or_else(|e| panic!("set mtime: {e}"));
        self
    }

    /// Sets the mtime of every entry (symlinks included, the root last) to
    /// `mtime`; directories after their contents, so the times stick.
    pub fn set_all_mtimes(&self, mtime: i64) -> &Self {
        let snap = TreeSnapshot::capture(&self.root).expect("capture");
        // reverse byte order puts every child ("a/b") before its parent ("a");
        // the root key "." does not sort that way, so it is done last
        for path in snap.entries.keys().rev().filter(|p| p.as_slice() != ROOT) {
            self.set_mtime(path, mtime);
        }
        self.set_mtime(ROOT, mtime)
    }

    /// Changes owner without following symlinks; needs root.
    pub fn chown(&self, rel: impl AsRef<[u8]>, uid: u32, gid: u32) -> &Self {
        let p = self.path(rel);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
        self
    }

    /// Removes a file, symlink, fifo or a whole directory tree.
    pub fn remove(&self, rel: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let r = if meta.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
        self
    }
}

// ----------------------------------------------------------------- data

/// splitmix64: a fast, well-mixed 64-bit generator step.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every file (not directory) below `dir`, recursively; nothing for a missing `dir`.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `len` pseudo-random bytes determined by `seed`: incompressible (for compression
/// and rsync tests that must not benefit from redundancy). Several hundred MB/s.
/// The same seed gives the same bytes, and a shorter output is a prefix of a
/// longer one.
pub fn deterministic_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x6A09_E667_F3BC_C908;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` bytes of deterministic, highly compressible ASCII text (lines of words
/// from a small vocabulary), determined by `seed`.
pub fn deterministic_text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "backup",
        "restore",
        "volume",
        "chain",
        "manifest",
        "signature",
        "delta",
        "fleet",
        "agent",
        "policy",
        "archive",
        "the",
        "of",
        "and",
        "to",
        "a",
        "duplicity",
        "gpg",
        "storage",
        "host",
    ];
    let mut state = seed ^ 0xBB67_AE85_84CA_A73B;
    let mut out = Vec::with_capacity(len + 16);
    let mut col = 0;
    while out.len() < len {
        let r = splitmix64(&mut state);
        let w = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
        out.extend_from_slice(w);
        col += w.len() + 1;
        if col > 60 || (r >> 32).is_multiple_of(13) {
            out.push(b'\n');
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CompareOptions {
        CompareOptions {
            ignore_owner: true,
            ..CompareOptions::default()
        }
    }

    fn sample(root: &Path) -> TreeBuilder {
        let b = TreeBuilder::new(root);
        b.file_with("a.txt", "alpha\n", 0o644, 1_600_000_000)
            .file_with(b"latin1-\xe9.txt", "x", 0o600, 1_600_000_001)
            .symlink_with("link", "a.txt", 1_600_000_002)
            .symlink("dangling", b"../nowhere/\xff")
            .fifo("fifo", 0o640)
            .dir_with("empty", 0o750, 1_600_000_003)
            .file("sub/deeper/f", deterministic_bytes(1, 100_000))
            .set_mtime("sub/deeper/f", 1_000)
            .set_mtime("sub/deeper", 2_000)
            .set_mtime("sub", 3_000)
            .set_mtime(".", 4_000);
        b
    }

    #[test]
    fn capture_records_everything() {
        let t = tempfile::tempdir().unwrap();
        sample(t.path());
        let s = TreeSnapshot::capture(t.path()).unwrap();
        let paths: Vec<&[u8]> = s.paths().collect();
        assert_eq!(
            paths,
            vec![
                &b"."[..],
                b"a.txt",
                b"dangling",
                b"empty",
                b"fifo",
                b"latin1-\xe9.txt",
                b"link",
                b"sub",
                b"sub/deeper",
                b"sub/deeper/f"
            ]
        );
        let a = s.get("a.txt").unwrap();
        assert_eq!(
            (a.kind, a.mode, a.size, a.mtime),
            (EntryKind::File, 0o644, 6, 1_600_000_000)
        );
        assert_eq!(
            a.sha256_hex().unwrap(),
            "b6a98d9ce9a2d9149288fa3df42d377c3e42737afdcdaf714e33c0a100b51060"
        );
        let l = s.get("link").unwrap();
        assert_eq!(l.kind, EntryKind::Symlink);
        assert_eq!(l.link_target.as_deref(), Some(&b"a.txt"[..]));
        assert_eq!(l.mtime, 1_600_000_002);
        assert_eq!(
            s.get("dangling").unwrap().link_target.as_deref(),
            Some(&b"../nowhere/\xff"[..])
        );
        let f = s.get("fifo").unwrap();
        assert_eq!((f.kind, f.mode), (EntryKind::Fifo, 0o640));
        let e = s.get("empty").unwrap();
        assert_eq!(
            (e.kind, e.mode, e.mtime),
            (EntryKind::Dir, 0o750, 1_600_000_003)
        );
        assert_eq!(s.get(".").unwrap().mtime, 4_000);
        assert_eq!(s.get("sub").unwrap().mtime, 3_000);
        assert_eq!(s.get("sub/deeper/f").unwrap().size, 100_000);
        assert_eq!(s.get(".").unwrap().uid, unsafe { libc::geteuid() });
    }

    #[test]
    fn sockets_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let _l = std::os::unix::net::UnixListener::bind(t.path().join("sock")).unwrap();
        let s = TreeSnapshot::capture(t.path()).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn identical_trees_have_no_differences() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(x.path());
        sample(y.path());
        assert_trees_equal_with(x.path(), y.path(), &opts());
    }

    #[test]
    fn symlink_mtime_is_ignored_by_default_only() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(x.path());
        sample(y.path()).set_mtime("link", 5).set_mtime(".", 4_000);
        let (sx, sy) = (
            TreeSnapshot::capture(x.path()).unwrap(),
            TreeSnapshot::capture(y.path()).unwrap(),
        );
        assert!(compare(&sx, &sy, &opts()).is_empty());
        let strict = CompareOptions {
            ignore_symlink_mtime: false,
            ..opts()
        };
        let d = compare(&sx, &sy, &strict);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].kind,
            DiffKind::Mtime {
                expected: 1_600_000_002,
                actual: 5
            }
        );
    }

    #[test]
    fn root_mtime_option() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(x.path());
        sample(y.path()).set_mtime(".", 1);
        let (sx, sy) = (
            TreeSnapshot::capture(x.path()).unwrap(),
            TreeSnapshot::capture(y.path()).unwrap(),
        );
        assert_eq!(compare(&sx, &sy, &opts()).len(), 1);
        let lax = CompareOptions {
            ignore_root_mtime: true,
            ..opts()
        };
        assert!(compare(&sx, &sy, &lax).is_empty());
    }

    #[test]
    fn owner_compared_unless_ignored() {
        let t = tempfile::tempdir().unwrap();
        TreeBuilder::new(t.path()).file("f", "x");
        let a = TreeSnapshot::capture(t.path()).unwrap();
        let mut b = a.clone();
        b.entries.get_mut(&b"f"[..]).unwrap().uid += 1;
        let strict = CompareOptions {
            ignore_owner: false,
            ..opts()
        };
        let d = compare(&a, &b, &strict);
        assert!(
            matches!(
                d[..],
                [Difference {
                    kind: DiffKind::Owner { .. },
                    ..
                }]
            ),
            "{d:?}"
        );
        assert!(compare(&a, &b, &opts()).is_empty());
    }

    #[test]
    fn missing_directory_is_reported_once_with_count() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(x.path());
        sample(y.path()).remove("sub").set_mtime(".", 4_000);
        TreeBuilder::new(y.path())
            .file("zzz/new", "n")
            .set_mtime(".", 4_000);
        let d = compare(
            &TreeSnapshot::capture(x.path()).unwrap(),
            &TreeSnapshot::capture(y.path()).unwrap(),
            &opts(),
        );
        let text: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "\"sub\": missing (with 2 entries below it)",
                "\"zzz\": unexpected (not in expected tree, with 1 entries below it)"
            ]
        );
    }

    #[test]
    fn missing_dir_with_siblings_sorting_inside_its_range() {
        // byte order: "a", "a-b", "a.txt", "a/x", "a/y": the children of "a" are
        // not contiguous with it
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for t in [x.path(), y.path()] {
            TreeBuilder::new(t)
                .file("a-b", "1")
                .file("a.txt", "2")
                .file("-first", "0")
                .set_mtime(".", 9);
        }
        TreeBuilder::new(x.path())
            .file("a/x", "")
            .file("a/y", "")
            .set_mtime(".", 9);
        let (sx, sy) = (
            TreeSnapshot::capture(x.path()).unwrap(),
            TreeSnapshot::capture(y.path()).unwrap(),
        );
        let d = compare(&sx, &sy, &opts());
        assert_eq!(
            d,
            vec![Difference {
                path: b"a".to_vec(),
                kind: DiffKind::Missing { below: 2 }
            }]
        );
        // and "-first" (sorting before ".") gets its mtime set before the root
        TreeBuilder::new(x.path()).set_all_mtimes(77);
        let sx = TreeSnapshot::capture(x.path()).unwrap();
        assert!(sx.entries.values().all(|e| e.mtime == 77));
    }

    #[test]
    fn kind_change_hides_subtree() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        TreeBuilder::new(x.path())
            .file("d/1", "")
            .file("d/2", "")
            .set_mtime(".", 1);
        TreeBuilder::new(y.path()).file("d", "").set_mtime(".", 1);
        let d = compare(
            &TreeSnapshot::capture(x.path()).unwrap(),
            &TreeSnapshot::capture(y.path()).unwrap(),
            &opts(),
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].to_string(),
            "\"d\": kind differs: expected directory, actual regular file"
        );
    }

    #[test]
    fn display_escapes_non_utf8_and_shows_values() {
        let d = Difference {
            path: b"dir/caf\xc3\xa9-\xff\n".to_vec(),
            kind: DiffKind::Mode {
                expected: 0o644,
                actual: 0o4755,
            },
        };
        assert_eq!(
            d.to_string(),
            "\"dir/café-\\xff\\n\": mode differs: expected 0644, actual 4755"
        );
        let d = Difference {
            path: b"l".to_vec(),
            kind: DiffKind::LinkTarget {
                expected: b"a".to_vec(),
                actual: b"b\xfe".to_vec(),
            },
        };
        assert_eq!(
            d.to_string(),
            "\"l\": symlink target differs: expected \"a\", actual \"b\\xfe\""
        );
    }

    #[test]
    fn is_below_respects_component_boundaries() {
        assert!(is_below(b"a/b", b"a"));
        assert!(!is_below(b"a-b", b"a"));
        assert!(!is_below(b"a", b"a"));
        assert!(is_below(b"a", b"."));
        assert!(!is_below(b".", b"."));
    }

    #[test]
    fn set_all_mtimes_sets_dirs_after_contents() {
        let t = tempfile::tempdir().unwrap();
        let b = sample(t.path());
        b.set_all_mtimes(123);
        let s = TreeSnapshot::capture(t.path()).unwrap();
        for (p, e) in &s.entries {
            assert_eq!(e.mtime, 123, "{}", escape_path(p));
        }
    }

    #[test]
    fn deterministic_bytes_are_stable_and_seeded() {
        let a = deterministic_bytes(7, 1000);
        assert_eq!(a, deterministic_bytes(7, 1000));
        assert_eq!(&deterministic_bytes(7, 10)[..], &a[..10]);
        assert_ne!(a, deterministic_bytes(8, 1000));
        assert_eq!(deterministic_bytes(0, 0).len(), 0);
        assert_eq!(deterministic_bytes(0, 13).len(), 13);
        // incompressible-looking: every byte value shows up in 64 KiB
        let big = deterministic_bytes(3, 65536);
        let mut seen = [false; 256];
        big.iter().for_each(|&b| seen[b as usize] = true);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn deterministic_text_is_repetitive_ascii() {
        let t = deterministic_text(1, 10_000);
        assert_eq!(t.len(), 10_000);
        assert_eq!(t, deterministic_text(1, 10_000));
        assert_ne!(t, deterministic_text(2, 10_000));
        assert!(
            t.iter()
                .all(|b| b.is_ascii_lowercase() || b" \n".contains(b))
        );
        assert!(t.iter().filter(|&&b| b == b'\n').count() > 50);
    }
}
