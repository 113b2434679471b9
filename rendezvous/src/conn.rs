//! One connection to the rendezvous: the hello (version and token), then a control stream in
//! each direction between the peer and the core. Anything malformed closes this connection only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thunkmesh_net::{Lapse, NetError, Place, recv_msg, recv_msg_within, send_msg};
use thunkmesh_protocol::wire::{
    ErrorCode, FromRendezvous, Hello, MAX_UNAUTHENTICATED_FRAME, PROTOCOL_VERSION, Role, ToRendezvous, WireError,
};
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

/// A connection that said its hello: the control stream both ways and the hello.
struct Greeted {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    hello: Hello,
}

/// Runs one connection from handshake to close. Until its hello it is a stranger holding `place`,
/// and it is dropped when `lapse` says its time ran out.
pub(crate) async fn handle(
    incoming: quinn::Incoming,
    (place, mut lapse): (Place, Lapse),
    context: Context,
    events: mpsc::Sender<Inbound>,
) {
    let remote = incoming.remote_address();
    let conn = tokio::select! {
        conn = incoming => conn,
        lapsed = lapse.wait() => return debug!(%remote, %lapsed, "dropping a stranger in its handshake"),
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => return debug!(%remote, error = %e, "handshake failed"),
    };
    let greeted = tokio::select! {
        greeted = greet(&conn) => greeted,
        lapsed = lapse.wait() => Err(lapsed.into()),
    };
    let greeted = match greeted {
        Ok(greeted) => greeted,
        Err(e) => {
            debug!(%remote, error = %e, "no hello");
            return conn.close(2u32.into(), e.to_string().as_bytes());
        }
    };
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("conn", session, %remote);
    let conn = greeted.conn.clone();
    async move {
        if let Err(e) = run(greeted, place, session, &context, events).await {
            warn!(error = %e, "closing the connection");
            conn.close(2u32.into(), e.to_string().as_bytes());
        }
    }
    .instrument(span)
    .await;
}

/// The hello, as a stranger.
async fn greet(conn: &quinn::Connection) -> Result<Greeted, NetError> {
    let (send, mut recv) = conn.accept_bi().await?;
    let hello = recv_msg_within::<Hello>(&mut recv, MAX_UNAUTHENTICATED_FRAME).await?;
    let hello = hello.ok_or(NetError::Closed("a hello"))?;
    Ok(Greeted { conn: conn.clone(), send, recv, hello })
}

async fn run(
    Greeted { conn, mut send, recv, hello }: Greeted,
    place: Place,
    session: u64,
    context: &Context,
    events: mpsc::Sender<Inbound>,
) -> Result<(), NetError> {
    let conn = &conn;
    if let Err(refusal) = admit(&hello, &context.token) {
        warn!(reason = %refusal.message, "refused");
        return refuse(conn, &mut send, refusal).await;
    }
    thunkmesh_net::admitted(conn, thunkmesh_net::RENDEZVOUS_STREAMS);
    drop(place);
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
