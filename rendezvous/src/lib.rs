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
pub mod journal;
#[cfg(test)]
mod mesh_sim;
mod probe;
mod relay;
pub mod web;

pub use relay::{RELAY_BYTES_PER_SECOND, RELAY_MAX_BYTES};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thunkmesh_net::{AbortOnDrop, Identity, NetError};
pub use thunkmesh_protocol::submit::JobLimits;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How many events connections may queue for the core before they wait.
const EVENT_QUEUE: usize = 4096;
/// How many web requests may wait for the core's answer at once.
const QUERY_QUEUE: usize = 64;

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
    /// The web view, if it serves one.
    pub web: Option<Web>,
}

/// Where the web view listens, and the token that opens it besides the mesh's.
#[derive(Debug)]
pub struct Web {
    listener: TcpListener,
    view_token: Option<String>,
}

impl Web {
    /// Binds `addr` (TCP) for the view; `view_token`, if given, opens it too (the mesh token
    /// always does). Call within a tokio runtime.
    pub fn bind(addr: SocketAddr, view_token: Option<String>) -> Result<Web, RendezvousError> {
        let io = |source| RendezvousError::Bind(NetError::Io { path: format!("{addr} (TCP, the web view)"), source });
        let listener = std::net::TcpListener::bind(addr).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        Ok(Web { listener: TcpListener::from_std(listener).map_err(io)?, view_token })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// A failure to start the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RendezvousError {
    /// The endpoint could not be bound.
    #[error("cannot start the rendezvous: {0}")]
    Bind(#[from] NetError),
    /// The core that decides stopped (a bug): serving on would welcome nodes and clients with
    /// nothing behind them, so the server stops (a supervisor restarts it; nodes redial).
    #[error("the rendezvous stopped: {0}")]
    CoreStopped(String),
}

/// A rendezvous running in this process (the embedded default); stops when dropped.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate.
    pub fingerprint: [u8; 32],
    /// Where its web view listens, if it serves one.
    pub web: Option<SocketAddr>,
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
    let web = config.web.as_ref().and_then(Web::local_addr);
    let serving = serve_counting(endpoint, None, config.web, config.token, rules, std::future::pending(), count);
    let task = tokio::spawn(async move {
        if let Err(e) = serving.await {
            error!(error = %e, "the embedded rendezvous stopped");
        }
    });
    Ok(Running { addr, fingerprint, web, nodes, _task: AbortOnDrop(task) })
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
/// endpoint (a second UDP port) answers nodes classifying their NAT; `web` serves the view.
pub async fn serve(
    endpoint: quinn::Endpoint,
    probe: Option<quinn::Endpoint>,
    web: Option<Web>,
    token: String,
    rules: Rules,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RendezvousError> {
    serve_counting(endpoint, probe, web, token, rules, shutdown, watch::channel(0).0).await
}

async fn serve_counting(
    endpoint: quinn::Endpoint,
    probe: Option<quinn::Endpoint>,
    web: Option<Web>,
    token: String,
    rules: Rules,
    shutdown: impl Future<Output = ()>,
    nodes: watch::Sender<usize>,
) -> Result<(), RendezvousError> {
    let (events, inbox) = mpsc::channel(EVENT_QUEUE);
    let (queries, asked) = mpsc::channel(QUERY_QUEUE);
    let core = driver::run(inbox, asked, nodes, rules.limits, rules.forbidden);
    let web = web.map(|Web { listener, view_token }| {
        let tokens = std::iter::once(token.clone()).chain(view_token).collect();
        web::serve(listener, tokens, queries)
    });
    accept(endpoint, probe, web, token, events, core, shutdown).await
}

/// Admits connections on `endpoint`, each feeding `events`, while `core` (the driver that reads
/// them) runs. The core runs apart from the connections: a connection that ends abnormally is
/// logged and the server goes on, but the server does not outlive its core.
async fn accept(
    endpoint: quinn::Endpoint,
    probe: Option<quinn::Endpoint>,
    web: Option<impl Future<Output = ()> + Send + 'static>,
    token: String,
    events: mpsc::Sender<driver::Inbound>,
    core: impl Future<Output = ()> + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RendezvousError> {
    let token: Arc<str> = token.into();
    let relay = relay::Relay::new(token.clone());
    let strangers = thunkmesh_net::Strangers::default();
    let mut core = AbortOnDrop(tokio::spawn(core));
    let mut stopped = None;
    let mut tasks = JoinSet::new();
    let probe_port = probe.as_ref().and_then(|p| p.local_addr().ok()).map_or(0, |a| a.port());
    if let Some(probe) = probe.clone() {
        tasks.spawn(probe::serve(probe));
    }
    if let Some(web) = web {
        tasks.spawn(web);
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
            ended = &mut core.0 => {
                let why = match ended {
                    Err(e) if e.is_panic() => "its core panicked".to_owned(),
                    Err(e) => format!("its core ended: {e}"),
                    Ok(()) => "its core ended".to_owned(),
                };
                error!(why, "the rendezvous stops");
                stopped = Some(why);
                break;
            }
        }
    }
    endpoint.close(0u32.into(), b"rendezvous shutting down");
    if let Some(probe) = probe {
        probe.close(0u32.into(), b"rendezvous shutting down");
    }
    tasks.shutdown().await;
    stopped.map_or(Ok(()), |why| Err(RendezvousError::CoreStopped(why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 29: the core's driver shared the connections' tasks, so a panic in it was logged as
    /// a connection's and the server went on welcoming nodes and clients with nothing behind it.
    #[tokio::test]
    async fn the_server_stops_when_its_core_panics() {
        let identity = Identity::generate().expect("identity");
        let endpoint = thunkmesh_net::endpoint("127.0.0.1:0".parse().expect("addr"), &identity).expect("endpoint");
        let (events, _inbox) = mpsc::channel(1);
        let core = async { panic!("a bug in the core") };
        let served =
            accept(endpoint, None, None::<std::future::Pending<()>>, "t".into(), events, core, std::future::pending())
                .await;
        let error = served.expect_err("the server stops");
        assert_eq!(error.to_string(), "the rendezvous stopped: its core panicked");
    }
}
