//! The duplicity-written fixture chain (`tests/fixtures/make-duplicity-fixture.sh`).
//!
//! [`duplicity_fixture`] builds it once per machine and script version into
//! `<target>/test-fixtures/duplicity-fixture-v1-<script hash>/` and returns that
//! directory (OUTDIR), which holds:
//!
//! - `store/`: the chain (symmetric, passphrase [`PASSPHRASE`], `--volsize 1`):
//!   a full at [`T1`] and an incremental at [`T2`], nine objects ([`OBJECT_NAMES`]);
//! - `expected-T1/`, `expected-T2/`: the trees restores at T1 and T2 must produce;
//! - `expected-T1.list`, `expected-T2.list`: `path type mode size mtime sha256|-> target`
//!   per path (parse with [`parse_list`]);
//! - `archive-dir/fixture/`: duplicity's local cache of the chain;
//! - `fixture-info.txt`.
//!
//! Concurrent test processes serialize on a lock file; the fixture is built in a
//! temporary sibling directory and renamed into place when complete, so a
//! directory with the final name is always complete. Treat it as read-only:
//! copy `store/` before modifying objects.

use std::fs;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::bins::{Cmd, target_dir, workspace_dir};
use crate::duplicity::Duplicity;

/// Time of the full set, epoch seconds.
pub const T1: i64 = 1_700_000_000;
/// Time of the full set as it appears in object names.
pub const T1_STR: &str = "20231114T221320Z";
/// Time of the incremental set, epoch seconds.
pub const T2: i64 = 1_700_003_600;
/// Time of the incremental set as it appears in object names.
pub const T2_STR: &str = "20231114T231320Z";
/// Symmetric passphrase of the fixture chain.
pub const PASSPHRASE: &str = "fixture-passphrase";
/// `--name` the fixture script used for its archive dir (`archive-dir/fixture`).
pub const ARCHIVE_NAME: &str = "fixture";
/// Version of the fixture layout; part of the directory name.
pub const FIXTURE_VERSION: &str = "v1";

/// The objects in `store/`, sorted.
pub const OBJECT_NAMES: [&str; 9] = [
    "duplicity-full-signatures.20231114T221320Z.sigtar.gpg",
    "duplicity-full.20231114T221320Z.manifest.gpg",
    "duplicity-full.20231114T221320Z.vol1.difftar.gpg",
    "duplicity-full.20231114T221320Z.vol2.difftar.gpg",
    "duplicity-full.20231114T221320Z.vol3.difftar.gpg",
    "duplicity-full.20231114T221320Z.vol4.difftar.gpg",
    "duplicity-inc.20231114T221320Z.to.20231114T231320Z.manifest.gpg",
    "duplicity-inc.20231114T221320Z.to.20231114T231320Z.vol1.difftar.gpg",
    "duplicity-new-signatures.20231114T221320Z.to.20231114T231320Z.sigtar.gpg",
];

/// Path of the fixture script in this repository.
pub fn script_path() -> PathBuf {
    workspace_dir().join("tests/fixtures/make-duplicity-fixture.sh")
}

/// The fixture directory (OUTDIR), built on first use; see the module docs.
/// Panics (with the script's output) if it cannot be built, and with the install
/// hint if duplicity is missing.
#[track_caller]
pub fn duplicity_fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        Duplicity::require();
        build_fixture(&target_dir().join("test-fixtures"))
            .unwrap_or_else(|e| panic!("building the duplicity fixture: {e}"))
    })
}

/// `store/` of the fixture.
pub fn store_dir() -> PathBuf {
    duplicity_fixture().join("store")
}

/// `file://` URL of the fixture's `store/`.
pub fn store_url() -> String {
    crate::duplicity::file_url(&store_dir())
}

/// `expected-T1/` or `expected-T2/` (`which` is 1 or 2).
pub fn expected_dir(which: u8) -> PathBuf {
    assert!(which == 1 || which == 2, "T{which}?");
    duplicity_fixture().join(format!("expected-T{which}"))
}

/// The parsed `expected-T1.list` or `expected-T2.list` (`which` is 1 or 2).
pub fn expected_list(which: u8) -> Vec<ListEntry> {
    assert!(which == 1 || which == 2, "T{which}?");
    let p = duplicity_fixture().join(format!("expected-T{which}.list"));
    let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    parse_list(&data).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Builds (or reuses) the fixture under `parent`; returns its directory.
fn build_fixture(parent: &Path) -> io::Result<PathBuf> {
    let script = script_path();
    let script_bytes = fs::read(&script)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", script.display())))?;
    let hash = crate::hex(&Sha256::digest(&script_bytes)[..6]);
    let name = format!("duplicity-fixture-{FIXTURE_VERSION}-{hash}");
    let final_dir = parent.join(&name);
    if is_complete(&final_dir) {
        return Ok(final_dir);
    }
    fs::create_dir_all(parent)?;
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(parent.join(format!("{name}.lock")))?;
    let _lock = FileLock::exclusive(&lock_file)?;
    if is_complete(&final_dir) {
        return Ok(final_dir); // another process built it while we waited
    }
    // leftovers of an interrupted build (we hold the lock, so nobody builds now)
    let tmp_prefix = format!(".tmp-{name}-");
    for e in fs::read_dir(parent)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
            fs::remove_dir_all(e.path())?;
        }
    }
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?; // incomplete: never renamed into place whole
    }
    let tmp = tempfile::Builder::new()
        .prefix(&tmp_prefix)
        .tempdir_in(parent)?;
    let out = Cmd::new("bash")
        .arg(&script)
        .arg(tmp.path())
        .timeout(Duration::from_secs(600))
        .run();
    if !out.success() {
        return Err(io::Error::other(format!("{out}")));
    }
    let tmp = tmp.keep();
    fs::rename(&tmp, &final_dir)?;
    if !is_complete(&final_dir) {
        return Err(io::Error::other(format!(
            "{} is incomplete after the script succeeded",
            final_dir.display()
        )));
    }
    Ok(final_dir)
}

/// The script writes `fixture-info.txt` last.
fn is_complete(dir: &Path) -> bool {
    dir.join("fixture-info.txt").is_file()
        && dir.join("expected-T2.list").is_file()
        && OBJECT_NAMES
            .iter()
            .all(|n| dir.join("store").join(n).is_file())
}

/// An exclusive `flock` held until dropped.
struct FileLock(i32);

impl FileLock {
    fn exclusive(f: &fs::File) -> io::Result<FileLock> {
        let fd = f.as_raw_fd();
        loop {
            // SAFETY: fd is a valid open file descriptor owned by `f`.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                return Ok(FileLock(fd));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: the fd is still open (the File outlives the lock guard).
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
}

/// One line of an `expected-T*.list` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Relative path as raw bytes, `.` for the root.
    pub path: Vec<u8>,
    /// `dir`, `reg`, `sym`, `fifo` or `other`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Size for `reg`, 0 otherwise.
    pub size: u64,
    /// Integer mtime; `None` for symlinks (listed as `-`).
    pub mtime: Option<i64>,
    /// SHA-256 hex for `reg`.
    pub sha256: Option<String>,
    /// Target bytes for `sym`.
    pub link_target: Option<Vec<u8>>,
}

/// Parses a listing written by the fixture script: per line
/// `PATH KIND MODE SIZE MTIME EXTRA`, where PATH may contain spaces, EXTRA is a
/// SHA-256 (`reg`), `-> TARGET` (`sym`, TARGET may contain spaces) or `-`.
pub fn parse_list(data: &[u8]) -> Result<Vec<ListEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry = parse_list_line(line).ok_or_else(|| {
            format!(
                "line {}: cannot parse {:?}",
                n + 1,
                String::from_utf8_lossy(line)
            )
        })?;
        out.push(entry);
    }
    Ok(out)
}

fn parse_list_line(line: &[u8]) -> Option<ListEntry> {
    // symlink: "PATH sym MODE 0 - -> TARGET"; search for the marker from the left,
    // so spaces in the target are kept (a path containing " sym " would be
    // ambiguous; the fixture has none)
    const SYM: &[u8] = b" sym ";
    if let Some(i) = find(line, SYM) {
        let rest = &line[i + SYM.len()..];
        let mut parts = rest.splitn(4, |&b| b == b' ');
        let (mode, size, mtime, extra) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if mtime == b"-" && extra.starts_with(b"-> ") {
            return Some(ListEntry {
                path: line[..i].to_vec(),
                kind: "sym".into(),
                mode: u32::from_str_radix(std::str::from_utf8(mode).ok()?, 8).ok()?,
                size: std::str::from_utf8(size).ok()?.parse().ok()?,
                mtime: None,
                sha256: None,
                link_target: Some(extra[3..].to_vec()),
            });
        }
    }
    // otherwise the five last fields have no spaces
    let mut parts = line.rsplitn(6, |&b| b == b' ');
    let extra = std::str::from_utf8(parts.next()?).ok()?;
    let mtime = std::str::from_utf8(parts.next()?).ok()?;
    let size = std::str::from_utf8(parts.next()?).ok()?;
    let mode = std::str::from_utf8(parts.next()?).ok()?;
    let kind = std::str::from_utf8(parts.next()?).ok()?;
    let path = parts.next()?;
    if !["dir", "reg", "fifo", "other"].contains(&kind) {
        return None;
    }
    let sha256 = if kind == "reg" {
        if extra.len() != 64 || !extra.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(extra.to_string())
    } else {
        None
    };
    Some(ListEntry {
        path: path.to_vec(),
        kind: kind.into(),
        mode: u32::from_str_radix(mode, 8).ok()?,
        size: size.parse().ok()?,
        mtime: Some(mtime.parse().ok()?),
        sha256,
        link_target: None,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_lines() {
        let text = b". dir 0755 0 1690000000 -\n\
name with spaces.txt reg 0644 8 1690000000 8d6b3c0cab1b7b5d3da5c4bd0c4b3e2e2b2c4e6f7a8b9c0d1e2f3a4b5c6d7e8f\n\
latin1-\xe9.txt reg 0600 13 981173106 00b7ca1290dd8e8343f0fce442932402b40d544c0cecb395fc4d2fb8893dd6b9\n\
dangling sym 0777 0 - -> ../nowhere/target with space\n\
fifo fifo 0644 0 1690000000 -\n";
        let l = parse_list(text).unwrap();
        assert_eq!(l.len(), 5);
        assert_eq!(l[0].path, b".");
        assert_eq!(
            (l[0].kind.as_str(), l[0].mode, l[0].mtime),
            ("dir", 0o755, Some(1690000000))
        );
        assert_eq!(l[1].path, b"name with spaces.txt");
        assert_eq!(l[1].size, 8);
        assert_eq!(l[2].path, b"latin1-\xe9.txt");
        assert_eq!(l[2].mode, 0o600);
        assert_eq!(l[2].mtime, Some(981173106));
        assert_eq!(l[3].kind, "sym");
        assert_eq!(l[3].mtime, None);
        assert_eq!(
            l[3].link_target.as_deref(),
            Some(&b"../nowhere/target with space"[..])
        );
        assert_eq!(l[4].kind, "fifo");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_list(b"just some words\n").is_err());
        assert!(parse_list(b"f reg 0644 1 2 nothex\n").is_err());
        assert!(parse_list(b"f reg 0999 1 2 -\n").is_err());
    }

    #[test]
    fn object_names_use_the_fixture_times() {
        assert!(OBJECT_NAMES.iter().all(|n| n.contains(T1_STR)));
        assert_eq!(
            OBJECT_NAMES.iter().filter(|n| n.contains(T2_STR)).count(),
            3
        );
        let mut sorted = OBJECT_NAMES;
        sorted.sort();
        assert_eq!(sorted, OBJECT_NAMES);
    }

    #[test]
    fn script_is_in_the_repository() {
        let s = fs::read_to_string(script_path()).unwrap();
        assert!(s.starts_with("#!/usr/bin/env bash"));
        assert!(s.contains(&format!("T1={T1}")) && s.contains(&format!("T2={T2}")));
        assert!(s.contains(&format!("PASS={PASSPHRASE}")));
        assert!(s.contains(&format!("T1S={T1_STR}")) && s.contains(&format!("T2S={T2_STR}")));
    }
}
