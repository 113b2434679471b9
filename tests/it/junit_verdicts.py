"""Prints each test case of a JUnit XML file as `NAME VERDICT` (passed, failed or skipped), one
per line, sorted, as junitparser reads them (the reader of CI tools' JUnit reports). NAME is
`classname.name`, or with --names the case's name alone. The counts each suite claims are
checked against its cases first. googletest's own XML marks a disabled test `status="notrun"`
with no child element: that is a skip."""
import sys

from junitparser import Error, Failure, JUnitXml, Skipped

names_only = "--names" in sys.argv
path = [a for a in sys.argv[1:] if a != "--names"][0]
xml = JUnitXml.fromfile(path)
lines = []
for suite in xml:
    cases = list(suite)
    failed = sum(1 for c in cases if any(isinstance(r, (Failure, Error)) for r in c.result))
    skipped = sum(1 for c in cases if any(isinstance(r, Skipped) for r in c.result))
    assert suite.tests == len(cases), (suite.name, "tests", suite.tests, len(cases))
    assert suite.failures + suite.errors == failed, (suite.name, "failures", suite.failures, failed)
    assert (suite.skipped or 0) == skipped, (suite.name, "skipped", suite.skipped, skipped)
    for case in cases:
        if any(isinstance(r, (Failure, Error)) for r in case.result):
            verdict = "failed"
        elif any(isinstance(r, Skipped) for r in case.result) or case._elem.get("status") == "notrun":
            verdict = "skipped"
        else:
            verdict = "passed"
        name = case.name if names_only else f"{case.classname}.{case.name}"
        lines.append(f"{name} {verdict}")
print("\n".join(sorted(lines)))
