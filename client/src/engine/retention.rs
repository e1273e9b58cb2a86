//! Retention: `remove-older-than`, `remove-all-but-n-full` and `cleanup`.
//!
//! Whole chains only: an incremental depends on every set before it, so a chain is
//! deleted completely or not at all, and the latest chain (the one backups continue) is
//! never deleted. Within a set the manifest goes first, so an interrupted deletion
//! leaves an incomplete set (ignored, cleaned up later), never a "complete" set with
//! missing volumes.

use super::Context;
use super::error::Result;
use flotilla_common::archive::{BackupSet, Collection};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct RetentionPlan {
    /// Sets to delete (description), in deletion order.
    pub sets: Vec<String>,
    /// Objects to delete, in deletion order.
    pub objects: Vec<String>,
    /// Chains kept.
    pub kept_chains: usize,
    pub deleted: bool,
}

fn objects_of(set: &BackupSet) -> Vec<String> {
    let mut v: Vec<String> = set.manifest.iter().map(|o| o.name.clone()).collect();
    v.extend(set.volumes.values().map(|o| o.name.clone()));
    v.extend(set.duplicates.iter().cloned());
    v.extend(set.signatures.iter().map(|o| o.name.clone()));
    v
}

fn collection(ctx: &Context) -> Result<Collection> {
    let listing = ctx.store.list()?;
    Ok(Collection::from_listing(
        listing.iter().map(|o| (o.name.clone(), o.size)),
    ))
}

fn execute(
    ctx: &Context,
    sets: Vec<&BackupSet>,
    kept: usize,
    force: bool,
) -> Result<RetentionPlan> {
    // Newest sets first within a chain's deletion would leave a usable prefix, but we
    // delete whole chains; delete incrementals before their full.
    let mut ordered = sets;
    ordered.sort_by_key(|s| std::cmp::Reverse(s.times.end()));
    let plan = RetentionPlan {
        sets: ordered.iter().map(|s| s.times.to_string()).collect(),
        objects: ordered.iter().flat_map(|s| objects_of(s)).collect(),
        kept_chains: kept,
        deleted: force,
    };
    if force {
        for name in &plan.objects {
            match ctx.store.delete(name) {
                Ok(()) => tracing::info!("deleted {name}"),
                Err(flotilla_common::storage::StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(plan)
}

/// Deletes chains that ended before `t` (never the latest chain).
pub fn remove_older_than(ctx: &Context, t: i64, force: bool) -> Result<RetentionPlan> {
    let coll = collection(ctx)?;
    let latest = coll.latest_chain().map(|c| c.start());
    let (old, kept): (Vec<_>, Vec<_>) = coll
        .chains
        .iter()
        .partition(|c| c.end() < t && Some(c.start()) != latest);
    let sets = old.iter().flat_map(|c| c.sets()).collect();
    execute(ctx, sets, kept.len(), force)
}

/// Keeps the `n` most recent chains, deletes the rest.
pub fn remove_all_but_n_full(ctx: &Context, n: usize, force: bool) -> Result<RetentionPlan> {
    let coll = collection(ctx)?;
    let n = n.max(1);
    let mut chains: Vec<_> = coll.chains.iter().collect();
    chains.sort_by_key(|c| c.start());
    let cut = chains.len().saturating_sub(n);
    let sets = chains[..cut].iter().flat_map(|c| c.sets()).collect();
    execute(ctx, sets, chains.len() - cut, force)
}

/// Deletes incomplete sets (interrupted backups), stray signature files and upload
/// staging files (`<object>#<n>`) that a killed upload left behind.
pub fn cleanup(ctx: &Context, force: bool) -> Result<RetentionPlan> {
    // Holding this destination's lock means no backup of ours is uploading right now.
    let _lock = super::cache::ArchiveCache::open(&ctx.state_dir, ctx.store.label())?;
    let listing = ctx.store.list()?;
    let staging: Vec<String> = listing
        .iter()
        .filter(|o| {
            o.name.split_once('#').is_some_and(|(base, n)| {
                flotilla_common::archive::ObjectName::parse(base).is_some()
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .map(|o| o.name.clone())
        .collect();
    let coll = Collection::from_listing(listing.iter().map(|o| (o.name.clone(), o.size)));
    let mut plan = execute(
        ctx,
        coll.incomplete.iter().collect(),
        coll.chains.len(),
        force,
    )?;
    let strays = coll
        .stray_signatures
        .iter()
        .map(|o| o.name.clone())
        .chain(staging);
    for name in strays {
        plan.objects.push(name.clone());
        if force {
            match ctx.store.delete(&name) {
                Ok(()) | Err(flotilla_common::storage::StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(plan)
}
