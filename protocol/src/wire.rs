//! Wire messages between clients, nodes and the rendezvous, and their framing.
//!
//! Every message is an rkyv archive in a frame: a 4-byte big-endian length, then the archive.
//! Frames over [`MAX_FRAME`] are refused before anything is read into memory, and every archive
//! is validated (bytecheck) before use. The first message on a connection is a [`Hello`] whose
//! `version` must equal [`PROTOCOL_VERSION`]. `docs/wire.md` describes the exchanges.

use std::ops::AddAssign;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::id::Id;
use crate::thunk::{Ref, Thunk};

/// Version of the messages below; a peer with another version is refused at hello.
pub const PROTOCOL_VERSION: u32 = 15;

/// Largest frame accepted from an authenticated peer, in bytes (the length prefix not included).
pub const MAX_FRAME: usize = 16 << 20;

/// Largest frame accepted before the sender is authenticated: a [`Hello`] or a
/// [`PeerRequest`], which hold a token and a few names. Nothing unauthenticated makes a process
/// read more than this per stream.
pub const MAX_UNAUTHENTICATED_FRAME: usize = 64 << 10;

/// Most object ids in one [`ToRendezvous::Holds`] message (a frame stays well under
/// [`MAX_FRAME`]).
pub const HOLDS_PER_MESSAGE: usize = 65_536;

/// Length of the frame header.
pub const FRAME_HEADER: usize = 4;

/// Largest value a job may carry ([`Carried`]).
pub const CARRIED_VALUE_BYTES: u64 = 64 << 10;

/// Most bytes of values one job may carry, together: at most this rides with any assignment.
pub const CARRIED_JOB_BYTES: u64 = 4 << 20;

/// ALPN of the control connections to the rendezvous.
pub const ALPN_RENDEZVOUS: &[u8] = b"thunkmesh-rdv/1";

/// ALPN of node-to-node object transfer.
pub const ALPN_PEER: &[u8] = b"thunkmesh-peer/1";

/// First message of every connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The shared secret that admits a node or client.
    pub token: String,
    /// Who is speaking.
    pub role: Role,
}

/// What a connection is for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A worker that runs thunks and serves its cache.
    Node(NodeHello),
    /// A client that submits one job.
    Client,
    /// A node fetching objects from another node.
    Peer,
}

/// What a node tells the rendezvous about itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeHello {
    /// Human-readable name (host and pid, or as configured).
    pub name: String,
    /// Thunks it runs at once.
    pub slots: u32,
    /// SHA-256 of its certificate: peers pin it.
    pub fingerprint: [u8; 32],
    /// Its endpoint's address as it sees it (`ip:port`): behind a NAT, the private one, where a
    /// peer behind the same NAT reaches it.
    pub local: String,
    /// How it isolates the programs it runs, in words (`thunkmesh status` shows it).
    pub isolation: String,
    /// How many object ids its [`ToRendezvous::Holds`] messages will list: it is given work
    /// only once they all arrived.
    pub holds: u64,
}

/// Messages a node or client sends to the rendezvous.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToRendezvous {
    /// A client's job begins: how it runs. Its content follows in [`ToRendezvous::JobPart`]s
    /// and [`ToRendezvous::JobEnd`] ends it (`crate::submit`).
    Submit(JobHeader),
    /// More of the job begun by `Submit`.
    JobPart(JobPart),
    /// The job is whole: planning starts.
    JobEnd,
    /// Objects a node already holds in its cache (from earlier runs), sent after the welcome in
    /// pieces of at most [`HOLDS_PER_MESSAGE`]: the hello stays small.
    Holds(Vec<Id>),
    /// A node finished a task.
    Done(TaskDone),
    /// A node could not finish a task.
    Failed(TaskFailed),
    /// A node uploaded an object the rendezvous asked for.
    Stored(Stored),
    /// A node is leaving: assign it nothing more; ask it to upload what others still need.
    Drain,
    /// How a node's NAT maps its socket, as the node found out at start.
    Nat(NatKind),
    /// A client asks for the registered nodes (answered with `Status`).
    Status,
    /// Objects a node removed from its cache to stay within its budget, in pieces of at most
    /// [`HOLDS_PER_MESSAGE`]: no task is sent there for them any more.
    Dropped(Vec<Id>),
}

impl ToRendezvous {
    /// The task a node's report ends ([`ToRendezvous::Done`], [`ToRendezvous::Failed`]).
    pub fn ended_task(&self) -> Option<u64> {
        match self {
            ToRendezvous::Done(done) => Some(done.task),
            ToRendezvous::Failed(failed) => Some(failed.task),
            _ => None,
        }
    }
}

/// How a node's NAT (if any) maps its one UDP socket to public addresses, learned from what two
/// rendezvous ports observe.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NatKind {
    /// Not found out (the rendezvous has no probe port, or the probe did not answer).
    #[default]
    Unknown,
    /// No NAT: the rendezvous sees the address the node is bound to.
    None,
    /// One public address for the socket, whatever the destination: peers can punch through.
    EndpointIndependent,
    /// A new public port for each destination (symmetric): peers cannot reach the node directly.
    EndpointDependent,
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatKind::Unknown => "unknown",
            NatKind::None => "none",
            NatKind::EndpointIndependent => "endpoint-independent",
            NatKind::EndpointDependent => "endpoint-dependent (symmetric)",
        })
    }
}

/// What the probe port answers: the address the probe came from.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProbeReply {
    /// `ip:port`, as the probe port sees it.
    pub observed: String,
}

/// One registered node, as `thunkmesh status` shows it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Where the rendezvous sees it.
    pub observed: String,
    /// Where it sees itself.
    pub local: String,
    /// Its NAT.
    pub nat: NatKind,
    /// Thunks it runs at once.
    pub slots: u32,
    /// Thunks running on it now.
    pub running: u32,
    /// How it isolates programs.
    pub isolation: String,
    /// SHA-256 of its certificate: its identity in memo entries (`thunkmesh memo forget --node`)
    /// and for `thunkmesh rendezvous --forbid-node`.
    pub fingerprint: [u8; 32],
    /// Objects the planner counts in its cache (announced, made or fetched there).
    pub held: u64,
    /// Their bytes.
    pub held_bytes: u64,
    /// Milliseconds since it joined.
    pub connected_ms: u64,
}

/// What `thunkmesh status` shows of a rendezvous.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshStatus {
    /// The registered nodes, by name.
    pub nodes: Vec<NodeStatus>,
    /// The jobs it holds (being received or running), oldest first.
    pub jobs: Vec<JobStatus>,
    /// Milliseconds since the rendezvous started.
    pub uptime_ms: u64,
}

/// One job at the rendezvous.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStatus {
    /// The submitting client's session.
    pub session: u64,
    /// Its counts: thunks known, done, running, ready and waiting for a slot (the queue).
    pub progress: Progress,
    /// Milliseconds since its planning began (0: still arriving).
    pub running_ms: u64,
    /// Whether intermediates go peer to peer or through storage.
    pub mode: Mode,
}

/// Messages the rendezvous sends to a node or client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FromRendezvous {
    /// The hello was accepted.
    Welcome {
        /// The id the rendezvous gave this connection.
        session: u64,
        /// The address the connection came from, as the rendezvous sees it (`ip:port`): behind a
        /// NAT, the NAT's public side.
        observed: String,
        /// A second UDP port of the rendezvous that answers with the address it sees (a
        /// [`ProbeReply`]), from which a node classifies its NAT; 0 if there is none.
        probe_port: u16,
    },
    /// The hello (or a later message) was refused; the connection closes.
    Refused(WireError),
    /// Run this thunk (to a node).
    Assign(Assignment),
    /// Upload this object to storage (to a node).
    Upload(UploadRequest),
    /// A draining node has nothing left to do or upload and may exit (to a node).
    Drained,
    /// Thunks of the job resolved (to a client): every one resolved since the last such message,
    /// so that a burst of completions is one message, not thousands.
    Resolved(Vec<Resolution>),
    /// A result checked on another node differed (to a client).
    Disagreed(Disagreement),
    /// Counts of the job's thunks (to a client).
    Progress(Progress),
    /// Tasks of the job that ended, when the job asked for them ([`Submission::report_tasks`]),
    /// batched as [`FromRendezvous::Resolved`] is (to a client).
    Tasks(Vec<TaskReport>),
    /// The job is complete (to a client).
    JobDone(JobOutcome),
    /// The job failed (to a client).
    JobFailed(WireError),
    /// Stop a task and report nothing: a copy of it finished first (to a node).
    Cancel {
        /// The task, as assigned.
        task: u64,
    },
    /// A peer at `addr` is about to fetch from this node, which is behind a NAT: dial it now, so
    /// that both NATs let the two endpoints' packets through (to a node).
    Introduce {
        /// Where the peer is reachable from this node (`ip:port`).
        addr: String,
        /// The peer's certificate fingerprint.
        fingerprint: [u8; 32],
    },
    /// The registered nodes and running jobs (to a client that asked).
    Status(MeshStatus),
    /// Remove these objects from the cache: no thunk will read them again (to a node).
    Drop(Vec<Id>),
}

/// How intermediate outputs travel.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Outputs stay on their producer and move directly to consumers (the default).
    #[default]
    P2p,
    /// gg's way: every output is written to storage and every input read from it.
    Storage,
}

impl Mode {
    /// The name users give it (`--mode p2p`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::P2p => "p2p",
            Mode::Storage => "storage",
        }
    }
}

/// A job, as the client sends it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// Where nodes read inputs and write targets (a URL such as `file:///abs/path`).
    pub store: String,
    /// How intermediates travel.
    pub mode: Mode,
    /// Every thunk that may need forcing.
    pub thunks: Vec<SubmittedThunk>,
    /// Refs whose values the client wants.
    pub targets: Vec<Ref>,
    /// Blobs already in storage.
    pub stored: Vec<Id>,
    /// Reductions found in the memo cache.
    pub memo: Vec<Reduction>,
    /// Fail the job rather than move an object between nodes any way but directly (no relay,
    /// no storage fallback): for benchmarking the direct path.
    pub require_direct: bool,
    /// A failed thunk does not end the job: every thunk that does not depend on it still runs,
    /// and the outcome lists the failures.
    pub keep_going: bool,
    /// One in how many results is run again on another node and compared before it is final
    /// (0: none, 1: every one); see `docs/reliability.md`.
    pub verify: u32,
    /// The client's secret choice of which results are checked: a node cannot tell which of its
    /// results will be.
    pub verify_salt: u64,
    /// Send the client a [`TaskReport`] of each task that ends (`run --timings`, `--trace`).
    pub report_tasks: bool,
    /// Small values the job brings with it (p2p mode): the rendezvous holds them for the job's
    /// life and sends each with the assignments that read it, so no storage round trip stands
    /// before the first task. The planner reads only their ids.
    pub carried: Vec<Carried>,
}

/// A value a job carries itself rather than through storage: at most [`CARRIED_VALUE_BYTES`],
/// and [`CARRIED_JOB_BYTES`] for a whole job. Whoever receives one checks that the bytes are the
/// blob before using them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The blob.
    pub blob: Id,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Carried {
    /// Whether `bytes` are the blob.
    pub fn is_intact(&self) -> bool {
        Id::of_blob(&self.bytes) == self.blob
    }

    /// `Ok` if `bytes` are the blob, else the message that says they are not.
    pub fn check(&self) -> Result<(), String> {
        match self.is_intact() {
            true => Ok(()),
            false => Err(format!("carried value {}: its bytes are not that blob", self.blob)),
        }
    }
}

/// How a job runs: the first message of a submission.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobHeader {
    /// Where nodes read inputs and write targets.
    pub store: String,
    /// How intermediates travel.
    pub mode: Mode,
    /// See [`Submission::require_direct`].
    pub require_direct: bool,
    /// See [`Submission::keep_going`].
    pub keep_going: bool,
    /// See [`Submission::verify`].
    pub verify: u32,
    /// See [`Submission::verify_salt`].
    pub verify_salt: u64,
    /// See [`Submission::report_tasks`].
    pub report_tasks: bool,
}

/// A piece of a job's content; any number of each, in any order, before `JobEnd`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum JobPart {
    /// Thunks (their shared input parts written once per message).
    Thunks(Vec<SubmittedThunk>),
    /// Refs whose values the client wants.
    Targets(Vec<Ref>),
    /// Blobs already in storage.
    Stored(Vec<Id>),
    /// Reductions found in the memo cache.
    Memo(Vec<Reduction>),
    /// Values the job carries (see [`Submission::carried`]).
    Carried(Vec<Carried>),
}

/// A thunk with the name the job gave it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SubmittedThunk {
    /// Name in the job.
    pub name: String,
    /// The thunk.
    pub thunk: Thunk,
}

/// A memo entry: a forced thunk and the final blob of each output.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reduction {
    /// The thunk.
    pub thunk: Id,
    /// Output name -> blob.
    pub outputs: Vec<(String, Id)>,
}

/// Where a node can get an input it lacks.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Another node, by the address the rendezvous saw and its certificate fingerprint.
    Peer {
        /// `ip:port`.
        addr: String,
        /// SHA-256 of the peer's certificate.
        fingerprint: [u8; 32],
    },
    /// Object storage.
    Storage,
    /// Another node, through the rendezvous (small objects, when no direct path forms).
    Relay {
        /// The producer's session.
        node: u64,
    },
}

/// One input and the places it can be had, best first.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InputSource {
    /// The blob.
    pub blob: Id,
    /// Where to get it if the node lacks it.
    pub sources: Vec<Source>,
}

/// A thunk for a node to force.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Identifies this attempt; echoed in the answer.
    pub task: u64,
    /// The thunk's name in its job (for messages).
    pub name: String,
    /// The thunk.
    pub thunk: Thunk,
    /// Every ref of the thunk, resolved to a blob, in the order of [`Thunk::refs`].
    pub resolved: Vec<Id>,
    /// Where to get the blobs the node lacks.
    pub sources: Vec<InputSource>,
    /// The job's storage URL.
    pub store: String,
    /// In storage mode the node reads every input from storage and writes every output there.
    pub mode: Mode,
    /// Inputs the node lacks that the job carries: here, with their bytes (not in `sources`).
    pub carried: Vec<Carried>,
}

/// An output of a forced thunk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum OutputValue {
    /// Plain bytes, kept in the node's cache.
    Blob(Id),
    /// A tail call: more thunks, and the ref this output evaluates to.
    Tail {
        /// The bytes of the tail file itself.
        blob: Id,
        /// Thunks the tail defines.
        thunks: Vec<SubmittedThunk>,
        /// What the output evaluates to.
        result: Ref,
    },
}

/// What one task moved (and how long its program ran), summed into the job summary.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Time the thunk's program itself ran, in microseconds (sandbox and transfers excluded).
    pub program_micros: u64,
    /// Objects fetched from peers.
    pub peer_fetches: u64,
    /// Bytes fetched from peers.
    pub peer_bytes: u64,
    /// GET (and HEAD) requests to storage.
    pub storage_gets: u64,
    /// PUT requests to storage.
    pub storage_puts: u64,
    /// Bytes read from storage.
    pub storage_bytes_read: u64,
    /// Bytes written to storage.
    pub storage_bytes_written: u64,
    /// Time spent fetching from peers, in microseconds, summed over fetches (they overlap).
    pub peer_micros: u64,
    /// Time spent reading from storage, in microseconds, summed over reads (they overlap).
    pub storage_read_micros: u64,
    /// Objects fetched from peers through the rendezvous' relay.
    pub relay_fetches: u64,
    /// Bytes fetched through the relay.
    pub relay_bytes: u64,
    /// Time spent fetching through the relay, in microseconds, summed over fetches.
    pub relay_micros: u64,
}

impl AddAssign for TransferStats {
    fn add_assign(&mut self, o: TransferStats) {
        self.program_micros += o.program_micros;
        self.peer_fetches += o.peer_fetches;
        self.peer_bytes += o.peer_bytes;
        self.storage_gets += o.storage_gets;
        self.storage_puts += o.storage_puts;
        self.storage_bytes_read += o.storage_bytes_read;
        self.storage_bytes_written += o.storage_bytes_written;
        self.peer_micros += o.peer_micros;
        self.storage_read_micros += o.storage_read_micros;
        self.relay_fetches += o.relay_fetches;
        self.relay_bytes += o.relay_bytes;
        self.relay_micros += o.relay_micros;
    }
}

/// A task that ran to completion.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TaskDone {
    /// From the assignment.
    pub task: u64,
    /// Output name -> value, for every declared output.
    pub outputs: Vec<(String, OutputValue)>,
    /// What the task moved, and how long its program ran.
    pub stats: TransferStats,
}

/// Where a task's input came from, as the rendezvous planned it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum InputFrom {
    /// The node held it already.
    Local,
    /// From the cache of this node (by name), directly or through the relay; storage if that
    /// failed (the task's [`TransferStats`] tell).
    Peer(String),
    /// From storage.
    Storage,
    /// With the assignment: a value the job carries.
    Carried,
}

/// As the view and the reports show it: `local`, `peer NODE`, `storage` or `with the job`.
impl std::fmt::Display for InputFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputFrom::Local => f.write_str("local"),
            InputFrom::Peer(node) => write!(f, "peer {node}"),
            InputFrom::Storage => f.write_str("storage"),
            InputFrom::Carried => f.write_str("with the job"),
        }
    }
}

/// One task of a job that ended: who ran it, when, why there, and what it moved.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TaskReport {
    /// The thunk's name in the job.
    pub name: String,
    /// The node that ran it (its name).
    pub node: String,
    /// Its program's file name.
    pub program: String,
    /// When it was assigned, in milliseconds since the job's planning began.
    pub started_ms: u64,
    /// When the node reported it, on the same clock.
    pub ended_ms: u64,
    /// Whether it succeeded (false: it failed, or was a copy cancelled or lost with its node).
    pub ok: bool,
    /// Why the planner placed it on that node.
    pub why: String,
    /// Each input blob and where it came from.
    pub inputs: Vec<(Id, InputFrom)>,
    /// What it moved, and how long its program ran.
    pub stats: TransferStats,
}

/// A task that did not complete.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TaskFailed {
    /// From the assignment.
    pub task: u64,
    /// Why.
    pub error: WireError,
    /// Inputs the node was told to fetch but could not get from any source.
    pub unavailable: Vec<Id>,
    /// What the task moved before it failed.
    pub stats: TransferStats,
}

/// A node's answer to an [`UploadRequest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The job that asked.
    pub job: u64,
    /// The object.
    pub blob: Id,
    /// Why the upload failed (`None`: it succeeded): `StoreError` when the store refused it
    /// (the object is still on the node), `NodeError` when the node could not read it.
    pub error: Option<WireError>,
    /// What the upload moved.
    pub stats: TransferStats,
    /// The object's bytes, when the upload succeeded and it is at most [`CARRIED_VALUE_BYTES`]:
    /// the rendezvous may hand them to the client with the outcome (a target), saving it a read
    /// from storage. Checked against the id by whoever uses them.
    pub bytes: Option<Vec<u8>>,
}

/// Ask a node to put an object it holds into storage.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The job that needs it.
    pub job: u64,
    /// The object.
    pub blob: Id,
    /// The storage URL.
    pub store: String,
}

/// A thunk whose outputs are final (all tails followed), for the memo cache.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The reduction to record.
    pub reduction: Reduction,
    /// The thunk's name.
    pub name: String,
    /// Whether it ran in this job (false: it came from the memo cache).
    pub executed: bool,
    /// [`crate::Id::digest_of`] the blobs its refs resolved to when it ran: a memo entry is
    /// reused only while its inputs still resolve to these.
    pub inputs: [u8; 32],
    /// The certificate fingerprint of the node that ran it.
    pub producer: [u8; 32],
}

/// Nodes whose results for one thunk differed when it was run again to check (see
/// [`Submission::verify`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The thunk's name.
    pub thunk: String,
    /// Nodes a majority of others outvoted: the job fails, and the client forgets every memo
    /// entry they produced.
    pub outvoted: Vec<[u8; 32]>,
    /// Two nodes that differ with no third to decide: the thunk is not memoized, and the job
    /// goes on with the first result.
    pub undecided: Vec<[u8; 32]>,
}

/// Counts of a job's thunks.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Thunks known (grows as tails add thunks).
    pub total: u64,
    /// Thunks resolved.
    pub done: u64,
    /// Thunks running now.
    pub running: u64,
    /// Thunks whose inputs are all available, waiting for a free slot (what more workers
    /// would start on).
    pub ready: u64,
    /// Nodes registered that take work (0: the job waits for one to join).
    pub nodes: u64,
    /// Objects the job waits for nodes to upload (targets that live only in a cache).
    pub uploads: u64,
    /// Results held until another node has run their thunk too (`--verify`).
    pub checking: u64,
}

/// The end of a successful job.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// Each target ref and its blob (in storage).
    pub targets: Vec<(Ref, Id)>,
    /// Data moved by nodes for this job.
    pub stats: TransferStats,
    /// Thunks run in this job (re-runs after a lost node included).
    pub executed: u64,
    /// Thunks resolved from the memo cache.
    pub cached: u64,
    /// Thunks known when the job ended.
    pub total: u64,
    /// Nodes that left while the job ran (not counting nodes that drained and left).
    pub nodes_lost: u64,
    /// Objects that went through storage because their producer could not serve them (it was
    /// leaving, or a consumer could not reach it).
    pub storage_fallbacks: u64,
    /// Copies of straggling tasks started on other nodes.
    pub copies: u64,
    /// Thunks that failed, each naming itself (a job that keeps going; its failed targets
    /// are missing from `targets`).
    pub failures: Vec<WireError>,
    /// Thunks not run because an input of theirs failed.
    pub skipped: u64,
    /// Bytes of small targets, from the nodes that stored them (at most [`CARRIED_JOB_BYTES`]
    /// together): the client writes these without reading them back from storage, once it has
    /// checked them against their ids.
    pub carried: Vec<Carried>,
}

/// Why something failed, as it crosses the wire: a code and a message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One line for a person.
    pub message: String,
    /// More text: a thunk's stderr tail, for example.
    pub detail: String,
}

/// Kinds of failure that cross the wire.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Wrong or missing token.
    Unauthorized,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// A message was malformed or unexpected.
    BadMessage,
    /// A program exited non-zero or was killed by a signal.
    ExitStatus,
    /// A program ran past its timeout.
    Timeout,
    /// A declared output was not created.
    MissingOutput,
    /// A tail output is not a valid tail.
    BadTail,
    /// An input could not be fetched from any source.
    InputUnavailable,
    /// The node's own machinery failed (disk, sandbox, storage).
    NodeError,
    /// The requested object is not here.
    NotFound,
    /// A program wrote to one of its inputs, which are shared and read-only.
    ModifiedInput,
    /// A job is over the rendezvous' configured limits (its size, the size of all jobs being
    /// received, the time to send it).
    TooLarge,
    /// The job's store refused or failed a write (full, read-only, denied); what was to be
    /// written is still where it was.
    StoreError,
}

impl ErrorCode {
    /// Whether the failure belongs to the thunk (re-running it elsewhere will not help).
    pub fn is_thunk_fault(self) -> bool {
        matches!(
            self,
            ErrorCode::ExitStatus
                | ErrorCode::Timeout
                | ErrorCode::MissingOutput
                | ErrorCode::BadTail
                | ErrorCode::ModifiedInput
        )
    }
}

impl WireError {
    /// An error with no detail.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError { code, message: message.into(), detail: String::new() }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.detail.is_empty() {
            write!(f, "\n{}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for WireError {}

/// A node's request on a peer stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    /// Send this object.
    Fetch {
        /// The object.
        blob: Id,
        /// The mesh's token: only members fetch.
        token: String,
    },
    /// To the rendezvous, on a stream of its own: fetch this object from that node for me. The
    /// answer is what the node answered (`PeerResponse`, then the bytes).
    Relay {
        /// The object.
        blob: Id,
        /// The producer's session.
        from: u64,
    },
}

/// A node's answer on a peer stream; the object's bytes follow `Found`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerResponse {
    /// Bytes follow, exactly `size` of them.
    Found {
        /// Length of what follows.
        size: u64,
    },
    /// Not served.
    Refused(WireError),
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than this point of the conversation allows.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// What the prefix announced.
        len: usize,
        /// What is allowed here ([`MAX_FRAME`], or [`MAX_UNAUTHENTICATED_FRAME`] before a
        /// peer is authenticated).
        limit: usize,
    },
    /// The archive does not validate as the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes a message as one frame (length prefix and archive).
pub fn encode_frame<T>(msg: &T) -> Vec<u8>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let body = rkyv::to_bytes::<rancor::Error>(msg).expect("serialising into memory does not fail");
    let len = u32::try_from(body.len()).expect("messages are far smaller than 4 GiB");
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the body length from a frame header, refusing frames over `limit`.
pub fn frame_len(header: [u8; FRAME_HEADER], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Validates and decodes a frame body.
pub fn decode_body<T>(body: &[u8]) -> Result<T, FrameError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::BoxedError>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    // The boxed error keeps what bytecheck found (rancor's plain error says nothing in release).
    rkyv::from_bytes::<T, rancor::BoxedError>(&aligned).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thunk::tests::{arb_ref, arb_thunk};
    use proptest::prelude::*;

    fn round_trip<T>(msg: &T) -> T
    where
        T: Archive
            + for<'a> Serialize<
                rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
            >,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::BoxedError>>
            + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::BoxedError>>,
    {
        let frame = encode_frame(msg);
        let len = frame_len(frame[..4].try_into().expect("4 bytes"), MAX_FRAME).expect("in limit");
        assert_eq!(len, frame.len() - 4);
        decode_body(&frame[4..]).expect("valid frame")
    }

    fn arb_id() -> impl Strategy<Value = Id> {
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(h, s)| Id::blob(h, s))
    }

    fn arb_stats() -> impl Strategy<Value = TransferStats> {
        any::<[u64; 12]>().prop_map(|s| TransferStats {
            relay_fetches: s[9],
            relay_bytes: s[10],
            relay_micros: s[11],
            program_micros: s[6],
            peer_micros: s[7],
            storage_read_micros: s[8],
            peer_fetches: s[0],
            peer_bytes: s[1],
            storage_gets: s[2],
            storage_puts: s[3],
            storage_bytes_read: s[4],
            storage_bytes_written: s[5],
        })
    }

    fn arb_to_rendezvous() -> impl Strategy<Value = ToRendezvous> {
        let submitted = || (".{0,8}", arb_thunk()).prop_map(|(name, thunk)| SubmittedThunk { name, thunk });
        let output = prop_oneof![
            arb_id().prop_map(OutputValue::Blob),
            (arb_id(), proptest::collection::vec(submitted(), 0..2), arb_ref())
                .prop_map(|(blob, thunks, result)| OutputValue::Tail { blob, thunks, result }),
        ];
        prop_oneof![
            (
                ".{0,10}",
                proptest::collection::vec(submitted(), 0..3),
                proptest::collection::vec(arb_ref(), 0..3),
                proptest::collection::vec(arb_id(), 0..3)
            )
                .prop_map(|(store, thunks, targets, stored)| match thunks.len() {
                    0 => ToRendezvous::Submit(JobHeader {
                        store,
                        mode: Mode::Storage,
                        require_direct: true,
                        keep_going: false,
                        verify: 16,
                        verify_salt: 7,
                        report_tasks: false,
                    }),
                    1 => ToRendezvous::JobPart(JobPart::Targets(targets)),
                    2 => ToRendezvous::JobPart(JobPart::Stored(stored)),
                    _ => ToRendezvous::JobPart(JobPart::Thunks(thunks)),
                }),
            Just(ToRendezvous::JobEnd),
            (any::<u64>(), proptest::collection::vec(("[a-z]{1,4}", output), 0..3), arb_stats())
                .prop_map(|(task, outputs, stats)| ToRendezvous::Done(TaskDone { task, outputs, stats })),
            (any::<u64>(), ".{0,20}", proptest::collection::vec(arb_id(), 0..2), arb_stats()).prop_map(
                |(task, m, unavailable, stats)| {
                    ToRendezvous::Failed(TaskFailed {
                        task,
                        error: WireError::new(ErrorCode::ExitStatus, m),
                        unavailable,
                        stats,
                    })
                }
            ),
            (
                any::<u64>(),
                arb_id(),
                proptest::option::of(".{0,40}"),
                arb_stats(),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            )
                .prop_map(|(job, blob, m, stats, bytes)| {
                    let error = m.map(|m| WireError::new(ErrorCode::StoreError, m));
                    ToRendezvous::Stored(Stored { job, blob, error, stats, bytes })
                }),
            Just(ToRendezvous::Drain),
            Just(ToRendezvous::Status),
            proptest::collection::vec(arb_id(), 0..4).prop_map(ToRendezvous::Holds),
            proptest::collection::vec(arb_id(), 0..4).prop_map(ToRendezvous::Dropped),
            Just(ToRendezvous::Nat(NatKind::EndpointDependent)),
        ]
    }

    fn arb_error() -> impl Strategy<Value = WireError> {
        let codes = [
            ErrorCode::Unauthorized,
            ErrorCode::VersionMismatch,
            ErrorCode::BadMessage,
            ErrorCode::ExitStatus,
            ErrorCode::Timeout,
            ErrorCode::MissingOutput,
            ErrorCode::BadTail,
            ErrorCode::InputUnavailable,
            ErrorCode::NodeError,
            ErrorCode::NotFound,
        ];
        (proptest::sample::select(codes.to_vec()), ".{0,16}", ".{0,16}").prop_map(|(code, message, detail)| WireError {
            code,
            message,
            detail,
        })
    }

    /// Every message the rendezvous sends except assignments (which have their own property).
    fn arb_from_rendezvous() -> impl Strategy<Value = FromRendezvous> {
        let reduction = (arb_id(), proptest::collection::vec(("[a-z]{1,4}", arb_id()), 0..3))
            .prop_map(|(thunk, outputs)| Reduction { thunk, outputs });
        let progress = any::<[u64; 7]>().prop_map(|[total, done, running, ready, nodes, uploads, checking]| Progress {
            uploads,
            checking,
            total,
            done,
            running,
            ready,
            nodes,
        });
        let failures = proptest::collection::vec(arb_error(), 0..2);
        let carried = proptest::collection::vec(
            (arb_id(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(blob, bytes)| Carried { blob, bytes }),
            0..2,
        );
        let outcome =
            (proptest::collection::vec((arb_ref(), arb_id()), 0..3), arb_stats(), any::<[u64; 7]>(), failures, carried)
                .prop_map(
                    |(
                        targets,
                        stats,
                        [executed, cached, total, nodes_lost, storage_fallbacks, copies, skipped],
                        failures,
                        carried,
                    )| {
                        JobOutcome {
                            targets,
                            stats,
                            executed,
                            cached,
                            total,
                            nodes_lost,
                            storage_fallbacks,
                            copies,
                            failures,
                            skipped,
                            carried,
                        }
                    },
                );
        prop_oneof![
            (any::<u64>(), ".{0,12}", any::<u16>())
                .prop_map(|(session, observed, probe_port)| FromRendezvous::Welcome { session, observed, probe_port }),
            (".{0,8}", ".{0,12}", any::<u32>(), any::<u32>()).prop_map(|(name, observed, slots, running)| {
                let nat = NatKind::EndpointIndependent;
                let node = NodeStatus {
                    name,
                    local: observed.clone(),
                    observed,
                    nat,
                    slots,
                    running,
                    isolation: "namespaces".into(),
                    fingerprint: [5; 32],
                    held: u64::from(slots),
                    held_bytes: u64::from(slots) << 20,
                    connected_ms: u64::from(running),
                };
                let job = JobStatus {
                    session: u64::from(running),
                    progress: Progress { total: u64::from(slots), ..Progress::default() },
                    running_ms: u64::from(slots) * 3,
                    mode: Mode::Storage,
                };
                FromRendezvous::Status(MeshStatus { nodes: vec![node], jobs: vec![job], uptime_ms: u64::from(running) })
            }),
            (".{0,12}", any::<[u8; 32]>())
                .prop_map(|(addr, fingerprint)| FromRendezvous::Introduce { addr, fingerprint }),
            arb_error().prop_map(FromRendezvous::Refused),
            proptest::collection::vec(arb_id(), 0..4).prop_map(FromRendezvous::Drop),
            (any::<u64>(), arb_id(), ".{0,12}").prop_map(|(job, blob, store)| FromRendezvous::Upload(UploadRequest {
                job,
                blob,
                store
            })),
            (reduction, ".{0,8}", any::<bool>(), any::<[u8; 32]>()).prop_map(|(reduction, name, executed, inputs)| {
                FromRendezvous::Resolved(vec![Resolution { reduction, name, executed, inputs, producer: [3; 32] }])
            }),
            (".{0,8}", any::<[u8; 32]>()).prop_map(|(thunk, node)| FromRendezvous::Disagreed(Disagreement {
                thunk,
                outvoted: vec![node],
                undecided: Vec::new()
            })),
            progress.prop_map(FromRendezvous::Progress),
            (".{0,8}", ".{0,8}", any::<u64>(), any::<bool>()).prop_map(|(name, node, started_ms, ok)| {
                let inputs =
                    vec![(Id::of_blob(b"i"), InputFrom::Peer(node.clone())), (Id::of_blob(b"j"), InputFrom::Local)];
                let stats = TransferStats { peer_bytes: started_ms / 2, ..TransferStats::default() };
                let (program, why, ended_ms) = ("sh".into(), "it held".into(), started_ms.saturating_add(1));
                FromRendezvous::Tasks(vec![TaskReport {
                    name,
                    node,
                    program,
                    started_ms,
                    ended_ms,
                    ok,
                    why,
                    inputs,
                    stats,
                }])
            }),
            outcome.prop_map(FromRendezvous::JobDone),
            arb_error().prop_map(FromRendezvous::JobFailed),
            Just(FromRendezvous::Drained),
        ]
    }

    fn arb_hello() -> impl Strategy<Value = Hello> {
        let node = (".{0,8}", any::<u32>(), any::<[u8; 32]>(), ".{0,12}", ".{0,12}").prop_map(
            |(name, slots, fingerprint, local, isolation)| {
                Role::Node(NodeHello { name, slots, fingerprint, local, isolation, holds: 3 })
            },
        );
        let role = prop_oneof![node, Just(Role::Client), Just(Role::Peer)];
        (any::<u32>(), ".{0,12}", role).prop_map(|(version, token, role)| Hello { version, token, role })
    }

    proptest! {
        #[test]
        fn to_rendezvous_round_trips(msg in arb_to_rendezvous()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn from_rendezvous_round_trips(msg in arb_from_rendezvous()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn hellos_round_trip(msg in arb_hello()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn peer_messages_round_trip(blob in arb_id(), token in ".{0,12}", size in any::<u64>(), error in arb_error()) {
            let request = PeerRequest::Fetch { blob, token };
            prop_assert_eq!(round_trip(&request), request);
            for response in [PeerResponse::Found { size }, PeerResponse::Refused(error)] {
                prop_assert_eq!(round_trip(&response), response);
            }
        }

        #[test]
        fn assignments_round_trip(task in any::<u64>(), thunk in arb_thunk(), blobs in proptest::collection::vec(arb_id(), 0..4), fp in any::<[u8; 32]>(), storage in any::<bool>()) {
            let sources = blobs.iter().map(|&blob| InputSource { blob, sources: vec![Source::Peer { addr: "127.0.0.1:9".into(), fingerprint: fp }, Source::Storage] }).collect();
            let mode = if storage { Mode::Storage } else { Mode::P2p };
            let msg = FromRendezvous::Assign(Assignment { task, name: "t".into(), thunk, resolved: blobs, sources, store: "file:///x".into(), mode, carried: Vec::new() });
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Either it is refused, or it decodes to a message that re-encodes to a valid frame.
            if let Ok(msg) = decode_body::<FromRendezvous>(&bytes) {
                prop_assert_eq!(round_trip(&msg), msg);
            }
        }
    }

    #[test]
    fn hello_has_a_stable_byte_layout() {
        let hello = Hello { version: PROTOCOL_VERSION, token: "t0k".into(), role: Role::Client };
        let frame = encode_frame(&hello);
        assert_eq!(hex::encode(&frame), include_str!("../../docs/wire-hello-client.hex").trim());
        assert_eq!(frame[4], PROTOCOL_VERSION as u8, "the version leads the hello");
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(frame_len(header, MAX_FRAME), Err(FrameError::TooLarge { len: MAX_FRAME + 1, limit: MAX_FRAME }));
    }

    #[test]
    fn a_truncated_archive_is_refused_with_what_was_wrong() {
        let frame = encode_frame(&PeerRequest::Fetch { blob: Id::of_blob(b"x"), token: "t".into() });
        let cut = &frame[4..frame.len() - 3];
        let Err(FrameError::Malformed(why)) = decode_body::<PeerRequest>(cut) else { panic!("must be refused") };
        assert!(!why.contains("without error information"), "{why}");
    }

    #[test]
    fn the_largest_hello_fits_before_authentication() {
        let name = "n".repeat(1024);
        let isolation = "process tree only (".to_owned() + &"e".repeat(1024) + ")";
        let local = "[::1]:65535".into();
        let node = NodeHello { name, slots: u32::MAX, fingerprint: [0; 32], local, isolation, holds: u64::MAX };
        let hello = Hello { version: PROTOCOL_VERSION, token: "t".repeat(4096), role: Role::Node(node) };
        assert!(encode_frame(&hello).len() < MAX_UNAUTHENTICATED_FRAME);
        let holds = ToRendezvous::Holds(vec![Id::of_blob(b"x"); HOLDS_PER_MESSAGE]);
        assert!(encode_frame(&holds).len() < MAX_FRAME);
    }
}
