//! Stragglers. A task still running after `PlannerConfig::speculate_after` times its job's
//! average task duration (and at least [`MIN_STRAGGLER`]; never before one task of the job has
//! finished, so there is an average) gets a second copy on another node,
//! if a node has a slot free once ready thunks are placed. The first copy to finish wins; the
//! other is cancelled ([`Decision::Cancel`]) and its slot is free at once. A copy that fails for a
//! reason outside the thunk is dropped while its twin runs on; a fault of the thunk fails the job
//! as always. Checks sit in a heap ordered by when each task becomes a straggler, so finding
//! stragglers costs O(log tasks) per task, not a scan of what runs.

use std::cmp::Reverse;
use std::time::Duration;

use crate::{Decision, Planner, TaskId};

/// Tasks shorter than this are never copied: a copy would cost more than it could save.
pub const MIN_STRAGGLER: Duration = Duration::from_secs(1);

impl Planner {
    /// How long tasks of `job` may run before they count as stragglers.
    fn straggler_after(&self, job: crate::JobId) -> Duration {
        let average = self.jobs.get(&job).and_then(|j| j.durations.get()).unwrap_or(self.estimates.duration);
        Duration::from_secs_f64(average * self.config.speculate_after).max(MIN_STRAGGLER)
    }

    /// Schedules the straggler check of a task that just started (copies are not copied again).
    pub(crate) fn watch_straggler(&mut self, task: TaskId) {
        let Some(info) = self.tasks.get(&task) else { return };
        if self.config.speculate_after > 0.0 && !self.twins.contains_key(&task) {
            let at = info.started + self.straggler_after(info.job);
            self.straggler_checks.push(Reverse((at, task)));
        }
    }

    /// When the next straggler check is due, if a copy could start now.
    pub(crate) fn next_straggler_check(&self) -> Option<Duration> {
        if self.free.is_empty() {
            return None;
        }
        self.straggler_checks.peek().map(|Reverse((at, _))| *at)
    }

    /// Starts copies of the tasks that became stragglers, while slots are free.
    pub(crate) fn speculate(&mut self) {
        while let Some(&Reverse((at, task))) = self.straggler_checks.peek() {
            if at > self.now || self.free.is_empty() {
                return;
            }
            self.straggler_checks.pop();
            let Some(info) = self.tasks.get(&task).cloned() else { continue };
            if self.twins.contains_key(&task) {
                continue;
            }
            // Until a task of the job has finished there is nothing to compare with; and the
            // average may have grown since the check was scheduled.
            let known = self.jobs.get(&info.job).is_some_and(|j| j.durations.get().is_some());
            let due = if known { info.started + self.straggler_after(info.job) } else { self.now + MIN_STRAGGLER };
            if due > self.now {
                self.straggler_checks.push(Reverse((due, task)));
                continue;
            }
            let Some(node) = self.free.iter().map(|&(_, _, n)| n).find(|&n| n != info.node) else {
                // Only the straggler's own node has a slot: look again a period later.
                self.straggler_checks.push(Reverse((self.now + self.straggler_after(info.job), task)));
                return;
            };
            let copy = self.next_task;
            self.twins.insert(task, copy);
            self.twins.insert(copy, task);
            self.speculated += 1;
            if let Some(job) = self.jobs.get_mut(&info.job) {
                job.copies += 1;
            }
            self.start(info.job, info.thunk, node, info.inputs.clone());
        }
    }

    /// A task ended: its twin, if any, is no longer a copy of anything. When the task succeeded
    /// the twin is cancelled; returns the twin when it runs on.
    pub(crate) fn untwin(&mut self, task: TaskId, succeeded: bool) -> Option<TaskId> {
        let twin = self.twins.remove(&task)?;
        self.twins.remove(&twin);
        if !succeeded {
            return self.tasks.contains_key(&twin).then_some(twin);
        }
        if let Some(info) = self.tasks.remove(&twin) {
            if let Some(state) = self.nodes.get_mut(&info.node) {
                state.running.remove(&twin);
            }
            self.reindex(info.node);
            self.out.push_back(Decision::Cancel { node: info.node, task: twin });
            self.check_drained(info.node);
        }
        None
    }

    /// Copies started so far.
    pub fn speculated(&self) -> u64 {
        self.speculated
    }
}
