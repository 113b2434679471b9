//! Framed messages on QUIC streams: a length prefix checked against the limit of this point of
//! the conversation before the body is read, then an rkyv archive validated before use. The body
//! grows as bytes arrive, so a prefix that announces much and sends little costs what it sent.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use thunkmesh_protocol::wire::{FRAME_HEADER, MAX_FRAME, decode_body, encode_frame, frame_len};

use crate::NetError;

/// The first allocation for a frame body; it doubles as bytes arrive.
const FIRST_READ: usize = 16 << 10;

/// Sends one message as a frame.
pub async fn send_msg<T>(stream: &mut quinn::SendStream, msg: &T) -> Result<(), NetError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    stream.write_all(&encode_frame(msg)).await?;
    Ok(())
}

/// Receives one message of at most [`MAX_FRAME`] bytes from an authenticated peer; `None` when
/// the stream ended cleanly between frames.
/// Reads messages from `recv` on a task of its own until the stream ends or fails (the failure is
/// the last item), so that a frame half-read is never abandoned by a caller that also waits for
/// something else; the task stops when the returned handle is dropped.
pub fn reader<T>(
    mut recv: quinn::RecvStream,
) -> (crate::AbortOnDrop<()>, tokio::sync::mpsc::Receiver<Result<T, NetError>>)
where
    T: rkyv::Archive + Send + 'static,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let task = tokio::spawn(async move {
        loop {
            let msg = match recv_msg(&mut recv).await {
                Ok(Some(m)) => Ok(m),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let stop = msg.is_err();
            if tx.send(msg).await.is_err() || stop {
                return;
            }
        }
    });
    (crate::AbortOnDrop(task), rx)
}

/// Reads one message, or `None` at the end of the stream.
pub async fn recv_msg<T>(stream: &mut quinn::RecvStream) -> Result<Option<T>, NetError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
{
    recv_msg_within(stream, MAX_FRAME).await
}

/// Like [`recv_msg`], refusing a frame over `limit` bytes before reading its body.
pub async fn recv_msg_within<T>(stream: &mut quinn::RecvStream, limit: usize) -> Result<Option<T>, NetError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
{
    let mut header = [0u8; FRAME_HEADER];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Read(e.to_string())),
    }
    let len = frame_len(header, limit)?;
    let body = read_body(stream, len).await?;
    Ok(Some(decode_body(&body)?))
}

/// Reads exactly `len` bytes, allocating only as they arrive.
async fn read_body(stream: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, NetError> {
    let mut body = Vec::with_capacity(len.min(FIRST_READ));
    while body.len() < len {
        let chunk = stream.read_chunk(len - body.len(), true).await.map_err(|e| NetError::Read(e.to_string()))?;
        let Some(chunk) = chunk else {
            return Err(NetError::Closed("the rest of a frame"));
        };
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(body)
}
