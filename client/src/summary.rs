//! The summary of a run: what ran, what was reused, and what moved where.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use thunkmesh_protocol::Id;
use thunkmesh_protocol::wire::{JobOutcome, TransferStats};

/// Printed after a run, and written as JSON with `--summary-json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Distinct thunks in the job, tails included.
    pub thunks_total: u64,
    /// Thunks run in this job.
    pub thunks_executed: u64,
    /// Thunks not run: their results came from the memo cache (or were not needed).
    pub thunks_cached: u64,
    /// Objects nodes fetched from other nodes.
    pub peer_fetches: u64,
    /// Bytes nodes fetched from other nodes.
    pub peer_bytes: u64,
    /// Storage GET and HEAD requests (client and nodes).
    pub storage_get_requests: u64,
    /// Storage PUT requests (client and nodes).
    pub storage_put_requests: u64,
    /// Bytes read from storage.
    pub storage_bytes_read: u64,
    /// Bytes written to storage.
    pub storage_bytes_written: u64,
    /// Nodes that left without draining while the job ran.
    pub nodes_lost: u64,
    /// Objects that went through storage because their producer could not serve them.
    pub storage_fallbacks: u64,
    /// Copies of straggling tasks started on other nodes.
    pub straggler_copies: u64,
    /// Objects fetched from other nodes through the rendezvous' relay (no direct path formed).
    pub relayed_fetches: u64,
    /// Bytes fetched through the relay.
    pub relayed_bytes: u64,
    /// Wall time of the whole run, loading the job and starting local nodes included.
    pub wall_ms: u64,
    /// Wall time from consulting the memo cache to the last target written: the job itself.
    pub job_ms: u64,
    /// Time the thunks' programs themselves ran, added up (more than `job_ms` when they ran in
    /// parallel); `job_ms` minus this, on a chain, is what thunkmesh added.
    pub program_ms: u64,
    /// Time nodes spent fetching from peers directly, added up (milliseconds, to the
    /// microsecond).
    pub peer_fetch_ms: f64,
    /// Time nodes spent fetching through the relay, added up.
    pub relay_fetch_ms: f64,
    /// Time nodes spent reading objects from storage, added up.
    pub storage_read_ms: f64,
    /// Each target file and the id of its bytes.
    pub targets: BTreeMap<String, String>,
    /// Thunks that failed (a job that keeps going).
    pub thunks_failed: u64,
    /// Thunks not run because an input of theirs failed.
    pub thunks_skipped: u64,
    /// Each failure: the thunk and why (first line), then the tail of its output.
    pub failures: Vec<String>,
    /// The job kept going past failures (`--keep-going`): the printed summary always ends with
    /// `N passed, N failed`, as a test run's does.
    #[serde(skip)]
    pub keep_going: bool,
}

impl Summary {
    /// Combines the rendezvous' outcome with the client's own storage traffic.
    pub fn new(
        outcome: &JobOutcome,
        client: TransferStats,
        targets: BTreeMap<String, Id>,
        wall: Duration,
        job: Duration,
    ) -> Summary {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut moved = outcome.stats;
        moved += client;
        Summary {
            thunks_total: outcome.total,
            thunks_executed: outcome.executed,
            thunks_cached: outcome.cached,
            peer_fetches: moved.peer_fetches,
            peer_bytes: moved.peer_bytes,
            storage_get_requests: moved.storage_gets,
            storage_put_requests: moved.storage_puts,
            storage_bytes_read: moved.storage_bytes_read,
            storage_bytes_written: moved.storage_bytes_written,
            nodes_lost: outcome.nodes_lost,
            storage_fallbacks: outcome.storage_fallbacks,
            straggler_copies: outcome.copies,
            relayed_fetches: moved.relay_fetches,
            relayed_bytes: moved.relay_bytes,
            wall_ms: millis(wall),
            job_ms: millis(job),
            program_ms: moved.program_micros / 1000,
            peer_fetch_ms: moved.peer_micros as f64 / 1000.0,
            relay_fetch_ms: moved.relay_micros as f64 / 1000.0,
            storage_read_ms: moved.storage_read_micros as f64 / 1000.0,
            targets: targets.into_iter().map(|(f, id)| (f, id.to_string())).collect(),
            thunks_failed: outcome.failures.len() as u64,
            thunks_skipped: outcome.skipped,
            failures: outcome
                .failures
                .iter()
                .map(|e| [e.message.as_str(), e.detail.as_str()].join("\n").trim_end().to_owned())
                .collect(),
            keep_going: false,
        }
    }

    /// Thunks that ran or were reused and did not fail.
    pub fn passed(&self) -> u64 {
        self.thunks_total.saturating_sub(self.thunks_failed + self.thunks_skipped)
    }
}

/// A summary's figures without its failures ([`Summary::figures`]).
#[derive(Debug)]
pub struct Figures<'a>(&'a Summary);

impl Summary {
    /// The figures alone (what ran, moved, and how long it took), for a command that reports
    /// the failures its own way.
    pub fn figures(&self) -> Figures<'_> {
        Figures(self)
    }
}

impl fmt::Display for Figures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Figures(summary) = self;
        summary.fmt_figures(f)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_figures(f)?;
        if self.keep_going || self.thunks_failed + self.thunks_skipped > 0 {
            for failure in &self.failures {
                write!(f, "\n\nFAILED {failure}")?;
            }
            write!(f, "\n\n{} passed, {} failed", self.passed(), self.thunks_failed)?;
            if self.thunks_skipped > 0 {
                write!(f, ", {} skipped", self.thunks_skipped)?;
            }
        }
        Ok(())
    }
}

impl Summary {
    fn fmt_figures(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "thunks    {} total, {} executed, {} cached",
            self.thunks_total, self.thunks_executed, self.thunks_cached
        )?;
        writeln!(f, "peer      {} fetches, {}", self.peer_fetches, bytes(self.peer_bytes))?;
        writeln!(
            f,
            "storage   {} GET/HEAD ({}), {} PUT ({})",
            self.storage_get_requests,
            bytes(self.storage_bytes_read),
            self.storage_put_requests,
            bytes(self.storage_bytes_written)
        )?;
        if self.storage_fallbacks > 0 {
            writeln!(
                f,
                "fallback  {} object(s) went through storage: their producer could not serve them",
                self.storage_fallbacks
            )?;
        }
        if self.relayed_fetches > 0 {
            writeln!(
                f,
                "relay     {} fetches, {} through the rendezvous (no direct path)",
                self.relayed_fetches,
                bytes(self.relayed_bytes)
            )?;
        }
        if self.straggler_copies > 0 {
            writeln!(f, "copies    {} straggling task(s) copied to another node", self.straggler_copies)?;
        }
        if self.nodes_lost > 0 {
            writeln!(f, "nodes     {} lost during the run (their work was redone)", self.nodes_lost)?;
        }
        write!(
            f,
            "wall      {:.3} s ({:.3} s for the job itself)",
            self.wall_ms as f64 / 1000.0,
            self.job_ms as f64 / 1000.0
        )
    }
}

/// `n` bytes as people read them: `3.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_node_traffic_add_up_and_print() {
        let outcome = JobOutcome {
            targets: vec![],
            stats: TransferStats { peer_fetches: 2, peer_bytes: 3 << 20, storage_gets: 1, ..Default::default() },
            executed: 3,
            cached: 1,
            total: 4,
            nodes_lost: 0,
            storage_fallbacks: 0,
            copies: 0,
            failures: vec![],
            skipped: 0,
            carried: vec![],
        };
        let client =
            TransferStats { storage_gets: 4, storage_puts: 2, storage_bytes_written: 10, ..Default::default() };
        let s =
            Summary::new(&outcome, client, BTreeMap::new(), Duration::from_millis(1500), Duration::from_millis(900));
        assert_eq!((s.storage_get_requests, s.storage_put_requests, s.wall_ms), (5, 2, 1500));
        let text = s.to_string();
        assert!(text.contains("4 total, 3 executed, 1 cached"), "{text}");
        assert!(text.contains("2 fetches, 3.0 MiB"), "{text}");
        assert!(text.contains("5 GET/HEAD (0 B), 2 PUT (10 B)"), "{text}");
        assert!(!text.contains("passed"), "no counts line for a job that stops at a failure: {text}");
        let kept = Summary { keep_going: true, ..s }.to_string();
        assert!(kept.trim_end().ends_with("4 passed, 0 failed"), "{kept}");
    }
}
