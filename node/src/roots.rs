//! Own roots made once per node: the files of a thunk's own root (its `.root/` inputs, a
//! toolchain) laid out as a tree of hard links to the node's verified cache, named by the hash
//! of what it holds, and bound read only into each program's private root (`jail.rs`). Every
//! compile of a build brings the same root, so laying it out per thunk made and removed ~30-100
//! links and their folders each time, and ext4 slows every folder it makes while many were
//! removed in the last seconds (`sandbox.rs`). The trees live in the cache's work folder, which
//! is emptied when the cache opens, so a tree never outlives the objects it was checked against,
//! and every tree is dropped when a cached file is found written (`exec.rs`), since a tree may
//! link that file.

use std::path::PathBuf;

use thunkmesh_protocol::Id;

use crate::cache::Cache;

/// The folder, in the cache's work folder, that holds the trees.
const ROOTS: &str = "roots";

/// The tree holding `files` (path in the root, without the leading `/`, and the blob there), made
/// now unless an earlier task made it. Every blob must be in the cache.
pub(crate) fn tree(cache: &Cache, files: &[(String, Id)]) -> std::io::Result<PathBuf> {
    let dir = cache.work_dir().join(ROOTS);
    let tree = dir.join(name(files));
    if tree.is_dir() {
        return Ok(tree);
    }
    std::fs::create_dir_all(&dir)?;
    // Built aside (the cache's temporary folder, on the same file system, emptied at opening) and
    // renamed into place, so a half-made tree is never seen under its name.
    let building = cache.temp_path();
    let built = lay_out(cache, &building, files).and_then(|()| std::fs::rename(&building, &tree));
    match built {
        Ok(()) => Ok(tree),
        // Another task made the same tree meanwhile: theirs serves.
        Err(_) if tree.is_dir() => {
            std::fs::remove_dir_all(&building)?;
            Ok(tree)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            Err(e)
        }
    }
}

/// Drops every tree (a cached file they may link was found written): the next task with a root
/// lays its tree out again from the cache. Programs running with a tree keep what they have bound.
pub(crate) fn drop_all(cache: &Cache) {
    let dir = cache.work_dir().join(ROOTS);
    // Moved aside first, so no task finds a tree while it is being removed.
    let aside = cache.temp_path();
    if std::fs::rename(&dir, &aside).is_ok()
        && let Err(e) = std::fs::remove_dir_all(&aside)
    {
        tracing::warn!(dir = %aside.display(), error = %e, "could not remove the dropped root trees");
    }
}

/// Links each of `files` from the cache to its place under `at`.
fn lay_out(cache: &Cache, at: &std::path::Path, files: &[(String, Id)]) -> std::io::Result<()> {
    for (path, blob) in files {
        let to = at.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::hard_link(cache.path(*blob), &to)
            .or_else(|_| std::fs::copy(cache.path(*blob), &to).map(drop))
            .map_err(|e| std::io::Error::new(e.kind(), format!("root file /{path}: {e}")))?;
    }
    Ok(())
}

/// The tree's name: BLAKE3 over its files' paths and ids, in order.
fn name(files: &[(String, Id)]) -> String {
    let mut hasher = blake3::Hasher::new();
    for (path, blob) in files {
        hasher.update(path.as_bytes()).update(b"\0").update(blob.to_string().as_bytes()).update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_root_is_made_once_and_holds_links_to_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = std::sync::Arc::new(Cache::open(dir.path(), u64::MAX).expect("cache"));
        let file = dir.path().join("cc");
        std::fs::write(&file, b"pretend compiler").expect("write");
        let id = cache.copy_in(&file).await.expect("adopt");
        let files = vec![("usr/bin/cc".to_owned(), id)];
        let first = tree(&cache, &files).expect("tree");
        assert_eq!(first.parent(), Some(cache.work_dir().join(ROOTS).as_path()));
        assert_eq!(std::fs::read(first.join("usr/bin/cc")).expect("read"), b"pretend compiler");
        assert_eq!(tree(&cache, &files).expect("again"), first, "made once");
        let other = tree(&cache, &[("usr/bin/c99".to_owned(), id)]).expect("other");
        assert_ne!(other, first, "another root, another tree");
        drop_all(&cache);
        assert!(!first.exists() && !other.exists(), "a written input drops every tree");
        assert_eq!(tree(&cache, &files).expect("laid out again"), first);
        let reopened = Cache::open(dir.path(), u64::MAX).expect("reopen");
        assert!(!first.exists(), "trees do not outlive the cache's opening");
        drop(reopened);
    }
}
