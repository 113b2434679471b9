//! `thunkmesh cache stats|clean`: what the state folder keeps between runs (the default store
//! with its blobs and memo entries, and the local nodes' caches), measured from the files, and
//! removing it under the state folder's lock.

use std::path::Path;

use anyhow::Context;
use thunkmesh_client::summary::bytes;

use crate::cli::{CacheArgs, CacheCommand, CleanArgs, MemoCommand};
use crate::exit::Result;
use crate::invocation::lock_state;

/// `thunkmesh memo forget --node ID`: removes the node's entries from the store's memo batches
/// (an entry downstream of one removed is not reused either: its inputs no longer resolve).
pub async fn memo(command: MemoCommand) -> Result<()> {
    let MemoCommand::Forget(args) = command;
    let prefix = crate::mesh::node_id_prefix("--node", &args.node)?;
    let store = crate::mesh::open_store(args.memo.store.as_deref(), &args.memo.state_dir, &args.memo.aws).await?;
    let produced = |r: &thunkmesh_store::MemoRecord| r.producer.is_some_and(|p| hex::encode(p).starts_with(&prefix));
    let forgotten =
        store.forget_reductions(produced).await.with_context(|| format!("forgetting in {}", store.url()))?;
    println!(
        "forgot {forgotten} memo entr{} produced by node {prefix} in {}",
        if forgotten == 1 { "y" } else { "ies" },
        store.url()
    );
    Ok(())
}

/// Files and their bytes under one folder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct Usage {
    files: u64,
    bytes: u64,
}

/// What the state folder holds.
#[derive(Debug, serde::Serialize)]
struct Stats {
    state_dir: String,
    /// Blobs in the state folder's store: inputs, targets, and outputs recorded by the memo cache.
    store_blobs: Usage,
    /// Memo entries, in their batches.
    memo_entries: u64,
    memo_batches: u64,
    /// Each local node's cache (`nodes/<n>`), and their sum.
    node_caches: Vec<(String, Usage)>,
    node_cache_total: Usage,
}

pub async fn cache(command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Stats(args) => stats(&args),
        CacheCommand::Clean(args) => clean(&args).await,
    }
}

fn stats(args: &CacheArgs) -> Result<()> {
    let dir = &args.state_dir;
    let store = dir.join("store");
    let mut node_caches = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("nodes")) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            node_caches.push((entry.file_name().to_string_lossy().into_owned(), usage(&entry.path())?));
        }
    }
    node_caches.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
    let node_cache_total = node_caches
        .iter()
        .fold(Usage::default(), |t, (_, u)| Usage { files: t.files + u.files, bytes: t.bytes + u.bytes });
    let batches = store.join("memo");
    let stats = Stats {
        state_dir: dir.display().to_string(),
        store_blobs: usage(&store.join("blobs"))?,
        memo_entries: batch_entries(&batches)?,
        memo_batches: usage(&batches)?.files,
        node_caches,
        node_cache_total,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!("state folder  {}", stats.state_dir);
    println!("store         {} blob(s), {}", stats.store_blobs.files, bytes(stats.store_blobs.bytes));
    println!("memo cache    {} entries ({} batch file(s))", stats.memo_entries, stats.memo_batches);
    for (name, u) in &stats.node_caches {
        println!("node {name:<8} {} file(s), {}", u.files, bytes(u.bytes));
    }
    println!("node caches   {} file(s), {} in all", stats.node_cache_total.files, bytes(stats.node_cache_total.bytes));
    Ok(())
}

async fn clean(args: &CleanArgs) -> Result<()> {
    let dir = &args.state_dir;
    if !dir.exists() {
        println!("nothing to clean: {} does not exist", dir.display());
        return Ok(());
    }
    let _lock = lock_state(dir).await?;
    let mut freed = remove(&dir.join("nodes"))?;
    if args.all {
        freed += remove(&dir.join("store"))?;
    }
    let what = if args.all { "the nodes' caches and the store (memo cache included)" } else { "the nodes' caches" };
    println!("removed {what} from {}: {} freed", dir.display(), bytes(freed));
    Ok(())
}

/// Removes `path` and everything under it; the bytes it held.
fn remove(path: &Path) -> Result<u64> {
    let held = usage(path)?.bytes;
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display())).map_err(Into::into)
        }
        _ => Ok(held),
    }
}

/// Regular files under `path` (none if it is missing), not following links.
fn usage(path: &Path) -> Result<Usage> {
    let mut total = Usage::default();
    let mut folders = vec![path.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", folder.display())).map_err(Into::into),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                folders.push(entry.path());
            } else if meta.is_file() {
                total.files += 1;
                total.bytes += meta.len();
            }
        }
    }
    Ok(total)
}

/// Memo entries in the batch files (`memo/*`): one `thunk <id>` line each.
fn batch_entries(folder: &Path) -> Result<u64> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Ok(0) };
    let mut count = 0;
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        count += text.lines().filter(|l| l.starts_with("thunk ")).count() as u64;
    }
    Ok(count)
}
