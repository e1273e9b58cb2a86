//! duplicity 0.8.22's archive format (see `shared/reference/duplicity-format.md` in the
//! project's design documents): the pieces every reader and writer of a chain needs.
//!
//! - [`index`] — paths inside the tree, their order, manifest quoting.
//! - [`names`] — object names (kind, set times, volume number, suffixes).
//! - [`tarfmt`] — tar headers as Python's tarfile writes them, and a tolerant reader.
//! - [`entry`] — what a difftar/sigtar entry name means; file metadata.
//! - [`rsync`] — librsync signatures and deltas.
//! - [`manifest`] — manifests.
//! - [`collection`] — sets and chains from a listing.

pub mod collection;
pub mod entry;
pub mod index;
pub mod manifest;
pub mod names;
pub mod rsync;
pub mod tarfmt;

pub use collection::{BackupSet, Chain, Collection, StoredObject};
pub use entry::{EntryKind, EntryName, FileKind, FileMeta};
pub use index::Index;
pub use manifest::{Change, Manifest, VolumeInfo};
pub use names::{ObjectKind, ObjectName, SetTimes, format_time};

/// Data of a file is cut into pieces of this size; longer content becomes
/// `multivol_*` entries (§3.5).
pub const PIECE_SIZE: usize = 65536;
