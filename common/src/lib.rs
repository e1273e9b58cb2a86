//! Flotilla's core library: everything that is neither a CLI nor a daemon.
//!
//! - [`archive`]: duplicity 0.8.22's archive format (object names, difftar volumes,
//!   sigtar signature files, manifests, sets and chains).
//! - [`crypto`]: OpenPGP messages as duplicity/gpg write and read them.
//! - [`page_aligned`]: buffered file writes placed for the kernel's page-cache copy.
//! - [`storage`]: destination URLs to `object_store::ObjectStore`s.
//! - [`timespec`]: duplicity's time and interval syntax.

pub mod archive;
pub mod crypto;
pub mod page_aligned;
pub mod policy;
pub mod proto;
pub mod schedule;
pub mod storage;
pub mod timespec;
pub mod write_behind;
