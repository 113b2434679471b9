//! Issue 28, findings 7, 8 and 11: local files are read within bounds, outputs stay in the build
//! folder, and a bad local file is an error of exit code 2 that names it. A config file or an
//! infer record that is a device, a FIFO or too large is refused with its path, at once and in
//! bounded memory; an output under a link that leads out of the build folder is refused, and
//! nothing is written outside; a bad value in the config file names the file; a placeholder that
//! names an output its thunk lacks is refused before anything starts.

use std::time::{Duration, Instant};

use crate::infer::tm;
use crate::util::thunkmesh;

/// `THUNKMESH_CONFIG` naming `/dev/zero` (which grew the process to 1.1 GiB), a FIFO (which hung
/// it) or a file over the limit: one line, exit 2, the path named, within a second or two.
#[test]
fn a_config_file_that_is_not_a_small_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let large = dir.path().join("large.toml");
    std::fs::write(&large, format!("# {}\n", "x".repeat(2 << 20))).expect("write");
    for (config, said) in [
        (std::path::PathBuf::from("/dev/zero"), "is not a regular file"),
        (fifo, "is not a regular file"),
        (large, "is larger than 1048576 bytes"),
    ] {
        let started = Instant::now();
        let out = thunkmesh().env("THUNKMESH_CONFIG", &config).args(["status"]).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&config.display().to_string()) && stderr.contains(said), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }
}

/// An infer record replaced by `/dev/zero` (which made `describe` reach 4.5 GiB) is refused,
/// naming it.
#[test]
fn an_infer_record_that_is_a_device_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    tm(dir.path(), &["wrap", "--out", "y.txt", "--", "sh", "-c", "echo y > y.txt"]).ok();
    let thunks = dir.path().join(".thunkmesh/infer/thunks");
    let record = std::fs::read_dir(&thunks).expect("thunks").flatten().next().expect("a record").path();
    std::fs::remove_file(&record).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &record).expect("symlink");
    let started = Instant::now();
    let described = tm(dir.path(), &["describe", "y.txt"]);
    assert_eq!(described.code, Some(2), "{}", described.stderr);
    assert!(described.stderr.contains(&format!("{}: is not a regular file", record.display())), "{}", described.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `lnk` leads out of the build folder: `wrap --out lnk/y.txt` and, under `infer`, `cc -c a.c -o
/// lnk/a.o` are refused, and neither a placeholder nor a file lands outside.
#[test]
fn outputs_are_never_written_through_a_link_out_of_the_build_folder() {
    let (dir, outside) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    std::os::unix::fs::symlink(outside.path(), dir.path().join("lnk")).expect("symlink");
    std::fs::write(dir.path().join("a.c"), "int a;\n").expect("write");
    let calls: [(&[&str], &str); 2] = [
        (&["wrap", "--out", "lnk/y.txt", "--", "sh", "-c", "echo y > lnk/y.txt"], "lnk/y.txt"),
        (&["infer", "--", "cc", "-c", "a.c", "-o", "lnk/a.o"], "lnk/a.o"),
    ];
    for (args, output) in calls {
        let refused = tm(dir.path(), args);
        assert_eq!(refused.code, Some(2), "{}", refused.stderr);
        let said = format!("{output}: an output may not be written through a link out");
        assert!(refused.stderr.contains(&said), "{}", refused.stderr);
    }
    assert_eq!(std::fs::read_dir(outside.path()).expect("read_dir").count(), 0, "nothing was written outside");
}

/// `workers = "two"` in the config file: exit 2, and the message names the file.
#[test]
fn a_bad_value_in_the_config_file_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "workers = \"two\"\n").expect("write");
    let out = thunkmesh().env("THUNKMESH_CONFIG", &config).args(["run", "job.toml"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let said = format!("error: config file {}: invalid value 'two' for '--workers", config.display());
    assert!(stderr.starts_with(&said), "{stderr}");
}

/// A placeholder edited to name an output its thunk does not have: `describe` and `force` exit 2
/// naming it (`describe` used to exit 0, `force` to fail after starting the mesh).
#[test]
fn a_placeholder_naming_an_output_its_thunk_lacks_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    tm(dir.path(), &["wrap", "--out", "y.txt", "--", "sh", "-c", "echo y > y.txt"]).ok();
    let placeholder = dir.path().join("y.txt");
    let text = std::fs::read_to_string(&placeholder).expect("read").replace("#y.txt", "#nope.txt");
    std::fs::write(&placeholder, text).expect("write");
    for args in [&["describe", "y.txt"][..], &["force", "y.txt"]] {
        let refused = tm(dir.path(), args);
        assert_eq!(refused.code, Some(2), "{args:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("has no output `nope.txt`"), "{}", refused.stderr);
        assert!(refused.stderr.contains("y.txt"), "{}", refused.stderr);
    }
}
