//! The thin tokio layer around the core: one task that feeds it connections' events with the
//! time, wakes it at its deadlines and every [`PROGRESS_EVERY`], and carries its actions out on
//! each connection's outbox. Memory a session that left (or a refused job) held is given back
//! to the system. A connection whose outbox is full is not reading its messages: it
//! is told to the core as gone, and its outbox is dropped, which ends the connection.

use std::collections::HashMap;

use thunkmesh_protocol::submit::JobLimits;
use thunkmesh_protocol::wire::{FromRendezvous, MeshStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::core::{Action, Core, Event, PROGRESS_EVERY};
use crate::journal::Entry;

/// What the web view asks the core (answered at once, between events).
#[derive(Debug)]
pub(crate) enum Query {
    /// The nodes and jobs, as `thunkmesh status` shows them.
    Status(oneshot::Sender<MeshStatus>),
    /// The journal's entries after `since`, at most `max`, and the number of its last entry.
    Journal { since: u64, max: usize, reply: oneshot::Sender<(Vec<Entry>, u64)> },
}

/// An event from a connection, with the outbox of a connection that just joined.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) event: Event,
    pub(crate) outbox: Option<mpsc::Sender<FromRendezvous>>,
}

impl From<Event> for Inbound {
    fn from(event: Event) -> Inbound {
        Inbound { event, outbox: None }
    }
}

/// Runs the core until every connection's sender is gone; publishes the node count on `nodes`
/// and answers the web view's `queries`.
pub(crate) async fn run(
    mut inbox: mpsc::Receiver<Inbound>,
    mut queries: mpsc::Receiver<Query>,
    nodes: watch::Sender<usize>,
    limits: JobLimits,
    forbidden: Vec<String>,
) {
    let started = tokio::time::Instant::now();
    // Task ids from a random start, below 2^62 so they never wrap.
    let first_task = rand::random::<u64>() >> 2;
    let mut core = Core::new(limits, &forbidden, first_task);
    let mut outboxes: HashMap<u64, mpsc::Sender<FromRendezvous>> = HashMap::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        // A thunk held for a busy node stops waiting at its deadline even if nothing happens.
        let wake = thunkmesh_net::until(core.next_deadline().map(|at| started + at));
        tokio::select! {
            inbound = inbox.recv() => {
                let Some(Inbound { event, outbox }) = inbound else { return };
                if let (Some(outbox), Some(session)) = (outbox, joined(&event)) {
                    outboxes.insert(session, outbox);
                }
                if let Event::Left { session } = event {
                    outboxes.remove(&session);
                }
                core.handle(started.elapsed(), event);
            }
            Some(query) = queries.recv() => {
                answer(&core, query);
                continue;
            }
            () = wake => core.wake(started.elapsed()),
            _ = tick.tick() => {
                core.tick(started.elapsed());
                if core.take_released() {
                    give_back_memory();
                }
            }
        }
        carry_out(&mut core, &mut outboxes, &nodes, started);
    }
}

/// Answers a query; a web request that went away meanwhile is not an error.
fn answer(core: &Core, query: Query) {
    match query {
        Query::Status(reply) => _ = reply.send(core.status()),
        Query::Journal { since, max, reply } => _ = reply.send(core.journal(since, max)),
    }
}

/// Returns the free memory of the allocator's arenas to the system. glibc keeps what a session
/// held once it is freed: four clients' unfinished jobs stayed resident after they disconnected.
/// At most once per [`PROGRESS_EVERY`].
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers; it only releases memory no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn joined(event: &Event) -> Option<u64> {
    match event {
        Event::NodeJoined { node, .. } => Some(*node),
        Event::ClientJoined { job } => Some(*job),
        _ => None,
    }
}

/// Does what the core asks until it asks nothing more.
fn carry_out(
    core: &mut Core,
    outboxes: &mut HashMap<u64, mpsc::Sender<FromRendezvous>>,
    nodes: &watch::Sender<usize>,
    started: tokio::time::Instant,
) {
    while let Some(action) = core.poll() {
        match action {
            Action::Nodes(n) => {
                nodes.send_replace(n);
            }
            Action::Send { to, msg } => {
                let Some(outbox) = outboxes.get(&to) else { continue };
                if let Err(mpsc::error::TrySendError::Full(_)) = outbox.try_send(msg) {
                    warn!(session = to, "connection is not reading its messages; dropping it");
                    outboxes.remove(&to);
                    core.handle(started.elapsed(), Event::Left { session: to });
                }
            }
        }
    }
}
