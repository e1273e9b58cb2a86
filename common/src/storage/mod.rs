//! Destinations: URLs to `object_store::ObjectStore`s, and a blocking facade for the
//! engine's worker threads.
//!
//! `file:///abs/dir` (or duplicity's `file://relative/dir`) is object_store's local file
//! system. `azure://` and `swift://` are added with the storage work.
//!
//! The engine is synchronous code running on its own threads (tar building, compression
//! and encryption are CPU work); [`BlockingStore`] runs the async object_store calls on
//! a tokio runtime handle from those threads. It must not be used from inside the
//! runtime's own worker threads.

pub mod retry;
pub mod secret;
pub mod swift;

pub use retry::RetryPolicy;
pub use secret::Secret;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

/// What went wrong with a destination. [`StorageError::is_retryable`] says whether
/// trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bad destination URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("unsupported destination scheme {scheme:?} in {url:?} (supported: file://)")]
    UnsupportedScheme { scheme: String, url: String },
    #[error("{destination}: object {name} not found")]
    NotFound { destination: String, name: String },
    #[error("{destination}: object {name} already exists")]
    AlreadyExists { destination: String, name: String },
    #[error("{destination}: access denied for {name} (check the credentials): {error}")]
    Denied {
        destination: String,
        name: String,
        error: Box<object_store::Error>,
    },
    #[error("{destination}: {operation} {name}: {error}")]
    Backend {
        destination: String,
        operation: &'static str,
        name: String,
        error: Box<object_store::Error>,
    },
    #[error("{destination}: {operation} {name}: {error}")]
    Io {
        destination: String,
        operation: &'static str,
        name: String,
        error: io::Error,
    },
}

impl StorageError {
    /// True when the same request may succeed later (network trouble, server errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Backend { error, .. } => {
                matches!(**error, object_store::Error::Generic { .. })
            }
            StorageError::Io { error, .. } => matches!(
                error.kind(),
                io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::Interrupted
            ),
            _ => false,
        }
    }

    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            StorageError::NotFound { .. } => io::ErrorKind::NotFound,
            StorageError::Denied { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// A parsed destination URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A local directory.
    File { path: PathBuf },
}

impl Destination {
    pub fn parse(url: &str) -> Result<Destination, StorageError> {
        let bad = |reason: &str| StorageError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("expected SCHEME://..., e.g. file:///var/backups/host"));
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("no directory given"));
                }
                // file:///abs → "/abs"; duplicity's file://rel/dir → "rel/dir".
                Ok(Destination::File {
                    path: PathBuf::from(rest),
                })
            }
            other => Err(StorageError::UnsupportedScheme {
                scheme: other.to_string(),
                url: url.to_string(),
            }),
        }
    }

    /// Opens the destination, creating a local directory if needed.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        match self {
            Destination::File { path } => {
                let label = self.to_string();
                std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
                    destination: label.clone(),
                    operation: "create directory",
                    name: path.display().to_string(),
                    error: source,
                })?;
                let abs = std::fs::canonicalize(path).map_err(|source| StorageError::Io {
                    destination: label.clone(),
                    operation: "open",
                    name: path.display().to_string(),
                    error: source,
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&abs).map_err(
                    |source| StorageError::Backend {
                        destination: label,
                        operation: "open",
                        name: abs.display().to_string(),
                        error: Box::new(source),
                    },
                )?;
                Ok(Arc::new(fs))
            }
        }
    }
}

impl std::fmt::Display for Destination {
    /// The URL without secrets (safe for logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::File { path } => write!(f, "file://{}", path.display()),
        }
    }
}

/// Listing entry.
#[derive(Clone, Debug)]
pub struct ListedObject {
    pub name: String,
    pub size: u64,
}

/// Synchronous access to a store for the engine's threads.
#[derive(Clone)]
pub struct BlockingStore {
    store: Arc<dyn ObjectStore>,
    rt: Handle,
    label: String,
    /// For `file://`: the directory, listed directly (object_store's listing fails on
    /// a single foreign file with a non-UTF-8 name, and hides staging files).
    local_dir: Option<PathBuf>,
}

/// Size of the pieces handed to the object store writer.
const WRITE_CHUNK: usize = 1 << 20;
/// Multipart part size / single-put threshold.
const UPLOAD_BUFFER: usize = 8 << 20;

impl BlockingStore {
    pub fn new(store: Arc<dyn ObjectStore>, rt: Handle, label: impl Into<String>) -> Self {
        BlockingStore {
            store,
            rt,
            label: label.into(),
            local_dir: None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn map_err(&self, operation: &'static str, name: &str, e: object_store::Error) -> StorageError {
        let destination = self.label.clone();
        let name = name.to_string();
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound { destination, name },
            object_store::Error::AlreadyExists { .. } => {
                StorageError::AlreadyExists { destination, name }
            }
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => StorageError::Denied {
                destination,
                name,
                error: Box::new(e),
            },
            source => StorageError::Backend {
                destination,
                operation,
                name,
                error: Box::new(source),
            },
        }
    }

    /// Objects at the top level of the destination (names only, no "directories").
    pub fn list(&self) -> Result<Vec<ListedObject>, StorageError> {
        if let Some(dir) = &self.local_dir {
            let io_err = |error| StorageError::Io {
                destination: self.label.clone(),
                operation: "list",
                name: dir.display().to_string(),
                error,
            };
            let mut out = Vec::new();
            for e in std::fs::read_dir(dir).map_err(io_err)? {
                let e = e.map_err(io_err)?;
                // Names that are not UTF-8 are never ours; skip them like other foreign files.
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                match e.metadata() {
                    Ok(md) if md.is_file() => out.push(ListedObject {
                        name,
                        size: md.len(),
                    }),
                    _ => {}
                }
            }
            return Ok(out);
        }
        let store = self.store.clone();
        let res = self
            .rt
            .block_on(async move { store.list_with_delimiter(None).await })
            .map_err(|e| self.map_err("list", "", e))?;
        Ok(res
            .objects
            .into_iter()
            .map(|m| ListedObject {
                name: m.location.filename().unwrap_or_default().to_string(),
                size: m.size,
            })
            .collect())
    }

    /// A streaming reader of one object.
    pub fn get(&self, name: &str) -> Result<ObjectReader, StorageError> {
        let store = self.store.clone();
        let path = ObjectPath::from(name);
        let res = self
            .rt
            .block_on(async move { store.get(&path).await })
            .map_err(|e| self.map_err("get", name, e))?;
        Ok(ObjectReader {
            stream: res.into_stream(),
            rt: self.rt.clone(),
            current: Bytes::new(),
            label: self.label.clone(),
            name: name.to_string(),
        })
    }

    /// The whole object in memory (for manifests and other small objects).
    pub fn get_bytes(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        self.get(name)?
            .read_to_end(&mut out)
            .map_err(|source| StorageError::Io {
                destination: self.label.clone(),
                operation: "read",
                name: name.to_string(),
                error: source,
            })?;
        Ok(out)
    }

    /// A writer that uploads one object; it appears only when [`ObjectWriter::finish`]
    /// succeeds (dropping the writer aborts the upload).
    pub fn put_writer(&self, name: &str) -> ObjectWriter {
        let w = BufWriter::with_capacity(self.store.clone(), ObjectPath::from(name), UPLOAD_BUFFER)
            .with_max_concurrency(4);
        ObjectWriter {
            inner: Some(w),
            rt: self.rt.clone(),
            buf: BytesMut::with_capacity(WRITE_CHUNK),
            label: self.label.clone(),
            name: name.to_string(),
            bytes: 0,
        }
    }

    pub fn put_bytes(&self, name: &str, data: Vec<u8>) -> Result<(), StorageError> {
        let store = self.store.clone();
        let path = ObjectPath::from(name);
        self.rt
            .block_on(async move { store.put(&path, data.into()).await })
            .map_err(|e| self.map_err("put", name, e))?;
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<(), StorageError> {
        if let Some(dir) = self.local_dir.as_ref().filter(|_| !name.contains('/')) {
            // Directly, so that names object_store would encode (`x#1` staging files) work.
            return match std::fs::remove_file(dir.join(name)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
                    destination: self.label.clone(),
                    name: name.to_string(),
                }),
                Err(error) => Err(StorageError::Io {
                    destination: self.label.clone(),
                    operation: "delete",
                    name: name.to_string(),
                    error,
                }),
            };
        }
        let store = self.store.clone();
        let path = ObjectPath::from(name);
        self.rt
            .block_on(async move { store.delete(&path).await })
            .map_err(|e| self.map_err("delete", name, e))
    }
}

/// Streaming download; see [`BlockingStore::get`].
pub struct ObjectReader {
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    rt: Handle,
    current: Bytes,
    label: String,
    name: String,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    return Err(StorageError::Backend {
                        destination: self.label.clone(),
                        operation: "read",
                        name: self.name.clone(),
                        error: Box::new(e),
                    }
                    .into_io());
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Streaming upload; see [`BlockingStore::put_writer`].
pub struct ObjectWriter {
    inner: Option<BufWriter>,
    rt: Handle,
    buf: BytesMut,
    label: String,
    name: String,
    bytes: u64,
}

impl ObjectWriter {
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let w = self.inner.as_mut().expect("writer used after finish");
        self.rt.block_on(w.put(chunk)).map_err(|e| {
            StorageError::Backend {
                destination: self.label.clone(),
                operation: "upload",
                name: self.name.clone(),
                error: Box::new(e),
            }
            .into_io()
        })
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Completes the upload; the object exists once this returns `Ok`.
    pub fn finish(mut self) -> io::Result<u64> {
        self.push()?;
        let mut w = self.inner.take().expect("finish called once");
        let rt = self.rt.clone();
        match rt.block_on(w.shutdown()) {
            Ok(()) => Ok(self.bytes),
            Err(e) => {
                let _ = rt.block_on(w.abort());
                Err(io::Error::new(
                    e.kind(),
                    format!("{}: upload {}: {e}", self.label, self.name),
                ))
            }
        }
    }

    /// Gives up the upload; nothing is left behind.
    pub fn abort(mut self) {
        if let Some(mut w) = self.inner.take() {
            let _ = self.rt.block_on(w.abort());
        }
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        if self.buf.len() >= WRITE_CHUNK {
            self.push()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if let Some(mut w) = self.inner.take() {
            let _ = self.rt.block_on(w.abort());
        }
    }
}

/// Opens a destination URL for blocking use.
pub fn open_blocking(url: &str, rt: Handle) -> Result<BlockingStore, StorageError> {
    let dest = Destination::parse(url)?;
    let store = dest.open()?;
    let mut b = BlockingStore::new(store, rt, dest.to_string());
    // Only local directories so far; remote destinations will leave this unset.
    let Destination::File { path } = &dest;
    b.local_dir = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()));
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            Destination::parse("file:///var/b").unwrap(),
            Destination::File {
                path: "/var/b".into()
            }
        );
        assert_eq!(
            Destination::parse("file://rel/dir").unwrap(),
            Destination::File {
                path: "rel/dir".into()
            }
        );
        assert!(matches!(
            Destination::parse("s3://x"),
            Err(StorageError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            Destination::parse("/plain/path"),
            Err(StorageError::BadUrl { .. })
        ));
    }

    #[test]
    fn round_trip_on_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let s = open_blocking(&url, rt.handle().clone()).unwrap();
        let mut w = s.put_writer("big");
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).unwrap();
        assert_eq!(w.finish().unwrap(), data.len() as u64);
        let mut w = s.put_writer("aborted");
        w.write_all(b"partial").unwrap();
        drop(w);
        s.put_bytes("small", b"abc".to_vec()).unwrap();
        let mut names: Vec<String> = s.list().unwrap().into_iter().map(|o| o.name).collect();
        names.sort();
        assert_eq!(names, vec!["big", "small"]);
        assert_eq!(s.get_bytes("big").unwrap(), data);
        assert!(matches!(s.get("nope"), Err(StorageError::NotFound { .. })));
        s.delete("small").unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
    }
}
