//! Progress reporting from the engine. The engine reports; the binary decides how to
//! show it (a terminal bar, log lines, or gRPC progress messages later).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Receives progress events. Implementations must be cheap: `advance` is called per file
/// and per chunk.
pub trait Progress: Send + Sync {
    /// A new phase ("backup", "restore", "verify"), with the bytes expected if known.
    fn start(&self, _phase: &str, _total_bytes: Option<u64>) {}
    /// Whether totals are worth an extra pass over the tree (only for a display).
    fn wants_totals(&self) -> bool {
        false
    }
    /// The expected total became known (it is computed in the background).
    fn set_total(&self, _bytes: u64, _files: u64) {}
    /// Bytes of source data processed.
    fn bytes(&self, _n: u64) {}
    /// One more path done.
    fn file(&self) {}
    /// Something the user should see now (a decision, a warning).
    fn note(&self, _msg: &str) {}
    fn finish(&self) {}
    /// Whether the operation should stop: checked between files, it then ends with
    /// [`EngineError::Interrupted`](super::error::EngineError::Interrupted) (a backup
    /// leaves no manifest, so its set is never counted).
    fn cancelled(&self) -> bool {
        false
    }
}

/// Ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Counts bytes and files (used by tests and for JSON summaries).
#[derive(Default)]
pub struct Counter {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

impl Progress for Counter {
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
}

pub type SharedProgress = Arc<dyn Progress>;
