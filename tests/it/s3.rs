//! Both modes against a real S3-compatible server (s3s-fs over HTTP on loopback): the same
//! targets byte for byte, intermediates off storage in p2p mode, and through it in storage mode.

use std::collections::BTreeSet;
use std::path::Path;

use thunkmesh_s3_fixture::S3Server;

use crate::util::{Run, finish, repo, shell, thunkmesh};

struct Example {
    job: &'static str,
    target: &'static str,
    /// Thunk outputs that are consumed by another thunk (edges between thunks).
    intermediate_edges: u64,
    /// Outputs the job's thunks produce, targets included.
    outputs: u64,
    /// Files the job reads from disk.
    values: usize,
}

const WORDFREQ: Example = Example {
    job: "examples/wordfreq/job.toml",
    target: "frequencies.txt",
    intermediate_edges: 9,
    outputs: 10,
    values: 4,
};
const CC: Example =
    Example { job: "examples/cc/job.toml", target: "report.txt", intermediate_edges: 4, outputs: 5, values: 5 };
/// fib(20) with tails: every sum reads two fib outputs.
const FIB: Example =
    Example { job: "examples/fib/job.toml", target: "fib.txt", intermediate_edges: 38, outputs: 40, values: 3 };

fn run_on(server: &S3Server, dir: &Path, example: &Example, mode: &str) -> Run {
    run_job_on(server, dir, &repo(example.job), mode)
}

fn run_job_on(server: &S3Server, dir: &Path, job: &Path, mode: &str) -> Run {
    let work = dir.join(mode);
    std::fs::create_dir_all(&work).expect("mkdir");
    let mut cmd = thunkmesh();
    cmd.current_dir(&work)
        .arg("run")
        .arg(job)
        .args(["--workers", "3", "--mode", mode, "--summary-json", "summary.json"])
        .args(["--store", &format!("s3://jobs/{mode}")])
        .envs(server.env());
    finish(&work, cmd.output().expect("run"))
}

fn blobs_in_bucket(root: &Path, prefix: &str) -> BTreeSet<String> {
    let dir = root.join("jobs").join(prefix).join("blobs");
    std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

fn both_modes_agree(example: &Example, expected: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s3");
    let server = S3Server::start(&root, &["jobs"]).expect("s3 server");

    let p2p = run_on(&server, dir.path(), example, "p2p");
    p2p.ok();
    let storage = run_on(&server, dir.path(), example, "storage");
    storage.ok();
    assert_eq!(p2p.out(example.target), expected, "p2p matches the shell");
    assert_eq!(storage.out(example.target), expected, "storage mode matches the shell");

    // p2p: only targets were written (the inputs are small: they ride with the job); one PUT
    // per target, and the memo entries in a batch or two.
    let targets = p2p.summary["targets"].as_object().expect("targets").len();
    assert_eq!(blobs_in_bucket(&root, "p2p").len(), targets, "{:?}", blobs_in_bucket(&root, "p2p"));
    crate::util::memo_batches(&p2p, targets as u64);
    // Nor read: no input and no target (small, it came back with the outcome), only the memo
    // cache's listing.
    assert_eq!(p2p.num("storage_get_requests"), 1, "storage reads in p2p mode");

    // storage: on top of what p2p needed, a PUT for every output that is not a target (targets
    // are stored in both modes) and a GET for every edge between thunks.
    let extra_puts = storage.num("storage_put_requests") - p2p.num("storage_put_requests");
    let extra_gets = storage.num("storage_get_requests") - p2p.num("storage_get_requests");
    assert!(extra_puts >= example.outputs - targets as u64, "{extra_puts} more PUTs for {} outputs", example.outputs);
    assert!(
        extra_gets >= example.intermediate_edges,
        "{extra_gets} more GETs for {} edges",
        example.intermediate_edges
    );
    assert_eq!(storage.num("peer_bytes"), 0, "storage mode moves nothing peer to peer");
    // storage: every input too, and every output (equal outputs are one blob).
    assert!(
        blobs_in_bucket(&root, "storage").len() >= example.values + targets,
        "{:?}",
        blobs_in_bucket(&root, "storage")
    );
    assert!(blobs_in_bucket(&root, "storage").len() > blobs_in_bucket(&root, "p2p").len());
}

/// Small inputs ride with the job in p2p mode (issue 32): of a 20-byte value and a 100 KiB one,
/// only the larger goes to the bucket (with the target, too large to come back with the
/// outcome), and the job reads from storage only that value (HEAD, GET), the target and the memo
/// cache's listing. In storage mode both values are stored, as every input is.
#[test]
fn small_inputs_ride_with_the_job_and_large_ones_go_through_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s3");
    let server = S3Server::start(&root, &["jobs"]).expect("s3 server");
    let big: String = (0..100 * 1024 / 8).map(|i| format!("{:07}\n", i % 10_000_000)).collect();
    let job = crate::util::write(
        dir.path(),
        &[
            (
                "job.toml",
                "[values]\nsmall = \"small.txt\"\nbig = \"big.txt\"\n\n[[thunk]]\nname = \"both\"\n\
                 program = { host = \"/bin/cat\" }\nargs = [\"s\", \"b\"]\ninputs = { s = \"small\", b = \"big\" }\n\
                 stdout = true\n\n[targets]\n\"both.txt\" = \"both#stdout\"\n",
            ),
            ("small.txt", "twenty bytes, small\n"),
            ("big.txt", &big),
        ],
    );
    let id = |text: &str| thunkmesh_protocol::Id::of_blob(text.as_bytes()).to_string();
    let p2p = run_job_on(&server, dir.path(), &job, "p2p");
    p2p.ok();
    assert_eq!(p2p.out("both.txt"), format!("twenty bytes, small\n{big}").as_bytes());
    let target = p2p.summary["targets"]["both.txt"].as_str().expect("target").to_owned();
    assert_eq!(blobs_in_bucket(&root, "p2p"), BTreeSet::from([id(&big), target.clone()]));
    crate::util::memo_batches(&p2p, 2);
    assert_eq!(p2p.num("storage_get_requests"), 4, "the big value's HEAD and GET, the target's GET, the memo listing");
    let storage = run_job_on(&server, dir.path(), &job, "storage");
    storage.ok();
    assert_eq!(blobs_in_bucket(&root, "storage"), BTreeSet::from([id("twenty bytes, small\n"), id(&big), target]));
}

#[test]
fn wordfreq_on_s3_in_both_modes() {
    both_modes_agree(&WORDFREQ, &shell(&repo("examples/wordfreq/expected.sh"), &[]));
}

#[test]
fn c_build_on_s3_in_both_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    shell(&repo("examples/cc/expected.sh"), &[dir.path()]);
    both_modes_agree(&CC, &std::fs::read(dir.path().join("report.txt")).expect("report"));
}

#[test]
fn fib_on_s3_in_both_modes() {
    both_modes_agree(&FIB, &shell(&repo("examples/fib/expected.sh"), &[]));
}

#[test]
fn a_second_run_on_s3_executes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&dir.path().join("s3"), &["jobs"]).expect("s3 server");
    run_on(&server, dir.path(), &CC, "p2p").ok();
    let again = run_on(&server, dir.path(), &CC, "p2p");
    again.ok();
    assert_eq!(again.num("thunks_executed"), 0);
    assert!(again.out("report.txt").starts_with(b"collatz"));
}

/// A job of `width` thunks that each write their number, and one that joins them with `sep`.
fn wide_job(width: usize, sep: &str) -> String {
    let mut text = String::new();
    for i in 0..width {
        text.push_str(&format!(
            "[[thunk]]\nname = \"part-{i}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"echo {i} > out\"]\noutputs = [\"out\"]\n\n"
        ));
    }
    let inputs: Vec<String> = (0..width).map(|i| format!("\"p/{i:03}\" = \"part-{i}#out\"")).collect();
    text.push_str(&format!(
        "[[thunk]]\nname = \"join\"\nprogram = {{ host = \"/bin/sh\" }}\n\
         args = [\"-c\", \"cat p/* | tr '\\\\n' '{sep}' > all\"]\nenv = {{ PATH = \"/usr/bin:/bin\" }}\n\
         inputs = {{ {} }}\noutputs = [\"all\"]\n\n[targets]\n\"all.txt\" = \"join#all\"\n",
        inputs.join(", ")
    ));
    text
}

#[test]
fn a_wide_job_finds_its_memo_entries_in_few_requests() {
    const WIDTH: usize = 70;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&dir.path().join("s3"), &["jobs"]).expect("s3 server");
    let run = |sep: &str| {
        let job = crate::util::write(dir.path(), &[("wide.toml", &wide_job(WIDTH, sep))]);
        let mut cmd = thunkmesh();
        cmd.current_dir(dir.path())
            .arg("run")
            .arg(&job)
            .args(["--workers", "2", "--summary-json", "summary.json", "--store", "s3://jobs/wide"])
            .envs(server.env());
        finish(dir.path(), cmd.output().expect("run"))
    };
    let first = run(",");
    first.ok();
    let expected: String = (0..WIDTH).map(|i| format!("{i},")).collect();
    assert_eq!(first.out("all.txt"), expected.as_bytes());
    // Two listings (batches of memo entries, single entries) find all 71 absent: no GET each.
    assert!(first.num("storage_get_requests") <= 5, "{}", first.summary);

    // A changed last step: its target misses; the 70 parts' entries come in the first run's
    // one batch (a listing and a GET), not 70 GETs.
    let second = run(";");
    second.ok();
    assert_eq!(second.out("all.txt"), expected.replace(',', ";").as_bytes());
    assert_eq!(second.num("thunks_executed"), 1, "{}", second.summary);
    assert!(second.num("storage_get_requests") <= 8, "{}", second.summary);
}

/// Keys only in `~/.aws/credentials`, under a named profile with its region in `~/.aws/config`:
/// `--profile` finds them for the client and the local nodes, as the AWS CLI would (issue 16).
#[test]
fn an_s3_store_takes_its_credentials_from_a_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s3");
    let server = S3Server::start(&root, &["jobs"]).expect("s3 server");
    let home = dir.path().join("home");
    let credentials = format!(
        "[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        thunkmesh_s3_fixture::ACCESS_KEY,
        thunkmesh_s3_fixture::SECRET_KEY
    );
    std::fs::create_dir_all(home.join(".aws")).expect("mkdir");
    std::fs::write(home.join(".aws/credentials"), credentials).expect("credentials");
    std::fs::write(home.join(".aws/config"), "[profile ci]\nregion = us-east-1\n").expect("config");
    let run = |extra: &[&str]| {
        let mut cmd = thunkmesh();
        cmd.current_dir(dir.path())
            .arg("run")
            .arg(repo(WORDFREQ.job))
            .args(["--workers", "2", "--store", "s3://jobs/profile", "--summary-json", "summary.json"])
            .args(extra)
            .env("HOME", &home)
            .env("AWS_ENDPOINT_URL", server.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            // Without a profile the chain ends at the instance metadata service: not here.
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"] {
            cmd.env_remove(name);
        }
        finish(dir.path(), cmd.output().expect("run"))
    };
    let expected = shell(&repo("examples/wordfreq/expected.sh"), &[]);
    let with_profile = run(&["--profile", "ci"]);
    with_profile.ok();
    assert_eq!(with_profile.out(WORDFREQ.target), expected);
    assert!(!blobs_in_bucket(&root, "profile").is_empty(), "the inputs went to the bucket");

    // No profile named, and none called `default`: one error naming the missing credentials,
    // before anything runs (exit status 2, a setting).
    let without = run(&["--memo", "off"]);
    assert_eq!(without.code, Some(2), "{}", without.stderr);
    let error = without.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.starts_with("error: no AWS credentials for s3://jobs/profile: "), "{}", without.stderr);
    assert_eq!(without.stderr.matches("found none").count(), 1, "said once: {}", without.stderr);
}
