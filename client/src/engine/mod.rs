//! The backup/restore engine: duplicity-compatible sets over any `ObjectStore`.
//!
//! The engine is synchronous code on its own threads (walking, hashing, compressing and
//! encrypting are CPU work); storage calls go through
//! [`flotilla_common::storage::BlockingStore`]. It has no CLI concerns: the binary (and,
//! later, the daemon) build a [`Context`] and call [`backup::backup`],
//! [`restore::restore`], [`verify::verify`], [`inspect`] and [`retention`].

mod ahead;
pub mod backup;
pub mod cache;
pub mod codec;
pub mod error;
pub mod inspect;
pub mod owners;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod select;
pub mod sigstate;
pub mod verify;
pub mod volumes;
pub mod walk;
mod writeout;

pub use error::{EngineError, Result};

use flotilla_common::storage::BlockingStore;
use std::path::PathBuf;

/// What every engine operation works with.
pub struct Context {
    pub store: BlockingStore,
    /// Where the local signature cache lives (see [`cache`]).
    pub state_dir: PathBuf,
    pub progress: progress::SharedProgress,
}
