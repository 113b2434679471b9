//! A real project's test suite as thunks (issue 13): libyaml, from Debian's source package,
//! built by its unchanged automake Makefiles through `infer -- make` and `infer -- make check`
//! (the harness's `LOG_COMPILER` is the test model, `thunkmesh wrap --stdout`), then forced with
//! `--keep-going`. Real processes, the real sandbox.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::infer::{force, tm};

/// The test model an automake harness runs each test through: the test becomes a thunk whose
/// result is its standard output, its log file the placeholder, and 77 says SKIP until forced.
/// (`TEST_LOG_COMPILER` is the same for tests named `*.test`.)
const MODEL: &str = "thunkmesh wrap --status 77 --stdout --";

/// A test added to libyaml's own two (`tests/test-broken.test`), which fails on purpose.
const BROKEN: &str = "#!/bin/sh\necho 'expected 2 documents, parsed 1'\nexit 1\n";

/// The files compared with the direct build: the library, the tests' programs, a tool.
const BUILT: [&str; 4] = ["src/.libs/libyaml.a", "tests/test-version", "tests/test-reader", "tests/run-parser"];

/// libyaml's source, unpacked, with its build system generated (the Debian package builds it so
/// too), copied into each of `dirs` and configured there for a static library without `-g`.
fn libyaml(dirs: &[&Path]) -> Vec<PathBuf> {
    let source = tempfile::tempdir().expect("tempdir");
    let tree = crate::util::debian_source("libyaml", source.path());
    run(&tree, "autoreconf", &["-fi"]);
    dirs.iter()
        .map(|dir| {
            let copy = dir.join("libyaml");
            run(dir, "cp", &["-a", tree.to_str().expect("utf-8"), "libyaml"]);
            run(&copy, "./configure", &["--disable-shared", "CFLAGS=-O2", "-q"]);
            copy
        })
        .collect()
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let done = Command::new(program).args(args).current_dir(dir).output().expect(program);
    assert!(
        done.status.success(),
        "{program} {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&done.stderr)
    );
}

/// libyaml's library, programs and test logs through `infer` and `force --keep-going` are what
/// `make` and `make check` give (two direct builds agree first); the deliberately broken test is
/// named with what it printed, the summary ends with the counts, and a rerun runs only it.
#[test]
fn libyaml_s_make_check_runs_as_thunks_and_a_broken_test_is_named_with_its_output() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let trees = libyaml(&dirs.iter().map(|d| d.path()).collect::<Vec<_>>());
    for tree in &trees[..2] {
        run(tree, "make", &["-s"]);
        run(tree, "make", &["-s", "check"]);
    }
    let inferred = &trees[2];
    let broken = inferred.join("tests/test-broken.test");
    std::fs::write(&broken, BROKEN).expect("write");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let build = tm(inferred, &["infer", "--verbose", "--", "make", "-s"]);
    build.ok();
    let (compilers, tests) = (
        [format!("LOG_COMPILER={MODEL}"), format!("TEST_LOG_COMPILER={MODEL}")],
        "TESTS=test-version test-reader test-broken.test",
    );
    let check = tm(inferred, &["infer", "--verbose", "--", "make", "-s", "check", &compilers[0], &compilers[1], tests]);
    check.ok();
    for infer in [&build, &check] {
        assert!(!infer.stderr.contains("running the real"), "every call was modelled: {}", infer.stderr);
    }
    assert!(check.stdout.contains("# SKIP:  3"), "recorded, not run: {}", check.stdout);

    let forced = force(inferred, &["--all", "--keep-going"]);
    assert_eq!(forced.code, Some(1), "{}\n{}", forced.stdout, forced.stderr);
    assert!(
        forced.stdout.contains("FAILED thunk `./tests/test-broken.log` failed: exit status 1"),
        "{}",
        forced.stdout
    );
    assert!(forced.stdout.contains("expected 2 documents, parsed 1"), "its output is shown: {}", forced.stdout);
    let passed = forced.num("thunks_executed");
    assert!(forced.stdout.trim_end().ends_with(&format!("{passed} passed, 1 failed")), "{}", forced.stdout);
    for file in BUILT {
        let read = |tree: &Path| std::fs::read(tree.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(read(&trees[0]) == read(&trees[1]), "{file}: two direct builds differ");
        assert!(read(inferred) == read(&trees[0]), "{file} differs from make's");
    }
    for test in ["test-version", "test-reader"] {
        let log = |tree: &Path| std::fs::read_to_string(tree.join(format!("tests/{test}.log"))).expect("log");
        let verdict = format!("PASS {test} (exit status: 0)\n");
        assert_eq!(log(inferred) + &verdict, log(&trees[0]), "{test}'s output is make check's");
    }
    let again = force(inferred, &["--all", "--keep-going"]);
    assert_eq!((again.num("thunks_executed"), again.num("thunks_failed")), (0, 1), "{}", again.stdout);
}
