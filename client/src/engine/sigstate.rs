//! The signature state of a chain: the overlay of its signature files, streamed in index
//! order (duplicity-format.md §4.1). This is what an incremental compares against.

use super::ahead::Ahead;
use super::error::{EngineError, Result};
use flotilla_common::archive::entry::{EntryKind, EntryName};
use flotilla_common::archive::tarfmt::{TarHeader, TarReader};
use flotilla_common::archive::{FileMeta, Index};
use std::io::Read;

/// One path of the previous state.
#[derive(Clone, Debug)]
pub struct SigEntry {
    pub index: Index,
    pub meta: FileMeta,
    /// The librsync signature of a regular file.
    pub signature: Option<Vec<u8>>,
}

struct Cursor {
    object: String,
    reader: TarReader<Box<dyn Read + Send>>,
    current: Option<(EntryName, TarHeader)>,
}

impl Cursor {
    fn advance(&mut self) -> Result<()> {
        self.current = match self
            .reader
            .next_header()
            .map_err(|e| EngineError::from((self.object.clone(), e)))?
        {
            None => None,
            Some(h) => {
                let name = EntryName::parse(&h.name)
                    .map_err(|e| EngineError::from((self.object.clone(), e)))?;
                if name.piece.is_some() || name.kind == EntryKind::Diff {
                    return Err(EngineError::corrupt(
                        &self.object,
                        format!(
                            "unexpected entry {:?} in a signature file",
                            String::from_utf8_lossy(&h.name)
                        ),
                    ));
                }
                Some((name, h))
            }
        };
        Ok(())
    }
}

/// Merges signature files (oldest first) into the current state.
pub struct SignatureState {
    cursors: Vec<Cursor>,
    peeked: Option<SigEntry>,
    last: Option<Index>,
    /// Read the signatures themselves (else `SigEntry::signature` is `None`).
    keep_signatures: bool,
}

impl SignatureState {
    /// No previous state (a full backup).
    pub fn empty() -> Self {
        SignatureState {
            cursors: Vec::new(),
            peeked: None,
            last: None,
            keep_signatures: true,
        }
    }

    /// `sources`: (object name for messages, plaintext sigtar stream), oldest first.
    pub fn open(sources: Vec<(String, Box<dyn Read + Send>)>) -> Result<Self> {
        let mut cursors = Vec::with_capacity(sources.len());
        for (object, r) in sources {
            let mut c = Cursor {
                object,
                reader: TarReader::new(r),
                current: None,
            };
            c.advance()?;
            cursors.push(c);
        }
        Ok(SignatureState {
            cursors,
            peeked: None,
            last: None,
            keep_signatures: true,
        })
    }

    /// Reads paths and metadata only, skipping the signatures (all a check of a restored
    /// tree's metadata needs): every `SigEntry::signature` is `None`.
    pub fn metadata_only(mut self) -> Self {
        self.keep_signatures = false;
        self
    }

    /// Reads on a thread of its own, a few hundred paths ahead (see [`SignaturesAhead`]).
    pub fn ahead(self) -> SignaturesAhead {
        // The state, and whether it failed (nothing more is read after an error).
        SignaturesAhead(Ahead::spawn(
            "signatures",
            (self, false),
            |(state, failed)| {
                if *failed {
                    return None;
                }
                let next = state.next_entry().transpose();
                *failed = matches!(next, Some(Err(_)));
                next
            },
        ))
    }

    fn next_raw(&mut self) -> Result<Option<SigEntry>> {
        loop {
            let Some(min) = self
                .cursors
                .iter()
                .filter_map(|c| c.current.as_ref().map(|(n, _)| &n.index))
                .min()
                .cloned()
            else {
                return Ok(None);
            };
            if let Some(last) = &self.last
                && min <= *last
            {
                let c = self
                    .cursors
                    .iter()
                    .find(|c| c.current.as_ref().is_some_and(|(n, _)| n.index == min))
                    .expect("min comes from a cursor");
                return Err(EngineError::corrupt(
                    &c.object,
                    format!("entries out of order at {min} (after {last})"),
                ));
            }
            self.last = Some(min.clone());
            let holders: Vec<usize> = (0..self.cursors.len())
                .filter(|&i| {
                    self.cursors[i]
                        .current
                        .as_ref()
                        .is_some_and(|(n, _)| n.index == min)
                })
                .collect();
            let winner = *holders.last().expect("at least one");
            for &i in &holders[..holders.len() - 1] {
                self.cursors[i].advance()?;
            }
            let c = &mut self.cursors[winner];
            let (name, header) = c.current.take().expect("winner has an entry");
            let result = match name.kind {
                EntryKind::Deleted => None,
                EntryKind::Signature | EntryKind::Snapshot => {
                    let meta = FileMeta::from_header(&header).ok_or_else(|| {
                        EngineError::corrupt(
                            &c.object,
                            format!("unsupported entry type for {}", name.index),
                        )
                    })?;
                    let signature = if name.kind == EntryKind::Signature && self.keep_signatures {
                        let mut data = Vec::new();
                        c.reader
                            .read_entry_to_end(&mut data)
                            .map_err(|e| EngineError::from_object_io(&c.object, e))?;
                        Some(data)
                    } else {
                        None
                    };
                    Some(SigEntry {
                        index: name.index,
                        meta,
                        signature,
                    })
                }
                EntryKind::Diff => unreachable!("refused in advance()"),
            };
            c.advance()?;
            if let Some(e) = result {
                return Ok(Some(e));
            }
        }
    }

    /// The next path of the state, without consuming it.
    pub fn peek(&mut self) -> Result<Option<&SigEntry>> {
        if self.peeked.is_none() {
            self.peeked = self.next_raw()?;
        }
        Ok(self.peeked.as_ref())
    }

    pub fn next_entry(&mut self) -> Result<Option<SigEntry>> {
        if let Some(e) = self.peeked.take() {
            return Ok(Some(e));
        }
        self.next_raw()
    }
}

/// A [`SignatureState`] read on a thread of its own (see [`Ahead`]): decrypting,
/// inflating and parsing the signature files overlap the reader's work.
pub struct SignaturesAhead(Ahead<Result<SigEntry>, (SignatureState, bool)>);

impl SignaturesAhead {
    pub fn next_entry(&mut self) -> Result<Option<SigEntry>> {
        self.0.next_item().transpose()
    }
}
