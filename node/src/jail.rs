//! The isolation around each program a node runs, the best its kernel allows.
//!
//! With namespaces (root, or unprivileged user namespaces) the node's forked child, before it
//! execs the program, enters new mount, PID, network (loopback only, down), IPC and UTS
//! namespaces and builds a private root on a tmpfs that holds only the system's program folders
//! (`/usr`, `/bin`, `/lib*`, `/sbin`, read only, no setuid), what of `/etc` finds programs and
//! libraries, a few devices, a private `/tmp`, the sandbox at `/thunk` and a shipped program at
//! `/.program`; nothing else of the node's file system (its cache, `/etc/passwd`, `/home`, other
//! sandboxes) exists there. It then forks once more, so the program is PID 1 of its own PID
//! namespace and every process it starts dies with it, `setsid` or not; the process between
//! waits for it and exits as it did. A node running as root runs programs as `nobody` (65534),
//! who cannot write or `chmod` the root-owned, read-only cached inputs linked into the sandbox.
//! Every path is made ready before the fork, so the child allocates nothing.
//!
//! Without namespaces (a Lambda function) the program is started through the node's own binary
//! as a *launcher* (`thunkmesh __jail -- PROGRAM...`, [`launcher_main`]), which only keeps the
//! process tree: it is the program's child subreaper, so descendants that detach are
//! reparented to it, and it kills every one of them when the program ends. The file system is
//! then shared with the node.

use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first argument that makes the thunkmesh binary a (process-tree) launcher.
pub const LAUNCHER_ARG: &str = "__jail";

/// What the launcher says, as the first words of stderr, when it (not the program) failed.
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

/// What isolates programs on this node, and how.
#[derive(Debug, Clone)]
pub struct Jail {
    launcher: PathBuf,
    isolation: Isolation,
    host: HostLayout,
    /// Empty network, IPC and UTS namespaces made once and entered by every program (a root
    /// node's: making a network namespace per program costs about 2 ms).
    shared: Option<std::sync::Arc<Shared>>,
}

/// Namespaces every program enters rather than making its own: they hold nothing a program
/// could leave to another (no interface but a loopback that is down, no IPC objects the
/// programs' user may not reach anyway).
#[derive(Debug)]
struct Shared {
    net: std::os::fd::OwnedFd,
    ipc: std::os::fd::OwnedFd,
    uts: std::os::fd::OwnedFd,
}

impl Shared {
    /// Makes them on a thread of its own (namespaces belong to threads), which then ends.
    fn make() -> std::io::Result<Shared> {
        std::thread::spawn(|| {
            use rustix::thread::UnshareFlags as F;
            // SAFETY: `FILES` is not among the flags; this thread only opens its namespaces.
            #[allow(unsafe_code)]
            unsafe { rustix::thread::unshare_unsafe(F::NEWNET | F::NEWIPC | F::NEWUTS) }?;
            let open = |name: &str| -> std::io::Result<std::os::fd::OwnedFd> {
                Ok(std::fs::File::open(format!("/proc/thread-self/ns/{name}"))?.into())
            };
            Ok(Shared { net: open("net")?, ipc: open("ipc")?, uts: open("uts")? })
        })
        .join()
        .map_err(|_| std::io::Error::other("the thread making namespaces panicked"))?
    }
}

impl Jail {
    /// Finds out what this kernel allows (only what `launcher` permits) by running `/bin/true`
    /// in a private root built under `scratch`.
    pub fn probe(launcher: &Launcher, scratch: &Path) -> Jail {
        let mut jail = Jail {
            launcher: launcher.binary.clone(),
            isolation: Isolation::Namespaces,
            host: HostLayout::find(),
            shared: None,
        };
        if !launcher.namespaces {
            jail.isolation = Isolation::ProcessTree("as asked".into());
            return jail;
        }
        if rustix::process::getuid().is_root() {
            jail.shared = Shared::make().ok().map(std::sync::Arc::new);
        }
        if let Err(why) = jail.try_namespaces(scratch) {
            jail.isolation = Isolation::ProcessTree(why);
        }
        jail
    }

    fn try_namespaces(&self, scratch: &Path) -> Result<(), String> {
        let (work, root) = (scratch.join("probe-work"), scratch.join("probe-root"));
        for dir in [&work, &root] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let plan = Plan::new(&self.host, &root, &work, None, self.shared.clone()).map_err(|e| e.to_string())?;
        let mut command = Command::new("/bin/true");
        // SAFETY: `enter` makes only system calls on memory prepared before the fork.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || enter(&plan));
        }
        let status = command.status().map_err(|e| format!("namespaces: {e}"));
        let _ = std::fs::remove_dir(&work);
        let _ = std::fs::remove_dir(&root);
        match status? {
            s if s.success() => Ok(()),
            s => Err(format!("/bin/true in a private root ended with {s}")),
        }
    }

    /// How programs are isolated.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// Whether programs run as `nobody` in a private root (so the sandbox's folders must be
    /// theirs).
    pub(crate) fn as_nobody(&self) -> bool {
        self.isolation == Isolation::Namespaces && rustix::process::getuid().is_root()
    }

    /// The command that runs `program` (a `shipped` one at its path in the sandbox folder) in
    /// the sandbox at `work`, building the private root in `root` (an empty folder beside it).
    /// Arguments, environment and streams are the caller's to add.
    pub(crate) fn command(
        &self,
        work: &Path,
        root: &Path,
        program: &Path,
        shipped: bool,
    ) -> std::io::Result<tokio::process::Command> {
        if self.isolation != Isolation::Namespaces {
            let mut command = tokio::process::Command::new(&self.launcher);
            command.arg(LAUNCHER_ARG).arg("--").arg(program);
            return Ok(command);
        }
        let plan = Plan::new(&self.host, root, work, shipped.then_some(program), self.shared.clone())?;
        let mut command = tokio::process::Command::new(if shipped { Path::new(JAIL_PROGRAM) } else { program });
        // SAFETY: `enter` makes only system calls on memory prepared before the fork.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || enter(&plan));
        }
        Ok(command)
    }
}

/// The launcher (process-tree isolation only): `thunkmesh __jail -- PROGRAM ARGS...`. Returns the
/// program's exit status (128 + the signal that killed it), or 125 after saying why
/// on stderr.
pub fn launcher_main(mut args: impl Iterator<Item = OsString>) -> i32 {
    let run = || -> Result<i32, String> {
        if args.next().as_deref() != Some("--".as_ref()) {
            return Err("usage: __jail -- PROGRAM ARGS...".into());
        }
        let program = args.next().ok_or("no program to run")?;
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| format!("cannot become the program's subreaper: {e}"))?;
        rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
        let status =
            Command::new(&program).args(args).status().map_err(|e| format!("cannot start the program: {e}"))?;
        kill_descendants();
        Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    };
    run().unwrap_or_else(|why| {
        eprintln!("{LAUNCHER_FAILED} {why}");
        SETUP_FAILED
    })
}

/// One step of building the private root, with every path ready as a C string.
#[derive(Debug)]
enum Step {
    Mkdir(CString, u32),
    Symlink {
        target: CString,
        at: CString,
    },
    /// Bind `host` at `at` (an empty folder or file is made first).
    Bind {
        host: CString,
        at: CString,
        dir: bool,
        device: bool,
        read_only: bool,
    },
}

/// The host's part of every private root, found once per node: what exists of the system
/// folders, `/etc`'s few files and the devices, relative to the root.
#[derive(Debug, Clone)]
struct HostLayout {
    /// (path relative to the root, what it is on the host).
    entries: Vec<(PathBuf, HostEntry)>,
}

#[derive(Debug, Clone)]
enum HostEntry {
    Dir,
    Symlink(PathBuf),
    Bind { dir: bool, device: bool, read_only: bool },
}

impl HostLayout {
    fn find() -> HostLayout {
        let mut entries = Vec::new();
        for dir in SYSTEM_DIRS {
            let host = Path::new("/").join(dir);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&host) {
                        entries.push((PathBuf::from(dir), HostEntry::Symlink(target)));
                    }
                }
                Ok(m) if m.is_dir() => {
                    entries.push((PathBuf::from(dir), HostEntry::Bind { dir: true, device: false, read_only: true }))
                }
                _ => {}
            }
        }
        entries.push((PathBuf::from("etc"), HostEntry::Dir));
        for name in SYSTEM_ETC {
            if let Ok(m) = std::fs::metadata(Path::new("/etc").join(name)) {
                let entry = HostEntry::Bind { dir: m.is_dir(), device: false, read_only: true };
                entries.push((Path::new("etc").join(name), entry));
            }
        }
        entries.push((PathBuf::from("dev"), HostEntry::Dir));
        for dev in DEVICES {
            if Path::new("/dev").join(dev).exists() {
                entries
                    .push((Path::new("dev").join(dev), HostEntry::Bind { dir: false, device: true, read_only: false }));
            }
        }
        HostLayout { entries }
    }
}

/// Everything the forked child needs, prepared before the fork: after it, the child may not
/// allocate (another thread of the node may have held the allocator's lock).
#[derive(Debug)]
struct Plan {
    root: CString,
    steps: Vec<Step>,
    /// `uid_map` and `gid_map` lines, for a user namespace (not root).
    maps: Option<(Vec<u8>, Vec<u8>)>,
    root_user: bool,
    shared: Option<std::sync::Arc<Shared>>,
    /// [`JAIL_WORK`], where the program starts.
    cwd: CString,
}

fn c(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} holds a NUL", path.display())))
}

impl Plan {
    fn new(
        host: &HostLayout,
        root: &Path,
        work: &Path,
        program: Option<&Path>,
        shared: Option<std::sync::Arc<Shared>>,
    ) -> std::io::Result<Plan> {
        let mut steps = Vec::with_capacity(host.entries.len() + 3);
        for (rel, entry) in &host.entries {
            let at = c(&root.join(rel))?;
            steps.push(match entry {
                HostEntry::Dir => Step::Mkdir(at, 0o755),
                HostEntry::Symlink(target) => Step::Symlink { target: c(target)?, at },
                HostEntry::Bind { dir, device, read_only } => {
                    let host = c(&Path::new("/").join(rel))?;
                    Step::Bind { host, at, dir: *dir, device: *device, read_only: *read_only }
                }
            });
        }
        steps.push(Step::Mkdir(c(&root.join("tmp"))?, 0o1777));
        let inside = |p: &str| root.join(p.trim_start_matches('/'));
        steps.push(Step::Bind {
            host: c(work)?,
            at: c(&inside(JAIL_WORK))?,
            dir: true,
            device: false,
            read_only: false,
        });
        if let Some(program) = program {
            let at = c(&inside(JAIL_PROGRAM))?;
            steps.push(Step::Bind { host: c(program)?, at, dir: false, device: false, read_only: true });
        }
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        let root_user = uid.is_root();
        let maps = (!root_user).then(|| {
            (format!("{0} {0} 1", uid.as_raw()).into_bytes(), format!("{0} {0} 1", gid.as_raw()).into_bytes())
        });
        Ok(Plan { root: c(root)?, steps, maps, root_user, shared, cwd: c(Path::new(JAIL_WORK))? })
    }
}

/// Runs in the child between fork and exec: enters new namespaces, builds the private root,
/// forks once more so the program is PID 1 of its own PID namespace (this process waits for it
/// and exits with its status), and drops privileges. Only system calls; nothing allocates.
fn enter(plan: &Plan) -> std::io::Result<()> {
    use rustix::mount::{MountFlags as M, MountPropagationFlags as P};
    use rustix::thread::UnshareFlags as F;
    let mut flags = F::NEWNS | F::NEWPID;
    match &plan.shared {
        Some(shared) => {
            use rustix::thread::LinkNameSpaceType as T;
            use std::os::fd::AsFd;
            rustix::thread::move_into_link_name_space(shared.net.as_fd(), Some(T::Network))?;
            rustix::thread::move_into_link_name_space(shared.ipc.as_fd(), Some(T::InterProcessCommunication))?;
            rustix::thread::move_into_link_name_space(shared.uts.as_fd(), Some(T::HostNameAndNISDomainName))?;
        }
        None => flags |= F::NEWNET | F::NEWIPC | F::NEWUTS,
    }
    if plan.maps.is_some() {
        flags |= F::NEWUSER;
    }
    // SAFETY: `FILES` is not among the flags; the forked child has one thread.
    #[allow(unsafe_code)]
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    if let Some((uid_map, gid_map)) = &plan.maps {
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", uid_map)?;
        write_file(c"/proc/self/gid_map", gid_map)?;
    }
    rustix::mount::mount_change(c"/", P::PRIVATE | P::REC)?;
    rustix::mount::mount(c"tmpfs", plan.root.as_c_str(), c"tmpfs", M::NOSUID | M::NODEV, c"mode=0755,size=1g")?;
    for step in &plan.steps {
        match step {
            Step::Mkdir(at, mode) => {
                rustix::fs::mkdir(at.as_c_str(), rustix::fs::Mode::from_raw_mode(*mode))?;
                rustix::fs::chmod(at.as_c_str(), rustix::fs::Mode::from_raw_mode(*mode))?;
            }
            Step::Symlink { target, at } => rustix::fs::symlink(target.as_c_str(), at.as_c_str())?,
            Step::Bind { host, at, dir, device, read_only } => bind(host, at, *dir, *device, *read_only)?,
        }
    }
    rustix::fs::chmod(plan.root.as_c_str(), rustix::fs::Mode::from_raw_mode(0o555))?;
    become_init(plan)
}

fn write_file(path: &CStr, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, bytes)?;
    Ok(())
}

fn bind(host: &CStr, at: &CStr, dir: bool, device: bool, read_only: bool) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::MountFlags as M;
    match dir {
        true => rustix::fs::mkdir(at, Mode::from_raw_mode(0o755))?,
        false => {
            drop(rustix::fs::open(at, OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::from_raw_mode(0o644))?)
        }
    }
    rustix::mount::mount_bind_recursive(host, at)?;
    let mut flags = M::BIND | M::NOSUID;
    if !device {
        flags |= M::NODEV;
    }
    if read_only {
        flags |= M::RDONLY;
    }
    rustix::mount::mount_remount(at, flags, c"")?;
    Ok(())
}

/// Forks: the new process (PID 1 of the new PID namespace) enters the private root and returns
/// to exec the program; this one waits for it and exits with its status, never returning.
fn become_init(plan: &Plan) -> std::io::Result<()> {
    // SAFETY: fork in a single-threaded process (the node's forked child); the child only makes
    // system calls before it execs, and the parent only waits and exits.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            rustix::process::chroot(plan.root.as_c_str())?;
            rustix::process::chdir(plan.cwd.as_c_str())?;
            if plan.root_user {
                let nobody = rustix::process::Gid::from_raw(NOBODY);
                rustix::thread::set_thread_groups(&[])?;
                rustix::thread::set_thread_gid(nobody)?;
                rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(NOBODY))?;
            }
            rustix::thread::set_no_new_privs(true)?;
            Ok(())
        }
        child => wait_and_exit(child),
    }
}

/// The waiting half of [`become_init`]: holds no descriptor (so the node's pipes and its spawn
/// see only the program's), waits, and exits as the program did.
fn wait_and_exit(child: libc::pid_t) -> ! {
    // SAFETY: plain system calls on integers; `_exit` does not return and runs no destructors.
    #[allow(unsafe_code)]
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut status = 0;
        while libc::waitpid(child, &mut status, 0) == -1 && *libc::__errno_location() == libc::EINTR {}
        let code = match libc::WIFEXITED(status) {
            true => libc::WEXITSTATUS(status),
            false => 128 + libc::WTERMSIG(status),
        };
        libc::_exit(code)
    }
}

/// Gives the sandbox's folders to `nobody`, so the program can create its outputs; the cached
/// inputs linked into them stay root's and read only.
pub(crate) fn hand_over(dir: &Path) -> Result<(), String> {
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
