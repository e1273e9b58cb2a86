//! The inner layers of the usual encrypted message read without rpgp: one literal-data
//! packet, inside a compressed-data packet (ZIP or ZLIB, old format, indeterminate length:
//! what GnuPG and our writer make) or directly in the encrypted container (RFC 4880 §4.2,
//! §5.6, §5.9).
//!
//! rpgp's readers copy the inflated data twice more (into the literal reader's buffer,
//! then out of it) and the decrypted data once more (into the parser's buffer); here it is
//! inflated straight from the decryptor's buffer into the caller's, which takes about a
//! fifth off the CPU time of the thread that decrypts and inflates a restore's volume.
//! Anything else (signed messages, other packet shapes, bzip2) goes through rpgp as before;
//! the choice is made on the first bytes, before anything is consumed.

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};

use super::error::CryptoError;
use super::reader::{ErrSlot, Fail, SState, Seipd, lock};

const TAG_COMPRESSED: u8 = 8;
const TAG_LITERAL: u8 = 11;
/// Old format, tag 8, indeterminate length.
const COMPRESSED_INDETERMINATE: u8 = 0x80 | (TAG_COMPRESSED << 2) | 3;
const ZIP: u8 = 1;
const ZLIB: u8 = 2;

/// The tag of a packet header's first octet, if it is one.
fn tag_of(first: u8) -> Option<u8> {
    match first {
        b if b & 0x80 == 0 => None,
        b if b & 0x40 != 0 => Some(b & 0x3F),
        b => Some((b >> 2) & 0x0F),
    }
}

/// The literal data of a message in one of the shapes above.
pub(super) struct FastPlain<'a> {
    seipd: Seipd<'a>,
    /// `None`: the literal packet is directly in the encrypted container.
    inflater: Option<Decompress>,
    /// The compressed stream ended.
    inflated_all: bool,
    /// Bytes left in the current part of the literal body (`None`: up to the end of the
    /// enclosing data, an old-format indeterminate length).
    part_left: Option<u64>,
    /// The current part is the last one.
    last_part: bool,
    /// The caller's I/O errors (reported as such, not as damaged data).
    slot: ErrSlot,
    /// An error found before the first read.
    pending: Option<CryptoError>,
    done: bool,
    failed: bool,
}

/// A message shape [`FastPlain`] reads.
pub(super) enum Shape {
    /// A compressed-data packet (ZLIB, else ZIP) holding the literal packet.
    Compressed { zlib: bool },
    /// The literal packet directly in the container.
    Literal,
}

/// The shape of the decrypted packet stream in `seipd`, if [`FastPlain`] reads it; looks
/// at its first bytes without consuming them.
pub(super) fn shape_of(seipd: &mut Seipd<'_>) -> Option<Shape> {
    match seipd.fill_buf().ok()? {
        [COMPRESSED_INDETERMINATE, alg @ (ZIP | ZLIB), rest @ ..] => {
            // The first inflated byte must start a literal packet.
            let zlib = *alg == ZLIB;
            let mut trial = Decompress::new(zlib);
            let mut first = [0u8; 1];
            let literal = trial
                .decompress(rest, &mut first, FlushDecompress::None)
                .is_ok()
                && trial.total_out() == 1
                && tag_of(first[0]) == Some(TAG_LITERAL);
            literal.then_some(Shape::Compressed { zlib })
        }
        [first, ..] if tag_of(*first) == Some(TAG_LITERAL) => Some(Shape::Literal),
        _ => None,
    }
}

impl<'a> FastPlain<'a> {
    /// Reads `seipd`, of the shape [`shape_of`] found.
    pub(super) fn new(mut seipd: Seipd<'a>, shape: Shape, slot: ErrSlot) -> Self {
        let inflater = match shape {
            Shape::Compressed { zlib } => {
                seipd.consume(2);
                Some(Decompress::new(zlib))
            }
            Shape::Literal => None,
        };
        let mut fast = FastPlain {
            seipd,
            inflater,
            inflated_all: false,
            part_left: None,
            last_part: true,
            slot,
            pending: None,
            done: false,
            failed: false,
        };
        // A bad header is reported by the first read.
        fast.pending = fast.literal_header().err();
        fast
    }

    /// Reads the bytes inside the container (inflated, if compressed) into `out`; 0 at
    /// their end.
    fn inner_read(&mut self, out: &mut [u8]) -> Result<usize, CryptoError> {
        if out.is_empty() {
            return Ok(0);
        }
        let Some(d) = self.inflater.as_mut() else {
            let input = self.seipd.fill_buf().map_err(|f| f.to_error())?;
            let n = input.len().min(out.len());
            out[..n].copy_from_slice(&input[..n]);
            self.seipd.consume(n);
            return Ok(n);
        };
        loop {
            if self.inflated_all {
                return Ok(0);
            }
            let input = self.seipd.fill_buf().map_err(|f| f.to_error())?;
            // With all input consumed the inflater may still hold output, or the end
            // of the stream not yet reported: it gets a call with no input.
            let at_end = input.is_empty();
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d
                .decompress(input, out, FlushDecompress::None)
                .map_err(|e| CryptoError::Malformed(format!("compressed data: {e}")))?;
            let consumed = (d.total_in() - in_before) as usize;
            let produced = (d.total_out() - out_before) as usize;
            self.seipd.consume(consumed);
            if status == Status::StreamEnd {
                self.inflated_all = true;
            }
            if produced > 0 || self.inflated_all {
                return Ok(produced);
            }
            if at_end {
                return Err(CryptoError::Truncated);
            }
        }
    }

    fn inner_exact(&mut self, out: &mut [u8]) -> Result<(), CryptoError> {
        let mut n = 0;
        while n < out.len() {
            match self.inner_read(&mut out[n..])? {
                0 => return Err(CryptoError::Truncated),
                k => n += k,
            }
        }
        Ok(())
    }

    fn inner_byte(&mut self) -> Result<u8, CryptoError> {
        let mut b = [0u8; 1];
        self.inner_exact(&mut b)?;
        Ok(b[0])
    }

    /// A new-format body length (§4.2.2): sets the part's length and whether it is the last.
    fn new_format_length(&mut self) -> Result<(), CryptoError> {
        let first = self.inner_byte()?;
        let (len, last) = match first {
            0..=191 => (u64::from(first), true),
            192..=223 => {
                let second = self.inner_byte()?;
                (
                    ((u64::from(first) - 192) << 8) + u64::from(second) + 192,
                    true,
                )
            }
            224..=254 => (1u64 << (first & 0x1F), false),
            255 => {
                let mut b = [0u8; 4];
                self.inner_exact(&mut b)?;
                (u64::from(u32::from_be_bytes(b)), true)
            }
        };
        self.part_left = Some(len);
        self.last_part = last;
        Ok(())
    }

    /// The literal packet's header and the fields before its data (format, file name,
    /// date), which count as part of its body.
    fn literal_header(&mut self) -> Result<(), CryptoError> {
        let first = self.inner_byte()?;
        if tag_of(first) != Some(TAG_LITERAL) {
            return Err(CryptoError::Malformed(
                "expected a literal data packet".into(),
            ));
        }
        if first & 0x40 != 0 {
            self.new_format_length()?;
        } else {
            let len = match first & 3 {
                0 => Some(u64::from(self.inner_byte()?)),
                1 => {
                    let mut b = [0u8; 2];
                    self.inner_exact(&mut b)?;
                    Some(u64::from(u16::from_be_bytes(b)))
                }
                2 => {
                    let mut b = [0u8; 4];
                    self.inner_exact(&mut b)?;
                    Some(u64::from(u32::from_be_bytes(b)))
                }
                _ => None,
            };
            self.part_left = len;
            self.last_part = true;
        }
        let mut fields = [0u8; 2];
        self.body_exact(&mut fields)?;
        let mut skip = vec![0u8; usize::from(fields[1]) + 4];
        self.body_exact(&mut skip)
    }

    /// Reads literal body bytes exactly (the header fields).
    fn body_exact(&mut self, out: &mut [u8]) -> Result<(), CryptoError> {
        let mut n = 0;
        while n < out.len() {
            match self.body_read(&mut out[n..])? {
                0 => {
                    return Err(CryptoError::Malformed(
                        "literal data packet shorter than its header".into(),
                    ));
                }
                k => n += k,
            }
        }
        Ok(())
    }

    /// Reads literal body bytes across its parts; 0 at its end.
    fn body_read(&mut self, out: &mut [u8]) -> Result<usize, CryptoError> {
        loop {
            match self.part_left {
                Some(0) if self.last_part => return Ok(0),
                Some(0) => self.new_format_length()?,
                Some(left) => {
                    let max = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner_read(&mut out[..max])?;
                    if n == 0 && max > 0 {
                        return Err(CryptoError::Truncated);
                    }
                    self.part_left = Some(left - n as u64);
                    return Ok(n);
                }
                None => return self.inner_read(out),
            }
        }
    }

    /// After the literal data: the compressed stream must end (what follows it in the
    /// container is ignored, as zlib readers do) and the container's integrity check
    /// must hold.
    fn finish(&mut self) -> Result<(), CryptoError> {
        if self.inflater.is_some() {
            let mut extra = [0u8; 1];
            if self.inner_read(&mut extra)? != 0 {
                return Err(CryptoError::Malformed(
                    "data after the literal data packet".into(),
                ));
            }
        } else if !self.seipd.fill_buf().map_err(|f| f.to_error())?.is_empty() {
            return Err(CryptoError::Malformed(
                "data after the literal data packet".into(),
            ));
        }
        match self.seipd.drain() {
            SState::Done => Ok(()),
            SState::Failed(f) => Err(f.to_error()),
            SState::Reading => Err(CryptoError::Malformed("encrypted data did not end".into())),
        }
    }

    /// The error to report for `e`: the caller's own I/O error first, then a failed
    /// integrity check or truncation of the container (damage explains bad inner data
    /// better than the inflater's complaint), then `e`.
    fn classify(&mut self, e: CryptoError) -> CryptoError {
        if let Some(io) = lock(&self.slot).take() {
            return CryptoError::Io(io);
        }
        match (&e, self.seipd.drain()) {
            (CryptoError::IntegrityCheckFailed, _) => e,
            (_, SState::Failed(f @ (Fail::Integrity | Fail::Truncated))) => f.to_error(),
            _ => e,
        }
    }
}

impl Read for FastPlain<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.pending.take() {
            self.failed = true;
            return Err(self.classify(e).into_io());
        }
        if self.failed {
            return Err(io::Error::other(
                "OpenPGP message reader already failed with an earlier error",
            ));
        }
        if self.done || out.is_empty() {
            return Ok(0);
        }
        let result = match self.body_read(out) {
            Ok(0) => self.finish().map(|()| 0),
            other => other,
        };
        match result {
            Ok(0) => {
                self.done = true;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                self.failed = true;
                Err(self.classify(e).into_io())
            }
        }
    }
}
