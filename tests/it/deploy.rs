//! The recipes in `deploy/` (issue 16): systemd verifies both units, the commands they and the
//! Dockerfile start are run against this build (with only their addresses and folders moved to
//! the test's), a job runs on the node the node unit starts with the settings of `node.env`,
//! and both stop cleanly on the SIGTERM that systemd and `docker stop` send. The image itself
//! is not built: CI has no container daemon and no registry for its base images.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{Proc, repo, thunkmesh, write};

/// Where the units and the image install the binary.
const INSTALLED: &str = "/usr/local/bin/thunkmesh";

/// The values of `key` in a unit file (`Key=value` lines; comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// The one `ExecStart=` of a unit, split into words, the installed binary's path first.
fn exec_start(unit: &str) -> Vec<String> {
    let lines = unit_values(unit, "ExecStart");
    assert_eq!(lines.len(), 1, "one ExecStart: {lines:?}");
    let words: Vec<String> = lines[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], INSTALLED, "the unit starts the installed binary");
    words[1..].to_vec()
}

/// `words` with each `(from, to)` value replaced; every `from` must occur.
fn moved(words: &[String], moves: &[(&str, &str)]) -> Vec<String> {
    for (from, _) in moves {
        assert!(words.iter().any(|w| w == from), "{from} is not in {words:?}");
    }
    words
        .iter()
        .map(|w| moves.iter().find(|(from, _)| w == from).map_or(w.clone(), |(_, to)| (*to).to_owned()))
        .collect()
}

/// `systemd-analyze verify` on a copy of `unit` whose binary and environment file are real,
/// failing on any complaint about the unit, not only on errors.
fn verify(unit_name: &str, dir: &Path) {
    let text = std::fs::read_to_string(repo(&format!("deploy/{unit_name}"))).expect("unit");
    let binary = env!("CARGO_BIN_EXE_thunkmesh");
    let env_file = repo("deploy/node.env");
    let text = text.replace(INSTALLED, binary).replace("/etc/thunkmesh/node.env", &env_file.to_string_lossy());
    let copy = dir.join(unit_name);
    std::fs::write(&copy, text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian's systemd package) checks the units; scripts/test installs it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains(unit_name)).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify {unit_name}: {stderr}");
}

/// A free UDP port on loopback.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port").port()
}

/// Starts `thunkmesh ARGS` as the rendezvous and reads its fingerprint from what it prints.
fn start_rendezvous(args: &[String]) -> (Proc, String) {
    let mut child = thunkmesh()
        .args(args)
        .env_remove("THUNKMESH_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the rendezvous");
    let stderr = child.stderr.take().expect("piped");
    let proc = Proc(child);
    let mut lines = BufReader::new(stderr).lines();
    let fingerprint = loop {
        let line = lines.next().expect("the rendezvous printed its fingerprint").expect("utf-8");
        if let Some(hex) = line.strip_prefix("certificate fingerprint: ") {
            break hex.to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    (proc, fingerprint)
}

/// Sends SIGTERM and expects a clean exit within `within`.
fn terminate(mut proc: Proc, what: &str, within: Duration) {
    let pid = proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let exited = || proc.0.try_wait().expect("wait");
    let status = crate::util::wait_until(within, exited, || format!("{what} did not stop on SIGTERM"));
    assert!(status.success(), "{what} exited with {status} on SIGTERM");
}

#[test]
fn the_systemd_units_verify_and_run_a_job_with_the_settings_of_node_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    verify("thunkmesh-rendezvous.service", dir.path());
    verify("thunkmesh-node.service", dir.path());

    let unit = std::fs::read_to_string(repo("deploy/thunkmesh-rendezvous.service")).expect("unit");
    let state = dir.path().join("state");
    let addr = format!("127.0.0.1:{}", free_port());
    let args = moved(
        &exec_start(&unit),
        &[("0.0.0.0:7700", &addr), ("/var/lib/thunkmesh-rendezvous", &state.to_string_lossy())],
    );
    assert_eq!(unit_values(&unit, "StateDirectory"), ["thunkmesh-rendezvous"], "the state folder is systemd's");
    let (rdv, fingerprint) = start_rendezvous(&args);
    let token =
        std::fs::read_to_string(state.join("token")).expect("the rendezvous keeps its token in its state folder");

    // node.env names what the node needs; the test fills in this rendezvous.
    let env_text = std::fs::read_to_string(repo("deploy/node.env")).expect("node.env");
    let mut names: Vec<&str> = env_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["THUNKMESH_FINGERPRINT", "THUNKMESH_RENDEZVOUS", "THUNKMESH_TOKEN"]);
    let unit = std::fs::read_to_string(repo("deploy/thunkmesh-node.service")).expect("unit");
    assert_eq!(unit_values(&unit, "EnvironmentFile"), ["/etc/thunkmesh/node.env"]);
    assert_eq!(unit_values(&unit, "KillMode"), ["mixed"], "only the node gets SIGTERM, so its thunks finish");
    let cache = dir.path().join("cache");
    let args = moved(&exec_start(&unit), &[("/var/cache/thunkmesh-node", &cache.to_string_lossy())]);
    let node = thunkmesh()
        .args(&args)
        .env("THUNKMESH_RENDEZVOUS", &addr)
        .env("THUNKMESH_FINGERPRINT", &fingerprint)
        .env("THUNKMESH_TOKEN", token.trim())
        .stderr(std::fs::File::create(dir.path().join("node.log")).expect("log"))
        .spawn()
        .expect("start the node");
    let node = Proc(node);

    let job = write(
        dir.path(),
        &[(
            "job.toml",
            "[[thunk]]\nname = \"a\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"echo served > o\"]\noutputs = [\"o\"]\n[targets]\n\"o\" = \"a#o\"\n",
        )],
    );
    let out = thunkmesh()
        .current_dir(dir.path())
        .arg("run")
        .arg(&job)
        .args(["--rendezvous", &addr, "--fingerprint", &fingerprint])
        .env("THUNKMESH_TOKEN", token.trim())
        .output()
        .expect("run");
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\nnode: {log}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("out/o")).expect("target"), b"served\n");

    terminate(node, "the node", Duration::from_secs(20));
    terminate(rdv, "the rendezvous", Duration::from_secs(5));
}

/// The instruction lines of a Dockerfile (continuations joined, comments dropped), as
/// `(INSTRUCTION, rest)`.
fn dockerfile(text: &str) -> Vec<(String, String)> {
    let joined =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, rest) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (op.to_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_on_the_workspace_toolchain_and_its_command_serves() {
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).expect("Dockerfile");
    let steps = dockerfile(&text);
    let get = |op: &str| steps.iter().filter(|(o, _)| o == op).map(|(_, r)| r.clone()).collect::<Vec<_>>();

    // The builder is the toolchain Cargo.toml promises to build with.
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).expect("Cargo.toml");
    let version =
        manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).expect("rust-version").trim_matches('"');
    let from = get("FROM");
    assert!(from[0].starts_with(&format!("rust:{version}-")), "the builder {} is not Rust {version}", from[0]);
    let build = get("RUN").into_iter().find(|r| r.starts_with("cargo build")).expect("a cargo build step");
    assert!(build.contains("--release") && build.contains("--locked"), "{build}");
    let copied = get("COPY").into_iter().find(|c| c.starts_with("--from=")).expect("the binary is copied");
    assert!(copied.ends_with(&format!("/src/target/release/thunkmesh {INSTALLED}")), "{copied}");
    let ignore = std::fs::read_to_string(repo(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), "the build context leaves target/ out");

    // ENTRYPOINT and CMD, as the container runs them, with the port and volume moved.
    let json = |op: &str| -> Vec<String> { serde_json::from_str(&get(op)[0]).expect("exec form (a JSON array)") };
    assert_eq!(json("ENTRYPOINT"), ["thunkmesh"]);
    let volume = get("VOLUME");
    assert_eq!(volume, ["/var/lib/thunkmesh"]);
    assert_eq!(get("EXPOSE"), ["7700/udp"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_port());
    let state = dir.path().join("rendezvous");
    let args =
        moved(&json("CMD"), &[("0.0.0.0:7700", &addr), ("/var/lib/thunkmesh/rendezvous", &state.to_string_lossy())]);
    let (rdv, fingerprint) = start_rendezvous(&args);
    let token = std::fs::read_to_string(state.join("token")).expect("the token is kept in the volume");
    let out = thunkmesh()
        .args(["status", "--json", "--rendezvous", &addr, "--fingerprint", &fingerprint])
        .env("THUNKMESH_TOKEN", token.trim())
        .output()
        .expect("status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["nodes"], serde_json::json!([]));
    // `docker stop` sends SIGTERM to the container's first process.
    terminate(rdv, "the rendezvous", Duration::from_secs(5));
}
