//! Placeholders: the small text files a model leaves where an output would be. One names the
//! thunk output it stands for, so it survives `mv` and `cp`, and a later model that reads it as
//! an input records a reference to that output instead of its bytes. Its mode is the mode the
//! real file gets when it is forced (a linked program's placeholder is executable). Lines after
//! the ref are ignored: a test harness appends its verdict to a log file that is a placeholder
//! (`thunkmesh wrap --stdout`).
//!
//! A placeholder of a program made under `infer` starts with a `#!` line naming the thunkmesh
//! binary ([`RUNNER_ENV`]): a build that runs the program it just linked (a code generator) runs
//! the placeholder, which forces itself and then runs the real program in its place.

use std::io::Read;
use std::path::Path;

use thunkmesh_protocol::Ref;

/// The first line of every placeholder.
pub const MAGIC: &str = "# thunkmesh placeholder v1\n";

/// No placeholder is longer: a larger file is never one, and is not read to find out.
const MAX_LEN: u64 = 512;

/// The thunkmesh binary that executable placeholders name in their `#!` line (set by `infer`).
pub const RUNNER_ENV: &str = "THUNKMESH_EXE";

/// The argument after the binary in that line: the binary forces the placeholder named next,
/// then runs it with the arguments after that.
pub const RUN_ARG: &str = "__run-placeholder";

/// The longest `#!` line a placeholder gets (the kernel reads at most 256 bytes of it).
const MAX_SHEBANG: usize = 200;

/// A placeholder: the thunk output it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub output: Ref,
}

impl Placeholder {
    /// The placeholder's bytes.
    pub fn text(&self) -> String {
        format!("{MAGIC}{}\n", self.output)
    }

    /// The bytes of an executable placeholder that runs itself through `runner`: a `#!` line,
    /// then [`Placeholder::text`] (just that when the line would be too long).
    pub fn runnable_text(&self, runner: &Path) -> String {
        let line = format!("#!{} {RUN_ARG}\n", runner.display());
        match line.len() <= MAX_SHEBANG && !runner.display().to_string().contains([' ', '\n']) {
            true => format!("{line}{}", self.text()),
            false => self.text(),
        }
    }

    /// Writes it at `path` with `mode` (replacing what was there), through a file beside it; with
    /// an executable `mode` under `infer` ([`RUNNER_ENV`]), one that runs itself.
    pub fn write(&self, path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.thunkmesh-{}", std::process::id()));
        let text = match (mode & 0o111 != 0, std::env::var_os(RUNNER_ENV)) {
            (true, Some(runner)) => self.runnable_text(Path::new(&runner)),
            _ => self.text(),
        };
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Whether the file at `path` is a (readable, well-formed) placeholder.
    pub fn is_at(path: &Path) -> bool {
        Placeholder::read(path).ok().flatten().is_some()
    }

    /// The placeholder at `path`, or `None` when the file there is not one (it is larger than a
    /// placeholder, or does not start like one). An error only when the file cannot be read,
    /// or starts like a placeholder and names no output.
    pub fn read(path: &Path) -> std::io::Result<Option<Placeholder>> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() || meta.len() > MAX_LEN || meta.len() < MAGIC.len() as u64 {
            return Ok(None);
        }
        let mut text = String::new();
        let read = std::fs::File::open(path)?.take(MAX_LEN).read_to_string(&mut text);
        // A runnable placeholder's `#!` line comes first.
        let body = match text.strip_prefix("#!") {
            Some(after) => after.split_once('\n').map_or("", |(_, body)| body),
            None => text.as_str(),
        };
        let Some(rest) = read.ok().and_then(|_| body.strip_prefix(MAGIC)) else { return Ok(None) };
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        let (line, _) = rest.split_once('\n').ok_or_else(|| bad("a placeholder's ref ends with a newline".into()))?;
        let output = line.parse::<Ref>().map_err(|e| bad(format!("a placeholder with a bad ref: {e}")))?;
        match output {
            Ref::Output { .. } => Ok(Some(Placeholder { output })),
            Ref::Blob(_) => Err(bad("a placeholder names a thunk output, not a blob".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thunkmesh_protocol::{Id, Kind};

    fn placeholder() -> Placeholder {
        let thunk = Id::new(Kind::Thunk, b"a thunk's encoding");
        Placeholder { output: Ref::Output { thunk, name: "a.o".into() } }
    }

    #[test]
    fn a_placeholder_survives_a_copy_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, copy) = (dir.path().join("prog"), dir.path().join("copy"));
        placeholder().write(&path, 0o755).expect("write");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o755);
        std::fs::copy(&path, &copy).expect("cp");
        assert_eq!(Placeholder::read(&copy).expect("read"), Some(placeholder()));
    }

    /// A program's placeholder under `infer` runs itself; it reads as the same placeholder.
    #[test]
    fn a_runnable_placeholder_starts_with_its_runner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gen");
        let text = placeholder().runnable_text(Path::new("/opt/thunkmesh"));
        assert!(text.starts_with("#!/opt/thunkmesh __run-placeholder\n# thunkmesh placeholder v1\n"), "{text}");
        std::fs::write(&path, &text).expect("write");
        assert_eq!(Placeholder::read(&path).expect("read"), Some(placeholder()));
        let long = Path::new("/").join("x".repeat(300));
        assert_eq!(placeholder().runnable_text(&long), placeholder().text(), "a line the kernel would cut");
    }

    /// An automake test harness appends its verdict to the log file that `wrap --stdout` made a
    /// placeholder: what follows the ref's line is not read.
    #[test]
    fn lines_after_the_ref_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.log");
        std::fs::write(&path, format!("{}SKIP test (exit status: 77)\n", placeholder().text())).expect("write");
        assert_eq!(Placeholder::read(&path).expect("read"), Some(placeholder()));
    }

    #[test]
    fn other_files_are_not_placeholders_and_damaged_ones_say_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        for text in ["int main() {}\n".to_owned(), "x".repeat(2000), MAGIC.replace("v1", "v9")] {
            std::fs::write(&path, &text).expect("write");
            assert_eq!(Placeholder::read(&path).expect("read"), None, "{text:?}");
        }
        std::fs::write(&path, format!("{MAGIC}Tnope#a\n")).expect("write");
        let e = Placeholder::read(&path).expect_err("damaged");
        assert!(e.to_string().starts_with("a placeholder with a bad ref: id `Tnope`"), "{e}");
    }
}
