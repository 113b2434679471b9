//! A discrete-event simulator of a cloud of workers that drives the real planner
//! (`thunkmesh-planner`, the same code the rendezvous runs) with modelled time: workers that
//! join after a cold start, each with some slots; every assignment fetches the inputs its node
//! lacks (one latency, the slowest source's, plus bytes over each source's per-request
//! bandwidth), runs for the thunk's modelled duration and, in storage mode, writes its outputs
//! to storage. A share of the workers is 5x slower at running programs (stragglers); the
//! planner's copies of straggling tasks race the originals, and the loser's time is not
//! counted as busy. Targets are uploaded when the planner asks; each resolved thunk's memo record
//! is a storage PUT by the client, in both modes. Not modelled: contention for a worker's
//! network link between concurrent transfers, and failures.

pub mod workloads;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use thunkmesh_planner::{Decision, Estimates, JobId, Link, NodeId, Order, Place, Planner, PlannerConfig, Policy};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{Mode, OutputValue, Submission, SubmittedThunk, TransferStats};

use workloads::{Cost, SimJob, unit};

/// The modelled cloud.
#[derive(Debug, Clone, Copy)]
pub struct Cloud {
    /// Workers launched at the start.
    pub workers: u64,
    /// Thunks each runs at once.
    pub slots: u32,
    /// Cold starts are drawn uniformly from this range, in seconds.
    pub cold_start: (f64, f64),
    /// Worker to worker.
    pub peer: Link,
    /// Worker to storage, per request.
    pub storage: Link,
    /// Longest a thunk waits for a busy node it prefers.
    pub delay: Duration,
    /// Seeds cold starts, slow workers and the planner's tie-breaks.
    pub seed: u64,
    /// The share of workers that run everything 5x slower (stragglers).
    pub slow_workers: f64,
    /// Copy a task running this many times its kind's average duration (0: never).
    pub speculate_after: f64,
    /// How fast the provider lets the fleet grow (`None`: every worker may start at once).
    pub scaling: Option<Scaling>,
}

/// A provider's limit on how fast concurrency grows. AWS Lambda (since November 2023) lets each
/// function add 1,000 concurrent executions every 10 seconds, up to the account's concurrency
/// quota ("Lambda scaling behavior", AWS Lambda Developer Guide); the launcher asks for every
/// worker at once and the provider starts them as fast as this allows.
#[derive(Debug, Clone, Copy)]
pub struct Scaling {
    /// Executions added per step (the first step at time 0).
    pub step: u64,
    /// Seconds between steps.
    pub every: f64,
}

impl Scaling {
    /// AWS Lambda's documented rate.
    pub const LAMBDA: Scaling = Scaling { step: 1000, every: 10.0 };

    /// Seconds after launch at which worker `w` (from 0) may start.
    pub fn start(self, w: u64) -> f64 {
        (w / self.step.max(1)) as f64 * self.every
    }
}

/// How much slower a slow worker is.
const SLOWDOWN: f64 = 5.0;

/// A policy as the simulator runs it: a placement rule, a data path and the ready queue's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Placement rule.
    pub policy: Policy,
    /// Data path.
    pub mode: Mode,
    /// Which ready thunk is served first.
    pub order: Order,
}

impl Variant {
    /// The four variants compared by default, each serving the critical path first.
    pub const ALL: [Variant; 4] = [
        Variant { policy: Policy::Locality, mode: Mode::P2p, order: Order::CriticalPath },
        Variant { policy: Policy::MostBytes, mode: Mode::P2p, order: Order::CriticalPath },
        Variant { policy: Policy::LeastLoaded, mode: Mode::P2p, order: Order::CriticalPath },
        Variant { policy: Policy::Locality, mode: Mode::Storage, order: Order::CriticalPath },
    ];

    /// Locality with a first-in, first-out ready queue, to compare the order with.
    pub const FIFO: Variant = Variant { policy: Policy::Locality, mode: Mode::P2p, order: Order::Fifo };

    /// Every variant that can be asked for by name.
    pub const NAMED: [Variant; 5] = [Variant::ALL[0], Variant::ALL[1], Variant::ALL[2], Variant::ALL[3], Variant::FIFO];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match (self.mode, self.policy, self.order) {
            (Mode::Storage, _, _) => "storage",
            (Mode::P2p, _, Order::Fifo) => "fifo",
            (Mode::P2p, Policy::Locality, _) => "locality",
            (Mode::P2p, Policy::MostBytes, _) => "most-bytes",
            (Mode::P2p, Policy::LeastLoaded, _) => "least-loaded",
        }
    }
}

/// What one simulated run cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Seconds from launch to the last target in storage.
    pub makespan: f64,
    /// Bytes moved between workers.
    pub peer_bytes: u64,
    /// Bytes read from and written to storage.
    pub storage_bytes: u64,
    /// GETs and PUTs of data (inputs, intermediates, targets).
    pub storage_requests: u64,
    /// Of those, PUTs.
    pub storage_puts: u64,
    /// PUTs of memo records by the client (one per thunk, in both modes).
    pub memo_records: u64,
    /// What a fleet kept up for the job is billed: each worker from its start to the end.
    pub worker_seconds: f64,
    /// Seconds workers spent fetching, running and storing.
    pub busy_seconds: f64,
    /// Thunks run.
    pub tasks: u64,
    /// Longest a thunk was held for a busy node, in seconds.
    pub longest_hold: f64,
    /// Copies started for stragglers.
    pub speculated: u64,
    /// Wall-clock seconds the simulation itself took.
    pub sim_seconds: f64,
    /// Mean wall-clock microseconds per planner call that placed work.
    pub planner_micros_per_task: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    WorkerUp(u64),
    TaskDone { node: NodeId, task: u64, thunk: Id, busy_micros: u64 },
    Stored { node: NodeId, blob: Id },
    Tick,
}

/// Runs a job to completion; fails if the planner fails it or stops making progress.
pub fn run(job: &SimJob, cloud: &Cloud, variant: Variant) -> Result<Outcome> {
    Sim::new(job, cloud, variant).run()
}

struct Sim<'a> {
    job: &'a SimJob,
    cloud: &'a Cloud,
    mode: Mode,
    planner: Planner,
    costs: HashMap<Id, &'a Cost>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    now: u64,
    tick_at: Option<u64>,
    cancelled: std::collections::HashSet<u64>,
    out: Outcome,
    planner_time: Duration,
}

const JOB: JobId = JobId(1);

fn micros(secs: f64) -> u64 {
    (secs * 1e6).round() as u64
}

impl<'a> Sim<'a> {
    fn new(job: &'a SimJob, cloud: &'a Cloud, variant: Variant) -> Sim<'a> {
        let estimates = Estimates { peer: cloud.peer, storage: cloud.storage, duration: 1.0 };
        let config = PlannerConfig {
            policy: variant.policy,
            seed: cloud.seed,
            delay: cloud.delay,
            estimates,
            speculate_after: cloud.speculate_after,
            order: variant.order,
            ..PlannerConfig::default()
        };
        let costs = job.thunks.iter().map(|(_, t, c)| (t.id(), c)).collect();
        Sim {
            job,
            cloud,
            mode: variant.mode,
            planner: Planner::with_config(config),
            costs,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            tick_at: None,
            cancelled: std::collections::HashSet::new(),
            out: Outcome::default(),
            planner_time: Duration::ZERO,
        }
    }

    fn at(&mut self, when: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((when, self.seq, event)));
    }

    fn run(mut self) -> Result<Outcome> {
        let started = Instant::now();
        let mut started_at = 0.0;
        for w in 0..self.cloud.workers {
            let (lo, hi) = self.cloud.cold_start;
            let r = unit(self.cloud.seed ^ 0xC01D, w);
            let start = self.cloud.scaling.map_or(0.0, |s| s.start(w));
            started_at += start;
            self.at(micros(start + lo + (hi - lo) * r), Event::WorkerUp(w));
        }
        self.planner.submit(JOB, submission(self.job, self.mode))?;
        while let Some(Reverse((when, _, event))) = self.queue.pop() {
            self.now = when;
            let t = Instant::now();
            self.planner.advance(Duration::from_micros(when));
            self.apply(event);
            let finished = self.decide()?;
            self.planner_time += t.elapsed();
            if finished {
                self.out.makespan = self.now as f64 / 1e6;
                self.out.worker_seconds = self.out.makespan * self.cloud.workers as f64 - started_at;
                self.out.sim_seconds = started.elapsed().as_secs_f64();
                self.out.planner_micros_per_task = self.planner_time.as_secs_f64() * 1e6 / self.out.tasks.max(1) as f64;
                return Ok(self.out);
            }
            self.out.longest_hold = self.out.longest_hold.max(self.planner.longest_hold().as_secs_f64());
            self.out.speculated = self.planner.speculated();
        }
        bail!("the simulation ran out of events before the job finished (planner stalled)")
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::WorkerUp(w) => self.planner.node_joined(NodeId(w), self.cloud.slots, &[]),
            Event::TaskDone { node, task, thunk, busy_micros } => {
                let cost = self.costs[&thunk];
                let outputs: Vec<(String, OutputValue)> = cost
                    .outputs
                    .iter()
                    .map(|(name, &size)| {
                        let hash = blake3::hash(format!("{thunk}#{name}").as_bytes());
                        (name.clone(), OutputValue::Blob(Id::blob(*hash.as_bytes(), size)))
                    })
                    .collect();
                if self.cancelled.remove(&task) {
                    return;
                }
                self.out.busy_seconds += busy_micros as f64 / 1e6;
                self.planner.task_done(node, task, &outputs, TransferStats::default());
            }
            Event::Stored { node, blob } => self.planner.stored(node, JOB, blob, None, TransferStats::default()),
            Event::Tick => self.tick_at = None,
        }
    }

    /// Carries out the planner's decisions; true when the job is done.
    fn decide(&mut self) -> Result<bool> {
        while let Some(decision) = self.planner.poll() {
            match decision {
                Decision::Assign(a) => self.assign(&a),
                Decision::Upload { node, blob, .. } => {
                    self.out.storage_requests += 1;
                    self.out.storage_puts += 1;
                    self.out.storage_bytes += blob.size;
                    let done = self.now + micros(self.cloud.storage.time(blob.size));
                    self.at(done, Event::Stored { node, blob });
                }
                Decision::Resolved { .. } => self.out.memo_records += 1,
                Decision::JobDone { .. } => return Ok(true),
                Decision::JobFailed { error, .. } => bail!("the job failed: {}", error.message),
                Decision::Drained { .. } | Decision::Drop { .. } | Decision::Disagreed { .. } => {}
                Decision::Cancel { task, .. } => {
                    self.cancelled.insert(task);
                }
            }
        }
        if let Some(at) = self.planner.next_deadline().map(|d| d.as_nanos().div_ceil(1000) as u64)
            && self.tick_at.is_none_or(|t| at < t)
        {
            self.tick_at = Some(at);
            // Rounded up to the clock's microsecond, so the planner sees the deadline passed.
            self.at(at.max(self.now), Event::Tick);
        }
        Ok(false)
    }

    fn assign(&mut self, a: &thunkmesh_planner::Assign) {
        self.out.tasks += 1;
        let (peer, storage) = (self.cloud.peer, self.cloud.storage);
        let (mut peer_bytes, mut storage_bytes, mut latency) = (0u64, 0u64, 0f64);
        for (blob, places) in &a.sources {
            match places.first() {
                Some(Place::Node(_)) => {
                    peer_bytes += blob.size;
                    latency = latency.max(peer.latency);
                }
                _ => {
                    storage_bytes += blob.size;
                    self.out.storage_requests += 1;
                    latency = latency.max(storage.latency);
                }
            }
        }
        let fetch = latency + peer_bytes as f64 / peer.bandwidth + storage_bytes as f64 / storage.bandwidth;
        let cost = self.costs[&a.thunk];
        let store = if self.mode == Mode::Storage {
            let written: u64 = cost.outputs.values().sum();
            self.out.storage_requests += cost.outputs.len() as u64;
            self.out.storage_puts += cost.outputs.len() as u64;
            self.out.storage_bytes += written;
            storage.latency + written as f64 / storage.bandwidth
        } else {
            0.0
        };
        self.out.peer_bytes += peer_bytes;
        self.out.storage_bytes += storage_bytes;
        let slow = unit(self.cloud.seed ^ 0x51_0E, a.node.0) < self.cloud.slow_workers;
        let seconds = if slow { cost.seconds * SLOWDOWN } else { cost.seconds };
        let busy = micros(fetch + seconds + store);
        let event = Event::TaskDone { node: a.node, task: a.task, thunk: a.thunk, busy_micros: busy };
        self.at(self.now + busy, event);
    }
}

/// Builds the submission of a simulated job.
pub fn submission(job: &SimJob, mode: Mode) -> Submission {
    Submission {
        store: "sim://".into(),
        mode,
        thunks: job
            .thunks
            .iter()
            .map(|(name, thunk, _)| SubmittedThunk { name: name.clone(), thunk: thunk.clone() })
            .collect(),
        targets: job.targets.clone(),
        stored: job.values.clone(),
        memo: Vec::new(),
        require_direct: false,
        keep_going: false,
        verify: 0,
        verify_salt: 0,
        report_tasks: false,
        carried: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workloads::Shape;

    fn cloud() -> Cloud {
        Cloud {
            workers: 20,
            slots: 2,
            cold_start: (0.1, 0.4),
            peer: Link { latency: 0.0005, bandwidth: 80e6 },
            storage: Link { latency: 0.15, bandwidth: 55e6 },
            delay: Duration::from_millis(500),
            seed: 3,
            slow_workers: 0.1,
            speculate_after: 3.0,
            scaling: None,
        }
    }

    #[test]
    fn lambdas_scaling_rate_delays_the_workers_past_each_thousand() {
        assert_eq!(Scaling::LAMBDA.start(0), 0.0);
        assert_eq!(Scaling::LAMBDA.start(999), 0.0);
        assert_eq!(Scaling::LAMBDA.start(1000), 10.0);
        assert_eq!(Scaling::LAMBDA.start(9_999), 90.0);
        let job = Shape::Compile.build(2_000, 0.0, 3);
        let at_once = Cloud { workers: 40, ..cloud() };
        let step = Cloud { scaling: Some(Scaling { step: 10, every: 5.0 }), ..at_once };
        let (all, stepped) = (run(&job, &at_once, Variant::ALL[0]), run(&job, &step, Variant::ALL[0]));
        let (all, stepped) = (all.expect("finishes"), stepped.expect("finishes"));
        assert!(stepped.makespan > all.makespan, "{} vs {}", stepped.makespan, all.makespan);
        let billed_if_all_at_once = stepped.makespan * 40.0;
        assert!((billed_if_all_at_once - stepped.worker_seconds - (10.0 * 5.0 + 20.0 * 5.0 + 30.0 * 5.0)).abs() < 1e-6);
    }

    #[test]
    fn every_variant_finishes_a_chain_and_only_storage_mode_stores_intermediates() {
        let job = Shape::Chain.build(0, 0.0, 3);
        let runs: Vec<Outcome> = Variant::ALL.iter().map(|&v| run(&job, &cloud(), v).expect("finishes")).collect();
        for (variant, o) in Variant::ALL.iter().zip(&runs) {
            assert_eq!(o.memo_records, 1000, "{}", variant.name());
            assert!(o.makespan >= 1000.0 * 0.025, "{}: at least the chain's run time", variant.name());
        }
        assert_eq!(runs[0].peer_bytes, 0, "locality keeps a chain on one node");
        assert_eq!(runs[0].storage_requests, 2, "the seed in, the target out");
        assert!(runs[3].storage_requests >= 2 * 1000, "storage mode: a GET and a PUT per step");
        assert!(runs[3].makespan > 5.0 * runs[0].makespan, "150 ms per request, twice per 50 ms step");
    }

    /// The video shape: probe, plan, split, one encode per chunk taking its frames' time, a
    /// stitch; every worker that encodes fetches ffmpeg's root, so p2p moves it once per worker.
    #[test]
    fn the_video_shape_encodes_each_chunk_for_its_frames() {
        let job = Shape::Video.build(100, 0.04, 3);
        assert_eq!(job.thunks.len(), 3 + 100 + 1);
        let encodes: Vec<f64> =
            job.thunks.iter().filter(|(n, _, _)| n.starts_with("encode/")).map(|(_, _, c)| c.seconds).collect();
        let mean = encodes.iter().sum::<f64>() / encodes.len() as f64;
        assert!((mean - 180.0 * 0.04).abs() < 0.2 * 180.0 * 0.04, "180 frames of 40 ms each, jittered: {mean}");
        let o = run(&job, &Cloud { workers: 20, ..cloud() }, Variant::ALL[0]).expect("finishes");
        assert!(o.peer_bytes >= 19 * 240 * (1 << 20), "the root reaches the workers peer to peer: {}", o.peer_bytes);
    }

    /// The build shape's generator starts a chain of 23 thunks (generate, a core compile, the
    /// archive, 20 links of 4 s) that first in, first out starts only after the test compiles
    /// ready before it; served first, the chain runs beside them, and the job takes about what
    /// its work on 20 slots takes (each compile also waits 150 ms for its source from storage).
    #[test]
    fn serving_the_critical_path_first_shortens_a_build_with_a_long_link_tail() {
        let job = Shape::Build.build(4_000, 0.0, 3);
        let few = Cloud { workers: 10, slow_workers: 0.0, ..cloud() };
        let critical = run(&job, &few, Variant::ALL[0]).expect("finishes");
        let fifo = run(&job, &few, Variant::FIFO).expect("finishes");
        let work: f64 = job.thunks.iter().map(|(_, _, c)| c.seconds).sum::<f64>() / 20.0;
        assert!(critical.makespan < work * 1.3, "{} s for {work} s of work a slot", critical.makespan);
        assert!(
            fifo.makespan > critical.makespan * 1.2,
            "fifo {} s, critical path {} s",
            fifo.makespan,
            critical.makespan
        );
    }

    #[test]
    fn a_job_file_is_a_workload() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cc/job.toml");
        let job = workloads::from_job_file(&path, 0.5, 4096, 1).expect("the example loads");
        assert!(job.thunks.len() >= 3 && !job.targets.is_empty());
        let o = run(&job, &cloud(), Variant::ALL[0]).expect("finishes");
        assert_eq!(o.memo_records, job.thunks.len() as u64);
    }
}
