//! What the mesh did, kept for watching it: each task from its assignment to its end, with the
//! node that ran it, why it was placed there, where its inputs came from and what it moved.
//!
//! The core writes here as it decides (pure, on its own clock); two readers take from it. The
//! web view reads the numbered [`Entry`]s of a bounded ring ([`JOURNAL_ENTRIES`], the oldest
//! forgotten first) from the last one it saw, and a client that asked for them
//! ([`thunkmesh_protocol::wire::Submission::report_tasks`]) is sent a [`TaskReport`] of each of
//! its tasks as it ends. A task that never ends (its node left, its job was dropped) is closed as
//! not ok, so nothing open outlives its node or job.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use thunkmesh_planner::{JobId, NodeId};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{InputFrom, TaskReport, TransferStats};

/// Entries the ring keeps (a started task and its end are two).
pub const JOURNAL_ENTRIES: usize = 10_000;

/// Inputs of a task the ring keeps (a compile has a hundred; the rest are counted).
pub const INPUTS_SHOWN: usize = 16;

/// A task as it was assigned.
#[derive(Debug, Clone)]
pub(crate) struct Assigned {
    pub(crate) task: u64,
    pub(crate) job: JobId,
    pub(crate) node: NodeId,
    pub(crate) node_name: String,
    pub(crate) name: String,
    pub(crate) program: String,
    pub(crate) why: String,
    /// Its inputs and where each came from: every one for a client that asked for reports, the
    /// first [`INPUTS_SHOWN`] otherwise.
    pub(crate) inputs: Vec<(Id, InputFrom)>,
    /// How many inputs it has in all.
    pub(crate) inputs_total: usize,
    /// When, on the core's clock.
    pub(crate) at: Duration,
    /// When its job's planning began, on the same clock (for the client's report).
    pub(crate) job_began: Duration,
    /// Whether its client wants a [`TaskReport`].
    pub(crate) report: bool,
}

/// One thing the web view is told, numbered in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Its number: the view asks for the entries after the last it saw.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub what: What,
}

/// A task began or ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A node was given a task.
    Started {
        /// The task (an attempt: a thunk run again, or copied, is another task), as a decimal
        /// string: task ids do not fit a JavaScript number.
        #[serde(serialize_with = "decimal")]
        task: u64,
        /// Its job (the submitting client's session).
        job: u64,
        /// The node's name.
        node: String,
        /// The thunk's name in its job.
        name: String,
        /// Its program's file name (the colour of its bar).
        program: String,
        /// Milliseconds since the rendezvous started.
        at_ms: u64,
        /// Why the planner placed it there.
        why: String,
        /// The first [`INPUTS_SHOWN`] of its inputs.
        inputs: Vec<InputShown>,
        /// How many inputs it has in all.
        inputs_total: usize,
    },
    /// A task ended.
    Ended {
        /// The task, as a decimal string.
        #[serde(serialize_with = "decimal")]
        task: u64,
        /// Its job.
        job: u64,
        /// Milliseconds since the rendezvous started.
        at_ms: u64,
        /// Whether it succeeded (false: it failed, was cancelled, or its node left).
        ok: bool,
        /// Time its program ran.
        program_ms: f64,
        /// Time it spent fetching inputs (from peers, the relay and storage, added up).
        fetch_ms: f64,
        /// Bytes it fetched from peers directly.
        peer_bytes: u64,
        /// Bytes it fetched through the rendezvous' relay.
        relay_bytes: u64,
        /// Bytes it read from storage.
        storage_read_bytes: u64,
        /// Bytes it wrote to storage.
        storage_written_bytes: u64,
    },
}

/// An input of a task, for the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputShown {
    /// Its id (`B<sha256>-<size>`).
    pub blob: String,
    /// Its size.
    pub bytes: u64,
    /// `local`, `peer NAME` or `storage`.
    pub from: String,
}

/// The journal: tasks open now, and the ring of what happened.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    open: HashMap<u64, Assigned>,
    ring: VecDeque<Entry>,
    next: u64,
}

impl Journal {
    /// A task was assigned.
    pub(crate) fn started(&mut self, a: Assigned) {
        let shown = a.inputs.iter().take(INPUTS_SHOWN).map(|(blob, from)| InputShown {
            blob: blob.to_string(),
            bytes: blob.size,
            from: from.to_string(),
        });
        let what = What::Started {
            task: a.task,
            job: a.job.0,
            node: a.node_name.clone(),
            name: a.name.clone(),
            program: a.program.clone(),
            at_ms: millis(a.at),
            why: a.why.clone(),
            inputs: shown.collect(),
            inputs_total: a.inputs_total,
        };
        self.push(what);
        self.open.insert(a.task, a);
    }

    /// A task ended at `now`: the report its client asked for, if it asked.
    pub(crate) fn ended(
        &mut self,
        task: u64,
        now: Duration,
        ok: bool,
        stats: TransferStats,
    ) -> Option<(JobId, TaskReport)> {
        let a = self.open.remove(&task)?;
        self.push(What::Ended {
            task,
            job: a.job.0,
            at_ms: millis(now),
            ok,
            program_ms: stats.program_micros as f64 / 1000.0,
            fetch_ms: (stats.peer_micros + stats.relay_micros + stats.storage_read_micros) as f64 / 1000.0,
            peer_bytes: stats.peer_bytes,
            relay_bytes: stats.relay_bytes,
            storage_read_bytes: stats.storage_bytes_read,
            storage_written_bytes: stats.storage_bytes_written,
        });
        a.report.then(|| {
            let since = |t: Duration| millis(t.saturating_sub(a.job_began));
            let report = TaskReport {
                name: a.name,
                node: a.node_name,
                program: a.program,
                started_ms: since(a.at),
                ended_ms: since(now),
                ok,
                why: a.why,
                inputs: a.inputs,
                stats,
            };
            (a.job, report)
        })
    }

    /// Every open task of `node` (it left) or of `job` (it was dropped), closed as not ok.
    pub(crate) fn close_where(
        &mut self,
        now: Duration,
        node: Option<NodeId>,
        job: Option<JobId>,
    ) -> Vec<(JobId, TaskReport)> {
        let tasks: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, a)| Some(a.node) == node || Some(a.job) == job)
            .map(|(&task, _)| task)
            .collect();
        tasks.into_iter().filter_map(|task| self.ended(task, now, false, TransferStats::default())).collect()
    }

    /// The entries after `seq` still in the ring, at most `max`, and the number of the last entry
    /// written (0: none yet).
    pub(crate) fn since(&self, seq: u64, max: usize) -> (Vec<Entry>, u64) {
        let first = self.ring.front().map_or(0, |e| e.seq);
        let skip = usize::try_from(seq.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        let skip = skip.min(self.ring.len());
        (self.ring.range(skip..).take(max).cloned().collect(), self.next)
    }

    fn push(&mut self, what: What) {
        if self.ring.len() >= JOURNAL_ENTRIES {
            self.ring.pop_front();
        }
        self.next += 1;
        self.ring.push_back(Entry { seq: self.next, what });
    }
}

fn decimal<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

/// Milliseconds of `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(task: u64, node: u64, at_ms: u64, report: bool) -> Assigned {
        Assigned {
            task,
            job: JobId(7),
            node: NodeId(node),
            node_name: format!("n{node}"),
            name: format!("t{task}"),
            program: "sh".into(),
            why: "it held 1 of 1 inputs".into(),
            inputs: vec![(Id::of_blob(b"x"), InputFrom::Local)],
            inputs_total: 1,
            at: Duration::from_millis(at_ms),
            job_began: Duration::from_millis(100),
            report,
        }
    }

    #[test]
    fn a_task_is_reported_on_its_jobs_clock_and_the_view_reads_from_where_it_stopped() {
        let mut journal = Journal::default();
        journal.started(assigned(1, 1, 150, true));
        journal.started(assigned(2, 1, 160, false));
        let stats = TransferStats { peer_bytes: 5, ..TransferStats::default() };
        let (job, report) = journal.ended(1, Duration::from_millis(400), true, stats).expect("a report");
        assert_eq!((job, report.started_ms, report.ended_ms, report.node.as_str()), (JobId(7), 50, 300, "n1"));
        assert_eq!(report.stats.peer_bytes, 5);
        assert!(journal.ended(2, Duration::from_millis(410), true, stats).is_none(), "no report unasked");
        assert!(journal.ended(2, Duration::from_millis(420), true, stats).is_none(), "an ended task is gone");
        let (all, last) = journal.since(0, 100);
        assert_eq!((all.len(), last), (4, 4));
        let (rest, _) = journal.since(2, 100);
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert!(matches!(rest[0].what, What::Ended { task: 1, ok: true, peer_bytes: 5, at_ms: 400, .. }));
    }

    #[test]
    fn a_leaving_nodes_open_tasks_end_as_not_ok_and_the_ring_forgets_the_oldest() {
        let mut journal = Journal::default();
        journal.started(assigned(1, 1, 150, true));
        journal.started(assigned(2, 2, 150, true));
        let closed = journal.close_where(Duration::from_millis(200), Some(NodeId(1)), None);
        assert_eq!(closed.len(), 1);
        assert!(!closed[0].1.ok);
        for task in 10..10 + JOURNAL_ENTRIES as u64 {
            journal.started(assigned(task, 3, 300, false));
        }
        let (entries, last) = journal.since(0, usize::MAX);
        assert_eq!(entries.len(), JOURNAL_ENTRIES);
        assert_eq!(entries.last().map(|e| e.seq), Some(last));
        assert_eq!(journal.since(last, 10).0, Vec::new());
    }
}
