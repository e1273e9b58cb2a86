//! Keys and passphrases: loading, and choosing the (sub)key that encrypts or signs.
//!
//! Validity is evaluated per component the way GnuPG does it, with rpgp doing the
//! cryptographic checks: a self-signature (user-ID certification or direct-key signature)
//! must verify for the primary key, a subkey must carry a verifying binding signature (plus
//! a verifying back-signature when it can sign); a verifying revocation or a passed expiry
//! time disables the component. We deliberately do not call
//! `SignedPublicKey::verify_bindings()` on the whole key: it fails on perfectly usable keys
//! that carry third-party certifications or old SHA-1 self-signatures next to newer ones.

use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use pgp::composed::{Deserializable, SignedPublicKey, SignedPublicSubKey, SignedSecretKey};
use pgp::packet::{Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails, KeyId, Password, Tag, Timestamp, VerifyingKey};
use zeroize::Zeroizing;

use super::error::CryptoError;

/// A passphrase (symmetric message passphrase or secret-key passphrase).
///
/// Zeroed on drop; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(s: impl Into<String>) -> Self {
        Passphrase(Zeroizing::new(s.into()))
    }

    /// The passphrase text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn to_pgp(&self) -> Password {
        Password::from(self.0.as_bytes())
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Passphrase::new(s)
    }
}

impl From<&str> for Passphrase {
    fn from(s: &str) -> Self {
        Passphrase::new(s)
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An OpenPGP public key (certificate), e.g. the output of `gpg --export [--armor]`.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) key: Arc<SignedPublicKey>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint_hex())
    }
}

impl PublicKey {
    /// Loads a public key (armored or binary) from a file. A secret key file is accepted too
    /// (its public part is used).
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let data = std::fs::read(path).map_err(|e| CryptoError::KeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&data).map_err(|e| key_file_error(path, e))
    }

    /// Parses exactly one public key (armored or binary). A secret key is accepted too.
    pub fn from_bytes(armored_or_binary: &[u8]) -> Result<Self, CryptoError> {
        match parse_single::<SignedPublicKey>(armored_or_binary) {
            Ok(key) => Ok(Self::from_signed(key)),
            Err(pub_err) => match parse_single::<SignedSecretKey>(armored_or_binary) {
                Ok(sec) => Ok(Self::from_signed(sec.to_public_key())),
                Err(_) => Err(pub_err),
            },
        }
    }

    /// Wraps an rpgp key.
    pub fn from_signed(key: SignedPublicKey) -> Self {
        PublicKey { key: Arc::new(key) }
    }

    /// The wrapped rpgp key.
    pub fn signed_public_key(&self) -> &SignedPublicKey {
        &self.key
    }

    /// Primary key fingerprint, upper-case hex (40 digits for v4 keys).
    pub fn fingerprint_hex(&self) -> String {
        format!("{:X}", self.key.primary_key.fingerprint())
    }

    /// Primary key id, 16 upper-case hex digits.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key.primary_key.legacy_key_id())
    }

    /// Key id of the (sub)key that messages to this key are encrypted to.
    pub fn encryption_key_id_hex(&self) -> Result<String, CryptoError> {
        let target = select_encryption_key(&self.key, now())?;
        Ok(key_id_hex(&match target {
            KeyRef::Primary => self.key.primary_key.legacy_key_id(),
            KeyRef::Subkey(i) => self.key.public_subkeys[i].key.legacy_key_id(),
        }))
    }

    /// Checks that this key can be encrypted to (valid, unexpired, unrevoked encryption key).
    pub fn check_encryption_usable(&self) -> Result<(), CryptoError> {
        select_encryption_key(&self.key, now()).map(|_| ())
    }
}

/// An OpenPGP secret key (e.g. `gpg --export-secret-keys`), optionally with the passphrase
/// that unlocks it.
///
/// If a passphrase is given when loading, the key material is unlocked once, at load time
/// (so the S2K cost is not paid per message).
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) key: Arc<SignedSecretKey>,
    pub(crate) passphrase: Option<Passphrase>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.fingerprint_hex())
    }
}

impl SecretKey {
    /// Loads a secret key (armored or binary) from a file.
    pub fn from_file(path: &Path, passphrase: Option<Passphrase>) -> Result<Self, CryptoError> {
        let data = std::fs::read(path).map_err(|e| CryptoError::KeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&data, passphrase).map_err(|e| key_file_error(path, e))
    }

    /// Parses exactly one secret key (armored or binary) and unlocks it with `passphrase`
    /// if it is protected.
    pub fn from_bytes(
        armored_or_binary: &[u8],
        passphrase: Option<Passphrase>,
    ) -> Result<Self, CryptoError> {
        let key = parse_single::<SignedSecretKey>(armored_or_binary)?;
        Self::from_signed(key, passphrase)
    }

    /// Wraps an rpgp key, unlocking it with `passphrase` if it is protected.
    ///
    /// Components that the passphrase does not unlock stay locked; it is an error only if the
    /// passphrase unlocks none of the protected components.
    pub fn from_signed(
        mut key: SignedSecretKey,
        passphrase: Option<Passphrase>,
    ) -> Result<Self, CryptoError> {
        if let Some(pw) = &passphrase {
            let pgp_pw = pw.to_pgp();
            let mut protected = 0usize;
            let mut unlocked = 0usize;
            if key.primary_key.secret_params().is_encrypted() {
                protected += 1;
                if key.primary_key.remove_password(&pgp_pw).is_ok() {
                    unlocked += 1;
                }
            }
            for sub in &mut key.secret_subkeys {
                if sub.key.secret_params().is_encrypted() {
                    protected += 1;
                    if sub.key.remove_password(&pgp_pw).is_ok() {
                        unlocked += 1;
                    }
                }
            }
            if protected > 0 && unlocked == 0 {
                return Err(CryptoError::SecretKeyLocked {
                    fingerprint: format!("{:X}", key.primary_key.fingerprint()),
                });
            }
        }
        Ok(SecretKey {
            key: Arc::new(key),
            passphrase,
        })
    }

    /// The wrapped rpgp key.
    pub fn signed_secret_key(&self) -> &SignedSecretKey {
        &self.key
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_signed(self.key.to_public_key())
    }

    /// Primary key fingerprint, upper-case hex.
    pub fn fingerprint_hex(&self) -> String {
        format!("{:X}", self.key.primary_key.fingerprint())
    }

    /// Primary key id, 16 upper-case hex digits.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key.primary_key.legacy_key_id())
    }

    /// The 16-hex-digit id of the key that actually makes signatures: the newest valid
    /// signing subkey if there is one, otherwise the primary key. This is the id GnuPG
    /// prints in `GOODSIG` and that duplicity compares with `--sign-key`.
    ///
    /// Returns an empty string if the key cannot sign (see [`Self::check_signing_usable`]).
    pub fn signing_key_id_hex(&self) -> String {
        match self.signing_component() {
            Ok(SigningComponent::Primary) => self.key_id_hex(),
            Ok(SigningComponent::Subkey(i)) => {
                key_id_hex(&self.key.secret_subkeys[i].key.legacy_key_id())
            }
            Err(_) => String::new(),
        }
    }

    /// Checks that this key can sign (valid signing component, unlocked).
    pub fn check_signing_usable(&self) -> Result<(), CryptoError> {
        let comp = self.signing_component()?;
        let locked = match comp {
            SigningComponent::Primary => self.key.primary_key.secret_params().is_encrypted(),
            SigningComponent::Subkey(i) => self.key.secret_subkeys[i]
                .key
                .secret_params()
                .is_encrypted(),
        };
        if locked {
            return Err(CryptoError::SecretKeyLocked {
                fingerprint: self.fingerprint_hex(),
            });
        }
        Ok(())
    }

    /// Which component signs: index into `secret_subkeys`, or the primary key.
    pub(crate) fn signing_component(&self) -> Result<SigningComponent, CryptoError> {
        let public = self.key.to_public_key();
        let now = now();
        let fpr = self.fingerprint_hex();
        let primary = primary_status(&public, now).map_err(|reason| CryptoError::NoSigningKey {
            fingerprint: fpr.clone(),
            reason,
        })?;
        if let Some(reason) = primary.unusable_reason(now) {
            return Err(CryptoError::NoSigningKey {
                fingerprint: fpr,
                reason,
            });
        }
        // Newest valid signing subkey that we have the secret of.
        let mut best: Option<(u32, usize)> = None;
        for (i, sub) in self.key.secret_subkeys.iter().enumerate() {
            let pub_sub = sub.signed_public_key();
            let st = subkey_status(&public, &pub_sub);
            if st.usable(now) && st.usage.sign {
                let created = sub.key.created_at().as_secs();
                if best.is_none_or(|(c, _)| created > c) {
                    best = Some((created, i));
                }
            }
        }
        if let Some((_, i)) = best {
            return Ok(SigningComponent::Subkey(i));
        }
        if primary.usage.sign {
            return Ok(SigningComponent::Primary);
        }
        Err(CryptoError::NoSigningKey {
            fingerprint: fpr,
            reason: "no valid signing-capable key or subkey".into(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SigningComponent {
    Primary,
    Subkey(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRef {
    Primary,
    Subkey(usize),
}

pub(crate) fn key_id_hex(id: &KeyId) -> String {
    id.to_string().to_uppercase()
}

pub(crate) fn now() -> u32 {
    Timestamp::now().as_secs()
}

fn key_file_error(path: &Path, e: CryptoError) -> CryptoError {
    match e {
        CryptoError::Pgp(reason) | CryptoError::Malformed(reason) => CryptoError::KeyFile {
            path: path.to_owned(),
            reason,
        },
        other => other,
    }
}

fn parse_single<T: Deserializable>(data: &[u8]) -> Result<T, CryptoError> {
    let (iter, _headers) =
        T::from_reader_many(Cursor::new(data) as Cursor<&[u8]>).map_err(CryptoError::pgp)?;
    let mut keys = Vec::new();
    for k in iter {
        keys.push(k.map_err(CryptoError::pgp)?);
        if keys.len() > 1 {
            return Err(CryptoError::Malformed(
                "key data holds more than one key; expected exactly one".into(),
            ));
        }
    }
    keys.pop()
        .ok_or_else(|| CryptoError::Malformed("no OpenPGP key found in key data".into()))
}

/// What a key component may be used for, from its self-signature's key flags (or, if the
/// signature has no key flags subpacket, from its algorithm).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub sign: bool,
    pub encrypt: bool,
}

fn usage_of(sig: &Signature, key: &impl KeyDetails) -> Usage {
    let has_flags = sig
        .config()
        .map(|c| {
            c.hashed_subpackets()
                .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
        })
        .unwrap_or(false);
    let alg = key.algorithm();
    if has_flags {
        let f = sig.key_flags();
        Usage {
            sign: f.sign() && alg.can_sign(),
            encrypt: (f.encrypt_comms() || f.encrypt_storage()) && alg.can_encrypt(),
        }
    } else {
        Usage {
            sign: alg.can_sign(),
            encrypt: alg.can_encrypt(),
        }
    }
}

/// Validity of one key component.
#[derive(Debug)]
pub(crate) struct ComponentStatus {
    pub bound: bool,
    pub revoked: bool,
    /// Absolute expiry time (seconds since the epoch), if any.
    pub expires: Option<u64>,
    pub usage: Usage,
}

impl ComponentStatus {
    fn usable(&self, now: u32) -> bool {
        self.bound && !self.revoked && self.expires.is_none_or(|e| e > u64::from(now))
    }

    fn unusable_reason(&self, now: u32) -> Option<String> {
        if !self.bound {
            Some("no valid self-signature".into())
        } else if self.revoked {
            Some("key is revoked".into())
        } else {
            self.expires
                .filter(|e| *e <= u64::from(now))
                .map(|e| format!("key expired at {}", fmt_time(e)))
        }
    }
}

fn fmt_time(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn expiry_of(sig: &Signature, created: Timestamp) -> Option<u64> {
    let d = sig.key_expiration_time()?;
    let secs = u64::from(d.as_secs());
    (secs != 0).then(|| u64::from(created.as_secs()) + secs)
}

fn sig_created(sig: &Signature) -> u32 {
    sig.created().map(|t| t.as_secs()).unwrap_or(0)
}

/// Status of the primary key from its newest verifying self-signature.
pub(crate) fn primary_status<'a>(
    key: &'a SignedPublicKey,
    _now: u32,
) -> Result<ComponentStatus, String> {
    let primary = &key.primary_key;
    let revoked = key
        .details
        .revocation_signatures
        .iter()
        .any(|s| s.verify_key(primary).is_ok());
    let mut best: Option<&Signature> = None;
    let mut consider = |sig: &'a Signature| {
        if best.is_none_or(|b| sig_created(sig) >= sig_created(b)) {
            best = Some(sig);
        }
    };
    for user in &key.details.users {
        for sig in &user.signatures {
            if matches!(
                sig.typ(),
                Some(
                    SignatureType::CertGeneric
                        | SignatureType::CertPersona
                        | SignatureType::CertCasual
                        | SignatureType::CertPositive
                )
            ) && is_self_issued(sig, primary)
                && sig
                    .verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            {
                consider(sig);
            }
        }
    }
    for sig in &key.details.direct_signatures {
        if sig.typ() == Some(SignatureType::Key) && sig.verify_key(primary).is_ok() {
            consider(sig);
        }
    }
    let Some(sig) = best else {
        return Err("the key has no valid self-signature".into());
    };
    Ok(ComponentStatus {
        bound: true,
        revoked,
        expires: expiry_of(sig, primary.created_at()),
        usage: usage_of(sig, primary),
    })
}

fn is_self_issued(sig: &Signature, key: &impl KeyDetails) -> bool {
    let ids = sig.issuer_key_id();
    let fps = sig.issuer_fingerprint();
    if ids.is_empty() && fps.is_empty() {
        return true;
    }
    let id = key.legacy_key_id();
    let fp = key.fingerprint();
    ids.iter().any(|i| **i == id) || fps.iter().any(|f| **f == fp)
}

/// Status of a subkey from its newest verifying binding signature.
pub(crate) fn subkey_status(key: &SignedPublicKey, sub: &SignedPublicSubKey) -> ComponentStatus {
    let primary = &key.primary_key;
    let mut revoked = false;
    let mut best: Option<&Signature> = None;
    for sig in &sub.signatures {
        match sig.typ() {
            Some(SignatureType::SubkeyBinding) => {
                if sig.verify_subkey_binding(primary, &sub.key).is_err() {
                    continue;
                }
                // A signing-capable subkey needs a valid back-signature.
                if sig.key_flags().sign() {
                    let ok = sig
                        .embedded_signature()
                        .map(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok())
                        .unwrap_or(false);
                    if !ok {
                        continue;
                    }
                }
                if best.is_none_or(|b| sig_created(sig) >= sig_created(b)) {
                    best = Some(sig);
                }
            }
            Some(SignatureType::SubkeyRevocation)
                if sig.verify_subkey_binding(primary, &sub.key).is_ok() =>
            {
                revoked = true;
            }
            _ => {}
        }
    }
    match best {
        Some(sig) => ComponentStatus {
            bound: true,
            revoked,
            expires: expiry_of(sig, sub.key.created_at()),
            usage: usage_of(sig, &sub.key),
        },
        None => ComponentStatus {
            bound: false,
            revoked,
            expires: None,
            usage: Usage::default(),
        },
    }
}

/// Picks the key to encrypt to, like GnuPG: the newest valid encryption subkey, else the
/// primary key if it may encrypt.
pub(crate) fn select_encryption_key(
    key: &SignedPublicKey,
    now: u32,
) -> Result<KeyRef, CryptoError> {
    let fingerprint = format!("{:X}", key.primary_key.fingerprint());
    let primary = primary_status(key, now).map_err(|reason| CryptoError::NoEncryptionSubkey {
        fingerprint: fingerprint.clone(),
        reason,
    })?;
    if let Some(reason) = primary.unusable_reason(now) {
        return Err(CryptoError::NoEncryptionSubkey {
            fingerprint,
            reason,
        });
    }
    let mut best: Option<(u32, usize)> = None;
    let mut unusable = Vec::new();
    for (i, sub) in key.public_subkeys.iter().enumerate() {
        let st = subkey_status(key, sub);
        if !st.usage.encrypt && st.bound {
            continue;
        }
        if st.usable(now) && st.usage.encrypt {
            let created = sub.key.created_at().as_secs();
            if best.is_none_or(|(c, _)| created > c) {
                best = Some((created, i));
            }
        } else if let Some(reason) = st.unusable_reason(now) {
            unusable.push(format!(
                "subkey {}: {}",
                key_id_hex(&sub.key.legacy_key_id()),
                reason
            ));
        }
    }
    if let Some((_, i)) = best {
        return Ok(KeyRef::Subkey(i));
    }
    if primary.usage.encrypt {
        return Ok(KeyRef::Primary);
    }
    let reason = if unusable.is_empty() {
        "no encryption-capable key or subkey".to_string()
    } else {
        format!("no usable encryption subkey ({})", unusable.join("; "))
    };
    Err(CryptoError::NoEncryptionSubkey {
        fingerprint,
        reason,
    })
}

/// The components of `key` that may have made a data signature: the primary key (if it is
/// validly self-signed and not revoked) and every subkey with a valid binding (incl.
/// back-signature) that allows signing. Expiry is not checked: old backups stay
/// verifiable.
pub(crate) fn verifying_components(key: &SignedPublicKey) -> Vec<&dyn VerifyingKey> {
    let mut out: Vec<&dyn VerifyingKey> = Vec::new();
    if let Ok(st) = primary_status(key, now())
        && !st.revoked
    {
        out.push(&key.primary_key);
    }
    for sub in &key.public_subkeys {
        let st = subkey_status(key, sub);
        if st.bound && !st.revoked && st.usage.sign {
            out.push(&sub.key);
        }
    }
    out
}
