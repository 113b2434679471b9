//! CTest projects: the tests `ctest --show-only=json-v1` describes (CMake's documented format:
//! a `tests` array, each with its `name`, `command` and `properties`), each to run alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Case, SuiteError, TestRun};

/// The suite name CTest's tests are reported under.
pub(super) const SUITE: &str = "ctest";

#[derive(Deserialize)]
struct Listing {
    tests: Vec<Test>,
}

#[derive(Deserialize)]
struct Test {
    name: String,
    /// Absent when CTest found no program for the test (it was not built).
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    properties: Vec<Property>,
}

#[derive(Deserialize)]
struct Property {
    name: String,
    value: serde_json::Value,
}

/// The tests of the CTest project `ctest ARGS` finds when run in `dir`.
pub(super) fn list(ctest: &Path, args: &[String], dir: &Path) -> Result<Vec<Case>, SuiteError> {
    let listing = super::listing(ctest, args, "--show-only=json-v1", dir)?;
    let shown = ctest.display().to_string();
    parse(&listing, dir).map_err(|reason| SuiteError::Listing { program: shown, reason })
}

/// The cases of a `json-v1` listing; a test's folder is `dir` where it names none.
pub(super) fn parse(json: &[u8], dir: &Path) -> Result<Vec<Case>, String> {
    let listing: Listing = serde_json::from_slice(json).map_err(|e| format!("not CTest's json-v1: {e}"))?;
    listing.tests.into_iter().map(|test| case(test, dir)).collect()
}

fn case(test: Test, dir: &Path) -> Result<Case, String> {
    let Some((program, args)) = test.command.split_first() else {
        return Err(format!("test `{}` has no command (is its program built?)", test.name));
    };
    let mut run = TestRun::of(Path::new(program));
    run.args = args.to_vec();
    run.dir = dir.to_owned();
    run.env = default_env();
    let mut disabled = false;
    for Property { name, value } in test.properties {
        let wrong = || format!("test `{}`: property {name} is not what CTest writes: {value}", test.name);
        match name.as_str() {
            "WORKING_DIRECTORY" => run.dir = PathBuf::from(value.as_str().ok_or_else(wrong)?),
            "ENVIRONMENT" => run.env.extend(strings(&value).ok_or_else(wrong)?.iter().map(|pair| split_env(pair))),
            "TIMEOUT" => {
                run.timeout = Some(Duration::from_secs_f64(value.as_f64().filter(|t| *t > 0.0).ok_or_else(wrong)?))
            }
            "WILL_FAIL" => run.will_fail = value.as_bool().ok_or_else(wrong)?,
            "DISABLED" => disabled = value.as_bool().ok_or_else(wrong)?,
            "SKIP_RETURN_CODE" => {
                run.skip_code = Some(value.as_i64().and_then(|c| i32::try_from(c).ok()).ok_or_else(wrong)?)
            }
            "REQUIRED_FILES" => run.required.extend(strings(&value).ok_or_else(wrong)?.into_iter().map(PathBuf::from)),
            "PASS_REGULAR_EXPRESSION" => run.pass_patterns = strings(&value).ok_or_else(wrong)?,
            "FAIL_REGULAR_EXPRESSION" => run.fail_patterns = strings(&value).ok_or_else(wrong)?,
            "SKIP_REGULAR_EXPRESSION" => run.skip_patterns = strings(&value).ok_or_else(wrong)?,
            _ => {}
        }
    }
    Ok(Case { suite: SUITE.to_owned(), name: test.name, disabled, run })
}

/// A property's list of strings (CTest writes one string as a list of one).
fn strings(value: &serde_json::Value) -> Option<Vec<String>> {
    match value {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

/// `NAME=value` as a pair (a bare `NAME` is set to nothing).
fn split_env(pair: &str) -> (String, String) {
    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
    (name.to_owned(), value.to_owned())
}

/// The environment CTest's tests get where they set none of it: a search path for the programs a
/// test script starts (a thunk inherits nothing).
fn default_env() -> BTreeMap<String, String> {
    BTreeMap::from([("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"kind":"ctestInfo","version":{"major":1,"minor":0},"tests":[
        {"name":"args-test","command":["/b/bin/args-test","--x"],"properties":[{"name":"WORKING_DIRECTORY","value":"/b/test"}]},
        {"name":"slow","command":["/b/slow"],"properties":[{"name":"TIMEOUT","value":2.5},{"name":"WILL_FAIL","value":true},
         {"name":"ENVIRONMENT","value":["A=1","B"]},{"name":"SKIP_RETURN_CODE","value":77},{"name":"DISABLED","value":true},
         {"name":"PASS_REGULAR_EXPRESSION","value":["ok"]},{"name":"LABELS","value":["x"]}]}]}"#;

    #[test]
    fn a_listing_gives_each_test_its_command_folder_and_properties() {
        let cases = parse(LISTING.as_bytes(), Path::new("/here")).expect("parses");
        assert_eq!(
            (cases[0].name.as_str(), cases[0].run.args.as_slice()),
            ("args-test", ["--x".to_owned()].as_slice())
        );
        assert_eq!(cases[0].run.dir, Path::new("/b/test"));
        assert!(!cases[0].disabled && !cases[0].run.will_fail);
        let slow = &cases[1];
        assert_eq!(slow.run.dir, Path::new("/here"));
        assert_eq!(slow.run.timeout, Some(Duration::from_millis(2500)));
        assert!(slow.disabled && slow.run.will_fail);
        assert_eq!(slow.run.skip_code, Some(77));
        assert_eq!(slow.run.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(slow.run.env.get("B").map(String::as_str), Some(""));
        assert_eq!(slow.run.pass_patterns, ["ok"]);
    }

    #[test]
    fn a_test_without_a_command_or_with_a_strange_property_is_named() {
        let unbuilt = r#"{"tests":[{"name":"gone","properties":[]}]}"#;
        let error = parse(unbuilt.as_bytes(), Path::new("/")).expect_err("refused");
        assert!(error.contains("`gone` has no command"), "{error}");
        let strange = r#"{"tests":[{"name":"t","command":["/x"],"properties":[{"name":"TIMEOUT","value":"soon"}]}]}"#;
        let error = parse(strange.as_bytes(), Path::new("/")).expect_err("refused");
        assert!(error.contains("property TIMEOUT"), "{error}");
        assert!(parse(b"[]", Path::new("/")).is_err());
    }
}
