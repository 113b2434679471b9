//! Forcing one thunk: fetch the inputs the node lacks (peers first, then storage), lay out a
//! sandbox, run the program with only the thunk's environment and under its timeout, then
//! hash and cache the outputs. An output that starts with the tail marker is parsed as a tail
//! and reported as more thunks to force.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use thunkmesh_protocol::job::{JobSpec, SpecKind, TAIL_MARKER, is_tail};
use thunkmesh_protocol::thunk::{STDOUT_OUTPUT, in_root};
use thunkmesh_protocol::wire::{
    Assignment, ErrorCode, Mode, OutputValue, Source, Stored, SubmittedThunk, TaskDone, TaskFailed, ToRendezvous,
    TransferStats, UploadRequest, WireError,
};
use thunkmesh_protocol::{Id, Program, Ref};
use thunkmesh_store::Store;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::cache::{Cache, Pinned, hash_file_blocking, hash_reader};
use crate::jail::Jail;
use crate::peer::Peers;
use crate::sandbox::{Sandbox, Sandboxes};

/// Largest tail a thunk may write.
const MAX_TAIL_BYTES: u64 = 1 << 20;

/// Most thunks one tail may define.
const MAX_TAIL_THUNKS: usize = 10_000;

/// Free bytes on the cache's disk below which the node counts it as full.
const DISK_FULL_BELOW: u64 = 1 << 20;

/// How much of a failed program's output (stdout and stderr) is reported.
const OUTPUT_TAIL: usize = 2048;

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

/// Why a task failed, and which inputs could not be had.
struct Fail {
    error: WireError,
    unavailable: Vec<Id>,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail { error: WireError::new(code, message), unavailable: Vec::new() }
    }

    fn node(message: impl std::fmt::Display) -> Fail {
        Fail::new(ErrorCode::NodeError, message.to_string())
    }
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

    async fn store(&self, url: &str) -> Result<Store, String> {
        let mut stores = self.stores.lock().await;
        if let Some(s) = stores.get(url) {
            return Ok(s.clone());
        }
        // The AWS CLI's chain: environment, AWS_PROFILE, the instance's or function's role.
        let store = Store::connect(url, &thunkmesh_store::AwsSettings::default()).await.map_err(|e| e.to_string())?;
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
/// and outputs stay pinned in the cache until the guard returned with it is dropped (once the
/// report is sent), so that no eviction races the rendezvous' view of this node.
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
            if f.error.code == ErrorCode::NodeError
                && !ctx.disk_is_full()
                && let Some(full) = ctx.full_disk()
            {
                f.error.message = format!("{full}; {}", f.error.message);
            }
            debug!(task = a.task, error = %f.error.message, "task failed");
            ToRendezvous::Failed(TaskFailed { task: a.task, error: f.error, unavailable: f.unavailable, stats })
        }
    }
}

async fn run(ctx: &Ctx, a: &Assignment, stats: &mut TransferStats) -> Result<Vec<(String, OutputValue)>, Fail> {
    a.thunk.validate().map_err(|e| Fail::new(ErrorCode::BadMessage, format!("assignment is not valid: {e}")))?;
    if a.thunk.refs().count() != a.resolved.len() {
        return Err(Fail::new(
            ErrorCode::BadMessage,
            "assignment resolves a different number of refs than the thunk has",
        ));
    }
    fetch_inputs(ctx, a, stats).await?;
    let sandbox = ctx.sandboxes.take().map_err(|e| Fail::node(format!("cannot make a sandbox: {e}")))?;
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

/// Storage mode: writes every output to storage (with a tail, the tail and the files it names)
/// before the task is reported done.
async fn store_outputs(
    ctx: &Ctx,
    a: &Assignment,
    outputs: &[(String, OutputValue)],
    stats: &mut TransferStats,
) -> Result<(), Fail> {
    let mut blobs = Vec::new();
    for (_, value) in outputs {
        match value {
            OutputValue::Blob(id) => blobs.push(*id),
            OutputValue::Tail { blob, thunks, .. } => {
                blobs.push(*blob);
                let values = thunks.iter().flat_map(|t| t.thunk.refs());
                blobs.extend(values.filter_map(|r| if let Ref::Blob(b) = r { Some(*b) } else { None }));
            }
        }
    }
    blobs.sort();
    blobs.dedup();
    let store = ctx.store(&a.store).await.map_err(Fail::node)?;
    let refused = |e| Fail::new(ErrorCode::StoreError, format!("cannot write an output to {}: {e}", a.store));
    for blob in blobs.into_iter().filter(|b| ctx.cache.has(*b)) {
        stats.storage_puts += 1;
        store.put_file(blob, &ctx.cache.path(blob)).await.map_err(refused)?;
        stats.storage_bytes_written += blob.size;
    }
    Ok(())
}

async fn fetch_inputs(ctx: &Ctx, a: &Assignment, stats: &mut TransferStats) -> Result<(), Fail> {
    // Storage mode is the baseline: every input comes from storage, cached or not.
    let wanted = a.sources.iter().filter(|s| a.mode == Mode::Storage || !ctx.cache.has(s.blob));
    let results = futures::future::join_all(wanted.map(|s| fetch_one(ctx, s.blob, &s.sources, &a.store))).await;
    let mut unavailable = Vec::new();
    let mut first_error = None;
    for (blob, result, moved) in results {
        *stats += moved;
        if let Err(e) = result {
            unavailable.push(blob);
            first_error.get_or_insert(e);
        }
    }
    let missing: Vec<Id> = a.resolved.iter().copied().filter(|b| !ctx.cache.has(*b)).collect();
    match first_error {
        None if missing.is_empty() => Ok(()),
        // The rendezvous counted on a copy this node evicted before it heard: it plans again.
        None => Err(Fail {
            error: WireError::new(
                ErrorCode::InputUnavailable,
                format!("{} input(s) are no longer in this node's cache and no source was offered", missing.len()),
            ),
            unavailable: missing,
        }),
        Some(e) => Err(Fail {
            error: WireError::new(
                ErrorCode::InputUnavailable,
                format!("could not fetch {} input(s): {e}", unavailable.len()),
            ),
            unavailable,
        }),
    }
}

/// Tries each source in turn; returns the blob, the outcome and what was moved.
async fn fetch_one(ctx: &Ctx, blob: Id, sources: &[Source], store: &str) -> (Id, Result<(), String>, TransferStats) {
    let mut moved = TransferStats::default();
    let mut errors = Vec::new();
    for source in sources {
        let outcome = match source {
            Source::Peer { addr, fingerprint } => fetch_from_peer(ctx, blob, addr, *fingerprint, &mut moved).await,
            Source::Storage => fetch_from_storage(ctx, blob, store, &mut moved).await,
            Source::Relay { node } => fetch_via_relay(ctx, blob, *node, &mut moved).await,
        };
        match outcome {
            Ok(()) => return (blob, Ok(()), moved),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        errors.push("no source offered".into());
    }
    (blob, Err(format!("{blob}: {}", errors.join("; "))), moved)
}

async fn fetch_from_peer(
    ctx: &Ctx,
    blob: Id,
    addr: &str,
    fp: [u8; 32],
    moved: &mut TransferStats,
) -> Result<(), String> {
    let addr = addr.parse().map_err(|_| format!("peer address `{addr}` is not ip:port"))?;
    let started = Instant::now();
    let bytes = ctx.peers.fetch(addr, fp, blob, &ctx.cache).await.map_err(|e| format!("peer {addr}: {e}"))?;
    moved.peer_fetches += 1;
    moved.peer_bytes += bytes;
    moved.peer_micros += micros_since(started);
    Ok(())
}

async fn fetch_via_relay(ctx: &Ctx, blob: Id, from: u64, moved: &mut TransferStats) -> Result<(), String> {
    let started = Instant::now();
    let bytes = ctx.peers.fetch_relayed(from, blob, &ctx.cache).await.map_err(|e| format!("relay: {e}"))?;
    moved.relay_fetches += 1;
    moved.relay_bytes += bytes;
    moved.relay_micros += micros_since(started);
    Ok(())
}

async fn fetch_from_storage(ctx: &Ctx, blob: Id, url: &str, moved: &mut TransferStats) -> Result<(), String> {
    let store = ctx.store(url).await?;
    let tmp = ctx.cache.temp_path();
    moved.storage_gets += 1;
    let started = Instant::now();
    let got = store.get_blob_to_file(blob, &tmp).await;
    moved.storage_read_micros += micros_since(started);
    match got {
        Ok(true) => {
            moved.storage_bytes_read += blob.size;
            ctx.cache.adopt(&tmp, blob).await.map_err(|e| e.to_string())
        }
        Ok(false) => Err("not in storage".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn run_in(
    ctx: &Ctx,
    a: &Assignment,
    lease: Lease<'_>,
    stats: &mut TransferStats,
) -> Result<Vec<(String, OutputValue)>, Fail> {
    let root = lease.sandbox().root();
    let Placed { program, linked, own_root } = place_inputs(ctx, a, lease.sandbox()).await?;
    let started = Instant::now();
    let mut ran = execute(ctx, a, &program, own_root.as_deref(), lease.sandbox()).await;
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
        return Err(Fail {
            error: output.error(ErrorCode::NodeError, "the sandbox could not be set up".into()),
            unavailable: vec![],
        });
    }
    if !status.success() {
        let message = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("killed by signal {}", std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
        };
        if let Some(full) = full {
            return Err(Fail {
                error: output.error(ErrorCode::NodeError, format!("{full}; the program ended with {message}")),
                unavailable: vec![],
            });
        }
        return Err(Fail { error: output.error(ErrorCode::ExitStatus, message), unavailable: vec![] });
    }
    let mut outputs = Vec::with_capacity(finished.outputs.len());
    for (name, found) in finished.outputs {
        let missing = |why: &str| Fail::new(ErrorCode::MissingOutput, format!("output `{name}` {why}"));
        let value = match found {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing("was not created")),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Err(missing("is not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(missing("is reached through a link, not a folder of the sandbox"));
            }
            Err(e) => return Err(Fail::node(e)),
            Ok(Inspected::Blob(blob)) => OutputValue::Blob(blob),
            Ok(Inspected::Tail(len)) => read_tail_output(ctx, a, &root, &name, len).await?,
        };
        outputs.push((name, value));
    }
    Ok(outputs)
}

/// An input hard-linked from the cache: its file (inode) and modification time when linked.
struct Linked {
    blob: Id,
    path: String,
    inode: u64,
    mtime: SystemTime,
}

/// Lays out the sandbox (the shipped program, the inputs) in one blocking call, which also checks
/// a host program against its pin; returns the path of the program to run and the inputs that
/// were linked rather than copied.
async fn place_inputs(ctx: &Ctx, a: &Assignment, sandbox: &Sandbox) -> Result<Placed, Fail> {
    let root = sandbox.root();
    let mut resolved = a.resolved.iter().copied();
    let mut places = Vec::with_capacity(a.thunk.inputs.len() + 1);
    let (program, host) = match &a.thunk.program {
        Program::Ref(_) => {
            let blob = resolved.next().ok_or_else(|| Fail::node("no blob for the program"))?;
            places.push((blob, "the program".to_owned(), sandbox.program()));
            (sandbox.program(), None)
        }
        // A program of the thunk's own root was checked against its pin with the thunk (it is
        // one of the inputs, which are verified like any other).
        Program::Host { path, .. } if a.thunk.has_root() => (PathBuf::from(path), None),
        Program::Host { path, pin } => (PathBuf::from(path), Some((PathBuf::from(path), *pin))),
    };
    if a.thunk.has_root() {
        own_root_possible(ctx.jail.as_deref())?;
    }
    // The files of an own root go to the node's tree of that root, made once (`roots.rs`).
    let mut root_files = Vec::new();
    for (path, blob) in a.thunk.inputs.keys().zip(resolved) {
        match in_root(path) {
            Some(file) => root_files.push((file.trim_start_matches('/').to_owned(), blob)),
            None => places.push((blob, format!("input `{path}`"), root.join(path))),
        }
    }
    let start_folder = a.thunk.dir.as_ref().map(|dir| root.join(dir));
    let output_folders: Vec<PathBuf> = a
        .thunk
        .outputs
        .iter()
        .filter_map(|o| Some(root.join(o).parent()?.to_owned()))
        .filter(|f| *f != root)
        .chain(start_folder)
        .collect();
    let (cache, pins) = (ctx.cache.clone(), ctx.host_pins.clone());
    let nobody = ctx.jail.as_deref().is_some_and(Jail::as_nobody).then_some(root.clone());
    let layout = move || -> Result<(Vec<Linked>, Option<PathBuf>), Fail> {
        if let Some((path, pin)) = host {
            let shown = path.display();
            let actual = pins.pin(&path).map_err(|e| Fail::node(format!("host program {shown}: {e}")))?;
            if actual != pin {
                return Err(Fail::node(format!("host program {shown} on this node is {actual}, the job pinned {pin}")));
            }
        }
        let linked = link_inputs(&cache, places).map_err(Fail::node)?;
        let own_root = match root_files.is_empty() {
            true => None,
            false => Some(crate::roots::tree(&cache, &root_files).map_err(Fail::node)?),
        };
        // The folders of the declared outputs (and the one it starts in) exist, as they did
        // where the call was recorded.
        for folder in &output_folders {
            std::fs::create_dir_all(folder).map_err(Fail::node)?;
        }
        // The program's folders are its user's; the linked inputs stay the node's.
        if let Some(root) = &nobody {
            crate::jail::hand_over(root).map_err(Fail::node)?;
        }
        Ok((linked, own_root))
    };
    let (linked, own_root) = tokio::task::spawn_blocking(layout).await.map_err(Fail::node)??;
    Ok(Placed { program, linked, own_root })
}

/// A laid-out sandbox: the program to run, the inputs linked from the cache, and the tree of
/// the thunk's own root, if it brings one.
struct Placed {
    program: PathBuf,
    linked: Vec<Linked>,
    own_root: Option<PathBuf>,
}

/// A thunk with its own root (a hermetic toolchain) needs a private root made of its files: only
/// a node whose kernel allows namespaces can give it one.
fn own_root_possible(jail: Option<&Jail>) -> Result<(), Fail> {
    let isolation = jail.map(Jail::isolation);
    if isolation == Some(&crate::jail::Isolation::Namespaces) {
        return Ok(());
    }
    let here = isolation.map_or_else(|| "off".to_owned(), ToString::to_string);
    Err(Fail::node(format!(
        "the thunk brings its own root file system (`.root/` inputs, such as a hermetic toolchain), which \
         only a node with namespaces can give it; this node's sandbox is {here}"
    )))
}

/// Hard-links (or, where that fails, copies) cached objects into a sandbox (blocking).
fn link_inputs(cache: &Cache, places: Vec<(Id, String, PathBuf)>) -> std::io::Result<Vec<Linked>> {
    let mut linked = Vec::with_capacity(places.len());
    for (blob, label, to) in places {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let from = cache.path(blob);
        let failed = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{label}: {e}"));
        if std::fs::hard_link(&from, &to).is_ok() {
            let meta = std::fs::metadata(&to).map_err(failed)?;
            let (inode, mtime) = (meta.ino(), meta.modified().map_err(failed)?);
            linked.push(Linked { blob, path: label, inode, mtime });
        } else {
            // Another file system, or too many links: a private, writable copy.
            std::fs::copy(&from, &to).map_err(failed)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).map_err(failed)?;
        }
    }
    Ok(linked)
}

/// What the sandbox held after the program: each wanted output, and whether the sandbox was
/// emptied already (it is, unless an output is a tail whose files are still to be read).
struct Finished {
    outputs: Vec<(String, std::io::Result<Inspected>)>,
    emptied: bool,
}

/// After the program, in one blocking call: fails the task (and drops the object from the cache)
/// if the program wrote to an input linked from the cache, then inspects the wanted outputs and
/// empties the sandbox when nothing in it is needed any more.
async fn finish(
    ctx: &Ctx,
    linked: Vec<Linked>,
    root: &Path,
    wanted: Vec<String>,
    sandbox: &Sandbox,
) -> Result<Finished, Fail> {
    let (cache, root, emptier) = (ctx.cache.clone(), root.to_owned(), sandbox.emptier());
    let work = move || {
        if let Some(path) = written_input(&cache, &linked) {
            return Err(Fail::new(
                ErrorCode::ModifiedInput,
                format!("the program wrote to {path}; inputs are shared and read-only, write a new file instead"),
            ));
        }
        let outputs: Vec<_> =
            wanted.into_iter().map(|name| (name.clone(), inspect_output(&cache, &root, &name))).collect();
        let tail = outputs.iter().any(|(_, found)| matches!(found, Ok(Inspected::Tail(_))));
        let emptied = !tail && emptier.empty().is_ok();
        Ok(Finished { outputs, emptied })
    };
    tokio::task::spawn_blocking(work).await.map_err(Fail::node)?
}

/// The first input the program wrote to, if any; such objects leave the cache. Only the linked
/// file itself counts: if the cache entry was replaced meanwhile (a concurrent fetch of the same
/// object), the program did not write it.
fn written_input(cache: &Cache, linked: &[Linked]) -> Option<String> {
    let changed = |l: &Linked| {
        let meta = std::fs::metadata(cache.path(l.blob));
        meta.is_ok_and(|m| m.ino() == l.inode && (m.len() != l.blob.size || m.modified().ok() != Some(l.mtime)))
    };
    let written: Vec<&Linked> = linked.iter().filter(|l| changed(l)).collect();
    for l in &written {
        cache.forget(l.blob);
    }
    // A root tree may link the same file: none is trusted any more.
    if !written.is_empty() {
        crate::roots::drop_all(cache);
    }
    written.first().map(|l| l.path.clone())
}

/// Runs the program under the thunk's timeout; returns its status and the tail of its output.
async fn execute(
    ctx: &Ctx,
    a: &Assignment,
    program: &Path,
    own_root: Option<&Path>,
    sandbox: &Sandbox,
) -> Result<(std::process::ExitStatus, OutputTail), Fail> {
    let (reader, writer) = std::io::pipe().map_err(Fail::node)?;
    let (root, jail_root) = (sandbox.root(), sandbox.jail_root());
    let stdout = match a.thunk.stdout {
        true => std::fs::File::create_new(root.join(STDOUT_OUTPUT)).map_err(Fail::node)?.into(),
        false => writer.try_clone().map_err(Fail::node)?.into(),
    };
    let started = crate::jail::start(
        ctx.jail.as_deref(),
        crate::jail::Program {
            path: program,
            shipped: matches!(a.thunk.program, Program::Ref(_)),
            args: &a.thunk.args,
            env: &a.thunk.env,
            work: &root,
            dir: a.thunk.dir.as_deref(),
            root: &jail_root,
            stdout,
            stderr: writer.into(),
            network: a.thunk.network,
            own_root,
        },
    );
    // Until it is reaped, dropping this (a cancelled task) kills the program and what it started.
    let mut child = started.map_err(|e| match e {
        crate::jail::StartError::Program(_) => Fail::new(ErrorCode::ExitStatus, e.to_string()),
        crate::jail::StartError::Sandbox(_) => Fail::new(ErrorCode::NodeError, e.to_string()),
    })?;
    let mut output = OutputTail::default();
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).map_err(Fail::node)?;
    let timeout = a.thunk.timeout();
    match tokio::time::timeout(timeout, output.read_until_exit(&mut child, &mut pipe)).await {
        Ok(status) => Ok((status.map_err(Fail::node)?, output)),
        Err(_) => {
            child.kill();
            let _ = child.wait().await;
            let message = format!("timed out after {}", humantime::format_duration(timeout));
            Err(Fail { error: output.error(ErrorCode::Timeout, message), unavailable: vec![] })
        }
    }
}

/// The last bytes a program wrote to stdout and stderr, interleaved as a terminal shows them.
#[derive(Default)]
struct OutputTail {
    bytes: std::collections::VecDeque<u8>,
}

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(OUTPUT_TAIL)..];
        let overflow = (self.bytes.len() + keep.len()).saturating_sub(OUTPUT_TAIL);
        self.bytes.drain(..overflow);
        self.bytes.extend(keep);
    }

    /// Reads the pipe until the program exits, then what is left in it. A process the program
    /// left behind may hold the pipe open, so its end is not waited for.
    async fn read_until_exit(
        &mut self,
        child: &mut crate::jail::Running,
        pipe: &mut tokio::net::unix::pipe::Receiver,
    ) -> std::io::Result<std::process::ExitStatus> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut open = true;
        loop {
            tokio::select! {
                status = child.wait() => {
                    while let Ok(n @ 1..) = pipe.try_read(&mut buf) {
                        self.push(&buf[..n]);
                    }
                    return status;
                }
                read = pipe.read(&mut buf), if open => match read {
                    Ok(n @ 1..) => self.push(&buf[..n]),
                    _ => open = false,
                },
            }
        }
    }

    /// For a program whose standard output is a file (its result): puts the end of that file
    /// before what it wrote to standard error, so a failure shows what it printed.
    fn put_stdout_first(&mut self, stdout: &Path) {
        let stderr: Vec<u8> = self.bytes.drain(..).collect();
        self.push(&file_tail(stdout, OUTPUT_TAIL).unwrap_or_default());
        self.push(&stderr);
    }

    fn starts_with(&self, prefix: &str) -> bool {
        self.bytes.iter().copied().take(prefix.len()).eq(prefix.bytes())
    }

    /// A failure with this output (if any) as its detail.
    fn error(&self, code: ErrorCode, message: String) -> WireError {
        let (front, back) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).trim_end().to_owned();
        let detail =
            if text.is_empty() { String::new() } else { format!("output (last {OUTPUT_TAIL} bytes):\n{text}") };
        WireError { code, message, detail }
    }
}

/// The last `len` bytes of a file (all of a shorter one).
fn file_tail(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(len as u64)))?;
    let mut tail = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut tail)?;
    Ok(tail)
}

fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What an output file turned out to be.
enum Inspected {
    /// Hashed and moved into the cache.
    Blob(Id),
    /// A tail of this many bytes, left in place to be parsed.
    Tail(u64),
}

/// Reads an output once: checks it is a regular file, recognises a tail by its first bytes, and
/// otherwise hashes it and moves it into the cache (blocking).
fn inspect_output(cache: &Cache, root: &Path, name: &str) -> std::io::Result<Inspected> {
    use std::io::Read;
    let path = &in_sandbox(root, name)?;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; TAIL_MARKER.len()];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if is_tail(&head[..filled]) {
        return Ok(Inspected::Tail(meta.len()));
    }
    let id = hash_reader(&head[..filled], file)?;
    cache.adopt_blocking(path, id).map_err(|e| e.source)?;
    Ok(Inspected::Blob(id))
}

/// The file `rel` names in the sandbox at `root`, reached through real folders only: a folder a
/// program replaced by a link (to anywhere on the node) is refused with `NotADirectory`, and so
/// is any `..` or absolute part. The node reads outputs in its own view of the file system, where
/// such a link would lead outside the sandbox.
fn in_sandbox(root: &Path, rel: &str) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut path = root.to_owned();
    let parts: Vec<Component<'_>> = Path::new(rel).components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(part) = part else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
        };
        path.push(part);
        if i + 1 < parts.len() && !std::fs::symlink_metadata(&path)?.is_dir() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
        }
    }
    Ok(path)
}

/// Parses a tail output: its values are files in the sandbox, its host programs are pinned here.
async fn read_tail_output(ctx: &Ctx, a: &Assignment, root: &Path, name: &str, len: u64) -> Result<OutputValue, Fail> {
    let path = &root.join(name);
    let label = format!("tail `{name}` of thunk `{}`", a.name);
    let bad = |why: String| Fail::new(ErrorCode::BadTail, why);
    if len > MAX_TAIL_BYTES {
        return Err(bad(format!("{label}: larger than {MAX_TAIL_BYTES} bytes")));
    }
    let text = tokio::fs::read_to_string(path).await.map_err(|e| bad(format!("{label}: {e}")))?;
    let spec = JobSpec::parse(&text, &label, SpecKind::Tail).map_err(|e| bad(e.to_string()))?;
    if spec.thunks.len() > MAX_TAIL_THUNKS {
        return Err(bad(format!("{label}: more than {MAX_TAIL_THUNKS} thunks")));
    }
    let mut values = BTreeMap::new();
    for (value, file) in &spec.values {
        let fail = |e: &dyn std::fmt::Display| bad(format!("{label}: value `{value}`: {e}"));
        let file = in_sandbox(root, file).map_err(|e| fail(&e))?;
        if !std::fs::symlink_metadata(&file).map_err(|e| fail(&e))?.is_file() {
            return Err(bad(format!("{label}: value `{value}` is not a regular file")));
        }
        let id = ctx.cache.copy_in(&file).await.map_err(|e| fail(&e))?;
        values.insert(value.clone(), id);
    }
    let mut hosts = BTreeMap::new();
    for host in spec.host_programs() {
        let id = ctx.host_pin(Path::new(host)).await.map_err(|e| bad(format!("{label}: host program {host}: {e}")))?;
        hosts.insert(host.to_owned(), id);
    }
    let resolved = spec.resolve(&values, &hosts).map_err(|e| bad(format!("{label}: {e}")))?;
    let blob = ctx.cache.adopt_hashed(path).await.map_err(Fail::node)?;
    let thunks = resolved.thunks.into_iter().map(|t| SubmittedThunk { name: t.name, thunk: t.thunk }).collect();
    let result = resolved.result.ok_or_else(|| bad(format!("{label}: no result")))?;
    Ok(OutputValue::Tail { blob, thunks, result })
}

/// Puts a cached object into storage, as the rendezvous asked.
pub(crate) async fn upload(ctx: &Ctx, req: &UploadRequest) -> (ToRendezvous, Pinned) {
    let pinned = ctx.cache.pin(&[req.blob]);
    let mut stats = TransferStats::default();
    let error = match put(ctx, req, &mut stats).await {
        Ok(()) => None,
        Err(e) => {
            warn!(blob = %req.blob, error = %e.message, "upload failed");
            Some(e)
        }
    };
    (ToRendezvous::Stored(Stored { job: req.job, blob: req.blob, error, stats }), pinned)
}

/// Puts the object into the job's store: a failure of the store itself is `StoreError`, naming
/// the store and the cause; a node that lacks the object or cannot open the store, `NodeError`.
async fn put(ctx: &Ctx, req: &UploadRequest, stats: &mut TransferStats) -> Result<(), WireError> {
    if !ctx.cache.has(req.blob) {
        return Err(WireError::new(ErrorCode::NodeError, "not in this node's cache"));
    }
    let store = ctx.store(&req.store).await.map_err(|e| WireError::new(ErrorCode::NodeError, e))?;
    stats.storage_puts += 1;
    let written = store.put_file(req.blob, &ctx.cache.path(req.blob)).await;
    written.map_err(|e| WireError::new(ErrorCode::StoreError, format!("{}: {e}", req.store)))?;
    stats.storage_bytes_written += req.blob.size;
    Ok(())
}
