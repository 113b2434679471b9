//! The transport every thunkmesh process shares: one QUIC endpoint per process (serving and
//! dialing on the same UDP socket), TLS identities and trust, framed messages on QUIC streams,
//! and a helper that keeps spawned tasks attached to their owner.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod frame;
mod strangers;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use frame::{reader, recv_msg, recv_msg_within, send_msg};
pub use strangers::{Lapse, Lapsed, Place, STRANGER_DEADLINE, Strangers, UNAUTHENTICATED_CONNECTIONS};
pub use tls::{Identity, Trust, fingerprint, parse_fingerprint, write_private};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
#[cfg(doc)]
use thunkmesh_protocol::wire::MAX_UNAUTHENTICATED_FRAME;
use thunkmesh_protocol::wire::{ALPN_PEER, ALPN_RENDEZVOUS, FrameError};

/// The name every self-signed thunkmesh certificate is issued for.
pub const SERVER_NAME: &str = "thunkmesh";

/// How often an idle connection sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);

/// How long a silent connection lives: a peer that vanished is noticed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Certificates, keys or fingerprints.
    #[error("TLS: {0}")]
    Tls(String),
    /// A local file or socket.
    #[error("{path}: {source}")]
    Io {
        /// What was being read or bound.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Could not start a connection.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// An established connection failed (the reason, with quinn's whole chain of causes).
    #[error("connection lost: {0}")]
    Connection(String),
    /// Writing to a stream failed (the reason, with its causes).
    #[error("write failed: {0}")]
    Write(String),
    /// Reading from a stream failed.
    #[error("read failed: {0}")]
    Read(String),
    /// A frame was oversized or malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended where a message was expected.
    #[error("the peer closed the stream before sending {0}")]
    Closed(&'static str),
    /// A stranger lost its place or ran out of time before it said hello.
    #[error(transparent)]
    Lapsed(#[from] Lapsed),
    /// The peer did not send what was expected in time.
    #[error("no {what} within {}", humantime::format_duration(*.after))]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long it was awaited.
        after: Duration,
    },
}

/// An error and its causes on one line, each said once.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

impl From<quinn::ConnectionError> for NetError {
    fn from(e: quinn::ConnectionError) -> NetError {
        NetError::Connection(with_causes(&e))
    }
}

impl From<quinn::WriteError> for NetError {
    fn from(e: quinn::WriteError) -> NetError {
        match e {
            // "connection lost" is what the variant says already.
            quinn::WriteError::ConnectionLost(c) => NetError::Write(with_causes(&c)),
            e => NetError::Write(with_causes(&e)),
        }
    }
}

impl NetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> NetError {
        NetError::Io { path: path.display().to_string(), source }
    }
}

/// Flow-control credit a connection gets before it is authenticated: with the stream limit
/// below and [`MAX_UNAUTHENTICATED_FRAME`] per stream, what a stranger can make a process hold.
pub const UNAUTHENTICATED_WINDOW: u32 = 256 << 10;

/// Streams a connection may open before it is authenticated.
pub const UNAUTHENTICATED_STREAMS: u32 = 4;

/// Flow-control credit and streams of an authenticated connection.
const AUTHENTICATED_WINDOW: u32 = 64 << 20;
const AUTHENTICATED_STREAMS: u32 = 1024;

/// Streams a member may have open at once to a node's peer port: a consumer fetches many
/// objects at once, one stream each.
pub const PEER_STREAMS: u32 = AUTHENTICATED_STREAMS;

/// Streams a member may have open at once to the rendezvous: its control stream and the
/// fetches it asks the relay for. quinn keeps the state of every stream a peer may open from the
/// moment it may (about 130 bytes each way), so 1,024 cost the rendezvous 131 KiB per node.
pub const RENDEZVOUS_STREAMS: u32 = 64;

/// Flow-control credit of one stream of a connection this process dialed (a fetch's object
/// arrives on one): the bandwidth-delay product of 1 Gbit/s at 130 ms, so a single fetch is not
/// held back by its window between two regions (1 Gbit/s at 30 ms needs 3.75 MB), while a fetch
/// that is not read fast enough holds at most this much in memory. quinn's default (1.25 MB)
/// allows 330 Mbit/s at 30 ms.
const STREAM_WINDOW: u32 = 16 << 20;

/// How long a stream of a member has to present its first message.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of every endpoint starts each connection on the small budget of a stranger.
fn accepting_transport() -> Arc<quinn::TransportConfig> {
    let mut t = transport_config();
    t.receive_window(UNAUTHENTICATED_WINDOW.into());
    t.stream_receive_window((1u32 << 20).into());
    t.max_concurrent_bidi_streams(UNAUTHENTICATED_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

fn dialing_transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config())
}

/// Gives an accepted connection whose peer presented the token the budget of a member, with
/// `streams` open at once ([`PEER_STREAMS`] or [`RENDEZVOUS_STREAMS`]).
pub fn admitted(conn: &quinn::Connection, streams: u32) {
    conn.set_receive_window(AUTHENTICATED_WINDOW.into());
    conn.set_max_concurrent_bi_streams(streams.into());
}

/// The transport settings for a dial whose round trip is expected to be about `rtt`: lost
/// handshake packets are resent after a few round trips rather than after a second, which is what
/// lets a dial through a NAT that first dropped its packets succeed quickly.
pub fn transport_expecting_rtt(rtt: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = transport_config();
    t.initial_rtt(rtt);
    Arc::new(t)
}

/// The largest UDP payload path MTU discovery tries: a 9,001-byte jumbo frame less IPv6 and UDP
/// headers.
const MAX_UDP_PAYLOAD: u16 = 8_953;

/// Every connection's settings; an accepted one then starts on a stranger's budget. The send
/// window bounds what this process buffers unacknowledged per connection, the receive windows
/// what a peer can make it buffer (see [`STREAM_WINDOW`]).
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(AUTHENTICATED_WINDOW.into());
    t.send_window(AUTHENTICATED_WINDOW.into());
    // Probe for jumbo frames (AWS VPCs carry 9,001 bytes; loopback 65,536): every datagram costs
    // the receiving thread about the same, whatever its size. Where the path does not carry
    // them the probes are lost and the size stays at what it found.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("a few seconds fit in a QUIC idle timeout")));
    t.max_concurrent_bidi_streams(AUTHENTICATED_STREAMS.into());
    t
}

/// Binds one endpoint that serves `identity` (to the rendezvous' or peers' dialers) and dials.
pub fn endpoint(bind: SocketAddr, identity: &Identity) -> Result<quinn::Endpoint, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN_RENDEZVOUS.to_vec(), ALPN_PEER.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(accepting_transport());
    let io = |source| NetError::Io { path: bind.to_string(), source };
    let socket = std::net::UdpSocket::bind(bind).map_err(io)?;
    widen_buffers(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| io(std::io::Error::other("no async runtime")))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime).map_err(io)
}

/// The socket buffers an endpoint asks for. With Linux's default (208 KiB) a burst of a fast
/// sender overflows the receiving socket while its one thread is busy, and every lost datagram
/// costs a loss-detection delay; the kernel caps the request at `net.core.rmem_max`.
const SOCKET_BUFFER: usize = 8 << 20;

fn widen_buffers(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    // Best effort: a smaller buffer only makes loss likelier, as it was before.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

/// A dialing configuration that trusts servers as `trust` says and speaks `alpn`.
pub fn client_config(trust: &Trust, alpn: &[u8]) -> Result<quinn::ClientConfig, NetError> {
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut tls = match trust {
        Trust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::PinnedVerifier {
                fingerprint: *fp,
                provider: tls::provider(),
            }))
            .with_no_client_auth(),
        Trust::Roots(roots) => builder.with_root_certificates(roots.clone()).with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(dialing_transport());
    Ok(config)
}

/// Dials `addr` (with `server_name` for CA trust) and waits for the handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, NetError> {
    let fail = |reason: String| NetError::Connect { addr: addr.to_string(), reason };
    let connecting = endpoint.connect_with(config, addr, server_name).map_err(|e| fail(e.to_string()))?;
    connecting.await.map_err(|e| fail(e.to_string()))
}

/// Resolves `host:port` to one socket address, preferring the first the resolver returns.
pub async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    let fail = |reason: String| NetError::Connect { addr: addr.to_owned(), reason };
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| fail(e.to_string()))?;
    addrs.next().ok_or_else(|| fail("the name resolves to no address".into()))
}

/// Waits at most [`HELLO_TIMEOUT`] for the first message of a connection or stream.
pub async fn first<T>(what: &'static str, read: impl Future<Output = Result<T, NetError>>) -> Result<T, NetError> {
    tokio::time::timeout(HELLO_TIMEOUT, read).await.map_err(|_| NetError::Timeout { what, after: HELLO_TIMEOUT })?
}

/// Sleeps until `at`, or for ever without one: a pure core's next deadline in a `select!`.
pub async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Compares two tokens in time that does not depend on where they differ (`blake3::Hash`
/// equality is constant-time).
pub fn same_token(given: &str, expected: &str) -> bool {
    blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes())
}

/// A spawned task that is aborted when this handle is dropped: no task outlives its owner.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thunkmesh_protocol::wire::{Hello, PROTOCOL_VERSION, Role};

    async fn pair(trust: impl FnOnce(&Identity) -> Trust) -> Result<(quinn::Connection, quinn::Connection), NetError> {
        let server_id = Identity::generate()?;
        let server = endpoint("127.0.0.1:0".parse().expect("addr"), &server_id)?;
        let client = endpoint("127.0.0.1:0".parse().expect("addr"), &Identity::generate()?)?;
        let addr = server.local_addr().map_err(|e| NetError::io(Path::new("server"), e))?;
        let config = client_config(&trust(&server_id), ALPN_RENDEZVOUS)?;
        let accept = tokio::spawn(async move { server.accept().await.expect("incoming").await });
        let dialed = connect(&client, config, addr, SERVER_NAME).await?;
        let accepted = accept.await.expect("join")?;
        Ok((dialed, accepted))
    }

    #[tokio::test]
    async fn pinned_fingerprint_connects_and_frames_cross() {
        let (dialed, accepted) = pair(|id| Trust::Pinned(id.fingerprint())).await.expect("connected");
        let (mut send, _) = dialed.open_bi().await.expect("open");
        let hello = Hello { version: PROTOCOL_VERSION, token: "t".into(), role: Role::Client };
        send_msg(&mut send, &hello).await.expect("send");
        let (_, mut recv) = accepted.accept_bi().await.expect("accept");
        let got: Option<Hello> = recv_msg(&mut recv).await.expect("frame");
        assert_eq!(got, Some(hello));
    }

    /// Issue 12, finding 11: a silent peer is a timeout, not a closed stream.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_naming_what_was_awaited() {
        let silent = std::future::pending::<Result<(), NetError>>();
        let err = first("fetch request", silent).await.expect_err("nothing came");
        assert_eq!(err.to_string(), "no fetch request within 10s");
    }

    /// Issue 12, finding 11: `connection lost: connection lost:` said the same thing twice.
    #[tokio::test]
    async fn a_lost_connection_says_why_once() {
        let (dialed, accepted) = pair(|id| Trust::Pinned(id.fingerprint())).await.expect("connected");
        accepted.close(2u32.into(), b"frame too large");
        let (mut send, _) = dialed.open_bi().await.expect("open");
        let _ = dialed.closed().await;
        let err = send_msg(&mut send, &Role::Client).await.expect_err("the connection is gone");
        let text = err.to_string();
        assert!(text.starts_with("write failed: closed by peer: frame too large"), "{text}");
        assert_eq!(text.matches("connection lost").count(), 0, "{text}");
    }

    #[tokio::test]
    async fn a_wrong_fingerprint_is_refused_with_both_values() {
        let err = pair(|_| Trust::Pinned([7; 32])).await.expect_err("must refuse");
        let text = err.to_string();
        assert!(text.contains("is not the pinned 0707"), "{text}");
    }
}
