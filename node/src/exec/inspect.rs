//! The inspect step, after the program: an input it wrote to fails the thunk; each declared
//! output is checked to be a regular file of the sandbox, hashed and moved into the cache, or
//! parsed as a tail.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thunkmesh_protocol::Id;
use thunkmesh_protocol::job::{JobSpec, ShipSpec, SpecKind, TAIL_MARKER, is_tail};
use thunkmesh_protocol::thunk::in_root;
use thunkmesh_protocol::wire::{Assignment, OutputValue, SubmittedThunk};

use super::layout::Linked;
use super::{Ctx, TaskError, ThunkFault};
use crate::cache::{Cache, hash_reader};
use crate::sandbox::Sandbox;

/// Largest tail a thunk may write.
const MAX_TAIL_BYTES: u64 = 1 << 20;

/// Most thunks one tail may define.
const MAX_TAIL_THUNKS: usize = 10_000;

/// What the sandbox held after the program: each wanted output, and whether the sandbox was
/// emptied already (it is, unless an output is a tail whose files are still to be read).
pub(super) struct Finished {
    pub(super) outputs: Vec<(String, std::io::Result<Inspected>)>,
    pub(super) emptied: bool,
}

/// After the program, in one blocking call: fails the task (and drops the object from the cache)
/// if the program wrote to an input linked from the cache, then inspects the wanted outputs and
/// empties the sandbox when nothing in it is needed any more.
pub(super) async fn finish(
    ctx: &Ctx,
    linked: Vec<Linked>,
    root: &Path,
    wanted: Vec<String>,
    sandbox: &Sandbox,
) -> Result<Finished, TaskError> {
    let (cache, root, emptier) = (ctx.cache.clone(), root.to_owned(), sandbox.emptier());
    let work = move || {
        if let Some(path) = written_input(&cache, &linked) {
            return Err(TaskError::thunk(
                ThunkFault::ModifiedInput,
                format!("the program wrote to {path}; inputs are shared and read-only, write a new file instead"),
            ));
        }
        let outputs: Vec<_> =
            wanted.into_iter().map(|name| (name.clone(), inspect_output(&cache, &root, &name))).collect();
        let tail = outputs.iter().any(|(_, found)| matches!(found, Ok(Inspected::Tail(_))));
        let emptied = !tail && emptier.empty().is_ok();
        Ok(Finished { outputs, emptied })
    };
    tokio::task::spawn_blocking(work).await.map_err(TaskError::node)?
}

/// The first input the program wrote to, if any; such objects leave the cache. Only the linked
/// file itself counts: if the cache entry was replaced meanwhile (a concurrent fetch of the same
/// object), the program did not write it.
fn written_input(cache: &Cache, linked: &[Linked]) -> Option<String> {
    let changed = |l: &Linked| {
        let meta = std::fs::metadata(cache.path(l.blob));
        meta.is_ok_and(|m| m.ino() == l.inode && (m.len() != l.blob.size || m.modified().ok() != Some(l.mtime)))
    };
    let written: Vec<&Linked> = linked.iter().filter(|l| changed(l)).collect();
    for l in &written {
        cache.forget(l.blob);
    }
    // A root tree may link the same file: none is trusted any more.
    if !written.is_empty() {
        crate::roots::drop_all(cache);
    }
    written.first().map(|l| l.path.clone())
}

/// What an output file turned out to be.
pub(super) enum Inspected {
    /// Hashed and moved into the cache.
    Blob(Id),
    /// A tail of this many bytes, left in place to be parsed.
    Tail(u64),
}

/// Reads an output once: checks it is a regular file, recognises a tail by its first bytes, and
/// otherwise hashes it and moves it into the cache (blocking).
fn inspect_output(cache: &Cache, root: &Path, name: &str) -> std::io::Result<Inspected> {
    use std::io::Read;
    let path = &in_sandbox(root, name)?;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; TAIL_MARKER.len()];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if is_tail(&head[..filled]) {
        return Ok(Inspected::Tail(meta.len()));
    }
    let id = hash_reader(&head[..filled], file)?;
    cache.adopt_blocking(path, id).map_err(|e| e.source)?;
    Ok(Inspected::Blob(id))
}

/// The file `rel` names in the sandbox at `root`, reached through real folders only: a folder a
/// program replaced by a link (to anywhere on the node) is refused with `NotADirectory`, and so
/// is any `..` or absolute part. The node reads outputs in its own view of the file system, where
/// such a link would lead outside the sandbox.
fn in_sandbox(root: &Path, rel: &str) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut path = root.to_owned();
    let parts: Vec<Component<'_>> = Path::new(rel).components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(part) = part else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
        };
        path.push(part);
        if i + 1 < parts.len() && !std::fs::symlink_metadata(&path)?.is_dir() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
        }
    }
    Ok(path)
}

/// Parses a tail output: its values are files in the sandbox, its host programs are pinned here.
pub(super) async fn read_tail_output(
    ctx: &Ctx,
    a: &Assignment,
    root: &Path,
    name: &str,
    len: u64,
) -> Result<OutputValue, TaskError> {
    let path = &root.join(name);
    let label = format!("tail `{name}` of thunk `{}`", a.name);
    let bad = |why: String| TaskError::thunk(ThunkFault::BadTail, why);
    if len > MAX_TAIL_BYTES {
        return Err(bad(format!("{label}: larger than {MAX_TAIL_BYTES} bytes")));
    }
    let text = tokio::fs::read_to_string(path).await.map_err(|e| bad(format!("{label}: {e}")))?;
    let spec = JobSpec::parse(&text, &label, SpecKind::Tail).map_err(|e| bad(e.to_string()))?;
    if spec.thunks.len() > MAX_TAIL_THUNKS {
        return Err(bad(format!("{label}: more than {MAX_TAIL_THUNKS} thunks")));
    }
    let mut values = BTreeMap::new();
    for (value, file) in &spec.values {
        let fail = |e: &dyn std::fmt::Display| bad(format!("{label}: value `{value}`: {e}"));
        let file = in_sandbox(root, file).map_err(|e| fail(&e))?;
        if !std::fs::symlink_metadata(&file).map_err(|e| fail(&e))?.is_file() {
            return Err(bad(format!("{label}: value `{value}` is not a regular file")));
        }
        let id = ctx.cache.copy_in(&file).await.map_err(|e| fail(&e))?;
        values.insert(value.clone(), id);
    }
    let roots = shipped_roots(a, &spec).map_err(|why| bad(format!("{label}: {why}")))?;
    let mut hosts = BTreeMap::new();
    for host in spec.host_programs() {
        // A program the tail's thunks ship is pinned by the blob they ship, not by this node's file.
        let id = match roots.values().find_map(|root| root.get(host)) {
            Some(id) => *id,
            None => {
                ctx.host_pin(Path::new(host)).await.map_err(|e| bad(format!("{label}: host program {host}: {e}")))?
            }
        };
        hosts.insert(host.to_owned(), id);
    }
    let resolved = spec.resolve_shipped(&values, &hosts, &roots).map_err(|e| bad(format!("{label}: {e}")))?;
    let blob = ctx.cache.adopt_hashed(path).await.map_err(TaskError::node)?;
    let thunks = resolved.thunks.into_iter().map(|t| SubmittedThunk { name: t.name, thunk: t.thunk }).collect();
    let result = resolved.result.ok_or_else(|| bad(format!("{label}: no result")))?;
    Ok(OutputValue::Tail { blob, thunks, result })
}

/// What each thunk of a tail ships: the files of the own root of the thunk that wrote it (`a`)
/// at or under each path its `ship` names, by thunk name.
fn shipped_roots(a: &Assignment, spec: &JobSpec) -> Result<BTreeMap<String, BTreeMap<String, Id>>, String> {
    let mut roots = BTreeMap::new();
    if spec.thunks.iter().all(|t| t.ship.is_empty()) {
        return Ok(roots);
    }
    let program = usize::from(matches!(a.thunk.program, thunkmesh_protocol::Program::Ref(_)));
    let blobs = a.thunk.inputs.keys().zip(a.resolved.iter().skip(program));
    let writer: BTreeMap<&str, Id> = blobs.filter_map(|(path, blob)| Some((in_root(path)?, *blob))).collect();
    for thunk in spec.thunks.iter().filter(|t| !t.ship.is_empty()) {
        let mut root = BTreeMap::new();
        for item in &thunk.ship {
            let ShipSpec::Path(shipped) = item else {
                return Err(format!("thunk `{}` ships a Python interpreter: a tail ships by path", thunk.name));
            };
            let under = |path: &str| shipped == "/" || path == shipped || path.starts_with(&format!("{shipped}/"));
            let held: Vec<(String, Id)> =
                writer.iter().filter(|(path, _)| under(path)).map(|(path, blob)| ((*path).to_owned(), *blob)).collect();
            if held.is_empty() {
                return Err(format!(
                    "thunk `{}` ships `{shipped}`, which the writer's own root does not hold",
                    thunk.name
                ));
            }
            root.extend(held);
        }
        roots.insert(thunk.name.clone(), root);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output is read only through real folders of the sandbox: `..`, an absolute path, or a
    /// folder the program replaced by a link (to anywhere) is refused, as not a folder.
    #[test]
    fn an_output_is_reached_through_real_folders_of_the_sandbox_only() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("out/sub")).expect("folders");
        std::os::unix::fs::symlink("/etc", root.path().join("linked")).expect("link");
        let reached = in_sandbox(root.path(), "out/sub/o.txt").expect("a real folder");
        assert_eq!(reached, root.path().join("out/sub/o.txt"));
        for refused in ["../o.txt", "/etc/passwd", "out/../../o.txt", "linked/passwd"] {
            let e = in_sandbox(root.path(), refused).expect_err(refused);
            assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory, "{refused}");
        }
    }

    /// A tail is recognised by its first bytes; any other output is hashed into the cache.
    #[test]
    fn an_output_is_a_tail_by_its_first_bytes_and_otherwise_a_cached_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("cache"), 1 << 30).expect("cache");
        let root = dir.path().join("sandbox");
        std::fs::create_dir_all(&root).expect("sandbox");
        std::fs::write(root.join("plain"), b"plain bytes").expect("write");
        std::fs::write(root.join("tail"), format!("{TAIL_MARKER}\n")).expect("write");
        let Ok(Inspected::Blob(id)) = inspect_output(&cache, &root, "plain") else { panic!("a blob") };
        assert_eq!(id, Id::of_blob(b"plain bytes"));
        assert!(cache.has(id), "moved into the cache");
        assert!(matches!(inspect_output(&cache, &root, "tail"), Ok(Inspected::Tail(_))));
        let missing = inspect_output(&cache, &root, "absent").map(|_| ()).expect_err("absent");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
