//! The Python package (`python/`): its unit tests run a job built in Python, a bad job, a failing
//! thunk and a shipped program in its own root against this binary, and its example counts words
//! (issues 16 and 30). `scripts/test` installs the package into the venv `target/py-venv`.

use std::process::Command;

use crate::util::repo;

#[test]
fn the_python_package_builds_and_runs_jobs() {
    let python = repo("target/py-venv/bin/python");
    assert!(python.exists(), "no {}: scripts/test installs the Python package there", python.display());
    let out = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(repo("python/tests"))
        .env("THUNKMESH", env!("CARGO_BIN_EXE_thunkmesh"))
        .env_remove("THUNKMESH_TOKEN")
        .output()
        .expect("python");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Ran 6 tests") && said.trim_end().ends_with("OK"), "{said}");
}
