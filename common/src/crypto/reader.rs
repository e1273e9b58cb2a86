//! Streaming OpenPGP message reader.
//!
//! rpgp parses the packets; the SEIPD v1 / SED container is decrypted here (see the module
//! documentation for why). The usual inner shape (a literal packet, compressed or not) is
//! read by [`super::plain`]; anything else (signed messages, bzip2, other framings) goes
//! back into rpgp's parser for the compression, one-pass-signature and literal layers.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

use pgp::composed::{
    Edata, Esk, Message, MessageReader, PacketBodyReader, PlainSessionKey,
    decrypt_session_key_with_password,
};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{ProtectedDataConfig, SymEncryptedProtectedDataConfig};
use pgp::ser::Serialize;
use pgp::types::{DecryptionKey, EskType, Password, PkeskVersion, SkeskVersion, StringToKey};
use sha1::{Digest, Sha1};
use zeroize::Zeroizing;

use super::DecryptionKeys;
use super::cfb::{CfbDecryptor, block_size, quick_check};
use super::error::CryptoError;
use super::keys::{PublicKey, key_id_hex, verifying_components};
use super::plain::{FastPlain, shape_of};

const IN_BUF: usize = 256 * 1024;
const SEIPD_BUF: usize = 256 * 1024;
const INNER_BUF: usize = 64 * 1024;
const MDC_LEN: usize = 22;
/// Longest SEIPD prefix (16-byte block + 2 quick-check bytes).
const MAX_PREFIX: usize = 18;

/// Less common reader settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecryptOptions {
    /// Accept the legacy, integrity-unprotected "symmetrically encrypted data" packet
    /// (tag 9), as duplicity's `gpg --ignore-mdc-error` does. Off by default.
    pub allow_unprotected: bool,
    /// Refuse messages that are not encrypted at all (plain literal/compressed/signed).
    pub require_encryption: bool,
    /// The caller authenticates the whole stored message itself and makes the reader fail
    /// at its end if that fails: for example a volume whose SHA-1 an authenticated (itself
    /// MDC-checked) manifest lists, hashed as it is read, with a mismatch reported by the
    /// source in place of its end. The MDC packet is still required and its framing
    /// checked, but its SHA-1 over the plaintext is not computed: a second hash over the
    /// same data that proves nothing more. Off by default.
    pub message_authenticated_by_source: bool,
}

/// Opens an OpenPGP message (binary or armored) for streaming decryption.
///
/// Fails up front if the session key cannot be found (wrong passphrase or key, no matching
/// secret key), if the message is unsupported, or if a signature is required
/// (`keys.expected_signers`) and the message is not signed at all. Everything found later —
/// MDC failure, truncation, bad or foreign signatures — is reported by `read()` as an
/// `io::Error` carrying a [`CryptoError`] (see [`super::crypto_error_of`]), at the latest in
/// place of the final `Ok(0)`. Plaintext is valid only once `read()` has returned `Ok(0)`.
pub fn decrypt_reader<'a, R: Read + Send + 'a>(
    keys: &DecryptionKeys,
    input: R,
) -> Result<Box<dyn Read + Send + 'a>, CryptoError> {
    decrypt_reader_with_options(keys, DecryptOptions::default(), input)
}

/// [`decrypt_reader`] with [`DecryptOptions`].
pub fn decrypt_reader_with_options<'a, R: Read + Send + 'a>(
    keys: &DecryptionKeys,
    opts: DecryptOptions,
    input: R,
) -> Result<Box<dyn Read + Send + 'a>, CryptoError> {
    let slot: ErrSlot = Arc::new(Mutex::new(None));
    let mut ctx = Ctx {
        seipd: None,
        slot: slot.clone(),
    };
    let mut src = DebugBuf(BufReader::with_capacity(
        IN_BUF,
        Source {
            inner: input,
            slot: slot.clone(),
        },
    ));
    match src.fill_buf() {
        Ok([]) => return Err(CryptoError::Truncated),
        Ok(_) => {}
        Err(e) => return Err(CryptoError::Io(e)),
    }
    let msg = match guard(|| Message::from_reader(src)) {
        Ok(Ok((msg, _headers))) => msg,
        Ok(Err(e)) => return Err(ctx.classify_pgp(e)),
        Err(e) => return Err(e),
    };

    let inner = match &msg {
        Message::Encrypted { esk, edata, .. } => {
            let protected = match edata {
                Edata::SymEncryptedProtectedData { reader } => match reader.config() {
                    ProtectedDataConfig::Seipd(SymEncryptedProtectedDataConfig::V1) => true,
                    _ => {
                        return Err(CryptoError::Unsupported(
                            "SEIPD v2 (RFC 9580 AEAD) encrypted data".into(),
                        ));
                    }
                },
                Edata::SymEncryptedData { .. } => {
                    if !opts.allow_unprotected {
                        return Err(CryptoError::IntegrityProtectionMissing);
                    }
                    false
                }
                Edata::GnupgAeadData { .. } => {
                    return Err(CryptoError::Unsupported(
                        "GnuPG AEAD (OCB, packet tag 20) encrypted data".into(),
                    ));
                }
            };
            let esks = esk.clone();
            let mut body = guard(|| msg.into_inner())?;
            let mut prefix = Vec::with_capacity(MAX_PREFIX);
            read_up_to(&mut body, &mut prefix, MAX_PREFIX).map_err(|e| ctx.classify_io(e))?;
            if prefix.len() < MAX_PREFIX {
                return Err(CryptoError::Truncated);
            }
            let (alg, key) = guard(|| find_session_key(&esks, keys, &prefix))??;
            let mdc = match (protected, opts.message_authenticated_by_source) {
                (false, _) => Mdc::Absent,
                (true, false) => Mdc::Hash(Box::default()),
                (true, true) => Mdc::FramingOnly,
            };
            let mut seipd = Seipd::new(body, alg, &key, mdc, &prefix)?;
            // The usual shapes are read without rpgp's inner layers (see `plain`).
            if keys.expected_signers.is_empty()
                && let Some(shape) = shape_of(&mut seipd)
            {
                return Ok(Box::new(FastPlain::new(seipd, shape, slot.clone())));
            }
            let shared = Arc::new(Mutex::new(seipd));
            ctx.seipd = Some(shared.clone());
            let inner_src = DebugBuf(BufReader::with_capacity(INNER_BUF, SharedSeipd(shared)));
            match guard(|| Message::from_bytes(inner_src)) {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(ctx.classify_pgp(e)),
                Err(e) => return Err(ctx.classify_panic(e)),
            }
        }
        _ => {
            if opts.require_encryption {
                return Err(CryptoError::NotEncrypted);
            }
            msg
        }
    };

    let msg = unwrap_compression(inner, &ctx)?;
    match &msg {
        Message::Literal { .. } => {
            if !keys.expected_signers.is_empty() {
                return Err(CryptoError::MissingSignature {
                    expected: expected_ids(&keys.expected_signers),
                });
            }
        }
        Message::Signed { reader, .. } => {
            if !matches!(reader.get_ref(), Message::Literal { .. }) {
                return Err(CryptoError::Unsupported(
                    "signed message whose content is not literal data".into(),
                ));
            }
        }
        Message::Encrypted { .. } => {
            return Err(CryptoError::Unsupported("nested encrypted message".into()));
        }
        Message::Compressed { .. } => {
            return Err(CryptoError::Malformed(
                "too deeply nested compression".into(),
            ));
        }
    }

    Ok(Box::new(PlainReader {
        msg,
        ctx,
        expected: keys.expected_signers.clone(),
        state: PState::Reading,
    }))
}

fn expected_ids(keys: &[PublicKey]) -> String {
    keys.iter()
        .map(|k| k.key_id_hex())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn unwrap_compression<'a>(mut msg: Message<'a>, ctx: &Ctx<'a>) -> Result<Message<'a>, CryptoError> {
    for _ in 0..8 {
        let compressed = match &msg {
            Message::Compressed { .. } => true,
            Message::Signed { reader, .. } => {
                matches!(reader.get_ref(), Message::Compressed { .. })
            }
            _ => false,
        };
        if !compressed {
            return Ok(msg);
        }
        msg = match guard(|| msg.decompress()) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(ctx.classify_pgp(e)),
            Err(e) => return Err(ctx.classify_panic(e)),
        };
    }
    Ok(msg)
}

fn read_up_to(r: &mut impl Read, out: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let mut tmp = [0u8; MAX_PREFIX];
    while out.len() < n {
        match r.read(&mut tmp[..n - out.len()]) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&tmp[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs `f`, turning a panic inside rpgp into an error.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, CryptoError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        CryptoError::Malformed(format!("OpenPGP parser failed: {msg}"))
    })
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tries every PKESK with every secret key (component), then every SKESK with every
/// passphrase, and returns the first session key that passes the quick check.
fn find_session_key(
    esks: &[Esk],
    keys: &DecryptionKeys,
    prefix: &[u8],
) -> Result<(SymmetricKeyAlgorithm, Zeroizing<Vec<u8>>), CryptoError> {
    let mut key_packets = Vec::new();
    for esk in esks {
        esk.to_writer(&mut key_packets)
            .map_err(|e| CryptoError::Malformed(format!("session key packet: {e}")))?;
    }
    if let Some((alg, key)) = keys.session_keys.get(&key_packets)
        && quick_check(alg, &key, prefix)
    {
        return Ok((alg, key));
    }
    let (alg, key) = find_session_key_uncached(esks, keys, prefix)?;
    keys.session_keys.insert(key_packets, alg, key.clone());
    Ok((alg, key))
}

fn find_session_key_uncached(
    esks: &[Esk],
    keys: &DecryptionKeys,
    prefix: &[u8],
) -> Result<(SymmetricKeyAlgorithm, Zeroizing<Vec<u8>>), CryptoError> {
    let accept = |sk: PlainSessionKey| -> Option<(SymmetricKeyAlgorithm, Zeroizing<Vec<u8>>)> {
        match &sk {
            PlainSessionKey::V3_4 { sym_alg, key } => quick_check(*sym_alg, key.as_ref(), prefix)
                .then(|| (*sym_alg, Zeroizing::new(key.as_ref().to_vec()))),
            _ => None,
        }
    };

    let mut pk_ids = Vec::new();
    let mut matched_secret = false;
    let mut has_skesk = false;
    let mut unsupported = Vec::new();

    for esk in esks {
        let Esk::PublicKeyEncryptedSessionKey(p) = esk else {
            continue;
        };
        if p.version() != PkeskVersion::V3 {
            unsupported.push(format!("PKESK {:?}", p.version()));
            continue;
        }
        let (Ok(id), Ok(values)) = (p.id(), p.values()) else {
            continue;
        };
        pk_ids.push(key_id_hex(id));
        let wildcard = id.is_wildcard();
        for sk in &keys.secret_keys {
            let k = &*sk.key;
            let mut comps: Vec<(&dyn DecryptionKey, bool)> = Vec::new();
            if p.match_identity(&k.primary_key) {
                comps.push((&k.primary_key, k.primary_key.secret_params().is_encrypted()));
            }
            for sub in &k.secret_subkeys {
                if p.match_identity(&sub.key) {
                    comps.push((&sub.key, sub.key.secret_params().is_encrypted()));
                }
            }
            for (comp, locked) in comps {
                if !wildcard {
                    matched_secret = true;
                }
                let mut pws: Vec<Password> = Vec::new();
                if locked {
                    pws.extend(sk.passphrase.iter().map(|p| p.to_pgp()));
                    pws.extend(keys.passphrases.iter().map(|p| p.to_pgp()));
                } else {
                    pws.push(Password::empty());
                }
                for pw in &pws {
                    match comp.decrypt(pw, values, EskType::V3_4) {
                        Ok(Ok(session_key)) => {
                            if let Some(found) = accept(session_key) {
                                return Ok(found);
                            }
                            break;
                        }
                        Ok(Err(_)) => break, // unlocked, but not our session key
                        Err(_) => continue,  // wrong key passphrase
                    }
                }
            }
        }
    }

    for esk in esks {
        let Esk::SymKeyEncryptedSessionKey(s) = esk else {
            continue;
        };
        if s.version() != SkeskVersion::V4 {
            unsupported.push(format!("SKESK {:?}", s.version()));
            continue;
        }
        // GnuPG 2.2 writes S2K types 1 and 3 (0 in ancient versions); refuse anything else
        // (e.g. Argon2, whose parameters could ask for gigabytes).
        if !matches!(
            s.s2k(),
            Some(
                StringToKey::Simple { .. }
                    | StringToKey::Salted { .. }
                    | StringToKey::IteratedAndSalted { .. }
            )
        ) {
            unsupported.push("SKESK with a non-RFC-4880 S2K".to_string());
            continue;
        }
        has_skesk = true;
        for pw in &keys.passphrases {
            if let Ok(sk) = decrypt_session_key_with_password(s, &pw.to_pgp())
                && let Some(found) = accept(sk)
            {
                return Ok(found);
            }
        }
    }

    if (has_skesk && !keys.passphrases.is_empty()) || matched_secret {
        Err(CryptoError::WrongPassphraseOrKey)
    } else if !pk_ids.is_empty() {
        Err(CryptoError::NoMatchingSecretKey { key_ids: pk_ids })
    } else if has_skesk {
        Err(CryptoError::PassphraseRequired)
    } else if !unsupported.is_empty() {
        Err(CryptoError::Unsupported(unsupported.join(", ")))
    } else {
        Err(CryptoError::Malformed(
            "encrypted message without session key packets".into(),
        ))
    }
}

pub(super) type ErrSlot = Arc<Mutex<Option<io::Error>>>;

/// The caller's reader; remembers its I/O errors so they are not mistaken for bad data.
struct Source<R> {
    inner: R,
    slot: ErrSlot,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                *lock(&self.slot) = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
            r => r,
        }
    }
}

/// rpgp wants `Debug` readers.
struct DebugBuf<T>(T);

impl<T> fmt::Debug for DebugBuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DebugBuf")
    }
}

impl<T: Read> Read for DebugBuf<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<T: BufRead> BufRead for DebugBuf<T> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}

/// Why the encrypted container failed.
#[derive(Clone, Debug)]
pub(super) enum Fail {
    Integrity,
    Truncated,
    Malformed(String),
}

impl Fail {
    pub(super) fn to_error(&self) -> CryptoError {
        match self {
            Fail::Integrity => CryptoError::IntegrityCheckFailed,
            Fail::Truncated => CryptoError::Truncated,
            Fail::Malformed(m) => CryptoError::Malformed(m.clone()),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum SState {
    Reading,
    /// End reached, MDC verified (or no MDC for legacy SED).
    Done,
    Failed(Fail),
}

/// What is checked of a SEIPD body's trailing modification detection code.
pub(super) enum Mdc {
    /// Legacy SED packet: no MDC.
    Absent,
    /// The MDC packet and its SHA-1 over the plaintext.
    Hash(Box<Sha1>),
    /// The MDC packet's framing only; the caller authenticates the message (see
    /// [`DecryptOptions::message_authenticated_by_source`]).
    FramingOnly,
}

/// Decrypts a SEIPD v1 (or legacy SED) body: CFB with zero IV, random prefix, MDC held
/// back and checked at the end.
pub(super) struct Seipd<'a> {
    src: PacketBodyReader<MessageReader<'a>>,
    cipher: CfbDecryptor,
    /// What is left to check at the end (`Absent` once checked).
    mdc: Mdc,
    buf: Box<[u8]>,
    /// buf[pos..avail]: released plaintext; buf[avail..dec]: decrypted, held back (MDC);
    /// buf[dec..filled]: not yet decrypted.
    pos: usize,
    avail: usize,
    dec: usize,
    filled: usize,
    state: SState,
}

impl<'a> Seipd<'a> {
    fn new(
        src: PacketBodyReader<MessageReader<'a>>,
        alg: SymmetricKeyAlgorithm,
        key: &[u8],
        mut mdc: Mdc,
        prefix_ct: &[u8],
    ) -> Result<Self, CryptoError> {
        let bs = block_size(alg)
            .ok_or_else(|| CryptoError::Unsupported(format!("symmetric algorithm {alg:?}")))?;
        let iv = vec![0u8; bs];
        let mut cipher = CfbDecryptor::new(alg, key, &iv)?;
        let mut prefix = prefix_ct[..bs + 2].to_vec();
        cipher.decrypt(&mut prefix)?;
        match &mut mdc {
            Mdc::Hash(h) => h.update(&prefix),
            Mdc::FramingOnly => {}
            // Legacy SED: CFB resynchronises after the prefix.
            Mdc::Absent => cipher = CfbDecryptor::new(alg, key, &prefix_ct[2..bs + 2])?,
        }
        let mut buf = vec![0u8; SEIPD_BUF].into_boxed_slice();
        let rest = &prefix_ct[bs + 2..];
        buf[..rest.len()].copy_from_slice(rest);
        Ok(Seipd {
            src,
            cipher,
            mdc,
            buf,
            pos: 0,
            avail: 0,
            dec: 0,
            filled: rest.len(),
            state: SState::Reading,
        })
    }

    fn fail(&mut self, f: Fail) {
        self.state = SState::Failed(f);
    }

    fn refill(&mut self) {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.avail -= self.pos;
            self.dec -= self.pos;
            self.filled -= self.pos;
            self.pos = 0;
        }
        let mut eof = false;
        while self.filled < self.buf.len() {
            match self.src.read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.filled += n;
                    if self.filled - self.dec >= 64 * 1024 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let f = if is_truncation(&e) {
                        Fail::Truncated
                    } else {
                        Fail::Malformed(format!("encrypted data packet: {e}"))
                    };
                    return self.fail(f);
                }
            }
        }
        if let Err(e) = self.cipher.decrypt(&mut self.buf[self.dec..self.filled]) {
            return self.fail(Fail::Malformed(e.to_string()));
        }
        self.dec = self.filled;
        let hold = match self.mdc {
            Mdc::Hash(_) | Mdc::FramingOnly => MDC_LEN,
            Mdc::Absent => 0,
        };
        let new_avail = self.dec.saturating_sub(hold).max(self.avail);
        if let Mdc::Hash(h) = &mut self.mdc {
            h.update(&self.buf[self.avail..new_avail]);
        }
        self.avail = new_avail;
        if eof {
            self.at_eof();
        }
    }

    fn at_eof(&mut self) {
        let tail = &self.buf[self.avail..self.dec];
        let framed = tail.len() == MDC_LEN && tail[0] == 0xD3 && tail[1] == 0x14;
        let ok = match std::mem::replace(&mut self.mdc, Mdc::Absent) {
            Mdc::Absent => true,
            Mdc::FramingOnly => framed,
            Mdc::Hash(mut h) => {
                framed && {
                    h.update(&tail[..2]);
                    tail[2..] == h.finalize()[..]
                }
            }
        };
        if !ok {
            return self.fail(Fail::Integrity);
        }
        // Nothing may follow the encrypted data packet.
        match self.src.get_mut().fill_buf() {
            Ok([]) => self.state = SState::Done,
            Ok(_) => self.fail(Fail::Malformed(
                "trailing data after the encrypted data packet".into(),
            )),
            Err(e) => self.fail(Fail::Malformed(format!("after encrypted data: {e}"))),
        }
    }

    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.avail {
                let n = (self.avail - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match &self.state {
                SState::Done => return Ok(0),
                SState::Failed(f) => return Err(f.to_error().into_io()),
                SState::Reading => self.refill(),
            }
        }
    }

    /// The decrypted bytes at hand (refilled when all were consumed); empty at the end.
    pub(super) fn fill_buf(&mut self) -> Result<&[u8], Fail> {
        while self.pos == self.avail {
            match &self.state {
                SState::Done => return Ok(&[]),
                SState::Failed(f) => return Err(f.clone()),
                SState::Reading => self.refill(),
            }
        }
        Ok(&self.buf[self.pos..self.avail])
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.avail);
    }

    /// Reads (and discards) up to the end, to learn whether the MDC holds.
    pub(super) fn drain(&mut self) -> SState {
        while matches!(self.state, SState::Reading) {
            self.pos = self.avail;
            self.refill();
        }
        self.pos = self.avail;
        self.state.clone()
    }
}

struct SharedSeipd<'a>(Arc<Mutex<Seipd<'a>>>);

impl Read for SharedSeipd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        lock(&self.0).read(buf)
    }
}

/// What classifies errors: the encrypted container (to check the MDC) and the caller's I/O.
struct Ctx<'a> {
    seipd: Option<Arc<Mutex<Seipd<'a>>>>,
    slot: ErrSlot,
}

impl Ctx<'_> {
    /// An I/O error of the caller's reader, if there was one.
    fn source_error(&self) -> Option<CryptoError> {
        lock(&self.slot).take().map(CryptoError::Io)
    }

    /// After an error in the inner layers: read the container to its end and report an MDC
    /// failure or truncation in preference to whatever the garbage did to the parser.
    fn container_error(&self) -> Option<CryptoError> {
        let seipd = self.seipd.as_ref()?;
        let state = guard(|| lock(seipd).drain()).ok()?;
        match state {
            SState::Failed(f) => Some(f.to_error()),
            _ => None,
        }
    }

    fn classify(&self, fallback: CryptoError, eof: bool) -> CryptoError {
        if let Some(e) = self.source_error() {
            return e;
        }
        if let Some(e) = self.container_error() {
            return match e {
                CryptoError::Malformed(_) if eof => CryptoError::Truncated,
                other => other,
            };
        }
        if eof {
            CryptoError::Truncated
        } else {
            fallback
        }
    }

    fn classify_pgp(&self, e: pgp::errors::Error) -> CryptoError {
        let eof = chain_has_eof(&e);
        self.classify(CryptoError::Malformed(e.to_string()), eof)
    }

    fn classify_io(&self, e: io::Error) -> CryptoError {
        if let Some(c) = super::crypto_error_of(&e) {
            let owned = match c {
                CryptoError::IntegrityCheckFailed => Some(CryptoError::IntegrityCheckFailed),
                CryptoError::Truncated => Some(CryptoError::Truncated),
                _ => None,
            };
            if let Some(o) = owned {
                return self.source_error().unwrap_or(o);
            }
        }
        let eof = chain_has_eof(&e);
        self.classify(CryptoError::Malformed(e.to_string()), eof)
    }

    fn classify_panic(&self, e: CryptoError) -> CryptoError {
        self.classify(e, false)
    }
}

/// rpgp reports input that ends inside a packet either as `UnexpectedEof` or, for a
/// definite-length packet, as an `Other` error with this text.
fn is_truncation(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
        || e.to_string().contains("chunk was shorter than expected")
}

fn chain_has_eof(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && is_truncation(io)
        {
            return true;
        }
        if c.to_string().contains("chunk was shorter than expected") {
            return true;
        }
        cur = c.source();
    }
    false
}

enum PState {
    Reading,
    Done,
    Failed,
}

/// The plaintext reader handed to the caller.
struct PlainReader<'a> {
    msg: Message<'a>,
    ctx: Ctx<'a>,
    expected: Vec<PublicKey>,
    state: PState,
}

impl PlainReader<'_> {
    fn finalize(&mut self) -> Result<(), CryptoError> {
        if let Some(seipd) = &self.ctx.seipd {
            let state = guard(|| lock(seipd).drain())?;
            match state {
                SState::Done => {}
                SState::Failed(f) => return Err(f.to_error()),
                SState::Reading => {
                    return Err(CryptoError::Malformed("encrypted data did not end".into()));
                }
            }
        }
        if !self.expected.is_empty() {
            guard(|| verify_signatures(&self.msg, &self.expected))??;
        }
        Ok(())
    }
}

fn verify_signatures(msg: &Message<'_>, expected: &[PublicKey]) -> Result<(), CryptoError> {
    let Message::Signed { reader, .. } = msg else {
        return Err(CryptoError::MissingSignature {
            expected: expected_ids(expected),
        });
    };
    let mut found = Vec::new();
    let mut bad: Option<CryptoError> = None;
    for i in 0..reader.num_signatures() {
        let Some(sig) = reader.signature(i) else {
            continue;
        };
        let ids = sig.issuer_key_id();
        let fps = sig.issuer_fingerprint();
        if let Some(id) = ids.first() {
            found.push(key_id_hex(id));
        } else if let Some(fp) = fps.first() {
            found.push(format!("{fp:X}"));
        }
        for pk in expected {
            for comp in verifying_components(&pk.key) {
                let matches = (ids.is_empty() && fps.is_empty())
                    || ids.iter().any(|id| **id == comp.legacy_key_id())
                    || fps.iter().any(|fp| **fp == comp.fingerprint());
                if !matches {
                    continue;
                }
                match msg.verify_nested_explicit(i, comp) {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        bad = Some(CryptoError::BadSignature {
                            key_id: key_id_hex(&comp.legacy_key_id()),
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
    }
    if let Some(b) = bad {
        return Err(b);
    }
    if found.is_empty() && reader.num_signatures() == 0 {
        return Err(CryptoError::MissingSignature {
            expected: expected_ids(expected),
        });
    }
    Err(CryptoError::UnexpectedSigner {
        found: if found.is_empty() {
            "an unidentified key".into()
        } else {
            found.join(", ")
        },
        expected: expected_ids(expected),
    })
}

impl Read for PlainReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            PState::Done => return Ok(0),
            PState::Failed => {
                return Err(io::Error::other(
                    "OpenPGP message reader already failed with an earlier error",
                ));
            }
            PState::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let err = match guard(|| self.msg.read(buf)) {
            Ok(Ok(0)) => match self.finalize() {
                Ok(()) => {
                    self.state = PState::Done;
                    return Ok(0);
                }
                Err(e) => e,
            },
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) => self.ctx.classify_io(e),
            Err(e) => self.ctx.classify_panic(e),
        };
        self.state = PState::Failed;
        Err(err.into_io())
    }
}
