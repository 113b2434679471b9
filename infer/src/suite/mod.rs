//! Test suites one test per thunk (gg's `examples/gtest`, for CTest too): the tests of a
//! googletest binary (`gtest.rs`) or a CTest project (`ctest.rs`) are listed here, each becomes a
//! thunk whose result is what it printed, and the job's outcome becomes one verdict per test
//! ([`Report`]), printed and written as JUnit XML ([`junit`]). A test's program travels with its
//! shared libraries as its own root (`docs/ir.md`, "Own roots"), so a node needs neither the
//! build's folder nor its libraries: files its command line names (and CTest's
//! `REQUIRED_FILES`) are inputs at the paths they have here, and the test starts in its copy of
//! the folder it would start in. A test that passed is in the memo cache like any thunk, so a
//! suite that was green reruns nothing; a failed one runs again next time.

mod ctest;
mod gtest;
pub mod junit;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use thunkmesh_client::LoadedJob;
use thunkmesh_protocol::builder::{JobBuilder, ThunkBuilder};
use thunkmesh_protocol::job::JobError;
use thunkmesh_protocol::thunk::ROOT_DIR;

pub use report::{Outcome, Report, TestResult};

use crate::toolchain::{ToolchainError, normal};

/// Folders whose files every node has the same way, as the system's packages put them: a test
/// program's libraries there come along in its own root at the same path. (A library of the
/// build's own, found through a run path into the build folder, goes to [`LIBRARIES`].)
const SYSTEM: [&str; 6] = ["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/lib32/"];

/// Where a test's own root holds the libraries that are not in [`SYSTEM`] folders, found through
/// `LD_LIBRARY_PATH` (a root holds nothing under `/tmp`, where builds often are).
const LIBRARIES: &str = "/opt/thunkmesh-test/lib";

/// The most files, and bytes, of a folder that a test's command line names that come along as
/// its inputs; a larger folder is left out, and the test runs without it.
const FOLDER_FILES: usize = 2_000;
const FOLDER_BYTES: u64 = 256 << 20;

/// The shell a test runs under when its verdict is not just its exit status (CTest's
/// `WILL_FAIL`, `SKIP_RETURN_CODE`, `PASS_REGULAR_EXPRESSION`).
const SHELL: &str = "/bin/sh";

/// The line the shell prints for a test that exited with its `SKIP_RETURN_CODE`.
const SKIPPED_LINE: &str = "thunkmesh test: skipped: exit status";

/// Why a suite could not be listed or made a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuiteError {
    /// The program that lists the tests did not start.
    #[error("cannot run {program}: {error}")]
    Run { program: String, error: std::io::Error },
    /// It did not list them.
    #[error("{program} did not list its tests: {reason}")]
    Listing { program: String, reason: String },
    /// The program named is not there.
    #[error("program `{0}` is not on PATH, nor a file")]
    NotFound(String),
    /// A test's program is not one thunkmesh can ship.
    #[error("test `{test}`: {path}: {reason}")]
    Program { test: String, path: String, reason: String },
    /// A test's program's libraries could not be found.
    #[error("test `{test}`: {error}")]
    Toolchain { test: String, error: ToolchainError },
    /// The thunks made no valid job.
    #[error("the tests make no valid job: {0}")]
    Job(#[from] JobError),
}

/// One test, to run in a thunk of its own.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its suite (googletest's test suite; `ctest` for CTest's), JUnit's class name.
    pub suite: String,
    /// Its name in the suite.
    pub name: String,
    /// The suite itself says not to run it (googletest's `DISABLED_`, CTest's `DISABLED`).
    pub disabled: bool,
    /// What runs it.
    pub run: TestRun,
}

impl Case {
    /// The name people know the test by: `Suite.Test` for googletest, the name for CTest.
    pub fn full_name(&self) -> String {
        match self.suite.as_str() {
            ctest::SUITE => self.name.clone(),
            suite => format!("{suite}.{}", self.name),
        }
    }
}

/// The command that runs one test, and how its outcome is judged.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// The program, by its path here.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// The folder it starts in.
    pub dir: PathBuf,
    /// How long it may take (the thunk's default without).
    pub timeout: Option<Duration>,
    /// It passes by failing (CTest's `WILL_FAIL`).
    pub will_fail: bool,
    /// The exit status that means "skipped" (CTest's `SKIP_RETURN_CODE`).
    pub skip_code: Option<i32>,
    /// Files it reads that its command line does not name (CTest's `REQUIRED_FILES`).
    pub required: Vec<PathBuf>,
    /// It passes when its output matches one of these, whatever its status.
    pub pass_patterns: Vec<String>,
    /// It fails when its output matches one of these.
    pub fail_patterns: Vec<String>,
    /// It is skipped when its output matches one of these, whatever its status.
    pub skip_patterns: Vec<String>,
}

impl TestRun {
    fn of(program: &Path) -> TestRun {
        TestRun {
            program: program.to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            dir: PathBuf::from("/"),
            timeout: None,
            will_fail: false,
            skip_code: None,
            required: Vec::new(),
            pass_patterns: Vec::new(),
            fail_patterns: Vec::new(),
            skip_patterns: Vec::new(),
        }
    }

    /// Whether a shell must judge the outcome rather than the exit status alone.
    fn judged_by_shell(&self) -> bool {
        self.will_fail || self.skip_code.is_some() || !self.pass_patterns.is_empty()
    }
}

/// The tests of a suite, in the order it lists them.
#[derive(Debug, Clone)]
pub struct Suite {
    /// Each test.
    pub cases: Vec<Case>,
    /// What was left out of the tests' inputs, for the user to hear.
    pub notes: Vec<String>,
}

/// The tests `command` (a googletest binary and its arguments, or `ctest` and its own) has,
/// listed by running it in `cwd`.
pub fn list(command: &[String], cwd: &Path) -> Result<Suite, SuiteError> {
    let Some((program, args)) = command.split_first() else {
        return Err(SuiteError::NotFound(String::new()));
    };
    let path = find(program, cwd).ok_or_else(|| SuiteError::NotFound(program.clone()))?;
    let (cases, what) = match path.file_name().is_some_and(|n| n == "ctest") {
        true => (ctest::list(&path, args, cwd)?, "a build folder of a CMake project that calls enable_testing()"),
        false => (gtest::list(&path, args, cwd)?, "a googletest binary"),
    };
    if cases.is_empty() {
        let reason = format!("it listed no tests (is it {what}?)");
        return Err(SuiteError::Listing { program: path.display().to_string(), reason });
    }
    Ok(Suite { cases, notes: Vec::new() })
}

/// `program` as a shell finds it: a path (relative to `cwd`) when it has a `/`, else on `PATH`.
fn find(program: &str, cwd: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH");
    crate::wrap::find_program(cwd, program.as_ref(), path.as_deref()).ok().map(|found| normal(&found))
}

/// The name of the target that holds what test `index` printed.
pub fn target(index: usize) -> String {
    format!("{index}.out")
}

impl Suite {
    /// The job that runs every test that is not disabled, test `i` as thunk `test-i` whose
    /// standard output is target [`target`]`(i)`.
    pub fn job(&mut self) -> Result<LoadedJob, SuiteError> {
        let mut making = Making::default();
        for (index, case) in self.cases.iter().enumerate().filter(|(_, c)| !c.disabled) {
            let thunk = making.thunk(index, case)?;
            making.job =
                std::mem::take(&mut making.job).thunk(thunk).target(target(index), format!("test-{index}#stdout"));
        }
        self.notes.append(&mut making.notes);
        let spec = making.job.build()?;
        Ok(thunkmesh_client::load_spec(&spec, Path::new("/"), "the tests")?)
    }

    /// Each test's verdict: from the failures of the job that ran them (`failures`, as
    /// [`thunkmesh_client::Summary`] has them) and what the others printed, in `out`.
    pub fn report(&self, failures: &[String], out: &Path) -> Report {
        report::judge(self, failures, out)
    }
}

/// The job being made: its values by the file they are, and what was left out.
#[derive(Default)]
struct Making {
    job: JobBuilder,
    values: BTreeMap<PathBuf, String>,
    notes: Vec<String>,
    noted: BTreeSet<PathBuf>,
}

/// What one test's thunk holds, as it is put together.
#[derive(Default)]
struct Holding {
    /// The test brings its own root: its program is the build's, with its libraries.
    own_root: bool,
    /// Files of its own root, by their paths here (and in the root).
    root: BTreeSet<PathBuf>,
    /// Libraries of the build's own, laid in [`LIBRARIES`].
    libraries: BTreeSet<PathBuf>,
    /// Files of its sandbox, by their paths here (in the sandbox, without the leading `/`).
    sandbox: BTreeSet<PathBuf>,
}

impl Making {
    fn thunk(&mut self, index: usize, case: &Case) -> Result<ThunkBuilder, SuiteError> {
        let run = &case.run;
        let test = case.full_name();
        let program = program_kind(&run.program).map_err(|reason| SuiteError::Program {
            test: test.clone(),
            path: run.program.display().to_string(),
            reason,
        })?;
        // A program of the build travels with its libraries as its own root; the system's own
        // programs (a shell, an interpreter, `cmake -E`) run as the node's, with its tools.
        let mut holding =
            Holding { own_root: matches!(program, Kind::Elf) && !system(&run.program), ..Holding::default() };
        let mut argv = Vec::new();
        let name = format!("test-{index}");
        let mut thunk = match &program {
            Kind::Elf => {
                self.libraries(&test, &run.program, &mut holding)?;
                argv.push(self.runnable(&run.program, &run.dir, &mut holding));
                self.starting(&name, &run.program, &mut holding)
            }
            Kind::Script { interpreter, arg } => {
                argv.push(self.runnable(interpreter, &run.dir, &mut holding));
                argv.extend(arg.iter().cloned());
                argv.push(self.file_arg(&run.program.display().to_string(), &run.dir, &mut holding));
                self.starting(&name, interpreter, &mut holding)
            }
        };
        for arg in &run.args {
            argv.push(self.file_arg(arg, &run.dir, &mut holding));
        }
        for file in &run.required {
            self.file_arg(&file.display().to_string(), &run.dir, &mut holding);
        }
        if run.judged_by_shell() {
            self.libraries(&test, Path::new(SHELL), &mut holding)?;
            thunk = self.starting(&name, Path::new(SHELL), &mut holding);
            let script = shell_script(run);
            argv = ["-c".to_owned(), script, "sh".to_owned()].into_iter().chain(argv).collect();
        } else {
            // The program is argv[0] itself.
            argv.remove(0);
        }
        thunk = thunk.args(argv).stdout();
        let mut env = run.env.clone();
        if !holding.libraries.is_empty() {
            env.insert("LD_LIBRARY_PATH".into(), LIBRARIES.into());
        }
        for (key, value) in env {
            thunk = thunk.env(key, value);
        }
        if let Some(timeout) = run.timeout {
            thunk = thunk.timeout(format!("{}ms", timeout.as_millis().max(1)));
        }
        let dir = sandbox_path(&run.dir);
        if !dir.is_empty() {
            thunk = thunk.dir(dir);
        }
        Ok(self.inputs(thunk, &holding))
    }

    /// The shared libraries of `program` into the test's own root, if it has one.
    fn libraries(&self, test: &str, program: &Path, holding: &mut Holding) -> Result<(), SuiteError> {
        if !holding.own_root {
            return Ok(());
        }
        let found = crate::toolchain::libraries(program)
            .map_err(|error| SuiteError::Toolchain { test: test.to_owned(), error })?;
        for library in found.iter().map(|l| normal(l)) {
            match system(&library) {
                true => holding.root.insert(library),
                false => holding.libraries.insert(library),
            };
        }
        Ok(())
    }

    /// The thunk starting `program`: the system's, pinned by its hash (in the own root, if the
    /// test has one), or else shipped by its bytes.
    fn starting(&mut self, name: &str, program: &Path, holding: &mut Holding) -> ThunkBuilder {
        match system(program) {
            true => {
                if holding.own_root {
                    holding.root.insert(program.to_owned());
                }
                ThunkBuilder::host(name, program.display().to_string())
            }
            false => ThunkBuilder::program(name, self.value(program)),
        }
    }

    /// How a shell in the test's folder `dir` names `program`: its path where it is a system
    /// program, else the path of its copy in the sandbox, which then holds it.
    fn runnable(&mut self, program: &Path, dir: &Path, holding: &mut Holding) -> String {
        match system(program) {
            true => program.display().to_string(),
            false => {
                holding.sandbox.insert(normal(program));
                relative(dir, &normal(program))
            }
        }
    }

    /// An argument of the test, as it is in the sandbox: a file or folder that it names comes
    /// along (at its path here), and an absolute path to it becomes a relative one.
    fn file_arg(&mut self, arg: &str, dir: &Path, holding: &mut Holding) -> String {
        let path = Path::new(arg);
        let full = normal(&dir.join(path));
        let Ok(meta) = std::fs::metadata(&full) else { return arg.to_owned() };
        if system(&full) {
            if meta.is_file() && holding.own_root {
                holding.root.insert(full);
            }
            return arg.to_owned();
        }
        match meta.is_dir() {
            true => match folder_files(&full) {
                Some(files) => holding.sandbox.extend(files),
                None => {
                    if self.noted.insert(full.clone()) {
                        self.notes.push(format!(
                            "{} is left out of the tests' inputs: it has more than {FOLDER_FILES} files or {} MiB",
                            full.display(),
                            FOLDER_BYTES >> 20
                        ));
                    }
                }
            },
            false => {
                holding.sandbox.insert(full.clone());
            }
        }
        match path.is_absolute() {
            true => relative(dir, &full),
            false => arg.to_owned(),
        }
    }

    /// `thunk` with every file of `holding` as an input.
    fn inputs(&mut self, mut thunk: ThunkBuilder, holding: &Holding) -> ThunkBuilder {
        for file in &holding.root {
            thunk = thunk.input(format!("{ROOT_DIR}{}", file.display()), self.value(file));
        }
        for library in &holding.libraries {
            let name = library.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            thunk = thunk.input(format!("{ROOT_DIR}{LIBRARIES}/{name}"), self.value(library));
        }
        for file in &holding.sandbox {
            thunk = thunk.input(sandbox_path(file), self.value(file));
        }
        thunk
    }

    /// The value holding the file at `path` (one per file in the job).
    fn value(&mut self, path: &Path) -> String {
        let next = format!("file-{}", self.values.len());
        let name = self.values.entry(path.to_owned()).or_insert(next).clone();
        self.job = std::mem::take(&mut self.job).value(&name, path.display().to_string());
        name
    }
}

/// What a test's program is.
enum Kind {
    Elf,
    /// A script, run by its `#!` line's interpreter (with its one argument, if any).
    Script {
        interpreter: PathBuf,
        arg: Option<String>,
    },
}

fn program_kind(path: &Path) -> Result<Kind, String> {
    use thunkmesh_client::ship::{FileKind, file_kind};
    match file_kind(path).map_err(|e| e.to_string())? {
        FileKind::Elf => Ok(Kind::Elf),
        FileKind::Other => Err("neither an ELF program nor a script with a `#!` line".into()),
        FileKind::Script { interpreter, .. } if interpreter.is_empty() => {
            Err("its `#!` line names no interpreter".into())
        }
        // `#!/usr/bin/env NAME`: NAME as the search path finds it here.
        FileKind::Script { interpreter, arg: Some(name) }
            if matches!(interpreter.as_str(), "/usr/bin/env" | "/bin/env") =>
        {
            let found = find(&name, Path::new("/")).ok_or(format!("its interpreter `{name}` is not on PATH"))?;
            Ok(Kind::Script { interpreter: found, arg: None })
        }
        FileKind::Script { interpreter, arg } => Ok(Kind::Script { interpreter: PathBuf::from(interpreter), arg }),
    }
}

/// The shell script that runs the test (`"$@"`) and turns its status into the verdict CTest's
/// properties ask for.
fn shell_script(run: &TestRun) -> String {
    let mut script = String::from("\"$@\"; s=$?\n");
    if let Some(code) = run.skip_code {
        script += &format!("if [ $s -eq {code} ]; then echo \"{SKIPPED_LINE} $s\"; exit 0; fi\n");
    }
    if !run.pass_patterns.is_empty() {
        // The output decides (judged where the report is made), whatever the status.
        script += "exit 0\n";
    } else if run.will_fail {
        script += "if [ $s -ne 0 ]; then exit 0; fi\n";
        script += "echo 'thunkmesh test: the test passed, and WILL_FAIL says it must fail' >&2; exit 1\n";
    } else {
        script += "exit $s\n";
    }
    script
}

/// Whether `path` is in a folder every node has the same way ([`SYSTEM`]).
fn system(path: &Path) -> bool {
    let shown = path.to_string_lossy();
    SYSTEM.iter().any(|folder| shown.starts_with(folder))
}

/// The path in the sandbox of the file at the absolute `path` here (the sandbox mirrors `/`).
fn sandbox_path(path: &Path) -> String {
    normal(path).display().to_string().trim_start_matches('/').to_owned()
}

/// The regular files under `dir`, if there are at most [`FOLDER_FILES`] of at most
/// [`FOLDER_BYTES`] in all.
fn folder_files(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut bytes = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).ok()?.flatten() {
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
                files.push(entry.path());
                if files.len() > FOLDER_FILES || bytes > FOLDER_BYTES {
                    return None;
                }
            }
        }
    }
    Some(files)
}

/// `to` as a path relative to the folder `from` (both absolute and normal).
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<Component> = from.components().collect();
    let to_parts: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to_parts).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    from[common..].iter().for_each(|_| out.push(".."));
    to_parts[common..].iter().for_each(|part| out.push(part));
    match out.as_os_str().is_empty() {
        true => ".".to_owned(),
        false => out.display().to_string(),
    }
}

/// What `program ARGS FLAG` prints when run in `dir`: the listing of a suite's tests.
fn listing(program: &Path, args: &[String], flag: &str, dir: &Path) -> Result<Vec<u8>, SuiteError> {
    let shown = program.display().to_string();
    let output = std::process::Command::new(program)
        .args(args)
        .arg(flag)
        .current_dir(dir)
        .output()
        .map_err(|error| SuiteError::Run { program: shown.clone(), error })?;
    match output.status.success() {
        true => Ok(output.stdout),
        false => Err(SuiteError::Listing {
            program: shown,
            reason: format!(
                "{flag} failed ({}): {}",
                output.status,
                tail(if output.stderr.trim_ascii().is_empty() { &output.stdout } else { &output.stderr })
            ),
        }),
    }
}

/// The last lines of what a program said, for a message.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return "it said nothing".to_owned();
    }
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        assert_eq!(relative(Path::new("/b/test"), Path::new("/b/bin/t")), "../bin/t");
        assert_eq!(relative(Path::new("/b"), Path::new("/b/data/x")), "data/x");
        assert_eq!(relative(Path::new("/b"), Path::new("/b")), ".");
        assert_eq!(relative(Path::new("/"), Path::new("/x")), "x");
    }

    #[test]
    fn system_folders_are_the_packages_own() {
        assert!(system(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")) && system(Path::new("/lib64/ld.so")));
        assert!(!system(Path::new("/tmp/b/libfmt.so")) && !system(Path::new("/usr")));
        assert_eq!(sandbox_path(Path::new("/tmp/b/../c/x")), "tmp/c/x");
    }

    #[test]
    fn the_shell_judges_skips_and_expected_failures() {
        let mut run = TestRun::of(Path::new("/x"));
        assert!(!run.judged_by_shell());
        run.skip_code = Some(77);
        run.will_fail = true;
        let script = shell_script(&run);
        let status = |code: i32| {
            let done = std::process::Command::new(SHELL)
                .args(["-c", &script, "sh", "sh", "-c", &format!("exit {code}")])
                .output()
                .expect("sh");
            (done.status.code(), String::from_utf8_lossy(&done.stdout).into_owned())
        };
        assert_eq!(status(77), (Some(0), format!("{SKIPPED_LINE} 77\n")));
        assert_eq!(status(3), (Some(0), String::new()));
        assert_eq!(status(0).0, Some(1));
    }

    /// A program the build made (here a copy of `true` outside the system's folders) travels with
    /// its libraries and loader as its own root, its data file named by absolute path comes along
    /// and is named relatively; a system program runs as the node's, with no root.
    #[test]
    fn a_build_s_program_brings_its_libraries_and_a_system_s_runs_as_the_node_s() {
        use thunkmesh_protocol::Program;
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, test) = (dir.path().join("bin"), dir.path().join("test"));
        std::fs::create_dir_all(&bin).and_then(|()| std::fs::create_dir_all(&test)).expect("mkdir");
        std::fs::copy("/bin/true", bin.join("t")).expect("copy");
        std::fs::write(test.join("data.txt"), "x").expect("write");
        let data = test.join("data.txt").display().to_string();
        let mut built = TestRun::of(&bin.join("t"));
        (built.dir, built.args) = (test.clone(), vec![data.clone(), "--flag".into()]);
        let mut system = TestRun::of(Path::new("/bin/sh"));
        (system.dir, system.args) = (test.clone(), vec!["-c".into(), "exit 0".into()]);
        let case = |name: &str, run: TestRun| Case { suite: "s".into(), name: name.into(), disabled: false, run };
        let mut suite = Suite { cases: vec![case("built", built), case("system", system)], notes: Vec::new() };
        let job = suite.job().expect("a job");
        let [built, system] = [0, 1].map(|i| &job.job.thunks[i].thunk);
        let root: Vec<&String> = built.inputs.keys().filter(|k| k.starts_with(".root/")).collect();
        assert!(root.iter().any(|k| k.contains("libc.so")) && root.iter().any(|k| k.contains("ld-linux")), "{root:?}");
        assert!(matches!(built.program, Program::Ref(_)), "shipped by its bytes");
        assert!(built.inputs.get(&sandbox_path(&test.join("data.txt"))).is_some(), "the data file comes along");
        assert_eq!(built.args, ["data.txt", "--flag"], "named relative to its folder");
        assert_eq!(built.dir.as_deref(), Some(sandbox_path(&test).as_str()));
        assert!(
            system.inputs.keys().all(|k| !k.starts_with(".root/")),
            "{:?}",
            system.inputs.keys().collect::<Vec<_>>()
        );
        assert!(matches!(&system.program, Program::Host { path, .. } if path == "/bin/sh"));
    }

    #[test]
    fn a_script_runs_under_its_interpreter_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("t.sh");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").expect("write");
        match program_kind(&script) {
            Ok(Kind::Script { interpreter, arg }) => {
                assert_eq!((interpreter, arg), (PathBuf::from("/bin/sh"), Some("-e".to_owned())))
            }
            _ => panic!("a script"),
        }
        std::fs::write(&script, "plain text").expect("write");
        assert!(program_kind(&script).is_err_and(|e| e.contains("neither")));
        assert!(matches!(program_kind(Path::new("/bin/sh")), Ok(Kind::Elf)));
    }
}
