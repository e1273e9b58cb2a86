//! Sets and chains from a listing of object names (duplicity-format.md §7).

use super::names::{ObjectKind, ObjectName, SetTimes};
use std::collections::BTreeMap;

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub name: String,
    pub size: u64,
    pub parsed: ObjectName,
}

/// The objects of one backup run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSet {
    pub times: SetTimes,
    pub volumes: BTreeMap<u32, StoredObject>,
    pub manifest: Option<StoredObject>,
    pub signatures: Option<StoredObject>,
    /// Names that clash (two objects for the same volume number, e.g. `.gpg` and `.gz`).
    pub duplicates: Vec<String>,
}

impl BackupSet {
    fn new(times: SetTimes) -> Self {
        BackupSet {
            times,
            volumes: BTreeMap::new(),
            manifest: None,
            signatures: None,
            duplicates: Vec::new(),
        }
    }

    /// A set is complete, and usable, only once its manifest is stored (§7.1).
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }

    pub fn encrypted(&self) -> bool {
        self.manifest
            .as_ref()
            .or_else(|| self.volumes.values().next())
            .map(|o| o.parsed.encrypted)
            .unwrap_or(false)
    }

    /// Stored bytes of all its objects.
    pub fn stored_bytes(&self) -> u64 {
        self.objects().map(|o| o.size).sum()
    }

    pub fn objects(&self) -> impl Iterator<Item = &StoredObject> {
        self.volumes
            .values()
            .chain(self.manifest.iter())
            .chain(self.signatures.iter())
    }

    /// Volume numbers 1..=N without gaps (a gap means a lost volume).
    pub fn missing_volumes(&self, expected: impl IntoIterator<Item = u32>) -> Vec<u32> {
        expected
            .into_iter()
            .filter(|n| !self.volumes.contains_key(n))
            .collect()
    }
}

/// A full set and the incrementals built on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub full: BackupSet,
    pub incrementals: Vec<BackupSet>,
}

impl Chain {
    pub fn start(&self) -> i64 {
        self.full.times.end()
    }

    pub fn end(&self) -> i64 {
        self.incrementals
            .last()
            .map(|s| s.times.end())
            .unwrap_or_else(|| self.start())
    }

    pub fn sets(&self) -> impl Iterator<Item = &BackupSet> {
        std::iter::once(&self.full).chain(self.incrementals.iter())
    }

    /// The sets to restore for time `t`: the full plus incrementals ending at or
    /// before `t` (§7.4 step 2).
    pub fn sets_until(&self, t: i64) -> Vec<&BackupSet> {
        std::iter::once(&self.full)
            .chain(self.incrementals.iter().filter(|s| s.times.end() <= t))
            .collect()
    }

    /// True if every set of the chain has its signature file (the chain can be
    /// continued by an incremental; duplicity calls it "primary" when it is the last).
    pub fn has_all_signatures(&self) -> bool {
        self.sets().all(|s| s.signatures.is_some())
    }
}

/// Everything found in a destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    /// Chains in time order.
    pub chains: Vec<Chain>,
    /// Complete incrementals that fit no chain (never restored).
    pub orphaned: Vec<BackupSet>,
    /// Sets without a manifest: an interrupted backup; never used for a restore.
    pub incomplete: Vec<BackupSet>,
    /// Signature files whose set has no manifest or no volumes.
    pub stray_signatures: Vec<StoredObject>,
    /// Names we could not use (duplicity-like names with `.part` etc.).
    pub ignored: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no backup chains found")]
    Empty,
    #[error("two chains cover time {0}")]
    Ambiguous(i64),
}

impl Collection {
    /// Groups a listing of `(name, size)` into sets and chains.
    pub fn from_listing<I, S>(objects: I) -> Collection
    where
        I: IntoIterator<Item = (S, u64)>,
        S: Into<String>,
    {
        let mut sets: BTreeMap<SetTimes, BackupSet> = BTreeMap::new();
        let mut c = Collection::default();
        for (name, size) in objects {
            let name = name.into();
            let Some(parsed) = ObjectName::parse(&name) else {
                continue;
            };
            if parsed.partial {
                c.ignored.push(name);
                continue;
            }
            let set = sets
                .entry(parsed.set)
                .or_insert_with(|| BackupSet::new(parsed.set));
            let obj = StoredObject {
                name: name.clone(),
                size,
                parsed: parsed.clone(),
            };
            let slot = match parsed.kind {
                ObjectKind::Volume(n) => {
                    if set.volumes.contains_key(&n) {
                        set.duplicates.push(name);
                        continue;
                    }
                    set.volumes.insert(n, obj);
                    continue;
                }
                ObjectKind::Manifest => &mut set.manifest,
                ObjectKind::Signatures => &mut set.signatures,
            };
            if slot.is_some() {
                set.duplicates.push(name);
            } else {
                *slot = Some(obj);
            }
        }
        let mut complete: Vec<BackupSet> = Vec::new();
        for (_, set) in sets {
            if set.manifest.is_none() && set.volumes.is_empty() {
                if let Some(sig) = set.signatures {
                    c.stray_signatures.push(sig);
                }
            } else if set.is_complete() {
                complete.push(set);
            } else {
                c.incomplete.push(set);
            }
        }
        complete.sort_by_key(|s| (s.times.end(), !s.times.is_full()));
        for set in complete {
            match set.times {
                SetTimes::Full { .. } => c.chains.push(Chain {
                    full: set,
                    incrementals: Vec::new(),
                }),
                SetTimes::Incremental { start, end } => {
                    let target = c.chains.iter_mut().rev().find(|ch| {
                        ch.end() == start
                            || ch
                                .incrementals
                                .last()
                                .is_some_and(|l| l.times.start() == start && end > l.times.end())
                    });
                    match target {
                        Some(ch) if ch.end() == start => ch.incrementals.push(set),
                        Some(ch) => {
                            let replaced = ch.incrementals.pop().expect("checked above");
                            c.orphaned.push(replaced);
                            ch.incrementals.push(set);
                        }
                        None => c.orphaned.push(set),
                    }
                }
            }
        }
        c.chains.sort_by_key(|ch| ch.start());
        c
    }

    /// The chain to restore from for time `t` (§7.4 step 1).
    pub fn chain_for_time(&self, t: i64) -> Result<&Chain, SelectError> {
        let covering: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|ch| ch.start() <= t && t <= ch.end())
            .collect();
        match covering.len() {
            1 => return Ok(covering[0]),
            0 => {}
            _ => return Err(SelectError::Ambiguous(t)),
        }
        if let Some(ch) = self.chains.iter().rev().find(|ch| ch.end() < t) {
            return Ok(ch);
        }
        self.chains.first().ok_or(SelectError::Empty)
    }

    /// The most recent chain (the one a backup continues).
    pub fn latest_chain(&self) -> Option<&Chain> {
        self.chains.iter().max_by_key(|ch| ch.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::names::ObjectName;

    fn names(set: SetTimes, vols: u32, manifest: bool, sigs: bool) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        for n in 1..=vols {
            v.push((
                ObjectName::new(set, ObjectKind::Volume(n), true).format(),
                10,
            ));
        }
        if manifest {
            v.push((ObjectName::new(set, ObjectKind::Manifest, true).format(), 1));
        }
        if sigs {
            v.push((
                ObjectName::new(set, ObjectKind::Signatures, true).format(),
                1,
            ));
        }
        v
    }

    #[test]
    fn builds_chains_and_finds_orphans() {
        let f1 = SetTimes::Full { time: 100 };
        let i1 = SetTimes::Incremental {
            start: 100,
            end: 200,
        };
        let i2 = SetTimes::Incremental {
            start: 200,
            end: 300,
        };
        let f2 = SetTimes::Full { time: 400 };
        let orphan = SetTimes::Incremental {
            start: 350,
            end: 360,
        };
        let broken = SetTimes::Incremental {
            start: 400,
            end: 500,
        };
        let mut listing = Vec::new();
        listing.extend(names(f1, 2, true, true));
        listing.extend(names(i1, 1, true, true));
        listing.extend(names(i2, 1, true, true));
        listing.extend(names(f2, 3, true, true));
        listing.extend(names(orphan, 1, true, true));
        listing.extend(names(broken, 2, false, false));
        listing.push(("unrelated.txt".into(), 5));
        let c = Collection::from_listing(listing);
        assert_eq!(c.chains.len(), 2);
        assert_eq!(c.chains[0].incrementals.len(), 2);
        assert_eq!(c.chains[0].end(), 300);
        assert_eq!(c.orphaned.len(), 1);
        assert_eq!(c.incomplete.len(), 1);
        assert_eq!(c.incomplete[0].times, broken);
        assert_eq!(c.chain_for_time(250).unwrap().start(), 100);
        assert_eq!(c.chain_for_time(350).unwrap().start(), 100);
        assert_eq!(c.chain_for_time(50).unwrap().start(), 100);
        assert_eq!(c.chain_for_time(10_000).unwrap().start(), 400);
        assert_eq!(c.chains[0].sets_until(250).len(), 2);
        assert_eq!(c.latest_chain().unwrap().start(), 400);
    }

    #[test]
    fn later_incremental_with_same_start_replaces() {
        let f = SetTimes::Full { time: 100 };
        let a = SetTimes::Incremental {
            start: 100,
            end: 200,
        };
        let b = SetTimes::Incremental {
            start: 100,
            end: 250,
        };
        let mut listing = names(f, 1, true, true);
        listing.extend(names(a, 1, true, true));
        listing.extend(names(b, 1, true, true));
        let c = Collection::from_listing(listing);
        assert_eq!(c.chains[0].incrementals.len(), 1);
        assert_eq!(c.chains[0].end(), 250);
        assert_eq!(c.orphaned.len(), 1);
    }

    #[test]
    fn duplicate_volume_is_reported() {
        let f = SetTimes::Full { time: 100 };
        let mut listing = names(f, 1, true, true);
        listing.push(("duplicity-full.19700101T000140Z.vol1.difftar.gz".into(), 3));
        let c = Collection::from_listing(listing);
        assert_eq!(c.chains[0].full.duplicates.len(), 1);
    }
}
