//! Error type of the OpenPGP layer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while loading keys, writing or reading an OpenPGP message.
///
/// Errors that surface while *reading* plaintext from [`decrypt_reader`](super::decrypt_reader)
/// arrive as [`std::io::Error`]s wrapping a `CryptoError`; use
/// [`crypto_error_of`](super::crypto_error_of) to get it back.
#[derive(thiserror::Error, Debug)]
pub enum CryptoError {
    /// A key file could not be read or parsed.
    #[error("cannot load OpenPGP key from {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },

    /// Key material was parsed but is unusable (no valid self-signature, bad format, ...).
    #[error("invalid OpenPGP key {fingerprint}: {reason}")]
    InvalidKey { fingerprint: String, reason: String },

    /// A recipient key has no valid (bound, unexpired, unrevoked) encryption-capable key.
    #[error("OpenPGP key {fingerprint} cannot be used for encryption: {reason}")]
    NoEncryptionSubkey { fingerprint: String, reason: String },

    /// A signer key has no valid (bound, unexpired, unrevoked) signing-capable key.
    #[error("OpenPGP key {fingerprint} cannot be used for signing: {reason}")]
    NoSigningKey { fingerprint: String, reason: String },

    /// A secret key is passphrase-protected and no (correct) passphrase was given.
    #[error("secret key {fingerprint} is locked: missing or wrong passphrase")]
    SecretKeyLocked { fingerprint: String },

    /// The message is encrypted to a passphrase or key we have, but none of the passphrases
    /// (or the matching secret key) opened it.
    #[error("wrong passphrase or key: cannot decrypt the message's session key")]
    WrongPassphraseOrKey,

    /// The message is only encrypted to a passphrase and none was given.
    #[error("the message is encrypted with a passphrase, but no passphrase was given")]
    PassphraseRequired,

    /// The message is only encrypted to public keys, and we have none of the secret keys.
    #[error(
        "no secret key for this message; it is encrypted to key id(s) {}",
        key_ids.join(", ")
    )]
    NoMatchingSecretKey { key_ids: Vec<String> },

    /// The modification detection code (SHA-1 MDC of SEIPD v1) did not match: the ciphertext
    /// was modified or corrupted.
    #[error("integrity check failed (bad MDC): the message was modified or corrupted")]
    IntegrityCheckFailed,

    /// The message is not encrypted, but encryption was required.
    #[error("OpenPGP message is not encrypted")]
    NotEncrypted,

    /// The message uses the legacy, unprotected "symmetrically encrypted data" packet (tag 9).
    #[error("message is not integrity protected (legacy tag 9 encrypted data); refusing it")]
    IntegrityProtectionMissing,

    /// The message ends before its packets do.
    #[error("OpenPGP message is truncated")]
    Truncated,

    /// A signature by an expected signer key does not verify.
    #[error("bad signature by key {key_id}: {reason}")]
    BadSignature { key_id: String, reason: String },

    /// A signature was required but the message is not signed.
    #[error("message is not signed, but a signature by {expected} is required")]
    MissingSignature { expected: String },

    /// The message is signed, but not by any of the expected keys.
    #[error("message is signed by {found}, not by the expected key {expected}")]
    UnexpectedSigner { found: String, expected: String },

    /// Valid OpenPGP that GnuPG 2.2 / this implementation does not handle (AEAD, v6, ...).
    #[error("unsupported OpenPGP feature: {0}")]
    Unsupported(String),

    /// Invalid settings in an [`EncryptionSpec`](super::EncryptionSpec).
    #[error("invalid encryption settings: {0}")]
    InvalidSpec(String),

    /// The writer was used after an earlier error.
    #[error("OpenPGP writer is unusable after an earlier error")]
    WriterFailed,

    /// Anything else wrong with the packet structure.
    #[error("malformed OpenPGP message: {0}")]
    Malformed(String),

    /// An error from rpgp that does not fit any of the above.
    #[error("OpenPGP error: {0}")]
    Pgp(String),

    /// I/O error of the underlying reader or writer.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CryptoError {
    /// The `io::ErrorKind` used when this error is wrapped in an `io::Error`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            CryptoError::Io(e) => e.kind(),
            CryptoError::Truncated => io::ErrorKind::UnexpectedEof,
            CryptoError::KeyFile { .. }
            | CryptoError::InvalidSpec(_)
            | CryptoError::InvalidKey { .. } => io::ErrorKind::InvalidInput,
            CryptoError::WrongPassphraseOrKey
            | CryptoError::PassphraseRequired
            | CryptoError::NoMatchingSecretKey { .. }
            | CryptoError::SecretKeyLocked { .. } => io::ErrorKind::PermissionDenied,
            CryptoError::Unsupported(_) => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// Wraps this error in an `io::Error` (of kind [`Self::io_kind`]); an `Io` error is
    /// returned as is.
    pub fn into_io(self) -> io::Error {
        match self {
            CryptoError::Io(e) => e,
            other => io::Error::new(other.io_kind(), other),
        }
    }

    pub(crate) fn pgp(e: pgp::errors::Error) -> Self {
        CryptoError::Pgp(e.to_string())
    }
}

impl From<CryptoError> for io::Error {
    fn from(e: CryptoError) -> io::Error {
        e.into_io()
    }
}

/// Returns the [`CryptoError`] carried by an `io::Error` returned from the readers and writers
/// of this module, if there is one.
pub fn crypto_error_of(e: &io::Error) -> Option<&CryptoError> {
    let mut cur: &(dyn std::error::Error + 'static) = e.get_ref()?;
    loop {
        if let Some(c) = cur.downcast_ref::<CryptoError>() {
            return Some(c);
        }
        if let Some(io) = cur.downcast_ref::<io::Error>() {
            cur = io.get_ref()?;
            continue;
        }
        return None;
    }
}
