//! The decisions of a node's session with the rendezvous, pure (issue 29): what happened goes in
//! with the time (`handle`, `wake`), what to do comes out (`poll`), in the shape of the
//! rendezvous' core. The tokio layer in `lib.rs` owns the control stream, the tasks, the cache and
//! the timer; it feeds this what happened and carries out what comes back. The rules: a stop
//! asked (SIGTERM, Ctrl-C), a disk that filled up, or nothing to run for the idle time drains the
//! node once (it finishes what runs, uploads what others need, and is told `Drained`); a task's
//! report goes out after the drain it caused, so the retry of a task that failed for want of
//! space goes to another node; a task that panicked is reported as the node's failure.

use std::collections::VecDeque;
use std::time::Duration;

use thunkmesh_protocol::wire::{FromRendezvous, ToRendezvous, WireError};
use tracing::{info, warn};

use crate::Worked;

/// What happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// The node was asked to stop.
    Shutdown,
    /// A message from the rendezvous.
    Message(FromRendezvous),
    /// A task ended with its report; `disk_full`: the disk holding the cache is full now.
    Ended { report: ToRendezvous, disk_full: bool },
    /// A task was cancelled (a copy of its thunk finished first).
    Cancelled,
    /// A task panicked; the failure to report, for a thunk's task.
    Panicked(Option<ToRendezvous>),
}

/// What to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Send this to the rendezvous.
    Send(ToRendezvous),
    /// Carry out the rendezvous' message (start a task, cancel one, drop objects, punch a hole).
    Act(FromRendezvous),
    /// Remove what the cache's budget no longer holds, and tell the rendezvous.
    Evict,
    /// The rendezvous released the drained node: the session is over.
    Drained,
    /// The rendezvous refused the node (a forbidden node): the session is over, and dialling
    /// again would only be refused again.
    Refused(WireError),
}

/// One session's state.
#[derive(Debug)]
pub(crate) struct Core {
    idle_exit: Option<Duration>,
    draining: bool,
    /// Tasks started and not ended.
    running: usize,
    /// When the node last had something to do.
    busy_at: Duration,
    worked: Worked,
    out: VecDeque<Action>,
}

impl Core {
    /// A session starting at `now`; with `idle_exit`, a node with nothing to run that long drains.
    pub(crate) fn new(now: Duration, idle_exit: Option<Duration>) -> Core {
        Core { idle_exit, draining: false, running: 0, busy_at: now, worked: Worked::default(), out: VecDeque::new() }
    }

    /// Whether the node is draining.
    pub(crate) fn draining(&self) -> bool {
        self.draining
    }

    /// What the node did this session.
    pub(crate) fn worked(&self) -> &Worked {
        &self.worked
    }

    /// When [`Core::wake`] is due if nothing else happens: the end of the idle time, while the
    /// node runs nothing and is not draining.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let idle = self.idle_exit.filter(|_| !self.draining && self.running == 0)?;
        Some(self.busy_at + idle)
    }

    /// Time passed: a node idle for its idle time drains.
    pub(crate) fn wake(&mut self, now: Duration) {
        if self.next_deadline().is_some_and(|at| now >= at) {
            info!(idle = ?self.idle_exit, "nothing to run: draining");
            self.worked.idled = true;
            self.drain();
        }
    }

    /// Takes one event at `now`.
    pub(crate) fn handle(&mut self, now: Duration, event: Event) {
        match event {
            Event::Shutdown if !self.draining => {
                info!(running = self.running, "draining: finishing running tasks and uploading what others need");
                self.drain();
            }
            Event::Shutdown => {}
            Event::Message(FromRendezvous::Drained) => {
                info!("drained");
                self.out.push_back(Action::Drained);
            }
            Event::Message(FromRendezvous::Refused(error)) => self.out.push_back(Action::Refused(error)),
            Event::Message(msg) => {
                self.busy_at = now;
                if matches!(msg, FromRendezvous::Assign(_) | FromRendezvous::Upload(_)) {
                    self.running += 1;
                }
                self.out.push_back(Action::Act(msg));
            }
            Event::Ended { report, disk_full } => {
                self.running = self.running.saturating_sub(1);
                if let ToRendezvous::Done(done) = &report {
                    let s = &done.stats;
                    self.worked.thunks += 1;
                    self.worked.fetched_bytes += s.peer_bytes + s.relay_bytes + s.storage_bytes_read;
                }
                // Drain before the failure is reported, so its retry goes to another node.
                if disk_full && !self.draining {
                    warn!("the disk holding the cache is full: draining");
                    self.worked.disk_full = true;
                    self.drain();
                }
                self.out.push_back(Action::Send(report));
                self.out.push_back(Action::Evict);
                self.busy_at = now;
            }
            Event::Cancelled => self.running = self.running.saturating_sub(1),
            Event::Panicked(report) => {
                self.running = self.running.saturating_sub(1);
                // The rendezvous hears of it, so the thunk runs elsewhere and the job goes on.
                self.out.extend(report.map(Action::Send));
            }
        }
    }

    /// The next thing to do.
    pub(crate) fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    fn drain(&mut self) {
        self.draining = true;
        self.out.push_back(Action::Send(ToRendezvous::Drain));
    }
}

#[cfg(test)]
mod tests {
    use thunkmesh_protocol::wire::{ErrorCode, TaskDone, TaskFailed, TransferStats, UploadRequest};
    use thunkmesh_protocol::{Id, Program, Thunk};

    use super::*;

    const IDLE: Duration = Duration::from_secs(2);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn actions(core: &mut Core) -> Vec<Action> {
        std::iter::from_fn(|| core.poll()).collect()
    }

    fn upload() -> FromRendezvous {
        FromRendezvous::Upload(UploadRequest { job: 1, blob: Id::of_blob(b"x"), store: "memory://".into() })
    }

    fn assign(task: u64) -> FromRendezvous {
        let thunk = Thunk {
            program: Program::Host { path: "/bin/true".into(), pin: Id::of_blob(b"true") },
            args: vec![],
            env: Default::default(),
            inputs: Default::default(),
            outputs: vec![],
            timeout_ms: 1000,
            network: false,
            stdout: false,
            dir: None,
        };
        FromRendezvous::Assign(thunkmesh_protocol::wire::Assignment {
            task,
            name: "t".into(),
            thunk,
            resolved: vec![],
            sources: vec![],
            store: "memory://".into(),
            mode: thunkmesh_protocol::wire::Mode::P2p,
        })
    }

    fn done(task: u64) -> ToRendezvous {
        let stats = TransferStats { peer_bytes: 5, storage_bytes_read: 7, ..TransferStats::default() };
        ToRendezvous::Done(TaskDone { task, outputs: vec![], stats })
    }

    fn failed(task: u64) -> ToRendezvous {
        let error = WireError::new(ErrorCode::NodeError, "No space left on device");
        ToRendezvous::Failed(TaskFailed { task, error, unavailable: vec![], stats: TransferStats::default() })
    }

    #[test]
    fn a_stop_drains_once_and_the_session_ends_when_released() {
        let mut core = Core::new(secs(0.0), None);
        core.handle(secs(1.0), Event::Shutdown);
        core.handle(secs(1.5), Event::Shutdown);
        assert_eq!(actions(&mut core), [Action::Send(ToRendezvous::Drain)]);
        assert!(core.draining());
        core.handle(secs(2.0), Event::Message(FromRendezvous::Drained));
        assert_eq!(actions(&mut core), [Action::Drained]);
    }

    #[test]
    fn a_refusal_ends_the_session_with_its_reason() {
        let mut core = Core::new(secs(0.0), None);
        let forbidden = WireError::new(ErrorCode::Unauthorized, "this node is forbidden here");
        core.handle(secs(1.0), Event::Message(FromRendezvous::Refused(forbidden.clone())));
        assert_eq!(actions(&mut core), [Action::Refused(forbidden)]);
    }

    #[test]
    fn a_node_idle_for_its_idle_time_drains_but_not_while_it_runs_something() {
        let mut core = Core::new(secs(0.0), Some(IDLE));
        assert_eq!(core.next_deadline(), Some(IDLE));
        core.handle(secs(1.0), Event::Message(assign(1)));
        assert_eq!(core.next_deadline(), None, "a task runs");
        core.wake(secs(10.0));
        assert_eq!(actions(&mut core), [Action::Act(assign(1))], "no drain while it runs");
        core.handle(secs(10.0), Event::Ended { report: done(1), disk_full: false });
        assert_eq!(actions(&mut core), [Action::Send(done(1)), Action::Evict]);
        core.wake(secs(11.9));
        assert!(actions(&mut core).is_empty(), "idle for 1.9 s only");
        core.wake(secs(12.0));
        assert_eq!(actions(&mut core), [Action::Send(ToRendezvous::Drain)]);
        assert!(core.worked().idled);
        assert_eq!((core.worked().thunks, core.worked().fetched_bytes), (1, 12));
        assert_eq!(core.next_deadline(), None, "draining: no more idle drains");
    }

    #[test]
    fn a_full_disk_drains_before_the_failure_is_reported() {
        let mut core = Core::new(secs(0.0), None);
        core.handle(secs(0.1), Event::Message(assign(4)));
        actions(&mut core);
        core.handle(secs(0.2), Event::Ended { report: failed(4), disk_full: true });
        let said = actions(&mut core);
        assert_eq!(said, [Action::Send(ToRendezvous::Drain), Action::Send(failed(4)), Action::Evict]);
        assert!(core.worked().disk_full);
    }

    #[test]
    fn a_task_that_panics_is_reported_and_a_cancelled_one_frees_its_slot() {
        let mut core = Core::new(secs(0.0), Some(IDLE));
        core.handle(secs(0.0), Event::Message(assign(7)));
        core.handle(secs(0.0), Event::Message(assign(8)));
        core.handle(secs(0.0), Event::Message(upload()));
        actions(&mut core);
        core.handle(secs(1.0), Event::Panicked(Some(failed(7))));
        assert_eq!(actions(&mut core), [Action::Send(failed(7))]);
        core.handle(secs(1.0), Event::Ended { report: done(0), disk_full: false });
        actions(&mut core);
        assert_eq!(core.next_deadline(), None, "task 8 still runs");
        core.handle(secs(1.0), Event::Cancelled);
        assert_eq!(core.next_deadline(), Some(secs(1.0) + IDLE), "idle since the last task ended");
    }
}
