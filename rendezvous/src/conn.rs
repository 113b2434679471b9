//! One connection to the rendezvous: the hello (version and token), then a control stream in
//! each direction between the peer and the core. Anything malformed closes this connection only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thunkmesh_net::{NetError, recv_msg, recv_msg_within, send_msg};
use thunkmesh_protocol::wire::{
    ErrorCode, FromRendezvous, Hello, MAX_UNAUTHENTICATED_FRAME, PROTOCOL_VERSION, Role, ToRendezvous, WireError,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::core::Event;
use crate::driver::Inbound;
use crate::relay::Relay;

/// How often a connection checks whether its peer's address changed (a NAT gave it a new
/// mapping; QUIC carries the connection over to the new address by itself).
const ADDRESS_CHECK: Duration = Duration::from_millis(250);

/// Messages queued toward one connection before the core considers it stuck.
pub(crate) const OUTBOX: usize = 1024;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// What every connection shares.
pub(crate) struct Context {
    /// The mesh's token.
    pub(crate) token: Arc<str>,
    /// The probe port (0: none).
    pub(crate) probe_port: u16,
    /// The relay between nodes.
    pub(crate) relay: Arc<Relay>,
}

/// Runs one connection from handshake to close; `stranger` is its place among the connections
/// not yet authenticated, given up at the hello.
pub(crate) async fn handle(
    incoming: quinn::Incoming,
    stranger: OwnedSemaphorePermit,
    context: Context,
    events: mpsc::Sender<Inbound>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => return debug!(%remote, error = %e, "handshake failed"),
    };
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("conn", session, %remote);
    async move {
        if let Err(e) = run(&conn, stranger, session, &context, events).await {
            warn!(error = %e, "closing the connection");
            conn.close(2u32.into(), e.to_string().as_bytes());
        }
    }
    .instrument(span)
    .await;
}

async fn run(
    conn: &quinn::Connection,
    stranger: OwnedSemaphorePermit,
    session: u64,
    context: &Context,
    events: mpsc::Sender<Inbound>,
) -> Result<(), NetError> {
    let (mut send, recv, hello) = thunkmesh_net::first("hello", async {
        let (send, mut recv) = conn.accept_bi().await?;
        let hello = recv_msg_within::<Hello>(&mut recv, MAX_UNAUTHENTICATED_FRAME).await?;
        Ok((send, recv, hello.ok_or(NetError::Closed("a hello"))?))
    })
    .await?;
    if let Err(refusal) = admit(&hello, &context.token) {
        warn!(reason = %refusal.message, "refused");
        return refuse(conn, &mut send, refusal).await;
    }
    thunkmesh_net::admitted(conn, thunkmesh_net::RENDEZVOUS_STREAMS);
    drop(stranger);
    let (tx, rx) = mpsc::channel(OUTBOX);
    let joined = match hello.role {
        Role::Node(node) => {
            info!(name = %node.name, slots = node.slots, "node joined");
            Event::NodeJoined { node: session, hello: node, addr: conn.remote_address() }
        }
        Role::Client => Event::ClientJoined { job: session },
        Role::Peer => {
            let refusal = WireError::new(ErrorCode::BadMessage, "peers connect to nodes, not to the rendezvous");
            return refuse(conn, &mut send, refusal).await;
        }
    };
    let is_node = matches!(joined, Event::NodeJoined { .. });
    let observed = conn.remote_address().to_string();
    let welcome = FromRendezvous::Welcome { session, observed, probe_port: context.probe_port };
    send_msg(&mut send, &welcome).await?;
    if events.send(Inbound { event: joined, outbox: Some(tx) }).await.is_err() {
        return Ok(());
    }
    let relaying = async {
        match is_node {
            true => context.relay.clone().serve(session, conn.clone()).await,
            false => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = exchange(conn, session, send, recv, rx, &events) => r,
        () = relaying => Ok(()),
    };
    let _ = events.send(Event::Left { session }.into()).await;
    result
}

fn admit(hello: &Hello, token: &str) -> Result<(), WireError> {
    if hello.version != PROTOCOL_VERSION {
        let message = format!("protocol version {} is not this rendezvous' version {PROTOCOL_VERSION}", hello.version);
        return Err(WireError::new(ErrorCode::VersionMismatch, message));
    }
    if !thunkmesh_net::same_token(&hello.token, token) {
        return Err(WireError::new(ErrorCode::Unauthorized, "the token is not this rendezvous' token"));
    }
    Ok(())
}

/// Tells the peer why, waits briefly for it to read that, and closes.
async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, error: WireError) -> Result<(), NetError> {
    let reason = error.message.clone();
    send_msg(send, &FromRendezvous::Refused(error)).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    conn.close(1u32.into(), reason.as_bytes());
    Ok(())
}

/// Forwards messages both ways until either side ends; a refusal from the core closes the
/// connection once it is sent.
async fn exchange(
    conn: &quinn::Connection,
    session: u64,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut outbox: mpsc::Receiver<FromRendezvous>,
    events: &mpsc::Sender<Inbound>,
) -> Result<(), NetError> {
    let reader = async {
        while let Some(msg) = recv_msg::<ToRendezvous>(&mut recv).await? {
            if events.send(Event::Message { from: session, msg }.into()).await.is_err() {
                break;
            }
        }
        Ok::<(), NetError>(())
    };
    let writer = async {
        while let Some(msg) = outbox.recv().await {
            if let FromRendezvous::Refused(error) = msg {
                return refuse(conn, &mut send, error).await;
            }
            send_msg(&mut send, &msg).await?;
        }
        Ok(())
    };
    let watcher = async {
        let mut addr = conn.remote_address();
        let mut every = tokio::time::interval(ADDRESS_CHECK);
        loop {
            every.tick().await;
            let now = conn.remote_address();
            if now != addr {
                info!(from = %addr, to = %now, "the peer's address changed");
                addr = now;
                if events.send(Event::Moved { session, addr }.into()).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        r = watcher => r,
        e = conn.closed() => match e {
            quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => Ok(()),
            e => Err(e.into()),
        },
    };
    let closed_by_peer = matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(_)));
    if closed_by_peer { Ok(()) } else { result }
}
