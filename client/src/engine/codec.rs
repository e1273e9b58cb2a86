//! How objects are stored: OpenPGP (`.gpg`), gzip (`.gz`, with `--no-encryption`) or
//! plain, and the SHA-1 over the stored bytes that manifests record.

use super::error::{EngineError, Result};
use flotilla_common::archive::StoredObject;
use flotilla_common::archive::manifest::{Manifest, ManifestParser};
use flotilla_common::archive::names::{ObjectKind, ObjectName, SetTimes};
use flotilla_common::crypto::{self, DecryptionKeys, EncryptionSpec, MessageWriter};
use flotilla_common::storage::{BlockingStore, ObjectWriter};
use sha1::{Digest, Sha1};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

/// The encoding of a backup's objects.
#[derive(Clone)]
pub enum Codec {
    /// OpenPGP messages (`.gpg`).
    Encrypted(EncryptionSpec),
    /// `--no-encryption`: gzip for volumes and signatures (`.gz`), manifests plain.
    Gzip { level: u32 },
}

impl Codec {
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Codec::Encrypted(_))
    }

    pub fn object_name(&self, set: SetTimes, kind: ObjectKind) -> ObjectName {
        ObjectName::new(set, kind, self.is_encrypted())
    }

    /// A writer that encodes into `out` and hashes what is stored.
    pub fn writer(&self, kind: ObjectKind, out: ObjectWriter) -> Result<EncodedWriter> {
        let hashed = Sha1Writer {
            inner: out,
            hasher: Sha1::new(),
            bytes: 0,
        };
        let inner = match self {
            Codec::Encrypted(spec) => Inner::Pgp(Box::new(
                spec.writer_behind(hashed, "object-upload")
                    .map_err(|e| EngineError::Crypto {
                        object: "new object".into(),
                        error: e,
                    })?,
            )),
            Codec::Gzip { level } if kind != ObjectKind::Manifest => Inner::Gzip(Box::new(
                flate2::write::GzEncoder::new(hashed, flate2::Compression::new(*level)),
            )),
            Codec::Gzip { .. } => Inner::Plain(Box::new(hashed)),
        };
        Ok(EncodedWriter { inner })
    }
}

/// Counts and SHA-1-hashes bytes on their way to the store.
pub struct Sha1Writer {
    inner: ObjectWriter,
    hasher: Sha1,
    bytes: u64,
}

impl Write for Sha1Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encrypted objects are hashed and uploaded on a thread of their own (`object-upload`,
/// [`EncryptionSpec::writer_behind`]): AES-CFB encryption is serial within a message and
/// the encryption thread also computes the integrity SHA-1; with the SHA-1 of the stored
/// bytes and the upload beside it, that thread limited the backup on incompressible data
/// (media, archives), where little else runs. Dropped without `finish` (an error
/// elsewhere), that thread ends and drops the upload, which leaves no object behind.
enum Inner {
    Pgp(Box<MessageWriter<Sha1Writer>>),
    Gzip(Box<flate2::write::GzEncoder<Sha1Writer>>),
    Plain(Box<Sha1Writer>),
}

/// An object being written; see [`Codec::writer`].
pub struct EncodedWriter {
    inner: Inner,
}

/// What [`EncodedWriter::finish`] reports.
#[derive(Clone, Debug)]
pub struct StoredInfo {
    pub sha1: String,
    pub bytes: u64,
}

impl EncodedWriter {
    /// Finishes the encoding and the upload: the object exists when this returns.
    pub fn finish(self) -> io::Result<StoredInfo> {
        let hashed = match self.inner {
            Inner::Pgp(w) => w.finish().map_err(|e| e.into_io())?,
            Inner::Gzip(w) => (*w).finish()?,
            Inner::Plain(w) => *w,
        };
        let sha1 = hex(&hashed.hasher.finalize());
        let bytes = hashed.bytes;
        hashed.inner.finish()?;
        Ok(StoredInfo { sha1, bytes })
    }
}

impl Write for EncodedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Pgp(w) => w.write(buf),
            Inner::Gzip(w) => w.write(buf),
            Inner::Plain(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            Inner::Pgp(w) => w.write_all(buf),
            Inner::Gzip(w) => w.write_all(buf),
            Inner::Plain(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The SHA-1 of an object, available once its reader reached the end.
#[derive(Clone, Default)]
pub struct HashCell(Arc<Mutex<Option<String>>>);

impl HashCell {
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("hash cell").clone()
    }
}

/// Hashes the raw object bytes as they are read.
struct Sha1Reader<R> {
    inner: R,
    hasher: Option<Sha1>,
    cell: HashCell,
}

impl<R: Read> Read for Sha1Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            if n == 0 {
                let digest = self.hasher.take().expect("present").finalize();
                *self.cell.0.lock().expect("hash cell") = Some(hex(&digest));
            } else {
                h.update(&buf[..n]);
            }
        }
        Ok(n)
    }
}

/// Opens an object for reading: downloads, hashes the stored bytes, and decodes by the
/// name's suffix (`.gpg` → OpenPGP, `.gz` → gunzip, else raw).
pub fn open_object(
    store: &BlockingStore,
    obj: &StoredObject,
    keys: &DecryptionKeys,
) -> Result<(Box<dyn Read + Send>, HashCell)> {
    let raw = store.get(&obj.name)?;
    let cell = HashCell::default();
    let hashed = Sha1Reader {
        inner: io::BufReader::with_capacity(1 << 20, raw),
        hasher: Some(Sha1::new()),
        cell: cell.clone(),
    };
    Ok((decode(hashed, obj, keys, false)?, cell))
}

/// Decodes an object's stored bytes by its name's suffix. `authenticated_by_source`: `raw`
/// fails in place of its end unless the stored bytes are the ones an authenticated manifest
/// lists, so the OpenPGP reader need not hash the plaintext again for the MDC.
fn decode(
    raw: impl Read + Send + 'static,
    obj: &StoredObject,
    keys: &DecryptionKeys,
    authenticated_by_source: bool,
) -> Result<Box<dyn Read + Send>> {
    Ok(if obj.parsed.encrypted {
        let opts = crypto::DecryptOptions {
            message_authenticated_by_source: authenticated_by_source,
            ..Default::default()
        };
        crypto::decrypt_reader_with_options(keys, opts, raw).map_err(|e| EngineError::Crypto {
            object: obj.name.clone(),
            error: e,
        })?
    } else if obj.parsed.compressed {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    })
}

/// [`open_object`] for a large object: downloading and hashing the stored bytes run on a
/// thread of their own, a few MiB ahead of the decoding (decrypting and inflating a
/// volume is the restore's longest serial stage; this takes about a fifth off it).
///
/// With `expected_sha1` (from an authenticated manifest) the reader fails in place of its
/// end if the stored bytes hash differently, and the SHA-1 of the OpenPGP MDC over the
/// plaintext is skipped: the stored bytes' hash already authenticates every byte of it,
/// and the MDC's was about 7% of a restore's CPU time.
pub fn open_object_prefetched(
    store: &BlockingStore,
    obj: &StoredObject,
    keys: &DecryptionKeys,
    expected_sha1: Option<&str>,
) -> Result<(Box<dyn Read + Send>, HashCell)> {
    let raw = store.get(&obj.name)?;
    let cell = HashCell::default();
    let expected = expected_sha1.map(str::to_owned);
    let checked = expected.is_some();
    let prefetch = Prefetch::spawn(raw, cell.clone(), expected, &obj.name)?;
    Ok((decode(prefetch, obj, keys, checked)?, cell))
}

/// Bytes read ahead per hand-off, and hand-offs queued.
const PREFETCH_CHUNK: usize = 256 * 1024;
const PREFETCH_DEPTH: usize = 4;

/// The reading end of [`open_object_prefetched`]'s download thread.
struct Prefetch {
    /// Buffers with how many of their bytes are data.
    rx: std::sync::mpsc::Receiver<io::Result<(Vec<u8>, usize)>>,
    recycle: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    /// `cur[pos..len]` is unread data.
    pos: usize,
    len: usize,
    done: bool,
}

impl Prefetch {
    fn spawn(
        mut raw: impl Read + Send + 'static,
        cell: HashCell,
        expected_sha1: Option<String>,
        name: &str,
    ) -> Result<Self> {
        let object = name.to_owned();
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<io::Result<(Vec<u8>, usize)>>(PREFETCH_DEPTH);
        let (recycle, recycled) = sync_channel::<Vec<u8>>(PREFETCH_DEPTH + 2);
        std::thread::Builder::new()
            .name("volume-download".into())
            .spawn(move || {
                let mut hasher = Sha1::new();
                loop {
                    // Recycled buffers come back whole (see `Prefetch::read`): filling
                    // them zeroes nothing.
                    let mut chunk = recycled.try_recv().unwrap_or_default();
                    chunk.resize(PREFETCH_CHUNK, 0);
                    match flotilla_common::archive::tarfmt::read_full(&mut raw, &mut chunk) {
                        Ok(0) => {
                            let actual = hex(&hasher.finalize());
                            if let Some(expected) = expected_sha1.filter(|e| *e != actual) {
                                let _ = tx.send(Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!(
                                        "stored bytes of {object} have SHA-1 {actual}, \
                                         the manifest lists {expected}"
                                    ),
                                )));
                            }
                            *cell.0.lock().expect("hash cell") = Some(actual);
                            return;
                        }
                        Ok(n) => {
                            hasher.update(&chunk[..n]);
                            if tx.send(Ok((chunk, n))).is_err() {
                                return; // the reader stopped
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| EngineError::io(name, e))?;
        Ok(Prefetch {
            rx,
            recycle,
            cur: Vec::new(),
            pos: 0,
            len: 0,
            done: false,
        })
    }
}

impl Read for Prefetch {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok((chunk, len))) => {
                    let used = std::mem::replace(&mut self.cur, chunk);
                    let _ = self.recycle.try_send(used);
                    self.pos = 0;
                    self.len = len;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended: the object was read to its end.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads and parses a manifest a line at a time (its file list grows with the set).
pub fn read_manifest(
    store: &BlockingStore,
    obj: &StoredObject,
    keys: &DecryptionKeys,
) -> Result<Manifest> {
    use std::io::BufRead;
    let (r, _) = open_object(store, obj, keys)?;
    let mut r = io::BufReader::with_capacity(64 * 1024, r);
    let mut parser = ManifestParser::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| EngineError::from_object_io(&obj.name, e))?;
        if n == 0 {
            break;
        }
        parser
            .line(&line)
            .map_err(|e| EngineError::from((obj.name.clone(), e)))?;
    }
    parser
        .finish()
        .map_err(|e| EngineError::from((obj.name.clone(), e)))
}
