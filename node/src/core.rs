//! The node's decisions, pure (issue 29): what happened goes in with the time (`handle`, `wake`,
//! `lost`), what to do comes out (`poll`), in the shape of the rendezvous' core. The tokio layer
//! in `lib.rs` owns the control stream, the tasks, the cache and the timer; it feeds this what
//! happened and carries out what comes back. The whole-mesh simulation in the rendezvous crate
//! drives several of these with the rendezvous' core.
//!
//! The rules. A stop asked (SIGTERM, Ctrl-C), a disk that filled up, or nothing to run for the
//! idle time drains the node once: it finishes what runs, uploads what others need, and is told
//! `Drained`. A task's report goes out after the drain it caused, so the retry of a task that
//! failed for want of space goes to another node. A task that panicked is reported as the node's
//! failure, so its thunk is placed again. A cancel stops only a task that runs. When the
//! rendezvous is lost, what ran is gone with the session, and the node dials again after a wait
//! that doubles from [`FIRST_RETRY`] to [`LONGEST_RETRY`] (give or take a fifth, from the seed,
//! so that nodes that lost the same rendezvous do not all dial at once), for `retry_for` counted
//! from the first failure in a row; a node lost while draining stops.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use thunkmesh_protocol::wire::{ErrorCode, FromRendezvous, TaskFailed, ToRendezvous, WireError};
use tracing::{info, warn};

use crate::Worked;

/// The first wait before dialling the rendezvous again; it doubles after each failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The longest wait between two dials of the rendezvous.
pub const LONGEST_RETRY: Duration = Duration::from_secs(15);

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// The rendezvous welcomed the node: a session begins.
    Registered,
    /// The node was asked to stop.
    Shutdown,
    /// A message from the rendezvous.
    Message(FromRendezvous),
    /// A task ended with its report; `disk_full`: the disk holding the cache is full now.
    Ended {
        /// What to tell the rendezvous.
        report: ToRendezvous,
        /// Whether the disk holding the cache is full now.
        disk_full: bool,
    },
    /// A task panicked: the forced thunk's task id, or `None` for another kind of task.
    Panicked(Option<u64>),
}

/// What to do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this to the rendezvous.
    Send(ToRendezvous),
    /// Start what the rendezvous asked (force a thunk, upload, punch a hole, drop objects).
    Start(FromRendezvous),
    /// Stop the task forcing this task id (a copy of its thunk finished first).
    Cancel(u64),
    /// Remove what the cache's budget no longer holds, and tell the rendezvous.
    Evict,
    /// The rendezvous released the drained node: the node is done.
    Drained,
    /// The rendezvous refused the node (a forbidden node): the node stops, since dialling again
    /// would only be refused again.
    Refused(WireError),
}

/// After the rendezvous was lost: what next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redial {
    /// Dial again after this wait.
    After(Duration),
    /// Stop: the node was draining, or the rendezvous has been gone for the node's `retry_for`.
    GiveUp,
}

/// The node's state across its sessions with the rendezvous.
#[derive(Debug)]
pub struct Core {
    idle_exit: Option<Duration>,
    retry_for: Duration,
    rng: rand::rngs::StdRng,
    draining: bool,
    /// Forced thunks started and not ended or cancelled, by task id.
    forcing: BTreeSet<u64>,
    /// Uploads started and not ended.
    uploads: usize,
    /// When the node last had something to do.
    busy_at: Duration,
    /// Since when dialling has failed in a row, and the wait before the next dial.
    failing_since: Option<Duration>,
    wait: Duration,
    worked: Worked,
    out: VecDeque<Action>,
}

impl Core {
    /// A node starting at `now`. With `idle_exit`, a node with nothing to run that long drains;
    /// a rendezvous gone for `retry_for` ends it. `seed` picks the jitter of the waits.
    pub fn new(now: Duration, idle_exit: Option<Duration>, retry_for: Duration, seed: u64) -> Core {
        Core {
            idle_exit,
            retry_for,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            draining: false,
            forcing: BTreeSet::new(),
            uploads: 0,
            busy_at: now,
            failing_since: None,
            wait: FIRST_RETRY,
            worked: Worked::default(),
            out: VecDeque::new(),
        }
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// What the node did so far.
    pub fn worked(&self) -> &Worked {
        &self.worked
    }

    /// Tasks started and not ended: forced thunks and uploads.
    pub fn running(&self) -> usize {
        self.forcing.len() + self.uploads
    }

    /// When [`Core::wake`] is due if nothing else happens: the end of the idle time, while the
    /// node runs nothing and is not draining.
    pub fn next_deadline(&self) -> Option<Duration> {
        let idle = self.idle_exit.filter(|_| !self.draining && self.running() == 0)?;
        Some(self.busy_at + idle)
    }

    /// Time passed: a node idle for its idle time drains.
    pub fn wake(&mut self, now: Duration) {
        if self.next_deadline().is_some_and(|at| now >= at) {
            info!(idle = ?self.idle_exit, "nothing to run: draining");
            self.worked.idled = true;
            self.drain();
        }
    }

    /// Takes one event at `now`.
    pub fn handle(&mut self, now: Duration, event: Event) {
        match event {
            Event::Registered => {
                (self.failing_since, self.wait, self.busy_at) = (None, FIRST_RETRY, now);
            }
            Event::Shutdown if !self.draining => {
                info!(running = self.running(), "draining: finishing running tasks and uploading what others need");
                self.drain();
            }
            Event::Shutdown => {}
            Event::Message(msg) => self.message(now, msg),
            Event::Ended { report, disk_full } => self.ended(now, report, disk_full),
            Event::Panicked(task) => {
                let Some(task) = task else {
                    self.uploads = self.uploads.saturating_sub(1);
                    return;
                };
                self.forcing.remove(&task);
                // The rendezvous hears of it, so the thunk runs elsewhere and the job goes on.
                let error = WireError::new(ErrorCode::NodeError, "the node's task for this thunk panicked");
                let failed = TaskFailed { task, error, unavailable: Vec::new(), stats: Default::default() };
                self.out.push_back(Action::Send(ToRendezvous::Failed(failed)));
            }
        }
    }

    /// The rendezvous was lost at `now` (or could not be dialled): what ran went with the
    /// session, and the node dials again or stops.
    pub fn lost(&mut self, now: Duration) -> Redial {
        self.forcing.clear();
        self.uploads = 0;
        self.out.clear();
        let since = *self.failing_since.get_or_insert(now);
        if self.draining || now.saturating_sub(since) >= self.retry_for {
            return Redial::GiveUp;
        }
        let wait = self.wait.mul_f64(self.rng.random_range(0.8..1.2));
        self.wait = (self.wait * 2).min(LONGEST_RETRY);
        Redial::After(wait)
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    fn message(&mut self, now: Duration, msg: FromRendezvous) {
        match msg {
            FromRendezvous::Drained => {
                info!("drained");
                self.out.push_back(Action::Drained);
            }
            FromRendezvous::Refused(error) => self.out.push_back(Action::Refused(error)),
            FromRendezvous::Cancel { task } => {
                if self.forcing.remove(&task) {
                    info!(task, "cancelled: a copy finished first");
                    self.out.push_back(Action::Cancel(task));
                }
            }
            FromRendezvous::Assign(a) if !self.forcing.insert(a.task) => {
                warn!(task = a.task, "ignoring a second assignment of a task that runs");
            }
            msg @ (FromRendezvous::Assign(_)
            | FromRendezvous::Upload(_)
            | FromRendezvous::Introduce { .. }
            | FromRendezvous::Drop(_)) => {
                self.uploads += usize::from(matches!(msg, FromRendezvous::Upload(_)));
                self.busy_at = now;
                self.out.push_back(Action::Start(msg));
            }
            other => warn!(message = ?std::mem::discriminant(&other), "ignoring a message meant for clients"),
        }
    }

    fn ended(&mut self, now: Duration, report: ToRendezvous, disk_full: bool) {
        match report.ended_task() {
            // A task cancelled as it ended still reports: the rendezvous ignores what it no
            // longer waits for.
            Some(task) => _ = self.forcing.remove(&task),
            None => self.uploads = self.uploads.saturating_sub(1),
        }
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

    fn drain(&mut self) {
        self.draining = true;
        self.out.push_back(Action::Send(ToRendezvous::Drain));
    }
}

#[cfg(test)]
mod tests {
    use thunkmesh_protocol::wire::{Stored, TaskDone, TransferStats, UploadRequest};
    use thunkmesh_protocol::{Id, Program, Thunk};

    use super::*;

    const IDLE: Duration = Duration::from_secs(2);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn node(idle_exit: Option<Duration>) -> Core {
        Core::new(secs(0.0), idle_exit, Duration::from_secs(60), 1)
    }

    fn actions(core: &mut Core) -> Vec<Action> {
        std::iter::from_fn(|| core.poll()).collect()
    }

    fn upload() -> FromRendezvous {
        FromRendezvous::Upload(UploadRequest { job: 1, blob: Id::of_blob(b"x"), store: "memory://".into() })
    }

    fn stored() -> ToRendezvous {
        ToRendezvous::Stored(Stored {
            job: 1,
            blob: Id::of_blob(b"x"),
            error: None,
            stats: TransferStats::default(),
            bytes: None,
        })
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
            carried: Vec::new(),
        })
    }

    fn done(task: u64) -> ToRendezvous {
        let stats = TransferStats { peer_bytes: 5, storage_bytes_read: 7, ..TransferStats::default() };
        ToRendezvous::Done(TaskDone { task, outputs: vec![], stats })
    }

    fn failed(task: u64, code: ErrorCode, message: &str) -> ToRendezvous {
        let error = WireError::new(code, message);
        ToRendezvous::Failed(TaskFailed { task, error, unavailable: vec![], stats: TransferStats::default() })
    }

    #[test]
    fn a_stop_drains_once_and_the_node_is_done_when_released() {
        let mut core = node(None);
        core.handle(secs(1.0), Event::Shutdown);
        core.handle(secs(1.5), Event::Shutdown);
        assert_eq!(actions(&mut core), [Action::Send(ToRendezvous::Drain)]);
        assert!(core.draining());
        core.handle(secs(2.0), Event::Message(FromRendezvous::Drained));
        assert_eq!(actions(&mut core), [Action::Drained]);
    }

    #[test]
    fn a_refusal_ends_the_node_with_its_reason() {
        let mut core = node(None);
        let forbidden = WireError::new(ErrorCode::Unauthorized, "this node is forbidden here");
        core.handle(secs(1.0), Event::Message(FromRendezvous::Refused(forbidden.clone())));
        assert_eq!(actions(&mut core), [Action::Refused(forbidden)]);
    }

    #[test]
    fn a_node_idle_for_its_idle_time_drains_but_not_while_it_runs_something() {
        let mut core = node(Some(IDLE));
        assert_eq!(core.next_deadline(), Some(IDLE));
        core.handle(secs(1.0), Event::Message(assign(1)));
        assert_eq!(core.next_deadline(), None, "a task runs");
        core.wake(secs(10.0));
        assert_eq!(actions(&mut core), [Action::Start(assign(1))], "no drain while it runs");
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
        let mut core = node(None);
        core.handle(secs(0.1), Event::Message(assign(4)));
        actions(&mut core);
        let no_space = failed(4, ErrorCode::NodeError, "No space left on device");
        core.handle(secs(0.2), Event::Ended { report: no_space.clone(), disk_full: true });
        let said = actions(&mut core);
        assert_eq!(said, [Action::Send(ToRendezvous::Drain), Action::Send(no_space), Action::Evict]);
        assert!(core.worked().disk_full);
    }

    #[test]
    fn a_forced_thunk_that_panics_is_the_nodes_failure_and_an_upload_that_panics_frees_its_slot() {
        let mut core = node(Some(IDLE));
        core.handle(secs(0.0), Event::Message(assign(7)));
        core.handle(secs(0.0), Event::Message(upload()));
        actions(&mut core);
        core.handle(secs(1.0), Event::Panicked(Some(7)));
        let said = actions(&mut core);
        let [Action::Send(ToRendezvous::Failed(f))] = said.as_slice() else { panic!("one failure: {said:?}") };
        assert_eq!((f.task, f.error.code), (7, ErrorCode::NodeError), "the thunk moves to another node");
        assert!(f.error.message.contains("panicked"), "{}", f.error.message);
        assert_eq!(core.running(), 1, "the upload runs");
        core.handle(secs(1.0), Event::Panicked(None));
        assert!(actions(&mut core).is_empty(), "an upload's panic has no task to report");
        assert_eq!(core.next_deadline(), Some(secs(0.0) + IDLE));
    }

    #[test]
    fn a_cancel_stops_only_a_task_that_runs_and_a_late_report_still_goes_out() {
        let mut core = node(Some(IDLE));
        core.handle(secs(0.0), Event::Message(assign(8)));
        core.handle(secs(0.0), Event::Message(assign(8)));
        assert_eq!(actions(&mut core), [Action::Start(assign(8))], "a second assignment is ignored");
        core.handle(secs(1.0), Event::Message(FromRendezvous::Cancel { task: 8 }));
        core.handle(secs(1.0), Event::Message(FromRendezvous::Cancel { task: 8 }));
        core.handle(secs(1.0), Event::Message(FromRendezvous::Cancel { task: 99 }));
        assert_eq!(actions(&mut core), [Action::Cancel(8)]);
        assert_eq!(core.next_deadline(), Some(secs(0.0) + IDLE), "the slot is free");
        core.handle(secs(1.5), Event::Ended { report: done(8), disk_full: false });
        assert_eq!(actions(&mut core), [Action::Send(done(8)), Action::Evict]);
        core.handle(secs(1.5), Event::Message(upload()));
        core.handle(secs(2.0), Event::Ended { report: stored(), disk_full: false });
        assert_eq!(core.running(), 0);
    }

    #[test]
    fn a_lost_rendezvous_is_dialled_with_growing_jittered_waits_until_retry_for() {
        let mut core = Core::new(secs(0.0), None, Duration::from_secs(20), 7);
        core.handle(secs(0.0), Event::Message(assign(1)));
        let mut waits = Vec::new();
        let mut now = secs(1.0);
        while let Redial::After(wait) = core.lost(now) {
            assert_eq!(core.running(), 0, "what ran went with the session");
            waits.push(wait);
            now += wait;
        }
        assert!(now - secs(1.0) >= Duration::from_secs(20), "gave up after {now:?}");
        assert!(waits[0] >= FIRST_RETRY.mul_f64(0.8) && waits[0] <= FIRST_RETRY.mul_f64(1.2), "{waits:?}");
        assert!(waits.windows(2).all(|w| w[1] > w[0] || w[1] >= LONGEST_RETRY.mul_f64(0.8)), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= LONGEST_RETRY.mul_f64(1.2)), "{waits:?}");
        let again = Core::new(secs(0.0), None, Duration::from_secs(20), 7).lost(secs(1.0));
        assert_eq!(again, Redial::After(waits[0]), "the same seed, the same wait");
    }

    #[test]
    fn a_session_that_registered_starts_the_waits_over_and_a_draining_node_gives_up() {
        let mut core = Core::new(secs(0.0), None, Duration::from_secs(5), 3);
        for i in 0..5 {
            assert!(matches!(core.lost(secs(f64::from(i))), Redial::After(_)), "within retry_for");
        }
        core.handle(secs(5.5), Event::Registered);
        let Redial::After(wait) = core.lost(secs(30.0)) else { panic!("a registered node retries anew") };
        assert!(wait <= FIRST_RETRY.mul_f64(1.2), "{wait:?}");
        assert_eq!(core.lost(secs(35.0)), Redial::GiveUp, "gone for retry_for");
        let mut draining = node(None);
        draining.handle(secs(1.0), Event::Shutdown);
        assert_eq!(draining.lost(secs(2.0)), Redial::GiveUp);
        let mut once = Core::new(secs(0.0), None, Duration::ZERO, 3);
        assert_eq!(once.lost(secs(0.0)), Redial::GiveUp, "retry_for zero: stop at once");
    }
}
