//! A real project's test suite as thunks (issue 13): libyaml, from Debian's source package,
//! built by its unchanged automake Makefiles through `infer -- make` and `infer -- make check`
//! (the harness's `LOG_COMPILER` is the test model, `thunkmesh wrap --stdout`), then forced with
//! `--keep-going`. And fmtlib's googletest suite and CTest project through `thunkmesh test`,
//! one test per thunk (issue 30). Real processes, the real sandbox.

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

/// A googletest test added to fmtlib's own (`test/broken-test.cc`): one passes, one fails, one
/// skips itself, one is disabled.
const BROKEN_GTEST: &str = r#"#include <cstdio>
#include "gtest/gtest.h"
TEST(broken_test, passes) { EXPECT_EQ(1, 1); }
TEST(broken_test, fails) { std::printf("expected 2 widgets, made 1\n"); EXPECT_EQ(2, 1); }
TEST(broken_test, skips) { GTEST_SKIP() << "not on this machine"; }
TEST(broken_test, DISABLED_slow) {}
"#;

/// CTest tests added to fmtlib's: the broken googletest binary, a script that reads a data file
/// its command line names, and one each judged by WILL_FAIL, SKIP_RETURN_CODE and
/// PASS_REGULAR_EXPRESSION.
const CTEST_TESTS: &str = r#"
add_fmt_test(broken-test)
add_test(NAME reads-data COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/data-check.sh ${CMAKE_CURRENT_SOURCE_DIR}/data.txt)
add_test(NAME expected-failure COMMAND false)
set_tests_properties(expected-failure PROPERTIES WILL_FAIL TRUE)
add_test(NAME skips COMMAND sh -c "exit 77")
set_tests_properties(skips PROPERTIES SKIP_RETURN_CODE 77)
add_test(NAME says-ok COMMAND sh -c "echo all ok; exit 3")
set_tests_properties(says-ok PROPERTIES PASS_REGULAR_EXPRESSION "all ok")
"#;

/// fmtlib, from Debian's source package, with the tests above, configured and built by CMake
/// and Ninja against Debian's googletest (`/usr/src/googletest`), without optimization (the
/// fastest build).
fn fmtlib(dir: &Path) -> PathBuf {
    let tree = crate::util::debian_source("fmtlib", dir);
    let test = tree.join("test");
    std::fs::write(test.join("broken-test.cc"), BROKEN_GTEST).expect("write");
    std::fs::write(test.join("data.txt"), "widgets\n").expect("write");
    std::fs::write(test.join("data-check.sh"), "#!/bin/sh\ngrep -q widgets \"$1\"\n").expect("write");
    std::fs::set_permissions(test.join("data-check.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let lists = test.join("CMakeLists.txt");
    let listed = std::fs::read_to_string(&lists).expect("read") + CTEST_TESTS;
    std::fs::write(&lists, listed).expect("write");
    let build = dir.join("build");
    let source = tree.to_str().expect("utf-8");
    run(dir, "cmake", &["-G", "Ninja", "-S", source, "-B", "build", "-DFMT_TEST=ON", "-DFMT_DOC=OFF"]);
    run(dir, "ninja", &["-C", "build"]);
    build
}

/// Each test case of a JUnit XML file and its verdict, as junitparser (the reader CI tools use)
/// reads it, after it checked the counts the file claims (`junit_verdicts.py`).
fn verdicts(xml: &Path, names_only: bool) -> String {
    let mut python = Command::new(crate::util::repo("target/py-venv/bin/python"));
    python.arg(crate::util::repo("tests/it/junit_verdicts.py")).arg(xml);
    if names_only {
        python.arg("--names");
    }
    let done = python.output().expect("python");
    assert!(done.status.success(), "{}: {}", xml.display(), String::from_utf8_lossy(&done.stderr));
    String::from_utf8(done.stdout).expect("utf-8")
}

/// `thunkmesh test` on fmtlib's googletest binaries and its CTest project gives every test the
/// verdict googletest's and CTest's own JUnit reports give it (read back by junitparser), names
/// the failing one with its output, counts tests, exits 1, and a rerun runs only the failure.
#[test]
fn fmtlib_s_googletest_and_ctest_suites_run_one_test_per_thunk() {
    if !crate::util::root_or_skip(
        "test_suites::fmtlib_s_googletest_and_ctest_suites_run_one_test_per_thunk",
        "a test's own root needs mount namespaces (root, as in CI)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let build = fmtlib(dir.path());
    let test = |args: &[&str]| {
        let args = [&["test", "--summary-json", "summary.json", "--workers", "2"], args].concat();
        tm(&build, &args)
    };

    // googletest: the verdicts of its own XML, the failure named with its output, the counts.
    let own = dir.path().join("gtest-own.xml");
    let direct = Command::new(build.join("bin/broken-test"))
        .arg(format!("--gtest_output=xml:{}", own.display()))
        .output()
        .expect("broken-test");
    assert_eq!(direct.status.code(), Some(1), "the broken test fails when run directly");
    let ours = dir.path().join("gtest.xml");
    let broken = test(&["--junit", ours.to_str().expect("utf-8"), "--", "./bin/broken-test"]);
    assert_eq!(broken.code, Some(1), "{}\n{}", broken.stdout, broken.stderr);
    assert!(broken.stdout.contains("FAILED broken_test.fails: exit status 1"), "{}", broken.stdout);
    assert!(broken.stdout.contains("expected 2 widgets, made 1"), "its output is shown: {}", broken.stdout);
    assert!(broken.stdout.trim_end().ends_with("1 tests passed, 1 failed, 2 skipped"), "{}", broken.stdout);
    assert!(broken.stderr.contains("1 test(s) failed"), "{}", broken.stderr);
    assert_eq!(verdicts(&ours, false), verdicts(&own, false));
    assert_eq!(broken.num("thunks_total"), 3, "the disabled test is not run");

    // A green suite: every test googletest lists passes, each in its thunk; run again, none runs.
    let listed = Command::new(build.join("bin/format-test")).arg("--gtest_list_tests").output().expect("list");
    let tests = String::from_utf8_lossy(&listed.stdout).lines().filter(|l| l.starts_with("  ")).count();
    assert!(tests > 50, "format-test lists {tests} tests");
    let green = test(&["--", "./bin/format-test"]);
    green.ok();
    assert!(
        green.stdout.trim_end().ends_with(&format!("{tests} tests passed, 0 failed, 0 skipped")),
        "{}",
        green.stdout
    );
    assert_eq!(green.num("thunks_executed") as usize, tests);
    let again = test(&["--", "./bin/format-test"]);
    again.ok();
    assert_eq!((again.num("thunks_executed"), again.num("thunks_cached") as usize), (0, tests), "nothing reruns");

    // CTest: the verdicts of CTest's own JUnit report, for every kind of test added above.
    let own = dir.path().join("ctest-own.xml");
    let direct = Command::new("ctest").arg("--output-junit").arg(&own).current_dir(&build).output().expect("ctest");
    assert_eq!(direct.status.code(), Some(8), "ctest fails: {}", String::from_utf8_lossy(&direct.stdout));
    let ours = dir.path().join("ctest.xml");
    let suite = test(&["--junit", ours.to_str().expect("utf-8"), "--", "ctest"]);
    assert_eq!(suite.code, Some(1), "{}\n{}", suite.stdout, suite.stderr);
    assert_eq!(verdicts(&ours, true), verdicts(&own, true));
    let total = verdicts(&own, true).lines().count();
    let counts = format!("{} tests passed, 1 failed, 1 skipped", total - 2);
    assert!(suite.stdout.trim_end().ends_with(&counts), "{}", suite.stdout);
    assert!(suite.stdout.contains("FAILED broken-test: exit status 1"), "{}", suite.stdout);
    let rerun = test(&["--", "ctest"]);
    assert_eq!((rerun.code, rerun.num("thunks_executed"), rerun.num("thunks_failed")), (Some(1), 0, 1));
    assert!(rerun.stdout.contains("expected 2 widgets, made 1"), "the failure ran again: {}", rerun.stdout);
}

/// `examples/tests`, built and run by its `expected.sh` (CMake, Ninja, CTest, googletest's own
/// XML): `thunkmesh test` through CTest and through the googletest binary gives every test the
/// verdict CTest and googletest give it, the skipped one included (CTest's
/// SKIP_REGULAR_EXPRESSION, googletest's GTEST_SKIP).
#[test]
fn the_tests_example_gives_ctest_s_and_googletest_s_verdicts() {
    if !crate::util::root_or_skip(
        "test_suites::the_tests_example_gives_ctest_s_and_googletest_s_verdicts",
        "a test's own root needs mount namespaces (root, as in CI)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let build = dir.path().join("build");
    crate::util::shell(&crate::util::repo("examples/tests/expected.sh"), &[&build]);
    for (suite, own, names_only) in [("ctest", "ctest.xml", true), ("./stats_test", "gtest.xml", false)] {
        let ours = dir.path().join(format!("{own}.ours"));
        let run = tm(
            &build,
            &["test", "--summary-json", "summary.json", "--junit", ours.to_str().expect("utf-8"), "--", suite],
        );
        run.ok();
        assert!(run.stdout.trim_end().ends_with("9 tests passed, 0 failed, 1 skipped"), "{suite}: {}", run.stdout);
        assert_eq!(verdicts(&ours, names_only), verdicts(&build.join(own), names_only), "{suite}");
    }
}
