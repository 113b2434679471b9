//! Shipping: the files a thunk's `ship` brings as its own root (`docs/jobs.md`, "Shipping
//! programs"), found on this machine when the job is loaded. A program comes with the shared
//! libraries and loader `ldd` finds for it (a script with its interpreter's); a folder with
//! every file under it; a Python interpreter with the modules a step imports, found by importing
//! them, and what those load. Each file becomes an input under `.root/` at its own path, hashed
//! and uploaded like any value, so a node that has none of them runs the thunk, and two thunks
//! that ship the same program share every blob.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use thunkmesh_protocol::job::ShipSpec;
use thunkmesh_protocol::thunk::ROOT_RESERVED;

/// The most files one `ship` item may bring, and their bytes: a folder named by mistake (`/usr`)
/// is an error, not an upload of everything.
const MAX_FILES: usize = 20_000;
const MAX_BYTES: u64 = 4 << 30;

/// Why what a thunk ships could not be found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// A file or folder to ship cannot be read.
    #[error("cannot ship {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A program that finds what to ship (`ldd`, the Python interpreter) did not start.
    #[error("cannot run {program}: {error}")]
    Run {
        /// What was run, and what for.
        program: String,
        /// Why not.
        error: std::io::Error,
    },
    /// A program needs a shared library the loader does not find here.
    #[error("{program} needs {library}, which the loader does not find here")]
    MissingLibrary {
        /// The program.
        program: String,
        /// The library, as `ldd` names it.
        library: String,
    },
    /// The Python interpreter could not import the modules.
    #[error("{interpreter} cannot import {modules}: {reason}")]
    Python {
        /// The interpreter.
        interpreter: String,
        /// The modules.
        modules: String,
        /// What it said.
        reason: String,
    },
    /// A file to ship lies where the sandbox provides its own folders.
    #[error("cannot ship {0}: the sandbox provides /dev, /tmp, /thunk and /.program itself")]
    Reserved(String),
    /// An item brings more than 20,000 files or 4 GiB.
    #[error("{0} brings more than {MAX_FILES} files or {gib} GiB: ship what the program needs, not a whole tree", gib = MAX_BYTES >> 30)]
    TooLarge(String),
}

/// The files `item` brings, by their absolute paths here (which are their paths in the root).
pub fn files(item: &ShipSpec) -> Result<BTreeSet<PathBuf>, ShipError> {
    let mut found = Found::default();
    match item {
        ShipSpec::Path(path) => found.path(Path::new(path))?,
        ShipSpec::Python { interpreter, modules } => found.python(Path::new(interpreter), modules)?,
    }
    if let Some(reserved) = found.files.iter().find(|f| reserved(f)) {
        return Err(ShipError::Reserved(reserved.display().to_string()));
    }
    Ok(found.files)
}

/// The files of every item of every thunk's `ship`, by thunk name; each item is looked at once
/// however many thunks ship it.
pub fn roots<'a>(
    thunks: impl IntoIterator<Item = (&'a str, &'a [ShipSpec])>,
) -> Result<BTreeMap<String, BTreeSet<PathBuf>>, ShipError> {
    let mut seen: HashMap<&ShipSpec, BTreeSet<PathBuf>> = HashMap::new();
    let mut roots = BTreeMap::new();
    for (name, items) in thunks {
        let mut root = BTreeSet::new();
        for item in items {
            if !seen.contains_key(item) {
                seen.insert(item, files(item)?);
            }
            root.extend(seen[item].iter().cloned());
        }
        roots.insert(name.to_owned(), root);
    }
    Ok(roots)
}

#[derive(Default)]
struct Found {
    files: BTreeSet<PathBuf>,
    bytes: u64,
    /// Programs whose libraries were added.
    linked: BTreeSet<PathBuf>,
}

impl Found {
    /// A file (with what it needs to start), or a folder with every file under it.
    fn path(&mut self, path: &Path) -> Result<(), ShipError> {
        let io = |error| ShipError::Io { path: path.display().to_string(), error };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_dir() {
            return self.program(path);
        }
        let mut pending = vec![path.to_owned()];
        while let Some(dir) = pending.pop() {
            let entries =
                std::fs::read_dir(&dir).map_err(|error| ShipError::Io { path: dir.display().to_string(), error })?;
            for entry in entries.flatten() {
                // A link is followed; one that leads nowhere is left out.
                let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
                match meta.is_dir() {
                    true => pending.push(entry.path()),
                    false if meta.is_file() => self.add(&entry.path(), meta.len(), path)?,
                    false => {}
                }
            }
        }
        Ok(())
    }

    /// A file; an ELF program or library with the shared libraries it loads, a script with its
    /// interpreter.
    fn program(&mut self, path: &Path) -> Result<(), ShipError> {
        let io = |error| ShipError::Io { path: path.display().to_string(), error };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file")));
        }
        self.add(path, meta.len(), path)?;
        match file_kind(path).map_err(io)? {
            FileKind::Elf => self.libraries(path),
            FileKind::Script { interpreter, .. } if interpreter.starts_with('/') => {
                self.program(Path::new(&interpreter))
            }
            FileKind::Script { .. } | FileKind::Other => Ok(()),
        }
    }

    /// The shared libraries and loader of the ELF file at `path`.
    fn libraries(&mut self, path: &Path) -> Result<(), ShipError> {
        if !self.linked.insert(path.to_owned()) {
            return Ok(());
        }
        // `ldd` names every library the file loads, theirs included: none needs asking again.
        let found = libraries(path)?;
        self.linked.extend(found.iter().cloned());
        for library in found {
            let meta = std::fs::metadata(&library)
                .map_err(|error| ShipError::Io { path: library.display().to_string(), error })?;
            self.add(&library, meta.len(), path)?;
        }
        Ok(())
    }

    /// The interpreter, and the file of every module it has loaded once `modules` are imported
    /// (every file of a package named in `modules`, which may import more of itself later), each
    /// extension module with its libraries; `encodings`, which Python reads as it needs them, whole.
    fn python(&mut self, interpreter: &Path, modules: &[String]) -> Result<(), ShipError> {
        self.program(interpreter)?;
        const PROBE: &str = "import importlib, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for folder in getattr(module, '__path__', []):
        print('folder', folder)
import encodings
print('folder', encodings.__path__[0])
for module in list(sys.modules.values()):
    file = getattr(module, '__file__', None)
    if file:
        print('file', file)
";
        let shown = interpreter.display().to_string();
        let output = Command::new(interpreter)
            .args(["-c", PROBE])
            .args(modules)
            .env_clear()
            .output()
            .map_err(|error| ShipError::Run { program: shown.clone(), error })?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            let reason = said.trim().lines().last().unwrap_or("it failed").to_owned();
            return Err(ShipError::Python { interpreter: shown, modules: modules.join(", "), reason });
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            match line.split_once(' ') {
                Some(("folder", folder)) => self.path(Path::new(folder))?,
                Some(("file", file)) => self.program(Path::new(file))?,
                _ => {}
            }
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, len: u64, item: &Path) -> Result<(), ShipError> {
        if self.files.insert(normal(path)) {
            self.bytes += len;
            if self.files.len() > MAX_FILES || self.bytes > MAX_BYTES {
                return Err(ShipError::TooLarge(item.display().to_string()));
            }
        }
        if path.extension().is_some_and(|e| e == "so") || path.to_string_lossy().contains(".so.") {
            // A library that an extension or plugin is loaded as: its own libraries too.
            let linked = self.linked.contains(path);
            if !linked && matches!(file_kind(path), Ok(FileKind::Elf)) {
                self.libraries(path)?;
            }
        }
        Ok(())
    }
}

/// What a file is, by its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// An ELF program or library.
    Elf,
    /// A script: the interpreter its `#!` line names, and the one argument it may give.
    Script {
        /// The interpreter, as written (empty if the line names none).
        interpreter: String,
        /// Its argument.
        arg: Option<String>,
    },
    /// Anything else.
    Other,
}

/// What the file at `path` is, from its first 256 bytes.
pub fn file_kind(path: &Path) -> std::io::Result<FileKind> {
    let mut head = [0u8; 256];
    let read = std::fs::File::open(path)?.read(&mut head)?;
    let head = &head[..read];
    if head.starts_with(b"\x7fELF") {
        return Ok(FileKind::Elf);
    }
    let Some(line) = head.strip_prefix(b"#!") else { return Ok(FileKind::Other) };
    let line = String::from_utf8_lossy(line.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut words = line.split_whitespace();
    let interpreter = words.next().unwrap_or_default().to_owned();
    Ok(FileKind::Script { interpreter, arg: words.next().map(str::to_owned) })
}

/// Whether `path` lies in a folder the sandbox provides.
fn reserved(path: &Path) -> bool {
    let top = path.components().nth(1);
    ROOT_RESERVED.iter().any(|r| top == Some(Component::Normal(r.as_ref())))
}

/// The shared libraries and loader of `path`, as `ldd` finds them; none for a file that is not
/// dynamically linked (a script, a static program).
pub fn libraries(path: &Path) -> Result<Vec<PathBuf>, ShipError> {
    let output = Command::new("ldd").arg(path).env("LC_ALL", "C").output().map_err(|error| ShipError::Run {
        program: format!("ldd to find the libraries of {}", path.display()),
        error,
    })?;
    if !output.status.success() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().map(str::trim) {
        let named = match line.split_once("=>") {
            Some((name, rest)) if rest.trim() == "not found" => {
                let (program, library) = (path.display().to_string(), name.trim().to_owned());
                return Err(ShipError::MissingLibrary { program, library });
            }
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        if let Some(file) = named.split_whitespace().next().filter(|f| f.starts_with('/')) {
            found.push(normal(Path::new(file)));
        }
    }
    Ok(found)
}

/// `path` with `.` and `..` resolved by name (a `..` above `/` stays at `/`).
pub fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program brings its libraries and loader; a script its interpreter's too.
    #[test]
    fn a_program_brings_its_libraries_and_a_script_its_interpreter() {
        let sh = files(&ShipSpec::Path("/bin/sh".into())).expect("sh");
        assert!(sh.contains(Path::new("/bin/sh")), "{sh:?}");
        assert!(sh.iter().any(|f| f.to_string_lossy().contains("libc.so")), "{sh:?}");
        assert!(sh.iter().any(|f| f.to_string_lossy().contains("ld-linux")), "{sh:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
        let mut found = Found::default();
        found.program(&script).expect("a script");
        assert!(found.files.is_superset(&sh), "the interpreter comes along");
    }

    /// What lies under /tmp (where the sandbox has its own) is refused, with its path.
    #[test]
    fn files_under_the_sandbox_s_own_folders_are_refused() {
        let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
        std::fs::write(dir.path().join("f"), "x").expect("write");
        let item = ShipSpec::Path(dir.path().display().to_string());
        let e = files(&item).expect_err("refused");
        assert!(matches!(e, ShipError::Reserved(_)), "{e}");
        assert!(reserved(Path::new("/dev/null")) && !reserved(Path::new("/usr/bin/dev")));
    }

    /// Python brings the modules it imported to start and to import what was asked.
    #[test]
    fn python_brings_what_the_modules_import() {
        let python = "/usr/bin/python3";
        let item = ShipSpec::Python { interpreter: python.into(), modules: vec!["json".into()] };
        let files = files(&item).expect("python");
        let has = |end: &str| files.iter().any(|f| f.to_string_lossy().ends_with(end));
        assert!(has("/json/decoder.py") && has("/os.py") && has("/encodings/latin_1.py"), "{files:?}");
        let missing = ShipSpec::Python { interpreter: python.into(), modules: vec!["no_such_module".into()] };
        let e = super::files(&missing).expect_err("refused");
        assert!(e.to_string().contains("No module named"), "{e}");
    }
}
