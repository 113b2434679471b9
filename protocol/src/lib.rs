//! The thunkmesh IR and wire: content ids, the thunk record and its canonical encoding, job files
//! and tails, and the messages nodes, clients and the rendezvous exchange.
//!
//! No I/O happens here: no sockets, no files, no clock. Everything is a pure function of its
//! arguments, so each rule can be tested on its own and replayed.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod builder;
pub mod id;
pub mod inputs;
pub mod job;
pub mod submit;
pub mod synthetic;
pub mod thunk;
pub mod wire;

pub use id::{Id, Kind};
pub use inputs::Inputs;
pub use thunk::{Program, Ref, Thunk};
