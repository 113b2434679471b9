//! `thunkmesh-bench swarm`: the control plane under load, on this machine. A real rendezvous
//! process, a few `swarm-nodes` processes holding thousands of real QUIC node sessions between
//! them (synthetic nodes: they run nothing, see `swarm_nodes.rs`), and a client in this process
//! that submits jobs through the real wire and follows them.
//!
//! It reports the sessions held (and, with `--hold`, whether any dropped while only heartbeats
//! flowed), the rendezvous' memory per session, and per job: the time to submit it, the time until
//! the rendezvous had planned it, the makespan, assignments per second, the rendezvous' CPU per
//! thousand assignments and its peak memory, and the time from a thunk becoming ready (the last
//! of its producers reported done, as the producer's node sent it) to its assignment reaching a
//! node, p50 and p99. Everything talks over loopback; the counts are bounded by the flags.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use thunkmesh_net::{Identity, Trust, client_config, connect, parse_fingerprint, recv_msg, send_msg};
use thunkmesh_protocol::submit::pieces;
use thunkmesh_protocol::synthetic::{compile_job, values};
use thunkmesh_protocol::wire::{
    ALPN_RENDEZVOUS, FromRendezvous, Hello, Mode, PROTOCOL_VERSION, Role, Submission, SubmittedThunk,
};
use thunkmesh_protocol::{Id, Inputs, Program, Ref, Thunk};

use crate::footprint::status_mib;
use crate::swarm_nodes::now_micros;

#[derive(Debug, clap::Args)]
pub struct SwarmArgs {
    /// Node sessions in all.
    #[arg(long, default_value_t = 1_000)]
    sessions: usize,
    /// Processes that hold them (each on one thread).
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Slots each session offers.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Thunks of the compile-shaped job (0: none).
    #[arg(long, default_value_t = 100_000)]
    thunks: usize,
    /// Independent chains of the latency job (0: none), of `--chain-length` thunks each.
    #[arg(long, default_value_t = 0)]
    chains: usize,
    /// Thunks per chain.
    #[arg(long, default_value_t = 50)]
    chain_length: usize,
    /// Milliseconds each task takes on a swarm node (paces the jobs).
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Hold the sessions this long with nothing but heartbeats before the jobs.
    #[arg(long, default_value = "0s")]
    hold: humantime::Duration,
    /// The thunkmesh binary (default: next to this one).
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
    /// Where the rendezvous' state, the records and `swarm.json` go.
    #[arg(long, default_value = "target/bench/swarm")]
    out: PathBuf,
}

/// How often a long job's progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

pub fn main(args: &SwarmArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let rdv = Rendezvous::start(&binary, &args.out)?;
    let before = rdv.resident_mib()?;
    let started = Instant::now();
    let mut swarm = Swarm::start(args, &rdv)?;
    let connect_s = started.elapsed().as_secs_f64();
    let welcomed = swarm.welcomed;
    let per_session_kib = (rdv.resident_mib()? - before) * 1024.0 / welcomed.max(1) as f64;
    println!(
        "sessions: {welcomed} of {} welcomed in {connect_s:.1} s; rendezvous {:.0} MiB, {per_session_kib:.1} KiB per session",
        args.sessions,
        rdv.resident_mib()?
    );
    let held = hold(args, &rdv, &binary)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut jobs = Vec::new();
    let program = Program::Host { path: "/bin/true".into(), pin: Id::of_blob(b"true") };
    if args.thunks > 0 {
        let mut sub = compile_job(args.thunks, &program);
        sub.stored = values(&sub);
        jobs.push(runtime.block_on(run_job("compile", &rdv, sub))?);
    }
    if args.chains > 0 {
        jobs.push(runtime.block_on(run_job("chains", &rdv, chains(args.chains, args.chain_length, &program)))?);
    }
    let counts = swarm.stop()?;
    let latencies = latencies(&args.out, args.procs)?;
    let mut report = Vec::new();
    for job in &mut jobs {
        job.latency_ms = percentiles(&latencies, job.window);
        println!("{}", job.line());
        report.push(job.json());
    }
    let summary = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "sessions": args.sessions,
        "welcomed": welcomed,
        "connect_s": connect_s,
        "rendezvous_kib_per_session": per_session_kib,
        "hold": held,
        "swarm": counts,
        "jobs": report,
    });
    std::fs::write(args.out.join("swarm.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("wrote {}", args.out.join("swarm.json").display());
    Ok(())
}

/// Holds the sessions for `--hold` with only heartbeats, then asks the rendezvous how many nodes
/// it has; returns what it found.
fn hold(args: &SwarmArgs, rdv: &Rendezvous, binary: &Path) -> Result<serde_json::Value> {
    let hold: Duration = args.hold.into();
    if hold.is_zero() {
        return Ok(serde_json::Value::Null);
    }
    let cpu = rdv.cpu_seconds()?;
    std::thread::sleep(hold);
    let cpu_share = (rdv.cpu_seconds()? - cpu) / hold.as_secs_f64();
    let status = Command::new(binary)
        .args(["status", "--json", "--rendezvous", &rdv.addr.to_string(), "--fingerprint", &rdv.fingerprint])
        .env("THUNKMESH_TOKEN", crate::mesh::TOKEN)
        .output()?;
    let text = String::from_utf8_lossy(&status.stdout);
    let nodes = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|status| Some(status["nodes"].as_array()?.len()))
        .with_context(|| format!("`thunkmesh status --json` said: {text}"))?;
    println!(
        "held {} for {}: {nodes} nodes registered, rendezvous at {:.0}% of a core for heartbeats",
        args.sessions,
        humantime::format_duration(hold),
        cpu_share * 100.0
    );
    Ok(serde_json::json!({ "seconds": hold.as_secs_f64(), "nodes_after": nodes, "cpu_share": cpu_share }))
}

/// `chains` chains of `length` thunks, each step reading the one before.
fn chains(chains: usize, length: usize, program: &Program) -> Submission {
    let seed = Id::of_blob(b"swarm chain seed");
    let mut thunks = Vec::with_capacity(chains * length);
    let mut targets = Vec::with_capacity(chains);
    for c in 0..chains {
        let mut input = Ref::Blob(seed);
        for s in 0..length {
            let thunk = Thunk {
                program: program.clone(),
                args: vec![format!("chain {c} step {s}")],
                env: Default::default(),
                inputs: Inputs::from_iter([("in".to_owned(), input)]),
                outputs: vec!["out".into()],
                timeout_ms: 600_000,
                network: false,
                stdout: false,
                dir: None,
            };
            input = Ref::Output { thunk: thunk.id(), name: "out".into() };
            thunks.push(SubmittedThunk { name: format!("c{c}/s{s}"), thunk });
        }
        targets.push(input);
    }
    Submission {
        store: "file:///swarm".into(),
        mode: Mode::P2p,
        thunks,
        targets,
        stored: vec![seed],
        memo: Vec::new(),
        require_direct: false,
        keep_going: false,
        verify: 0,
        verify_salt: 0,
        report_tasks: false,
        carried: Vec::new(),
    }
}

/// The rendezvous process.
struct Rendezvous {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Rendezvous {
    fn start(binary: &Path, out: &Path) -> Result<Rendezvous> {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut child = Command::new(binary)
            .args(["rendezvous", "--listen", &addr.to_string(), "--state-dir"])
            .arg(out.join("rendezvous"))
            .env("THUNKMESH_TOKEN", crate::mesh::TOKEN)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("the rendezvous' stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let fingerprint = crate::read_fingerprint(&mut lines)?;
        let drain = std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("rendezvous: {l}")));
        Ok(Rendezvous { child, addr, fingerprint, drain: Some(drain) })
    }

    fn status(&self) -> Result<String> {
        Ok(std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?)
    }

    fn resident_mib(&self) -> Result<f64> {
        status_mib(&self.status()?, "VmRSS")
    }

    fn peak_mib(&self) -> Result<f64> {
        status_mib(&self.status()?, "VmHWM")
    }

    fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").context("cannot reset the peak memory")
    }

    fn cpu_seconds(&self) -> Result<f64> {
        let [user, system, ..] = crate::cpu_ticks(&self.child.id().to_string())?;
        Ok((user + system) as f64 / 100.0)
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// The swarm processes.
struct Swarm {
    children: Vec<(Child, BufReader<ChildStdout>)>,
    welcomed: u64,
}

impl Swarm {
    fn start(args: &SwarmArgs, rdv: &Rendezvous) -> Result<Swarm> {
        let mut children = Vec::new();
        for p in 0..args.procs {
            let sessions = args.sessions / args.procs + usize::from(p < args.sessions % args.procs);
            let mut child = Command::new(std::env::current_exe()?)
                .args(["swarm-nodes", "--rendezvous", &rdv.addr.to_string(), "--fingerprint", &rdv.fingerprint])
                .args(["--sessions", &sessions.to_string(), "--slots", &args.slots.to_string()])
                .args(["--name", &format!("swarm{p}"), "--work-ms", &args.work_ms.to_string(), "--record"])
                .arg(args.out.join(format!("records-{p}.bin")))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = BufReader::new(child.stdout.take().context("a swarm process' stdout")?);
            children.push((child, stdout));
        }
        let mut welcomed = 0;
        for (_, stdout) in &mut children {
            let mut line = String::new();
            stdout.read_line(&mut line)?;
            let n: u64 = line
                .strip_prefix("ready ")
                .and_then(|n| n.trim().parse().ok())
                .with_context(|| format!("a swarm process said {line:?}"))?;
            welcomed += n;
        }
        Ok(Swarm { children, welcomed })
    }

    /// Ends every session; returns the processes' counts, summed.
    fn stop(&mut self) -> Result<serde_json::Value> {
        let mut sums: HashMap<String, u64> = HashMap::new();
        for (child, stdout) in &mut self.children {
            drop(child.stdin.take());
            let mut text = String::new();
            stdout.read_to_string(&mut text)?;
            child.wait()?;
            let counts: serde_json::Value =
                serde_json::from_str(text.trim()).with_context(|| format!("a swarm process said {text:?}"))?;
            for (k, v) in counts.as_object().into_iter().flatten() {
                *sums.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
        Ok(serde_json::to_value(sums)?)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One job through the swarm, measured.
struct JobRun {
    label: &'static str,
    thunks: usize,
    submit_s: f64,
    planned_s: f64,
    makespan_s: f64,
    executed: u64,
    cpu_s: f64,
    peak_mib: f64,
    /// When its assignments could arrive (µs since the epoch).
    window: (u64, u64),
    latency_ms: Option<(f64, f64, usize)>,
}

impl JobRun {
    fn rate(&self) -> f64 {
        self.executed as f64 / (self.makespan_s - self.planned_s).max(1e-9)
    }

    fn cpu_ms_per_1k(&self) -> f64 {
        self.cpu_s * 1000.0 / (self.executed as f64 / 1000.0).max(1e-9)
    }

    fn line(&self) -> String {
        let latency = match self.latency_ms {
            Some((p50, p99, n)) => format!("ready->assigned p50 {p50:.2} ms, p99 {p99:.2} ms ({n} thunks)"),
            None => "no thunk waited for another".into(),
        };
        format!(
            "{}: {} thunks; submitted in {:.2} s, planned at {:.2} s, done at {:.2} s; {:.0} assignments/s; rendezvous {:.0} ms CPU per 1,000 assignments, peak {:.0} MiB; {latency}",
            self.label,
            self.thunks,
            self.submit_s,
            self.planned_s,
            self.makespan_s,
            self.rate(),
            self.cpu_ms_per_1k(),
            self.peak_mib
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "job": self.label,
            "thunks": self.thunks,
            "submit_s": self.submit_s,
            "planned_s": self.planned_s,
            "makespan_s": self.makespan_s,
            "executed": self.executed,
            "assignments_per_s": self.rate(),
            "rendezvous_cpu_ms_per_1k_assignments": self.cpu_ms_per_1k(),
            "rendezvous_peak_mib": self.peak_mib,
            "ready_to_assigned_ms": self.latency_ms.map(|(p50, p99, n)| serde_json::json!({"p50": p50, "p99": p99, "thunks": n})),
        })
    }
}

/// Submits `sub` as a client does and follows it to its end.
async fn run_job(label: &'static str, rdv: &Rendezvous, sub: Submission) -> Result<JobRun> {
    rdv.reset_peak()?;
    let cpu = rdv.cpu_seconds()?;
    let endpoint = thunkmesh_net::endpoint("127.0.0.1:0".parse()?, &Identity::generate()?)?;
    let trust = Trust::Pinned(parse_fingerprint(&rdv.fingerprint)?);
    let conn = connect(&endpoint, client_config(&trust, ALPN_RENDEZVOUS)?, rdv.addr, "localhost").await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello { version: PROTOCOL_VERSION, token: crate::mesh::TOKEN.into(), role: Role::Client };
    send_msg(&mut send, &hello).await?;
    match recv_msg::<FromRendezvous>(&mut recv).await? {
        Some(FromRendezvous::Welcome { .. }) => {}
        other => bail!("the rendezvous did not welcome the client: {other:?}"),
    }
    let window_start = now_micros();
    let started = Instant::now();
    for frame in pieces(&sub) {
        send.write_all(&frame?).await?;
    }
    let submit_s = started.elapsed().as_secs_f64();
    let thunks = sub.thunks.len();
    drop(sub);
    let mut planned_s = None;
    let mut said = Instant::now();
    let outcome = loop {
        match recv_msg::<FromRendezvous>(&mut recv).await? {
            Some(FromRendezvous::Progress(p)) => {
                if planned_s.is_none() && p.total >= thunks as u64 {
                    planned_s = Some(started.elapsed().as_secs_f64());
                }
                if said.elapsed() >= PROGRESS_EVERY {
                    said = Instant::now();
                    let (t, rss) = (started.elapsed().as_secs_f64(), rdv.resident_mib()?);
                    eprintln!(
                        "{label}: {t:.0} s, {} of {} done, {} running; rendezvous {rss:.0} MiB",
                        p.done, p.total, p.running
                    );
                }
            }
            Some(FromRendezvous::JobDone(outcome)) => break outcome,
            Some(FromRendezvous::JobFailed(e)) => bail!("{label}: the job failed: {e}"),
            Some(_) => {}
            None => bail!("{label}: the rendezvous closed the connection"),
        }
    };
    let makespan_s = started.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    Ok(JobRun {
        label,
        thunks,
        submit_s,
        planned_s: planned_s.unwrap_or(makespan_s),
        makespan_s,
        executed: outcome.executed,
        cpu_s: rdv.cpu_seconds()? - cpu,
        peak_mib: rdv.peak_mib()?,
        window: (window_start, now_micros()),
        latency_ms: None,
    })
}

/// (assignment arrival, ready time) for every assignment whose producers' done times are known,
/// in microseconds since the epoch.
fn latencies(out: &Path, procs: usize) -> Result<Vec<(u64, u64)>> {
    let mut done: HashMap<u64, u64> = HashMap::new();
    let mut assigned: Vec<(u64, Vec<u64>)> = Vec::new();
    for p in 0..procs {
        let bytes = std::fs::read(out.join(format!("records-{p}.bin")))?;
        let mut words = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
        let mut next = || words.next().context("a record file ends early");
        for _ in 0..next()? {
            let (k, t) = (next()?, next()?);
            done.insert(k, t);
        }
        for _ in 0..next()? {
            let (t, n) = (next()?, next()?);
            let producers = (0..n).map(|_| next()).collect::<Result<Vec<u64>>>()?;
            assigned.push((t, producers));
        }
    }
    Ok(assigned
        .into_iter()
        .filter(|(_, producers)| !producers.is_empty())
        .filter_map(|(t, producers)| {
            let ready = producers.iter().map(|p| done.get(p).copied()).collect::<Option<Vec<u64>>>()?;
            Some((t, ready.into_iter().max()?))
        })
        .collect())
}

/// p50 and p99 of ready-to-assigned within `window`, in ms, and how many.
fn percentiles(latencies: &[(u64, u64)], (from, to): (u64, u64)) -> Option<(f64, f64, usize)> {
    let mut ms: Vec<f64> = latencies
        .iter()
        .filter(|(t, _)| (from..=to).contains(t))
        .map(|(t, ready)| t.saturating_sub(*ready) as f64 / 1000.0)
        .collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.99), ms.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_only_the_window_and_measure_from_ready() {
        let lat = [(1_000, 900), (2_000, 1_000), (3_000, 2_990), (9_000, 0)];
        let (p50, p99, n) = percentiles(&lat, (0, 5_000)).expect("three in the window");
        assert_eq!(n, 3);
        assert_eq!(p50, 0.1);
        assert_eq!(p99, 1.0);
        assert_eq!(percentiles(&lat, (4_000, 5_000)), None);
    }

    #[test]
    fn a_chain_job_reads_each_step_from_the_one_before() {
        let program = Program::Host { path: "/bin/true".into(), pin: Id::of_blob(b"true") };
        let sub = chains(3, 4, &program);
        assert_eq!(sub.thunks.len(), 12);
        assert_eq!(sub.targets.len(), 3);
        let second = &sub.thunks[1].thunk;
        assert_eq!(second.inputs["in"], Ref::Output { thunk: sub.thunks[0].thunk.id(), name: "out".into() });
    }
}
