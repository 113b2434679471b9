//! The scheduling core: a pure, synchronous state machine that decides which node forces which
//! thunk, where each input can be had, and when a job is done.
//!
//! Events go in (`node_joined`, `submit`, `task_done`, `task_failed`, `stored`, `node_left`);
//! decisions come out of [`Planner::poll`]. Nothing here touches a socket, a file or a clock:
//! time is what [`Planner::advance`] says, and ties are broken in an order drawn from a seed, so
//! the rendezvous drives it live, the simulator drives it with modelled time, and tests drive it
//! step by step. Where a thunk runs is decided in [`place`]: by default the node where it can
//! start soonest, counting the wait for a slot and the transfer of every input the node lacks.
//! Objects are tracked wherever they live (node caches, storage); an object that no longer lives
//! anywhere is recomputed from the thunk that produced it (lineage).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod idhash;
mod job;
pub mod place;
mod speculate;
mod verify;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use thunkmesh_protocol::wire::{
    ErrorCode, JobOutcome, Mode, OutputValue, Reduction, Submission, TransferStats, WireError,
};
use thunkmesh_protocol::{Id, Ref};

use idhash::{IdMap, IdSet};
pub use job::Order;
use job::{Job, Resolved, State};
pub use place::{Estimates, Link, PlannerConfig, Policy};
use place::{Input, LEAST_LOADED, Transfers};

/// A node, as numbered by its driver (the rendezvous numbers it by its session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

/// A job, as numbered by its driver (the rendezvous numbers it by its client's session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct JobId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {}", self.0)
    }
}
/// One attempt at forcing one thunk.
pub type TaskId = u64;

/// How long a node has to answer a request to upload an object: [`UPLOAD_GRACE`], plus the
/// object at [`UPLOAD_FLOOR_RATE`], at most [`UPLOAD_MOST`].
pub fn upload_allowance(size: u64) -> Duration {
    (UPLOAD_GRACE + Duration::from_secs(size / UPLOAD_FLOOR_RATE)).min(UPLOAD_MOST)
}

/// What any upload is allowed beyond its bytes: a store's first-byte latency many times over.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(10);

/// The slowest upload rate allowed for, in bytes a second.
pub const UPLOAD_FLOOR_RATE: u64 = 4_000_000;

/// The longest any upload is waited for (a node that says it holds 1 TiB is not waited for three
/// days).
pub const UPLOAD_MOST: Duration = Duration::from_secs(3600);

/// Attempts at one thunk that fail for reasons outside the thunk before the job gives up.
pub const MAX_ATTEMPTS: u32 = 5;

/// Where an object can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// In a node's cache.
    Node(NodeId),
    /// In the job's storage.
    Storage,
    /// Carried by the job (`Submission::carried`): the assignment brings its bytes.
    Carried,
}

/// Run a thunk on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// Who runs it.
    pub node: NodeId,
    /// Whose thunk it is.
    pub job: JobId,
    /// This attempt.
    pub task: TaskId,
    /// The thunk.
    pub thunk: Id,
    /// Every ref of the thunk resolved to a blob, in the order of `Thunk::refs`.
    pub resolved: Vec<Id>,
    /// For each blob the node lacks, where it can be had (peers first, then storage).
    pub sources: Vec<(Id, Vec<Place>)>,
    /// Why this node.
    pub why: Why,
}

/// Why a task went to the node it went to (for the web view and the reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The policy's choice among the nodes when it became ready (under `locality`: the soonest
    /// expected start there plus the time to fetch what the node lacks).
    Chosen,
    /// It was held for this busy node, which holds its inputs, until a slot there was free.
    Waited {
        /// How long it was held.
        held: Duration,
    },
    /// Its wait for a busy node ran out: the policy chose again among the nodes with a free slot.
    WaitedInVain,
    /// A copy of a straggling task, on another node.
    Copy,
    /// Run again on another node to check a result (`verify`).
    Check,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a task.
    Assign(Assign),
    /// Ask a node to put an object into storage (a target that lives only in a cache).
    Upload {
        /// The node holding it.
        node: NodeId,
        /// The job that needs it stored.
        job: JobId,
        /// The object.
        blob: Id,
    },
    /// A thunk's outputs are final: record the reduction.
    Resolved {
        /// The job.
        job: JobId,
        /// The thunk's name in the job.
        name: String,
        /// The memo entry.
        reduction: Reduction,
        /// The node that ran it.
        node: NodeId,
        /// [`Id::digest_of`] the blobs its refs resolved to.
        inputs: [u8; 32],
    },
    /// A thunk checked on other nodes gave different results (see `verify`); the job fails when
    /// some node was outvoted, and goes on unrecorded when none could decide.
    Disagreed {
        /// The job.
        job: JobId,
        /// The thunk's name in the job.
        name: String,
        /// Nodes whose result the others outvoted.
        outvoted: Vec<NodeId>,
        /// Nodes whose results differ with none to decide.
        undecided: Vec<NodeId>,
    },
    /// The job's targets are all in storage.
    JobDone {
        /// The job.
        job: JobId,
        /// Targets and counts.
        outcome: JobOutcome,
    },
    /// Remove objects from a node's cache: no thunk of any job will read them any more (see
    /// [`EARLY_DROP_BYTES`]).
    Drop {
        /// The node holding them.
        node: NodeId,
        /// The objects.
        blobs: Vec<Id>,
    },
    /// Stop a task: a copy of the same thunk finished first.
    Cancel {
        /// Where it runs.
        node: NodeId,
        /// The task.
        task: TaskId,
    },
    /// A draining node has uploaded what others still need and runs nothing: it may go.
    Drained {
        /// The node.
        node: NodeId,
    },
    /// The job cannot complete.
    JobFailed {
        /// The job.
        job: JobId,
        /// Why, naming the thunk.
        error: WireError,
    },
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The job id is already in use.
    #[error("job {0} already exists")]
    DuplicateJob(JobId),
    /// A thunk is malformed.
    #[error("thunk `{name}` is not valid: {reason}")]
    InvalidThunk {
        /// The thunk's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A ref points at a thunk or output that the job does not have.
    #[error("`{0}` refers to a thunk output this job does not define")]
    UnknownRef(String),
}

#[derive(Debug, Default)]
struct NodeState {
    slots: u32,
    running: BTreeSet<TaskId>,
    /// What its cache holds (a hash set: a node holds tens of thousands, and each task's inputs
    /// are looked up here).
    holds: IdSet,
    /// Leaving: takes no new work; uploads what others still need first.
    draining: bool,
    /// Uploads asked of this node, not yet answered: a draining node is released only when
    /// they are, and a node that vanishes gives them back to their jobs.
    uploads: BTreeSet<(JobId, Id)>,
    /// Told it may go.
    released: bool,
    /// Its place among equally busy nodes (drawn from the seed).
    order: u64,
    /// Its key in the free-slot index, while it has one.
    indexed: Option<(u32, u64, NodeId)>,
    /// The bytes of what `holds` holds.
    held_bytes: u64,
}

impl NodeState {
    fn free_slots(&self) -> u32 {
        if self.draining { 0 } else { self.slots.saturating_sub(self.running.len() as u32) }
    }

    fn hold(&mut self, blob: Id) {
        if self.holds.insert(blob) {
            self.held_bytes += blob.size;
        }
    }

    fn let_go(&mut self, blob: Id) {
        if self.holds.remove(&blob) {
            self.held_bytes -= blob.size;
        }
    }
}

/// Where a blob can be had, for one job's purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Avail {
    /// In storage.
    Stored,
    /// Only in node caches.
    Cached,
    /// Nowhere.
    Nowhere,
}

/// A store (a `--store` URL) as the planner knows it: an index into [`Planner::stores`]. Facts
/// about storage hold for one store only: an object in one user's bucket is not in another's.
type StoreKey = u32;

/// `node` no longer holds `blob`; an object held and stored nowhere leaves the index.
fn forget_holder(objects: &mut IdMap<Places>, blob: Id, node: NodeId) {
    if let Some(p) = objects.get_mut(&blob) {
        p.nodes.remove(&node);
        if p.nodes.is_empty() && p.stores.is_empty() {
            objects.remove(&blob);
        }
    }
}

#[derive(Debug, Default)]
struct Places {
    /// The stores known to hold it: a few at most, and most objects are in one, so an exact
    /// list (made anew when it changes) rather than a vector with room to grow.
    stores: Box<[StoreKey]>,
    nodes: BTreeSet<NodeId>,
}

impl Places {
    fn in_store(&self, store: StoreKey) -> bool {
        self.stores.contains(&store)
    }

    fn stored_in(&mut self, store: StoreKey) {
        if !self.in_store(store) {
            self.stores = self.stores.iter().copied().chain([store]).collect();
        }
    }

    fn forget_store(&mut self, store: StoreKey) {
        if self.in_store(store) {
            self.stores = self.stores.iter().copied().filter(|s| *s != store).collect();
        }
    }
}

#[derive(Debug, Clone)]
struct TaskInfo {
    job: JobId,
    thunk: Id,
    node: NodeId,
    started: Duration,
    /// The blobs its refs resolved to (the node holds them all once it is done).
    inputs: Vec<Id>,
    /// Those the node lacked when it was assigned (what it holds anew once it is done).
    fetched: Vec<Id>,
    /// Those it was told it could read from storage.
    from_storage: Vec<Id>,
    /// What tasks it is compared with to call it a straggler.
    kind: speculate::Kind,
}

/// A ready thunk waiting for a busy node it prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    job: JobId,
    thunk: Id,
    since: Duration,
}

/// Where placement sent a thunk.
enum Choice {
    Run(NodeId),
    /// Wait for this node until the deadline (`None`: however long it takes).
    Wait(NodeId, Option<Duration>),
    /// No node can take it now.
    Later,
}

/// A stored object smaller than this is not counted on the nodes that fetched it (see
/// `record_done`).
pub const TRACKED_STORED_BYTES: u64 = 1 << 20;

/// Objects of at least this size are removed from node caches as soon as no thunk of any job
/// will read them (smaller ones stay for reruns, within the cache budget).
pub const EARLY_DROP_BYTES: u64 = 1 << 20;

/// The scheduling state machine. See the crate documentation.
#[derive(Debug, Default)]
pub struct Planner {
    nodes: BTreeMap<NodeId, NodeState>,
    objects: IdMap<Places>,
    jobs: BTreeMap<JobId, Job>,
    tasks: HashMap<TaskId, TaskInfo>,
    next_task: TaskId,
    out: VecDeque<Decision>,
    config: PlannerConfig,
    estimates: Estimates,
    now: Duration,
    /// Nodes with a free slot: fewest running first, ties in seeded order.
    free: BTreeSet<(u32, u64, NodeId)>,
    /// Nodes no peer can reach directly (behind endpoint-dependent NATs).
    unreachable: BTreeSet<NodeId>,
    /// Thunks waiting for a particular busy node, in arrival order.
    held: BTreeMap<NodeId, VecDeque<Held>>,
    /// When held thunks stop waiting.
    deadlines: BinaryHeap<Reverse<(Duration, NodeId, JobId, Id)>>,
    /// Nodes that gained a free slot since held thunks were last looked at.
    freed: BTreeSet<NodeId>,
    /// The longest any thunk has been held.
    longest_hold: Duration,
    /// When running tasks become stragglers.
    straggler_checks: BinaryHeap<Reverse<(Duration, TaskId)>>,
    /// A straggler and its copy, each pointing at the other.
    twins: HashMap<TaskId, TaskId>,
    /// Copies started.
    speculated: u64,
    /// Every store a job named, by key.
    stores: HashMap<String, StoreKey>,
    /// Slots of every node known (draining ones included).
    slots: u64,
    /// Thunks whose results are being checked on other nodes (see `verify`).
    checks: BTreeMap<(JobId, Id), verify::Check>,
    /// Checks waiting for a free slot on a node that has not run their thunk.
    check_queue: VecDeque<(JobId, Id)>,
    /// When each upload asked of a node counts as failed if the node has not answered.
    upload_deadlines: BinaryHeap<Reverse<(Duration, NodeId, JobId, Id)>>,
}

impl Planner {
    /// An empty planner with the default policy.
    pub fn new() -> Planner {
        Planner::with_config(PlannerConfig::default())
    }

    /// An empty planner with these knobs.
    pub fn with_config(config: PlannerConfig) -> Planner {
        Planner { config, estimates: config.estimates, next_task: config.first_task, ..Planner::default() }
    }

    /// Time passed: `now` is the driver's clock (any fixed origin). Held thunks whose wait ran
    /// out are placed at the next [`Planner::poll`].
    pub fn advance(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// When the planner next needs [`Planner::advance`] and [`Planner::poll`] even if nothing
    /// else happens (a held thunk's wait runs out).
    pub fn next_deadline(&self) -> Option<Duration> {
        let hold = self.deadlines.peek().map(|Reverse((at, ..))| *at);
        let upload = self.upload_deadlines.peek().map(|Reverse((at, ..))| *at);
        [hold, upload, self.next_straggler_check()].into_iter().flatten().min()
    }

    /// The longest any thunk has waited for a busy node so far.
    pub fn longest_hold(&self) -> Duration {
        self.longest_hold
    }

    fn end_hold(&mut self, held: &Held) {
        self.longest_hold = self.longest_hold.max(self.now.saturating_sub(held.since));
    }

    /// What the planner currently believes about transfers and durations.
    pub fn estimates(&self) -> Estimates {
        self.estimates
    }

    /// The next decision, if any.
    pub fn poll(&mut self) -> Option<Decision> {
        if self.out.is_empty() {
            self.assign();
        }
        self.out.pop_front()
    }

    /// A node is ready with `slots` and already holds `inventory`.
    pub fn node_joined(&mut self, node: NodeId, slots: u32, inventory: &[Id]) {
        let order = place::mix(self.config.seed, node.0);
        let state = self.nodes.entry(node).or_default();
        self.slots = self.slots - u64::from(state.slots) + u64::from(slots);
        state.slots = slots;
        state.order = order;
        self.reindex(node);
        self.node_holds(node, inventory);
    }

    /// A known node holds these objects in its cache (from earlier runs).
    pub fn node_holds(&mut self, node: NodeId, inventory: &[Id]) {
        let Some(state) = self.nodes.get_mut(&node) else { return };
        for &blob in inventory {
            state.hold(blob);
            self.objects.entry(blob).or_default().nodes.insert(node);
        }
        // Only objects it brings can make a waiting thunk ready.
        if !inventory.is_empty() {
            let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
            for job in jobs {
                self.reevaluate(job);
            }
        }
    }

    /// Keeps the node's entry in the free-slot index in step with its state.
    fn reindex(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get_mut(&node) else { return };
        if let Some(key) = state.indexed.take() {
            self.free.remove(&key);
        }
        if state.free_slots() > 0 {
            let key = (state.running.len() as u32, state.order, node);
            state.indexed = Some(key);
            self.free.insert(key);
            self.freed.insert(node);
        }
    }

    /// A node is leaving: it gets no new work, and uploads every object it alone holds that a
    /// job still needs; [`Decision::Drained`] follows when it is done with both.
    pub fn node_draining(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get_mut(&node) else { return };
        state.draining = true;
        self.reindex(node);
        self.release_held(node);
        self.request_drain_uploads(node);
        self.check_drained(node);
    }

    /// Asks a draining node to upload what only it holds and some job still needs.
    fn request_drain_uploads(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get(&node).filter(|s| s.draining) else { return };
        let mut held: Vec<Id> = state.holds.iter().copied().collect();
        held.sort_unstable();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            let needed = job.needed_blobs();
            let only_here = |b: &Id| self.objects.get(b).is_some_and(|p| !p.in_store(job.store) && p.nodes.len() == 1);
            let uploads: Vec<Id> = held.iter().filter(|b| needed.contains(b) && only_here(b)).copied().collect();
            for blob in uploads {
                self.request_fallback_upload(node, id, blob);
            }
        }
    }

    /// Asks `node` to put `blob` into storage because it will not (or cannot) serve it to peers.
    fn request_fallback_upload(&mut self, node: NodeId, job: JobId, blob: Id) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.peer_failed.insert(blob);
        if !j.upload_requested.insert(blob) {
            return;
        }
        j.storage_fallbacks += 1;
        self.ask_upload(node, job, blob);
    }

    /// Asks `node` to put `blob` into `job`'s store, and remembers that it owes the answer.
    fn ask_upload(&mut self, node: NodeId, job: JobId, blob: Id) {
        if let Some(state) = self.nodes.get_mut(&node) {
            state.uploads.insert((job, blob));
        }
        self.upload_deadlines.push(Reverse((self.now + upload_allowance(blob.size), node, job, blob)));
        self.out.push_back(Decision::Upload { node, job, blob });
    }

    /// Uploads whose node did not answer in time count as failed (the node is no longer
    /// counted on for the object, which is made again): a node that never answers, or lied about
    /// an object it does not have, cannot make a job wait for ever.
    fn expire_uploads(&mut self) {
        while let Some(&Reverse((at, node, job, blob))) = self.upload_deadlines.peek() {
            if at > self.now {
                break;
            }
            self.upload_deadlines.pop();
            if self.nodes.get(&node).is_some_and(|s| s.uploads.contains(&(job, blob))) {
                let allowed = upload_allowance(blob.size).as_secs();
                let message = format!("the node did not answer a request to upload it within {allowed} s");
                self.stored(node, job, blob, Some(&WireError::new(ErrorCode::NodeError, message)), Default::default());
            }
        }
    }

    /// Releases a draining node once it runs nothing and owes no upload (once).
    fn check_drained(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get_mut(&node) else { return };
        if state.draining && !state.released && state.running.is_empty() && state.uploads.is_empty() {
            state.released = true;
            self.out.push_back(Decision::Drained { node });
        }
    }

    /// Whether peers can reach a node directly. One behind an endpoint-dependent (symmetric) NAT
    /// cannot: what it holds reaches other nodes through storage, and so does what it fetches,
    /// which placement prices accordingly.
    pub fn node_reachable(&mut self, node: NodeId, reachable: bool) {
        if reachable {
            self.unreachable.remove(&node);
        } else if self.nodes.contains_key(&node) {
            self.unreachable.insert(node);
        }
    }

    /// A node is gone, with everything in its cache; its running tasks are planned again.
    pub fn node_left(&mut self, node: NodeId) {
        self.unreachable.remove(&node);
        if let Some(key) = self.nodes.get_mut(&node).and_then(|s| s.indexed.take()) {
            self.free.remove(&key);
        }
        self.release_held(node);
        let Some(state) = self.nodes.remove(&node) else { return };
        self.slots -= u64::from(state.slots);
        let lost = !state.draining;
        // What it was asked to upload and never answered is asked again of another holder (or
        // recomputed) when its job is looked at below.
        for (job, blob) in &state.uploads {
            if let Some(j) = self.jobs.get_mut(job) {
                j.upload_requested.remove(blob);
                j.wake_blob(*blob);
            }
        }
        for blob in &state.holds {
            forget_holder(&mut self.objects, *blob, node);
        }
        if self.objects.len() < self.objects.capacity() / 4 {
            // A node that held many objects left: give the index's memory back.
            self.objects.shrink_to_fit();
        }
        for task in state.running {
            let twin_runs_on = self.untwin(task, false).is_some();
            if let Some(info) = self.tasks.remove(&task)
                && !twin_runs_on
                && let Some(job) = self.jobs.get_mut(&info.job)
            {
                job.requeue(info.thunk);
            }
        }
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in jobs {
            if let Some(job) = self.jobs.get_mut(&id).filter(|_| lost) {
                job.nodes_lost += 1;
            }
            self.reevaluate(id);
        }
    }

    /// A job: its thunks, its targets, what storage holds and what the memo cache knows.
    pub fn submit(&mut self, id: JobId, mut sub: Submission) -> Result<(), PlanError> {
        if self.jobs.contains_key(&id) {
            return Err(PlanError::DuplicateJob(id));
        }
        let store = std::mem::take(&mut sub.store);
        let mut stored = std::mem::take(&mut sub.stored);
        let mut job = Job::new(sub, self.config.order)?;
        let next = StoreKey::try_from(self.stores.len()).unwrap_or(StoreKey::MAX);
        job.store = *self.stores.entry(store).or_insert(next);
        stored.sort_unstable();
        for target in job.targets.clone() {
            if let Resolved::Blob(blob) = job.resolve(&target)
                && stored.binary_search(&blob).is_ok()
            {
                job.confirmed_targets.insert(blob);
            }
        }
        for blob in stored {
            self.objects.entry(blob).or_default().stored_in(job.store);
        }
        self.jobs.insert(id, job);
        self.reevaluate(id);
        Ok(())
    }

    /// A task finished on `node`: record its outputs there and wake what waited for them.
    pub fn task_done(&mut self, node: NodeId, task: TaskId, outputs: &[(String, OutputValue)], stats: TransferStats) {
        self.record_done(node, task, outputs, stats);
        self.request_drain_uploads(node);
        self.check_drained(node);
    }

    fn record_done(&mut self, node: NodeId, task: TaskId, outputs: &[(String, OutputValue)], stats: TransferStats) {
        let Some(info) = self.finish_task(node, task) else { return };
        self.untwin(task, true);
        self.estimates.observe(&stats);
        let Some(job) = self.jobs.get_mut(&info.job) else { return };
        job.stats += stats;
        let ran = self.now.saturating_sub(info.started).as_secs_f64();
        self.estimates.observe_duration(ran);
        job.durations.add(ran);
        job.kinds.entry(info.kind.clone()).or_insert_with(place::Average::new).add(ran);
        for (_, value) in outputs {
            if let OutputValue::Blob(blob) = value {
                job.output_bytes.add(blob.size as f64);
            }
        }
        let checked;
        let outputs = match self.judge(info.job, info.thunk, info.node, Some(outputs)) {
            verify::Verdict::Unchecked => outputs,
            verify::Verdict::Wait => return,
            verify::Verdict::Fail => return self.fail(info.job, self.outvoted(&info, "gave different results")),
            verify::Verdict::Complete { outputs, unrecorded } => {
                if unrecorded && let Some(job) = self.jobs.get_mut(&info.job) {
                    job.unrecorded.insert(info.thunk);
                }
                checked = outputs;
                &checked
            }
        };
        let Some(job) = self.jobs.get_mut(&info.job) else { return };
        let ran = job::Ran { node: info.node, inputs: Id::digest_of(&info.inputs) };
        let placed = match job.complete(info.thunk, outputs, ran) {
            Ok(placed) => placed,
            Err(error) => return self.fail(info.job, error),
        };
        // In storage mode the node wrote every output to storage before it reported.
        let stored = (job.mode == Mode::Storage).then_some(job.store);
        // The node keeps what it fetched and can serve it to peers too. A small object that is
        // also in storage is not counted there: a peer gains little by reading it from this node
        // rather than from storage, and a build's headers, fetched by every node, would
        // otherwise be counted once per node each (most of the planner's memory).
        let store = job.store;
        for &blob in &info.fetched {
            let stored = self.objects.get(&blob).is_some_and(|p| p.in_store(store));
            if !stored || blob.size >= TRACKED_STORED_BYTES {
                self.place(blob, info.node);
            }
        }
        for blob in placed {
            self.place(blob, info.node);
            if let Some(store) = stored {
                self.objects.entry(blob).or_default().stored_in(store);
            }
        }
        self.drop_unneeded(&info.inputs);
        self.settle(info.job);
    }

    /// Asks every node holding one of `blobs` (inputs of a task that just ended) to remove it
    /// when it is large and no thunk of any job will read it again: a chain of large objects
    /// then holds a few, not all. Smaller objects stay for reruns (a changed source reuses the
    /// unchanged objects) until a cache's budget evicts them.
    fn drop_unneeded(&mut self, blobs: &[Id]) {
        let mut by_node: BTreeMap<NodeId, Vec<Id>> = BTreeMap::new();
        for &blob in blobs.iter().filter(|b| b.size >= EARLY_DROP_BYTES) {
            let mut makers = self.jobs.values().filter(|j| j.produces(blob)).peekable();
            if makers.peek().is_none() || !makers.all(|j| j.no_longer_needs(blob)) {
                continue;
            }
            for node in self.holders(blob) {
                self.unplace(blob, node);
                by_node.entry(node).or_default().push(blob);
            }
        }
        for (node, blobs) in by_node {
            self.out.push_back(Decision::Drop { node, blobs });
        }
    }

    /// A task failed. A fault of the thunk fails the job (or, in a job that keeps going, that
    /// thunk and what depends on it); anything else re-plans the thunk.
    pub fn task_failed(
        &mut self,
        node: NodeId,
        task: TaskId,
        error: &WireError,
        unavailable: &[Id],
        stats: TransferStats,
    ) {
        self.record_failure(node, task, error, unavailable, stats);
        self.check_drained(node);
    }

    fn record_failure(
        &mut self,
        node: NodeId,
        task: TaskId,
        error: &WireError,
        unavailable: &[Id],
        stats: TransferStats,
    ) {
        let Some(info) = self.finish_task(node, task) else { return };
        let twin_runs_on = self.untwin(task, false).is_some();
        let Some(job) = self.jobs.get_mut(&info.job) else { return };
        job.stats += stats;
        let name = job.name(info.thunk).to_owned();
        if twin_runs_on && !error.code.is_thunk_fault() {
            return;
        }
        if error.code.is_thunk_fault() && self.checks.contains_key(&(info.job, info.thunk)) {
            // It succeeded elsewhere: one of the nodes is wrong.
            return match self.judge(info.job, info.thunk, info.node, None) {
                verify::Verdict::Wait | verify::Verdict::Unchecked => {}
                verify::Verdict::Fail => {
                    self.fail(info.job, self.outvoted(&info, "succeeded on one node and failed on another"));
                }
                // No third node to decide (the rendezvous heard `Disagreed` with both undecided).
                verify::Verdict::Complete { .. } => self.fail(info.job, self.undecided(&info)),
            };
        }
        let Some(job) = self.jobs.get_mut(&info.job) else { return };
        if error.code == ErrorCode::NodeError {
            // Its sandbox or disk failed, not the thunk: the thunk goes elsewhere if it can.
            job.faulted_on.entry(info.thunk).or_default().push(info.node);
        }
        let given_up = if error.code.is_thunk_fault() {
            Some(format!("thunk `{name}` failed: {}", error.message))
        } else if error.code == ErrorCode::StoreError {
            // The job's store refuses writes: running the thunk again elsewhere cannot help.
            return self.fail(info.job, WireError::new(error.code, format!("thunk `{name}`: {}", error.message)));
        } else if job.requeue(info.thunk) > MAX_ATTEMPTS {
            Some(format!("thunk `{name}` could not run after {MAX_ATTEMPTS} attempts: {}", error.message))
        } else {
            None
        };
        if let Some(message) = given_up {
            let error = WireError { code: error.code, message, detail: error.detail.clone() };
            if !job.keep_going {
                return self.fail(info.job, error);
            }
            job.thunk_failed(info.thunk, error);
            return self.settle(info.job);
        }
        let (require_direct, store) = (job.require_direct, job.store);
        // A peer that could not serve an object it holds uploads it; the consumer then reads it
        // from storage. An object no live node holds is recomputed.
        let served_by_peer = |blob: &Id| {
            let in_storage = self.objects.get(blob).is_some_and(|p| p.in_store(store));
            !in_storage && self.holders(*blob).iter().any(|&n| n != info.node)
        };
        if require_direct && let Some(blob) = unavailable.iter().find(|b| served_by_peer(b)) {
            let message = format!(
                "thunk `{name}` could not fetch {blob} directly from the node that holds it ({}), and the job \
                 requires direct transfers (--require-direct)",
                error.message
            );
            return self.fail(info.job, WireError::new(ErrorCode::InputUnavailable, message));
        }
        for blob in unavailable {
            // A node that no longer has what it was counted on for (evicted before the
            // rendezvous heard) is not counted on again; nor is a store the task was told to
            // read it from and that gave nothing good (the node removed a corrupt copy), until
            // something is stored there again.
            self.unplace(*blob, info.node);
            if info.from_storage.contains(blob)
                && let Some(places) = self.objects.get_mut(blob)
            {
                places.forget_store(store);
            }
            let in_storage = self.objects.get(blob).is_some_and(|p| p.in_store(store));
            match self.holders(*blob).into_iter().find(|&n| n != info.node) {
                Some(holder) if !in_storage => self.request_fallback_upload(holder, info.job, *blob),
                _ => {}
            }
        }
        self.reevaluate(info.job);
    }

    fn holders(&self, blob: Id) -> Vec<NodeId> {
        self.objects.get(&blob).map(|p| p.nodes.iter().copied().collect()).unwrap_or_default()
    }

    /// A node answered an upload request: the object is in the job's store (`error` is `None`),
    /// or could not be put there. A store that refused it (`StoreError`) leaves the object on the
    /// node; a node that could not read it no longer counts as holding it. After
    /// [`MAX_ATTEMPTS`] failures the job fails with the last cause. An answer for a job that is
    /// not running, or for an object nobody asked that node to upload, says nothing about any
    /// store and is ignored.
    pub fn stored(&mut self, node: NodeId, job: JobId, blob: Id, error: Option<&WireError>, stats: TransferStats) {
        let asked = self.nodes.get_mut(&node).is_some_and(|s| s.uploads.remove(&(job, blob)));
        self.check_drained(node);
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if !(j.upload_requested.remove(&blob) || asked) {
            return;
        }
        j.stats += stats;
        j.wake_blob(blob);
        let store = j.store;
        match error {
            None => {
                j.confirmed_targets.insert(blob);
                self.objects.entry(blob).or_default().stored_in(store);
            }
            Some(error) => {
                if error.code != ErrorCode::StoreError {
                    self.unplace(blob, node);
                }
                let failures = self.jobs.get_mut(&job).map(|j| {
                    j.upload_failures += 1;
                    j.upload_failures
                });
                if failures > Some(MAX_ATTEMPTS) {
                    let message = format!("could not write target {blob} to storage: {}", error.message);
                    return self.fail(job, WireError::new(error.code, message));
                }
            }
        }
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in jobs {
            // Another job's upload may have stored one of this job's targets.
            if let Some(j) = self.jobs.get_mut(&id) {
                j.wake_blob(blob);
            }
            self.settle(id);
        }
    }

    /// Drops a job (its client went away); running tasks finish and are ignored.
    pub fn cancel(&mut self, job: JobId) {
        self.drop_checks(job);
        self.jobs.remove(&job);
    }

    /// Counts for a job's progress display.
    pub fn progress(&self, job: JobId) -> Option<thunkmesh_protocol::wire::Progress> {
        let nodes = self.nodes.values().filter(|s| !s.draining).count() as u64;
        let checking = self.checks.keys().filter(|(j, _)| *j == job).count() as u64;
        self.jobs.get(&job).map(|j| thunkmesh_protocol::wire::Progress { nodes, checking, ..j.progress() })
    }

    /// Checks that every job's progress counts are what its thunks' states say (for tests).
    #[cfg(test)]
    pub(crate) fn check_counts(&self) {
        for job in self.jobs.values() {
            job.check_counts();
        }
    }

    /// The thunk and its name, for building an assignment.
    pub fn thunk(&self, job: JobId, thunk: Id) -> Option<(&str, &thunkmesh_protocol::Thunk)> {
        self.jobs.get(&job)?.thunk(thunk)
    }

    /// Nodes known, with their free slots.
    pub fn free_slots(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        self.nodes.iter().map(|(&n, s)| (n, s.free_slots()))
    }

    /// Tasks running on a node.
    pub fn running(&self, node: NodeId) -> usize {
        self.nodes.get(&node).map_or(0, |s| s.running.len())
    }

    /// The objects the planner counts in a node's cache (announced, made or fetched there), and
    /// their bytes.
    pub fn cache_use(&self, node: NodeId) -> (u64, u64) {
        self.nodes.get(&node).map_or((0, 0), |s| (s.holds.len() as u64, s.held_bytes))
    }

    /// Thunks held for busy nodes (waiting at most the delay bound under `locality`).
    pub fn held(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Ends a task; an answer from a node the task was not given to is ignored.
    fn finish_task(&mut self, node: NodeId, task: TaskId) -> Option<TaskInfo> {
        if self.tasks.get(&task)?.node != node {
            return None;
        }
        let info = self.tasks.remove(&task)?;
        if let Some(node) = self.nodes.get_mut(&info.node) {
            node.running.remove(&task);
        }
        self.reindex(info.node);
        Some(info)
    }

    /// Why a job fails whose checked thunk `what` on different nodes ("gave different results",
    /// "succeeded on one node and failed on another").
    fn outvoted(&self, info: &TaskInfo, what: &str) -> WireError {
        let name = self.jobs.get(&info.job).map_or("?", |j| j.name(info.thunk));
        let message = format!(
            "thunk `{name}` {what} when it was checked (--verify): a node reported what the thunk does not \
             produce (or the thunk is not deterministic), so nothing that node did in this job can be trusted"
        );
        WireError::new(ErrorCode::NodeError, message)
    }

    /// Why a job fails whose checked thunk succeeded on one node and failed on another, with no
    /// third node to decide which was right.
    fn undecided(&self, info: &TaskInfo) -> WireError {
        let name = self.jobs.get(&info.job).map_or("?", |j| j.name(info.thunk));
        let message = format!(
            "thunk `{name}` succeeded on one node and failed on another when it was checked (--verify), and no \
             third node was there to decide which was right: the thunk may not be deterministic, or a node may \
             not tell the truth (with three nodes or more, the one outvoted is named)"
        );
        WireError::new(ErrorCode::NodeError, message)
    }

    fn fail(&mut self, job: JobId, error: WireError) {
        self.drop_checks(job);
        if self.jobs.remove(&job).is_some() {
            self.out.push_back(Decision::JobFailed { job, error });
        }
    }

    fn place(&mut self, blob: Id, node: NodeId) {
        if let Some(state) = self.nodes.get_mut(&node) {
            state.hold(blob);
            self.objects.entry(blob).or_default().nodes.insert(node);
        }
    }

    /// A node removed these objects from its cache (its budget): they are no longer counted on
    /// there. A job that needs one that is now nowhere looks again at what to run.
    pub fn node_dropped(&mut self, node: NodeId, blobs: &[Id]) {
        let mut lost = false;
        for &blob in blobs {
            self.unplace(blob, node);
            lost |= self.objects.get(&blob).is_none_or(|p| p.nodes.is_empty() && p.stores.is_empty());
        }
        if lost {
            let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
            for job in jobs {
                self.reevaluate(job);
            }
        }
    }

    fn unplace(&mut self, blob: Id, node: NodeId) {
        if let Some(state) = self.nodes.get_mut(&node) {
            state.let_go(blob);
        }
        forget_holder(&mut self.objects, blob, node);
    }

    fn avail(&self, blob: &Id, store: StoreKey) -> Avail {
        match self.objects.get(blob) {
            Some(p) if p.in_store(store) => Avail::Stored,
            Some(p) if !p.nodes.is_empty() => Avail::Cached,
            _ => Avail::Nowhere,
        }
    }

    /// Re-examines every thunk of a job that is not running or done (after a loss).
    fn reevaluate(&mut self, id: JobId) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.reset_ready();
        }
        self.settle(id);
    }

    /// Brings a job up to date: evaluates what waits, reports resolutions, checks targets.
    fn settle(&mut self, id: JobId) {
        let Some(mut job) = self.jobs.remove(&id) else { return };
        loop {
            let store = job.store;
            let avail = |blob: &Id| self.avail(blob, store);
            let result = job.evaluate_pending(&avail);
            for done in job.take_resolved() {
                let (name, reduction, node, inputs) = (done.name, done.reduction, done.ran.node, done.ran.inputs);
                self.out.push_back(Decision::Resolved { job: id, name, reduction, node, inputs });
            }
            if let Err(error) = result {
                self.out.push_back(Decision::JobFailed { job: id, error });
                return;
            }
            match self.check_targets(id, &mut job) {
                Ok(Some(outcome)) => return self.out.push_back(Decision::JobDone { job: id, outcome }),
                Ok(None) => {}
                Err(error) => return self.out.push_back(Decision::JobFailed { job: id, error }),
            }
            if !job.has_pending() {
                break;
            }
        }
        self.jobs.insert(id, job);
    }

    /// Requests uploads of resolved targets that live only in caches, or runs again what
    /// produced a target that lives nowhere. `Ok(Some(..))` when every target is in storage.
    /// Looks only at targets whose circumstances changed since they were last looked at.
    fn check_targets(&mut self, id: JobId, job: &mut Job) -> Result<Option<JobOutcome>, WireError> {
        for i in job.take_dirty_targets() {
            let target = job.targets[i].clone();
            let blob = match job.resolve(&target) {
                Resolved::Blob(blob) => blob,
                Resolved::Waiting(thunk) if job.is_failed(thunk) => {
                    job.target_failed(i);
                    continue;
                }
                Resolved::Waiting(thunk) => {
                    job.target_waits_for_thunk(i, thunk);
                    continue;
                }
                // It never resolves (a tail that returns itself, or names no thunk): say so,
                // or the job waits for ever.
                Resolved::Broken(why) => {
                    return Err(WireError::new(ErrorCode::BadTail, format!("target {target}: {why}")));
                }
            };
            let places = self.objects.get(&blob);
            // In storage mode the node that made it stored it for this job.
            let trusted = job.mode == Mode::Storage || job.confirmed_targets.contains(&blob);
            if places.is_some_and(|p| p.in_store(job.store)) && trusted {
                job.target_stored(i);
                continue;
            }
            job.target_waits_for_blob(i, blob);
            match places.and_then(|p| p.nodes.iter().next().copied()) {
                Some(node) if job.upload_requested.insert(blob) => self.ask_upload(node, id, blob),
                Some(_) => {}
                None => match job.demand_producer_of(blob) {
                    Some(producer) => job.target_waits_for_thunk(i, producer),
                    None => {
                        let message = format!("target {target} is not in storage and no thunk of the job produces it");
                        return Err(WireError::new(ErrorCode::InputUnavailable, message));
                    }
                },
            }
        }
        if !job.all_targets_stored() {
            return Ok(None);
        }
        let resolve = |t: &Ref| match job.resolve(t) {
            Resolved::Blob(blob) => Some((t.clone(), blob)),
            _ => None,
        };
        let targets = job.targets.iter().filter_map(resolve).collect();
        Ok(Some(job.outcome(targets)))
    }

    /// Hands ready thunks to nodes with free slots: first those held for a node that freed up,
    /// then those whose wait ran out, then the ready queues.
    fn assign(&mut self) {
        self.expire_uploads();
        self.start_checks();
        self.assign_held();
        self.expire_holds();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            while !self.free.is_empty() {
                let Some(thunk) = self.jobs.get_mut(&id).and_then(Job::next_ready) else { break };
                if !self.place_thunk(id, thunk, true) {
                    break;
                }
            }
        }
        self.speculate();
    }

    /// Gives nodes that gained a slot the thunks held for them.
    fn assign_held(&mut self) {
        for node in std::mem::take(&mut self.freed) {
            while self.nodes.get(&node).is_some_and(|s| s.free_slots() > 0) {
                let Some(held) = self.held.get_mut(&node).and_then(VecDeque::pop_front) else { break };
                self.end_hold(&held);
                if self.jobs.get(&held.job).is_some_and(|j| j.is_ready(held.thunk)) {
                    let resolved = self.jobs.get(&held.job).map(|j| j.resolved_inputs(held.thunk)).unwrap_or_default();
                    let why = Why::Waited { held: self.now.saturating_sub(held.since) };
                    self.start(held.job, held.thunk, node, resolved, why);
                }
            }
            if self.held.get(&node).is_some_and(VecDeque::is_empty) {
                self.held.remove(&node);
            }
        }
    }

    /// Places held thunks whose wait ran out on the best node with a free slot.
    fn expire_holds(&mut self) {
        while let Some(&Reverse((at, node, job, thunk))) = self.deadlines.peek() {
            if at > self.now {
                break;
            }
            self.deadlines.pop();
            let Some(queue) = self.held.get_mut(&node) else { continue };
            let Some(i) = queue.iter().position(|h| h.job == job && h.thunk == thunk) else { continue };
            if let Some(held) = queue.remove(i) {
                self.end_hold(&held);
            }
            if self.jobs.get(&job).is_some_and(|j| j.is_ready(thunk)) {
                self.place_thunk(job, thunk, false);
            }
        }
    }

    /// Thunks held for a node that will take no more work go back to their ready queues.
    fn release_held(&mut self, node: NodeId) {
        for held in self.held.remove(&node).unwrap_or_default() {
            self.end_hold(&held);
            if let Some(job) = self.jobs.get_mut(&held.job).filter(|j| j.is_ready(held.thunk)) {
                job.unready(held.thunk);
            }
        }
    }

    /// Decides where one ready thunk goes, and starts it, holds it, or queues it again (then
    /// returns false).
    fn place_thunk(&mut self, job: JobId, thunk: Id, may_wait: bool) -> bool {
        let Some(resolved) = self.jobs.get(&job).map(|j| j.resolved_inputs(thunk)) else { return false };
        let choice = self.choose(job, thunk, &resolved, may_wait);
        match choice {
            Choice::Run(node) => {
                let why = if may_wait { Why::Chosen } else { Why::WaitedInVain };
                self.start(job, thunk, node, resolved, why);
            }
            Choice::Wait(node, deadline) => {
                self.held.entry(node).or_default().push_back(Held { job, thunk, since: self.now });
                if let Some(at) = deadline {
                    self.deadlines.push(Reverse((at, node, job, thunk)));
                }
            }
            Choice::Later => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.unready(thunk);
                }
                return false;
            }
        }
        true
    }

    fn choose(&self, job_id: JobId, thunk: Id, resolved: &[Id], may_wait: bool) -> Choice {
        let Some(job) = self.jobs.get(&job_id) else { return Choice::Later };
        let avoid = self.avoided(job, thunk);
        let first_free = || {
            let mut free = self.free.iter().map(|&(_, _, n)| n);
            free.find(|n| !avoid.contains(n)).map_or(Choice::Later, Choice::Run)
        };
        if self.config.policy == Policy::LeastLoaded {
            // Data is ignored: nothing to price.
            let least = self.any_least_loaded().filter(|n| !avoid.contains(n));
            return least.map_or_else(first_free, Choice::Run);
        }
        let transfers = self.transfers(job, resolved);
        match self.config.policy {
            // LeastLoaded returned above.
            Policy::Locality | Policy::LeastLoaded => self.locality(job, thunk, &transfers, avoid, may_wait),
            Policy::MostBytes => {
                let takes_work = |n: &NodeId| self.nodes.get(n).is_some_and(|s| !s.draining) && !avoid.contains(n);
                let most = transfers.holders().filter(takes_work);
                let best = most.max_by_key(|&n| (transfers.local_bytes(n), Reverse(self.order(n))));
                match best.filter(|&n| transfers.local_bytes(n) > 0) {
                    Some(n) if self.has_free_slot(n) => Choice::Run(n),
                    Some(n) if may_wait => Choice::Wait(n, None),
                    _ => first_free(),
                }
            }
        }
    }

    /// Where each of `resolved` (inputs of a thunk of `job`) can come from, to price fetching them.
    fn transfers<'a>(&'a self, job: &Job, resolved: &[Id]) -> Transfers<'a> {
        let inputs: Vec<Input<'a>> = resolved
            .iter()
            .map(|&blob| Input {
                blob,
                holders: (!job.peer_failed.contains(&blob))
                    .then(|| self.objects.get(&blob).map(|p| &p.nodes))
                    .flatten(),
            })
            .collect();
        Transfers::new(&inputs, job.mode, self.estimates, &self.unreachable)
    }

    /// The nodes `thunk` of `job` should not go to: where it failed for the node's own fault,
    /// unless no other node takes work.
    fn avoided<'a>(&self, job: &'a Job, thunk: Id) -> &'a [NodeId] {
        let Some(nodes) = job.faulted_on.get(&thunk) else { return &[] };
        let elsewhere = self.nodes.iter().any(|(id, state)| !state.draining && !nodes.contains(id));
        if elsewhere { nodes } else { &[] }
    }

    /// The candidate with the earliest estimated start, other than the nodes to `avoid`; see
    /// [`place`].
    fn locality(&self, job: &Job, thunk: Id, transfers: &Transfers<'_>, avoid: &[NodeId], may_wait: bool) -> Choice {
        let mut candidates: BTreeSet<NodeId> = transfers.holders().collect();
        let siblings = self.siblings(job, thunk);
        candidates.extend(siblings.iter().copied());
        let free = self.free.iter().map(|&(_, _, n)| n).filter(|n| !avoid.contains(n));
        candidates.extend(free.take(LEAST_LOADED));
        candidates.retain(|n| !avoid.contains(n));
        // Co-locating with siblings saves moving this thunk's output to their consumer; and while
        // the job has more ready thunks than the mesh has slots, every slot stays busy anyway,
        // so waiting for a sibling's node delays this thunk by less than the wait (the slack).
        let output = job.output_bytes.get().unwrap_or(place::PRIOR_OUTPUT_BYTES);
        let bonus = output / self.estimates.peer.bandwidth;
        let slack = self.backlog_seconds(job);
        // (cost, tie-break, node, the wait that counts against the delay bound)
        let mut best: Option<(f64, u64, NodeId, f64)> = None;
        let mut best_free: Option<(f64, u64, NodeId, f64)> = None;
        for n in candidates {
            let Some(state) = self.nodes.get(&n).filter(|s| !s.draining) else { continue };
            let mut wait = self.wait(n);
            let mut cost = wait + transfers.seconds(n);
            if siblings.contains(&n) && bonus > 0.0 {
                cost -= bonus + wait.min(slack);
                wait = (wait - slack).max(0.0);
            }
            let key = (cost, state.order, n, wait);
            let better = |b: &Option<(f64, u64, NodeId, f64)>| b.is_none_or(|b| (key.0, key.1) < (b.0, b.1));
            if better(&best) {
                best = Some(key);
            }
            if state.free_slots() > 0 && better(&best_free) {
                best_free = Some(key);
            }
        }
        let delay = self.config.delay.as_secs_f64();
        match (best, best_free) {
            (Some((_, _, n, _)), _) if self.has_free_slot(n) => Choice::Run(n),
            (Some((_, _, n, wait)), _) if may_wait && wait <= delay => {
                Choice::Wait(n, Some(self.now + self.config.delay))
            }
            (_, Some((_, _, n, _))) => Choice::Run(n),
            _ => Choice::Later,
        }
    }

    /// Seconds for which the job's other ready thunks keep every slot of the mesh busy.
    fn backlog_seconds(&self, job: &Job) -> f64 {
        job.ready_len() as f64 * self.average_duration(job) / self.slots.max(1) as f64
    }

    /// How long a task of `job` is expected to run: the job's average so far, or the estimate.
    fn average_duration(&self, job: &Job) -> f64 {
        job.durations.get().unwrap_or(self.estimates.duration)
    }

    /// Nodes where the other producers for this thunk's consumers run, or left their outputs.
    fn siblings(&self, job: &Job, thunk: Id) -> BTreeSet<NodeId> {
        let mut nodes = BTreeSet::new();
        for consumer in job.consumers(thunk).take(2) {
            for producer in job.producers(consumer).filter(|&p| p != thunk).take(place::SIBLINGS) {
                if let Some(n) = job.running_on(producer) {
                    nodes.insert(n);
                }
                for blob in job.output_blobs(producer) {
                    let holders = self.objects.get(&blob).map(|p| &p.nodes);
                    nodes.extend(holders.filter(|h| h.len() <= place::FEW_HOLDERS).into_iter().flatten());
                }
            }
        }
        nodes
    }

    /// One of the nodes running the fewest tasks, drawn afresh for every decision (as a load
    /// balancer does, so equally idle nodes share the work).
    fn any_least_loaded(&self) -> Option<NodeId> {
        let &(fewest, _, _) = self.free.first()?;
        let ties = self.free.iter().take_while(|&&(r, _, _)| r == fewest).take(64);
        let ties: Vec<NodeId> = ties.map(|&(_, _, n)| n).collect();
        let pick = place::mix(self.config.seed, self.next_task) % ties.len() as u64;
        ties.get(pick as usize).copied()
    }

    fn has_free_slot(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|s| s.free_slots() > 0) && !self.held.contains_key(&node)
    }

    fn order(&self, node: NodeId) -> u64 {
        self.nodes.get(&node).map_or(0, |s| s.order)
    }

    /// Seconds until a slot on `node` is expected to be free for one more thunk: the soonest
    /// expected end of what runs there, plus a slot-time for each thunk already held for it.
    fn wait(&self, node: NodeId) -> f64 {
        let Some(state) = self.nodes.get(&node) else { return f64::INFINITY };
        if state.free_slots() > 0 && !self.held.contains_key(&node) {
            return 0.0;
        }
        let expected = |task: &TaskId| {
            let info = self.tasks.get(task)?;
            let duration = self.jobs.get(&info.job).map_or(self.estimates.duration, |j| self.average_duration(j));
            let end = info.started.as_secs_f64() + duration;
            Some((end - self.now.as_secs_f64()).max(0.0))
        };
        let soonest = state.running.iter().filter_map(expected).fold(f64::INFINITY, f64::min);
        let soonest = if soonest.is_finite() { soonest } else { 0.0 };
        let held = self.held.get(&node).map_or(0, VecDeque::len);
        soonest + held as f64 * self.estimates.duration / f64::from(state.slots.max(1))
    }

    fn start(&mut self, job: JobId, thunk: Id, node: NodeId, resolved: Vec<Id>, why: Why) {
        let Some(mode) = self.jobs.get(&job).map(|j| j.mode) else { return };
        let task = self.next_task;
        self.next_task += 1;
        let Some(j) = self.jobs.get(&job) else { return };
        let sources = match mode {
            Mode::P2p => self.sources(node, &resolved, j),
            Mode::Storage => {
                resolved.iter().collect::<BTreeSet<_>>().into_iter().map(|b| (*b, vec![Place::Storage])).collect()
            }
        };
        if let Some(state) = self.nodes.get_mut(&node) {
            state.running.insert(task);
        }
        self.reindex(node);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.mark_running(thunk, node);
        }
        let kind = speculate::Kind::of(self.jobs.get(&job), thunk, &resolved);
        let fetched = sources.iter().map(|(blob, _)| *blob).collect();
        let from_storage =
            sources.iter().filter(|(_, places)| places.contains(&Place::Storage)).map(|(blob, _)| *blob).collect();
        let info =
            TaskInfo { job, thunk, node, started: self.now, inputs: resolved.clone(), fetched, from_storage, kind };
        self.tasks.insert(task, info);
        self.watch_straggler(task);
        self.out.push_back(Decision::Assign(Assign { node, job, task, thunk, resolved, sources, why }));
    }

    /// Where `node` gets each of `resolved` that it lacks: what the job carries with the
    /// assignment itself, else peers first, then storage; only storage for objects a peer
    /// already failed to serve.
    fn sources(&self, node: NodeId, resolved: &[Id], job: &Job) -> Vec<(Id, Vec<Place>)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for blob in resolved {
            let places = self.objects.get(blob);
            if places.is_some_and(|p| p.nodes.contains(&node)) || !seen.insert(*blob) {
                continue;
            }
            if job.carries(blob) {
                out.push((*blob, vec![Place::Carried]));
                continue;
            }
            let Some(p) = places else { continue };
            let peers = p.nodes.iter().filter(|_| !job.peer_failed.contains(blob));
            let mut places: Vec<Place> = peers.map(|&n| Place::Node(n)).collect();
            if p.in_store(job.store) {
                places.push(Place::Storage);
            }
            out.push((*blob, places));
        }
        out
    }

    /// Refs resolved so far, for tests and diagnostics.
    pub fn resolve(&self, job: JobId, r: &Ref) -> Option<Id> {
        match self.jobs.get(&job)?.resolve(r) {
            Resolved::Blob(id) => Some(id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

impl State {
    fn is_done(&self) -> bool {
        matches!(self, State::Done { .. })
    }
}
