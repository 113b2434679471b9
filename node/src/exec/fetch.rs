//! The fetch step: every input the node lacks, from the assignment itself (a value the job
//! carries, checked against its id) or from the sources the rendezvous gave (a peer, the relay,
//! storage), in turn; an input no source gives is the input's fault, named with the reason each
//! source gave.

use std::sync::Arc;
use std::time::Instant;

use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{Assignment, Carried, Mode, Source, TransferStats};

use super::{Ctx, TaskError, micros_since};
use crate::cache::Cache;

pub(super) async fn fetch_inputs(ctx: &Ctx, a: &Assignment, stats: &mut TransferStats) -> Result<(), TaskError> {
    for value in a.carried.iter().filter(|c| !ctx.cache.has(c.blob)) {
        take_carried(&ctx.cache, value).await.map_err(|e| TaskError::input(e, vec![value.blob]))?;
    }
    // Storage mode is the baseline: every input comes from storage, cached or not.
    let wanted = a.sources.iter().filter(|s| a.mode == Mode::Storage || !ctx.cache.has(s.blob));
    let results = futures::future::join_all(wanted.map(|s| fetch_one(ctx, s.blob, &s.sources, &a.store))).await;
    let mut unavailable = Vec::new();
    let mut first_error = None;
    for (blob, result, moved) in results {
        *stats += moved;
        if let Err(e) = result {
            unavailable.push(blob);
            first_error.get_or_insert(e);
        }
    }
    let missing: Vec<Id> = a.resolved.iter().copied().filter(|b| !ctx.cache.has(*b)).collect();
    match first_error {
        None if missing.is_empty() => Ok(()),
        // The rendezvous counted on a copy this node evicted before it heard: it plans again.
        None => Err(TaskError::input(
            format!("{} input(s) are no longer in this node's cache and no source was offered", missing.len()),
            missing,
        )),
        Some(e) => Err(TaskError::input(format!("could not fetch {} input(s): {e}", unavailable.len()), unavailable)),
    }
}

/// Puts a value the assignment carried into the cache, if its bytes are the blob it names.
async fn take_carried(cache: &Arc<Cache>, value: &Carried) -> Result<(), String> {
    value.check()?;
    let tmp = cache.temp_path();
    let failed = |e: String| format!("carried value {}: {e}", value.blob);
    tokio::fs::write(&tmp, &value.bytes).await.map_err(|e| failed(format!("{}: {e}", tmp.display())))?;
    cache.adopt(&tmp, value.blob).await.map_err(|e| failed(e.to_string()))
}

/// Tries each source in turn; returns the blob, the outcome and what was moved.
async fn fetch_one(ctx: &Ctx, blob: Id, sources: &[Source], store: &str) -> (Id, Result<(), String>, TransferStats) {
    let mut moved = TransferStats::default();
    let mut errors = Vec::new();
    for source in sources {
        let outcome = match source {
            Source::Peer { addr, fingerprint } => fetch_from_peer(ctx, blob, addr, *fingerprint, &mut moved).await,
            Source::Storage => fetch_from_storage(ctx, blob, store, &mut moved).await,
            Source::Relay { node } => fetch_via_relay(ctx, blob, *node, &mut moved).await,
        };
        match outcome {
            Ok(()) => return (blob, Ok(()), moved),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        errors.push("no source offered".into());
    }
    (blob, Err(format!("{blob}: {}", errors.join("; "))), moved)
}

async fn fetch_from_peer(
    ctx: &Ctx,
    blob: Id,
    addr: &str,
    fp: [u8; 32],
    moved: &mut TransferStats,
) -> Result<(), String> {
    let addr = addr.parse().map_err(|_| format!("peer address `{addr}` is not ip:port"))?;
    let started = Instant::now();
    let bytes = ctx.peers.fetch(addr, fp, blob, &ctx.cache).await.map_err(|e| format!("peer {addr}: {e}"))?;
    moved.peer_fetches += 1;
    moved.peer_bytes += bytes;
    moved.peer_micros += micros_since(started);
    Ok(())
}

async fn fetch_via_relay(ctx: &Ctx, blob: Id, from: u64, moved: &mut TransferStats) -> Result<(), String> {
    let started = Instant::now();
    let bytes = ctx.peers.fetch_relayed(from, blob, &ctx.cache).await.map_err(|e| format!("relay: {e}"))?;
    moved.relay_fetches += 1;
    moved.relay_bytes += bytes;
    moved.relay_micros += micros_since(started);
    Ok(())
}

async fn fetch_from_storage(ctx: &Ctx, blob: Id, url: &str, moved: &mut TransferStats) -> Result<(), String> {
    let store = ctx.store(url).await.map_err(|e| e.to_string())?;
    let tmp = ctx.cache.temp_path();
    moved.storage_gets += 1;
    let started = Instant::now();
    let got = store.get_blob_to_file(blob, &tmp).await;
    moved.storage_read_micros += micros_since(started);
    match got {
        Ok(true) => {
            moved.storage_bytes_read += blob.size;
            ctx.cache.adopt(&tmp, blob).await.map_err(|e| e.to_string())
        }
        Ok(false) => Err("not in storage".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_carried_value_enters_the_cache_only_if_its_bytes_are_its_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("open"));
        let good = Carried { blob: Id::of_blob(b"seed"), bytes: b"seed".to_vec() };
        take_carried(&cache, &good).await.expect("intact");
        assert!(cache.has(good.blob));
        assert_eq!(std::fs::read(cache.path(good.blob)).expect("read"), b"seed");
        let lie = Carried { blob: Id::of_blob(b"real"), bytes: b"fake".to_vec() };
        let e = take_carried(&cache, &lie).await.expect_err("not its blob");
        assert_eq!(e, format!("carried value {}: its bytes are not that blob", lie.blob));
        assert!(!cache.has(lie.blob));
    }
}
