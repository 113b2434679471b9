//! One job's graph: the state of each thunk, what waits for what, how refs resolve through tail
//! calls, and which thunk produced each blob (for lineage).
//!
//! Thunks are held in one table in the order they were added, and the job refers to a thunk by
//! its place there (a [`Slot`], four bytes) wherever it keeps many: a producer's consumers, the
//! ready queue, the producer of each blob. Only the table itself is keyed by the 48-byte id.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;

use indexmap::IndexMap;

use thunkmesh_protocol::wire::{
    ErrorCode, JobOutcome, Mode, OutputValue, Progress, Reduction, Submission, SubmittedThunk, TransferStats, WireError,
};
use thunkmesh_protocol::{Id, Ref, Thunk};

use crate::idhash::{IdHasher, IdMap, IdSet};
use crate::place::Average;
use crate::{Avail, NodeId, PlanError};

/// Longest chain of tail calls followed when resolving one ref.
const MAX_TAIL_DEPTH: usize = 100_000;

/// What an output currently stands for.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Blob(Id),
    Tail(Ref),
}

#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Not started; waiting for inputs or for demand.
    Idle,
    /// Every input is available somewhere.
    Ready,
    /// Assigned to a node.
    Running { node: NodeId },
    /// Outputs known.
    /// Outputs known, in the thunk's order (a list: a map's first node holds room for eleven).
    Done { outputs: Box<[(String, Value)]> },
    /// Given up on (a job that keeps going): it failed, or an input of it did.
    Failed,
}

/// How many thunks are in each state that progress reports, kept as states change (counting a
/// job of a million thunks for every progress message cost a tenth of the rendezvous' time).
#[derive(Debug, Default, Clone, Copy)]
struct StateCounts {
    done: u64,
    running: u64,
    ready: u64,
}

impl StateCounts {
    /// Moves a thunk from the state it is in to `new`.
    fn set(&mut self, state: &mut State, new: State) {
        self.add(state, false);
        self.add(&new, true);
        *state = new;
    }

    fn add(&mut self, state: &State, into: bool) {
        let count = match state {
            State::Done { .. } | State::Failed => &mut self.done,
            State::Running { .. } => &mut self.running,
            State::Ready => &mut self.ready,
            State::Idle => return,
        };
        *count = if into { *count + 1 } else { count.saturating_sub(1) };
    }
}

/// What a blocked thunk waits for.
enum Wait {
    /// A thunk to finish.
    Thunk(Id),
    /// An object to reach storage.
    Upload(Id),
}

/// Who ran a thunk, and on what: the node and [`Id::digest_of`] its resolved inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ran {
    pub(crate) node: NodeId,
    pub(crate) inputs: [u8; 32],
}

/// A thunk whose outputs are final, to report for the memo cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Final {
    pub(crate) name: String,
    pub(crate) reduction: Reduction,
    pub(crate) ran: Ran,
}

/// What a ref stands for right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    Blob(Id),
    /// Not known until this thunk is done.
    Waiting(Id),
    /// The ref can never resolve (bad tail); the message says why.
    Broken(String),
}

/// A thunk's place in its job's table (thunks are never removed, so a place stays its own).
type Slot = u32;

#[derive(Debug)]
struct Entry {
    name: Box<str>,
    thunk: Thunk,
    state: State,
    /// The thunks that read one of its outputs.
    consumers: Vec<Slot>,
    /// Blocked: how many of its refs were found available (examination resumes there).
    scanned: Option<u32>,
    attempts: u32,
    /// Its bottom level: the thunks on the longest path from it to the end of the graph, itself
    /// included (0: not yet known). The ready queue serves the highest first.
    level: u32,
    needed: bool,
    reported: bool,
    /// It ran here (rather than being found in the memo cache) at least once.
    executed: bool,
}

/// The slot of the entry at `index` (the table holds fewer than `Slot::MAX`: see `add_thunks`).
fn slot(index: usize) -> Slot {
    index as Slot
}

/// A ready thunk in the queue: the highest `level` first, then the highest `order` (the
/// earliest ready: first in, first out among equals). Twelve bytes: the queue may hold every
/// thunk of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ready {
    level: u32,
    order: u32,
    slot: Slot,
}

/// How the ready queue is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// The thunk with the longest chain of thunks after it first (its bottom level), ties first
    /// in, first out: a thunk that unblocks a long chain does not wait behind leaves.
    #[default]
    CriticalPath,
    /// First in, first out.
    Fifo,
}

/// The job's targets, looked at again only when something they wait for changed: a thunk
/// finished, a blob reached storage (or failed to), or a node was lost. Without this every
/// completed task would re-resolve every target.
#[derive(Debug)]
pub(crate) struct TargetWatch {
    dirty: BTreeSet<usize>,
    stored: Vec<bool>,
    stored_count: usize,
    on_thunk: IdMap<Vec<usize>>,
    on_blob: IdMap<Vec<usize>>,
}

impl TargetWatch {
    fn new(targets: usize) -> TargetWatch {
        TargetWatch {
            dirty: (0..targets).collect(),
            stored: vec![false; targets],
            stored_count: 0,
            on_thunk: IdMap::default(),
            on_blob: IdMap::default(),
        }
    }

    fn all_dirty(&mut self) {
        self.dirty = (0..self.stored.len()).filter(|&i| !self.stored[i]).collect();
    }

    fn thunk_done(&mut self, thunk: Id) {
        self.dirty.extend(self.on_thunk.remove(&thunk).unwrap_or_default());
    }
}

#[derive(Debug)]
pub(crate) struct Job {
    /// Every thunk, in the order added: entries lie in one vector, beside an index of their
    /// places by id (an empty place in the index costs eight bytes, not an entry).
    entries: IndexMap<Id, Entry, BuildHasherDefault<IdHasher>>,
    pub(crate) targets: Vec<Ref>,
    ready: BinaryHeap<Ready>,
    /// Numbers the thunks that became ready, for first in, first out among equals (it stops
    /// at `u32::MAX`; past four billion readied, equals leave in any order).
    readied: u32,
    order: Order,
    /// Thunks to examine (a stack).
    pending: Vec<Slot>,
    /// Thunk -> the thunks blocked until it is done.
    waiters: IdMap<BTreeSet<Slot>>,
    resolve_waiters: IdMap<Vec<Id>>,
    /// Blob -> the thunk that made it.
    producers: IdMap<Slot>,
    /// A thunk of the job returned a tail: outputs may be read through it by thunks that are
    /// not their producer's consumers, so none is dropped early.
    has_tails: bool,
    resolved_out: Vec<Final>,
    /// Who ran each thunk done but not yet reported, and on what inputs.
    ran: HashMap<Id, Ran>,
    pub(crate) upload_requested: BTreeSet<Id>,
    /// Target blobs known to be in the job's store from this job: the client found them there,
    /// or a node stored them for it. An older belief that a target is stored is not enough (the
    /// store may have lost it since: a corrupt copy removed, a folder emptied).
    pub(crate) confirmed_targets: BTreeSet<Id>,
    pub(crate) upload_failures: u32,
    pub(crate) stats: TransferStats,
    pub(crate) nodes_lost: u64,
    pub(crate) mode: Mode,
    /// The store it reads from and writes to (set by the planner).
    pub(crate) store: u32,
    /// Fail rather than move an object between nodes through storage.
    pub(crate) require_direct: bool,
    /// Values the job carries (p2p mode only): available to every task, whatever the nodes
    /// and the store hold.
    carried: IdSet,
    /// Objects a peer could not (or will no longer) serve: read from storage once uploaded.
    pub(crate) peer_failed: BTreeSet<Id>,
    /// Nodes where a thunk failed for the node's own fault (its sandbox, its disk): the thunk
    /// goes to another node while there is one.
    pub(crate) faulted_on: BTreeMap<Id, Vec<NodeId>>,
    /// Objects uploaded because their producer could not serve them.
    pub(crate) storage_fallbacks: u64,
    /// Straggler copies started.
    pub(crate) copies: u64,
    /// Thunks waiting for an object to reach storage.
    blob_waiters: IdMap<BTreeSet<Slot>>,
    /// Which targets need looking at, and what the others wait for.
    watch: TargetWatch,
    /// Thunks per state, for progress.
    counts: StateCounts,
    /// Seconds tasks of this job ran (assignment to report).
    pub(crate) durations: Average,
    /// Bytes of one output.
    pub(crate) output_bytes: Average,
    /// Seconds tasks of each kind ran (what a straggler is compared with).
    pub(crate) kinds: HashMap<crate::speculate::Kind, Average>,
    /// A failed thunk does not end the job: what does not depend on it still runs.
    pub(crate) keep_going: bool,
    /// One in how many thunks is checked on a second node, and the client's salt that picks
    /// them.
    pub(crate) verify: (u32, u64),
    /// Thunks whose checked results differed undecided: done, but not reported for the memo
    /// cache.
    pub(crate) unrecorded: BTreeSet<Id>,
    /// Thunks that failed (a job that keeps going), each with why.
    failures: BTreeMap<Id, WireError>,
    /// Thunks not run because an input of theirs failed.
    skipped: u64,
}

impl Job {
    /// The job of `sub`, whose thunks it keeps (moved, not copied).
    pub(crate) fn new(sub: Submission, order: Order) -> Result<Job, PlanError> {
        let targets = sub.targets.len();
        let mut job = Job {
            entries: IndexMap::with_capacity_and_hasher(sub.thunks.len(), Default::default()),
            targets: sub.targets,
            ready: BinaryHeap::new(),
            readied: 0,
            order,
            pending: Vec::new(),
            waiters: IdMap::default(),
            resolve_waiters: IdMap::default(),
            producers: IdMap::default(),
            has_tails: false,
            resolved_out: Vec::new(),
            ran: HashMap::new(),
            upload_requested: BTreeSet::new(),
            confirmed_targets: BTreeSet::new(),
            upload_failures: 0,
            stats: TransferStats::default(),
            nodes_lost: 0,
            mode: sub.mode,
            store: 0,
            require_direct: sub.require_direct,
            carried: match sub.mode {
                Mode::P2p => sub.carried.iter().map(|c| c.blob).collect(),
                Mode::Storage => IdSet::default(),
            },
            peer_failed: BTreeSet::new(),
            faulted_on: BTreeMap::new(),
            storage_fallbacks: 0,
            copies: 0,
            blob_waiters: IdMap::default(),
            watch: TargetWatch::new(targets),
            counts: StateCounts::default(),
            durations: Average::new(),
            output_bytes: Average::new(),
            kinds: HashMap::new(),
            keep_going: sub.keep_going,
            verify: (sub.verify, sub.verify_salt),
            unrecorded: BTreeSet::new(),
            failures: BTreeMap::new(),
            skipped: 0,
        };
        job.add_thunks(sub.thunks, "")?;
        job.check_refs(job.entries.values().flat_map(|e| e.thunk.refs()).chain(&job.targets))?;
        for reduction in &sub.memo {
            job.apply_memo(reduction);
        }
        for target in job.targets.clone() {
            job.demand_ref(&target);
        }
        Ok(job)
    }

    fn add_thunks(&mut self, thunks: impl IntoIterator<Item = SubmittedThunk>, prefix: &str) -> Result<(), PlanError> {
        let first = self.entries.len();
        for t in thunks {
            let name = if prefix.is_empty() { t.name } else { format!("{prefix}{}", t.name) };
            t.thunk.validate().map_err(|e| PlanError::InvalidThunk { name: name.clone(), reason: e.to_string() })?;
            if self.entries.len() >= Slot::MAX as usize {
                let reason = format!("a job holds at most {} thunks", Slot::MAX);
                return Err(PlanError::InvalidThunk { name, reason });
            }
            let entry = Entry {
                name: name.into_boxed_str(),
                thunk: t.thunk,
                state: State::Idle,
                consumers: Vec::new(),
                scanned: None,
                attempts: 0,
                level: 0,
                needed: false,
                reported: false,
                executed: false,
            };
            self.entries.entry(entry.thunk.id()).or_insert(entry);
        }
        let added = slot(first)..slot(self.entries.len());
        for consumer in added.clone() {
            let producers: Vec<Slot> = self.producer_slots(consumer).collect();
            for producer in producers {
                let list = &mut self.entries[producer as usize].consumers;
                if list.last() != Some(&consumer) {
                    // Most producers have one consumer: no room for four (a vector's first growth).
                    list.reserve_exact(1);
                    list.push(consumer);
                }
            }
        }
        self.set_levels(added);
        Ok(())
    }

    /// Gives each of `thunks` (just added) its bottom level, from the levels of its consumers
    /// (depth first, without recursion: a chain may be a hundred thousand long). A thunk a tail
    /// adds later does not raise the levels of the thunks it reads.
    fn set_levels(&mut self, thunks: std::ops::Range<Slot>) {
        let mut stack: Vec<(Slot, bool)> = thunks.rev().map(|t| (t, false)).collect();
        while let Some((at, expanded)) = stack.pop() {
            let entry = &self.entries[at as usize];
            if entry.level != 0 {
                continue;
            }
            let levels = entry.consumers.iter().map(|&c| (c, self.entries[c as usize].level));
            if expanded {
                let below = levels.map(|(_, level)| level).max().unwrap_or(0);
                self.entries[at as usize].level = below.saturating_add(1);
            } else {
                let unknown: Vec<(Slot, bool)> =
                    levels.filter(|&(_, level)| level == 0).map(|(c, _)| (c, false)).collect();
                stack.push((at, true));
                stack.extend(unknown);
            }
        }
    }

    /// The bottom level of `thunk` (0 if unknown).
    #[cfg(test)]
    pub(crate) fn level(&self, thunk: Id) -> u32 {
        self.entries.get(&thunk).map_or(0, |e| e.level)
    }

    /// The id of the thunk at `slot`.
    fn id(&self, slot: Slot) -> Id {
        *self.entries.get_index(slot as usize).expect("a slot of this job").0
    }

    /// Queues the ready thunk at `at`; `first` puts it before every other of its level.
    fn push_ready(&mut self, at: Slot, first: bool) {
        let level = match self.order {
            Order::CriticalPath => self.entries[at as usize].level,
            Order::Fifo => 0,
        };
        self.readied = self.readied.saturating_add(1);
        let order = if first { u32::MAX } else { u32::MAX - self.readied };
        self.ready.push(Ready { level, order, slot: at });
    }

    /// Whether no thunk of the job will read `blob` any more: its producer's consumers are all
    /// done or given up, and no target is it. Unknown for a job with tails (`false`).
    pub(crate) fn no_longer_needs(&self, blob: Id) -> bool {
        let Some(&producer) = self.producers.get(&blob) else { return false };
        let finished = |&c: &Slot| matches!(self.entries[c as usize].state, State::Done { .. } | State::Failed);
        !self.has_tails
            && self.entries[producer as usize].consumers.iter().all(finished)
            && !self.targets.iter().any(|t| matches!(self.resolve(t), Resolved::Blob(b) if b == blob))
    }

    /// Whether a thunk of the job made `blob`.
    pub(crate) fn produces(&self, blob: Id) -> bool {
        self.producers.contains_key(&blob)
    }

    /// The thunks that read an output of `thunk`.
    pub(crate) fn consumers(&self, thunk: Id) -> impl Iterator<Item = Id> + '_ {
        let consumers = self.entries.get(&thunk).map_or(&[][..], |e| e.consumers.as_slice());
        consumers.iter().map(|&c| self.id(c))
    }

    /// The thunks whose outputs `thunk` reads.
    pub(crate) fn producers(&self, thunk: Id) -> impl Iterator<Item = Id> + '_ {
        let refs = self.entries.get(&thunk).into_iter().flat_map(|e| e.thunk.refs());
        refs.filter_map(|r| if let Ref::Output { thunk, .. } = r { Some(*thunk) } else { None })
    }

    /// The places of the thunks whose outputs the thunk at `at` reads (those the job has).
    fn producer_slots(&self, at: Slot) -> impl Iterator<Item = Slot> + '_ {
        let refs = self.entries[at as usize].thunk.refs();
        refs.filter_map(|r| match r {
            Ref::Output { thunk, .. } => self.entries.get_index_of(thunk).map(slot),
            Ref::Blob(_) => None,
        })
    }

    /// Where a thunk runs, if it does.
    pub(crate) fn running_on(&self, thunk: Id) -> Option<NodeId> {
        match self.entries.get(&thunk)?.state {
            State::Running { node } => Some(node),
            _ => None,
        }
    }

    /// The blobs a finished thunk's outputs are (tails not followed).
    pub(crate) fn output_blobs(&self, thunk: Id) -> Vec<Id> {
        match self.entries.get(&thunk).map(|e| &e.state) {
            Some(State::Done { outputs }) => {
                outputs.iter().filter_map(|(_, v)| if let Value::Blob(b) = v { Some(*b) } else { None }).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether the thunk may be assigned now.
    pub(crate) fn is_ready(&self, thunk: Id) -> bool {
        self.entries.get(&thunk).is_some_and(|e| matches!(e.state, State::Ready))
    }

    /// Puts a ready thunk back at the head of its level's queue (no node could take it yet).
    pub(crate) fn unready(&mut self, thunk: Id) {
        if let Some(at) = self.entries.get_index_of(&thunk) {
            self.push_ready(slot(at), true);
        }
    }

    fn check_refs<'a>(&self, refs: impl IntoIterator<Item = &'a Ref>) -> Result<(), PlanError> {
        for r in refs {
            if let Ref::Output { thunk, name } = r {
                let known = self.entries.get(thunk).is_some_and(|e| e.thunk.outputs.contains(name));
                if !known {
                    return Err(PlanError::UnknownRef(r.to_string()));
                }
            }
        }
        Ok(())
    }

    fn apply_memo(&mut self, reduction: &Reduction) {
        let Some((at, _, entry)) = self.entries.get_full_mut(&reduction.thunk) else { return };
        let names: Vec<&String> = reduction.outputs.iter().map(|(n, _)| n).collect();
        if names != entry.thunk.outputs.iter().collect::<Vec<_>>() {
            return;
        }
        let outputs = reduction.outputs.iter().map(|(n, b)| (n.clone(), Value::Blob(*b))).collect();
        self.counts.set(&mut entry.state, State::Done { outputs });
        entry.reported = true;
        for (_, blob) in &reduction.outputs {
            self.producers.insert(*blob, slot(at));
        }
    }

    pub(crate) fn name(&self, thunk: Id) -> &str {
        self.entries.get(&thunk).map_or("?", |e| &e.name)
    }

    pub(crate) fn thunk(&self, thunk: Id) -> Option<(&str, &Thunk)> {
        self.entries.get(&thunk).map(|e| (&*e.name, &e.thunk))
    }

    pub(crate) fn resolve(&self, r: &Ref) -> Resolved {
        let mut current = r;
        for _ in 0..MAX_TAIL_DEPTH {
            let (thunk, name) = match current {
                Ref::Blob(id) => return Resolved::Blob(*id),
                Ref::Output { thunk, name } => (thunk, name),
            };
            let Some(entry) = self.entries.get(thunk) else {
                return Resolved::Broken(format!("`{current}` names a thunk this job does not define"));
            };
            let State::Done { outputs, .. } = &entry.state else { return Resolved::Waiting(*thunk) };
            match outputs.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
                Some(Value::Blob(id)) => return Resolved::Blob(*id),
                Some(Value::Tail(next)) => current = next,
                None => return Resolved::Broken(format!("thunk `{}` has no output `{name}`", entry.name)),
            }
        }
        Resolved::Broken(format!("`{r}` follows more than {MAX_TAIL_DEPTH} tail calls"))
    }

    fn demand_ref(&mut self, r: &Ref) {
        if let Ref::Output { thunk, .. } = r {
            self.demand(*thunk);
        }
    }

    fn demand(&mut self, thunk: Id) {
        let Some((at, _, entry)) = self.entries.get_full_mut(&thunk) else { return };
        if !entry.needed {
            entry.needed = true;
            if matches!(entry.state, State::Idle) {
                self.pending.push(slot(at));
            }
        }
    }

    /// Forgets a done thunk's outputs so it runs again (its outputs live nowhere any more).
    fn rerun(&mut self, thunk: Id) {
        let Some(entry) = self.entries.get_mut(&thunk) else { return };
        if entry.state.is_done() {
            self.counts.set(&mut entry.state, State::Idle);
            entry.needed = false;
        }
        self.demand(thunk);
    }

    /// Runs again the thunk that produced `blob`, and returns it; `None` if no thunk of this
    /// job did.
    pub(crate) fn demand_producer_of(&mut self, blob: Id) -> Option<Id> {
        let p = self.id(*self.producers.get(&blob)?);
        self.rerun(p);
        Some(p)
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(crate) fn evaluate_pending(&mut self, avail: &dyn Fn(&Id) -> Avail) -> Result<(), WireError> {
        while let Some(at) = self.pending.pop() {
            self.evaluate(at, avail)?;
        }
        // Examining a whole job at its start leaves room for all of it: not kept.
        if self.pending.capacity() > 1024 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Whether the job carries `blob` (an assignment brings it to the node).
    pub(crate) fn carries(&self, blob: &Id) -> bool {
        self.carried.contains(blob)
    }

    /// Whether a task of this job can get `blob` now; `None` when it must wait for an upload.
    fn usable(&self, blob: &Id, avail: Avail) -> Option<bool> {
        if self.carries(blob) {
            return Some(true);
        }
        match avail {
            Avail::Stored => Some(true),
            Avail::Cached if self.mode == Mode::P2p && !self.peer_failed.contains(blob) => Some(true),
            Avail::Cached if self.upload_requested.contains(blob) => None,
            _ => Some(false),
        }
    }

    /// Wakes the thunks and targets that waited for `blob` to reach storage (or for its upload
    /// to fail).
    pub(crate) fn wake_blob(&mut self, blob: Id) {
        self.pending.extend(self.blob_waiters.remove(&blob).unwrap_or_default());
        self.watch.dirty.extend(self.watch.on_blob.remove(&blob).unwrap_or_default());
    }

    /// Targets to look at now (each once, until something it waits for changes).
    pub(crate) fn take_dirty_targets(&mut self) -> BTreeSet<usize> {
        std::mem::take(&mut self.watch.dirty)
    }

    /// Target `i` is looked at again when `thunk` finishes.
    pub(crate) fn target_waits_for_thunk(&mut self, i: usize, thunk: Id) {
        self.watch.on_thunk.entry(thunk).or_default().push(i);
    }

    /// Target `i` is looked at again when `blob` reaches storage or fails to.
    pub(crate) fn target_waits_for_blob(&mut self, i: usize, blob: Id) {
        self.watch.on_blob.entry(blob).or_default().push(i);
    }

    /// Target `i` is in storage, for good.
    pub(crate) fn target_stored(&mut self, i: usize) {
        if !std::mem::replace(&mut self.watch.stored[i], true) {
            self.watch.stored_count += 1;
        }
    }

    /// A target that will never be stored: its thunk failed (a job that keeps going).
    pub(crate) fn target_failed(&mut self, i: usize) {
        self.target_stored(i);
    }

    /// Whether every target is in storage, or failed.
    pub(crate) fn all_targets_stored(&self) -> bool {
        self.watch.stored_count == self.watch.stored.len()
    }

    /// Blobs that thunks still to run need, and targets' blobs (for draining nodes).
    pub(crate) fn needed_blobs(&self) -> BTreeSet<Id> {
        let waiting = self.entries.values().filter(|e| e.needed && !e.state.is_done());
        let refs = waiting.flat_map(|e| e.thunk.refs()).chain(&self.targets);
        refs.filter_map(|r| if let Resolved::Blob(b) = self.resolve(r) { Some(b) } else { None }).collect()
    }

    fn evaluate(&mut self, at: Slot, avail: &dyn Fn(&Id) -> Avail) -> Result<(), WireError> {
        let Some((&thunk, entry)) = self.entries.get_index(at as usize) else { return Ok(()) };
        if !entry.needed || !matches!(entry.state, State::Idle) {
            return Ok(());
        }
        // The first examination demands every missing input (so producers run in parallel), but
        // the thunk waits on the first one only; when that one is done, the examination resumes
        // where it stopped (what was before it stays available until a loss resets every
        // examination). A thunk with n inputs is thus examined in O(n) in all, not per completion.
        let resume = entry.scanned.map(|n| n as usize);
        let start = resume.unwrap_or(0);
        let refs: Vec<Ref> = entry.thunk.refs().skip(start).cloned().collect();
        let mut blocked = false;
        for (i, r) in refs.iter().enumerate() {
            if blocked && resume.is_some() {
                break;
            }
            let wait = match self.resolve(r) {
                Resolved::Blob(blob) => match self.usable(&blob, avail(&blob)) {
                    Some(true) => continue,
                    None => Wait::Upload(blob),
                    Some(false) => match self.producers.get(&blob).map(|&p| self.id(p)) {
                        Some(producer) => {
                            self.rerun(producer);
                            Wait::Thunk(producer)
                        }
                        None => return Err(self.unavailable(thunk, blob)),
                    },
                },
                Resolved::Waiting(producer) if self.is_failed(producer) => {
                    self.skipped += 1;
                    self.give_up(thunk);
                    return Ok(());
                }
                Resolved::Waiting(producer) => {
                    self.demand(producer);
                    Wait::Thunk(producer)
                }
                Resolved::Broken(why) => return Err(WireError::new(ErrorCode::BadTail, why)),
            };
            if !blocked {
                // Below `u32::MAX`: a thunk's refs are bounded by its size (16 MiB).
                self.entries[at as usize].scanned = Some((start + i) as u32);
                let waiting = match wait {
                    Wait::Thunk(p) => self.waiters.entry(p).or_default(),
                    Wait::Upload(b) => self.blob_waiters.entry(b).or_default(),
                };
                waiting.insert(at);
                blocked = true;
            }
        }
        if !blocked {
            let entry = &mut self.entries[at as usize];
            entry.scanned = None;
            self.counts.set(&mut entry.state, State::Ready);
            self.push_ready(at, false);
        }
        Ok(())
    }

    fn unavailable(&self, thunk: Id, blob: Id) -> WireError {
        let message =
            format!("input {blob} of thunk `{}` is not available on any node or in storage", self.name(thunk));
        WireError::new(ErrorCode::InputUnavailable, message)
    }

    /// Records that `thunk` failed with `error` (a job that keeps going): it runs no more, and
    /// what waits for it is skipped.
    pub(crate) fn thunk_failed(&mut self, thunk: Id, error: WireError) {
        self.failures.insert(thunk, error);
        self.give_up(thunk);
    }

    /// Marks `thunk` failed and wakes what waits for it (and the targets), which then finds
    /// its input failed in turn.
    fn give_up(&mut self, thunk: Id) {
        if let Some(entry) = self.entries.get_mut(&thunk) {
            self.counts.set(&mut entry.state, State::Failed);
        }
        self.pending.extend(self.waiters.remove(&thunk).unwrap_or_default());
        self.watch.thunk_done(thunk);
    }

    pub(crate) fn is_failed(&self, thunk: Id) -> bool {
        self.entries.get(&thunk).is_some_and(|e| matches!(e.state, State::Failed))
    }

    /// Thunks in the ready queue (an upper bound: entries that stopped being ready leave it
    /// lazily).
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(crate) fn next_ready(&mut self) -> Option<Id> {
        while let Some(Ready { slot, .. }) = self.ready.pop() {
            let (&thunk, entry) = self.entries.get_index(slot as usize)?;
            if matches!(entry.state, State::Ready) {
                return Some(thunk);
            }
        }
        None
    }

    pub(crate) fn resolved_inputs(&self, thunk: Id) -> Vec<Id> {
        let Some(entry) = self.entries.get(&thunk) else { return Vec::new() };
        entry
            .thunk
            .refs()
            .filter_map(|r| match self.resolve(r) {
                Resolved::Blob(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn mark_running(&mut self, thunk: Id, node: NodeId) {
        if let Some(e) = self.entries.get_mut(&thunk) {
            self.counts.set(&mut e.state, State::Running { node });
        }
    }

    /// A running thunk goes back to waiting (its node left or the attempt failed); returns its
    /// attempt count.
    pub(crate) fn requeue(&mut self, thunk: Id) -> u32 {
        let Some((at, _, entry)) = self.entries.get_full_mut(&thunk) else { return 0 };
        if matches!(entry.state, State::Running { .. }) {
            self.counts.set(&mut entry.state, State::Idle);
        }
        entry.attempts += 1;
        if entry.needed {
            self.pending.push(slot(at));
        }
        entry.attempts
    }

    /// After a loss, and when the job starts: every waiting or ready thunk is examined again,
    /// in the job's order (the pending stack is pushed from the end), so that among thunks
    /// ready at once the first in the job is the first in line.
    pub(crate) fn reset_ready(&mut self) {
        self.ready.clear();
        self.watch.all_dirty();
        for (at, e) in self.entries.values_mut().enumerate().rev() {
            e.scanned = None;
            if matches!(e.state, State::Ready) {
                self.counts.set(&mut e.state, State::Idle);
            }
            if e.needed && matches!(e.state, State::Idle) {
                self.pending.push(slot(at));
            }
        }
        let targets = self.targets.clone();
        targets.iter().for_each(|t| self.demand_ref(t));
    }

    /// Records a finished thunk's outputs; returns the blobs now held by the node that ran it.
    pub(crate) fn complete(
        &mut self,
        thunk: Id,
        outputs: &[(String, OutputValue)],
        ran: Ran,
    ) -> Result<Vec<Id>, WireError> {
        let (at, name, declared) = match self.entries.get_full(&thunk) {
            Some((at, _, e)) => (slot(at), e.name.to_string(), e.thunk.outputs.clone()),
            None => return Ok(Vec::new()),
        };
        let reported: Vec<&String> = outputs.iter().map(|(n, _)| n).collect();
        if reported != declared.iter().collect::<Vec<_>>() {
            let message = format!("node reported outputs {reported:?} for thunk `{name}`, which declares {declared:?}");
            return Err(WireError::new(ErrorCode::BadMessage, message));
        }
        let mut placed = Vec::new();
        let mut values = Vec::with_capacity(outputs.len());
        for (out, value) in outputs {
            let value = match value {
                OutputValue::Blob(blob) => {
                    self.producers.insert(*blob, at);
                    // A new copy on the node that made it: the peer that failed to serve the old
                    // one (or left before it uploaded it) is not this one.
                    self.peer_failed.remove(blob);
                    placed.push(*blob);
                    Value::Blob(*blob)
                }
                OutputValue::Tail { blob, thunks, result } => {
                    self.has_tails = true;
                    placed.push(*blob);
                    placed.extend(self.add_tail(&name, out, thunks, result)?);
                    self.demand_ref(result);
                    Value::Tail(result.clone())
                }
            };
            values.push((out.clone(), value));
        }
        let e = &mut self.entries[at as usize];
        self.counts.set(&mut e.state, State::Done { outputs: values.into() });
        e.executed = true;
        self.faulted_on.remove(&thunk);
        self.ran.insert(thunk, ran);
        self.pending.extend(self.waiters.remove(&thunk).unwrap_or_default());
        self.watch.thunk_done(thunk);
        self.try_report(thunk);
        for outer in self.resolve_waiters.remove(&thunk).unwrap_or_default() {
            self.try_report(outer);
        }
        Ok(placed)
    }

    /// Adds a tail's thunks; returns the blobs its thunks read directly (held by the node that
    /// wrote the tail).
    fn add_tail(
        &mut self,
        parent: &str,
        output: &str,
        thunks: &[SubmittedThunk],
        result: &Ref,
    ) -> Result<Vec<Id>, WireError> {
        let bad = |reason: String| {
            WireError::new(ErrorCode::BadTail, format!("tail `{output}` of thunk `{parent}`: {reason}"))
        };
        self.add_thunks(thunks.iter().cloned(), &format!("{parent}/")).map_err(|e| bad(e.to_string()))?;
        let refs = thunks.iter().flat_map(|t| t.thunk.refs()).chain(std::iter::once(result));
        self.check_refs(refs).map_err(|e| bad(e.to_string()))?;
        let blobs = thunks.iter().flat_map(|t| t.thunk.refs()).chain(std::iter::once(result));
        Ok(blobs
            .filter_map(|r| match r {
                Ref::Blob(b) => Some(*b),
                Ref::Output { .. } => None,
            })
            .collect())
    }

    /// Queues the thunk's reduction once every output resolves to a blob.
    fn try_report(&mut self, thunk: Id) {
        let Some(entry) = self.entries.get(&thunk) else { return };
        if entry.reported || !entry.state.is_done() {
            return;
        }
        let mut outputs = Vec::with_capacity(entry.thunk.outputs.len());
        for name in &entry.thunk.outputs {
            match self.resolve(&Ref::Output { thunk, name: name.clone() }) {
                Resolved::Blob(b) => outputs.push((name.clone(), b)),
                Resolved::Waiting(inner) => {
                    self.resolve_waiters.entry(inner).or_default().push(thunk);
                    return;
                }
                Resolved::Broken(_) => return,
            }
        }
        let name = entry.name.to_string();
        if let Some(e) = self.entries.get_mut(&thunk) {
            e.reported = true;
        }
        // A thunk done without running here (from the memo cache) is reported by nobody, and
        // one whose checked results differed is not recorded.
        let Some(ran) = self.ran.remove(&thunk).filter(|_| !self.unrecorded.contains(&thunk)) else { return };
        self.resolved_out.push(Final { name, reduction: Reduction { thunk, outputs }, ran });
    }

    /// How many waiting registrations exist (each blocked thunk should hold one).
    #[cfg(test)]
    pub(crate) fn waiter_entries(&self) -> usize {
        self.waiters.values().map(BTreeSet::len).sum::<usize>()
            + self.blob_waiters.values().map(BTreeSet::len).sum::<usize>()
    }

    pub(crate) fn take_resolved(&mut self) -> Vec<Final> {
        std::mem::take(&mut self.resolved_out)
    }

    pub(crate) fn progress(&self) -> Progress {
        let StateCounts { done, running, ready } = self.counts;
        let uploads = self.upload_requested.len() as u64;
        Progress { total: self.entries.len() as u64, done, running, ready, nodes: 0, uploads, checking: 0 }
    }

    /// Panics if the counts kept for progress differ from a count of the states.
    #[cfg(test)]
    pub(crate) fn check_counts(&self) {
        let mut counted = StateCounts::default();
        self.entries.values().for_each(|e| counted.add(&e.state, true));
        let kept = self.counts;
        assert_eq!((counted.done, counted.running, counted.ready), (kept.done, kept.running, kept.ready));
    }

    pub(crate) fn outcome(&self, targets: Vec<(Ref, Id)>) -> JobOutcome {
        let total = self.entries.len() as u64;
        let executed = self.entries.values().filter(|e| e.executed).count() as u64;
        let failed = self.failures.len() as u64;
        let mut failures: Vec<WireError> = self.failures.values().cloned().collect();
        failures.sort_by(|a, b| a.message.cmp(&b.message));
        JobOutcome {
            failures,
            skipped: self.skipped,
            targets,
            stats: self.stats,
            executed,
            cached: total.saturating_sub(executed + failed + self.skipped),
            total,
            nodes_lost: self.nodes_lost,
            storage_fallbacks: self.storage_fallbacks,
            copies: self.copies,
            carried: Vec::new(),
        }
    }
}
