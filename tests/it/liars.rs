//! A node with the token that lies (issue 28, finding 2): it runs nothing and reports made-up
//! outputs, which it writes into the job's store so that consumers read them. Without checks
//! its result is recorded; `thunkmesh memo forget --node` then purges it and everything computed
//! from it. With `--verify 1` and two honest nodes beside it, the lie is outvoted in the run
//! itself: the job fails naming the liar, and what it produced is forgotten.

use std::time::{Duration, Instant};

use thunkmesh_net::{recv_msg, send_msg};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{
    FromRendezvous, Mode, NodeHello, OutputValue, Role, TaskDone, ToRendezvous, TransferStats,
};

use crate::util::{Proc, SelfHosted, thunkmesh, write};

/// What the liar says every output holds.
const FORGED: &[u8] = b"forged result\n";

/// The liar's identity.
const LIAR: [u8; 32] = [0x11; 32];

/// Joins `rdv` as a node and answers every assignment with [`FORGED`] for each output (written
/// into the job's store first in storage mode), until the rendezvous closes the connection. It
/// never answers a request to upload.
async fn lie(addr: String, fingerprint: String, token: String) {
    let hello = NodeHello {
        name: "liar".into(),
        slots: 4,
        fingerprint: LIAR,
        local: "127.0.0.1:9".into(),
        isolation: "none".into(),
        holds: 0,
    };
    let (_endpoint, _conn, mut send, mut recv) =
        crate::util::member(&addr, &fingerprint, token, Role::Node(hello)).await;
    let forged = Id::of_blob(FORGED);
    while let Ok(Some(msg)) = recv_msg::<FromRendezvous>(&mut recv).await {
        let FromRendezvous::Assign(a) = msg else { continue };
        if a.mode == Mode::Storage {
            let store = thunkmesh_store::Store::open(&a.store).expect("the job's store");
            store.put_blob(forged, FORGED.to_vec().into()).await.expect("write the forged output");
        }
        let outputs = a.thunk.outputs.iter().map(|name| (name.clone(), OutputValue::Blob(forged))).collect();
        let done = TaskDone { task: a.task, outputs, stats: TransferStats::default() };
        if send_msg(&mut send, &ToRendezvous::Done(done)).await.is_err() {
            break;
        }
    }
}

/// Six leaves and a thunk that joins them: the target.
fn wide_job(dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = String::new();
    for i in 0..6 {
        text.push_str(&format!(
            "[[thunk]]\nname = \"leaf{i}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"echo leaf {i} > o\"]\noutputs = [\"o\"]\n\n"
        ));
    }
    let inputs: Vec<String> = (0..6).map(|i| format!("i{i} = \"leaf{i}#o\"")).collect();
    text.push_str(&format!(
        "[[thunk]]\nname = \"all\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat i0 i1 i2 i3 i4 i5 > o\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ {} }}\noutputs = [\"o\"]\n\n[targets]\n\"all.txt\" = \"all#o\"\n",
        inputs.join(", ")
    ));
    write(dir, &[("job.toml", &text)])
}

/// The honest answer.
fn expected() -> Vec<u8> {
    (0..6).map(|i| format!("leaf {i}\n")).collect::<String>().into_bytes()
}

/// The store every run of the test shares.
fn store_url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.join("store").display())
}

#[test]
fn what_a_lying_node_recorded_is_forgotten_with_everything_computed_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let liar = runtime.spawn(lie(rdv.addr.clone(), rdv.fingerprint.clone(), rdv.token.clone()));
    rdv.wait_for_nodes(1, Duration::from_secs(20));
    let job = wide_job(dir.path());
    let store = store_url(dir.path());
    let flags = ["--mode", "storage", "--verify", "0", "--store", &store];
    let lied = rdv.run_with(dir.path(), &job, &flags);
    lied.ok();
    assert_eq!(lied.out("all.txt"), FORGED, "alone and unchecked, the liar's answer stands");
    liar.abort();

    let _honest: Vec<Proc> =
        (0..2).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    rdv.wait_for_nodes(2, Duration::from_secs(20));
    let cached = rdv.run_with(dir.path(), &job, &flags);
    cached.ok();
    assert_eq!(
        (cached.num("thunks_cached"), cached.out("all.txt")),
        (7, FORGED.to_vec()),
        "what it recorded is reused"
    );

    let forget = thunkmesh()
        .args(["memo", "forget", "--node", &hex_prefix(), "--store", &store])
        .output()
        .expect("start thunkmesh memo forget");
    let said = String::from_utf8_lossy(&forget.stdout);
    assert!(forget.status.success(), "{}", String::from_utf8_lossy(&forget.stderr));
    assert!(said.starts_with("forgot 7 memo entries produced by node 11111111"), "{said}");
    let honest = rdv.run_with(dir.path(), &job, &flags);
    honest.ok();
    assert_eq!(honest.out("all.txt"), expected());
    assert_eq!(honest.num("thunks_executed"), 7, "every entry of the liar went, and what was computed from them");
}

/// The liar's id as `memo forget` and `--forbid-node` take it.
fn hex_prefix() -> String {
    LIAR[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_lie_checked_on_two_honest_nodes_fails_the_job_and_is_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let honest: Vec<Proc> = (0..2).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let liar = runtime.spawn(lie(rdv.addr.clone(), rdv.fingerprint.clone(), rdv.token.clone()));
    rdv.wait_for_nodes(3, Duration::from_secs(20));
    let job = wide_job(dir.path());
    let store = store_url(dir.path());
    let checked = rdv.run_with(dir.path(), &job, &["--mode", "storage", "--verify", "1", "--store", &store]);
    assert_eq!(checked.code, Some(1), "{}", checked.stderr);
    assert!(checked.stderr.contains("gave different results when it was checked"), "{}", checked.stderr);
    assert!(checked.stderr.contains(&"11".repeat(32)), "the liar is named: {}", checked.stderr);
    assert!(!dir.path().join("out/all.txt").exists(), "no target was written");
    liar.abort();
    drop(runtime);

    let rerun = rdv.run_with(dir.path(), &job, &["--mode", "storage", "--verify", "0", "--store", &store]);
    rerun.ok();
    assert_eq!(rerun.out("all.txt"), expected(), "nothing the liar said was reused");
    drop(honest);
}

/// Issue 28, finding 3: a node that reports a target and never uploads it (here the liar, in
/// p2p mode, where a target lives in its producer's cache until asked for) made the run sit at
/// "thunks done, 0 running" for ever. Now each request to upload has a deadline (10 s for a
/// small object): the producer runs again, on the honest node that joined meanwhile or on the
/// liar, and the run ends either with the honest answer or, after five unanswered requests,
/// with an error that says so. Bounded: 100 s.
#[test]
fn a_target_its_node_never_uploads_does_not_make_the_run_wait_for_ever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _liar = runtime.spawn(lie(rdv.addr.clone(), rdv.fingerprint.clone(), rdv.token.clone()));
    rdv.wait_for_nodes(1, Duration::from_secs(20));
    let job = write(
        dir.path(),
        &[(
            "job.toml",
            "[[thunk]]\nname = \"t\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"echo honest > o\"]\noutputs = [\"o\"]\n[targets]\n\"o\" = \"t#o\"\n",
        )],
    );
    let started = Instant::now();
    let runner = rdv.run_in_background(dir.path(), &job);
    std::thread::sleep(Duration::from_secs(2));
    let _honest = rdv.node(&dir.path().join("node"), "honest");
    while !runner.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(100), "the run still waits after 100 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = runner.join().expect("the run");
    eprintln!("ended after {:?} with {:?}:\n{}", started.elapsed(), run.code, run.stderr);
    assert!(run.stderr.contains("waiting for 1 upload(s) to storage"), "the wait is named: {}", run.stderr);
    match run.code {
        Some(0) => assert_eq!(run.out("o"), b"honest\n", "a target the liar never uploaded is made again"),
        _ => assert!(run.stderr.contains("did not answer a request to upload it within 10 s"), "{}", run.stderr),
    }
}
