//! One placement decision at scale: 10,000 nodes with 2 slots each and a job of 1,000,000 ready
//! thunks, each reading three inputs that live on different nodes (and in storage). Every timed
//! call is one `poll` that places one thunk; the task is then finished outside the timing, so
//! a slot is always free. Run with `cargo bench -p thunkmesh-planner`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use thunkmesh_planner::{Decision, JobId, NodeId, Planner, PlannerConfig};
use thunkmesh_protocol::wire::{Mode, OutputValue, Submission, SubmittedThunk, TransferStats};
use thunkmesh_protocol::{Id, Program, Ref, Thunk};

const NODES: u64 = 10_000;
const THUNKS: usize = 1_000_000;
const VALUES: u64 = 30_000;

fn value(i: u64) -> Id {
    Id::blob(*blake3::hash(&i.to_le_bytes()).as_bytes(), 1 << 20)
}

fn planner() -> Planner {
    let mut p = Planner::with_config(PlannerConfig { seed: 7, ..PlannerConfig::default() });
    for n in 0..NODES {
        let held: Vec<Id> = (0..VALUES).filter(|v| v % NODES == n).map(value).collect();
        p.node_joined(NodeId(n), 2, &held);
    }
    let program = Id::of_blob(b"bench");
    let thunks = (0..THUNKS)
        .map(|i| {
            let inputs: BTreeMap<String, Ref> =
                (0..3u64).map(|k| (format!("in{k}"), Ref::Blob(value((i as u64 * 7 + k * 1013) % VALUES)))).collect();
            let thunk = Thunk {
                program: Program::Ref(Ref::Blob(program)),
                args: vec![i.to_string()],
                env: Default::default(),
                inputs: inputs.into(),
                outputs: vec!["out".into()],
                timeout_ms: 60_000,
                network: false,
                stdout: false,
                dir: None,
            };
            SubmittedThunk { name: format!("t{i}"), thunk }
        })
        .collect::<Vec<_>>();
    let targets = thunks.iter().map(|t| Ref::Output { thunk: t.thunk.id(), name: "out".into() }).collect();
    let mut stored: Vec<Id> = (0..VALUES).map(value).collect();
    stored.push(program);
    let submission = Submission {
        store: "bench://".into(),
        mode: Mode::P2p,
        thunks,
        targets,
        stored,
        memo: vec![],
        require_direct: false,
        keep_going: false,
        verify: 0,
        verify_salt: 0,
        report_tasks: false,
        carried: Vec::new(),
    };
    p.submit(JobId(1), submission).expect("valid job");
    p
}

fn placement(c: &mut Criterion) {
    let mut p = planner();
    let mut done = 0u64;
    c.bench_function("place one thunk, 10k nodes, 1M thunks", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let decision = p.poll();
                timed += started.elapsed();
                match decision {
                    Some(Decision::Assign(a)) => {
                        done += 1;
                        let out = Id::blob(*blake3::hash(&done.to_le_bytes()).as_bytes(), 1 << 20);
                        p.task_done(
                            a.node,
                            a.task,
                            &[("out".into(), OutputValue::Blob(out))],
                            TransferStats::default(),
                        );
                    }
                    Some(_) => {}
                    None => p = planner(),
                }
            }
            timed
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = placement
}
criterion_main!(benches);
