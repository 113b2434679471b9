//! The isolation around each program a node runs, the best its kernel allows.
//!
//! With namespaces (root, or unprivileged user namespaces) the program's process is cloned in
//! new mount and PID namespaces (and network, loopback only and down, IPC and UTS ones) and,
//! before it execs the program, builds a private root on a tmpfs that holds only the system's
//! program folders (`/usr`, `/bin`, `/lib*`, `/sbin`, read only, no setuid), what of `/etc` finds
//! programs and libraries, a few devices, a private `/tmp`, the sandbox at `/thunk` and a
//! shipped program at `/.program`; nothing else of the node's file system (its cache,
//! `/etc/passwd`, `/home`, other sandboxes) exists there. A thunk that asks for the network
//! (`network = true`) stays in the node's network namespace and sees `/etc`'s files that resolve
//! names and check certificates. The program is PID 1 of its PID
//! namespace, so every process it starts dies with it, `setsid` or not. A node running as root
//! runs programs as `nobody` (65534), who cannot write or `chmod` the root-owned, read-only
//! cached inputs linked into the sandbox. Every path is made ready before the clone, which
//! shares the node's memory rather than copying it (`spawn.rs`).
//!
//! Without namespaces (a Lambda function) the program is started through the node's own binary
//! as a *launcher* (`thunkmesh __jail -- PROGRAM...`, [`launcher_main`]), which only keeps the
//! process tree: it is the program's child subreaper, so descendants that detach are
//! reparented to it, and it kills every one of them when the program ends. The file system is
//! then shared with the node.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::spawn::{self, At, Exec, Failed, Orphans};

/// The first argument that makes the thunkmesh binary a (process-tree) launcher.
pub const LAUNCHER_ARG: &str = "__jail";

/// The launcher's argument that only exits 0: what the namespace probe runs.
const PROBE_ARG: &str = "--probe";

/// What the launcher says, as the first words of stderr, when it (not the program) failed.
pub(crate) const LAUNCHER_FAILED: &str = "thunkmesh jail:";

/// The exit status of a launcher that could not set the program up.
pub(crate) const SETUP_FAILED: i32 = 125;

/// The user and group a root node runs programs as.
const NOBODY: u32 = 65534;

/// Where the sandbox and a shipped program appear inside the private root.
pub const JAIL_WORK: &str = thunkmesh_protocol::thunk::SANDBOX_DIR;
const JAIL_PROGRAM: &str = "/.program";

/// The host folders a program sees (read only), where they exist.
const SYSTEM_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The host files of `/etc` a program sees (read only): what programs need to find other
/// programs and libraries (Debian's alternatives, the loader's cache), and nothing about users,
/// hosts or secrets.
const SYSTEM_ETC: [&str; 4] = ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d"];

/// The host files of `/etc` a program that uses the network sees besides (read only): what
/// resolves names and checks certificates.
const NETWORK_ETC: [&str; 4] = ["hosts", "resolv.conf", "nsswitch.conf", "ssl"];

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
    shared: Option<Arc<Shared>>,
    orphans: Arc<Orphans>,
}

/// Namespaces every program enters rather than making its own (a root node's): empty network,
/// IPC and UTS namespaces that hold nothing a program could leave to another (no interface but
/// a loopback that is down, no IPC objects the programs' user may not reach anyway), and a
/// mount namespace that holds the host's part of the private root, built once at `root`: each
/// program enters it and makes a copy of its own, then mounts only its sandbox, its `/tmp` and
/// its program. (Making a network namespace per program costs about 2 ms, building the root
/// about 0.3.)
#[derive(Debug)]
struct Shared {
    net: OwnedFd,
    ipc: OwnedFd,
    uts: OwnedFd,
    template: OwnedFd,
    root: PathBuf,
}

impl Shared {
    /// Makes them on a thread of its own (namespaces belong to threads), which then ends; the
    /// template's root is built at `root`, an empty folder of the node's.
    fn make(host: &HostLayout, root: &Path) -> std::io::Result<Shared> {
        let steps = host_steps(host, root)?;
        let (path, root) = (root.to_owned(), c(root)?);
        std::thread::spawn(move || {
            use rustix::mount::MountFlags as M;
            use rustix::thread::UnshareFlags as F;
            // SAFETY: `FILES` is not among the flags; this thread only opens its namespaces.
            #[allow(unsafe_code)]
            unsafe { rustix::thread::unshare_unsafe(F::NEWNET | F::NEWIPC | F::NEWUTS | F::NEWNS) }?;
            build_root(&root, &steps).map_err(|f| f.in_steps(&steps))?;
            rustix::mount::mount_remount(&root, M::RDONLY | M::NOSUID | M::NODEV, c"")?;
            let open = |name: &str| -> std::io::Result<OwnedFd> {
                Ok(std::fs::File::open(format!("/proc/thread-self/ns/{name}"))?.into())
            };
            Ok(Shared { net: open("net")?, ipc: open("ipc")?, uts: open("uts")?, template: open("mnt")?, root: path })
        })
        .join()
        .map_err(|_| std::io::Error::other("the thread making namespaces panicked"))?
    }
}

impl Jail {
    /// Finds out what this kernel allows (only what `launcher` permits) by running the node's
    /// own binary in a private root built under `scratch`.
    pub fn probe(launcher: &Launcher, scratch: &Path) -> Jail {
        let mut jail = Jail {
            launcher: launcher.binary.clone(),
            isolation: Isolation::Namespaces,
            host: HostLayout::find(),
            shared: None,
            orphans: Arc::default(),
        };
        if !launcher.namespaces {
            jail.isolation = Isolation::ProcessTree("as asked".into());
            return jail;
        }
        if rustix::process::getuid().is_root() {
            let root = scratch.join("template-root");
            let made = std::fs::create_dir_all(&root).and_then(|()| Shared::make(&jail.host, &root));
            match made {
                Ok(shared) => jail.shared = Some(Arc::new(shared)),
                Err(e) => tracing::warn!(error = %e, "no shared namespaces: each program makes its own"),
            }
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
        let ran = self.run_probe(&root, &work).map_err(|e| format!("namespaces: {e}"));
        let _ = std::fs::remove_dir(&work);
        let _ = std::fs::remove_dir(&root);
        match ran? {
            s if s.success() => Ok(()),
            s => Err(format!("the node's own binary in a private root ended with {s}")),
        }
    }

    /// Runs the node's own binary, shipped as a program, in a private root built in `root` with
    /// `work` as its sandbox (`__jail --probe`, which only exits 0): it needs nothing of the
    /// host's but the libraries the node itself loads.
    fn run_probe(&self, root: &Path, work: &Path) -> std::io::Result<std::process::ExitStatus> {
        let plan = Plan::new(Layout {
            host: &self.host,
            root,
            work,
            program: Some(&self.launcher),
            own_root: None,
            network: false,
            shared: self.shared.clone(),
        })?;
        let args = [LAUNCHER_ARG.to_owned(), PROBE_ARG.to_owned()];
        let exec =
            Exec::new(Path::new(JAIL_PROGRAM), &args, std::iter::empty(), [dev_null()?, dev_null()?, dev_null()?])?;
        plan.spawn(&exec, &self.launcher).map_err(std::io::Error::other)?.wait_blocking()
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

    /// Starts `program` in a private root (namespaces) or through the launcher (process tree).
    fn start(&self, program: Program<'_>) -> Result<Running, StartError> {
        if self.isolation != Isolation::Namespaces {
            // The launcher's own failures (the program's included) come back as its exit status.
            let mut command = tokio::process::Command::new(&self.launcher);
            command.arg(LAUNCHER_ARG).arg("--").arg(program.path);
            return start_plain(command, program).map_err(StartError::Sandbox);
        }
        self.orphans.reap();
        let shipped = program.shipped.then_some(program.path);
        let mut plan = Plan::new(Layout {
            host: &self.host,
            root: program.root,
            work: program.work,
            program: shipped,
            own_root: program.own_root,
            network: program.network,
            shared: self.shared.clone(),
        })
        .map_err(StartError::Sandbox)?;
        if let Some(dir) = program.dir {
            plan.cwd = c(&Path::new(JAIL_WORK).join(dir)).map_err(StartError::Program)?;
        }
        let path = if program.shipped { Path::new(JAIL_PROGRAM) } else { program.path };
        let streams = [dev_null().map_err(StartError::Sandbox)?, program.stdout, program.stderr];
        let exec = Exec::new(path, program.args, program.env, streams).map_err(StartError::Program)?;
        let started = plan.spawn(&exec, program.path)?;
        Ok(Running::Jailed(started.watch(self.orphans.clone()).map_err(StartError::Sandbox)?))
    }
}

fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

/// A program to start: what runs, with what, where, and where its output goes.
pub(crate) struct Program<'a> {
    pub path: &'a Path,
    /// A program shipped with the job, at `path` in the sandbox folder (else a host program).
    pub shipped: bool,
    pub args: &'a [String],
    /// Its whole environment.
    pub env: &'a BTreeMap<String, String>,
    /// The sandbox folder.
    pub work: &'a Path,
    /// The folder of `work` it starts in (`work` itself when `None`).
    pub dir: Option<&'a str>,
    /// An empty folder beside it, for a private root.
    pub root: &'a Path,
    /// Its standard output (its input is `/dev/null`).
    pub stdout: OwnedFd,
    /// Its standard error.
    pub stderr: OwnedFd,
    /// It may use the node's network.
    pub network: bool,
    /// It runs in a root made of its own files (its `.root/` inputs), laid out in this tree
    /// (`roots.rs`), not in the host's folders.
    pub own_root: Option<&'a Path>,
}

/// Starts `program` isolated by `jail`, or (none) as a plain child of the node in a process
/// group of its own.
pub(crate) fn start(jail: Option<&Jail>, program: Program<'_>) -> Result<Running, StartError> {
    match jail {
        Some(jail) => jail.start(program),
        None => start_plain(tokio::process::Command::new(program.path), program).map_err(StartError::Program),
    }
}

/// Why a program did not start, and so whose fault that is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The program itself cannot be run (not in the private root, not executable, a NUL in an
    /// argument): the thunk's fault, the same on any node.
    #[error("cannot start the program: {0}")]
    Program(std::io::Error),
    /// The sandbox around it could not be built (a namespace, a mount, no process to spare): the
    /// node's fault; another node may run the thunk.
    #[error("the sandbox could not be set up: {0}")]
    Sandbox(std::io::Error),
}

impl StartError {
    /// A failed step of the sandboxed child: its exec is the program's, the rest the sandbox's.
    fn of_step(failed: &Failed, error: std::io::Error) -> StartError {
        match failed.what == spawn::EXEC {
            true => StartError::Program(error),
            false => StartError::Sandbox(error),
        }
    }
}

fn start_plain(mut command: tokio::process::Command, program: Program<'_>) -> std::io::Result<Running> {
    command
        .args(program.args)
        .env_clear()
        .envs(program.env)
        .current_dir(program.dir.map_or_else(|| program.work.to_owned(), |dir| program.work.join(dir)))
        .stdin(Stdio::null())
        .stdout(program.stdout)
        .stderr(program.stderr)
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn()?;
    let group = child.id();
    Ok(Running::Plain { child, group })
}

/// A started program, until it is reaped. Dropping it kills the program and what it started.
#[derive(Debug)]
pub(crate) enum Running {
    /// A child of the node (through the launcher, or not isolated), leader of its process group
    /// (`None` once reaped).
    Plain { child: tokio::process::Child, group: Option<u32> },
    /// PID 1 of its own PID namespace.
    Jailed(spawn::Watched),
}

impl Running {
    /// Waits for the program's end and reaps it.
    pub(crate) async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Running::Plain { child, group } => {
                let status = child.wait().await;
                if status.is_ok() {
                    *group = None;
                }
                status
            }
            Running::Jailed(watched) => watched.wait().await,
        }
    }

    /// Kills the program and everything it started (its process group, or its PID namespace).
    pub(crate) fn kill(&mut self) {
        match self {
            Running::Plain { group, .. } => {
                if let Some(pid) = group.take() {
                    kill_group(pid);
                }
            }
            Running::Jailed(watched) => watched.kill(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills a process group.
#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: killpg only sends a signal and touches no memory of ours. The leader was spawned
    // with process_group(0), so the group's id is its pid, and it has not been reaped yet, so
    // the id cannot have been reused.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The launcher (process-tree isolation only): `thunkmesh __jail -- PROGRAM ARGS...`. Returns the
/// program's exit status (128 + the signal that killed it), or 125 after saying why
/// on stderr.
pub fn launcher_main(mut args: impl Iterator<Item = OsString>) -> i32 {
    let run = || -> Result<i32, String> {
        let first = args.next();
        if first.as_deref() == Some(PROBE_ARG.as_ref()) {
            return Ok(0);
        }
        if first.as_deref() != Some("--".as_ref()) {
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
    /// An empty file (to bind a file on).
    File(CString),
    Symlink {
        target: CString,
        at: CString,
    },
    /// Bind `host` at `at`, an existing folder or file.
    Bind {
        host: CString,
        at: CString,
        device: bool,
        read_only: bool,
    },
    /// A private `/tmp`.
    Tmpfs(CString),
}

/// The host's part of every private root, found once per node: what exists of the system
/// folders, `/etc`'s few files and the devices, relative to the root.
#[derive(Debug, Clone)]
struct HostLayout {
    /// (path relative to the root, what it is on the host).
    entries: Vec<(PathBuf, HostEntry)>,
    /// What of [`NETWORK_ETC`] exists, relative to the root, and whether it is a folder.
    network: Vec<(PathBuf, bool)>,
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
        let network = NETWORK_ETC
            .iter()
            .filter_map(|name| {
                Some((Path::new("etc").join(name), std::fs::metadata(Path::new("/etc").join(name)).ok()?.is_dir()))
            })
            .collect();
        HostLayout { entries, network }
    }
}

/// What a private root is made of, by name: the plan's input.
struct Layout<'a> {
    /// The host's folders and files that go in.
    host: &'a HostLayout,
    /// An empty folder to build it in (unused when the shared template serves).
    root: &'a Path,
    /// The sandbox folder, bound read-write at [`JAIL_WORK`].
    work: &'a Path,
    /// A program shipped with the job, bound read-only at [`JAIL_PROGRAM`].
    program: Option<&'a Path>,
    /// The thunk's own root, used instead of the host's folders.
    own_root: Option<&'a Path>,
    /// The program keeps the node's network.
    network: bool,
    /// The node's shared namespaces and template root, if it made them.
    shared: Option<Arc<Shared>>,
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
    shared: Option<Arc<Shared>>,
    /// The program uses the node's network namespace.
    network: bool,
    /// The thunk brings its own root (for errors).
    own_root: bool,
    /// [`JAIL_WORK`], where the program starts.
    cwd: CString,
}

fn c(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} holds a NUL", path.display())))
}

/// The steps that build the host's part of a private root at `root`, with the places where
/// each program's `/tmp`, sandbox and program are mounted, and where the network's files are
/// bound for a program that uses it.
fn host_steps(host: &HostLayout, root: &Path) -> std::io::Result<Vec<Step>> {
    let mut steps = Vec::with_capacity(2 * host.entries.len() + host.network.len() + 3);
    for (rel, entry) in &host.entries {
        entry_steps(&mut steps, root, rel, entry)?;
    }
    for (rel, dir) in &host.network {
        let at = c(&root.join(rel))?;
        steps.push(if *dir { Step::Mkdir(at, 0o755) } else { Step::File(at) });
    }
    sandbox_places(&mut steps, root)?;
    Ok(steps)
}

/// The steps that build a root of a thunk's own files at `root`: every top-level folder or file
/// of the tree `own` (its `.root/` inputs, `roots.rs`), bound read only, and the devices, with
/// the places of the sandbox, `/tmp` and a shipped program; nothing else of the host's.
fn own_root_steps(host: &HostLayout, root: &Path, own: &Path) -> std::io::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(own)? {
        let entry = entry?;
        let at = c(&root.join(entry.file_name()))?;
        let dir = entry.file_type()?.is_dir();
        steps.push(if dir { Step::Mkdir(at.clone(), 0o755) } else { Step::File(at.clone()) });
        steps.push(Step::Bind { host: c(&entry.path())?, at, device: false, read_only: true });
    }
    for (rel, entry) in host.entries.iter().filter(|(rel, _)| rel.starts_with("dev")) {
        entry_steps(&mut steps, root, rel, entry)?;
    }
    sandbox_places(&mut steps, root)?;
    Ok(steps)
}

/// The steps that put one entry of the host's layout at `rel` in `root`.
fn entry_steps(steps: &mut Vec<Step>, root: &Path, rel: &Path, entry: &HostEntry) -> std::io::Result<()> {
    let at = c(&root.join(rel))?;
    match entry {
        HostEntry::Dir => steps.push(Step::Mkdir(at, 0o755)),
        HostEntry::Symlink(target) => steps.push(Step::Symlink { target: c(target)?, at }),
        HostEntry::Bind { dir, device, read_only } => {
            steps.push(if *dir { Step::Mkdir(at.clone(), 0o755) } else { Step::File(at.clone()) });
            let host = c(&Path::new("/").join(rel))?;
            steps.push(Step::Bind { host, at, device: *device, read_only: *read_only });
        }
    }
    Ok(())
}

/// The empty places each program's `/tmp`, sandbox and shipped program are mounted on.
fn sandbox_places(steps: &mut Vec<Step>, root: &Path) -> std::io::Result<()> {
    let inside = |p: &str| c(&root.join(p.trim_start_matches('/')));
    steps.extend([Step::Mkdir(inside("/tmp")?, 0o755), Step::Mkdir(inside(JAIL_WORK)?, 0o755)]);
    steps.push(Step::File(inside(JAIL_PROGRAM)?));
    Ok(())
}

/// The steps that bind the network's files of `/etc` for a program that uses it.
fn network_steps(host: &HostLayout, root: &Path) -> std::io::Result<Vec<Step>> {
    let bind = |rel: &PathBuf| -> std::io::Result<Step> {
        Ok(Step::Bind { host: c(&Path::new("/").join(rel))?, at: c(&root.join(rel))?, device: false, read_only: true })
    };
    host.network.iter().map(|(rel, _)| bind(rel)).collect()
}

impl Plan {
    /// The plan for a program in the sandbox `work` (and `program`, if shipped): in a copy of
    /// the shared template, or in a root to build at `root`, an empty folder (always, for a
    /// program with its own root).
    fn new(layout: Layout<'_>) -> std::io::Result<Plan> {
        let Layout { host, root, work, program, own_root: own, network, shared } = layout;
        let own_root = own.is_some();
        let fresh = shared.is_none() || own_root;
        let root = match (&shared, fresh) {
            (Some(shared), false) => shared.root.clone(),
            _ => root.to_owned(),
        };
        let inside = |p: &str| c(&root.join(p.trim_start_matches('/')));
        let mut steps = match (fresh, own) {
            (false, _) => Vec::with_capacity(3),
            (true, None) => host_steps(host, &root)?,
            (true, Some(own)) => own_root_steps(host, &root, own)?,
        };
        steps.push(Step::Tmpfs(inside("/tmp")?));
        steps.push(Step::Bind { host: c(work)?, at: inside(JAIL_WORK)?, device: false, read_only: false });
        if let Some(program) = program {
            steps.push(Step::Bind { host: c(program)?, at: inside(JAIL_PROGRAM)?, device: false, read_only: true });
        }
        if network && !own_root {
            steps.extend(network_steps(host, &root)?);
        }
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        let root_user = uid.is_root();
        let maps = (!root_user).then(|| {
            (format!("{0} {0} 1", uid.as_raw()).into_bytes(), format!("{0} {0} 1", gid.as_raw()).into_bytes())
        });
        let cwd = c(Path::new(JAIL_WORK))?;
        Ok(Plan { root: c(&root)?, steps, maps, root_user, shared, network, own_root, cwd })
    }
}

impl Plan {
    /// Whether the root is built afresh on a tmpfs (not a copy of the shared template).
    fn fresh(&self) -> bool {
        self.shared.is_none() || self.own_root
    }

    /// The namespaces the child is made in: always PID, and mount, IPC, UTS and (unless the
    /// thunk uses the network) network ones unless it enters the node's shared ones; a user
    /// namespace when the node is not root.
    fn namespaces(&self) -> std::ffi::c_int {
        let mut flags = libc::CLONE_NEWPID;
        if self.shared.is_none() {
            flags |= libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
            if !self.network {
                flags |= libc::CLONE_NEWNET;
            }
        }
        if self.maps.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        flags
    }

    /// Clones the program's process in the plan's namespaces, builds its root and execs `exec`
    /// (`program` as the job names it, for errors).
    fn spawn(&self, exec: &Exec, program: &Path) -> Result<spawn::Started, StartError> {
        spawn::spawn(exec, self.namespaces(), &|| enter(self))
            .map_err(|f| StartError::of_step(&f, self.explain(f, program)))
    }

    /// A failure of the child's setup or exec of `program`, with the path it concerned.
    fn explain(&self, failed: Failed, program: &Path) -> std::io::Error {
        let kind = std::io::Error::from(failed.errno).kind();
        let message = match failed.what == spawn::EXEC {
            true if kind == std::io::ErrorKind::NotFound && self.own_root => {
                format!("{} (or the loader it names) is not in the thunk's own root (`.root/`)", program.display())
            }
            true if kind == std::io::ErrorKind::NotFound => format!(
                "{} is not in the private root, which has only the host's /usr, /bin, /sbin and /lib*",
                program.display()
            ),
            true => format!("exec {}: {}", program.display(), std::io::Error::from(failed.errno)),
            false => failed.in_steps(&self.steps).to_string(),
        };
        std::io::Error::new(kind, message)
    }
}

/// Runs in the cloned child, already in its new namespaces (see [`spawn`]): enters the shared
/// ones, maps its user, builds the private root, enters it and drops privileges. Only system
/// calls on what the plan prepared; nothing allocates.
fn enter(plan: &Plan) -> Result<(), Failed> {
    match &plan.shared {
        Some(shared) => {
            use rustix::thread::{LinkNameSpaceType as T, move_into_link_name_space as enter};
            use std::os::fd::AsFd;
            let what = "enter the shared network, IPC and UTS namespaces";
            if !plan.network {
                enter(shared.net.as_fd(), Some(T::Network)).at(what)?;
            }
            enter(shared.ipc.as_fd(), Some(T::InterProcessCommunication)).at(what)?;
            enter(shared.uts.as_fd(), Some(T::HostNameAndNISDomainName)).at(what)?;
            enter(shared.template.as_fd(), Some(T::Mount)).at("enter the private root's template")?;
            // SAFETY: `FILES` is not among the flags; this process has one thread.
            #[allow(unsafe_code)]
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
                .at("copy the private root's template")?;
        }
        None => {
            if let Some((uid_map, gid_map)) = &plan.maps {
                let what = "map the node's user into the user namespace";
                write_file(c"/proc/self/setgroups", b"deny").at(what)?;
                write_file(c"/proc/self/uid_map", uid_map).at(what)?;
                write_file(c"/proc/self/gid_map", gid_map).at(what)?;
            }
        }
    }
    match plan.fresh() {
        false => run_steps(&plan.steps)?,
        true => build_root(&plan.root, &plan.steps)?,
    }
    rustix::process::chroot(plan.root.as_c_str()).at("enter the private root")?;
    rustix::process::chdir(plan.cwd.as_c_str()).at("enter the sandbox")?;
    if plan.root_user {
        let what = "become nobody";
        rustix::thread::set_thread_groups(&[]).at(what)?;
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(NOBODY)).at(what)?;
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(NOBODY)).at(what)?;
    }
    // After the change of user, which clears it. The parent is the node's thread that cloned
    // this process: one of the runtime's workers, which live as long as the node.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .at("ask to die with the node")?;
    rustix::thread::set_no_new_privs(true).at("set no_new_privs")
}

impl Failed {
    /// This failure as an error naming the path of the step of `steps` it happened in.
    fn in_steps(self, steps: &[Step]) -> std::io::Error {
        let error = std::io::Error::from(self.errno);
        match self.step.and_then(|i| steps.get(i)) {
            Some(step) => {
                std::io::Error::new(error.kind(), format!("{} {}: {error}", self.what, step.at().to_string_lossy()))
            }
            None => std::io::Error::new(error.kind(), self.to_string()),
        }
    }
}

/// Mounts a tmpfs at `root` in this (new) mount namespace, with propagation to the node's
/// mounts cut, runs `steps` in it, and makes it unwritable. Only system calls.
fn build_root(root: &CStr, steps: &[Step]) -> Result<(), Failed> {
    use rustix::mount::{MountFlags as M, MountPropagationFlags as P};
    rustix::mount::mount_change(c"/", P::PRIVATE | P::REC).at("make the mounts private")?;
    rustix::mount::mount(c"tmpfs", root, c"tmpfs", M::NOSUID | M::NODEV, c"mode=0755,size=1m")
        .at("mount a tmpfs for the private root")?;
    run_steps(steps)?;
    rustix::fs::chmod(root, rustix::fs::Mode::from_raw_mode(0o555)).at("seal the private root")
}

fn run_steps(steps: &[Step]) -> Result<(), Failed> {
    for (index, step) in steps.iter().enumerate() {
        step.run().map_err(|errno| Failed { what: step.what(), step: Some(index), errno })?;
    }
    Ok(())
}

impl Step {
    fn run(&self) -> rustix::io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        use rustix::mount::MountFlags as M;
        match self {
            Step::Mkdir(at, mode) => {
                rustix::fs::mkdir(at.as_c_str(), Mode::from_raw_mode(*mode))?;
                rustix::fs::chmod(at.as_c_str(), Mode::from_raw_mode(*mode))
            }
            Step::File(at) => {
                let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC;
                rustix::fs::open(at.as_c_str(), flags, Mode::from_raw_mode(0o644)).map(drop)
            }
            Step::Symlink { target, at } => rustix::fs::symlink(target.as_c_str(), at.as_c_str()),
            Step::Bind { host, at, device, read_only } => bind(host, at, *device, *read_only),
            Step::Tmpfs(at) => {
                let options = c"mode=1777,size=1g";
                rustix::mount::mount(c"tmpfs", at.as_c_str(), c"tmpfs", M::NOSUID | M::NODEV, options)
            }
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Step::Mkdir(..) => "make the folder",
            Step::File(..) => "make the file",
            Step::Symlink { .. } => "make the link",
            Step::Bind { .. } => "bind a host path at",
            Step::Tmpfs(..) => "mount a tmpfs at",
        }
    }

    /// Where in the private root (as the node sees it) the step acts.
    fn at(&self) -> &CStr {
        match self {
            Step::Mkdir(at, _)
            | Step::File(at)
            | Step::Symlink { at, .. }
            | Step::Bind { at, .. }
            | Step::Tmpfs(at) => at,
        }
    }
}

fn write_file(path: &CStr, bytes: &[u8]) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, bytes)?;
    Ok(())
}

fn bind(host: &CStr, at: &CStr, device: bool, read_only: bool) -> rustix::io::Result<()> {
    use rustix::mount::MountFlags as M;
    rustix::mount::mount_bind_recursive(host, at)?;
    let mut flags = M::BIND | M::NOSUID;
    if !device {
        flags |= M::NODEV;
    }
    if read_only {
        flags |= M::RDONLY;
    }
    rustix::mount::mount_remount(at, flags, c"")
}

/// Gives the sandbox's folders to `nobody`, so the program can create its outputs; the cached
/// inputs linked into them, and the thunk's own root, stay root's and read only.
pub(crate) fn hand_over(root: &Path) -> std::io::Result<()> {
    hand_over_below(root, &|name| name == thunkmesh_protocol::thunk::ROOT_DIR)
}

fn hand_over_below(dir: &Path, keep: &dyn Fn(&std::ffi::OsStr) -> bool) -> std::io::Result<()> {
    let nobody = Some(rustix::fs::Uid::from_raw(NOBODY));
    let group = Some(rustix::fs::Gid::from_raw(NOBODY));
    let at = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    rustix::fs::chown(dir, nobody, group).map_err(|e| at(e.into()))?;
    for entry in std::fs::read_dir(dir).map_err(at)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !keep(&entry.file_name()) {
            hand_over_below(&entry.path(), &|_| false)?;
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

    /// A namespace jail without a probe (the node's binary is not at hand in a unit test).
    fn jail() -> Option<Jail> {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipped: building private roots needs root here (CI runs as root)");
            return None;
        }
        let host = HostLayout::find();
        Some(Jail {
            launcher: "/bin/true".into(),
            isolation: Isolation::Namespaces,
            host,
            shared: None,
            orphans: Arc::default(),
        })
    }

    fn program<'a>(path: &'a Path, work: &'a Path, root: &'a Path, env: &'a BTreeMap<String, String>) -> Program<'a> {
        let null = || dev_null().expect("/dev/null");
        Program {
            path,
            shipped: false,
            args: &[],
            env,
            work,
            dir: None,
            root,
            stdout: null(),
            stderr: null(),
            network: false,
            own_root: None,
        }
    }

    /// The binds a plan makes, as (where inside the root, read only).
    fn binds(plan: &Plan) -> Vec<(String, bool)> {
        let root = plan.root.to_string_lossy().into_owned();
        let inside = |at: &CString| at.to_string_lossy().trim_start_matches(root.as_str()).to_owned();
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind { at, read_only, .. } => Some((inside(at), *read_only)),
                _ => None,
            })
            .collect()
    }

    /// Issue 29: the plan is built and checked apart from the clone that carries it out.
    #[test]
    fn a_plan_binds_the_sandbox_writable_the_program_read_only_and_the_network_only_when_asked() {
        let host = HostLayout::find();
        let (root, work, program) = (Path::new("/r"), Path::new("/w"), Path::new("/p"));
        let layout = |network: bool| Layout {
            host: &host,
            root,
            work,
            program: Some(program),
            own_root: None,
            network,
            shared: None,
        };
        let plan = Plan::new(layout(false)).expect("a plan");
        let bound = binds(&plan);
        assert!(bound.contains(&(JAIL_WORK.to_owned(), false)), "{bound:?}");
        assert!(bound.contains(&(JAIL_PROGRAM.to_owned(), true)), "{bound:?}");
        assert!(bound.iter().any(|(at, ro)| at == "/usr" && *ro), "the host's /usr, read only: {bound:?}");
        assert!(plan.steps.iter().any(|s| matches!(s, Step::Tmpfs(at) if at.to_string_lossy() == "/r/tmp")));
        assert_ne!(plan.namespaces() & libc::CLONE_NEWNET, 0, "no network: a namespace of its own");
        assert!(!bound.iter().any(|(at, _)| at.ends_with("resolv.conf")), "{bound:?}");
        let networked = Plan::new(layout(true)).expect("a plan");
        assert_eq!(networked.namespaces() & libc::CLONE_NEWNET, 0, "the node's network");
        assert!(binds(&networked).len() > bound.len(), "the network's files are bound too");
        let own_tree = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(own_tree.path().join("bin")).expect("a folder of the own root");
        let own = Layout { own_root: Some(own_tree.path()), ..layout(true) };
        let own = Plan::new(own).expect("a plan");
        assert!(!binds(&own).iter().any(|(at, _)| at == "/usr"), "an own root has no host folders");
    }

    /// Issue 28's code fault: a sandbox that cannot be built was reported as the thunk's exit
    /// status, so the job failed instead of the thunk moving to another node. A program missing
    /// from the private root is the thunk's fault; a root that cannot be built is the node's.
    #[tokio::test]
    async fn a_missing_program_is_the_thunks_fault_and_a_broken_sandbox_the_nodes() {
        let Some(jail) = jail() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let (work, root, file) = (dir.path().join("work"), dir.path().join("root"), dir.path().join("a-file"));
        for folder in [&work, &root] {
            std::fs::create_dir(folder).expect("folder");
        }
        std::fs::write(&file, "not a folder").expect("file");
        let env = BTreeMap::new();
        let missing = jail.start(program(Path::new("/no/such/program"), &work, &root, &env));
        assert!(matches!(missing, Err(StartError::Program(_))), "{missing:?}");
        let broken = jail.start(program(Path::new("/bin/true"), &work, &file, &env));
        assert!(matches!(broken, Err(StartError::Sandbox(_))), "{broken:?}");
        let fine = jail.start(program(Path::new("/bin/true"), &work, &root, &env));
        let status = fine.expect("a program in a good sandbox starts").wait().await.expect("wait");
        assert!(status.success(), "{status:?}");
    }
}
