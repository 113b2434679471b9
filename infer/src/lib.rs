//! Model substitution, the way gg brings everyday builds in: a *model* stands in for a program
//! of the build (the generic one, [`wrap()`], for any program whose inputs and outputs the user
//! names), records the thunk the call would be instead of doing the work, and writes a
//! [`placeholder`] where each output would be. The [`state`] folder keeps the recorded thunks
//! and the bytes of every file they read, so the build tree can change afterwards; [`force`]
//! turns placeholders back into a job whose targets are the real files.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod build;
pub mod force;
pub mod intercept;
pub mod models;
pub mod placeholder;
pub mod state;
pub mod suite;
pub mod toolchain;
pub mod wrap;

pub use force::{
    ForceError, ForceFailed, Forcing, force_quietly, forcing, libraries_of, placeholders_under, put_in_place,
};
pub use placeholder::Placeholder;
pub use state::{State, StateError};
pub use wrap::{Run, Wrap, WrapError, wrap};
