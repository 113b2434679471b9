//! Why a task failed, and whose fault that is (issue 29). Each step of forcing a thunk (fetch,
//! lay out, run, inspect, upload) says so where the failure happens, and [`TaskError::code`] is
//! the one place a fault becomes the wire's code, which tells the rendezvous what to do with the
//! thunk: fail the job for the thunk's fault, plan it again for an input's, run it on another
//! node for the node's.

use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{ErrorCode, TaskFailed, TransferStats, WireError};

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The thunk's: it fails the same on any node.
    Thunk(ThunkFault),
    /// An input's: it could not be had from the sources given; the rendezvous plans again.
    Input,
    /// The node's (its disk, its sandbox, its copy of a host program): another node may run it.
    Node,
    /// The job's store refused a write: running the thunk elsewhere cannot help.
    Store,
    /// The rendezvous' assignment does not hold together.
    Assignment,
}

/// How a thunk itself failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThunkFault {
    /// Its program cannot be started, exited non-zero or was killed.
    Exit,
    /// It ran past its timeout.
    Timeout,
    /// A declared output is missing, or not a regular file of the sandbox.
    MissingOutput,
    /// A tail output is not a valid tail.
    BadTail,
    /// It wrote to one of its (shared, read-only) inputs.
    ModifiedInput,
}

/// Why a task failed: whose fault, what happened, the program's last output, and the inputs
/// that could not be had.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TaskError {
    fault: Fault,
    message: String,
    /// The end of the program's output, when it ran.
    detail: String,
    unavailable: Vec<Id>,
}

impl TaskError {
    pub(crate) fn new(fault: Fault, message: impl Into<String>) -> TaskError {
        TaskError { fault, message: message.into(), detail: String::new(), unavailable: Vec::new() }
    }

    /// The node's fault.
    pub(crate) fn node(message: impl std::fmt::Display) -> TaskError {
        TaskError::new(Fault::Node, message.to_string())
    }

    /// The thunk's fault.
    pub(crate) fn thunk(kind: ThunkFault, message: impl Into<String>) -> TaskError {
        TaskError::new(Fault::Thunk(kind), message)
    }

    /// Inputs that could not be had.
    pub(crate) fn input(message: impl Into<String>, unavailable: Vec<Id>) -> TaskError {
        TaskError { unavailable, ..TaskError::new(Fault::Input, message) }
    }

    /// With what the program printed last.
    pub(crate) fn with_detail(self, detail: String) -> TaskError {
        TaskError { detail, ..self }
    }

    pub(crate) fn fault(&self) -> Fault {
        self.fault
    }

    /// Says more first: `context; message`.
    pub(crate) fn after(self, context: &str) -> TaskError {
        TaskError { message: format!("{context}; {}", self.message), ..self }
    }

    /// The wire's code for this fault: the only place faults become codes.
    pub(crate) fn code(&self) -> ErrorCode {
        match self.fault {
            Fault::Thunk(ThunkFault::Exit) => ErrorCode::ExitStatus,
            Fault::Thunk(ThunkFault::Timeout) => ErrorCode::Timeout,
            Fault::Thunk(ThunkFault::MissingOutput) => ErrorCode::MissingOutput,
            Fault::Thunk(ThunkFault::BadTail) => ErrorCode::BadTail,
            Fault::Thunk(ThunkFault::ModifiedInput) => ErrorCode::ModifiedInput,
            Fault::Input => ErrorCode::InputUnavailable,
            Fault::Node => ErrorCode::NodeError,
            Fault::Store => ErrorCode::StoreError,
            Fault::Assignment => ErrorCode::BadMessage,
        }
    }

    /// As the wire carries it.
    pub(crate) fn into_wire(self) -> WireError {
        WireError { code: self.code(), message: self.message, detail: self.detail }
    }

    /// The report of task `task` that failed so.
    pub(crate) fn into_report(mut self, task: u64, stats: TransferStats) -> TaskFailed {
        let unavailable = std::mem::take(&mut self.unavailable);
        TaskFailed { task, error: self.into_wire(), unavailable, stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Fault; 9] = [
        Fault::Thunk(ThunkFault::Exit),
        Fault::Thunk(ThunkFault::Timeout),
        Fault::Thunk(ThunkFault::MissingOutput),
        Fault::Thunk(ThunkFault::BadTail),
        Fault::Thunk(ThunkFault::ModifiedInput),
        Fault::Input,
        Fault::Node,
        Fault::Store,
        Fault::Assignment,
    ];

    /// The rendezvous fails a job only for the codes it counts as the thunk's fault: those must
    /// be exactly the thunk's faults here, or a node's trouble would fail jobs (or a thunk's
    /// bug be retried on every node).
    #[test]
    fn only_the_thunks_faults_are_codes_the_rendezvous_blames_on_the_thunk() {
        for fault in ALL {
            let code = TaskError::new(fault, "x").code();
            assert_eq!(code.is_thunk_fault(), matches!(fault, Fault::Thunk(_)), "{fault:?} -> {code:?}");
        }
        let codes: std::collections::BTreeSet<String> =
            ALL.iter().map(|f| format!("{:?}", TaskError::new(*f, "x").code())).collect();
        assert_eq!(codes.len(), ALL.len(), "one code per fault");
    }

    #[test]
    fn a_report_carries_the_message_the_output_and_the_inputs_missing() {
        let blob = Id::of_blob(b"input");
        let error = TaskError::input("could not fetch 1 input(s)", vec![blob]).after("the disk is full");
        let report =
            error.with_detail("output (last 2048 bytes):\nboom".into()).into_report(9, TransferStats::default());
        assert_eq!((report.task, report.error.code, report.unavailable), (9, ErrorCode::InputUnavailable, vec![blob]));
        assert_eq!(report.error.message, "the disk is full; could not fetch 1 input(s)");
        assert!(report.error.detail.ends_with("boom"));
    }
}
