//! Push-based OpenPGP message writer (see the module documentation for the layout).

use std::io::{self, Write};

use pgp::composed::RawSessionKey;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{
    OnePassSignature, PacketTrait, PublicKeyEncryptedSessionKey, SignatureConfig, SignatureHasher,
    SignatureType, Subpacket, SubpacketData, SymKeyEncryptedSessionKey,
};
use pgp::types::{KeyDetails, KeyVersion, Password, SigningKey, StringToKey, Timestamp};
use rand::RngCore;
use zeroize::Zeroizing;

use super::cfb::CfbMdcEncryptor;
use super::compress::{CHUNK, Deflater, Effort, Sink, zlib_header};
use super::error::CryptoError;
use super::keys::{KeyRef, SecretKey, SigningComponent, now, select_encryption_key};
use super::{Compression, EncryptionSpec, default_threads};
use crate::page_aligned::{PAGE, start_in_page};
use crate::write_behind::WriteBehind;

/// SEIPD partial body part: 2^20 bytes.
const PART_LOG2: u8 = 20;
const PART: usize = 1 << PART_LOG2;
/// Literal data partial body part: 2^16 bytes.
const LIT_PART_LOG2: u8 = 16;
const LIT_PART: usize = 1 << LIT_PART_LOG2;
/// Buffer for unencrypted output.
const PLAIN_BUF: usize = 256 * 1024;

const TAG_SEIPD_NEW: u8 = 0xC0 | 18;
const TAG_LITERAL_NEW: u8 = 0xC0 | 11;
/// Old-format header, tag 8 (compressed data), length type 3 (indeterminate) — as GnuPG.
const TAG_COMPRESSED_OLD_INDETERMINATE: u8 = 0x80 | (8 << 2) | 3;

/// Appends a new-format definite body length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 192 {
        out.push(len as u8);
    } else if len < 8384 {
        let l = len - 192;
        out.push(((l >> 8) + 192) as u8);
        out.push((l & 0xff) as u8);
    } else {
        out.push(0xff);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// Writes an OpenPGP message to `W`; see [`EncryptionSpec::writer`].
///
/// `write` never blocks on more than the bounded compression queue. Call [`Self::finish`]
/// to complete the message; dropping the writer without it stops the compression threads
/// and leaves an incomplete message in `W`. After an error the writer is unusable.
pub struct MessageWriter<W: Write + Send + 'static> {
    inner: Option<Box<Inner<W>>>,
}

struct Inner<W: Write + Send + 'static> {
    framer: Output<W>,
    /// Deflate stage and whether it is ZLIB (else ZIP). None = no compressed packet.
    deflate: Option<(Deflater, bool)>,
    /// Literal-packet stream chunk being filled (only with compression).
    lchunk: Vec<u8>,
    /// Staged literal body (starts with the literal header), at most LIT_PART bytes.
    lit: Vec<u8>,
    lit_started: bool,
    signer: Option<Signer>,
}

struct Signer {
    hasher: SignatureHasher,
    key: SecretKey,
    comp: SigningComponent,
}

impl<W: Write + Send + 'static> MessageWriter<W> {
    pub(crate) fn new(spec: &EncryptionSpec, mut out: FramerOut<W>) -> Result<Self, CryptoError> {
        let level = spec.compression.level();
        if let Some(l) = level
            && l > 9
        {
            return Err(CryptoError::InvalidSpec(format!(
                "compression level {l} is out of range 0..=9"
            )));
        }
        let threads = match spec.compression_threads {
            0 => default_threads(),
            n => n,
        };
        let t = now();
        let mut targets = Vec::with_capacity(spec.recipients.len());
        for r in &spec.recipients {
            let which = select_encryption_key(&r.key, t)?;
            let version = match which {
                KeyRef::Primary => r.key.primary_key.version(),
                KeyRef::Subkey(i) => r.key.public_subkeys[i].key.version(),
            };
            if version != KeyVersion::V4 {
                return Err(CryptoError::Unsupported(format!(
                    "recipient key {} is a {version:?} key; GnuPG 2.2 only reads v4",
                    r.fingerprint_hex()
                )));
            }
            targets.push((r, which));
        }
        let signer = match &spec.signer {
            None => None,
            Some(key) => {
                key.check_signing_usable()?;
                let comp = key.signing_component()?;
                Some(make_signer(key, comp)?)
            }
        };

        let mut rng = rand::thread_rng();
        let seipd = if spec.is_encrypting() {
            let alg = SymmetricKeyAlgorithm::AES256;
            let mut key = Zeroizing::new(vec![0u8; alg.key_size()]);
            rng.fill_bytes(&mut key);
            let session_key = RawSessionKey::from(key.as_slice());
            let pgp = CryptoError::pgp;
            let mut head = Vec::new();
            for (r, which) in &targets {
                let pkesk = match which {
                    KeyRef::Primary => PublicKeyEncryptedSessionKey::from_session_key_v3(
                        &mut rng,
                        &session_key,
                        alg,
                        &*r.key,
                    ),
                    KeyRef::Subkey(i) => PublicKeyEncryptedSessionKey::from_session_key_v3(
                        &mut rng,
                        &session_key,
                        alg,
                        &r.key.public_subkeys[*i],
                    ),
                }
                .map_err(pgp)?;
                pkesk.to_writer_with_header(&mut head).map_err(pgp)?;
            }
            if let Some(pw) = &spec.passphrase {
                let s2k = StringToKey::new_default(&mut rng);
                let skesk =
                    SymKeyEncryptedSessionKey::encrypt_v4(&pw.to_pgp(), &session_key, s2k, alg)
                        .map_err(pgp)?;
                skesk.to_writer_with_header(&mut head).map_err(pgp)?;
            }
            out.write_all(&head)?;
            let mut part = Part::new(Vec::new(), head.len() as u64, 2);
            // SEIPD version 1 (not encrypted).
            part.put_plain(&[1]);
            Mode::Seipd(Box::new(Seipd {
                cfb: CfbMdcEncryptor::new(&key)?,
                started: false,
                part,
                out_pos: head.len() as u64,
            }))
        } else {
            Mode::Plain(Vec::with_capacity(PLAIN_BUF))
        };

        let mut framer = Framer { out, mode: seipd };
        if matches!(framer.mode, Mode::Seipd(_)) {
            // The random prefix with its two quick-check bytes.
            let mut prefix = [0u8; 18];
            rng.fill_bytes(&mut prefix[..16]);
            prefix[16] = prefix[14];
            prefix[17] = prefix[15];
            framer.put(&prefix)?;
        }

        let deflate = match spec.compression {
            Compression::None => None,
            Compression::Zip { level } => {
                framer.put(&[TAG_COMPRESSED_OLD_INDETERMINATE, 1])?;
                Some((Deflater::new(Effort::fixed(level), threads), false))
            }
            Compression::Zlib { level } => {
                framer.put(&[TAG_COMPRESSED_OLD_INDETERMINATE, 2])?;
                framer.put(&zlib_header(level))?;
                Some((Deflater::new(Effort::fixed(level), threads), true))
            }
            Compression::Auto => {
                framer.put(&[TAG_COMPRESSED_OLD_INDETERMINATE, 1])?;
                Some((Deflater::new(Effort::auto(), threads), false))
            }
        };

        let mut lit = Vec::with_capacity(LIT_PART);
        lit.push(b'b'); // binary
        lit.push(0); // empty file name
        lit.extend_from_slice(&t.to_be_bytes());

        let mut inner = Box::new(Inner {
            framer: Output::new(framer, threads > 1),
            deflate,
            lchunk: if level.is_some() {
                Vec::with_capacity(CHUNK)
            } else {
                Vec::new()
            },
            lit,
            lit_started: false,
            signer: None,
        });
        if let Some((s, ops)) = signer {
            inner.put_l(&ops)?;
            inner.signer = Some(s);
        }
        Ok(MessageWriter { inner: Some(inner) })
    }
}

fn make_signer(key: &SecretKey, comp: SigningComponent) -> Result<(Signer, Vec<u8>), CryptoError> {
    let pgp = CryptoError::pgp;
    let signing: &dyn SigningKey = match comp {
        SigningComponent::Primary => &key.key.primary_key,
        SigningComponent::Subkey(i) => &key.key.secret_subkeys[i].key,
    };
    if signing.version() != KeyVersion::V4 {
        return Err(CryptoError::Unsupported(format!(
            "signing key {} is a {:?} key; GnuPG 2.2 only reads v4",
            key.fingerprint_hex(),
            signing.version()
        )));
    }
    let hash = HashAlgorithm::Sha256;
    let mut config = SignatureConfig::v4(SignatureType::Binary, signing.algorithm(), hash);
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::IssuerFingerprint(signing.fingerprint())).map_err(pgp)?,
        Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::now())).map_err(pgp)?,
    ];
    config.unhashed_subpackets =
        vec![Subpacket::regular(SubpacketData::IssuerKeyId(signing.legacy_key_id())).map_err(pgp)?];
    let ops = OnePassSignature::v3(
        SignatureType::Binary,
        hash,
        signing.algorithm(),
        signing.legacy_key_id(),
    );
    let mut ops_bytes = Vec::new();
    ops.to_writer_with_header(&mut ops_bytes).map_err(pgp)?;
    let hasher = config.into_hasher().map_err(pgp)?;
    Ok((
        Signer {
            hasher,
            key: key.clone(),
            comp,
        },
        ops_bytes,
    ))
}

impl<W: Write + Send + 'static> Inner<W> {
    /// Appends to the literal-packet stream (OPS, literal packet, signature).
    fn put_l(&mut self, mut data: &[u8]) -> Result<(), CryptoError> {
        let Some((deflater, _)) = &mut self.deflate else {
            return self.framer.put(data);
        };
        while !data.is_empty() {
            if self.lchunk.len() == CHUNK {
                let full = std::mem::replace(&mut self.lchunk, deflater.take_buffer());
                deflater.push(full, &mut self.framer)?;
            }
            let n = (CHUNK - self.lchunk.len()).min(data.len());
            self.lchunk.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Emits one partial literal part of exactly LIT_PART bytes.
    fn emit_lit_part(&mut self, part: Option<&[u8]>) -> Result<(), CryptoError> {
        let (hdr, n) = if self.lit_started {
            ([0xE0 | LIT_PART_LOG2, 0], 1)
        } else {
            ([TAG_LITERAL_NEW, 0xE0 | LIT_PART_LOG2], 2)
        };
        self.lit_started = true;
        self.put_l(&hdr[..n])?;
        match part {
            Some(p) => self.put_l(p),
            None => {
                let lit = std::mem::take(&mut self.lit);
                let r = self.put_l(&lit);
                self.lit = lit;
                self.lit.clear();
                r
            }
        }
    }

    fn write_data(&mut self, mut data: &[u8]) -> Result<(), CryptoError> {
        if let Some(s) = &mut self.signer {
            s.hasher.write_all(data)?;
        }
        while !data.is_empty() {
            if self.lit.len() == LIT_PART {
                // More data follows, so the staged part is not the last one.
                self.emit_lit_part(None)?;
            }
            if self.lit.is_empty() && data.len() > LIT_PART {
                // Whole part straight from the caller's buffer (data remains after it).
                self.emit_lit_part(Some(&data[..LIT_PART]))?;
                data = &data[LIT_PART..];
                continue;
            }
            let n = (LIT_PART - self.lit.len()).min(data.len());
            self.lit.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    fn finish(mut self) -> Result<W, CryptoError> {
        // Last literal part, definite length (never empty: it holds at least the header or
        // one byte of data).
        let mut hdr = Vec::with_capacity(6);
        if !self.lit_started {
            hdr.push(TAG_LITERAL_NEW);
        }
        push_len(&mut hdr, self.lit.len());
        self.put_l(&hdr)?;
        let lit = std::mem::take(&mut self.lit);
        self.put_l(&lit)?;
        if let Some(s) = self.signer.take() {
            let Signer { hasher, key, comp } = s;
            let signing: &dyn SigningKey = match comp {
                SigningComponent::Primary => &key.key.primary_key,
                SigningComponent::Subkey(i) => &key.key.secret_subkeys[i].key,
            };
            let sig = hasher
                .sign(signing, &Password::empty())
                .map_err(CryptoError::pgp)?;
            let mut bytes = Vec::new();
            sig.to_writer_with_header(&mut bytes)
                .map_err(CryptoError::pgp)?;
            self.put_l(&bytes)?;
        }
        if let Some((mut deflater, zlib)) = self.deflate.take() {
            let last = std::mem::take(&mut self.lchunk);
            deflater.finish(last, &mut self.framer)?;
            if zlib {
                self.framer.put(&deflater.adler().to_be_bytes())?;
            }
        }
        self.framer.finish()
    }
}

impl<W: Write + Send + 'static> Write for MessageWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(inner) = &mut self.inner else {
            return Err(CryptoError::WriterFailed.into_io());
        };
        if buf.is_empty() {
            return Ok(0);
        }
        match inner.write_data(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                // Poison: stops the compression threads.
                self.inner = None;
                Err(e.into_io())
            }
        }
    }

    /// Flushes what has been encrypted so far to the underlying writer. Data still inside
    /// the compressor, on its way to the encryption thread or in an unfinished packet part
    /// is not forced out.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(inner) => match &mut inner.framer.here {
                Some(framer) => Ok(framer.out.flush()?),
                None => Ok(()),
            },
            None => Err(CryptoError::WriterFailed.into_io()),
        }
    }
}

impl<W: Write + Send + 'static> MessageWriter<W> {
    /// Completes the message (last parts, signature, MDC), flushes and returns the
    /// underlying writer.
    pub fn finish(mut self) -> Result<W, CryptoError> {
        let inner = self.inner.take().ok_or(CryptoError::WriterFailed)?;
        inner.finish()
    }
}

/// Bytes handed to the encryption thread at a time.
const HANDOFF: usize = 256 * 1024;
/// Hand-offs queued for the encryption thread: with the recycled buffers about 1.5 MiB per
/// message.
const HANDOFF_DEPTH: usize = 2;

/// The framer, on the writing thread or (once a message outgrows one chunk and more than
/// one thread may be used) on its own thread, `pgp-encrypt`. AES-CFB is serial within a
/// message, and with the MDC, the upload and its SHA-1 it is a third of a backup's CPU:
/// on its own thread it runs beside the caller's reading and tarring and the deflate
/// workers instead of after them.
struct Output<W: Write + Send + 'static> {
    here: Option<Framer<W>>,
    thread: Option<WriteBehind<FramerWrite<W>>>,
    may_spawn: bool,
    seen: usize,
}

impl<W: Write + Send + 'static> Output<W> {
    fn new(framer: Framer<W>, may_spawn: bool) -> Self {
        Output {
            here: Some(framer),
            thread: None,
            may_spawn,
            seen: 0,
        }
    }

    fn finish(mut self) -> Result<W, CryptoError> {
        let framer = match self.thread.take() {
            Some(t) => t.finish()?.0,
            None => self.here.take().ok_or(CryptoError::WriterFailed)?,
        };
        framer.finish()
    }
}

impl<W: Write + Send + 'static> Sink for Output<W> {
    fn put(&mut self, data: &[u8]) -> Result<(), CryptoError> {
        if let Some(t) = &mut self.thread {
            return Ok(t.write_all(data)?);
        }
        self.seen += data.len();
        if self.may_spawn && self.seen > CHUNK {
            let framer = self.here.take().ok_or(CryptoError::WriterFailed)?;
            let t = self.thread.insert(WriteBehind::spawn(
                FramerWrite(framer),
                "pgp-encrypt",
                HANDOFF,
                HANDOFF_DEPTH,
            )?);
            return Ok(t.write_all(data)?);
        }
        self.here
            .as_mut()
            .ok_or(CryptoError::WriterFailed)?
            .put(data)
    }
}

/// A [`Framer`] as the `io::Write` a [`WriteBehind`] runs on its thread.
struct FramerWrite<W: Write + Send + 'static>(Framer<W>);

impl<W: Write + Send + 'static> Write for FramerWrite<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.put(buf).map_err(CryptoError::into_io)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Room before each SEIPD part for its header (the packet tag and a 5-octet length), so
/// that a part goes out as one buffer.
const HEADER_ROOM: usize = 6;

/// One SEIPD part being filled, `buf[begin..fill]`, with room before it for its header.
struct Part {
    buf: Vec<u8>,
    begin: usize,
    fill: usize,
}

impl Part {
    const LEN: usize = HEADER_ROOM + PAGE + PART;

    /// Lays out `buf` (reused; enlarged when short) for a part that will be sent with a
    /// header of `header_len` bytes and land at offset `out_pos` of the output. What is sent
    /// starts at the same offset within a memory page as it will have in the file (see
    /// [`crate::page_aligned`]: in backups the kernel's copy of misplaced writes had been
    /// up to a fifth of the CPU time).
    fn new(mut buf: Vec<u8>, out_pos: u64, header_len: usize) -> Part {
        if buf.len() < Self::LEN {
            buf.resize(Self::LEN, 0);
        }
        let sent = start_in_page(buf.as_ptr() as usize, out_pos, HEADER_ROOM - header_len);
        let begin = sent + header_len;
        Part {
            buf,
            begin,
            fill: begin,
        }
    }

    fn is_full(&self) -> bool {
        self.fill == self.begin + PART
    }

    /// The next `n` bytes of room (at most what is left of the part).
    fn room(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.begin + PART - self.fill);
        &mut self.buf[self.fill..self.fill + n]
    }

    fn put_plain(&mut self, data: &[u8]) {
        self.room(data.len()).copy_from_slice(data);
        self.fill += data.len();
    }

    fn len(&self) -> usize {
        self.fill - self.begin
    }

    /// Puts `tag` and `header` before the part and returns the buffer and where what is to
    /// be sent starts.
    fn framed(mut self, tag: &[u8], header: &[u8]) -> (Vec<u8>, usize) {
        let start = self.begin - tag.len() - header.len();
        self.buf[start..start + tag.len()].copy_from_slice(tag);
        self.buf[start + tag.len()..self.begin].copy_from_slice(header);
        self.buf.truncate(self.fill);
        (self.buf, start)
    }
}

/// Parts queued for a [`FramerOut::Behind`] thread.
const BEHIND_DEPTH: usize = 2;

/// Where a message's bytes go: to `W` on the framer's thread, or to `W` on a thread of
/// its own, which is handed each part's buffer instead of a copy.
pub(crate) enum FramerOut<W: Write + Send + 'static> {
    Here(W),
    Behind(WriteBehind<W>),
}

impl<W: Write + Send + 'static> FramerOut<W> {
    pub(crate) fn behind(out: W, name: &'static str) -> Result<Self, CryptoError> {
        Ok(FramerOut::Behind(WriteBehind::spawn(
            out,
            name,
            PART,
            BEHIND_DEPTH,
        )?))
    }

    /// Writes `buf[start..]` and returns a buffer to fill next.
    fn send(&mut self, buf: Vec<u8>, start: usize) -> io::Result<Vec<u8>> {
        match self {
            FramerOut::Here(w) => {
                w.write_all(&buf[start..])?;
                Ok(buf)
            }
            FramerOut::Behind(b) => b.send_owned(buf, start),
        }
    }

    fn finish(self) -> io::Result<W> {
        match self {
            FramerOut::Here(mut w) => {
                w.flush()?;
                Ok(w)
            }
            FramerOut::Behind(b) => {
                let mut w = b.finish()?;
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write + Send + 'static> Write for FramerOut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            FramerOut::Here(w) => w.write(buf),
            FramerOut::Behind(b) => b.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            FramerOut::Here(w) => w.flush(),
            FramerOut::Behind(b) => b.flush(),
        }
    }
}

enum Mode {
    /// No encryption: an output buffer.
    Plain(Vec<u8>),
    /// SEIPD v1 with AES-256-CFB and the MDC.
    Seipd(Box<Seipd>),
}

struct Seipd {
    cfb: CfbMdcEncryptor,
    /// The packet tag and the first partial length have been written.
    started: bool,
    /// The current part, encrypted (the first part starts with the version byte).
    part: Part,
    /// Bytes sent so far.
    out_pos: u64,
}

impl Seipd {
    /// Sends the current part with `header` (the tag if not yet sent, then the length)
    /// in the room before it, and starts the next part.
    fn send_part<W: Write + Send + 'static>(
        &mut self,
        out: &mut FramerOut<W>,
        header: &[u8],
    ) -> Result<(), CryptoError> {
        let tag = if self.started {
            &[][..]
        } else {
            &[TAG_SEIPD_NEW][..]
        };
        self.started = true;
        let full = std::mem::replace(
            &mut self.part,
            Part {
                buf: Vec::new(),
                begin: 0,
                fill: 0,
            },
        );
        let (buf, start) = full.framed(tag, header);
        self.out_pos += (buf.len() - start) as u64;
        let next = out.send(buf, start)?;
        // Further parts are sent with a one-byte partial length.
        self.part = Part::new(next, self.out_pos, 1);
        Ok(())
    }

    /// Encrypts and appends, hashing the plaintext into the MDC with `hash` (everything
    /// but the MDC's own hash value).
    fn put<W: Write + Send + 'static>(
        &mut self,
        out: &mut FramerOut<W>,
        mut data: &[u8],
        hash: bool,
    ) -> Result<(), CryptoError> {
        while !data.is_empty() {
            if self.part.is_full() {
                // More data follows: this part is not the last one.
                self.send_part(out, &[0xE0 | PART_LOG2])?;
            }
            let dst = self.part.room(data.len());
            let n = dst.len();
            if hash {
                self.cfb.hash_and_encrypt_into(&data[..n], dst);
            } else {
                dst.copy_from_slice(&data[..n]);
                self.cfb.encrypt(dst);
            }
            self.part.fill += n;
            data = &data[n..];
        }
        Ok(())
    }

    /// The MDC packet and the last part, with a definite length (never empty: it ends
    /// with the MDC's hash).
    fn finish<W: Write + Send + 'static>(
        &mut self,
        out: &mut FramerOut<W>,
    ) -> Result<(), CryptoError> {
        // The MDC packet: its tag and length are hashed, its hash value is not.
        self.put(out, &[0xD3, 0x14], true)?;
        let hash = self.cfb.digest();
        self.put(out, &hash, false)?;
        let mut header = Vec::with_capacity(5);
        push_len(&mut header, self.part.len());
        self.send_part(out, &header)
    }
}

/// Last stage: SEIPD v1 framing + AES-256-CFB + MDC, or plain buffering.
struct Framer<W: Write + Send + 'static> {
    out: FramerOut<W>,
    mode: Mode,
}

impl<W: Write + Send + 'static> Framer<W> {
    fn finish(mut self) -> Result<W, CryptoError> {
        match &mut self.mode {
            Mode::Plain(buf) => self.out.write_all(buf)?,
            Mode::Seipd(seipd) => seipd.finish(&mut self.out)?,
        }
        Ok(self.out.finish()?)
    }
}

impl<W: Write + Send + 'static> Sink for Framer<W> {
    fn put(&mut self, data: &[u8]) -> Result<(), CryptoError> {
        match &mut self.mode {
            Mode::Seipd(seipd) => seipd.put(&mut self.out, data, true),
            Mode::Plain(buf) => {
                if buf.len() + data.len() > PLAIN_BUF {
                    self.out.write_all(buf)?;
                    buf.clear();
                    if data.len() >= PLAIN_BUF / 2 {
                        self.out.write_all(data)?;
                        return Ok(());
                    }
                }
                buf.extend_from_slice(data);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each whole part is written from an address at the offset within its page that it
    /// lands at in the output (see [`Part::new`]).
    #[test]
    fn parts_are_written_from_their_offset_in_a_page() {
        #[derive(Default)]
        struct Recorder {
            pos: u64,
            parts: usize,
            misplaced: Vec<(usize, u64)>,
        }
        impl Write for Recorder {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if b.len() > PART {
                    self.parts += 1;
                    let at = b.as_ptr() as usize % PAGE;
                    if at as u64 != self.pos % PAGE as u64 {
                        self.misplaced.push((at, self.pos));
                    }
                }
                self.pos += b.len() as u64;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let spec = EncryptionSpec {
            passphrase: Some(crate::crypto::Passphrase::from("pw")),
            compression: crate::crypto::Compression::None,
            compression_threads: 1,
            ..Default::default()
        };
        // In place, and handed to a thread of its own with buffers that come back used.
        for (behind, compression) in [
            (false, crate::crypto::Compression::None),
            (true, crate::crypto::Compression::None),
            (true, crate::crypto::Compression::Zip { level: 1 }),
        ] {
            let spec = EncryptionSpec {
                compression,
                compression_threads: 2,
                ..spec.clone()
            };
            let mut w = if behind {
                spec.writer_behind(Recorder::default(), "test-upload")
            } else {
                spec.writer(Recorder::default())
            }
            .unwrap();
            let mut x = 1u64;
            let data: Vec<u8> = (0..40 * PART + 123)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for piece in data.chunks(100_000) {
                w.write_all(piece).unwrap();
            }
            let out = w.finish().unwrap();
            assert!(out.parts >= 40, "{} parts", out.parts);
            assert!(
                out.misplaced.is_empty(),
                "behind {behind}: {:?}",
                out.misplaced
            );
        }
    }

    #[test]
    fn new_format_lengths() {
        let enc = |n| {
            let mut v = Vec::new();
            push_len(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(191), [191]);
        assert_eq!(enc(192), [192, 0]);
        assert_eq!(enc(8383), [223, 255]);
        assert_eq!(enc(8384), [255, 0, 0, 0x20, 0xC0]);
        assert_eq!(TAG_COMPRESSED_OLD_INDETERMINATE, 0xA3);
        assert_eq!(TAG_SEIPD_NEW, 0xD2);
        assert_eq!(TAG_LITERAL_NEW, 0xCB);
    }
}
