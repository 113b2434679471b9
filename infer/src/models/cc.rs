//! The C and C++ compiler drivers (`cc`, `gcc`, `g++`, `c++`, `clang`, `clang++`). A compile
//! (`-c`) becomes one thunk per source, reading the source and every header of the build folder
//! it includes: the real compiler lists them at infer time (`-M`, the preprocessor's own answer,
//! so conditional includes and include paths come out exactly as the compile will see them).
//! A link (no `-c`) becomes one thunk reading its objects, archives and the `-l` libraries found
//! in the build folder. Anything else is a probe or a step the model does not know, and runs
//! the real compiler.

use std::path::{Path, PathBuf};

use super::{Call, Outcome};
use thunkmesh_protocol::Ref;
use thunkmesh_protocol::thunk::ROOT_DIR;

use crate::placeholder::Placeholder;
use crate::toolchain::{self, Root};
use crate::wrap::WrapError;

/// Options whose value is the next argument.
const WITH_VALUE: [&str; 25] = [
    "-o",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-idirafter",
    "-iquote",
    "-iprefix",
    "-MF",
    "-MT",
    "-MQ",
    "-x",
    "-L",
    "-l",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-T",
    "-u",
    "-e",
    "--param",
    "-B",
    "-z",
];

/// Options that ask the compiler something rather than build: the real one answers.
const PROBES: [&str; 14] = [
    "-E",
    "-V",
    "-qversion",
    "-S",
    "-M",
    "-MM",
    "-v",
    "--version",
    "-dumpversion",
    "-dumpmachine",
    "-dumpspecs",
    "-###",
    "--help",
    "-fsyntax-only",
];

/// The single-argument options the model passes on as they are (by prefix); any other option
/// is one it does not understand, and the real compiler runs.
const KNOWN: [&str; 30] = [
    "-O",
    "-W",
    "-f",
    "-m",
    "-g",
    "-std=",
    "-D",
    "-U",
    "-I",
    "-pipe",
    "-pthread",
    "-shared",
    "-static",
    "-rdynamic",
    "-pedantic",
    "-ansi",
    "-w",
    "-p",
    "-s",
    "-r",
    "-no",
    "-isystem",
    "-iquote",
    "-include",
    "--param=",
    "-Xlinker",
    "-idirafter",
    "-imacros",
    "-B",
    "--sysroot",
];

/// The dependency-file options, which the model writes itself at infer time.
const DEP_FLAGS: [&str; 3] = ["-MD", "-MMD", "-MP"];
const DEP_VALUES: [&str; 3] = ["-MF", "-MT", "-MQ"];

/// The source files a driver compiles.
const SOURCES: [&str; 13] = ["c", "cc", "cpp", "cxx", "c++", "C", "i", "ii", "s", "S", "sx", "m", "mm"];

/// A driver's arguments, sorted out.
#[derive(Debug, Default)]
struct Args {
    /// Every argument but `-c`, `-o X`, the dependency options and the operands, in order.
    flags: Vec<String>,
    /// Files named on the command line.
    operands: Vec<String>,
    compile: bool,
    output: Option<String>,
    /// `-MD` (false) or `-MMD` (true), and `-MF`'s file.
    deps: Option<bool>,
    dep_file: Option<String>,
    phony: bool,
    libs: Vec<String>,
    lib_dirs: Vec<String>,
}

fn parse(raw: &[String]) -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        let a = arg.as_str();
        if PROBES.contains(&a) || a.starts_with("-print-") || a.starts_with("-dump") {
            return Err(format!("`{a}` asks the compiler, not for a build step"));
        }
        if a == "-" || a == "/dev/null" {
            return Err("reads standard input or /dev/null".into());
        }
        if WITH_VALUE.contains(&a) {
            let value = it.next().ok_or_else(|| format!("`{a}` without its value"))?.clone();
            match a {
                "-o" => args.output = Some(value),
                "-MF" => args.dep_file = Some(value),
                "-MT" | "-MQ" => {}
                "-x" => return Err("`-x` sets the language by hand".into()),
                "-l" => {
                    args.libs.push(value.clone());
                    args.flags.extend([arg.clone(), value]);
                }
                "-L" => {
                    args.lib_dirs.push(value.clone());
                    args.flags.extend([arg.clone(), value]);
                }
                _ => args.flags.extend([arg.clone(), value]),
            }
        } else if a == "-c" {
            args.compile = true;
        } else if DEP_FLAGS.contains(&a) {
            match a {
                "-MP" => args.phony = true,
                _ => args.deps = Some(a == "-MMD"),
            }
        } else if DEP_VALUES.iter().any(|d| a.starts_with(d)) {
            if let Some(file) = a.strip_prefix("-MF") {
                args.dep_file = Some(file.to_owned());
            }
        } else if let Some(lib) = a.strip_prefix("-l") {
            args.libs.push(lib.to_owned());
            args.flags.push(arg.clone());
        } else if let Some(dir) = a.strip_prefix("-L") {
            args.lib_dirs.push(dir.to_owned());
            args.flags.push(arg.clone());
        } else if KNOWN.iter().any(|k| a.starts_with(k)) {
            args.flags.push(arg.clone());
        } else if a.starts_with('-') {
            return Err(format!("`{a}` is an option the model does not know"));
        } else {
            args.operands.push(arg.clone());
        }
    }
    Ok(args)
}

fn is_source(file: &str) -> bool {
    Path::new(file).extension().is_some_and(|e| SOURCES.iter().any(|s| e == *s))
}

pub(super) fn cc(call: &Call) -> Result<Outcome, WrapError> {
    let args = match parse(&call.args) {
        Ok(args) => args,
        Err(why) => return Ok(Outcome::Real(why)),
    };
    if args.operands.is_empty() {
        return Ok(Outcome::Real("no input files".into()));
    }
    match args.compile {
        true => compile(call, &args),
        false => link(call, &args),
    }
}

/// One thunk per source: `FLAGS -c SOURCE -o OBJECT`.
fn compile(call: &Call, args: &Args) -> Result<Outcome, WrapError> {
    if args.operands.iter().any(|o| !is_source(o)) {
        return Ok(Outcome::Real("`-c` with a file that is not a source".into()));
    }
    if args.output.is_some() && args.operands.len() > 1 {
        return Ok(Outcome::Real("`-o` with more than one source".into()));
    }
    for source in &args.operands {
        let object = args.output.clone().unwrap_or_else(|| object_name(source));
        let headers = match includes(call, &args.flags, source)? {
            Ok(headers) => headers,
            Err(why) => return Ok(Outcome::Real(why)),
        };
        let mut thunk_args = args.flags.clone();
        thunk_args.extend(["-c".into(), source.clone(), "-o".into(), object.clone()]);
        thunk_args.extend(super::args::prefix_maps(&args.flags, &call.top, !call.real_paths()));
        if !call.inside(Path::new(source)) {
            return Ok(Outcome::Real(format!("compiles {source}, outside the build folder")));
        }
        // The source itself: `-M` does not name an assembler source (`.s`), which is not
        // preprocessed.
        let mut inputs: Vec<PathBuf> = headers.local.iter().map(PathBuf::from).collect();
        if !inputs.iter().any(|i| call.cwd.join(i) == call.cwd.join(source)) {
            inputs.push(PathBuf::from(source));
        }
        let system = system_root(call, args, &headers.system, &[])?;
        call.record(&call.program, &thunk_args, &inputs, &[PathBuf::from(&object)], 0o644, &system)?;
        if let Some(only_user) = args.deps {
            write_dep_file(call, args, &object, &headers, only_user)?;
        }
    }
    Ok(Outcome::Recorded)
}

/// The object a source compiles to without `-o`: its base name with `.o`.
fn object_name(source: &str) -> String {
    let stem = Path::new(source).file_stem().map_or_else(|| source.to_owned(), |s| s.to_string_lossy().into_owned());
    format!("{stem}.o")
}

/// What a source includes, as the preprocessor says: the files of the build folder, and the
/// system's (which go into the call's own root).
struct Includes {
    local: Vec<String>,
    system: Vec<String>,
}

/// Asks the real compiler which files `source` reads (`-M`). The inner error is why the call
/// cannot be modelled.
fn includes(call: &Call, flags: &[String], source: &str) -> Result<Result<Includes, String>, WrapError> {
    let real = &call.program;
    let output = std::process::Command::new(real)
        .args(flags)
        .args(["-M", source])
        .current_dir(&call.cwd)
        .env("PATH", &call.real_path)
        .output()
        .map_err(|error| WrapError::Io { path: real.display().to_string(), error })?;
    if !output.status.success() {
        return Ok(Err(format!(
            "the preprocessor failed on {source}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout).replace("\\\n", " ");
    let files = text.split_once(':').map_or("", |(_, files)| files);
    let mut found = Includes { local: Vec::new(), system: Vec::new() };
    for file in files.split_whitespace() {
        let path = Path::new(file);
        if call.inside(path) {
            if Placeholder::is_at(&call.cwd.join(path)) {
                return Ok(Err(format!("{file} is a placeholder: force it before the compile that reads it")));
            }
            found.local.push(file.to_owned());
        } else if file.starts_with("/usr/") || file.starts_with("/lib") {
            found.system.push(file.to_owned());
        } else {
            return Ok(Err(format!("reads {file}, outside the build folder")));
        }
    }
    Ok(Ok(found))
}

/// The system's part of a compile's or link's own root: the driver's helpers and libraries, the
/// system files the call reads (`headers`, and the files a link names by path) and, for a link,
/// what the linker reads with `link_options` (none for `--toolchain host`).
fn system_root(call: &Call, args: &Args, headers: &[String], link_options: &[String]) -> Result<Root, WrapError> {
    if !call.hermetic() {
        return Ok(Root::default());
    }
    let driver = &call.program;
    let fuse_ld = args.flags.iter().find_map(|f| f.strip_prefix("-fuse-ld="));
    let lto = args.flags.iter().any(|f| f == "-flto" || f.starts_with("-flto="));
    let sources: Vec<&str> = args.operands.iter().map(String::as_str).filter(|o| is_source(o)).collect();
    let helpers = toolchain::helpers_for(&sources, !args.compile, lto, fuse_ld);
    let mut root = toolchain::driver(&call.state, driver, &helpers)?;
    headers.iter().for_each(|h| root.add(Path::new(h)));
    if !args.compile {
        root.extend(&toolchain::link(&call.state, driver, link_options)?);
        for spec in spec_files(&args.flags) {
            let found = toolchain::ask(driver, &format!("-print-file-name={spec}"))?;
            if Path::new(&found).is_absolute() {
                root.add(Path::new(&found));
            }
        }
    }
    Ok(root)
}

/// The spec files the driver reads for a link with `flags` (`-fopenmp` reads `libgomp.spec`).
fn spec_files(flags: &[String]) -> Vec<&'static str> {
    let mut specs: Vec<&'static str> = flags
        .iter()
        .filter_map(|f| match f.as_str() {
            "-fopenmp" | "-fopenacc" => Some("libgomp.spec"),
            "-fgnu-tm" => Some("libitm.spec"),
            f if f.starts_with("-fsanitize=") => Some("libsanitizer.spec"),
            _ => None,
        })
        .collect();
    specs.sort_unstable();
    specs.dedup();
    specs
}

/// The dependency file `-MD`/`-MMD` asks for, written now (make reads it on the next run).
fn write_dep_file(
    call: &Call,
    args: &Args,
    object: &str,
    includes: &Includes,
    only_user: bool,
) -> Result<(), WrapError> {
    let path = args.dep_file.clone().unwrap_or_else(|| Path::new(object).with_extension("d").display().to_string());
    let mut files: Vec<&String> = includes.local.iter().collect();
    if !only_user {
        files.extend(&includes.system);
    }
    let mut text = format!("{object}: {}\n", files.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(" \\\n "));
    if args.phony {
        for file in files.iter().skip(1) {
            text.push_str(&format!("\n{file}:\n"));
        }
    }
    let path = call.cwd.join(path);
    std::fs::write(&path, text).map_err(|error| WrapError::Io { path: path.display().to_string(), error })
}

/// One thunk for the whole link, with the call's own arguments.
fn link(call: &Call, args: &Args) -> Result<Outcome, WrapError> {
    let output = args.output.clone().unwrap_or_else(|| "a.out".into());
    let mut inputs = Vec::new();
    let mut system_files = Vec::new();
    for operand in &args.operands {
        let path = Path::new(operand);
        if is_source(operand) {
            match includes(call, &args.flags, operand)? {
                Ok(found) => {
                    inputs.extend(found.local.iter().map(PathBuf::from));
                    system_files.extend(found.system);
                }
                Err(why) => return Ok(Outcome::Real(why)),
            }
        } else if call.inside(path) {
            inputs.push(path.to_owned());
        } else if operand.starts_with("/usr/") || operand.starts_with("/lib") {
            // A system file named on the command line (libtool's C++ links name the startup
            // files themselves, with `-nostdlib`): the link's root holds it.
            system_files.push(operand.clone());
        } else {
            return Ok(Outcome::Real(format!("links {operand}, outside the build folder")));
        }
    }
    for file in super::args::linker_files(&call.args) {
        let path = Path::new(&file);
        if call.inside(path) {
            inputs.push(path.to_owned());
        } else if !(file.starts_with("/usr/") || file.starts_with("/lib")) {
            return Ok(Outcome::Real(format!("the linker reads {file}, outside the build folder")));
        }
    }
    let local_lib = |lib: &str| {
        let candidates =
            args.lib_dirs.iter().flat_map(|dir| ["so", "a"].map(|ext| Path::new(dir).join(format!("lib{lib}.{ext}"))));
        candidates.filter(|p| call.inside(p)).find(|p| call.cwd.join(p).exists())
    };
    inputs.extend(args.libs.iter().filter_map(|lib| local_lib(lib)));
    let members: Vec<PathBuf> = inputs.iter().flat_map(|input| thin_members(call, input)).collect();
    inputs.extend(members);
    inputs.sort();
    inputs.dedup();
    let options =
        toolchain::link_options(&args.flags, &|lib| local_lib(lib).is_some(), &|dir| call.inside(Path::new(dir)));
    let system = system_root(call, args, &system_files, &options)?;
    let mode = if args.flags.iter().any(|f| f == "-r") { 0o644 } else { 0o755 };
    let mut thunk_args = call.args.clone();
    thunk_args.extend(super::args::prefix_maps(&call.args, &call.top, !call.real_paths()));
    call.record(&call.program, &thunk_args, &inputs, &[PathBuf::from(&output)], mode, &system)?;
    Ok(Outcome::Recorded)
}

/// The members of `archive` if it is the placeholder of a thin archive the `ar` model recorded:
/// the linker opens them by the paths the archive holds, so the link reads them too.
fn thin_members(call: &Call, archive: &Path) -> Vec<PathBuf> {
    let Ok(Some(Placeholder { output: Ref::Output { thunk, .. } })) = Placeholder::read(&call.cwd.join(archive)) else {
        return Vec::new();
    };
    let Ok(thunk) = call.state.thunk(thunk) else { return Vec::new() };
    if !thunk.args.iter().any(|a| super::ar::is_thin_insertion(a)) {
        return Vec::new();
    }
    let member = |path: &&String| !path.starts_with(ROOT_DIR) && !path.ends_with(".thunkmesh-in");
    thunk.inputs.keys().filter(member).map(|path| call.top.join(path)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::models::tests::strings;

    #[test]
    fn a_compile_line_is_sorted_into_flags_operands_and_dependency_options() {
        let args = parse(&strings(&["-O3", "-I", "inc", "-DX=1", "-MD", "-MFdeps/a.d", "-c", "a.c", "-o", "a.o"]))
            .expect("parses");
        assert_eq!(args.flags, strings(&["-O3", "-I", "inc", "-DX=1"]));
        assert_eq!(args.operands, ["a.c"]);
        assert!(args.compile);
        assert_eq!(args.output.as_deref(), Some("a.o"));
        assert_eq!((args.deps, args.dep_file.as_deref()), (Some(false), Some("deps/a.d")));
        let link = parse(&strings(&["-o", "prog", "main.o", "-L.", "-lz", "-l", "m"])).expect("parses");
        assert_eq!((link.libs, link.lib_dirs), (strings(&["z", "m"]), strings(&["."])));
        assert_eq!(link.operands, ["main.o"]);
    }

    #[test]
    fn probes_and_standard_input_go_to_the_real_compiler() {
        for probe in [
            &["-E", "a.c"][..],
            &["-dumpmachine"],
            &["-print-prog-name=cc1"],
            &["-x", "c", "-c", "-"],
            &["-c", "/dev/null"],
        ] {
            assert!(parse(&strings(probe)).is_err(), "{probe:?}");
        }
        assert_eq!(
            parse(&strings(&["-c", "-target", "x86_64", "a.c"])).expect_err("unknown"),
            "`-target` is an option the model does not know"
        );
        assert_eq!(object_name("src/zutil.c"), "zutil.o");
    }
}
