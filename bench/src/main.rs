//! `thunkmesh-bench`: runs each workload in p2p mode and in storage mode (gg's way), interleaved,
//! several times, against a real S3-compatible server on loopback whose every request is slowed
//! to a cloud latency profile, and reports what each mode cost: a table on the terminal,
//! `results.json` and `chart.svg`. Every run is a fresh `thunkmesh run` (cold memo cache, cold
//! node caches), so nothing carries over between runs or modes.
//!
//! Files are deleted late on purpose: ext4 slows every file creation down for as long as many
//! inodes freed in the last minutes sit in dirty inode-table blocks (`recently_deleted` in its
//! allocator), so a run that follows the removal of thousands of small files measures the file
//! system, not thunkmesh. Between runs only large files are removed (to bound disk use); the
//! rest goes when the benchmark is over.

mod big_job;
mod delay;
mod footprint;
mod infer;
mod mesh;
mod nat;
mod report;
mod sim;
mod simulate;
mod swarm;
mod swarm_nodes;
mod transfer;
mod versus;
mod video;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use thunkmesh_s3_fixture::S3Server;

use report::{Measurement, Report};
use workloads::Workload;

/// Compare thunkmesh's p2p mode with the storage-backed mode, or simulate placement policies.
#[derive(Debug, Parser)]
#[command(name = "thunkmesh-bench", about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    bench: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Simulate a cloud of workers running a job under each placement policy.
    Simulate(simulate::SimArgs),
    /// Time one fetch between nodes behind real NATs: direct, relayed, through storage (root).
    Nat(nat::NatArgs),
    /// A node's start time to registration and its idle memory (what a Lambda cold start pays).
    Footprint(footprint::FootprintArgs),
    /// An unchanged Makefile build (zlib, a synthetic project) through `infer` and `force`
    /// against `make -j` (zlib needs `scripts/fetch-sources zlib`).
    Infer(infer::InferArgs),
    /// One object fetched between two nodes on loopback, by size: rate, CPU per GiB, memory.
    Transfer(transfer::TransferArgs),
    /// The data-heavy workloads by thunkmesh, a shell pipeline, Dask and Ray, side by side.
    Versus(versus::VersusArgs),
    /// `examples/video` (chunked x264) against one ffmpeg with as many threads as workers.
    Video(video::VideoArgs),
    /// Writes a job file of tens of thousands of compile-like thunks (a mid-size build).
    BigJob(big_job::BigJobArgs),
    /// Thousands of synthetic node sessions over real QUIC against a real rendezvous: sessions
    /// held, assignments per second, ready-to-assigned latency, rendezvous CPU and memory.
    Swarm(swarm::SwarmArgs),
    /// A delay line on a TUN device (started by `transfer --link` inside a router namespace).
    #[command(hide = true)]
    DelayLine(delay::DelayArgs),
    /// Synthetic node sessions (started by `swarm`).
    #[command(hide = true)]
    SwarmNodes(swarm_nodes::SwarmNodesArgs),
}

/// Options of the real benchmark.
#[derive(Debug, clap::Args)]
struct Args {
    /// Workloads to run (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Storage latency profiles: none, s3-standard, s3-express (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    profiles: Vec<String>,
    /// Runs of each workload in each mode.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Local node processes per run.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Thunks each node runs at once.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// The thunkmesh binary [default: `thunkmesh` next to this program, i.e. target/release].
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
    /// Where storage lives: the S3-compatible server in this process, on the same cores as the
    /// nodes, or a folder (`file://`), with no server competing for the CPU.
    #[arg(long, value_enum, default_value_t = Backend::S3)]
    backend: Backend,
    /// How the jobs use the memo cache (`thunkmesh run --memo`): on records one entry per thunk.
    #[arg(long, default_value = "on", value_parser = ["on", "read", "off"])]
    memo: String,
    /// Where results, the chart and scratch files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    /// s3s-fs over HTTP on loopback.
    S3,
    /// A local folder.
    Folder,
}

const MODES: [&str; 2] = ["p2p", "storage"];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Simulate(args)) => simulate::main(&args),
        Some(Sub::Nat(args)) => nat::main(&args),
        Some(Sub::Footprint(args)) => footprint::main(&args),
        Some(Sub::Infer(args)) => infer::main(&args),
        Some(Sub::Transfer(args)) => transfer::main(&args),
        Some(Sub::Versus(args)) => versus::main(&args),
        Some(Sub::Video(args)) => video::main(&args),
        Some(Sub::DelayLine(args)) => delay::main(&args),
        Some(Sub::Swarm(args)) => swarm::main(&args),
        Some(Sub::BigJob(args)) => big_job::main(&args),
        Some(Sub::SwarmNodes(args)) => swarm_nodes::main(&args),
        None => bench(&cli.bench),
    }
}

/// The thunkmesh binary to drive: the one given, or `thunkmesh` next to this program.
fn thunkmesh_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("thunkmesh")),
    }
}

/// Reads a starting rendezvous' log lines until it prints its certificate fingerprint.
fn read_fingerprint(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Result<String> {
    for line in lines {
        if let Some(fp) = line?.strip_prefix("certificate fingerprint: ") {
            return Ok(fp.trim().to_owned());
        }
    }
    bail!("the rendezvous did not print its fingerprint")
}

fn bench(args: &Args) -> Result<()> {
    let binary = thunkmesh_binary(args.thunkmesh.as_ref())?;
    if !binary.exists() {
        bail!("{} does not exist: build it first with `cargo build --release`", binary.display());
    }
    let workloads = if args.workloads.is_empty() { Workload::ALL.to_vec() } else { args.workloads.clone() };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the bench crate lives in the repository")?;
    let scratch = args.out.join("work");
    let old = args.out.join(format!("work.old-{}", std::process::id()));
    let _ = std::fs::rename(&scratch, &old);
    let server = match args.backend {
        Backend::S3 => Some(S3Server::start(&scratch.join("s3"), &["bench"])?),
        Backend::Folder => None,
    };
    let mut report = Report::default();
    let total = args.profiles.len() * workloads.len() * args.reps * MODES.len();
    let mut done = 0;
    for profile in &args.profiles {
        for rep in 0..args.reps {
            for &workload in &workloads {
                let job = workload.write(&scratch.join("jobs").join(workload.name()), repo)?;
                for mode in MODES {
                    let run = Run { binary: &binary, server: server.as_ref(), args, job: &job, scratch: &scratch };
                    let m = run.once(workload, mode, profile, rep)?;
                    done += 1;
                    eprintln!(
                        "[{done}/{total}] {profile:<11} {:<9} {mode:<7} run {}: {:.3} s",
                        workload.name(),
                        rep + 1,
                        m.job_ms as f64 / 1e3
                    );
                    report.add(m);
                }
            }
        }
    }
    report.check_targets_agree()?;
    print!("{}", report.table());
    std::fs::create_dir_all(&args.out)?;
    let mut json = report.json();
    json["settings"] = serde_json::json!({
        "backend": args.backend, "memo": args.memo, "workers": args.workers, "slots": args.slots, "reps": args.reps,
    });
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    std::fs::write(args.out.join("chart.svg"), report.svg())?;
    eprintln!("wrote {} and {}", args.out.join("results.json").display(), args.out.join("chart.svg").display());
    // Old scratch folders (this one's, and any a stopped benchmark left) go now.
    for entry in std::fs::read_dir(&args.out)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("work.old-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let _ = std::fs::remove_dir_all(scratch.join("runs"));
    Ok(())
}

struct Run<'a> {
    binary: &'a Path,
    /// The S3 server, unless storage is a folder.
    server: Option<&'a S3Server>,
    args: &'a Args,
    job: &'a Path,
    scratch: &'a Path,
}

impl Run<'_> {
    /// One cold `thunkmesh run` with its own store prefix and state.
    fn once(&self, workload: Workload, mode: &str, profile: &str, rep: usize) -> Result<Measurement> {
        let label = format!("{profile}-{}-{mode}-{rep}", workload.name());
        let dir = self.scratch.join("runs").join(&label);
        std::fs::create_dir_all(&dir)?;
        let store = match self.server {
            Some(_) => format!("s3://bench/{label}?latency={profile}"),
            None => format!(
                "{}?latency={profile}",
                thunkmesh_store::Store::folder_url(&self.scratch.join("folder").join(&label))?
            ),
        };
        let summary = dir.join("summary.json");
        let before = CpuTimes::now()?;
        let output = Command::new(self.binary)
            .arg("run")
            .arg(self.job)
            .args(["--workers", &self.args.workers.to_string(), "--slots", &self.args.slots.to_string()])
            .args(["--mode", mode, "--store", &store, "--memo", &self.args.memo])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--out")
            .arg(dir.join("out"))
            .arg("--summary-json")
            .arg(&summary)
            .envs(self.server.map(S3Server::env).unwrap_or_default())
            .output()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let cpu = CpuTimes::now()?.since(before);
        if !output.status.success() {
            bail!("{label} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        let text = std::fs::read_to_string(&summary).with_context(|| format!("{label}: no summary"))?;
        remove_large_files(&dir);
        remove_large_files(&self.scratch.join("s3").join("bench").join(&label));
        remove_large_files(&self.scratch.join("folder").join(&label));
        let mut m = Measurement::from_summary(workload, mode, profile, &serde_json::from_str(&text)?)?;
        (m.thunkmesh_cpu_ms, m.server_cpu_ms) = (cpu.children_ms, cpu.own_ms);
        Ok(m)
    }
}

/// CPU time (user and system) of this process, whose threads are the S3 server, and of its
/// children that were waited for: `thunkmesh run`, its nodes and their programs.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    own_ms: u64,
    children_ms: u64,
}

impl CpuTimes {
    fn now() -> Result<CpuTimes> {
        let [utime, stime, cutime, cstime] = cpu_ticks("self")?;
        Ok(CpuTimes { own_ms: (utime + stime) * 10, children_ms: (cutime + cstime) * 10 })
    }

    fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes { own_ms: self.own_ms - before.own_ms, children_ms: self.children_ms - before.children_ms }
    }
}

/// Fields 14-17 of `/proc/PID/stat` (`self` for this process): user and system time of the
/// process, then of its children that were waited for, in USER_HZ (100 per second on Linux).
fn cpu_ticks(pid: &str) -> Result<[u64; 4]> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)?;
    // The fields after the command name (in parentheses, which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')').with_context(|| format!("{path} has no command name"))?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> Result<u64> {
        let text = fields.get(field - 3).with_context(|| format!("{path} has no field {field}"))?;
        Ok(text.parse::<u64>()?)
    };
    Ok([ticks(14)?, ticks(15)?, ticks(16)?, ticks(17)?])
}

/// Seconds `command` took to run to success; fails if it did not.
fn timed(command: &mut Command) -> Result<f64> {
    let started = std::time::Instant::now();
    let out = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The median, least and greatest of `times` (NaN for none).
fn spread(times: &[f64]) -> (f64, f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    (median, sorted[0], sorted[n - 1])
}

/// Removes the files of 1 MiB or more under `dir`: they hold the disk space, while the many small
/// files are what slows ext4 down when removed, so those wait for the end of the benchmark.
fn remove_large_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => remove_large_files(&entry.path()),
            Ok(t) if t.is_file() && entry.metadata().is_ok_and(|m| m.len() >= 1 << 20) => {
                let _ = std::fs::remove_file(entry.path());
            }
            _ => {}
        }
    }
}
