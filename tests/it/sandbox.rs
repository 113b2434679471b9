//! The sandbox (issue 12, finding 12 and 8): a program sees its inputs and the system's
//! programs, nothing else of the node; it cannot write outside its sandbox or into its inputs;
//! and nothing it starts outlives it. Run as CI runs (root): namespaces and `nobody`.

use std::path::Path;

use crate::util::{run_in, write};

/// A job of one thunk running `script` under `/bin/sh` with the value `data.txt` as an input.
fn job(dir: &Path, script: &str) -> std::path::PathBuf {
    let text = format!(
        "[values]\ndata = \"data.txt\"\n\n[[thunk]]\nname = \"t\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", '''{script}''']\nenv = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ \"data.txt\" = \"data\" }}\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"t#o\"\n"
    );
    write(dir, &[("job.toml", &text), ("data.txt", "declared\n")])
}

#[test]
fn a_declared_input_and_host_programs_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &job(dir.path(), "cat data.txt | tr a-z A-Z > o; pwd >> o"), &["--workers", "1"]);
    run.ok();
    assert_eq!(run.out("o"), b"DECLARED\n/thunk\n");
}

#[test]
fn an_undeclared_read_fails_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "node's file\n").expect("write");
    for path in ["/etc/passwd".to_owned(), secret.display().to_string()] {
        let run = run_in(dir.path(), &job(dir.path(), &format!("cat {path} > o")), &["--workers", "1"]);
        assert_eq!(run.code, Some(1), "reading {path} must fail: {}", run.stderr);
        assert!(run.stderr.contains(&format!("{path}: No such file or directory")), "{}", run.stderr);
    }
}

/// A host program the private root does not hold is named, with where host programs must be.
#[test]
fn a_host_program_outside_the_system_folders_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tool = dir.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho hi > o\n").expect("write");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let text = format!(
        "[[thunk]]\nname = \"t\"\nprogram = {{ host = \"{}\" }}\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"t#o\"\n",
        tool.display()
    );
    let job = write(dir.path(), &[("job.toml", &text)]);
    let run = run_in(dir.path(), &job, &["--workers", "1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let said = format!("{} is not in the private root, which has only the host's /usr, /bin", tool.display());
    assert!(run.stderr.contains(&said), "{}", run.stderr);
}

#[test]
fn writes_outside_the_sandbox_and_into_inputs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("written-from-a-thunk");
    let script = format!(
        "echo x > {}; echo x > ../escaped; echo bad >> data.txt; chmod 666 data.txt; echo ok > o",
        outside.display()
    );
    let run = run_in(dir.path(), &job(dir.path(), &script), &["--workers", "1"]);
    run.ok();
    assert_eq!(run.out("o"), b"ok\n");
    assert!(!outside.exists(), "a thunk wrote on the node's disk");
    // The input is unchanged in every cache and in the store: the next job reads it intact.
    let again = run_in(dir.path(), &job(dir.path(), "cat data.txt > o"), &["--workers", "1"]);
    again.ok();
    assert_eq!(again.out("o"), b"declared\n");
}

/// How many processes run `sleep SECONDS` (the tag tells this test's apart).
fn sleepers(seconds: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", &format!("sleep {seconds}")]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// In both sandboxes: namespaces (the PID namespace dies with the program) and the process
/// tree alone (Lambda's fallback: the launcher is the subreaper and kills what is left).
#[test]
fn a_process_a_thunk_leaves_behind_is_killed_when_it_ends() {
    for (mode, tag) in [("auto", "987.25"), ("process-tree", "987.75")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = format!("setsid sleep {tag} < /dev/null > /dev/null 2>&1 & sleep {tag}1 & echo ok > o");
        let run = crate::util::run_with_sandbox(dir.path(), &job(dir.path(), &script), mode, &["--workers", "1"]);
        run.ok();
        assert_eq!(run.out("o"), b"ok\n");
        assert_eq!(sleepers(tag), 0, "{mode}: a left-behind process outlived its thunk");
    }
}

/// A thunk has no network unless it asks for it (`network = true`), and then has the node's,
/// and the files that resolve names.
#[test]
fn a_thunk_has_no_network_unless_it_asks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let connect = format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\"");
    let run = run_in(dir.path(), &job(dir.path(), &format!("{connect} && echo reached > o")), &["--workers", "1"]);
    assert_eq!(run.code, Some(1), "the thunk reached the node's loopback: {}", run.stderr);
    assert!(run.stderr.contains("Network is unreachable"), "{}", run.stderr);
    let asking = job(dir.path(), &format!("{connect} && cat /etc/hosts > /dev/null && echo reached > o"));
    let text = std::fs::read_to_string(&asking).expect("read").replace("outputs = ", "network = true\noutputs = ");
    std::fs::write(&asking, text).expect("write");
    let run = run_in(dir.path(), &asking, &["--workers", "1"]);
    run.ok();
    assert_eq!(run.out("o"), b"reached\n");
}

/// Issue 12, finding 6: an output `d/f` where the program replaced the folder `d` by a link to a
/// folder outside the sandbox: the node used to move the outside file into its cache.
#[test]
fn an_output_behind_a_link_out_of_the_sandbox_is_refused_and_nothing_is_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("f"), "the node's file\n").expect("write");
    let text = format!(
        "[[thunk]]\nname = \"t\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"rmdir d && ln -s {} d\"]\noutputs = [\"d/f\"]\n\n[targets]\n\"f\" = \"t#d/f\"\n",
        outside.display()
    );
    let job = write(dir.path(), &[("job.toml", &text)]);
    let run = run_in(dir.path(), &job, &["--workers", "1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("output `d/f` is reached through a link"), "{}", run.stderr);
    assert_eq!(std::fs::read(outside.join("f")).expect("still there"), b"the node's file\n");
}

/// A node that is not root builds its private root in a user namespace of its own, where its
/// user is the programs' user: the same isolation, without `nobody` (run as root, the test
/// starts the job as `nobody`).
#[test]
fn a_node_that_is_not_root_isolates_programs_in_a_user_namespace() {
    if !crate::util::root_or_skip(
        "sandbox::a_node_that_is_not_root_isolates_programs_in_a_user_namespace",
        "needs root to start a job as another user",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "ls / > o; cat /etc/passwd >> o 2>&1; echo pid=$$ user=$(id -u) >> o";
    let job = job(dir.path(), script);
    let chown = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(dir.path()).status();
    assert!(chown.expect("chown").success());
    let output = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", env!("CARGO_BIN_EXE_thunkmesh")])
        .arg("run")
        .arg(&job)
        .args(["--workers", "1"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env_remove("THUNKMESH_TOKEN")
        .output()
        .expect("setpriv");
    let run = crate::util::finish(dir.path(), output);
    run.ok();
    let seen = String::from_utf8_lossy(&run.out("o")).into_owned();
    assert!(seen.lines().any(|l| l == "thunk"), "no private root: {seen}");
    assert!(seen.contains("/etc/passwd: No such file or directory"), "{seen}");
    assert!(seen.contains("pid=1 user=65534"), "{seen}");
}

/// A job whose thunk brings its own root: `/bin/sh` (dash), the C library and the loader as
/// `.root/` inputs, read from the host's files, and `script` run by that shell.
fn own_root_job(dir: &Path, script: &str) -> std::path::PathBuf {
    let text = format!(
        "[values]\nsh = \"/bin/sh\"\nlibc = \"/lib/x86_64-linux-gnu/libc.so.6\"\nloader = \"/lib64/ld-linux-x86-64.so.2\"\n\n[[thunk]]\nname = \"t\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", '''{script}''']\ninputs = {{ \".root/bin/sh\" = \"sh\", \".root/lib/x86_64-linux-gnu/libc.so.6\" = \"libc\", \".root/lib64/ld-linux-x86-64.so.2\" = \"loader\" }}\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"t#o\"\n"
    );
    write(dir, &[("job.toml", &text)])
}

/// With `.root/` inputs the program's whole file system is those files (and the sandbox's own
/// `/dev`, `/tmp` and `/thunk`): no host folder is there, so nothing undeclared can be read.
#[test]
fn a_thunk_with_its_own_root_sees_only_that_root() {
    if !Path::new("/lib/x86_64-linux-gnu/libc.so.6").exists() {
        let test = "sandbox::a_thunk_with_its_own_root_sees_only_that_root";
        crate::util::skipped(test, "the root below is made for x86-64 glibc systems");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "for f in /* /lib/*/*; do echo $f; done > o; read x < /etc/passwd 2>> o || echo no passwd >> o";
    let run = run_in(dir.path(), &own_root_job(dir.path(), script), &["--workers", "1"]);
    run.ok();
    let seen = String::from_utf8_lossy(&run.out("o")).into_owned();
    let lines: Vec<&str> = seen.lines().take(7).collect();
    assert_eq!(
        lines,
        ["/bin", "/dev", "/lib", "/lib64", "/thunk", "/tmp", "/lib/x86_64-linux-gnu/libc.so.6"],
        "{seen}"
    );
    assert!(seen.ends_with("no passwd\n"), "{seen}");
}

/// A node that cannot make a private root (a Lambda function keeps only the process tree, as
/// `process-tree` does here; `off` keeps nothing) starts a thunk's own ELF program through the
/// root's loader, with the root's libraries: the C library the shell maps is the root's copy, in
/// the node's tree of that root, not the host's. A program that is not ELF cannot start so, and
/// the node says why.
#[test]
fn a_node_without_namespaces_runs_an_own_root_s_program_through_its_loader() {
    if !Path::new("/lib/x86_64-linux-gnu/libc.so.6").exists() {
        let test = "sandbox::a_node_without_namespaces_runs_an_own_root_s_program_through_its_loader";
        crate::util::skipped(test, "the root below is made for x86-64 glibc systems");
        return;
    }
    for mode in ["process-tree", "off"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "while read -r line; do case $line in *libc.so*) echo \"${line##* }\"; break;; esac; done < /proc/self/maps > o";
        let job = own_root_job(dir.path(), script);
        let run = crate::util::run_with_sandbox(dir.path(), &job, mode, &["--workers", "1"]);
        run.ok();
        let mapped = String::from_utf8_lossy(&run.out("o")).trim().to_owned();
        assert!(mapped.ends_with("/lib/x86_64-linux-gnu/libc.so.6"), "{mode}: {mapped}");
        assert!(
            mapped.contains("/roots/") && mapped.starts_with(&*dir.path().to_string_lossy()),
            "{mode}: the root's copy: {mapped}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[values]\nscript = \"s.sh\"\nsh = \"/bin/sh\"\n\n[[thunk]]\nname = \"t\"\nprogram = \"script\"\ninputs = { \".root/bin/sh\" = \"sh\" }\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"t#o\"\n";
    let job = write(dir.path(), &[("job.toml", text), ("s.sh", "#!/bin/sh\necho ran > o\n")]);
    let run = crate::util::run_with_sandbox(dir.path(), &job, "process-tree", &["--workers", "1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("this node has no namespaces to give it one"), "{}", run.stderr);
    assert!(run.stderr.contains("is not an ELF program"), "{}", run.stderr);
}

/// `dir` starts the program in a folder of its sandbox: it reads and writes above it (as a call of a
/// recursive make does), the folder exists though nothing was placed in it, and it is the same
/// with the process-tree sandbox and with none.
#[test]
fn a_thunk_starts_in_the_folder_it_names() {
    let text = "[values]\ndata = \"data.txt\"\n\n[[thunk]]\nname = \"t\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", 'pwd > ../../o && cat ../../data.txt >> ../../o']\nenv = { PATH = \"/usr/bin:/bin\" }\ninputs = { \"data.txt\" = \"data\" }\noutputs = [\"o\"]\ndir = \"deep/er\"\n\n[targets]\n\"o\" = \"t#o\"\n";
    for mode in ["auto", "process-tree", "off"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = write(dir.path(), &[("job.toml", text), ("data.txt", "beside\n")]);
        let run = crate::util::run_with_sandbox(dir.path(), &job, mode, &["--workers", "1"]);
        run.ok();
        let out = String::from_utf8(run.out("o")).expect("utf-8");
        assert!(out.ends_with("/deep/er\nbeside\n"), "{mode}: {out}");
    }
}
