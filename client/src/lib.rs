//! The user's side of thunkmesh: load a job from disk, run it on a mesh (the embedded local one
//! or a self-hosted rendezvous), keep the memo cache, and write the targets.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod embedded;
pub mod load;
pub mod report;
pub mod ship;
pub mod submit;
pub mod summary;

pub use embedded::LocalMesh;
pub use load::{LoadedJob, hash_file, load_job, load_spec};
pub use submit::{JobRun, Memo, Reporter, RunError, Target, run_job, status};
pub use summary::Summary;
