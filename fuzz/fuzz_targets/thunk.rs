//! The canonical thunk encoding: any bytes either are refused or decode to a thunk whose
//! encoding is exactly those bytes (one encoding per thunk, so one id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use thunkmesh_protocol::Thunk;

fuzz_target!(|data: &[u8]| {
    if let Ok(thunk) = Thunk::decode(data) {
        assert_eq!(thunk.encode(), data, "a decoded thunk re-encodes to the same bytes");
    }
});
