//! The node as a Lambda function, under the real Lambda runtime API as `cargo lambda watch`
//! serves it (the test command installs the emulator in `target/lambda-venv`): an invocation
//! joins a self-hosted rendezvous, runs a job's thunks, drains at its bound and answers with a
//! report.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Proc, SelfHosted, repo, shell, thunkmesh};

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
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "cargo lambda watch did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// A function process served by `emulator`, invoked once (on a thread) to join `rdv` and work at
/// most `max_seconds`; the handle yields the Invoke API's status and body.
struct Worker {
    _function: Proc,
    invocation: std::thread::JoinHandle<(u16, String)>,
    log: PathBuf,
}

impl Worker {
    fn invoke(emulator: &Emulator, rdv: &SelfHosted, dir: &std::path::Path, max_seconds: u64) -> Worker {
        let tmp = dir.join("function-tmp");
        std::fs::create_dir_all(&tmp).expect("mkdir");
        let log = dir.join("function.log");
        let function = thunkmesh()
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt/thunkmesh", emulator.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", "thunkmesh")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("TMPDIR", &tmp)
            .stderr(std::fs::File::create(&log).map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("start the function");
        let payload = serde_json::json!({
            "rendezvous": rdv.addr, "fingerprint": rdv.fingerprint, "token": rdv.token, "slots": 2,
            "max_seconds": max_seconds,
        })
        .to_string();
        let port = emulator.port;
        let invocation = std::thread::spawn(move || Emulator::invoke(port, &payload));
        Worker { _function: Proc(function), invocation, log }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "`slow` never started:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A node that outlives the worker; `second` can only run there.
    let _node = rdv.node(&dir.path().join("node"), "survivor");
    let run = runner.join().expect("run thread");
    assert_eq!(run.code, Some(0), "{}\nfunction log:\n{}", run.stderr, worker.log());
    assert_eq!(run.out("result.txt"), b"first\nslow\n");
    assert!(run.num("storage_fallbacks") >= 1, "handed over through storage: {}", run.summary);
    let report = worker.report();
    assert_eq!((report["stopped"].as_str(), report["thunks"].as_u64()), (Some("drained"), Some(2)), "{report}");
}
