//! Thunks that fail: the run names the thunk, its status and the tail of its output; what
//! completed is kept, and a rerun resumes from it.

use crate::util::{run_in, write};

fn job(step: &str, timeout: &str) -> String {
    format!(
        r#"[[thunk]]
name = "first"
program = {{ host = "/bin/sh" }}
args = ["-c", "echo first > out"]
outputs = ["out"]

[[thunk]]
name = "second"
program = {{ host = "/bin/sh" }}
args = ["-c", "{step}"]
inputs = {{ "in" = "first#out" }}
outputs = ["out"]
timeout = "{timeout}"

[targets]
"result.txt" = "second#out"
"#
    )
}

#[test]
fn a_failing_thunk_is_named_with_its_stderr_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = write(dir.path(), &[("job.toml", &job("echo something broke >&2; exit 3", "10s"))]);
    let run = run_in(dir.path(), &failing, &["--workers", "2"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("thunk `second` failed: exit status 3"), "{}", run.stderr);
    assert!(run.stderr.contains("something broke"), "{}", run.stderr);

    let fixed = write(dir.path(), &[("job.toml", &job("cat in in > out", "10s"))]);
    let rerun = run_in(dir.path(), &fixed, &["--workers", "2"]);
    rerun.ok();
    assert_eq!(rerun.out("result.txt"), b"first\nfirst\n");
    assert_eq!(rerun.num("thunks_executed"), 1, "`first` completed before the failure and is not run again");
}

#[test]
fn a_thunk_that_writes_to_its_input_fails_and_the_damaged_object_is_not_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `in` is a read-only hard link to the node's cache, owned by the node's user; in the
    // sandbox a root node's programs run as nobody, and anyone else's lack the write bit.
    let writing = write(dir.path(), &[("job.toml", &job("echo more >> in && cp in out", "10s"))]);
    let run = run_in(dir.path(), &writing, &["--workers", "1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    // Without the sandbox a root node's program can write it: the node finds out afterwards.
    if crate::util::is_root() {
        let run = crate::util::run_with_sandbox(dir.path(), &writing, "off", &["--workers", "1"]);
        assert!(run.stderr.contains("thunk `second` failed: the program wrote to input `in`"), "{}", run.stderr);
    }

    let fixed = write(dir.path(), &[("job.toml", &job("cat in in > out", "10s"))]);
    let rerun = run_in(dir.path(), &fixed, &["--workers", "1"]);
    rerun.ok();
    assert_eq!(rerun.out("result.txt"), b"first\nfirst\n", "the appended line is not seen again");
}

#[test]
fn a_thunk_past_its_timeout_is_killed_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = write(dir.path(), &[("job.toml", &job("sleep 30", "300ms"))]);
    let started = std::time::Instant::now();
    let run = run_in(dir.path(), &slow, &["--workers", "2"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("thunk `second` failed: timed out after 300ms"), "{}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the sleep was killed");
}

#[test]
fn a_missing_output_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lazy = write(dir.path(), &[("job.toml", &job("true", "10s"))]);
    let run = run_in(dir.path(), &lazy, &["--workers", "2"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("thunk `second` failed: output `out` was not created"), "{}", run.stderr);
}

#[test]
fn the_environment_is_only_what_the_thunk_declares() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"[[thunk]]
name = "env"
program = { host = "/usr/bin/env" }
env = { ONLY = "this" }
outputs = ["out"]

[[thunk]]
name = "show"
program = { host = "/bin/sh" }
args = ["-c", "/usr/bin/env > out"]
env = { ONLY = "this" }
outputs = ["out"]

[targets]
"env.txt" = "show#out"
"#;
    let job = write(dir.path(), &[("job.toml", text)]);
    let mut cmd = crate::util::thunkmesh();
    cmd.current_dir(dir.path()).arg("run").arg(&job).args(["--workers", "2"]).env("LEAKY", "1");
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = std::fs::read_to_string(dir.path().join("out/env.txt")).expect("env.txt");
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).filter(|n| *n != "PWD").collect();
    assert_eq!(names, ["ONLY"], "{env}");
}

#[test]
fn a_straggling_thunk_is_copied_to_another_node_and_the_slow_copy_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("first-attempt");
    // The first attempt (whichever node runs it) hangs; any later attempt finishes at once. The
    // quick thunk gives the job an average duration to compare with. The marker lives outside
    // the sandbox, which is off for this test.
    let script = format!("if mkdir {} 2>/dev/null; then sleep 29.77; fi; echo done > out", marker.display());
    let text = format!(
        r#"[[thunk]]
name = "slow-once"
program = {{ host = "/bin/sh" }}
args = ["-c", "{script}"]
outputs = ["out"]

[[thunk]]
name = "quick"
program = {{ host = "/bin/sh" }}
args = ["-c", "echo quick > out"]
outputs = ["out"]

[targets]
"result.txt" = "slow-once#out"
"quick.txt" = "quick#out"
"#
    );
    let job = write(dir.path(), &[("job.toml", &text)]);
    let started = std::time::Instant::now();
    let run = crate::util::run_with_sandbox(dir.path(), &job, "off", &["--workers", "2", "--slots", "1"]);
    run.ok();
    assert_eq!(run.out("result.txt"), b"done\n");
    assert!(marker.exists(), "the first attempt ran");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the copy won: {:?}", started.elapsed());
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 29.77"]).output().expect("pgrep");
    assert!(left.stdout.is_empty(), "the hanging copy and its children were killed");
}

#[test]
fn a_node_whose_disk_fills_up_drains_and_its_task_runs_on_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = crate::util::Tmpfs::mount(&dir.path().join("small"), 4);
    let rdv = crate::util::SelfHosted::start(&dir.path().join("rdv"));
    let job = write(dir.path(), &[("job.toml", crate::util::SIX_MEGABYTES)]);
    // The only node at first keeps its cache (and sandboxes) on 4 MB: `big` fails there.
    let mut cramped = rdv.node(&small.0.join("cache"), "cramped");
    let runner = rdv.run_in_background(dir.path(), &job);
    let exited = || cramped.0.try_wait().expect("wait");
    let status =
        crate::util::wait_until(std::time::Duration::from_secs(30), exited, || "the cramped node did not stop".into());
    let log = std::fs::read_to_string(small.0.join("cache.log")).unwrap_or_default();
    assert!(!status.success(), "a node stopped by a full disk exits non-zero");
    assert!(log.contains("the disk holding its cache") && log.contains("is full"), "{log}");
    // The task was not the thunk's fault: it runs on a node that joins, and the job completes.
    let _roomy = rdv.node(&dir.path().join("roomy"), "roomy");
    let run = runner.join().expect("run thread");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out("big.bin"), vec![0; 6 << 20]);
}

/// A node whose sandbox cannot be set up (here its own binary, the process-tree launcher, was
/// removed under it, as an upgrade in place might) reports each such task as its own fault, not
/// the thunk's: the thunk runs on another node, and the job completes.
#[test]
fn a_thunk_whose_sandbox_cannot_be_set_up_runs_on_another_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = crate::util::SelfHosted::start(&dir.path().join("rdv"));
    let binary = dir.path().join("thunkmesh-removed-later");
    std::fs::copy(env!("CARGO_BIN_EXE_thunkmesh"), &binary).expect("copy the binary");
    let cache = dir.path().join("broken");
    let log = std::fs::File::create(cache.with_extension("log")).expect("log file");
    let broken = std::process::Command::new(&binary)
        .args(["node", "--rendezvous", &rdv.addr, "--bind", "127.0.0.1:0", "--sandbox", "process-tree"])
        .args(&rdv.trust)
        .args(["--name", "broken", "--cache-dir"])
        .arg(&cache)
        .env("THUNKMESH_TOKEN", &rdv.token)
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .expect("start the node");
    let _broken = crate::util::Proc(broken);
    let _healthy = rdv.node(&dir.path().join("healthy"), "healthy");
    rdv.wait_for_nodes(2, std::time::Duration::from_secs(30));
    std::fs::remove_file(&binary).expect("remove the binary");
    let thunks: String = (0..4)
        .map(|i| {
            format!(
                "[[thunk]]\nname = \"t{i}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"echo {i} > out\"]\noutputs = [\"out\"]\n\n"
            )
        })
        .collect();
    let targets: String = (0..4).map(|i| format!("\"t{i}.txt\" = \"t{i}#out\"\n")).collect();
    let job = write(dir.path(), &[("job.toml", &format!("{thunks}[targets]\n{targets}"))]);
    let run = rdv.run(dir.path(), &job, &rdv.token);
    run.ok();
    for i in 0..4 {
        assert_eq!(run.out(&format!("t{i}.txt")), format!("{i}\n").into_bytes());
    }
    let said = std::fs::read_to_string(cache.with_extension("log")).unwrap_or_default();
    assert!(said.contains("the sandbox could not be set up") && said.contains("this node's fault"), "{said}");
}

/// `--keep-going`, as a test suite wants it: a failing test does not stop the others, the one
/// that needs its output is skipped, the targets that could be made are written, and the
/// summary names the failure with its output and ends with the counts (exit status 1).
#[test]
fn a_job_that_keeps_going_runs_every_test_that_does_not_depend_on_a_failure() {
    let test = |name: &str, script: &str, input: &str| {
        format!(
            "[[thunk]]\nname = \"{name}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"{script}\"]\n{input}outputs = [\"out\"]\n\n"
        )
    };
    let text = [
        test("adds", "test $((2 + 2)) = 4 && echo ok > out", ""),
        test("multiplies", "echo 'expected 6, got 5' >&2; exit 1", ""),
        test("divides", "test $((6 / 3)) = 2 && echo ok > out", ""),
        test("uses-product", "cat in > out", "inputs = { \"in\" = \"multiplies#out\" }\n"),
        "[targets]\n\"adds\" = \"adds#out\"\n\"divides\" = \"divides#out\"\n\"uses-product\" = \"uses-product#out\"\n"
            .to_owned(),
    ]
    .concat();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write(dir.path(), &[("job.toml", &text)]);
    let stopped = run_in(dir.path(), &job, &["--workers", "1"]);
    assert_eq!(stopped.code, Some(1), "without --keep-going the job fails: {}", stopped.stderr);
    let run = run_in(dir.path(), &job, &["--workers", "2", "--keep-going"]);
    assert_eq!(run.code, Some(1), "a failure is still an exit status of 1: {}", run.stderr);
    assert!(run.stdout.contains("FAILED thunk `multiplies` failed: exit status 1"), "{}", run.stdout);
    assert!(run.stdout.contains("expected 6, got 5"), "the failure's output is shown: {}", run.stdout);
    assert!(run.stdout.trim_end().ends_with("2 passed, 1 failed, 1 skipped"), "{}", run.stdout);
    assert!(run.stderr.contains("1 thunk(s) failed"), "{}", run.stderr);
    assert_eq!(run.out("adds"), b"ok\n");
    assert_eq!(run.out("divides"), b"ok\n");
    assert!(!run.dir.join("out/uses-product").exists());
    assert_eq!((run.num("thunks_failed"), run.num("thunks_skipped")), (1, 1));
}

/// A test that only prints is a thunk whose result is its standard output (`stdout = true`):
/// no output file is invented, a pass is memoized like any result, and a failure shows what the
/// test printed to its standard output as well as to its standard error.
#[test]
fn a_test_that_only_prints_is_a_thunk_and_a_failure_shows_what_it_printed() {
    let test = |name: &str, script: &str| {
        format!(
            "[[thunk]]\nname = \"{name}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"{script}\"]\nstdout = true\n\n"
        )
    };
    let text = [
        test("adds", "echo 'PASS: 2 + 2 = 4'"),
        test("multiplies", "echo 'FAIL: expected 6, got 5'; echo 'see above' >&2; exit 1"),
        "[targets]\n\"adds.log\" = \"adds#stdout\"\n\"multiplies.log\" = \"multiplies#stdout\"\n".to_owned(),
    ]
    .concat();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write(dir.path(), &[("job.toml", &text)]);
    let run = run_in(dir.path(), &job, &["--workers", "2", "--keep-going"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stdout.contains("FAILED thunk `multiplies` failed: exit status 1"), "{}", run.stdout);
    let shown = run.stdout.find("FAIL: expected 6, got 5").zip(run.stdout.find("see above"));
    assert!(shown.is_some_and(|(out, err)| out < err), "stdout, then stderr: {}", run.stdout);
    assert!(run.stdout.trim_end().ends_with("1 passed, 1 failed"), "{}", run.stdout);
    assert_eq!(run.out("adds.log"), b"PASS: 2 + 2 = 4\n");
    assert!(!run.dir.join("out/multiplies.log").exists());
    let again = run_in(dir.path(), &job, &["--workers", "2", "--keep-going"]);
    let counts = (again.num("thunks_executed"), again.num("thunks_failed"));
    assert_eq!(counts, (0, 1), "the pass is memoized, the failure runs again: {}", again.stdout);
    assert!(again.stdout.contains("FAIL: expected 6, got 5"), "{}", again.stdout);
}

/// Four quick thunks, then one that reads them and runs `last`.
fn gathering_job(last: &str) -> String {
    let mut job = String::new();
    for i in 0..4 {
        job += &format!(
            "[[thunk]]\nname = \"part-{i}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"echo {i} > out\"]\n\
             outputs = [\"out\"]\n\n"
        );
    }
    let inputs: Vec<String> = (0..4).map(|i| format!("\"p{i}\" = \"part-{i}#out\"")).collect();
    job + &format!(
        "[[thunk]]\nname = \"all\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"{last}; cat p0 p1 p2 p3 > out\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ {} }}\noutputs = [\"out\"]\ntimeout = \"5m\"\n\n\
         [targets]\n\"all.txt\" = \"all#out\"\n",
        inputs.join(", ")
    )
}

/// Issue 14: memo entries are written in batches. A client killed while a long thunk runs has
/// already written the entries of what finished more than a couple of seconds before (the
/// batch is flushed every 2 s), so a rerun runs only what had not finished.
#[test]
fn a_client_killed_mid_job_keeps_the_memo_entries_of_what_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write(dir.path(), &[("job.toml", &gathering_job("sleep 120"))]);
    let mut client = crate::util::thunkmesh()
        .current_dir(dir.path())
        .arg("run")
        .arg(&job)
        .args(["--workers", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let batches = dir.path().join(".thunkmesh/store/memo");
    let written = || (std::fs::read_dir(&batches).map_or(0, |d| d.count()) > 0).then_some(());
    let what = || "no batch of memo entries was written while `all` ran".into();
    crate::util::wait_until(std::time::Duration::from_secs(30), written, what);
    client.kill().expect("kill");
    client.wait().expect("wait");
    // The orphaned node leaves when its rendezvous (in the killed client) is silent for 4 s.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let fixed = write(dir.path(), &[("job.toml", &gathering_job("true"))]);
    let rerun = run_in(dir.path(), &fixed, &["--workers", "1"]);
    rerun.ok();
    assert_eq!(rerun.out("all.txt"), b"0\n1\n2\n3\n");
    assert_eq!(rerun.num("thunks_executed"), 1, "the four parts came from the memo cache: {}", rerun.summary);
}

/// Issue 28, finding 9: a store that is full ends the run at once, in both modes, with one error
/// that names the store and the cause (it was only in the node's log, after the chain ran again
/// and again), and nothing runs twice.
#[test]
fn a_full_store_ends_the_run_at_once_with_its_cause() {
    if !crate::util::root_or_skip(
        "failures::a_full_store_ends_the_run_at_once_with_its_cause",
        "a full store is a small tmpfs, which takes root (as in CI)",
    ) {
        return;
    }
    for mode in ["p2p", "storage"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::util::Tmpfs::mount(&dir.path().join("store"), 4);
        // Each run of the thunk leaves a line in `runs` (the sandbox is off for that).
        let runs = dir.path().join("runs");
        let job = crate::util::SIX_MEGABYTES.replace("/bin/dd", &format!("echo ran >> {}; /bin/dd", runs.display()));
        let job = write(dir.path(), &[("job.toml", &job)]);
        let url = format!("file://{}", store.0.display());
        let started = std::time::Instant::now();
        let run = crate::util::run_with_sandbox(dir.path(), &job, "off", &["--store", &url, "--mode", mode]);
        assert_eq!(run.code, Some(1), "{mode}: {}", run.stderr);
        let error = run.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(error.contains(&url) && error.contains("No space left on device"), "{mode}: {}", run.stderr);
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{mode}: {:?}", started.elapsed());
        let ran = std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
        assert_eq!(ran, 1, "{mode}: the thunk ran {ran} times");
    }
}
