//! Framed messages on QUIC streams: a length prefix checked against the frame limit before the
//! body is read, then an rkyv archive validated before use.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use thunkmesh_protocol::wire::{FRAME_HEADER, decode_body, encode_frame, frame_len};

use crate::NetError;

/// Sends one message as a frame.
pub async fn send_msg<T>(stream: &mut quinn::SendStream, msg: &T) -> Result<(), NetError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    stream.write_all(&encode_frame(msg)).await?;
    Ok(())
}

/// Receives one message; `None` when the stream ended cleanly between frames.
pub async fn recv_msg<T>(stream: &mut quinn::RecvStream) -> Result<Option<T>, NetError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut header = [0u8; FRAME_HEADER];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Read(e.to_string())),
    }
    let len = frame_len(header)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| NetError::Read(e.to_string()))?;
    Ok(Some(decode_body(&body)?))
}
