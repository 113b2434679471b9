//! The node as a Lambda function, under the real Lambda runtime API as `cargo lambda watch`
//! serves it (the test command installs the emulator in `target/lambda-venv`): an invocation
//! joins a self-hosted rendezvous, runs a job's thunks, drains at its bound and answers with a
//! report; `thunkmesh run --engine lambda` invokes the workers itself through `aws-sdk-lambda`
//! and the emulator's Invoke API, with storage on a real S3-compatible server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use thunkmesh_s3_fixture::S3Server;

use crate::util::{Proc, Run, SelfHosted, finish, repo, run_in, shell, thunkmesh};

fn cargo_lambda() -> PathBuf {
    let path = repo("target/lambda-venv/bin/cargo-lambda");
    assert!(path.exists(), "{} is missing: scripts/test installs it", path.display());
    path
}

/// `cargo lambda watch` serving only the Lambda APIs on a free loopback port. It runs in the
/// repository: the functions it accepts are the workspace's binaries (`thunkmesh`).
struct Emulator {
    _proc: Proc,
    port: u16,
}

impl Emulator {
    fn start() -> Emulator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new(cargo_lambda())
            .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(repo("."))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cargo lambda watch");
        let emulator = Emulator { _proc: Proc(child), port };
        let listening = || TcpStream::connect(("127.0.0.1", port)).ok();
        crate::util::wait_until(Duration::from_secs(30), listening, || {
            format!("cargo lambda watch did not listen on {port}")
        });
        emulator
    }

    /// Invokes the function synchronously (the Invoke API) and returns the status and body.
    fn invoke(port: u16, payload: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let request = format!(
            "POST /2015-03-31/functions/thunkmesh/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}

/// A function process: an execution environment that serves `emulator`'s invocations one after
/// another, with its own `/tmp` (TMPDIR) and log in `dir`, and `env` (storage settings).
fn function(emulator: &Emulator, dir: &std::path::Path, env: &[(&'static str, String)]) -> (Proc, PathBuf) {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let log = dir.join("function.log");
    let child = thunkmesh()
        .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt/thunkmesh", emulator.port))
        .env("AWS_LAMBDA_FUNCTION_NAME", "thunkmesh")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("TMPDIR", &tmp)
        // Lambda allows no namespaces: its node keeps only the process tree, as here.
        .env("THUNKMESH_SANDBOX", "process-tree")
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::fs::File::create(&log).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .expect("start the function");
    (Proc(child), log)
}

/// A function process served by `emulator`, invoked once (on a thread) to join `rdv` and work at
/// most `max_seconds`; the handle yields the Invoke API's status and body.
struct Worker {
    _function: Proc,
    invocation: std::thread::JoinHandle<(u16, String)>,
    log: PathBuf,
}

impl Worker {
    fn invoke(emulator: &Emulator, rdv: &SelfHosted, dir: &std::path::Path, max_seconds: u64) -> Worker {
        let (function, log) = function(emulator, &dir.join("function"), &[]);
        let payload = serde_json::json!({
            "rendezvous": rdv.addr, "fingerprint": rdv.fingerprint, "token": rdv.token, "slots": 2,
            "max_seconds": max_seconds,
        })
        .to_string();
        let port = emulator.port;
        let invocation = std::thread::spawn(move || Emulator::invoke(port, &payload));
        Worker { _function: function, invocation, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The invocation's report, which must have come back with status 200.
    fn report(self) -> serde_json::Value {
        let log = self.log();
        let (status, body) = self.invocation.join().expect("invocation thread");
        assert_eq!(status, 200, "{body}\nfunction log:\n{log}");
        serde_json::from_str(&body).expect("a JSON report")
    }
}

#[test]
fn a_lambda_worker_joins_runs_a_job_drains_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let emulator = Emulator::start();
    let worker = Worker::invoke(&emulator, &rdv, dir.path(), 5);
    // The Lambda worker is the mesh's only node: the job runs there.
    let run = rdv.run(dir.path(), &repo("examples/wordfreq/job.toml"), &rdv.token);
    assert_eq!(run.code, Some(0), "{}\nfunction log:\n{}", run.stderr, worker.log());
    assert_eq!(run.out("frequencies.txt"), shell(&repo("examples/wordfreq/expected.sh"), &[]));
    let report = worker.report();
    assert_eq!(report["stopped"], "drained", "{report}");
    assert_eq!(report["thunks"].as_u64(), Some(run.num("thunks_executed")), "{report}");
}

#[test]
fn a_lambda_worker_at_its_deadline_hands_its_outputs_over_and_the_job_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let emulator = Emulator::start();
    // `slow` touches a marker outside its sandbox (a test-only breach of hermeticity) so the test
    // knows it runs on the worker, and outlasts the worker's 2 s of work.
    let marker = dir.path().join("slow-started");
    let text = crate::util::handover_job(&marker, 3);
    let job = crate::util::write(dir.path(), &[("job.toml", &text)]);
    let worker = Worker::invoke(&emulator, &rdv, dir.path(), 2);
    let runner = rdv.run_in_background(dir.path(), &job);
    let started = || marker.exists().then_some(());
    crate::util::wait_until(Duration::from_secs(30), started, || format!("`slow` never started:\n{}", worker.log()));
    // A node that outlives the worker; `second` can only run there.
    let _node = rdv.node(&dir.path().join("node"), "survivor");
    let run = runner.join().expect("run thread");
    assert_eq!(run.code, Some(0), "{}\nfunction log:\n{}", run.stderr, worker.log());
    assert_eq!(run.out("result.txt"), b"first\nslow\n");
    assert!(run.num("storage_fallbacks") >= 1, "handed over through storage: {}", run.summary);
    let report = worker.report();
    assert_eq!((report["stopped"].as_str(), report["thunks"].as_u64()), (Some("drained"), Some(2)), "{report}");
}

#[test]
fn a_lambda_worker_whose_tmp_fills_up_answers_disk_full_and_the_job_completes_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let emulator = Emulator::start();
    // The function's /tmp is 4 MB; the job's one thunk writes 6 MB.
    let tmp = crate::util::Tmpfs::mount(&dir.path().join("function").join("tmp"), 4);
    let worker = Worker::invoke(&emulator, &rdv, dir.path(), 60);
    let job = crate::util::write(dir.path(), &[("job.toml", crate::util::SIX_MEGABYTES)]);
    let runner = rdv.run_in_background(dir.path(), &job);
    let log = worker.log.clone();
    let report = worker.report();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(report["stopped"], "disk full", "{report}\n{log}");
    assert!(!tmp.0.join("thunkmesh").exists(), "the cache is emptied for the next invocation");
    let _node = rdv.node(&dir.path().join("node"), "roomy");
    let run = runner.join().expect("run thread");
    assert_eq!(run.code, Some(0), "{}\n{log}", run.stderr);
    assert_eq!(run.out("big.bin"), vec![0; 6 << 20]);
}

/// `thunkmesh run JOB --engine lambda --function FUNCTION` against `rdv`, with storage in `s3`'s
/// bucket `jobs` and the Lambda API at `emulator`, in `dir`.
fn run_on_lambda(
    dir: &std::path::Path,
    job: &std::path::Path,
    rdv: &SelfHosted,
    s3: &S3Server,
    emulator: &Emulator,
    function: &str,
    extra: &[&str],
) -> Run {
    std::fs::create_dir_all(dir).expect("mkdir");
    let out = thunkmesh()
        .current_dir(dir)
        .arg("run")
        .arg(job)
        .args(["--engine", "lambda", "--function", function, "--workers", "3", "--lambda-idle", "1s"])
        .args(["--rendezvous", &rdv.addr, "--fingerprint", &rdv.fingerprint, "--store", "s3://jobs/lambda"])
        .args(["--summary-json", "summary.json"])
        .args(extra)
        .env("THUNKMESH_TOKEN", &rdv.token)
        .envs(s3.env())
        .env("AWS_ENDPOINT_URL_LAMBDA", format!("http://127.0.0.1:{}", emulator.port))
        .output()
        .expect("start thunkmesh run");
    finish(dir, out)
}

/// Three execution environments of the function, with the storage settings Lambda would give
/// them (here: the S3 server's).
fn functions(emulator: &Emulator, s3: &S3Server, dir: &std::path::Path) -> Vec<(Proc, PathBuf)> {
    (0..3).map(|i| function(emulator, &dir.join(format!("function-{i}")), &s3.env())).collect()
}

fn logs(functions: &[(Proc, PathBuf)]) -> String {
    functions
        .iter()
        .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn lambda_field(run: &Run, key: &str) -> u64 {
    run.summary["lambda"][key].as_u64().unwrap_or_else(|| panic!("no lambda.{key} in {}", run.summary))
}

/// Three parts that take half a second each, so a job starts three workers at once, and a merge
/// that reads all three: at least two of its inputs come from other workers.
const THREE_PARTS: &str = r#"[[thunk]]
name = "part-1"
program = { host = "/bin/sh" }
args = ["-c", "sleep 0.5; seq 1 3 30000 > o"]
env = { PATH = "/usr/bin:/bin" }
outputs = ["o"]

[[thunk]]
name = "part-2"
program = { host = "/bin/sh" }
args = ["-c", "sleep 0.5; seq 2 3 30000 > o"]
env = { PATH = "/usr/bin:/bin" }
outputs = ["o"]

[[thunk]]
name = "part-3"
program = { host = "/bin/sh" }
args = ["-c", "sleep 0.5; seq 3 3 30000 > o"]
env = { PATH = "/usr/bin:/bin" }
outputs = ["o"]

[[thunk]]
name = "merge"
program = { host = "/bin/sh" }
args = ["-c", "cat a b c | sort -n > o"]
env = { PATH = "/usr/bin:/bin" }
inputs = { a = "part-1#o", b = "part-2#o", c = "part-3#o" }
outputs = ["o"]

[targets]
"merged.txt" = "merge#o"
"#;

/// Cold starts the function processes have logged so far.
fn cold_starts_logged(functions: &[(Proc, PathBuf)]) -> u64 {
    logs(functions).matches("cold=true").count() as u64
}

#[test]
fn a_job_on_lambda_workers_matches_a_local_run_in_both_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"), &["jobs"]).expect("s3 server");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let emulator = Emulator::start();
    let functions = functions(&emulator, &s3, dir.path());
    let job = crate::util::write(dir.path(), &[("job.toml", THREE_PARTS)]);
    std::fs::create_dir_all(dir.path().join("local")).expect("mkdir");
    let local = run_in(&dir.path().join("local"), &job, &[]);
    local.ok();
    let expected: String = (1..=30000).map(|i| format!("{i}\n")).collect();
    assert_eq!(local.out("merged.txt"), expected.as_bytes());

    let p2p = run_on_lambda(&dir.path().join("p2p"), &job, &rdv, &s3, &emulator, "thunkmesh", &["--memo", "off"]);
    assert_eq!(p2p.code, Some(0), "{}\nfunctions:\n{}", p2p.stderr, logs(&functions));
    assert_eq!(p2p.out("merged.txt"), local.out("merged.txt"));
    assert!(p2p.num("peer_fetches") >= 2, "intermediates moved peer to peer: {}", p2p.summary);
    assert_eq!(lambda_field(&p2p, "invocations"), 3, "three parts ready at once: {}", p2p.summary);
    assert_eq!(lambda_field(&p2p, "cold_starts"), 3, "three fresh environments: {}", p2p.summary);
    assert_eq!(cold_starts_logged(&functions), 3);
    assert_eq!(lambda_field(&p2p, "reports"), 3, "{}", p2p.summary);
    assert_eq!(lambda_field(&p2p, "thunks"), p2p.num("thunks_executed"), "{}", p2p.summary);
    let moved = p2p.num("peer_bytes") + p2p.num("relayed_bytes");
    assert_eq!(lambda_field(&p2p, "served_bytes"), moved, "what the workers served: {}", p2p.summary);
    assert!(p2p.stdout.contains("lambda    3 invocations (3 cold starts)"), "{}", p2p.stdout);

    // gg's way on the same, now warm, environments: every intermediate through storage.
    let storage = run_on_lambda(
        &dir.path().join("storage"),
        &job,
        &rdv,
        &s3,
        &emulator,
        "thunkmesh",
        &["--memo", "off", "--mode", "storage"],
    );
    assert_eq!(storage.code, Some(0), "{}\nfunctions:\n{}", storage.stderr, logs(&functions));
    assert_eq!(storage.out("merged.txt"), local.out("merged.txt"));
    assert_eq!(storage.num("peer_fetches"), 0, "{}", storage.summary);
    assert!(storage.num("storage_get_requests") >= 3, "intermediates read from storage: {}", storage.summary);
    assert_eq!(lambda_field(&storage, "cold_starts"), 0, "warm environments: {}", storage.summary);
    assert_eq!(cold_starts_logged(&functions), 3, "no new environment started");
}

#[test]
fn a_function_that_keeps_failing_ends_the_job_with_its_error_type_and_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"), &["jobs"]).expect("s3 server");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let emulator = Emulator::start();
    // Environments whose /tmp cannot hold a cache: every worker fails as it starts, and is
    // invoked again while the job needs it.
    let broken: Vec<_> = (0..3)
        .map(|i| {
            let env = [("TMPDIR", "/dev/null/tmp".to_owned())];
            function(&emulator, &dir.path().join(format!("broken-{i}")), &env)
        })
        .collect();
    let job = repo("examples/wordfreq/job.toml");
    let run = run_on_lambda(&dir.path().join("run"), &job, &rdv, &s3, &emulator, "thunkmesh", &[]);
    assert_eq!(run.code, Some(1), "{}\nfunctions:\n{}", run.stderr, logs(&broken));
    assert!(
        run.stderr.contains("Lambda function `thunkmesh` failed 3 times in a row; the last error: NodeFailed: "),
        "{}",
        run.stderr
    );

    let missing = run_on_lambda(&dir.path().join("missing"), &job, &rdv, &s3, &emulator, "nope", &[]);
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(missing.stderr.contains("Lambda refused to invoke `nope`"), "{}", missing.stderr);
}

#[test]
fn a_rendezvous_keeps_a_warm_pool_of_lambda_workers_that_run_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let emulator = Emulator::start();
    let functions: Vec<_> =
        (0..2).map(|i| function(&emulator, &dir.path().join(format!("function-{i}")), &[])).collect();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port").port();
    let addr = format!("127.0.0.1:{port}");
    let lambda = format!("http://127.0.0.1:{}", emulator.port);
    let pool = ["--lambda-pool", "2", "--function", "thunkmesh", "--public-addr", &addr];
    let aws = [
        ("AWS_ENDPOINT_URL_LAMBDA", lambda.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let rdv = SelfHosted::start_on(&dir.path().join("rdv"), &addr, &pool, &aws);
    let joined = || (rdv.status().matches("lambda-").count() == 2).then_some(());
    let what = || format!("the pool did not join:\n{}\n{}", rdv.status(), logs(&functions));
    crate::util::wait_until(Duration::from_secs(30), joined, what);
    // A plain run on the rendezvous: the pool's workers are its only nodes.
    let run = rdv.run(dir.path(), &repo("examples/wordfreq/job.toml"), &rdv.token);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, logs(&functions));
    assert_eq!(run.out("frequencies.txt"), shell(&repo("examples/wordfreq/expected.sh"), &[]));
}
