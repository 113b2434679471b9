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
mod args;
mod cc;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::state::State;
use crate::toolchain::{self, Root};
use crate::wrap::{Run, Wrap, WrapError, find_program, wrap};

/// The names `infer` puts on the build's `PATH`; [`model_of`] knows more (versioned and
/// target-prefixed names), which the mount namespace of `infer` catches by path.
pub const MODELS: [&str; 15] = [
    "cc", "gcc", "g++", "c++", "clang", "clang++", "ar", "ranlib", "strip", "ld", "nm", "objdump", "readelf", "size",
    "objcopy",
];

/// The model a program's file name stands for: `cc` for every C or C++ compiler driver, `ar`,
/// `ranlib`, `strip` or `ld`; a target triple before the name (`x86_64-linux-gnu-gcc`), a
/// version after it (`gcc-12`, `clang++-16`) and GCC's plugin wrappers (`gcc-ar-12`) count.
pub fn model_of(name: &str) -> Option<&'static str> {
    let unversioned = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let base = match unversioned.len() < name.len() {
        true => unversioned.strip_suffix('-')?,
        false => name,
    };
    let tool = base.rsplit('-').next().unwrap_or(base);
    match tool {
        "cc" | "gcc" | "g++" | "c++" | "clang" | "clang++" => Some("cc"),
        "ar" => Some("ar"),
        "ranlib" => Some("ranlib"),
        "strip" => Some("strip"),
        "ld" | "ld.bfd" | "ld.gold" | "ld.lld" | "ld.mold" => Some("ld"),
        "nm" | "objdump" | "readelf" | "size" | "objcopy" => Some("reader"),
        _ => None,
    }
}

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

/// Set to `relocatable` by `infer --relocatable`: outputs name the build folder as `.`, so the
/// same build in another folder has the same thunks (and shares their memo records).
pub const PATHS_ENV: &str = "THUNKMESH_PATHS";

/// The file every model appends one line to (`model`, `recorded` or `real`, and why), which
/// `infer` sums up when the build ends.
pub const CALL_LOG_ENV: &str = "THUNKMESH_CALL_LOG";

/// The environment every modelled tool runs with on the nodes: deterministic, and the same
/// wherever it runs.
/// `SOURCE_DATE_EPOCH` (which fixes `__DATE__` and `__TIME__`) is the build's own when it sets
/// one, so a build that sets it gets the bytes it would get itself; else 0.
fn tool_env() -> std::collections::BTreeMap<String, String> {
    let epoch =
        std::env::var("SOURCE_DATE_EPOCH").ok().filter(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    [
        ("PATH", crate::toolchain::TOOL_PATH.to_owned()),
        ("LC_ALL", "C".into()),
        ("SOURCE_DATE_EPOCH", epoch.unwrap_or_else(|| "0".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What a model knows of the call it stands in for.
struct Call {
    /// The model ([`model_of`]).
    model: &'static str,
    /// The real program the build called (by its path, or its name found on the build's `PATH`).
    program: PathBuf,
    /// The arguments as the build gave them.
    raw: Vec<String>,
    /// The same with `@file` response files expanded.
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

/// Runs the model for a program the build called as `invoked` (its `argv[0]`) with `args`: the
/// process's exit status.
pub fn main(invoked: &str, args: Vec<String>) -> ExitCode {
    let name = Path::new(invoked).file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let Some(model) = model_of(&name) else { return said(&name, "is not a tool thunkmesh models", 2) };
    let call = match Call::new(model, invoked, args) {
        Ok(call) => call,
        Err(e) => return said(&name, &e, 2),
    };
    let decided = match args::probe(&call.cwd, &call.args) {
        Some(why) => Ok(Outcome::Real(why)),
        None => call.decide(),
    };
    match decided {
        Ok(Outcome::Recorded) => {
            log_call(model, "recorded", "");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Real(why)) => {
            log_call(model, "real", &why);
            if std::env::var_os(VERBOSE_ENV).is_some() {
                eprintln!("thunkmesh {name}: running the real {name}: {why}");
            }
            call.run_real()
        }
        Err(e) => {
            log_call(model, "failed", &e.to_string());
            said(&name, &e.to_string(), 2)
        }
    }
}

fn said(tool: &str, what: &str, code: u8) -> ExitCode {
    eprintln!("thunkmesh {tool}: {what}");
    ExitCode::from(code)
}

/// Appends one line to the log `infer` sums up ([`CALL_LOG_ENV`]); a model started outside
/// `infer` has none.
pub fn log_call(model: &str, outcome: &str, why: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os(CALL_LOG_ENV) else { return };
    let line = format!("{model}\t{outcome}\t{}\n", why.replace(['\n', '\t'], " "));
    // One write of one line to a file opened for appending: lines of concurrent calls do not mix.
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
    if let Ok(mut file) = file {
        let _ = file.write_all(line.as_bytes());
    }
}

impl Call {
    fn new(model: &'static str, invoked: &str, raw: Vec<String>) -> Result<Call, String> {
        let real_path = std::env::var_os(REAL_PATH_ENV).unwrap_or_default();
        let state_dir = std::env::var_os(STATE_ENV).map_or_else(|| PathBuf::from(".thunkmesh"), PathBuf::from);
        let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
        let state = State::open(&state_dir).map_err(|e| e.to_string())?;
        let program = find_program(&cwd, OsStr::new(invoked), Some(&real_path)).map_err(|e| e.to_string())?;
        let args = args::expand_response_files(&cwd, &raw)?;
        Ok(Call { model, program, raw, args, top: build_folder(&cwd), cwd, real_path, state })
    }

    fn decide(&self) -> Result<Outcome, WrapError> {
        match self.model {
            "ar" => ar::ar(self),
            "ranlib" => ar::ranlib(self),
            "strip" => ar::strip(self),
            "ld" => Ok(Outcome::Real("the linker is modelled through the compiler driver only".into())),
            "reader" => self.force_what_it_reads(),
            _ => cc::cc(self),
        }
    }

    /// A tool that reads built files (`nm`, as libtool runs it to make a version script of the
    /// symbols of objects it just compiled; `objdump`, `readelf`, `size`, `objcopy`) runs for
    /// real, on the real files: the placeholders it names are forced first.
    fn force_what_it_reads(&self) -> Result<Outcome, WrapError> {
        let placeholders: Vec<PathBuf> = self
            .args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .map(|a| self.cwd.join(a))
            .filter(|p| crate::placeholder::Placeholder::is_at(p))
            .collect();
        if placeholders.is_empty() {
            return Ok(Outcome::Real("reads no placeholder".into()));
        }
        let Some(runner) = std::env::var_os(crate::placeholder::RUNNER_ENV) else {
            return Ok(Outcome::Real("reads placeholders, and no thunkmesh binary is known to force them".into()));
        };
        let forced = crate::force::force_quietly(Path::new(&runner), &placeholders)
            .map_err(|error| WrapError::Io { path: "thunkmesh force".into(), error })?;
        forced.map_err(|failed| WrapError::Forcing(failed.said.trim().to_owned()))?;
        Ok(Outcome::Real(format!("reads {} built file(s), forced first", placeholders.len())))
    }

    /// A real tool other than the one called, on the build's own `PATH`.
    fn real(&self, name: &str) -> Result<PathBuf, WrapError> {
        find_program(&self.cwd, OsStr::new(name), Some(&self.real_path))
    }

    /// Runs the real tool with the call's arguments, as if no model were there.
    fn run_real(&self) -> ExitCode {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.raw).env("PATH", &self.real_path);
        match command.status() {
            Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
            Err(e) => said(self.model, &format!("cannot run {}: {e}", self.program.display()), 127),
        }
    }

    /// Records a thunk running the real `program` with `args`, reading `inputs` and writing
    /// `outputs` (with `mode`). The tool brings its own root, which holds `system` besides the
    /// tool and its libraries (or it is the node's host program, with `--toolchain host`).
    /// Absolute paths into the build folder become paths into the sandbox ([`args::to_sandbox`]).
    fn record(
        &self,
        program: &Path,
        args: &[String],
        inputs: &[PathBuf],
        outputs: &[PathBuf],
        mode: u32,
        system: &Root,
    ) -> Result<(), WrapError> {
        let run = match self.hermetic() {
            false => Run::Host,
            true => {
                let mut root = toolchain::program(&self.state, program)?;
                root.extend(system);
                Run::Rooted(root)
            }
        };
        let args = args::to_sandbox(args, &self.top);
        let call = Wrap {
            top: &self.top,
            cwd: &self.cwd,
            stdout: false,
            program: program.as_os_str(),
            args: &args,
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

    /// Whether outputs name the build folder by its real path (the default: as the build itself
    /// names it) rather than as `.` (`--relocatable`).
    fn real_paths(&self) -> bool {
        std::env::var(PATHS_ENV).as_deref() != Ok("relocatable")
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
            root.extend(&toolchain::program(&self.state, &path)?);
        }
        Ok(root)
    }

    /// Whether `path` (as the call names it) is inside the build folder.
    fn inside(&self, path: &Path) -> bool {
        crate::wrap::sandbox_path(&self.top, &self.cwd, path, "input").is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::model_of;

    /// Owned arguments, as a process gets them.
    pub(super) fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn a_tool_is_known_by_its_name_with_a_target_and_a_version() {
        let cases = [
            ("cc", Some("cc")),
            ("x86_64-linux-gnu-gcc-12", Some("cc")),
            ("clang++-16", Some("cc")),
            ("c++", Some("cc")),
            ("gcc-ar-12", Some("ar")),
            ("x86_64-linux-gnu-ar", Some("ar")),
            ("ranlib", Some("ranlib")),
            ("x86_64-linux-gnu-ld.bfd", Some("ld")),
            ("strip", Some("strip")),
            ("cc1", None),
            ("cc1plus", None),
            ("gcc-nm-12", Some("reader")),
            ("x86_64-linux-gnu-objdump", Some("reader")),
            ("python3.11", None),
            ("thunkmesh", None),
            ("lto-dump-12", None),
        ];
        for (name, model) in cases {
            assert_eq!(model_of(name), model, "{name}");
        }
    }
}
