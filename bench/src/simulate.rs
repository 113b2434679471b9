//! `thunkmesh-bench simulate`: runs each workload under each placement policy in the simulator
//! and reports makespan, bytes moved peer to peer and through storage, storage requests and
//! worker time, as a table and as `simulation.json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use thunkmesh_planner::Link;

use crate::sim::workloads::{Shape, SimJob, from_job_file};
use crate::sim::{Cloud, Outcome, Variant};

/// Options of `simulate`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Workloads (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Shape>,
    /// Policies (comma-separated): locality, most-bytes, least-loaded, storage, and fifo
    /// (locality with a first-in, first-out ready queue) [default: all but fifo].
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Workers launched for the job.
    #[arg(long, default_value_t = 2000)]
    workers: u64,
    /// Thunks each worker runs at once.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Thunks in the compile workload.
    #[arg(long, default_value_t = 100_000)]
    compile_thunks: usize,
    /// Also simulate this job file (its thunks' run times and output sizes are drawn around
    /// --job-seconds and --job-output-bytes).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Mean run time of a job file's thunks, in seconds.
    #[arg(long, default_value_t = 1.0)]
    job_seconds: f64,
    /// Mean size of a job file's outputs, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    job_output_bytes: u64,
    /// Chunks of the video workload's 10-minute 1080p source.
    #[arg(long, default_value_t = 1000)]
    video_chunks: usize,
    /// Milliseconds x264 takes per 1080p frame on one thread (`thunkmesh-bench video` measures
    /// it: 40.4 on the 2-core machine of docs/benchmarks.md).
    #[arg(long, default_value_t = 40.4)]
    video_frame_ms: f64,
    /// Mappers in the shuffle workload (reducers: a tenth of that).
    #[arg(long, default_value_t = 2000)]
    mappers: usize,
    /// Storage behaviour: s3-standard or s3-express.
    #[arg(long, default_value = "s3-standard")]
    profile: String,
    /// Longest a thunk waits for a busy node it prefers, in milliseconds.
    #[arg(long, default_value_t = 500)]
    delay_ms: u64,
    /// Seeds cold starts, durations, slow workers and tie-breaks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The share of workers that run programs 5x slower.
    #[arg(long, default_value_t = 0.01)]
    slow_workers: f64,
    /// Copy a task that runs this many times its kind's average duration (0: never).
    #[arg(long, default_value_t = 3.0)]
    speculate_after: f64,
    /// Workers start as fast as AWS Lambda lets a function grow (1,000 more every 10 s) rather
    /// than all at once.
    #[arg(long)]
    lambda_scaling: bool,
    /// Memory of each worker, in GB (what Lambda bills per second).
    #[arg(long, default_value_t = 2.0)]
    memory_gb: f64,
    /// Where `simulation.json` goes.
    #[arg(long, default_value = "target/sim")]
    out: PathBuf,
}

/// Lambda to Lambda: about 650 Mbit/s and under 1 ms round trip (Boxer, CIDR '21).
const PEER: Link = Link { latency: 0.0005, bandwidth: 650e6 / 8.0 };

/// The storage link of a benchmark latency profile (`store/src/latency.rs`); `none` has no
/// bandwidth limit, which a model of a cloud store cannot use.
fn storage(profile: &str) -> Result<Link> {
    match thunkmesh_store::Latency::profile(profile) {
        Some(l) if l.bytes_per_sec > 0.0 => {
            Ok(Link { latency: l.first_byte.as_secs_f64(), bandwidth: l.bytes_per_sec })
        }
        _ => anyhow::bail!("no storage profile `{profile}` (use s3-standard or s3-express)"),
    }
}

fn variants(names: &[String]) -> Result<Vec<Variant>> {
    if names.is_empty() {
        return Ok(Variant::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            let found = Variant::NAMED.into_iter().find(|v| v.name() == n);
            found.with_context(|| format!("no policy `{n}` (use locality, most-bytes, least-loaded, storage or fifo)"))
        })
        .collect()
}

/// Runs the simulations and prints the table.
pub fn main(args: &SimArgs) -> Result<()> {
    let cloud = Cloud {
        workers: args.workers,
        slots: args.slots,
        cold_start: (0.1, 0.4),
        peer: PEER,
        storage: storage(&args.profile)?,
        delay: Duration::from_millis(args.delay_ms),
        seed: args.seed,
        slow_workers: args.slow_workers,
        speculate_after: args.speculate_after,
        scaling: args.lambda_scaling.then_some(crate::sim::Scaling::LAMBDA),
    };
    let variants = variants(&args.policies)?;
    let shapes = if args.workloads.is_empty() { Shape::ALL.to_vec() } else { args.workloads.clone() };
    let mut jobs: Vec<(String, SimJob)> = Vec::new();
    for shape in shapes {
        let size = match shape {
            Shape::Shuffle => args.mappers,
            Shape::Video => args.video_chunks,
            _ => args.compile_thunks,
        };
        jobs.push((shape.name().to_owned(), shape.build(size, args.video_frame_ms / 1000.0, args.seed)));
    }
    if let Some(path) = &args.job {
        let job = from_job_file(path, args.job_seconds, args.job_output_bytes, args.seed)
            .with_context(|| format!("cannot use {} as a workload", path.display()))?;
        jobs.push(("job".to_owned(), job));
    }
    let mut rows = Vec::new();
    println!(
        "{:<8} {:<12} {:>7} {:>7} {:>10} {:>10} {:>12} {:>9} {:>9} {:>8} {:>9} {:>7} {:>6} {:>8} {:>7}",
        "workload",
        "policy",
        "thunks",
        "workers",
        "makespan s",
        "peer GiB",
        "storage GiB",
        "requests",
        "memo PUT",
        "worker h",
        "busy h",
        "hold s",
        "copies",
        "us/task",
        "cost $"
    );
    for (name, job) in &jobs {
        for &variant in &variants {
            let outcome = crate::sim::run(job, &cloud, variant)
                .with_context(|| format!("simulating {name} under {}", variant.name()))?;
            let dollars = cost(&outcome, cloud.workers, args.memory_gb);
            print_row(name, variant, job.thunks.len(), cloud.workers, &outcome, dollars);
            rows.push(serde_json::json!({
                "workload": name,
                "policy": variant.name(),
                "thunks": job.thunks.len(),
                "workers": cloud.workers,
                "slots": cloud.slots,
                "profile": args.profile,
                "lambda_scaling": args.lambda_scaling,
                "memory_gb": args.memory_gb,
                "cost_dollars": dollars,
                "outcome": outcome,
            }));
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("simulation.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// What a run costs on AWS at list prices (us-east-1, x86): Lambda $0.0000166667 per GB-second
/// of every worker from its start to the end and $0.20 per million invocations; S3 Standard $0.005
/// per 1,000 PUTs (data and memo records) and $0.0004 per 1,000 GETs. Transfer within a region is
/// free.
fn cost(o: &Outcome, workers: u64, memory_gb: f64) -> f64 {
    let lambda = o.worker_seconds * memory_gb * 0.000_016_666_7 + workers as f64 * 0.20e-6;
    let puts = (o.storage_puts + o.memo_records) as f64 * 0.005e-3;
    let gets = o.storage_requests.saturating_sub(o.storage_puts) as f64 * 0.0004e-3;
    lambda + puts + gets
}

fn print_row(name: &str, variant: Variant, thunks: usize, workers: u64, o: &Outcome, dollars: f64) {
    const GIB: f64 = (1u64 << 30) as f64;
    println!(
        "{:<8} {:<12} {:>7} {:>7} {:>10.1} {:>10.2} {:>12.2} {:>9} {:>9} {:>8.1} {:>9.1} {:>7.2} {:>6} {:>8.1} {:>7.2}",
        name,
        variant.name(),
        thunks,
        workers,
        o.makespan,
        o.peer_bytes as f64 / GIB,
        o.storage_bytes as f64 / GIB,
        o.storage_requests,
        o.memo_records,
        o.worker_seconds / 3600.0,
        o.busy_seconds / 3600.0,
        o.longest_hold,
        o.speculated,
        o.planner_micros_per_task,
        dollars,
    );
}
