//! How `infer` catches every call of a modelled tool, however the build names it. A folder of
//! links to this binary first on the build's `PATH` catches calls by name (`cc`, `ar`); a build
//! that calls its tools by path (CMake's `/usr/bin/cc`, a versioned `gcc-12`) is caught by a
//! private mount namespace in which every file that is such a tool (found in the usual program
//! folders and on `PATH`) is this binary, bound over it. A model started there goes back to the
//! mount namespace of `infer` ([`leave`]) before it does anything, so the real tools it runs, and
//! the files it ships, are the real ones. Making the namespace takes root (`CAP_SYS_ADMIN`);
//! elsewhere only the `PATH` links catch calls, and `infer` says what that misses.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The mount namespace of `infer` (`/proc/PID/ns/mnt`), which a model in the build's namespace
/// goes back to.
pub const HOST_NS_ENV: &str = "THUNKMESH_HOST_NS";

/// Folders whose programs are caught by path besides those on the build's `PATH`.
const PROGRAM_FOLDERS: [&str; 4] = ["/usr/bin", "/bin", "/usr/local/bin", "/usr/lib/ccache"];

/// Every file that a modelled tool's name leads to (through links) in the program folders and
/// on `path`, other than `exe` itself: what the namespace covers.
pub fn tools(path: &std::ffi::OsStr, exe: &Path) -> Vec<PathBuf> {
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_owned());
    let folders = PROGRAM_FOLDERS.iter().map(PathBuf::from).chain(std::env::split_paths(path));
    let mut found = BTreeSet::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if crate::models::model_of(&name.to_string_lossy()).is_none() {
                continue;
            }
            if let Ok(file) = std::fs::canonicalize(entry.path())
                && file != exe
                && file.is_file()
            {
                found.insert(file);
            }
        }
    }
    found.into_iter().collect()
}

/// Why the namespace cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterceptError {
    /// Making a mount namespace takes root.
    #[error("making a mount namespace takes root (this is uid {0})")]
    NotRoot(u32),
    /// A path holds a NUL byte.
    #[error("{0}: a path with a NUL byte")]
    Nul(String),
}

/// Makes `command` start in a private mount namespace where each of `tools` is `exe`.
pub fn in_namespace(command: &mut std::process::Command, exe: &Path, tools: &[PathBuf]) -> Result<(), InterceptError> {
    use std::os::unix::process::CommandExt;
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        return Err(InterceptError::NotRoot(uid.as_raw()));
    }
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| InterceptError::Nul(p.display().to_string()));
    let exe = c(exe)?;
    let tools = tools.iter().map(|t| c(t)).collect::<Result<Vec<_>, _>>()?;
    let cover = move || -> std::io::Result<()> {
        use rustix::mount::MountPropagationFlags as P;
        // SAFETY: `FILES` is not among the flags, and this runs in the child between fork and
        // exec, where nothing else shares its file system information.
        #[allow(unsafe_code)]
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
        rustix::mount::mount_change(c"/", P::PRIVATE | P::REC)?;
        for tool in &tools {
            rustix::mount::mount_bind(exe.as_c_str(), tool.as_c_str())?;
        }
        Ok(())
    };
    // SAFETY: the closure only makes system calls on what was prepared before the fork; it
    // allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(cover);
    }
    Ok(())
}

/// Goes back to the mount namespace `infer` runs in, if this process was started in the build's
/// ([`HOST_NS_ENV`]), and into the folder it was started in. Call it first, while the process
/// has one thread.
pub fn leave() -> Result<(), LeaveError> {
    let Some(host) = std::env::var_os(HOST_NS_ENV) else { return Ok(()) };
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    if ours.is_some() && ours == std::fs::read_link(&host).ok() {
        return Ok(());
    }
    let at = |path: &Path| {
        let path = path.display().to_string();
        move |source| LeaveError { path, source }
    };
    let cwd = std::env::current_dir().map_err(at(Path::new(".")))?;
    let ns = std::fs::File::open(&host).map_err(at(Path::new(&host)))?;
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(LinkNameSpaceType::Mount))
        .map_err(|e| at(Path::new(&host))(e.into()))?;
    std::env::set_current_dir(&cwd).map_err(at(&cwd))
}

/// Going back to infer's mount namespace failed, at `path` (the namespace, or the folder to
/// return to).
#[derive(Debug, thiserror::Error)]
#[error("cannot go back to the mount namespace of infer: {path}: {source}")]
pub struct LeaveError {
    /// The file or folder.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's compilers and binutils are found by the files their names lead to, once
    /// each, and never the running binary or a compiler's helper (`cc1`).
    #[test]
    fn the_tools_to_cover_are_the_files_behind_every_modelled_name() {
        let found = tools(std::ffi::OsStr::new(""), Path::new("/proc/self/exe"));
        let cc = std::fs::canonicalize("/usr/bin/cc").expect("this machine has a C compiler");
        let ar = std::fs::canonicalize("/usr/bin/ar").expect("this machine has ar");
        assert!(found.contains(&cc) && found.contains(&ar), "{found:?}");
        assert!(found.iter().all(|f| f.is_file()), "{found:?}");
        let names: Vec<String> =
            found.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.starts_with("cc1") || n == "as" || n.starts_with("lto")), "{names:?}");
    }
}
