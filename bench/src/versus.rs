//! `thunkmesh-bench versus`: the data-heavy workloads run side by side, in one run, by thunkmesh
//! (its local mesh: 2 node processes of 2 slots, p2p, memo off), by a shell pipeline doing the
//! same programs' work on the same disk with no framework (4 at a time), and, when they are
//! installed in `target/bench-venv` (`--install` puts them there from PyPI), by Dask distributed
//! (2 worker processes of 2 threads) and Ray (4 CPUs) running the same graph as Python tasks
//! (`bench/versus.py`). thunkmesh's time is its summary's `job_ms` and the frameworks' excludes
//! starting their clusters; the shell's is the whole script. For thunkmesh it also reports the
//! bytes moved between nodes against the least any placement must move, and the most objects its
//! nodes' caches held at once (sampled every 10 ms).
//!
//! The frameworks keep objects in memory (Dask's workers, Ray's shared-memory store) where
//! thunkmesh and the shell write files; each framework's results are checked against its own
//! other runs, not across frameworks (the Python seed differs from the job's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::workloads::{FAN_IN, chain, fan_in};

/// Options of `versus`.
#[derive(Debug, clap::Args)]
pub struct VersusArgs {
    /// Runs of each workload by each contender.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Create `target/bench-venv` and install Dask and Ray into it from PyPI first.
    #[arg(long)]
    install: bool,
    /// The thunkmesh binary [default: `thunkmesh` next to this program].
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
    /// Where scratch files and `versus.json` go.
    #[arg(long, default_value = "target/bench-versus")]
    out: PathBuf,
}

const VENV: &str = "target/bench-venv";
const CHAIN_LENGTH: usize = 200;
const CHAIN_SIZE: usize = 16 << 20;

#[derive(Debug, Clone, Copy)]
enum Graph {
    FanIn,
    Chain16m,
}

impl Graph {
    fn name(self) -> &'static str {
        match self {
            Graph::FanIn => "fan-in",
            Graph::Chain16m => "chain-16m",
        }
    }

    /// The bytes any placement on two nodes must move between them: the final thunk reads the
    /// reducers' 256 MiB, half of it made on the other node. A chain moves nothing.
    fn least_peer_bytes(self) -> u64 {
        let (producers, reducers, bytes) = FAN_IN;
        match self {
            Graph::FanIn => (reducers / 2 * (producers / reducers) * bytes) as u64,
            Graph::Chain16m => 0,
        }
    }

    fn write_job(self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let text = match self {
            Graph::FanIn => fan_in(),
            Graph::Chain16m => chain(dir, CHAIN_SIZE, CHAIN_LENGTH)?,
        };
        let job = dir.join("job.toml");
        std::fs::write(&job, text)?;
        Ok(job)
    }

    /// The same programs' work as a shell script over files in its first argument, a folder.
    fn shell(self) -> String {
        let (producers, reducers, bytes) = FAN_IN;
        let per = producers / reducers;
        match self {
            Graph::FanIn => format!(
                "set -e; export d=$1; mkdir -p $d\n\
                 seq 0 {last} | xargs -P4 -I{{}} sh -c 'yes {{}} | head -c {bytes} > $d/p{{}}'\n\
                 seq 0 {lastr} | xargs -P4 -I{{}} sh -c 'r={{}}; cat $(for k in $(seq 0 {lastk}); do echo $d/p$((r*{per}+k)); done) > $d/r{{}}'\n\
                 cat $d/r* | wc -c > $d/total\n",
                last = producers - 1,
                lastr = reducers - 1,
                lastk = per - 1,
            ),
            Graph::Chain16m => format!(
                "set -e; d=$1; cp seed.bin $d/cur\n\
                 for i in $(seq {CHAIN_LENGTH}); do dd if=$d/cur of=$d/next bs=1M conv=swab status=none; mv $d/next $d/cur; done\n"
            ),
        }
    }
}

/// One contender's runs of one workload.
#[derive(Debug, Default, serde::Serialize)]
struct Runs {
    seconds: Vec<f64>,
    peer_bytes: Vec<u64>,
    most_objects: Vec<u64>,
}

pub fn main(args: &VersusArgs) -> Result<()> {
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the bench crate lives in the repository")?;
    if args.install {
        install(repo)?;
    }
    let python = repo.join(VENV).join("bin/python");
    let frameworks: Vec<&str> = if python.exists() { vec!["dask", "ray"] } else { Vec::new() };
    if frameworks.is_empty() {
        eprintln!("{} has no Python: reporting thunkmesh and the shell only (--install adds Dask and Ray)", VENV);
    }
    let out = std::path::absolute(&args.out)?;
    let _ = std::fs::remove_dir_all(&out);
    let mut json = serde_json::Map::new();
    println!(
        "\n{:<10} {:<10} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "workload", "who", "median s", "min", "max", "peer MiB", "most objects"
    );
    for graph in [Graph::FanIn, Graph::Chain16m] {
        let job = graph.write_job(&out.join(graph.name()))?;
        let script = out.join(graph.name()).join("shell.sh");
        std::fs::write(&script, graph.shell())?;
        let mut results: Vec<(String, Runs)> = [&["thunkmesh", "shell"][..], &frameworks]
            .concat()
            .into_iter()
            .map(|w| (w.to_owned(), Runs::default()))
            .collect();
        for rep in 0..args.reps {
            for (who, runs) in &mut results {
                let dir = out.join(graph.name()).join(format!("{who}-{rep}"));
                std::fs::create_dir_all(&dir)?;
                match who.as_str() {
                    "thunkmesh" => thunkmesh_once(&binary, &job, &dir, runs)?,
                    "shell" => runs.seconds.push(crate::timed(
                        Command::new("sh").arg(&script).arg(&dir).current_dir(job.parent().context("job folder")?),
                    )?),
                    framework => runs.seconds.push(framework_once(&python, repo, framework, graph)?),
                }
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!(
                    "[{} {who} run {}] {:.3} s",
                    graph.name(),
                    rep + 1,
                    runs.seconds.last().copied().unwrap_or(f64::NAN)
                );
            }
        }
        for (who, runs) in &results {
            let (median, min, max) = crate::spread(&runs.seconds);
            let peer = runs
                .peer_bytes
                .iter()
                .max()
                .map_or(String::new(), |b| format!("{:.0}", *b as f64 / f64::from(1u32 << 20)));
            let objects = runs.most_objects.iter().max().map_or(String::new(), u64::to_string);
            println!("{:<10} {who:<10} {median:>8.3} {min:>8.3} {max:>8.3} {peer:>12} {objects:>12}", graph.name());
        }
        let least = graph.least_peer_bytes() as f64 / f64::from(1u32 << 20);
        println!("{:<10} least bytes two nodes must move: {least:.0} MiB", graph.name());
        json.insert(graph.name().into(), serde_json::to_value(&results)?);
    }
    std::fs::write(out.join("versus.json"), serde_json::to_string_pretty(&Value::Object(json))? + "\n")?;
    eprintln!("wrote {}", out.join("versus.json").display());
    Ok(())
}

/// One cold thunkmesh run in `dir`, while a thread counts the objects in its nodes' caches.
fn thunkmesh_once(binary: &Path, job: &Path, dir: &Path, runs: &mut Runs) -> Result<()> {
    let state = dir.join("state");
    let (done, most) = (AtomicBool::new(false), AtomicU64::new(0));
    let output = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(cached_objects(&state.join("nodes")), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let output = Command::new(binary)
            .current_dir(job.parent().unwrap_or(Path::new(".")))
            .arg("run")
            .arg(job)
            .args(["--workers", "2", "--slots", "2", "--memo", "off", "--state-dir"])
            .arg(&state)
            .arg("--out")
            .arg(dir.join("out"))
            .arg("--summary-json")
            .arg(dir.join("summary.json"))
            .output();
        done.store(true, Ordering::Relaxed);
        output
    })?;
    if !output.status.success() {
        bail!("thunkmesh failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
    runs.seconds.push(crate::mesh::count(&summary, "job_ms")? as f64 / 1e3);
    runs.peer_bytes.push(crate::mesh::count(&summary, "peer_bytes")?);
    runs.most_objects.push(most.load(Ordering::Relaxed));
    Ok(())
}

/// Objects in the caches of the nodes under `nodes` (`N/objects/*`).
fn cached_objects(nodes: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(nodes) else { return 0 };
    let folders = entries.flatten().map(|e| e.path().join("objects"));
    folders.filter_map(|f| std::fs::read_dir(f).ok()).map(|d| d.count() as u64).sum()
}

/// One run of `bench/versus.py`; the seconds it reports.
fn framework_once(python: &Path, repo: &Path, framework: &str, graph: Graph) -> Result<f64> {
    let out = Command::new(python)
        .arg(repo.join("bench/versus.py"))
        .args([framework, graph.name()])
        .output()
        .with_context(|| format!("cannot start {}", python.display()))?;
    if !out.status.success() {
        bail!("{framework} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().context("versus.py printed nothing")?;
    let report: Value = serde_json::from_str(last).with_context(|| format!("versus.py printed `{last}`"))?;
    report["seconds"].as_f64().context("versus.py reported no seconds")
}

/// Creates the venv and installs Dask and Ray into it.
fn install(repo: &Path) -> Result<()> {
    let venv = repo.join(VENV);
    if !venv.join("bin/python").exists() {
        crate::timed(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    crate::timed(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "dask[distributed]", "ray"]))?;
    Ok(())
}
