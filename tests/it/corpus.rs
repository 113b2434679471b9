//! Real projects from Debian's source packages (fetched by the test command), each configured
//! the normal way, built directly, cleaned, and built again in the same folder through
//! `thunkmesh infer` and `force --all` (issue 27): every program, library, archive and object the
//! direct build made must come back byte for byte, and the programs must run. json-c with CMake
//! and both of its generators (tools by absolute path, absolute sources, a version script),
//! xz-utils (automake, libtool, shared libraries, `-Wl,` files), mosh (C++ with protobuf,
//! `ar cru`) and sqlite3 (libtool's `ar cru`, generators it compiles and then runs, from make and
//! from Tcl). All with the projects' default flags, `-g` included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::infer::tm;

/// How one project is configured, built and tried.
struct Project {
    /// The Debian source package.
    package: &'static str,
    /// Commands run in the source tree to configure it.
    configure: &'static [&'static [&'static str]],
    /// Where the build runs, in the source tree.
    build_dir: &'static str,
    /// The build command, run directly and then under `infer`.
    build: &'static [&'static str],
    /// The command that removes what the build made.
    clean: &'static [&'static str],
    /// Programs (in the build folder) run afterwards, with their arguments and a piece of what
    /// they must print.
    smoke: &'static [(&'static str, &'static [&'static str], &'static str)],
}

/// Whether `bytes` are an ELF file or an `ar` archive: what a build's compilers, linkers and
/// archivers make.
fn built(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"!<arch>\n") || bytes.starts_with(b"!<thin>\n")
}

/// Every ELF file and archive under `dir` (not in CMake's compiler identification folders or the
/// state folder), by path relative to `dir`.
fn outputs(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read_dir").flatten() {
            let (path, kind) = (entry.path(), entry.file_type().expect("file type"));
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() && name != ".thunkmesh" && !name.starts_with("CompilerId") {
                folders.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).expect("read");
                if built(&bytes) {
                    found.insert(path.strip_prefix(dir).expect("inside").to_owned(), bytes);
                }
            }
        }
    }
    found
}

fn run(dir: &Path, command: &[&str]) {
    let out = Command::new(command[0]).args(&command[1..]).current_dir(dir).output().expect("start");
    let tail = |b: &[u8]| String::from_utf8_lossy(&b[b.len().saturating_sub(3000)..]).into_owned();
    assert!(out.status.success(), "{command:?} failed:\n{}\n{}", tail(&out.stdout), tail(&out.stderr));
}

/// Builds `project` directly, then through `infer` and `force --all` in the same folder, and
/// checks every output and the programs.
fn same_bytes_through_infer(project: &Project) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = crate::util::debian_upstream(project.package, dir.path());
    project.configure.iter().for_each(|command| run(&tree, command));
    let build = tree.join(project.build_dir);
    run(&build, project.build);
    let direct = outputs(&build);
    assert!(direct.len() >= 3, "the direct build made {direct:?}");
    run(&build, project.clean);
    let infer = tm(&build, &[&["infer", "--"][..], project.build].concat());
    infer.ok();
    assert!(!infer.stderr.contains("ran the real tool"), "every call was modelled: {}", infer.stderr);
    let forced = tm(&build, &["force", "--all", "--workers", "2"]);
    forced.ok();
    let inferred = outputs(&build);
    let missing: Vec<&PathBuf> = direct.keys().filter(|p| !inferred.contains_key(*p)).collect();
    assert!(missing.is_empty(), "{}: not built through infer: {missing:?}", project.package);
    let differ: Vec<&PathBuf> = direct.iter().filter(|(p, b)| inferred.get(*p) != Some(b)).map(|(p, _)| p).collect();
    assert!(differ.is_empty(), "{}: differ from the direct build's: {differ:?}", project.package);
    for (program, args, says) in project.smoke {
        let out = Command::new(build.join(program)).args(*args).current_dir(&build).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains(says), "{program} {args:?}: {text}");
    }
    eprintln!("{}: {} files byte for byte as the direct build's", project.package, direct.len());
}

/// CMake's generators call `/usr/bin/cc` and `/usr/bin/ar` by path: only the mount namespace
/// catches them.
fn json_c(generator: &'static [&'static str], build: &'static [&'static str], clean: &'static [&'static str]) {
    if !crate::util::root_or_skip(
        "corpus::json_c",
        "CMake calls its tools by path, which takes a mount namespace (root, as in CI)",
    ) {
        return;
    }
    let configure: &'static [&'static [&'static str]] = match generator {
        ["Ninja"] => &[&["cmake", "-S", ".", "-B", "build", "-G", "Ninja"]],
        _ => &[&["cmake", "-S", ".", "-B", "build", "-G", "Unix Makefiles"]],
    };
    same_bytes_through_infer(&Project {
        package: "json-c",
        configure,
        build_dir: "build",
        build,
        clean,
        smoke: &[("tests/test1", &[], "my_string=")],
    });
}

#[test]
fn json_c_with_cmake_and_ninja() {
    json_c(&["Ninja"], &["ninja", "-j2"], &["ninja", "clean"]);
}

#[test]
fn json_c_with_cmake_and_makefiles() {
    json_c(&["Unix Makefiles"], &["make", "-j2"], &["make", "clean"]);
}

#[test]
fn xz_utils_with_automake_and_libtool() {
    same_bytes_through_infer(&Project {
        package: "xz-utils",
        configure: &[&["./configure"]],
        build_dir: ".",
        build: &["make", "-j2"],
        clean: &["make", "clean"],
        smoke: &[("src/xz/xz", &["--version"], "liblzma 5."), ("src/xzdec/xzdec", &["--version"], "xzdec")],
    });
}

#[test]
fn mosh_in_cpp_with_protobuf() {
    same_bytes_through_infer(&Project {
        package: "mosh",
        configure: &[&["./configure"]],
        build_dir: ".",
        build: &["make", "-j2"],
        clean: &["make", "clean"],
        smoke: &[
            ("src/frontend/mosh-client", &["--version"], "mosh 1."),
            ("src/frontend/mosh-server", &["--version"], "mosh 1."),
        ],
    });
}

#[test]
fn sqlite3_with_its_generators() {
    same_bytes_through_infer(&Project {
        package: "sqlite3",
        configure: &[&["./configure", "--disable-tcl"]],
        build_dir: ".",
        build: &["make", "-j2"],
        clean: &["make", "clean"],
        smoke: &[("sqlite3", &[":memory:", "select 6*7, sqlite_version()"], "42|3.")],
    });
}
