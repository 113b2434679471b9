//! A self-hosted rendezvous and separate node processes: jobs submitted to it, a wrong token,
//! a node killed mid-job, and a malformed frame that costs only its own connection.

use std::time::Duration;

use thunkmesh_net::{Identity, Trust, client_config, connect, parse_fingerprint};
use thunkmesh_protocol::wire::ALPN_RENDEZVOUS;

use crate::util::{SelfHosted, repo, shell, write};

/// A one-thunk job whose target `o` holds `word`.
fn echo_job(dir: &std::path::Path, word: &str) -> std::path::PathBuf {
    let text = format!(
        "[[thunk]]\nname = \"a\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"echo {word} > o\"]\noutputs = [\"o\"]\n[targets]\n\"o\" = \"a#o\"\n"
    );
    write(dir, &[("job.toml", &text)])
}

#[test]
fn nodes_and_jobs_meet_at_a_self_hosted_rendezvous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let _nodes: Vec<_> = (0..3).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    let run = rdv.run(dir.path(), &repo("examples/cc/job.toml"), &rdv.token);
    run.ok();
    let direct = dir.path().join("direct");
    shell(&repo("examples/cc/expected.sh"), &[&direct]);
    assert_eq!(run.out("report.txt"), std::fs::read(direct.join("report.txt")).expect("report"));
    assert!(run.num("peer_bytes") > 0);
    // On loopback the rendezvous sees each node where the node is bound: no NAT.
    let status = rdv.status();
    for name in ["n0", "n1", "n2"] {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {status}"));
        assert!(line.contains("127.0.0.1:") && line.contains(" none "), "{line}");
    }
    assert!(status.contains("\n3 node(s), 3 slot(s)\n"), "{status}");
    assert!(status.contains("\n0 job(s), 0 thunk(s) queued; up "), "{status}");
}

#[test]
fn a_rendezvous_with_a_ca_issued_certificate_is_trusted_through_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key")).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params").signed_by(&key, &ca);
    let pem = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write pem");
        path.display().to_string()
    };
    let (ca_file, cert, key) =
        (pem("ca.pem", ca.pem()), pem("cert.pem", leaf.expect("leaf").pem()), pem("key.pem", key.serialize_pem()));
    let mut rdv = SelfHosted::start_with(&dir.path().join("rdv"), &["--cert", &cert, "--key", &key]);
    rdv.trust = ["--ca", &ca_file, "--server-name", "localhost"].map(String::from).to_vec();
    let _node = rdv.node(&dir.path().join("node"), "n0");
    let job = echo_job(dir.path(), "trusted");
    let run = rdv.run(dir.path(), &job, &rdv.token);
    run.ok();
    assert_eq!(run.out("o"), b"trusted\n");

    rdv.trust = ["--ca", &ca_file, "--server-name", "elsewhere"].map(String::from).to_vec();
    let wrong_name = rdv.run(dir.path(), &job, &rdv.token);
    assert_eq!(wrong_name.code, Some(1));
    assert!(wrong_name.stderr.contains("cannot connect to"), "{}", wrong_name.stderr);
}

#[test]
fn a_client_with_the_wrong_token_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let run = rdv.run(dir.path(), &repo("examples/cc/job.toml"), "not-the-token");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("refused this client: the token is not this rendezvous' token"), "{}", run.stderr);
}

fn slow_fan_in(stages: usize) -> String {
    let mut text = String::new();
    let mut inputs = Vec::new();
    for i in 0..stages {
        text.push_str(&format!(
            "[[thunk]]\nname = \"slow-{i}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"sleep 1; echo {i} > out\"]\nenv = {{ PATH = \"/usr/bin:/bin\" }}\noutputs = [\"out\"]\n\n"
        ));
        inputs.push(format!("\"in{i}\" = \"slow-{i}#out\""));
    }
    let names: Vec<String> = (0..stages).map(|i| format!("in{i}")).collect();
    text.push_str(&format!(
        "[[thunk]]\nname = \"gather\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"/bin/cat {} > all\"]\ninputs = {{ {} }}\noutputs = [\"all\"]\n\n[targets]\n\"all.txt\" = \"gather#all\"\n",
        names.join(" "),
        inputs.join(", ")
    ));
    text
}

#[test]
fn a_node_killed_mid_job_costs_a_rerun_not_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let mut nodes: Vec<_> = (0..3).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    let job = write(dir.path(), &[("job.toml", &slow_fan_in(6))]);
    let runner = rdv.run_in_background(dir.path(), &job);
    // Each node has run one slow thunk and started a second when the first node dies: its
    // finished output lived only in its cache and must be recomputed.
    std::thread::sleep(Duration::from_millis(1600));
    let killed = nodes.remove(0);
    drop(killed);
    let run = runner.join().expect("runner");
    run.ok();
    assert_eq!(run.out("all.txt"), b"0\n1\n2\n3\n4\n5\n");
    assert_eq!(run.num("nodes_lost"), 1);
}

#[tokio::test]
async fn an_oversized_frame_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let endpoint = thunkmesh_net::endpoint("127.0.0.1:0".parse().expect("addr"), &Identity::generate().expect("id"))
        .expect("endpoint");
    let trust = Trust::Pinned(parse_fingerprint(&rdv.fingerprint).expect("fingerprint"));
    let config = client_config(&trust, ALPN_RENDEZVOUS).expect("config");
    let conn =
        connect(&endpoint, config, rdv.addr.parse().expect("addr"), thunkmesh_net::SERVER_NAME).await.expect("connect");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&u32::MAX.to_be_bytes()).await.expect("write header");
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("closed in time");
    // Before the hello, a frame may hold at most 64 KiB.
    assert!(reason.to_string().contains("exceeds the 65536-byte limit"), "{reason}");

    let _node = rdv.node(&dir.path().join("node"), "n0");
    let job = echo_job(dir.path(), "fine");
    let run = tokio::task::spawn_blocking({
        let (dir, job) = (dir.path().to_owned(), job.clone());
        move || rdv.run(&dir, &job, &rdv.token)
    })
    .await
    .expect("join");
    run.ok();
    assert_eq!(run.out("o"), b"fine\n");
}

#[test]
fn a_producer_that_leaves_gracefully_hands_its_outputs_over_through_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let leaving = rdv.node_in(None, &dir.path().join("node-a"), "leaving", &["--sandbox", "off"]);
    // `slow` touches a marker outside its sandbox (a test-only breach of hermeticity) so the test
    // knows when it runs.
    let marker = dir.path().join("slow-started");
    let text = crate::util::handover_job(&marker, 2);
    let job = write(dir.path(), &[("job.toml", &text)]);
    let runner = rdv.run_in_background(dir.path(), &job);
    // `first` is done and `slow` runs on the only node when a second node joins and the first is
    // asked to stop: it finishes `slow`, uploads both outputs that `second` needs, and leaves.
    crate::util::wait_until(
        Duration::from_secs(30),
        || marker.exists().then_some(()),
        || "`slow` never started".into(),
    );
    let _staying = rdv.node(&dir.path().join("node-b"), "staying");
    let pid = leaving.0.id().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let run = runner.join().expect("runner");
    run.ok();
    assert_eq!(run.out("result.txt"), b"first\nslow\n");
    assert_eq!(run.num("storage_fallbacks"), 2, "both outputs went through storage: {}", run.summary);
    assert_eq!(run.num("nodes_lost"), 0, "a drained node is not lost");
    assert_eq!(run.num("thunks_executed"), 3, "nothing was recomputed");
    assert_eq!(run.num("peer_bytes"), 0);
}

/// A memory cgroup (v1, as this machine kind mounts it) that processes can be put in; removed
/// when dropped, once its processes are gone.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(format!("thunkmesh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a memory cgroup (needs root and the memory controller)");
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).expect("limit");
        MemoryCgroup(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }

    /// How often its usage hit the limit (and the kernel reclaimed).
    fn limit_hits(&self) -> u64 {
        let text = std::fs::read_to_string(self.0.join("memory.failcnt")).expect("failcnt");
        text.trim().parse().expect("a count")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Issue 14: an object moves between nodes in blocks, never whole in memory. The nodes (and the
/// programs they start) run in a memory cgroup of 128 MiB and a 256 MiB object crosses: a node
/// that held it in memory would be killed. Neither node's peak resident memory rises by 64 MiB.
#[test]
fn an_object_larger_than_the_nodes_memory_moves_between_them() {
    const SIZE: u64 = 256 << 20;
    if !crate::util::root_or_skip(
        "self_hosted::an_object_larger_than_the_nodes_memory_moves_between_them",
        "a memory cgroup needs root (CI runs as root)",
    ) {
        return;
    }
    let cgroup = MemoryCgroup::new(128 << 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let nodes: Vec<_> = (0..2).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    for node in &nodes {
        cgroup.add(node.0.id());
    }
    rdv.wait_for_nodes(2, Duration::from_secs(30));
    let before: Vec<u64> = nodes
        .iter()
        .map(|n| {
            crate::util::reset_peak(n.0.id());
            crate::util::memory(n.0.id(), "VmRSS")
        })
        .collect();
    let producer = |name: &str| {
        format!(
            "[[thunk]]\nname = \"{name}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"sleep 0.5; yes {name} | head -c {SIZE} > out\"]\nenv = {{ PATH = \"/usr/bin:/bin\" }}\n\
             outputs = [\"out\"]\n\n"
        )
    };
    let job = format!(
        "{}{}[[thunk]]\nname = \"both\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat l r | wc -c > out\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ l = \"left#out\", r = \"right#out\" }}\noutputs = [\"out\"]\n\n\
         [targets]\n\"count.txt\" = \"both#out\"\n",
        producer("left"),
        producer("right")
    );
    let job = write(dir.path(), &[("job.toml", &job)]);
    let run = rdv.run_with(dir.path(), &job, &["--memo", "off"]);
    run.ok();
    assert_eq!(run.out("count.txt"), format!("{}\n", 2 * SIZE).as_bytes());
    assert_eq!((run.num("peer_fetches"), run.num("peer_bytes")), (1, SIZE), "one producer's output crossed");
    for (node, rss) in nodes.iter().zip(before) {
        let rise = crate::util::memory(node.0.id(), "VmHWM").saturating_sub(rss);
        assert!(rise < 64 << 20, "a node's peak memory rose by {} KiB while 256 MiB moved", rise >> 10);
    }
    assert!(cgroup.limit_hits() > 0, "the nodes' memory (page cache included) reached its 128 MiB limit");
    drop(nodes);
    drop(cgroup);
}

/// A node dials a rendezvous that is not up yet until it is, and dials it again after it
/// restarts (same state folder and port: same certificate and token); a job cut by the restart
/// fails with one clear line, and the next job runs on the node that came back (issue 16).
#[test]
fn a_node_survives_a_rendezvous_restart_and_waits_for_one_not_up_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("rdv");
    let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port").port();
    let addr = format!("127.0.0.1:{port}");
    // The certificate exists before the first start, so the node can be given its fingerprint.
    let first = SelfHosted::start_on(&state, &addr, &[], &[]);
    drop(first);
    let first_fingerprint = Identity::load_or_create(&state).expect("identity").fingerprint();
    let fingerprint: String = first_fingerprint.iter().map(|b| format!("{b:02x}")).collect();

    let node = crate::util::thunkmesh()
        .args(["node", "--rendezvous", &addr, "--bind", "127.0.0.1:0", "--name", "n0"])
        .args(["--fingerprint", &fingerprint, "--cache-dir"])
        .arg(dir.path().join("node"))
        .env("THUNKMESH_TOKEN", "integration-test-token")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.path().join("node.log")).expect("log"))
        .spawn()
        .expect("node");
    let _node = crate::util::Proc(node);
    std::thread::sleep(Duration::from_secs(3));
    let rdv = SelfHosted::start_on(&state, &addr, &[], &[]);
    assert_eq!(rdv.fingerprint, fingerprint);
    rdv.wait_for_nodes(1, Duration::from_secs(10));

    let job = write(dir.path(), &[("job.toml", &slow_fan_in(1).replace("sleep 1", "sleep 30"))]);
    let cut = rdv.run_in_background(dir.path(), &job);
    std::thread::sleep(Duration::from_secs(2));
    drop(rdv);
    let cut = cut.join().expect("client");
    assert_eq!(cut.code, Some(1), "{}", cut.stderr);
    assert!(cut.stderr.contains("the rendezvous closed the connection before the job ended"), "{}", cut.stderr);

    let rdv = SelfHosted::start_on(&state, &addr, &[], &[]);
    rdv.wait_for_nodes(1, Duration::from_secs(20));
    let run = rdv.run(dir.path(), &echo_job(dir.path(), "back"), &rdv.token);
    run.ok();
    assert_eq!(run.out("o"), b"back\n");
    let log = std::fs::read_to_string(dir.path().join("node.log")).expect("node log");
    assert!(log.contains("the rendezvous is unreachable; dialling it again"), "{log}");
    assert_eq!(log.matches("registered").count(), 2, "{log}");
}

/// `status` shows each running job with its queue, as a table and as JSON (issue 16).
#[test]
fn status_shows_the_running_jobs_and_their_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let _node = rdv.node(&dir.path().join("node"), "n0");
    rdv.wait_for_nodes(1, Duration::from_secs(10));
    // Three slow thunks on one slot: one runs, two wait.
    let job = write(dir.path(), &[("job.toml", &slow_fan_in(3))]);
    let run = rdv.run_in_background(dir.path(), &job);
    let running = || rdv.status_json()["jobs"].get(0).filter(|j| j["thunks_running"] == 1).cloned();
    let job = crate::util::wait_until(Duration::from_secs(10), running, || {
        format!("no running job in {}", rdv.status_json())
    });
    assert_eq!((job["thunks_total"].as_u64(), job["thunks_queued"].as_u64()), (Some(4), Some(2)), "{job}");
    assert_eq!(job["mode"], "p2p");
    assert!(job["running_ms"].as_u64() > Some(0), "{job}");
    let text = rdv.status();
    assert!(text.contains("\n1 job(s), 2 thunk(s) queued; up "), "{text}");
    assert!(text.contains("THUNKS/S"), "{text}");
    run.join().expect("client").ok();
    assert_eq!(rdv.status_json()["jobs"].as_array().map(Vec::len), Some(0));
}

/// A node restarted on the same cache is the same node: its identity, which memo entries name
/// and `--forbid-node` refuses, lives in its cache folder (each node process used to get a new
/// one, so forbidding a node missed it once it restarted).
#[test]
fn a_node_restarted_on_its_cache_keeps_its_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let cache = dir.path().join("node");
    let identity = |rdv: &SelfHosted| rdv.status_json()["nodes"][0]["fingerprint"].as_str().map(str::to_owned);
    let first = {
        let _node = rdv.node(&cache, "n");
        rdv.wait_for_nodes(1, Duration::from_secs(20));
        identity(&rdv).expect("a fingerprint")
    };
    rdv.wait_for_nodes(0, Duration::from_secs(20));
    let _again = rdv.node(&cache, "n");
    rdv.wait_for_nodes(1, Duration::from_secs(20));
    assert_eq!(identity(&rdv).expect("a fingerprint"), first);
    assert_eq!(first.len(), 64);
}
