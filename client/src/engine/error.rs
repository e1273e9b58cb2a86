//! What can go wrong in the engine, by meaning.

use flotilla_common::archive::collection::SelectError;
use flotilla_common::archive::entry::EntryNameError;
use flotilla_common::archive::manifest::ManifestError;
use flotilla_common::archive::rsync::RsyncError;
use flotilla_common::archive::tarfmt::TarError;
use flotilla_common::crypto::CryptoError;
use flotilla_common::storage::StorageError;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{object}: {error}")]
    Crypto { object: String, error: CryptoError },
    #[error("{object}: {reason}")]
    Corrupt { object: String, reason: String },
    #[error(
        "{object}: SHA-1 of the stored object is {actual} but its manifest says {expected} \
         (the volume was modified or damaged)"
    )]
    HashMismatch {
        object: String,
        expected: String,
        actual: String,
    },
    #[error("{set}: volume {number} is listed in the manifest but missing from the store")]
    MissingVolume { set: String, number: u32 },
    #[error("{0}")]
    NoBackup(String),
    #[error(
        "restore target {0} is not empty; use --force to restore into it (existing paths that \
         the backup also holds are replaced)"
    )]
    TargetNotEmpty(PathBuf),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "another flotilla-agent is working on the same destination (lock {0} is held); wait for \
         it to finish"
    )]
    Locked(PathBuf),
    #[error("{0}")]
    Usage(String),
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            error: source,
        }
    }

    pub fn corrupt(object: impl Into<String>, reason: impl ToString) -> Self {
        EngineError::Corrupt {
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    /// Classifies an I/O error that surfaced while reading or writing `object`: crypto
    /// and storage errors travel inside `io::Error`s through reader/writer chains.
    pub fn from_object_io(object: &str, e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<CryptoError>()) {
            let inner = e.into_inner().expect("checked");
            return EngineError::Crypto {
                object: object.to_string(),
                error: *inner.downcast::<CryptoError>().expect("checked"),
            };
        }
        if e.get_ref().is_some_and(|inner| inner.is::<EngineError>()) {
            let inner = e.into_inner().expect("checked");
            return *inner.downcast::<EngineError>().expect("checked");
        }
        if e.get_ref().is_some_and(|inner| inner.is::<StorageError>()) {
            let inner = e.into_inner().expect("checked");
            return EngineError::Storage(*inner.downcast::<StorageError>().expect("checked"));
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return EngineError::corrupt(object, format!("truncated: {e}"));
        }
        EngineError::corrupt(object, e)
    }

    /// True when running the same operation again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Storage(s) => s.is_retryable(),
            EngineError::Locked(_) => true,
            _ => false,
        }
    }

    /// Wraps this error in an `io::Error` (to travel through `Read`/`Write` chains).
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

impl From<(String, TarError)> for EngineError {
    fn from((object, e): (String, TarError)) -> Self {
        match e {
            TarError::Io(io) => EngineError::from_object_io(&object, io),
            other => EngineError::corrupt(object, other),
        }
    }
}

impl From<(String, ManifestError)> for EngineError {
    fn from((object, e): (String, ManifestError)) -> Self {
        EngineError::corrupt(object, e)
    }
}

impl From<(String, EntryNameError)> for EngineError {
    fn from((object, e): (String, EntryNameError)) -> Self {
        EngineError::corrupt(object, e)
    }
}

impl From<(String, RsyncError)> for EngineError {
    fn from((object, e): (String, RsyncError)) -> Self {
        match e {
            RsyncError::Io(io) => EngineError::from_object_io(&object, io),
            other => EngineError::corrupt(object, other),
        }
    }
}

impl From<SelectError> for EngineError {
    fn from(e: SelectError) -> Self {
        EngineError::NoBackup(e.to_string())
    }
}
