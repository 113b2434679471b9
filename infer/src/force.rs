//! Forcing placeholders: the recorded thunks every placeholder needs, read back from the state
//! folder, become a job whose targets are the placeholders' outputs; once it has run, each
//! result replaces its placeholder and keeps the placeholder's mode.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use thunkmesh_client::LoadedJob;
use thunkmesh_protocol::job::{NamedThunk, ResolvedJob};
use thunkmesh_protocol::{Id, Program, Ref, Thunk};

use crate::placeholder::Placeholder;
use crate::state::{State, StateError};

/// Why placeholders could not be forced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForceError {
    /// A file to force is not a placeholder.
    #[error("{0}: is not a placeholder (only files left by `thunkmesh wrap` or `infer` can be forced)")]
    NotPlaceholder(String),
    /// A file could not be read or replaced.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The state folder cannot give what a placeholder needs.
    #[error("{path}: {error}")]
    State { path: String, error: StateError },
}

/// A job that forces placeholders, and where each of its targets goes.
#[derive(Debug, Clone)]
pub struct Forcing {
    /// The job; its targets are named `0`, `1`, ... in the order of `places`.
    pub job: LoadedJob,
    /// For each target: the placeholder it replaces, and the mode the file keeps.
    pub places: Vec<(PathBuf, u32)>,
}

/// The job that forces the placeholders `files`.
pub fn forcing(state: &State, files: &[PathBuf]) -> Result<Forcing, ForceError> {
    use std::os::unix::fs::PermissionsExt;
    let mut collected = Collected::default();
    let mut targets = BTreeMap::new();
    let mut places = Vec::with_capacity(files.len());
    let mut forced_for = BTreeMap::new();
    for file in files {
        let shown = file.display().to_string();
        let io = |error| ForceError::Io { path: shown.clone(), error };
        let placeholder =
            Placeholder::read(file).map_err(io)?.ok_or_else(|| ForceError::NotPlaceholder(shown.clone()))?;
        let mode = std::fs::metadata(file).map_err(io)?.permissions().mode() & 0o7777;
        if let Ref::Output { thunk, name } = &placeholder.output {
            state.thunk_with_output(*thunk, name).map_err(|error| ForceError::State { path: shown.clone(), error })?;
        }
        collected
            .visit(state, &placeholder.output)
            .map_err(|error| ForceError::State { path: shown.clone(), error })?;
        if let Ref::Output { thunk, .. } = &placeholder.output {
            forced_for.entry(*thunk).or_insert_with(|| shown.clone());
        }
        targets.insert(places.len().to_string(), placeholder.output);
        places.push((file.clone(), mode));
    }
    // A thunk forced for a file is named after it in messages (a test's output is `stdout`).
    for thunk in &mut collected.thunks {
        if let Some(file) = forced_for.get(&thunk.id) {
            thunk.name.clone_from(file);
        }
    }
    let job = ResolvedJob { thunks: collected.thunks, targets, result: None };
    Ok(Forcing { job: LoadedJob { file: "the placeholders".into(), job, values: collected.values }, places })
}

/// The thunks (producers first) and value files a set of refs needs.
#[derive(Default)]
struct Collected {
    seen: BTreeSet<Id>,
    thunks: Vec<NamedThunk>,
    values: BTreeMap<Id, PathBuf>,
}

impl Collected {
    fn visit(&mut self, state: &State, r: &Ref) -> Result<(), StateError> {
        match r {
            Ref::Blob(id) => {
                if !self.values.contains_key(id) {
                    self.values.insert(*id, state.blob(*id)?);
                }
            }
            Ref::Output { thunk: id, .. } => {
                if self.seen.insert(*id) {
                    let thunk = state.thunk(*id)?;
                    for needed in refs(&thunk) {
                        self.visit(state, needed)?;
                    }
                    let name = thunk.outputs.first().cloned().unwrap_or_default();
                    self.thunks.push(NamedThunk { name, id: *id, thunk });
                }
            }
        }
        Ok(())
    }
}

fn refs(thunk: &Thunk) -> impl Iterator<Item = &Ref> {
    let program = match &thunk.program {
        Program::Ref(r) => Some(r),
        Program::Host { .. } => None,
    };
    program.into_iter().chain(thunk.inputs.values())
}

/// The shared libraries of the build folder `top` that the program whose placeholder is at
/// `program` was linked with and that are still placeholders, by their real paths (links
/// resolved): a program the build runs (a generator, a test driver) loads them, so they are forced
/// with it.
pub fn libraries_of(state: &State, program: &Path, top: &Path) -> Vec<PathBuf> {
    let Ok(Some(Placeholder { output: Ref::Output { thunk, .. } })) = Placeholder::read(program) else {
        return Vec::new();
    };
    let Ok(thunk) = state.thunk(thunk) else { return Vec::new() };
    let shared = |path: &&String| {
        let name = path.rsplit('/').next().unwrap_or_default();
        !path.starts_with(thunkmesh_protocol::thunk::ROOT_DIR) && (name.ends_with(".so") || name.contains(".so."))
    };
    let mut found: Vec<PathBuf> = thunk
        .inputs
        .keys()
        .filter(shared)
        .filter_map(|path| std::fs::canonicalize(top.join(path)).ok())
        .filter(|path| Placeholder::is_at(path))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// What `thunkmesh force` said when it failed to force files for a build step.
#[derive(Debug)]
pub struct ForceFailed {
    /// Its exit status.
    pub code: i32,
    /// Its standard output and standard error.
    pub said: String,
}

/// Forces `files` with `runner force --quiet FILES` (`runner` is the thunkmesh binary) for a
/// build step about to read or run them: what force says is kept, and given back only when it
/// fails (the step's standard output may be a file the build is writing, and Tcl's `exec` fails
/// on any standard error).
pub fn force_quietly(runner: &Path, files: &[PathBuf]) -> std::io::Result<Result<(), ForceFailed>> {
    let mut force = std::process::Command::new(runner);
    force.args(["force", "--quiet"]).args(files).stdin(std::process::Stdio::null());
    let out = force.output()?;
    Ok(match out.status.success() {
        true => Ok(()),
        false => Err(ForceFailed {
            code: out.status.code().unwrap_or(1),
            said: String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        }),
    })
}

/// Folders that hold a version control system's records, never a build's files.
const VCS_FOLDERS: [&str; 4] = [".git", ".hg", ".svn", ".jj"];

/// Every placeholder under `root`, outside the state folder `state` and version control folders
/// (hidden folders of a build, such as libtool's `.libs`, are searched).
pub fn placeholders_under(root: &Path, state: &Path) -> Result<Vec<PathBuf>, ForceError> {
    // Only a folder of the state folder's name can be it: the others are not resolved.
    let state_name = state.file_name().map(|n| n.to_string_lossy().into_owned());
    let state = std::fs::canonicalize(state).ok();
    let skipped = |path: &Path, name: &str| {
        let is_state = || state_name.as_deref() == Some(name) && std::fs::canonicalize(path).ok() == state;
        VCS_FOLDERS.contains(&name) || is_state()
    };
    let mut found = Vec::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        let io = |error| ForceError::Io { path: folder.display().to_string(), error };
        for entry in std::fs::read_dir(&folder).map_err(io)? {
            let entry = entry.map_err(io)?;
            let (path, kind) = (entry.path(), entry.file_type().map_err(io)?);
            if kind.is_dir() && !skipped(&path, &entry.file_name().to_string_lossy()) {
                folders.push(path);
            } else if kind.is_file() && Placeholder::is_at(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Moves each forced target from `out_dir` over its placeholder, with the placeholder's mode;
/// returns how many were there (a job that kept going past a failure leaves some out, and their
/// placeholders stay).
pub fn put_in_place(out_dir: &Path, places: &[(PathBuf, u32)]) -> Result<usize, ForceError> {
    use std::os::unix::fs::PermissionsExt;
    let mut placed = 0;
    for (index, (placeholder, mode)) in places.iter().enumerate() {
        let forced = out_dir.join(index.to_string());
        if !forced.exists() {
            continue;
        }
        placed += 1;
        let io = |error| ForceError::Io { path: placeholder.display().to_string(), error };
        std::fs::set_permissions(&forced, std::fs::Permissions::from_mode(*mode)).map_err(io)?;
        if std::fs::rename(&forced, placeholder).is_err() {
            // Another file system: copy beside the placeholder, then rename over it.
            let beside = placeholder.with_extension("thunkmesh-forced");
            std::fs::copy(&forced, &beside).map_err(io)?;
            std::fs::rename(&beside, placeholder).map_err(io)?;
            let _ = std::fs::remove_file(&forced);
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wrap::{Wrap, wrap};
    use std::ffi::OsStr;

    #[test]
    fn a_placeholder_brings_its_whole_upstream_and_other_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(&dir.path().join(".thunkmesh")).expect("state");
        std::fs::write(dir.path().join("in.txt"), "x\n").expect("write");
        let call = |ins: &[PathBuf], outs: &[PathBuf]| {
            let call = Wrap {
                top: dir.path(),
                cwd: dir.path(),
                stdout: false,
                program: OsStr::new("cp"),
                args: &[],
                inputs: ins,
                outputs: outs,
                env: BTreeMap::new(),
                timeout: std::time::Duration::from_secs(9),
                mode: 0o755,
                path: Some(OsStr::new("/usr/bin:/bin")),
                run: crate::wrap::Run::Shipped,
            };
            wrap(&state, &call).expect("wrap")
        };
        let first = call(&[PathBuf::from("in.txt")], &[PathBuf::from("a")]);
        let second = call(&[PathBuf::from("a")], &[PathBuf::from("b")]);
        let forcing = forcing(&state, &[dir.path().join("b")]).expect("forcing");
        let ids: Vec<Id> = forcing.job.job.thunks.iter().map(|t| t.id).collect();
        assert_eq!(ids, [first, second], "producers first");
        assert_eq!(forcing.places, [(dir.path().join("b"), 0o755)]);
        assert_eq!(forcing.job.values.len(), 2, "the source and the program");
        let walked = placeholders_under(dir.path(), &dir.path().join(".thunkmesh")).expect("walk");
        assert_eq!(walked, [dir.path().join("a"), dir.path().join("b")], "not the state folder's");
        let e = super::forcing(&state, &[dir.path().join("in.txt")]).expect_err("not a placeholder").to_string();
        assert!(
            e.ends_with("in.txt: is not a placeholder (only files left by `thunkmesh wrap` or `infer` can be forced)")
        );
        let other = State::open(&dir.path().join("elsewhere")).expect("state");
        let e = super::forcing(&other, &[dir.path().join("b")]).expect_err("unknown thunk").to_string();
        assert!(e.contains(&format!("b: the state folder {}", other.dir().display())), "{e}");
    }
}
