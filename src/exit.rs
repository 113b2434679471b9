//! How a command ends: the errors that decide an exit status (a usage error, Ctrl-C) and the one
//! place that maps an error to its status. A leaf: every other module of the binary may use it.

use std::process::ExitCode;

use thunkmesh_client::RunError;
use thunkmesh_protocol::job::JobError;

/// A flag combination that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Ctrl-C during a run (exit status 130, as for a shell command killed by SIGINT).
#[derive(Debug, thiserror::Error)]
#[error("interrupted{}", if *.memo { "; thunks whose results reached the memo cache are not run again" } else { "" })]
pub struct Interrupted {
    /// Whether the run was recording results in the memo cache.
    pub memo: bool,
}

/// Says why on stderr and gives the exit status ([`exit_status`]).
pub fn failed(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(exit_status(e))
}

/// 130 for Ctrl-C, 2 for flags, settings or a job that cannot work, 1 for the rest (a job or a
/// thunk that failed, a lost connection).
pub fn exit_status(e: &anyhow::Error) -> u8 {
    let bad_job = matches!(e.downcast_ref::<RunError>(), Some(RunError::TooLarge(_) | RunError::OverLimit(_)));
    if e.downcast_ref::<Interrupted>().is_some() {
        130
    } else if bad_job || e.downcast_ref::<UsageError>().is_some() || e.downcast_ref::<JobError>().is_some() {
        2
    } else {
        1
    }
}
