//! The upload step: outputs written to the job's store in storage mode, and objects put there
//! when the rendezvous asks. A store that refuses a write is the store's fault; a node that
//! lacks the object or cannot open the store, the node's.

use thunkmesh_protocol::Ref;
use thunkmesh_protocol::wire::{
    Assignment, CARRIED_VALUE_BYTES, OutputValue, Stored, ToRendezvous, TransferStats, UploadRequest,
};
use tracing::warn;

use super::{Ctx, Fault, TaskError};
use crate::cache::Pinned;

/// Storage mode: writes every output to storage (with a tail, the tail and the files it names)
/// before the task is reported done.
pub(super) async fn store_outputs(
    ctx: &Ctx,
    a: &Assignment,
    outputs: &[(String, OutputValue)],
    stats: &mut TransferStats,
) -> Result<(), TaskError> {
    let mut blobs = Vec::new();
    for (_, value) in outputs {
        match value {
            OutputValue::Blob(id) => blobs.push(*id),
            OutputValue::Tail { blob, thunks, .. } => {
                blobs.push(*blob);
                let values = thunks.iter().flat_map(|t| t.thunk.refs());
                blobs.extend(values.filter_map(|r| if let Ref::Blob(b) = r { Some(*b) } else { None }));
            }
        }
    }
    blobs.sort();
    blobs.dedup();
    let store = ctx.store(&a.store).await.map_err(TaskError::node)?;
    let refused = |e| TaskError::new(Fault::Store, format!("cannot write an output to {}: {e}", a.store));
    for blob in blobs.into_iter().filter(|b| ctx.cache.has(*b)) {
        stats.storage_puts += 1;
        store.put_file(blob, &ctx.cache.path(blob)).await.map_err(refused)?;
        stats.storage_bytes_written += blob.size;
    }
    Ok(())
}

/// Puts a cached object into storage, as the rendezvous asked; a small one's bytes go back with
/// the answer (a target the client then need not read from storage).
pub(crate) async fn upload(ctx: &Ctx, req: &UploadRequest) -> (ToRendezvous, Pinned) {
    let pinned = ctx.cache.pin(&[req.blob]);
    let mut stats = TransferStats::default();
    let (error, bytes) = match put(ctx, req, &mut stats).await {
        Ok(bytes) => (None, bytes),
        Err(e) => {
            warn!(blob = %req.blob, error = %e, "upload failed");
            (Some(e.into_wire()), None)
        }
    };
    (ToRendezvous::Stored(Stored { job: req.job, blob: req.blob, error, stats, bytes }), pinned)
}

/// Puts the object into the job's store; returns its bytes if it is small (read once, for the
/// store and the answer). A failure of the store itself is `StoreError`, naming the store and
/// the cause; a node that lacks the object, cannot read it or cannot open the store, `NodeError`.
async fn put(ctx: &Ctx, req: &UploadRequest, stats: &mut TransferStats) -> Result<Option<Vec<u8>>, TaskError> {
    if !ctx.cache.has(req.blob) {
        return Err(TaskError::node("not in this node's cache"));
    }
    let store = ctx.store(&req.store).await.map_err(TaskError::node)?;
    let path = ctx.cache.path(req.blob);
    let small = match req.blob.size <= CARRIED_VALUE_BYTES {
        true => {
            let read = tokio::fs::read(&path).await;
            Some(bytes::Bytes::from(read.map_err(|e| TaskError::node(format!("{}: {e}", path.display())))?))
        }
        false => None,
    };
    stats.storage_puts += 1;
    let written = match &small {
        Some(bytes) => store.put_blob(req.blob, bytes.clone()).await,
        None => store.put_file(req.blob, &path).await,
    };
    written.map_err(|e| TaskError::new(Fault::Store, format!("{}: {e}", req.store)))?;
    stats.storage_bytes_written += req.blob.size;
    Ok(small.map(Vec::from))
}
