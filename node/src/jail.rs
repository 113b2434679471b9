//! The isolation around each program a node runs, the best its kernel allows.
//!
//! The node does not start a thunk's program itself: it starts its own binary as a *launcher*
//! (`thunkmesh __jail ...`, see [`launcher_main`]), which sets the program up and waits for it.
//! With namespaces (root, or unprivileged user namespaces) the launcher builds a private root on
//! a tmpfs that holds only the system's program folders (`/usr`, `/bin`, `/lib*`, `/sbin`, read
//! only, no setuid), a few devices, a private `/tmp`, the sandbox at `/thunk` and a shipped
//! program at `/.program`; nothing else of the node's file system (its cache, `/etc`, `/home`,
//! other sandboxes) exists there. The program runs in new mount, PID, network (loopback only,
//! down), IPC and UTS namespaces, as PID 1 of its own PID namespace, so every process it starts
//! dies with it, `setsid` or not. A node running as root runs programs as `nobody` (65534), who
//! cannot write or `chmod` the root-owned, read-only cached inputs linked into the sandbox.
//!
//! Without namespaces (a Lambda function) the launcher only keeps the process tree: it is the
//! program's child subreaper, so descendants that detach are reparented to it, and it kills every
//! one of them when the program ends. The file system is then shared with the node.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first argument that makes the thunkmesh binary a launcher.
pub const LAUNCHER_ARG: &str = "__jail";

/// What the launcher says, as the first word of stderr, when it (not the program) failed.
pub(crate) const LAUNCHER_FAILED: &str = "thunkmesh jail:";

/// The exit status of a launcher that could not set the program up.
pub(crate) const SETUP_FAILED: i32 = 125;

/// The user and group a root node runs programs as.
const NOBODY: u32 = 65534;

/// Where the sandbox and a shipped program appear inside the private root.
pub const JAIL_WORK: &str = "/thunk";
const JAIL_PROGRAM: &str = "/.program";

/// The host folders a program sees (read only), where they exist.
const SYSTEM_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The host files of `/etc` a program sees (read only): what programs need to find other
/// programs and libraries (Debian's alternatives, the loader's cache), and nothing about users,
/// hosts or secrets.
const SYSTEM_ETC: [&str; 4] = ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d"];

/// The devices a program sees.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// How programs are isolated on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// A private root and namespaces (see the module documentation).
    Namespaces,
    /// Only the process tree is kept: the kernel allows no namespaces here (the reason).
    ProcessTree(String),
    /// None: programs run as the node's children (no launcher, or switched off).
    Off,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Isolation::Namespaces => f.write_str("namespaces"),
            Isolation::ProcessTree(why) => write!(f, "process tree only ({why})"),
            Isolation::Off => f.write_str("off"),
        }
    }
}

/// Which launcher isolates programs, and how far it may go.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// This node's own binary (it answers to [`LAUNCHER_ARG`]).
    pub binary: PathBuf,
    /// Try namespaces (`false`: keep only the process tree, as on Lambda).
    pub namespaces: bool,
}

/// The launcher and what it can do here.
#[derive(Debug, Clone)]
pub struct Jail {
    launcher: PathBuf,
    isolation: Isolation,
}

impl Jail {
    /// Finds out what the launcher can set up on this kernel (only what it may).
    pub fn probe(launcher: &Launcher) -> Jail {
        let binary = launcher.binary.clone();
        if !launcher.namespaces {
            return Jail { launcher: binary, isolation: Isolation::ProcessTree("as asked".into()) };
        }
        let isolation = match Command::new(&binary).args([LAUNCHER_ARG, "--probe"]).output() {
            Ok(out) if out.status.success() => Isolation::Namespaces,
            Ok(out) => Isolation::ProcessTree(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(e) => Isolation::ProcessTree(format!("cannot start {}: {e}", binary.display())),
        };
        Jail { launcher: binary, isolation }
    }

    /// How programs are isolated.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The command that runs `program` with `args` in the sandbox at `work`, building the
    /// private root in `root` (an empty folder beside it). Returns it with the program's path as
    /// the program will see it.
    pub(crate) fn command(&self, work: &Path, root: &Path, program: &Path, shipped: bool) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.launcher);
        command.arg(LAUNCHER_ARG);
        match self.isolation {
            Isolation::Namespaces => {
                command.args(["--root".as_ref(), root.as_os_str(), "--work".as_ref(), work.as_os_str()]);
                if shipped {
                    command.args(["--program".as_ref(), program.as_os_str()]);
                }
                let inside = if shipped { Path::new(JAIL_PROGRAM) } else { program };
                command.arg("--").arg(inside);
            }
            _ => {
                command.arg("--").arg(program);
            }
        }
        command
    }
}

/// What the launcher was asked to do.
#[derive(Debug, Default)]
struct Plan {
    probe: bool,
    root: Option<PathBuf>,
    work: Option<PathBuf>,
    program: Option<PathBuf>,
    argv: Vec<OsString>,
}

fn parse(args: impl Iterator<Item = OsString>) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().map(PathBuf::from).ok_or(format!("{name} needs a value"));
        match arg.to_str() {
            Some("--probe") => plan.probe = true,
            Some("--root") => plan.root = Some(value("--root")?),
            Some("--work") => plan.work = Some(value("--work")?),
            Some("--program") => plan.program = Some(value("--program")?),
            Some("--") => {
                plan.argv = args.collect();
                break;
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(plan)
}

/// The launcher: `thunkmesh __jail [--probe] [--root DIR --work DIR [--program FILE]] -- PROGRAM
/// ARGS...`. Returns the program's exit status (128 + the signal that killed it), or
/// [`SETUP_FAILED`] after saying why on stderr.
pub fn launcher_main(args: impl Iterator<Item = OsString>) -> i32 {
    match launch(args) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("{LAUNCHER_FAILED} {why}");
            SETUP_FAILED
        }
    }
}

fn launch(args: impl Iterator<Item = OsString>) -> Result<i32, String> {
    let plan = parse(args)?;
    if plan.probe {
        enter_namespaces()?;
        return Ok(0);
    }
    let Some((program, args)) = plan.argv.split_first() else { return Err("no program to run".into()) };
    let mut command = Command::new(program);
    command.args(args);
    match (&plan.root, &plan.work) {
        (Some(root), Some(work)) => {
            let root_user = rustix::process::getuid().is_root();
            enter_namespaces()?;
            build_root(root, work, plan.program.as_deref(), root_user)?;
            command.current_dir(JAIL_WORK);
            if root_user {
                command.uid(NOBODY).gid(NOBODY);
            }
        }
        _ => rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| format!("cannot become the program's subreaper: {e}"))?,
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    let status = command.status().map_err(|e| format!("cannot start the program: {e}"))?;
    kill_descendants();
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// New mount, PID, network, IPC and UTS namespaces (and a user namespace unless root), with
/// mounts that do not propagate back to the node.
fn enter_namespaces() -> Result<(), String> {
    use rustix::thread::UnshareFlags as F;
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    let mut flags = F::NEWNS | F::NEWPID | F::NEWNET | F::NEWIPC | F::NEWUTS;
    if !uid.is_root() {
        flags |= F::NEWUSER;
    }
    // SAFETY: `FILES` is not among the flags, so no thread can lose file descriptors; the
    // launcher is single-threaded here anyway.
    #[allow(unsafe_code)]
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| format!("unshare({flags:?}): {e}"))?;
    if !uid.is_root() {
        let write = |file: &str, text: String| std::fs::write(file, text).map_err(|e| format!("{file}: {e}"));
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("{0} {0} 1", uid.as_raw()))?;
        write("/proc/self/gid_map", format!("{0} {0} 1", gid.as_raw()))?;
    }
    use rustix::mount::MountPropagationFlags as P;
    rustix::mount::mount_change("/", P::PRIVATE | P::REC).map_err(|e| format!("making / private: {e}"))
}

/// Builds the private root in `root` and enters it.
fn build_root(root: &Path, work: &Path, program: Option<&Path>, root_user: bool) -> Result<(), String> {
    use rustix::mount::MountFlags as M;
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mode = c"mode=0755,size=1g";
    rustix::mount::mount("tmpfs", root, "tmpfs", M::NOSUID | M::NODEV, mode)
        .map_err(|e| fail(&format!("tmpfs on {}", root.display()), &e))?;
    for dir in SYSTEM_DIRS {
        let host = Path::new("/").join(dir);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.is_symlink() => {
                let target = std::fs::read_link(&host).map_err(|e| fail(dir, &e))?;
                std::os::unix::fs::symlink(target, root.join(dir)).map_err(|e| fail(dir, &e))?;
            }
            Ok(m) if m.is_dir() => bind(&host, &root.join(dir), true)?,
            _ => {}
        }
    }
    std::fs::create_dir(root.join("etc")).map_err(|e| fail("/etc", &e))?;
    for name in SYSTEM_ETC {
        let host = Path::new("/etc").join(name);
        if host.exists() {
            bind(&host, &root.join("etc").join(name), true)?;
        }
    }
    std::fs::create_dir(root.join("dev")).map_err(|e| fail("/dev", &e))?;
    for dev in DEVICES {
        bind(&Path::new("/dev").join(dev), &root.join("dev").join(dev), false)?;
    }
    let tmp = root.join("tmp");
    std::fs::create_dir(&tmp).map_err(|e| fail("/tmp", &e))?;
    set_mode(&tmp, 0o1777)?;
    if root_user {
        hand_over(work)?;
    }
    bind(work, &root.join(JAIL_WORK.trim_start_matches('/')), false)?;
    if let Some(program) = program {
        bind(program, &root.join(JAIL_PROGRAM.trim_start_matches('/')), true)?;
    }
    set_mode(root, 0o555)?;
    rustix::process::chroot(root).map_err(|e| fail("chroot", &e))?;
    rustix::process::chdir("/").map_err(|e| fail("chdir", &e))
}

/// Binds `host` at `at` (created as a folder or an empty file), without setuid or devices
/// except for device files, and read only if asked.
fn bind(host: &Path, at: &Path, read_only: bool) -> Result<(), String> {
    use rustix::mount::MountFlags as M;
    let fail = |e: &dyn std::fmt::Display| format!("binding {} at {}: {e}", host.display(), at.display());
    let meta = std::fs::metadata(host).map_err(|e| fail(&e))?;
    if meta.is_dir() {
        std::fs::create_dir(at).map_err(|e| fail(&e))?;
    } else {
        std::fs::File::create(at).map_err(|e| fail(&e))?;
    }
    rustix::mount::mount_bind_recursive(host, at).map_err(|e| fail(&e))?;
    let device = !meta.is_dir() && !meta.is_file();
    let mut flags = M::BIND | M::NOSUID;
    if !device {
        flags |= M::NODEV;
    }
    if read_only {
        flags |= M::RDONLY;
    }
    rustix::mount::mount_remount(at, flags, c"").map_err(|e| fail(&e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Gives the sandbox's folders to `nobody`, so the program can create its outputs; the cached
/// inputs linked into them stay root's and read only.
fn hand_over(dir: &Path) -> Result<(), String> {
    let nobody = Some(rustix::fs::Uid::from_raw(NOBODY));
    let group = Some(rustix::fs::Gid::from_raw(NOBODY));
    rustix::fs::chown(dir, nobody, group).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            hand_over(&entry.path())?;
        }
    }
    Ok(())
}

/// Kills and reaps every process still below the launcher: in a PID namespace the kernel has
/// done so already when the program (its init) ended; as a subreaper, detached descendants were
/// reparented here. Repeats until none is left (one may fork while the others die).
fn kill_descendants() {
    let me = rustix::process::getpid();
    for _ in 0..100 {
        let children = children_of(me);
        if children.is_empty() {
            break;
        }
        for child in children {
            let _ = rustix::process::kill_process(child, rustix::process::Signal::KILL);
        }
        while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::empty()) {}
    }
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: rustix::process::Pid) -> Vec<rustix::process::Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parent = parent.as_raw_nonzero().get();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The fields after the command name (which may hold spaces) start after its `)`.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent)
        })
        .filter_map(rustix::process::Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_arguments_parse_and_bad_ones_are_named() {
        let args = ["--root", "/r", "--work", "/w", "--", "/bin/sh", "-c", "x"].map(OsString::from);
        let plan = parse(args.into_iter()).expect("parses");
        assert_eq!(plan.root.as_deref(), Some(Path::new("/r")));
        assert_eq!(plan.argv, ["/bin/sh", "-c", "x"].map(OsString::from));
        let err = parse(["--nope"].map(OsString::from).into_iter()).expect_err("unknown");
        assert!(err.contains("--nope"), "{err}");
    }
}
