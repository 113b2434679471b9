//! Collecting runs and reporting them: medians and ranges per workload, mode and profile, the
//! storage/p2p ratio, as a terminal table, JSON and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::workloads::{CHAIN, Workload};

/// What one run cost.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub workload: Workload,
    pub mode: String,
    pub profile: String,
    pub job_ms: u64,
    pub program_ms: u64,
    pub wall_ms: u64,
    pub storage_get_requests: u64,
    pub storage_put_requests: u64,
    pub storage_bytes_read: u64,
    pub storage_bytes_written: u64,
    pub peer_bytes: u64,
    /// CPU time of `thunkmesh run`, its nodes and their programs.
    pub thunkmesh_cpu_ms: u64,
    /// CPU time of the benchmark process, that is of the S3 server (on the same cores).
    pub server_cpu_ms: u64,
    pub targets: BTreeMap<String, String>,
}

impl Measurement {
    pub fn from_summary(workload: Workload, mode: &str, profile: &str, s: &Value) -> Result<Measurement> {
        let num = |key: &str| s[key].as_u64().with_context(|| format!("summary has no `{key}`"));
        let targets = serde_json::from_value(s["targets"].clone()).context("summary targets")?;
        Ok(Measurement {
            workload,
            mode: mode.to_owned(),
            profile: profile.to_owned(),
            job_ms: num("job_ms")?,
            program_ms: num("program_ms")?,
            wall_ms: num("wall_ms")?,
            storage_get_requests: num("storage_get_requests")?,
            storage_put_requests: num("storage_put_requests")?,
            storage_bytes_read: num("storage_bytes_read")?,
            storage_bytes_written: num("storage_bytes_written")?,
            peer_bytes: num("peer_bytes")?,
            thunkmesh_cpu_ms: 0,
            server_cpu_ms: 0,
            targets,
        })
    }
}

/// Median, minimum and maximum of a series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut xs: Vec<f64>) -> Spread {
        xs.sort_by(f64::total_cmp);
        let n = xs.len();
        let median = if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 };
        Spread { median, min: xs[0], max: xs[n - 1] }
    }
}

/// One mode of one workload under one profile.
#[derive(Debug, Clone, Serialize)]
struct ModeStats {
    runs: usize,
    job_seconds: Spread,
    /// Job time minus the time programs ran: what thunkmesh added (meaningful for chains).
    overhead_seconds: Spread,
    storage_get_requests: Spread,
    storage_put_requests: Spread,
    storage_mib: Spread,
    peer_mib: Spread,
    thunkmesh_cpu_seconds: Spread,
    server_cpu_seconds: Spread,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    profile: String,
    workload: Workload,
    p2p: ModeStats,
    storage: ModeStats,
    /// Median job time in storage mode over p2p mode: above 1, p2p wins.
    storage_over_p2p: f64,
}

/// All runs of a benchmark.
#[derive(Debug, Default)]
pub struct Report {
    runs: Vec<Measurement>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Report {
    pub fn add(&mut self, m: Measurement) {
        self.runs.push(m);
    }

    /// Both modes must produce the same target bytes, every time.
    pub fn check_targets_agree(&self) -> Result<()> {
        let mut first: BTreeMap<Workload, &Measurement> = BTreeMap::new();
        for m in &self.runs {
            let reference = first.entry(m.workload).or_insert(m);
            if reference.targets != m.targets {
                bail!(
                    "{}: {} mode under {} produced other targets than {} mode under {}",
                    m.workload.name(),
                    m.mode,
                    m.profile,
                    reference.mode,
                    reference.profile
                );
            }
        }
        Ok(())
    }

    fn mode_stats(&self, profile: &str, workload: Workload, mode: &str) -> Option<ModeStats> {
        let runs: Vec<&Measurement> =
            self.runs.iter().filter(|m| m.profile == profile && m.workload == workload && m.mode == mode).collect();
        if runs.is_empty() {
            return None;
        }
        let series = |f: &dyn Fn(&Measurement) -> f64| Spread::of(runs.iter().map(|m| f(m)).collect());
        Some(ModeStats {
            runs: runs.len(),
            job_seconds: series(&|m| m.job_ms as f64 / 1e3),
            overhead_seconds: series(&|m| m.job_ms.saturating_sub(m.program_ms) as f64 / 1e3),
            storage_get_requests: series(&|m| m.storage_get_requests as f64),
            storage_put_requests: series(&|m| m.storage_put_requests as f64),
            storage_mib: series(&|m| (m.storage_bytes_read + m.storage_bytes_written) as f64 / MIB),
            peer_mib: series(&|m| m.peer_bytes as f64 / MIB),
            thunkmesh_cpu_seconds: series(&|m| m.thunkmesh_cpu_ms as f64 / 1e3),
            server_cpu_seconds: series(&|m| m.server_cpu_ms as f64 / 1e3),
        })
    }

    fn rows(&self) -> Vec<Row> {
        let mut keys: Vec<(String, Workload)> = self.runs.iter().map(|m| (m.profile.clone(), m.workload)).collect();
        keys.sort_by_key(|(profile, workload)| (profile_rank(profile), *workload));
        keys.dedup();
        keys.into_iter()
            .filter_map(|(profile, workload)| {
                let p2p = self.mode_stats(&profile, workload, "p2p")?;
                let storage = self.mode_stats(&profile, workload, "storage")?;
                let storage_over_p2p = storage.job_seconds.median / p2p.job_seconds.median.max(1e-9);
                Some(Row { profile, workload, p2p, storage, storage_over_p2p })
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<11} {:<9} {:>22} {:>22} {:>8} {:>15} {:>15} {:>9}",
            "profile",
            "workload",
            "p2p s (min-max)",
            "storage s (min-max)",
            "st/p2p",
            "p2p GET/PUT",
            "st GET/PUT",
            "peer MiB"
        );
        for r in self.rows() {
            let span = |s: &Spread| format!("{:.3} ({:.2}-{:.2})", s.median, s.min, s.max);
            let reqs =
                |m: &ModeStats| format!("{:.0}/{:.0}", m.storage_get_requests.median, m.storage_put_requests.median);
            let _ = writeln!(
                out,
                "{:<11} {:<9} {:>22} {:>22} {:>7.1}x {:>15} {:>15} {:>9.1}",
                r.profile,
                r.workload.name(),
                span(&r.p2p.job_seconds),
                span(&r.storage.job_seconds),
                r.storage_over_p2p,
                reqs(&r.p2p),
                reqs(&r.storage),
                r.p2p.peer_mib.median
            );
        }
        for r in self.rows() {
            match r.workload {
                Workload::Chain1k => {
                    let per_hop = |s: &Spread| s.median * 1e3 / CHAIN as f64;
                    let _ = writeln!(
                        out,
                        "{}: chain-1k per hop: p2p {:.2} ms ({:.2} ms without the program's own run), storage {:.2} ms ({:.2} ms)",
                        r.profile,
                        per_hop(&r.p2p.job_seconds),
                        per_hop(&r.p2p.overhead_seconds),
                        per_hop(&r.storage.job_seconds),
                        per_hop(&r.storage.overhead_seconds)
                    );
                }
                Workload::Noop => {
                    let rate = |m: &ModeStats| Workload::Noop.thunks() as f64 / m.job_seconds.median;
                    let cpu = |m: &ModeStats| {
                        format!(
                            "CPU: {:.2} s thunkmesh and its programs, {:.2} s the benchmark process (its S3 server)",
                            m.thunkmesh_cpu_seconds.median, m.server_cpu_seconds.median
                        )
                    };
                    let _ = writeln!(
                        out,
                        "{}: noop throughput: p2p {:.0} thunks/s ({}), storage {:.0} thunks/s ({})",
                        r.profile,
                        rate(&r.p2p),
                        cpu(&r.p2p),
                        rate(&r.storage),
                        cpu(&r.storage)
                    );
                }
                _ => {}
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        serde_json::json!({ "summary": self.rows(), "runs": self.runs })
    }

    /// One row per workload and profile: two bars scaled to the slower mode, labelled in seconds.
    pub fn svg(&self) -> String {
        let rows = self.rows();
        let (label_w, bar_w, row_h) = (190.0, 520.0, 46.0);
        let height = 60.0 + row_h * rows.len() as f64;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"10\" y=\"20\" font-size=\"14\">thunkmesh: median job time, p2p (blue) vs storage mode (orange); each row scaled to its slower mode</text>\n",
            label_w + bar_w + 140.0
        );
        for (i, r) in rows.iter().enumerate() {
            let y = 40.0 + row_h * i as f64;
            let slow = r.p2p.job_seconds.median.max(r.storage.job_seconds.median).max(1e-9);
            let _ = writeln!(svg, "<text x=\"10\" y=\"{}\">{} / {}</text>", y + 24.0, r.workload.name(), r.profile);
            for (k, (stats, colour)) in [(&r.p2p, "#3572b0"), (&r.storage, "#e8871e")].into_iter().enumerate() {
                let w = bar_w * stats.job_seconds.median / slow;
                let by = y + 4.0 + 18.0 * k as f64;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{label_w}\" y=\"{by}\" width=\"{w:.1}\" height=\"15\" fill=\"{colour}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\">{:.3} s</text>",
                    label_w + w + 6.0,
                    by + 12.0,
                    stats.job_seconds.median
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\">{:.1}x</text>",
                label_w + bar_w + 80.0,
                y + 24.0,
                r.storage_over_p2p
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn profile_rank(p: &str) -> usize {
    ["none", "s3-express", "s3-standard"].iter().position(|x| *x == p).unwrap_or(9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mode: &str, job_ms: u64, target: &str) -> Measurement {
        Measurement {
            workload: Workload::Chain1k,
            mode: mode.into(),
            profile: "none".into(),
            job_ms,
            program_ms: job_ms / 2,
            wall_ms: job_ms + 50,
            storage_get_requests: if mode == "p2p" { 10 } else { 210 },
            storage_put_requests: 5,
            storage_bytes_read: 0,
            storage_bytes_written: 0,
            peer_bytes: 0,
            thunkmesh_cpu_ms: job_ms * 2,
            server_cpu_ms: 10,
            targets: BTreeMap::from([("last.bin".to_owned(), target.to_owned())]),
        }
    }

    #[test]
    fn medians_ranges_and_ratio() {
        let mut r = Report::default();
        for (mode, ms) in
            [("p2p", 100), ("p2p", 300), ("p2p", 200), ("storage", 1000), ("storage", 900), ("storage", 1100)]
        {
            r.add(m(mode, ms, "B1"));
        }
        let rows = r.rows();
        assert_eq!(rows.len(), 1);
        assert!((rows[0].p2p.job_seconds.median - 0.2).abs() < 1e-9);
        assert!((rows[0].p2p.job_seconds.min - 0.1).abs() < 1e-9);
        assert!((rows[0].storage_over_p2p - 5.0).abs() < 1e-9);
        assert!(
            r.table().contains(
                "chain-1k per hop: p2p 2.00 ms (1.00 ms without the program's own run), storage 10.00 ms (5.00 ms)"
            ),
            "{}",
            r.table()
        );
        assert!(r.svg().contains("5.0x"));
        assert!(r.check_targets_agree().is_ok());
    }

    #[test]
    fn differing_targets_are_an_error() {
        let mut r = Report::default();
        r.add(m("p2p", 100, "B1"));
        r.add(m("storage", 100, "B2"));
        let e = r.check_targets_agree().expect_err("mismatch").to_string();
        assert!(e.contains("chain-1k: storage mode under none produced other targets"), "{e}");
    }
}
