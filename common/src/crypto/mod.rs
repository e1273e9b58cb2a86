//! OpenPGP messages as duplicity 0.8.22 / GnuPG 2.2 write and read them.
//!
//! # Writing
//!
//! [`EncryptionSpec::writer`] returns a push-based [`MessageWriter`] (an `io::Write`) that
//! produces, in this order (all of it readable by `gpg --decrypt` 2.2, and so by stock
//! duplicity):
//!
//! * one **PKESK v3** per recipient and/or one **SKESK v4** (iterated+salted SHA-256 S2K,
//!   never Argon2) — GnuPG 2.2 knows neither v6 PKESK/SKESK nor Argon2;
//! * one **SEIPD v1** packet (tag 18, version 1, AES-256 CFB with a zero IV and no resync,
//!   random prefix with the two quick-check bytes, trailing **MDC** packet `D3 14` +
//!   SHA-1) — the only integrity-protected container GnuPG 2.2 reads (no AEAD, no SEIPDv2);
//!   written with partial body lengths (1 MiB parts, last part definite), which GnuPG
//!   accepts;
//! * inside it, optionally a **compressed data packet** (ZIP = raw deflate, algo 1, or
//!   ZLIB, algo 2) with an old-format indeterminate length, exactly like GnuPG writes it;
//! * optionally a **one-pass signature** packet, then the **literal data packet** (format
//!   `b`, empty file name, partial lengths), then the **signature** (type 0x00 binary,
//!   SHA-256, v4) — what `gpg --sign --encrypt` writes and what duplicity's `--sign-key`
//!   check needs (`GOODSIG` carries the id of the key that signed, see
//!   [`SecretKey::signing_key_id_hex`]).
//!
//! We frame the message ourselves instead of using rpgp's `MessageBuilder` because the
//! builder is pull-based, hard-codes compression level 6 and compresses on one core, and
//! compression is the bottleneck of a backup: here the level is configurable
//! ([`Compression`]) and the deflate stream is produced by several threads
//! ([`EncryptionSpec::compression_threads`]): the literal-packet byte stream is cut into
//! 1 MiB chunks, each chunk is deflated independently (primed with the previous chunk's
//! last 32 KiB as dictionary, ending in a sync flush so that the concatenation is one valid
//! deflate stream, the last chunk with a final block), and the chunks are reassembled in
//! order and encrypted serially, on a thread of their own once the message outgrows one
//! chunk. Memory stays bounded: about 2 MiB per compression thread plus about 6 MiB per
//! message, whatever the message size. rpgp is
//! still used for everything cryptographic apart from the bulk cipher: keys, session-key
//! packets, S2K and signatures.
//!
//! # Reading
//!
//! [`decrypt_reader`] returns a pull-based `io::Read` of the plaintext. rpgp parses the
//! packets (ESKs, compression incl. BZip2, one-pass signatures, literal data, partial and
//! indeterminate lengths) and decrypts session keys; the SEIPD v1 layer itself (quick check,
//! CFB, MDC) is done here, streaming, so that a wrong passphrase is detected up front (rpgp
//! does not check the quick-check bytes) and a modified ciphertext is reported as
//! [`CryptoError::IntegrityCheckFailed`] even when the garbage first trips the
//! decompressor. Plaintext is released before the MDC is checked (like
//! rpgp's `Seipdv1ReadMode::Streaming`): callers must treat data as valid only after the
//! reader returned EOF (`Ok(0)`) without error.

mod cfb;
mod compress;
mod error;
mod keys;
mod plain;
mod reader;
mod writer;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

pub use error::{CryptoError, crypto_error_of};
pub use keys::{Passphrase, PublicKey, SecretKey};
pub use reader::{DecryptOptions, decrypt_reader, decrypt_reader_with_options};
pub use writer::MessageWriter;

/// OpenPGP compression of the literal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// No compressed-data packet at all.
    None,
    /// ZIP (algo 1): raw deflate, GnuPG's default for `--symmetric`. Level 0..=9.
    Zip { level: u32 },
    /// ZLIB (algo 2): deflate with zlib header and Adler-32. Level 0..=9.
    Zlib { level: u32 },
    /// ZIP (algo 1) with the effort chosen per 512 KiB chunk from three 4 KiB samples:
    /// stored when they do not shrink by 5% (media, archives), level 2 when level 2
    /// shrinks them at least 20% more than level 1, level 1 otherwise. Nearly as fast as
    /// level 1, within about 5% of level 6 in size on server data. With one compression
    /// thread the stream is one continuous level-1 stream.
    Auto,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zip { level: 6 }
    }
}

impl Compression {
    pub(crate) fn level(&self) -> Option<u32> {
        match self {
            Compression::None => None,
            Compression::Zip { level } | Compression::Zlib { level } => Some(*level),
            Compression::Auto => Some(1),
        }
    }
}

/// What a [`MessageWriter`] produces: recipients and/or passphrase, signer, compression.
#[derive(Clone, Debug)]
pub struct EncryptionSpec {
    /// Public keys to encrypt to (one PKESK each, to the key's encryption subkey).
    pub recipients: Vec<PublicKey>,
    /// Symmetric passphrase (one SKESK). May be combined with recipients.
    pub passphrase: Option<Passphrase>,
    /// Sign (one-pass, inside the encryption) with this key's signing (sub)key.
    pub signer: Option<SecretKey>,
    pub compression: Compression,
    /// Threads that deflate one message in parallel; 1 means inline on the writing thread.
    /// 0 is treated like the default ([`std::thread::available_parallelism`]). Threads are
    /// started only once a message exceeds one 512 KiB chunk, at most `threads + 1` chunks
    /// are in flight, and the threads are joined by `finish` or drop.
    pub compression_threads: usize,
}

impl Default for EncryptionSpec {
    fn default() -> Self {
        EncryptionSpec {
            recipients: Vec::new(),
            passphrase: None,
            signer: None,
            compression: Compression::default(),
            compression_threads: default_threads(),
        }
    }
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl EncryptionSpec {
    /// Symmetric encryption with `passphrase`, default compression.
    pub fn symmetric(passphrase: Passphrase) -> Self {
        EncryptionSpec {
            passphrase: Some(passphrase),
            ..Default::default()
        }
    }

    /// Public-key encryption to `recipients`, default compression.
    pub fn to_recipients(recipients: Vec<PublicKey>) -> Self {
        EncryptionSpec {
            recipients,
            ..Default::default()
        }
    }

    /// True if messages are encrypted (to at least one recipient or a passphrase). If not,
    /// [`Self::writer`] writes an unencrypted (possibly signed and compressed) OpenPGP
    /// message.
    pub fn is_encrypting(&self) -> bool {
        !self.recipients.is_empty() || self.passphrase.is_some()
    }

    /// Starts a message: validates the keys, writes the session-key packets to `out` and
    /// returns the writer for the plaintext. Call [`MessageWriter::finish`] at the end.
    pub fn writer<W: std::io::Write + Send + 'static>(
        &self,
        out: W,
    ) -> Result<MessageWriter<W>, CryptoError> {
        MessageWriter::new(self, writer::FramerOut::Here(out))
    }

    /// Like [`Self::writer`], but `out` is written on a thread of its own, named `name`
    /// (for the upload and its hashing, beside the serial encryption). Each encrypted part
    /// is handed to that thread as it is, not copied.
    pub fn writer_behind<W: std::io::Write + Send + 'static>(
        &self,
        out: W,
        name: &'static str,
    ) -> Result<MessageWriter<W>, CryptoError> {
        MessageWriter::new(self, writer::FramerOut::behind(out, name)?)
    }

    /// Checks keys and settings without writing anything.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if let Some(level) = self.compression.level()
            && level > 9
        {
            return Err(CryptoError::InvalidSpec(format!(
                "compression level {level} is out of range 0..=9"
            )));
        }
        for r in &self.recipients {
            r.check_encryption_usable()?;
        }
        if let Some(s) = &self.signer {
            s.check_signing_usable()?;
        }
        Ok(())
    }
}

/// Keys and passphrases to open messages with, and the signers a message must be signed by.
#[derive(Clone, Default, Debug)]
pub struct DecryptionKeys {
    pub secret_keys: Vec<SecretKey>,
    /// Tried on SKESKs (message passphrases) and to unlock protected secret keys.
    pub passphrases: Vec<Passphrase>,
    /// If non-empty, every message must carry a valid signature by one of these keys (by the
    /// primary key or a signing subkey).
    pub expected_signers: Vec<PublicKey>,
    /// Session keys already found with these keys; shared by clones.
    pub session_keys: SessionKeyCache,
}

/// Session keys found for messages, by the bytes of the messages' key packets.
///
/// A message's session key sits behind an iterated-and-salted S2K (16 MiB of SHA-256 for our
/// writer's messages, similar for GnuPG's) or a secret key that may have to be unlocked the
/// same way. A restore opens some objects several times (a volume at a segment boundary by
/// both lanes, the signature files by each lane and the check), and deriving the key again
/// each time was 3% of its CPU. The cache holds at most [`SessionKeyCache::CAPACITY`] keys,
/// zeroed when dropped; it says nothing about them in `Debug`.
#[derive(Clone, Default)]
pub struct SessionKeyCache(Arc<Mutex<VecDeque<CachedSessionKey>>>);

struct CachedSessionKey {
    key_packets: Vec<u8>,
    alg: pgp::crypto::sym::SymmetricKeyAlgorithm,
    key: Zeroizing<Vec<u8>>,
}

impl SessionKeyCache {
    /// Oldest entries go first beyond this.
    pub const CAPACITY: usize = 64;

    pub(crate) fn get(
        &self,
        key_packets: &[u8],
    ) -> Option<(pgp::crypto::sym::SymmetricKeyAlgorithm, Zeroizing<Vec<u8>>)> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .iter()
            .find(|c| c.key_packets == key_packets)
            .map(|c| (c.alg, c.key.clone()))
    }

    pub(crate) fn insert(
        &self,
        key_packets: Vec<u8>,
        alg: pgp::crypto::sym::SymmetricKeyAlgorithm,
        key: Zeroizing<Vec<u8>>,
    ) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= Self::CAPACITY {
            cache.pop_front();
        }
        cache.push_back(CachedSessionKey {
            key_packets,
            alg,
            key,
        });
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SessionKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeyCache({} keys)", self.len())
    }
}
