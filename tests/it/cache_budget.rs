//! A node's cache budget (`--cache-size`): a job whose objects together are several times the
//! budget still completes, runs each thunk once (nothing a task needs is evicted under it), and
//! leaves the cache within the budget. And objects of 1 MiB or more that no thunk will read
//! again leave the caches without any budget.

use crate::util::{run_in, write};

const HOPS: usize = 12;
const MIB: usize = 1 << 20;
/// Under the size the planner drops early, so only the budget removes them.
const SMALL: usize = 768 << 10;

/// A chain of `size`-byte objects: each hop appends its number and keeps the last `size` bytes.
fn chain(size: usize) -> String {
    let mut job = String::from("[values]\nseed = \"seed.bin\"\n\n");
    let mut prev = "seed".to_owned();
    for i in 0..HOPS {
        job += &format!(
            "[[thunk]]\nname = \"hop-{i}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"{{ cat in; echo {i}; }} | tail -c {size} > out\"]\n\
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

/// Runs the chain of `size`-byte objects on one node with `extra` flags; returns the bytes its
/// cache holds afterwards.
fn run_chain(size: usize, extra: &[&str]) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(dir.path().join("seed.bin"), &seed).expect("seed");
    let job = write(dir.path(), &[("job.toml", &chain(size))]);
    let run = run_in(dir.path(), &job, &[&["--workers", "1", "--memo", "off"], extra].concat());
    run.ok();
    let mut expected = seed;
    for i in 0..HOPS {
        expected.extend_from_slice(format!("{i}\n").as_bytes());
        expected.drain(..expected.len() - size);
    }
    assert!(run.out("last.bin") == expected, "the chain's result differs");
    assert_eq!(run.num("thunks_executed"), HOPS as u64, "no thunk ran twice for an evicted input");
    let objects = dir.path().join(".thunkmesh/nodes/0/objects");
    let held = folder_bytes(&objects);
    assert!(held > 0, "the node's cache is at {}", objects.display());
    held
}

#[test]
fn a_chain_of_nine_mib_runs_in_a_two_mib_cache_and_each_thunk_runs_once() {
    let held = run_chain(SMALL, &["--cache-size", "2MiB"]);
    assert!(held <= 2 * MIB as u64, "the cache holds {held} bytes after the job, over its 2 MiB budget");
    assert!(run_chain(SMALL, &[]) >= (HOPS * SMALL) as u64, "without a budget every small object stays");
}

#[test]
fn large_objects_no_thunk_will_read_leave_the_cache_without_a_budget() {
    let held = run_chain(2 * MIB, &[]);
    // What stays: the seed (a job input) and the target, each 2 MiB.
    assert!(held <= 2 * 2 * MIB as u64, "the cache holds {held} bytes of a 24 MiB chain");
}

#[test]
fn a_bad_cache_size_is_named() {
    let out = crate::util::thunkmesh().args(["run", "job.toml", "--cache-size", "3MB"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cache-size") && stderr.contains("unknown unit `MB`"), "{stderr}");
}
