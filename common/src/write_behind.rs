//! A writer whose bytes are written on a thread of its own.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// An `io::Write` that hands its bytes, `chunk` at a time through a queue of `depth`, to a
/// thread writing them into `W` (emptied buffers come back for reuse). It lets a serial
/// stage (encryption, hashing and uploading) run beside the stages feeding it. A failure
/// of the thread comes back from the next write or from [`WriteBehind::finish`]; dropping
/// it without `finish` ends the thread and drops `W`.
///
/// A producer that fills whole buffers of its own hands them over with
/// [`WriteBehind::send_owned`] instead, which copies nothing.
pub struct WriteBehind<W: Write + Send + 'static> {
    name: &'static str,
    chunk: usize,
    /// A buffer and where its bytes start.
    tx: Option<SyncSender<(Vec<u8>, usize)>>,
    recycled: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    handle: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    /// Starts the thread (named `name`).
    pub fn spawn(mut inner: W, name: &'static str, chunk: usize, depth: usize) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<(Vec<u8>, usize)>(depth);
        let (recycle_tx, recycled) = sync_channel::<Vec<u8>>(depth + 2);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for (buf, start) in rx {
                    inner.write_all(&buf[start..])?;
                    // Returned with its length, so refilling it zeroes nothing.
                    let _ = recycle_tx.try_send(buf);
                }
                Ok(inner)
            })?;
        Ok(WriteBehind {
            name,
            chunk,
            tx: Some(tx),
            recycled,
            pending: Vec::new(),
            handle: Some(handle),
        })
    }

    fn send(&mut self) -> io::Result<()> {
        let mut next = self.recycled.try_recv().unwrap_or_default();
        next.clear();
        let full = std::mem::replace(&mut self.pending, next);
        self.send_buffer(full, 0)
    }

    /// Hands over `buf[start..]` itself (after any bytes written before it) and returns a
    /// buffer for the next one: a used one, with its old length and contents, if one has
    /// come back, else an empty one.
    pub fn send_owned(&mut self, buf: Vec<u8>, start: usize) -> io::Result<Vec<u8>> {
        if !self.pending.is_empty() {
            self.send()?;
        }
        self.send_buffer(buf, start)?;
        Ok(self.recycled.try_recv().unwrap_or_default())
    }

    fn send_buffer(&mut self, buf: Vec<u8>, start: usize) -> io::Result<()> {
        if let Some(tx) = &self.tx
            && tx.send((buf, start)).is_ok()
        {
            return Ok(());
        }
        // The thread stopped: its error says why.
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other(format!(
                "the {} thread stopped",
                self.name
            ))),
        }
    }

    fn join(&mut self) -> io::Result<W> {
        self.tx = None;
        let handle = self
            .handle
            .take()
            .ok_or_else(|| io::Error::other(format!("the {} thread stopped", self.name)))?;
        handle
            .join()
            .map_err(|_| io::Error::other(format!("the {} thread panicked", self.name)))?
    }

    /// Hands over what is left, waits for the thread and returns `W`.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl<W: Write + Send + 'static> Write for WriteBehind<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(self.chunk);
            }
            let take = (self.chunk - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() >= self.chunk {
                self.send()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl<W: Write + Send + 'static> Drop for WriteBehind<W> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_across_chunks() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = WriteBehind::spawn(Vec::new(), "test-writer", 4096, 2).unwrap();
        for piece in data.chunks(1000).chain(data.chunks(5000)) {
            w.write_all(piece).unwrap();
        }
        let out = w.finish().unwrap();
        assert_eq!(out.len(), 2 * data.len());
        assert_eq!(&out[..data.len()], &data[..]);
        assert_eq!(&out[data.len()..], &data[..]);
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_threads_error_comes_back() {
        let mut w = WriteBehind::spawn(Failing, "test-writer", 16, 1).unwrap();
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = w.write_all(&[0u8; 16]) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => w.finish().err().expect("finish reports the failure"),
        };
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    }
}
