//! Placement: which node a ready thunk runs on. The `locality` policy estimates, for each
//! candidate node, when the thunk could start there: the wait for a slot (from the durations of
//! what runs there and what already waits for it) plus fetching every input the node lacks
//! (latency + bytes / bandwidth, peer or storage, from estimates kept up to date by observed
//! transfers). The cheapest candidate wins; if it is busy, the thunk waits for it at most the
//! delay bound, then goes to the best free node.
//!
//! Candidates, so that a decision never scans every node: the holders of each input held by at
//! most [`FEW_HOLDERS`] nodes (an input held widely, like a shared header bundle, makes no node
//! special), the nodes where the thunk's siblings (other producers for its consumer) run or
//! ran, and the [`LEAST_LOADED`] least-busy nodes with a free slot. A decision costs
//! O(inputs x FEW_HOLDERS + candidates x widely-held inputs + log nodes), whatever the number of
//! nodes or thunks.
//!
//! `most-bytes` (Ray's and gg-meow's rule: the node holding the most input bytes, waiting for it
//! however busy it is) and `least-loaded` (sccache-dist's: the least busy node, data ignored)
//! exist for comparison in the simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{Mode, TransferStats};

use crate::NodeId;

/// Inputs held by more nodes than this do not make their holders candidates.
pub const FEW_HOLDERS: usize = 8;

/// How many of the least busy nodes with a free slot are always candidates.
pub const LEAST_LOADED: usize = 2;

/// The output size a job's thunks are assumed to have before any output is seen: enough that
/// co-locating siblings is preferred from the start, when most placements of a fan-in are made.
pub const PRIOR_OUTPUT_BYTES: f64 = 1024.0 * 1024.0;

/// At most this many sibling producers are looked at per consumer.
pub(crate) const SIBLINGS: usize = 32;

/// How a ready thunk's node is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Earliest estimated start: slot wait plus input transfers (ours).
    #[default]
    Locality,
    /// The node holding the most input bytes, however busy (Ray, gg-meow).
    MostBytes,
    /// The node running the fewest tasks, data ignored (sccache-dist).
    LeastLoaded,
}

/// A path data takes: a fixed latency per request plus bytes over a per-request bandwidth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Seconds before the first byte.
    pub latency: f64,
    /// Bytes per second of one request.
    pub bandwidth: f64,
}

impl Link {
    /// Seconds to move `bytes` over this link in one request.
    pub fn time(&self, bytes: u64) -> f64 {
        self.latency + bytes as f64 / self.bandwidth
    }
}

/// What the planner believes about the network and the work; updated from observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimates {
    /// Node to node (Lambda to Lambda: about 600-700 Mbit/s, under 1 ms; Boxer, CIDR '21).
    pub peer: Link,
    /// Storage reads (S3 Standard: about 55 MiB/s per request, tens of ms to first byte).
    pub storage: Link,
    /// Seconds a thunk runs: before any has been seen to finish, then a running average of all.
    pub duration: f64,
}

impl Default for Estimates {
    fn default() -> Estimates {
        Estimates {
            peer: Link { latency: 0.001, bandwidth: 80e6 },
            storage: Link { latency: 0.03, bandwidth: 55.0 * 1024.0 * 1024.0 },
            duration: 0.1,
        }
    }
}

/// Transfers this small say nothing about bandwidth.
const MIN_SAMPLE_BYTES: u64 = 256 * 1024;

/// Weight of a new observation in a running estimate.
const EWMA: f64 = 0.2;

fn blend(old: f64, sample: f64) -> f64 {
    old + EWMA * (sample - old)
}

impl Estimates {
    /// Learns how long thunks run from one that ran `seconds`.
    pub fn observe_duration(&mut self, seconds: f64) {
        self.duration = blend(self.duration, seconds);
    }

    /// Learns per-request bandwidths from what a task moved and how long that took.
    pub fn observe(&mut self, stats: &TransferStats) {
        let sample = |link: &Link, count: u64, bytes: u64, micros: u64| {
            let secs = micros as f64 / 1e6 - count as f64 * link.latency;
            (bytes >= MIN_SAMPLE_BYTES && secs > 0.0).then(|| bytes as f64 / secs)
        };
        if let Some(bw) = sample(&self.peer, stats.peer_fetches, stats.peer_bytes, stats.peer_micros) {
            self.peer.bandwidth = blend(self.peer.bandwidth, bw);
        }
        let (gets, read, micros) = (stats.storage_gets, stats.storage_bytes_read, stats.storage_read_micros);
        if let Some(bw) = sample(&self.storage, gets, read, micros) {
            self.storage.bandwidth = blend(self.storage.bandwidth, bw);
        }
    }
}

/// The planner's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannerConfig {
    /// How nodes are chosen.
    pub policy: Policy,
    /// Seeds the order in which equally good nodes are tried (spreads work deterministically).
    pub seed: u64,
    /// Longest a ready thunk waits for a busy node it prefers while another node has a free slot.
    pub delay: Duration,
    /// Starting estimates.
    pub estimates: Estimates,
    /// A task running this many times the average duration of its kind (same program, inputs of
    /// about its size) gets a copy elsewhere, when the copy pays for its fetches
    /// (0: never).
    pub speculate_after: f64,
    /// The id of the first task; the rest follow it. A rendezvous starts from a random one, so
    /// that a report from before it restarted names no task of this run.
    pub first_task: u64,
    /// Which ready thunk is served first.
    pub order: crate::Order,
}

impl Default for PlannerConfig {
    fn default() -> PlannerConfig {
        PlannerConfig {
            policy: Policy::Locality,
            seed: 0,
            delay: Duration::from_millis(500),
            estimates: Estimates::default(),
            speculate_after: 3.0,
            first_task: 0,
            order: crate::Order::CriticalPath,
        }
    }
}

/// A running average of task durations, in seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Average {
    value: Option<f64>,
}

impl Average {
    pub(crate) fn new() -> Average {
        Average { value: None }
    }

    pub(crate) fn add(&mut self, sample: f64) {
        self.value = Some(self.value.map_or(sample, |v| blend(v, sample)));
    }

    pub(crate) fn get(&self) -> Option<f64> {
        self.value
    }
}

/// A position in a stream of well-mixed numbers (SplitMix64): the seeded source of tie-breaks,
/// and of the simulator's draws.
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One input of the thunk being placed, as placement sees it.
pub(crate) struct Input<'a> {
    pub(crate) blob: Id,
    /// Nodes that hold it and may serve it (empty when peers failed to, or in storage mode).
    pub(crate) holders: Option<&'a std::collections::BTreeSet<NodeId>>,
}

/// The transfer part of the estimate, computed once per thunk and then per candidate.
pub(crate) struct Transfers<'a> {
    estimates: Estimates,
    /// Nodes no peer can reach directly (behind endpoint-dependent NATs): what they hold reaches
    /// other nodes through storage, an upload and a read.
    unreachable: &'a std::collections::BTreeSet<NodeId>,
    /// Inputs only unreachable nodes hold.
    stranded: Vec<(Id, &'a std::collections::BTreeSet<NodeId>)>,
    /// Bytes only storage can give.
    storage_bytes: u64,
    /// Bytes some node can give, and the most of those each few-holder candidate holds.
    peer_bytes: u64,
    local: BTreeMap<NodeId, u64>,
    /// Inputs held widely: checked per candidate.
    wide: Vec<(Id, &'a std::collections::BTreeSet<NodeId>)>,
}

impl<'a> Transfers<'a> {
    /// Sorts a thunk's inputs by where they can come from. Storage mode prices every input as a
    /// storage read: then only the slot wait tells nodes apart.
    pub(crate) fn new(
        inputs: &[Input<'a>],
        mode: Mode,
        estimates: Estimates,
        unreachable: &'a std::collections::BTreeSet<NodeId>,
    ) -> Transfers<'a> {
        let mut t = Transfers {
            estimates,
            unreachable,
            stranded: Vec::new(),
            storage_bytes: 0,
            peer_bytes: 0,
            local: BTreeMap::new(),
            wide: Vec::new(),
        };
        let mut seen = crate::idhash::IdSet::with_capacity_and_hasher(inputs.len(), Default::default());
        for input in inputs.iter().filter(|i| seen.insert(i.blob)) {
            match input.holders.filter(|h| !h.is_empty() && mode == Mode::P2p) {
                None => t.storage_bytes += input.blob.size,
                Some(holders) if holders.iter().all(|n| unreachable.contains(n)) && holders.len() <= FEW_HOLDERS => {
                    t.stranded.push((input.blob, holders));
                }
                Some(holders) => {
                    t.peer_bytes += input.blob.size;
                    if holders.len() > FEW_HOLDERS {
                        t.wide.push((input.blob, holders));
                    } else {
                        for &n in holders {
                            *t.local.entry(n).or_default() += input.blob.size;
                        }
                    }
                }
            }
        }
        t
    }

    /// Nodes holding some input that few others hold.
    pub(crate) fn holders(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.local.keys().copied().chain(self.stranded.iter().flat_map(|(_, h)| h.iter().copied()))
    }

    /// Input bytes already on `node`.
    pub(crate) fn local_bytes(&self, node: NodeId) -> u64 {
        let wide: u64 = self.wide.iter().filter(|(_, h)| h.contains(&node)).map(|(b, _)| b.size).sum();
        self.local.get(&node).copied().unwrap_or(0) + wide
    }

    /// Seconds to bring every input `node` lacks: the requests run in parallel, so one latency
    /// (the slowest source's) and the bytes over each source's bandwidth.
    /// An unreachable node, and inputs only unreachable nodes hold, move through storage: an
    /// upload then a read, each a storage latency and the bytes over its bandwidth.
    pub(crate) fn seconds(&self, node: NodeId) -> f64 {
        let mut from_peers = self.peer_bytes.saturating_sub(self.local_bytes(node));
        let mut relayed: u64 = self.stranded.iter().filter(|(_, h)| !h.contains(&node)).map(|(b, _)| b.size).sum();
        if self.unreachable.contains(&node) {
            relayed += from_peers;
            from_peers = 0;
        }
        let (peer, storage) = (self.estimates.peer, self.estimates.storage);
        let latency = if relayed > 0 {
            2.0 * storage.latency
        } else if self.storage_bytes > 0 {
            storage.latency
        } else if from_peers > 0 {
            peer.latency
        } else {
            0.0
        };
        latency + from_peers as f64 / peer.bandwidth + (self.storage_bytes + 2 * relayed) as f64 / storage.bandwidth
    }
}
