//! The state folder of inferred builds (`<state-dir>/infer`): every recorded thunk under
//! `thunks/` by id, in its canonical encoding, and the bytes of every file a thunk reads under
//! `blobs/` by id, copied when the thunk was recorded (a copy, not a link: an edit of the source
//! afterwards must not change what was recorded). Whatever is read back is checked against its
//! id, so a damaged record is an error that names it, never a wrong build.
//!
//! The system's files a toolchain is made of (compilers, libraries, headers) are hashed once:
//! `known/` remembers each one's id with the file's device, inode, size, modification and change
//! times, and hashes it again when any of them differs. `toolchains/` keeps lists of such files
//! that took running programs to find (`toolchain.rs`).

use std::path::{Path, PathBuf};

use thunkmesh_protocol::{Id, Kind, Thunk};

/// Why the state folder could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file or folder of the state could not be read or written.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The state has no record of a thunk a placeholder names.
    #[error("the state folder {dir} has no thunk {id} (was the placeholder made with another --state-dir?)")]
    UnknownThunk { dir: String, id: Id },
    /// The state has no copy of a file a thunk reads.
    #[error("the state folder {dir} has no copy of {id}, which a recorded thunk reads")]
    UnknownBlob { dir: String, id: Id },
    /// A placeholder names an output its thunk does not have.
    #[error("the recorded thunk {id} has no output `{name}` (the placeholder was edited or damaged)")]
    NoSuchOutput { id: Id, name: String },
    /// A record's bytes do not match its name.
    #[error("{path} is damaged: its bytes are not {id}; remove it and infer again")]
    Damaged { path: String, id: Id },
}

/// The largest recorded thunk read back: one that fits a frame (a larger one could not be sent).
const MAX_THUNK: u64 = thunkmesh_protocol::wire::MAX_FRAME as u64;

/// The largest list of system files (or file stamp) read back.
const MAX_LIST: u64 = 16 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io { path: path.display().to_string(), error }
}

/// An open state folder.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Opens (making it if needed) the state of `state_dir`.
    pub fn open(state_dir: &Path) -> Result<State, StateError> {
        let dir = std::path::absolute(state_dir.join("infer")).map_err(io(state_dir))?;
        for sub in ["thunks", "blobs", "known", "toolchains"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(State { dir })
    }

    /// Where the state lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn thunk_path(&self, id: Id) -> PathBuf {
        self.dir.join("thunks").join(id.to_string())
    }

    /// Where the copy of blob `id` is.
    pub fn blob_path(&self, id: Id) -> PathBuf {
        self.dir.join("blobs").join(id.to_string())
    }

    /// Records a copy of the file at `path` (unless one is there) and returns its id.
    pub fn add_blob(&self, path: &Path) -> Result<Id, StateError> {
        let id = thunkmesh_client::hash_file(path).map_err(io(path))?;
        let kept = self.blob_path(id);
        if !kept.exists() {
            let tmp = self.dir.join("blobs").join(format!(".{}-{}", id.hex(), std::process::id()));
            std::fs::copy(path, &tmp).map_err(io(path))?;
            std::fs::rename(&tmp, &kept).map_err(io(&kept))?;
        }
        Ok(id)
    }

    /// Records a copy of the system file at `path` and returns its id, hashing it only when it
    /// changed since it was last recorded (see the module documentation).
    pub fn add_system_file(&self, path: &Path) -> Result<Id, StateError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(io(path))?;
        let stamp = format!(
            "{} {} {} {}.{} {}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        let memo = self.dir.join("known").join(Id::of_blob(path.as_os_str().as_encoded_bytes()).hex());
        let remembered = thunkmesh_client::load::read_bounded(&memo, MAX_LIST).ok().and_then(|bytes| {
            let text = String::from_utf8(bytes).ok()?;
            let (was, id) = text.trim_end().rsplit_once(' ')?;
            (was == stamp).then(|| id.parse::<Id>().ok()).flatten()
        });
        if let Some(id) = remembered.filter(|id| self.blob_path(*id).exists()) {
            return Ok(id);
        }
        let id = self.add_blob(path)?;
        self.write_atomically(&memo, format!("{stamp} {id}\n").as_bytes())?;
        Ok(id)
    }

    /// A list the state keeps under `toolchains/` by `key` (one entry a line), if there is one.
    pub(crate) fn list(&self, key: &str) -> Option<Vec<String>> {
        let path = self.dir.join("toolchains").join(Id::of_blob(key.as_bytes()).hex());
        let text = String::from_utf8(thunkmesh_client::load::read_bounded(&path, MAX_LIST).ok()?).ok()?;
        let (head, body) = text.split_once('\n')?;
        (head == key).then(|| body.lines().map(str::to_owned).collect())
    }

    /// Keeps `entries` under `key` (see [`State::list`]).
    pub(crate) fn keep_list(&self, key: &str, entries: &[String]) -> Result<(), StateError> {
        let path = self.dir.join("toolchains").join(Id::of_blob(key.as_bytes()).hex());
        let mut text = format!("{key}\n");
        entries.iter().for_each(|e| text.push_str(&format!("{e}\n")));
        self.write_atomically(&path, text.as_bytes())
    }

    /// Writes `bytes` to `path` through a rename, so concurrent readers see all or nothing.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}-{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// The copy of blob `id`, checked against its id.
    pub fn blob(&self, id: Id) -> Result<PathBuf, StateError> {
        let path = self.blob_path(id);
        match thunkmesh_client::hash_file(&path) {
            Ok(found) if found == id => Ok(path),
            Ok(_) => Err(StateError::Damaged { path: path.display().to_string(), id }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StateError::UnknownBlob { dir: self.dir.display().to_string(), id })
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Records a thunk and returns its id.
    pub fn add_thunk(&self, thunk: &Thunk) -> Result<Id, StateError> {
        let bytes = thunk.encode();
        let id = Id::new(Kind::Thunk, &bytes);
        let path = self.thunk_path(id);
        if !path.exists() {
            self.write_atomically(&path, &bytes)?;
        }
        Ok(id)
    }

    /// The recorded thunk whose output `name` a placeholder names, checked to have that output.
    pub fn thunk_with_output(&self, id: Id, name: &str) -> Result<Thunk, StateError> {
        let thunk = self.thunk(id)?;
        match thunk.outputs.iter().any(|o| o == name) {
            true => Ok(thunk),
            false => Err(StateError::NoSuchOutput { id, name: name.to_owned() }),
        }
    }

    /// The recorded thunk `id`, checked against its id.
    pub fn thunk(&self, id: Id) -> Result<Thunk, StateError> {
        let path = self.thunk_path(id);
        let bytes = match thunkmesh_client::load::read_bounded(&path, MAX_THUNK) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::UnknownThunk { dir: self.dir.display().to_string(), id });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let damaged = || StateError::Damaged { path: path.display().to_string(), id };
        if Id::new(Kind::Thunk, &bytes) != id {
            return Err(damaged());
        }
        Thunk::decode(&bytes).map_err(|_| damaged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thunkmesh_protocol::{Inputs, Program, Ref};

    fn thunk(input: Id) -> Thunk {
        Thunk {
            program: Program::Ref(Ref::Blob(input)),
            args: vec![],
            env: Default::default(),
            inputs: Inputs::new(),
            outputs: vec!["o".into()],
            timeout_ms: 1000,
            network: false,
            stdout: false,
            dir: None,
        }
    }

    #[test]
    fn records_come_back_checked_and_a_later_edit_of_the_source_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(dir.path()).expect("open");
        let source = dir.path().join("a.c");
        std::fs::write(&source, "int a;\n").expect("write");
        let blob = state.add_blob(&source).expect("add blob");
        std::fs::write(&source, "int b;\n").expect("edit");
        assert_eq!(std::fs::read(state.blob(blob).expect("blob")).expect("read"), b"int a;\n");
        let id = state.add_thunk(&thunk(blob)).expect("add thunk");
        assert_eq!(state.thunk(id).expect("thunk"), thunk(blob));
    }

    #[test]
    fn missing_and_damaged_records_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(dir.path()).expect("open");
        let blob = Id::of_blob(b"x");
        let id = Id::new(Kind::Thunk, &thunk(blob).encode());
        assert!(matches!(state.thunk(id), Err(StateError::UnknownThunk { .. })));
        assert!(matches!(state.blob(blob), Err(StateError::UnknownBlob { .. })));
        std::fs::write(state.blob_path(blob), b"y").expect("write");
        let e = state.blob(blob).expect_err("damaged").to_string();
        assert!(
            e.ends_with(&format!("blobs/{blob} is damaged: its bytes are not {blob}; remove it and infer again")),
            "{e}"
        );
    }
}
