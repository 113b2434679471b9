//! A node's cache budget (`--cache-size`): a job whose objects together are several times the
//! budget still completes, runs each thunk once (nothing a task needs is evicted under it), and
//! leaves the cache within the budget.

use crate::util::{run_in, write};

const HOPS: usize = 12;
const MIB: usize = 1 << 20;

/// A chain of 1 MiB objects: each hop appends its number and keeps the last MiB.
fn chain() -> String {
    let mut job = String::from("[values]\nseed = \"seed.bin\"\n\n");
    let mut prev = "seed".to_owned();
    for i in 0..HOPS {
        job += &format!(
            "[[thunk]]\nname = \"hop-{i}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"{{ cat in; echo {i}; }} | tail -c {MIB} > out\"]\n\
             env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ \"in\" = \"{prev}\" }}\noutputs = [\"out\"]\n\n"
        );
        prev = format!("hop-{i}#out");
    }
    job + &format!("[targets]\n\"last.bin\" = \"{prev}\"\n")
}

fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

#[test]
fn a_chain_of_twelve_mib_runs_in_a_three_mib_cache_and_each_thunk_runs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: Vec<u8> = (0..MIB).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(dir.path().join("seed.bin"), &seed).expect("seed");
    let job = write(dir.path(), &[("job.toml", &chain())]);
    let run = run_in(dir.path(), &job, &["--workers", "1", "--cache-size", "3MiB", "--memo", "off"]);
    run.ok();
    let mut expected = seed;
    for i in 0..HOPS {
        expected.extend_from_slice(format!("{i}\n").as_bytes());
        expected.drain(..expected.len() - MIB);
    }
    assert!(run.out("last.bin") == expected, "the chain's result differs");
    assert_eq!(run.num("thunks_executed"), HOPS as u64, "no thunk ran twice for an evicted input");
    let objects = dir.path().join(".thunkmesh/nodes/0/objects");
    let held = folder_bytes(&objects);
    assert!(held > 0, "the node's cache is at {}", objects.display());
    assert!(held <= 3 * MIB as u64, "the cache holds {held} bytes after the job, over its 3 MiB budget");
}

#[test]
fn a_bad_cache_size_is_named() {
    let out = crate::util::thunkmesh().args(["run", "job.toml", "--cache-size", "3MB"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cache-size") && stderr.contains("unknown unit `MB`"), "{stderr}");
}
