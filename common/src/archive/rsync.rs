//! librsync signatures and deltas as duplicity uses them (duplicity-format.md §3.8, §4.2).
//!
//! Signatures and deltas are computed with fast_rsync (SIMD MD4), which works on whole
//! slices; to keep memory bounded for files of any size we feed it block-aligned chunks
//! and splice the results. Signatures spliced this way are byte-identical to a
//! whole-file signature; deltas differ only in that a match spanning a chunk boundary is
//! sent as literal data (still a valid librsync delta). Delta application is our own
//! streaming implementation: it reads the basis with positioned reads, so neither the
//! basis nor the delta has to fit in memory.

use fast_rsync::{IndexedSignature, Signature, SignatureOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

pub const SIGNATURE_MAGIC_MD4: u32 = 0x7273_0136;
pub const DELTA_MAGIC: u32 = 0x7273_0236;
/// Bytes of the MD4 digest duplicity keeps per block.
pub const STRONG_LEN: u32 = 8;
const HEADER_LEN: usize = 12;

/// duplicity's block length for a file of `size` bytes at backup time (§4.2).
pub fn block_len_for(size: u64) -> u32 {
    if size < 1_024_000 {
        512
    } else {
        ((size / 1_024_000) * 512).min(2048) as u32
    }
}

/// Builds a librsync MD4 signature incrementally, in bounded memory.
pub struct SignatureBuilder {
    opts: SignatureOptions,
    out: Vec<u8>,
    pending: Vec<u8>,
}

impl SignatureBuilder {
    pub fn new(block_len: u32) -> Self {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&SIGNATURE_MAGIC_MD4.to_be_bytes());
        out.extend_from_slice(&block_len.to_be_bytes());
        out.extend_from_slice(&STRONG_LEN.to_be_bytes());
        SignatureBuilder {
            opts: SignatureOptions {
                block_size: block_len,
                crypto_hash_size: STRONG_LEN,
            },
            out,
            pending: Vec::new(),
        }
    }

    /// For a file whose size is known up front.
    pub fn for_size(size: u64) -> Self {
        Self::new(block_len_for(size))
    }

    fn push_blocks(&mut self, aligned: &[u8]) {
        if aligned.is_empty() {
            return;
        }
        let sig = Signature::calculate(aligned, self.opts);
        self.out.extend_from_slice(&sig.serialized()[HEADER_LEN..]);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let bl = self.opts.block_size as usize;
        if !self.pending.is_empty() {
            let take = (bl - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < bl {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.push_blocks(&block);
            self.pending = block;
            self.pending.clear();
        }
        let aligned = data.len() - data.len() % bl;
        self.push_blocks(&data[..aligned]);
        self.pending.extend_from_slice(&data[aligned..]);
    }

    /// The serialized signature (12-byte header + 12 bytes per block).
    pub fn finish(mut self) -> Vec<u8> {
        let tail = std::mem::take(&mut self.pending);
        self.push_blocks(&tail);
        self.out
    }
}

/// Signature of a whole in-memory buffer.
pub fn signature_of(data: &[u8]) -> Vec<u8> {
    let mut b = SignatureBuilder::for_size(data.len() as u64);
    b.update(data);
    b.finish()
}

/// Largest block length [`checkable_block_len`] accepts (duplicity's is at most 2048).
const MAX_CHECKED_BLOCK: u32 = 1 << 20;

/// The block length of a stored signature that data can be checked against piece by
/// piece: an MD4 signature with duplicity's 8-byte strong sums, whole blocks of sums and a
/// block length of at most 1 MiB. `None` for anything else (a file with such a signature
/// can only be reported as not matching).
pub fn checkable_block_len(signature: &[u8]) -> Option<u32> {
    size_bounds(signature)?;
    let block = u32::from_be_bytes(signature[4..8].try_into().ok()?);
    let strong = u32::from_be_bytes(signature[8..12].try_into().ok()?);
    (strong == STRONG_LEN && block <= MAX_CHECKED_BLOCK).then_some(block)
}

/// Whether `data`, the bytes of a file from `offset` on, has the block sums `signature`
/// holds for that range. Each block's sums depend only on that block, so the pieces of a
/// file can be checked apart, in any order, as long as `offset` is a multiple of the
/// block length and only the file's last piece ends in a short block. Whether the file
/// has as many blocks as the signature is [`block_count_matches`]'s question.
pub fn piece_matches(signature: &[u8], offset: u64, data: &[u8]) -> bool {
    let Some(block) = checkable_block_len(signature) else {
        return false;
    };
    if data.is_empty() {
        return true;
    }
    if !offset.is_multiple_of(u64::from(block)) {
        return false;
    }
    let entry = 4 + STRONG_LEN as usize;
    let Ok(first) = usize::try_from(offset / u64::from(block)) else {
        return false;
    };
    let start = HEADER_LEN + first.saturating_mul(entry);
    let opts = SignatureOptions {
        block_size: block,
        crypto_hash_size: STRONG_LEN,
    };
    let computed = Signature::calculate(data, opts);
    let sums = &computed.serialized()[HEADER_LEN..];
    signature.get(start..start.saturating_add(sums.len())) == Some(sums)
}

/// Whether a file of `size` bytes has exactly the number of blocks `signature` describes
/// (the other half of checking a file piece by piece with [`piece_matches`]).
pub fn block_count_matches(signature: &[u8], size: u64) -> bool {
    let Some(block) = checkable_block_len(signature) else {
        return false;
    };
    let blocks = (signature.len() - HEADER_LEN) as u64 / u64::from(4 + STRONG_LEN);
    size.div_ceil(u64::from(block)) == blocks
}

#[derive(Debug, thiserror::Error)]
pub enum RsyncError {
    #[error("unsupported or corrupt librsync signature: {0}")]
    BadSignature(String),
    #[error("corrupt librsync delta: {0}")]
    BadDelta(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The size range of the file a signature describes: a librsync signature holds one
/// weak and one strong sum per block of `block_len` bytes (the last block shorter), and
/// nothing else, so the size is known to within one block. `None` for anything that
/// is not a well-formed signature.
pub fn size_bounds(signature: &[u8]) -> Option<(u64, u64)> {
    if signature.len() < HEADER_LEN || signature[..4] != SIGNATURE_MAGIC_MD4.to_be_bytes() {
        return None;
    }
    let block = u64::from(u32::from_be_bytes(signature[4..8].try_into().ok()?));
    let strong = u64::from(u32::from_be_bytes(signature[8..12].try_into().ok()?));
    let body = (signature.len() - HEADER_LEN) as u64;
    if block == 0 || strong == 0 || !body.is_multiple_of(4 + strong) {
        return None;
    }
    let blocks = body / (4 + strong);
    Some(if blocks == 0 {
        (0, 0)
    } else {
        ((blocks - 1) * block + 1, blocks * block)
    })
}

/// A parsed signature that deltas can be computed against.
pub struct BasisSignature {
    sig: Signature,
}

impl BasisSignature {
    /// Accepts MD4 signatures (what duplicity writes); others are refused, and the
    /// caller stores a full copy instead.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, RsyncError> {
        if bytes.len() < HEADER_LEN || bytes[..4] != SIGNATURE_MAGIC_MD4.to_be_bytes() {
            return Err(RsyncError::BadSignature("not an MD4 signature".into()));
        }
        let strong = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
        let block = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        if strong == 0 || strong > 16 || block == 0 {
            return Err(RsyncError::BadSignature(format!(
                "block length {block}, strong sum length {strong}"
            )));
        }
        let sig =
            Signature::deserialize(bytes).map_err(|e| RsyncError::BadSignature(e.to_string()))?;
        Ok(BasisSignature { sig })
    }

    pub fn indexed(&self) -> IndexedSignature<'_> {
        self.sig.index()
    }
}

/// The librsync delta of one chunk of a file on its own (magic, commands, END), for
/// [`DeltaWriter::append`].
pub fn diff_chunk(
    index: &IndexedSignature<'_>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RsyncError> {
    fast_rsync::diff(index, data, out).map_err(|e| RsyncError::BadSignature(e.to_string()))
}

/// Computes a delta chunk by chunk and writes one spliced librsync delta to `out`.
pub struct DeltaWriter<'a, W: Write> {
    index: &'a IndexedSignature<'a>,
    out: W,
    started: bool,
    scratch: Vec<u8>,
}

impl<'a, W: Write> DeltaWriter<'a, W> {
    pub fn new(index: &'a IndexedSignature<'a>, out: W) -> Self {
        DeltaWriter {
            index,
            out,
            started: false,
            scratch: Vec::new(),
        }
    }

    /// Diffs one chunk of the new data (chunks are consecutive parts of the file).
    pub fn chunk(&mut self, data: &[u8]) -> Result<(), RsyncError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        diff_chunk(self.index, data, &mut scratch)?;
        let r = self.append(&scratch);
        self.scratch = scratch;
        r
    }

    /// Appends the [`diff_chunk`] of the next chunk, computed elsewhere (several chunks
    /// may be diffed in parallel, see the backup engine).
    pub fn append(&mut self, chunk_delta: &[u8]) -> Result<(), RsyncError> {
        // Strip the END byte, and the magic of every chunk but the first.
        let end = chunk_delta.len() - 1;
        let start = if self.started { 4 } else { 0 };
        self.started = true;
        self.out.write_all(&chunk_delta[start..end])?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W, RsyncError> {
        if !self.started {
            self.out.write_all(&DELTA_MAGIC.to_be_bytes())?;
        }
        self.out.write_all(&[0])?;
        Ok(self.out)
    }
}

/// Something positioned reads can be made from (the basis of a delta).
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Total length (named so, not `len`, because it is fallible).
    fn total_len(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn total_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > <[u8]>::len(self) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
    fn total_len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

fn read_be<R: Read>(r: &mut R, width: usize) -> Result<u64, RsyncError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b[8 - width..])
        .map_err(|_| RsyncError::BadDelta("truncated command".into()))?;
    Ok(u64::from_be_bytes(b))
}

/// Applies a librsync delta read from `delta` to `basis`, writing the result to `out`.
/// Returns the number of bytes written. Every command is bounds-checked against the
/// basis; a malformed delta is an error, never a panic.
pub fn apply_delta<R: Read, B: ReadAt + ?Sized, W: Write>(
    mut delta: R,
    basis: &B,
    mut out: W,
) -> Result<u64, RsyncError> {
    let mut magic = [0u8; 4];
    delta
        .read_exact(&mut magic)
        .map_err(|_| RsyncError::BadDelta("shorter than its magic number".into()))?;
    if u32::from_be_bytes(magic) != DELTA_MAGIC {
        return Err(RsyncError::BadDelta(format!(
            "bad magic {:02x}{:02x}{:02x}{:02x}",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    let basis_len = basis.total_len()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    let widths = [1usize, 2, 4, 8];
    loop {
        let mut op = [0u8; 1];
        delta
            .read_exact(&mut op)
            .map_err(|_| RsyncError::BadDelta("missing END command".into()))?;
        let op = op[0];
        match op {
            0 => break,
            0x01..=0x40 => {
                let n = usize::from(op);
                delta
                    .read_exact(&mut buf[..n])
                    .map_err(|_| RsyncError::BadDelta("truncated literal".into()))?;
                out.write_all(&buf[..n])?;
                written += n as u64;
            }
            0x41..=0x44 => {
                let mut n = read_be(&mut delta, widths[usize::from(op - 0x41)])?;
                written += n;
                while n > 0 {
                    let k = n.min(buf.len() as u64) as usize;
                    delta
                        .read_exact(&mut buf[..k])
                        .map_err(|_| RsyncError::BadDelta("truncated literal".into()))?;
                    out.write_all(&buf[..k])?;
                    n -= k as u64;
                }
            }
            0x45..=0x54 => {
                let a = usize::from((op - 0x45) / 4);
                let b = usize::from((op - 0x45) % 4);
                let offset = read_be(&mut delta, widths[a])?;
                let len = read_be(&mut delta, widths[b])?;
                let end = offset
                    .checked_add(len)
                    .filter(|&e| e <= basis_len)
                    .ok_or_else(|| {
                        RsyncError::BadDelta(format!(
                            "copy of {len} bytes at {offset} beyond the basis ({basis_len} bytes)"
                        ))
                    })?;
                let mut pos = offset;
                while pos < end {
                    let k = (end - pos).min(buf.len() as u64) as usize;
                    basis.read_exact_at(&mut buf[..k], pos)?;
                    out.write_all(&buf[..k])?;
                    pos += k as u64;
                }
                written += len;
            }
            other => {
                return Err(RsyncError::BadDelta(format!(
                    "unknown command byte {other:#04x}"
                )));
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_bounds_bracket_the_file_size() {
        for size in [0u64, 1, 511, 512, 513, 2048, 100_000, 3_000_001] {
            let data = vec![7u8; size as usize];
            let (lo, hi) = super::size_bounds(&super::signature_of(&data)).unwrap();
            assert!(lo <= size && size <= hi, "{size}: {lo}..={hi}");
            assert!(hi - lo < u64::from(super::block_len_for(size)), "{size}");
        }
        assert_eq!(super::size_bounds(b"junk"), None);
    }

    #[test]
    fn pieces_check_against_a_whole_file_signature() {
        let data: Vec<u8> = (0..3_100_000u32)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        let sig = super::signature_of(&data);
        let block = super::checkable_block_len(&sig).expect("checkable") as usize;
        assert_eq!(block, 1536);
        let piece = (128 * 1024 / block) * block;
        let mut offsets: Vec<usize> = (0..data.len()).step_by(piece).collect();
        offsets.reverse(); // any order
        for &o in &offsets {
            let end = (o + piece).min(data.len());
            assert!(super::piece_matches(&sig, o as u64, &data[o..end]), "{o}");
        }
        assert!(super::block_count_matches(&sig, data.len() as u64));
        // One changed byte fails its piece only.
        let mut bad = data[piece..2 * piece].to_vec();
        bad[1000] ^= 1;
        assert!(!super::piece_matches(&sig, piece as u64, &bad));
        // A piece at an unaligned offset, past the end or of another length fails.
        assert!(!super::piece_matches(&sig, 1, &data[1..piece + 1]));
        assert!(!super::piece_matches(
            &sig,
            data.len() as u64,
            &data[..piece]
        ));
        assert!(!super::piece_matches(&sig, 0, &data[..piece - 1]));
        // A file one block shorter or longer has the wrong number of blocks.
        assert!(!super::block_count_matches(
            &sig,
            (data.len() - block) as u64
        ));
        assert!(!super::block_count_matches(
            &sig,
            (data.len() + block) as u64
        ));
        // Empty files and junk.
        let empty = super::signature_of(b"");
        assert!(super::block_count_matches(&empty, 0));
        assert!(!super::block_count_matches(&empty, 1));
        assert!(!super::piece_matches(b"junk", 0, b"x"));
        assert!(!super::block_count_matches(b"junk", 0));
    }

    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn block_lengths_follow_duplicity() {
        assert_eq!(block_len_for(0), 512);
        assert_eq!(block_len_for(1_023_999), 512);
        assert_eq!(block_len_for(2_047_999), 512);
        assert_eq!(block_len_for(2_048_000), 1024);
        assert_eq!(block_len_for(3_072_000), 1536);
        assert_eq!(block_len_for(4_096_000), 2048);
        assert_eq!(block_len_for(1 << 40), 2048);
    }

    #[test]
    fn known_weak_and_strong_sums() {
        let sig = signature_of(b"hello world\n");
        assert_eq!(sig.len(), 24);
        assert_eq!(&sig[..4], &[0x72, 0x73, 0x01, 0x36]);
        assert_eq!(&sig[12..16], &[0x27, 0xd8, 0x05, 0xda]);
        assert_eq!(
            &sig[16..24],
            &[0x97, 0x66, 0x8a, 0xb2, 0xf2, 0x9d, 0x01, 0x15]
        );
        assert_eq!(signature_of(b"").len(), 12);
        assert_eq!(signature_of(&data(3_000_000, 1)).len(), 35172);
    }

    #[test]
    fn incremental_signature_equals_whole() {
        let d = data(700_001, 7);
        let whole = signature_of(&d);
        let mut b = SignatureBuilder::for_size(d.len() as u64);
        for piece in d.chunks(65536 + 13) {
            b.update(piece);
        }
        assert_eq!(b.finish(), whole);
    }

    #[test]
    fn chunked_delta_reconstructs() {
        let old = data(1_500_000, 3);
        let mut new = old.clone();
        new[10..20].copy_from_slice(b"0123456789");
        new.splice(500_000..500_000, data(3000, 9));
        new.truncate(1_400_000);
        new.extend_from_slice(&data(77_777, 11));
        let sig = BasisSignature::parse(signature_of(&old)).unwrap();
        let idx = sig.indexed();
        for chunk in [4096usize, 100_000, 10_000_000] {
            let mut w = DeltaWriter::new(&idx, Vec::new());
            for c in new.chunks(chunk) {
                w.chunk(c).unwrap();
            }
            let delta = w.finish().unwrap();
            // Tiny chunks lose up to a block per boundary; real chunks are megabytes.
            if chunk >= 100_000 {
                assert!(delta.len() < 100_000, "delta too big: {}", delta.len());
            }
            let mut out = Vec::new();
            apply_delta(&delta[..], &old[..], &mut out).unwrap();
            assert_eq!(out, new);
        }
        let w = DeltaWriter::new(&idx, Vec::new());
        let empty = w.finish().unwrap();
        assert_eq!(empty, vec![0x72, 0x73, 0x02, 0x36, 0]);
    }

    #[test]
    fn documented_delta_example_applies() {
        // appending 9 bytes to a 12-byte file: magic, literal of 21 bytes, END (§3.8)
        let mut delta = vec![0x72, 0x73, 0x02, 0x36, 0x15];
        delta.extend_from_slice(b"hello world\nand more!");
        delta.push(0);
        let mut out = Vec::new();
        apply_delta(&delta[..], &b"hello world\n"[..], &mut out).unwrap();
        assert_eq!(out, b"hello world\nand more!");
        // copy command with 1-byte offset and 1-byte length
        let delta = [0x72, 0x73, 0x02, 0x36, 0x45, 6, 5, 0];
        let mut out = Vec::new();
        apply_delta(&delta[..], &b"hello world\n"[..], &mut out).unwrap();
        assert_eq!(out, b"world");
    }

    #[test]
    fn malformed_deltas_are_errors() {
        let base = b"0123456789".to_vec();
        for bad in [
            &[][..],
            &[0x72, 0x73, 0x02][..],
            &[0x72, 0x73, 0x02, 0x37, 0][..],
            &[0x72, 0x73, 0x02, 0x36][..],
            &[0x72, 0x73, 0x02, 0x36, 0x05, b'a'][..],
            &[0x72, 0x73, 0x02, 0x36, 0x45, 8, 5, 0][..],
            &[0x72, 0x73, 0x02, 0x36, 0x55, 0][..],
            &[
                0x72, 0x73, 0x02, 0x36, 0x54, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
                0, 0, 0, 0, 0, 1, 0,
            ][..],
        ] {
            assert!(
                apply_delta(bad, &base[..], &mut Vec::new()).is_err(),
                "{bad:?}"
            );
        }
    }
}
