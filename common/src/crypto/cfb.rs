//! OpenPGP CFB decryption (used by the SEIPD v1 reader) for every cipher rpgp knows.
//!
//! AES (what GnuPG 2.2 and our writer use) goes through `aes` + `cfb-mode` directly with a
//! persistent state; the legacy ciphers (CAST5, 3DES, Twofish, Blowfish, Camellia, IDEA)
//! go through rpgp's one-shot `decrypt_with_iv_regular`, chaining the IV ourselves.

use aes::{Aes128, Aes192, Aes256};
use cfb_mode::cipher::{Block, BlockEncrypt, KeyInit};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use zeroize::Zeroizing;

use super::error::CryptoError;

pub(crate) enum CfbDecryptor {
    Aes128(ParCfb<Aes128>),
    Aes192(ParCfb<Aes192>),
    Aes256(ParCfb<Aes256>),
    Other(OtherCfb),
}

/// AES blocks decrypted per batch (8 KiB: stays in L1 beside the data).
const BATCH_BLOCKS: usize = 512;

/// CFB decryption that computes many keystream blocks at once. In CFB the keystream block
/// for ciphertext block i is E(ciphertext block i−1), and all ciphertext is at hand when
/// decrypting, so the block cipher runs on a whole batch with the CPU's parallel AES
/// instructions: `cfb_mode::BufDecryptor` runs it block by block, each waiting for the
/// previous one, several times slower and the restore's longest serial stage.
pub(crate) struct ParCfb<C: BlockEncrypt> {
    cipher: C,
    /// The current block: ciphertext bytes before `pos`, keystream bytes from `pos` on
    /// (the same convention as `cfb_mode::BufDecryptor`).
    iv: Block<C>,
    pos: usize,
    /// Scratch for a batch of cipher inputs.
    batch: Vec<Block<C>>,
}

impl<C: BlockEncrypt + KeyInit> ParCfb<C> {
    fn new(key: &[u8], iv: &[u8]) -> Result<Self, CryptoError> {
        let cipher = C::new_from_slice(key)
            .map_err(|e| CryptoError::Malformed(format!("cipher setup: {e}")))?;
        if iv.len() != C::block_size() {
            return Err(CryptoError::Malformed("IV length".into()));
        }
        let mut first = Block::<C>::clone_from_slice(iv);
        cipher.encrypt_block(&mut first);
        Ok(ParCfb {
            cipher,
            iv: first,
            pos: 0,
            batch: Vec::new(),
        })
    }

    fn decrypt(&mut self, mut data: &mut [u8]) {
        let bs = C::block_size();
        // Finish the current block: swap keystream for ciphertext as it is used.
        if self.pos > 0 || data.len() < bs {
            let n = data.len().min(bs - self.pos);
            let (head, rest) = { data }.split_at_mut(n);
            for (d, k) in head.iter_mut().zip(&mut self.iv[self.pos..self.pos + n]) {
                let c = *d;
                *d ^= *k;
                *k = c;
            }
            self.pos += n;
            data = rest;
            if self.pos < bs {
                return;
            }
            self.cipher.encrypt_block(&mut self.iv);
            self.pos = 0;
        }
        // Whole blocks, a batch at a time: inputs are the previous ciphertext blocks.
        while data.len() >= bs {
            let blocks = (data.len() / bs).min(BATCH_BLOCKS);
            // Plain 16-byte copies (building blocks from iterators costs more than AES).
            self.batch.resize(blocks, Block::<C>::default());
            for (b, c) in self.batch.iter_mut().zip(data.chunks_exact(bs)) {
                b.as_mut_slice().copy_from_slice(c);
            }
            self.cipher.encrypt_blocks(&mut self.batch);
            // batch[i] = E(C_i): the keystream for block i+1; block 0 uses the carried one.
            let (chunk, rest) = { data }.split_at_mut(blocks * bs);
            let mut ks = &self.iv;
            for (i, block) in chunk.chunks_exact_mut(bs).enumerate() {
                for (d, k) in block.iter_mut().zip(ks.iter()) {
                    *d ^= *k;
                }
                ks = &self.batch[i];
            }
            self.iv = self.batch[blocks - 1].clone();
            data = rest;
        }
        // A partial last block.
        for (d, k) in data.iter_mut().zip(self.iv.iter_mut()) {
            let c = *d;
            *d ^= *k;
            *k = c;
        }
        self.pos = data.len();
        if self.pos == bs {
            self.cipher.encrypt_block(&mut self.iv);
            self.pos = 0;
        }
    }
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
        let bs = block_size(alg)
            .ok_or_else(|| CryptoError::Unsupported(format!("symmetric algorithm {alg:?}")))?;
        if key.len() != alg.key_size() || iv.len() != bs {
            return Err(CryptoError::Malformed(format!(
                "session key of {} bytes does not fit {alg:?}",
                key.len()
            )));
        }
        Ok(match alg {
            SymmetricKeyAlgorithm::AES128 => CfbDecryptor::Aes128(ParCfb::new(key, iv)?),
            SymmetricKeyAlgorithm::AES192 => CfbDecryptor::Aes192(ParCfb::new(key, iv)?),
            SymmetricKeyAlgorithm::AES256 => CfbDecryptor::Aes256(ParCfb::new(key, iv)?),
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

    /// The batched AES path must agree with `cfb_mode`'s block-by-block decryptor for
    /// arbitrary splits (partial blocks, exact blocks, batches and their remainders).
    #[test]
    fn par_cfb_matches_cfb_mode_for_any_split() {
        use cfb_mode::BufDecryptor;
        use cfb_mode::cipher::KeyIvInit;
        let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
        let iv: Vec<u8> = (0..16u8).map(|i| i ^ 0x5a).collect();
        let ct: Vec<u8> = (0..40_000u32).map(|i| (i * 131 + i / 7) as u8).collect();
        let mut want = ct.clone();
        BufDecryptor::<Aes256>::new_from_slices(&key, &iv)
            .unwrap()
            .decrypt(&mut want);
        for split in [1usize, 3, 15, 16, 17, 32, 100, 8192, 8193, 20_000] {
            let mut d = ParCfb::<Aes256>::new(&key, &iv).unwrap();
            let mut got = ct.clone();
            let mut pos = 0;
            let mut step = split;
            while pos < got.len() {
                let end = (pos + step).min(got.len());
                d.decrypt(&mut got[pos..end]);
                pos = end;
                step = if split > 1000 {
                    split
                } else {
                    step * 5 % 211 + 1
                };
            }
            assert!(got == want, "split {split}");
        }
    }

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
