//! Writes a set's difftar volumes: appends entries, cuts volumes at `--volsize`, and
//! finishes each volume (last compression chunks, encryption, upload) on a background
//! thread while the next one is being filled.

use super::codec::{Codec, EncodedWriter, StoredInfo};
use super::error::{EngineError, Result};
use flotilla_common::archive::names::{ObjectKind, SetTimes};
use flotilla_common::archive::tarfmt::{TarHeader, TarWriter};
use flotilla_common::archive::{Index, PIECE_SIZE, VolumeInfo};
use flotilla_common::storage::BlockingStore;
use std::collections::VecDeque;
use std::thread::JoinHandle;

struct OpenVolume {
    number: u32,
    name: String,
    tar: TarWriter<EncodedWriter>,
    start: (Index, Option<u64>),
    end: (Index, Option<u64>),
}

struct Finishing {
    info: VolumeInfo,
    name: String,
    handle: JoinHandle<std::io::Result<StoredInfo>>,
}

/// At most this many volumes are being finished in the background at once.
const MAX_FINISHING: usize = 1;

pub struct VolumeWriter {
    store: BlockingStore,
    codec: Codec,
    set: SetTimes,
    volsize: u64,
    next_number: u32,
    open: Option<OpenVolume>,
    finishing: VecDeque<Finishing>,
    done: Vec<VolumeInfo>,
    /// Bytes stored so far (finished volumes).
    pub stored_bytes: u64,
    /// Names of the volumes uploaded, in order.
    pub uploaded: Vec<String>,
}

impl VolumeWriter {
    pub fn new(store: BlockingStore, codec: Codec, set: SetTimes, volsize: u64) -> Self {
        VolumeWriter {
            store,
            codec,
            set,
            volsize,
            next_number: 1,
            open: None,
            finishing: VecDeque::new(),
            done: Vec::new(),
            stored_bytes: 0,
            uploaded: Vec::new(),
        }
    }

    fn open_volume(&mut self, index: &Index, block: Option<u64>) -> Result<&mut OpenVolume> {
        if self.open.is_none() {
            let number = self.next_number;
            self.next_number += 1;
            let name = self
                .codec
                .object_name(self.set, ObjectKind::Volume(number))
                .format();
            let out = self.store.put_writer(&name);
            let enc = self.codec.writer(ObjectKind::Volume(number), out)?;
            self.open = Some(OpenVolume {
                number,
                name,
                tar: TarWriter::new(enc),
                start: (index.clone(), block),
                end: (index.clone(), block),
            });
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    /// Appends one entry. `block` is the manifest bookmark (piece number of a non-final
    /// multivol piece, else `None`).
    pub fn append(
        &mut self,
        header: &TarHeader,
        data: &[u8],
        index: &Index,
        block: Option<u64>,
    ) -> Result<()> {
        let volsize = self.volsize;
        let vol = self.open_volume(index, block)?;
        vol.tar
            .append(header, data)
            .map_err(|e| EngineError::from_object_io(&vol.name, e))?;
        vol.end = (index.clone(), block);
        // duplicity appends while at least 64 KiB of room is left (§3.5).
        if volsize.saturating_sub(vol.tar.position()) < PIECE_SIZE as u64 {
            self.close_volume()?;
        }
        Ok(())
    }

    fn close_volume(&mut self) -> Result<()> {
        let Some(vol) = self.open.take() else {
            return Ok(());
        };
        while self.finishing.len() >= MAX_FINISHING {
            self.join_oldest()?;
        }
        let info = VolumeInfo {
            number: vol.number,
            start: vol.start.0,
            start_block: vol.start.1,
            end: vol.end.0,
            end_block: vol.end.1,
            sha1: None,
        };
        let tar = vol.tar;
        let handle = std::thread::Builder::new()
            .name(format!("finish-vol{}", vol.number))
            .spawn(move || {
                let enc = tar.finish_volume()?;
                enc.finish()
            })
            .map_err(|e| EngineError::io("thread", e))?;
        self.finishing.push_back(Finishing {
            info,
            name: vol.name,
            handle,
        });
        Ok(())
    }

    fn join_oldest(&mut self) -> Result<()> {
        let Some(f) = self.finishing.pop_front() else {
            return Ok(());
        };
        let stored = f
            .handle
            .join()
            .map_err(|_| EngineError::corrupt(&f.name, "volume writer thread panicked"))?
            .map_err(|e| EngineError::from_object_io(&f.name, e))?;
        let mut info = f.info;
        info.sha1 = Some(stored.sha1);
        self.stored_bytes += stored.bytes;
        tracing::debug!("uploaded {} ({} bytes)", f.name, stored.bytes);
        self.uploaded.push(f.name);
        self.done.push(info);
        Ok(())
    }

    /// Closes the last volume and waits for all uploads. A set always has at least one
    /// volume: an empty incremental gets one holding only the tar end (§1.1).
    pub fn finish(mut self) -> Result<(Vec<VolumeInfo>, u64, Vec<String>)> {
        if self.open.is_none() && self.next_number == 1 {
            self.open_volume(&Index::root(), None)?;
        }
        self.close_volume()?;
        while !self.finishing.is_empty() {
            self.join_oldest()?;
        }
        Ok((self.done, self.stored_bytes, self.uploaded))
    }

    /// Waits for background work and drops the open volume (its upload is aborted).
    pub fn abandon(mut self) {
        self.open = None;
        while let Some(f) = self.finishing.pop_front() {
            let _ = f.handle.join();
        }
    }
}
