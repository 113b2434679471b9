//! A mesh of real processes for the benchmarks that need nodes on hosts of their own: a
//! rendezvous and named nodes, each either on this machine's loopback or in a network namespace
//! of `thunkmesh-netlab`, and `thunkmesh run` jobs against them with their summaries; and the
//! crossing job with which the fetch benchmarks (`nat`, `transfer`) make one object cross.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use thunkmesh_netlab::Host;

/// The token of the benchmarks' meshes.
pub const TOKEN: &str = "mesh-benchmark-token";

/// Where a process runs: this machine's own network, or a namespace.
#[derive(Debug, Clone)]
pub struct Place {
    ns: Option<String>,
    ip: IpAddr,
}

impl Place {
    /// This machine's loopback.
    pub fn loopback() -> Place {
        Place { ns: None, ip: IpAddr::from([127, 0, 0, 1]) }
    }

    fn command(&self, binary: &Path) -> Command {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.env("RUST_LOG", "warn").env("THUNKMESH_TOKEN", TOKEN);
        cmd
    }
}

impl From<&Host> for Place {
    fn from(host: &Host) -> Place {
        Place { ns: Some(host.ns.clone()), ip: host.ip.into() }
    }
}

/// A rendezvous at one place and a node (of `slots` slots) at each of others.
pub struct Mesh {
    binary: PathBuf,
    public: Place,
    addr: String,
    fingerprint: String,
    dir: PathBuf,
    /// The rendezvous, then the nodes in the order given.
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
    /// Starts the rendezvous at `public` and one node at each of `nodes`, and waits until every
    /// node has registered.
    pub fn start(binary: &Path, public: &Place, nodes: &[Place], slots: u32, dir: &Path) -> Result<Mesh> {
        std::fs::create_dir_all(dir)?;
        let port = free_port(public)?;
        let (addr, probe) = (format!("{}:{port}", public.ip), format!("{}:{}", public.ip, port + 1));
        let mut rendezvous = public
            .command(binary)
            .args(["rendezvous", "--listen", &addr, "--probe-listen", &probe, "--state-dir"])
            .arg(dir.join("rdv"))
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the rendezvous")?;
        let stderr = rendezvous.stderr.take().context("the rendezvous' stderr")?;
        let mut mesh = Mesh {
            binary: binary.into(),
            public: public.clone(),
            addr,
            fingerprint: String::new(),
            dir: dir.into(),
            procs: vec![rendezvous],
            drain: None,
        };
        let mut lines = BufReader::new(stderr).lines();
        mesh.fingerprint = crate::read_fingerprint(&mut lines)?;
        mesh.drain = Some(std::thread::spawn(move || lines.for_each(drop)));
        for (i, place) in nodes.iter().enumerate() {
            let node = place
                .command(binary)
                .args(["node", "--rendezvous", &mesh.addr, "--bind", &format!("{}:0", place.ip)])
                .args(["--fingerprint", &mesh.fingerprint, "--slots", &slots.to_string()])
                .args(["--name", &format!("node{i}"), "--cache-dir"])
                .arg(dir.join(format!("node{i}")))
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start a node")?;
            mesh.procs.push(node);
        }
        mesh.wait_for(nodes.len())?;
        Ok(mesh)
    }

    /// The folder of the mesh's state and runs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process ids of the nodes, in the order they were given.
    pub fn node_pids(&self) -> Vec<u32> {
        self.procs[1..].iter().map(Child::id).collect()
    }

    /// Waits until `nodes` nodes are registered (and have classified their NATs).
    fn wait_for(&self, nodes: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self.client().args(["status", "--rendezvous", &self.addr]).args(self.trust()).output()?;
            last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if last.contains(&format!("{nodes} node(s)")) && !last.contains("unknown") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the nodes did not register within 20 s; the last status:\n{last}")
    }

    /// Runs `job` (a job file's text) in a folder of its own named `label`, with `mode` and a
    /// folder store slowed to `profile`; returns the run's summary.
    pub fn run(&self, label: &str, job: &str, mode: &str, profile: &str) -> Result<Value> {
        let work = self.dir.join(label);
        std::fs::create_dir_all(&work)?;
        std::fs::write(work.join("job.toml"), job)?;
        let store = format!("file://{}?latency={profile}", self.dir.join("store").display());
        let out = self
            .client()
            .current_dir(&work)
            .args(["run", "job.toml", "--rendezvous", &self.addr, "--mode", mode, "--memo", "off", "--verify", "0"])
            .args(self.trust())
            .args(["--store", &store, "--summary-json", "summary.json"])
            .output()?;
        if !out.status.success() {
            bail!("run {label} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = std::fs::read_to_string(work.join("summary.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Bytes of the files in node `i`'s cache folder.
    pub fn cache_bytes(&self, i: usize) -> u64 {
        folder_bytes(&self.dir.join(format!("node{i}")))
    }

    fn client(&self) -> Command {
        self.public.command(&self.binary)
    }

    fn trust(&self) -> [&str; 2] {
        ["--fingerprint", &self.fingerprint]
    }
}

/// Two producers of `size` bytes that run at once, one per node, and a consumer of both.
pub fn crossing_job(size: usize, tag: &str) -> String {
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

/// A summary's counter.
pub fn count(summary: &Value, key: &str) -> Result<u64> {
    summary[key].as_u64().with_context(|| format!("the summary has no `{key}`: {summary}"))
}

/// A summary's duration in milliseconds.
pub fn millis(summary: &Value, key: &str) -> Result<f64> {
    summary[key].as_f64().with_context(|| format!("the summary has no `{key}`: {summary}"))
}

/// A UDP port free at `place` now, with the next one free too (for the rendezvous' probe).
fn free_port(place: &Place) -> Result<u16> {
    if place.ns.is_some() {
        // A namespace of the lab is the benchmark's alone.
        return Ok(7700);
    }
    for _ in 0..20 {
        let socket = std::net::UdpSocket::bind((place.ip, 0))?;
        let port = socket.local_addr()?.port();
        if port < u16::MAX && std::net::UdpSocket::bind((place.ip, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no two free UDP ports in a row on {}", place.ip)
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
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
