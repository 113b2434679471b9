//! Results checked on other nodes before they are final (issue 28: a node with the token that
//! reports made-up outputs). A job's `verify` says one in how many of its thunks are checked,
//! picked by a salt only the client knows, so a node cannot tell which of its results will be.
//! A checked thunk's first result is held, not completed: nothing downstream sees it, and the
//! thunk runs again on a node that has not run it. Equal outputs complete it as usual. Different
//! ones bring in a third node if there is one: a node the others outvote fails the job (what it
//! produced elsewhere in the job was not checked), and the client forgets every memo entry it
//! produced. With no third node to decide, the thunk completes with its first result but is not
//! recorded in the memo cache: a thunk that is not deterministic looks the same as a lie.
//! A check waits for a free slot on another node like any thunk; with one node, nothing is
//! checked.

use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::OutputValue;

use crate::{Decision, JobId, NodeId, Planner, place};

/// What one run of a checked thunk gave: its outputs, or `None` if the thunk failed there.
pub(crate) type Outcome = Option<Vec<(String, OutputValue)>>;

/// The runs of one checked thunk so far.
#[derive(Debug, Default)]
pub(crate) struct Check {
    runs: Vec<(NodeId, Outcome)>,
}

/// What to do with a result of a thunk that may be checked.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Complete the thunk with these outputs (recorded in the memo cache unless `unrecorded`).
    Complete { outputs: Vec<(String, OutputValue)>, unrecorded: bool },
    /// Hold it: another run is to come.
    Wait,
    /// The job fails: the result it was given did not hold.
    Fail,
    /// Not a checked thunk: carry on as usual.
    Unchecked,
}

impl Planner {
    /// Whether `thunk` of `job` is one the client's salt picks for checking.
    fn picked(&self, job: JobId, thunk: Id) -> bool {
        let Some((one_in, salt)) = self.jobs.get(&job).map(|j| j.verify) else { return false };
        let hash = u64::from_le_bytes(thunk.hash[..8].try_into().unwrap_or_default());
        match one_in {
            0 => false,
            1 => true,
            n => place::mix(salt, hash).is_multiple_of(u64::from(n)),
        }
    }

    /// Whether a node that is not among `tried` may take work.
    fn another_node(&self, tried: &[NodeId]) -> bool {
        self.nodes.iter().any(|(id, state)| !tried.contains(id) && !state.draining)
    }

    /// Judges what `thunk` of `job` gave on `node`: its outputs, or `None` for a fault of the
    /// thunk. Outputs are copied only for a thunk that is checked.
    pub(crate) fn judge(
        &mut self,
        job: JobId,
        thunk: Id,
        node: NodeId,
        outcome: Option<&[(String, OutputValue)]>,
    ) -> Verdict {
        let key = (job, thunk);
        let outcome_owned = || outcome.map(<[_]>::to_vec);
        let Some(check) = self.checks.get_mut(&key) else {
            if outcome.is_none() || !self.picked(job, thunk) || !self.another_node(&[node]) {
                return Verdict::Unchecked;
            }
            self.checks.insert(key, Check { runs: vec![(node, outcome_owned())] });
            self.check_queue.push_back(key);
            return Verdict::Wait;
        };
        if check.runs.iter().any(|(n, _)| *n == node) {
            // The same node again (its check was placed back where it first ran): elsewhere.
            self.check_queue.push_back(key);
            return Verdict::Wait;
        }
        check.runs.push((node, outcome_owned()));
        let runs = &check.runs;
        let agreeing = |i: usize| runs.iter().filter(|(_, o)| *o == runs[i].1).count();
        let majority = (0..runs.len()).find(|&i| runs[i].1.is_some() && 2 * agreeing(i) > runs.len());
        let tried: Vec<NodeId> = runs.iter().map(|(n, _)| *n).collect();
        if let Some(i) = majority {
            let outvoted: Vec<NodeId> = runs.iter().filter(|(_, o)| *o != runs[i].1).map(|(n, _)| *n).collect();
            let outputs = runs[i].1.clone().unwrap_or_default();
            self.checks.remove(&key);
            if outvoted.is_empty() {
                return Verdict::Complete { outputs, unrecorded: false };
            }
            self.disagreed(job, thunk, outvoted, Vec::new());
            return Verdict::Fail;
        }
        if self.another_node(&tried) {
            self.check_queue.push_back(key);
            return Verdict::Wait;
        }
        // No node left to decide: the first result stands, unrecorded.
        let first = self.checks.remove(&key).and_then(|c| c.runs.into_iter().find_map(|(_, o)| o));
        self.disagreed(job, thunk, Vec::new(), tried);
        match first {
            Some(outputs) => Verdict::Complete { outputs, unrecorded: true },
            None => Verdict::Fail,
        }
    }

    fn disagreed(&mut self, job: JobId, thunk: Id, outvoted: Vec<NodeId>, undecided: Vec<NodeId>) {
        let name = self.jobs.get(&job).map_or("?", |j| j.name(thunk)).to_owned();
        self.out.push_back(Decision::Disagreed { job, name, outvoted, undecided });
    }

    /// Starts the runs that checks wait for, each on a free node that has not run its thunk.
    pub(crate) fn start_checks(&mut self) {
        let mut waiting = std::collections::VecDeque::new();
        while let Some(key) = self.check_queue.pop_front() {
            let (job, thunk) = key;
            let (Some(check), Some(j)) = (self.checks.get(&key), self.jobs.get(&job)) else {
                self.checks.remove(&key);
                continue;
            };
            let tried: Vec<NodeId> = check.runs.iter().map(|(n, _)| *n).collect();
            let free = self.free.iter().map(|&(_, _, n)| n).find(|n| !tried.contains(n));
            match free {
                Some(node) => {
                    let resolved = j.resolved_inputs(thunk);
                    self.start(job, thunk, node, resolved, crate::Why::Check);
                }
                None => waiting.push_back(key),
            }
        }
        self.check_queue = waiting;
    }

    /// Forgets the checks of a job that ended.
    pub(crate) fn drop_checks(&mut self, job: JobId) {
        self.checks.retain(|(j, _), _| *j != job);
        self.check_queue.retain(|(j, _)| *j != job);
    }
}

#[cfg(test)]
mod tests {
    use thunkmesh_protocol::wire::TransferStats;

    use crate::tests::{assigns, blob_output, drain, job_failed, out, program, submission, thunk};
    use crate::{Decision, JobId, NodeId, Planner};

    const JOB: JobId = JobId(3);

    /// A job of `a` -> `b`, every result checked, on `nodes` nodes of one slot.
    fn checked_chain(nodes: u64) -> (Planner, [thunkmesh_protocol::Thunk; 2]) {
        let mut p = Planner::new();
        for n in 1..=nodes {
            p.node_joined(NodeId(n), 1, &[]);
        }
        let a = thunk("a", &[]);
        let b = thunk("b", &[("in", out(&a))]);
        let mut sub = submission(&[("a", &a), ("b", &b)], vec![out(&b)], vec![program()]);
        sub.verify = 1;
        p.submit(JOB, sub).expect("valid job");
        (p, [a, b])
    }

    /// Runs the assignment of `thunk` now due and reports `bytes` as its output; returns the node.
    fn run(p: &mut Planner, thunk: &thunkmesh_protocol::Thunk, bytes: &[u8]) -> (NodeId, Vec<Decision>) {
        let ds = drain(p);
        let a = assigns(&ds).into_iter().find(|a| a.thunk == thunk.id()).expect("an assignment of the thunk");
        p.task_done(a.node, a.task, &blob_output(bytes), TransferStats::default());
        (a.node, drain(p))
    }

    fn resolved(ds: &[Decision], name: &str) -> bool {
        ds.iter().any(|d| matches!(d, Decision::Resolved { name: n, .. } if n == name))
    }

    #[test]
    fn a_checked_result_is_final_only_once_another_node_agrees() {
        let (mut p, [a, b]) = checked_chain(2);
        let (first, held) = run(&mut p, &a, b"A");
        assert!(!resolved(&held, "a"), "held until checked: {held:?}");
        let again = assigns(&held);
        assert_eq!(again.len(), 1, "a runs again, and b waits: {held:?}");
        assert_eq!(again[0].thunk, a.id());
        assert_ne!(again[0].node, first, "on the other node");
        p.task_done(again[0].node, again[0].task, &blob_output(b"A"), TransferStats::default());
        let ds = drain(&mut p);
        assert!(resolved(&ds, "a"), "{ds:?}");
        assert!(assigns(&ds).iter().any(|x| x.thunk == b.id()), "b runs once a is checked: {ds:?}");
    }

    #[test]
    fn a_node_the_others_outvote_fails_the_job_and_is_named() {
        let (mut p, [a, _]) = checked_chain(3);
        let liar = NodeId(1);
        let ds = drain(&mut p);
        let first = assigns(&ds).remove(0);
        let lie = if first.node == liar { b"forged".as_slice() } else { b"A".as_slice() };
        p.task_done(first.node, first.task, &blob_output(lie), TransferStats::default());
        let mut decisions = Vec::new();
        for _ in 0..2 {
            let ds = drain(&mut p);
            decisions.extend(ds.clone());
            let Some(next) = assigns(&ds).into_iter().find(|x| x.thunk == a.id()) else { break };
            let bytes = if next.node == liar { b"forged".as_slice() } else { b"A".as_slice() };
            p.task_done(next.node, next.task, &blob_output(bytes), TransferStats::default());
        }
        decisions.extend(drain(&mut p));
        let outvoted = decisions.iter().find_map(|d| match d {
            Decision::Disagreed { outvoted, .. } => Some(outvoted.clone()),
            _ => None,
        });
        assert_eq!(outvoted, Some(vec![liar]), "{decisions:?}");
        assert!(job_failed(&decisions).is_some(), "{decisions:?}");
        assert!(!resolved(&decisions, "a"), "nothing of the thunk is recorded");
    }

    #[test]
    fn two_nodes_that_differ_with_none_to_decide_leave_the_thunk_unrecorded() {
        let (mut p, [a, b]) = checked_chain(2);
        let (_, held) = run(&mut p, &a, b"one");
        let again = assigns(&held).remove(0);
        p.task_done(again.node, again.task, &blob_output(b"two"), TransferStats::default());
        let ds = drain(&mut p);
        assert!(
            ds.iter().any(|d| matches!(d, Decision::Disagreed { undecided, .. } if undecided.len() == 2)),
            "{ds:?}"
        );
        assert!(!resolved(&ds, "a"), "not recorded: {ds:?}");
        assert!(assigns(&ds).iter().any(|x| x.thunk == b.id()), "the job goes on with the first result: {ds:?}");
    }

    /// The check failed where the first run succeeded, and no third node can decide: the job
    /// fails saying just that (it used to blame a node as outvoted while the rendezvous told
    /// the client that nothing was decided).
    #[test]
    fn a_thunk_that_succeeds_on_one_node_and_fails_on_the_other_with_none_to_decide_says_so() {
        let (mut p, [a, _]) = checked_chain(2);
        let (_, held) = run(&mut p, &a, b"A");
        let again = assigns(&held).remove(0);
        let error = thunkmesh_protocol::wire::WireError::new(thunkmesh_protocol::wire::ErrorCode::ExitStatus, "exit 1");
        p.task_failed(again.node, again.task, &error, &[], TransferStats::default());
        let ds = drain(&mut p);
        assert!(
            ds.iter().any(|d| matches!(d, Decision::Disagreed { outvoted, undecided, .. } if outvoted.is_empty() && undecided.len() == 2)),
            "{ds:?}"
        );
        let failed = job_failed(&ds).expect("the job fails");
        assert!(failed.message.contains("no third node was there to decide"), "{}", failed.message);
        assert!(!failed.message.contains("nothing that node did"), "{}", failed.message);
    }

    #[test]
    fn with_one_node_nothing_is_checked_and_with_verify_off_nothing_either() {
        let (mut p, [a, _]) = checked_chain(1);
        let (_, ds) = run(&mut p, &a, b"A");
        assert!(resolved(&ds, "a"), "{ds:?}");
        let mut p = Planner::new();
        p.node_joined(NodeId(1), 1, &[]);
        p.node_joined(NodeId(2), 1, &[]);
        let t = thunk("t", &[]);
        p.submit(JOB, submission(&[("t", &t)], vec![out(&t)], vec![program()])).expect("valid job");
        let (_, ds) = run(&mut p, &t, b"T");
        assert!(resolved(&ds, "t"), "{ds:?}");
    }
}
