//! Sandboxes: the working folders programs run in, one per running task, reused from task to
//! task. Inputs are hard links to the node's read-only cache, outputs leave by rename into the
//! cache, and the program's stdout and stderr go to a pipe rather than files. A thunk that only
//! writes its outputs therefore creates no file that is later deleted: ext4 slows every inode
//! allocation down while many inodes were freed in the last seconds (`recently_deleted` in its
//! allocator), and creating and removing a fresh folder with four files per task made a run of
//! 2,000 no-op thunks spend most of its time in the kernel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::warn;

/// One task's folder: the program's working directory `root/`, and beside it a shipped program.
#[derive(Debug)]
pub(crate) struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// The program's working directory, which holds its inputs and outputs.
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// An empty folder the program's private root is built in (in the program's own mount
    /// namespace, `jail.rs`: the node never sees anything there).
    pub(crate) fn jail_root(&self) -> PathBuf {
        self.dir.join("jail")
    }

    /// Where a shipped (content-addressed) program is linked.
    pub(crate) fn program(&self) -> PathBuf {
        self.dir.join("program")
    }

    /// Something that empties this sandbox from a blocking call while the task keeps its lease.
    pub(crate) fn emptier(&self) -> Emptier {
        Emptier { dir: self.dir.clone() }
    }

    fn empty(&self) -> std::io::Result<()> {
        self.emptier().empty()
    }
}

/// Empties one sandbox's folder.
#[derive(Debug)]
pub(crate) struct Emptier {
    dir: PathBuf,
}

impl Emptier {
    /// Removes everything but an empty `root/`.
    pub(crate) fn empty(&self) -> std::io::Result<()> {
        remove_all_in(&self.dir.join("root"))?;
        match std::fs::remove_file(self.dir.join("program")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Sandboxes not in use, and the folder new ones are made in.
#[derive(Debug)]
pub(crate) struct Sandboxes {
    dir: PathBuf,
    free: Mutex<Vec<Sandbox>>,
    next: AtomicU64,
}

impl Sandboxes {
    /// Sandboxes under `dir`, which must exist and be empty.
    pub(crate) fn new(dir: &Path) -> Arc<Sandboxes> {
        Arc::new(Sandboxes { dir: dir.to_owned(), free: Mutex::default(), next: AtomicU64::new(0) })
    }

    /// An empty sandbox for one task (created when no used one is free).
    pub(crate) fn take(&self) -> std::io::Result<Sandbox> {
        if let Some(free) = self.lock().pop() {
            return Ok(free);
        }
        let sandbox = Sandbox { dir: self.dir.join(self.next.fetch_add(1, Ordering::Relaxed).to_string()) };
        std::fs::create_dir_all(sandbox.root())?;
        std::fs::create_dir_all(sandbox.jail_root())?;
        Ok(sandbox)
    }

    /// Empties a sandbox and keeps it for the next task (blocking); one that cannot be emptied
    /// is removed whole.
    pub(crate) fn give_back(&self, sandbox: Sandbox) {
        match sandbox.empty() {
            Ok(()) => self.lock().push(sandbox),
            Err(e) => {
                warn!(dir = %sandbox.dir.display(), error = %e, "could not empty a sandbox; removing it");
                if let Err(e) = std::fs::remove_dir_all(&sandbox.dir) {
                    warn!(dir = %sandbox.dir.display(), error = %e, "could not remove a sandbox");
                }
            }
        }
    }

    /// Keeps a sandbox that was already emptied for the next task.
    pub(crate) fn reuse(&self, sandbox: Sandbox) {
        self.lock().push(sandbox);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sandbox>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes everything inside `dir` (symlinks are removed, never followed).
fn remove_all_in(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_sandbox_is_emptied_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("outside");
        std::fs::write(&target, b"keep").expect("write");
        let boxes = Sandboxes::new(dir.path());
        let first = boxes.take().expect("take");
        let root = first.root();
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/c"), b"x").expect("write");
        std::fs::write(first.program(), b"#!/bin/sh").expect("write");
        std::os::unix::fs::symlink(&target, root.join("link")).expect("symlink");
        let other = boxes.take().expect("take");
        assert_ne!(first.root(), other.root(), "a sandbox in use is not handed out twice");
        boxes.give_back(first);
        let again = boxes.take().expect("take");
        assert_eq!(again.root(), root);
        assert_eq!(std::fs::read_dir(&root).expect("read").count(), 0);
        assert!(!again.program().exists());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep", "the link's target is untouched");
    }
}
