//! The library entry point: a job built in code with `JobBuilder` runs through `run_job` on the
//! embedded mesh, with no job file (issue 16); a wrong one is an error, not a panic.

use std::path::Path;
use std::time::Instant;

use thunkmesh_client::{JobRun, LocalMesh, Memo, Reporter, load_spec, run_job};
use thunkmesh_protocol::builder::{JobBuilder, ThunkBuilder};
use thunkmesh_protocol::job::JobProblem;
use thunkmesh_protocol::wire::{Mode, Progress};
use thunkmesh_store::Store;

/// What the run told its reporter.
#[derive(Default)]
struct Heard {
    phases: Vec<String>,
}

impl Reporter for Heard {
    fn phase(&mut self, what: &str) {
        self.phases.push(what.to_owned());
    }
    fn progress(&mut self, _p: Progress) {}
}

fn job() -> JobBuilder {
    JobBuilder::new()
        .value("text", "words.txt")
        .thunk(
            ThunkBuilder::host("upper", "/bin/sh")
                .args(["-c", "tr a-z A-Z < in > out"])
                .env("PATH", "/usr/bin:/bin")
                .input("in", "text")
                .output("out"),
        )
        .thunk(
            ThunkBuilder::host("count", "/bin/sh").args(["-c", "wc -c < in > n"]).input("in", "upper#out").output("n"),
        )
        .target("upper.txt", "upper#out")
        .target("n.txt", "count#n")
}

#[test]
fn a_job_built_in_code_runs_on_the_embedded_mesh() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("words.txt"), "hello mesh\n").expect("value");
    let spec = job().build().expect("a valid job");
    let loaded = load_spec(&spec, dir.path(), "library test").expect("values hashed");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let summary = runtime.block_on(async {
        let exe = Path::new(env!("CARGO_BIN_EXE_thunkmesh"));
        let mesh = LocalMesh::start(2, 1, None, exe, &dir.path().join("state")).await.expect("mesh");
        // The nodes read the job's values from the store: a folder they share with this process.
        let store = Store::open(&Store::folder_url(&dir.path().join("store")).expect("url")).expect("store");
        let out = dir.path().join("out");
        let run = JobRun {
            job: &loaded,
            store: &store,
            mode: Mode::P2p,
            memo: Memo::Off,
            require_direct: false,
            keep_going: false,
            verify: 0,
            out_dir: &out,
        };
        let mut heard = Heard::default();
        let summary = run_job(run, &mesh.target(), &mut heard, Instant::now()).await.expect("the job runs");
        assert_eq!(heard.phases, ["consulting the memo cache", "uploading inputs", "waiting for nodes"]);
        summary
    });
    assert_eq!((summary.thunks_total, summary.thunks_executed), (2, 2));
    let out = dir.path().join("out");
    assert_eq!(std::fs::read_to_string(out.join("upper.txt")).expect("target"), "HELLO MESH\n");
    assert_eq!(std::fs::read_to_string(out.join("n.txt")).expect("target").trim(), "11");
}

#[test]
fn a_wrong_job_built_in_code_is_an_error_naming_the_problem() {
    let cycle = job()
        .thunk(ThunkBuilder::host("a", "/bin/sh").input("x", "b#o").output("o"))
        .thunk(ThunkBuilder::host("b", "/bin/sh").input("x", "a#o").output("o"));
    let e = cycle.build().expect_err("a cycle");
    assert!(matches!(e.problem, JobProblem::Cycle(_)), "{e}");
    // A value file that is missing is found when the job is loaded.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = load_spec(&job().build().expect("valid"), dir.path(), "library test").expect_err("no words.txt");
    assert!(e.to_string().starts_with("library test: values, key `text`: cannot read `words.txt`"), "{e}");
}
