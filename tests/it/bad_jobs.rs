//! A wrong job gets one clear error naming the file and the place, exit code 2, and nothing runs.

use crate::util::{run_in, write};

const GOOD: &str = r#"[values]
script = "count.sh"

[[thunk]]
name = "count"
program = "script"
outputs = ["out.txt"]

[[thunk]]
name = "merge"
program = { host = "/bin/sh" }
args = ["-c", "cat in > merged"]
inputs = { "in" = "count#out.txt" }
outputs = ["merged"]

[targets]
"merged.txt" = "merge#merged"
"#;

/// Runs the job with `from` replaced by `to` and checks the one-line error.
fn refused(from: &str, to: &str, expected: &str) {
    assert!(GOOD.contains(from), "test edits a line the job has: {from}");
    let dir = tempfile::tempdir().expect("tempdir");
    let job =
        write(dir.path(), &[("job.toml", &GOOD.replace(from, to)), ("count.sh", "#!/bin/sh\necho 1 > out.txt\n")]);
    let run = run_in(dir.path(), &job, &["--workers", "2"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let shown = run.stderr.replace(&format!("{}/", dir.path().display()), "");
    assert!(shown.starts_with(&format!("error: {expected}")), "got: {shown}");
    assert_eq!(shown.lines().count(), 1, "one line: {shown}");
    assert!(!dir.path().join(".thunkmesh").exists(), "nothing ran");
}

#[test]
fn the_unchanged_job_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write(dir.path(), &[("job.toml", GOOD), ("count.sh", "#!/bin/sh\necho 1 > out.txt\n")]);
    let run = run_in(dir.path(), &job, &["--workers", "2"]);
    run.ok();
    assert_eq!(run.out("merged.txt"), b"1\n");
}

#[test]
fn unknown_key() {
    refused(
        "outputs = [\"merged\"]",
        "outputs = [\"merged\"]\ntimout = \"1s\"",
        "job.toml: line 15, column 1: unknown field `timout`",
    );
}

#[test]
fn missing_file() {
    refused("\"count.sh\"", "\"nope.sh\"", "job.toml: values, key `script`: cannot read `nope.sh`: No such file");
}

#[test]
fn unknown_ref() {
    refused(
        "\"count#out.txt\"",
        "\"count#out\"",
        "job.toml: thunk `merge`, key `inputs.in`: `count#out` is not a value, nor `thunk#output`",
    );
}

#[test]
fn cycle() {
    refused("program = \"script\"", "program = \"merge#merged\"", "job.toml: thunks form a cycle: ");
}

#[test]
fn duplicate_name() {
    refused("name = \"merge\"", "name = \"count\"", "job.toml: thunk name `count` is used twice");
}

#[test]
fn duplicate_output() {
    refused(
        "outputs = [\"out.txt\"]",
        "outputs = [\"out.txt\", \"out.txt\"]",
        "job.toml: thunk `count`, key `outputs`: output `out.txt` is listed twice",
    );
}

#[test]
fn output_escaping_the_sandbox() {
    refused(
        "outputs = [\"merged\"]",
        "outputs = [\"../merged\"]",
        "job.toml: thunk `merge`, key `inputs/outputs`: path `../merged` must be relative and stay inside the sandbox",
    );
}

#[test]
fn target_escaping_the_output_directory() {
    refused(
        "\"merged.txt\" =",
        "\"../../merged.txt\" =",
        "job.toml: targets, key `../../merged.txt`: path `../../merged.txt` must be relative",
    );
}

#[test]
fn not_toml() {
    refused("[targets]", "[targets", "job.toml: line 16, column 9: unclosed table, expected `]`");
}

#[test]
fn missing_job_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &dir.path().join("absent.toml"), &[]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("absent.toml: cannot read"), "{}", run.stderr);
}

#[test]
fn a_store_url_that_cannot_work_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write(dir.path(), &[("job.toml", GOOD), ("count.sh", "#!/bin/sh\necho 1 > out.txt\n")]);
    let run = run_in(dir.path(), &job, &["--workers", "2", "--store", "ftp://example/x"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.starts_with("error: store URL `ftp://example/x` is not supported"), "{}", run.stderr);
    let run = run_in(dir.path(), &job, &["--workers", "2", "--store", "memory://?latency=s3-glacier"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("no latency profile `s3-glacier`"), "{}", run.stderr);
}

/// Issue 12, finding 11: a job too large for one message used to upload its inputs and then
/// lose its connection (exit 1). A job now travels in pieces (issue 15), but one thunk still
/// travels whole: a thunk too large for a frame is refused before any upload, with exit code 2.
#[test]
fn a_thunk_too_large_for_one_message_is_refused_before_any_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 300 arguments of 60,000 bytes: each under the 64 KiB string limit, together over 16 MiB.
    let huge = vec![format!("\"{}\"", "x".repeat(60_000)); 300].join(", ");
    let text = format!(
        "[values]\ndata = \"data.txt\"\n\n[[thunk]]\nname = \"a\"\nprogram = {{ host = \"/bin/echo\" }}\nargs = [{huge}]\ninputs = {{ \"d\" = \"data\" }}\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"a#o\"\n"
    );
    let job = write(dir.path(), &[("job.toml", &text), ("data.txt", "data\n")]);
    let run = run_in(dir.path(), &job, &["--workers", "1"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("thunk `a` is") && run.stderr.contains("over the 16777216-byte limit of one frame"),
        "{}",
        run.stderr
    );
    assert!(run.stored_blobs().is_empty(), "nothing was uploaded: {:?}", run.stored_blobs());
}
