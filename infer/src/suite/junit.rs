//! The report as JUnit XML, the format CI systems read (Jenkins, GitLab, GitHub's test
//! reporters): one `testsuite` per suite, one `testcase` per test with its `failure` or
//! `skipped` and what it printed. Text is escaped by `quick-xml`; characters XML 1.0 cannot hold
//! (most control characters) are dropped first.

use std::collections::BTreeMap;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::{Outcome, Report, TestResult};

/// The report as a JUnit XML document named `name` (the suite's program).
pub fn write(report: &Report, name: &str) -> String {
    let mut suites: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
    for result in &report.results {
        suites.entry(result.case.suite.as_str()).or_default().push(result);
    }
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    let mut put = |event: Event<'_>| writer.write_event(event).expect("writing to memory does not fail");
    put(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let all: Vec<&TestResult> = report.results.iter().collect();
    put(Event::Start(counted("testsuites", name, &all)));
    for (suite, results) in &suites {
        put(Event::Start(counted("testsuite", suite, results)));
        for result in results {
            let mut case = BytesStart::new("testcase");
            case.push_attribute(("name", clean(&result.case.name).as_str()));
            case.push_attribute(("classname", clean(suite).as_str()));
            if let Some(millis) = result.millis {
                case.push_attribute(("time", seconds(millis).as_str()));
            }
            put(Event::Start(case));
            match &result.outcome {
                Outcome::Passed => {}
                Outcome::Failed(why) => {
                    let mut failure = BytesStart::new("failure");
                    failure.push_attribute(("message", clean(why).as_str()));
                    put(Event::Start(failure));
                    put(Event::Text(BytesText::new(&clean(&result.output))));
                    put(Event::End(BytesEnd::new("failure")));
                }
                Outcome::Skipped(why) => {
                    let mut skipped = BytesStart::new("skipped");
                    skipped.push_attribute(("message", clean(why).as_str()));
                    put(Event::Empty(skipped));
                }
            }
            if !matches!(result.outcome, Outcome::Failed(_)) && !result.output.is_empty() {
                put(Event::Start(BytesStart::new("system-out")));
                put(Event::Text(BytesText::new(&clean(&result.output))));
                put(Event::End(BytesEnd::new("system-out")));
            }
            put(Event::End(BytesEnd::new("testcase")));
        }
        put(Event::End(BytesEnd::new("testsuite")));
    }
    put(Event::End(BytesEnd::new("testsuites")));
    let mut text = String::from_utf8(writer.into_inner()).expect("written from strings");
    text.push('\n');
    text
}

/// An element with a suite's name and counts.
fn counted<'a>(element: &'a str, name: &str, results: &[&TestResult]) -> BytesStart<'a> {
    let count = |which: fn(&Outcome) -> bool| results.iter().filter(|r| which(&r.outcome)).count().to_string();
    let mut start = BytesStart::new(element);
    start.push_attribute(("name", clean(name).as_str()));
    start.push_attribute(("tests", results.len().to_string().as_str()));
    start.push_attribute(("failures", count(|o| matches!(o, Outcome::Failed(_))).as_str()));
    start.push_attribute(("errors", "0"));
    start.push_attribute(("skipped", count(|o| matches!(o, Outcome::Skipped(_))).as_str()));
    if results.iter().all(|r| r.millis.is_some()) && !results.is_empty() {
        start.push_attribute(("time", seconds(results.iter().filter_map(|r| r.millis).sum()).as_str()));
    }
    start
}

fn seconds(millis: u64) -> String {
    format!("{:.3}", millis as f64 / 1000.0)
}

/// `text` without the characters XML 1.0 cannot hold.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|&c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Case, TestRun};
    use super::*;

    fn result(suite: &str, name: &str, outcome: Outcome, output: &str) -> TestResult {
        let run = TestRun::of(std::path::Path::new("/t"));
        let case = Case { suite: suite.into(), name: name.into(), disabled: false, run };
        TestResult { case, outcome, millis: Some(5), output: output.into() }
    }

    #[test]
    fn each_suite_counts_its_tests_and_text_is_escaped() {
        let report = Report {
            results: vec![
                result("A", "ok", Outcome::Passed, "fine\n"),
                result("A", "bad<1>", Outcome::Failed("exit status 1".into()), "x & y \u{1b}[31m\n"),
                result("B", "later", Outcome::Skipped("disabled".into()), ""),
            ],
        };
        let xml = write(&report, "bin/t");
        assert!(
            xml.contains(r#"<testsuites name="bin/t" tests="3" failures="1" errors="0" skipped="1" time="0.015">"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<testsuite name="A" tests="2" failures="1" errors="0" skipped="0""#), "{xml}");
        assert!(xml.contains(r#"<testcase name="bad&lt;1&gt;" classname="A" time="0.005">"#), "{xml}");
        assert!(xml.contains("x &amp; y [31m"), "the escape character is dropped: {xml}");
        assert!(xml.contains(r#"<skipped message="disabled"/>"#), "{xml}");
    }
}
