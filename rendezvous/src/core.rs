//! The rendezvous' decisions, as a pure state machine: it owns the planner and the registry of
//! connected nodes and clients, takes events from connections with the time (`handle(now, ..)`),
//! and returns what to send to whom as [`Action`]s (`poll`). It owns no socket, channel or
//! clock: `driver.rs` runs it under tokio, and the tests step it by hand and replay seeded
//! random fault schedules against it.
//!
//! It also brokers direct paths between nodes. A consumer is told to dial a producer where the
//! rendezvous sees it (its NAT's public side), or at its private address when both sit behind the
//! same NAT. A producer behind a NAT is introduced to each new consumer first, so that it dials
//! the consumer at the same time: each side's packets open its own NAT to the other's.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use thunkmesh_planner::{Decision, JobId, NodeId, Place, Planner};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::submit::{Assembler, JobLimits, REF_WEIGHT};
use thunkmesh_protocol::wire::{
    Assignment, CARRIED_JOB_BYTES, Carried, Disagreement, ErrorCode, FromRendezvous, InputFrom, InputSource, JobHeader,
    JobPart, JobStatus, MeshStatus, Mode, NatKind, NodeHello, NodeStatus, Progress, Resolution, Source, TaskReport,
    ToRendezvous, TransferStats, UploadRequest, WireError,
};
use tracing::{info, warn};

use crate::journal::{Assigned, Entry, INPUTS_SHOWN, Journal, millis};

/// How often clients hear about progress (when it changed).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What connections tell the core.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A node said hello.
    NodeJoined { node: u64, hello: NodeHello, addr: SocketAddr },
    /// A client said hello; its job id is its session.
    ClientJoined { job: u64 },
    /// A message on an admitted connection.
    Message { from: u64, msg: ToRendezvous },
    /// A connection now comes from another address (its NAT mapped it anew).
    Moved { session: u64, addr: SocketAddr },
    /// A connection ended (or cannot keep up with what it is sent).
    Left { session: u64 },
}

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
#[allow(clippy::large_enum_variant, reason = "each action is moved once, straight to its connection")]
pub(crate) enum Action {
    /// Send a message on a session's control stream (a refusal closes the connection after).
    Send { to: u64, msg: FromRendezvous },
    /// This many nodes are registered now.
    Nodes(usize),
}

#[derive(Debug)]
struct NodeEntry {
    name: String,
    slots: u32,
    /// What it found out about its NAT.
    nat: NatKind,
    /// Where its connection comes from, as seen here.
    addr: SocketAddr,
    /// Where it sees itself (differs from `addr` behind a NAT).
    local: Option<SocketAddr>,
    fingerprint: [u8; 32],
    /// How it isolates programs, as it says.
    isolation: String,
    /// Ids of its cache it said would follow and have not yet: it gets work once this is empty
    /// (`None`: it has it already).
    awaited: Option<Awaited>,
    /// Consumers this node was told to dial.
    introduced: HashSet<NodeId>,
    /// How many objects it announced that it holds (at most the core's `max_holds` count).
    announced: u64,
    /// When it joined, on the core's clock.
    joined: Duration,
}

impl NodeEntry {
    fn behind_nat(&self) -> bool {
        self.local.is_some_and(|local| local != self.addr)
    }

    /// Whether `consumer` can have a direct path to this node, as far as their NATs tell. Behind
    /// an endpoint-dependent (symmetric) NAT a node's packets to a peer leave from a port nobody
    /// saw, so only a node without a NAT can be reached from it, and it cannot be reached at all
    /// (except from behind the same NAT). Unknown NATs are given a try.
    fn direct_path_from(&self, consumer: &NodeEntry) -> bool {
        let symmetric = |n: &NodeEntry| n.nat == NatKind::EndpointDependent;
        self.addr.ip() == consumer.addr.ip()
            || (!symmetric(self) && (!symmetric(consumer) || self.nat == NatKind::None))
    }

    /// Where `consumer` dials this node: at its private address when both are behind one NAT
    /// (many NATs do not loop packets back to their own public side), else where it is seen.
    fn reachable_from(&self, consumer: &NodeEntry) -> SocketAddr {
        match self.local {
            Some(local) if self.addr.ip() == consumer.addr.ip() => local,
            _ => self.addr,
        }
    }
}

/// The ids a node announced in its hello, as they arrive.
#[derive(Debug)]
struct Awaited {
    left: u64,
    held: Vec<Id>,
}

#[derive(Debug)]
struct ClientEntry {
    /// Where its job is in arriving.
    job: Incoming,
    store: Option<String>,
    mode: Mode,
    require_direct: bool,
    /// It asked for a [`TaskReport`] of each task.
    report_tasks: bool,
    progress: Progress,
    /// The bytes of the values its job carries, held while the job lives (at most
    /// `CARRIED_JOB_BYTES`, checked as they arrived).
    carried: HashMap<Id, Vec<u8>>,
    /// Small objects nodes stored for its job, with their bytes (checked): its targets among
    /// them go to it with the outcome.
    returned: HashMap<Id, Vec<u8>>,
    /// What `returned` holds, counting 64 bytes an object besides its own: at most
    /// `CARRIED_JOB_BYTES`.
    returned_bytes: u64,
}

/// A client's job as its pieces arrive.
#[derive(Debug)]
enum Incoming {
    /// Not begun.
    None,
    /// Begun at this time since the core started; parts are being added.
    Building(Box<Assembler>, Duration),
    /// Refused for its size: the rest of it is read and ignored.
    Refused,
    /// Whole, and given to the planner at this time since the core started.
    Planned(Duration),
}

/// The most objects one node may announce that it holds: a node that says more (a hello of
/// `u64::MAX`, an endless stream of `Holds`) has the rest ignored, so what the rendezvous keeps of
/// one node stays bounded. The planner's index costs about 400 bytes an object (the id in the
/// node's set and in the object map, with its holders), so this count is about 100 MiB; at 2^20
/// a flood measured 648 MiB at its peak. A node past it still runs work; only what it holds
/// beyond it is not counted on for placement.
pub(crate) const MAX_HOLDS_PER_NODE: u64 = 1 << 18;

/// Nodes that left whose fingerprints are kept for their late results.
const MAX_REMEMBERED_FINGERPRINTS: usize = 1 << 16;

#[derive(Debug)]
pub(crate) struct Core {
    planner: Planner,
    limits: JobLimits,
    /// [`MAX_HOLDS_PER_NODE`], or less in tests.
    max_holds: u64,
    nodes: HashMap<NodeId, NodeEntry>,
    clients: HashMap<JobId, ClientEntry>,
    out: VecDeque<Action>,
    /// Nodes refused at their hello: prefixes of certificate fingerprints, in lowercase hex.
    forbidden: Vec<String>,
    /// Fingerprints of nodes, kept after they leave, for results reported later.
    fingerprints: HashMap<NodeId, [u8; 32]>,
    /// The time of the event being handled, since the core started.
    now: Duration,
    /// A session left or a job was dropped since [`Core::take_released`] was last asked.
    released: bool,
    /// What tasks ran where, for the web view and the clients that ask.
    journal: Journal,
    /// Reports of ended tasks not yet sent to their clients.
    reports: BTreeMap<JobId, Vec<TaskReport>>,
}

impl Default for Core {
    fn default() -> Core {
        Core {
            planner: Planner::default(),
            limits: JobLimits::default(),
            max_holds: MAX_HOLDS_PER_NODE,
            nodes: HashMap::new(),
            clients: HashMap::new(),
            out: VecDeque::new(),
            forbidden: Vec::new(),
            fingerprints: HashMap::new(),
            now: Duration::ZERO,
            released: false,
            journal: Journal::default(),
            reports: BTreeMap::new(),
        }
    }
}

impl Core {
    /// A core that takes jobs within `limits`, refuses the nodes whose fingerprints begin with
    /// one of `forbidden` (lowercase hex), and numbers tasks from `first_task` (the driver picks
    /// it at random: a node's report from before a restart then names no task of this run).
    pub(crate) fn new(limits: JobLimits, forbidden: &[String], first_task: u64) -> Core {
        let planner = Planner::with_config(thunkmesh_planner::PlannerConfig { first_task, ..Default::default() });
        Core { limits, forbidden: forbidden.to_vec(), planner, ..Core::default() }
    }

    /// The fingerprint of `node`, in the registry or as it was when it left (zeros if never seen).
    fn fingerprint_of(&self, node: NodeId) -> [u8; 32] {
        let registered = self.nodes.get(&node).map(|n| n.fingerprint);
        registered.or_else(|| self.fingerprints.get(&node).copied()).unwrap_or_default()
    }

    /// A core that lets a node announce at most `max_holds` objects.
    #[cfg(test)]
    pub(crate) fn with_max_holds(max_holds: u64) -> Core {
        Core { max_holds, ..Core::default() }
    }

    /// How many objects `node` announced that count.
    #[cfg(test)]
    pub(crate) fn announced(&self, session: u64) -> Option<u64> {
        self.nodes.get(&NodeId(session)).map(|n| n.announced)
    }

    /// Takes one event at `now` (time since the core started).
    pub(crate) fn handle(&mut self, now: Duration, event: Event) {
        self.now = now;
        self.planner.advance(now);
        self.apply(event);
        self.dispatch();
    }

    /// Time passed with nothing else happening (a held thunk's wait may have run out).
    pub(crate) fn wake(&mut self, now: Duration) {
        self.now = now;
        self.planner.advance(now);
        self.dispatch();
    }

    /// When [`Core::wake`] should next be called, if nothing else happens first.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.planner.next_deadline()
    }

    /// Tells clients how their jobs progress, and refuses submissions that took too long (call
    /// every [`PROGRESS_EVERY`]).
    pub(crate) fn tick(&mut self, now: Duration) {
        self.now = now;
        self.planner.advance(now);
        self.refuse_late_submissions();
        self.send_progress();
    }

    /// Whether a session left or a job was dropped since the last call: what it held is free.
    pub(crate) fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// A job's progress, for tests.
    #[cfg(test)]
    pub(crate) fn progress(&self, job: u64) -> Option<Progress> {
        self.planner.progress(JobId(job))
    }

    /// The next thing to do.
    pub(crate) fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::NodeJoined { node: session, hello, addr } => {
                let node = NodeId(session);
                let id = hex::encode(hello.fingerprint);
                if self.forbidden.iter().any(|prefix| id.starts_with(prefix.as_str())) {
                    warn!(node = session, name = %hello.name, "refusing a forbidden node");
                    let message = "this node is forbidden here (`thunkmesh rendezvous --forbid-node`)";
                    let msg = FromRendezvous::Refused(WireError::new(ErrorCode::Unauthorized, message));
                    // Not registered, so not through `send`: the refusal closes its connection.
                    return self.out.push_back(Action::Send { to: session, msg });
                }
                let local = hello.local.parse().ok();
                if local.is_none() {
                    warn!(node = session, local = %hello.local, "node sent a local address that is not ip:port");
                }
                let entry = NodeEntry {
                    name: hello.name.clone(),
                    slots: hello.slots,
                    nat: NatKind::Unknown,
                    addr,
                    local,
                    fingerprint: hello.fingerprint,
                    isolation: hello.isolation.clone(),
                    introduced: HashSet::new(),
                    awaited: Some(Awaited { left: hello.holds.min(self.max_holds), held: Vec::new() }),
                    announced: 0,
                    joined: self.now,
                };
                self.nodes.insert(node, entry);
                self.holds(node, Vec::new());
            }
            Event::ClientJoined { job } => {
                self.clients.insert(
                    JobId(job),
                    ClientEntry {
                        job: Incoming::None,
                        store: None,
                        mode: Mode::P2p,
                        require_direct: false,
                        report_tasks: false,
                        progress: Progress::default(),
                        carried: HashMap::new(),
                        returned: HashMap::new(),
                        returned_bytes: 0,
                    },
                );
            }
            Event::Moved { session, addr } => self.moved(NodeId(session), addr),
            Event::Left { session } => self.left(session),
            Event::Message { from, msg } => self.message(from, msg),
        }
    }

    /// A node's NAT mapped it anew: consumers dial it at its new address, and every pair it is in
    /// is introduced again (the old holes point at the old address).
    fn moved(&mut self, node: NodeId, addr: SocketAddr) {
        let Some(entry) = self.nodes.get_mut(&node) else { return };
        entry.addr = addr;
        entry.introduced.clear();
        self.nodes.values_mut().for_each(|n| _ = n.introduced.remove(&node));
    }

    /// Part of a node's cache: kept until all it announced arrived, then the node is ready.
    fn holds(&mut self, node: NodeId, mut held: Vec<Id>) {
        let Some(entry) = self.nodes.get_mut(&node) else { return };
        let room = self.max_holds.saturating_sub(entry.announced);
        if held.len() as u64 > room {
            // Said once, when the node crosses the limit.
            if room > 0 {
                warn!(
                    node = node.0,
                    limit = self.max_holds,
                    "a node announced more objects than it may; the rest are not counted"
                );
            }
            held.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        }
        entry.announced += held.len() as u64;
        let Some(awaited) = entry.awaited.as_mut() else {
            return self.planner.node_holds(node, &held);
        };
        awaited.left = awaited.left.saturating_sub(held.len() as u64);
        awaited.held.extend(held);
        if awaited.left > 0 {
            return;
        }
        let (slots, held) = (entry.slots, std::mem::take(&mut awaited.held));
        entry.awaited = None;
        self.planner.node_joined(node, slots, &held);
        self.out.push_back(Action::Nodes(self.ready_nodes()));
    }

    /// Nodes that may be given work.
    fn ready_nodes(&self) -> usize {
        self.nodes.values().filter(|n| n.awaited.is_none()).count()
    }

    fn left(&mut self, session: u64) {
        self.released = true;
        let (id, job) = (NodeId(session), JobId(session));
        if let Some(node) = self.nodes.remove(&id) {
            if self.fingerprints.len() >= MAX_REMEMBERED_FINGERPRINTS {
                // Results are reported within moments of their node's last message; a bound
                // keeps a rendezvous that outlives many nodes from growing.
                self.fingerprints.clear();
            }
            self.fingerprints.insert(id, node.fingerprint);
            info!(node = session, "node left");
            if node.awaited.is_none() {
                self.out.push_back(Action::Nodes(self.ready_nodes()));
                self.planner.node_left(id);
            }
            self.close_tasks(Some(id), None);
        }
        if self.clients.remove(&job).is_some() {
            self.planner.cancel(job);
            self.close_tasks(None, Some(job));
            self.reports.remove(&job);
        }
    }

    fn message(&mut self, from: u64, msg: ToRendezvous) {
        // A session is a node's or a client's connection: which one, its registration says.
        let (node, job) = (NodeId(from), JobId(from));
        let is_node = self.nodes.contains_key(&node);
        match msg {
            ToRendezvous::Submit(header) => self.begin_job(job, header),
            ToRendezvous::JobPart(part) => self.job_part(job, part),
            ToRendezvous::JobEnd => self.end_job(job),
            ToRendezvous::Holds(held) if is_node => self.holds(node, held),
            ToRendezvous::Dropped(dropped) if is_node => self.planner.node_dropped(node, &dropped),
            ToRendezvous::Done(d) if is_node => {
                self.task_ended(d.task, true, d.stats);
                self.planner.task_done(node, d.task, &d.outputs, d.stats);
            }
            ToRendezvous::Failed(f) if is_node => {
                self.task_ended(f.task, false, f.stats);
                if f.error.code == ErrorCode::InputUnavailable {
                    // A path may have closed (a NAT forgot it): the next attempt introduces again.
                    self.nodes.values_mut().for_each(|n| _ = n.introduced.remove(&node));
                }
                self.planner.task_failed(node, f.task, &f.error, &f.unavailable, f.stats);
            }
            ToRendezvous::Stored(s) if is_node => {
                self.planner.stored(node, JobId(s.job), s.blob, s.error.as_ref(), s.stats);
                if let Some(bytes) = s.bytes.filter(|_| s.error.is_none()) {
                    self.returned(JobId(s.job), Carried { blob: s.blob, bytes });
                }
            }
            ToRendezvous::Drain if is_node => {
                info!(node = from, "node draining");
                self.planner.node_draining(node);
            }
            ToRendezvous::Nat(kind) if is_node => {
                info!(node = from, nat = %kind, "node classified its NAT");
                if let Some(entry) = self.nodes.get_mut(&node) {
                    entry.nat = kind;
                }
                self.planner.node_reachable(node, kind != NatKind::EndpointDependent);
            }
            ToRendezvous::Status if !is_node => self.send(from, FromRendezvous::Status(self.status())),
            _ => self.refuse(from, "a client may only submit or ask for status, and only nodes report tasks"),
        }
    }

    /// A client begins its job (one per connection).
    fn begin_job(&mut self, job: JobId, header: JobHeader) {
        let Some(client) = self.clients.get_mut(&job) else {
            return self.refuse(job.0, "only clients submit jobs");
        };
        if !matches!(client.job, Incoming::None) {
            return self.refuse(job.0, "one job per client connection");
        }
        client.store = Some(header.store.clone());
        client.mode = header.mode;
        client.require_direct = header.require_direct;
        client.report_tasks = header.report_tasks;
        client.job = Incoming::Building(Box::new(Assembler::new(header, self.limits)), self.now);
    }

    /// More of a job; one over the limits fails at once, and what it sends after is ignored.
    fn job_part(&mut self, job: JobId, part: JobPart) {
        let Some(building) = self.building(job, "a job part must follow the job's Submit and come before its JobEnd")
        else {
            return;
        };
        match building.add(part) {
            Ok(()) => self.keep_unfinished_within_budget(),
            Err(e) => self.refuse_job(job, e),
        }
    }

    /// Jobs being received hold at most [`JobLimits::unfinished`] together: past it, the one that
    /// holds the most is refused (clients that never end a submission cannot crowd the rest out,
    /// nor exhaust the server's memory together).
    fn keep_unfinished_within_budget(&mut self) {
        loop {
            let receiving = self.clients.iter().filter_map(|(&job, c)| match &c.job {
                Incoming::Building(building, _) => Some((building.bytes(), job)),
                _ => None,
            });
            let (total, largest) = receiving.fold((0, None), |(total, largest), (bytes, job)| {
                (total + bytes, largest.max(Some((bytes, std::cmp::Reverse(job)))))
            });
            let Some((held, std::cmp::Reverse(job))) = largest.filter(|_| total > self.limits.unfinished) else {
                return;
            };
            let message = format!(
                "the rendezvous is receiving {total} bytes of jobs at once, over its limit of {} \
                 (`thunkmesh rendezvous --max-unfinished-bytes`), and this job held the most ({held} bytes)",
                self.limits.unfinished
            );
            self.refuse_job(job, WireError::new(ErrorCode::TooLarge, message));
        }
    }

    /// Refuses a job being received: the client is told why, what it holds is dropped, and what
    /// it sends after is ignored.
    fn refuse_job(&mut self, job: JobId, error: WireError) {
        let Some(client) = self.clients.get_mut(&job) else { return };
        if let Incoming::Building(building, _) = &client.job {
            warn!(job = job.0, thunks = building.thunks(), bytes = building.bytes(), error = %error.message, "job refused");
        }
        client.job = Incoming::Refused;
        self.released = true;
        self.send(job.0, FromRendezvous::JobFailed(error));
    }

    /// Refuses the jobs whose submission has not ended within [`JobLimits::submit_within`].
    fn refuse_late_submissions(&mut self) {
        let within = self.limits.submit_within;
        let late: Vec<JobId> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.job, Incoming::Building(_, begun) if self.now.saturating_sub(begun) > within))
            .map(|(&job, _)| job)
            .collect();
        for job in late {
            let message = format!(
                "the job was not whole within {} of its first message (`thunkmesh rendezvous --submit-within`)",
                humantime::format_duration(within)
            );
            self.refuse_job(job, WireError::new(ErrorCode::TooLarge, message));
        }
    }

    /// The job is whole: the planner takes it.
    fn end_job(&mut self, job: JobId) {
        let now = self.now;
        if self.building(job, "JobEnd without a job being sent").is_none() {
            return;
        }
        let Some(Incoming::Building(building, _)) =
            self.clients.get_mut(&job).map(|c| std::mem::replace(&mut c.job, Incoming::Planned(now)))
        else {
            return;
        };
        let mut sub = building.finish();
        // The planner reads only the carried values' ids; their bytes stay here.
        let carried = sub.carried.iter_mut().map(|c| (c.blob, std::mem::take(&mut c.bytes))).collect();
        if let Some(client) = self.clients.get_mut(&job) {
            client.carried = carried;
        }
        info!(job = job.0, thunks = sub.thunks.len(), targets = sub.targets.len(), "job submitted");
        if let Err(e) = self.planner.submit(job, sub) {
            self.send(job.0, FromRendezvous::JobFailed(WireError::new(ErrorCode::BadMessage, e.to_string())));
        }
    }

    /// Keeps the bytes a node sent with an object it stored for `job`, if they are that object
    /// and within the job's budget (else the client reads it from storage, as it would anyway).
    fn returned(&mut self, job: JobId, value: Carried) {
        let Some(client) = self.clients.get_mut(&job) else { return };
        let weight = REF_WEIGHT + value.bytes.len() as u64;
        let fits = client.returned_bytes + weight <= CARRIED_JOB_BYTES;
        if fits && !client.returned.contains_key(&value.blob) && value.is_intact() {
            client.returned_bytes += weight;
            client.returned.insert(value.blob, value.bytes);
        }
    }

    /// The bytes the rendezvous holds of `targets`, for the outcome.
    fn returned_targets(&mut self, job: JobId, targets: &[(thunkmesh_protocol::Ref, Id)]) -> Vec<Carried> {
        let Some(client) = self.clients.get_mut(&job) else { return Vec::new() };
        let returned = std::mem::take(&mut client.returned);
        client.returned_bytes = 0;
        let mut blobs: Vec<Id> = targets.iter().map(|(_, blob)| *blob).collect();
        blobs.sort_unstable();
        blobs.dedup();
        blobs.into_iter().filter_map(|blob| returned.get(&blob).map(|b| Carried { blob, bytes: b.clone() })).collect()
    }

    /// The job `job`'s client is sending; refuses the message (saying `out_of_place`) when it
    /// sends none, except the rest of a job refused for its size, which is ignored.
    fn building(&mut self, job: JobId, out_of_place: &str) -> Option<&mut Assembler> {
        let why = match self.clients.get(&job).map(|c| &c.job) {
            Some(Incoming::Building(..)) => None,
            Some(Incoming::Refused) => return None,
            Some(_) => Some(out_of_place),
            None => Some("only clients submit jobs"),
        };
        if let Some(why) = why {
            self.refuse(job.0, why);
            return None;
        }
        match self.clients.get_mut(&job).map(|c| &mut c.job) {
            Some(Incoming::Building(building, _)) => Some(building),
            _ => None,
        }
    }

    fn refuse(&mut self, session: u64, why: &str) {
        warn!(session, why, "unexpected message");
        self.send(session, FromRendezvous::Refused(WireError::new(ErrorCode::BadMessage, why)));
    }

    /// Sends a message to a connection that is still registered.
    fn send(&mut self, session: u64, msg: FromRendezvous) {
        if self.nodes.contains_key(&NodeId(session)) || self.clients.contains_key(&JobId(session)) {
            self.out.push_back(Action::Send { to: session, msg });
        }
    }

    /// Carries out the planner's decisions. The resolutions of one call go to each client as one
    /// message (before its job's end, if the job ended): a client is sent one message per event
    /// at most, however many thunks an event resolved, and so keeps up.
    fn dispatch(&mut self) {
        let mut resolved: BTreeMap<JobId, Vec<Resolution>> = BTreeMap::new();
        while let Some(decision) = self.planner.poll() {
            match decision {
                Decision::Assign(a) => self.assign(a),
                Decision::Upload { node, job, blob } => {
                    let store = self.store(job);
                    self.send(node.0, FromRendezvous::Upload(UploadRequest { job: job.0, blob, store }));
                }
                Decision::Resolved { job, name, reduction, node, inputs } => {
                    // A node that left since is named by what it said it was.
                    let producer = self.fingerprint_of(node);
                    let resolution = Resolution { reduction, name, executed: true, inputs, producer };
                    resolved.entry(job).or_default().push(resolution);
                }
                Decision::JobDone { job, mut outcome } => {
                    info!(job = job.0, executed = outcome.executed, cached = outcome.cached, "job done");
                    outcome.carried = self.returned_targets(job, &outcome.targets);
                    self.send_reports(job);
                    self.send_resolved(job, resolved.remove(&job));
                    self.send_progress();
                    self.send(job.0, FromRendezvous::JobDone(outcome));
                }
                Decision::Drained { node } => self.send(node.0, FromRendezvous::Drained),
                Decision::Disagreed { job, name, outvoted, undecided } => {
                    let ids = |nodes: Vec<NodeId>| nodes.into_iter().map(|n| self.fingerprint_of(n)).collect();
                    let disagreement = Disagreement { thunk: name, outvoted: ids(outvoted), undecided: ids(undecided) };
                    warn!(job = job.0, thunk = %disagreement.thunk, "a checked result differed between nodes");
                    self.send(job.0, FromRendezvous::Disagreed(disagreement));
                }
                Decision::Cancel { node, task } => {
                    self.task_ended(task, false, TransferStats::default());
                    self.send(node.0, FromRendezvous::Cancel { task });
                }
                Decision::Drop { node, blobs } => self.send(node.0, FromRendezvous::Drop(blobs)),
                Decision::JobFailed { job, error } => {
                    info!(job = job.0, error = %error.message, "job failed");
                    self.send_reports(job);
                    self.send_resolved(job, resolved.remove(&job));
                    self.send(job.0, FromRendezvous::JobFailed(error));
                }
            }
        }
        for (job, reports) in std::mem::take(&mut self.reports) {
            self.send(job.0, FromRendezvous::Tasks(reports));
        }
        for (job, resolutions) in resolved {
            self.send_resolved(job, Some(resolutions));
            self.send_progress_if_all_done(job);
        }
    }

    /// Tells a client at once when every thunk of its job is done (not at the next tick): what
    /// is left is storing its targets, and it writes its memo entries meanwhile.
    fn send_progress_if_all_done(&mut self, job: JobId) {
        let Some(client) = self.clients.get_mut(&job) else { return };
        let Some(p) = self.planner.progress(job).filter(|p| p.done == p.total && *p != client.progress) else { return };
        client.progress = p;
        self.send(job.0, FromRendezvous::Progress(p));
    }

    /// A task ended: the journal closes it, and its report waits for its client if it asked.
    fn task_ended(&mut self, task: u64, ok: bool, stats: TransferStats) {
        let report = self.journal.ended(task, self.now, ok, stats);
        self.keep_reports(report);
    }

    /// Closes the open tasks of a node that left or a job that was dropped.
    fn close_tasks(&mut self, node: Option<NodeId>, job: Option<JobId>) {
        let reports = self.journal.close_where(self.now, node, job);
        self.keep_reports(reports);
    }

    /// Keeps reports for their clients, but none of a job that has ended (a straggler's copy
    /// cancelled, or a late answer): its client was told the end already.
    fn keep_reports(&mut self, reports: impl IntoIterator<Item = (JobId, TaskReport)>) {
        for (job, report) in reports {
            if self.planner.progress(job).is_some() {
                self.reports.entry(job).or_default().push(report);
            }
        }
    }

    fn send_reports(&mut self, job: JobId) {
        if let Some(reports) = self.reports.remove(&job) {
            self.send(job.0, FromRendezvous::Tasks(reports));
        }
    }

    /// The journal's entries after `seq`, at most `max`, and the number of its last entry.
    pub(crate) fn journal(&self, seq: u64, max: usize) -> (Vec<Entry>, u64) {
        self.journal.since(seq, max)
    }

    fn send_resolved(&mut self, job: JobId, resolutions: Option<Vec<Resolution>>) {
        if let Some(resolutions) = resolutions {
            self.send(job.0, FromRendezvous::Resolved(resolutions));
        }
    }

    /// The registered nodes by name, and the jobs oldest first.
    pub(crate) fn status(&self) -> MeshStatus {
        let mut jobs: Vec<JobStatus> = self
            .clients
            .iter()
            .filter_map(|(&job, c)| {
                let running_ms = match c.job {
                    Incoming::Building(..) => 0,
                    Incoming::Planned(since) => millis(self.now.saturating_sub(since)).max(1),
                    Incoming::None | Incoming::Refused => return None,
                };
                let progress = self.planner.progress(job).unwrap_or(c.progress);
                Some(JobStatus { session: job.0, progress, running_ms, mode: c.mode })
            })
            .collect();
        jobs.sort_by_key(|j| (std::cmp::Reverse(j.running_ms), j.session));
        MeshStatus { nodes: self.nodes(), jobs, uptime_ms: millis(self.now) }
    }

    /// The registered nodes, by name.
    fn nodes(&self) -> Vec<NodeStatus> {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .iter()
            .map(|(&id, n)| {
                let cache = self.planner.cache_use(id);
                NodeStatus {
                    name: n.name.clone(),
                    observed: n.addr.to_string(),
                    local: n.local.map_or_else(|| "?".to_owned(), |a| a.to_string()),
                    nat: n.nat,
                    slots: n.slots,
                    running: u32::try_from(self.planner.running(id)).unwrap_or(u32::MAX),
                    isolation: n.isolation.clone(),
                    fingerprint: n.fingerprint,
                    held: cache.0,
                    held_bytes: cache.1,
                    connected_ms: millis(self.now.saturating_sub(n.joined)),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    fn store(&self, job: JobId) -> String {
        self.clients.get(&job).and_then(|c| c.store.clone()).unwrap_or_default()
    }

    fn assign(&mut self, a: thunkmesh_planner::Assign) {
        let producers: HashSet<NodeId> = a
            .sources
            .iter()
            .flat_map(|(_, places)| places)
            .filter_map(|p| if let Place::Node(n) = p { Some(*n) } else { None })
            .collect();
        for producer in producers {
            self.introduce(producer, a.node);
        }
        let Some((name, thunk)) = self.planner.thunk(a.job, a.thunk) else { return };
        let client = self.clients.get(&a.job);
        let relay = !client.is_some_and(|c| c.require_direct);
        let held = |blob: &Id| client.and_then(|c| c.carried.get(blob));
        let (carried, fetched): (Vec<_>, Vec<_>) =
            a.sources.iter().partition(|(blob, places)| places == &[Place::Carried] && held(blob).is_some());
        let journaled = self.assigned(&a, name, thunk);
        let assignment = Assignment {
            task: a.task,
            name: name.to_owned(),
            thunk: thunk.clone(),
            resolved: a.resolved.clone(),
            sources: fetched
                .into_iter()
                .map(|(blob, places)| InputSource { blob: *blob, sources: self.sources(*blob, places, a.node, relay) })
                .collect(),
            store: self.store(a.job),
            mode: client.map_or(Mode::P2p, |c| c.mode),
            carried: carried
                .iter()
                .filter_map(|(blob, _)| held(blob).map(|b| Carried { blob: *blob, bytes: b.clone() }))
                .collect(),
        };
        self.journal.started(journaled);
        self.send(a.node.0, FromRendezvous::Assign(assignment));
    }

    /// What the journal keeps of an assignment: where its inputs come from (the planner's first
    /// place for each the node lacks; all of them only for a client that asked for reports, so
    /// that a 100-input compile costs little more when nobody asked), and why the node.
    fn assigned(&self, a: &thunkmesh_planner::Assign, name: &str, thunk: &thunkmesh_protocol::Thunk) -> Assigned {
        let lacking: HashMap<Id, Option<&Place>> = a.sources.iter().map(|(b, places)| (*b, places.first())).collect();
        let from = |blob: &Id| match lacking.get(blob) {
            None => InputFrom::Local,
            Some(Some(Place::Node(n))) => InputFrom::Peer(self.node_name(*n)),
            Some(Some(Place::Carried)) => InputFrom::Carried,
            Some(_) => InputFrom::Storage,
        };
        let client = self.clients.get(&a.job);
        let report = client.is_some_and(|c| c.report_tasks);
        let kept = if report { a.resolved.len() } else { INPUTS_SHOWN };
        Assigned {
            task: a.task,
            job: a.job,
            node: a.node,
            node_name: self.node_name(a.node),
            name: name.to_owned(),
            program: program_name(thunk),
            why: why_here(a.why, &a.resolved, |blob| !lacking.contains_key(blob)),
            inputs: a.resolved.iter().take(kept).map(|blob| (*blob, from(blob))).collect(),
            inputs_total: a.resolved.len(),
            at: self.now,
            job_began: match client.map(|c| &c.job) {
                Some(Incoming::Planned(since)) => *since,
                _ => self.now,
            },
            report,
        }
    }

    /// A registered node's name ("?" if it is not registered).
    fn node_name(&self, node: NodeId) -> String {
        self.nodes.get(&node).map_or_else(|| "?".into(), |n| n.name.clone())
    }

    /// Where `consumer` can get `blob`, best first. A node holding it is offered directly where a
    /// direct path can form; between nodes behind NATs, a small object is also offered through
    /// the relay, for when the direct path does not form. A source that cannot work is left out:
    /// with none left, the consumer reports the input unavailable at once and it comes through
    /// storage.
    fn sources(&self, blob: Id, places: &[Place], consumer: NodeId, relay: bool) -> Vec<Source> {
        let consumer = self.nodes.get(&consumer);
        let mut sources = Vec::new();
        for place in places {
            let (id, node) = match place {
                Place::Storage => {
                    sources.push(Source::Storage);
                    continue;
                }
                Place::Carried => continue,
                Place::Node(n) => match self.nodes.get(n) {
                    Some(node) => (*n, node),
                    None => continue,
                },
            };
            let direct = consumer.is_none_or(|c| node.direct_path_from(c));
            if direct {
                let addr = consumer.map_or(node.addr, |c| node.reachable_from(c));
                sources.push(Source::Peer { addr: addr.to_string(), fingerprint: node.fingerprint });
            }
            let natted = node.behind_nat() || consumer.is_some_and(NodeEntry::behind_nat);
            if relay && natted && blob.size <= crate::relay::RELAY_MAX_BYTES {
                sources.push(Source::Relay { node: id.0 });
            }
        }
        sources
    }

    /// Tells a producer behind a NAT to dial a consumer it has not been introduced to.
    fn introduce(&mut self, producer: NodeId, consumer: NodeId) {
        let (Some(p), Some(c)) = (self.nodes.get(&producer), self.nodes.get(&consumer)) else { return };
        let useless = !p.behind_nat() || p.addr.ip() == c.addr.ip() || !p.direct_path_from(c);
        if producer == consumer || useless || p.introduced.contains(&consumer) {
            return;
        }
        let msg = FromRendezvous::Introduce { addr: c.reachable_from(p).to_string(), fingerprint: c.fingerprint };
        if let Some(p) = self.nodes.get_mut(&producer) {
            p.introduced.insert(consumer);
        }
        self.send(producer.0, msg);
    }

    fn send_progress(&mut self) {
        let mut updates = Vec::new();
        for (&job, client) in &mut self.clients {
            if let Some(p) = self.planner.progress(job).filter(|p| *p != client.progress) {
                client.progress = p;
                updates.push((job, p));
            }
        }
        for (job, p) in updates {
            self.send(job.0, FromRendezvous::Progress(p));
        }
    }
}

/// The file name of what a thunk runs, for the view's colours.
fn program_name(thunk: &thunkmesh_protocol::Thunk) -> String {
    match &thunk.program {
        thunkmesh_protocol::Program::Host { path, .. } => path.rsplit('/').next().unwrap_or(path).to_owned(),
        thunkmesh_protocol::Program::Ref(thunkmesh_protocol::Ref::Blob(id)) => format!("program {}", &id.hex()[..8]),
        thunkmesh_protocol::Program::Ref(thunkmesh_protocol::Ref::Output { name, .. }) => {
            name.rsplit('/').next().unwrap_or(name).to_owned()
        }
    }
}

/// Why the planner placed a task where it did: its reason, and what of its `inputs` the node
/// held.
fn why_here(why: thunkmesh_planner::Why, inputs: &[Id], held_there: impl Fn(&Id) -> bool) -> String {
    use thunkmesh_planner::Why;
    let reason = match why {
        Why::Chosen => "the planner's choice when it became ready (the soonest start there plus fetching)".to_owned(),
        Why::Waited { held } => {
            format!("held {} ms for this busy node, which holds its inputs, until a slot was free", held.as_millis())
        }
        Why::WaitedInVain => "its wait for a busy node ran out; the best node with a free slot then".to_owned(),
        Why::Copy => "a copy of a straggling task, on another node".to_owned(),
        Why::Check => "run again on another node to check a result (--verify)".to_owned(),
    };
    let total: u64 = inputs.iter().map(|b| b.size).sum();
    let (held, held_bytes) =
        inputs.iter().filter(|b| held_there(b)).fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.size));
    let holding = match inputs.len() {
        0 => "no inputs".to_owned(),
        n if held == n => format!("it held all {n} inputs ({held_bytes} bytes)"),
        n => format!("it held {held} of {n} inputs ({held_bytes} of {total} bytes)"),
    };
    format!("{reason}; {holding}")
}
