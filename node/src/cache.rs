//! The node's object cache: verified blobs in a folder, named by their printable ids, that
//! survives the node (a restarted node announces what it still holds). Files enter it only by
//! rename from a temporary file whose bytes were hashed, so a half-written object is never
//! visible under its id. Cached files are read-only (mode 0555): sandboxes hard-link them as
//! inputs rather than copying them.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thunkmesh_protocol::Id;

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
    index: Mutex<HashSet<Id>>,
    next_tmp: AtomicU64,
}

impl Cache {
    /// Opens (or creates) the cache in `dir` and indexes what it holds.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
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
        let mut index = HashSet::new();
        for entry in std::fs::read_dir(&objects).map_err(io(&objects))? {
            let entry = entry.map_err(io(&objects))?;
            let path = entry.path();
            let id = entry.file_name().to_str().and_then(|n| n.parse::<Id>().ok());
            let meta = entry.metadata().ok();
            match id {
                Some(id) if meta.as_ref().is_some_and(|m| m.is_file() && m.len() == id.size) => {
                    if meta.is_some_and(|m| m.permissions().mode() & 0o777 != READ_ONLY) {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(READ_ONLY))
                            .map_err(io(&path))?;
                    }
                    index.insert(id);
                }
                _ => std::fs::remove_file(&path).map_err(io(&path))?,
            }
        }
        Ok(Cache { objects, tmp, work, index: Mutex::new(index), next_tmp: AtomicU64::new(0) })
    }

    /// Every object held.
    pub fn inventory(&self) -> Vec<Id> {
        self.lock().iter().copied().collect()
    }

    /// Whether the object is held.
    pub fn has(&self, id: Id) -> bool {
        self.lock().contains(&id)
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
        self.lock().remove(&id);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Id>> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let cache = Arc::new(Cache::open(dir.path()).expect("open"));
        let tmp = cache.temp_path();
        tokio::fs::write(&tmp, b"kept").await.expect("write");
        let id = cache.adopt_hashed(&tmp).await.expect("adopt");
        assert_eq!(id, Id::of_blob(b"kept"));
        std::fs::write(dir.path().join("objects/not-an-id"), b"junk").expect("write junk");
        std::fs::write(dir.path().join("objects").join(Id::of_blob(b"longer").to_string()), b"short").expect("write");
        let reopened = Cache::open(dir.path()).expect("reopen");
        assert_eq!(reopened.inventory(), vec![id]);
        assert!(!dir.path().join("objects/not-an-id").exists());
    }
}
