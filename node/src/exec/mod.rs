//! Forcing one thunk: fetch the inputs the node lacks (peers first, then storage), lay out a
//! sandbox, run the program with only the thunk's environment and under its timeout, then
//! hash and cache the outputs. An output that starts with the tail marker is parsed as a tail
//! and reported as more thunks to force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use thunkmesh_protocol::Id;
use thunkmesh_protocol::thunk::STDOUT_OUTPUT;
use thunkmesh_protocol::wire::{Assignment, Mode, OutputValue, TaskDone, ToRendezvous, TransferStats};
use thunkmesh_store::Store;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::{debug, warn};

mod error;
mod fetch;
mod inspect;
mod layout;
mod program;
mod upload;

pub(crate) use error::{Fault, TaskError, ThunkFault};
pub(crate) use upload::upload;

use fetch::fetch_inputs;
use inspect::{Inspected, finish, read_tail_output};
use layout::{Placed, place_inputs};
use program::execute;
use upload::store_outputs;

use crate::cache::{Cache, Pinned, hash_file_blocking};
use crate::jail::Jail;
use crate::peer::Peers;
use crate::sandbox::{Sandbox, Sandboxes};

/// Free bytes on the cache's disk below which the node counts it as full.
const DISK_FULL_BELOW: u64 = 1 << 20;

/// What every task on this node shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) cache: Arc<Cache>,
    pub(crate) peers: Peers,
    sandboxes: Arc<Sandboxes>,
    stores: Mutex<HashMap<String, Store>>,
    host_pins: Arc<HostPins>,
    /// Sandboxes being removed: off the path between a program's exit and its report.
    cleanups: std::sync::Mutex<JoinSet<()>>,
    /// A task failed because the cache's disk was full: the node should stop taking work.
    disk_full: std::sync::atomic::AtomicBool,
    /// What isolates programs (`None`: nothing).
    pub(crate) jail: Option<Arc<Jail>>,
}

impl Ctx {
    pub(crate) fn new(cache: Arc<Cache>, peers: Peers, jail: Option<Arc<Jail>>) -> Ctx {
        let sandboxes = Sandboxes::new(cache.work_dir());
        Ctx {
            cache,
            peers,
            sandboxes,
            stores: Mutex::default(),
            host_pins: Arc::default(),
            cleanups: Default::default(),
            disk_full: Default::default(),
            jail,
        }
    }

    /// Whether a task has failed for want of disk space (see [`Ctx::full_disk`]).
    pub(crate) fn disk_is_full(&self) -> bool {
        self.disk_full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Says so if the disk under the cache has less than [`DISK_FULL_BELOW`] free, and
    /// remembers it: the node then drains rather than fail the next task the same way.
    fn full_disk(&self) -> Option<String> {
        let dir = self.cache.work_dir();
        let stat = rustix::fs::statvfs(dir).ok()?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free >= DISK_FULL_BELOW {
            return None;
        }
        self.disk_full.store(true, std::sync::atomic::Ordering::Relaxed);
        Some(format!("the disk holding the node's cache ({}) is full: {free} bytes free", dir.display()))
    }

    /// Empties a sandbox for reuse in the background (tasks owned here, reaped as they finish).
    fn give_back_later(&self, sandbox: Sandbox) {
        let mut cleanups = self.cleanups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while cleanups.try_join_next().is_some() {}
        let sandboxes = self.sandboxes.clone();
        cleanups.spawn_blocking(move || sandboxes.give_back(sandbox));
    }

    async fn store(&self, url: &str) -> Result<Store, thunkmesh_store::StoreError> {
        let mut stores = self.stores.lock().await;
        if let Some(s) = stores.get(url) {
            return Ok(s.clone());
        }
        // The AWS CLI's chain: environment, AWS_PROFILE, the instance's or function's role.
        let store = Store::connect(url, &thunkmesh_store::AwsSettings::default()).await?;
        stores.insert(url.to_owned(), store.clone());
        Ok(store)
    }

    /// The id of a host program's bytes (see [`HostPins::pin`]).
    async fn host_pin(&self, path: &Path) -> std::io::Result<Id> {
        let (pins, path) = (self.host_pins.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || pins.pin(&path)).await.map_err(std::io::Error::other)?
    }
}

/// The ids of host programs' bytes, by path.
#[derive(Debug, Default)]
struct HostPins(std::sync::Mutex<HashMap<PathBuf, (u64, SystemTime, Id)>>);

impl HostPins {
    /// The id of a host program's bytes, rehashed only when its size or mtime changed (blocking).
    fn pin(&self, path: &Path) -> std::io::Result<Id> {
        let meta = std::fs::metadata(path)?;
        let key = (meta.len(), meta.modified()?);
        if let Some(&(len, mtime, id)) = self.lock().get(path)
            && (len, mtime) == key
        {
            return Ok(id);
        }
        let id = hash_file_blocking(path)?;
        self.lock().insert(path.to_owned(), (key.0, key.1, id));
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (u64, SystemTime, Id)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Forces an assignment and says how it went, in the message the rendezvous expects; its inputs
/// and outputs stay pinned in the cache until the guard returned with it is dropped (when the
/// node's core takes the task's end; the core evicts only after the report is sent), so that no
/// eviction races the rendezvous' view of this node.
pub(crate) async fn force(ctx: &Ctx, a: &Assignment) -> (ToRendezvous, Pinned) {
    let mut pinned = ctx.cache.pin(&a.resolved);
    let report = force_pinned(ctx, a, &mut pinned).await;
    (report, pinned)
}

async fn force_pinned(ctx: &Ctx, a: &Assignment, pinned: &mut Pinned) -> ToRendezvous {
    let mut stats = TransferStats::default();
    match run(ctx, a, &mut stats).await {
        Ok(outputs) => {
            let blobs: Vec<Id> = outputs
                .iter()
                .filter_map(|(_, v)| if let OutputValue::Blob(b) = v { Some(*b) } else { None })
                .collect();
            pinned.add(&blobs);
            ToRendezvous::Done(TaskDone { task: a.task, outputs, stats })
        }
        Err(mut f) => {
            // The node's own writes failing for space: say so, whatever step it was.
            if f.fault() == Fault::Node
                && !ctx.disk_is_full()
                && let Some(full) = ctx.full_disk()
            {
                f = f.after(&full);
            }
            match f.fault() {
                Fault::Node => warn!(task = a.task, error = %f, "task failed for this node's fault: it runs elsewhere"),
                _ => debug!(task = a.task, error = %f, "task failed"),
            }
            ToRendezvous::Failed(f.into_report(a.task, stats))
        }
    }
}

async fn run(ctx: &Ctx, a: &Assignment, stats: &mut TransferStats) -> Result<Vec<(String, OutputValue)>, TaskError> {
    let bad = |why: String| TaskError::new(Fault::Assignment, why);
    a.thunk.validate().map_err(|e| bad(format!("assignment is not valid: {e}")))?;
    if a.thunk.refs().count() != a.resolved.len() {
        return Err(bad("assignment resolves a different number of refs than the thunk has".into()));
    }
    fetch_inputs(ctx, a, stats).await?;
    let sandbox = ctx.sandboxes.take().map_err(|e| TaskError::node(format!("cannot make a sandbox: {e}")))?;
    let outputs = run_in(ctx, a, Lease { ctx, sandbox: Some(sandbox) }, stats).await?;
    if a.mode == Mode::Storage {
        store_outputs(ctx, a, &outputs, stats).await?;
    }
    Ok(outputs)
}

/// A sandbox in use; given back (emptied in the background) when dropped, also when the task
/// is cancelled mid-run.
struct Lease<'a> {
    ctx: &'a Ctx,
    sandbox: Option<Sandbox>,
}

impl Lease<'_> {
    fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("a lease holds its sandbox until dropped")
    }

    /// Ends the lease on a sandbox that was already emptied.
    fn end_emptied(mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.ctx.sandboxes.reuse(sandbox);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.ctx.give_back_later(sandbox);
        }
    }
}

async fn run_in(
    ctx: &Ctx,
    a: &Assignment,
    lease: Lease<'_>,
    stats: &mut TransferStats,
) -> Result<Vec<(String, OutputValue)>, TaskError> {
    let root = lease.sandbox().root();
    let Placed { started: how, linked } = place_inputs(ctx, a, lease.sandbox()).await?;
    let started = Instant::now();
    let mut ran = execute(ctx, a, &how, lease.sandbox()).await;
    stats.program_micros += micros_since(started);
    let succeeded = matches!(&ran, Ok((status, _)) if status.success());
    if let (Ok((_, output)), true, false) = (&mut ran, a.thunk.stdout, succeeded) {
        output.put_stdout_first(&root.join(STDOUT_OUTPUT));
    }
    // A program that failed on a full disk is not at fault: checked while its files still
    // fill the sandbox.
    let full = if succeeded { None } else { ctx.full_disk() };
    let wanted = if succeeded { a.thunk.outputs.clone() } else { Vec::new() };
    let finished = finish(ctx, linked, &root, wanted, lease.sandbox()).await?;
    if finished.emptied {
        lease.end_emptied();
    }
    let (status, output) = ran?;
    if status.code() == Some(crate::jail::SETUP_FAILED) && output.starts_with(crate::jail::LAUNCHER_FAILED) {
        return Err(TaskError::node("the sandbox could not be set up").with_detail(output.detail()));
    }
    if !status.success() {
        let message = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("killed by signal {}", std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
        };
        let error = match full {
            Some(full) => TaskError::node(format!("{full}; the program ended with {message}")),
            None => TaskError::thunk(ThunkFault::Exit, message),
        };
        return Err(error.with_detail(output.detail()));
    }
    let mut outputs = Vec::with_capacity(finished.outputs.len());
    for (name, found) in finished.outputs {
        let missing = |why: &str| TaskError::thunk(ThunkFault::MissingOutput, format!("output `{name}` {why}"));
        let value = match found {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing("was not created")),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Err(missing("is not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(missing("is reached through a link, not a folder of the sandbox"));
            }
            Err(e) => return Err(TaskError::node(e)),
            Ok(Inspected::Blob(blob)) => OutputValue::Blob(blob),
            Ok(Inspected::Tail(len)) => read_tail_output(ctx, a, &root, &name, len).await?,
        };
        outputs.push((name, value));
    }
    Ok(outputs)
}

fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
