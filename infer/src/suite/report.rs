//! Each test's verdict, from the job that ran it: a failed thunk is a failed test (with its
//! message and the tail of its output), a passed one is judged by what it printed (googletest's
//! `[  SKIPPED ]`, the shell's skip line, CTest's output patterns), a disabled one is skipped.
//! The report prints like a test runner's, failures first and the counts last.

use std::fmt;
use std::path::Path;

use super::{Case, SKIPPED_LINE, Suite, ctest, gtest, target};

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed: why, in one line.
    Failed(String),
    /// It did not run, or said it skipped: why.
    Skipped(String),
}

/// One test's verdict.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// The test.
    pub case: Case,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took, where it said.
    pub millis: Option<u64>,
    /// What it printed (standard output when it passed; the tail of both when it failed).
    pub output: String,
}

/// Every test's verdict, in the suite's order.
#[derive(Debug, Clone)]
pub struct Report {
    /// The verdicts.
    pub results: Vec<TestResult>,
}

impl Report {
    /// How many tests ended so.
    pub fn count(&self, which: fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| which(&r.outcome)).count()
    }

    /// Tests that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for result in &self.results {
            if let Outcome::Failed(why) = &result.outcome {
                writeln!(f, "FAILED {}: {why}", result.case.full_name())?;
                if !result.output.trim().is_empty() {
                    writeln!(f, "{}", result.output.trim_end())?;
                }
                writeln!(f)?;
            }
        }
        let passed = self.count(|o| *o == Outcome::Passed);
        let skipped = self.count(|o| matches!(o, Outcome::Skipped(_)));
        write!(f, "{passed} tests passed, {} failed, {skipped} skipped", self.failed())
    }
}

pub(super) fn judge(suite: &Suite, failures: &[String], out: &Path) -> Report {
    let failed: std::collections::BTreeMap<usize, (&str, &str)> = failures.iter().filter_map(|f| failure(f)).collect();
    let results = suite
        .cases
        .iter()
        .enumerate()
        .map(|(index, case)| {
            let (outcome, millis, output) = match (case.disabled, failed.get(&index)) {
                (true, _) => (Outcome::Skipped("disabled".into()), None, String::new()),
                (false, Some((why, output))) => match first_match(&case.run.skip_patterns, output) {
                    Ok(Some(pattern)) => (skipped_by(&pattern), None, (*output).to_owned()),
                    _ => (Outcome::Failed((*why).to_owned()), None, (*output).to_owned()),
                },
                (false, None) => match std::fs::read(out.join(target(index))) {
                    Ok(bytes) => {
                        let output = String::from_utf8_lossy(&bytes).into_owned();
                        let (outcome, millis) = passed(case, &output);
                        (outcome, millis, output)
                    }
                    Err(_) => (Outcome::Failed("it did not run: the job ended first".into()), None, String::new()),
                },
            };
            TestResult { case: case.clone(), outcome, millis, output }
        })
        .collect();
    Report { results }
}

/// The test index, the reason and the output of one of the job's failures (`thunk `test-N`
/// failed: exit status 1` and the tail of its output on the next lines).
fn failure(text: &str) -> Option<(usize, (&str, &str))> {
    let (first, output) = text.split_once('\n').unwrap_or((text, ""));
    let rest = first.strip_prefix("thunk `test-")?;
    let (index, why) = rest.split_once('`')?;
    let why = why.trim_start_matches(':').trim_start();
    let why = why.strip_prefix("failed: ").unwrap_or(why);
    Some((index.parse().ok()?, (why, output.trim_start_matches("output (last 2048 bytes):\n"))))
}

/// The verdict on a test whose program's verdict was a pass, by what it printed.
fn passed(case: &Case, output: &str) -> (Outcome, Option<u64>) {
    if case.suite != ctest::SUITE {
        let (skipped, millis) = gtest::judged(output);
        return (if skipped { Outcome::Skipped("GTEST_SKIP".into()) } else { Outcome::Passed }, millis);
    }
    if let Some(line) = output.lines().find(|l| l.starts_with(SKIPPED_LINE)) {
        return (Outcome::Skipped(line.trim_start_matches("thunkmesh test: skipped: ").to_owned()), None);
    }
    let run = &case.run;
    let matches = |patterns: &[String]| first_match(patterns, output);
    let verdict = match (matches(&run.skip_patterns), matches(&run.fail_patterns), matches(&run.pass_patterns)) {
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Outcome::Failed(format!("cannot judge its output: {e}")),
        (Ok(Some(p)), _, _) => skipped_by(&p),
        (_, Ok(Some(p)), _) => Outcome::Failed(format!("its output matches FAIL_REGULAR_EXPRESSION `{p}`")),
        (_, Ok(None), Ok(None)) if !run.pass_patterns.is_empty() => {
            Outcome::Failed("its output matches no PASS_REGULAR_EXPRESSION".into())
        }
        _ => Outcome::Passed,
    };
    (verdict, None)
}

/// The first of `patterns` (CTest's regular expressions, which Rust's `regex` reads) that
/// `output` matches.
fn first_match(patterns: &[String], output: &str) -> Result<Option<String>, String> {
    for pattern in patterns {
        let regex = regex::Regex::new(pattern).map_err(|e| format!("pattern `{pattern}`: {e}"))?;
        if regex.is_match(output) {
            return Ok(Some(pattern.clone()));
        }
    }
    Ok(None)
}

fn skipped_by(pattern: &str) -> Outcome {
    Outcome::Skipped(format!("its output matches SKIP_REGULAR_EXPRESSION `{pattern}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_its_test_its_reason_and_its_output() {
        let text = "thunk `test-12` failed: exit status 1\noutput (last 2048 bytes):\n[  FAILED  ] A.B\n";
        assert_eq!(failure(text), Some((12, ("exit status 1", "[  FAILED  ] A.B\n"))));
        let other = "thunk `test-3` could not run after 3 attempts: no node";
        assert_eq!(failure(other), Some((3, ("could not run after 3 attempts: no node", ""))));
        assert_eq!(failure("thunk `merge` failed: x"), None);
    }
}
