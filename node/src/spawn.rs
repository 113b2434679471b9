//! Starting a program in new namespaces without copying the node, and watching it to its end.
//!
//! `fork` copies the node's page tables, which on this kind of machine costs milliseconds for a
//! node of a few tens of MiB, and `posix_spawn` cannot enter namespaces. So the child is made by
//! `clone` with `CLONE_VM | CLONE_VFORK`, as `posix_spawn` makes its own: it runs on a stack of
//! its own in the node's memory while the calling thread waits, until it has exec'd the program
//! or failed. It is made in its new namespaces at once (`CLONE_NEWPID` among them, so the program
//! is PID 1 of its own PID namespace without a second fork), runs the setup it is given, installs
//! its standard streams, puts every signal back to its default and execs. Everything it touches
//! is prepared before the clone: it makes only system calls, never allocates or takes a lock,
//! and reports a failure by writing into memory it shares with the node. The program is then
//! watched and reaped through a pidfd; one dropped before it was reaped is killed at once and
//! reaped at a later start ([`Orphans`]).

use std::cell::Cell;
use std::ffi::{CString, c_char, c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use rustix::process::{WaitId, WaitIdOptions};

/// What a failed `execve` is called in [`Failed`].
pub(crate) const EXEC: &str = "exec";

/// The child's stack: the setup's few frames and the system calls' arguments.
const STACK: usize = 64 * 1024;

/// A step of the child's setup that failed: what it did (`step` indexes the setup's own list,
/// where it has one) and the error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failed {
    pub what: &'static str,
    pub step: Option<usize>,
    pub errno: Errno,
}

/// Names the system call of the child's setup that a result came from.
pub(crate) trait At<T> {
    fn at(self, what: &'static str) -> Result<T, Failed>;
}

impl<T> At<T> for rustix::io::Result<T> {
    fn at(self, what: &'static str) -> Result<T, Failed> {
        self.map_err(|errno| Failed { what, step: None, errno })
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, std::io::Error::from(self.errno))
    }
}

/// What the child execs, as the C strings and pointer arrays `execve` takes, and the descriptors
/// it installs as its standard input, output and error.
pub(crate) struct Exec {
    program: CString,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Owns what `argv` and `envp` point into.
    _strings: Vec<CString>,
    streams: [OwnedFd; 3],
}

fn c_string(bytes: &[u8], what: &str) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::other(format!("{what} holds a NUL")))
}

impl Exec {
    /// `program` (also its `argv[0]`) with `args`, only the environment `env`, and `streams` as
    /// its standard input, output and error.
    pub(crate) fn new<'a>(
        program: &Path,
        args: &[String],
        env: impl IntoIterator<Item = (&'a String, &'a String)>,
        streams: [OwnedFd; 3],
    ) -> std::io::Result<Exec> {
        let program = c_string(program.as_os_str().as_bytes(), "the program's path")?;
        let mut strings = vec![program.clone()];
        for arg in args {
            strings.push(c_string(arg.as_bytes(), "an argument")?);
        }
        let argc = strings.len();
        for (key, value) in env {
            strings.push(c_string(format!("{key}={value}").as_bytes(), "the environment")?);
        }
        let pointers = |s: &[CString]| s.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect::<Vec<_>>();
        let (argv, envp) = (pointers(&strings[..argc]), pointers(&strings[argc..]));
        // Installing them as 0, 1 and 2 must not overwrite one of them: keep them above.
        let streams = streams.map(|fd| match fd.as_raw_fd() {
            0..=2 => rustix::io::fcntl_dupfd_cloexec(&fd, 3).map_err(std::io::Error::from),
            _ => Ok(fd),
        });
        let [a, b, c] = streams;
        Ok(Exec { program, argv, envp, _strings: strings, streams: [a?, b?, c?] })
    }
}

/// The setup the child runs in its new namespaces before it execs.
pub(crate) type Setup<'a> = &'a (dyn Fn() -> Result<(), Failed> + Sync);

/// What the child reads, and where it says why it failed.
struct Child<'a> {
    exec: &'a Exec,
    setup: Setup<'a>,
    failed: Cell<Option<Failed>>,
}

/// Clones a child in the namespaces `namespaces` (`CLONE_NEW*` flags), which runs `setup` and
/// execs `exec`. Returns once the program runs, or with the step that failed.
pub(crate) fn spawn(exec: &Exec, namespaces: c_int, setup: Setup<'_>) -> Result<Started, Failed> {
    let mut stack = vec![0u8; STACK];
    // The stack grows down from its end, which must be 16-byte aligned.
    let top = stack.as_mut_ptr().wrapping_add(STACK);
    let top = top.wrapping_sub(top as usize % 16).cast::<c_void>();
    let child = Child { exec, setup, failed: Cell::new(None) };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | namespaces | libc::SIGCHLD;
    let mut pidfd: c_int = -1;
    let blocked = SignalsBlocked::new();
    // SAFETY: with CLONE_VM | CLONE_VFORK the child runs `child_main` on `stack` in our memory
    // while this thread waits, until it has exec'd or exited; `child` and `stack` outlive that.
    // The child only makes system calls on what `exec` prepared (see `child_main`). Signals are
    // blocked meanwhile, so no handler of the node runs on the child's stack.
    #[allow(unsafe_code)]
    let pid = unsafe {
        libc::clone(child_main, top, flags, std::ptr::from_ref(&child).cast_mut().cast(), &mut pidfd as *mut c_int)
    };
    drop(blocked);
    if pid == -1 {
        return Err(Failed { what: "clone", step: None, errno: last_errno() });
    }
    // SAFETY: CLONE_PIDFD wrote a new descriptor of ours there, which nothing else owns.
    #[allow(unsafe_code)]
    let started = Started { pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) } };
    match child.failed.get() {
        Some(failed) => {
            let _ = started.wait_blocking();
            Err(failed)
        }
        None => Ok(started),
    }
}

/// The clone's entry point: runs the setup and execs, or says why not and exits.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `spawn` passed a `Child` that outlives this process's use of our memory.
    #[allow(unsafe_code)]
    let child = unsafe { &*arg.cast_const().cast::<Child<'_>>() };
    let failed = match (child.setup)() {
        Ok(()) => exec(child.exec),
        Err(failed) => failed,
    };
    child.failed.set(Some(failed));
    // SAFETY: `_exit` ends this process without running anything of the node's.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(crate::jail::SETUP_FAILED)
    }
}

/// Installs the streams, puts every signal back to its default, unblocks them and execs;
/// returns only on failure.
fn exec(exec: &Exec) -> Failed {
    // SAFETY: plain system calls on integers, on what `exec` prepared and on structures of this
    // frame. Each stream was kept above 2 (`Exec::new`), so installing one overwrites no other.
    #[allow(unsafe_code)]
    unsafe {
        for (fd, target) in exec.streams.iter().zip(0..) {
            if libc::dup2(fd.as_raw_fd(), target) == -1 {
                return Failed { what: "install a standard stream", step: None, errno: last_errno() };
            }
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        let default: libc::sigaction = std::mem::zeroed();
        for signal in 1..=64 {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(exec.program.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
    }
    Failed { what: EXEC, step: None, errno: last_errno() }
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

/// The calling thread's signals, blocked until this is dropped.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: fills and passes structures of this frame.
        #[allow(unsafe_code)]
        unsafe {
            let (mut all, mut old): (libc::sigset_t, libc::sigset_t) = (std::mem::zeroed(), std::mem::zeroed());
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        #[allow(unsafe_code)]
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// A program that runs, not yet watched by the runtime.
#[derive(Debug)]
pub(crate) struct Started {
    pidfd: OwnedFd,
}

impl Started {
    /// Waits for the program's end in this thread.
    pub(crate) fn wait_blocking(&self) -> std::io::Result<ExitStatus> {
        loop {
            match reap(&self.pidfd, WaitIdOptions::EXITED) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(status) => return status.ok_or_else(|| std::io::Error::other("waitid returned nothing")),
            }
        }
    }

    /// Watches the program from the runtime; if dropped before it was reaped, it is killed and
    /// left to `orphans`.
    pub(crate) fn watch(self, orphans: Arc<Orphans>) -> std::io::Result<Watched> {
        use tokio::io::{Interest, unix::AsyncFd};
        // SAFETY: an `OwnedFd`'s descriptor is open and stays the same until it is dropped.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(self.pidfd, Interest::READABLE) };
        match registered {
            Ok(pidfd) => Ok(Watched { pidfd: Some(pidfd), orphans }),
            Err(e) => {
                let (pidfd, cause) = e.into_parts();
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                orphans.adopt(pidfd);
                Err(cause)
            }
        }
    }
}

/// Reaps the program behind `pidfd` if it has ended (`NOHANG` among `options`) or once it has.
fn reap(pidfd: &OwnedFd, options: WaitIdOptions) -> std::io::Result<Option<ExitStatus>> {
    let status = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), options)?;
    Ok(status.map(|s| match (s.exit_status(), s.terminating_signal()) {
        (Some(code), _) => ExitStatus::from_raw((code & 0xff) << 8),
        (None, Some(signal)) => ExitStatus::from_raw(signal | if s.dumped() { 0x80 } else { 0 }),
        (None, None) => ExitStatus::from_raw(0x7f),
    }))
}

/// A program watched by the runtime through its pidfd.
#[derive(Debug)]
pub(crate) struct Watched {
    /// `None` once reaped.
    pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    orphans: Arc<Orphans>,
}

impl Watched {
    /// Waits for the program's end and reaps it.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let pidfd = self.pidfd.as_ref().ok_or_else(|| std::io::Error::other("the program was reaped already"))?;
        loop {
            let mut ready = pidfd.readable().await?;
            if let Some(status) = reap(pidfd.get_ref(), WaitIdOptions::EXITED | WaitIdOptions::NOHANG)? {
                self.pidfd = None;
                return Ok(status);
            }
            ready.clear_ready();
        }
    }

    /// Kills the program, and with it (PID 1 of its namespace) everything it started.
    pub(crate) fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(pidfd.get_ref(), rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.kill();
        if let Some(pidfd) = self.pidfd.take() {
            self.orphans.adopt(pidfd.into_inner());
        }
    }
}

/// Killed programs not reaped yet: each start reaps those that have ended.
#[derive(Debug, Default)]
pub(crate) struct Orphans(Mutex<Vec<OwnedFd>>);

impl Orphans {
    fn adopt(&self, pidfd: OwnedFd) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(pidfd);
    }

    /// Reaps every orphan that has ended.
    pub(crate) fn reap(&self) {
        let mut orphans = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        orphans.retain(|pidfd| matches!(reap(pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOHANG), Ok(None)));
    }
}
