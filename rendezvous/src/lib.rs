//! The control-plane server: admits nodes and clients by token over QUIC, keeps the node registry,
//! feeds events to the planner and carries its decisions back out. It never carries object bytes.
//!
//! Each connection runs in its own task, owned by the accept loop; all of them talk to one task
//! (`driver`) that runs the pure core (`core`), which owns the planner, so nothing needs a lock. A connection that sends a
//! malformed or unexpected message is closed with a reason; the server and other connections go on.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod conn;
mod core;
#[cfg(test)]
mod core_tests;
mod driver;
mod probe;
mod relay;

pub use relay::{RELAY_BYTES_PER_SECOND, RELAY_MAX_BYTES};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thunkmesh_net::{AbortOnDrop, Identity, NetError};
pub use thunkmesh_protocol::submit::JobLimits;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How many events connections may queue for the core before they wait.
const EVENT_QUEUE: usize = 4096;

/// What the server needs to run.
#[derive(Debug)]
pub struct Config {
    /// The secret nodes and clients present.
    pub token: String,
    /// The server's certificate and key.
    pub identity: Identity,
    /// The largest job it takes.
    pub limits: JobLimits,
    /// Nodes it refuses: prefixes of their certificate fingerprints, in lowercase hex.
    pub forbidden: Vec<String>,
}

/// A failure to start the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RendezvousError {
    /// The endpoint could not be bound.
    #[error("cannot start the rendezvous: {0}")]
    Bind(#[from] NetError),
}

/// A rendezvous running in this process (the embedded default); stops when dropped.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate.
    pub fingerprint: [u8; 32],
    nodes: watch::Receiver<usize>,
    _task: AbortOnDrop<()>,
}

impl Running {
    /// Waits until at least `n` nodes are registered.
    pub async fn wait_for_nodes(&mut self, n: usize) {
        let _ = self.nodes.wait_for(|&count| count >= n).await;
    }
}

/// Binds `bind` and serves in a background task owned by the returned handle.
pub fn spawn(bind: SocketAddr, config: Config) -> Result<Running, RendezvousError> {
    let endpoint = thunkmesh_net::endpoint(bind, &config.identity)?;
    let addr = endpoint.local_addr().map_err(|source| NetError::Io { path: bind.to_string(), source })?;
    let fingerprint = config.identity.fingerprint();
    let (count, nodes) = watch::channel(0);
    let rules = Rules { limits: config.limits, forbidden: config.forbidden };
    let task = tokio::spawn(serve_counting(endpoint, None, config.token, rules, std::future::pending(), count));
    Ok(Running { addr, fingerprint, nodes, _task: AbortOnDrop(task) })
}

/// What the server takes and whom it refuses.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The largest job it takes, and what jobs being sent may hold.
    pub limits: JobLimits,
    /// Nodes it refuses at their hello: prefixes of their certificate fingerprints, in
    /// lowercase hex.
    pub forbidden: Vec<String>,
}

/// Serves on `endpoint` until `shutdown` completes, then closes every connection. A `probe`
/// endpoint (a second UDP port) answers nodes classifying their NAT.
pub async fn serve(
    endpoint: quinn::Endpoint,
    probe: Option<quinn::Endpoint>,
    token: String,
    rules: Rules,
    shutdown: impl Future<Output = ()>,
) {
    serve_counting(endpoint, probe, token, rules, shutdown, watch::channel(0).0).await;
}

async fn serve_counting(
    endpoint: quinn::Endpoint,
    probe: Option<quinn::Endpoint>,
    token: String,
    rules: Rules,
    shutdown: impl Future<Output = ()>,
    nodes: watch::Sender<usize>,
) {
    let (events, inbox) = mpsc::channel(EVENT_QUEUE);
    let token: Arc<str> = token.into();
    let relay = relay::Relay::new(token.clone());
    let strangers = thunkmesh_net::Strangers::default();
    let mut tasks = JoinSet::new();
    tasks.spawn(driver::run(inbox, nodes, rules.limits, rules.forbidden));
    let probe_port = probe.as_ref().and_then(|p| p.local_addr().ok()).map_or(0, |a| a.port());
    if let Some(probe) = probe.clone() {
        tasks.spawn(probe::serve(probe));
    }
    tokio::pin!(shutdown);
    info!(addr = ?endpoint.local_addr().ok(), "rendezvous listening");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some((incoming, place, lapse)) = strangers.admit(incoming) else { continue };
                let context = conn::Context { token: token.clone(), probe_port, relay: relay.clone() };
                tasks.spawn(conn::handle(incoming, (place, lapse), context, events.clone()));
            }
            Some(done) = tasks.join_next() => {
                if let Err(e) = done.map_err(|e| e.to_string()) {
                    warn!(error = %e, "a connection task ended abnormally");
                }
            }
        }
    }
    endpoint.close(0u32.into(), b"rendezvous shutting down");
    if let Some(probe) = probe {
        probe.close(0u32.into(), b"rendezvous shutting down");
    }
    tasks.shutdown().await;
}
