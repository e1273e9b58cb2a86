//! Deflate for the compressed-data packet: inline (one continuous stream) or in parallel
//! (independent chunks glued with sync flushes, like pigz), plus Adler-32 for ZLIB.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress, Status};

use super::error::CryptoError;

/// Size of the literal-stream chunks that are deflated independently.
pub(crate) const CHUNK: usize = 1 << 20;
/// Deflate window: how much of the previous chunk primes the next one.
const DICT: usize = 32 * 1024;

/// Adler-32 of `data`, continuing from `adler` (start with 1). zlib-rs's SIMD version:
/// the hand-written scalar loop cost about 4% of a backup's CPU.
pub(crate) fn adler32(adler: u32, data: &[u8]) -> u32 {
    zlib_rs::adler32::adler32(adler, data)
}

/// Adler-32 of the concatenation A‖B from adler(A), adler(B) and len(B).
pub(crate) fn adler32_combine(adler1: u32, adler2: u32, len2: u64) -> u32 {
    zlib_rs::adler32::adler32_combine(adler1, adler2, len2)
}

/// RFC 1950 header for a deflate stream with a 32 KiB window, FLEVEL as zlib sets it.
pub(crate) fn zlib_header(level: u32) -> [u8; 2] {
    let cmf: u16 = 0x78;
    let flevel: u16 = match level {
        0 | 1 => 0,
        2..=5 => 1,
        6 => 2,
        _ => 3,
    };
    let mut flg = flevel << 6;
    flg += 31 - ((cmf << 8) + flg) % 31;
    [cmf as u8, flg as u8]
}

/// Runs deflate on `input`, appending to `out`, until the input is consumed and the flush
/// (if any) is complete.
pub(crate) fn deflate(
    c: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> Result<(), CryptoError> {
    loop {
        let spare = out.capacity() - out.len();
        if spare < 4096 || spare < input.len() / 4 {
            out.reserve((input.len() / 2).max(64 * 1024));
        }
        let before = c.total_in();
        let status = c
            .compress_vec(input, out, flush)
            .map_err(|e| CryptoError::Malformed(format!("deflate failed: {e}")))?;
        let used = (c.total_in() - before) as usize;
        input = &input[used..];
        let out_full = out.len() == out.capacity();
        match flush {
            FlushCompress::Finish => {
                if status == Status::StreamEnd {
                    return Ok(());
                }
            }
            FlushCompress::None => {
                if input.is_empty() {
                    return Ok(());
                }
            }
            _ => {
                if input.is_empty() && !out_full {
                    return Ok(());
                }
            }
        }
    }
}

fn new_compress(level: u32) -> Compress {
    Compress::new(flate2::Compression::new(level), false)
}

/// How hard each chunk is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Effort {
    /// Level for compressible chunks.
    pub level: u32,
    /// A higher level for chunks whose samples shrink at least [`BOOST_GAIN`] more at it
    /// than at `level`.
    pub boost: Option<u32>,
}

impl Effort {
    pub(crate) fn fixed(level: u32) -> Self {
        Effort { level, boost: None }
    }

    /// Level 1, or 2 where it pays. zlib-rs's level 1 (`deflate_quick`) uses fixed Huffman
    /// codes; on data with a skewed byte distribution but few long matches (logs, CSV,
    /// tables) that costs 20-25% in size, which level 2's dynamic codes win back for about
    /// 1.6x the time. On the benchmark's `large` tree this stores 4.5% less than plain
    /// level 1 (1019 vs 1067 MB; level 6 would be 965 MB) for about 10% more CPU time.
    pub(crate) fn auto() -> Self {
        Effort {
            level: 1,
            boost: Some(2),
        }
    }
}

/// Receives the compressed stream, in order.
pub(crate) trait Sink {
    fn put(&mut self, data: &[u8]) -> Result<(), CryptoError>;
}

/// The deflate stage of the writer.
pub(crate) struct Deflater {
    effort: Effort,
    threads: usize,
    /// Adler-32 of the uncompressed data handed out so far (in order).
    adler: u32,
    /// threads == 1: one continuous stream.
    inline: Option<Compress>,
    out_buf: Vec<u8>,
    pool: Option<Pool>,
    /// Last DICT bytes of the previous chunk (dictionary of the next one).
    prev_tail: Vec<u8>,
    free: Vec<Vec<u8>>,
}

impl Deflater {
    pub(crate) fn new(effort: Effort, threads: usize) -> Self {
        let threads = threads.max(1);
        Deflater {
            effort,
            threads,
            adler: 1,
            inline: (threads == 1).then(|| new_compress(effort.level)),
            out_buf: Vec::new(),
            pool: None,
            prev_tail: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Adler-32 of all data compressed so far (valid after [`Self::finish`]).
    pub(crate) fn adler(&self) -> u32 {
        self.adler
    }

    /// An empty buffer with capacity for a chunk (recycled if possible).
    pub(crate) fn take_buffer(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    /// Compresses a non-final chunk. The buffer is consumed (recycled later).
    pub(crate) fn push(&mut self, chunk: Vec<u8>, sink: &mut dyn Sink) -> Result<(), CryptoError> {
        if let Some(c) = &mut self.inline {
            self.adler = adler32(self.adler, &chunk);
            self.out_buf.clear();
            deflate(c, &chunk, &mut self.out_buf, FlushCompress::None)?;
            sink.put(&self.out_buf)?;
            let mut chunk = chunk;
            chunk.clear();
            self.free.push(chunk);
            return Ok(());
        }
        if self.pool.is_none() {
            self.pool = Some(Pool::spawn(self.effort, self.threads)?);
        }
        let dict = std::mem::replace(&mut self.prev_tail, tail(&chunk));
        let pool = self.pool.as_mut().expect("spawned above");
        pool.submit(chunk, dict, false, sink, &mut self.adler, &mut self.free)
    }

    /// Compresses the final chunk (may be empty) and flushes everything to `sink`.
    pub(crate) fn finish(&mut self, last: Vec<u8>, sink: &mut dyn Sink) -> Result<(), CryptoError> {
        if let Some(c) = &mut self.inline {
            self.adler = adler32(self.adler, &last);
            self.out_buf.clear();
            deflate(c, &last, &mut self.out_buf, FlushCompress::Finish)?;
            return sink.put(&self.out_buf);
        }
        match &mut self.pool {
            None => {
                // Everything fit into one chunk: no threads needed.
                let mut c = new_compress(self.effort.level);
                self.adler = adler32(self.adler, &last);
                self.out_buf.clear();
                deflate(&mut c, &last, &mut self.out_buf, FlushCompress::Finish)?;
                sink.put(&self.out_buf)
            }
            Some(pool) => {
                let dict = std::mem::take(&mut self.prev_tail);
                pool.submit(last, dict, true, sink, &mut self.adler, &mut self.free)?;
                pool.drain(sink, &mut self.adler, &mut self.free)?;
                self.pool.take().expect("present").shutdown()
            }
        }
    }
}

fn tail(chunk: &[u8]) -> Vec<u8> {
    chunk[chunk.len().saturating_sub(DICT)..].to_vec()
}

struct Job {
    seq: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    finish: bool,
    out: Vec<u8>,
}

struct Done {
    seq: u64,
    data: Vec<u8>,
    out: Result<Vec<u8>, String>,
    adler: u32,
    len: u64,
}

/// Worker threads of one message. Dropping it stops and joins the threads.
struct Pool {
    job_tx: Option<Sender<Job>>,
    done_rx: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    next_seq: u64,
    next_out: u64,
    in_flight: usize,
    max_in_flight: usize,
    ready: BTreeMap<u64, Done>,
    spare_out: Vec<Vec<u8>>,
}

impl Pool {
    fn spawn(effort: Effort, threads: usize) -> Result<Self, CryptoError> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut pool = Pool {
            job_tx: Some(job_tx),
            done_rx,
            workers: Vec::with_capacity(threads),
            next_seq: 0,
            next_out: 0,
            in_flight: 0,
            max_in_flight: threads + 1,
            ready: BTreeMap::new(),
            spare_out: Vec::new(),
        };
        for i in 0..threads {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pgp-deflate-{i}"))
                .spawn(move || worker(effort, rx, tx))
                .map_err(CryptoError::Io)?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    fn submit(
        &mut self,
        data: Vec<u8>,
        dict: Vec<u8>,
        finish: bool,
        sink: &mut dyn Sink,
        adler: &mut u32,
        free: &mut Vec<Vec<u8>>,
    ) -> Result<(), CryptoError> {
        while self.in_flight >= self.max_in_flight {
            self.wait_one(sink, adler, free)?;
        }
        let out = self.spare_out.pop().unwrap_or_default();
        let job = Job {
            seq: self.next_seq,
            data,
            dict,
            finish,
            out,
        };
        let tx = self.job_tx.as_ref().ok_or(CryptoError::WriterFailed)?;
        tx.send(job)
            .map_err(|_| CryptoError::Io(std::io::Error::other("deflate workers are gone")))?;
        self.next_seq += 1;
        self.in_flight += 1;
        // Hand out whatever is already finished, without blocking.
        loop {
            match self.done_rx.try_recv() {
                Ok(d) => self.accept(d, sink, adler, free)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => {
                    return Err(CryptoError::Io(std::io::Error::other(
                        "deflate workers are gone",
                    )));
                }
            }
        }
    }

    fn wait_one(
        &mut self,
        sink: &mut dyn Sink,
        adler: &mut u32,
        free: &mut Vec<Vec<u8>>,
    ) -> Result<(), CryptoError> {
        let d = self
            .done_rx
            .recv()
            .map_err(|_| CryptoError::Io(std::io::Error::other("deflate workers are gone")))?;
        self.accept(d, sink, adler, free)
    }

    /// Takes a finished job and writes out every chunk that is next in order.
    fn accept(
        &mut self,
        d: Done,
        sink: &mut dyn Sink,
        adler: &mut u32,
        free: &mut Vec<Vec<u8>>,
    ) -> Result<(), CryptoError> {
        self.ready.insert(d.seq, d);
        while let Some(d) = self.ready.remove(&self.next_out) {
            self.in_flight -= 1;
            self.next_out += 1;
            let mut out = d.out.map_err(CryptoError::Malformed)?;
            *adler = adler32_combine(*adler, d.adler, d.len);
            sink.put(&out)?;
            out.clear();
            self.spare_out.push(out);
            let mut data = d.data;
            data.clear();
            free.push(data);
        }
        Ok(())
    }

    fn drain(
        &mut self,
        sink: &mut dyn Sink,
        adler: &mut u32,
        free: &mut Vec<Vec<u8>>,
    ) -> Result<(), CryptoError> {
        while self.in_flight > 0 {
            self.wait_one(sink, adler, free)?;
        }
        Ok(())
    }

    fn shutdown(mut self) -> Result<(), CryptoError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), CryptoError> {
        self.job_tx = None;
        let mut panicked = false;
        for h in self.workers.drain(..) {
            panicked |= h.join().is_err();
        }
        if panicked {
            return Err(CryptoError::Io(std::io::Error::other(
                "a deflate worker thread panicked",
            )));
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Bytes sampled at three places of a chunk to tell how to compress it.
const PROBE: usize = 8 * 1024;
/// A chunk whose samples shrink by less than this fraction is stored, not deflated.
const MIN_SAVING: f64 = 0.05;
/// [`Effort::boost`] is used when its samples come out at least this much smaller.
const BOOST_GAIN: f64 = 0.2;

/// What to do with one chunk.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Incompressible (media, archives, ciphertext): stored blocks.
    Store,
    Deflate(u32),
}

/// Deflates three samples of `data` at level 1 (and at the boost level when there is one):
/// samples that do not shrink by [`MIN_SAVING`] mean the chunk is stored. Costs about 2%
/// of deflating the chunk (4% with a boost level).
fn plan(probes: &mut Probes, effort: Effort, data: &[u8]) -> Plan {
    if data.len() < 4 * PROBE {
        return Plan::Deflate(effort.level);
    }
    let starts = [0, data.len() / 2 - PROBE / 2, data.len() - PROBE];
    let total_in = (3 * PROBE) as f64;
    let Some(fast) = probes.sampled_size(1, data, &starts) else {
        return Plan::Deflate(effort.level);
    };
    if (fast as f64) > total_in * (1.0 - MIN_SAVING) {
        return Plan::Store;
    }
    if let Some(boost) = effort.boost {
        let at_level = if effort.level == 1 {
            Some(fast)
        } else {
            probes.sampled_size(effort.level, data, &starts)
        };
        if let (Some(base), Some(boosted)) = (at_level, probes.sampled_size(boost, data, &starts))
            && (boosted as f64) <= (base as f64) * (1.0 - BOOST_GAIN)
        {
            return Plan::Deflate(boost);
        }
    }
    Plan::Deflate(effort.level)
}

/// Compressors for the samples, one per level, kept across chunks.
#[derive(Default)]
struct Probes {
    by_level: Vec<(u32, Compress)>,
    scratch: Vec<u8>,
}

impl Probes {
    /// Total deflated size of the `PROBE`-byte samples at `starts` (None on an error).
    fn sampled_size(&mut self, level: u32, data: &[u8], starts: &[usize]) -> Option<usize> {
        let i = match self.by_level.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                self.by_level.push((level, new_compress(level)));
                self.by_level.len() - 1
            }
        };
        let probe = &mut self.by_level[i].1;
        let mut total = 0;
        for &start in starts {
            probe.reset();
            self.scratch.clear();
            deflate(
                probe,
                &data[start..start + PROBE],
                &mut self.scratch,
                FlushCompress::Finish,
            )
            .ok()?;
            total += self.scratch.len();
        }
        Some(total)
    }
}

/// Appends `data` as deflate stored blocks (the stream is byte-aligned here: every
/// chunk starts at the stream start or after a sync flush); `last` ends the stream.
fn store_blocks(data: &[u8], last: bool, out: &mut Vec<u8>) {
    out.reserve(data.len() + data.len() / 65535 * 5 + 10);
    for block in data.chunks(65535) {
        let len = block.len() as u16;
        out.push(0x00); // BFINAL=0, BTYPE=00 (stored), padding to the byte boundary
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    if last {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]); // empty final stored block
    }
}

fn worker(effort: Effort, jobs: Arc<Mutex<Receiver<Job>>>, done: Sender<Done>) {
    // One compressor per level in use (the level of a zlib stream cannot change after a
    // reset).
    let mut compressors: Vec<(u32, Compress)> = Vec::new();
    let mut probes = Probes::default();
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let Job {
            seq,
            data,
            dict,
            finish,
            mut out,
        } = job;
        let res = catch_unwind(AssertUnwindSafe(|| {
            let level = match plan(&mut probes, effort, &data) {
                Plan::Store => {
                    out.clear();
                    store_blocks(&data, finish, &mut out);
                    return Ok(());
                }
                Plan::Deflate(level) => level,
            };
            let c = match compressors.iter().position(|(l, _)| *l == level) {
                Some(i) => &mut compressors[i].1,
                None => {
                    compressors.push((level, new_compress(level)));
                    &mut compressors.last_mut().expect("just pushed").1
                }
            };
            c.reset();
            if !dict.is_empty() {
                c.set_dictionary(&dict)
                    .map_err(|e| format!("deflate dictionary: {e}"))?;
            }
            out.clear();
            out.reserve(data.len() + data.len() / 8 + 1024);
            let flush = if finish {
                FlushCompress::Finish
            } else {
                FlushCompress::Sync
            };
            deflate(c, &data, &mut out, flush).map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }));
        let out = match res {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                compressors.clear();
                probes = Probes::default();
                Err("deflate worker panicked".to_string())
            }
        };
        let adler = adler32(1, &data);
        let len = data.len() as u64;
        if done
            .send(Done {
                seq,
                data,
                out,
                adler,
                len,
            })
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct VecSink(Vec<u8>);
    impl Sink for VecSink {
        fn put(&mut self, data: &[u8]) -> Result<(), CryptoError> {
            self.0.extend_from_slice(data);
            Ok(())
        }
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678u32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    (x % 7) as u8
                } else {
                    b'a' + (i % 13) as u8
                }
            })
            .collect()
    }

    #[test]
    fn adler_matches_reference_and_combines() {
        assert_eq!(adler32(1, b"Wikipedia"), 0x11E6_0398);
        let d = data(300_000);
        let whole = adler32(1, &d);
        let (a, b) = d.split_at(123_457);
        assert_eq!(
            adler32_combine(adler32(1, a), adler32(1, b), b.len() as u64),
            whole
        );
        assert_eq!(adler32_combine(whole, adler32(1, b""), 0), whole);
    }

    #[test]
    fn zlib_header_is_valid() {
        for level in 0..=9 {
            let h = zlib_header(level);
            assert_eq!((u16::from(h[0]) * 256 + u16::from(h[1])) % 31, 0);
            assert_eq!(h[0], 0x78);
        }
    }

    fn roundtrip(threads: usize, len: usize, level: u32) {
        let input = data(len);
        let mut d = Deflater::new(Effort::fixed(level), threads);
        let mut sink = VecSink(Vec::new());
        let mut rest = &input[..];
        while rest.len() > CHUNK {
            let mut b = d.take_buffer();
            b.extend_from_slice(&rest[..CHUNK]);
            d.push(b, &mut sink).unwrap();
            rest = &rest[CHUNK..];
        }
        d.finish(rest.to_vec(), &mut sink).unwrap();
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&sink.0[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), input.len());
        assert!(out == input, "threads {threads} len {len}");
        assert_eq!(d.adler(), adler32(1, &input));
    }

    #[test]
    fn incompressible_chunks_are_stored_and_still_inflate() {
        let mut mixed = Vec::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..(3 * CHUNK) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            mixed.push((x >> 29) as u8);
        }
        mixed.extend(std::iter::repeat_n(b'a', CHUNK + 77));
        let mut sink = VecSink(Vec::new());
        let mut d = Deflater::new(Effort::fixed(6), 2);
        let mut chunks = mixed.chunks(CHUNK).map(|c| c.to_vec()).collect::<Vec<_>>();
        let last = chunks.pop().unwrap();
        for c in chunks {
            d.push(c, &mut sink).unwrap();
        }
        d.finish(last, &mut sink).unwrap();
        // random data stored (~0.01% overhead), the repeated tail compressed
        assert!(
            sink.0.len() < 3 * CHUNK + 3 * CHUNK / 1000 + 10_000,
            "{}",
            sink.0.len()
        );
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&sink.0[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == mixed);
    }

    /// Random bytes, and random letters from a skewed 4-letter alphabet (few long matches,
    /// which level 1's fixed Huffman codes spend 8 bits per letter on).
    fn random_and_skewed() -> (Vec<u8>, Vec<u8>) {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let random: Vec<u8> = (0..CHUNK).map(|_| (next() >> 29) as u8).collect();
        let skewed: Vec<u8> = (0..CHUNK)
            .map(|_| match next() % 8 {
                0..=3 => b'e',
                4 | 5 => b't',
                6 => b'a',
                _ => b'o',
            })
            .collect();
        (random, skewed)
    }

    #[test]
    fn auto_effort_stores_incompressible_and_boosts_where_level_2_pays() {
        let (random, skewed) = random_and_skewed();
        let mut probes = Probes::default();
        assert_eq!(plan(&mut probes, Effort::auto(), &random), Plan::Store);
        assert_eq!(plan(&mut probes, Effort::auto(), &skewed), Plan::Deflate(2));
        let repetitive = data(CHUNK);
        // A fixed level is never boosted.
        assert_eq!(
            plan(&mut probes, Effort::fixed(1), &skewed),
            Plan::Deflate(1)
        );

        // Mixed plans in one message still form one valid stream, smaller than level 1.
        let input = [random.clone(), skewed.clone(), repetitive, skewed].concat();
        let mut sizes = Vec::new();
        for effort in [Effort::auto(), Effort::fixed(1)] {
            let mut d = Deflater::new(effort, 2);
            let mut sink = VecSink(Vec::new());
            let mut chunks: Vec<Vec<u8>> = input.chunks(CHUNK).map(|c| c.to_vec()).collect();
            let last = chunks.pop().unwrap();
            for c in chunks {
                d.push(c, &mut sink).unwrap();
            }
            d.finish(last, &mut sink).unwrap();
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(&sink.0[..])
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == input);
            assert_eq!(d.adler(), adler32(1, &input));
            sizes.push(sink.0.len());
        }
        assert!(
            sizes[0] < sizes[1] * 9 / 10,
            "auto {} vs level 1 {}",
            sizes[0],
            sizes[1]
        );
    }

    #[test]
    fn parallel_chunks_form_one_deflate_stream() {
        for threads in [1, 2, 3] {
            for len in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
                roundtrip(threads, len, 6);
            }
        }
        roundtrip(2, 2 * CHUNK + 5, 0);
        roundtrip(2, 2 * CHUNK + 5, 9);
    }
}
