//! The core task: owns the planner and the registry of connected nodes and clients, turns
//! messages into planner events and planner decisions into messages.
//!
//! It also brokers direct paths between nodes. A consumer is told to dial a producer where the
//! rendezvous sees it (its NAT's public side), or at its private address when both sit behind the
//! same NAT. A producer behind a NAT is introduced to each new consumer first, so that it dials
//! the consumer at the same time: each side's packets open its own NAT to the other's.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use thunkmesh_planner::{Decision, Place, Planner};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{
    Assignment, ErrorCode, FromRendezvous, InputSource, Mode, NatKind, NodeHello, NodeStatus, Progress, Resolution,
    Source, ToRendezvous, UploadRequest, WireError,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How often clients hear about progress (when it changed).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What connections tell the core.
#[derive(Debug)]
pub(crate) enum Event {
    /// A node said hello.
    NodeJoined { node: u64, hello: NodeHello, addr: SocketAddr, tx: mpsc::Sender<FromRendezvous> },
    /// A client said hello; its job id is its session.
    ClientJoined { job: u64, tx: mpsc::Sender<FromRendezvous> },
    /// A message on an admitted connection.
    Message { from: u64, msg: ToRendezvous },
    /// A connection now comes from another address (its NAT mapped it anew).
    Moved { session: u64, addr: SocketAddr },
    /// A connection ended.
    Left { session: u64 },
}

#[derive(Debug)]
struct NodeEntry {
    tx: mpsc::Sender<FromRendezvous>,
    name: String,
    slots: u32,
    /// What it found out about its NAT.
    nat: NatKind,
    /// Where its connection comes from, as seen here.
    addr: SocketAddr,
    /// Where it sees itself (differs from `addr` behind a NAT).
    local: Option<SocketAddr>,
    fingerprint: [u8; 32],
    /// Consumers this node was told to dial.
    introduced: HashSet<u64>,
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

#[derive(Debug)]
struct ClientEntry {
    tx: mpsc::Sender<FromRendezvous>,
    store: Option<String>,
    mode: Mode,
    require_direct: bool,
    progress: Progress,
}

#[derive(Debug)]
pub(crate) struct Core {
    planner: Planner,
    nodes: HashMap<u64, NodeEntry>,
    clients: HashMap<u64, ClientEntry>,
    node_count: watch::Sender<usize>,
    /// The planner's clock starts here.
    started: tokio::time::Instant,
}

impl Core {
    /// A core that publishes how many nodes are registered on `node_count`.
    pub(crate) fn new(node_count: watch::Sender<usize>) -> Core {
        let started = tokio::time::Instant::now();
        Core { planner: Planner::new(), nodes: HashMap::new(), clients: HashMap::new(), node_count, started }
    }

    pub(crate) async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            // A thunk held for a busy node stops waiting at its deadline even if nothing happens.
            let deadline = self.planner.next_deadline().map(|at| self.started + at);
            let wake = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = inbox.recv() => {
                    let Some(event) = event else { return };
                    self.planner.advance(self.started.elapsed());
                    self.handle(event);
                    self.dispatch();
                }
                () = wake => {
                    self.planner.advance(self.started.elapsed());
                    self.dispatch();
                }
                _ = tick.tick() => self.send_progress(),
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::NodeJoined { node, hello, addr, tx } => {
                let local = hello.local.parse().ok();
                if local.is_none() {
                    warn!(node, local = %hello.local, "node sent a local address that is not ip:port");
                }
                let entry = NodeEntry {
                    tx,
                    name: hello.name.clone(),
                    slots: hello.slots,
                    nat: NatKind::Unknown,
                    addr,
                    local,
                    fingerprint: hello.fingerprint,
                    introduced: HashSet::new(),
                };
                self.nodes.insert(node, entry);
                self.node_count.send_replace(self.nodes.len());
                self.planner.node_joined(node, hello.slots, &[]);
            }
            Event::ClientJoined { job, tx } => {
                self.clients.insert(
                    job,
                    ClientEntry {
                        tx,
                        store: None,
                        mode: Mode::P2p,
                        require_direct: false,
                        progress: Progress::default(),
                    },
                );
            }
            Event::Moved { session, addr } => self.moved(session, addr),
            Event::Left { session } => self.left(session),
            Event::Message { from, msg } => self.message(from, msg),
        }
    }

    /// A node's NAT mapped it anew: consumers dial it at its new address, and every pair it is in
    /// is introduced again (the old holes point at the old address).
    fn moved(&mut self, node: u64, addr: SocketAddr) {
        let Some(entry) = self.nodes.get_mut(&node) else { return };
        entry.addr = addr;
        entry.introduced.clear();
        self.nodes.values_mut().for_each(|n| _ = n.introduced.remove(&node));
    }

    fn left(&mut self, session: u64) {
        if self.nodes.remove(&session).is_some() {
            info!(node = session, "node left");
            self.node_count.send_replace(self.nodes.len());
            self.planner.node_left(session);
        }
        if self.clients.remove(&session).is_some() {
            self.planner.cancel(session);
        }
    }

    fn message(&mut self, from: u64, msg: ToRendezvous) {
        let is_node = self.nodes.contains_key(&from);
        match msg {
            ToRendezvous::Submit(sub) => self.submit(from, sub),
            ToRendezvous::Holds(held) if is_node => self.planner.node_holds(from, &held),
            ToRendezvous::Done(d) if is_node => self.planner.task_done(from, d.task, &d.outputs, d.stats),
            ToRendezvous::Failed(f) if is_node => {
                if f.error.code == ErrorCode::InputUnavailable {
                    // A path may have closed (a NAT forgot it): the next attempt introduces again.
                    self.nodes.values_mut().for_each(|n| _ = n.introduced.remove(&from));
                }
                self.planner.task_failed(from, f.task, &f.error, &f.unavailable, f.stats);
            }
            ToRendezvous::Stored(s) if is_node => self.planner.stored(from, s.job, s.blob, s.ok, s.stats),
            ToRendezvous::Drain if is_node => {
                info!(node = from, "node draining");
                self.planner.node_draining(from);
            }
            ToRendezvous::Nat(kind) if is_node => {
                info!(node = from, nat = %kind, "node classified its NAT");
                if let Some(node) = self.nodes.get_mut(&from) {
                    node.nat = kind;
                }
                self.planner.node_reachable(from, kind != NatKind::EndpointDependent);
            }
            ToRendezvous::Status if !is_node => self.send(from, FromRendezvous::Status(self.status())),
            _ => self.refuse(from, "a client may only submit or ask for status, and only nodes report tasks"),
        }
    }

    fn submit(&mut self, job: u64, sub: thunkmesh_protocol::wire::Submission) {
        let Some(client) = self.clients.get_mut(&job) else {
            return self.refuse(job, "only clients submit jobs");
        };
        if client.store.is_some() {
            return self.refuse(job, "one job per client connection");
        }
        client.store = Some(sub.store.clone());
        client.mode = sub.mode;
        client.require_direct = sub.require_direct;
        info!(job, thunks = sub.thunks.len(), targets = sub.targets.len(), "job submitted");
        if let Err(e) = self.planner.submit(job, &sub) {
            self.send(job, FromRendezvous::JobFailed(WireError::new(ErrorCode::BadMessage, e.to_string())));
        }
    }

    fn refuse(&mut self, session: u64, why: &str) {
        warn!(session, why, "unexpected message");
        self.send(session, FromRendezvous::Refused(WireError::new(ErrorCode::BadMessage, why)));
    }

    /// Queues a message to a connection; a connection whose queue is full is dropped.
    fn send(&mut self, session: u64, msg: FromRendezvous) {
        let tx = self.nodes.get(&session).map(|n| &n.tx).or_else(|| self.clients.get(&session).map(|c| &c.tx));
        let Some(tx) = tx else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg) {
            warn!(session, "connection is not reading its messages; dropping it");
            self.left(session);
        }
    }

    fn dispatch(&mut self) {
        while let Some(decision) = self.planner.poll() {
            match decision {
                Decision::Assign(a) => self.assign(a),
                Decision::Upload { node, job, blob } => {
                    let store = self.store(job);
                    self.send(node, FromRendezvous::Upload(UploadRequest { job, blob, store }));
                }
                Decision::Resolved { job, name, reduction } => {
                    self.send(job, FromRendezvous::Resolved(Resolution { reduction, name, executed: true }));
                }
                Decision::JobDone { job, outcome } => {
                    info!(job, executed = outcome.executed, cached = outcome.cached, "job done");
                    self.send_progress();
                    self.send(job, FromRendezvous::JobDone(outcome));
                }
                Decision::Drained { node } => self.send(node, FromRendezvous::Drained),
                Decision::Cancel { node, task } => self.send(node, FromRendezvous::Cancel { task }),
                Decision::JobFailed { job, error } => {
                    info!(job, error = %error.message, "job failed");
                    self.send(job, FromRendezvous::JobFailed(error));
                }
            }
        }
    }

    /// The registered nodes, by name.
    fn status(&self) -> Vec<NodeStatus> {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .iter()
            .map(|(&id, n)| NodeStatus {
                name: n.name.clone(),
                observed: n.addr.to_string(),
                local: n.local.map_or_else(|| "?".to_owned(), |a| a.to_string()),
                nat: n.nat,
                slots: n.slots,
                running: u32::try_from(self.planner.running(id)).unwrap_or(u32::MAX),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    fn store(&self, job: u64) -> String {
        self.clients.get(&job).and_then(|c| c.store.clone()).unwrap_or_default()
    }

    fn assign(&mut self, a: thunkmesh_planner::Assign) {
        let producers: HashSet<u64> = a
            .sources
            .iter()
            .flat_map(|(_, places)| places)
            .filter_map(|p| if let Place::Node(n) = p { Some(*n) } else { None })
            .collect();
        for producer in producers {
            self.introduce(producer, a.node);
        }
        let Some((name, thunk)) = self.planner.thunk(a.job, a.thunk) else { return };
        let relay = !self.clients.get(&a.job).is_some_and(|c| c.require_direct);
        let sources = a
            .sources
            .iter()
            .map(|(blob, places)| InputSource { blob: *blob, sources: self.sources(*blob, places, a.node, relay) });
        let assignment = Assignment {
            task: a.task,
            name: name.to_owned(),
            thunk: thunk.clone(),
            resolved: a.resolved.clone(),
            sources: sources.collect(),
            store: self.store(a.job),
            mode: self.clients.get(&a.job).map_or(Mode::P2p, |c| c.mode),
        };
        self.send(a.node, FromRendezvous::Assign(assignment));
    }

    /// Where `consumer` can get `blob`, best first. A node holding it is offered directly where a
    /// direct path can form; between nodes behind NATs, a small object is also offered through
    /// the relay, for when the direct path does not form. A source that cannot work is left out:
    /// with none left, the consumer reports the input unavailable at once and it comes through
    /// storage.
    fn sources(&self, blob: Id, places: &[Place], consumer: u64, relay: bool) -> Vec<Source> {
        let consumer = self.nodes.get(&consumer);
        let mut sources = Vec::new();
        for place in places {
            let (id, node) = match place {
                Place::Storage => {
                    sources.push(Source::Storage);
                    continue;
                }
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
                sources.push(Source::Relay { node: id });
            }
        }
        sources
    }

    /// Tells a producer behind a NAT to dial a consumer it has not been introduced to.
    fn introduce(&mut self, producer: u64, consumer: u64) {
        let (Some(p), Some(c)) = (self.nodes.get(&producer), self.nodes.get(&consumer)) else { return };
        let useless = !p.behind_nat() || p.addr.ip() == c.addr.ip() || !p.direct_path_from(c);
        if producer == consumer || useless || p.introduced.contains(&consumer) {
            return;
        }
        let msg = FromRendezvous::Introduce { addr: c.reachable_from(p).to_string(), fingerprint: c.fingerprint };
        if let Some(p) = self.nodes.get_mut(&producer) {
            p.introduced.insert(consumer);
        }
        self.send(producer, msg);
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
            self.send(job, FromRendezvous::Progress(p));
        }
    }
}
