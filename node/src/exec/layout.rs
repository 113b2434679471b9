//! The lay-out step: the program and the inputs linked (or copied) from the cache into the
//! sandbox, the folders of the outputs made, a host program checked against its pin. What fails
//! here is the node's fault.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::SystemTime;

use thunkmesh_protocol::thunk::in_root;
use thunkmesh_protocol::wire::Assignment;
use thunkmesh_protocol::{Id, Program};

use super::{Ctx, TaskError};
use crate::cache::Cache;
use crate::jail::Jail;
use crate::sandbox::Sandbox;

/// An input hard-linked from the cache: its file (inode) and modification time when linked.
pub(super) struct Linked {
    pub(super) blob: Id,
    pub(super) path: String,
    pub(super) inode: u64,
    pub(super) mtime: SystemTime,
}

/// Lays out the sandbox (the shipped program, the inputs) in one blocking call, which also checks
/// a host program against its pin; returns the path of the program to run and the inputs that
/// were linked rather than copied.
pub(super) async fn place_inputs(ctx: &Ctx, a: &Assignment, sandbox: &Sandbox) -> Result<Placed, TaskError> {
    let root = sandbox.root();
    let mut resolved = a.resolved.iter().copied();
    let mut places = Vec::with_capacity(a.thunk.inputs.len() + 1);
    let shipped = matches!(a.thunk.program, Program::Ref(_));
    let (program, host) = match &a.thunk.program {
        Program::Ref(_) => {
            let blob = resolved.next().ok_or_else(|| TaskError::node("no blob for the program"))?;
            places.push((blob, "the program".to_owned(), sandbox.program()));
            (sandbox.program(), None)
        }
        // A program of the thunk's own root was checked against its pin with the thunk (it is
        // one of the inputs, which are verified like any other).
        Program::Host { path, .. } if a.thunk.has_root() => (PathBuf::from(path), None),
        Program::Host { path, pin } => (PathBuf::from(path), Some((PathBuf::from(path), *pin))),
    };
    let namespaces = ctx.jail.as_deref().map(Jail::isolation) == Some(&crate::jail::Isolation::Namespaces);
    // The files of an own root go to the node's tree of that root, made once (`roots.rs`).
    let mut root_files = Vec::new();
    for (path, blob) in a.thunk.inputs.keys().zip(resolved) {
        match in_root(path) {
            Some(file) => root_files.push((file.trim_start_matches('/').to_owned(), blob)),
            None => places.push((blob, format!("input `{path}`"), root.join(path))),
        }
    }
    let start_folder = a.thunk.dir.as_ref().map(|dir| root.join(dir));
    let output_folders: Vec<PathBuf> = a
        .thunk
        .outputs
        .iter()
        .filter_map(|o| Some(root.join(o).parent()?.to_owned()))
        .filter(|f| *f != root)
        .chain(start_folder)
        .collect();
    let (cache, pins) = (ctx.cache.clone(), ctx.host_pins.clone());
    let nobody = ctx.jail.as_deref().is_some_and(Jail::as_nobody).then_some(root.clone());
    let layout = move || -> Result<(Vec<Linked>, Started), TaskError> {
        if let Some((path, pin)) = host {
            let shown = path.display();
            let actual = pins.pin(&path).map_err(|e| TaskError::node(format!("host program {shown}: {e}")))?;
            if actual != pin {
                return Err(TaskError::node(format!(
                    "host program {shown} on this node is {actual}, the job pinned {pin}"
                )));
            }
        }
        let linked = link_inputs(&cache, places).map_err(TaskError::node)?;
        let own_root = match root_files.is_empty() {
            true => None,
            false => Some(crate::roots::tree(&cache, &root_files).map_err(TaskError::node)?),
        };
        // Without namespaces, the root's own loader starts the program (`loader.rs`).
        let started = match (&own_root, namespaces) {
            (Some(tree), false) => {
                let target = match shipped {
                    true => program.clone(),
                    false => tree.join(program.strip_prefix("/").unwrap_or(&program)),
                };
                let (loader, prefix) =
                    crate::loader::command(tree, &target, &program.display().to_string()).map_err(|why| {
                        TaskError::node(format!(
                            "the thunk brings its own root, and this node has no namespaces to give it one: {why}"
                        ))
                    })?;
                Started { program: loader, prefix, shipped: false, own_root: None }
            }
            _ => Started { program: program.clone(), prefix: Vec::new(), shipped, own_root },
        };
        // The folders of the declared outputs (and the one it starts in) exist, as they did
        // where the call was recorded.
        for folder in &output_folders {
            std::fs::create_dir_all(folder).map_err(TaskError::node)?;
        }
        // The program's folders are its user's; the linked inputs stay the node's.
        if let Some(root) = &nobody {
            crate::jail::hand_over(root).map_err(TaskError::node)?;
        }
        Ok((linked, started))
    };
    let (linked, started) = tokio::task::spawn_blocking(layout).await.map_err(TaskError::node)??;
    Ok(Placed { started, linked })
}

/// A laid-out sandbox: how to start the program, and the inputs linked from the cache.
pub(super) struct Placed {
    pub(super) started: Started,
    pub(super) linked: Vec<Linked>,
}

/// How the program starts: its path, the arguments before the thunk's own, whether it is the
/// shipped program of the sandbox, and the tree of the thunk's own root to make its private root
/// of (with namespaces; without, the root's loader is the program).
pub(super) struct Started {
    pub(super) program: PathBuf,
    pub(super) prefix: Vec<String>,
    pub(super) shipped: bool,
    pub(super) own_root: Option<PathBuf>,
}

/// Hard-links (or, where that fails, copies) cached objects into a sandbox (blocking).
fn link_inputs(cache: &Cache, places: Vec<(Id, String, PathBuf)>) -> std::io::Result<Vec<Linked>> {
    let mut linked = Vec::with_capacity(places.len());
    for (blob, label, to) in places {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let from = cache.path(blob);
        let failed = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{label}: {e}"));
        if std::fs::hard_link(&from, &to).is_ok() {
            let meta = std::fs::metadata(&to).map_err(failed)?;
            let (inode, mtime) = (meta.ino(), meta.modified().map_err(failed)?);
            linked.push(Linked { blob, path: label, inode, mtime });
        } else {
            // Another file system, or too many links: a private, writable copy.
            std::fs::copy(&from, &to).map_err(failed)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).map_err(failed)?;
        }
    }
    Ok(linked)
}
