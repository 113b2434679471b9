//! Wire frames and messages: a frame header against both limits, then the body as every message
//! type a process receives from outside. Whatever decodes must re-encode to a frame that decodes
//! to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thunkmesh_protocol::wire::{
    FromRendezvous, Hello, MAX_FRAME, MAX_UNAUTHENTICATED_FRAME, PeerRequest, PeerResponse, ProbeReply, ToRendezvous,
    decode_body, encode_frame, frame_len,
};

macro_rules! round_trips {
    ($bytes:expr, $($t:ty),+) => {$(
        if let Ok(msg) = decode_body::<$t>($bytes) {
            let frame = encode_frame(&msg);
            let again = decode_body::<$t>(&frame[4..]).expect("a re-encoded message decodes");
            assert_eq!(again, msg);
        }
    )+};
}

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..4) {
        let header: [u8; 4] = header.try_into().expect("four bytes");
        for limit in [MAX_UNAUTHENTICATED_FRAME, MAX_FRAME] {
            if let Ok(len) = frame_len(header, limit) {
                assert!(len <= limit);
            }
        }
    }
    round_trips!(data, Hello, ToRendezvous, FromRendezvous, PeerRequest, PeerResponse, ProbeReply);
});
