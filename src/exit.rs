//! How a command ends: the one error at the binary's top ([`Failure`]), whose kind is decided
//! where it arises, and the exit status each kind gives. A leaf: every other module of the
//! binary may use it.
//!
//! [`Failure`], [`UsageError`] and [`Interrupted`] are not `std::error::Error`s, so `?` cannot
//! box them into an `anyhow::Error` and lose their kind (a usage error that exits 1): a function
//! that can fail with a usage error returns `Failure`, and so does each of its callers up to
//! `commands::dispatch`, which the compiler checks. Any other error becomes
//! [`Failure::Failed`] by `?`.

use std::process::ExitCode;

use thunkmesh_client::RunError;
use thunkmesh_protocol::job::JobError;

/// A flag combination, a setting or a job that cannot work (exit status 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ctrl-C during a run (exit status 130, as for a shell command killed by SIGINT).
#[derive(Debug, Clone, Copy)]
pub struct Interrupted {
    /// Whether the run was recording results in the memo cache.
    pub memo: bool,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")?;
        if self.memo {
            f.write_str("; thunks whose results reached the memo cache are not run again")?;
        }
        Ok(())
    }
}

/// What the binary's functions return: their error is a [`Failure`].
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Why a command failed, by the exit status it gives.
#[derive(Debug)]
pub enum Failure {
    /// Flags, settings or a job that cannot work (2).
    Usage(UsageError),
    /// Ctrl-C during a run (130).
    Interrupted(Interrupted),
    /// The command or its job failed: a thunk, a connection, a file (1).
    Failed(anyhow::Error),
}

impl Failure {
    /// A job file that does not hold together.
    pub fn bad_job(e: JobError) -> Failure {
        Failure::Usage(UsageError(e.to_string()))
    }

    /// A run that failed: a job over the rendezvous' limits is the job's to fix (2), the rest
    /// is the run's (1).
    pub fn run(e: RunError) -> Failure {
        match e {
            RunError::TooLarge(_) | RunError::OverLimit(_) => Failure::Usage(UsageError(e.to_string())),
            other => Failure::Failed(other.into()),
        }
    }

    /// 130 for Ctrl-C, 2 for flags, settings or a job that cannot work, 1 for the rest.
    pub fn exit_status(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Interrupted(_) => 130,
            Failure::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(e) => write!(f, "{e}"),
            Failure::Interrupted(e) => write!(f, "{e}"),
            Failure::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Failed(e.into())
    }
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Failure {
        Failure::Usage(e)
    }
}

impl From<Interrupted> for Failure {
    fn from(e: Interrupted) -> Failure {
        Failure::Interrupted(e)
    }
}

/// Says why on stderr and gives the exit status.
pub fn failed(e: &Failure) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(result: Result<(), Failure>) -> u8 {
        result.err().map_or(0, |e| e.exit_status())
    }

    fn usage() -> Result<(), UsageError> {
        Err(UsageError("--workers must be at least 1".into()))
    }

    fn io() -> std::io::Result<()> {
        Err(std::io::Error::other("disk on fire"))
    }

    /// Each kind keeps its exit status through `?`, however deep it arose.
    #[test]
    fn each_kind_keeps_its_exit_status_through_the_question_mark() {
        let deep = || -> Result<(), Failure> { Ok(usage()?) };
        let outer = || -> Result<(), Failure> {
            deep()?;
            Ok(())
        };
        assert_eq!(status(outer()), 2);
        assert_eq!(status((|| -> Result<(), Failure> { Ok(io()?) })()), 1);
        let interrupted = || -> Result<(), Failure> { Err(Interrupted { memo: true })? };
        assert_eq!(status(interrupted()), 130);
        let context = || -> Result<(), Failure> { Ok(anyhow::Context::context(io(), "writing out")?) };
        let said = context().expect_err("failed").to_string();
        assert_eq!(said, "writing out: disk on fire");
        let job = JobError::new("job.toml", "", thunkmesh_protocol::job::JobProblem::DuplicateThunk("cc".into()));
        assert_eq!(Failure::bad_job(job).exit_status(), 2);
        assert_eq!(Failure::run(RunError::NodesExited("logs".into())).exit_status(), 1);
    }
}
