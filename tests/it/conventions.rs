//! What users of cargo, sccache and the AWS CLI expect of a command-line tool (issue 16): a lock
//! on the state folder, no colour codes off a terminal, progress lines without one, the summary
//! JSON on failure too, exit statuses 2 and 130, completions, and the cache commands.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{SelfHosted, finish, thunkmesh, write};

/// A job of one thunk that sleeps `seconds`, then writes `o`.
fn sleeping_job(seconds: f64) -> String {
    format!(
        "[[thunk]]\nname = \"t\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"sleep {seconds}; echo slept > o\"]\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"t#o\"\n"
    )
}

/// `thunkmesh run job.toml` on one local node, without the memo cache unless `extra` sets it.
fn run_command(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = thunkmesh();
    cmd.current_dir(dir).args(["run", "job.toml", "--workers", "1"]).args(extra);
    if !extra.contains(&"--memo") {
        cmd.args(["--memo", "off"]);
    }
    cmd
}

#[test]
fn two_runs_in_one_state_folder_both_succeed_the_second_waiting_and_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("job.toml", &sleeping_job(1.5))]);
    let first = run_command(dir.path(), &["--out", "out1"]).stderr(Stdio::piped()).spawn().expect("first run");
    // The first holds the lock once its state folder exists.
    let lock = dir.path().join(".thunkmesh/lock");
    crate::util::wait_until(Duration::from_secs(10), || lock.exists().then_some(()), || "no lock was taken".into());
    std::thread::sleep(Duration::from_millis(300));
    let second = run_command(dir.path(), &["--out", "out2"]).output().expect("second run");
    let first = first.wait_with_output().expect("first run ends");
    assert!(first.status.success(), "first: {}", String::from_utf8_lossy(&first.stderr));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "second: {said}");
    assert!(
        said.contains("waiting for another thunkmesh command to finish with the state folder .thunkmesh"),
        "{said}"
    );
    for out in ["out1/o", "out2/o"] {
        assert_eq!(std::fs::read_to_string(dir.path().join(out)).expect(out), "slept\n");
    }
}

#[test]
fn logs_written_without_a_terminal_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("job.toml", &sleeping_job(0.0))]);
    let run = run_command(dir.path(), &[]).env("RUST_LOG", "info").output().expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let log = std::fs::read_to_string(dir.path().join(".thunkmesh/nodes/0.log")).expect("node log");
    assert!(log.contains("INFO"), "the node logged at info: {log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the node's log: {log:?}");

    // A rendezvous with stderr in a file, and the same with colour asked for.
    for (flag, coloured) in [("auto", false), ("always", true)] {
        let state = dir.path().join(format!("rdv-{flag}"));
        let mut rdv = thunkmesh()
            .args(["--color", flag, "rendezvous", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("rendezvous");
        std::thread::sleep(Duration::from_millis(500));
        let _ = rdv.kill();
        let out = rdv.wait_with_output().expect("rendezvous output");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("certificate fingerprint"), "{text}");
        assert_eq!(text.contains('\u{1b}'), coloured, "--color {flag}: {text:?}");
    }
}

#[test]
fn without_a_terminal_progress_comes_as_lines_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("job.toml", &sleeping_job(1.5))]);
    let run = run_command(dir.path(), &["--progress-every", "200ms"]).output().expect("run");
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{said}");
    assert!(said.contains("] consulting the memo cache"), "{said}");
    let lines = said.lines().filter(|l| l.contains("thunks done")).count();
    assert!(lines >= 3, "a progress line per 200 ms of a 1.5 s job, got {lines}: {said}");
    assert!(said.contains("0/1 thunks done, 1 running on 1 node(s)"), "{said}");

    // -q: nothing but errors.
    let quiet = run_command(dir.path(), &["-q", "--progress-every", "200ms"]).output().expect("run -q");
    assert!(quiet.status.success());
    assert_eq!((quiet.stdout.len(), quiet.stderr.len()), (0, 0), "{}", String::from_utf8_lossy(&quiet.stderr));
}

#[test]
fn the_summary_json_is_written_on_failure_and_to_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = "[[thunk]]\nname = \"t\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"exit 3\"]\noutputs = [\"o\"]\n\n[targets]\n\"o\" = \"t#o\"\n";
    write(dir.path(), &[("job.toml", failing)]);
    let run = finish(dir.path(), run_command(dir.path(), &["--summary-json", "summary.json"]).output().expect("run"));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(run.summary["schema_version"], 1);
    assert_eq!(run.summary["status"], "failed");
    assert_eq!(run.summary["exit_status"], 1);
    assert_eq!(run.summary["job"], "job.toml");
    assert_eq!((run.summary["mode"].as_str(), run.summary["engine"].as_str()), (Some("p2p"), Some("local")));
    let error = run.summary["error"].as_str().expect("an error");
    assert!(run.stderr.contains(error), "the JSON's error is the line printed: {error} / {}", run.stderr);

    write(dir.path(), &[("job.toml", &sleeping_job(0.0))]);
    let out = run_command(dir.path(), &["--summary-json", "-"]).output().expect("run");
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON alone");
    assert_eq!((json["status"].as_str(), json["thunks_executed"].as_u64()), (Some("succeeded"), Some(1)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrote 1 target(s) to out"));
    assert!(!dir.path().join("-").exists());
}

/// Bad flags and settings exit 2 with one line naming the problem.
#[test]
fn bad_flags_and_settings_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("job.toml", &sleeping_job(0.0))]);
    let fingerprint = "ab".repeat(32);
    let cases: [(&[&str], Option<&str>, &str); 5] = [
        (&["node", "--rendezvous", "localhost", "--fingerprint", &fingerprint], Some("t"), "is not HOST:PORT"),
        (&["node", "--rendezvous", "localhost:7700", "--fingerprint", "abcd"], Some("t"), "is not 64 hex digits"),
        (&["status", "--rendezvous", "localhost:7700", "--fingerprint", &fingerprint], None, "set THUNKMESH_TOKEN"),
        (&["run", "job.toml", "--summary-json", "no/such/dir/s.json"], None, "--summary-json: cannot write"),
        (&["run", "job.toml", "--workers", "0"], None, "--workers must be at least 1"),
    ];
    for (args, token, said) in cases {
        let mut cmd = thunkmesh();
        cmd.current_dir(dir.path()).args(args);
        if let Some(token) = token {
            cmd.env("THUNKMESH_TOKEN", token);
        }
        let out = cmd.output().expect("thunkmesh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    // A config file with a key no subcommand takes.
    let config = write(dir.path(), &[("config.toml", "wokers = 3\n")]);
    let out = thunkmesh().current_dir(dir.path()).args(["run", "job.toml"]).env("THUNKMESH_CONFIG", &config).output();
    let out = out.expect("thunkmesh");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`wokers`: no subcommand has a flag --wokers"));
}

#[test]
fn ctrl_c_exits_130_and_says_nothing_of_the_memo_cache_when_it_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("job.toml", &sleeping_job(30.0))]);
    for (memo, says_memo) in [("off", false), ("on", true)] {
        let child = thunkmesh()
            .current_dir(dir.path())
            .args(["run", "job.toml", "--workers", "1", "--memo", memo, "--summary-json", "s.json"])
            .args(["--progress-every", "100ms"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        // Interrupt once the thunk runs.
        std::thread::sleep(Duration::from_secs(2));
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
        let out = child.wait_with_output().expect("run ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "--memo {memo}: {stderr}");
        assert!(stderr.contains("1 running"), "interrupted while the thunk ran: {stderr}");
        let error = stderr.lines().find(|l| l.starts_with("error:")).expect("an error line");
        assert_eq!(error.contains("memo cache"), says_memo, "--memo {memo}: {error}");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).expect("json"))
            .expect("summary JSON");
        assert_eq!((json["status"].as_str(), json["exit_status"].as_u64()), (Some("interrupted"), Some(130)));
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, mark) in [("bash", "_thunkmesh()"), ("zsh", "#compdef thunkmesh"), ("fish", "complete -c thunkmesh")] {
        let out = thunkmesh().args(["completions", shell]).output().expect("completions");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(mark), "{shell}: {text}");
        assert!(text.contains("summary-json"), "{shell} completes run's flags");
    }
    let syntax = Command::new("bash").arg("-n").stdin(Stdio::piped()).spawn().and_then(|mut bash| {
        use std::io::Write;
        let script = thunkmesh().args(["completions", "bash"]).output()?.stdout;
        bash.stdin.take().expect("stdin").write_all(&script)?;
        bash.wait()
    });
    assert!(syntax.expect("bash -n").success(), "the bash completion script parses");
}

#[test]
fn cache_stats_counts_what_runs_left_and_clean_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("job.toml", &sleeping_job(0.0))]);
    assert!(run_command(dir.path(), &["--memo", "on"]).status().expect("run").success());
    let stats = |args: &[&str]| {
        let out = thunkmesh().current_dir(dir.path()).args(["cache"]).args(args).output().expect("cache");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: Value = serde_json::from_str(&stats(&["stats", "--json"])).expect("stats JSON");
    assert_eq!(json["memo_entries"], 1, "{json}");
    assert!(json["store_blobs"]["files"].as_u64() >= Some(1), "the target is stored: {json}");
    assert!(json["node_cache_total"]["bytes"].as_u64() > Some(0), "{json}");
    assert!(stats(&["stats"]).contains("memo cache    1 entries"));

    let said = stats(&["clean"]);
    assert!(said.starts_with("removed the nodes' caches"), "{said}");
    let json: Value = serde_json::from_str(&stats(&["stats", "--json"])).expect("stats JSON");
    assert_eq!((json["node_cache_total"]["files"].as_u64(), json["memo_entries"].as_u64()), (Some(0), Some(1)));
    stats(&["clean", "--all"]);
    let json: Value = serde_json::from_str(&stats(&["stats", "--json"])).expect("stats JSON");
    assert_eq!((json["store_blobs"]["files"].as_u64(), json["memo_entries"].as_u64()), (Some(0), Some(0)));
}

/// `THUNKMESH_RENDEZVOUS` and `THUNKMESH_FINGERPRINT` stand for the flags.
#[test]
fn the_common_flags_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let _node = rdv.node(&dir.path().join("node"), "n0");
    let job = write(dir.path(), &[("job.toml", &sleeping_job(0.0))]);
    let out = thunkmesh()
        .current_dir(dir.path())
        .arg("run")
        .arg(&job)
        .env("THUNKMESH_RENDEZVOUS", &rdv.addr)
        .env("THUNKMESH_FINGERPRINT", &rdv.fingerprint)
        .env("THUNKMESH_TOKEN", &rdv.token)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.path().join("out/o")).expect("target"), "slept\n");
}

/// Issue 29: the binary's modules import each other without a circle (`commands`, `session` (now
/// `invocation`), `infer`, `lambda` and `cache` used to, each through the others).
#[test]
fn the_binarys_modules_import_each_other_without_a_circle() {
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for entry in std::fs::read_dir(crate::util::repo("src")).expect("src") {
        let path = entry.expect("entry").path();
        let Some(module) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let text = std::fs::read_to_string(&path).expect("a module");
        let used: Vec<String> = text
            .split("crate::")
            .skip(1)
            .filter_map(|rest| {
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                (!name.is_empty() && name != module).then_some(name)
            })
            .collect();
        edges.entry(module).or_default().extend(used);
    }
    // Depth first, with the path so far: a module met again on its own path closes a circle.
    fn visit(
        module: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|m| m == module) {
            panic!("modules import each other in a circle: {} -> {module}", path[at..].join(" -> "));
        }
        if !done.insert(module.to_owned()) {
            return;
        }
        path.push(module.to_owned());
        for next in edges.get(module).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    assert!(edges.len() > 5, "the binary's modules were found: {edges:?}");
    let mut done = std::collections::BTreeSet::new();
    for module in edges.keys() {
        visit(module, &edges, &mut Vec::new(), &mut done);
    }
}

/// Every test or function the docs cite by its file and name (`` `path.rs` `name` ``) is in that
/// file: a test renamed or moved cannot leave a document pointing at nothing.
#[test]
fn what_the_docs_cite_by_file_and_name_is_there() {
    let mut docs: Vec<std::path::PathBuf> = std::fs::read_dir(crate::util::repo("docs"))
        .expect("docs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.push(crate::util::repo("README.md"));
    let mut cited = 0;
    let mut missing = Vec::new();
    for doc in &docs {
        // Code fences would pair every later backtick wrongly.
        let text = std::fs::read_to_string(doc).expect("a document").replace("```", "");
        // Backticked spans in order: a `.rs` path followed (across spaces only) by a name.
        let spans: Vec<(usize, usize)> = {
            let ticks: Vec<usize> = text.match_indices('`').map(|(i, _)| i).collect();
            ticks.chunks_exact(2).map(|pair| (pair[0] + 1, pair[1])).collect()
        };
        for pair in spans.windows(2) {
            let (path, name) = (&text[pair[0].0..pair[0].1], &text[pair[1].0..pair[1].1]);
            let between = &text[pair[0].1 + 1..pair[1].0 - 1];
            let is_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !path.ends_with(".rs") || !between.trim().is_empty() || !is_name {
                continue;
            }
            cited += 1;
            let file = crate::util::repo(path);
            let holds = std::fs::read_to_string(&file).is_ok_and(|code| code.contains(&format!("fn {name}")));
            if !holds {
                missing.push(format!("{}: `{path}` `{name}`", doc.file_name().unwrap_or_default().to_string_lossy()));
            }
        }
    }
    assert!(cited > 20, "the docs cite {cited} tests by file and name; the pattern no longer finds them");
    assert!(missing.is_empty(), "cited but not there:\n{}", missing.join("\n"));
}
