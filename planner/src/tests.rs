//! Deterministic tests of the planner, stepped by hand: placement, lineage after a lost node,
//! failures, the memo cache and tail calls.

use thunkmesh_protocol::wire::{
    ErrorCode, Mode, OutputValue, Reduction, Submission, SubmittedThunk, TransferStats, WireError,
};
use thunkmesh_protocol::{Id, Program, Ref, Thunk};

use crate::{Assign, Decision, JobId, MAX_ATTEMPTS, NodeId, Place, Planner};

const JOB: JobId = JobId(7);

pub(crate) fn program() -> Id {
    Id::of_blob(b"#!/bin/sh\n")
}

pub(crate) fn thunk(tag: &str, inputs: &[(&str, Ref)]) -> Thunk {
    Thunk {
        program: Program::Ref(Ref::Blob(program())),
        args: vec![tag.to_owned()],
        env: Default::default(),
        inputs: inputs.iter().map(|(p, r)| ((*p).to_owned(), r.clone())).collect(),
        outputs: vec!["out".into()],
        timeout_ms: 1000,
        network: false,
        stdout: false,
        dir: None,
    }
}

pub(crate) fn out(t: &Thunk) -> Ref {
    Ref::Output { thunk: t.id(), name: "out".into() }
}

pub(crate) fn submission(thunks: &[(&str, &Thunk)], targets: Vec<Ref>, stored: Vec<Id>) -> Submission {
    Submission {
        store: "memory://".into(),
        mode: Mode::P2p,
        thunks: thunks.iter().map(|(n, t)| SubmittedThunk { name: (*n).into(), thunk: (*t).clone() }).collect(),
        targets,
        stored,
        memo: vec![],
        require_direct: false,
        keep_going: false,
        verify: 0,
        verify_salt: 0,
        report_tasks: false,
        carried: Vec::new(),
    }
}

pub(crate) fn blob_output(bytes: &[u8]) -> Vec<(String, OutputValue)> {
    vec![("out".into(), OutputValue::Blob(Id::of_blob(bytes)))]
}

pub(crate) fn drain(p: &mut Planner) -> Vec<Decision> {
    let decisions = std::iter::from_fn(|| p.poll()).collect();
    p.check_counts();
    decisions
}

pub(crate) fn assigns(ds: &[Decision]) -> Vec<Assign> {
    ds.iter().filter_map(|d| if let Decision::Assign(a) = d { Some(a.clone()) } else { None }).collect()
}

/// Completes an upload request in the decisions, as a node would.
fn answer_uploads(p: &mut Planner, ds: &[Decision]) {
    for d in ds {
        if let Decision::Upload { node, job, blob } = d {
            p.stored(*node, *job, *blob, None, TransferStats::default());
        }
    }
}

/// Why the job failed, if it did.
pub(crate) fn job_failed(ds: &[Decision]) -> Option<WireError> {
    ds.iter().find_map(|d| if let Decision::JobFailed { error, .. } = d { Some(error.clone()) } else { None })
}

fn job_done(ds: &[Decision]) -> Option<&crate::JobOutcome> {
    ds.iter().find_map(|d| if let Decision::JobDone { outcome, .. } = d { Some(outcome) } else { None })
}

#[test]
fn consumer_runs_where_its_input_was_produced() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    p.submit(JOB, submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program()])).expect("valid job");
    let first = assigns(&drain(&mut p));
    assert_eq!(first.len(), 1, "only `a` is ready");
    assert_eq!(first[0].thunk, a.id());
    let producer = first[0].node;
    p.task_done(first[0].node, first[0].task, &blob_output(b"A"), TransferStats::default());
    let second = assigns(&drain(&mut p));
    assert_eq!(second[0].thunk, b.id());
    assert_eq!(second[0].node, producer, "b goes where a's output lives");
    assert!(second[0].sources.iter().all(|(blob, _)| *blob != Id::of_blob(b"A")), "nothing to fetch for a local input");
}

#[test]
fn a_consumer_elsewhere_is_told_which_peer_holds_its_input() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[]);
    let c = thunk("c", &[("x", out(&a)), ("y", out(&b))]);
    let sub = submission(&[("a", &a), ("b", &b), ("c", &c)], vec![out(&c)], vec![program()]);
    p.submit(JOB, sub).expect("valid job");
    let first = assigns(&drain(&mut p));
    assert_eq!(first.len(), 2, "a and b run at once on the two nodes");
    assert_ne!(first[0].node, first[1].node);
    p.task_done(first[0].node, first[0].task, &blob_output(b"small"), TransferStats::default());
    p.task_done(first[1].node, first[1].task, &blob_output(b"the larger output"), TransferStats::default());
    let c_assign = assigns(&drain(&mut p)).remove(0);
    let larger_on = first[1].node;
    assert_eq!(c_assign.node, larger_on, "c goes where most of its input bytes are");
    let small = Id::of_blob(b"small");
    let (_, places) = c_assign.sources.iter().find(|(b, _)| *b == small).expect("small input must be fetched");
    assert_eq!(places, &vec![Place::Node(first[0].node)]);
}

/// Two nodes running `a` and `b` at once, whose outputs `c` reads; returns the thunks and the
/// assignments of `a` and `b`.
fn two_producers_one_consumer(p: &mut Planner) -> ([Thunk; 3], Assign, Assign) {
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[]);
    let c = thunk("c", &[("x", out(&a)), ("y", out(&b))]);
    p.submit(JOB, submission(&[("a", &a), ("b", &b), ("c", &c)], vec![out(&c)], vec![program()])).expect("valid job");
    let mut first = assigns(&drain(p));
    first.sort_by_key(|x| x.thunk != a.id());
    let on_b = first.remove(1);
    ([a, b, c], first.remove(0), on_b)
}

/// Issue 14: after a node evicts an object, no consumer is sent to fetch it from there.
#[test]
fn an_object_a_node_dropped_is_fetched_from_another_holder() {
    let mut p = Planner::new();
    let (_, a_run, b_run) = two_producers_one_consumer(&mut p);
    let x = Id::of_blob(b"x, held twice");
    p.task_done(a_run.node, a_run.task, &[("out".into(), OutputValue::Blob(x))], TransferStats::default());
    p.node_holds(b_run.node, &[x]);
    p.node_dropped(a_run.node, &[x]);
    p.task_done(b_run.node, b_run.task, &blob_output(b"y"), TransferStats::default());
    let c_run = assigns(&drain(&mut p)).remove(0);
    assert_eq!(c_run.node, b_run.node, "only b's node still holds x, and it holds y");
    assert!(c_run.sources.iter().all(|(_, places)| !places.contains(&Place::Node(a_run.node))));
}

/// Issue 14: a consumer sent to a node that evicted its input before the rendezvous heard fails
/// with the input unavailable; the planner stops counting on that copy and makes the object
/// again, and the job goes on.
#[test]
fn a_consumer_sent_for_an_evicted_object_makes_the_planner_rerun_its_producer() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    p.submit(JOB, submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program()])).expect("job");
    let first = assigns(&drain(&mut p)).remove(0);
    p.task_done(NodeId(1), first.task, &blob_output(b"A"), TransferStats::default());
    let consumer = assigns(&drain(&mut p)).remove(0);
    assert_eq!(consumer.thunk, b.id());
    let gone = WireError::new(ErrorCode::InputUnavailable, "no longer in this node's cache");
    p.task_failed(NodeId(1), consumer.task, &gone, &[Id::of_blob(b"A")], TransferStats::default());
    let again = assigns(&drain(&mut p));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].thunk, a.id(), "the producer runs again: no node holds its output");
    p.task_done(NodeId(1), again[0].task, &blob_output(b"A"), TransferStats::default());
    let retried = assigns(&drain(&mut p)).remove(0);
    assert_eq!(retried.thunk, b.id());
    p.task_done(NodeId(1), retried.task, &blob_output(b"B"), TransferStats::default());
    let ds = drain(&mut p);
    assert!(!ds.iter().any(|d| matches!(d, Decision::JobFailed { .. })), "{ds:?}");
}

/// Issue 14: a large intermediate leaves the caches once its consumers are done; a small one
/// stays for reruns, and so does a target.
#[test]
fn a_large_object_no_thunk_will_read_is_dropped_from_its_node() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let c = thunk("c", &[("in", out(&b))]);
    p.submit(JOB, submission(&[("a", &a), ("b", &b), ("c", &c)], vec![out(&c)], vec![program()])).expect("job");
    let large = Id::blob([1; 32], crate::EARLY_DROP_BYTES);
    let small = Id::blob([2; 32], crate::EARLY_DROP_BYTES - 1);
    let (mut drops, mut ds) = (Vec::new(), drain(&mut p));
    for (thunk, output) in [(&a, large), (&b, small), (&c, large)] {
        let run = assigns(&ds).remove(0);
        assert_eq!(run.thunk, thunk.id());
        p.task_done(NodeId(1), run.task, &[("out".into(), OutputValue::Blob(output))], TransferStats::default());
        ds = drain(&mut p);
        let dropped = ds.iter().filter_map(|d| match d {
            Decision::Drop { node, blobs } => Some((*node, blobs.clone())),
            _ => None,
        });
        drops.extend(dropped);
    }
    answer_uploads(&mut p, &ds);
    assert_eq!(
        drops,
        vec![(NodeId(1), vec![large])],
        "a's output once b is done; not b's (small), not c's (the target)"
    );
}

#[test]
fn slots_are_never_exceeded() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 2, &[]);
    let thunks: Vec<Thunk> = (0..5).map(|i| thunk(&i.to_string(), &[])).collect();
    let named: Vec<(&str, &Thunk)> = thunks.iter().map(|t| ("t", t)).collect();
    p.submit(JOB, submission(&named, thunks.iter().map(out).collect(), vec![program()])).expect("valid job");
    let first = assigns(&drain(&mut p));
    assert_eq!(first.len(), 2);
    p.task_done(first[0].node, first[0].task, &blob_output(b"0"), TransferStats::default());
    assert_eq!(assigns(&drain(&mut p)).len(), 1, "one freed slot, one new task");
}

#[test]
fn targets_living_only_in_a_cache_are_uploaded_then_the_job_is_done() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let task = assigns(&drain(&mut p))[0].task;
    p.task_done(NodeId(1), task, &blob_output(b"A"), TransferStats { peer_bytes: 3, ..Default::default() });
    let ds = drain(&mut p);
    assert!(ds.contains(&Decision::Upload { node: NodeId(1), job: JOB, blob: Id::of_blob(b"A") }));
    assert!(ds.iter().any(|d| matches!(d, Decision::Resolved { name, .. } if name == "a")));
    assert!(job_done(&ds).is_none(), "not done before the target is stored");
    answer_uploads(&mut p, &ds);
    let ds = drain(&mut p);
    let outcome = job_done(&ds).expect("job done");
    assert_eq!(outcome.targets, vec![(out(&a), Id::of_blob(b"A"))]);
    assert_eq!((outcome.executed, outcome.cached, outcome.stats.peer_bytes), (1, 0, 3));
}

#[test]
fn lost_node_output_is_recomputed_from_its_thunk() {
    let mut p = Planner::new();
    let ([a, _, c], first_a, first_b) = two_producers_one_consumer(&mut p);
    let (on_a, on_b) = (first_a.node, first_b.node);
    p.task_done(on_a, first_a.task, &blob_output(b"A"), TransferStats::default());
    // The node that ran `a` dies before `b` is done: `a`'s only copy is gone.
    p.node_left(on_a);
    p.task_done(on_b, first_b.task, &blob_output(b"B"), TransferStats::default());
    let again = assigns(&drain(&mut p));
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].thunk, again[0].node), (a.id(), on_b), "a runs again on the survivor");
    p.task_done(again[0].node, again[0].task, &blob_output(b"A"), TransferStats::default());
    let c_run = assigns(&drain(&mut p));
    assert_eq!(c_run[0].thunk, c.id());
    p.task_done(c_run[0].node, c_run[0].task, &blob_output(b"C"), TransferStats::default());
    let ds = drain(&mut p);
    answer_uploads(&mut p, &ds);
    let outcome = drain(&mut p)
        .into_iter()
        .find_map(|d| if let Decision::JobDone { outcome, .. } = d { Some(outcome) } else { None });
    assert_eq!(outcome.expect("job completes").nodes_lost, 1);
}

#[test]
fn running_task_of_a_lost_node_is_planned_again() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let first = assigns(&drain(&mut p));
    p.node_left(NodeId(1));
    assert!(assigns(&drain(&mut p)).is_empty(), "no node left to run it");
    p.node_joined(NodeId(2), 1, &[]);
    let again = assigns(&drain(&mut p));
    assert_eq!((again[0].thunk, again[0].node), (a.id(), NodeId(2)));
    p.task_done(first[0].node, first[0].task, &blob_output(b"stale"), TransferStats::default());
    assert!(p.resolve(JOB, &out(&a)).is_none(), "an answer for a lost task is ignored");
}

#[test]
fn a_failing_thunk_fails_the_job_with_its_name_and_the_rest_goes_on() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 2, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    p.submit(JobId(JOB.0 + 1), submission(&[("b", &b)], vec![out(&b)], vec![program()])).expect("valid job");
    let tasks = assigns(&drain(&mut p));
    let mut error = WireError::new(ErrorCode::ExitStatus, "exit status 3");
    error.detail = "stderr: boom".into();
    p.task_failed(tasks[0].node, tasks[0].task, &error, &[], TransferStats::default());
    let ds = drain(&mut p);
    let failed =
        ds.iter().find_map(|d| if let Decision::JobFailed { job, error } = d { Some((job, error)) } else { None });
    let (job, error) = failed.expect("job fails");
    assert_eq!(*job, JOB);
    assert_eq!(error.message, "thunk `a` failed: exit status 3");
    assert_eq!(error.detail, "stderr: boom");
    p.task_done(tasks[1].node, tasks[1].task, &blob_output(b"B"), TransferStats::default());
    assert_eq!(p.resolve(JobId(JOB.0 + 1), &out(&b)), Some(Id::of_blob(b"B")), "the other job goes on");
}

/// A job that keeps going: `a` fails, so `b` (which reads it) is skipped, while `c` (which does
/// not) still runs, and the job ends with `c`'s target and `a`'s failure.
#[test]
fn a_job_that_keeps_going_runs_what_does_not_depend_on_a_failed_thunk() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let c = thunk("c", &[]);
    let d = thunk("d", &[("in", out(&c))]);
    let named = [("a", &a), ("b", &b), ("c", &c), ("d", &d)];
    let sub = Submission { keep_going: true, ..submission(&named, vec![out(&b), out(&d)], vec![program()]) };
    p.submit(JOB, sub).expect("valid job");
    let mut ran = Vec::new();
    let mut done = None;
    for _ in 0..10 {
        let ds = drain(&mut p);
        answer_uploads(&mut p, &ds);
        if let Some(outcome) = job_done(&ds) {
            done = Some(outcome.clone());
            break;
        }
        assert!(!ds.iter().any(|d| matches!(d, Decision::JobFailed { .. })), "the job must keep going");
        for task in assigns(&ds) {
            ran.push(task.thunk);
            match task.thunk == a.id() {
                true => {
                    let error = WireError::new(ErrorCode::ExitStatus, "exit status 1");
                    p.task_failed(task.node, task.task, &error, &[], TransferStats::default());
                }
                false => p.task_done(task.node, task.task, &blob_output(b"ok"), TransferStats::default()),
            }
        }
    }
    let outcome = done.expect("the job ends");
    assert!(!ran.contains(&b.id()), "b reads a failed output and never runs");
    assert!(ran.contains(&c.id()) && ran.contains(&d.id()));
    assert_eq!(outcome.targets.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(), vec![out(&d)]);
    let failures: Vec<&str> = outcome.failures.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(failures, ["thunk `a` failed: exit status 1"]);
    assert_eq!(outcome.skipped, 1);
}

#[test]
fn an_unavailable_input_reruns_its_producer_and_gives_up_after_repeated_node_errors() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let error = WireError::new(ErrorCode::NodeError, "disk full");
    for _ in 0..MAX_ATTEMPTS {
        let task = assigns(&drain(&mut p))[0].task;
        p.task_failed(NodeId(1), task, &error, &[], TransferStats::default());
    }
    let task = assigns(&drain(&mut p))[0].task;
    p.task_failed(NodeId(1), task, &error, &[], TransferStats::default());
    let ds = drain(&mut p);
    assert!(ds.iter().any(|d| matches!(d, Decision::JobFailed { error, .. } if error.message.contains("could not run after 5 attempts: disk full"))));
}

#[test]
fn a_memoized_target_in_storage_runs_nothing() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let mut sub = submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program(), Id::of_blob(b"B")]);
    sub.memo = vec![Reduction { thunk: b.id(), outputs: vec![("out".into(), Id::of_blob(b"B"))] }];
    p.submit(JOB, sub).expect("valid job");
    let ds = drain(&mut p);
    assert!(assigns(&ds).is_empty());
    let outcome = job_done(&ds).expect("done at once");
    assert_eq!((outcome.executed, outcome.cached, outcome.total), (0, 2, 2));
}

#[test]
fn a_memoized_intermediate_in_a_cache_is_reused_and_one_nowhere_is_recomputed() {
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let mut sub = submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program()]);
    sub.memo = vec![Reduction { thunk: a.id(), outputs: vec![("out".into(), Id::of_blob(b"A"))] }];

    let mut cached = Planner::new();
    cached.node_joined(NodeId(1), 1, &[Id::of_blob(b"A")]);
    cached.submit(JOB, sub.clone()).expect("valid job");
    let runs = assigns(&drain(&mut cached));
    assert_eq!(runs.iter().map(|a| a.thunk).collect::<Vec<_>>(), vec![b.id()]);

    let mut lost = Planner::new();
    lost.node_joined(NodeId(1), 1, &[]);
    lost.submit(JOB, sub).expect("valid job");
    let runs = assigns(&drain(&mut lost));
    assert_eq!(runs.iter().map(|a| a.thunk).collect::<Vec<_>>(), vec![a.id()]);
}

#[test]
fn a_tail_call_adds_thunks_and_the_output_resolves_to_their_result() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let fib = thunk("fib", &[]);
    let inner = thunk("inner", &[("seed", Ref::Blob(Id::of_blob(b"seed")))]);
    p.submit(JOB, submission(&[("fib", &fib)], vec![out(&fib)], vec![program()])).expect("valid job");
    let task = assigns(&drain(&mut p))[0].task;
    let tail = OutputValue::Tail {
        blob: Id::of_blob(b"# thunkmesh-tail v1\n..."),
        thunks: vec![SubmittedThunk { name: "inner".into(), thunk: inner.clone() }],
        result: out(&inner),
    };
    p.task_done(NodeId(1), task, &[("out".into(), tail)], TransferStats::default());
    let ds = drain(&mut p);
    let next = assigns(&ds);
    assert_eq!(next[0].thunk, inner.id());
    assert_eq!(p.thunk(JOB, inner.id()).map(|(n, _)| n), Some("fib/inner"));
    assert!(!ds.iter().any(|d| matches!(d, Decision::Resolved { name, .. } if name == "fib")), "fib is not final yet");
    p.task_done(next[0].node, next[0].task, &blob_output(b"8"), TransferStats::default());
    let ds = drain(&mut p);
    let fib_reduction = ds.iter().find_map(|d| match d {
        Decision::Resolved { name, reduction, .. } if name == "fib" => Some(reduction.clone()),
        _ => None,
    });
    assert_eq!(fib_reduction.expect("fib resolves").outputs, vec![("out".into(), Id::of_blob(b"8"))]);
    assert_eq!(p.resolve(JOB, &out(&fib)), Some(Id::of_blob(b"8")));
}

/// Runs `fib`, whose output is a tail with no thunks and `result`, as the job's target; returns
/// how the job failed.
fn failure_of_a_tail_returning(result: impl FnOnce(&Thunk) -> Ref) -> WireError {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let fib = thunk("fib", &[]);
    p.submit(JOB, submission(&[("fib", &fib)], vec![out(&fib)], vec![program()])).expect("valid job");
    let task = assigns(&drain(&mut p))[0].task;
    let tail = OutputValue::Tail { blob: Id::of_blob(b"t"), thunks: vec![], result: result(&fib) };
    p.task_done(NodeId(1), task, &[("out".into(), tail)], TransferStats::default());
    let ds = drain(&mut p);
    let error =
        ds.iter().find_map(|d| if let Decision::JobFailed { error, .. } = d { Some(error.clone()) } else { None });
    error.unwrap_or_else(|| panic!("the job must fail, not wait: {ds:?}"))
}

#[test]
fn a_tail_naming_an_unknown_thunk_fails_the_job_clearly() {
    let error = failure_of_a_tail_returning(|_| out(&thunk("ghost", &[])));
    assert_eq!(error.code, ErrorCode::BadTail);
    assert!(error.message.starts_with("tail `out` of thunk `fib`:"), "{}", error.message);
}

/// Issue 12, finding 4: a tail that returns its own output, as a target, hung the job.
#[test]
fn a_tail_that_returns_itself_fails_the_job_naming_the_target() {
    let error = failure_of_a_tail_returning(out);
    assert_eq!(error.code, ErrorCode::BadTail);
    assert!(error.message.contains("target") && error.message.contains("tail calls"), "{}", error.message);
}

#[test]
fn a_submission_with_a_dangling_ref_is_refused() {
    let mut p = Planner::new();
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let e = p.submit(JOB, submission(&[("b", &b)], vec![out(&b)], vec![])).expect_err("a is missing");
    assert!(e.to_string().contains("refers to a thunk output this job does not define"));
}

#[test]
fn an_input_nowhere_with_no_producer_fails_the_job() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![])).expect("valid job");
    let ds = drain(&mut p);
    assert!(ds.iter().any(|d| matches!(d, Decision::JobFailed { error, .. } if error.message.contains("of thunk `a` is not available on any node or in storage"))));
}

#[test]
fn an_answer_from_a_node_the_task_was_not_given_to_is_ignored() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let task = assigns(&drain(&mut p)).remove(0);
    let other = if task.node == NodeId(1) { NodeId(2) } else { NodeId(1) };
    p.task_done(other, task.task, &blob_output(b"forged"), TransferStats::default());
    assert_eq!(p.resolve(JOB, &out(&a)), None);
    p.task_done(task.node, task.task, &blob_output(b"real"), TransferStats::default());
    assert_eq!(p.resolve(JOB, &out(&a)), Some(Id::of_blob(b"real")));
}

#[test]
fn a_target_that_is_a_stored_value_needs_no_thunk() {
    let mut p = Planner::new();
    let value = Id::of_blob(b"input");
    p.submit(JOB, submission(&[], vec![Ref::Blob(value)], vec![value])).expect("valid job");
    let outcome = job_done(&drain(&mut p)).cloned().expect("done at once");
    assert_eq!(outcome.targets, vec![(Ref::Blob(value), value)]);
}

#[test]
fn a_target_that_lives_nowhere_fails_the_job_instead_of_waiting() {
    let mut p = Planner::new();
    p.submit(JOB, submission(&[], vec![Ref::Blob(Id::of_blob(b"lost"))], vec![])).expect("valid job");
    let ds = drain(&mut p);
    assert!(ds.iter().any(
        |d| matches!(d, Decision::JobFailed { error, .. } if error.message.contains("no thunk of the job produces it"))
    ));
}

#[test]
fn storage_mode_reads_every_input_from_storage_and_needs_no_uploads() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let mut sub = submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program()]);
    sub.mode = Mode::Storage;
    p.submit(JOB, sub).expect("valid job");
    let first = assigns(&drain(&mut p)).remove(0);
    p.task_done(first.node, first.task, &blob_output(b"A"), TransferStats::default());
    let second = assigns(&drain(&mut p)).remove(0);
    assert!(second.sources.iter().all(|(_, places)| places == &vec![Place::Storage]));
    assert!(second.sources.iter().any(|(blob, _)| *blob == Id::of_blob(b"A")), "even where it was produced");
    p.task_done(second.node, second.task, &blob_output(b"B"), TransferStats::default());
    let ds = drain(&mut p);
    assert!(!ds.iter().any(|d| matches!(d, Decision::Upload { .. })), "outputs are already in storage");
    assert!(job_done(&ds).is_some());
}

#[test]
fn storage_mode_does_not_count_a_cached_copy_as_available() {
    let a = thunk("a", &[]);
    let b = thunk("b", &[("in", out(&a))]);
    let mut sub = submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program()]);
    sub.memo = vec![Reduction { thunk: a.id(), outputs: vec![("out".into(), Id::of_blob(b"A"))] }];
    sub.mode = Mode::Storage;
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[Id::of_blob(b"A")]);
    p.submit(JOB, sub).expect("valid job");
    let runs = assigns(&drain(&mut p));
    assert_eq!(runs.iter().map(|x| x.thunk).collect::<Vec<_>>(), vec![a.id()], "a runs again to put A in storage");
}

/// Two nodes; `a` done on one of them, `b` running on the other, `c` (needs a and b) waiting.
fn producer_done_consumer_waiting(p: &mut Planner) -> (Assign, Assign, Thunk) {
    producer_done_consumer_waiting_with(p, false)
}

fn producer_done_consumer_waiting_with(p: &mut Planner, require_direct: bool) -> (Assign, Assign, Thunk) {
    p.node_joined(NodeId(1), 1, &[]);
    p.node_joined(NodeId(2), 1, &[]);
    let a = thunk("a", &[]);
    let b = thunk("b", &[]);
    let c = thunk("c", &[("x", out(&a)), ("y", out(&b))]);
    let mut sub = submission(&[("a", &a), ("b", &b), ("c", &c)], vec![out(&c)], vec![program()]);
    sub.require_direct = require_direct;
    p.submit(JOB, sub).expect("valid job");
    let mut first = assigns(&drain(p));
    first.sort_by_key(|x| x.thunk != a.id());
    p.task_done(first[0].node, first[0].task, &blob_output(b"A"), TransferStats::default());
    assert_eq!(first[1].thunk, b.id());
    (first.remove(0), first.remove(0), c)
}

#[test]
fn a_draining_node_uploads_what_others_need_then_may_go() {
    let mut p = Planner::new();
    let (a_run, b_run, c) = producer_done_consumer_waiting(&mut p);
    let a_blob = Id::of_blob(b"A");
    p.node_draining(a_run.node);
    let ds = drain(&mut p);
    assert!(ds.contains(&Decision::Upload { node: a_run.node, job: JOB, blob: a_blob }));
    assert!(!ds.iter().any(|d| matches!(d, Decision::Drained { .. })), "not before the upload is done");
    p.stored(a_run.node, JOB, a_blob, None, TransferStats::default());
    assert!(drain(&mut p).contains(&Decision::Drained { node: a_run.node }));
    p.node_left(a_run.node);
    p.task_done(b_run.node, b_run.task, &blob_output(b"B"), TransferStats::default());
    let c_run = assigns(&drain(&mut p)).remove(0);
    assert_eq!((c_run.thunk, c_run.node), (c.id(), b_run.node));
    let (_, places) = c_run.sources.iter().find(|(blob, _)| *blob == a_blob).expect("A is fetched");
    assert_eq!(places, &vec![Place::Storage]);
    p.task_done(c_run.node, c_run.task, &blob_output(b"C"), TransferStats::default());
    let ds = drain(&mut p);
    answer_uploads(&mut p, &ds);
    let outcome = job_done(&drain(&mut p)).cloned().expect("done");
    assert_eq!((outcome.storage_fallbacks, outcome.nodes_lost, outcome.executed), (1, 0, 3), "nothing recomputed");
}

/// Found by the whole-mesh simulation (issue 29): a draining node asked to upload what only it
/// holds left before it did. The object was made again elsewhere, but the job still took it for
/// one no peer can serve, asked nobody to upload the new copy, and ran its producer again and
/// again for ever.
#[test]
fn an_object_made_again_after_its_drained_holder_left_is_served_by_its_new_holder() {
    let mut p = Planner::new();
    let (a_run, b_run, c) = producer_done_consumer_waiting(&mut p);
    let a_blob = Id::of_blob(b"A");
    p.node_draining(a_run.node);
    assert!(drain(&mut p).contains(&Decision::Upload { node: a_run.node, job: JOB, blob: a_blob }));
    p.node_left(a_run.node);
    p.task_done(b_run.node, b_run.task, &blob_output(b"B"), TransferStats::default());
    let again = assigns(&drain(&mut p));
    let [a_again] = again.as_slice() else { panic!("a runs again: {again:?}") };
    assert_eq!(a_again.node, b_run.node);
    p.task_done(a_again.node, a_again.task, &blob_output(b"A"), TransferStats::default());
    let next = assigns(&drain(&mut p));
    assert_eq!(next.iter().map(|x| x.thunk).collect::<Vec<_>>(), [c.id()], "c runs, not a once more");
}

#[test]
fn a_draining_node_gets_no_new_work() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    p.node_draining(NodeId(1));
    assert!(drain(&mut p).contains(&Decision::Drained { node: NodeId(1) }));
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    assert!(assigns(&drain(&mut p)).is_empty());
}

#[test]
fn a_peer_that_cannot_serve_uploads_and_the_consumer_reads_storage() {
    let mut p = Planner::new();
    let (a_run, b_run, c) = producer_done_consumer_waiting(&mut p);
    let a_blob = Id::of_blob(b"A");
    p.task_done(b_run.node, b_run.task, &blob_output(b"a much longer output for b"), TransferStats::default());
    let c_run = assigns(&drain(&mut p)).remove(0);
    assert_eq!(c_run.node, b_run.node, "c goes where most of its input bytes are");
    let unreachable = WireError::new(ErrorCode::InputUnavailable, "peer unreachable");
    p.task_failed(c_run.node, c_run.task, &unreachable, &[a_blob], TransferStats::default());
    let ds = drain(&mut p);
    assert!(ds.contains(&Decision::Upload { node: a_run.node, job: JOB, blob: a_blob }));
    assert!(assigns(&ds).is_empty(), "c waits for the upload");
    p.stored(a_run.node, JOB, a_blob, None, TransferStats::default());
    let again = assigns(&drain(&mut p)).remove(0);
    assert_eq!(again.thunk, c.id());
    let places: Vec<&Vec<Place>> = again.sources.iter().filter(|(b, _)| *b == a_blob).map(|(_, p)| p).collect();
    assert!(places.iter().all(|p| **p == vec![Place::Storage]), "{places:?}");
}

#[test]
fn a_job_that_requires_direct_transfers_fails_instead_of_falling_back() {
    let mut p = Planner::new();
    let (_, b_run, _) = producer_done_consumer_waiting_with(&mut p, true);
    p.task_done(b_run.node, b_run.task, &blob_output(b"a much longer output for b"), TransferStats::default());
    let c_run = assigns(&drain(&mut p)).remove(0);
    let unreachable = WireError::new(ErrorCode::InputUnavailable, "no direct path within 3s");
    p.task_failed(c_run.node, c_run.task, &unreachable, &[Id::of_blob(b"A")], TransferStats::default());
    let ds = drain(&mut p);
    assert!(!ds.iter().any(|d| matches!(d, Decision::Upload { .. })), "no fallback upload: {ds:?}");
    let failed = ds.iter().find_map(|d| if let Decision::JobFailed { error, .. } = d { Some(error) } else { None });
    let message = &failed.expect("the job fails").message;
    assert!(message.contains("--require-direct") && message.contains("no direct path within 3s"), "{message}");
}

/// Issue 28, finding 4: a target an earlier job stored is not taken to be in the store on that
/// old word alone: this job's client did not find it there (a corrupt copy was removed), so the
/// node that made it again uploads it (a self-hosted rendezvous failed every later run with
/// "not in storage" until it restarted). What the client did find is not uploaded again.
#[test]
fn a_target_an_earlier_job_stored_is_uploaded_again_unless_this_job_found_it() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let blob = Id::of_blob(b"A");
    let mut run_job = |job: JobId| {
        p.submit(job, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
        let run = assigns(&drain(&mut p)).remove(0);
        p.task_done(run.node, run.task, &blob_output(b"A"), TransferStats::default());
        let ds = drain(&mut p);
        let uploaded = ds.contains(&Decision::Upload { node: run.node, job, blob });
        answer_uploads(&mut p, &ds);
        assert!(job_done(&drain(&mut p)).is_some() || job_done(&ds).is_some(), "job {job} is done");
        uploaded
    };
    assert!(run_job(JobId(1)), "the first job uploads its target");
    assert!(run_job(JobId(2)), "the second, whose client did not find it in the store, too");
    // The client of a third knows the result from the memo cache and found it in the store.
    let mut sub = submission(&[("a", &a)], vec![out(&a)], vec![program(), blob]);
    sub.memo = vec![thunkmesh_protocol::wire::Reduction { thunk: a.id(), outputs: vec![("out".into(), blob)] }];
    p.submit(JobId(3), sub).expect("valid job");
    let ds = drain(&mut p);
    assert!(assigns(&ds).is_empty() && !ds.iter().any(|d| matches!(d, Decision::Upload { .. })), "{ds:?}");
    assert!(job_done(&ds).is_some(), "{ds:?}");
}

/// A store that refuses to take a target (full, read-only) is not the producer's fault: nothing
/// runs again, the upload is asked again a few times, then the job fails with the store's cause
/// (issue 28: the chain reran five times, and the cause was only in the node's log).
#[test]
fn a_store_that_refuses_a_target_fails_the_job_with_its_cause_and_reruns_nothing() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let run = assigns(&drain(&mut p)).remove(0);
    p.task_done(run.node, run.task, &blob_output(b"A"), TransferStats::default());
    let full = WireError::new(ErrorCode::StoreError, "file:///store: No space left on device (os error 28)");
    let (mut uploads, mut failed) = (0, None);
    for _ in 0..=MAX_ATTEMPTS + 1 {
        let ds = drain(&mut p);
        assert!(assigns(&ds).is_empty(), "nothing runs again: {ds:?}");
        failed = failed.or_else(|| job_failed(&ds));
        for d in &ds {
            if let Decision::Upload { node, job, blob } = d {
                uploads += 1;
                p.stored(*node, *job, *blob, Some(&full), TransferStats::default());
            }
        }
    }
    let failed = failed.expect("the job failed");
    assert_eq!(failed.code, ErrorCode::StoreError);
    assert!(failed.message.ends_with("to storage: file:///store: No space left on device (os error 28)"), "{failed:?}");
    assert_eq!(uploads, MAX_ATTEMPTS + 1);
}

#[test]
fn a_failed_fallback_upload_recomputes_the_object() {
    let mut p = Planner::new();
    let (a_run, b_run, _) = producer_done_consumer_waiting(&mut p);
    let a_blob = Id::of_blob(b"A");
    p.task_done(b_run.node, b_run.task, &blob_output(b"a much longer output for b"), TransferStats::default());
    let c_run = assigns(&drain(&mut p)).remove(0);
    let refused = WireError::new(ErrorCode::InputUnavailable, "not in cache");
    p.task_failed(c_run.node, c_run.task, &refused, &[a_blob], TransferStats::default());
    drain(&mut p);
    p.stored(
        a_run.node,
        JOB,
        a_blob,
        Some(&WireError::new(ErrorCode::NodeError, "not in cache")),
        TransferStats::default(),
    );
    let rerun = assigns(&drain(&mut p));
    assert_eq!(rerun.len(), 1);
    assert_eq!(rerun[0].thunk, a_run.thunk, "the producer runs again");
}

#[test]
fn output_finished_while_draining_is_uploaded_before_the_node_goes() {
    let mut p = Planner::new();
    let (a_run, b_run, c) = producer_done_consumer_waiting(&mut p);
    p.node_draining(b_run.node);
    assert!(!drain(&mut p).iter().any(|d| matches!(d, Decision::Drained { .. })), "b still runs");
    p.task_done(b_run.node, b_run.task, &blob_output(b"B"), TransferStats::default());
    let ds = drain(&mut p);
    let b_blob = Id::of_blob(b"B");
    assert!(ds.contains(&Decision::Upload { node: b_run.node, job: JOB, blob: b_blob }));
    assert!(!ds.iter().any(|d| matches!(d, Decision::Drained { .. })), "not before the upload");
    let c_run = assigns(&ds).into_iter().chain(assigns(&drain(&mut p))).find(|x| x.thunk == c.id());
    assert!(c_run.is_none_or(|x| x.node == a_run.node), "c cannot go to the draining node");
    p.stored(b_run.node, JOB, b_blob, None, TransferStats::default());
    let ds = drain(&mut p);
    assert_eq!(ds.iter().filter(|d| matches!(d, Decision::Drained { .. })).count(), 1);
}

#[test]
fn a_thunk_with_thousands_of_inputs_waits_on_one_at_a_time() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 8, &[]);
    let producers: Vec<Thunk> = (0..2000).map(|i| thunk(&format!("p{i}"), &[])).collect();
    let inputs: Vec<(String, Ref)> = producers.iter().enumerate().map(|(i, t)| (format!("d/{i}"), out(t))).collect();
    let inputs: Vec<(&str, Ref)> = inputs.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
    let gather = thunk("gather", &inputs);
    let mut named: Vec<(&str, &Thunk)> = producers.iter().map(|t| ("p", t)).collect();
    named.push(("gather", &gather));
    p.submit(JOB, submission(&named, vec![out(&gather)], vec![program()])).expect("valid job");
    let mut pending = assigns(&drain(&mut p));
    assert_eq!(pending.len(), 8, "producers start at once, as many as there are slots");
    assert_eq!(p.jobs[&JOB].waiter_entries(), 1, "gather waits on one producer, not 2000");
    let mut done = 0;
    while let Some(a) = pending.pop() {
        p.task_done(a.node, a.task, &blob_output(format!("{done}").as_bytes()), TransferStats::default());
        done += 1;
        pending.extend(assigns(&drain(&mut p)));
        assert!(p.jobs.get(&JOB).is_none_or(|j| j.waiter_entries() <= 1));
    }
    assert_eq!(done, 2001, "every producer and then gather ran");
}

#[test]
fn what_only_an_unreachable_node_holds_is_priced_as_an_upload_and_a_read() {
    use crate::place::{Estimates, Input, Transfers};
    use std::collections::BTreeSet;
    let size = 100 << 20;
    let blob = Id::blob([7; 32], size);
    let holders = BTreeSet::from([NodeId(1)]);
    let inputs = [Input { blob, holders: Some(&holders) }];
    let e = Estimates::default();
    let none = BTreeSet::new();
    let direct = Transfers::new(&inputs, Mode::P2p, e, &none).seconds(NodeId(2));
    let unreachable = BTreeSet::from([NodeId(1)]);
    let stranded = Transfers::new(&inputs, Mode::P2p, e, &unreachable);
    assert_eq!(stranded.seconds(NodeId(1)), 0.0, "on its holder nothing moves");
    let through_storage = 2.0 * e.storage.latency + 2.0 * size as f64 / e.storage.bandwidth;
    assert!((stranded.seconds(NodeId(2)) - through_storage).abs() < 1e-9, "{}", stranded.seconds(NodeId(2)));
    assert!(stranded.seconds(NodeId(2)) > 2.0 * direct, "{} vs {direct}", stranded.seconds(NodeId(2)));
    assert_eq!(stranded.holders().collect::<Vec<_>>(), vec![NodeId(1)], "its holder stays a candidate");
    // A node that cannot be reached fetches through storage too.
    let consumer_unreachable = BTreeSet::from([NodeId(2)]);
    let from_there = Transfers::new(&inputs, Mode::P2p, e, &consumer_unreachable).seconds(NodeId(2));
    assert!((from_there - through_storage).abs() < 1e-9, "{from_there}");
}

#[test]
fn progress_counts_what_could_run_now_apart_from_what_waits_for_inputs() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let (a, b) = (thunk("a", &[]), thunk("b", &[]));
    let c = thunk("c", &[("x", out(&a)), ("y", out(&b))]);
    p.submit(JOB, submission(&[("a", &a), ("b", &b), ("c", &c)], vec![out(&c)], vec![program()])).expect("valid job");
    assert_eq!(assigns(&drain(&mut p)).len(), 1, "one slot");
    let progress = p.progress(JOB).expect("the job");
    assert_eq!((progress.total, progress.done, progress.running, progress.ready), (3, 0, 1, 1), "{progress:?}");
}

/// Issue 12, finding 3: a job's target stored in one store is not taken as stored in another,
/// and a `Stored` for a job that does not exist (or an upload nobody asked for) records nothing.
#[test]
fn storage_facts_belong_to_one_store() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    let on =
        |store: &str| Submission { store: store.into(), ..submission(&[("a", &a)], vec![out(&a)], vec![program()]) };
    p.submit(JobId(1), on("file:///a")).expect("valid job");
    let run = assigns(&drain(&mut p)).remove(0);
    p.task_done(NodeId(1), run.task, &blob_output(b"A"), TransferStats::default());
    let ds = drain(&mut p);
    answer_uploads(&mut p, &ds);
    assert!(job_done(&drain(&mut p)).is_some(), "the target reached store a");

    // Lies about a job that does not exist, and an upload nobody asked of job 2.
    p.stored(NodeId(1), JobId(99), Id::of_blob(b"A"), None, TransferStats::default());
    p.submit(JobId(2), on("file:///b")).expect("valid job");
    p.stored(NodeId(1), JobId(2), Id::of_blob(b"A"), None, TransferStats::default());
    let ds = drain(&mut p);
    assert!(job_done(&ds).is_none(), "store b does not hold the target yet: {ds:?}");
    let upload =
        ds.iter().any(|d| matches!(d, Decision::Upload { job: JobId(2), blob, .. } if *blob == Id::of_blob(b"A")));
    assert!(upload || !assigns(&ds).is_empty(), "the target is uploaded to b or computed again: {ds:?}");
}

/// Found by the rendezvous' fault-schedule simulation: a node that vanished owing the upload of
/// a target left the job waiting for ever (the request stayed marked as asked).
#[test]
fn a_node_lost_while_it_owes_a_target_upload_does_not_stall_the_job() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let run = assigns(&drain(&mut p)).remove(0);
    p.task_done(NodeId(1), run.task, &blob_output(b"A"), TransferStats::default());
    let asked = drain(&mut p);
    assert!(asked.iter().any(|d| matches!(d, Decision::Upload { node: NodeId(1), .. })), "{asked:?}");
    p.node_joined(NodeId(2), 1, &[]);
    p.node_left(NodeId(1));
    let rerun = assigns(&drain(&mut p));
    assert_eq!(rerun.len(), 1, "the only copy was lost: `a` runs again");
    p.task_done(NodeId(2), rerun[0].task, &blob_output(b"A"), TransferStats::default());
    let ds = drain(&mut p);
    answer_uploads(&mut p, &ds);
    assert!(job_done(&drain(&mut p)).is_some(), "the target reaches storage from node 2");
}

/// Issue 28, finding 3: a node that never answers a request to upload a target (it lied about
/// an object it does not have, or hangs) does not make the job wait for ever: at the deadline the
/// upload counts as failed, the target's producer runs again, and a job whose uploads keep
/// going unanswered fails naming why.
#[test]
fn an_upload_nobody_answers_runs_the_producer_again_and_then_fails_the_job() {
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[]);
    let a = thunk("a", &[]);
    p.submit(JOB, submission(&[("a", &a)], vec![out(&a)], vec![program()])).expect("valid job");
    let mut reruns = 0;
    let mut failed = None;
    for _ in 0..=MAX_ATTEMPTS + 2 {
        let ds = drain(&mut p);
        if let Some(run) = assigns(&ds).pop() {
            reruns += 1;
            p.task_done(run.node, run.task, &blob_output(b"A"), TransferStats::default());
            let asked = drain(&mut p);
            assert!(asked.iter().any(|d| matches!(d, Decision::Upload { .. })), "{asked:?}");
        }
        failed = failed.or_else(|| job_failed(&ds));
        if failed.is_some() {
            break;
        }
        let due = p.now + crate::upload_allowance(1);
        assert!(p.next_deadline().is_some_and(|at| at <= due), "the driver is woken by then");
        p.advance(due);
    }
    let failed = failed.expect("the job failed instead of waiting for ever");
    assert!(failed.message.contains("did not answer a request to upload it within 10 s"), "{failed:?}");
    assert!(reruns > 1, "the producer ran again: {reruns}");
}

/// Leaves, and a generator that starts a chain of four: with one slot, the generator runs
/// first and each link of the chain as soon as it is ready while a longer chain than the leaves'
/// (none) follows it; the last link ties with the leaves, which were ready before it. First in,
/// first out runs a leaf before the generator.
#[test]
fn the_thunk_that_starts_the_longest_chain_runs_first_and_fifo_is_kept_among_equals() {
    let leaves: Vec<Thunk> = (0..3).map(|i| thunk(&format!("leaf{i}"), &[])).collect();
    let generate = thunk("generate", &[]);
    let compile = thunk("compile", &[("gen", out(&generate))]);
    let archive = thunk("archive", &[("obj", out(&compile))]);
    let link = thunk("link", &[("lib", out(&archive))]);
    let names = ["leaf0", "leaf1", "leaf2", "generate", "compile", "archive", "link"];
    let all: Vec<&Thunk> = leaves.iter().chain([&generate, &compile, &archive, &link]).collect();
    let targets: Vec<Ref> = leaves.iter().chain([&link]).map(out).collect();
    let run_order = |order: crate::Order| {
        let config = crate::PlannerConfig { order, ..crate::PlannerConfig::default() };
        let mut p = Planner::with_config(config);
        p.node_joined(NodeId(1), 1, &[]);
        let thunks: Vec<(&str, &Thunk)> = names.iter().copied().zip(all.iter().copied()).collect();
        p.submit(JOB, submission(&thunks, targets.clone(), vec![program()])).expect("valid job");
        let mut ran = Vec::new();
        while let Some(a) = assigns(&drain(&mut p)).pop() {
            ran.push(names[all.iter().position(|t| t.id() == a.thunk).expect("a thunk of the job")]);
            p.task_done(a.node, a.task, &blob_output(ran.last().expect("one").as_bytes()), TransferStats::default());
        }
        ran
    };
    let critical = run_order(crate::Order::CriticalPath);
    assert_eq!(critical[..3], ["generate", "compile", "archive"], "{critical:?}");
    assert_eq!(critical.len(), 7);
    let fifo = run_order(crate::Order::Fifo);
    assert!(fifo[0].starts_with("leaf"), "{fifo:?}");
    assert_eq!(fifo.len(), 7);
}

#[test]
fn a_thunks_bottom_level_counts_the_longest_chain_after_it() {
    let a = thunk("a", &[]);
    let b = thunk("b", &[("a", out(&a))]);
    let c = thunk("c", &[("b", out(&b))]);
    let d = thunk("d", &[("a", out(&a)), ("c", out(&c))]);
    let sub = submission(&[("d", &d), ("c", &c), ("b", &b), ("a", &a)], vec![out(&d)], vec![program()]);
    let job = crate::job::Job::new(sub, crate::Order::CriticalPath).expect("valid job");
    let levels: Vec<u32> = [&a, &b, &c, &d].iter().map(|t| job.level(t.id())).collect();
    assert_eq!(levels, [4, 3, 2, 1]);
}

/// A value the job carries is there for every task without storage or a node holding it: the
/// thunk reading it is ready at once and its assignment brings it; a node that ran it holds it,
/// and is not sent it again. A job in storage mode carries nothing (the value is nowhere).
#[test]
fn a_carried_value_rides_with_the_assignment_until_the_node_holds_it() {
    let seed = Id::of_blob(b"seed");
    let first = thunk("first", &[("seed", Ref::Blob(seed))]);
    let second = thunk("second", &[("seed", Ref::Blob(seed)), ("prev", out(&first))]);
    let carry = |mode: Mode| {
        let mut sub = submission(&[("first", &first), ("second", &second)], vec![out(&second)], vec![program()]);
        sub.mode = mode;
        sub.carried = vec![thunkmesh_protocol::wire::Carried { blob: seed, bytes: Vec::new() }];
        sub
    };
    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[program()]);
    p.submit(JOB, carry(Mode::P2p)).expect("valid job");
    let a = assigns(&drain(&mut p)).pop().expect("the first thunk is ready without storage");
    assert_eq!(a.thunk, first.id());
    assert_eq!(a.sources, vec![(seed, vec![Place::Carried])]);
    p.task_done(a.node, a.task, &blob_output(b"1"), TransferStats::default());
    let b = assigns(&drain(&mut p)).pop().expect("the second thunk");
    assert_eq!(b.thunk, second.id());
    assert!(b.sources.is_empty(), "the node holds the seed and the first output: {:?}", b.sources);

    let mut p = Planner::new();
    p.node_joined(NodeId(1), 1, &[program()]);
    p.submit(JOB, carry(Mode::Storage)).expect("valid job");
    let failed = job_failed(&drain(&mut p)).expect("nothing carries the seed in storage mode");
    assert!(failed.message.contains(&seed.to_string()), "{failed:?}");
}
