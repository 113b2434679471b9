//! The examples run on a local mesh of three node processes and give the same bytes as the same
//! work done directly in a shell; intermediates move peer to peer and never touch storage, and
//! small inputs ride with the job.

use std::collections::BTreeSet;
use std::path::Path;

use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::CARRIED_VALUE_BYTES;

use crate::util::{Run, repo, run_in, shell};

/// Storage holds exactly the job's targets and its inputs too large to ride with the job
/// (`CARRIED_VALUE_BYTES`), took one PUT per each and one per batch of memo entries (a batch at
/// the end, and one more per 2 s the job ran at most), and read nothing like an intermediate.
fn assert_intermediates_stayed_off_storage(run: &Run, values: &[&str], workers: u64) {
    let value_ids: BTreeSet<Id> =
        values.iter().map(|v| Id::of_blob(&std::fs::read(repo(v)).expect("read value"))).collect();
    let uploaded = value_ids.iter().filter(|id| id.size > CARRIED_VALUE_BYTES).map(Id::to_string);
    let target_ids: BTreeSet<String> = run.summary["targets"]
        .as_object()
        .expect("targets")
        .values()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    let expected: BTreeSet<String> = uploaded.chain(target_ids.iter().cloned()).collect();
    assert_eq!(
        run.stored_blobs().into_iter().collect::<BTreeSet<_>>(),
        expected,
        "storage holds only targets and inputs too large to carry"
    );
    crate::util::memo_batches(run, expected.len() as u64);
    let size = |id: &String| id.parse::<Id>().expect("id").size;
    let bound = workers * value_ids.iter().map(|id| id.size).sum::<u64>()
        + target_ids.iter().map(size).sum::<u64>()
        + 64 * 1024;
    assert!(run.num("storage_bytes_read") <= bound, "read {} bytes from storage", run.num("storage_bytes_read"));
}

#[test]
fn wordfreq_matches_the_shell_and_moves_intermediates_peer_to_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &repo("examples/wordfreq/job.toml"), &["--workers", "3"]);
    run.ok();
    assert_eq!(run.out("frequencies.txt"), shell(&repo("examples/wordfreq/expected.sh"), &[]));
    assert!(run.num("peer_bytes") > 0, "a three-node run moves data between nodes");
    assert_eq!((run.num("thunks_total"), run.num("thunks_executed")), (7, 7));
    let values = ["words.txt", "gen.sh", "count.sh", "merge.sh"].map(|v| format!("examples/wordfreq/{v}"));
    assert_intermediates_stayed_off_storage(&run, &values.each_ref().map(String::as_str), 3);
}

#[test]
fn c_program_compiled_per_file_matches_the_shell_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &repo("examples/cc/job.toml"), &["--workers", "3"]);
    run.ok();
    let direct = dir.path().join("direct");
    shell(&repo("examples/cc/expected.sh"), &[&direct]);
    assert_eq!(run.out("report.txt"), std::fs::read(direct.join("report.txt")).expect("report"));
    assert_eq!(run.out("collatz"), std::fs::read(direct.join("collatz")).expect("binary"));
    assert!(run.num("peer_bytes") > 0, "objects compiled on one node are linked on another");
    let values = ["main.c", "stats.c", "format.c", "stats.h", "format.h"].map(|v| format!("examples/cc/src/{v}"));
    assert_intermediates_stayed_off_storage(&run, &values.each_ref().map(String::as_str), 3);
}

#[test]
fn recursive_fib_forces_tail_calls_to_the_right_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &repo("examples/fib/job.toml"), &["--workers", "3"]);
    run.ok();
    assert_eq!(run.out("fib.txt"), shell(&repo("examples/fib/expected.sh"), &[]));
    // fib(0..=20) and one sum per n >= 2: each distinct thunk once, however often it is asked for.
    assert_eq!((run.num("thunks_total"), run.num("thunks_executed")), (40, 40));
    let values = ["n.txt", "fib.sh", "add.sh"].map(|v| format!("examples/fib/{v}"));
    assert_intermediates_stayed_off_storage(&run, &values.each_ref().map(String::as_str), 3);
}

#[test]
fn a_second_run_executes_nothing_and_still_writes_the_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = repo("examples/cc/job.toml");
    run_in(dir.path(), &job, &["--workers", "2"]).ok();
    std::fs::remove_dir_all(dir.path().join("out")).expect("remove out");
    let again = run_in(dir.path(), &job, &["--workers", "2"]);
    again.ok();
    assert_eq!(again.num("thunks_executed"), 0);
    assert_eq!(again.num("thunks_cached"), again.num("thunks_total"));
    assert_eq!(again.num("storage_put_requests"), 0);
    assert!(Path::new(&dir.path().join("out/report.txt")).exists());
    assert!(again.out("report.txt").starts_with(b"collatz    count=10000"));
}

#[test]
fn a_value_named_as_a_target_is_copied_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = crate::util::write(
        dir.path(),
        &[
            ("job.toml", "[values]\nnotes = \"notes.txt\"\n\n[targets]\n\"copy.txt\" = \"notes\"\n"),
            ("notes.txt", "kept as is\n"),
        ],
    );
    let run = run_in(dir.path(), &job, &["--workers", "2"]);
    run.ok();
    assert_eq!(run.out("copy.txt"), b"kept as is\n");
    assert_eq!(run.num("thunks_total"), 0);
}

#[test]
fn the_memo_cache_can_be_read_only_or_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = repo("examples/cc/job.toml");
    let reductions = || std::fs::read_dir(dir.path().join(".thunkmesh/store/memo")).map_or(0, |d| d.count());
    let read_only = run_in(dir.path(), &job, &["--workers", "2", "--memo", "read"]);
    read_only.ok();
    assert_eq!(read_only.num("thunks_executed"), read_only.num("thunks_total"));
    assert_eq!(reductions(), 0, "a read-only memo cache records nothing");

    run_in(dir.path(), &job, &["--workers", "2"]).ok();
    let recorded = reductions();
    assert!(recorded > 0);
    let cached = run_in(dir.path(), &job, &["--workers", "2", "--memo", "read"]);
    cached.ok();
    assert_eq!(cached.num("thunks_executed"), 0, "what was recorded is reused");

    let off = run_in(dir.path(), &job, &["--workers", "2", "--memo", "off"]);
    off.ok();
    assert_eq!(off.num("thunks_executed"), off.num("thunks_total"), "with the cache off everything runs");
    assert_eq!(reductions(), recorded);
    assert_eq!(off.out("report.txt"), cached.out("report.txt"));
}
