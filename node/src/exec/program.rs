//! The run step: the program started in its jail with only the thunk's environment, its output's
//! end kept for the report, killed at its timeout. A program that cannot start is the thunk's
//! fault; a sandbox that cannot be set up, the node's.

use std::path::Path;

use thunkmesh_protocol::thunk::STDOUT_OUTPUT;
use thunkmesh_protocol::wire::Assignment;
use tokio::io::AsyncReadExt;

use super::layout::Started;
use super::{Ctx, TaskError, ThunkFault};
use crate::sandbox::Sandbox;

/// How much of a failed program's output (stdout and stderr) is reported.
const OUTPUT_TAIL: usize = 2048;

/// Runs the program under the thunk's timeout; returns its status and the tail of its output.
pub(super) async fn execute(
    ctx: &Ctx,
    a: &Assignment,
    started: &Started,
    sandbox: &Sandbox,
) -> Result<(std::process::ExitStatus, OutputTail), TaskError> {
    let (reader, writer) = std::io::pipe().map_err(TaskError::node)?;
    let (root, jail_root) = (sandbox.root(), sandbox.jail_root());
    let stdout = match a.thunk.stdout {
        true => std::fs::File::create_new(root.join(STDOUT_OUTPUT)).map_err(TaskError::node)?.into(),
        false => writer.try_clone().map_err(TaskError::node)?.into(),
    };
    let args: Vec<String> = started.prefix.iter().chain(&a.thunk.args).cloned().collect();
    let started = crate::jail::start(
        ctx.jail.as_deref(),
        crate::jail::Program {
            path: &started.program,
            shipped: started.shipped,
            args: &args,
            env: &a.thunk.env,
            work: &root,
            dir: a.thunk.dir.as_deref(),
            root: &jail_root,
            stdout,
            stderr: writer.into(),
            network: a.thunk.network,
            own_root: started.own_root.as_deref(),
        },
    );
    // Until it is reaped, dropping this (a cancelled task) kills the program and what it started.
    let mut child = started.map_err(|e| match e {
        crate::jail::StartError::Program(_) => TaskError::thunk(ThunkFault::Exit, e.to_string()),
        crate::jail::StartError::Sandbox(_) => TaskError::node(e),
    })?;
    let mut output = OutputTail::default();
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).map_err(TaskError::node)?;
    let timeout = a.thunk.timeout();
    match tokio::time::timeout(timeout, output.read_until_exit(&mut child, &mut pipe)).await {
        Ok(status) => Ok((status.map_err(TaskError::node)?, output)),
        Err(_) => {
            child.kill();
            let _ = child.wait().await;
            let message = format!("timed out after {}", humantime::format_duration(timeout));
            Err(TaskError::thunk(ThunkFault::Timeout, message).with_detail(output.detail()))
        }
    }
}

/// The last bytes a program wrote to stdout and stderr, interleaved as a terminal shows them.
#[derive(Default)]
pub(super) struct OutputTail {
    pub(super) bytes: std::collections::VecDeque<u8>,
}

impl OutputTail {
    pub(super) fn push(&mut self, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(OUTPUT_TAIL)..];
        let overflow = (self.bytes.len() + keep.len()).saturating_sub(OUTPUT_TAIL);
        self.bytes.drain(..overflow);
        self.bytes.extend(keep);
    }

    /// Reads the pipe until the program exits, then what is left in it. A process the program
    /// left behind may hold the pipe open, so its end is not waited for.
    pub(super) async fn read_until_exit(
        &mut self,
        child: &mut crate::jail::Running,
        pipe: &mut tokio::net::unix::pipe::Receiver,
    ) -> std::io::Result<std::process::ExitStatus> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut open = true;
        loop {
            tokio::select! {
                status = child.wait() => {
                    while let Ok(n @ 1..) = pipe.try_read(&mut buf) {
                        self.push(&buf[..n]);
                    }
                    return status;
                }
                read = pipe.read(&mut buf), if open => match read {
                    Ok(n @ 1..) => self.push(&buf[..n]),
                    _ => open = false,
                },
            }
        }
    }

    /// For a program whose standard output is a file (its result): puts the end of that file
    /// before what it wrote to standard error, so a failure shows what it printed.
    pub(super) fn put_stdout_first(&mut self, stdout: &Path) {
        let stderr: Vec<u8> = self.bytes.drain(..).collect();
        self.push(&file_tail(stdout, OUTPUT_TAIL).unwrap_or_default());
        self.push(&stderr);
    }

    pub(super) fn starts_with(&self, prefix: &str) -> bool {
        self.bytes.iter().copied().take(prefix.len()).eq(prefix.bytes())
    }

    /// This output (if any), as a failure's detail.
    pub(super) fn detail(&self) -> String {
        let (front, back) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).trim_end().to_owned();
        if text.is_empty() { String::new() } else { format!("output (last {OUTPUT_TAIL} bytes):\n{text}") }
    }
}

/// The last `len` bytes of a file (all of a shorter one).
fn file_tail(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(len as u64)))?;
    let mut tail = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut tail)?;
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a failure reports of a program's output: its last bytes only, in the order written.
    #[test]
    fn the_output_kept_is_its_last_bytes_in_order() {
        let mut tail = OutputTail::default();
        assert_eq!(tail.detail(), "", "nothing printed, nothing said");
        tail.push(b"thunkmesh jail: no such program\n");
        assert!(tail.starts_with(crate::jail::LAUNCHER_FAILED));
        tail.push(&vec![b'x'; OUTPUT_TAIL]);
        tail.push(b"the end");
        let detail = tail.detail();
        assert!(detail.starts_with(&format!("output (last {OUTPUT_TAIL} bytes):\n")), "{detail}");
        assert!(detail.ends_with("xthe end"), "{detail}");
        assert_eq!(tail.bytes.len(), OUTPUT_TAIL);
        assert!(!tail.starts_with(crate::jail::LAUNCHER_FAILED), "the launcher's words scrolled away");
    }
}
