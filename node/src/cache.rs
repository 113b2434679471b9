//! The node's object cache: verified blobs in a folder, named by their printable ids, that
//! survives the node (a restarted node announces what it still holds). Files enter it only by
//! rename from a temporary file whose bytes were hashed, so a half-written object is never
//! visible under its id. Cached files are read-only (mode 0555): sandboxes hard-link them as
//! inputs rather than copying them. The cache keeps to a byte budget: after each task it reports
//! (its pins released) the node calls [`Cache::evict`], which removes the least recently used
//! objects no task on the node pins while the held bytes exceed the budget (the index in
//! `lru.rs`), and tells the rendezvous which, so that the planner does not count on a copy that
//! is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thunkmesh_protocol::Id;

use crate::lru::Lru;

/// A failure of the cache's own files.
#[derive(Debug, thiserror::Error)]
#[error("cache file {path}: {source}")]
pub struct CacheError {
    /// The file.
    pub path: PathBuf,
    /// The operating system's error.
    pub source: std::io::Error,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError { path: path.to_owned(), source }
}

/// The mode of every cached file: anyone may read and execute it, nobody may write it.
const READ_ONLY: u32 = 0o555;

/// See the module documentation.
#[derive(Debug)]
pub struct Cache {
    objects: PathBuf,
    tmp: PathBuf,
    work: PathBuf,
    index: Mutex<Lru>,
    next_tmp: AtomicU64,
}

/// Objects a task needs, pinned in the cache until it ends (see [`Cache::pin`]).
#[derive(Debug)]
pub struct Pinned {
    cache: Arc<Cache>,
    ids: Vec<Id>,
}

impl Pinned {
    /// Pins more objects under the same guard.
    pub fn add(&mut self, ids: &[Id]) {
        let mut index = self.cache.lock();
        for &id in ids {
            index.pin(id);
        }
        self.ids.extend_from_slice(ids);
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut index = self.cache.lock();
        for &id in &self.ids {
            index.unpin(id);
        }
    }
}

impl Cache {
    /// Opens (or creates) the cache in `dir` and indexes what it holds, after hashing every
    /// object: a file whose bytes are not its name's (changed between runs, cut short, or put
    /// there by a program) is removed, and so is anything that is not a regular file. Holds at
    /// most `budget` bytes of objects no task pins (an inventory over it is cut down at once).
    pub fn open(dir: &Path, budget: u64) -> Result<Cache, CacheError> {
        // Sandboxed programs run in another working directory: every path must be absolute.
        let dir = &std::path::absolute(dir).map_err(io(dir))?;
        let (objects, tmp, work) = (dir.join("objects"), dir.join("tmp"), dir.join("work"));
        for d in [&objects, &tmp, &work] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        // Leftovers of a node that died mid-write or mid-run are not objects.
        for d in [&tmp, &work] {
            std::fs::remove_dir_all(d).map_err(io(d))?;
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let mut lru = Lru::new(budget);
        for id in adopt_verified(&objects)? {
            lru.insert(id);
        }
        let cache = Cache { objects, tmp, work, index: Mutex::new(lru), next_tmp: AtomicU64::new(0) };
        cache.evict();
        Ok(cache)
    }

    /// Every object held.
    pub fn inventory(&self) -> Vec<Id> {
        self.lock().ids().collect()
    }

    /// Whether the object is held.
    pub fn has(&self, id: Id) -> bool {
        self.lock().contains(id)
    }

    /// Keeps `ids` (held now, or fetched later) from eviction until the guard is dropped, and
    /// counts them as just used.
    pub fn pin(self: &Arc<Self>, ids: &[Id]) -> Pinned {
        let mut pinned = Pinned { cache: self.clone(), ids: Vec::new() };
        pinned.add(ids);
        pinned
    }

    /// Counts a held object as just used (a peer fetched it).
    pub fn touch(&self, id: Id) {
        let mut index = self.lock();
        if index.contains(id) {
            index.touch(id);
        }
    }

    /// Removes the objects no task pins, as the rendezvous asked (no thunk will read them again);
    /// returns how many went. A pinned one stays until its budget evicts it.
    pub fn discard(&self, ids: &[Id]) -> usize {
        let mut index = self.lock();
        let mut removed = 0;
        for &id in ids {
            if !index.is_pinned(id) && index.remove(id) {
                let _ = std::fs::remove_file(self.path(id));
                removed += 1;
            }
        }
        removed
    }

    /// Removes the least recently used unpinned objects while over budget; returns them. A file
    /// linked into a root tree or a sandbox keeps its bytes there; only the cache's name goes.
    pub fn evict(&self) -> Vec<Id> {
        let mut index = self.lock();
        let evicted = index.evict();
        for &id in &evicted {
            if let Err(e) = std::fs::remove_file(self.path(id)) {
                tracing::warn!(%id, error = %e, "cannot remove an evicted object");
            }
        }
        if !evicted.is_empty() {
            tracing::debug!(objects = evicted.len(), bytes = index.bytes(), "evicted to stay within the cache budget");
        }
        evicted
    }

    /// Where the object lives (whether or not it is held).
    pub fn path(&self, id: Id) -> PathBuf {
        self.objects.join(id.to_string())
    }

    /// A fresh path for a file that will enter the cache by [`Cache::adopt`].
    pub fn temp_path(&self) -> PathBuf {
        self.tmp.join(self.next_tmp.fetch_add(1, Ordering::Relaxed).to_string())
    }

    /// The folder for sandboxes, on the cache's file system (so outputs enter the cache by
    /// rename and inputs leave it by hard link); emptied when the cache is opened.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Moves a file whose bytes are `id` into the cache (the caller hashed it).
    pub async fn adopt(self: &Arc<Self>, file: &Path, id: Id) -> Result<(), CacheError> {
        let (cache, file) = (self.clone(), file.to_owned());
        tokio::task::spawn_blocking(move || cache.adopt_blocking(&file, id))
            .await
            .map_err(|e| CacheError { path: self.path(id), source: std::io::Error::other(e) })?
    }

    /// Like [`Cache::adopt`], from a blocking context. A file whose object is already held is
    /// removed instead: the cached copy may be linked into running sandboxes.
    pub fn adopt_blocking(&self, file: &Path, id: Id) -> Result<(), CacheError> {
        if self.has(id) {
            return std::fs::remove_file(file).map_err(io(file));
        }
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(READ_ONLY)).map_err(io(file))?;
        let dest = self.path(id);
        std::fs::rename(file, &dest).map_err(io(&dest))?;
        self.lock().insert(id);
        Ok(())
    }

    /// Drops an object whose file no longer holds its bytes (a program wrote to its input).
    pub fn forget(&self, id: Id) {
        self.lock().remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Hashes a file and moves it into the cache; returns its id.
    pub async fn adopt_hashed(self: &Arc<Self>, file: &Path) -> Result<Id, CacheError> {
        let id = hash_file(file).await.map_err(io(file))?;
        self.adopt(file, id).await?;
        Ok(id)
    }

    /// Copies a file into the cache without moving it (tail values stay in the sandbox).
    pub async fn copy_in(self: &Arc<Self>, file: &Path) -> Result<Id, CacheError> {
        let tmp = self.temp_path();
        tokio::fs::copy(file, &tmp).await.map_err(io(file))?;
        self.adopt_hashed(&tmp).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hashes every file in `objects`, keeps those whose bytes match their name, and removes the
/// rest (folders and links too).
fn adopt_verified(objects: &Path) -> Result<Vec<Id>, CacheError> {
    let started = std::time::Instant::now();
    let (mut index, mut bytes, mut dropped) = (Vec::new(), 0u64, 0usize);
    for entry in std::fs::read_dir(objects).map_err(io(objects))? {
        let path = entry.map_err(io(objects))?.path();
        match verified(&path) {
            Some(id) => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(READ_ONLY)).map_err(io(&path))?;
                bytes += id.size;
                index.push(id);
            }
            None => {
                dropped += 1;
                remove_any(&path).map_err(io(&path))?;
            }
        }
    }
    let elapsed = started.elapsed();
    tracing::info!(objects = index.len(), bytes, dropped, ?elapsed, "cache verified");
    Ok(index)
}

/// The id of a cached file, if it is a regular file whose bytes hash to its name.
fn verified(path: &Path) -> Option<Id> {
    let named: Id = path.file_name()?.to_str()?.parse().ok()?;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() != named.size {
        return None;
    }
    let actual = hash_file_blocking(path).ok()?;
    if actual != named {
        tracing::warn!(path = %path.display(), actual = %actual, "a cached object's bytes do not match its id; removed");
        return None;
    }
    Some(named)
}

/// Removes a file, a link or a whole folder.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path)?.is_dir() {
        true => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        false => std::fs::remove_file(path),
    }
}

/// Gives the owner write access to a folder tree (a program may have left read-only folders).
fn make_writable(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&entry.path());
        }
    }
}

/// BLAKE3 and size of a file, read in chunks.
pub async fn hash_file(path: &Path) -> std::io::Result<Id> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || hash_file_blocking(&path)).await.map_err(std::io::Error::other)?
}

/// Like [`hash_file`], from a blocking context.
pub fn hash_file_blocking(path: &Path) -> std::io::Result<Id> {
    hash_reader(&[], std::fs::File::open(path)?)
}

/// BLAKE3 and size of `head` followed by everything `rest` reads.
pub(crate) fn hash_reader(head: &[u8], rest: impl std::io::Read) -> std::io::Result<Id> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(head);
    let mut counted = CountingReader { inner: rest, bytes: head.len() as u64 };
    hasher.update_reader(&mut counted)?;
    Ok(Id::blob(*hasher.finalize().as_bytes(), counted.bytes))
}

struct CountingReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_survive_a_reopen_and_junk_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("open"));
        let tmp = cache.temp_path();
        tokio::fs::write(&tmp, b"kept").await.expect("write");
        let id = cache.adopt_hashed(&tmp).await.expect("adopt");
        assert_eq!(id, Id::of_blob(b"kept"));
        std::fs::write(dir.path().join("objects/not-an-id"), b"junk").expect("write junk");
        std::fs::write(dir.path().join("objects").join(Id::of_blob(b"longer").to_string()), b"short").expect("write");
        let reopened = Cache::open(dir.path(), u64::MAX).expect("reopen");
        assert_eq!(reopened.inventory(), vec![id]);
        assert!(!dir.path().join("objects/not-an-id").exists());
    }

    /// Issue 12, finding 2: bytes changed between runs (same size) are not served again.
    #[tokio::test]
    async fn an_object_whose_bytes_changed_between_runs_is_dropped_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("open"));
        let (tmp, other) = (cache.temp_path(), cache.temp_path());
        tokio::fs::write(&tmp, b"right").await.expect("write");
        tokio::fs::write(&other, b"other").await.expect("write");
        let id = cache.adopt_hashed(&tmp).await.expect("adopt");
        let kept = cache.adopt_hashed(&other).await.expect("adopt");
        let path = cache.path(id);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&path, b"wrong").expect("same size, other bytes");
        let reopened = Cache::open(dir.path(), u64::MAX).expect("reopen");
        assert_eq!(reopened.inventory(), vec![kept]);
        assert!(!path.exists(), "the damaged object is removed");
    }

    /// Issue 12, finding 7: a folder a program made among the objects does not stop the node.
    #[test]
    fn a_folder_among_the_objects_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Cache::open(dir.path(), u64::MAX).expect("open"));
        let junk = dir.path().join("objects/junkdir/deeper");
        std::fs::create_dir_all(&junk).expect("mkdir");
        std::fs::write(junk.join("f"), b"x").expect("write");
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let named = dir.path().join("objects").join(Id::of_blob(b"dir").to_string());
        std::fs::create_dir(&named).expect("a folder named like an object");
        let reopened = Cache::open(dir.path(), u64::MAX).expect("a folder is no reason to stop");
        assert!(reopened.inventory().is_empty());
        assert!(!dir.path().join("objects/junkdir").exists() && !named.exists());
    }
}
