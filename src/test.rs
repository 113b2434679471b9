//! `thunkmesh test`: a test suite one test per thunk. The suite is listed and made a job by
//! `thunkmesh_infer::suite`; this runs it as `run` runs a job (every test runs, as with
//! `--keep-going`), then prints each failure and the counts of tests, writes the JUnit XML asked
//! for, and exits 1 when a test failed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use thunkmesh_client::Reporter;
use thunkmesh_infer::suite::{self, Suite};

use crate::cli::{Global, RunFlags, TestArgs};
use crate::exit::{Failure, Result, UsageError, failed};
use crate::invocation::{Done, Invocation, Verdict};

/// Tests failed.
#[derive(Debug, thiserror::Error)]
#[error("{0} test(s) failed (each is named above)")]
struct TestsFailed(usize);

/// The folder of the state folder where each test's output is written (`N.out`, for test N).
const OUTPUTS: &str = "tests";

pub async fn test(args: TestArgs, global: &Global) -> ExitCode {
    let program = args.command.first().map(String::as_str).unwrap_or_default();
    let mut invocation = match Invocation::begin(&args.flags, global, Path::new(program)) {
        Ok(invocation) => invocation,
        Err(e) => return failed(&e),
    };
    let result = run(&args, &mut invocation).await;
    invocation.finish(result)
}

async fn run(args: &TestArgs, invocation: &mut Invocation) -> Result<Done> {
    invocation.lock(&args.flags.state_dir).await?;
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    invocation.bar.phase("listing the tests");
    let mut suite = suite::list(&args.command, &cwd).map_err(|e| UsageError(e.to_string()))?;
    invocation.bar.phase("finding what each test needs");
    let runnable = suite.cases.iter().filter(|c| !c.disabled).count();
    let out = args.flags.state_dir.join(OUTPUTS);
    let summary = match runnable {
        0 => None,
        _ => {
            let job = suite.job().map_err(|e| UsageError(e.to_string()))?;
            for note in &suite.notes {
                eprintln!("note: {note}");
            }
            if out.exists() {
                std::fs::remove_dir_all(&out).with_context(|| format!("cannot empty {}", out.display()))?;
            }
            let flags = RunFlags { keep_going: true, ..args.flags.clone() };
            let (summary, launched) = invocation.execute(&flags, &job, &out).await?;
            Some((summary, launched))
        }
    };
    let failures = summary.as_ref().map_or(&[][..], |(s, _)| &s.failures[..]);
    let report = suite.report(failures, &out);
    if let Some(path) = &args.junit {
        let xml = suite::junit::write(&report, &args.command.join(" "));
        std::fs::write(path, xml).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let failed = report.failed();
    let said = said(&suite, &out, args.junit.as_deref());
    let verdict =
        Verdict { report: report.to_string(), failed: (failed > 0).then(|| Failure::from(TestsFailed(failed))) };
    let (summary, launched) = summary.unzip();
    Ok(Done { said, summary, launched: launched.flatten(), verdict: Some(verdict) })
}

/// The first line: how many tests, and where their outputs and the JUnit XML went.
fn said(suite: &Suite, out: &Path, junit: Option<&Path>) -> String {
    let mut said = format!("ran {} test(s), one thunk each; outputs in {}", suite.cases.len(), out.display());
    if let Some(junit) = junit {
        said += &format!(", JUnit XML in {}", junit.display());
    }
    said
}
