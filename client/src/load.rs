//! Reading a job from disk: parse the file, hash every value, pin every host program, and
//! resolve the thunks. Every error names the job file and the place in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thunkmesh_protocol::Id;
use thunkmesh_protocol::job::{JobError, JobProblem, JobSpec, ResolvedJob, SpecKind};

/// A job ready to submit: its thunks with ids, and where each value's bytes are on disk.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    /// The job file as the user named it.
    pub file: String,
    /// Thunks and targets with ids.
    pub job: ResolvedJob,
    /// Value blob -> the file holding its bytes.
    pub values: BTreeMap<Id, PathBuf>,
}

/// Reads, validates and resolves the job file at `path`: TOML, or JSON if its name ends in
/// `.json`.
pub fn load_job(path: &Path) -> Result<LoadedJob, JobError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| JobError::new(&file, "", JobProblem::File { path: file.clone(), reason: e.to_string() }))?;
    let spec = match path.extension().is_some_and(|e| e == "json") {
        true => JobSpec::parse_json(&text, &file)?,
        false => JobSpec::parse(&text, &file, SpecKind::Job)?,
    };
    load_spec(&spec, path.parent().unwrap_or(Path::new(".")), &file)
}

/// Resolves a checked job (such as one from [`thunkmesh_protocol::builder::JobBuilder`]): hashes
/// its values, read relative to `base`, and pins its host programs; `file` names it in errors.
pub fn load_spec(spec: &JobSpec, base: &Path, file: &str) -> Result<LoadedJob, JobError> {
    let file = file.to_owned();
    let mut ids = BTreeMap::new();
    let mut values = BTreeMap::new();
    for (name, rel) in &spec.values {
        let on_disk = base.join(rel);
        let id = hash_file(&on_disk).map_err(|e| {
            let problem = JobProblem::File { path: rel.clone(), reason: e.to_string() };
            JobError::new(&file, format!("values, key `{name}`: "), problem)
        })?;
        ids.insert(name.clone(), id);
        values.insert(id, on_disk);
    }
    let mut hosts = BTreeMap::new();
    for host in spec.host_programs() {
        let id = pin_host(Path::new(host))
            .map_err(|reason| JobError::new(&file, "", JobProblem::HostProgram { path: host.to_owned(), reason }))?;
        hosts.insert(host.to_owned(), id);
    }
    let roots = shipped(spec, &file, &mut values)?;
    let job = spec.resolve_shipped(&ids, &hosts, &roots).map_err(|problem| JobError::new(&file, "", problem))?;
    Ok(LoadedJob { file, job, values })
}

/// The blob id of a regular file's bytes. Anything else (a device such as `/dev/zero`, a FIFO, a
/// folder) is refused before it is opened: reading it could block or never end.
pub fn hash_file(path: &Path) -> std::io::Result<Id> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"));
    }
    let mut hasher = blake3::Hasher::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(Id::blob(*hasher.finalize().as_bytes(), size))
}

/// The bytes of a regular file of at most `limit` bytes (a config file, a record of the state
/// folder). Anything else (a device such as `/dev/zero`, a FIFO, a folder, a larger file) is
/// refused before more than `limit` bytes are read, so a wrong path cannot block or fill memory.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"));
    }
    let too_large = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("is larger than {limit} bytes"));
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)?.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    match bytes.len() as u64 > limit {
        true => Err(too_large()),
        false => Ok(bytes),
    }
}

/// The files each thunk ships (`crate::ship`), hashed: by thunk name, each file's path and blob;
/// every file joins `values`, to be uploaded with them.
fn shipped(
    spec: &JobSpec,
    file: &str,
    values: &mut BTreeMap<Id, PathBuf>,
) -> Result<BTreeMap<String, BTreeMap<String, Id>>, JobError> {
    let shipping = spec.thunks.iter().filter(|t| !t.ship.is_empty()).map(|t| (t.name.as_str(), t.ship.as_slice()));
    let place = |name: &str| format!("thunk `{name}`, key `ship`: ");
    let roots = crate::ship::roots(shipping).map_err(|e| JobError::new(file, "", JobProblem::Path(e.to_string())))?;
    let mut hashed: BTreeMap<PathBuf, Id> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, files) in roots {
        let mut root = BTreeMap::new();
        for path in files {
            let id = match hashed.get(&path) {
                Some(id) => *id,
                None => {
                    let problem = |e: std::io::Error| JobProblem::File {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    };
                    let id = hash_file(&path).map_err(|e| JobError::new(file, place(&name), problem(e)))?;
                    hashed.insert(path.clone(), id);
                    values.insert(id, path.clone());
                    id
                }
            };
            root.insert(path.display().to_string(), id);
        }
        out.insert(name, root);
    }
    Ok(out)
}

fn pin_host(path: &Path) -> Result<Id, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err("is not an executable file".into());
    }
    hash_file(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a");
        std::fs::write(&file, b"12345").expect("write");
        assert_eq!(read_bounded(&file, 5).expect("within"), b"12345");
        assert_eq!(read_bounded(&file, 4).expect_err("over").to_string(), "is larger than 4 bytes");
        for other in [Path::new("/dev/zero"), dir.path()] {
            assert_eq!(read_bounded(other, 1 << 20).expect_err("not a file").to_string(), "is not a regular file");
        }
    }

    fn write_job(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("job.toml");
        std::fs::write(&path, text).expect("write job");
        path
    }

    #[test]
    fn values_are_hashed_relative_to_the_job_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("data")).expect("mkdir");
        std::fs::write(dir.path().join("data/in.txt"), b"hello").expect("write");
        let text = "[values]\nin = \"data/in.txt\"\n[[thunk]]\nname = \"t\"\nprogram = { host = \"/bin/sh\" }\ninputs = { \"x\" = \"in\" }\noutputs = [\"o\"]\n[targets]\n\"o\" = \"t#o\"\n";
        let loaded = load_job(&write_job(dir.path(), text)).expect("loads");
        assert_eq!(loaded.values.get(&Id::of_blob(b"hello")), Some(&dir.path().join("data/in.txt")));
        assert_eq!(loaded.job.thunks.len(), 1);
    }

    #[test]
    fn a_missing_value_file_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[values]\nin = \"nope.txt\"\n[[thunk]]\nname = \"t\"\nprogram = \"in\"\noutputs = [\"o\"]\n[targets]\n\"o\" = \"t#o\"\n";
        let path = write_job(dir.path(), text);
        let e = load_job(&path).expect_err("missing file").to_string();
        assert!(e.ends_with("values, key `in`: cannot read `nope.txt`: No such file or directory (os error 2)"), "{e}");
    }

    /// Issue 12, finding 5: a device or a FIFO as a value used to hang the client.
    #[test]
    fn a_value_that_is_not_a_regular_file_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        for value in ["/dev/zero", fifo.to_str().expect("utf-8"), "."] {
            let text = format!(
                "[values]\nin = \"{value}\"\n[[thunk]]\nname = \"t\"\nprogram = \"in\"\noutputs = [\"o\"]\n[targets]\n\"o\" = \"t#o\"\n"
            );
            let e = load_job(&write_job(dir.path(), &text)).expect_err("not a file").to_string();
            assert!(e.ends_with(&format!("values, key `in`: cannot read `{value}`: is not a regular file")), "{e}");
        }
    }

    #[test]
    fn a_missing_host_program_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[[thunk]]\nname = \"t\"\nprogram = { host = \"/no/such/cc\" }\noutputs = [\"o\"]\n[targets]\n\"o\" = \"t#o\"\n";
        let e = load_job(&write_job(dir.path(), text)).expect_err("missing host program").to_string();
        assert!(e.contains("host program `/no/such/cc`: No such file or directory"), "{e}");
    }
}
