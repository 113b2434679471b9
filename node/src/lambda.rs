//! The node as an AWS Lambda function (custom runtime, `provided.al2023`). Each invocation says
//! where the rendezvous is, how to trust it, the mesh's token and how long to work at most; the
//! function joins the mesh as a node with its cache in the function's `/tmp`, works, and before
//! the invocation's deadline stops taking work and drains (finishes what runs, uploads what
//! others still need), then returns a short report. A worker launched for one job also stops
//! when it has had nothing to run for a while, so an idle function does not bill until its
//! deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::{Deserialize, Serialize};
use thunkmesh_net::{Trust, parse_fingerprint};
use tracing::{info, warn};

use crate::NodeConfig;

/// Time kept before the invocation's deadline to drain and answer.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(10);

/// What an invocation carries.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Invocation {
    /// `host:port` of the rendezvous.
    pub rendezvous: String,
    /// SHA-256 fingerprint of its certificate (hex, colons allowed).
    pub fingerprint: String,
    /// The mesh's token.
    pub token: String,
    /// Thunks run at once.
    #[serde(default = "one_slot")]
    pub slots: u32,
    /// Stop taking work after this many seconds even if the deadline is later.
    #[serde(default)]
    pub max_seconds: Option<u64>,
    /// Drain and answer after this many seconds with nothing to run (absent: work until the
    /// deadline or `max_seconds`).
    #[serde(default)]
    pub idle_seconds: Option<u64>,
}

fn one_slot() -> u32 {
    1
}

/// What an invocation answers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Report {
    /// Thunks run to completion.
    pub thunks: u64,
    /// Bytes fetched from peers, the relay and storage.
    pub fetched_bytes: u64,
    /// Bytes of objects sent to peers, directly or through the relay.
    #[serde(default)]
    pub served_bytes: u64,
    /// Why the node stopped: `drained` (at its deadline or bound), `idle` (nothing to run for
    /// `idle_seconds`), `disk full` (`/tmp` filled up; the cache is emptied for the next
    /// invocation) or `drain timed out` (the drain did not end before the deadline).
    pub stopped: String,
    /// Seconds from the invocation to the report.
    pub seconds: f64,
    /// The first invocation of this execution environment (a cold start).
    pub cold: bool,
}

/// Whether this process has served an invocation: Lambda reuses a warm environment's process.
static INVOKED: AtomicBool = AtomicBool::new(false);

/// Serves invocations from the Lambda runtime API (`AWS_LAMBDA_RUNTIME_API`) until the platform
/// stops the function.
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(invoked)).await
}

async fn invoked(event: LambdaEvent<Invocation>) -> Result<Report, Diagnostic> {
    let started = std::time::Instant::now();
    let cold = !INVOKED.swap(true, Ordering::Relaxed);
    let invocation = event.payload;
    let fingerprint = parse_fingerprint(&invocation.fingerprint)
        .map_err(|e| diagnostic("BadInvocation", format!("fingerprint: {e}")))?;
    let cache_dir = std::env::temp_dir().join("thunkmesh");
    let config = NodeConfig {
        server_name: thunkmesh_net::SERVER_NAME.into(),
        rendezvous: invocation.rendezvous.clone(),
        trust: Trust::Pinned(fingerprint),
        token: invocation.token.clone(),
        slots: invocation.slots.max(1),
        cache_dir: cache_dir.clone(),
        cache_size: None,
        bind: ([0, 0, 0, 0], 0).into(),
        name: format!("lambda-{}", event.context.request_id),
        idle_exit: invocation.idle_seconds.map(Duration::from_secs),
        // An invocation ends with its session: the launcher invokes another.
        retry_for: Duration::ZERO,
        // Lambda allows no namespaces: the launcher keeps the process tree (docs/reliability.md).
        launcher: match std::env::var("THUNKMESH_SANDBOX").as_deref() {
            Ok("off") => None,
            mode => std::env::current_exe()
                .ok()
                .map(|binary| crate::jail::Launcher { binary, namespaces: mode != Ok("process-tree") }),
        },
    };
    let work_for = work_time(event.context.deadline, invocation.max_seconds);
    info!(rendezvous = %config.rendezvous, work_for = ?work_for, cold, "invoked");
    // The drain itself is bounded too: the report must go out before the deadline.
    let run = crate::run(config, tokio::time::sleep(work_for));
    let outcome = tokio::time::timeout(work_for + DRAIN_MARGIN / 2, run).await;
    let seconds = started.elapsed().as_secs_f64();
    let report = |worked: crate::Worked, stopped: &str| Report {
        thunks: worked.thunks,
        fetched_bytes: worked.fetched_bytes,
        served_bytes: worked.served_bytes,
        stopped: stopped.into(),
        seconds,
        cold,
    };
    match outcome {
        Ok(Ok(worked)) if worked.disk_full => {
            // The next invocation of this environment starts with an empty /tmp: what others
            // needed from this cache was uploaded while draining.
            if let Err(e) = std::fs::remove_dir_all(&cache_dir) {
                warn!(error = %e, "cannot empty the cache after the disk filled up");
            }
            Ok(report(worked, "disk full"))
        }
        Ok(Ok(worked)) => Ok(report(worked, if worked.idled { "idle" } else { "drained" })),
        Ok(Err(e)) => Err(diagnostic("NodeFailed", e.to_string())),
        Err(_) => Ok(report(crate::Worked::default(), "drain timed out")),
    }
}

/// How long to take work: until `DRAIN_MARGIN` before the deadline, and at most `max_seconds`.
/// The deadline is in milliseconds since the epoch; a value too small to be one (the local
/// emulator `cargo lambda watch` sends the function's timeout, 600000) is taken as milliseconds
/// from now.
fn work_time(deadline_ms: u64, max_seconds: Option<u64>) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    let left = if deadline_ms < YEAR_2001_MS {
        Duration::from_millis(deadline_ms)
    } else {
        let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
        deadline.duration_since(SystemTime::now()).unwrap_or_default()
    };
    let until_drain = left.saturating_sub(DRAIN_MARGIN);
    max_seconds.map_or(until_drain, |s| until_drain.min(Duration::from_secs(s)))
}

fn diagnostic(error_type: &str, message: String) -> Diagnostic {
    Diagnostic { error_type: error_type.into(), error_message: message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_ends_a_margin_before_the_deadline_or_at_the_bound() {
        let in_a_minute = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock") + Duration::from_secs(60);
        let work = work_time(u64::try_from(in_a_minute.as_millis()).expect("ms"), None);
        assert!(work <= Duration::from_secs(50) && work > Duration::from_secs(48), "{work:?}");
        assert_eq!(work_time(600_000, Some(5)), Duration::from_secs(5));
        assert_eq!(work_time(600_000, None), Duration::from_secs(590), "the emulator's relative deadline");
        assert_eq!(work_time(1_000_000_000_000, None), Duration::ZERO, "a deadline long past");
    }
}
