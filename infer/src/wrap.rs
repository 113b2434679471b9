//! The generic model (gg's `model-generic`): a call of any program whose inputs and outputs the
//! user names becomes one thunk. The sandbox mirrors the build folder: an input `src/a.txt` is at
//! `src/a.txt` in the sandbox, and the program starts in the sandbox's copy of the folder the
//! call ran in (its top, or `src/` for a call a recursive make made there), so relative paths in
//! the arguments, `../include/a.h` too, mean what they meant in the build. An input that is a placeholder
//! refers to the output it stands for; any other file is recorded by its bytes. The program
//! travels by its bytes too (found on `PATH` like a shell finds it), or is an earlier output.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use thunkmesh_protocol::thunk::{ROOT_DIR, STDOUT_OUTPUT, ThunkError};
use thunkmesh_protocol::{Id, Program, Ref, Thunk};

use crate::placeholder::Placeholder;
use crate::state::{State, StateError};
use crate::toolchain::Root;

/// Why a call could not be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// An input or output is not inside the build folder.
    #[error("{path}: an {what} must be inside the build folder {cwd}")]
    Outside { what: &'static str, path: String, cwd: String },
    /// An output's folder is a link (or inside one) that leads out of the build folder.
    #[error("{path}: an output may not be written through a link out of the build folder (to {target})")]
    ThroughLink { path: String, target: String },
    /// The program is not on `PATH`.
    #[error("program `{0}` is not on PATH")]
    NotOnPath(String),
    /// A file could not be read, or a placeholder written.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The program is not an executable file.
    #[error("{0}: is not an executable file")]
    NotExecutable(String),
    /// The inputs and outputs do not make a valid thunk (for example, two of them overlap).
    #[error("not a valid thunk: {0}")]
    Thunk(#[from] ThunkError),
    /// The state folder failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The placeholders a tool reads could not be forced first.
    #[error("forcing the built files it reads failed: {0}")]
    Forcing(String),
    /// The tool's own root could not be made.
    #[error("cannot make the tool's hermetic root ({0}); `infer --toolchain host` runs the nodes' own tools instead")]
    Toolchain(#[from] crate::toolchain::ToolchainError),
}

/// One call to record.
#[derive(Debug, Clone)]
pub struct Wrap<'a> {
    /// The build folder, which the sandbox mirrors: every input and output is inside it.
    pub top: &'a Path,
    /// The folder the call runs in, `top` or a folder inside it: relative paths are relative to
    /// it, and the program starts in its copy.
    pub cwd: &'a Path,
    /// The program's standard output is its result (the output `stdout`).
    pub stdout: bool,
    /// The program, by path, or by name looked up on `path`.
    pub program: &'a OsStr,
    /// Its arguments after argv\[0\].
    pub args: &'a [String],
    /// The files it reads.
    pub inputs: &'a [PathBuf],
    /// The files it writes.
    pub outputs: &'a [PathBuf],
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// Its time limit.
    pub timeout: Duration,
    /// The mode the outputs' placeholders (and so the forced files) get.
    pub mode: u32,
    /// The search path for a program given by name (`PATH`).
    pub path: Option<&'a OsStr>,
    /// How the program reaches the nodes.
    pub run: Run,
}

/// How a recorded program reaches the nodes.
#[derive(Debug, Clone)]
pub enum Run {
    /// By its bytes, like an input (the generic model's default).
    Shipped,
    /// As a host program pinned by its hash: the node runs its own copy, which must have the same
    /// bytes.
    Host,
    /// As a host program of the thunk's own root, which holds it and these files of this machine
    /// (a hermetic toolchain): the node needs none of them.
    Rooted(Root),
}

/// Records `call` as a thunk in `state`, writes a placeholder for each output, and returns the
/// thunk's id.
pub fn wrap(state: &State, call: &Wrap<'_>) -> Result<Id, WrapError> {
    let path = find_program(call.cwd, call.program, call.path)?;
    let mut inputs = BTreeMap::new();
    let program = match &call.run {
        Run::Host => {
            let pin = thunkmesh_client::hash_file(&path)
                .map_err(|error| WrapError::Io { path: path.display().to_string(), error })?;
            Program::Host { path: path.display().to_string(), pin }
        }
        Run::Rooted(root) => {
            let path = crate::toolchain::normal(&path);
            let mut pin = None;
            for file in root.files().chain([path.as_path()]) {
                let id = state.add_system_file(file)?;
                pin = Some(id);
                inputs.insert(format!("{ROOT_DIR}{}", file.display()), Ref::Blob(id));
            }
            // The last file is the program itself.
            let pin = pin.map_or_else(|| state.add_system_file(&path), Ok)?;
            Program::Host { path: path.display().to_string(), pin }
        }
        Run::Shipped => Program::Ref(file_ref(state, &path)?),
    };
    for input in call.inputs {
        let at = sandbox_path(call.top, call.cwd, input, "input")?;
        inputs.insert(at, file_ref(state, &call.cwd.join(input))?);
    }
    let mut outputs =
        call.outputs.iter().map(|o| sandbox_path(call.top, call.cwd, o, "output")).collect::<Result<Vec<_>, _>>()?;
    if call.stdout {
        outputs.push(STDOUT_OUTPUT.to_owned());
    }
    outputs.sort();
    outputs.dedup();
    for name in outputs.iter().filter(|o| !call.stdout || o.as_str() != STDOUT_OUTPUT) {
        stays_inside(call.top, name)?;
    }
    let dir = match call.cwd == call.top {
        true => None,
        false => Some(sandbox_path(call.top, call.top, call.cwd, "folder")?),
    };
    let thunk = Thunk {
        program,
        args: call.args.to_vec(),
        env: std::sync::Arc::new(call.env.clone()),
        inputs: inputs.into(),
        outputs,
        timeout_ms: u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX).max(1),
        network: false,
        stdout: call.stdout,
        dir,
    };
    thunk.validate()?;
    let id = state.add_thunk(&thunk)?;
    for name in thunk.outputs.iter().filter(|o| !call.stdout || o.as_str() != STDOUT_OUTPUT) {
        let path = call.top.join(name);
        let placeholder = Placeholder { output: Ref::Output { thunk: id, name: name.clone() } };
        let written =
            path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| placeholder.write(&path, call.mode));
        written.map_err(|error| WrapError::Io { path: path.display().to_string(), error })?;
    }
    Ok(id)
}

/// Checks that the output `name` (a sandbox path) of the build folder `top` is written inside
/// it: its deepest existing folder, links resolved, is in `top`, links resolved.
pub(crate) fn stays_inside(top: &Path, name: &str) -> Result<(), WrapError> {
    let Ok(real_top) = std::fs::canonicalize(top) else { return Ok(()) };
    let mut folder = top.join(name);
    folder.pop();
    while !folder.exists() {
        if !folder.pop() {
            return Ok(());
        }
    }
    match std::fs::canonicalize(&folder) {
        Ok(real) if !real.starts_with(&real_top) => {
            Err(WrapError::ThroughLink { path: name.to_owned(), target: real.display().to_string() })
        }
        _ => Ok(()),
    }
}

/// What a file the call reads is: the output a placeholder stands for, or its own bytes.
pub(crate) fn file_ref(state: &State, path: &Path) -> Result<Ref, WrapError> {
    let io = |error| WrapError::Io { path: path.display().to_string(), error };
    match Placeholder::read(path).map_err(io)? {
        Some(placeholder) => Ok(placeholder.output),
        None => Ok(Ref::Blob(state.add_blob(path)?)),
    }
}

/// The executable `program` names: a path (relative to `cwd`), or a name looked up on `path` as
/// a shell would.
pub fn find_program(cwd: &Path, program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, WrapError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let named = Path::new(program);
    let found = match named.components().count() > 1 || named.is_absolute() {
        true => cwd.join(named),
        false => std::env::split_paths(path.unwrap_or_default())
            .map(|dir| cwd.join(dir).join(named))
            .find(|p| executable(p))
            .ok_or_else(|| WrapError::NotOnPath(named.display().to_string()))?,
    };
    match executable(&found) {
        true => Ok(found),
        false => Err(WrapError::NotExecutable(found.display().to_string())),
    }
}

/// The sandbox path of `path` (relative to `cwd`, or absolute; `..` resolved by name), which
/// must be inside the build folder `top`: relative, without `.` or `..`.
pub(crate) fn sandbox_path(top: &Path, cwd: &Path, path: &Path, what: &'static str) -> Result<String, WrapError> {
    let outside = || WrapError::Outside { what, path: path.display().to_string(), cwd: top.display().to_string() };
    let absolute = crate::toolchain::normal(&cwd.join(path));
    let relative = absolute.strip_prefix(crate::toolchain::normal(top)).map_err(|_| outside())?;
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(outside)?),
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    if parts.is_empty() {
        return Err(outside());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(cwd: &'a Path, inputs: &'a [PathBuf], outputs: &'a [PathBuf]) -> Wrap<'a> {
        Wrap {
            top: cwd,
            cwd,
            stdout: false,
            program: OsStr::new("sh"),
            args: &[],
            inputs,
            outputs,
            env: Default::default(),
            timeout: Duration::from_secs(60),
            mode: 0o644,
            path: Some(OsStr::new("/usr/bin:/bin")),
            run: Run::Shipped,
        }
    }

    #[test]
    fn a_call_becomes_a_thunk_whose_placeholders_chain_into_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(&dir.path().join(".thunkmesh")).expect("state");
        std::fs::write(dir.path().join("in.txt"), "words\n").expect("write");
        let (ins, outs) = ([PathBuf::from("in.txt")], [PathBuf::from("out/mid.txt")]);
        let first = wrap(&state, &call(dir.path(), &ins, &outs)).expect("wrap");
        let mid = Placeholder::read(&dir.path().join("out/mid.txt")).expect("read").expect("a placeholder");
        assert_eq!(mid.output, Ref::Output { thunk: first, name: "out/mid.txt".into() });
        let (ins, outs) = ([dir.path().join("out/mid.txt")], [PathBuf::from("last.txt")]);
        let second = wrap(&state, &call(dir.path(), &ins, &outs)).expect("wrap");
        let recorded = state.thunk(second).expect("recorded");
        assert_eq!(recorded.inputs["out/mid.txt"], mid.output);
        assert_eq!(recorded.outputs, ["last.txt"]);
    }

    /// A call a recursive make runs in `src/` reads `../include/a.h`: the sandbox mirrors the
    /// build folder, the program starts in its `src/`, and the placeholder lands where the call
    /// named it; a path above the build folder is still refused.
    #[test]
    fn a_call_in_a_subfolder_starts_there_in_a_sandbox_of_the_whole_build_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(&dir.path().join(".thunkmesh")).expect("state");
        std::fs::create_dir_all(dir.path().join("include")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("include/a.h"), "#define A 1\n").expect("write");
        let src = dir.path().join("src");
        let (ins, outs) = ([PathBuf::from("../include/a.h")], [PathBuf::from("a.o")]);
        let inside = Wrap { top: dir.path(), stdout: true, ..call(&src, &ins, &outs) };
        let id = wrap(&state, &inside).expect("wrap");
        let recorded = state.thunk(id).expect("recorded");
        assert_eq!(recorded.dir.as_deref(), Some("src"));
        assert_eq!(recorded.inputs.keys().collect::<Vec<_>>(), ["include/a.h"]);
        assert_eq!(recorded.outputs, ["src/a.o", STDOUT_OUTPUT]);
        assert!(recorded.stdout);
        assert!(Placeholder::is_at(&src.join("a.o")) && !dir.path().join(STDOUT_OUTPUT).exists());
        let above = [PathBuf::from("../../x")];
        let e = wrap(&state, &Wrap { top: dir.path(), ..call(&src, &above, &outs) }).expect_err("above");
        assert!(e.to_string().starts_with("../../x: an input must be inside the build folder"), "{e}");
    }

    #[test]
    fn paths_outside_the_build_folder_and_missing_programs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(&dir.path().join(".thunkmesh")).expect("state");
        for bad in ["../x", "/etc/x", "a/../../x", "."] {
            let outs = [PathBuf::from(bad)];
            let e = wrap(&state, &call(dir.path(), &[], &outs)).expect_err("outside").to_string();
            assert!(e.starts_with(&format!("{bad}: an output must be inside the build folder")), "{e}");
        }
        let outs = [PathBuf::from("o")];
        let mut missing = call(dir.path(), &[], &outs);
        missing.program = OsStr::new("no-such-program-here");
        let e = wrap(&state, &missing).expect_err("not on PATH").to_string();
        assert_eq!(e, "program `no-such-program-here` is not on PATH");
        assert!(!dir.path().join("o").exists(), "nothing is written for a refused call");
    }

    /// `lnk` is a link to a folder outside the build folder: an output under it is refused, and
    /// nothing is written there.
    #[test]
    fn an_output_is_never_written_through_a_link_out_of_the_build_folder() {
        let (dir, outside) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let state = State::open(&dir.path().join(".thunkmesh")).expect("state");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("lnk")).expect("symlink");
        std::fs::create_dir(dir.path().join("inside")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("inside"), dir.path().join("near")).expect("symlink");
        for bad in ["lnk/y.txt", "lnk/deeper/y.txt"] {
            let outs = [PathBuf::from(bad)];
            let e = wrap(&state, &call(dir.path(), &[], &outs)).expect_err("through a link").to_string();
            assert!(e.starts_with(&format!("{bad}: an output may not be written through a link out")), "{e}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).expect("read_dir").count(), 0, "nothing outside");
        let outs = [PathBuf::from("near/y.txt")];
        wrap(&state, &call(dir.path(), &[], &outs)).expect("a link within the build folder is fine");
    }
}
