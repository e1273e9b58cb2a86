//! Backups: full and incremental sets in duplicity's format.
//!
//! One pass over the source: the walker yields paths in index order, merged with the
//! previous signature state; each file is read once, feeding its new signature and its
//! snapshot pieces or delta at the same time. Volumes stream into the store (see
//! [`super::volumes`]); the signature file is built in the local cache and uploaded after
//! the volumes; the manifest is uploaded last, which is what makes the set complete.

use super::Context;
use super::cache::ArchiveCache;
use super::codec::{Codec, StoredInfo};
use super::error::{EngineError, Result};
use super::progress::SharedProgress;
use super::select::{Rule, Selection};
use super::sigstate::{SigEntry, SignatureState};
use super::volumes::VolumeWriter;
use super::walk::{SourceEntry, WalkAhead, Walker};
use fast_rsync::IndexedSignature;
use flotilla_common::archive::entry::{EntryKind, EntryName};
use flotilla_common::archive::manifest::{Change, Manifest, format_filelist_line};
use flotilla_common::archive::names::{ObjectKind, SetTimes};
use flotilla_common::archive::rsync::{
    BasisSignature, DeltaWriter, RsyncError, SignatureBuilder, diff_chunk,
};
use flotilla_common::archive::tarfmt::{TarHeader, TarWriter, read_full as fill};
use flotilla_common::archive::{Collection, FileKind, FileMeta, Index, PIECE_SIZE};
use flotilla_common::crypto::DecryptionKeys;
use serde::Serialize;
use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Whether to start a new chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupMode {
    /// Incremental when a usable chain exists, else full.
    Auto,
    Full,
}

/// Everything a backup run needs to know.
#[derive(Clone)]
pub struct BackupOptions {
    pub source: PathBuf,
    pub mode: BackupMode,
    /// Start a new chain when the current chain's full is older than this (seconds).
    pub full_if_older_than: Option<i64>,
    /// Volume size in bytes (duplicity's `--volsize` is in MiB).
    pub volsize: u64,
    /// `--include` / `--exclude` rules in the order given.
    pub selection: Vec<(Rule, String)>,
    pub codec: Codec,
    /// Keys to decrypt the chain's signature files if the local cache lost them.
    pub decrypt_keys: DecryptionKeys,
    /// The set's time (default: now). Must be later than every existing set.
    pub time: Option<i64>,
    /// `Hostname` line of the manifest (default: this host's name).
    pub hostname: Option<String>,
    /// Paths never backed up (the state directory, a local store inside the source).
    pub skip: Vec<PathBuf>,
}

/// duplicity's statistics block, plus what Flotilla adds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupStats {
    pub start_time: f64,
    pub end_time: f64,
    pub source_files: u64,
    pub source_file_size: u64,
    pub new_files: u64,
    pub new_file_size: u64,
    pub deleted_files: u64,
    pub changed_files: u64,
    pub changed_file_size: u64,
    pub changed_delta_size: u64,
    pub delta_entries: u64,
    pub raw_delta_size: u64,
    pub total_destination_size_change: u64,
    pub errors: u64,
}

/// What a backup did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    /// "full" or "incremental".
    pub kind: &'static str,
    /// Why a full was made (no chain, `--full`, age, unreadable cache).
    pub full_reason: Option<String>,
    pub set_start: Option<i64>,
    pub set_time: i64,
    pub volumes: u32,
    pub objects: Vec<String>,
    pub stats: BackupStats,
    pub warnings: Vec<String>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Cuts a content stream (file data or a delta) into entries: one `snapshot/`/`diff/`
/// entry if it is shorter than 64 KiB, else `multivol_*` pieces of 64 KiB with a final
/// shorter (possibly empty) piece, exactly as duplicity does (§3.5).
struct PieceWriter<'a> {
    vol: &'a mut VolumeWriter,
    kind: EntryKind,
    index: &'a Index,
    header: TarHeader,
    cur: Vec<u8>,
    emitted: u64,
    total: u64,
}

impl<'a> PieceWriter<'a> {
    fn new(
        vol: &'a mut VolumeWriter,
        kind: EntryKind,
        index: &'a Index,
        meta: &FileMeta,
        buf: Vec<u8>,
    ) -> Self {
        let mut cur = buf;
        cur.clear();
        PieceWriter {
            vol,
            kind,
            index,
            header: meta.to_header(Vec::new()),
            cur,
            emitted: 0,
            total: 0,
        }
    }

    fn emit(&mut self, last: bool) -> Result<()> {
        self.emitted += 1;
        let k = self.emitted;
        self.header.name = EntryName::volume_name(self.kind, self.index, None, Some(k));
        self.header.size = self.cur.len() as u64;
        self.vol.append(
            &self.header,
            &self.cur,
            self.index,
            if last { None } else { Some(k) },
        )?;
        self.cur.clear();
        Ok(())
    }

    fn push(&mut self, mut data: &[u8]) -> Result<()> {
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.cur.len() == PIECE_SIZE {
                self.emit(false)?;
            }
            let take = (PIECE_SIZE - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Writes what is left; returns the content length and the buffer for reuse.
    fn finish(mut self) -> Result<(u64, Vec<u8>)> {
        if self.emitted == 0 && self.cur.len() < PIECE_SIZE {
            self.header.name = EntryName::volume_name(self.kind, self.index, None, None);
            self.header.size = self.cur.len() as u64;
            self.vol.append(&self.header, &self.cur, self.index, None)?;
        } else if self.cur.len() == PIECE_SIZE {
            self.emit(false)?;
            self.emit(true)?;
        } else {
            self.emit(true)?;
        }
        Ok((self.total, self.cur))
    }
}

impl Write for PieceWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.push(data).map_err(EngineError::into_io)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const READ_CHUNK: usize = 1 << 20;
/// New data is diffed against the old signature in chunks of this size (memory bound;
/// a match across a chunk boundary costs at most one block of literal data).
const DELTA_CHUNK: usize = 8 << 20;
/// Chunks of a large changed file diffed in parallel (at most `threads + 1` in memory; a
/// match across a chunk boundary is sent as literal data, about 0.2% of the file).
const PARALLEL_DELTA_CHUNK: usize = 1 << 20;

/// Diffs a large changed file against its basis on `threads` threads, chunk by chunk,
/// while this thread reads the file and builds its new signature; the chunk deltas are
/// appended in order. fast_rsync checks each candidate block with scalar MD4, which made
/// the delta of a large database file most of an incremental backup's time on one core.
/// Returns the bytes read and a read error that ended the file early.
fn parallel_delta<W: Write>(
    file: &mut File,
    indexed: &IndexedSignature<'_>,
    delta: &mut DeltaWriter<'_, W>,
    sig: &mut SignatureBuilder,
    threads: usize,
    progress: &SharedProgress,
) -> std::result::Result<(u64, Option<io::Error>), RsyncError> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::mpsc::{channel, sync_channel};
    /// A chunk's delta (or why it failed) and the chunk's buffer, for reuse.
    type Diffed = (std::result::Result<Vec<u8>, RsyncError>, Vec<u8>);
    type Done = (u64, std::result::Result<Vec<u8>, RsyncError>, Vec<u8>);
    let (job_tx, job_rx) = sync_channel::<(u64, Vec<u8>)>(threads);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel::<Done>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let job_rx = &job_rx;
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((seq, data))) = job else { return };
                    let mut out = Vec::with_capacity(data.len() / 64 + 64);
                    let r = diff_chunk(indexed, &data, &mut out).map(|()| out);
                    if done_tx.send((seq, r, data)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let max_in_flight = threads + 1;
        let mut free: Vec<Vec<u8>> = Vec::new();
        let mut ready: BTreeMap<u64, Diffed> = BTreeMap::new();
        let (mut sent, mut written, mut len) = (0u64, 0u64, 0u64);
        let mut read_error = None;
        // Appends finished chunk deltas in order; `block` waits for the next one.
        let mut collect = |block: bool,
                           ready: &mut BTreeMap<_, _>,
                           free: &mut Vec<Vec<u8>>,
                           written: &mut u64|
         -> std::result::Result<(), RsyncError> {
            if block && let Ok((seq, r, data)) = done_rx.recv() {
                ready.insert(seq, (r, data));
            }
            while let Ok((seq, r, data)) = done_rx.try_recv() {
                ready.insert(seq, (r, data));
            }
            while let Some((r, data)) = ready.remove(written) {
                delta.append(&r?)?;
                free.push(data);
                *written += 1;
            }
            Ok(())
        };
        loop {
            while sent - written >= max_in_flight as u64 {
                collect(true, &mut ready, &mut free, &mut written)?;
            }
            let mut buf = free
                .pop()
                .unwrap_or_else(|| vec![0u8; PARALLEL_DELTA_CHUNK]);
            buf.resize(PARALLEL_DELTA_CHUNK, 0);
            match fill(file, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    sig.update(&buf);
                    len += n as u64;
                    progress.bytes(n as u64);
                    if job_tx.send((sent, buf)).is_err() {
                        break;
                    }
                    sent += 1;
                    collect(false, &mut ready, &mut free, &mut written)?;
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(job_tx);
        while written < sent {
            collect(true, &mut ready, &mut free, &mut written)?;
        }
        Ok((len, read_error))
    })
}

enum Stored {
    /// Content stored; the new signature and content length.
    Done { signature: Vec<u8>, len: u64 },
    /// The file could not be opened: leave the previous state as it is.
    Skipped,
    /// The file is gone.
    Vanished,
}

struct Run<'a> {
    vol: VolumeWriter,
    sigtar: TarWriter<BufWriter<File>>,
    filelist: BufWriter<File>,
    filelist_count: u64,
    stats: BackupStats,
    warnings: Vec<String>,
    progress: &'a SharedProgress,
    piece_buf: Vec<u8>,
    read_buf: Vec<u8>,
    delta_buf: Vec<u8>,
    /// Threads diffing a large changed file.
    delta_threads: usize,
    owners: super::owners::Owners,
    cache_dir: PathBuf,
}

impl Run<'_> {
    fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.progress.note(&msg);
        self.warnings.push(msg);
    }

    fn filelist(&mut self, change: Change, index: &Index) -> Result<()> {
        self.filelist
            .write_all(&format_filelist_line(change, index))
            .map_err(|e| EngineError::io(&self.cache_dir, e))?;
        self.filelist_count += 1;
        Ok(())
    }

    fn sig_entry(
        &mut self,
        kind: EntryKind,
        index: &Index,
        meta: Option<&FileMeta>,
        data: &[u8],
    ) -> Result<()> {
        let header = match meta {
            Some(m) => m.to_header(EntryName::sigtar_name(kind, index, Some(m.kind))),
            None => deleted_header(EntryName::sigtar_name(kind, index, None)),
        };
        self.sigtar
            .append(&header, data)
            .map_err(|e| EngineError::io(&self.cache_dir, e))
    }

    fn open_source(&mut self, src: &SourceEntry) -> std::result::Result<File, Stored> {
        let res = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&src.path);
        match res {
            Ok(f) => match f.metadata() {
                Ok(md) if md.is_file() => Ok(f),
                _ => {
                    self.warn(format!(
                        "{}: changed type while being backed up; skipped",
                        src.path.display()
                    ));
                    self.stats.errors += 1;
                    Err(Stored::Skipped)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Stored::Vanished),
            Err(e) => {
                self.warn(format!("{}: cannot read: {e}", src.path.display()));
                self.stats.errors += 1;
                Err(Stored::Skipped)
            }
        }
    }

    /// Stores a regular file's content as a snapshot, or as a delta against `basis`.
    fn store_file(&mut self, src: &SourceEntry, basis: Option<&BasisSignature>) -> Result<Stored> {
        let mut file = match self.open_source(src) {
            Ok(f) => f,
            Err(s) => return Ok(s),
        };
        let mut sig = SignatureBuilder::for_size(src.size);
        let kind = if basis.is_some() {
            EntryKind::Diff
        } else {
            EntryKind::Snapshot
        };
        let piece_buf = std::mem::take(&mut self.piece_buf);
        let mut pieces = PieceWriter::new(&mut self.vol, kind, &src.index, &src.meta, piece_buf);
        let mut read_error = None;
        let mut len = 0u64;
        match basis {
            None => loop {
                match fill(&mut file, &mut self.read_buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        sig.update(&self.read_buf[..n]);
                        pieces.push(&self.read_buf[..n])?;
                        len += n as u64;
                        self.progress.bytes(n as u64);
                    }
                    Err(e) => {
                        read_error = Some(e);
                        break;
                    }
                }
            },
            Some(basis) => {
                let indexed = basis.indexed();
                let mut delta = DeltaWriter::new(&indexed, &mut pieces);
                let name = || src.path.display().to_string();
                if src.size > 2 * PARALLEL_DELTA_CHUNK as u64 && self.delta_threads > 1 {
                    let (n, err) = parallel_delta(
                        &mut file,
                        &indexed,
                        &mut delta,
                        &mut sig,
                        self.delta_threads,
                        self.progress,
                    )
                    .map_err(|e| EngineError::from((name(), e)))?;
                    len += n;
                    read_error = err;
                } else {
                    loop {
                        match fill(&mut file, &mut self.delta_buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                sig.update(&self.delta_buf[..n]);
                                delta
                                    .chunk(&self.delta_buf[..n])
                                    .map_err(|e| EngineError::from((name(), e)))?;
                                len += n as u64;
                                self.progress.bytes(n as u64);
                            }
                            Err(e) => {
                                read_error = Some(e);
                                break;
                            }
                        }
                    }
                }
                delta.finish().map_err(|e| EngineError::from((name(), e)))?;
            }
        }
        let (content_len, buf) = pieces.finish()?;
        self.piece_buf = buf;
        if let Some(e) = read_error {
            // Pieces already written cannot be taken back: the set holds what was read.
            self.warn(format!(
                "{}: read error after {len} bytes, stored truncated: {e}",
                src.path.display()
            ));
            self.stats.errors += 1;
        }
        Ok(Stored::Done {
            signature: sig.finish(),
            len: if basis.is_some() { content_len } else { len },
        })
    }

    fn new_path(&mut self, src: &SourceEntry, change: Change) -> Result<bool> {
        if src.meta.kind == FileKind::Regular {
            match self.store_file(src, None)? {
                Stored::Done { signature, len, .. } => {
                    self.sig_entry(
                        EntryKind::Signature,
                        &src.index,
                        Some(&src.meta),
                        &signature,
                    )?;
                    self.filelist(change, &src.index)?;
                    self.stats.raw_delta_size += len;
                    self.stats.delta_entries += 1;
                    Ok(true)
                }
                Stored::Skipped | Stored::Vanished => Ok(false),
            }
        } else {
            let name =
                EntryName::volume_name(EntryKind::Snapshot, &src.index, Some(src.meta.kind), None);
            self.vol
                .append(&src.meta.to_header(name), &[], &src.index, None)?;
            self.sig_entry(EntryKind::Snapshot, &src.index, Some(&src.meta), &[])?;
            self.stats.delta_entries += 1;
            Ok(true)
        }
    }

    fn deleted_path(&mut self, old: &SigEntry) -> Result<()> {
        let name = EntryName::volume_name(EntryKind::Deleted, &old.index, None, None);
        self.vol
            .append(&deleted_header(name), &[], &old.index, None)?;
        self.sig_entry(EntryKind::Deleted, &old.index, None, &[])?;
        if old.meta.kind == FileKind::Regular {
            self.filelist(Change::Deleted, &old.index)?;
        }
        self.stats.deleted_files += 1;
        self.stats.delta_entries += 1;
        Ok(())
    }

    fn changed_path(&mut self, src: &SourceEntry, old: &SigEntry) -> Result<()> {
        let basis = if src.meta.kind == FileKind::Regular && old.meta.kind == FileKind::Regular {
            old.signature
                .clone()
                .and_then(|s| BasisSignature::parse(s).ok())
        } else {
            None
        };
        if let Some(basis) = basis {
            match self.store_file(src, Some(&basis))? {
                Stored::Done { signature, len } => {
                    self.sig_entry(
                        EntryKind::Signature,
                        &src.index,
                        Some(&src.meta),
                        &signature,
                    )?;
                    self.filelist(Change::Changed, &src.index)?;
                    self.stats.changed_files += 1;
                    self.stats.changed_file_size += src.size;
                    self.stats.changed_delta_size += len;
                    self.stats.raw_delta_size += len;
                    self.stats.delta_entries += 1;
                }
                Stored::Vanished => self.deleted_path(old)?,
                Stored::Skipped => {}
            }
            return Ok(());
        }
        if self.new_path(src, Change::Changed)? {
            self.stats.changed_files += 1;
            self.stats.changed_file_size += src.size;
        }
        Ok(())
    }
}

/// The header of a `deleted/` entry (§3.3).
fn deleted_header(name: Vec<u8>) -> TarHeader {
    TarHeader {
        name,
        typeflag: flotilla_common::archive::tarfmt::TYPE_REGULAR,
        ..TarHeader::default()
    }
}

/// This host's name as the kernel reports it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `Localdir` as duplicity writes it: `.` components and duplicate/trailing `/` removed.
fn canonical_localdir(p: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let s = p.as_os_str().as_bytes();
    let abs = s.starts_with(b"/");
    let parts: Vec<&[u8]> = s
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let mut out = Vec::new();
    if abs {
        out.push(b'/');
    }
    out.extend(parts.join(&b'/'));
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// Runs one backup of `opts.source` into the context's store.
pub fn backup(ctx: &Context, opts: &BackupOptions) -> Result<BackupReport> {
    let start = now_f64();
    let source =
        std::fs::canonicalize(&opts.source).map_err(|e| EngineError::io(&opts.source, e))?;
    if !source.is_dir() {
        return Err(EngineError::Usage(format!(
            "source {} is not a directory",
            source.display()
        )));
    }
    let selection =
        Selection::new(&opts.selection, &source).map_err(|e| EngineError::Usage(e.to_string()))?;
    let cache = ArchiveCache::open(&ctx.state_dir, ctx.store.label())?;
    let listing = ctx.store.list()?;
    let coll = Collection::from_listing(listing.iter().map(|o| (o.name.clone(), o.size)));
    cache.prune(&coll);
    let mut warnings = Vec::new();
    for s in &coll.incomplete {
        let msg = format!(
            "ignoring incomplete {} set ({} volume(s), no manifest) left by an interrupted backup; \
             `flotilla-agent cleanup --force URL` deletes it",
            s.times,
            s.volumes.len()
        );
        tracing::warn!("{msg}");
        ctx.progress.note(&msg);
        warnings.push(msg);
    }

    let now = opts.time.unwrap_or_else(now_secs);
    let latest = coll.latest_chain();
    let mut full_reason = match (opts.mode, latest) {
        (BackupMode::Full, _) => Some("--full was given".to_string()),
        (_, None) => Some("no backup chain exists yet".to_string()),
        (_, Some(ch)) => match opts.full_if_older_than {
            Some(age) if ch.start() < now - age => Some(format!(
                "the chain's full backup ({}) is older than --full-if-older-than",
                flotilla_common::archive::format_time(ch.start())
            )),
            _ => None,
        },
    };
    if full_reason.is_none() {
        let chain = latest.expect("checked");
        if let Err(why) = cache.ensure_signatures(&ctx.store, chain, &opts.decrypt_keys)? {
            full_reason = Some(format!("{why}; starting a new full chain"));
        }
    }
    if let Some(r) = &full_reason {
        tracing::info!("full backup: {r}");
        ctx.progress.note(&format!("full backup: {r}"));
    }

    // Times: later than every set in the store, so names never clash.
    let newest_existing = coll
        .chains
        .iter()
        .flat_map(|c| c.sets())
        .chain(coll.incomplete.iter())
        .chain(coll.orphaned.iter())
        .map(|s| s.times.end())
        .max()
        .unwrap_or(0);
    let time = now.max(newest_existing + 1);
    let (set, sig_state) = match (&full_reason, latest) {
        (None, Some(chain)) => {
            let mut sources: Vec<(String, Box<dyn Read + Send>)> = Vec::new();
            for s in chain.sets() {
                let p = cache.sigtar_path(s.times);
                let f = File::open(&p).map_err(|e| EngineError::io(&p, e))?;
                sources.push((
                    p.display().to_string(),
                    Box::new(io::BufReader::with_capacity(1 << 20, f)),
                ));
            }
            (
                SetTimes::Incremental {
                    start: chain.end(),
                    end: time,
                },
                SignatureState::open(sources)?,
            )
        }
        _ => (SetTimes::Full { time }, SignatureState::empty()),
    };

    let sig_name = opts.codec.object_name(set, ObjectKind::Signatures).format();
    let man_name = opts.codec.object_name(set, ObjectKind::Manifest).format();
    let sig_part = cache.sigtar_path(set).with_extension("sigtar.part");
    let filelist_path = cache.dir().join("filelist.part");
    let sig_file = File::create(&sig_part).map_err(|e| EngineError::io(&sig_part, e))?;
    let filelist_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&filelist_path)
        .map_err(|e| EngineError::io(&filelist_path, e))?;

    // Size estimate for the progress bar, computed alongside (a second walk: only
    // when someone watches).
    if ctx.progress.wants_totals() {
        let progress = ctx.progress.clone();
        let root = source.clone();
        let sel = selection.clone();
        let skip = opts.skip.clone();
        std::thread::spawn(move || {
            let (mut bytes, mut files) = (0u64, 0u64);
            for e in Walker::new(root, sel, skip) {
                bytes += e.size;
                files += 1;
            }
            progress.set_total(bytes, files);
        });
    }
    ctx.progress.start("backup", None);

    let mut run = Run {
        vol: VolumeWriter::new(ctx.store.clone(), opts.codec.clone(), set, opts.volsize),
        sigtar: TarWriter::new(BufWriter::with_capacity(1 << 20, sig_file)),
        filelist: BufWriter::new(filelist_file),
        filelist_count: 0,
        stats: BackupStats {
            start_time: start,
            ..Default::default()
        },
        warnings,
        progress: &ctx.progress,
        piece_buf: Vec::with_capacity(PIECE_SIZE),
        read_buf: vec![0u8; READ_CHUNK],
        delta_buf: vec![0u8; DELTA_CHUNK],
        delta_threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        owners: Default::default(),
        cache_dir: cache.dir().to_path_buf(),
    };
    let mut walker = Walker::new(source.clone(), selection, opts.skip.clone()).ahead();
    let result = walk_and_store(&mut run, &mut walker, sig_state, ctx);
    let walk_warnings = walker.finish();
    run.stats.errors += walk_warnings.len() as u64;
    run.warnings.extend(walk_warnings);
    if let Err(e) = result {
        run.vol.abandon();
        let _ = std::fs::remove_file(&sig_part);
        let _ = std::fs::remove_file(&filelist_path);
        return Err(e);
    }
    let Run {
        vol,
        sigtar,
        filelist,
        filelist_count,
        mut stats,
        warnings,
        ..
    } = run;
    let (volumes, vol_bytes, mut objects) = vol.finish()?;
    let sig_file = sigtar
        .finish_archive()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(|e| EngineError::io(&sig_part, e))?;
    drop(sig_file);
    let mut filelist_file = filelist
        .into_inner()
        .map_err(|e| EngineError::io(&filelist_path, e.into_error()))?;

    // Signature file, then the manifest: the set is complete once the manifest exists.
    let sig_stored = upload_file(
        ctx,
        &opts.codec,
        ObjectKind::Signatures,
        &sig_name,
        &sig_part,
    )?;
    objects.push(sig_name);
    let manifest = Manifest {
        hostname: Some(opts.hostname.clone().unwrap_or_else(hostname).into_bytes()),
        localdir: Some(canonical_localdir(&opts.source)),
        volumes: volumes.iter().map(|v| (v.number, v.clone())).collect(),
    };
    let man_part = cache.manifest_path(set).with_extension("manifest.part");
    {
        let mut out = File::create(&man_part).map_err(|e| EngineError::io(&man_part, e))?;
        let mut write = || -> io::Result<()> {
            out.write_all(&manifest.header_bytes())?;
            writeln!(out, "Filelist {filelist_count}")?;
            filelist_file.rewind()?;
            io::copy(&mut filelist_file, &mut out)?;
            out.sync_all()
        };
        write().map_err(|e| EngineError::io(&man_part, e))?;
    }
    let _ = std::fs::remove_file(&filelist_path);
    let man_stored = upload_file(ctx, &opts.codec, ObjectKind::Manifest, &man_name, &man_part)?;
    objects.push(man_name);
    // The local cache mirrors the store only now that the set is complete.
    std::fs::rename(&sig_part, cache.sigtar_path(set))
        .map_err(|e| EngineError::io(&sig_part, e))?;
    std::fs::rename(&man_part, cache.manifest_path(set))
        .map_err(|e| EngineError::io(&man_part, e))?;

    stats.end_time = now_f64();
    stats.total_destination_size_change = vol_bytes + sig_stored.bytes + man_stored.bytes;
    ctx.progress.finish();
    Ok(BackupReport {
        kind: if set.is_full() { "full" } else { "incremental" },
        full_reason,
        set_start: match set {
            SetTimes::Incremental { start, .. } => Some(start),
            SetTimes::Full { .. } => None,
        },
        set_time: set.end(),
        volumes: volumes.len() as u32,
        objects,
        stats,
        warnings,
    })
}

fn upload_file(
    ctx: &Context,
    codec: &Codec,
    kind: ObjectKind,
    name: &str,
    path: &std::path::Path,
) -> Result<StoredInfo> {
    let mut f = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut w = codec.writer(kind, ctx.store.put_writer(name))?;
    io::copy(&mut f, &mut w).map_err(|e| EngineError::from_object_io(name, e))?;
    w.finish().map_err(|e| EngineError::from_object_io(name, e))
}

fn walk_and_store(
    run: &mut Run,
    walker: &mut WalkAhead,
    mut old: SignatureState,
    ctx: &Context,
) -> Result<()> {
    let mut walker = walker.by_ref().peekable();
    loop {
        let order = match (walker.peek(), old.peek()?) {
            (None, None) => return Ok(()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(s), Some(o)) => s.index.cmp(&o.index),
        };
        match order {
            Ordering::Less => {
                let src = walker.next().expect("peeked");
                count_source(run, &src);
                if run.new_path(&src, Change::New)? {
                    run.stats.new_files += 1;
                    run.stats.new_file_size += src.size;
                }
            }
            Ordering::Greater => {
                let o = old.next_entry()?.expect("peeked");
                run.deleted_path(&o)?;
            }
            Ordering::Equal => {
                let src = walker.next().expect("peeked");
                let mut o = old.next_entry()?.expect("peeked");
                count_source(run, &src);
                o.meta.uid = run.owners.local_uid(&o.meta.uname, o.meta.uid);
                o.meta.gid = run.owners.local_gid(&o.meta.gname, o.meta.gid);
                if !src.meta.same_as(&o.meta) || size_changed(&src, &o) {
                    run.changed_path(&src, &o)?;
                } else if src.meta.kind == FileKind::Regular {
                    ctx.progress.bytes(src.size);
                }
            }
        }
        ctx.progress.file();
        if ctx.progress.cancelled() {
            return Err(EngineError::Interrupted);
        }
    }
}

/// A regular file whose size is outside what its stored signature describes changed,
/// even with the same integer mtime (a file appended to within the second after the
/// previous backup read it, which mtime alone, as duplicity compares, would miss).
fn size_changed(src: &SourceEntry, old: &SigEntry) -> bool {
    src.meta.kind == FileKind::Regular
        && old
            .signature
            .as_deref()
            .and_then(flotilla_common::archive::rsync::size_bounds)
            .is_some_and(|(lo, hi)| src.size < lo || src.size > hi)
}

fn count_source(run: &mut Run, src: &SourceEntry) {
    run.stats.source_files += 1;
    run.stats.source_file_size += src.size;
}

impl BackupStats {
    /// duplicity's statistics block.
    pub fn render(&self) -> String {
        fn size(n: u64) -> String {
            let units = ["bytes", "KB", "MB", "GB", "TB"];
            let mut v = n as f64;
            let mut u = 0;
            while v >= 1024.0 && u < units.len() - 1 {
                v /= 1024.0;
                u += 1;
            }
            if u == 0 {
                format!("{n} ({n} bytes)")
            } else {
                format!("{n} ({v:.2} {})", units[u])
            }
        }
        fn t(x: f64) -> String {
            let dt = chrono::DateTime::from_timestamp(x as i64, 0)
                .map(|d| {
                    d.with_timezone(&chrono::Local)
                        .format("%a %b %e %H:%M:%S %Y")
                        .to_string()
                })
                .unwrap_or_default();
            format!("{x:.2} ({dt})")
        }
        let elapsed = self.end_time - self.start_time;
        let mut s = String::new();
        s.push_str("--------------[ Backup Statistics ]--------------\n");
        s.push_str(&format!("StartTime {}\n", t(self.start_time)));
        s.push_str(&format!("EndTime {}\n", t(self.end_time)));
        s.push_str(&format!(
            "ElapsedTime {elapsed:.2} ({elapsed:.2} seconds)\n"
        ));
        s.push_str(&format!("SourceFiles {}\n", self.source_files));
        s.push_str(&format!("SourceFileSize {}\n", size(self.source_file_size)));
        s.push_str(&format!("NewFiles {}\n", self.new_files));
        s.push_str(&format!("NewFileSize {}\n", size(self.new_file_size)));
        s.push_str(&format!("DeletedFiles {}\n", self.deleted_files));
        s.push_str(&format!("ChangedFiles {}\n", self.changed_files));
        s.push_str(&format!(
            "ChangedFileSize {}\n",
            size(self.changed_file_size)
        ));
        s.push_str(&format!(
            "ChangedDeltaSize {}\n",
            size(self.changed_delta_size)
        ));
        s.push_str(&format!("DeltaEntries {}\n", self.delta_entries));
        s.push_str(&format!("RawDeltaSize {}\n", size(self.raw_delta_size)));
        s.push_str(&format!(
            "TotalDestinationSizeChange {}\n",
            size(self.total_destination_size_change)
        ));
        s.push_str(&format!("Errors {}\n", self.errors));
        s.push_str("-------------------------------------------------\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localdir_is_canonicalised() {
        assert_eq!(
            canonical_localdir(std::path::Path::new("/srv//data/./")),
            b"/srv/data"
        );
        assert_eq!(canonical_localdir(std::path::Path::new("dt")), b"dt");
        assert_eq!(canonical_localdir(std::path::Path::new("./")), b".");
    }
}
