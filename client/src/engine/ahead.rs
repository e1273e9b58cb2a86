//! Work run on a thread of its own, a few hundred items ahead of its reader (a walk's
//! `lstat`s, the decrypting and parsing of signature files): it overlaps the reader's
//! work instead of adding to it.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Items per hand-off, and hand-offs queued.
const BATCH: usize = 64;
const DEPTH: usize = 8;

/// The items `next` makes from state `S` on the thread, in order; the state comes back
/// when the thread ends.
pub struct Ahead<T, S> {
    rx: Receiver<Vec<T>>,
    batch: std::vec::IntoIter<T>,
    handle: Option<JoinHandle<S>>,
    /// The state, once the thread was joined.
    ended: Option<S>,
}

impl<T: Send + 'static, S: Send + 'static> Ahead<T, S> {
    /// Starts the thread (named `name`); `next` returns `None` at the end.
    pub fn spawn(
        name: &str,
        mut state: S,
        mut next: impl FnMut(&mut S) -> Option<T> + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel(DEPTH);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    let mut batch = Vec::with_capacity(BATCH);
                    while batch.len() < BATCH {
                        match next(&mut state) {
                            Some(item) => batch.push(item),
                            None => break,
                        }
                    }
                    let end = batch.len() < BATCH;
                    // A failed send means the reader is gone.
                    if (!batch.is_empty() && tx.send(batch).is_err()) || end {
                        return state;
                    }
                }
            })
            .expect("spawn a thread");
        Ahead {
            rx,
            batch: Vec::new().into_iter(),
            handle: Some(handle),
            ended: None,
        }
    }

    /// The next item; `None` at the end.
    pub fn next_item(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.batch.next() {
                return Some(item);
            }
            match self.rx.recv() {
                Ok(batch) => self.batch = batch.into_iter(),
                Err(_) => {
                    self.join();
                    return None;
                }
            }
        }
    }

    /// Stops the thread (items not read are dropped) and returns its state.
    pub fn finish(mut self) -> S {
        let (_, rx) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, rx));
        self.join();
        self.ended.take().expect("joined")
    }

    /// Joins the thread. A panic there is raised here: it must not look like the end (a
    /// backup would record the rest of a walk as deleted).
    fn join(&mut self) {
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(state)) => self.ended = Some(state),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => {}
        }
    }
}
