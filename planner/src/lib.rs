//! The scheduling core: a pure, synchronous state machine that decides which node forces which
//! thunk, where each input can be had, and when a job is done.
//!
//! Events go in (`node_joined`, `submit`, `task_done`, `task_failed`, `stored`, `node_left`);
//! decisions come out of [`Planner::poll`]. Nothing here touches a socket, a file or a clock, so
//! the rendezvous drives it live and tests drive it step by step. The policy of this version:
//! a ready thunk goes to the node with a free slot that already holds the most of its input
//! bytes (ties: the least busy node, then the lowest id). Objects are tracked wherever they live
//! (node caches, storage); an object that no longer lives anywhere is recomputed from the thunk
//! that produced it (lineage).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod job;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use thunkmesh_protocol::wire::{
    ErrorCode, JobOutcome, Mode, OutputValue, Reduction, Submission, TransferStats, WireError,
};
use thunkmesh_protocol::{Id, Ref};

use job::{Job, Resolved, State};

/// A node, as numbered by its driver.
pub type NodeId = u64;
/// A job, as numbered by its driver.
pub type JobId = u64;
/// One attempt at forcing one thunk.
pub type TaskId = u64;

/// Attempts at one thunk that fail for reasons outside the thunk before the job gives up.
pub const MAX_ATTEMPTS: u32 = 5;

/// Where an object can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// In a node's cache.
    Node(NodeId),
    /// In the job's storage.
    Storage,
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
    },
    /// The job's targets are all in storage.
    JobDone {
        /// The job.
        job: JobId,
        /// Targets and counts.
        outcome: JobOutcome,
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
    holds: BTreeSet<Id>,
    /// Leaving: takes no new work; uploads what others still need first.
    draining: bool,
    /// Uploads asked of this node while draining, not yet answered.
    drain_uploads: BTreeSet<(JobId, Id)>,
    /// Told it may go.
    released: bool,
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

#[derive(Debug, Default)]
struct Places {
    storage: bool,
    nodes: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, Copy)]
struct TaskInfo {
    job: JobId,
    thunk: Id,
    node: NodeId,
}

/// The scheduling state machine. See the crate documentation.
#[derive(Debug, Default)]
pub struct Planner {
    nodes: BTreeMap<NodeId, NodeState>,
    objects: HashMap<Id, Places>,
    jobs: BTreeMap<JobId, Job>,
    tasks: HashMap<TaskId, TaskInfo>,
    next_task: TaskId,
    out: VecDeque<Decision>,
}

impl Planner {
    /// An empty planner.
    pub fn new() -> Planner {
        Planner::default()
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
        let state = self.nodes.entry(node).or_default();
        state.slots = slots;
        for &blob in inventory {
            state.holds.insert(blob);
            self.objects.entry(blob).or_default().nodes.insert(node);
        }
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            self.reevaluate(job);
        }
    }

    /// A node is leaving: it gets no new work, and uploads every object it alone holds that a
    /// job still needs; [`Decision::Drained`] follows when it is done with both.
    pub fn node_draining(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get_mut(&node) else { return };
        state.draining = true;
        self.request_drain_uploads(node);
        self.check_drained(node);
    }

    /// Asks a draining node to upload what only it holds and some job still needs.
    fn request_drain_uploads(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get(&node).filter(|s| s.draining) else { return };
        let held: Vec<Id> = state.holds.iter().copied().collect();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            let needed = job.needed_blobs();
            let only_here = |b: &Id| self.objects.get(b).is_some_and(|p| !p.storage && p.nodes.len() == 1);
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
        if let Some(state) = self.nodes.get_mut(&node).filter(|s| s.draining) {
            state.drain_uploads.insert((job, blob));
        }
        self.out.push_back(Decision::Upload { node, job, blob });
    }

    /// Releases a draining node once it runs nothing and owes no upload (once).
    fn check_drained(&mut self, node: NodeId) {
        let Some(state) = self.nodes.get_mut(&node) else { return };
        if state.draining && !state.released && state.running.is_empty() && state.drain_uploads.is_empty() {
            state.released = true;
            self.out.push_back(Decision::Drained { node });
        }
    }

    /// A node is gone, with everything in its cache; its running tasks are planned again.
    pub fn node_left(&mut self, node: NodeId) {
        let Some(state) = self.nodes.remove(&node) else { return };
        let lost = !state.draining;
        for blob in &state.holds {
            if let Some(p) = self.objects.get_mut(blob) {
                p.nodes.remove(&node);
            }
        }
        for task in state.running {
            if let Some(info) = self.tasks.remove(&task)
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
    pub fn submit(&mut self, id: JobId, sub: &Submission) -> Result<(), PlanError> {
        if self.jobs.contains_key(&id) {
            return Err(PlanError::DuplicateJob(id));
        }
        let job = Job::new(sub)?;
        for &blob in &sub.stored {
            self.objects.entry(blob).or_default().storage = true;
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
        let Some(job) = self.jobs.get_mut(&info.job) else { return };
        job.stats += stats;
        let placed = match job.complete(info.thunk, outputs) {
            Ok(placed) => placed,
            Err(error) => return self.fail(info.job, error),
        };
        // In storage mode the node wrote every output to storage before it reported.
        let stored = job.mode == Mode::Storage;
        for blob in placed {
            self.place(blob, info.node);
            if stored {
                self.objects.entry(blob).or_default().storage = true;
            }
        }
        self.settle(info.job);
    }

    /// A task failed. A fault of the thunk fails the job; anything else re-plans the thunk.
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
        let Some(job) = self.jobs.get_mut(&info.job) else { return };
        job.stats += stats;
        let name = job.name(info.thunk).to_owned();
        if error.code.is_thunk_fault() {
            let message = format!("thunk `{name}` failed: {}", error.message);
            return self.fail(info.job, WireError { code: error.code, message, detail: error.detail.clone() });
        }
        if job.requeue(info.thunk) > MAX_ATTEMPTS {
            let message = format!("thunk `{name}` could not run after {MAX_ATTEMPTS} attempts: {}", error.message);
            return self.fail(info.job, WireError { code: error.code, message, detail: error.detail.clone() });
        }
        // A peer that could not serve an object it holds uploads it; the consumer then reads it
        // from storage. An object no live node holds is recomputed.
        for blob in unavailable {
            let in_storage = self.objects.get(blob).is_some_and(|p| p.storage);
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

    /// A node answered an upload request: the object is in storage (or could not be put there).
    pub fn stored(&mut self, node: NodeId, job: JobId, blob: Id, ok: bool, stats: TransferStats) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.stats += stats;
            j.upload_requested.remove(&blob);
            j.wake_blob(blob);
        }
        if let Some(state) = self.nodes.get_mut(&node) {
            state.drain_uploads.remove(&(job, blob));
        }
        self.check_drained(node);
        if ok {
            self.objects.entry(blob).or_default().storage = true;
        } else {
            self.unplace(blob, node);
            let failures = self.jobs.get_mut(&job).map(|j| {
                j.upload_failures += 1;
                j.upload_failures
            });
            if failures > Some(MAX_ATTEMPTS) {
                let error = WireError::new(ErrorCode::NodeError, format!("could not write target {blob} to storage"));
                return self.fail(job, error);
            }
        }
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in jobs {
            self.settle(id);
        }
    }

    /// Drops a job (its client went away); running tasks finish and are ignored.
    pub fn cancel(&mut self, job: JobId) {
        self.jobs.remove(&job);
    }

    /// Counts for a job's progress display.
    pub fn progress(&self, job: JobId) -> Option<thunkmesh_protocol::wire::Progress> {
        self.jobs.get(&job).map(Job::progress)
    }

    /// The thunk and its name, for building an assignment.
    pub fn thunk(&self, job: JobId, thunk: Id) -> Option<(&str, &thunkmesh_protocol::Thunk)> {
        self.jobs.get(&job)?.thunk(thunk)
    }

    /// Nodes known, with their free slots.
    pub fn free_slots(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        self.nodes
            .iter()
            .map(|(&n, s)| (n, if s.draining { 0 } else { s.slots.saturating_sub(s.running.len() as u32) }))
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
        Some(info)
    }

    fn fail(&mut self, job: JobId, error: WireError) {
        if self.jobs.remove(&job).is_some() {
            self.out.push_back(Decision::JobFailed { job, error });
        }
    }

    fn place(&mut self, blob: Id, node: NodeId) {
        if let Some(state) = self.nodes.get_mut(&node) {
            state.holds.insert(blob);
            self.objects.entry(blob).or_default().nodes.insert(node);
        }
    }

    fn unplace(&mut self, blob: Id, node: NodeId) {
        if let Some(state) = self.nodes.get_mut(&node) {
            state.holds.remove(&blob);
        }
        if let Some(p) = self.objects.get_mut(&blob) {
            p.nodes.remove(&node);
        }
    }

    fn avail(&self, blob: &Id) -> Avail {
        match self.objects.get(blob) {
            Some(p) if p.storage => Avail::Stored,
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
            let avail = |blob: &Id| self.avail(blob);
            let result = job.evaluate_pending(&avail);
            for (name, reduction) in job.take_resolved() {
                self.out.push_back(Decision::Resolved { job: id, name, reduction });
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
    fn check_targets(&mut self, id: JobId, job: &mut Job) -> Result<Option<JobOutcome>, WireError> {
        let mut all_stored = true;
        let mut targets = Vec::with_capacity(job.targets.len());
        for target in job.targets.clone() {
            let Resolved::Blob(blob) = job.resolve(&target) else {
                all_stored = false;
                continue;
            };
            targets.push((target.clone(), blob));
            let places = self.objects.get(&blob);
            if places.is_some_and(|p| p.storage) {
                continue;
            }
            all_stored = false;
            let holder = places.and_then(|p| p.nodes.iter().next().copied());
            match holder {
                Some(node) if job.upload_requested.insert(blob) => {
                    self.out.push_back(Decision::Upload { node, job: id, blob });
                }
                Some(_) => {}
                None if job.demand_producer_of(blob) => {}
                None => {
                    let message = format!("target {target} is not in storage and no thunk of the job produces it");
                    return Err(WireError::new(ErrorCode::InputUnavailable, message));
                }
            }
        }
        Ok(all_stored.then(|| job.outcome(targets)))
    }

    /// Hands ready thunks to nodes with free slots.
    fn assign(&mut self) {
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            while let Some(node) = self.any_free_node() {
                let Some(job) = self.jobs.get_mut(&id) else { break };
                let Some(thunk) = job.next_ready() else { break };
                let resolved = job.resolved_inputs(thunk);
                let mode = job.mode;
                // Storage mode reads every input from storage: where it runs does not matter.
                let local = if mode == Mode::P2p { &resolved[..] } else { &[] };
                let node = self.best_node(local).unwrap_or(node);
                self.start(id, thunk, node, resolved, mode);
            }
        }
    }

    fn any_free_node(&self) -> Option<NodeId> {
        self.free_slots().find(|&(_, free)| free > 0).map(|(n, _)| n)
    }

    /// The node with a free slot holding the most input bytes; ties go to the least busy.
    fn best_node(&self, inputs: &[Id]) -> Option<NodeId> {
        let mut best: Option<(u64, std::cmp::Reverse<usize>, std::cmp::Reverse<NodeId>)> = None;
        for (&n, state) in &self.nodes {
            if state.draining || state.running.len() as u32 >= state.slots {
                continue;
            }
            let local: u64 = inputs.iter().filter(|b| state.holds.contains(b)).map(|b| b.size).sum();
            let key = (local, std::cmp::Reverse(state.running.len()), std::cmp::Reverse(n));
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
        best.map(|(_, _, std::cmp::Reverse(n))| n)
    }

    fn start(&mut self, job: JobId, thunk: Id, node: NodeId, resolved: Vec<Id>, mode: Mode) {
        let task = self.next_task;
        self.next_task += 1;
        let none = BTreeSet::new();
        let peer_failed = self.jobs.get(&job).map_or(&none, |j| &j.peer_failed);
        let sources = match mode {
            Mode::P2p => self.sources(node, &resolved, peer_failed),
            Mode::Storage => {
                resolved.iter().collect::<BTreeSet<_>>().into_iter().map(|b| (*b, vec![Place::Storage])).collect()
            }
        };
        if let Some(state) = self.nodes.get_mut(&node) {
            state.running.insert(task);
        }
        if let Some(j) = self.jobs.get_mut(&job) {
            j.mark_running(thunk);
        }
        self.tasks.insert(task, TaskInfo { job, thunk, node });
        self.out.push_back(Decision::Assign(Assign { node, job, task, thunk, resolved, sources }));
    }

    /// Peers first, then storage; only storage for objects a peer already failed to serve.
    fn sources(&self, node: NodeId, resolved: &[Id], peer_failed: &BTreeSet<Id>) -> Vec<(Id, Vec<Place>)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for blob in resolved {
            let Some(p) = self.objects.get(blob) else { continue };
            if p.nodes.contains(&node) || !seen.insert(*blob) {
                continue;
            }
            let peers = p.nodes.iter().filter(|_| !peer_failed.contains(blob));
            let mut places: Vec<Place> = peers.map(|&n| Place::Node(n)).collect();
            if p.storage {
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
mod tests;

impl State {
    fn is_done(&self) -> bool {
        matches!(self, State::Done { .. })
    }
}
