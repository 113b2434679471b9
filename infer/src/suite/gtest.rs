//! googletest binaries: the tests `--gtest_list_tests` lists, each run alone with
//! `--gtest_filter`, and what its output says about it (skipped, how long it took).

use std::path::Path;

use super::{Case, SuiteError, TestRun};

/// The tests of the googletest binary at `binary`, each to run alone (in the sandbox's copy of
/// `cwd`, where it was asked for).
pub(super) fn list(binary: &Path, args: &[String], cwd: &Path) -> Result<Vec<Case>, SuiteError> {
    let listing = super::listing(binary, args, "--gtest_list_tests", cwd)?;
    let shown = binary.display().to_string();
    let names = parse_list(&String::from_utf8_lossy(&listing))
        .map_err(|reason| SuiteError::Listing { program: shown.clone(), reason })?;
    Ok(names
        .into_iter()
        .map(|(suite, name)| {
            let mut run = TestRun::of(binary);
            run.args = args.to_vec();
            run.dir = cwd.to_owned();
            run.args.push(format!("--gtest_filter={suite}.{name}"));
            run.args.push("--gtest_color=no".to_owned());
            Case { disabled: disabled(&suite) || disabled(&name), suite, name, run }
        })
        .collect())
}

/// The `(suite, test)` names of `--gtest_list_tests`' output: a suite's line ends in `.`, its
/// tests follow indented; a parameterized one ends in a comment (`  # GetParam() = 3`).
pub(super) fn parse_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut suite: Option<String> = None;
    let mut tests = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let bare = line.split_once("  #").map_or(line, |(name, _)| name).trim_end();
        if bare.is_empty() {
            continue;
        }
        if let Some(test) = bare.strip_prefix("  ") {
            let Some(suite) = &suite else {
                return Err(format!("line {}: test `{}` before any suite", number + 1, test.trim()));
            };
            tests.push((suite.clone(), test.trim().to_owned()));
        } else if let Some(name) = bare.strip_suffix('.') {
            suite = Some(name.to_owned());
        } else if tests.is_empty() && suite.is_none() {
            // What the binary printed before the list (a test main's banner).
            continue;
        } else {
            return Err(format!("line {}: `{bare}` is neither a suite (`Name.`) nor an indented test", number + 1));
        }
    }
    Ok(tests)
}

/// Whether googletest keeps a suite or test of this name from running unless asked to
/// (`DISABLED_*`, or `*/DISABLED_*` for a parameterized one).
fn disabled(name: &str) -> bool {
    name.starts_with("DISABLED_") || name.contains("/DISABLED_")
}

/// What a passing run's output says: whether googletest skipped the test (`GTEST_SKIP`), and the
/// milliseconds it reports the test took.
pub(super) fn judged(output: &str) -> (bool, Option<u64>) {
    let skipped = output.lines().any(|l| l.starts_with("[  SKIPPED ]"));
    let millis = output
        .lines()
        .filter(|l| l.starts_with("[       OK ]") || l.starts_with("[  SKIPPED ]"))
        .find_map(|l| l.rsplit_once(" (").and_then(|(_, t)| t.strip_suffix(" ms)")).and_then(|n| n.parse().ok()));
    (skipped, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_names_suites_tests_and_parameterized_instances() {
        let text = "Running main() from gtest_main.cc\nFormatTest.\n  Escape\n  Args\nInst/ParamTest.\n  Works/0  # GetParam() = 1\n  Works/1  # GetParam() = 2\nTyped/0.  # TypeParam = int\n  DISABLED_Slow\n";
        let tests = parse_list(text).expect("parses");
        let names: Vec<String> = tests.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        assert_eq!(
            names,
            [
                "FormatTest.Escape",
                "FormatTest.Args",
                "Inst/ParamTest.Works/0",
                "Inst/ParamTest.Works/1",
                "Typed/0.DISABLED_Slow"
            ]
        );
        assert!(disabled(&tests[4].1) && !disabled(&tests[0].1) && disabled("Inst/DISABLED_Suite"));
    }

    #[test]
    fn a_listing_that_is_not_one_is_refused_with_its_line() {
        let error = parse_list("Suite.\n  Test\nsomething else\n").expect_err("refused");
        assert!(error.starts_with("line 3:"), "{error}");
    }

    #[test]
    fn a_run_s_output_says_skipped_and_how_long() {
        let ran = "[ RUN      ] A.B\n[       OK ] A.B (12 ms)\n";
        assert_eq!(judged(ran), (false, Some(12)));
        let skipped = "[ RUN      ] A.C\nx.cc:3: Skipped\n\n[  SKIPPED ] A.C (0 ms)\n";
        assert_eq!(judged(skipped), (true, Some(0)));
        assert_eq!(judged(""), (false, None));
    }
}
