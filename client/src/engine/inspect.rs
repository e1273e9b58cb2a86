//! Read-only views of a destination: `status` (like `duplicity collection-status`, from
//! the listing alone, no key needed) and `ls` (like `list-current-files`, from the
//! chain's signature files).

use super::Context;
use super::cache::ArchiveCache;
use super::codec::open_object;
use super::error::{EngineError, Result};
use super::sigstate::SignatureState;
use flotilla_common::archive::{BackupSet, Collection, FileKind, format_time};
use flotilla_common::crypto::DecryptionKeys;
use serde::Serialize;
use std::io::Read;

#[derive(Clone, Debug, Serialize)]
pub struct SetSummary {
    /// "full" or "incremental".
    pub kind: &'static str,
    pub start: Option<i64>,
    pub time: i64,
    pub volumes: usize,
    pub bytes: u64,
    pub encrypted: bool,
    pub has_signatures: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainSummary {
    pub start: i64,
    pub end: i64,
    /// The chain the next backup continues (the latest one, with all signature files).
    pub primary: bool,
    pub sets: Vec<SetSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub destination: String,
    pub chains: Vec<ChainSummary>,
    pub orphaned: Vec<SetSummary>,
    pub incomplete: Vec<SetSummary>,
}

fn summarize(s: &BackupSet) -> SetSummary {
    SetSummary {
        kind: if s.times.is_full() {
            "full"
        } else {
            "incremental"
        },
        start: if s.times.is_full() {
            None
        } else {
            Some(s.times.start())
        },
        time: s.times.end(),
        volumes: s.volumes.len(),
        bytes: s.stored_bytes(),
        encrypted: s.encrypted(),
        has_signatures: s.signatures.is_some(),
    }
}

/// The chains and sets of the destination.
pub fn status(ctx: &Context) -> Result<Status> {
    let listing = ctx.store.list()?;
    let coll = Collection::from_listing(listing.iter().map(|o| (o.name.clone(), o.size)));
    let latest_end = coll.latest_chain().map(|c| c.end());
    Ok(Status {
        destination: ctx.store.label().to_string(),
        chains: coll
            .chains
            .iter()
            .map(|c| ChainSummary {
                start: c.start(),
                end: c.end(),
                primary: Some(c.end()) == latest_end && c.has_all_signatures(),
                sets: c.sets().map(summarize).collect(),
            })
            .collect(),
        orphaned: coll.orphaned.iter().map(summarize).collect(),
        incomplete: coll.incomplete.iter().map(summarize).collect(),
    })
}

fn human_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%a %b %e %H:%M:%S %Y")
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

impl Status {
    /// Text in the spirit of `duplicity collection-status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("Collection Status\n-----------------\n");
        out.push_str(&format!("Destination: {}\n\n", self.destination));
        let secondary = self.chains.iter().filter(|c| !c.primary).count();
        out.push_str(&format!("Found {secondary} secondary backup chain(s).\n"));
        for c in &self.chains {
            out.push_str(if c.primary {
                "Found primary backup chain with matching signature chain:\n"
            } else {
                "Secondary chain:\n"
            });
            out.push_str("-------------------------\n");
            out.push_str(&format!("Chain start time: {}\n", human_time(c.start)));
            out.push_str(&format!("Chain end time: {}\n", human_time(c.end)));
            out.push_str(&format!(
                "Number of contained backup sets: {}\n",
                c.sets.len()
            ));
            out.push_str(&format!(
                "Total number of contained volumes: {}\n",
                c.sets.iter().map(|s| s.volumes).sum::<usize>()
            ));
            out.push_str(" Type of backup set:                            Time:      Num volumes:       Bytes:\n");
            for s in &c.sets {
                out.push_str(&format!(
                    "{:>20} {:>32} {:>17} {:>12}\n",
                    if s.kind == "full" {
                        "Full"
                    } else {
                        "Incremental"
                    },
                    human_time(s.time),
                    s.volumes,
                    s.bytes
                ));
            }
            out.push_str("-------------------------\n");
        }
        if self.chains.is_empty() {
            out.push_str("No backup chains found.\n");
        }
        if self.orphaned.is_empty() && self.incomplete.is_empty() {
            out.push_str("No orphaned or incomplete backup sets found.\n");
        }
        for s in &self.orphaned {
            out.push_str(&format!(
                "Orphaned {} set ({}), not part of any chain: never restored.\n",
                s.kind,
                format_time(s.time)
            ));
        }
        for s in &self.incomplete {
            out.push_str(&format!(
                "Incomplete {} set ({}, {} volume(s), no manifest): left by an interrupted backup; \
                 never restored; `cleanup --force` deletes it.\n",
                s.kind,
                format_time(s.time),
                s.volumes
            ));
        }
        out
    }
}

/// A path of the backup at a time.
#[derive(Clone, Debug, Serialize)]
pub struct ListedPath {
    /// The path (lossy UTF-8 in JSON; see `path_bytes` for the raw bytes).
    pub path: String,
    #[serde(skip)]
    pub path_bytes: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: String,
    pub uid: u64,
    pub gid: u64,
    pub user: String,
    pub group: String,
    pub mtime: i64,
    /// Regular files: the size range the stored librsync signature allows (it holds one
    /// checksum pair per block, so the size is known to within one block; equal for
    /// empty files). Exact sizes are only in the volumes, which a listing does not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_min: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Regular => "file",
        FileKind::Directory => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::CharDevice => "char",
        FileKind::BlockDevice => "block",
    }
}

/// The plaintext signature files of `sets` (oldest first), from the local cache where
/// it has them, else downloaded and decrypted.
pub fn signature_sources<'a>(
    ctx: &Context,
    sets: impl IntoIterator<Item = &'a BackupSet>,
    keys: &DecryptionKeys,
) -> Result<Vec<(String, Box<dyn Read + Send>)>> {
    let cache = ArchiveCache::open(&ctx.state_dir, ctx.store.label()).ok();
    let mut sources: Vec<(String, Box<dyn Read + Send>)> = Vec::new();
    for s in sets {
        let cached = cache
            .as_ref()
            .map(|c| c.sigtar_path(s.times))
            .filter(|p| p.exists());
        if let Some(p) = cached {
            let f = std::fs::File::open(&p).map_err(|e| EngineError::io(&p, e))?;
            sources.push((
                p.display().to_string(),
                Box::new(std::io::BufReader::new(f)),
            ));
            continue;
        }
        let obj = s.signatures.as_ref().ok_or_else(|| {
            EngineError::NoBackup(format!("the {} set has no signature file", s.times))
        })?;
        let (r, _) = open_object(&ctx.store, obj, keys)?;
        sources.push((obj.name.clone(), r));
    }
    Ok(sources)
}

/// Every path of the backup at `time`, from the signature files (cached ones first, so
/// no key is needed on the host that made the backups).
pub fn list(
    ctx: &Context,
    time: i64,
    keys: &DecryptionKeys,
    mut each: impl FnMut(ListedPath),
) -> Result<i64> {
    let listing = ctx.store.list()?;
    let coll = Collection::from_listing(listing.iter().map(|o| (o.name.clone(), o.size)));
    let chain = coll.chain_for_time(time)?;
    let sets = chain.sets_until(time);
    let sources = signature_sources(ctx, sets.iter().copied(), keys)?;
    let mut state = SignatureState::open(sources)?;
    while let Some(e) = state.next_entry()? {
        let bounds = e
            .signature
            .as_deref()
            .and_then(flotilla_common::archive::rsync::size_bounds);
        each(ListedPath {
            path: e.index.display(),
            path_bytes: if e.index.is_root() {
                b".".to_vec()
            } else {
                e.index.as_bytes().to_vec()
            },
            kind: kind_name(e.meta.kind),
            mode: format!("{:04o}", e.meta.perms),
            uid: e.meta.uid,
            gid: e.meta.gid,
            user: String::from_utf8_lossy(&e.meta.uname).into_owned(),
            group: String::from_utf8_lossy(&e.meta.gname).into_owned(),
            mtime: e.meta.mtime,
            size_min: bounds.map(|b| b.0),
            size_max: bounds.map(|b| b.1),
            link_target: (e.meta.kind == FileKind::Symlink)
                .then(|| String::from_utf8_lossy(&e.meta.link_target).into_owned()),
        });
    }
    Ok(sets.last().map(|s| s.times.end()).unwrap_or(time))
}

impl ListedPath {
    /// One line like `duplicity list-current-files` (time, then the raw path bytes).
    pub fn render_bytes(&self) -> Vec<u8> {
        let mut v = format!("{} ", human_time(self.mtime)).into_bytes();
        v.extend_from_slice(&self.path_bytes);
        v
    }
}
