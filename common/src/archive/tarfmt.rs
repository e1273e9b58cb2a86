//! Tar headers as duplicity 0.8.22 writes them (Python 3.11 `tarfile`, pax format;
//! duplicity-format.md §3.3) and a tolerant, streaming tar reader (§11.4).
//!
//! We write the headers ourselves rather than through the `tar` crate because the exact
//! flavour matters for byte-level compatibility (ustar name field with `?` for
//! non-ASCII, `hdrcharset=BINARY` pax records for non-UTF-8 names, checksum layout) and
//! because volumes are split by us, entry by entry. The reader is ours too so that it
//! can stop at the first zero block (encrypted volumes carry junk after the tar end),
//! accept a missing end, never panic on hostile input, and say where a stream is bad.

use std::io::{self, Read, Write};

pub const BLOCK: usize = 512;
/// Python's `tarfile.RECORDSIZE`: archives are padded to a multiple of this.
pub const RECORD: u64 = 10240;

pub const TYPE_REGULAR: u8 = b'0';
pub const TYPE_HARDLINK: u8 = b'1';
pub const TYPE_SYMLINK: u8 = b'2';
pub const TYPE_CHAR: u8 = b'3';
pub const TYPE_BLOCK: u8 = b'4';
pub const TYPE_DIR: u8 = b'5';
pub const TYPE_FIFO: u8 = b'6';
pub const TYPE_PAX: u8 = b'x';
pub const TYPE_PAX_GLOBAL: u8 = b'g';
pub const TYPE_GNU_LONGNAME: u8 = b'L';
pub const TYPE_GNU_LONGLINK: u8 = b'K';

/// Everything a tar header carries, with raw-byte strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TarHeader {
    pub name: Vec<u8>,
    pub typeflag: u8,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub linkname: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

/// Python's `str.encode("ascii", "replace")` of a surrogate-escape-decoded byte string:
/// every non-ASCII character (a valid UTF-8 sequence) and every undecodable byte
/// becomes one `?`.
fn ascii_replace(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_ascii() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.push(if c.is_ascii() { c as u8 } else { b'?' });
        }
        out.extend(std::iter::repeat_n(b'?', chunk.invalid().len()));
    }
    out
}

/// Number of characters Python sees in a surrogate-escape-decoded byte string.
fn py_char_len(bytes: &[u8]) -> usize {
    bytes
        .utf8_chunks()
        .map(|c| c.valid().chars().count() + c.invalid().len())
        .sum()
}

fn put_str(block: &mut [u8], off: usize, len: usize, value: &[u8]) {
    let v = ascii_replace(value);
    let n = v.len().min(len);
    block[off..off + n].copy_from_slice(&v[..n]);
}

/// `tarfile.itn` for values in range: zero-padded octal, `digits - 1` digits + NUL.
fn put_octal(block: &mut [u8], off: usize, digits: usize, value: u64) {
    let s = format!("{:0width$o}", value, width = digits - 1);
    block[off..off + digits - 1].copy_from_slice(s.as_bytes());
    block[off + digits - 1] = 0;
}

fn build_ustar_block(h: &TarHeader, name: &[u8]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    put_str(&mut b, 0, 100, name);
    put_octal(&mut b, 100, 8, u64::from(h.mode & 0o7777));
    put_octal(&mut b, 108, 8, h.uid);
    put_octal(&mut b, 116, 8, h.gid);
    put_octal(&mut b, 124, 12, h.size);
    put_octal(&mut b, 136, 12, h.mtime.max(0) as u64);
    b[148..156].copy_from_slice(b"        ");
    b[156] = h.typeflag;
    put_str(&mut b, 157, 100, &h.linkname);
    b[257..265].copy_from_slice(b"ustar\x0000");
    put_str(&mut b, 265, 32, &h.uname);
    put_str(&mut b, 297, 32, &h.gname);
    if h.typeflag == TYPE_CHAR || h.typeflag == TYPE_BLOCK {
        put_octal(&mut b, 329, 8, u64::from(h.devmajor));
        put_octal(&mut b, 337, 8, u64::from(h.devminor));
    }
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let cks = format!("{sum:06o}\0");
    b[148..155].copy_from_slice(cks.as_bytes());
    b
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // The length prefix counts itself; iterate to a fixed point as tarfile does.
    let l = key.len() + value.len() + 3;
    let mut p = 0usize;
    loop {
        let n = l + p.to_string().len();
        if n == p {
            break;
        }
        p = n;
    }
    let mut r = Vec::with_capacity(p);
    r.extend_from_slice(p.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key.as_bytes());
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

const OCTAL_LIMIT_7: u64 = 8u64.pow(7);
const OCTAL_LIMIT_11: u64 = 8u64.pow(11);

/// Serializes the header of one entry (pax extended header first when Python would
/// write one), not including data. Returns the bytes.
pub fn encode_header(h: &TarHeader) -> Vec<u8> {
    let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
    let strings: [(&str, &[u8], usize); 4] = [
        ("path", &h.name, 100),
        ("linkpath", &h.linkname, 100),
        ("uname", &h.uname, 32),
        ("gname", &h.gname, 32),
    ];
    for (key, value, limit) in strings {
        if !value.is_ascii() || py_char_len(value) > limit {
            pax.push((key, value.to_vec()));
        }
    }
    let mut ustar = h.clone();
    if h.uid >= OCTAL_LIMIT_7 {
        pax.push(("uid", h.uid.to_string().into_bytes()));
        ustar.uid = 0;
    }
    if h.gid >= OCTAL_LIMIT_7 {
        pax.push(("gid", h.gid.to_string().into_bytes()));
        ustar.gid = 0;
    }
    if h.size >= OCTAL_LIMIT_11 {
        pax.push(("size", h.size.to_string().into_bytes()));
        ustar.size = 0;
    }
    if h.mtime >= OCTAL_LIMIT_11 as i64 {
        pax.push(("mtime", h.mtime.to_string().into_bytes()));
        ustar.mtime = 0;
    }
    let mut out = Vec::with_capacity(BLOCK * if pax.is_empty() { 1 } else { 3 });
    if !pax.is_empty() {
        let binary = pax.iter().any(|(_, v)| std::str::from_utf8(v).is_err());
        let mut records = Vec::new();
        if binary {
            records.extend_from_slice(b"21 hdrcharset=BINARY\n");
        }
        for (k, v) in &pax {
            records.extend_from_slice(&pax_record(k, v));
        }
        let xh = TarHeader {
            name: b"././@PaxHeader".to_vec(),
            typeflag: TYPE_PAX,
            size: records.len() as u64,
            ..TarHeader::default()
        };
        out.extend_from_slice(&build_ustar_block(&xh, &xh.name));
        out.extend_from_slice(&records);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    out.extend_from_slice(&build_ustar_block(&ustar, &h.name));
    out
}

/// Padding after `len` bytes of entry data.
pub fn padding_for(len: u64) -> usize {
    (len.next_multiple_of(BLOCK as u64) - len) as usize
}

/// Writes tar entries into `W`, counting bytes.
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out, written: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// One whole entry: header, data, padding. `h.size` is set from `data`.
    pub fn append(&mut self, h: &TarHeader, data: &[u8]) -> io::Result<()> {
        let mut h2;
        let h = if h.size != data.len() as u64 {
            h2 = h.clone();
            h2.size = data.len() as u64;
            &h2
        } else {
            h
        };
        let header = encode_header(h);
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        let pad = padding_for(data.len() as u64);
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        self.written += header.len() as u64 + data.len() as u64 + pad as u64;
        Ok(())
    }

    /// Ends a difftar volume as duplicity does: zeros up to the next multiple of
    /// [`RECORD`] (at least one zero block).
    pub fn finish_volume(mut self) -> io::Result<W> {
        let end = (self.written + BLOCK as u64).next_multiple_of(RECORD);
        self.write_zeros(end - self.written)?;
        Ok(self.out)
    }

    /// Ends a complete tar as Python's `TarFile.close()`: two zero blocks, then zeros up
    /// to a multiple of [`RECORD`].
    pub fn finish_archive(mut self) -> io::Result<W> {
        let end = (self.written + 2 * BLOCK as u64).next_multiple_of(RECORD);
        self.write_zeros(end - self.written)?;
        Ok(self.out)
    }

    fn write_zeros(&mut self, mut n: u64) -> io::Result<()> {
        let zeros = [0u8; BLOCK];
        while n > 0 {
            let k = n.min(BLOCK as u64) as usize;
            self.out.write_all(&zeros[..k])?;
            n -= k as u64;
            self.written += k as u64;
        }
        Ok(())
    }
}

/// What is wrong with a tar stream, and where.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("truncated tar stream at byte {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("corrupt tar header at byte {offset}: {reason}")]
    CorruptHeader { offset: u64, reason: String },
    #[error("unsupported tar entry at byte {offset}: {reason}")]
    Unsupported { offset: u64, reason: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Largest pax / GNU long-name record we accept (memory bound against hostile input).
const MAX_META_RECORD: u64 = 1 << 20;

/// A streaming tar reader. Call [`TarReader::next_header`], then read the entry's
/// data with [`Read`] (what is not read is skipped on the next call).
pub struct TarReader<R: Read> {
    inner: R,
    offset: u64,
    remaining: u64,
    pad: u64,
    done: bool,
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // GNU base-256: big-endian, first byte's high bit is the marker.
        if field[0] == 0xff {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

#[derive(Default)]
struct PendingMeta {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    uname: Option<Vec<u8>>,
    gname: Option<Vec<u8>>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            remaining: 0,
            pad: 0,
            done: false,
        }
    }

    /// Byte offset in the stream of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying reader (e.g. to drain trailing bytes after the end).
    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            let got = read_full(&mut self.inner, &mut buf[..k])?;
            self.offset += got as u64;
            if got < k {
                return Err(TarError::Truncated {
                    offset: self.offset,
                    what: "entry data",
                });
            }
            n -= k as u64;
        }
        Ok(())
    }

    fn read_meta_data(&mut self, size: u64, what: &'static str) -> Result<Vec<u8>, TarError> {
        if size > MAX_META_RECORD {
            return Err(TarError::Unsupported {
                offset: self.offset,
                reason: format!("{what} of {size} bytes is too large"),
            });
        }
        let mut v = vec![0u8; size as usize];
        let got = read_full(&mut self.inner, &mut v)?;
        self.offset += got as u64;
        if got < v.len() {
            return Err(TarError::Truncated {
                offset: self.offset,
                what,
            });
        }
        self.skip(padding_for(size) as u64)?;
        Ok(v)
    }

    /// The next entry's header; `None` at the end (first zero block, or a clean end of
    /// the stream on a block boundary). Trailing bytes after a zero block are ignored.
    pub fn next_header(&mut self) -> Result<Option<TarHeader>, TarError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        self.skip(rest)?;
        let mut meta = PendingMeta::default();
        loop {
            let start = self.offset;
            let mut block = [0u8; BLOCK];
            let got = read_full(&mut self.inner, &mut block)?;
            self.offset += got as u64;
            if got == 0 {
                if meta.path.is_some() || meta.size.is_some() {
                    return Err(TarError::Truncated {
                        offset: start,
                        what: "header after extended header",
                    });
                }
                self.done = true;
                return Ok(None);
            }
            if got < BLOCK {
                return Err(TarError::Truncated {
                    offset: start,
                    what: "header block",
                });
            }
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let stored = parse_octal(&block[148..156]).ok_or_else(|| TarError::CorruptHeader {
                offset: start,
                reason: "checksum field is not octal".into(),
            })?;
            let unsigned: u64 = block
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            let signed: i64 = block
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(b as i8)
                    }
                })
                .sum();
            if stored != unsigned && stored as i64 != signed {
                return Err(TarError::CorruptHeader {
                    offset: start,
                    reason: format!("checksum mismatch (stored {stored}, computed {unsigned})"),
                });
            }
            let num = |range: std::ops::Range<usize>, what: &str| -> Result<u64, TarError> {
                parse_octal(&block[range]).ok_or_else(|| TarError::CorruptHeader {
                    offset: start,
                    reason: format!("{what} field is not a number"),
                })
            };
            let typeflag = block[156];
            let size = meta.size.map(Ok).unwrap_or_else(|| num(124..136, "size"))?;
            match typeflag {
                TYPE_PAX | TYPE_PAX_GLOBAL => {
                    let records = self.read_meta_data(size, "pax extended header")?;
                    if typeflag == TYPE_PAX {
                        parse_pax(&records, &mut meta).map_err(|reason| {
                            TarError::CorruptHeader {
                                offset: start,
                                reason,
                            }
                        })?;
                    }
                    continue;
                }
                TYPE_GNU_LONGNAME | TYPE_GNU_LONGLINK => {
                    let data = self.read_meta_data(size, "GNU long name")?;
                    let v = cstr(&data).to_vec();
                    if typeflag == TYPE_GNU_LONGNAME {
                        meta.path = Some(v);
                    } else {
                        meta.linkpath = Some(v);
                    }
                    continue;
                }
                _ => {}
            }
            let is_ustar = &block[257..263] == b"ustar\0";
            let name = match meta.path.take() {
                Some(p) => p,
                None => {
                    let n = cstr(&block[0..100]);
                    let prefix = if is_ustar {
                        cstr(&block[345..500])
                    } else {
                        &[][..]
                    };
                    if prefix.is_empty() {
                        n.to_vec()
                    } else {
                        let mut v = prefix.to_vec();
                        v.push(b'/');
                        v.extend_from_slice(n);
                        v
                    }
                }
            };
            let mtime = match meta.mtime {
                Some(t) => t,
                None => num(136..148, "mtime")? as i64,
            };
            let h = TarHeader {
                name,
                typeflag: if typeflag == 0 {
                    TYPE_REGULAR
                } else {
                    typeflag
                },
                mode: (num(100..108, "mode")? & 0o7777) as u32,
                uid: match meta.uid {
                    Some(v) => v,
                    None => num(108..116, "uid")?,
                },
                gid: match meta.gid {
                    Some(v) => v,
                    None => num(116..124, "gid")?,
                },
                size,
                mtime,
                linkname: meta
                    .linkpath
                    .take()
                    .unwrap_or_else(|| cstr(&block[157..257]).to_vec()),
                uname: meta
                    .uname
                    .take()
                    .unwrap_or_else(|| cstr(&block[265..297]).to_vec()),
                gname: meta
                    .gname
                    .take()
                    .unwrap_or_else(|| cstr(&block[297..329]).to_vec()),
                devmajor: num(329..337, "devmajor")? as u32,
                devminor: num(337..345, "devminor")? as u32,
            };
            // Only regular-file-like entries carry data in the archive.
            let has_data =
                matches!(h.typeflag, TYPE_REGULAR | b'7') || !h.typeflag.is_ascii_digit();
            self.remaining = if has_data { h.size } else { 0 };
            self.pad = if has_data {
                padding_for(h.size) as u64
            } else {
                0
            };
            return Ok(Some(h));
        }
    }

    /// Reads the rest of the current entry's data into `out`.
    pub fn read_entry_to_end(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        let n = self.remaining as usize;
        out.reserve(n.min(1 << 24));
        Read::by_ref(self).read_to_end(out)
    }

    /// Bytes of the current entry not yet read.
    pub fn entry_remaining(&self) -> u64 {
        self.remaining
    }
}

impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.inner.read(&mut buf[..k])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("truncated tar stream at byte {}: entry data", self.offset),
            ));
        }
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn parse_pax(records: &[u8], meta: &mut PendingMeta) -> Result<(), String> {
    let mut rest = records;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record length is not a number")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("pax record length out of range".into());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pax record without '='")?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let num = |v: &[u8]| -> Result<u64, String> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.split('.').next().and_then(|i| i.parse().ok()))
                .ok_or_else(|| format!("pax {} is not a number", String::from_utf8_lossy(key)))
        };
        match key {
            b"path" => meta.path = Some(value.to_vec()),
            b"linkpath" => meta.linkpath = Some(value.to_vec()),
            b"size" => meta.size = Some(num(value)?),
            b"uid" => meta.uid = Some(num(value)?),
            b"gid" => meta.gid = Some(num(value)?),
            b"uname" => meta.uname = Some(value.to_vec()),
            b"gname" => meta.gname = Some(value.to_vec()),
            b"mtime" => {
                let s = std::str::from_utf8(value).map_err(|_| "pax mtime is not text")?;
                let t: f64 = s.parse().map_err(|_| "pax mtime is not a number")?;
                meta.mtime = Some(t.floor() as i64);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(name: &[u8], t: u8) -> TarHeader {
        TarHeader {
            name: name.to_vec(),
            typeflag: t,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: 1_690_000_000,
            uname: b"user".to_vec(),
            gname: b"group".to_vec(),
            ..TarHeader::default()
        }
    }

    #[test]
    fn header_layout_matches_python() {
        let b = encode_header(&hdr(b"snapshot/a.txt", TYPE_REGULAR));
        assert_eq!(b.len(), 512);
        assert_eq!(&b[0..14], b"snapshot/a.txt");
        assert_eq!(&b[100..108], b"0000644\0");
        assert_eq!(&b[108..116], b"0001750\0");
        assert_eq!(&b[124..136], b"00000000000\0");
        assert_eq!(&b[136..148], b"14456655200\0");
        assert_eq!(b[155], b' ');
        assert_eq!(b[154], 0);
        assert_eq!(&b[257..265], b"ustar\x0000");
        assert_eq!(&b[329..345], &[0u8; 16]);
    }

    #[test]
    fn non_utf8_name_gets_binary_pax() {
        let b = encode_header(&hdr(b"snapshot/nonutf8-\xff\xfe.txt", TYPE_REGULAR));
        assert_eq!(b.len(), 3 * 512);
        assert_eq!(&b[0..14], b"././@PaxHeader");
        assert_eq!(b[156], b'x');
        let rec = &b[512..512 + 53];
        assert_eq!(
            rec,
            &b"21 hdrcharset=BINARY\n32 path=snapshot/nonutf8-\xff\xfe.txt\n"[..]
        );
        assert_eq!(&b[1024..1024 + 27], b"snapshot/nonutf8-??.txt\0\0\0\0");
    }

    #[test]
    fn round_trip_through_reader() {
        let long = [b"snapshot/".as_slice(), &[b'x'; 150]].concat();
        let mut entries = vec![
            (hdr(b"snapshot/./", TYPE_DIR), vec![]),
            (hdr(b"snapshot/a", TYPE_REGULAR), b"hello".to_vec()),
            (hdr(&long, TYPE_REGULAR), vec![7u8; 1000]),
            (hdr("snapshot/é".as_bytes(), TYPE_REGULAR), vec![]),
            (hdr(b"snapshot/\xe9", TYPE_REGULAR), vec![1]),
        ];
        let mut link = hdr(b"snapshot/l", TYPE_SYMLINK);
        link.linkname = [b"t".as_slice(), &[b'y'; 200]].concat();
        entries.push((link, vec![]));
        let mut dev = hdr(b"snapshot/d", TYPE_CHAR);
        dev.devmajor = 1;
        dev.devminor = 3;
        entries.push((dev, vec![]));
        let mut big = hdr(b"snapshot/bigid", TYPE_REGULAR);
        big.uid = 5_000_000;
        big.uname = vec![b'u'; 40];
        entries.push((big, vec![]));
        let mut w = TarWriter::new(Vec::new());
        for (h, d) in &entries {
            w.append(h, d).unwrap();
        }
        let mut bytes = w.finish_volume().unwrap();
        assert_eq!(bytes.len() % RECORD as usize, 0);
        bytes.extend_from_slice(b"junk after the end that must be ignored");
        let mut r = TarReader::new(&bytes[..]);
        for (h, d) in &entries {
            let got = r.next_header().unwrap().unwrap();
            let mut expect = h.clone();
            expect.size = d.len() as u64;
            assert_eq!(got, expect);
            let mut data = Vec::new();
            r.read_entry_to_end(&mut data).unwrap();
            assert_eq!(&data, d);
        }
        assert!(r.next_header().unwrap().is_none());
    }

    #[test]
    fn missing_end_is_fine_truncation_is_not() {
        let mut w = TarWriter::new(Vec::new());
        w.append(&hdr(b"snapshot/a", TYPE_REGULAR), b"abc").unwrap();
        let bytes = w.get_ref().clone();
        let mut r = TarReader::new(&bytes[..]);
        assert!(r.next_header().unwrap().is_some());
        assert!(r.next_header().unwrap().is_none());
        // cut inside the data
        let mut r = TarReader::new(&bytes[..600]);
        r.next_header().unwrap().unwrap();
        assert!(matches!(r.next_header(), Err(TarError::Truncated { .. })));
        // cut inside a header
        let mut r = TarReader::new(&bytes[..100]);
        assert!(matches!(r.next_header(), Err(TarError::Truncated { .. })));
        // flipped byte in a header
        let mut bad = bytes.clone();
        bad[10] ^= 0x55;
        let mut r = TarReader::new(&bad[..]);
        assert!(matches!(
            r.next_header(),
            Err(TarError::CorruptHeader { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut w = TarWriter::new(Vec::new());
        w.append(&hdr(b"snapshot/\xffname", TYPE_REGULAR), &[5u8; 700])
            .unwrap();
        let base = w.finish_archive().unwrap();
        let mut seed = 12345u64;
        for _ in 0..3000 {
            let mut v = base.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % 1536;
                v[i] = (seed >> 32) as u8;
            }
            let mut r = TarReader::new(&v[..]);
            while let Ok(Some(_)) = r.next_header() {
                let mut sink = Vec::new();
                if r.read_entry_to_end(&mut sink).is_err() {
                    break;
                }
            }
        }
    }
}
