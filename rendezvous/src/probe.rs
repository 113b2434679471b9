//! The probe port: a second UDP port that answers each connection with the address it came from
//! and nothing else. A node compares that with what the main port saw to classify its NAT: the
//! same public port toward both means endpoint-independent mapping. It needs no token, since it
//! tells a caller only its own address.

use std::time::Duration;

use thunkmesh_net::send_msg;
use thunkmesh_protocol::wire::ProbeReply;
use tokio::task::JoinSet;
use tracing::debug;

/// How long a probe connection may stay open.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers probes on `endpoint` until it closes.
pub(crate) async fn serve(endpoint: quinn::Endpoint) {
    let mut probes = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        probes.spawn(tokio::time::timeout(PROBE_TIMEOUT, answer(incoming)));
        while probes.try_join_next().is_some() {}
    }
}

async fn answer(incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => return debug!(error = %e, "probe handshake failed"),
    };
    let reply = ProbeReply { observed: conn.remote_address().to_string() };
    let sent = async {
        let mut send = conn.open_uni().await?;
        send_msg(&mut send, &reply).await?;
        let _ = send.finish();
        // The prober closes the connection once it has read the reply.
        conn.closed().await;
        Ok::<(), thunkmesh_net::NetError>(())
    };
    if let Err(e) = sent.await {
        debug!(error = %e, "probe reply failed");
    }
}
