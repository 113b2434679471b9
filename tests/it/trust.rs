//! Results that can be trusted (issue 12): a cache damaged between runs, and facts about one
//! store that must not leak into jobs on another.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{SelfHosted, write};

/// A value written twice by one thunk into the target `copy.txt` (so the target is another
/// object than the value).
fn copy_job(dir: &Path, text: &str) -> std::path::PathBuf {
    write(
        dir,
        &[
            (
                "job.toml",
                "[values]\ndata = \"data.txt\"\n\n[[thunk]]\nname = \"copy\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"/bin/cat data.txt data.txt > o\"]\ninputs = { \"data.txt\" = \"data\" }\noutputs = [\"o\"]\n\n[targets]\n\"copy.txt\" = \"copy#o\"\n",
            ),
            ("data.txt", text),
        ],
    )
}

/// Flips every byte of every object in a node's cache, keeping sizes.
fn damage_cache(cache: &Path) -> usize {
    let mut damaged = 0;
    for entry in std::fs::read_dir(cache.join("objects")).expect("objects") {
        let path = entry.expect("entry").path();
        let bytes: Vec<u8> = std::fs::read(&path).expect("read").iter().map(|b| !b).collect();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&path, bytes).expect("write");
        damaged += 1;
    }
    damaged
}

#[test]
fn a_cache_damaged_between_runs_gives_the_right_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let cache = dir.path().join("node");
    let job = copy_job(dir.path(), "the right bytes\n");
    let node = rdv.node(&cache, "n0");
    rdv.run(dir.path(), &job, &rdv.token).ok();
    drop(node);
    let damaged = damage_cache(&cache);
    assert_eq!(damaged, 2, "the node cached the input and the output");
    let _node = rdv.node(&cache, "n0");
    let run = rdv.run_with(dir.path(), &job, &["--memo", "off"]);
    run.ok();
    assert_eq!(run.out("copy.txt"), b"the right bytes\nthe right bytes\n");
}

#[test]
fn what_one_store_holds_says_nothing_about_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let _node = rdv.node(&dir.path().join("node"), "n0");
    let job = copy_job(dir.path(), "in both stores\n");
    for store in ["a", "b"] {
        let url = format!("file://{}", dir.path().join(store).display());
        let run = rdv.run_with(dir.path(), &job, &["--store", &url, "--memo", "off"]);
        run.ok();
        assert_eq!(run.out("copy.txt"), b"in both stores\nin both stores\n", "store {store}");
    }
}

/// Issue 12, finding 9: an empty token is a usage error, and the rendezvous' key is private.
#[test]
fn an_empty_token_is_refused_and_the_key_is_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("rdv");
    let rdv = SelfHosted::start(&state);
    let mode = std::fs::metadata(state.join("key.pem")).expect("key.pem").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key.pem is {mode:o}");
    let out = crate::util::thunkmesh()
        .args(["status", "--rendezvous", &rdv.addr])
        .args(&rdv.trust)
        .env("THUNKMESH_TOKEN", "")
        .output()
        .expect("start thunkmesh status");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("THUNKMESH_TOKEN is empty"), "{stderr}");
}

/// Issue 28, finding 10: every object of the store damaged (the job's five inputs and its
/// target), node caches gone: the nodes find the inputs corrupt and remove them, and the same
/// `run` uploads the right bytes again and finishes (five corrupt inputs cost four failed runs).
/// In storage mode, where every input is read from storage (in p2p mode inputs this small ride
/// with the job and are never read from there).
#[test]
fn corrupt_inputs_in_the_store_are_uploaded_again_in_the_same_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![(
        "job.toml",
        "[values]\nv1 = \"v1.txt\"\nv2 = \"v2.txt\"\nv3 = \"v3.txt\"\nv4 = \"v4.txt\"\nv5 = \"v5.txt\"\n\n\
         [[thunk]]\nname = \"cat\"\nprogram = { host = \"/bin/cat\" }\nargs = [\"1\", \"2\", \"3\", \"4\", \"5\"]\n\
         inputs = { \"1\" = \"v1\", \"2\" = \"v2\", \"3\" = \"v3\", \"4\" = \"v4\", \"5\" = \"v5\" }\nstdout = true\n\n\
         [targets]\n\"all.txt\" = \"cat#stdout\"\n",
    )];
    let values: Vec<(String, String)> = (1..=5).map(|i| (format!("v{i}.txt"), format!("value {i}\n"))).collect();
    files.extend(values.iter().map(|(name, text)| (name.as_str(), text.as_str())));
    let job = write(dir.path(), &files);
    crate::util::run_in(dir.path(), &job, &["--workers", "1", "--mode", "storage"]).ok();
    let state = dir.path().join(".thunkmesh");
    for entry in std::fs::read_dir(state.join("store/blobs")).expect("blobs") {
        let path = entry.expect("entry").path();
        let bytes: Vec<u8> = std::fs::read(&path).expect("read").iter().map(|b| !b).collect();
        std::fs::write(&path, bytes).expect("damage");
    }
    // Fresh node caches, so the inputs must come from the store.
    std::fs::remove_dir_all(state.join("nodes")).expect("remove the nodes' caches");
    let repaired = crate::util::run_in(dir.path(), &job, &["--workers", "1", "--memo", "off", "--mode", "storage"]);
    repaired.ok();
    assert!(repaired.stderr.contains("was not in storage after all: uploading it again"), "{}", repaired.stderr);
    assert_eq!(repaired.out("all.txt"), b"value 1\nvalue 2\nvalue 3\nvalue 4\nvalue 5\n");
}

/// Issue 12, finding 11: a job on a rendezvous with no node waited without a word.
#[test]
fn a_job_with_no_node_to_run_on_says_so() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let job = copy_job(dir.path(), "nobody runs this\n");
    let mut run = rdv.run_command(dir.path(), &job, &rdv.token);
    let mut client = crate::util::Proc(run.stderr(std::process::Stdio::piped()).spawn().expect("start thunkmesh run"));
    let stderr = client.0.stderr.take().expect("piped");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| _ = lines.send(l)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = seen.recv_timeout(left).expect("the client says it waits for a node");
        if line.contains("waiting for a node to join the rendezvous") {
            break;
        }
    }
}

/// Issue 28, finding 4: on a self-hosted rendezvous, a target removed from the store after a run
/// (a corrupt copy the client removed, a folder emptied) failed every later run with "not in
/// storage" until the rendezvous restarted, since it still believed the store had it. The next
/// run stores it again.
#[test]
fn a_target_the_store_lost_is_stored_again_by_the_next_run_on_a_long_lived_rendezvous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let _node = rdv.node(&dir.path().join("cache"), "n1");
    let job = copy_job(dir.path(), "kept bytes\n");
    let first = rdv.run_with(dir.path(), &job, &[]);
    first.ok();
    let target = first.summary["targets"]["copy.txt"].as_str().expect("a target id").to_owned();
    let blobs = dir.path().join(".thunkmesh/store/blobs");
    std::fs::remove_file(blobs.join(&target)).expect("remove the stored target");
    for memo in ["on", "off"] {
        let again = rdv.run_with(dir.path(), &job, &["--memo", memo]);
        again.ok();
        assert_eq!(again.out("copy.txt"), b"kept bytes\nkept bytes\n", "memo {memo}");
        std::fs::remove_file(blobs.join(&target)).expect("stored again");
    }
}
