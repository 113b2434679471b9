//! Peers behind real NATs (`thunkmesh-netlab`): the rendezvous on a public network, nodes behind NATs of
//! the two kinds that matter, and jobs whose intermediates must cross between them. Each case
//! asserts the target's bytes and how every fetch went: direct, or through storage. Needs root.

use std::time::Duration;

use crate::util::{Proc, Run, SelfHosted, write};
use thunkmesh_netlab::{Host, Lab, Mapping};

/// Two producers that run at once (one per node, each node has one slot) and a consumer that
/// reads both, so one output must cross from one node to the other. The producers first sleep
/// `SLEEP` seconds, then write `SIZE` bytes.
const CROSSING_JOB: &str = r#"
[[thunk]]
name = "left"
program = { host = "/bin/sh" }
args = ["-c", "sleep SLEEP; yes left | head -c SIZE > out"]
env = { PATH = "/usr/bin:/bin" }
outputs = ["out"]

[[thunk]]
name = "right"
program = { host = "/bin/sh" }
args = ["-c", "sleep SLEEP; yes right | head -c SIZE > out"]
env = { PATH = "/usr/bin:/bin" }
outputs = ["out"]

[[thunk]]
name = "both"
program = { host = "/bin/sh" }
args = ["-c", "cat l r | sha256sum > out"]
env = { PATH = "/usr/bin:/bin" }
inputs = { l = "left#out", r = "right#out" }
outputs = ["out"]

[targets]
"both.txt" = "both#out"
"#;

/// Outputs the relay passes on (it takes at most 1 MiB).
const SMALL: usize = 300_000;

/// Outputs too large for the relay.
const LARGE: usize = 3_000_000;

fn expected_digest(size: usize) -> String {
    let mut bytes = Vec::new();
    for word in ["left", "right"] {
        bytes.extend(format!("{word}\n").repeat(size / (word.len() + 1) + 1).bytes().take(size));
    }
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(&bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The rendezvous on the public network and one node on each host, all registered.
struct Mesh {
    rendezvous: SelfHosted,
    _nodes: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Mesh {
    fn start(public: &Host, hosts: &[&Host]) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, probe) = (format!("{}:7700", public.ip), format!("{}:7701", public.ip));
        let rendezvous = SelfHosted::start_in(&dir.path().join("rdv"), &addr, &public.ns, &["--probe-listen", &probe]);
        let nodes = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let cache = dir.path().join(format!("node{i}"));
                rendezvous.node_in(Some(&host.ns), &cache, &format!("node{i}"), &["--slots", "1"])
            })
            .collect();
        let mesh = Mesh { rendezvous, _nodes: nodes, dir };
        mesh.wait_for_registration(hosts.len());
        mesh
    }

    fn wait_for_registration(&self, nodes: usize) {
        // A node logs "registered" once it has classified its NAT too.
        let registered = || (0..nodes).all(|i| self.log(i).contains("registered")).then_some(());
        let logs =
            || format!("nodes did not register:\n{}", (0..nodes).map(|i| self.log(i)).collect::<Vec<_>>().join("\n"));
        crate::util::wait_until(Duration::from_secs(20), registered, logs);
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{node}.log"))).unwrap_or_default()
    }

    /// Runs the crossing job from the public network, with a folder store every namespace shares.
    fn run(&self) -> Run {
        self.run_with("0.3", SMALL)
    }

    /// Like [`Mesh::run`], with producers that sleep `seconds` first and write `size` bytes.
    fn run_with(&self, seconds: &str, size: usize) -> Run {
        self.run_flags(seconds, size, &[])
    }

    /// Like [`Mesh::run_with`], with extra flags for `thunkmesh run`.
    fn run_flags(&self, seconds: &str, size: usize, flags: &[&str]) -> Run {
        let work = self.dir.path().join("client");
        let text = CROSSING_JOB.replace("SLEEP", seconds).replace("SIZE", &size.to_string());
        let job = write(&work, &[("job.toml", &text)]);
        let store = format!("file://{}", self.dir.path().join("store").display());
        let mut run = self.rendezvous.run_with(&work, &job, &[&["--store", &store][..], flags].concat());
        run.stderr.push_str(&format!("\n--- node logs ---\n{}\n{}", self.log(0), self.log(1)));
        run
    }
}

/// The output crossed between the nodes directly, at the first try: no storage fallback, and
/// no straggler copy (a consumer stuck dialing gets copied to the producer's node, whose dial
/// back would open a path by accident).
fn assert_all_direct(run: &Run) {
    run.ok();
    assert_eq!(String::from_utf8(run.out("both.txt")).expect("utf-8"), expected_digest(SMALL));
    assert_eq!(fetches(run), (1, 0, 0), "one direct fetch: {}\n{}", run.summary, run.stderr);
    assert_eq!(run.num("straggler_copies"), 0, "{}", run.summary);
}

/// Fetches between nodes: direct, relayed, through storage.
fn fetches(run: &Run) -> (u64, u64, u64) {
    (run.num("peer_fetches"), run.num("relayed_fetches"), run.num("storage_fallbacks"))
}

#[test]
fn two_nodes_behind_two_cone_nats_fetch_directly() {
    let mut lab = Lab::new("cone").expect("NAT lab");
    let (mut a, mut b) =
        (lab.nat(Mapping::EndpointIndependent).expect("NAT"), lab.nat(Mapping::EndpointIndependent).expect("NAT"));
    let (ha, hb) = (lab.host_behind(&mut a).expect("host"), lab.host_behind(&mut b).expect("host"));
    let mesh = Mesh::start(&lab.public(), &[&ha, &hb]);
    let status = mesh.rendezvous.status();
    assert_eq!(status.matches("endpoint-independent").count(), 2, "{status}");
    assert!(status.contains("203.0.113.11:") && status.contains("192.0.2.11:"), "public and private: {status}");
    // Direct paths form, so requiring them costs nothing.
    let run = mesh.run_flags("0.3", SMALL, &["--require-direct"]);
    assert_all_direct(&run);
}

#[test]
fn two_nodes_behind_one_nat_fetch_directly() {
    let mut lab = Lab::new("same").expect("NAT lab");
    let mut nat = lab.nat(Mapping::EndpointIndependent).expect("NAT");
    let (h1, h2) = (lab.host_behind(&mut nat).expect("host"), lab.host_behind(&mut nat).expect("host"));
    let mesh = Mesh::start(&lab.public(), &[&h1, &h2]);
    let run = mesh.run();
    assert_all_direct(&run);
}

/// Runs the crossing job with `size`-byte outputs between a node behind a cone NAT and one behind
/// a symmetric NAT, where no direct path can form (the rendezvous knows it from their NAT
/// kinds); checks the target and returns how the fetches went, and the bytes relayed.
fn across_cone_and_symmetric_nats(tag: &str, size: usize) -> ((u64, u64, u64), u64) {
    run_across_cone_and_symmetric_nats(tag, size, &[], |run| {
        run.ok();
        assert_eq!(String::from_utf8(run.out("both.txt")).expect("utf-8"), expected_digest(size));
        (fetches(run), run.num("relayed_bytes"))
    })
}

/// Runs the crossing job there with extra flags; `check` looks at the run while its files exist.
fn run_across_cone_and_symmetric_nats<T>(tag: &str, size: usize, flags: &[&str], check: impl FnOnce(&Run) -> T) -> T {
    let mut lab = Lab::new(tag).expect("NAT lab");
    let (mut cone, mut symmetric) =
        (lab.nat(Mapping::EndpointIndependent).expect("NAT"), lab.nat(Mapping::Symmetric).expect("NAT"));
    let (h1, h2) = (lab.host_behind(&mut cone).expect("host"), lab.host_behind(&mut symmetric).expect("host"));
    let mesh = Mesh::start(&lab.public(), &[&h1, &h2]);
    let status = mesh.rendezvous.status();
    assert!(status.contains("endpoint-independent") && status.contains("endpoint-dependent"), "{status}");
    check(&mesh.run_flags("0.3", size, flags))
}

#[test]
fn a_job_that_requires_direct_paths_fails_where_none_can_form() {
    run_across_cone_and_symmetric_nats("symd", SMALL, &["--require-direct"], |run| {
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(run.stderr.contains("requires direct transfers (--require-direct)"), "{}", run.stderr);
    });
}

#[test]
fn a_small_object_from_behind_a_symmetric_nat_is_relayed() {
    let (fetches, relayed) = across_cone_and_symmetric_nats("symr", SMALL);
    assert_eq!((fetches, relayed), ((0, 1, 0), SMALL as u64), "one relayed fetch");
}

#[test]
fn a_large_object_from_behind_a_symmetric_nat_goes_through_storage() {
    let (fetches, relayed) = across_cone_and_symmetric_nats("syms", LARGE);
    assert_eq!((fetches, relayed), ((0, 0, 1), 0), "one object through storage");
}

#[test]
fn nats_that_forget_their_mappings_mid_job_still_give_a_direct_path() {
    let mut lab = Lab::new("forget").expect("NAT lab");
    let (mut a, mut b) =
        (lab.nat(Mapping::EndpointIndependent).expect("NAT"), lab.nat(Mapping::EndpointIndependent).expect("NAT"));
    let (ha, hb) = (lab.host_behind(&mut a).expect("host"), lab.host_behind(&mut b).expect("host"));
    let mesh = Mesh::start(&lab.public(), &[&ha, &hb]);
    let run = std::thread::scope(|s| {
        let job = s.spawn(|| mesh.run_with("5", SMALL));
        // While the producers sleep, both NATs drop everything long enough to forget every
        // mapping, then map the nodes to new public ports: the rendezvous must follow them.
        std::thread::sleep(Duration::from_secs(1));
        lab.forget_mappings(&[&a, &b], Duration::from_millis(2500)).expect("forget");
        job.join().expect("job thread")
    });
    assert_all_direct(&run);
}
