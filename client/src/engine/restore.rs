//! Restores (and the reading half of verify): the entry streams of a chain's sets,
//! merged by index and reconstructed as duplicity does (duplicity-format.md §3.7).
//!
//! Each set's selected volumes are downloaded, hashed and decrypted by a background
//! thread into a bounded channel; the merge runs on the caller's thread. A volume is
//! accepted only when its SHA-1 matches the manifest and its OpenPGP integrity check
//! passed at the end of the stream, so everything is written to a staging directory
//! first and moved into the target only after every volume checked out: a failed restore
//! leaves the target as it was.

use super::Context;
use super::codec::open_object_prefetched;
use super::error::{EngineError, Result};
use super::owners::Owners;
use super::sigstate::SignatureState;
use super::verify::RestoreCheck;
use super::writeout::{
    DataChecked, Expected, FinalMeta, Job, SMALL_FILE, Writers, apply_meta_fd, create_new_file,
};
use flotilla_common::archive::entry::{EntryKind, EntryName};
use flotilla_common::archive::rsync::apply_delta;
use flotilla_common::archive::tarfmt::{self, TarHeader, TarReader};
use flotilla_common::archive::{
    BackupSet, Collection, FileKind, FileMeta, Index, Manifest, StoredObject, VolumeInfo,
};
use flotilla_common::crypto::DecryptionKeys;
use flotilla_common::page_aligned::PageAlignedWriter;
use flotilla_common::storage::BlockingStore;
use serde::Serialize;
use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

const FEED_CHUNK: usize = 256 * 1024;
/// Lanes restoring segments of the tree side by side (at most one per core).
const RESTORE_LANES: usize = 2;
/// Threads creating small files, per lane (see `writeout`).
const WRITER_THREADS: usize = 2;
/// Chunks buffered per set stream and lane (bounded memory per set; with two lanes
/// reading, a deeper queue bought no speed).
const FEED_DEPTH: usize = 6;

enum Msg {
    /// A buffer and how many of its bytes are data.
    Data(Vec<u8>, usize),
    /// End of one volume, with its verdict.
    End(Result<()>),
}

/// The plaintext of a set's selected volumes, one volume after another: reads return
/// EOF at each volume's end until [`Feed::next_volume`].
struct Feed {
    rx: Receiver<Msg>,
    recycle: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    /// `buf[..len]` is data.
    len: usize,
    at_end: bool,
}

impl Read for Feed {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.len {
                let n = out.len().min(self.len - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.at_end {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d, len)) => {
                    let used = std::mem::replace(&mut self.buf, d);
                    let _ = self.recycle.try_send(used);
                    self.pos = 0;
                    self.len = len;
                }
                Ok(Msg::End(Ok(()))) => {
                    self.at_end = true;
                    return Ok(0);
                }
                Ok(Msg::End(Err(e))) => {
                    self.at_end = true;
                    return Err(e.into_io());
                }
                Err(_) => return Err(io::Error::other("volume reader stopped")),
            }
        }
    }
}

impl Feed {
    fn next_volume(&mut self) {
        self.at_end = false;
    }
}

/// Starts the background reader of a set's volumes.
fn spawn_feed(
    store: BlockingStore,
    volumes: Vec<(StoredObject, Option<String>)>,
    keys: DecryptionKeys,
) -> Feed {
    let (tx, rx) = sync_channel::<Msg>(FEED_DEPTH);
    let (recycle, recycled) = sync_channel::<Vec<u8>>(4);
    std::thread::Builder::new()
        .name("volume-reader".into())
        .spawn(move || {
            for (obj, expected) in volumes {
                let result = (|| -> Result<()> {
                    let (mut r, hash) =
                        open_object_prefetched(&store, &obj, &keys, expected.as_deref())?;
                    loop {
                        // Reuse the buffers the reader is done with: a fresh 256 KiB
                        // allocation per chunk is an mmap, page faults and zeroing. They
                        // come back whole (see `Feed::read`), so this zeroes nothing.
                        let mut chunk = recycled.try_recv().unwrap_or_default();
                        chunk.resize(FEED_CHUNK, 0);
                        let n = tarfmt::read_full(&mut r, &mut chunk)
                            .map_err(|e| EngineError::from_object_io(&obj.name, e))?;
                        if n == 0 {
                            break;
                        }
                        if tx.send(Msg::Data(chunk, n)).is_err() {
                            return Err(EngineError::Interrupted);
                        }
                    }
                    let actual = hash.get().unwrap_or_default();
                    match &expected {
                        Some(exp) if *exp != actual => Err(EngineError::HashMismatch {
                            object: obj.name.clone(),
                            expected: exp.clone(),
                            actual,
                        }),
                        _ => Ok(()),
                    }
                })();
                // A volume that fails to decrypt or parse may simply have been damaged in
                // storage: say so precisely when its stored bytes no longer match.
                let result = match (result, &expected) {
                    (Err(e), Some(exp))
                        if !matches!(
                            e,
                            EngineError::HashMismatch { .. } | EngineError::Interrupted
                        ) =>
                    {
                        match stored_sha1(&store, &obj.name) {
                            Some(actual) if actual != *exp => Err(EngineError::HashMismatch {
                                object: obj.name.clone(),
                                expected: exp.clone(),
                                actual,
                            }),
                            _ => Err(e),
                        }
                    }
                    (r, _) => r,
                };
                let failed = result.is_err();
                if tx.send(Msg::End(result)).is_err() || failed {
                    return;
                }
            }
        })
        .expect("spawn volume reader");
    Feed {
        rx,
        recycle,
        buf: Vec::new(),
        pos: 0,
        len: 0,
        at_end: false,
    }
}

/// SHA-1 of an object's stored bytes (`None` if it cannot be read).
fn stored_sha1(store: &BlockingStore, name: &str) -> Option<String> {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    io::copy(&mut store.get(name).ok()?, &mut h).ok()?;
    Some(super::codec::hex(&h.finalize()))
}

/// An entry of a set with its pieces joined.
#[derive(Clone, Debug)]
pub struct LogicalEntry {
    pub name: EntryName,
    pub header: TarHeader,
}

/// The entries of one set across its selected volumes.
struct SetStream {
    label: String,
    volume_names: Vec<String>,
    vol_pos: usize,
    tar: Option<TarReader<Feed>>,
    peeked: Option<(EntryName, TarHeader)>,
    /// The entry being read (for continuing multivol pieces).
    current: Option<EntryName>,
    exhausted: bool,
    /// Index of the previous entry: entries must come in strictly increasing order.
    last_index: Option<Index>,
}

impl SetStream {
    fn object(&self) -> String {
        self.volume_names
            .get(self.vol_pos)
            .cloned()
            .unwrap_or_else(|| self.label.clone())
    }

    /// A volume whose tar stream does not parse may have been damaged in storage: the
    /// reader finishes the volume (hash and integrity check) and, if its stored bytes
    /// no longer match the manifest, that is the error to report.
    fn blame_damage(&mut self, obj: &str, err: EngineError) -> EngineError {
        let Some(tar) = self.tar.take() else {
            return err;
        };
        let mut feed = tar.into_inner();
        match io::copy(&mut feed, &mut io::sink()) {
            Err(e) => match EngineError::from_object_io(obj, e) {
                m @ EngineError::HashMismatch { .. } => m,
                _ => err,
            },
            Ok(_) => err,
        }
    }

    /// The next raw tar entry, crossing volume boundaries.
    fn next_raw(&mut self) -> Result<Option<(EntryName, TarHeader)>> {
        loop {
            let obj = self.object();
            let Some(tar) = self.tar.as_mut() else {
                return Ok(None);
            };
            let header = match tar.next_header() {
                Ok(h) => h,
                Err(e) => {
                    let err = EngineError::from((obj.clone(), e));
                    return Err(self.blame_damage(&obj, err));
                }
            };
            match header {
                Some(h) => {
                    if h.typeflag == tarfmt::TYPE_HARDLINK {
                        return Err(EngineError::corrupt(
                            obj,
                            format!(
                                "hard link entry {:?} is not supported",
                                String::from_utf8_lossy(&h.name)
                            ),
                        ));
                    }
                    let name = EntryName::parse(&h.name)
                        .map_err(|e| EngineError::from((obj.clone(), e)))?;
                    if name.kind == EntryKind::Signature {
                        return Err(EngineError::corrupt(obj, "signature entry inside a volume"));
                    }
                    return Ok(Some((name, h)));
                }
                None => {
                    // Tar end: drain the rest (padding) so the hash and integrity check
                    // of this volume are complete, then go on with the next volume.
                    let mut feed = self.tar.take().expect("present").into_inner();
                    io::copy(&mut feed, &mut io::sink())
                        .map_err(|e| EngineError::from_object_io(&obj, e))?;
                    self.vol_pos += 1;
                    if self.vol_pos < self.volume_names.len() {
                        feed.next_volume();
                        self.tar = Some(TarReader::new(feed));
                    }
                }
            }
        }
    }

    /// Moves to the next logical entry, skipping what is left of the current one.
    fn next_entry(&mut self) -> Result<Option<LogicalEntry>> {
        if self.exhausted {
            return Ok(None);
        }
        if self.current.is_some() {
            let mut sink = io::sink();
            io::copy(self, &mut sink)
                .map_err(|e| EngineError::from_object_io(&self.object(), e))?;
        }
        self.current = None;
        let next = match self.peeked.take() {
            Some(p) => Some(p),
            None => self.next_raw()?,
        };
        match next {
            None => {
                self.exhausted = true;
                Ok(None)
            }
            Some((name, header)) => {
                if let Some(last) = self.last_index.as_ref().filter(|l| name.index <= **l) {
                    return Err(EngineError::corrupt(
                        self.object(),
                        format!(
                            "entry {} comes after {} (entries must be in strictly increasing \
                             order, each path once)",
                            name.index, last
                        ),
                    ));
                }
                self.last_index = Some(name.index.clone());
                self.current = Some(name.clone());
                Ok(Some(LogicalEntry { name, header }))
            }
        }
    }
}

impl Read for SetStream {
    /// Data of the current entry, following multivol pieces into later entries/volumes.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(cur) = self.current.clone() else {
            return Ok(0);
        };
        loop {
            if let Some(tar) = self.tar.as_mut() {
                let n = tar.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            if cur.piece.is_none() {
                return Ok(0);
            }
            // The piece is done; does the next entry continue it?
            match self.next_raw().map_err(EngineError::into_io)? {
                Some((n, h)) if n.piece.is_some() && n.index == cur.index && n.kind == cur.kind => {
                    let _ = h;
                }
                other => {
                    // The tar reader now stands in the next entry's data: this entry is
                    // over, and nothing more may be read for it.
                    self.peeked = other;
                    self.current = None;
                    return Ok(0);
                }
            }
        }
    }
}

/// The sets chosen for a restore at a time, with their manifests.
pub struct RestorePlan {
    pub sets: Vec<(BackupSet, Manifest)>,
    pub time: i64,
}

/// Picks the chain and sets for time `t` and reads their manifests.
pub fn plan(ctx: &Context, time: i64, keys: &DecryptionKeys) -> Result<RestorePlan> {
    let listing = ctx.store.list()?;
    let coll = Collection::from_listing(listing.iter().map(|o| (o.name.clone(), o.size)));
    if coll.chains.is_empty() {
        let mut msg = format!("no complete backup found in {}", ctx.store.label());
        if !coll.incomplete.is_empty() {
            msg.push_str(&format!(
                " ({} incomplete set(s) from interrupted backups are never restored)",
                coll.incomplete.len()
            ));
        }
        return Err(EngineError::NoBackup(msg));
    }
    let chain = coll.chain_for_time(time)?;
    let mut sets = Vec::new();
    for set in chain.sets_until(time) {
        let obj = set.manifest.as_ref().expect("complete sets have manifests");
        let manifest = super::codec::read_manifest(&ctx.store, obj, keys)?;
        for v in manifest.volumes.values() {
            if !set.volumes.contains_key(&v.number) {
                return Err(EngineError::MissingVolume {
                    set: set.times.to_string(),
                    number: v.number,
                });
            }
            if v.sha1.is_none() {
                return Err(EngineError::corrupt(
                    &obj.name,
                    format!("volume {} has no SHA1 hash", v.number),
                ));
            }
        }
        if let Some(d) = set.duplicates.first() {
            return Err(EngineError::corrupt(
                d,
                "two objects for the same part of a set",
            ));
        }
        sets.push((set.clone(), manifest));
    }
    Ok(RestorePlan { sets, time })
}

/// What a reconstructed regular file's content is.
pub enum Content<'a> {
    /// Not a regular file.
    None,
    /// Stream the data.
    Stream(&'a mut dyn Read),
    /// Already materialized in a scratch file (after deltas); the sink takes it.
    Scratch(PathBuf),
}

/// Receives the reconstructed tree in index order.
pub trait TreeSink {
    /// A directory for scratch files on the same file system as the output.
    fn scratch_dir(&self) -> &Path;
    fn entry(&mut self, index: &Index, meta: &FileMeta, content: Content<'_>) -> Result<()>;
}

/// Counts of a reconstruction.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TreeStats {
    pub files: u64,
    pub bytes: u64,
    pub volumes: u64,
    pub sets: u64,
}

impl TreeStats {
    /// Adds the files, bytes and volumes of another part of the same reconstruction.
    fn add(&mut self, part: &TreeStats) {
        self.files += part.files;
        self.bytes += part.bytes;
        self.volumes += part.volumes;
    }
}

/// A segment of the index space that one lane of a restore reconstructs: the paths
/// after `after` through `through` (`None`: open-ended).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Lane {
    pub after: Option<Index>,
    pub through: Option<Index>,
}

impl Lane {
    /// The whole tree.
    pub(crate) fn all() -> Lane {
        Lane::default()
    }

    fn holds(&self, index: &Index) -> bool {
        self.after.as_ref().is_none_or(|a| index > a)
            && self.through.as_ref().is_none_or(|t| index <= t)
    }

    /// Whether `volume` may hold entries of this segment.
    fn may_hold(&self, volume: &VolumeInfo) -> bool {
        self.after.as_ref().is_none_or(|a| volume.end > *a)
            && self.through.as_ref().is_none_or(|t| volume.start <= *t)
    }

    /// Whether everything from `index` on lies beyond this segment.
    fn is_past(&self, index: &Index) -> bool {
        self.through.as_ref().is_some_and(|t| index > t)
    }
}

/// Most segments a restore is cut into (see [`split_segments`]). More balance the lanes
/// better; but a volume of an incremental set that spans several segments is read again,
/// from its start, for each.
const MAX_SEGMENTS: usize = 16;

/// Cuts a restore of `prefix` into segments that lanes can restore side by side, at
/// the last path of volumes of the full set, about as many volumes in each (a volume
/// holds about the same amount of data whether it compresses well or not). Each volume
/// is an independent OpenPGP message of whole tar entries, so segments are read,
/// decrypted and inflated apart; a file that continues into the next volume is read to
/// its end by the lane of its segment, and the next lane skips its rest. Every volume is
/// read to its end (hashed and its integrity checked) by the lane of the segment its
/// last path is in. One segment for the whole tree when the volumes give no place to cut
/// (one volume, or one file across all of them).
pub(crate) fn split_segments(plan: &RestorePlan, prefix: &Index) -> Vec<Lane> {
    let Some((_, manifest)) = plan.sets.first() else {
        return vec![Lane::all()];
    };
    let selected: Vec<&VolumeInfo> = manifest
        .volumes
        .values()
        .filter(|v| v.may_contain(prefix))
        .collect();
    let per_segment = selected.len().div_ceil(MAX_SEGMENTS).max(1);
    let mut boundaries: Vec<Index> = Vec::new();
    let mut since_cut = 0;
    for pair in selected.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        since_cut += 1;
        // The next volume must hold paths of its own, not only the rest of one file.
        let has_own = next.start >= prev.end && next.end > prev.end;
        if has_own && since_cut >= per_segment {
            boundaries.push(prev.end.clone());
            since_cut = 0;
        }
    }
    let mut segments = Vec::with_capacity(boundaries.len() + 1);
    let mut after = None;
    for b in boundaries {
        segments.push(Lane {
            after: after.replace(b.clone()),
            through: Some(b),
        });
    }
    segments.push(Lane {
        after,
        through: None,
    });
    segments
}

/// Runs the merge of §3.7 for `plan`, restricted to `prefix` (re-rooted at it).
pub fn reconstruct(
    ctx: &Context,
    plan: &RestorePlan,
    prefix: &Index,
    keys: &DecryptionKeys,
    sink: &mut dyn TreeSink,
) -> Result<TreeStats> {
    let lane = reconstruct_lane(ctx, plan, prefix, &Lane::all(), keys, sink, None)?;
    if !lane.found_prefix {
        return Err(not_in_backup(prefix, plan));
    }
    Ok(lane.stats)
}

fn not_in_backup(prefix: &Index, plan: &RestorePlan) -> EngineError {
    EngineError::NoBackup(format!(
        "{} is not in the backup at {}",
        prefix,
        flotilla_common::archive::format_time(plan.time)
    ))
}

/// What one lane of a reconstruction did.
pub(crate) struct LaneDone {
    pub stats: TreeStats,
    /// Whether the lane met `prefix` or anything below it.
    pub found_prefix: bool,
}

/// The merge of §3.7 for the entries of `lane` under `prefix`. `stop` is raised by
/// another lane that failed: this one then stops too.
pub(crate) fn reconstruct_lane(
    ctx: &Context,
    plan: &RestorePlan,
    prefix: &Index,
    lane: &Lane,
    keys: &DecryptionKeys,
    sink: &mut dyn TreeSink,
    stop: Option<&AtomicBool>,
) -> Result<LaneDone> {
    let mut stats = TreeStats::default();
    let mut streams: Vec<SetStream> = Vec::new();
    for (set, manifest) in &plan.sets {
        let selected: Vec<(StoredObject, Option<String>)> = manifest
            .volumes
            .values()
            .filter(|v| v.may_contain(prefix) && lane.may_hold(v))
            .map(|v| (set.volumes[&v.number].clone(), v.sha1.clone()))
            .collect();
        stats.volumes += selected.len() as u64;
        stats.sets += 1;
        let names = selected.iter().map(|(o, _)| o.name.clone()).collect();
        let tar = if selected.is_empty() {
            None
        } else {
            Some(TarReader::new(spawn_feed(
                ctx.store.clone(),
                selected,
                keys.clone(),
            )))
        };
        streams.push(SetStream {
            label: set.times.to_string(),
            volume_names: names,
            vol_pos: 0,
            tar,
            peeked: None,
            current: None,
            exhausted: false,
            last_index: None,
        });
    }
    let mut heads: Vec<Option<LogicalEntry>> = Vec::with_capacity(streams.len());
    for s in streams.iter_mut() {
        heads.push(s.next_entry()?);
    }
    let mut found_prefix = prefix.is_root();
    while let Some(min) = heads.iter().flatten().map(|e| e.name.index.clone()).min() {
        // The volumes of the rest are all read (and checked) by the next lane.
        if lane.is_past(&min) {
            break;
        }
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(EngineError::Interrupted);
        }
        let holders: Vec<usize> = (0..heads.len())
            .filter(|&i| heads[i].as_ref().is_some_and(|e| e.name.index == min))
            .collect();
        if let Some(rel) = min.strip_prefix(prefix).filter(|_| lane.holds(&min)) {
            // A file's first piece must be among the volumes read (they were chosen by
            // the manifests' ranges): never restore the tail of a file as the file.
            if let Some(&i) = holders.iter().find(|&&i| {
                let name = &heads[i].as_ref().expect("holder").name;
                name.piece.is_some_and(|k| k != 1)
            }) {
                return Err(EngineError::corrupt(
                    streams[i].object(),
                    format!("{min}: the file continues from a volume before this one"),
                ));
            }
            let base = holders
                .iter()
                .rposition(|&i| heads[i].as_ref().expect("holder").name.kind != EntryKind::Diff);
            match base {
                None => {
                    return Err(EngineError::corrupt(
                        streams[holders[0]].object(),
                        format!("{min}: a delta with no full copy before it in the chain"),
                    ));
                }
                Some(b) => {
                    let base_i = holders[b];
                    let base_entry = heads[base_i].clone().expect("holder");
                    if base_entry.name.kind != EntryKind::Deleted {
                        found_prefix = true;
                        let last = heads[*holders.last().expect("nonempty")]
                            .clone()
                            .expect("holder");
                        let meta = FileMeta::from_header(&last.header).ok_or_else(|| {
                            EngineError::corrupt(
                                streams[base_i].object(),
                                format!("{min}: unsupported entry type"),
                            )
                        })?;
                        let base_meta = FileMeta::from_header(&base_entry.header);
                        let diffs: Vec<usize> = holders[b + 1..].to_vec();
                        if base_meta
                            .as_ref()
                            .is_some_and(|m| m.kind == FileKind::Regular)
                        {
                            if diffs.is_empty() {
                                let mut counting = CountingReader {
                                    inner: &mut streams[base_i],
                                    n: 0,
                                };
                                sink.entry(&rel, &meta, Content::Stream(&mut counting))?;
                                stats.bytes += counting.n;
                                ctx.progress.bytes(counting.n);
                            } else {
                                let path = materialize(
                                    &mut streams,
                                    base_i,
                                    &diffs,
                                    sink.scratch_dir(),
                                    &min,
                                )?;
                                let n = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                                stats.bytes += n;
                                ctx.progress.bytes(n);
                                sink.entry(&rel, &meta, Content::Scratch(path))?;
                            }
                        } else if !diffs.is_empty() && meta.kind == FileKind::Regular {
                            return Err(EngineError::corrupt(
                                streams[diffs[0]].object(),
                                format!(
                                    "{min}: delta against something that is not a regular file"
                                ),
                            ));
                        } else {
                            sink.entry(&rel, &meta, Content::None)?;
                        }
                        stats.files += 1;
                        ctx.progress.file();
                        if ctx.progress.cancelled() {
                            return Err(EngineError::Interrupted);
                        }
                    }
                }
            }
        }
        for &i in &holders {
            heads[i] = streams[i].next_entry()?;
        }
    }
    Ok(LaneDone {
        stats,
        found_prefix,
    })
}

struct CountingReader<'a, R: Read> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Bytes of a file written from a delta that one writer checks at a time.
const CHECK_RANGE: usize = 8 << 20;

static SCRATCH_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn scratch_path(dir: &Path) -> PathBuf {
    let n = SCRATCH_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("scratch-{}-{n}", std::process::id()))
}

/// Write buffer of the files a delta is applied to and from.
const SCRATCH_BUFFER: usize = 1 << 20;

/// Writes the base snapshot to a scratch file and applies the deltas in order.
fn materialize(
    streams: &mut [SetStream],
    base: usize,
    diffs: &[usize],
    dir: &Path,
    index: &Index,
) -> Result<PathBuf> {
    let mut path = scratch_path(dir);
    {
        let f = File::create(&path).map_err(|e| EngineError::io(&path, e))?;
        let obj = streams[base].object();
        let mut w = PageAlignedWriter::new(f, 0, SCRATCH_BUFFER);
        w.copy_from(&mut streams[base])
            .map_err(|e| EngineError::from_object_io(&obj, e))?;
        w.flush().map_err(|e| EngineError::io(&path, e))?;
    }
    for &d in diffs {
        let next = scratch_path(dir);
        let obj = streams[d].object();
        {
            let basis = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
            let out = File::create(&next).map_err(|e| EngineError::io(&next, e))?;
            let mut w = PageAlignedWriter::new(out, 0, SCRATCH_BUFFER);
            apply_delta(&mut streams[d], &basis, &mut w)
                .map_err(|e| EngineError::from((format!("{obj} ({index})"), e)))?;
            w.flush().map_err(|e| EngineError::io(&next, e))?;
        }
        let _ = std::fs::remove_file(&path);
        path = next;
    }
    Ok(path)
}

/// Options of a restore.
#[derive(Clone)]
pub struct RestoreOptions {
    pub time: i64,
    /// Restore only this path (re-rooted at the target).
    pub path: Index,
    pub target: PathBuf,
    pub force: bool,
    pub keys: DecryptionKeys,
    /// Set owners (default when running as root).
    pub restore_owner: bool,
    /// Use the stored numeric ids, not the names.
    pub numeric_owner: bool,
    /// Check the restored data against the backup's signature files as it is written,
    /// and the restored tree's metadata after the restore (`verify::check_restored`).
    pub verify: bool,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The time asked for.
    pub time: i64,
    /// The time of the newest set restored (what the restored tree corresponds to).
    pub backup_time: i64,
    pub sets: Vec<String>,
    pub target: PathBuf,
    pub stats: TreeStats,
    /// Paths that could not be restored (e.g. device nodes without root).
    pub warnings: Vec<String>,
    /// Where the restored root landed (the target, or a file in it).
    pub restored_root: PathBuf,
    /// The check against the signatures, when asked for.
    pub check: Option<RestoreCheck>,
}

fn to_cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn set_mtime(path: &Path, mtime: i64, follow: bool) -> io::Result<()> {
    let c = to_cstring(path)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: mtime as libc::time_t,
            tv_nsec: 0,
        },
    ];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid C string and a 2-element timespec array.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32))
}

/// Writes the reconstructed tree into a staging directory.
struct StagingSink {
    root: PathBuf,
    scratch: PathBuf,
    dirs: Vec<(Index, PathBuf, FileMeta)>,
    owners: Owners,
    restore_owner: bool,
    numeric_owner: bool,
    root_kind: Option<FileKind>,
    warnings: Vec<String>,
    /// Top-level directories whose metadata waits for the final move.
    deferred: Vec<(Index, FileMeta)>,
    /// Create small files and symlinks in parallel.
    writers: Writers,
    /// Closed directories whose final metadata waits for the files handed to the writers
    /// before they were closed: (jobs submitted at the close, path, metadata).
    closed_dirs: VecDeque<(u64, Completed)>,
    /// The backup's signatures, when the restored data is checked as it is written.
    signatures: Option<SignatureLookup>,
    /// Directories left open at the end of a segment (see `run_lanes`).
    held_open: Vec<(Index, PathBuf, FileMeta)>,
    /// Parents of the current path checked on disk that are not in `dirs` (made by an
    /// earlier lane, or for an archive without their directory entries).
    checked_parents: Vec<Index>,
}

/// The backup's signature files read in step with the restore (both go in index order),
/// so each regular file's data can be checked against its signature as it is written.
pub(crate) struct SignatureLookup {
    state: SignatureState,
    /// The restored path (entries are re-rooted at it).
    prefix: Index,
    /// Why the signatures could not be read to the end (the restore goes on unchecked:
    /// damaged signatures say nothing about the data).
    broken: Option<String>,
}

impl SignatureLookup {
    /// The signature files of `sets` from their start, or why they cannot be read.
    fn open(
        ctx: &Context,
        sets: &[&BackupSet],
        opts: &RestoreOptions,
    ) -> Result<std::result::Result<SignatureLookup, String>> {
        Ok(
            super::verify::restore_signatures(ctx, sets, &opts.keys)?.map(|state| {
                SignatureLookup {
                    state,
                    prefix: opts.path.clone(),
                    broken: None,
                }
            }),
        )
    }

    /// The stored signature of `rel` (relative to the prefix), if the backup has one;
    /// the paths before it are skipped.
    fn signature_of(&mut self, rel: &Index) -> Option<Vec<u8>> {
        if self.broken.is_some() {
            return None;
        }
        match self.find(rel) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("the restore's data goes unchecked: {e}");
                self.broken = Some(format!("the signature files could not be read: {e}"));
                None
            }
        }
    }

    fn find(&mut self, rel: &Index) -> Result<Option<Vec<u8>>> {
        loop {
            let Some(e) = self.state.peek()? else {
                return Ok(None);
            };
            match e.index.strip_prefix(&self.prefix) {
                Some(r) => match r.cmp(rel) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Ok(self.state.next_entry()?.and_then(|e| e.signature));
                    }
                    std::cmp::Ordering::Greater => return Ok(None),
                },
                None if e.index < self.prefix => {}
                None => return Ok(None),
            }
            self.state.next_entry()?;
        }
    }
}

/// A directory or large file whose content is complete once the writers catch up.
enum Completed {
    Dir(PathBuf, FileMeta),
    /// A large file written in pieces by the writers: its metadata goes last.
    File(Arc<File>, PathBuf, FinalMeta),
}

/// Closed directories and files waiting for the writers beyond which the merge waits
/// for them (bounds `closed_dirs`).
const MAX_WAITING_DIRS: usize = 4096;

impl StagingSink {
    fn path_of(&self, index: &Index) -> PathBuf {
        let mut p = self.root.clone();
        for c in index.components() {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    fn apply_meta(&mut self, path: &Path, meta: &FileMeta) -> io::Result<()> {
        if self.restore_owner {
            let (uid, gid) = self.owner_ids(meta);
            lchown(path, uid, gid)?;
        }
        if meta.kind == FileKind::Symlink {
            return Ok(()); // duplicity restores no symlink mode or mtime
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.perms))?;
        set_mtime(path, meta.mtime, false)
    }

    /// The local owner of a restored path: by name first (like duplicity), unless
    /// `--numeric-owner`.
    fn owner_ids(&mut self, meta: &FileMeta) -> (u64, u64) {
        if self.numeric_owner {
            (meta.uid, meta.gid)
        } else {
            (
                self.owners.local_uid(&meta.uname, meta.uid),
                self.owners.local_gid(&meta.gname, meta.gid),
            )
        }
    }

    /// The owner to set on a restored path, if owners are restored.
    fn owner_to_set(&mut self, meta: &FileMeta) -> Option<(u32, u32)> {
        self.restore_owner.then(|| {
            let (uid, gid) = self.owner_ids(meta);
            (uid as u32, gid as u32)
        })
    }

    fn final_meta(&mut self, meta: &FileMeta) -> FinalMeta {
        FinalMeta {
            perms: meta.perms,
            mtime: meta.mtime,
            owner: self.owner_to_set(meta),
        }
    }

    /// A directory (or a large file) is complete: its metadata is applied once the
    /// writers wrote everything handed to them so far (a directory mode without write
    /// permission would stop them, and a new file or a late write would change an mtime).
    fn complete(&mut self, what: Completed) -> Result<()> {
        self.closed_dirs.push_back((self.writers.submitted(), what));
        if self.closed_dirs.len() > MAX_WAITING_DIRS {
            self.writers.wait_all()?;
        }
        let done = self.writers.done();
        while self.closed_dirs.front().is_some_and(|(n, _)| *n <= done) {
            let (_, what) = self.closed_dirs.pop_front().expect("non-empty");
            self.apply_completed(what)?;
        }
        Ok(())
    }

    fn close_dir(&mut self, path: PathBuf, meta: FileMeta) -> Result<()> {
        self.complete(Completed::Dir(path, meta))
    }

    fn apply_completed(&mut self, what: Completed) -> Result<()> {
        match what {
            Completed::Dir(path, meta) => self
                .apply_meta(&path, &meta)
                .map_err(|e| EngineError::io(&path, e)),
            Completed::File(file, path, meta) => {
                apply_meta_fd(&file, &meta).map_err(|e| EngineError::io(&path, e))
            }
        }
    }

    /// Waits for the writers and applies the metadata of everything completed.
    fn settle(&mut self) -> Result<()> {
        self.writers.wait_all()?;
        while let Some((_, what)) = self.closed_dirs.pop_front() {
            self.apply_completed(what)?;
        }
        Ok(())
    }

    fn close_dirs_until(&mut self, index: Option<&Index>) -> Result<()> {
        while let Some((di, _, _)) = self.dirs.last() {
            if index.is_some_and(|i| i.starts_with(di) && i != di) {
                break;
            }
            let (index, path, meta) = self.dirs.pop().expect("non-empty");
            if index.depth() <= 1 {
                // Top-level directories are moved into the target at the end; they
                // get their final (maybe read-only) mode after that move.
                self.deferred.push((index, meta));
                continue;
            }
            self.close_dir(path, meta)?;
        }
        Ok(())
    }

    /// Writes a regular file: small ones whole by a writer, large ones created here and
    /// written in pieces by the writers; `check` is its signature to check the data
    /// against as it is written.
    fn regular_file(
        &mut self,
        index: &Index,
        path: PathBuf,
        meta: &FileMeta,
        content: Content<'_>,
        check: Option<Arc<Expected>>,
    ) -> Result<()> {
        let io_err = |e| EngineError::io(&path, e);
        match content {
            Content::Scratch(scratch) => {
                // Opened before its final mode is set, which may forbid reading it.
                let opened = match &check {
                    Some(_) => {
                        Some(File::open(&scratch).map_err(|e| EngineError::io(&scratch, e))?)
                    }
                    None => None,
                };
                std::fs::rename(&scratch, &path).map_err(io_err)?;
                self.apply_meta(&path, meta).map_err(io_err)?;
                let (Some(file), Some(check)) = (opened, check) else {
                    return Ok(());
                };
                // In ranges of whole pieces, which the writer threads check side by side.
                let size = file
                    .metadata()
                    .map_err(|e| EngineError::io(&path, e))?
                    .len();
                self.writers.check_file_size(&check, size);
                let range =
                    (CHECK_RANGE / check.piece_len()).max(1) as u64 * check.piece_len() as u64;
                let file = Arc::new(file);
                let mut offset = 0;
                while offset < size {
                    let len = range.min(size - offset);
                    self.writers.submit(Job::Check {
                        file: Arc::clone(&file),
                        path: path.clone(),
                        check: Arc::clone(&check),
                        offset,
                        len,
                    })?;
                    offset += len;
                }
                Ok(())
            }
            Content::Stream(r) => {
                let read_err = |e| EngineError::from_object_io(&index.display(), e);
                // Pieces of whole signature blocks, so that each can be checked apart.
                let piece_len = check.as_ref().map_or(SMALL_FILE, |c| c.piece_len());
                // Buffers keep their length between uses: read_to_end would zero them first.
                let mut head = self.writers.buffer(piece_len);
                let n = tarfmt::read_full(r, &mut head[..piece_len]).map_err(read_err)?;
                if n < piece_len {
                    // Most files: an exact copy is queued and the buffer kept.
                    let data = head[..n].to_vec();
                    self.writers.keep(head);
                    let meta = self.final_meta(meta);
                    return self.writers.submit(Job::File {
                        path,
                        data,
                        meta,
                        check,
                    });
                }
                head.truncate(piece_len);
                // A large file: created here, its pieces written by the writers at
                // their offsets (copying into the page cache is most of a restore's
                // CPU time; this way both cores do it).
                let file = Arc::new(create_new_file(&path).map_err(io_err)?);
                let mut offset = 0u64;
                let mut piece = head;
                loop {
                    let n = piece.len() as u64;
                    self.writers.submit(Job::WriteAt {
                        file: Arc::clone(&file),
                        path: path.clone(),
                        offset,
                        data: piece,
                        check: check.clone(),
                    })?;
                    offset += n;
                    piece = self.writers.buffer(piece_len);
                    let n = tarfmt::read_full(r, &mut piece[..piece_len]).map_err(read_err)?;
                    if n == 0 {
                        self.writers.keep(piece);
                        break;
                    }
                    piece.truncate(n);
                }
                if let Some(check) = &check {
                    self.writers.check_file_size(check, offset);
                }
                let meta = self.final_meta(meta);
                self.complete(Completed::File(file, path, meta))
            }
            Content::None => {
                let meta = self.final_meta(meta);
                self.writers.submit(Job::File {
                    path,
                    data: Vec::new(),
                    meta,
                    check,
                })
            }
        }
    }

    /// The parent of `path` must be a directory this restore created (never a symlink
    /// from the archive, which could point outside the target).
    fn check_parent(&mut self, index: &Index, path: &Path) -> Result<()> {
        let Some(parent_index) = index.parent() else {
            return Ok(());
        };
        if self
            .dirs
            .last()
            .is_some_and(|(di, _, _)| *di == parent_index)
            || self.checked_parents.contains(&parent_index)
        {
            return Ok(());
        }
        // What the writers were given must be on disk before the parent is looked at
        // (a symlink handed out just before its would-be child).
        self.writers.wait_all()?;
        let parent = path.parent().expect("has parent");
        match std::fs::symlink_metadata(parent) {
            Ok(md) if md.is_dir() && !md.file_type().is_symlink() => {}
            Ok(_) => {
                return Err(EngineError::corrupt(
                    "archive",
                    format!(
                        "refusing to restore {index}: its parent is not a directory in the backup"
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Directory entries missing from the archive (duplicity would crash on a
                // set without its root entry), or not restored yet by the lane before
                // this one: create them, checking each existing component on the way.
                let mut p = self.root.clone();
                create_dir_checked(&p, index)?;
                for c in parent_index.components() {
                    p.push(OsStr::from_bytes(c));
                    create_dir_checked(&p, index)?;
                }
            }
            Err(e) => return Err(EngineError::io(parent, e)),
        }
        // A directory this restore made is never replaced (nothing is created over an
        // existing path), so it need not be looked at again. Only the parents of the
        // current path are kept: at most its depth.
        self.checked_parents.retain(|p| parent_index.starts_with(p));
        self.checked_parents.push(parent_index);
        Ok(())
    }
}

/// Makes the directory `p` (a parent for `index`) unless a directory is there already:
/// anything else there is refused. Another lane of the restore may make it at the same
/// moment.
fn create_dir_checked(p: &Path, index: &Index) -> Result<()> {
    let refuse = || {
        EngineError::corrupt(
            "archive",
            format!("refusing to restore {index}: a parent is not a directory"),
        )
    };
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(refuse()),
        Err(_) => match std::fs::create_dir(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match std::fs::symlink_metadata(p) {
                    Ok(md) if md.is_dir() => Ok(()),
                    _ => Err(refuse()),
                }
            }
            Err(e) => Err(EngineError::io(p, e)),
        },
    }
}

impl TreeSink for StagingSink {
    fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    fn entry(&mut self, index: &Index, meta: &FileMeta, content: Content<'_>) -> Result<()> {
        self.close_dirs_until(Some(index))?;
        if index.is_root() {
            self.root_kind = Some(meta.kind);
        }
        let path = self.path_of(index);
        self.check_parent(index, &path)?;
        let io_err = |e| EngineError::io(&path, e);
        match meta.kind {
            FileKind::Directory => {
                match std::fs::create_dir(&path) {
                    Ok(()) => {}
                    // Only a directory this restore made may be there already (a parent
                    // created for an archive without directory entries); never a symlink.
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(io_err(e)),
                }
                // Owner-writable until its contents are in; final mode applied on close.
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
                self.dirs.push((index.clone(), path, meta.clone()));
                return Ok(());
            }
            FileKind::Regular => {
                let check = match &mut self.signatures {
                    Some(lookup) => lookup
                        .signature_of(index)
                        .map(|sig| Arc::new(Expected::new(index.clone(), sig))),
                    None => None,
                };
                return self.regular_file(index, path, meta, content, check);
            }
            FileKind::Symlink => {
                let owner = self.owner_to_set(meta);
                return self.writers.submit(Job::Symlink {
                    path,
                    target: meta.link_target.clone(),
                    owner,
                });
            }
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                let c = to_cstring(&path).map_err(io_err)?;
                let (kind_bits, dev) = match meta.kind {
                    FileKind::Fifo => (libc::S_IFIFO, 0),
                    FileKind::CharDevice => {
                        (libc::S_IFCHR, libc::makedev(meta.devmajor, meta.devminor))
                    }
                    _ => (libc::S_IFBLK, libc::makedev(meta.devmajor, meta.devminor)),
                };
                // SAFETY: valid C string.
                if unsafe { libc::mknod(c.as_ptr(), kind_bits | 0o600, dev) } != 0 {
                    let e = io::Error::last_os_error();
                    if meta.kind != FileKind::Fifo && e.kind() == io::ErrorKind::PermissionDenied {
                        let msg =
                            format!("{index}: cannot create a device node without root; skipped");
                        tracing::warn!("{msg}");
                        self.warnings.push(msg);
                        return Ok(());
                    }
                    return Err(io_err(e));
                }
            }
        }
        self.apply_meta(&path, meta)
            .map_err(|e| EngineError::io(&path, e))
    }
}

/// Restores `segments` with one lane per sink, the first on this thread and the others
/// on threads of their own, each taking the next segment not taken yet (so each lane's
/// segments come in order, as its reading of the signature files needs). When one lane
/// fails the others stop, and the first real failure is returned.
fn run_lanes(
    ctx: &Context,
    plan: &RestorePlan,
    opts: &RestoreOptions,
    segments: &[Lane],
    sinks: &mut [StagingSink],
) -> Result<TreeStats> {
    let stop = AtomicBool::new(false);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = |sink: &mut StagingSink| -> Result<LaneDone> {
        let mut all = LaneDone {
            stats: TreeStats::default(),
            found_prefix: false,
        };
        while let Some(segment) = segments.get(next.fetch_add(1, Ordering::Relaxed)) {
            let started = std::time::Instant::now();
            let done = reconstruct_lane(
                ctx,
                plan,
                &opts.path,
                segment,
                &opts.keys,
                sink,
                Some(&stop),
            );
            let millis = started.elapsed().as_millis() as u64;
            tracing::debug!(?segment.through, millis, "segment restored");
            let done = match done {
                Ok(done) => done,
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            };
            // The directories still open may hold files of later segments, which other
            // lanes write: their metadata waits for the end of the restore.
            sink.held_open.append(&mut sink.dirs);
            all.found_prefix |= done.found_prefix;
            all.stats.add(&done.stats);
        }
        Ok(all)
    };
    let (first, others) = sinks.split_first_mut().expect("one sink per lane");
    let results: Vec<Result<LaneDone>> = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter_mut()
            .map(|sink| {
                std::thread::Builder::new()
                    .name("restore-lane".into())
                    .spawn_scoped(scope, || run(sink))
                    .expect("spawn restore lane")
            })
            .collect();
        let mut results = vec![run(first)];
        for h in handles {
            results.push(
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        results
    });
    let mut stats = TreeStats {
        sets: plan.sets.len() as u64,
        ..TreeStats::default()
    };
    let mut found_prefix = false;
    let mut interrupted = None;
    for r in results {
        match r {
            Ok(done) => {
                found_prefix |= done.found_prefix;
                stats.add(&done.stats);
            }
            // A lane stopped because another one failed: that failure is the one to tell.
            Err(EngineError::Interrupted) => interrupted = Some(EngineError::Interrupted),
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = interrupted {
        return Err(e);
    }
    if !found_prefix {
        return Err(not_in_backup(&opts.path, plan));
    }
    Ok(stats)
}

/// Removes whatever is at `path` (a directory with its contents); absent is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn dir_is_empty(p: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(p)?.next().is_none())
}

static STAGING_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Restores the tree (or `opts.path`) as it was at `opts.time` into `opts.target`.
pub fn restore(ctx: &Context, opts: &RestoreOptions) -> Result<RestoreReport> {
    let target = &opts.target;
    // Check the target before anything is downloaded.
    let target_md = std::fs::symlink_metadata(target);
    let created_target = match &target_md {
        Ok(md) if md.is_dir() => {
            if !opts.force && !dir_is_empty(target).map_err(|e| EngineError::io(target, e))? {
                return Err(EngineError::TargetNotEmpty(target.clone()));
            }
            false
        }
        Ok(_) if !opts.force => {
            return Err(EngineError::Usage(format!(
                "restore target {} exists and is not a directory; use --force to replace it",
                target.display()
            )));
        }
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            return Err(EngineError::io(
                target,
                io::Error::new(e.kind(), e.to_string()),
            ));
        }
    };
    let plan = plan(ctx, opts.time, &opts.keys)?;
    // The stored size of the volumes to read: an estimate of the data (compressed,
    // encrypted), for progress displays.
    let stored: u64 = plan
        .sets
        .iter()
        .flat_map(|(set, m)| {
            m.volumes
                .values()
                .filter(|v| v.may_contain(&opts.path))
                .filter_map(|v| set.volumes.get(&v.number).map(|o| o.size))
        })
        .sum();
    // The data is checked against the signature files as it is written (see `writeout`),
    // so they are opened first; the metadata is checked after the restore.
    let sets: Vec<&BackupSet> = plan.sets.iter().map(|(s, _)| s).collect();
    let (signatures, unverifiable) = if opts.verify {
        match SignatureLookup::open(ctx, &sets, opts)? {
            Ok(lookup) => (Some(lookup), None),
            Err(reason) => (None, Some(reason)),
        }
    } else {
        (None, None)
    };
    ctx.progress.start("restore", Some(stored));

    let target_is_dir = matches!(&target_md, Ok(md) if md.is_dir());
    if created_target {
        std::fs::create_dir_all(target).map_err(|e| EngineError::io(target, e))?;
    }
    let staging_parent = if target_is_dir || created_target {
        target.clone()
    } else {
        target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let staging = staging_parent.join(format!(
        ".flotilla-restore-{}-{}",
        std::process::id(),
        STAGING_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let cleanup = |created: bool| {
        let _ = std::fs::remove_dir_all(&staging);
        if created {
            let _ = std::fs::remove_dir_all(target);
        }
    };
    let new_sink = |signatures| StagingSink {
        root: staging.join("root"),
        scratch: staging.join("scratch"),
        dirs: Vec::new(),
        owners: Owners::default(),
        restore_owner: opts.restore_owner,
        numeric_owner: opts.numeric_owner,
        root_kind: None,
        warnings: Vec::new(),
        deferred: Vec::new(),
        writers: Writers::new(WRITER_THREADS),
        closed_dirs: VecDeque::new(),
        signatures,
        checked_parents: Vec::new(),
        held_open: Vec::new(),
    };
    // Segments restored side by side, one lane per core: each lane has its own reading
    // of the signature files.
    let segments = split_segments(&plan, &opts.path);
    let lanes = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(RESTORE_LANES)
        .min(segments.len());
    tracing::debug!(segments = segments.len(), lanes, "restore in segments");
    tracing::trace!(?segments);
    let mut sinks = vec![new_sink(signatures)];
    for _ in 1..lanes {
        let signatures = match &sinks[0].signatures {
            // Could the first lane open them and this one not, it goes unchecked.
            Some(_) => Some(
                SignatureLookup::open(ctx, &sets, opts)?.unwrap_or_else(|reason| SignatureLookup {
                    state: SignatureState::empty(),
                    prefix: opts.path.clone(),
                    broken: Some(reason),
                }),
            ),
            None => None,
        };
        sinks.push(new_sink(signatures));
    }
    let result = (|| -> Result<(TreeStats, PathBuf)> {
        std::fs::create_dir(&staging).map_err(|e| EngineError::io(&staging, e))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| EngineError::io(&staging, e))?;
        let scratch = &sinks[0].scratch;
        std::fs::create_dir(scratch).map_err(|e| EngineError::io(scratch, e))?;
        let stats = run_lanes(ctx, &plan, opts, &segments, &mut sinks)?;
        tracing::debug!("lanes done");
        let (sink, others) = sinks.split_first_mut().expect("one sink per lane");
        for other in others.iter_mut() {
            other.settle()?;
            sink.root_kind = sink.root_kind.or(other.root_kind);
            sink.held_open.append(&mut other.held_open);
            sink.deferred.append(&mut other.deferred);
            sink.warnings.append(&mut other.warnings);
        }
        if sink.root_kind.is_none() && sink.root.is_dir() {
            // A set without its root entry: the root was made for its children.
            sink.root_kind = Some(FileKind::Directory);
        }
        // Everything verified: move the staged tree into place. Directories below the
        // top level get their final metadata now; top-level ones after the move (a
        // read-only directory cannot be moved to another parent by a non-root user).
        // The directories still open at the end of a segment wait for every lane.
        sink.settle()?;
        let mut held = std::mem::take(&mut sink.held_open);
        held.sort_by_key(|(i, _, _)| std::cmp::Reverse(i.depth()));
        let mut top_dirs: Vec<(Index, FileMeta)> = Vec::new();
        for (index, path, meta) in held {
            if index.depth() <= 1 {
                top_dirs.push((index, meta));
            } else {
                sink.apply_meta(&path, &meta)
                    .map_err(|e| EngineError::io(&path, e))?;
            }
        }
        top_dirs.append(&mut sink.deferred);
        // Children before the root, so the root's mtime is set last.
        top_dirs.sort_by_key(|(i, _)| std::cmp::Reverse(i.depth()));
        let root_path = sink.root.clone();
        match sink.root_kind {
            Some(FileKind::Directory) => {
                let rd =
                    std::fs::read_dir(&root_path).map_err(|e| EngineError::io(&root_path, e))?;
                for e in rd {
                    let e = e.map_err(|e| EngineError::io(&root_path, e))?;
                    let dest = target.join(e.file_name());
                    if opts.force {
                        remove_any(&dest).map_err(|e| EngineError::io(&dest, e))?;
                    }
                    std::fs::rename(e.path(), &dest).map_err(|e| EngineError::io(&dest, e))?;
                }
                // The staging directory lives in the target: remove it before the
                // target's own mtime is set.
                std::fs::remove_dir_all(&staging).map_err(|e| EngineError::io(&staging, e))?;
                for (index, meta) in &top_dirs {
                    let dest = if index.is_root() {
                        target.clone()
                    } else {
                        target.join(OsStr::from_bytes(index.as_bytes()))
                    };
                    sink.apply_meta(&dest, meta)
                        .map_err(|e| EngineError::io(&dest, e))?;
                }
            }
            Some(_) => {
                let dest = if target_is_dir {
                    let name = opts.path.file_name();
                    target.join(OsStr::from_bytes(if name.is_empty() {
                        b"restored"
                    } else {
                        name
                    }))
                } else if created_target {
                    // The target was created as a directory for staging; a single file
                    // takes its place.
                    let tmp = target
                        .with_file_name(format!(".flotilla-restore-file-{}", std::process::id()));
                    std::fs::rename(&root_path, &tmp).map_err(|e| EngineError::io(&tmp, e))?;
                    std::fs::remove_dir_all(&staging).map_err(|e| EngineError::io(&staging, e))?;
                    std::fs::remove_dir(target).map_err(|e| EngineError::io(target, e))?;
                    std::fs::rename(&tmp, target).map_err(|e| EngineError::io(target, e))?;
                    return Ok((stats, target.clone()));
                } else {
                    target.clone()
                };
                if std::fs::symlink_metadata(&dest).is_ok() {
                    if !opts.force {
                        return Err(EngineError::Usage(format!(
                            "{} exists; use --force to replace it",
                            dest.display()
                        )));
                    }
                    remove_any(&dest).map_err(|e| EngineError::io(&dest, e))?;
                }
                std::fs::rename(&root_path, &dest).map_err(|e| EngineError::io(&dest, e))?;
                return Ok((stats, dest));
            }
            None => return Err(EngineError::NoBackup("nothing to restore".into())),
        }
        Ok((stats, target.clone()))
    })();
    match result {
        Ok((stats, restored_root)) => {
            let _ = std::fs::remove_dir_all(&staging);
            ctx.progress.finish();
            let mut data = DataChecked::default();
            let mut broken = None;
            for sink in sinks.iter_mut() {
                data.add(sink.writers.data_checked());
                let lookup = sink.signatures.as_mut();
                broken = broken.or_else(|| lookup.and_then(|s| s.broken.take()));
            }
            tracing::debug!("restored tree in place");
            let check = if !opts.verify {
                None
            } else if let Some(reason) = unverifiable.or(broken) {
                Some(RestoreCheck::unverifiable(reason))
            } else {
                // The signatures read again from the start, for the metadata.
                match super::verify::restore_signatures(ctx, &sets, &opts.keys)? {
                    Ok(state) => Some(super::verify::check_restored(
                        ctx,
                        state,
                        &opts.path,
                        &restored_root,
                        opts.restore_owner,
                        data,
                    )?),
                    Err(reason) => Some(RestoreCheck::unverifiable(reason)),
                }
            };
            Ok(RestoreReport {
                time: plan.time,
                backup_time: plan.sets.last().map(|(s, _)| s.times.end()).unwrap_or(0),
                sets: plan.sets.iter().map(|(s, _)| s.times.to_string()).collect(),
                target: target.clone(),
                stats,
                warnings: std::mem::take(&mut sinks[0].warnings),
                restored_root,
                check,
            })
        }
        Err(e) => {
            cleanup(created_target);
            Err(e)
        }
    }
}
