//! Launching Lambda workers: as many invocations as the job has thunks that could run now (at
//! most the pool's size), each a synchronous Invoke held open while the worker works, so its report
//! or its error comes back to the launcher. Invocations start at most one per
//! [`START_INTERVAL`]; a throttled one (429) is retried after an exponential backoff with jitter
//! (or Lambda's `Retry-After`, if longer); a worker that fails or dies is replaced while the job
//! still needs it, until [`MAX_FAILURES_IN_A_ROW`] failures without a report in between end the
//! launch with the function's own error type and message. When the job has ended, nothing more
//! starts and the launcher waits (a bounded time) for the workers to answer.
//!
//! [`Pool`] decides; [`launch`] does the I/O.

use std::time::Duration;

use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_lambda::operation::invoke::InvokeError;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{Invocation, Report};

/// The least time between two invocations' starts: Lambda scales a function by at most 1,000
/// concurrent executions per 10 seconds, so starting faster only earns throttles.
pub const START_INTERVAL: Duration = Duration::from_millis(10);
/// Failed invocations, with no report between them, after which the launch gives up.
pub const MAX_FAILURES_IN_A_ROW: u32 = 3;
/// The first backoff after a throttle or failure; it doubles with each one in a row.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest backoff.
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The function's name (or ARN).
    pub function: String,
    /// Workers alive at most at once.
    pub workers: usize,
    /// What each invocation carries (its `slots` count toward the demand).
    pub invocation: Invocation,
    /// How long to wait for running workers to answer once the job has ended.
    pub linger: Duration,
}

/// How many workers are needed, as the job's progress says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Not yet known (the job is not submitted yet): start nothing.
    Unknown,
    /// This many thunks could run now (running, or ready and waiting for a slot).
    Thunks(u64),
    /// Keep the whole pool alive (a warm pool between jobs).
    Pool,
    /// The job has ended: start nothing, wait for the workers to answer.
    Ended,
}

/// What the launch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Launched {
    /// Invocations started (throttled ones included).
    pub invocations: u64,
    /// Workers that answered with a report.
    pub reports: u64,
    /// Of those, the first invocation of their execution environment.
    pub cold_starts: u64,
    /// Invocations Lambda throttled (429) and the launcher retried.
    pub throttled: u64,
    /// Invocations that ended with an error (re-invoked while the job needed them).
    pub failed: u64,
    /// Thunks the workers ran, by their reports.
    pub thunks: u64,
    /// Bytes the workers sent to each other (directly or through the relay), by their reports.
    pub served_bytes: u64,
    /// Seconds the reporting workers ran, by their reports (what Lambda bills, roughly).
    pub worker_seconds: f64,
    /// Workers that had not answered when the launcher stopped waiting.
    pub still_running: u64,
    /// The last invocation error, as `Type: message`.
    pub last_error: Option<String>,
}

/// Why a launch gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// Invocations kept failing.
    #[error("Lambda function `{function}` failed {failures} times in a row; the last error: {error_type}: {message}")]
    Function {
        /// The function.
        function: String,
        /// Failures in a row.
        failures: u32,
        /// The function's (or Lambda's) error type.
        error_type: String,
        /// Its message.
        message: String,
    },
    /// Lambda refused the invocation in a way retrying cannot fix (no such function, no
    /// permission, a malformed request).
    #[error("Lambda refused to invoke `{function}`: {error_type}: {message}")]
    Refused {
        /// The function.
        function: String,
        /// Lambda's error type.
        error_type: String,
        /// Its message.
        message: String,
    },
    /// The payload could not be encoded.
    #[error("cannot encode the invocation payload: {0}")]
    Payload(#[from] serde_json::Error),
}

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The worker answered with its report.
    Report(Report),
    /// Lambda throttled the invocation; it may say when to retry.
    Throttled(Option<Duration>),
    /// The invocation failed.
    Failed {
        /// The function's error type (`errorType`), Lambda's error code, or the transport's.
        error_type: String,
        /// Its message.
        message: String,
        /// Retrying cannot help (a 4xx other than a throttle).
        fatal: bool,
    },
}

/// The launch policy: how many to start, and when the next may start.
#[derive(Debug)]
pub struct Pool {
    workers: usize,
    slots: u64,
    next_start: Instant,
    failures_in_a_row: u32,
    throttles_in_a_row: u32,
}

impl Pool {
    /// A pool of at most `workers`, each running `slots` thunks at once.
    pub fn new(workers: usize, slots: u32, now: Instant) -> Pool {
        Pool { workers, slots: u64::from(slots.max(1)), next_start: now, failures_in_a_row: 0, throttles_in_a_row: 0 }
    }

    /// Workers the demand calls for.
    pub fn wanted(&self, demand: Demand) -> usize {
        match demand {
            Demand::Unknown | Demand::Ended => 0,
            Demand::Pool => self.workers,
            Demand::Thunks(n) => usize::try_from(n.div_ceil(self.slots)).map_or(self.workers, |w| w.min(self.workers)),
        }
    }

    /// Whether one more may start now, with `live` running.
    pub fn may_start(&self, demand: Demand, live: usize, now: Instant) -> bool {
        live < self.wanted(demand) && now >= self.next_start
    }

    /// When the next may start.
    pub fn next_start(&self) -> Instant {
        self.next_start
    }

    /// One started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.next_start = self.next_start.max(now + START_INTERVAL);
    }

    /// One ended at `now`; `jitter` in [0, 1) spreads the backoff. An error is the reason to
    /// give up.
    pub fn ended(&mut self, ended: &Ended, function: &str, now: Instant, jitter: f64) -> Result<(), LaunchError> {
        match ended {
            Ended::Report(_) => (self.failures_in_a_row, self.throttles_in_a_row) = (0, 0),
            Ended::Throttled(retry_after) => {
                self.throttles_in_a_row += 1;
                let wait = backoff(self.throttles_in_a_row, jitter).max(retry_after.unwrap_or_default());
                self.next_start = self.next_start.max(now + wait);
            }
            Ended::Failed { error_type, message, fatal: true } => {
                return Err(LaunchError::Refused {
                    function: function.into(),
                    error_type: error_type.clone(),
                    message: message.clone(),
                });
            }
            Ended::Failed { error_type, message, fatal: false } => {
                self.failures_in_a_row += 1;
                if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                    return Err(LaunchError::Function {
                        function: function.into(),
                        failures: self.failures_in_a_row,
                        error_type: error_type.clone(),
                        message: message.clone(),
                    });
                }
                self.next_start = self.next_start.max(now + backoff(self.failures_in_a_row, jitter));
            }
        }
        Ok(())
    }
}

/// The wait after the `n`th throttle or failure in a row: doubling from [`BACKOFF_BASE`] up to
/// [`BACKOFF_CAP`], of which a random half ("equal jitter") so that throttled workers do not
/// return together.
fn backoff(n: u32, jitter: f64) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(1 << n.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Launches workers as `demand` asks until it says [`Demand::Ended`] (or its sender is
/// dropped), then waits at most `spec.linger` for the running ones to answer.
pub async fn launch(
    client: &aws_sdk_lambda::Client,
    spec: &LaunchSpec,
    mut demand: watch::Receiver<Demand>,
) -> Result<Launched, LaunchError> {
    let payload = Blob::new(serde_json::to_vec(&spec.invocation)?);
    let mut pool = Pool::new(spec.workers, spec.invocation.slots, Instant::now());
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut live = FuturesUnordered::new();
    let mut launched = Launched::default();
    let mut ended_at: Option<Instant> = None;
    // The job's side may go away without saying `Ended`: that ends the job too.
    let mut open = true;
    loop {
        let now = Instant::now();
        let wants = if open { *demand.borrow_and_update() } else { Demand::Ended };
        if wants == Demand::Ended {
            let since = *ended_at.get_or_insert(now);
            if live.is_empty() || now >= since + spec.linger {
                launched.still_running = live.len() as u64;
                return Ok(launched);
            }
        }
        while pool.may_start(wants, live.len(), now) {
            live.push(invoke(client, &spec.function, payload.clone()));
            pool.started(now);
            launched.invocations += 1;
        }
        let wake = match ended_at {
            Some(since) => since + spec.linger,
            None => pool.next_start().max(now + START_INTERVAL),
        };
        tokio::select! {
            changed = demand.changed(), if open && ended_at.is_none() => open = changed.is_ok(),
            Some(ended) = live.next() => {
                account(&mut launched, &ended);
                pool.ended(&ended, &spec.function, Instant::now(), rng.random())?;
            }
            () = tokio::time::sleep_until(wake), if live.len() < pool.wanted(wants) || ended_at.is_some() => {}
        }
    }
}

fn account(launched: &mut Launched, ended: &Ended) {
    match ended {
        Ended::Report(r) => {
            info!(thunks = r.thunks, seconds = r.seconds, cold = r.cold, stopped = %r.stopped, "a Lambda worker answered");
            launched.reports += 1;
            launched.cold_starts += u64::from(r.cold);
            launched.thunks += r.thunks;
            launched.served_bytes += r.served_bytes;
            launched.worker_seconds += r.seconds;
        }
        Ended::Throttled(after) => {
            info!(retry_after = ?after, "Lambda throttled an invocation; backing off");
            launched.throttled += 1;
        }
        Ended::Failed { error_type, message, .. } => {
            warn!(%error_type, %message, "a Lambda invocation failed");
            launched.failed += 1;
            launched.last_error = Some(format!("{error_type}: {message}"));
        }
    }
}

/// One synchronous invocation, classified.
async fn invoke(client: &aws_sdk_lambda::Client, function: &str, payload: Blob) -> Ended {
    let sent = client
        .invoke()
        .function_name(function)
        .invocation_type(InvocationType::RequestResponse)
        .payload(payload)
        .send()
        .await;
    match sent {
        Ok(out) => {
            let body = out.payload().map_or(&[][..], |b| b.as_ref());
            if out.function_error().is_some() {
                return function_error(body).unwrap_or_else(|| failed("Unhandled", &snippet(body), false));
            }
            match serde_json::from_slice::<Report>(body) {
                Ok(report) => Ended::Report(report),
                Err(e) => {
                    failed("BadReport", &format!("the answer is not a worker's report ({e}): {}", snippet(body)), false)
                }
            }
        }
        Err(e) => {
            if let Some(InvokeError::TooManyRequestsException(t)) = e.as_service_error() {
                let after = t.retry_after_seconds().and_then(|s| s.trim().parse::<u64>().ok());
                return Ended::Throttled(after.map(Duration::from_secs));
            }
            let Some(raw) = e.raw_response() else {
                return failed("InvokeFailed", &DisplayErrorContext(&e).to_string(), false);
            };
            let status = raw.status().as_u16();
            if status == 429 {
                return Ended::Throttled(None);
            }
            // The local emulator answers a handler error with a 500 and the error document
            // where Lambda answers 200 and `X-Amz-Function-Error`.
            if let Some(ended) = raw.body().bytes().and_then(function_error) {
                return ended;
            }
            let error_type = e.code().map_or_else(|| format!("HTTP {status}"), str::to_owned);
            let message = e.message().map_or_else(|| DisplayErrorContext(&e).to_string(), str::to_owned);
            failed(&error_type, &message, (400..500).contains(&status))
        }
    }
}

/// The error document a function's handler returns.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionError {
    error_type: String,
    error_message: String,
}

fn function_error(body: &[u8]) -> Option<Ended> {
    let e: FunctionError = serde_json::from_slice(body).ok()?;
    Some(failed(&e.error_type, &e.error_message, false))
}

fn failed(error_type: &str, message: &str, fatal: bool) -> Ended {
    Ended::Failed { error_type: error_type.into(), message: message.into(), fatal }
}

/// The start of a body, for a message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if text.is_empty() { "(empty)".into() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cold: bool) -> Ended {
        Ended::Report(Report {
            thunks: 1,
            fetched_bytes: 0,
            served_bytes: 0,
            stopped: "idle".into(),
            seconds: 1.0,
            cold,
        })
    }

    fn error() -> Ended {
        failed("NodeFailed", "cannot connect", false)
    }

    #[test]
    fn the_pool_wants_a_worker_per_slots_runnable_thunks_up_to_its_size() {
        let pool = Pool::new(10, 2, Instant::now());
        assert_eq!(pool.wanted(Demand::Unknown), 0);
        assert_eq!(pool.wanted(Demand::Thunks(0)), 0);
        assert_eq!(pool.wanted(Demand::Thunks(3)), 2);
        assert_eq!(pool.wanted(Demand::Thunks(1_000)), 10);
        assert_eq!(pool.wanted(Demand::Pool), 10);
        assert_eq!(pool.wanted(Demand::Ended), 0);
    }

    #[test]
    fn starts_are_spaced_and_throttles_back_off_exponentially() {
        let t0 = Instant::now();
        let mut pool = Pool::new(100, 1, t0);
        assert!(pool.may_start(Demand::Pool, 0, t0));
        pool.started(t0);
        assert!(!pool.may_start(Demand::Pool, 1, t0), "one start per interval");
        assert!(pool.may_start(Demand::Pool, 1, t0 + START_INTERVAL));
        let mut waits = Vec::new();
        for _ in 0..4 {
            pool.ended(&Ended::Throttled(None), "f", t0, 1.0).expect("throttles never give up");
            waits.push(pool.next_start() - t0);
        }
        assert_eq!(waits, [100, 200, 400, 800].map(Duration::from_millis));
        pool.ended(&Ended::Throttled(Some(Duration::from_secs(30))), "f", t0, 0.0).expect("throttle");
        assert_eq!(pool.next_start() - t0, Duration::from_secs(30), "Retry-After wins when longer");
        assert_eq!(backoff(40, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(1, 0.0), BACKOFF_BASE / 2, "equal jitter keeps at least half");
    }

    #[test]
    fn failures_in_a_row_give_up_with_the_functions_error_and_a_report_resets_them() {
        let t0 = Instant::now();
        let mut pool = Pool::new(4, 1, t0);
        for _ in 0..MAX_FAILURES_IN_A_ROW - 1 {
            pool.ended(&error(), "f", t0, 0.5).expect("retried");
        }
        pool.ended(&report(true), "f", t0, 0.5).expect("a report");
        for _ in 0..MAX_FAILURES_IN_A_ROW - 1 {
            pool.ended(&error(), "f", t0, 0.5).expect("retried after the reset");
        }
        let e = pool.ended(&error(), "f", t0, 0.5).expect_err("gives up");
        assert_eq!(
            e.to_string(),
            "Lambda function `f` failed 3 times in a row; the last error: NodeFailed: cannot connect"
        );
        let e = Pool::new(1, 1, t0).ended(&failed("ResourceNotFoundException", "no f", true), "f", t0, 0.5);
        assert!(matches!(e, Err(LaunchError::Refused { .. })), "a 4xx is not retried");
    }

    #[test]
    fn a_handler_error_document_is_the_functions_error() {
        let body = br#"{"errorType":"BadInvocation","errorMessage":"fingerprint: not hex"}"#;
        assert_eq!(function_error(body), Some(failed("BadInvocation", "fingerprint: not hex", false)));
        assert_eq!(function_error(b"<html>"), None);
    }
}
