//! Helpers: run the real `thunkmesh` binary in a scratch directory and read what it reports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn thunkmesh() -> Command {
    thunkmesh_in(None)
}

/// The binary under test, run inside network namespace `ns` if one is given.
pub fn thunkmesh_in(ns: Option<&str>) -> Command {
    let binary = env!("CARGO_BIN_EXE_thunkmesh");
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, binary]);
            cmd
        }
        None => Command::new(binary),
    };
    // The tests count fetches, placements and runs exactly: checking a random one in 16
    // results on another node (a self-hosted run's default) would change them. The tests of
    // checks pass --verify.
    cmd.env_remove("THUNKMESH_TOKEN").env("RUST_LOG", "warn").env("THUNKMESH_VERIFY", "0");
    cmd
}

/// Whether the tests run as root (as CI does).
pub fn is_root() -> bool {
    let uid = Command::new("id").arg("-u").output().expect("id -u").stdout;
    uid.trim_ascii() == b"0"
}

/// Whether a test that needs root may run; when it may not (a developer's machine; CI runs as
/// root), it is [`skipped`].
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    skipped(test, why);
    false
}

/// Notes that `test` did not run, and why: on stderr and in `target/skipped-tests.txt`, which
/// `scripts/test` prints at the end, so a skipped test is seen, not passed in silence.
pub fn skipped(test: &str, why: &str) {
    eprintln!("skipped: {why}");
    let line = format!("{test}: {why}\n");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(repo("target/skipped-tests.txt"));
    if let Err(e) = log.and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes())) {
        eprintln!("cannot note the skip in target/skipped-tests.txt: {e}");
    }
}

/// A file or folder of the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Unpacks Debian's source package `name` (fetched into `target/sources/NAME` by the test
/// command) into `into/NAME`, and returns that folder.
pub fn debian_source(name: &str, into: &Path) -> PathBuf {
    unpack(name, into, &[])
}

/// Like [`debian_source`], without Debian's patches: the upstream tree, whose generated build
/// files (`configure`, `Makefile.in`) are as new as the sources they come from.
pub fn debian_upstream(name: &str, into: &Path) -> PathBuf {
    unpack(name, into, &["--skip-patches"])
}

fn unpack(name: &str, into: &Path, options: &[&str]) -> PathBuf {
    let sources = repo(&format!("target/sources/{name}"));
    let dsc = std::fs::read_dir(&sources)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "dsc")));
    let dsc =
        dsc.unwrap_or_else(|| panic!("no {name} source package in {}: scripts/test fetches it", sources.display()));
    let tree = into.join(name);
    let unpacked = Command::new("dpkg-source").arg("-x").args(options).arg(&dsc).arg(&tree).output();
    assert!(unpacked.expect("dpkg-source").status.success(), "dpkg-source -x {}", dsc.display());
    tree
}

/// What a `thunkmesh run` left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub summary: Value,
    pub dir: PathBuf,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "run failed:\n{}", self.stderr);
        self
    }

    pub fn num(&self, key: &str) -> u64 {
        self.summary[key].as_u64().unwrap_or_else(|| panic!("summary has no `{key}`: {}", self.summary))
    }

    pub fn out(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join("out").join(file)).unwrap_or_else(|e| panic!("out/{file}: {e}"))
    }

    /// Blob files in the default store.
    pub fn stored_blobs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join(".thunkmesh/store/blobs"))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Runs `thunkmesh run JOB` in `dir` with the default store and out/ there, plus `extra` flags.
pub fn run_in(dir: &Path, job: &Path, extra: &[&str]) -> Run {
    let mut cmd = thunkmesh();
    cmd.current_dir(dir).arg("run").arg(job).args(["--summary-json", "summary.json"]).args(extra);
    finish(dir, cmd.output().expect("start thunkmesh"))
}

/// Like [`run_in`] with the local nodes' sandbox set to `mode` (`off`: for the tests whose
/// thunks touch a marker outside their sandbox, a test-only breach of hermeticity, to tell the
/// test what ran).
pub fn run_with_sandbox(dir: &Path, job: &Path, mode: &str, extra: &[&str]) -> Run {
    let mut cmd = thunkmesh();
    cmd.current_dir(dir).arg("run").arg(job).args(["--summary-json", "summary.json"]).args(extra);
    finish(dir, cmd.env("THUNKMESH_SANDBOX", mode).output().expect("start thunkmesh"))
}

pub fn finish(dir: &Path, output: Output) -> Run {
    let summary_path = dir.join("summary.json");
    let summary = std::fs::read_to_string(&summary_path).ok().and_then(|s| serde_json::from_str(&s).ok());
    let _ = std::fs::remove_file(summary_path);
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        summary: summary.unwrap_or(Value::Null),
        dir: dir.to_owned(),
    }
}

/// The PUTs a p2p run made beyond `others` (one per input and target): its batches of memo
/// entries, asserted to be one at the end and at most one more per 2 s the run took.
pub fn memo_batches(run: &Run, others: u64) -> u64 {
    let batches = run.num("storage_put_requests") - others;
    let most = 1 + run.num("wall_ms") / 2000;
    assert!((1..=most).contains(&batches), "{batches} memo PUTs beyond one per input and target; at most {most}");
    batches
}

/// Runs a shell script of an example and returns its stdout; a failure shows the script's trace
/// (`sh -x`), which goes to its standard error.
pub fn shell(script: &Path, args: &[&Path]) -> Vec<u8> {
    let out = Command::new("sh").arg("-x").arg(script).args(args).output().expect("run sh");
    assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Writes a job file (and any files it names) into `dir`.
pub fn write(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
    }
    dir.join(files[0].0)
}

/// A child process that is killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-hosted rendezvous on a free loopback port, and what nodes need to join it.
pub struct SelfHosted {
    _proc: Proc,
    pub addr: String,
    pub fingerprint: String,
    pub token: String,
    /// How nodes and clients trust it.
    pub trust: Vec<String>,
    /// The network namespace it and its clients run in, if not the host's.
    ns: Option<String>,
}

impl SelfHosted {
    pub fn start(state: &Path) -> SelfHosted {
        let mut rdv = SelfHosted::start_with(state, &[]);
        rdv.trust = vec!["--fingerprint".into(), rdv.fingerprint.clone()];
        rdv
    }

    /// Starts with extra flags (a certificate); `trust` must be set before nodes join.
    pub fn start_with(state: &Path, extra: &[&str]) -> SelfHosted {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port").port();
        SelfHosted::start_at(state, &format!("127.0.0.1:{port}"), None, extra, &[])
    }

    /// Starts listening on `addr` (host's namespace) with extra flags and environment; trusted
    /// by its fingerprint.
    pub fn start_on(state: &Path, addr: &str, extra: &[&str], env: &[(&str, &str)]) -> SelfHosted {
        let mut rdv = SelfHosted::start_at(state, addr, None, extra, env);
        rdv.trust = vec!["--fingerprint".into(), rdv.fingerprint.clone()];
        rdv
    }

    /// Starts listening on `addr` inside network namespace `ns` (if given), where the clients
    /// of [`SelfHosted::run`] then run too; trusted by its fingerprint.
    pub fn start_in(state: &Path, addr: &str, ns: &str, extra: &[&str]) -> SelfHosted {
        let mut rdv = SelfHosted::start_at(state, addr, Some(ns), extra, &[]);
        rdv.trust = vec!["--fingerprint".into(), rdv.fingerprint.clone()];
        rdv
    }

    fn start_at(state: &Path, addr: &str, ns: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> SelfHosted {
        let addr = addr.to_owned();
        let token = "integration-test-token".to_owned();
        let child = thunkmesh_in(ns)
            .args(["rendezvous", "--listen", &addr, "--state-dir"])
            .arg(state)
            .args(extra)
            .envs(env.iter().copied())
            .env("THUNKMESH_TOKEN", &token)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rendezvous");
        let mut proc = Proc(child);
        let fingerprint = read_fingerprint(&mut proc.0);
        SelfHosted { _proc: proc, addr, fingerprint, token, trust: Vec::new(), ns: ns.map(str::to_owned) }
    }

    pub fn node(&self, cache: &Path, name: &str) -> Proc {
        self.node_in(None, cache, name, &[])
    }

    /// A node inside network namespace `ns` (if given), bound to every address there.
    pub fn node_in(&self, ns: Option<&str>, cache: &Path, name: &str, extra: &[&str]) -> Proc {
        let bind = if ns.is_some() { "0.0.0.0:0" } else { "127.0.0.1:0" };
        let log = "info,thunkmesh_node::peer=debug";
        self.join(thunkmesh_in(ns), bind, cache, name, extra, log)
    }

    /// A node (with `extra` flags) started by `sh -c SCRIPT` in a mount namespace of its own:
    /// `script` hides what the node must do without (it ends with `exec "$0" "$@"`, which starts
    /// the node, and exits 98 if it could not hide something).
    pub fn node_hiding(&self, script: &str, cache: &Path, name: &str, extra: &[&str]) -> Proc {
        let mut unshare = Command::new("unshare");
        unshare.args(["--mount", "--propagation", "private", "sh", "-c", script, env!("CARGO_BIN_EXE_thunkmesh")]);
        self.join(unshare, "127.0.0.1:0", cache, name, extra, "info")
    }

    /// Starts `command` with the arguments of a node joining this rendezvous; its log goes next
    /// to its cache.
    fn join(&self, mut command: Command, bind: &str, cache: &Path, name: &str, extra: &[&str], log: &str) -> Proc {
        let child = command
            .args(["node", "--rendezvous", &self.addr, "--bind", bind])
            .args(extra)
            .args(&self.trust)
            .args(["--name", name, "--cache-dir"])
            .arg(cache)
            .env("THUNKMESH_TOKEN", &self.token)
            .env("RUST_LOG", log)
            .stderr(std::fs::File::create(cache.with_extension("log")).map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("start node");
        Proc(child)
    }

    /// Waits until exactly `nodes` nodes are registered, for at most `within`.
    pub fn wait_for_nodes(&self, nodes: usize, within: Duration) {
        let want = format!("\n{nodes} node(s), ");
        let registered = || format!("\n{}", self.status()).contains(&want).then_some(());
        wait_until(within, registered, || format!("not {nodes} node(s) registered:\n{}", self.status()));
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self._proc.0.id()
    }

    /// What `thunkmesh status` prints about this rendezvous' nodes and jobs.
    pub fn status(&self) -> String {
        self.status_with(&[])
    }

    /// What `thunkmesh status --json` says.
    pub fn status_json(&self) -> Value {
        serde_json::from_str(&self.status_with(&["--json"])).expect("status --json prints JSON")
    }

    fn status_with(&self, extra: &[&str]) -> String {
        let out = thunkmesh_in(self.ns.as_deref())
            .args(["status", "--rendezvous", &self.addr])
            .args(extra)
            .args(&self.trust)
            .env("THUNKMESH_TOKEN", &self.token)
            .output()
            .expect("start thunkmesh status");
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `thunkmesh run JOB` against this rendezvous, in `dir`, presenting `token`.
    pub fn run_command(&self, dir: &Path, job: &Path, token: &str) -> Command {
        let mut cmd = thunkmesh_in(self.ns.as_deref());
        cmd.current_dir(dir)
            .arg("run")
            .arg(job)
            .args(["--summary-json", "summary.json", "--rendezvous", &self.addr])
            .args(&self.trust)
            .env("THUNKMESH_TOKEN", token);
        cmd
    }

    pub fn run(&self, dir: &Path, job: &Path, token: &str) -> Run {
        finish(dir, self.run_command(dir, job, token).output().expect("start thunkmesh run"))
    }

    /// Like [`SelfHosted::run`] with extra flags, presenting the mesh's token.
    pub fn run_with(&self, dir: &Path, job: &Path, extra: &[&str]) -> Run {
        let mut cmd = self.run_command(dir, job, &self.token);
        finish(dir, cmd.args(extra).output().expect("start thunkmesh run"))
    }

    /// Like [`SelfHosted::run`] with the mesh's token, on a thread, so the test can act meanwhile.
    pub fn run_in_background(&self, dir: &Path, job: &Path) -> std::thread::JoinHandle<Run> {
        let mut cmd = self.run_command(dir, job, &self.token);
        let dir = dir.to_owned();
        std::thread::spawn(move || finish(&dir, cmd.output().expect("start thunkmesh run")))
    }
}

/// Reads the rendezvous' stderr until it prints its fingerprint, then drains it in the background.
fn read_fingerprint(child: &mut Child) -> String {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(fp) = line.strip_prefix("certificate fingerprint: ") {
            let fp = fp.trim().to_owned();
            std::thread::spawn(move || lines.for_each(drop));
            return fp;
        }
    }
    panic!("the rendezvous did not print its fingerprint");
}

/// `first`, then `slow` (which touches `marker`, a test-only breach of hermeticity that tells the
/// test it runs, then sleeps `seconds`), then `second` reading both: for tests where the node
/// running `slow` leaves and hands its outputs over.
pub fn handover_job(marker: &Path, seconds: u32) -> String {
    format!(
        r#"[[thunk]]
name = "first"
program = {{ host = "/bin/sh" }}
args = ["-c", "echo first > o"]
outputs = ["o"]

[[thunk]]
name = "slow"
program = {{ host = "/bin/sh" }}
args = ["-c", "touch {marker}; sleep {seconds}; echo slow > o"]
env = {{ PATH = "/usr/bin:/bin" }}
inputs = {{ "after" = "first#o" }}
outputs = ["o"]

[[thunk]]
name = "second"
program = {{ host = "/bin/sh" }}
args = ["-c", "/bin/cat a b > o"]
inputs = {{ "a" = "first#o", "b" = "slow#o" }}
outputs = ["o"]

[targets]
"result.txt" = "second#o"
"#,
        marker = marker.display()
    )
}

/// A tmpfs of `megabytes` mounted at `dir` for as long as it lives (needs root).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, megabytes: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One thunk that writes 6 MB of zeros: more than a 4 MB disk holds.
pub const SIX_MEGABYTES: &str = r#"[[thunk]]
name = "big"
program = { host = "/bin/sh" }
args = ["-c", "/bin/dd if=/dev/zero of=out bs=1M count=6 2>&1"]
outputs = ["out"]

[targets]
"big.bin" = "big#out"
"#;

/// A raw connection to a rendezvous at `addr` (trusted by `fingerprint`) that said hello with
/// `token` as `role`: for tests that speak the protocol as a misbehaving member would. The
/// endpoint is returned too: the connection lives as long as it does.
pub async fn member(
    addr: &str,
    fingerprint: &str,
    token: String,
    role: thunkmesh_protocol::wire::Role,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    use thunkmesh_net::{Identity, Trust, client_config, connect, parse_fingerprint, send_msg};
    use thunkmesh_protocol::wire::{ALPN_RENDEZVOUS, Hello, PROTOCOL_VERSION};
    let endpoint = thunkmesh_net::endpoint("127.0.0.1:0".parse().expect("addr"), &Identity::generate().expect("id"))
        .expect("endpoint");
    let trust = Trust::Pinned(parse_fingerprint(fingerprint).expect("fingerprint"));
    let config = client_config(&trust, ALPN_RENDEZVOUS).expect("config");
    let conn =
        connect(&endpoint, config, addr.parse().expect("addr"), thunkmesh_net::SERVER_NAME).await.expect("connect");
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    send_msg(&mut send, &Hello { version: PROTOCOL_VERSION, token, role }).await.expect("hello");
    (endpoint, conn, send, recv)
}

/// Polls `check` every 50 ms until it gives a value, and returns that; after `within`, fails the
/// test with what `what` says (asked only then, so it can show the latest status or logs).
pub fn wait_until<T>(within: Duration, mut check: impl FnMut() -> Option<T>, what: impl FnOnce() -> String) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "{} (waited {within:?})", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A memory figure of a process from `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).expect(field);
    line.trim().trim_end_matches("kB").trim().parse::<u64>().expect("a number") * 1024
}

/// Starts a process's peak memory (`VmHWM`) afresh from what it holds now (proc(5), clear_refs).
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak");
}
