//! The worker: registers with the rendezvous over QUIC, forces the thunks it is assigned in
//! fresh sandboxes, keeps their outputs in its cache, serves that cache to peers on the same
//! endpoint, and uploads objects to storage when asked.
//!
//! When `shutdown` completes, when it has been idle for its `idle_exit`, or when the disk under
//! its cache fills up, the node drains: it takes no new work, finishes what runs, uploads
//! the objects that only it holds and that others still need, and returns when the rendezvous
//! says it is done. If the rendezvous goes away instead (or cannot be reached at the start),
//! running tasks are aborted and the node dials it again with exponential backoff for its
//! `retry_for`, keeping its cache, identity and port, and registers anew: a rendezvous that
//! restarts gets its nodes back. With no `retry_for`, [`run`] returns at once.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cache;
pub mod core;
mod exec;
pub mod jail;
pub mod lambda;
mod loader;
mod lru;
pub mod peer;
mod roots;
mod sandbox;
mod spawn;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thunkmesh_net::{AbortOnDrop, Identity, NetError, Trust, client_config, connect, recv_msg, send_msg};
use thunkmesh_protocol::wire::{
    ALPN_RENDEZVOUS, FromRendezvous, HOLDS_PER_MESSAGE, Hello, NatKind, NodeHello, PROTOCOL_VERSION, ProbeReply, Role,
    ToRendezvous, WireError,
};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use cache::{Cache, CacheError};
use exec::Ctx;
use peer::Peers;

/// How a node finds and joins its rendezvous.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `host:port` of the rendezvous.
    pub rendezvous: String,
    /// Name to check in the rendezvous certificate (CA trust only).
    pub server_name: String,
    /// How to trust the rendezvous.
    pub trust: Trust,
    /// The mesh's secret.
    pub token: String,
    /// Thunks run at once.
    pub slots: u32,
    /// Where the object cache and sandboxes live.
    pub cache_dir: PathBuf,
    /// Bytes of objects the cache keeps beyond what running tasks pin (`None`: half the space
    /// free on its file system at start, at least [`MIN_DEFAULT_CACHE`]).
    pub cache_size: Option<u64>,
    /// The local UDP address for the node's one endpoint.
    pub bind: SocketAddr,
    /// Shown in the rendezvous' logs.
    pub name: String,
    /// Drain and stop after this long with nothing to run (Lambda workers; `None`: never).
    pub idle_exit: Option<Duration>,
    /// What isolates programs; `None`: they run as the node's plain children.
    pub launcher: Option<jail::Launcher>,
    /// How long to keep dialling a rendezvous that is gone or not up yet, counted from the first
    /// failure in a row ([`Duration::ZERO`]: stop at once; [`Duration::MAX`]: for ever).
    pub retry_for: Duration,
}

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The transport failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The cache folder is unusable.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The rendezvous refused the node.
    #[error("the rendezvous refused this node: {0}")]
    Refused(WireError),
    /// The rendezvous closed the control stream.
    #[error("the rendezvous closed the connection")]
    Disconnected,
}

/// What a node did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Worked {
    /// Thunks it ran to completion.
    pub thunks: u64,
    /// Bytes it fetched: from peers, through the relay, from storage.
    pub fetched_bytes: u64,
    /// Bytes of objects it sent to peers, directly or through the relay.
    pub served_bytes: u64,
    /// It stopped because it had nothing to run for [`NodeConfig::idle_exit`].
    pub idled: bool,
    /// It stopped because the disk holding its cache filled up (a task failed for want of
    /// space; the rendezvous heard so and runs that task elsewhere).
    pub disk_full: bool,
}

/// Runs a node until it has drained after `shutdown`, or until the rendezvous has been gone for
/// longer than its `retry_for`.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<Worked, NodeError> {
    use futures::future::FusedFuture;
    // The node's identity lives with its cache: memo entries name it, and a node that restarts
    // on the same cache is the same node (`thunkmesh memo forget --node`, `--forbid-node`).
    let identity = Identity::load_or_create(&config.cache_dir.join("identity"))?;
    let endpoint = thunkmesh_net::endpoint(config.bind, &identity)?;
    std::fs::create_dir_all(&config.cache_dir)
        .map_err(|source| CacheError { path: config.cache_dir.clone(), source })?;
    let budget = config.cache_size.unwrap_or_else(|| default_cache_size(&config.cache_dir));
    let cache = Arc::new(Cache::open(&config.cache_dir, budget)?);
    info!(budget, "cache budget in bytes");
    let jail = config.launcher.as_ref().map(|l| Arc::new(jail::Jail::probe(l, cache.work_dir())));
    let isolation = jail.as_ref().map_or(jail::Isolation::Off, |j| j.isolation().clone());
    info!(%isolation, "programs are isolated");
    let tls = client_config(&config.trust, ALPN_RENDEZVOUS)?;
    let token: Arc<str> = config.token.clone().into();
    let server = peer::Server::new(cache.clone(), token);
    let _server = AbortOnDrop(tokio::spawn(peer::serve(endpoint.clone(), server.clone())));
    let node = Node { config: &config, identity: &identity, endpoint: &endpoint, tls, cache, jail, isolation, server };
    let shutdown = futures::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    let started = tokio::time::Instant::now();
    let mut core = core::Core::new(Duration::ZERO, config.idle_exit, config.retry_for, rand::random());
    let result = loop {
        let lost = match node.session(&mut core, started, shutdown.as_mut()).await {
            Ok(()) => break Ok(()),
            Err(e @ (NodeError::Disconnected | NodeError::Net(_))) => e,
            Err(e) => break Err(e),
        };
        let core::Redial::After(wait) = core.lost(started.elapsed()) else { break Err(lost) };
        warn!(error = %lost, retry_in = ?wait, "the rendezvous is unreachable; dialling it again");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown, if !shutdown.is_terminated() => break Ok(()),
        }
    };
    endpoint.close(0u32.into(), b"node stopping");
    result.map(|()| Worked { served_bytes: node.server.served_bytes(), ..*core.worked() })
}

/// What a node keeps from one session with the rendezvous to the next.
struct Node<'a> {
    config: &'a NodeConfig,
    identity: &'a Identity,
    endpoint: &'a quinn::Endpoint,
    tls: quinn::ClientConfig,
    cache: Arc<Cache>,
    jail: Option<Arc<jail::Jail>>,
    isolation: jail::Isolation,
    server: Arc<peer::Server>,
}

impl Node<'_> {
    /// Dials the rendezvous, registers, and works until drained (`Ok`) or the session fails.
    async fn session(
        &self,
        core: &mut core::Core,
        started: tokio::time::Instant,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NodeError> {
        let config = self.config;
        let addr = thunkmesh_net::resolve(&config.rendezvous).await?;
        let conn = connect(self.endpoint, self.tls.clone(), addr, &config.server_name).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
        let bound =
            self.endpoint.local_addr().map_err(|e| NetError::Io { path: config.bind.to_string(), source: e })?;
        let local = SocketAddr::new(local_ip(bound, addr), bound.port());
        let inventory = self.cache.inventory();
        let hello = NodeHello {
            name: config.name.clone(),
            slots: config.slots,
            fingerprint: self.identity.fingerprint(),
            local: local.to_string(),
            isolation: self.isolation.to_string(),
            holds: inventory.len() as u64,
        };
        let role = Role::Node(hello);
        send_msg(&mut send, &Hello { version: PROTOCOL_VERSION, token: config.token.clone(), role }).await?;
        let (session, observed, probe_port) = match recv_msg::<FromRendezvous>(&mut recv).await? {
            Some(FromRendezvous::Welcome { session, observed, probe_port }) => (session, observed, probe_port),
            Some(FromRendezvous::Refused(e)) => return Err(NodeError::Refused(e)),
            _ => return Err(NodeError::Disconnected),
        };
        core.handle(started.elapsed(), core::Event::Registered);
        let nat = classify_nat(self.endpoint, config, local, &observed, SocketAddr::new(addr.ip(), probe_port)).await;
        info!(session, rendezvous = %addr, %local, %observed, %nat, "registered");
        send_msg(&mut send, &ToRendezvous::Nat(nat)).await?;
        for held in inventory.chunks(HOLDS_PER_MESSAGE) {
            send_msg(&mut send, &ToRendezvous::Holds(held.to_vec())).await?;
        }
        // Streams the rendezvous opens are fetches it relays for peers with no direct path here.
        let _relayed = AbortOnDrop(tokio::spawn(peer::serve_streams(conn.clone(), None, self.server.clone())));
        let peers = Peers::new(self.endpoint.clone(), config.token.clone()).timed_by(conn.clone());
        let ctx = Arc::new(Ctx::new(self.cache.clone(), peers, self.jail.clone()));
        let working = Working { ctx, send, shutdown, core, started };
        let result = working.run(recv).instrument(info_span!("node", session)).await;
        conn.close(0u32.into(), b"node stopping");
        result
    }
}

/// Reads a size such as `512MiB`, `10GiB`, `64KiB` or plain bytes (units: B, KiB, MiB, GiB,
/// TiB; also K, M, G, T for the same binary units).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| SizeError::NotASize(text.to_owned()))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => return Err(SizeError::Unit { text: text.to_owned(), unit: other.to_owned() }),
    };
    n.checked_mul(1 << shift).ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

/// A size that [`parse_size`] does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number first.
    #[error("`{0}` is not a size such as 512MiB or 10GiB")]
    NotASize(String),
    /// A unit it does not know.
    #[error("`{text}`: unknown unit `{unit}` (B, KiB, MiB, GiB, TiB)")]
    Unit {
        /// The whole size.
        text: String,
        /// The unit.
        unit: String,
    },
    /// More than 2^64 bytes.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// The least default cache budget, however full the disk.
pub const MIN_DEFAULT_CACHE: u64 = 1 << 30;

/// Half the space free on the file system holding `dir`, at least [`MIN_DEFAULT_CACHE`].
pub fn default_cache_size(dir: &std::path::Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(stat) => (stat.f_bavail.saturating_mul(stat.f_frsize) / 2).max(MIN_DEFAULT_CACHE),
        Err(_) => MIN_DEFAULT_CACHE,
    }
}

/// How long the probe port has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Classifies the node's NAT: none if the rendezvous sees the node's own address; otherwise by
/// whether the probe port (port 0: none) sees the same public address as the main port.
async fn classify_nat(
    endpoint: &quinn::Endpoint,
    config: &NodeConfig,
    local: SocketAddr,
    observed: &str,
    probe: SocketAddr,
) -> NatKind {
    if observed.parse::<SocketAddr>().is_ok_and(|o| o == local) {
        return NatKind::None;
    }
    if probe.port() == 0 {
        return NatKind::Unknown;
    }
    let probed = async {
        let conn =
            connect(endpoint, client_config(&config.trust, ALPN_RENDEZVOUS)?, probe, &config.server_name).await?;
        let mut recv = conn.accept_uni().await.map_err(NetError::from)?;
        let reply = recv_msg::<ProbeReply>(&mut recv).await?;
        conn.close(0u32.into(), b"probed");
        reply.ok_or(NetError::Closed("a probe reply"))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probed).await {
        Ok(Ok(reply)) if reply.observed == observed => NatKind::EndpointIndependent,
        Ok(Ok(_)) => NatKind::EndpointDependent,
        Ok(Err(e)) => {
            warn!(%probe, error = %e, "the rendezvous' probe port failed; NAT kind unknown");
            NatKind::Unknown
        }
        Err(_) => {
            warn!(%probe, "the rendezvous' probe port did not answer; NAT kind unknown");
            NatKind::Unknown
        }
    }
}

/// The address the node is bound to; for a wildcard, the one of its addresses that routes toward
/// the rendezvous (asked of the kernel; no packet is sent). Behind a NAT that is the private one.
fn local_ip(bound: SocketAddr, rendezvous: SocketAddr) -> std::net::IpAddr {
    if !bound.ip().is_unspecified() {
        return bound.ip();
    }
    let wildcard: SocketAddr = if rendezvous.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    std::net::UdpSocket::bind(wildcard)
        .and_then(|probe| probe.connect(rendezvous).and_then(|()| probe.local_addr()))
        .map_or(bound.ip(), |a| a.ip())
}

/// One session's work: its control stream, the node's core, and how it ends.
struct Working<'a, F> {
    ctx: Arc<Ctx>,
    send: quinn::SendStream,
    shutdown: F,
    core: &'a mut core::Core,
    started: tokio::time::Instant,
}

impl<F: Future<Output = ()>> Working<'_, F> {
    /// Runs assignments from `recv` until drained or the session fails: what happens goes to the
    /// node's [`core::Core`], and what it decides is carried out here.
    async fn run(self, recv: quinn::RecvStream) -> Result<(), NodeError> {
        let Working { ctx, mut send, shutdown, core, started } = self;
        let (_reader, mut inbox) = thunkmesh_net::reader::<FromRendezvous>(recv);
        let mut tasks = Tasks::default();
        tokio::pin!(shutdown);
        loop {
            let wake = thunkmesh_net::until(core.next_deadline().map(|at| started + at));
            tokio::select! {
                () = &mut shutdown, if !core.draining() => core.handle(started.elapsed(), core::Event::Shutdown),
                () = wake => core.wake(started.elapsed()),
                msg = inbox.recv() => match msg {
                    None => return Err(NodeError::Disconnected),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(msg)) => core.handle(started.elapsed(), core::Event::Message(msg)),
                },
                Some(_) = tasks.punches.join_next() => {}
                Some(joined) = tasks.set.join_next() => {
                    if let Some(event) = tasks.ended(joined, || ctx.disk_is_full()) {
                        core.handle(started.elapsed(), event);
                    }
                }
            }
            if let Some(ended) = carry_out(core, &ctx, &mut tasks, &mut send).await {
                return ended;
            }
        }
    }
}

/// Does what the core decided until it decides nothing more; `Some` when the node is done.
async fn carry_out(
    core: &mut core::Core,
    ctx: &Arc<Ctx>,
    tasks: &mut Tasks,
    send: &mut quinn::SendStream,
) -> Option<Result<(), NodeError>> {
    while let Some(action) = core.poll() {
        let sent = match action {
            core::Action::Send(msg) => send_msg(send, &msg).await,
            core::Action::Start(msg) => {
                tasks.start(ctx, msg);
                Ok(())
            }
            core::Action::Cancel(task) => {
                tasks.cancel(task);
                Ok(())
            }
            core::Action::Evict => evict(ctx, send).await,
            core::Action::Drained => return Some(Ok(())),
            core::Action::Refused(e) => return Some(Err(NodeError::Refused(e))),
        };
        if let Err(e) = sent {
            return Some(Err(e.into()));
        }
    }
    None
}

/// Removes what the cache's budget no longer holds and tells the rendezvous.
async fn evict(ctx: &Ctx, send: &mut quinn::SendStream) -> Result<(), NetError> {
    let evicted = ctx.cache.evict();
    for ids in evicted.chunks(HOLDS_PER_MESSAGE) {
        send_msg(send, &ToRendezvous::Dropped(ids.to_vec())).await?;
    }
    Ok(())
}

/// What the node is doing: forced thunks (cancellable by task id), uploads, and dials to peers
/// the rendezvous introduced. Which of them to start or stop is the core's to say.
#[derive(Default)]
struct Tasks {
    set: JoinSet<(ToRendezvous, cache::Pinned)>,
    forcing: std::collections::HashMap<u64, tokio::task::AbortHandle>,
    punches: JoinSet<()>,
}

impl Tasks {
    fn start(&mut self, ctx: &Arc<Ctx>, msg: FromRendezvous) {
        let ctx = ctx.clone();
        match msg {
            FromRendezvous::Assign(a) => {
                let (task, span) = (a.task, info_span!("task", task = a.task, thunk = %a.name));
                let handle = self.set.spawn(async move { exec::force(&ctx, &a).await }.instrument(span));
                self.forcing.insert(task, handle);
            }
            FromRendezvous::Upload(u) => {
                self.set.spawn(async move { exec::upload(&ctx, &u).await });
            }
            FromRendezvous::Introduce { addr, fingerprint } => match addr.parse() {
                Ok(addr) => {
                    self.punches.spawn(async move { ctx.peers.punch(addr, fingerprint).await });
                }
                Err(_) => warn!(%addr, "ignoring an introduction to an address that is not ip:port"),
            },
            FromRendezvous::Drop(blobs) => {
                let removed = ctx.cache.discard(&blobs);
                debug!(asked = blobs.len(), removed, "dropped objects no thunk will read again");
            }
            other => warn!(message = ?std::mem::discriminant(&other), "the core started what no task does"),
        }
    }

    /// Kills the program with its process group; the sandbox is emptied for reuse.
    fn cancel(&mut self, task: u64) {
        if let Some(handle) = self.forcing.remove(&task) {
            handle.abort();
        }
    }

    /// What a task's end means to the core: its report, or its panic (`None`: it was cancelled).
    fn ended(
        &mut self,
        joined: Result<(ToRendezvous, cache::Pinned), tokio::task::JoinError>,
        disk_is_full: impl FnOnce() -> bool,
    ) -> Option<core::Event> {
        match joined {
            Ok((report, pinned)) => {
                if let Some(task) = report.ended_task() {
                    self.forcing.remove(&task);
                }
                drop(pinned);
                Some(core::Event::Ended { report, disk_full: disk_is_full() })
            }
            Err(e) if e.is_cancelled() => None,
            Err(e) => {
                warn!(error = %e, "a task panicked");
                let task = self.forcing.iter().find(|(_, handle)| handle.id() == e.id()).map(|(task, _)| *task);
                if let Some(task) = task {
                    self.forcing.remove(&task);
                }
                Some(core::Event::Panicked(task))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forced thunk's task that panics is reported as the node's failure of that task (it was
    /// only logged, and the job waited for ever); another task's panic reports nothing.
    #[tokio::test]
    async fn a_task_that_panics_is_reported_as_the_nodes_failure() {
        let mut core = core::Core::new(Duration::ZERO, None, Duration::ZERO, 0);
        let mut tasks = Tasks::default();
        let handle = tasks.set.spawn(async { panic!("a bug") });
        tasks.forcing.insert(7, handle);
        tasks.set.spawn(async { panic!("an upload's bug") });
        while let Some(joined) = tasks.set.join_next().await {
            let event = tasks.ended(joined, || false).expect("a panic is an event");
            core.handle(Duration::ZERO, event);
        }
        let said: Vec<_> = std::iter::from_fn(|| core.poll()).collect();
        let [core::Action::Send(ToRendezvous::Failed(f))] = said.as_slice() else { panic!("one failure: {said:?}") };
        assert_eq!(f.task, 7);
        assert!(tasks.forcing.is_empty());
    }

    #[test]
    fn sizes_are_read_with_binary_units_and_bad_ones_are_named() {
        assert_eq!(super::parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_size("10G"), Ok(10 << 30));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("3 KiB"), Ok(3 << 10));
        assert!(super::parse_size("1GB").expect_err("decimal unit").to_string().contains("unknown unit `GB`"));
        assert!(super::parse_size("MiB").expect_err("no number").to_string().contains("is not a size"));
        assert!(super::parse_size("99999999999TiB").expect_err("overflow").to_string().contains("too large"));
    }
}
