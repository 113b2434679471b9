//! What the models read in a call's arguments besides the options themselves: `@file` response
//! files (CMake's Ninja generator writes them for long links and removes them afterwards, so
//! they are expanded at infer time), the signs of a configure probe (whose result the build
//! needs now, so the real tool runs), files named inside linker options (`-Wl,--version-script=`),
//! and the absolute paths into the build folder that become paths into the sandbox, which a node
//! shows the program at [`SANDBOX_DIR`] (`-ffile-prefix-map` maps them back in what the compiler
//! writes, so the outputs name the real folder).

use std::path::Path;

use thunkmesh_protocol::thunk::SANDBOX_DIR;

/// How deep response files may name other response files.
const MAX_RESPONSE_DEPTH: usize = 8;

/// `args` with every `@file` that names a readable file replaced by the arguments in it (split
/// as GCC and binutils split them: blanks separate, quotes group, a backslash takes the next
/// character as it is); an `@word` that names no file stays, as the tools keep it.
pub(super) fn expand_response_files(cwd: &Path, args: &[String]) -> Result<Vec<String>, String> {
    expand_at(cwd, args, 0)
}

fn expand_at(cwd: &Path, args: &[String], depth: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let Some(file) = arg.strip_prefix('@').filter(|f| !f.is_empty()) else {
            out.push(arg.clone());
            continue;
        };
        match std::fs::read(cwd.join(file)) {
            Ok(bytes) if depth < MAX_RESPONSE_DEPTH => {
                let words = split_response(&String::from_utf8_lossy(&bytes));
                out.extend(expand_at(cwd, &words, depth + 1)?);
            }
            Ok(_) => return Err(format!("response file {file}: response files nested over {MAX_RESPONSE_DEPTH} deep")),
            Err(_) => out.push(arg.clone()),
        }
    }
    Ok(out)
}

/// The words of a response file (libiberty's `buildargv`).
fn split_response(text: &str) -> Vec<String> {
    let (mut words, mut word, mut started) = (Vec::new(), String::new(), false);
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
            word.push(c);
        } else if c == '\\' {
            escaped = true;
        } else if single {
            match c {
                '\'' => single = false,
                _ => word.push(c),
            }
        } else if double {
            match c {
                '"' => double = false,
                _ => word.push(c),
            }
        } else if c.is_whitespace() {
            if started {
                words.push(std::mem::take(&mut word));
            }
            started = false;
            continue;
        } else {
            match c {
                '\'' => single = true,
                '"' => double = true,
                _ => word.push(c),
            }
        }
        started = true;
    }
    if started {
        words.push(word);
    }
    words
}

/// Why a call is a configure step's probe (autoconf's `conftest`, CMake's and Meson's scratch
/// projects), if it is one: its result is needed now, so the real tool runs.
pub(super) fn probe(cwd: &Path, args: &[String]) -> Option<String> {
    let scratch = |path: &Path| {
        path.components().any(|c| {
            let c = c.as_os_str().to_string_lossy();
            c == "CMakeScratch" || c == "CMakeTmp" || c.starts_with("CompilerId") || c == "meson-private"
        })
    };
    if scratch(cwd) {
        return Some(format!("a configure probe (it runs in {})", cwd.display()));
    }
    let conftest = args.iter().find(|arg| {
        let name = Path::new(arg.as_str()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.starts_with("conftest") || name.starts_with("libconftest") || scratch(Path::new(arg.as_str()))
    });
    conftest.map(|arg| format!("a configure probe ({arg})"))
}

/// Linker options whose value is a file the linker reads.
const LINKER_FILE_OPTIONS: [&str; 9] = [
    "--version-script",
    "-version-script",
    "--dynamic-list",
    "-T",
    "--script",
    "-dT",
    "--default-script",
    "--retain-symbols-file",
    "--just-symbols",
];

/// Linker options whose value is a folder recorded in the output (never rewritten).
const RPATH_OPTIONS: [&str; 3] = ["-rpath", "--rpath", "-R"];

/// The words a driver passes to the linker, in order: from `-Wl,a,b`, `-Xlinker a` and `-T a`.
fn linker_words(args: &[String]) -> Vec<String> {
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(list) = arg.strip_prefix("-Wl,") {
            words.extend(list.split(',').map(str::to_owned));
        } else if arg == "-Xlinker" || arg == "-T" {
            words.extend(arg.eq("-T").then(|| "-T".to_owned()));
            words.extend(it.next().cloned());
        }
    }
    words
}

/// The files the linker options of `args` name (`--version-script`, `--dynamic-list`, `-T`...),
/// as the call names them.
pub(super) fn linker_files(args: &[String]) -> Vec<String> {
    let words = linker_words(args);
    let mut files = Vec::new();
    let mut it = words.iter();
    while let Some(word) = it.next() {
        if LINKER_FILE_OPTIONS.contains(&word.as_str()) {
            files.extend(it.next().cloned());
        } else if let Some((option, value)) = word.split_once('=') {
            if LINKER_FILE_OPTIONS.contains(&option) {
                files.push(value.to_owned());
            }
        } else if let Some(script) =
            word.strip_prefix("-T").filter(|s| !s.is_empty() && !s.starts_with(['b', 'd', 't']))
        {
            files.push(script.to_owned());
        }
    }
    files
}

/// Driver options with a file or folder glued to them.
const GLUED_PATHS: [&str; 7] = ["-isystem", "-iquote", "-idirafter", "-include", "-imacros", "-I", "-L"];

/// `args` with each absolute path into `top` (alone, glued to an include or library option, or a
/// linker option's value) moved to the sandbox folder, where a node shows the program the
/// build folder. Run paths (`-rpath`) stay: they are written into the program, not read.
pub(super) fn to_sandbox(args: &[String], top: &Path) -> Vec<String> {
    let top = top.display().to_string();
    let mut out = Vec::with_capacity(args.len());
    let mut rpath_next = false;
    let mut linker_next = false;
    for arg in args {
        let moved = if linker_next {
            linker_next = false;
            linker_word(arg, &top, &mut rpath_next)
        } else if let Some(list) = arg.strip_prefix("-Wl,") {
            let words: Vec<String> = list.split(',').map(|w| linker_word(w, &top, &mut rpath_next)).collect();
            format!("-Wl,{}", words.join(","))
        } else {
            linker_next = arg == "-Xlinker";
            driver_word(arg, &top)
        };
        out.push(moved);
    }
    out
}

fn driver_word(arg: &str, top: &str) -> String {
    match GLUED_PATHS.iter().find(|p| arg.starts_with(**p) && arg.len() > p.len()) {
        Some(option) => format!("{option}{}", in_sandbox(&arg[option.len()..], top)),
        None => in_sandbox(arg, top),
    }
}

fn linker_word(word: &str, top: &str, rpath_next: &mut bool) -> String {
    if std::mem::take(rpath_next) {
        return word.to_owned();
    }
    if RPATH_OPTIONS.contains(&word) {
        *rpath_next = true;
        return word.to_owned();
    }
    match word.split_once('=') {
        Some((option, _)) if RPATH_OPTIONS.contains(&option) => word.to_owned(),
        Some((option, value)) if option.starts_with('-') => format!("{option}={}", in_sandbox(value, top)),
        _ => in_sandbox(word, top),
    }
}

/// `path` moved from the build folder `top` to the sandbox folder, if it is an absolute path in
/// `top` (by its text: the rest of it stays as written, `..` and all).
fn in_sandbox(path: &str, top: &str) -> String {
    match path.strip_prefix(top) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{SANDBOX_DIR}{rest}"),
        _ => path.to_owned(),
    }
}

/// The prefix maps a compile in the sandbox needs so that what it writes (debug information,
/// `__FILE__`) names the build folder as the build itself would: the sandbox folder as the real
/// `top` (or as `.` with `relocatable`), and each of the call's own maps of a folder in `top`
/// again for its sandbox path, given last so that it is the one GCC applies.
pub(super) fn prefix_maps(args: &[String], top: &Path, relocatable: bool) -> Vec<String> {
    let top = top.display().to_string();
    let target = if relocatable { "." } else { top.as_str() };
    let mut maps = vec![format!("-ffile-prefix-map={SANDBOX_DIR}={target}")];
    for arg in args {
        for kind in ["-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map="] {
            let Some((old, new)) = arg.strip_prefix(kind).and_then(|m| m.split_once('=')) else { continue };
            let moved = in_sandbox(old, &top);
            if moved != old {
                maps.push(format!("{kind}{moved}={new}"));
            }
        }
    }
    maps
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::models::tests::strings;

    #[test]
    fn response_files_are_split_as_gcc_splits_them_and_nest() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("inner.rsp"), "-lm\n").expect("write");
        std::fs::write(dir.path().join("link.rsp"), "a.o 'b c.o' \"d\\\"e.o\" f\\ g.o\n\t@inner.rsp").expect("write");
        let args = strings(&["-o", "prog", "@link.rsp", "@missing.rsp"]);
        let expanded = expand_response_files(dir.path(), &args).expect("expands");
        assert_eq!(expanded, strings(&["-o", "prog", "a.o", "b c.o", "d\"e.o", "f g.o", "-lm", "@missing.rsp"]));
        std::fs::write(dir.path().join("loop.rsp"), "@loop.rsp").expect("write");
        let e = expand_response_files(dir.path(), &strings(&["@loop.rsp"])).expect_err("a loop");
        assert!(e.contains("nested over 8 deep"), "{e}");
    }

    #[test]
    fn configure_probes_are_known_by_their_files_and_folders() {
        let build = Path::new("/src/proj/build");
        assert!(probe(build, &strings(&["-c", "conftest.c", "-o", "conftest.o"])).is_some());
        assert!(probe(build, &strings(&["cru", "libconftest.a", "conftest.o"])).is_some());
        assert!(probe(&build.join("CMakeFiles/CMakeScratch/TryCompile-x"), &strings(&["-c", "a.c"])).is_some());
        assert!(probe(&build.join("CMakeFiles/3.25.1/CompilerIdC"), &strings(&["a.c"])).is_some());
        assert!(probe(build, &strings(&["-c", "/src/proj/build/meson-private/sanitycheckc.c"])).is_some());
        assert_eq!(probe(build, &strings(&["-c", "config.c", "-o", "config.o"])), None);
    }

    #[test]
    fn files_inside_linker_options_are_found_in_every_spelling() {
        let args = strings(&[
            "-shared",
            "-Wl,--version-script=a.map",
            "-Wl,-version-script",
            "-Wl,../../src/b.map",
            "-Xlinker",
            "--dynamic-list",
            "-Xlinker",
            "c.list",
            "-T",
            "d.ld",
            "-Wl,-Te.ld,-soname,libx.so.1,-Tbss=0x1000",
            "-Wl,--script,f.ld",
        ]);
        assert_eq!(linker_files(&args), ["a.map", "../../src/b.map", "c.list", "d.ld", "e.ld", "f.ld"]);
    }

    #[test]
    fn absolute_paths_into_the_build_folder_move_to_the_sandbox_and_run_paths_stay() {
        let top = Path::new("/home/me/json-c");
        let args = strings(&[
            "-I/home/me/json-c/build",
            "-isystem",
            "/home/me/json-c/vendor",
            "-DDATA=\"/home/me/json-c/data\"",
            "-c",
            "/home/me/json-c/arraylist.c",
            "-o",
            "build/a.o",
            "-Wl,-rpath,/home/me/json-c/build:/usr/lib,--version-script=/home/me/json-c/json-c.sym",
            "-Xlinker",
            "-rpath",
            "-Xlinker",
            "/home/me/json-c/build",
            "/home/me/json-cx/other.c",
        ]);
        assert_eq!(
            to_sandbox(&args, top),
            strings(&[
                "-I/thunk/build",
                "-isystem",
                "/thunk/vendor",
                "-DDATA=\"/home/me/json-c/data\"",
                "-c",
                "/thunk/arraylist.c",
                "-o",
                "build/a.o",
                "-Wl,-rpath,/home/me/json-c/build:/usr/lib,--version-script=/thunk/json-c.sym",
                "-Xlinker",
                "-rpath",
                "-Xlinker",
                "/home/me/json-c/build",
                "/home/me/json-cx/other.c",
            ])
        );
    }

    #[test]
    fn the_sandbox_maps_to_the_real_folder_and_the_builds_own_maps_follow_it() {
        let top = Path::new("/build/xz");
        let args = strings(&["-g", "-ffile-prefix-map=/build/xz=.", "-fdebug-prefix-map=/usr=/u"]);
        assert_eq!(
            prefix_maps(&args, top, false),
            ["-ffile-prefix-map=/thunk=/build/xz", "-ffile-prefix-map=/thunk=."]
        );
        assert_eq!(prefix_maps(&[], top, true), ["-ffile-prefix-map=/thunk=."]);
    }
}
