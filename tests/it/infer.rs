//! Model substitution with the generic model (issue 13): `wrap` records calls as thunks and
//! leaves placeholders, `force` builds them on the local mesh and puts the real files in their
//! place, `describe` and `hash` inspect. Real processes, the real sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{Run, finish, thunkmesh};

/// `thunkmesh ARGS` in `dir`.
pub(crate) fn tm(dir: &Path, args: &[&str]) -> Run {
    finish(dir, thunkmesh().current_dir(dir).args(args).output().expect("start thunkmesh"))
}

pub(crate) fn force(dir: &Path, extra: &[&str]) -> Run {
    let args = [&["force", "--summary-json", "summary.json", "--workers", "2"], extra].concat();
    tm(dir, &args)
}

/// A build of three steps, none of them C: sort a word list, count it, and make a program that
/// prints the count.
fn record_build(dir: &Path) {
    std::fs::write(dir.join("words.txt"), "pear\napple\nfig\n").expect("write");
    tm(
        dir,
        &[
            "wrap",
            "--in",
            "words.txt",
            "--out",
            "build/sorted.txt",
            "--",
            "sort",
            "-o",
            "build/sorted.txt",
            "words.txt",
        ],
    )
    .ok();
    let count = "wc -l < build/sorted.txt | tr -d ' ' > build/count.txt";
    let wrapped =
        ["wrap", "--env", "LC_ALL=C", "--in", "build/sorted.txt", "--out", "build/count.txt", "--", "sh", "-c", count];
    tm(dir, &wrapped).ok();
    let program = "printf '#!/bin/sh\\necho %s words\\n' $(cat build/count.txt) > build/say";
    tm(dir, &["wrap", "--executable", "--in", "build/count.txt", "--out", "build/say", "--", "sh", "-c", program]).ok();
}

#[test]
fn wrapped_calls_are_forced_into_the_real_files_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    record_build(dir.path());
    let say = dir.path().join("build/say");
    assert!(std::fs::read_to_string(&say).expect("read").starts_with("# thunkmesh placeholder v1\n"));
    let first = force(dir.path(), &["build/say"]);
    first.ok();
    assert_eq!(first.num("thunks_executed"), 3, "{}", first.stdout);
    assert!(first.summary["targets"]["build/say"].as_str().is_some_and(|id| id.starts_with('B')), "{}", first.summary);
    assert_eq!(std::fs::metadata(&say).expect("meta").permissions().mode() & 0o777, 0o755);
    let said = std::process::Command::new(&say).output().expect("run the forced program");
    assert_eq!(said.stdout, b"3 words\n");
    // The upstream placeholders were not asked for: they stay placeholders until forced.
    let sorted = dir.path().join("build/sorted.txt");
    assert!(std::fs::read_to_string(&sorted).expect("read").starts_with("# thunkmesh placeholder v1\n"));
    let rest = force(dir.path(), &["--all"]);
    rest.ok();
    assert_eq!(rest.num("thunks_executed"), 0, "the memo cache has both: {}", rest.stdout);
    assert_eq!(std::fs::read(&sorted).expect("read"), b"apple\nfig\npear\n");
    assert_eq!(std::fs::read(dir.path().join("build/count.txt")).expect("read"), b"3\n");
    assert_eq!(
        tm(dir.path(), &["force", "--all"]).stdout.trim(),
        "nothing to force: no placeholder under the current folder"
    );
}

/// `wrap --ship` records the program as the program of its own root, which holds it and what
/// it needs to start: forced, it finds nothing else of the machine (no `tr` beside the shell).
/// Without `--ship`, the same call sees the node's programs.
#[test]
fn a_wrapped_program_shipped_with_its_libraries_sees_only_its_root() {
    if !crate::util::root_or_skip(
        "infer::a_wrapped_program_shipped_with_its_libraries_sees_only_its_root",
        "an own root needs mount namespaces (root, as in CI)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = "if command -v tr >/dev/null; then echo host; else echo shipped; fi";
    for (file, ship) in [("shipped.txt", &["--ship", "/bin/sh"][..]), ("plain.txt", &[][..])] {
        let script = format!("{{ {probe}; }} > {file}");
        let wrap = [&["wrap", "--out", file][..], ship, &["--", "sh", "-c", &script]].concat();
        tm(dir.path(), &wrap).ok();
    }
    let described = tm(dir.path(), &["describe", "shipped.txt"]);
    assert!(described.stdout.contains("from the thunk's own root"), "{}", described.stdout);
    force(dir.path(), &["--all"]).ok();
    assert_eq!(std::fs::read_to_string(dir.path().join("shipped.txt")).expect("read"), "shipped\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("plain.txt")).expect("read"), "host\n");
}

/// The same build recorded in two folders gives the same thunks, and storage mode the same
/// bytes.
#[test]
fn the_same_build_in_another_folder_has_the_same_ids_and_storage_mode_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    record_build(a.path());
    record_build(b.path());
    let placeholder = |dir: &Path| std::fs::read(dir.join("build/say")).expect("read");
    assert_eq!(placeholder(a.path()), placeholder(b.path()));
    force(a.path(), &["build/say"]).ok();
    force(b.path(), &["--mode", "storage", "build/say"]).ok();
    assert_eq!(placeholder(a.path()), placeholder(b.path()));
}

#[test]
fn bad_input_is_refused_with_exit_code_2_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    record_build(dir.path());
    let refused = |run: Run, said: &str| {
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
        assert!(run.stderr.starts_with(&format!("error: {said}")), "{}", run.stderr);
    };
    refused(tm(dir.path(), &["force", "words.tx"]), "words.tx: no such file");
    let outside = tm(dir.path(), &["wrap", "--in", "words.txt", "--out", "../x", "--", "cp", "words.txt", "../x"]);
    refused(outside, "../x: an output must be inside the build folder");
    let elsewhere = tm(dir.path(), &["force", "--state-dir", "elsewhere", "build/say"]);
    refused(elsewhere, "build/say: the state folder");
    refused(
        tm(dir.path(), &["wrap", "--out", "y", "--", "no-such-program"]),
        "program `no-such-program` is not on PATH",
    );
    assert!(!dir.path().join("y").exists());
}

#[test]
fn describe_and_hash_tell_what_a_placeholder_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    record_build(dir.path());
    let hashed = tm(dir.path(), &["hash", "words.txt"]);
    hashed.ok();
    let words = thunkmesh_protocol::Id::of_blob(b"pear\napple\nfig\n");
    assert_eq!(hashed.stdout, format!("{words}  words.txt\n"));
    let text = tm(dir.path(), &["describe", "build/sorted.txt"]);
    text.ok();
    assert!(text.stdout.contains(&format!("words.txt <- {words} (a file's bytes, recorded)")), "{}", text.stdout);
    assert!(text.stdout.contains("memo     not recorded in"), "{}", text.stdout);
    force(dir.path(), &["build/count.txt"]).ok();
    let json = tm(dir.path(), &["describe", "--json", "build/say"]);
    json.ok();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(json["inputs"]["build/count.txt"]["source"], "an output of another recorded thunk");
    assert_eq!(json["memo"], serde_json::Value::Null, "say was not forced");
    let sorted =
        tm(dir.path(), &["describe", "--json", json["inputs"]["build/count.txt"]["ref"].as_str().expect("ref")]);
    sorted.ok();
    let sorted: serde_json::Value = serde_json::from_str(&sorted.stdout).expect("json");
    assert!(sorted["memo"]["build/count.txt"].as_str().is_some_and(|b| b.starts_with('B')), "{sorted}");
}

/// A small C project with its own Makefile: two objects in a static library, a program linked
/// against it and stripped, `-MD` dependency files.
fn c_project(dir: &Path) {
    let files = [
        ("util.h", "int twice(int x);\nint square(int x);\n"),
        ("twice.c", "#include \"util.h\"\nint twice(int x) { return 2 * x; }\n"),
        ("square.c", "#include <stdio.h>\n#include \"util.h\"\nint square(int x) { return x * x; }\n"),
        (
            "main.c",
            "#include <stdio.h>\n#include \"util.h\"\nint main(void) { printf(\"%d %d\\n\", twice(21), square(7)); return 0; }\n",
        ),
        (
            "Makefile",
            "CFLAGS = -O2 -Wall\nOBJS = twice.o square.o\n\nprog: main.o libutil.a\n\t$(CC) $(CFLAGS) -o prog main.o -L. -lutil\n\tstrip prog\n\nlibutil.a: $(OBJS)\n\tar rc libutil.a $(OBJS)\n\t-ranlib libutil.a\n\n%.o: %.c util.h\n\t$(CC) $(CFLAGS) -MD -c -o $@ $<\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

fn make(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("make").args(["-s", "CC=cc"]).args(args).current_dir(dir).status();
    assert!(status.expect("make").success());
}

const BUILT: [&str; 5] = ["main.o", "twice.o", "square.o", "libutil.a", "prog"];

#[test]
fn an_unchanged_makefile_is_inferred_and_forced_into_the_same_bytes_as_make() {
    let (direct, inferred) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    c_project(direct.path());
    make(direct.path(), &[]);
    c_project(inferred.path());
    let infer = tm(inferred.path(), &["infer", "--verbose", "--", "make", "-s", "CC=cc"]);
    infer.ok();
    assert!(!infer.stderr.contains("running the real"), "every call was modelled: {}", infer.stderr);
    assert!(infer.stderr.contains("recorded 6 new thunk(s)"), "{}", infer.stderr);
    for file in BUILT {
        let text = std::fs::read_to_string(inferred.path().join(file)).unwrap_or_default();
        // A program's placeholder starts with a `#!` line that forces it when it is run.
        let body = text.strip_prefix("#!").and_then(|t| t.split_once('\n')).map_or(text.as_str(), |(_, b)| b);
        assert!(body.starts_with("# thunkmesh placeholder v1\n"), "{file} was built for real at infer time");
    }
    let built = force(inferred.path(), &["--all"]);
    built.ok();
    assert_eq!(built.num("thunks_executed"), 6, "{}", built.stdout);
    for file in BUILT {
        let read = |dir: &Path| std::fs::read(dir.join(file)).expect("read");
        assert!(read(inferred.path()) == read(direct.path()), "{file} differs from make's");
    }
    let said = std::process::Command::new(inferred.path().join("prog")).output().expect("run prog");
    assert_eq!(said.stdout, b"42 49\n");
    // A changed source: make asks again for what depends on it, and only that runs.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let twice = inferred.path().join("twice.c");
    std::fs::write(&twice, "#include \"util.h\"\nint twice(int x) { return x + x + 1; }\n").expect("edit");
    tm(inferred.path(), &["infer", "--", "make", "-s", "CC=cc"]).ok();
    let again = force(inferred.path(), &["prog"]);
    again.ok();
    assert_eq!(again.num("thunks_executed"), 4, "twice.o, libutil.a, prog's link and strip: {}", again.stdout);
    let said = std::process::Command::new(inferred.path().join("prog")).output().expect("run prog");
    assert_eq!(said.stdout, b"43 49\n");
}

/// The same inferred build forced in storage mode gives the same bytes.
#[test]
fn an_inferred_build_in_storage_mode_gives_the_same_bytes() {
    let (p2p, storage) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    for dir in [p2p.path(), storage.path()] {
        c_project(dir);
        tm(dir, &["infer", "--", "make", "-s", "CC=cc"]).ok();
    }
    force(p2p.path(), &["prog"]).ok();
    force(storage.path(), &["--mode", "storage", "prog"]).ok();
    let read = |dir: &Path| std::fs::read(dir.join("prog")).expect("read");
    assert!(read(p2p.path()) == read(storage.path()));
}

/// zlib's Debian source package (fetched by the test command), unpacked into `dir` and
/// configured for a static build.
fn zlib(dir: &Path) {
    let tree = crate::util::debian_source("zlib", dir);
    let configured = std::process::Command::new("./configure").arg("--static").current_dir(tree).output();
    assert!(configured.expect("configure").status.success());
}

const ZLIB_BUILT: [&str; 3] = ["libz.a", "example", "minigzip"];

/// zlib from its unchanged Makefile: `infer -- make libz.a example minigzip`, then `force`,
/// gives the bytes `make` gives (two direct builds in two folders agree first), its own tests
/// pass, and, recorded `--relocatable`, the same build in another folder runs nothing.
#[test]
fn zlib_is_built_from_its_makefile_through_infer_and_force_as_make_builds_it() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let trees: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.path().join("zlib")).collect();
    for dir in &dirs {
        zlib(dir.path());
    }
    let targets = ZLIB_BUILT;
    make(&trees[0], &targets);
    make(&trees[1], &targets);
    let infer = tm(&trees[2], &[&["infer", "--relocatable", "--verbose", "--", "make", "-s"][..], &targets].concat());
    infer.ok();
    assert!(!infer.stderr.contains("running the real"), "every call was modelled: {}", infer.stderr);
    let built = force(&trees[2], &["--all"]);
    built.ok();
    for file in ZLIB_BUILT {
        let read = |dir: &Path| std::fs::read(dir.join(file)).expect("read");
        assert!(read(&trees[0]) == read(&trees[1]), "{file}: two direct builds differ");
        assert!(read(&trees[2]) == read(&trees[0]), "{file} differs from make's");
    }
    let example = std::process::Command::new("./example").current_dir(&trees[2]).output().expect("example");
    assert!(example.status.success(), "zlib's example failed: {}", String::from_utf8_lossy(&example.stdout));
    let round_trip = std::process::Command::new("sh")
        .args(["-c", "./minigzip < zlib.h | ./minigzip -d | cmp - zlib.h"])
        .current_dir(&trees[2])
        .status();
    assert!(round_trip.expect("minigzip").success(), "minigzip did not round-trip zlib.h");
    // The same build inferred `--relocatable` in a fourth folder with the third's state: the
    // same thunks, all in the memo cache.
    let state = trees[2].join(".thunkmesh");
    let state = state.to_str().expect("utf-8");
    let fourth = tempfile::tempdir().expect("tempdir");
    zlib(fourth.path());
    let tree = fourth.path().join("zlib");
    tm(&tree, &[&["infer", "--relocatable", "--state-dir", state, "--", "make", "-s"][..], &targets].concat()).ok();
    let again = force(&tree, &["--all", "--state-dir", state]);
    again.ok();
    assert_eq!(again.num("thunks_executed"), 0, "{}", again.stdout);
    for file in ZLIB_BUILT {
        assert!(std::fs::read(tree.join(file)).expect("read") == std::fs::read(trees[0].join(file)).expect("read"));
    }
}

/// `thunkmesh force ARGS` in `dir`, started in a mount namespace where the compiler, the
/// binutils and the system headers are hidden (empty file systems over `/usr/lib/gcc`,
/// `/usr/include`, `/usr/libexec` and `/usr/bin`, which `/bin` is on this kind of system): its
/// nodes cannot see a compiler.
fn force_without_a_compiler(dir: &Path, extra: &[&str]) -> Run {
    let hide = "for d in /usr/lib/gcc /usr/include /usr/libexec /usr/bin; do \
                  if [ -d $d ]; then mount -t tmpfs hidden $d || exit 99; fi; done; \
                if [ -e /usr/bin/cc ] || [ -e /usr/bin/as ] || [ -e /bin/ld ]; then exit 98; fi; \
                exec \"$0\" \"$@\"";
    let mut command = std::process::Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", hide, env!("CARGO_BIN_EXE_thunkmesh")]);
    command.args([&["force", "--summary-json", "summary.json", "--workers", "2"], extra].concat());
    let run = finish(dir, command.current_dir(dir).output().expect("start unshare"));
    assert!(!matches!(run.code, Some(98 | 99)), "the compiler could not be hidden: {}", run.stderr);
    run
}

/// The compile and link thunks bring their toolchain (`--toolchain hermetic`, the default): a
/// node that cannot see the host's compiler builds zlib into the bytes `make` gives. Recorded
/// with `--toolchain host` instead, the same node refuses to run the host's compiler it lacks.
#[test]
fn a_node_without_a_compiler_builds_zlib_into_the_same_bytes() {
    if !crate::util::root_or_skip(
        "infer::a_node_without_a_compiler_builds_zlib_into_the_same_bytes",
        "hiding the compiler takes a mount namespace (root, as in CI)",
    ) {
        return;
    }
    let (direct, inferred) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    zlib(direct.path());
    zlib(inferred.path());
    let (direct, tree) = (direct.path().join("zlib"), inferred.path().join("zlib"));
    make(&direct, &ZLIB_BUILT);
    tm(&tree, &[&["infer", "--", "make", "-s"][..], &ZLIB_BUILT].concat()).ok();
    let built = force_without_a_compiler(&tree, &["--all"]);
    built.ok();
    assert!(built.num("thunks_executed") > 10, "{}", built.stdout);
    for file in ZLIB_BUILT {
        let read = |dir: &Path| std::fs::read(dir.join(file)).expect("read");
        assert!(read(&tree) == read(&direct), "{file} differs from make's");
    }
    let project = tempfile::tempdir().expect("tempdir");
    c_project(project.path());
    tm(project.path(), &["infer", "--toolchain", "host", "--", "make", "-s", "CC=cc"]).ok();
    let refused = force_without_a_compiler(project.path(), &["prog"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    // force keeps going past a failure, and names each in its summary.
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("host program /usr/bin/cc: "), "{said}");
}
