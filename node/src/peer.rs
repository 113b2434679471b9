//! Node-to-node object transfer over the node's one QUIC endpoint: serving the cache to peers
//! that present the mesh token, and fetching from peers whose certificate fingerprint the
//! rendezvous named. Every fetched byte is verified against the object's id before the object
//! enters the cache; a peer that sends anything malformed loses its connection, nothing more.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use thunkmesh_net::{
    Lapse, Lapsed, NetError, Place, Trust, client_config, connect, recv_msg, recv_msg_within, send_msg,
};
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{ALPN_PEER, ErrorCode, MAX_UNAUTHENTICATED_FRAME, PeerRequest, PeerResponse, WireError};
use thunkmesh_store::{BLOCK, BlobSink};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use crate::cache::Cache;

/// Why a fetch from a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No connection, or it broke.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer does not serve the object.
    #[error("peer refused: {0}")]
    Refused(WireError),
    /// The bytes do not match the id.
    #[error("peer sent bytes that hash to {actual}, not {expected}")]
    Corrupt {
        /// What was asked for.
        expected: Id,
        /// What arrived.
        actual: Id,
    },
    /// The local file could not be written.
    #[error("{0}")]
    Local(String),
}

/// What the node serves peers from, and how much it has served.
#[derive(Debug)]
pub struct Server {
    cache: Arc<Cache>,
    token: Arc<str>,
    served: std::sync::atomic::AtomicU64,
}

impl Server {
    /// Serves `cache` to holders of `token`.
    pub fn new(cache: Arc<Cache>, token: Arc<str>) -> Arc<Server> {
        Arc::new(Server { cache, token, served: Default::default() })
    }

    /// Bytes of objects sent in full to peers (directly or through the relay).
    pub fn served_bytes(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Serves peers on `endpoint` until the endpoint closes. A connection is a stranger (on the
/// small budget of `thunkmesh_net`) until one of its requests presents the token.
pub async fn serve(endpoint: quinn::Endpoint, server: Arc<Server>) {
    let mut conns = JoinSet::new();
    let strangers = thunkmesh_net::Strangers::default();
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let Some((incoming, place, lapse)) = strangers.admit(incoming) else { continue };
        conns.spawn(serve_conn(incoming, (place, lapse), server.clone()).instrument(info_span!("peer", %remote)));
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_conn(incoming: quinn::Incoming, (place, mut lapse): (Place, Lapse), server: Arc<Server>) {
    let conn = tokio::select! {
        conn = incoming => conn,
        lapsed = lapse.wait() => return debug!(%lapsed, "dropping a stranger in its handshake"),
    };
    match conn {
        Ok(conn) => serve_streams(conn, Some((place, lapse)), server).await,
        Err(e) => debug!(error = %e, "peer handshake failed"),
    }
}

/// Serves every stream the other side of `conn` opens as a fetch: a peer's, or the rendezvous'
/// when it relays for a peer that has no direct path to this node. A `stranger`'s place is given
/// up, and the connection given a member's budget, at the first request with the right token;
/// a stranger whose time runs out before that is closed.
pub async fn serve_streams(conn: quinn::Connection, stranger: Option<(Place, Lapse)>, server: Arc<Server>) {
    let mut streams = JoinSet::new();
    let (place, mut lapse) = stranger.unzip();
    let place = Arc::new(std::sync::Mutex::new(place));
    let still_a_stranger =
        |place: &std::sync::Mutex<Option<Place>>| place.lock().unwrap_or_else(PoisonError::into_inner).is_some();
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            lapsed = until_lapsed(&mut lapse) => {
                if still_a_stranger(&place) {
                    return conn.close(1u32.into(), lapsed.to_string().as_bytes());
                }
                lapse = None;
                continue;
            }
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(e) => return debug!(error = %e, "peer connection ended"),
        };
        let (server, conn, place) = (server.clone(), conn.clone(), place.clone());
        streams.spawn(async move {
            let admit = || {
                let place = place.lock().unwrap_or_else(PoisonError::into_inner).take();
                if place.is_some() {
                    thunkmesh_net::admitted(&conn, thunkmesh_net::PEER_STREAMS);
                }
            };
            match serve_stream(send, recv, &server.cache, &server.token, admit).await {
                Ok(sent) => {
                    server.served.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(error = %e, "closing a misbehaving peer connection");
                    conn.close(1u32.into(), e.to_string().as_bytes());
                }
            }
        });
        while streams.try_join_next().is_some() {}
    }
}

/// Waits for a stranger's time to run out; never, for a member.
async fn until_lapsed(lapse: &mut Option<Lapse>) -> Lapsed {
    match lapse {
        Some(lapse) => lapse.wait().await,
        None => std::future::pending().await,
    }
}

/// Answers one fetch; the bytes of the object sent (0 if refused). A request with the right
/// token calls `admit`.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cache: &Cache,
    token: &str,
    admit: impl FnOnce(),
) -> Result<u64, NetError> {
    let request = recv_msg_within(&mut recv, MAX_UNAUTHENTICATED_FRAME);
    let Some(PeerRequest::Fetch { blob, token: given }) = thunkmesh_net::first("fetch request", request).await? else {
        return Err(NetError::Closed("a fetch request (only the rendezvous relays)"));
    };
    if !thunkmesh_net::same_token(&given, token) {
        let refusal = WireError::new(ErrorCode::Unauthorized, "the token is not this mesh's token");
        send_msg(&mut send, &PeerResponse::Refused(refusal)).await?;
        // Let the refusal arrive before the connection closes.
        let _ = send.finish();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
        return Err(NetError::Closed("a valid token"));
    }
    admit();
    cache.touch(blob);
    let file = match cache.has(blob) {
        true => open_blocking(cache.path(blob)).await.ok(),
        false => None,
    };
    let Some(file) = file else {
        let refusal = WireError::new(ErrorCode::NotFound, format!("{blob} is not in this node's cache"));
        send_msg(&mut send, &PeerResponse::Refused(refusal)).await?;
        let _ = send.finish();
        return Ok(0);
    };
    send_msg(&mut send, &PeerResponse::Found { size: blob.size }).await?;
    send_file(&mut send, file).await?;
    let _ = send.finish();
    Ok(blob.size)
}

async fn open_blocking(path: std::path::PathBuf) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || std::fs::File::open(path)).await.map_err(std::io::Error::other)?
}

/// Sends the whole of `file` in blocks of [`BLOCK`], each read on a blocking thread while the
/// one before it is sent, and handed to quinn without a copy.
async fn send_file(send: &mut quinn::SendStream, file: std::fs::File) -> Result<(), NetError> {
    let read = |mut file: std::fs::File| {
        tokio::task::spawn_blocking(move || {
            let mut block = Vec::with_capacity(BLOCK);
            (&mut file).take(BLOCK as u64).read_to_end(&mut block)?;
            Ok::<_, std::io::Error>((file, Bytes::from(block)))
        })
    };
    let failed = |e: std::io::Error| NetError::Read(format!("a cached object: {e}"));
    let mut next = read(file);
    loop {
        let (file, block) = next.await.map_err(|e| failed(std::io::Error::other(e)))?.map_err(failed)?;
        if block.is_empty() {
            return Ok(());
        }
        next = read(file);
        send.write_chunk(block).await?;
    }
}

/// How long a direct path to a peer has to form before a fetch gives up on it (the object then
/// comes through storage).
pub const DIRECT_PATH_TIMEOUT: Duration = Duration::from_secs(3);

/// One peer's connection, dialed at most once at a time.
type Slot = Arc<Mutex<Option<quinn::Connection>>>;

/// Connections to peers, reused across fetches.
#[derive(Debug)]
pub struct Peers {
    endpoint: quinn::Endpoint,
    token: String,
    conns: std::sync::Mutex<HashMap<(SocketAddr, [u8; 32]), Slot>>,
    /// The connection to the rendezvous, whose round trip times the dials to peers.
    rendezvous: Option<quinn::Connection>,
}

impl Peers {
    /// Fetches through `endpoint`, presenting `token`.
    pub fn new(endpoint: quinn::Endpoint, token: String) -> Peers {
        Peers { endpoint, token, conns: Default::default(), rendezvous: None }
    }

    /// Times dials to peers by the round trip of this connection to the rendezvous.
    pub fn timed_by(mut self, rendezvous: quinn::Connection) -> Peers {
        self.rendezvous = Some(rendezvous);
        self
    }

    /// Dials a peer the rendezvous introduced: this node's packets toward it open this node's
    /// NAT to the peer's, whose own dial then gets through. The connection is kept for fetches.
    pub async fn punch(&self, addr: SocketAddr, fingerprint: [u8; 32]) {
        match self.connection(addr, fingerprint).await {
            Ok(_) => debug!(%addr, "direct path to an introduced peer"),
            Err(e) => debug!(%addr, error = %e, "no direct path to an introduced peer"),
        }
    }

    async fn connection(&self, addr: SocketAddr, fingerprint: [u8; 32]) -> Result<quinn::Connection, NetError> {
        let slot = self.lock().entry((addr, fingerprint)).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let mut config = client_config(&Trust::Pinned(fingerprint), ALPN_PEER)?;
        config.transport_config(thunkmesh_net::transport_expecting_rtt(self.expected_rtt()));
        let dial = connect(&self.endpoint, config, addr, thunkmesh_net::SERVER_NAME);
        let conn = tokio::time::timeout(DIRECT_PATH_TIMEOUT, dial).await.map_err(|_| NetError::Connect {
            addr: addr.to_string(),
            reason: format!("no direct path within {}", humantime::format_duration(DIRECT_PATH_TIMEOUT)),
        })??;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Twice the round trip to the rendezvous (a peer is rarely much farther), within bounds.
    fn expected_rtt(&self) -> Duration {
        let rtt = self.rendezvous.as_ref().map_or(Duration::from_millis(100), quinn::Connection::rtt);
        (rtt * 2).clamp(Duration::from_millis(5), Duration::from_millis(333))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, [u8; 32]), Slot>> {
        self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches `blob` from the peer into the cache; returns the bytes moved.
    pub async fn fetch(
        &self,
        addr: SocketAddr,
        fingerprint: [u8; 32],
        blob: Id,
        cache: &Arc<Cache>,
    ) -> Result<u64, FetchError> {
        let conn = self.connection(addr, fingerprint).await?;
        request(&conn, &PeerRequest::Fetch { blob, token: self.token.clone() }, blob, cache).await
    }

    /// Fetches `blob` from the node with session `from` through the rendezvous' relay.
    pub async fn fetch_relayed(&self, from: u64, blob: Id, cache: &Arc<Cache>) -> Result<u64, FetchError> {
        let conn = self.rendezvous.as_ref().ok_or(NetError::Closed("a rendezvous connection to relay through"))?;
        request(conn, &PeerRequest::Relay { blob, from }, blob, cache).await
    }
}

/// Sends `req` on a new stream of `conn` and receives the object it answers with into the cache.
async fn request(conn: &quinn::Connection, req: &PeerRequest, blob: Id, cache: &Arc<Cache>) -> Result<u64, FetchError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
    send_msg(&mut send, req).await?;
    let _ = send.finish();
    match recv_msg::<PeerResponse>(&mut recv).await? {
        Some(PeerResponse::Found { size }) if size == blob.size => {}
        Some(PeerResponse::Found { size }) => {
            let error = WireError::new(ErrorCode::BadMessage, format!("peer offers {size} bytes for {blob}"));
            return Err(FetchError::Refused(error));
        }
        Some(PeerResponse::Refused(e)) => return Err(FetchError::Refused(e)),
        None => return Err(NetError::Closed("a response").into()),
    }
    let tmp = cache.temp_path();
    let actual = receive_into(&mut recv, &tmp, blob.size).await?;
    if actual != blob {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(FetchError::Corrupt { expected: blob, actual });
    }
    cache.adopt(&tmp, blob).await.map_err(|e| FetchError::Local(e.to_string()))?;
    Ok(blob.size)
}

/// Reads at most `limit` bytes into `path`, hashing them (the file is removed on failure).
async fn receive_into(recv: &mut quinn::RecvStream, path: &std::path::Path, limit: u64) -> Result<Id, FetchError> {
    let mut sink = BlobSink::new(path);
    let taken = take_at_most(recv, &mut sink, limit).await;
    if let Err(e) = taken {
        sink.discard().await;
        return Err(e);
    }
    sink.finish().await.map_err(|e| FetchError::Local(format!("{}: {e}", path.display())))
}

async fn take_at_most(recv: &mut quinn::RecvStream, sink: &mut BlobSink, limit: u64) -> Result<(), FetchError> {
    while let Some(chunk) = recv.read_chunk(BLOCK, true).await.map_err(|e| NetError::Read(e.to_string()))? {
        if sink.len() + chunk.bytes.len() as u64 > limit {
            return Err(FetchError::Refused(WireError::new(
                ErrorCode::BadMessage,
                "peer sent more bytes than announced",
            )));
        }
        sink.write(&chunk.bytes).await.map_err(|e| FetchError::Local(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use thunkmesh_net::{AbortOnDrop, Identity, endpoint};

    struct Server {
        addr: SocketAddr,
        fingerprint: [u8; 32],
        blob: Id,
        _dir: tempfile::TempDir,
        _task: AbortOnDrop<()>,
    }

    async fn server_with(bytes: &[u8]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("cache"));
        let tmp = cache.temp_path();
        tokio::fs::write(&tmp, bytes).await.expect("write");
        let blob = cache.adopt_hashed(&tmp).await.expect("adopt");
        let identity = Identity::generate().expect("identity");
        let ep = endpoint("127.0.0.1:0".parse().expect("addr"), &identity).expect("endpoint");
        let addr = ep.local_addr().expect("addr");
        let task = AbortOnDrop(tokio::spawn(serve(ep, super::Server::new(cache, "tok".into()))));
        Server { addr, fingerprint: identity.fingerprint(), blob, _dir: dir, _task: task }
    }

    fn client() -> quinn::Endpoint {
        endpoint("127.0.0.1:0".parse().expect("addr"), &Identity::generate().expect("identity")).expect("endpoint")
    }

    #[tokio::test]
    async fn a_peer_fetch_arrives_verified_in_the_cache() {
        let server = server_with(b"peer bytes").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("cache"));
        let peers = Peers::new(client(), "tok".into());
        let moved = peers.fetch(server.addr, server.fingerprint, server.blob, &cache).await.expect("fetch");
        assert_eq!(moved, 10);
        assert_eq!(tokio::fs::read(cache.path(server.blob)).await.expect("read"), b"peer bytes");
        let absent = Id::of_blob(b"absent");
        let err = peers.fetch(server.addr, server.fingerprint, absent, &cache).await.expect_err("absent");
        assert!(err.to_string().contains("is not in this node's cache"), "{err}");
    }

    #[tokio::test]
    async fn the_wrong_fingerprint_or_token_gets_nothing() {
        let server = server_with(b"secret").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("cache"));
        let peers = Peers::new(client(), "tok".into());
        let err = peers.fetch(server.addr, [9; 32], server.blob, &cache).await.expect_err("impostor");
        assert!(err.to_string().contains("is not the pinned"), "{err}");
        let outsider = Peers::new(client(), "wrong".into());
        let err = outsider.fetch(server.addr, server.fingerprint, server.blob, &cache).await.expect_err("token");
        assert!(err.to_string().contains("token"), "{err}");
        assert!(!cache.has(server.blob));
    }

    #[tokio::test]
    async fn a_malformed_request_closes_only_its_own_connection() {
        let server = server_with(b"still served").await;
        let ep = client();
        let config = client_config(&Trust::Pinned(server.fingerprint), ALPN_PEER).expect("config");
        let conn = connect(&ep, config, server.addr, thunkmesh_net::SERVER_NAME).await.expect("connect");
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        send.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.expect("write");
        let _ = send.finish();
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("closed in time");
        assert!(reason.to_string().contains("malformed message"), "{reason}");

        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(Cache::open(dir.path(), u64::MAX).expect("cache"));
        let peers = Peers::new(ep, "tok".into());
        peers.fetch(server.addr, server.fingerprint, server.blob, &cache).await.expect("others are still served");
        assert!(cache.has(server.blob));
    }
}
