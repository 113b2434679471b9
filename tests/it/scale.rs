//! Jobs larger than one message: a job that travels in pieces runs whole, and one over the
//! rendezvous' configured limit is refused with exit code 2 and the limit named (issue 15).

use std::fmt::Write as _;

use thunkmesh_protocol::wire::MAX_FRAME;

use crate::util::{SelfHosted, run_in, write};

/// Thunks of the large job, and the bytes of arguments each carries (four arguments under the
/// 64 KiB string limit, different in every thunk so that nothing in them is shared).
const THUNKS: usize = 80;
const ARG_BYTES: usize = 4 * 60_000;

/// `THUNKS` thunks that each write their index, and one that concatenates them all.
fn large_job(thunks: usize) -> String {
    let mut text = String::new();
    for i in 0..thunks {
        let args: Vec<String> = (0..4).map(|k| format!("\"{}{i}-{k}\"", "x".repeat(ARG_BYTES / 4 - 12))).collect();
        let _ = write!(
            text,
            "[[thunk]]\nname = \"t{i}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"echo {i} > o\", {}]\noutputs = [\"o\"]\n\n",
            args.join(", ")
        );
    }
    let inputs: Vec<String> = (0..thunks).map(|i| format!("\"in/{i:03}\" = \"t{i}#o\"")).collect();
    let _ = write!(
        text,
        "[[thunk]]\nname = \"all\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat in/* > all\"]\ninputs = {{ {} }}\noutputs = [\"all\"]\n\n[targets]\n\"all\" = \"all#all\"\n",
        inputs.join(", ")
    );
    text
}

#[test]
fn a_job_larger_than_one_frame_travels_in_pieces_and_runs_whole() {
    const { assert!(THUNKS * ARG_BYTES > MAX_FRAME, "the job must not fit one frame") };
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write(dir.path(), &[("job.toml", &large_job(THUNKS))]);
    let run = run_in(dir.path(), &job, &["--workers", "2", "--memo", "off"]);
    run.ok();
    let expected: String = (0..THUNKS).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&run.out("all")), expected);
    assert_eq!(run.num("thunks_executed"), THUNKS as u64 + 1);
}

#[test]
fn a_job_over_the_rendezvous_limit_is_refused_with_exit_code_2_naming_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rdv = SelfHosted::start_with(&dir.path().join("rdv"), &["--max-job-thunks", "50"]);
    rdv.trust = vec!["--fingerprint".into(), rdv.fingerprint.clone()];
    let job = write(dir.path(), &[("job.toml", &large_job(60))]);
    let run = rdv.run(dir.path(), &job, &rdv.token);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let said = "the job is larger than this rendezvous takes: its limit is 50 thunks (`thunkmesh rendezvous --max-job-thunks`)";
    assert!(run.stderr.contains(said), "{}", run.stderr);
    assert_eq!(run.stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{}", run.stderr);

    // The rendezvous goes on: a job within the limit runs.
    let _node = rdv.node(&dir.path().join("node"), "n0");
    let small = write(&dir.path().join("small"), &[("job.toml", &large_job(3))]);
    let run = rdv.run(&dir.path().join("small"), &small, &rdv.token);
    run.ok();
    assert_eq!(run.out("all"), b"0\n1\n2\n");
}
