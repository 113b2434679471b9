//! Model substitution with the generic model (issue 13): `wrap` records calls as thunks and
//! leaves placeholders, `force` builds them on the local mesh and puts the real files in their
//! place, `describe` and `hash` inspect. Real processes, the real sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{Run, finish, thunkmesh};

/// `thunkmesh ARGS` in `dir`.
fn tm(dir: &Path, args: &[&str]) -> Run {
    finish(dir, thunkmesh().current_dir(dir).args(args).output().expect("start thunkmesh"))
}

fn force(dir: &Path, extra: &[&str]) -> Run {
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
    tm(dir, &["wrap", "--in", "build/sorted.txt", "--out", "build/count.txt", "--", "sh", "-c", count]).ok();
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
    refused(tm(dir.path(), &["force", "words.txt"]), "words.txt: is not a placeholder");
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
