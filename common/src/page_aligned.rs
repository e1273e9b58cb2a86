//! Writing files from memory placed at the same offset within a page as the file position.
//!
//! On this project's machines the kernel copies a `write` into the page cache two to ten
//! times slower when the source is a few bytes off its destination within their 4 KiB pages
//! (loads and stores seem to alias). Where the buffer lands is up to the allocator, so a
//! plain `BufWriter` is fast or slow by chance: in a restore, writing a 400 MB file rebuilt
//! from a delta through one took a second of CPU time, and a tenth of that when aligned.
//! (The same layout serves the encrypted parts in `crypto::writer`.)

use std::io::{self, Write};

/// A memory page, as far as the copy above cares.
pub const PAGE: usize = 4096;

/// Where in a buffer at address `addr` to start data bound for file offset `pos` so that
/// both have the same offset within a page, leaving at least `room` bytes before it
/// (the result is in `room..room + PAGE`).
pub fn start_in_page(addr: usize, pos: u64, room: usize) -> usize {
    // start ≡ pos - addr (mod PAGE)
    (pos as usize).wrapping_sub(addr).wrapping_sub(room) % PAGE + room
}

/// A buffered writer like `BufWriter` for output that is at offset `pos` when it starts
/// (0 for a new file), whose writes to the inner writer all come from memory at their
/// file offset's place within a page (see the module documentation).
///
/// Unlike `BufWriter`, dropping it does not write what is buffered (an error there could
/// only be ignored): call [`flush`](Write::flush) or [`into_inner`](Self::into_inner).
pub struct PageAlignedWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    /// `buf[begin..fill]` is buffered; it goes to offset `pos`.
    begin: usize,
    fill: usize,
    pos: u64,
    capacity: usize,
}

impl<W: Write> PageAlignedWriter<W> {
    /// `capacity`: bytes buffered before a write to `inner` (rounded up to whole pages).
    pub fn new(inner: W, pos: u64, capacity: usize) -> Self {
        let capacity = capacity.max(1).next_multiple_of(PAGE);
        let buf = vec![0u8; capacity + PAGE];
        let begin = start_in_page(buf.as_ptr() as usize, pos, 0);
        PageAlignedWriter {
            inner,
            buf,
            begin,
            fill: begin,
            pos,
            capacity,
        }
    }

    /// The output offset after everything written so far (buffered or not).
    pub fn position(&self) -> u64 {
        self.pos + (self.fill - self.begin) as u64
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.fill > self.begin {
            self.inner.write_all(&self.buf[self.begin..self.fill])?;
            self.pos += (self.fill - self.begin) as u64;
        }
        self.begin = start_in_page(self.buf.as_ptr() as usize, self.pos, 0);
        self.fill = self.begin;
        Ok(())
    }

    /// Copies `src` to its end straight into the buffer (`io::copy` would copy through
    /// one more buffer of its own). Returns the bytes copied.
    pub fn copy_from(&mut self, src: &mut impl io::Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            if self.fill == self.begin + self.capacity {
                self.flush_buf()?;
            }
            match src.read(&mut self.buf[self.fill..self.begin + self.capacity]) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.fill += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what is buffered and returns the inner writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush_buf()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for PageAlignedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.fill == self.begin + self.capacity {
            self.flush_buf()?;
        }
        let n = data.len().min(self.begin + self.capacity - self.fill);
        self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
        self.fill += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the page offset of every write's source.
    #[derive(Default)]
    struct Recorder {
        data: Vec<u8>,
        misplaced: Vec<(usize, usize)>,
        writes: usize,
    }

    impl Write for &mut Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let want = self.data.len() % PAGE;
            let at = buf.as_ptr() as usize % PAGE;
            if want != at {
                self.misplaced.push((want, at));
            }
            self.writes += 1;
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn start_is_in_the_pages_after_the_room() {
        for addr in [0usize, 1, 16, 4095, 4096, 123_457] {
            for pos in [0u64, 1, 17, 4095, 4096, 1 << 40] {
                for room in [0usize, 6, 100] {
                    let s = start_in_page(addr, pos, room);
                    assert!((room..room + PAGE).contains(&s), "{addr} {pos} {room}");
                    assert_eq!((addr + s) % PAGE, pos as usize % PAGE);
                }
            }
        }
    }

    #[test]
    fn every_write_comes_from_its_file_offset_in_a_page() {
        let mut rec = Recorder::default();
        let mut expected = Vec::new();
        {
            let mut w = PageAlignedWriter::new(&mut rec, 0, 3 * PAGE);
            // Odd sizes so that the flushes fall at every kind of offset.
            for (i, n) in [1usize, 7, 4095, 13_000, 3, 9000, 65_537, 2, 40_000]
                .iter()
                .cycle()
                .take(60)
                .enumerate()
            {
                let chunk: Vec<u8> = (0..*n).map(|k| (k * 31 + i) as u8).collect();
                w.write_all(&chunk).unwrap();
                expected.extend_from_slice(&chunk);
                if i % 17 == 0 {
                    w.flush().unwrap();
                }
                assert_eq!(w.position(), expected.len() as u64);
            }
            w.into_inner().unwrap();
        }
        assert_eq!(rec.data, expected);
        assert!(rec.writes > 60, "{} writes", rec.writes);
        assert!(rec.misplaced.is_empty(), "{:?}", &rec.misplaced[..]);
    }

    #[test]
    fn copy_from_reads_into_place() {
        let src: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut rec = Recorder::default();
        let mut w = PageAlignedWriter::new(&mut rec, 0, 2 * PAGE);
        w.write_all(b"head").unwrap();
        // A reader that returns odd amounts.
        let mut r = io::Read::chain(&src[..777], &src[777..]);
        assert_eq!(w.copy_from(&mut r).unwrap(), src.len() as u64);
        w.flush().unwrap();
        assert_eq!(&rec.data[..4], b"head");
        assert_eq!(&rec.data[4..], &src[..]);
        assert!(rec.misplaced.is_empty(), "{:?}", rec.misplaced);
    }

    #[test]
    fn a_later_start_position_is_honoured_and_drop_writes_nothing() {
        let mut rec = Recorder {
            data: vec![0; 1000],
            ..Default::default()
        };
        let mut w = PageAlignedWriter::new(&mut rec, 1000, PAGE);
        w.write_all(&[5; 10_000]).unwrap();
        w.flush().unwrap();
        w.write_all(&[6; 100]).unwrap();
        drop(w);
        assert_eq!(rec.data.len(), 11_000);
        assert!(rec.misplaced.is_empty(), "{:?}", rec.misplaced);
    }
}
