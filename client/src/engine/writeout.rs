//! Restored files created and written by writer threads.
//!
//! Creating an inode is most of a restore's cost on a local disk (ext4 spends it in
//! `ext4_create`, mostly in the inode allocator) and one thread creates one file at a time.
//! So the restore's merge hands small files, empty files and symlinks, with their content
//! and final metadata, to a few writer threads and goes on reading the archive. Large files
//! are created by the merge and written by the writers in pieces at their offsets (copying
//! data into the page cache is the other big cost); their metadata follows the last piece. Directories stay on the merge's thread (children need
//! them to exist), and a directory's final metadata waits until every file handed out
//! before it was closed is written (see [`Writers::submitted`] and [`Writers::done`]).
//!
//! Jobs go to the threads in batches ([`BATCH_JOBS`] jobs or [`BATCH_BYTES`]): one hand-off,
//! one wake-up and one bookkeeping update per batch instead of per file (a tree of small
//! files otherwise spends a good part of its system time switching threads).
//!
//! Memory is bounded: at most [`QUEUE`] batches of about [`BATCH_BYTES`] are in flight.
//!
//! The restore's check of the data (on by default) runs here too: a job may carry the
//! backup's signature of its file ([`Expected`]), and the writer hashes the bytes it
//! writes against it, block by block ([`piece_matches`]), while they are in its cache.
//! That replaces reading every restored file back after the restore.

use super::error::{EngineError, Result};
use flotilla_common::archive::Index;
use flotilla_common::archive::rsync::{block_count_matches, checkable_block_len, piece_matches};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Files up to this size are handed to the writer threads whole.
pub(crate) const SMALL_FILE: usize = 128 * 1024;
/// Batches queued for the writer threads.
const QUEUE: usize = 4;
/// A batch is handed over once it holds this many jobs...
const BATCH_JOBS: usize = 16;
/// ...or this many bytes of content.
const BATCH_BYTES: usize = 512 * 1024;
/// Emptied buffers kept for reuse.
const RECYCLED: usize = 8;

/// Metadata a restored file gets once its content is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FinalMeta {
    pub perms: u32,
    pub mtime: i64,
    /// Owner to set (when restoring owners).
    pub owner: Option<(u32, u32)>,
}

/// The backup's signature of a restored file, which its data must match.
pub(crate) struct Expected {
    pub index: Index,
    pub signature: Vec<u8>,
    /// A difference was recorded (a large file's pieces report it once).
    failed: AtomicBool,
}

impl Expected {
    pub(crate) fn new(index: Index, signature: Vec<u8>) -> Expected {
        Expected {
            index,
            signature,
            failed: AtomicBool::new(false),
        }
    }

    /// The length of the pieces a file with this signature is written in: whole blocks,
    /// about [`SMALL_FILE`] bytes.
    pub(crate) fn piece_len(&self) -> usize {
        match checkable_block_len(&self.signature) {
            Some(block) => (SMALL_FILE / block as usize).max(1) * block as usize,
            None => SMALL_FILE,
        }
    }
}

/// What the writers' checks of the data found.
#[derive(Debug, Default)]
pub(crate) struct DataChecked {
    /// Files whose data was hashed against their signature.
    pub files: u64,
    pub bytes: u64,
    /// Files that did not match.
    pub mismatches: u64,
    /// The first [`MAX_LISTED_MISMATCHES`] of them, with what differs.
    pub listed: Vec<(Index, String)>,
}

impl DataChecked {
    /// Adds what another set of writers checked.
    pub(crate) fn add(&mut self, other: DataChecked) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.mismatches += other.mismatches;
        let room = MAX_LISTED_MISMATCHES.saturating_sub(self.listed.len());
        self.listed.extend(other.listed.into_iter().take(room));
    }
}

/// Mismatching files listed by name (all are counted).
pub(crate) const MAX_LISTED_MISMATCHES: usize = super::verify::RestoreCheck::MAX_LISTED;

const DATA_DIFFERS: &str = "data differs from the backup's signature";

pub(crate) enum Job {
    File {
        path: PathBuf,
        data: Vec<u8>,
        meta: FinalMeta,
        check: Option<Arc<Expected>>,
    },
    Symlink {
        path: PathBuf,
        target: Vec<u8>,
        owner: Option<(u32, u32)>,
    },
    /// A piece of a large file the caller created (and finishes once its pieces are
    /// written).
    WriteAt {
        file: Arc<File>,
        path: PathBuf,
        offset: u64,
        data: Vec<u8>,
        check: Option<Arc<Expected>>,
    },
    /// Check `len` bytes from `offset` of a file written some other way (a delta's result
    /// renamed into place); a large file is checked in several such jobs, side by side.
    Check {
        file: Arc<File>,
        path: PathBuf,
        check: Arc<Expected>,
        offset: u64,
        len: u64,
    },
}

#[derive(Default)]
struct State {
    /// Jobs 0..done are all written (jobs finish out of order on several threads).
    done: u64,
    /// Finished jobs beyond `done`.
    finished_early: std::collections::BTreeSet<u64>,
    error: Option<EngineError>,
    /// Set on drop: remaining jobs are skipped.
    cancelled: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    files_checked: AtomicU64,
    bytes_checked: AtomicU64,
    mismatches: AtomicU64,
    listed: Mutex<Vec<(Index, String)>>,
}

impl Shared {
    /// Records that `check`'s file differs (once per file).
    fn mismatch(&self, check: &Expected, what: &str) {
        if check.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        let mut listed = self.listed.lock().expect("mismatch list");
        if listed.len() < MAX_LISTED_MISMATCHES {
            listed.push((check.index.clone(), what.to_string()));
        }
    }

    /// Checks a piece of `check`'s file written at `offset`.
    fn check_piece(&self, check: &Expected, offset: u64, data: &[u8]) {
        self.bytes_checked
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if !piece_matches(&check.signature, offset, data) {
            self.mismatch(check, DATA_DIFFERS);
        }
    }

    /// `check`'s file is complete at `size` bytes.
    fn check_size(&self, check: &Expected, size: u64) {
        self.files_checked.fetch_add(1, Ordering::Relaxed);
        if !block_count_matches(&check.signature, size) {
            self.mismatch(check, DATA_DIFFERS);
        }
    }
}

/// The writer threads of one restore. Dropping it skips what is still queued and joins
/// the threads.
pub(crate) struct Writers {
    tx: Option<SyncSender<Batch>>,
    recycled: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    submitted: u64,
    /// Jobs not handed over yet, with their sequence numbers.
    pending: Batch,
    pending_bytes: usize,
    /// [`SMALL_FILE`] buffers whose content was queued as an exact-size copy.
    spare: Vec<Vec<u8>>,
}

type Batch = Vec<(u64, Job)>;

impl Job {
    fn content_len(&self) -> usize {
        match self {
            Job::File { data, .. } | Job::WriteAt { data, .. } => data.len(),
            Job::Symlink { target, .. } => target.len(),
            // So that each range is a batch of its own, for another writer to take.
            Job::Check { len, .. } => *len as usize,
        }
    }
}

impl Writers {
    pub(crate) fn new(threads: usize) -> Writers {
        let (tx, rx) = sync_channel::<Batch>(QUEUE);
        let (recycle_tx, recycled) = sync_channel::<Vec<u8>>(RECYCLED);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared::default());
        let handles = (0..threads.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                let shared = Arc::clone(&shared);
                let recycle_tx = recycle_tx.clone();
                std::thread::Builder::new()
                    .name(format!("restore-writer-{i}"))
                    .spawn(move || worker(&rx, &shared, &recycle_tx))
                    .expect("spawn restore writer")
            })
            .collect();
        Writers {
            tx: Some(tx),
            recycled,
            shared,
            handles,
            submitted: 0,
            pending: Vec::with_capacity(BATCH_JOBS),
            pending_bytes: 0,
            spare: Vec::new(),
        }
    }

    /// An empty buffer for a small file's content (recycled when possible).
    /// A buffer of at least `len` bytes, of earlier contents: reused buffers keep their
    /// length, so that only what a buffer grows by is zeroed.
    pub(crate) fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self
            .spare
            .pop()
            .or_else(|| self.recycled.try_recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(SMALL_FILE.max(len)));
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    /// Takes back a buffer from [`Self::buffer`] that was not queued.
    pub(crate) fn keep(&mut self, buf: Vec<u8>) {
        if self.spare.len() < RECYCLED {
            self.spare.push(buf);
        }
    }

    /// Queues a job (blocks while the queue is full). A writer's earlier failure is
    /// returned here.
    pub(crate) fn submit(&mut self, job: Job) -> Result<()> {
        self.pending_bytes += job.content_len();
        self.pending.push((self.submitted, job));
        self.submitted += 1;
        if self.pending.len() >= BATCH_JOBS || self.pending_bytes >= BATCH_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Sends the pending batch to the threads.
    fn hand_over(&mut self) -> Result<()> {
        self.take_error()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_JOBS));
        self.pending_bytes = 0;
        let tx = self.tx.as_ref().expect("writers running");
        if tx.send(batch).is_err() {
            return Err(EngineError::io(
                Path::new("restore writers"),
                io::Error::other("the writer threads stopped"),
            ));
        }
        Ok(())
    }

    /// Jobs handed out so far.
    pub(crate) fn submitted(&self) -> u64 {
        self.submitted
    }

    /// How many of the first jobs are all written: `done() >= n` means every job submitted
    /// while `submitted()` was below `n` is on disk.
    pub(crate) fn done(&self) -> u64 {
        self.shared.state.lock().expect("writers state").done
    }

    /// Waits until every job submitted so far is written; returns the first failure.
    pub(crate) fn wait_all(&mut self) -> Result<()> {
        self.hand_over()?;
        let mut st = self.shared.state.lock().expect("writers state");
        while st.done < self.submitted && st.error.is_none() {
            st = self.shared.changed.wait(st).expect("writers state");
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A large file written in pieces (each checked by the writer that wrote it) is
    /// complete at `size` bytes: checks that the signature has as many blocks.
    pub(crate) fn check_file_size(&self, check: &Expected, size: u64) {
        self.shared.check_size(check, size);
    }

    /// What the checks found so far (complete after [`Writers::wait_all`]).
    pub(crate) fn data_checked(&self) -> DataChecked {
        DataChecked {
            files: self.shared.files_checked.load(Ordering::Relaxed),
            bytes: self.shared.bytes_checked.load(Ordering::Relaxed),
            mismatches: self.shared.mismatches.load(Ordering::Relaxed),
            listed: self.shared.listed.lock().expect("mismatch list").clone(),
        }
    }

    fn take_error(&self) -> Result<()> {
        match self
            .shared
            .state
            .lock()
            .expect("writers state")
            .error
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.shared.state.lock().expect("writers state").cancelled = true;
        self.tx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(rx: &Mutex<Receiver<Batch>>, shared: &Shared, recycle: &SyncSender<Vec<u8>>) {
    loop {
        let batch = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(batch) => batch,
                Err(_) => return,
            }
        };
        let mut skip = {
            let st = shared.state.lock().expect("writers state");
            st.cancelled || st.error.is_some()
        };
        let mut failure = None;
        let mut seqs = Vec::with_capacity(batch.len());
        for (seq, job) in batch {
            seqs.push(seq);
            if skip {
                continue;
            }
            if let Err(e) = run(job, shared, recycle) {
                // The rest of the batch is skipped, as later batches will be.
                failure = Some(e);
                skip = true;
            }
        }
        let mut st = shared.state.lock().expect("writers state");
        st.finished_early.extend(seqs);
        while st.finished_early.first() == Some(&st.done) {
            st.finished_early.pop_first();
            st.done += 1;
        }
        if let Some(e) = failure
            && st.error.is_none()
        {
            st.error = Some(e);
        }
        drop(st);
        shared.changed.notify_all();
    }
}

fn run(job: Job, shared: &Shared, recycle: &SyncSender<Vec<u8>>) -> Result<()> {
    match job {
        Job::File {
            path,
            data,
            meta,
            check,
        } => {
            let io_err = |e| EngineError::io(&path, e);
            let mut f = create_new_file(&path).map_err(io_err)?;
            f.write_all(&data).map_err(io_err)?;
            apply_meta_fd(&f, &meta).map_err(io_err)?;
            if let Some(check) = check {
                shared.check_piece(&check, 0, &data);
                shared.check_size(&check, data.len() as u64);
            }
            recycle_buffer(data, recycle);
            Ok(())
        }
        Job::WriteAt {
            file,
            path,
            offset,
            data,
            check,
        } => {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&data, offset)
                .map_err(|e| EngineError::io(&path, e))?;
            if let Some(check) = check {
                shared.check_piece(&check, offset, &data);
            }
            recycle_buffer(data, recycle);
            Ok(())
        }
        Job::Check {
            file,
            path,
            check,
            offset,
            len,
        } => {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; check.piece_len()];
            let (mut pos, end) = (offset, offset + len);
            while pos < end {
                let n = (end - pos).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], pos)
                    .map_err(|e| EngineError::io(&path, e))?;
                shared.check_piece(&check, pos, &buf[..n]);
                pos += n as u64;
            }
            Ok(())
        }
        Job::Symlink {
            path,
            target,
            owner,
        } => {
            use std::os::unix::ffi::OsStrExt;
            let io_err = |e| EngineError::io(&path, e);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                .map_err(io_err)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err)?;
            }
            Ok(())
        }
    }
}

/// Returns a [`SMALL_FILE`] buffer for reuse (exact-size copies are just freed).
fn recycle_buffer(data: Vec<u8>, recycle: &SyncSender<Vec<u8>>) {
    if data.capacity() >= SMALL_FILE {
        let _ = recycle.try_send(data);
    }
}

/// A new file, never through a symlink, owner-only until its metadata is set.
pub(crate) fn create_new_file(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
}

/// Owner, mode and mtime of a file still open (no more path lookups).
pub(crate) fn apply_meta_fd(f: &File, meta: &FinalMeta) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some((uid, gid)) = meta.owner {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(meta.perms))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: meta.mtime as libc::time_t,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid open descriptor and a 2-element timespec array.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
