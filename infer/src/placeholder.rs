//! Placeholders: the small text files a model leaves where an output would be. One names the
//! thunk output it stands for, so it survives `mv` and `cp`, and a later model that reads it as
//! an input records a reference to that output instead of its bytes. Its mode is the mode the
//! real file gets when it is forced (a linked program's placeholder is executable). Lines after
//! the ref are ignored: a test harness appends its verdict to a log file that is a placeholder
//! (`thunkmesh wrap --stdout`).

use std::io::Read;
use std::path::Path;

use thunkmesh_protocol::Ref;

/// The first line of every placeholder.
pub const MAGIC: &str = "# thunkmesh placeholder v1\n";

/// No placeholder is longer: a larger file is never one, and is not read to find out.
const MAX_LEN: u64 = 512;

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

    /// Writes it at `path` with `mode` (replacing what was there), through a file beside it.
    pub fn write(&self, path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.thunkmesh-{}", std::process::id()));
        std::fs::write(&tmp, self.text())?;
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
        let Some(rest) = read.ok().and_then(|_| text.strip_prefix(MAGIC)) else { return Ok(None) };
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
