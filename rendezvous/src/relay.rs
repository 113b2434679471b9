//! The relay: when a producer has no direct path to a consumer, a small object can come through
//! the rendezvous instead of storage. The consumer opens a stream on its own connection and asks
//! for the object from the producer's session; the rendezvous asks the producer on the
//! producer's connection, as a peer would, and passes its answer and bytes on. Objects are
//! bounded in size and all relays share one bandwidth budget, so relaying never crowds out the
//! control traffic. Every byte is still verified against the id by the consumer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thunkmesh_net::{NetError, recv_msg, send_msg};
use thunkmesh_protocol::wire::{ErrorCode, PeerRequest, PeerResponse, WireError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The largest object the rendezvous relays; larger ones go through storage.
pub const RELAY_MAX_BYTES: u64 = 1 << 20;

/// Bytes per second all relays together may pass on.
pub const RELAY_BYTES_PER_SECOND: f64 = 16.0 * 1024.0 * 1024.0;

/// The registered nodes' connections, and the shared budget.
#[derive(Debug)]
pub(crate) struct Relay {
    nodes: Mutex<HashMap<u64, quinn::Connection>>,
    token: Arc<str>,
    /// When the budget is next free.
    next_free: tokio::sync::Mutex<Instant>,
}

impl Relay {
    pub(crate) fn new(token: Arc<str>) -> Arc<Relay> {
        Arc::new(Relay { nodes: Mutex::default(), token, next_free: tokio::sync::Mutex::new(Instant::now()) })
    }

    /// Relays for and from this node until its connection ends.
    pub(crate) async fn serve(self: Arc<Self>, session: u64, conn: quinn::Connection) {
        self.lock().insert(session, conn.clone());
        let mut streams = JoinSet::new();
        while let Ok((send, recv)) = conn.accept_bi().await {
            let relay = self.clone();
            streams.spawn(async move {
                if let Err(e) = relay.relay(send, recv).await {
                    debug!(error = %e, "a relayed fetch failed");
                }
            });
            while streams.try_join_next().is_some() {}
        }
        self.lock().remove(&session);
    }

    async fn relay(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<(), NetError> {
        let Some(PeerRequest::Relay { blob, from }) = recv_msg(&mut recv).await? else {
            return Err(NetError::Closed("a relay request"));
        };
        let producer = self.lock().get(&from).cloned();
        let producer = match producer {
            _ if blob.size > RELAY_MAX_BYTES => {
                return refuse(&mut send, format!("{blob} is larger than the relay's {RELAY_MAX_BYTES} bytes")).await;
            }
            None => return refuse(&mut send, format!("node {from} is not connected")).await,
            Some(producer) => producer,
        };
        let (mut to_producer, mut from_producer) = producer.open_bi().await?;
        send_msg(&mut to_producer, &PeerRequest::Fetch { blob, token: self.token.to_string() }).await?;
        let _ = to_producer.finish();
        let answer = recv_msg::<PeerResponse>(&mut from_producer).await?.ok_or(NetError::Closed("an answer"))?;
        send_msg(&mut send, &answer).await?;
        if let PeerResponse::Found { size } = answer {
            self.pass_on(&mut from_producer, &mut send, size.min(blob.size)).await?;
        }
        let _ = send.finish();
        Ok(())
    }

    /// Copies at most `limit` bytes, within the shared budget.
    async fn pass_on(
        &self,
        from: &mut quinn::RecvStream,
        to: &mut quinn::SendStream,
        limit: u64,
    ) -> Result<(), NetError> {
        let mut left = limit;
        while let Some(chunk) = from.read_chunk(64 * 1024, true).await.map_err(|e| NetError::Read(e.to_string()))? {
            let len = chunk.bytes.len() as u64;
            if len > left {
                warn!("a producer sent more than it announced; cutting the relay");
                return Err(NetError::Closed("no more bytes than announced"));
            }
            left -= len;
            self.wait_for_budget(len).await;
            to.write_all(&chunk.bytes).await?;
        }
        Ok(())
    }

    async fn wait_for_budget(&self, bytes: u64) {
        let start = {
            let mut next_free = self.next_free.lock().await;
            let start = (*next_free).max(Instant::now());
            *next_free = start + Duration::from_secs_f64(bytes as f64 / RELAY_BYTES_PER_SECOND);
            start
        };
        tokio::time::sleep_until(start).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, quinn::Connection>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn refuse(send: &mut quinn::SendStream, message: String) -> Result<(), NetError> {
    send_msg(send, &PeerResponse::Refused(WireError::new(ErrorCode::NotFound, message))).await?;
    let _ = send.finish();
    Ok(())
}
