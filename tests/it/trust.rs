//! Results that can be trusted (issue 12): a cache damaged between runs, and facts about one
//! store that must not leak into jobs on another.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{SelfHosted, write};

/// A value copied by one thunk into the target `copy.txt`.
fn copy_job(dir: &Path, text: &str) -> std::path::PathBuf {
    write(
        dir,
        &[
            (
                "job.toml",
                "[values]\ndata = \"data.txt\"\n\n[[thunk]]\nname = \"copy\"\nprogram = { host = \"/bin/cp\" }\nargs = [\"data.txt\", \"o\"]\ninputs = { \"data.txt\" = \"data\" }\noutputs = [\"o\"]\n\n[targets]\n\"copy.txt\" = \"copy#o\"\n",
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
    // The input and its copy are one object.
    assert_eq!(damaged, 1, "the node cached the input");
    let _node = rdv.node(&cache, "n0");
    let run = rdv.run_with(dir.path(), &job, &["--memo", "off"]);
    run.ok();
    assert_eq!(run.out("copy.txt"), b"the right bytes\n");
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
        assert_eq!(run.out("copy.txt"), b"in both stores\n", "store {store}");
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
