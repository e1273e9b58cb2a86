//! OpenPGP CFB decryption (used by the SEIPD v1 reader) for every cipher rpgp knows.
//!
//! AES (what GnuPG 2.2 and our writer use) goes through `aes` + `cfb-mode` directly with a
//! persistent state; the legacy ciphers (CAST5, 3DES, Twofish, Blowfish, Camellia, IDEA)
//! go through rpgp's one-shot `decrypt_with_iv_regular`, chaining the IV ourselves.

use aes::{Aes128, Aes192, Aes256};
use cfb_mode::BufDecryptor;
use cfb_mode::cipher::KeyIvInit;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use zeroize::Zeroizing;

use super::error::CryptoError;

pub(crate) enum CfbDecryptor {
    Aes128(BufDecryptor<Aes128>),
    Aes192(BufDecryptor<Aes192>),
    Aes256(BufDecryptor<Aes256>),
    Other(OtherCfb),
}

pub(crate) struct OtherCfb {
    alg: SymmetricKeyAlgorithm,
    key: Zeroizing<Vec<u8>>,
    iv: Vec<u8>,
    /// Ciphertext of the current, incomplete block (re-decrypted with the next call).
    partial: Vec<u8>,
    bs: usize,
}

/// Block size of `alg`, if it is a cipher we can use for OpenPGP CFB.
pub(crate) fn block_size(alg: SymmetricKeyAlgorithm) -> Option<usize> {
    match alg {
        SymmetricKeyAlgorithm::Plaintext
        | SymmetricKeyAlgorithm::Private10
        | SymmetricKeyAlgorithm::Other(_) => None,
        a => match a.block_size() {
            8 | 16 => Some(a.block_size()),
            _ => None,
        },
    }
}

impl CfbDecryptor {
    pub(crate) fn new(
        alg: SymmetricKeyAlgorithm,
        key: &[u8],
        iv: &[u8],
    ) -> Result<Self, CryptoError> {
        let bad = |e: &dyn std::fmt::Display| CryptoError::Malformed(format!("cipher setup: {e}"));
        let bs = block_size(alg)
            .ok_or_else(|| CryptoError::Unsupported(format!("symmetric algorithm {alg:?}")))?;
        if key.len() != alg.key_size() || iv.len() != bs {
            return Err(CryptoError::Malformed(format!(
                "session key of {} bytes does not fit {alg:?}",
                key.len()
            )));
        }
        Ok(match alg {
            SymmetricKeyAlgorithm::AES128 => {
                CfbDecryptor::Aes128(BufDecryptor::new_from_slices(key, iv).map_err(|e| bad(&e))?)
            }
            SymmetricKeyAlgorithm::AES192 => {
                CfbDecryptor::Aes192(BufDecryptor::new_from_slices(key, iv).map_err(|e| bad(&e))?)
            }
            SymmetricKeyAlgorithm::AES256 => {
                CfbDecryptor::Aes256(BufDecryptor::new_from_slices(key, iv).map_err(|e| bad(&e))?)
            }
            _ => CfbDecryptor::Other(OtherCfb {
                alg,
                key: Zeroizing::new(key.to_vec()),
                iv: iv.to_vec(),
                partial: Vec::with_capacity(bs),
                bs,
            }),
        })
    }

    /// Decrypts `data` in place, continuing the CFB stream (any split is allowed).
    pub(crate) fn decrypt(&mut self, data: &mut [u8]) -> Result<(), CryptoError> {
        match self {
            CfbDecryptor::Aes128(d) => d.decrypt(data),
            CfbDecryptor::Aes192(d) => d.decrypt(data),
            CfbDecryptor::Aes256(d) => d.decrypt(data),
            CfbDecryptor::Other(o) => o.decrypt(data)?,
        }
        Ok(())
    }
}

impl OtherCfb {
    fn decrypt(&mut self, data: &mut [u8]) -> Result<(), CryptoError> {
        if data.is_empty() {
            return Ok(());
        }
        let p = self.partial.len();
        let mut tmp = Vec::with_capacity(p + data.len());
        tmp.extend_from_slice(&self.partial);
        tmp.extend_from_slice(data);
        let full = tmp.len() / self.bs * self.bs;
        let next_iv = (full >= self.bs).then(|| tmp[full - self.bs..full].to_vec());
        let next_partial = tmp[full..].to_vec();
        self.alg
            .decrypt_with_iv_regular(&self.key, &self.iv, &mut tmp)
            .map_err(|e| CryptoError::Pgp(e.to_string()))?;
        data.copy_from_slice(&tmp[p..]);
        if let Some(iv) = next_iv {
            self.iv = iv;
        }
        self.partial = next_partial;
        Ok(())
    }
}

/// OpenPGP quick check: decrypts the first `bs + 2` bytes of a SEIPD/SED body with `key`
/// and checks that the last two prefix bytes are repeated. A wrong key passes with
/// probability 2^-16.
pub(crate) fn quick_check(alg: SymmetricKeyAlgorithm, key: &[u8], prefix_ct: &[u8]) -> bool {
    let Some(bs) = block_size(alg) else {
        return false;
    };
    if prefix_ct.len() < bs + 2 || key.len() != alg.key_size() {
        return false;
    }
    let mut p = prefix_ct[..bs + 2].to_vec();
    let iv = vec![0u8; bs];
    match CfbDecryptor::new(alg, key, &iv) {
        Ok(mut d) => {
            if d.decrypt(&mut p).is_err() {
                return false;
            }
        }
        Err(_) => return false,
    }
    p[bs - 2..bs] == p[bs..bs + 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chained legacy path must agree with one-shot decryption for arbitrary splits.
    #[test]
    fn other_cfb_split_matches_one_shot() {
        for alg in [
            SymmetricKeyAlgorithm::CAST5,
            SymmetricKeyAlgorithm::TripleDES,
            SymmetricKeyAlgorithm::Twofish,
            SymmetricKeyAlgorithm::Camellia128,
            SymmetricKeyAlgorithm::AES256,
        ] {
            let key: Vec<u8> = (0..alg.key_size() as u8).collect();
            let bs = alg.block_size();
            let iv = vec![0u8; bs];
            let ct: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
            let mut one = ct.clone();
            alg.decrypt_with_iv_regular(&key, &iv, &mut one).unwrap();
            for split in [1usize, 5, 8, 17, 100, 333] {
                let mut d = CfbDecryptor::new(alg, &key, &iv).unwrap();
                let mut got = ct.clone();
                let mut pos = 0;
                let mut step = split;
                while pos < got.len() {
                    let end = (pos + step).min(got.len());
                    d.decrypt(&mut got[pos..end]).unwrap();
                    pos = end;
                    step = step * 3 % 97 + 1;
                }
                assert_eq!(got, one, "{alg:?} split {split}");
            }
        }
    }
}
