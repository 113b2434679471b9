//! Stragglers. A task is compared with tasks of its own kind (the same program, with inputs of
//! about the same size: within a factor of four, not counting the thunk's own root, a toolchain
//! that every compile of a build shares and that would make a 40-second compile of an 8 MB
//! source one kind with a 50 ms one), not with the whole job, whose average a few
//! long thunks of another kind would make meaningless. Still running after
//! `PlannerConfig::speculate_after` times its kind's average duration (and at least
//! [`MIN_STRAGGLER`]; never before a task of its kind has finished, so a thunk of a kind of its
//! own, like a fan-in's final thunk, is never copied), it gets a second copy on another node with
//! a free slot once ready thunks are placed, but only if the copy pays for itself: a straggler is
//! expected to run about as long again as it has run, and the copy costs fetching the inputs that
//! node lacks plus a run of the kind's average; the copy is started only when that is less.
//! The first copy to finish wins; the other is cancelled ([`Decision::Cancel`]) and its slot is
//! free at once. A copy that fails for a reason outside the thunk is dropped while its twin runs
//! on; a fault of the thunk fails the job as always. Checks sit in a heap ordered by when each
//! task becomes a straggler, so finding stragglers costs O(log tasks) per task, not a scan of what
//! runs.

use std::cmp::Reverse;
use std::time::Duration;

use thunkmesh_protocol::thunk::ROOT_DIR;
use thunkmesh_protocol::{Id, Program, Thunk};

use crate::job::Job;
use crate::{Decision, Planner, TaskId, TaskInfo};

/// Tasks shorter than this are never copied: a copy would cost more than it could save.
pub const MIN_STRAGGLER: Duration = Duration::from_secs(1);

/// What a task is compared with: its program, and the size class of its inputs (bytes rounded
/// down to a power of four).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Kind {
    program: Option<Program>,
    size_class: u32,
}

impl Kind {
    /// The kind of `thunk` of `job` run on `resolved` inputs.
    pub(crate) fn of(job: Option<&Job>, thunk: Id, resolved: &[Id]) -> Kind {
        let thunk = job.and_then(|j| j.thunk(thunk)).map(|(_, t)| t);
        let bytes = match thunk {
            Some(thunk) => own_bytes(thunk, resolved),
            None => resolved.iter().map(|b| b.size).sum(),
        };
        Kind {
            program: thunk.map(|t| t.program.clone()),
            size_class: bytes.checked_ilog2().map_or(0, |log| log / 2 + 1),
        }
    }
}

/// The bytes of `thunk`'s inputs (`resolved`, in the order of [`Thunk::refs`]) outside its own
/// root.
fn own_bytes(thunk: &Thunk, resolved: &[Id]) -> u64 {
    let program = matches!(thunk.program, Program::Ref(_)).then_some(false);
    let in_root = thunk.inputs.keys().map(|path| path.strip_prefix(ROOT_DIR).is_some_and(|p| p.starts_with('/')));
    program.into_iter().chain(in_root).zip(resolved).filter(|(root, _)| !root).map(|(_, blob)| blob.size).sum()
}

impl Planner {
    /// The average duration of finished tasks of `info`'s kind, if one has finished.
    fn kind_average(&self, info: &TaskInfo) -> Option<f64> {
        self.jobs.get(&info.job)?.kinds.get(&info.kind)?.get()
    }

    /// How long a task may run before it counts as a straggler (its kind's average unknown: a
    /// period after which to look again).
    fn straggler_after(&self, info: &TaskInfo) -> Duration {
        let average = self.kind_average(info).unwrap_or(0.0);
        Duration::from_secs_f64(average * self.config.speculate_after).max(MIN_STRAGGLER)
    }

    /// Schedules the straggler check of a task that just started (copies are not copied again).
    pub(crate) fn watch_straggler(&mut self, task: TaskId) {
        let Some(info) = self.tasks.get(&task) else { return };
        if self.config.speculate_after > 0.0 && !self.twins.contains_key(&task) {
            let at = info.started + self.straggler_after(info);
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
            // Until a task of its kind has finished there is nothing to compare with; and the
            // average may have grown since the check was scheduled.
            let due = info.started + self.straggler_after(&info);
            let average = self.kind_average(&info);
            if average.is_none() || due > self.now {
                self.straggler_checks.push(Reverse((due.max(self.now + MIN_STRAGGLER), task)));
                continue;
            }
            let Some(node) = self.free.iter().map(|&(_, _, n)| n).find(|&n| n != info.node) else {
                // Only the straggler's own node has a slot: look again a period later.
                self.straggler_checks.push(Reverse((self.now + self.straggler_after(&info), task)));
                return;
            };
            if !self.copy_pays(&info, node, average.unwrap_or(0.0)) {
                // It may pay later: the longer the straggler runs, the more a copy is expected to save.
                self.straggler_checks.push(Reverse((self.now + self.straggler_after(&info), task)));
                continue;
            }
            let copy = self.next_task;
            self.twins.insert(task, copy);
            self.twins.insert(copy, task);
            self.speculated += 1;
            if let Some(job) = self.jobs.get_mut(&info.job) {
                job.copies += 1;
            }
            self.start(info.job, info.thunk, node, info.inputs.clone(), crate::Why::Copy);
        }
    }

    /// Whether a copy of the straggler `info` on `node` is expected to finish before it: the
    /// straggler is expected to run as long again as it has run; the copy fetches what `node`
    /// lacks, then runs for the kind's `average`.
    fn copy_pays(&self, info: &TaskInfo, node: crate::NodeId, average: f64) -> bool {
        let Some(job) = self.jobs.get(&info.job) else { return false };
        let fetch = self.transfers(job, &info.inputs).seconds(node);
        let ran = self.now.saturating_sub(info.started).as_secs_f64();
        fetch + average < ran
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

#[cfg(test)]
mod tests {
    use super::*;
    use thunkmesh_protocol::{Inputs, Kind as IdKind, Ref};

    fn blob(size: u64) -> Id {
        Id { kind: IdKind::Blob, hash: [size as u8; 32], size }
    }

    /// Two compiles that share a 50 MB toolchain as their own root but read an 8 MB and a 30 KB
    /// source are of different size classes: only what is not in the root counts.
    #[test]
    fn a_thunks_own_root_does_not_count_toward_its_size() {
        let compile = |source: u64| {
            let inputs: std::collections::BTreeMap<String, Ref> = [
                (".root/usr/lib/gcc/cc1".to_owned(), Ref::Blob(blob(50 << 20))),
                ("src/a.c".to_owned(), Ref::Blob(blob(source))),
            ]
            .into_iter()
            .collect();
            let thunk = Thunk {
                program: Program::Host { path: "/usr/bin/cc".into(), pin: blob(1 << 20) },
                args: vec![],
                env: Default::default(),
                inputs: Inputs::from(inputs),
                outputs: vec!["a.o".into()],
                timeout_ms: 1,
                network: false,
                stdout: false,
                dir: None,
            };
            own_bytes(&thunk, &[blob(50 << 20), blob(source)])
        };
        let (big, small) = (compile(8 << 20), compile(30 << 10));
        assert_eq!((big, small), (8 << 20, 30 << 10));
        let class = |bytes: u64| bytes.checked_ilog2().map_or(0, |log| log / 2 + 1);
        assert_ne!(class(big), class(small));
    }
}
