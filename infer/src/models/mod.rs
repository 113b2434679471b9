//! The models `thunkmesh infer` puts on a build's `PATH`: the thunkmesh binary answers to the
//! names of the C compiler drivers, `ar`, `ranlib` and `strip`, records the thunk each call would
//! be and leaves placeholders. A call a model cannot express (a configure-style probe, a flag it
//! does not know, a file outside the build folder) runs the real tool instead, found on the
//! `PATH` the build had before, and says so once with `--verbose`.
//!
//! The tools travel with their thunks: each thunk brings its own root holding the tool, its
//! libraries and helpers, and the system headers and libraries the call reads
//! ([`crate::toolchain`]), so a node needs no compiler. With `infer --toolchain host` they run
//! as host programs pinned by their hash instead, and a node must have the same ones.

mod ar;
mod cc;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::state::State;
use crate::toolchain::{self, Root};
use crate::wrap::{Run, Wrap, WrapError, find_program, wrap};

/// The names the models answer to.
pub const MODELS: [&str; 10] = ["cc", "gcc", "g++", "c++", "clang", "clang++", "ar", "ranlib", "strip", "ld"];

/// The build's own `PATH`, before `infer` put the models first: where the real tools are. Its
/// presence tells the binary it was started as a model.
pub const REAL_PATH_ENV: &str = "THUNKMESH_REAL_PATH";

/// The build folder, where `infer` was started: calls a recursive make runs in its subfolders
/// read and write files anywhere in it.
pub const TOP_ENV: &str = "THUNKMESH_BUILD_TOP";

/// The build folder of a call made in `cwd`: where `infer` was started ([`TOP_ENV`]), else
/// `cwd` itself.
pub fn build_folder(cwd: &Path) -> PathBuf {
    std::env::var_os(TOP_ENV).map_or_else(|| cwd.to_owned(), PathBuf::from)
}

/// Set by `infer --verbose`: models say why they ran a real tool.
pub const VERBOSE_ENV: &str = "THUNKMESH_VERBOSE";

/// The environment variable that names the state folder.
pub const STATE_ENV: &str = "THUNKMESH_STATE_DIR";

/// Set to `host` by `infer --toolchain host`: tools run as the nodes' own host programs.
pub const TOOLCHAIN_ENV: &str = "THUNKMESH_TOOLCHAIN";

/// The environment every modelled tool runs with on the nodes: deterministic, and the same
/// wherever it runs.
fn tool_env() -> std::collections::BTreeMap<String, String> {
    [("PATH", crate::toolchain::TOOL_PATH), ("LC_ALL", "C"), ("SOURCE_DATE_EPOCH", "0")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What a model knows of the call it stands in for.
struct Call {
    tool: String,
    args: Vec<String>,
    /// The build folder (where `infer` was started): the sandbox mirrors it.
    top: PathBuf,
    /// Where the call runs: `top` or a folder inside it (a recursive make's).
    cwd: PathBuf,
    real_path: std::ffi::OsString,
    state: State,
}

/// What a model decided.
enum Outcome {
    /// Recorded the call's thunks (or, for `ranlib` of a placeholder, found nothing to do).
    Recorded,
    /// Cannot be expressed: run the real tool (why).
    Real(String),
}

/// Runs the model `tool` on `args`: the process's exit status.
pub fn main(tool: &str, args: Vec<String>) -> ExitCode {
    let real_path = std::env::var_os(REAL_PATH_ENV).unwrap_or_default();
    let state_dir = std::env::var_os(STATE_ENV).map_or_else(|| PathBuf::from(".thunkmesh"), PathBuf::from);
    let opened = std::env::current_dir()
        .map_err(|e| e.to_string())
        .and_then(|cwd| State::open(&state_dir).map(|state| (cwd, state)).map_err(|e| e.to_string()));
    let (cwd, state) = match opened {
        Ok(opened) => opened,
        Err(e) => return said(tool, &e, 2),
    };
    let top = build_folder(&cwd);
    let call = Call { tool: tool.to_owned(), args, top, cwd, real_path, state };
    let decided = match tool {
        "ar" => ar::ar(&call),
        "ranlib" => ar::ranlib(&call),
        "strip" => ar::strip(&call),
        "ld" => Ok(Outcome::Real("the linker is modelled through the compiler driver only".into())),
        _ => cc::cc(&call),
    };
    match decided {
        Ok(Outcome::Recorded) => ExitCode::SUCCESS,
        Ok(Outcome::Real(why)) => {
            if std::env::var_os(VERBOSE_ENV).is_some() {
                eprintln!("thunkmesh {tool}: running the real {tool}: {why}");
            }
            call.run_real()
        }
        Err(e) => said(tool, &e.to_string(), 2),
    }
}

fn said(tool: &str, what: &str, code: u8) -> ExitCode {
    eprintln!("thunkmesh {tool}: {what}");
    ExitCode::from(code)
}

impl Call {
    /// The real tool, on the build's own `PATH`.
    fn real(&self, name: &str) -> Result<PathBuf, WrapError> {
        find_program(&self.cwd, OsStr::new(name), Some(&self.real_path))
    }

    /// Runs the real tool with the call's arguments, as if no model were there.
    fn run_real(&self) -> ExitCode {
        let real = match self.real(&self.tool) {
            Ok(real) => real,
            Err(e) => return said(&self.tool, &e.to_string(), 127),
        };
        let mut command = std::process::Command::new(&real);
        command.args(&self.args).env("PATH", &self.real_path);
        match command.status() {
            Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
            Err(e) => said(&self.tool, &format!("cannot run {}: {e}", real.display()), 127),
        }
    }

    /// Records a thunk running the real `tool` with `args`, reading `inputs` and writing
    /// `outputs` (with `mode`). The tool brings its own root, which holds `system` besides the
    /// tool and its libraries (or it is the node's host program, with `--toolchain host`).
    fn record(
        &self,
        tool: &str,
        args: &[String],
        inputs: &[PathBuf],
        outputs: &[PathBuf],
        mode: u32,
        system: &Root,
    ) -> Result<(), WrapError> {
        let real = self.real(tool)?;
        let run = match self.hermetic() {
            false => Run::Host,
            true => {
                let mut root = toolchain::program(&self.state, &real).map_err(WrapError::Toolchain)?;
                root.extend(system);
                Run::Rooted(root)
            }
        };
        let call = Wrap {
            top: &self.top,
            cwd: &self.cwd,
            stdout: false,
            program: real.as_os_str(),
            args,
            inputs,
            outputs,
            env: tool_env(),
            timeout: std::time::Duration::from_secs(600),
            mode,
            path: None,
            run,
        };
        wrap(&self.state, &call).map(drop)
    }

    /// Whether the tools bring their own roots (not `--toolchain host`).
    fn hermetic(&self) -> bool {
        std::env::var(TOOLCHAIN_ENV).as_deref() != Ok("host")
    }

    /// The root of the programs `names` (looked up where the tools look them up on the nodes).
    fn programs_root(&self, names: &[&str]) -> Result<Root, WrapError> {
        let mut root = Root::default();
        for name in names {
            let path = find_program(Path::new("/"), OsStr::new(name), Some(OsStr::new(toolchain::TOOL_PATH)))?;
            root.extend(&toolchain::program(&self.state, &path).map_err(WrapError::Toolchain)?);
        }
        Ok(root)
    }

    /// Whether `path` (as the call names it) is inside the build folder.
    fn inside(&self, path: &Path) -> bool {
        crate::wrap::sandbox_path(&self.top, &self.cwd, path, "input").is_ok()
    }
}
