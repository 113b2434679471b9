//! `thunkmesh-bench nat`: how long one fetch between two nodes behind NATs takes, by the path it
//! takes: directly (the first fetch also sets the path up through both NATs; later ones reuse
//! it), through the rendezvous' relay, or through storage. It builds real NATs with
//! `thunkmesh-netlab` (root needed), runs a rendezvous on the public side and a node behind each
//! NAT, and runs a two-step job whose one small intermediate must cross between the nodes,
//! reading the fetch times the nodes report in each run's summary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use thunkmesh_netlab::{Host, Lab, Mapping};

/// Options of `nat`.
#[derive(Debug, clap::Args)]
pub struct NatArgs {
    /// Jobs per path (the first direct one also sets the path up).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Size of the object that crosses, in bytes (the relay takes at most 1 MiB).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// The thunkmesh binary [default: `thunkmesh` next to this program].
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
    /// Where scratch files and `nat.json` go.
    #[arg(long, default_value = "target/bench-nat")]
    out: PathBuf,
}

/// The token of the benchmark's meshes.
const TOKEN: &str = "nat-benchmark-token";

pub fn main(args: &NatArgs) -> Result<()> {
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out)?;
    let out = std::path::absolute(&args.out)?;
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    {
        let mut lab = Lab::new("bd")?;
        let (mut a, mut b) = (lab.nat(Mapping::EndpointIndependent)?, lab.nat(Mapping::EndpointIndependent)?);
        let (ha, hb) = (lab.host_behind(&mut a)?, lab.host_behind(&mut b)?);
        // A fresh mesh per repetition: its first fetch sets the path up, its second reuses it.
        let (mut first, mut reused) = (Vec::new(), Vec::new());
        for rep in 0..args.reps {
            let mesh = Mesh::start(&binary, &lab.public(), &[&ha, &hb], &out.join(format!("cone-{rep}")))?;
            let times = mesh.fetch_times(2, args.size, "p2p", "none", "peer")?;
            first.push(times[0]);
            reused.push(times[1]);
        }
        rows.push(("direct, first fetch (sets the path up)".into(), first));
        rows.push(("direct, path reused".into(), reused));
        let mesh = Mesh::start(&binary, &lab.public(), &[&ha, &hb], &out.join("cone"))?;
        for profile in ["none", "s3-express", "s3-standard"] {
            let stored = mesh.fetch_times(args.reps, args.size, "storage", profile, "storage")?;
            rows.push((format!("through storage ({profile}), one read"), stored));
        }
    }
    {
        let mut lab = Lab::new("br")?;
        let (mut a, mut b) = (lab.nat(Mapping::EndpointIndependent)?, lab.nat(Mapping::Symmetric)?);
        let (ha, hb) = (lab.host_behind(&mut a)?, lab.host_behind(&mut b)?);
        let mesh = Mesh::start(&binary, &lab.public(), &[&ha, &hb], &out.join("symmetric"))?;
        let relayed = mesh.fetch_times(args.reps, args.size, "p2p", "none", "relay")?;
        rows.push(("relayed (cone and symmetric NAT)".into(), relayed));
    }
    println!("\nfetch of a {}-byte object between two nodes behind NATs, ms per fetch", args.size);
    println!("{:<42} {:>8} {:>8} {:>8} {:>5}", "path", "median", "min", "max", "runs");
    let mut json = Vec::new();
    for (path, times) in &rows {
        let (median, min, max) = spread(times);
        println!("{path:<42} {median:>8.2} {min:>8.2} {max:>8.2} {:>5}", times.len());
        json.push(serde_json::json!({ "path": path, "ms": times, "median_ms": median }));
    }
    let report = serde_json::json!({ "size": args.size, "reps": args.reps, "rows": json });
    std::fs::write(out.join("nat.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", out.join("nat.json").display());
    Ok(())
}

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

/// A rendezvous on the public network and one node (one slot) behind each NAT.
struct Mesh {
    binary: PathBuf,
    public: Host,
    fingerprint: String,
    dir: PathBuf,
    procs: Vec<Child>,
    /// Reads the rendezvous' log so that it never writes to a closed pipe; ends with it.
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

impl Mesh {
    fn start(binary: &Path, public: &Host, hosts: &[&Host], dir: &Path) -> Result<Mesh> {
        std::fs::create_dir_all(dir)?;
        let (addr, probe) = (format!("{}:7700", public.ip), format!("{}:7701", public.ip));
        let mut rendezvous = in_ns(binary, &public.ns)
            .args(["rendezvous", "--listen", &addr, "--probe-listen", &probe, "--state-dir"])
            .arg(dir.join("rdv"))
            .env("THUNKMESH_TOKEN", TOKEN)
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the rendezvous")?;
        let stderr = rendezvous.stderr.take().context("the rendezvous' stderr")?;
        let mut mesh = Mesh {
            binary: binary.into(),
            public: public.clone(),
            fingerprint: String::new(),
            dir: dir.into(),
            procs: vec![rendezvous],
            drain: None,
        };
        let mut lines = BufReader::new(stderr).lines();
        mesh.fingerprint = crate::read_fingerprint(&mut lines)?;
        mesh.drain = Some(std::thread::spawn(move || lines.for_each(drop)));
        for (i, host) in hosts.iter().enumerate() {
            let node = in_ns(binary, &host.ns)
                .args(["node", "--rendezvous", &addr, "--bind", "0.0.0.0:0", "--fingerprint", &mesh.fingerprint])
                .args(["--slots", "1", "--name", &format!("node{i}"), "--cache-dir"])
                .arg(dir.join(format!("node{i}")))
                .env("THUNKMESH_TOKEN", TOKEN)
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start a node")?;
            mesh.procs.push(node);
        }
        mesh.wait_for(hosts.len())?;
        Ok(mesh)
    }

    /// Waits until `nodes` nodes are registered (and have classified their NATs).
    fn wait_for(&self, nodes: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self
                .thunkmesh()
                .args(["status", "--rendezvous", &self.addr()])
                .args(self.trust())
                .env("THUNKMESH_TOKEN", TOKEN)
                .output()?;
            last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if last.contains(&format!("{nodes} node(s)")) && !last.contains("unknown") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the nodes did not register within 20 s; the last status:\n{last}")
    }

    /// Runs the crossing job with `size`-byte objects `reps` times in `mode`, storage under
    /// latency `profile`; returns the time of each fetch of `kind` (peer, relay, storage), in ms.
    fn fetch_times(&self, reps: usize, size: usize, mode: &str, profile: &str, kind: &str) -> Result<Vec<f64>> {
        let mut times = Vec::new();
        for rep in 0..reps {
            let work = self.dir.join(format!("{mode}-{profile}-{rep}"));
            std::fs::create_dir_all(&work)?;
            // Each run's objects differ, so no node already holds what it needs.
            std::fs::write(work.join("job.toml"), crossing_job(size, &format!("{mode}-{profile}-{rep}")))?;
            let store = format!("file://{}?latency={profile}", self.dir.join("store").display());
            let out = self
                .thunkmesh()
                .current_dir(&work)
                .args(["run", "job.toml", "--rendezvous", &self.addr(), "--mode", mode, "--memo", "off"])
                .args(self.trust())
                .args(["--store", &store, "--summary-json", "summary.json"])
                .env("THUNKMESH_TOKEN", TOKEN)
                .output()?;
            if !out.status.success() {
                bail!("a {mode} run failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let summary: Value = serde_json::from_str(&std::fs::read_to_string(work.join("summary.json"))?)?;
            let num = |key: &str| summary[key].as_u64().with_context(|| format!("summary has no `{key}`"));
            let (count, micros) = match kind {
                "peer" => (num("peer_fetches")?, num("peer_fetch_micros")?),
                "relay" => (num("relayed_fetches")?, num("relay_fetch_micros")?),
                // Storage mode reads both of the consumer's inputs from storage.
                _ => (2, num("storage_read_micros")?),
            };
            if count == 0 {
                bail!("run {rep} in {mode} mode made no {kind} fetch: {summary}");
            }
            times.push(micros as f64 / count as f64 / 1e3);
        }
        Ok(times)
    }

    fn thunkmesh(&self) -> Command {
        in_ns(&self.binary, &self.public.ns)
    }

    fn addr(&self) -> String {
        format!("{}:7700", self.public.ip)
    }

    fn trust(&self) -> [&str; 2] {
        ["--fingerprint", &self.fingerprint]
    }
}

fn in_ns(binary: &Path, ns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(binary).env("RUST_LOG", "warn");
    cmd
}

/// Two producers of `size` bytes that run at once, one per node, and a consumer of both.
fn crossing_job(size: usize, tag: &str) -> String {
    let producer = |name: &str| {
        format!(
            "[[thunk]]\nname = \"{name}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"sleep 0.3; yes {name}-{tag} | head -c {size} > out\"]\n\
             env = {{ PATH = \"/usr/bin:/bin\" }}\noutputs = [\"out\"]\n\n"
        )
    };
    format!(
        "{}{}[[thunk]]\nname = \"both\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat l r | wc -c > out\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ l = \"left#out\", r = \"right#out\" }}\noutputs = [\"out\"]\n\n\
         [targets]\n\"count.txt\" = \"both#out\"\n",
        producer("left"),
        producer("right")
    )
}

#[cfg(test)]
mod tests {
    use thunkmesh_protocol::job::{JobSpec, SpecKind};

    #[test]
    fn the_crossing_job_is_a_valid_job_whose_runs_differ() {
        let one = super::crossing_job(1024, "a");
        let spec = JobSpec::parse(&one, "crossing.toml", SpecKind::Job).expect("valid");
        assert_eq!(spec.thunks.len(), 3);
        assert_ne!(one, super::crossing_job(1024, "b"), "each run's objects differ");
    }
}
