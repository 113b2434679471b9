//! Hermetic toolchains: the files a modelled tool needs on a node that has none of them. For a
//! program: its file, the shared libraries the loader finds for it (`ldd`) and the loader. For a
//! C compiler driver, also its helper programs (`cc1`, `cc1plus`, `collect2`, `lto-wrapper`,
//! `as`, `ld`, the linker plugin) where the driver itself finds them (`-print-prog-name`,
//! `-print-file-name`). For a link, every file the linker opens for a program linked with the same
//! options: a stub linked with `-Wl,-t`, which prints them. Each file becomes a `.root/` input
//! of the thunk at the path the tools use (`docs/ir.md`, "Own roots"), so the tool runs on the
//! node exactly as it would here. What took programs to find is kept in the state folder, keyed
//! by the bytes of the program it was found for, so each is found once per state folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::state::{State, StateError};

/// The search path of every modelled tool on the nodes (and where its helpers are looked up).
pub(crate) const TOOL_PATH: &str = "/usr/bin:/bin";

/// The files of a thunk's own root, by their absolute paths here.
#[derive(Debug, Default, Clone)]
pub struct Root {
    files: BTreeSet<PathBuf>,
}

impl Root {
    /// The root of `files` (absolute paths here).
    pub fn of(files: impl IntoIterator<Item = PathBuf>) -> Root {
        let mut root = Root::default();
        files.into_iter().for_each(|f| root.add(&f));
        root
    }

    /// Adds `path` (lexically normalized: the tools name files like
    /// `/usr/lib/gcc/x86_64-linux-gnu/12/../../../x86_64-linux-gnu/crt1.o`).
    pub(crate) fn add(&mut self, path: &Path) {
        self.files.insert(normal(path));
    }

    /// Adds every file of `other`.
    pub(crate) fn extend(&mut self, other: &Root) {
        self.files.extend(other.files.iter().cloned());
    }

    /// The files, sorted.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(PathBuf::as_path)
    }
}

pub(crate) use thunkmesh_client::ship::normal;

/// Why a tool's hermetic root could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolchainError {
    /// The state folder, where what was found is kept.
    #[error(transparent)]
    State(#[from] StateError),
    /// A program (the driver, `ldd`) could not be started.
    #[error("cannot run {program}: {source}")]
    Run {
        /// What was run, and what for.
        program: String,
        /// Why not.
        source: std::io::Error,
    },
    /// The driver failed to answer a `-print-*` question.
    #[error("{driver} {question} failed: {stderr}")]
    Question {
        /// The driver.
        driver: String,
        /// The question.
        question: String,
        /// What it said.
        stderr: String,
    },
    /// Linking a stub to find what a link reads failed.
    #[error("linking a stub with {options} to find what the link reads failed: {stderr}")]
    Link {
        /// The link's options.
        options: String,
        /// What the driver said.
        stderr: String,
    },
    /// A program needs a shared library the loader does not find.
    #[error("{program} needs {library}, which the loader does not find")]
    MissingLibrary {
        /// The program.
        program: String,
        /// The library, as `ldd` names it.
        library: String,
    },
    /// A scratch file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A driver that does not find its LTO plugin (`gcc-ar` needs it).
    #[error("{0} does not find its LTO plugin")]
    NoLtoPlugin(String),
}

/// The root a program needs: itself, its shared libraries and their loader.
pub(crate) fn program(state: &State, path: &Path) -> Result<Root, ToolchainError> {
    let path = normal(path);
    let files = found_once(state, "program", &path, "", || {
        let mut files = vec![path.display().to_string()];
        files.extend(libraries(&path)?.iter().map(|p| p.display().to_string()));
        Ok(files)
    })?;
    let mut root = Root::default();
    files.iter().for_each(|f| root.add(Path::new(f)));
    Ok(root)
}

/// The list `find` makes for `program` (with `detail`, what else it depends on), made once: the
/// state keeps it by `what`, the program's path and id, and `detail`.
fn found_once(
    state: &State,
    what: &str,
    program: &Path,
    detail: &str,
    find: impl FnOnce() -> Result<Vec<String>, ToolchainError>,
) -> Result<Vec<String>, ToolchainError> {
    let id = state.add_system_file(program)?;
    let key = format!("{what} {} {id} {detail}", program.display());
    if let Some(kept) = state.list(&key) {
        return Ok(kept);
    }
    let found = find()?;
    state.keep_list(&key, &found)?;
    Ok(found)
}

/// The shared libraries and loader of `path`, as `ldd` finds them; none for a program that is not
/// dynamically linked (a script, a static program).
pub(crate) fn libraries(path: &Path) -> Result<Vec<PathBuf>, ToolchainError> {
    use thunkmesh_client::ship::{self, ShipError};
    ship::libraries(path).map_err(|e| match e {
        ShipError::MissingLibrary { program, library } => ToolchainError::MissingLibrary { program, library },
        ShipError::Run { program, error } => ToolchainError::Run { program, source: error },
        other => ToolchainError::Run {
            program: format!("ldd on {}", path.display()),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// The helper programs of a C compiler driver a call uses, by the names the driver knows them by.
pub(crate) fn helpers_for(compiles: &[&str], links: bool, lto: bool, fuse_ld: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    for source in compiles {
        let ext = Path::new(source).extension().and_then(|e| e.to_str()).unwrap_or_default();
        names.extend(match ext {
            "s" => &[][..],
            "cc" | "cpp" | "cxx" | "c++" | "C" | "ii" | "mm" => &["cc1plus"][..],
            _ => &["cc1"][..],
        });
        names.push("as");
    }
    if links {
        names.extend(["collect2", "lto-wrapper", "liblto_plugin.so"]);
        names.extend(lto.then_some("lto1"));
    }
    let mut names: Vec<String> = names.into_iter().map(str::to_owned).collect();
    if links {
        names.push(fuse_ld.map_or_else(|| "ld".to_owned(), |linker| format!("ld.{linker}")));
    }
    names.sort();
    names.dedup();
    names
}

/// The root of a C compiler driver's helpers `names` ([`helpers_for`]): each where the driver
/// finds it, with its libraries (the driver's own root is [`program`]'s).
pub(crate) fn driver(state: &State, driver: &Path, names: &[String]) -> Result<Root, ToolchainError> {
    let programs = found_once(state, "driver", driver, &names.join(" "), || helpers(driver, names))?;
    let mut root = Root::default();
    for helper in &programs {
        root.extend(&program(state, Path::new(helper))?);
    }
    Ok(root)
}

/// Where the driver finds each of its helpers `names` (with an absolute path), or for those it
/// leaves to the search path (`as`, `ld`), where [`TOOL_PATH`] has them; helpers it has not are
/// left out (it will not find them on the node either).
fn helpers(driver: &Path, names: &[String]) -> Result<Vec<String>, ToolchainError> {
    let mut found = Vec::new();
    for name in names {
        let question = match name.ends_with(".so") {
            true => format!("-print-file-name={name}"),
            false => format!("-print-prog-name={name}"),
        };
        found.extend(on_tool_path(&ask(driver, &question)?));
    }
    Ok(found)
}

/// What the driver answers to one `-print-*` question.
pub(crate) fn ask(driver: &Path, question: &str) -> Result<String, ToolchainError> {
    let answer = run_driver(driver, Path::new("/"), &[question.to_owned()])?;
    answer.map(|out| out.trim().to_owned()).map_err(|stderr| ToolchainError::Question {
        driver: driver.display().to_string(),
        question: question.to_owned(),
        stderr,
    })
}

/// Runs the driver with `args` in `dir`, as the models do: its standard output, or (inner error)
/// its standard error when it fails.
fn run_driver(driver: &Path, dir: &Path, args: &[String]) -> Result<Result<String, String>, ToolchainError> {
    let output = Command::new(driver)
        .args(args)
        .current_dir(dir)
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ToolchainError::Run { program: driver.display().to_string(), source })?;
    Ok(match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    })
}

/// A program the driver named: an absolute path that exists, or a bare name found on
/// [`TOOL_PATH`], as the driver will look for it on the node.
fn on_tool_path(program: &str) -> Option<String> {
    let named = Path::new(program);
    let found = match named.is_absolute() {
        true => Some(named.to_owned()),
        false => std::env::split_paths(TOOL_PATH).map(|dir| dir.join(named)).find(|p| p.is_file()),
    };
    found.filter(|p| p.is_file()).map(|p| normal(&p).display().to_string())
}

/// The options of a link that decide which of the system's files the linker reads: the
/// startup files, libgcc, the C library, and `-l`/`-L` of the system (not of the build folder).
/// `local_lib` says whether `-lNAME` is a library of the build folder, `local_dir` whether `-LDIR`
/// is a folder in it.
pub(crate) fn link_options(
    flags: &[String],
    local_lib: &dyn Fn(&str) -> bool,
    local_dir: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    const MODES: [&str; 22] = [
        "-ffast-math",
        "-Ofast",
        "-funsafe-math-optimizations",
        "-pg",
        "-p",
        "--coverage",
        "-fprofile-arcs",
        "-fopenmp",
        "-static-libstdc++",
        "-shared-libgcc",
        "-shared",
        "-static",
        "-pie",
        "-no-pie",
        "-nostdlib",
        "-nostartfiles",
        "-nodefaultlibs",
        "-pthread",
        "-r",
        "-static-libgcc",
        "-static-pie",
        "-rdynamic",
    ];
    let mut kept = Vec::new();
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let value = match flag.as_str() {
            "-l" | "-L" => it.next().map(|v| format!("{flag}{v}")),
            _ => Some(flag.clone()),
        };
        let Some(value) = value else { continue };
        let keep = match value.get(..2) {
            Some("-l") => !local_lib(&value[2..]),
            Some("-L") => !local_dir(&value[2..]),
            Some("-m") => true,
            _ => {
                MODES.contains(&value.as_str())
                    || value.starts_with("-fsanitize=")
                    || value.starts_with("-fuse-ld=")
                    || value == "-flto"
                    || value.starts_with("-flto=")
            }
        };
        if keep {
            kept.push(value);
        }
    }
    kept
}

/// The system's files a link with `options` ([`link_options`]) reads, found by linking a stub
/// program with them and `-Wl,-t`.
pub(crate) fn link(state: &State, driver: &Path, options: &[String]) -> Result<Root, ToolchainError> {
    let files = found_once(state, "link", driver, &options.join(" "), || trace_link(driver, options))?;
    let mut root = Root::default();
    files.iter().for_each(|f| root.add(Path::new(f)));
    Ok(root)
}

fn trace_link(driver: &Path, options: &[String]) -> Result<Vec<String>, ToolchainError> {
    let dir = std::env::temp_dir().join(format!("thunkmesh-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| ToolchainError::Io { path: dir.display().to_string(), source })?;
    let traced = trace_link_in(&dir, driver, options);
    let _ = std::fs::remove_dir_all(&dir);
    traced
}

fn trace_link_in(dir: &Path, driver: &Path, options: &[String]) -> Result<Vec<String>, ToolchainError> {
    let stub = dir.join("stub.c");
    std::fs::write(&stub, "int main(void) { return 0; }\n")
        .map_err(|source| ToolchainError::Io { path: stub.display().to_string(), source })?;
    let run = |args: &[&str], extra: &[String]| -> Result<String, ToolchainError> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).chain(extra.iter().cloned()).collect();
        run_driver(driver, dir, &args)?.map_err(|stderr| ToolchainError::Link { options: extra.join(" "), stderr })
    };
    run(&["-fPIC", "-c", "stub.c", "-o", "stub.o"], &[])?;
    let trace = run(&["stub.o", "-o", "stub", "-Wl,-t"], options)?;
    let mut files = BTreeSet::new();
    for line in trace.lines().map(str::trim).filter(|l| l.starts_with('/')) {
        // An archive member is printed as `archive(member)`.
        let file = line.split_once('(').map_or(line, |(archive, _)| archive);
        if Path::new(file).is_file() {
            files.insert(normal(Path::new(file)).display().to_string());
        }
    }
    // The linker also opens the libraries a shared library depends on (`libreadline.so` needs
    // `libtinfo.so.6`) to check its undefined symbols, which `-t` does not print, and which the
    // stub, linked `--as-needed`, never makes it open: the loader's answer (`ldd`) names them, at
    // the path it found and the one links lead to, so the root has them wherever ld looks.
    let shared: Vec<PathBuf> = files.iter().map(PathBuf::from).filter(|f| is_shared_library(f)).collect();
    for library in shared {
        for needed in libraries(&library).unwrap_or_default() {
            files.insert(normal(&needed).display().to_string());
            if let Ok(real) = std::fs::canonicalize(&needed) {
                files.insert(real.display().to_string());
            }
        }
    }
    Ok(files.into_iter().collect())
}

/// Whether `path` names a shared library (`libx.so`, `libx.so.6`).
fn is_shared_library(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.ends_with(".so") || name.contains(".so.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_by_name() {
        assert_eq!(
            normal(Path::new("/usr/lib/gcc/x86_64-linux-gnu/12/../../../x86_64-linux-gnu/crt1.o")),
            Path::new("/usr/lib/x86_64-linux-gnu/crt1.o")
        );
        assert_eq!(normal(Path::new("/../a/./b")), Path::new("/a/b"));
    }

    #[test]
    fn a_link_keeps_the_options_that_choose_system_files() {
        let flags: Vec<String> =
            ["-O2", "-o", "x", "-shared", "-L.", "-lz", "-l", "m", "-Wl,--as-needed", "-m64", "-fuse-ld=gold"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let (local_lib, local_dir) = (|name: &str| name == "z", |dir: &str| dir == ".");
        assert_eq!(link_options(&flags, &local_lib, &local_dir), ["-shared", "-lm", "-m64", "-fuse-ld=gold"]);
    }

    /// The C library's root holds the library, the loader, and nothing named twice.
    #[test]
    fn a_program_brings_its_libraries_and_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(dir.path()).expect("state");
        let Ok(root) = program(&state, Path::new("/bin/sh")) else { panic!("no root for /bin/sh") };
        let files: Vec<_> = root.files().map(|f| f.display().to_string()).collect();
        assert!(files.contains(&"/bin/sh".to_owned()), "{files:?}");
        assert!(files.iter().any(|f| f.contains("libc.so")), "{files:?}");
        assert!(files.iter().any(|f| f.contains("ld-linux")), "{files:?}");
        let again = program(&state, Path::new("/bin/sh")).expect("kept");
        assert_eq!(again.files().count(), files.len());
    }
}
