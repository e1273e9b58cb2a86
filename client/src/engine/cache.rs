//! The local cache of a destination's signature files and manifests (duplicity's
//! "archive dir", duplicity-format.md §7.6), kept under the agent's state directory.
//!
//! Plaintext, so an incremental needs no private key: agents encrypt to public keys only,
//! and the chain's signatures are what the next incremental diffs against. If the cache
//! is lost and the chain cannot be decrypted here, the next backup starts a new chain.

use super::codec::open_object;
use super::error::{EngineError, Result};
use flotilla_common::archive::StoredObject;
use flotilla_common::archive::names::{ObjectKind, ObjectName, SetTimes};
use flotilla_common::archive::{Chain, Collection};
use flotilla_common::crypto::{CryptoError, DecryptionKeys};
use flotilla_common::storage::BlockingStore;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// One destination's cache directory, locked for the lifetime of this value.
pub struct ArchiveCache {
    dir: PathBuf,
    _lock: File,
}

/// The default state directory: `/var/lib/flotilla-agent` for root, else
/// `$XDG_STATE_HOME/flotilla-agent` (`~/.local/state/flotilla-agent`).
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/flotilla-agent");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("flotilla-agent");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/flotilla-agent")
}

fn plain_name(set: SetTimes, kind: ObjectKind) -> String {
    ObjectName {
        set,
        kind,
        encrypted: false,
        compressed: false,
        partial: false,
    }
    .format()
}

impl ArchiveCache {
    /// Opens (creating) the cache of destination `label` and takes its lock.
    pub fn open(state_dir: &Path, label: &str) -> Result<Self> {
        let key = hex_prefix(&Sha256::digest(label.as_bytes()));
        let dir = state_dir.join("archive").join(key);
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let _ = std::fs::write(dir.join("destination"), format!("{label}\n"));
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| EngineError::io(&lock_path, e))?;
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(EngineError::Locked(lock_path));
        }
        Ok(ArchiveCache { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sigtar_path(&self, set: SetTimes) -> PathBuf {
        self.dir.join(plain_name(set, ObjectKind::Signatures))
    }

    pub fn manifest_path(&self, set: SetTimes) -> PathBuf {
        self.dir.join(plain_name(set, ObjectKind::Manifest))
    }

    /// Removes cached files of sets the store no longer holds (or never completed).
    pub fn prune(&self, coll: &Collection) {
        let mut keep: HashSet<String> = HashSet::new();
        for ch in &coll.chains {
            for s in ch.sets() {
                keep.insert(plain_name(s.times, ObjectKind::Signatures));
                keep.insert(plain_name(s.times, ObjectKind::Manifest));
            }
        }
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ObjectName::parse(&name).is_some() && !keep.contains(&name) {
                tracing::debug!("cache: removing {name} (not in the store)");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Makes sure every set of `chain` has its plaintext signature file cached,
    /// downloading and decrypting what is missing. `Ok(Err(why))` when that cannot be
    /// done here (no signature file, or encrypted to keys we do not hold).
    pub fn ensure_signatures(
        &self,
        store: &BlockingStore,
        chain: &Chain,
        keys: &DecryptionKeys,
    ) -> Result<std::result::Result<(), String>> {
        for set in chain.sets() {
            let path = self.sigtar_path(set.times);
            if path.exists() {
                continue;
            }
            let Some(obj) = &set.signatures else {
                return Ok(Err(format!("the {} set has no signature file", set.times)));
            };
            // Streamed into the cache: a signature file grows with the number of files.
            match download_atomic(store, obj, keys, &path) {
                Ok(()) => tracing::info!("cache: fetched {}", obj.name),
                Err(EngineError::Crypto { error, .. }) if is_key_problem(&error) => {
                    return Ok(Err(format!(
                        "the chain's signature files are not in the local cache ({}) and cannot be \
                         decrypted here ({error})",
                        self.dir.display()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Ok(()))
    }
}

fn is_key_problem(e: &CryptoError) -> bool {
    matches!(
        e,
        CryptoError::WrongPassphraseOrKey
            | CryptoError::PassphraseRequired
            | CryptoError::NoMatchingSecretKey { .. }
            | CryptoError::SecretKeyLocked { .. }
    )
}

/// Decodes object `obj` into `path` via a temporary name and rename.
fn download_atomic(
    store: &BlockingStore,
    obj: &StoredObject,
    keys: &DecryptionKeys,
    path: &Path,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let (mut r, _) = open_object(store, obj, keys)?;
        let f = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        std::io::copy(&mut r, &mut w).map_err(|e| EngineError::from_object_io(&obj.name, e))?;
        let f = w
            .into_inner()
            .map_err(|e| EngineError::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn hex_prefix(d: &[u8]) -> String {
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
