//! Synchronous access to an object store for the engine's worker threads.

use super::{RetryPolicy, StorageError};
use crate::page_aligned::PageAlignedWriter;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

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
    /// Bounds for resuming interrupted downloads.
    retry: RetryPolicy,
    /// Bandwidth shared by every transfer through this store and its clones.
    rate: Option<Arc<RateLimit>>,
}

/// A bandwidth limit shared by concurrent transfers: each transfer books its bytes on
/// one timeline and sleeps until the booking is due, so the total over any second or
/// more stays within the rate (duplicity-style `bandwidth_limit`).
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    next_free: std::sync::Mutex<std::time::Instant>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes fit within the rate.
    pub fn take(&self, n: usize) {
        let due = {
            let mut next = self.next_free.lock().expect("rate lock");
            let now = std::time::Instant::now();
            if *next < now {
                *next = now;
            }
            *next += std::time::Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            *next
        };
        let wait = due.saturating_duration_since(std::time::Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Size of the pieces handed to the object store writer.
const WRITE_CHUNK: usize = 256 * 1024;
/// Multipart part size / single-put threshold, and parts in flight, for remote stores:
/// large parts in parallel keep a long link busy.
const UPLOAD_BUFFER: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 4;
/// The same for a local directory, where a part is written as fast as it comes: small
/// parts keep a backup's memory low (each object being written holds up to
/// (concurrency + 1) parts).
const LOCAL_UPLOAD_BUFFER: usize = 512 * 1024;
const LOCAL_UPLOAD_CONCURRENCY: usize = 1;

impl BlockingStore {
    pub fn new(store: Arc<dyn ObjectStore>, rt: Handle, label: impl Into<String>) -> Self {
        BlockingStore {
            store,
            rt,
            label: label.into(),
            local_dir: None,
            retry: RetryPolicy::default(),
            rate: None,
        }
    }

    /// Limits uploads and downloads through this store (and its clones) to
    /// `bytes_per_sec` together.
    pub fn set_bandwidth_limit(&mut self, bytes_per_sec: u64) {
        self.rate = Some(Arc::new(RateLimit::new(bytes_per_sec)));
    }

    /// How often and how long an interrupted download is resumed.
    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// Lists this local directory directly instead of through object_store.
    pub(super) fn set_local_dir(&mut self, dir: PathBuf) {
        self.local_dir = Some(dir);
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn map_err(&self, operation: &'static str, name: &str, e: object_store::Error) -> StorageError {
        classify(&self.label, operation, name, e)
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
        let size = res.meta.size;
        let e_tag = res.meta.e_tag.clone();
        // A local file is read directly: object_store streams it in 8 KiB pieces, each a
        // blocking task on the runtime, which cost a restore ~20 futex calls per file.
        let local = matches!(res.payload, GetResultPayload::File(..)) && res.range.start == 0;
        let (file, stream) = if local {
            let GetResultPayload::File(file, _) = res.payload else {
                unreachable!("checked above")
            };
            (Some(file), futures::stream::empty().boxed())
        } else {
            (None, res.into_stream())
        };
        Ok(ObjectReader {
            size,
            e_tag,
            file,
            stream,
            rt: self.rt.clone(),
            current: Bytes::new(),
            label: self.label.clone(),
            name: name.to_string(),
            store: self.store.clone(),
            offset: 0,
            resumes: 0,
            started: std::time::Instant::now(),
            retry: self.retry.clone(),
            rate: self.rate.clone(),
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
        let (part, concurrency) = if self.local_dir.is_some() {
            (LOCAL_UPLOAD_BUFFER, LOCAL_UPLOAD_CONCURRENCY)
        } else {
            (UPLOAD_BUFFER, UPLOAD_CONCURRENCY)
        };
        let w = BufWriter::with_capacity(self.store.clone(), ObjectPath::from(name), part)
            .with_max_concurrency(concurrency);
        // A local directory is written directly: through object_store each part was a
        // round trip to a blocking task on the runtime, and the stages of a backup
        // waited on each other (a volume of incompressible data went at a third of
        // the encryption's speed).
        let local = self
            .local_dir
            .as_ref()
            .filter(|_| !name.contains('/'))
            .map(|dir| LocalPut::Pending(dir.join(name)));
        ObjectWriter {
            local,
            inner: Some(w),
            rt: self.rt.clone(),
            buf: BytesMut::with_capacity(WRITE_CHUNK),
            label: self.label.clone(),
            name: name.to_string(),
            bytes: 0,
            rate: self.rate.clone(),
        }
    }

    pub fn put_bytes(&self, name: &str, data: Vec<u8>) -> Result<(), StorageError> {
        if let Some(rate) = &self.rate {
            rate.take(data.len());
        }
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

/// Our error for an object_store error: missing, existing, refused (a credentials
/// problem) or other.
fn classify(
    label: &str,
    operation: &'static str,
    name: &str,
    e: object_store::Error,
) -> StorageError {
    let destination = label.to_string();
    let name = name.to_string();
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound { destination, name },
        object_store::Error::AlreadyExists { .. } => {
            StorageError::AlreadyExists { destination, name }
        }
        e if is_denied(&e) => StorageError::Denied {
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

/// Whether the store refused the request for lack of rights. Some object_store paths
/// (Azure's batch delete, multipart parts) report 401/403 as a generic error with the
/// status inside.
fn is_denied(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        object_store::Error::Generic { source, .. } => {
            let text = format!("{source:?}");
            [
                "code: \"403\"",
                "code: \"401\"",
                "status: 403",
                "status: 401",
                "403 Forbidden",
                "401 Unauthorized",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        }
        _ => false,
    }
}

/// Our error for a failed upload: object_store's writer wraps its errors in io::Error.
fn classify_io(label: &str, operation: &'static str, name: &str, e: io::Error) -> StorageError {
    let denied = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<object_store::Error>())
        .is_some_and(is_denied);
    if denied {
        let inner = e.into_inner().expect("checked above");
        let os = inner
            .downcast::<object_store::Error>()
            .expect("checked above");
        return classify(label, operation, name, *os);
    }
    StorageError::Io {
        destination: label.to_string(),
        operation,
        name: name.to_string(),
        error: e,
    }
}

/// Streaming download; see [`BlockingStore::get`].
pub struct ObjectReader {
    /// A `file://` object, read directly.
    file: Option<std::fs::File>,
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    rt: Handle,
    current: Bytes,
    label: String,
    name: String,
    store: Arc<dyn ObjectStore>,
    /// Object size and version when the download started.
    size: u64,
    e_tag: Option<String>,
    /// Bytes received so far.
    offset: u64,
    resumes: u32,
    started: std::time::Instant,
    retry: RetryPolicy,
    rate: Option<Arc<RateLimit>>,
}

impl ObjectReader {
    /// Continues an interrupted download where it stopped (a ranged GET of the same
    /// version of the object), within the retry bounds. Returns the original error
    /// when the bounds are exhausted or the object changed.
    fn resume(&mut self, cause: io::Error) -> io::Result<()> {
        loop {
            self.resumes += 1;
            if !self.retry.may_retry(self.resumes, self.started.elapsed()) {
                return Err(cause);
            }
            tracing::warn!(
                "{}: download of {} interrupted at byte {} of {} ({cause}); resuming",
                self.label,
                self.name,
                self.offset,
                self.size
            );
            std::thread::sleep(self.retry.backoff(self.resumes));
            let opts = GetOptions {
                range: Some(GetRange::Offset(self.offset)),
                if_match: self.e_tag.clone(),
                ..Default::default()
            };
            let store = self.store.clone();
            let path = ObjectPath::from(self.name.as_str());
            match self
                .rt
                .block_on(async move { store.get_opts(&path, opts).await })
            {
                Ok(res) => {
                    self.stream = res.into_stream();
                    return Ok(());
                }
                Err(e) if super::object_store_error_is_retryable(&e) => continue,
                Err(e) => {
                    return Err(classify(&self.label, "resume download", &self.name, e).into_io());
                }
            }
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(file) = &mut self.file {
            let n = file.read(buf)?;
            self.offset += n as u64;
            if let Some(rate) = &self.rate {
                rate.take(n);
            }
            return Ok(n);
        }
        while self.current.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None if self.offset >= self.size => return Ok(0),
                None => {
                    let cause = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: download of {} ended at byte {} of {}",
                            self.label, self.name, self.offset, self.size
                        ),
                    );
                    self.resume(cause)?;
                }
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    let retryable = super::object_store_error_is_retryable(&e)
                        || matches!(e, object_store::Error::Generic { .. });
                    let cause = classify(&self.label, "read", &self.name, e).into_io();
                    if !retryable {
                        return Err(cause);
                    }
                    self.resume(cause)?;
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        self.offset += n as u64;
        if let Some(rate) = &self.rate {
            rate.take(n);
        }
        Ok(n)
    }
}

/// A local object being written: into a staging file (`<object>#<digits>`, the name
/// object_store uses and `cleanup` removes) renamed into place by `finish`.
enum LocalPut {
    /// Nothing written yet: the file is made on the first write.
    Pending(PathBuf),
    Open {
        file: DirectFile,
        staging: PathBuf,
        dest: PathBuf,
    },
}

static LOCAL_STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl LocalPut {
    fn open(&mut self) -> io::Result<&mut DirectFile> {
        if let LocalPut::Pending(dest) = self {
            let dest = std::mem::take(dest);
            let n = LOCAL_STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut staging = dest.clone().into_os_string();
            staging.push(format!("#{}{n:06}", std::process::id()));
            let staging = PathBuf::from(staging);
            let file = DirectFile::create_new(&staging)?;
            *self = LocalPut::Open {
                file,
                staging,
                dest,
            };
        }
        match self {
            LocalPut::Open { file, .. } => Ok(file),
            LocalPut::Pending(_) => unreachable!("opened above"),
        }
    }
}

/// Bytes gathered for each direct write (whole pages, from a page-aligned buffer).
const DIRECT_CHUNK: usize = 1 << 20;

/// A new local object's file, written with `O_DIRECT` where the filesystem allows it:
/// straight from our buffer to the disk, without the copy into the page cache. That copy
/// into newly allocated page-cache pages had been a sixth of a full backup's CPU time (on
/// virtual machines a new page can cost the host a fault too), for objects nobody reads
/// back soon. [`PageAlignedWriter`] gathers the writes into whole, page-aligned chunks;
/// [`DirectWrites`] falls back to ordinary writes for what cannot go directly.
struct DirectFile(PageAlignedWriter<DirectWrites>);

impl DirectFile {
    fn create_new(path: &Path) -> io::Result<DirectFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::File::options()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let writes = match direct {
            Ok(file) => DirectWrites { file, direct: true },
            // Not supported here (e.g. some tmpfs, FUSE): ordinary writes.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => DirectWrites {
                file: std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(path)?,
                direct: false,
            },
            Err(e) => return Err(e),
        };
        Ok(DirectFile(PageAlignedWriter::new(writes, 0, DIRECT_CHUNK)))
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    /// Writes what is gathered (its last partial page without `O_DIRECT`).
    fn finish(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The file under a [`DirectFile`]: its writes go directly while they are whole pages
/// from page-aligned memory (all but the last, or the rest of a short write, are) and the
/// file takes them.
struct DirectWrites {
    file: std::fs::File,
    direct: bool,
}

impl DirectWrites {
    /// Turns `O_DIRECT` off for the rest of the file.
    fn stop_direct(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }
}

impl Write for DirectWrites {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        use crate::page_aligned::PAGE;
        if self.direct
            && !(data.len().is_multiple_of(PAGE) && (data.as_ptr() as usize).is_multiple_of(PAGE))
        {
            self.stop_direct()?;
        }
        loop {
            match self.file.write(data) {
                // Refused although opened with O_DIRECT: ordinary writes from here on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.direct => {
                    self.stop_direct()?
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streaming upload; see [`BlockingStore::put_writer`].
pub struct ObjectWriter {
    /// For a local directory: written directly (`inner` is then unused).
    local: Option<LocalPut>,
    inner: Option<BufWriter>,
    rt: Handle,
    buf: BytesMut,
    label: String,
    name: String,
    bytes: u64,
    rate: Option<Arc<RateLimit>>,
}

impl ObjectWriter {
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(rate) = &self.rate {
            rate.take(self.buf.len());
        }
        let chunk = self.buf.split().freeze();
        let w = self.inner.as_mut().expect("writer used after finish");
        self.rt
            .block_on(w.put(chunk))
            .map_err(|e| classify(&self.label, "upload", &self.name, e).into_io())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Completes the upload; the object exists once this returns `Ok`.
    pub fn finish(mut self) -> io::Result<u64> {
        if let Some(mut local) = self.local.take() {
            self.inner = None;
            let err = |e: io::Error| {
                let e = StorageError::Io {
                    destination: self.label.clone(),
                    operation: "upload",
                    name: self.name.clone(),
                    error: e,
                };
                e.into_io()
            };
            if let Err(e) = local.open().and_then(DirectFile::finish) {
                if let LocalPut::Open { staging, .. } = &local {
                    let _ = std::fs::remove_file(staging);
                }
                return Err(err(e));
            }
            let LocalPut::Open { staging, dest, .. } = &local else {
                unreachable!("opened above")
            };
            return match std::fs::rename(staging, dest) {
                Ok(()) => Ok(self.bytes),
                Err(e) => {
                    let _ = std::fs::remove_file(staging);
                    Err(err(e))
                }
            };
        }
        self.push()?;
        let mut w = self.inner.take().expect("finish called once");
        let rt = self.rt.clone();
        match rt.block_on(w.shutdown()) {
            Ok(()) => Ok(self.bytes),
            Err(e) => {
                // No abort here: object_store's BufWriter panics when aborted after a
                // shutdown. Uncommitted parts are not objects (Azure drops uncommitted
                // blocks; `cleanup` removes local staging files and Swift segments).
                Err(classify_io(&self.label, "upload", &self.name, e).into_io())
            }
        }
    }

    /// Gives up the upload; nothing is left behind.
    pub fn abort(mut self) {
        self.drop_local();
        if let Some(mut w) = self.inner.take() {
            let _ = self.rt.block_on(w.abort());
        }
    }
}

impl ObjectWriter {
    /// Removes the staging file of a local object not finished.
    fn drop_local(&mut self) {
        if let Some(LocalPut::Open { staging, .. }) = self.local.take() {
            let _ = std::fs::remove_file(staging);
        }
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(local) = &mut self.local {
            if let Some(rate) = &self.rate {
                rate.take(data.len());
            }
            let written = local.open().and_then(|f| f.write_all(data));
            if let Err(e) = written {
                let e = StorageError::Io {
                    destination: self.label.clone(),
                    operation: "upload",
                    name: self.name.clone(),
                    error: e,
                };
                return Err(e.into_io());
            }
            self.bytes += data.len() as u64;
            return Ok(data.len());
        }
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
        if self.local.is_some() {
            self.drop_local();
            // The object_store writer never started: nothing to abort.
            return;
        }
        if let Some(mut w) = self.inner.take() {
            let _ = self.rt.block_on(w.abort());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Local objects written directly read back whole at every size around the page and
    /// chunk boundaries, in pieces of odd sizes, on the disk and on tmpfs.
    #[test]
    fn direct_files_hold_exactly_what_was_written() {
        let disk = tempfile::tempdir().unwrap();
        let mut dirs = vec![disk.path().to_path_buf()];
        let shm = Path::new("/dev/shm");
        let shm_dir = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
        dirs.extend(shm_dir.as_ref().map(|d| d.path().to_path_buf()));
        for dir in &dirs {
            for size in [
                0,
                1,
                4095,
                4096,
                4097,
                DIRECT_CHUNK - 1,
                DIRECT_CHUNK,
                DIRECT_CHUNK + 1,
                3 * DIRECT_CHUNK + 777,
            ] {
                let data = pattern(size);
                let path = dir.join(format!("obj-{size}"));
                let mut f = DirectFile::create_new(&path).unwrap();
                for piece in data.chunks(100_003) {
                    f.write_all(piece).unwrap();
                }
                f.finish().unwrap();
                drop(f);
                let back = std::fs::read(&path).unwrap();
                assert!(back == data, "{}: {size} bytes", dir.display());
            }
            // An existing name is refused (staging names are unique).
            assert!(DirectFile::create_new(&dir.join("obj-1")).is_err());
        }
    }
}
