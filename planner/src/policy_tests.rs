//! Deterministic tests of placement choices on small hand-built cases, including the failures
//! users report of Ray and Dask: a "most input bytes" rule that piles work on one node
//! (ray#54372, dask/distributed#8283), widely shared inputs that make every node look alike
//! (dask/distributed#6570, #5325), and work pulled away from its data (dask/distributed#4962).

use std::collections::BTreeSet;
use std::time::Duration;

use thunkmesh_protocol::wire::{OutputValue, TransferStats};
use thunkmesh_protocol::{Id, Ref};

use crate::tests::{assigns, drain, out, submission, thunk};
use crate::{Decision, Estimates, JobId, NodeId, Place, Planner, PlannerConfig, Policy};

const MIB: u64 = 1 << 20;

fn big(tag: &str, size: u64) -> Id {
    Id::blob(*blake3::hash(tag.as_bytes()).as_bytes(), size)
}

fn planner(policy: Policy, duration: f64) -> Planner {
    let estimates = Estimates { duration, ..Estimates::default() };
    Planner::with_config(PlannerConfig { policy, estimates, ..PlannerConfig::default() })
}

fn at(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Node 1 produced a 100 MiB input and is busy with something else; node 2 is idle.
/// Returns the planner, the consumer's id and the task running on node 1.
fn busy_producer() -> (Planner, Id, u64) {
    let mut p = planner(Policy::Locality, 0.1);
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    p.submit(JobId(7), submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![crate::tests::program()])).expect("job");
    let first = assigns(&drain(&mut p));
    assert_eq!(first[0].thunk, a.id());
    let c = thunk("c", &[]);
    p.submit(JobId(1), submission(&[("c", &c)], vec![out(&c)], vec![crate::tests::program()])).expect("job");
    p.advance(at(100));
    let output = vec![("out".into(), OutputValue::Blob(big("a-out", 100 * MIB)))];
    p.task_done(NodeId(1), first[0].task, &output, TransferStats::default());
    let second = assigns(&drain(&mut p));
    assert_eq!((second.len(), second[0].thunk, second[0].node), (1, c.id(), NodeId(1)), "c takes node 1's slot");
    p.advance(at(150));
    p.node_joined(NodeId(2), 1, &[]);
    (p, b.id(), second[0].task)
}

#[test]
fn a_thunk_waits_briefly_for_the_busy_node_that_holds_its_large_input() {
    let (mut p, b, c_task) = busy_producer();
    assert!(assigns(&drain(&mut p)).is_empty(), "fetching 100 MiB (1.3 s) costs more than waiting (~50 ms)");
    assert_eq!(p.held(), 1);
    assert_eq!(p.next_deadline(), Some(at(650)), "held at most the delay bound (500 ms)");
    p.advance(at(200));
    p.task_done(NodeId(1), c_task, &crate::tests::blob_output(b"c"), TransferStats::default());
    let started = assigns(&drain(&mut p));
    assert_eq!((started.len(), started[0].thunk, started[0].node), (1, b, NodeId(1)));
    // Only the small program, which the node is not counted as holding (it is in storage), is
    // offered, from storage; the large input is there already.
    assert!(started[0].sources.iter().all(|(blob, places)| blob.size < MIB && places == &[Place::Storage]));
}

#[test]
fn a_held_thunk_goes_to_an_idle_node_when_the_delay_bound_passes() {
    let (mut p, b, _) = busy_producer();
    assert!(assigns(&drain(&mut p)).is_empty());
    p.advance(at(649));
    assert!(assigns(&drain(&mut p)).is_empty(), "still within the bound");
    p.advance(at(650));
    let moved = assigns(&drain(&mut p));
    assert_eq!((moved.len(), moved[0].thunk, moved[0].node), (1, b, NodeId(2)), "node 2 is idle: it takes it");
    let input = moved[0].sources.iter().find(|(blob, _)| *blob == big("a-out", 100 * MIB));
    assert_eq!(input.map(|(_, places)| places.clone()), Some(vec![Place::Node(NodeId(1))]), "from the producer's node");
    assert_eq!(p.longest_hold(), Duration::from_millis(500));
}

/// Four consumers of one 100 MiB object held by node 1, four idle nodes, thunks of about 2 s.
fn one_hot_object(policy: Policy) -> Vec<crate::Assign> {
    let mut p = planner(policy, 2.0);
    let hot = big("hot", 100 * MIB);
    p.node_joined(NodeId(1), 1, &[hot]);
    for n in 2..=4 {
        p.node_joined(NodeId(n), 1, &[]);
    }
    let readers: Vec<_> = (0..4).map(|i| thunk(&format!("r{i}"), &[("in", Ref::Blob(hot))])).collect();
    let named: Vec<(String, _)> = readers.iter().enumerate().map(|(i, t)| (format!("r{i}"), t)).collect();
    let refs: Vec<(&str, _)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let targets = readers.iter().map(out).collect();
    p.submit(JobId(7), submission(&refs, targets, vec![crate::tests::program()])).expect("job");
    assigns(&drain(&mut p))
}

#[test]
fn most_bytes_piles_work_on_the_holder_while_locality_spreads_it() {
    // ray#54372 and dask/distributed#8283: every reader "prefers" node 1, and three nodes idle.
    let piled = one_hot_object(Policy::MostBytes);
    assert_eq!(piled.len(), 1, "most-bytes queues three readers behind node 1");
    let spread = one_hot_object(Policy::Locality);
    let nodes: BTreeSet<NodeId> = spread.iter().map(|a| a.node).collect();
    assert_eq!(nodes.len(), 4, "waiting 2 s for node 1 costs more than fetching 100 MiB (1.3 s)");
}

#[test]
fn an_input_every_node_holds_does_not_decide_or_pile_up_placement() {
    // dask/distributed#6570, #5325: a widely shared input makes every node a candidate.
    let mut p = planner(Policy::Locality, 1.0);
    let shared = big("headers", 50 * MIB);
    for n in 1..=10 {
        p.node_joined(NodeId(n), 1, &[shared]);
    }
    let compiles: Vec<_> = (0..10)
        .map(|i| thunk(&format!("cc{i}"), &[("h", Ref::Blob(shared)), ("src", Ref::Blob(big(&format!("s{i}"), 1000)))]))
        .collect();
    let named: Vec<(String, _)> = compiles.iter().enumerate().map(|(i, t)| (format!("cc{i}"), t)).collect();
    let refs: Vec<(&str, _)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let mut stored: Vec<Id> = (0..10).map(|i| big(&format!("s{i}"), 1000)).collect();
    stored.push(crate::tests::program());
    p.submit(JobId(7), submission(&refs, compiles.iter().map(out).collect(), stored)).expect("job");
    let started = assigns(&drain(&mut p));
    let nodes: BTreeSet<NodeId> = started.iter().map(|a| a.node).collect();
    assert_eq!((started.len(), nodes.len()), (10, 10), "one compile per node, none queued");
    assert!(started.iter().all(|a| a.sources.iter().all(|(b, _)| *b != shared)), "nobody fetches the shared input");
}

#[test]
fn a_reducer_runs_where_its_partitions_are_not_on_the_least_busy_node() {
    // dask/distributed#4962: shuffle output pulled away from the node holding it.
    let parts: Vec<Id> = (0..3).map(|i| big(&format!("part{i}"), 30 * MIB)).collect();
    for (policy, expect) in [(Policy::Locality, NodeId(3)), (Policy::LeastLoaded, NodeId(1))] {
        let mut p = planner(policy, 1.0);
        p.node_joined(NodeId(3), 2, &parts);
        let busy = thunk("busy", &[]);
        p.submit(JobId(1), submission(&[("busy", &busy)], vec![out(&busy)], vec![crate::tests::program()]))
            .expect("job");
        assert_eq!(assigns(&drain(&mut p))[0].node, NodeId(3), "node 3 runs one task and has one slot left");
        p.node_joined(NodeId(1), 2, &[]);
        let inputs: Vec<(String, Ref)> =
            parts.iter().enumerate().map(|(i, b)| (format!("p{i}"), Ref::Blob(*b))).collect();
        let inputs: Vec<(&str, Ref)> = inputs.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
        let reduce = thunk("reduce", &inputs);
        p.submit(JobId(7), submission(&[("reduce", &reduce)], vec![out(&reduce)], vec![crate::tests::program()]))
            .expect("job");
        let placed = assigns(&drain(&mut p));
        assert_eq!(placed[0].node, expect, "{policy:?}");
    }
}

mod invariants {
    //! Property tests: on random graphs, random fleets and random losses, a thunk is assigned
    //! only with every input available somewhere, no node runs more than its slots, and the
    //! job finishes while any node is alive (lost work is planned again).

    use proptest::prelude::*;

    use super::*;
    use crate::Decision;

    /// A random DAG: thunk i reads outputs of up to three earlier thunks.
    fn graph() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..25).prop_flat_map(|n| {
            (0..n).map(|i| proptest::collection::vec(0..i.max(1), if i == 0 { 0..1 } else { 0..4 })).collect::<Vec<_>>()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn assignments_are_sound_and_the_job_finishes(
            deps in graph(),
            slots in proptest::collection::vec(1u32..4, 1..5),
            policy in prop_oneof![Just(Policy::Locality), Just(Policy::MostBytes), Just(Policy::LeastLoaded)],
            losses in proptest::collection::vec(any::<u8>(), 0..3),
            seed in any::<u64>(),
        ) {
            let mut thunks = Vec::new();
            for (i, reads) in deps.iter().enumerate() {
                let inputs: Vec<(String, Ref)> = reads.iter().enumerate()
                    .map(|(k, &j)| (format!("in{k}"), out(&thunks[j])))
                    .collect();
                let inputs: Vec<(&str, Ref)> = inputs.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
                thunks.push(thunk(&format!("t{i}"), &inputs));
            }
            let named: Vec<(String, _)> = thunks.iter().enumerate().map(|(i, t)| (format!("t{i}"), t)).collect();
            let refs: Vec<(&str, _)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
            let config = PlannerConfig { policy, seed, ..PlannerConfig::default() };
            let mut p = Planner::with_config(config);
            for (n, &s) in slots.iter().enumerate() {
                p.node_joined(NodeId(n as u64), s, &[]);
            }
            let last = thunks.last().map(out).into_iter().collect();
            p.submit(JobId(7), submission(&refs, last, vec![crate::tests::program()])).expect("job");
            let mut running: Vec<crate::Assign> = Vec::new();
            let mut held_at: std::collections::BTreeMap<Id, BTreeSet<NodeId>> = Default::default();
            let mut losses = losses.into_iter();
            let mut next_node = slots.len() as u64;
            let mut now = 0u64;
            for step in 0..2000 {
                now += 37;
                p.advance(at(now));
                for d in drain(&mut p) {
                    match d {
                        Decision::Assign(a) => {
                            for blob in &a.resolved {
                                let here = held_at.get(blob).is_some_and(|h| h.contains(&a.node));
                                let offered = a.sources.iter().any(|(b, places)| b == blob && !places.is_empty());
                                prop_assert!(here || offered || *blob == crate::tests::program(), "input {blob} is nowhere");
                            }
                            running.push(a);
                        }
                        Decision::Upload { node, job, blob } => p.stored(node, job, blob, None, TransferStats::default()),
                        Decision::JobDone { .. } => return Ok(()),
                        Decision::JobFailed { error, .. } => prop_assert!(false, "job failed: {}", error.message),
                        _ => {}
                    }
                }
                for (n, &s) in slots.iter().enumerate() {
                    prop_assert!(p.running(NodeId(n as u64)) <= s as usize, "node {n} over its {s} slots");
                }
                // Every few steps a node is lost and a fresh one joins.
                if step % 7 == 3 && let Some(which) = losses.next() {
                    let victim = running.get(which as usize % running.len().max(1)).map(|a| a.node);
                    if let Some(victim) = victim {
                        p.node_left(victim);
                        running.retain(|a| a.node != victim);
                        held_at.values_mut().for_each(|h| { h.remove(&victim); });
                        p.node_joined(NodeId(next_node), 2, &[]);
                        next_node += 1;
                        continue;
                    }
                }
                if running.is_empty() {
                    continue;
                }
                let a = running.remove(step % running.len());
                let blob = Id::blob(*blake3::hash(&a.thunk.to_string().into_bytes()).as_bytes(), 10);
                held_at.entry(blob).or_default().insert(a.node);
                for b in &a.resolved {
                    held_at.entry(*b).or_default().insert(a.node);
                }
                p.task_done(a.node, a.task, &[("out".into(), OutputValue::Blob(blob))], TransferStats::default());
            }
            prop_assert!(false, "the job did not finish in 2000 steps");
        }
    }
}

/// A job of a long thunk and a quick one of the same kind on two nodes; the quick one is done at
/// 100 ms (so the kind has an average), the long one runs on.
fn one_long_thunk() -> (Planner, crate::Assign) {
    let mut p = planner(Policy::Locality, 1.0);
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let (a, q) = (thunk("a", &[]), thunk("q", &[]));
    let sub = submission(&[("a", &a), ("q", &q)], vec![out(&a), out(&q)], vec![crate::tests::program()]);
    p.submit(JobId(7), sub).expect("job");
    let started = assigns(&drain(&mut p));
    assert_eq!(started.len(), 2);
    let long = started.iter().find(|s| s.thunk == a.id()).expect("a runs").clone();
    let quick = started.iter().find(|s| s.thunk == q.id()).expect("q runs");
    p.advance(at(100));
    p.task_done(quick.node, quick.task, &crate::tests::blob_output(b"q"), TransferStats::default());
    drain(&mut p);
    (p, long)
}

#[test]
fn a_straggler_gets_a_copy_elsewhere_and_the_first_result_wins() {
    let (mut p, original) = one_long_thunk();
    assert_eq!(p.next_deadline(), Some(at(1000)), "3x its kind's 0.1 s, but at least MIN_STRAGGLER");
    p.advance(at(999));
    assert!(assigns(&drain(&mut p)).is_empty(), "not a straggler yet");
    p.advance(at(1000));
    let copy = assigns(&drain(&mut p));
    assert_eq!(copy.len(), 1, "one copy");
    assert_eq!((copy[0].thunk, p.speculated()), (original.thunk, 1));
    assert_ne!(copy[0].node, original.node, "on the other node");
    p.advance(at(3500));
    p.task_done(copy[0].node, copy[0].task, &crate::tests::blob_output(b"a"), TransferStats::default());
    let ds = drain(&mut p);
    let cancelled = ds.iter().any(
        |d| matches!(d, crate::Decision::Cancel { node, task } if *node == original.node && *task == original.task),
    );
    assert!(cancelled, "the original is cancelled: {ds:?}");
    assert_eq!(p.running(original.node), 0, "its slot is free at once");
    // The cancelled original reports anyway: ignored.
    p.task_done(original.node, original.task, &crate::tests::blob_output(b"a"), TransferStats::default());
    assert!(assigns(&drain(&mut p)).is_empty());
}

#[test]
fn a_copy_that_fails_outside_the_thunk_leaves_the_original_running() {
    let (mut p, original) = one_long_thunk();
    p.advance(at(3000));
    let copy = assigns(&drain(&mut p)).remove(0);
    let error = thunkmesh_protocol::wire::WireError::new(thunkmesh_protocol::wire::ErrorCode::NodeError, "disk full");
    p.task_failed(copy.node, copy.task, &error, &[], TransferStats::default());
    assert!(assigns(&drain(&mut p)).is_empty(), "nothing re-planned: the original still runs");
    assert_eq!(p.running(original.node), 1);
    p.task_done(original.node, original.task, &crate::tests::blob_output(b"a"), TransferStats::default());
    let ds = drain(&mut p);
    assert!(ds.iter().any(|d| matches!(d, crate::Decision::Upload { .. })), "the job goes on: {ds:?}");
}

/// Submits `producers` thunks without inputs and consumers that each read `per` of them, the
/// consumers' outputs being the targets; returns the consumers.
fn submit_fan_in(p: &mut Planner, producers: usize, per: usize) -> Vec<thunkmesh_protocol::Thunk> {
    let producers: Vec<_> = (0..producers).map(|i| thunk(&format!("p{i}"), &[])).collect();
    let consumers: Vec<_> = producers
        .chunks(per)
        .enumerate()
        .map(|(c, group)| {
            let inputs: Vec<(String, Ref)> =
                group.iter().enumerate().map(|(k, t)| (format!("in{k}"), out(t))).collect();
            let inputs: Vec<(&str, Ref)> = inputs.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
            thunk(&format!("c{c}"), &inputs)
        })
        .collect();
    let names: Vec<String> =
        (0..producers.len()).map(|i| format!("p{i}")).chain((0..consumers.len()).map(|c| format!("c{c}"))).collect();
    let named: Vec<(&str, &thunkmesh_protocol::Thunk)> =
        names.iter().map(String::as_str).zip(producers.iter().chain(&consumers)).collect();
    let targets = consumers.iter().map(out).collect();
    p.submit(JobId(7), submission(&named, targets, vec![crate::tests::program()])).expect("job");
    consumers
}

/// Issue 14: the fan-in moved 248 MiB between two nodes where 128 MiB is the least, because the
/// producers of one reducer were spread over both nodes as slots came free. With the backlog
/// of ready producers keeping every slot busy, each producer waits for the node its siblings
/// run on, so every reducer finds its inputs on one node.
#[test]
fn producers_of_one_consumer_are_kept_on_one_node() {
    let mut p = planner(Policy::Locality, 1.0);
    p.node_joined(NodeId(1), 2, &[]);
    p.node_joined(NodeId(2), 2, &[]);
    let reducers = submit_fan_in(&mut p, 64, 8);
    let (mut clock, mut reduced, mut fetched) = (0, 0, 0u64);
    let mut running = Vec::new();
    while reduced < 8 && clock < 60_000 {
        running.extend(assigns(&drain(&mut p)));
        clock += 10;
        p.advance(at(clock));
        // The oldest task finishes every 10 ms (30 ms each on two nodes of two slots).
        let Some(a) = (!running.is_empty()).then(|| running.remove(0)) else { continue };
        if reducers.iter().any(|r| r.id() == a.thunk) {
            reduced += 1;
            fetched += a
                .sources
                .iter()
                .filter(|(_, places)| matches!(places.first(), Some(Place::Node(_))))
                .map(|(b, _)| b.size)
                .sum::<u64>();
        }
        let output = vec![("out".into(), OutputValue::Blob(big(&format!("{}", a.task), 4 * MIB)))];
        p.task_done(a.node, a.task, &output, TransferStats::default());
    }
    assert_eq!(reduced, 8, "every reducer ran");
    assert_eq!(fetched, 0, "no reducer fetched a producer's output from the other node");
}

/// Issue 14: the fan-in's final thunk was copied because it ran longer than the job's average,
/// which its 64 quick producers made small; and the copy fetched its 256 MiB of inputs again.
#[test]
fn a_thunk_of_a_kind_of_its_own_is_never_copied() {
    let mut p = planner(Policy::Locality, 0.05);
    p.node_joined(NodeId(1), 2, &[]);
    p.node_joined(NodeId(2), 2, &[]);
    let total = submit_fan_in(&mut p, 8, 8).remove(0);
    let (mut clock, mut final_task) = (0, None);
    while final_task.is_none() {
        let started = assigns(&drain(&mut p));
        clock += 50;
        p.advance(at(clock));
        for a in started {
            if a.thunk == total.id() {
                final_task = Some(a);
                continue;
            }
            let output = vec![("out".into(), OutputValue::Blob(big(&format!("{}", a.task), 32 * MIB)))];
            p.task_done(a.node, a.task, &output, TransferStats::default());
        }
    }
    for s in 1..=60 {
        p.advance(at(clock + s * 1000));
        assert!(assigns(&drain(&mut p)).is_empty(), "no copy of the final thunk after {s} s");
    }
    assert_eq!(p.speculated(), 0);
}

/// A straggler whose inputs are large and on its own node: a copy elsewhere would first fetch
/// 1 GiB (about 13 s at the 80 MB/s estimate), which a task of 1 s is not worth until it has
/// run longer than that.
#[test]
fn a_copy_is_made_only_when_it_saves_more_than_its_fetch_costs() {
    let mut p = planner(Policy::Locality, 1.0);
    p.node_joined(NodeId(1), 2, &[]);
    let source = thunk("source", &[]);
    let (c1, c2) = (thunk("c1", &[("in", out(&source))]), thunk("c2", &[("in", out(&source))]));
    let sub = submission(
        &[("source", &source), ("c1", &c1), ("c2", &c2)],
        vec![out(&c1), out(&c2)],
        vec![crate::tests::program()],
    );
    p.submit(JobId(7), sub).expect("job");
    let first = assigns(&drain(&mut p));
    p.advance(at(1000));
    let output = vec![("out".into(), OutputValue::Blob(big("source-out", 1024 * MIB)))];
    p.task_done(first[0].node, first[0].task, &output, TransferStats::default());
    let consumers = assigns(&drain(&mut p));
    assert_eq!(consumers.len(), 2, "both consumers run where their input is");
    p.node_joined(NodeId(2), 1, &[]);
    p.advance(at(2000));
    p.task_done(consumers[0].node, consumers[0].task, &crate::tests::blob_output(b"c"), TransferStats::default());
    for d in drain(&mut p) {
        // The target is uploaded (unanswered, the upload would time out and c1 run again).
        if let Decision::Upload { node, job, blob } = d {
            p.stored(node, job, blob, None, TransferStats::default());
        }
    }
    p.advance(at(4000));
    assert!(assigns(&drain(&mut p)).is_empty(), "a straggler at 3 s, but a copy would fetch for 13 s");
    p.advance(at(17_000));
    let copy = assigns(&drain(&mut p));
    assert_eq!(copy.len(), 1, "after 16 s of running, a copy (fetch ~13.4 s + 1 s) is expected to win");
    assert_eq!((copy[0].thunk, copy[0].node), (consumers[1].thunk, NodeId(2)));
}

#[test]
fn nothing_is_copied_before_a_task_of_the_job_has_finished() {
    let mut p = planner(Policy::Locality, 1.0);
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JobId(7), submission(&[("a", &a)], vec![out(&a)], vec![crate::tests::program()])).expect("job");
    assert_eq!(assigns(&drain(&mut p)).len(), 1);
    for s in 1..=10 {
        p.advance(at(s * 1000));
        assert!(assigns(&drain(&mut p)).is_empty(), "no average to call it a straggler at {s} s");
    }
}

/// A thunk that failed for a node's own fault (a sandbox that could not be set up, a full disk)
/// goes to another node under every policy, even one that data or load would send back; with
/// no other node, it is tried there again.
#[test]
fn a_thunk_that_failed_for_the_nodes_fault_goes_to_another_node() {
    use thunkmesh_protocol::wire::{ErrorCode, WireError};
    let sandbox = WireError::new(ErrorCode::NodeError, "the sandbox could not be set up");
    for policy in [Policy::Locality, Policy::MostBytes, Policy::LeastLoaded] {
        let mut p = planner(policy, 0.1);
        p.node_joined(NodeId(1), 1, &[]);
        p.node_joined(NodeId(2), 1, &[]);
        let a = thunk("a", &[]);
        p.submit(JobId(1), submission(&[("a", &a)], vec![out(&a)], vec![crate::tests::program()])).expect("valid job");
        let first = assigns(&drain(&mut p)).remove(0);
        p.task_failed(first.node, first.task, &sandbox, &[], TransferStats::default());
        let again = assigns(&drain(&mut p));
        assert_eq!(again.len(), 1, "{policy:?}");
        assert_ne!(again[0].node, first.node, "{policy:?}: placed again where its sandbox failed");
        p.task_failed(again[0].node, again[0].task, &sandbox, &[], TransferStats::default());
        let third = assigns(&drain(&mut p));
        assert_eq!(third.len(), 1, "{policy:?}: failed on both, it is tried again rather than stuck");
    }
}
