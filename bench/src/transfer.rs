//! `thunkmesh-bench transfer`: how fast one object moves between two nodes, directly peer to
//! peer. A rendezvous and two nodes run as processes on loopback; each run is a job whose two
//! producers write an object of the given size at once, one on each node, and whose consumer
//! reads both, so one object crosses. Reported per size: the fetch's rate (from the nodes' own
//! timing in the summary), the CPU time of the receiving and the sending node per GiB moved, and
//! how far each node's peak memory rose above what it held before the run. Beside each fetch it
//! times writing a new file of the same size in 4 MiB blocks, as the receiving node does: on a
//! machine whose page cache is slow to take fresh memory, that rate, not the network, bounds a
//! fetch.
//!
//! `--link 1ms,30ms` measures instead between two hosts in network namespaces joined by a router
//! whose forwarding passes a delay line (`delay.rs`: each packet is delayed by the given one-way
//! time in each direction, and serialised at `--link-mbit`), as `tc netem delay` on both hosts'
//! interfaces would, for kernels without `netem`. Root is needed; the rendezvous and the client
//! run in the router, so only node-to-node packets are delayed.
//!
//! The relay is not measured here: it carries only objects of at most 1 MiB at 16 MiB/s by
//! design (`rendezvous/src/relay.rs`), and only between nodes behind NATs (`thunkmesh-bench nat`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::footprint::status_mib;
use crate::mesh::{Mesh, Place, count};
use thunkmesh_store::BLOCK;

/// Options of `transfer`.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Object sizes, with a unit (KiB, MiB, GiB; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1KiB,1MiB,64MiB,1GiB")]
    sizes: Vec<String>,
    /// Fetches per size.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The thunkmesh binary [default: `thunkmesh` next to this program].
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
    /// Where scratch files and `transfer.json` go.
    #[arg(long, default_value = "target/bench-transfer")]
    out: PathBuf,
    /// Fetch over emulated links of these one-way delays (`1ms`, `30ms`; comma-separated) instead
    /// of loopback (root: network namespaces and a delay line).
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
    link: Vec<std::time::Duration>,
    /// The emulated links' rate, in Mbit/s.
    #[arg(long, default_value_t = 1000)]
    link_mbit: u64,
}

/// One fetch: its rate, and what it cost each side.
#[derive(Debug, serde::Serialize)]
struct Fetch {
    mib_per_s: f64,
    /// The rate of writing a new file of the same size, just before the fetch.
    file_write_mib_per_s: f64,
    receiver_cpu_s: f64,
    sender_cpu_s: f64,
    receiver_peak_mib: f64,
    sender_peak_mib: f64,
}

pub fn main(args: &TransferArgs) -> Result<()> {
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let out = std::path::absolute(&args.out)?;
    let _ = std::fs::remove_dir_all(&out);
    let mut json = Vec::new();
    if args.link.is_empty() {
        let mesh = Mesh::start(&binary, &Place::loopback(), &[Place::loopback(), Place::loopback()], 1, &out)?;
        println!("\none object fetched between two nodes on loopback (median of {} runs)", args.reps);
        json.push(serde_json::json!({ "link": "loopback", "sizes": sizes(args, &mesh, &out)? }));
    }
    for &delay in &args.link {
        let mut lab = thunkmesh_netlab::Lab::new("tl")?;
        let wire = lab.wire()?;
        let _line = DelayLine::start(&wire, delay, args.link_mbit)?;
        let dir = out.join(format!("link-{}", humantime::format_duration(delay)));
        let mesh = Mesh::start(&binary, &(&wire.router).into(), &[(&wire.a).into(), (&wire.b).into()], 1, &dir)?;
        let rate = args.link_mbit as f64 * 1e6 / 8.0 / f64::from(1u32 << 20);
        println!(
            "\none object fetched over a link of {} each way at {} Mbit/s ({rate:.1} MiB/s), median of {} runs",
            humantime::format_duration(delay),
            args.link_mbit,
            args.reps
        );
        let link = format!("{} {} Mbit/s", humantime::format_duration(delay), args.link_mbit);
        json.push(serde_json::json!({ "link": link, "sizes": sizes(args, &mesh, &dir)? }));
    }
    std::fs::write(out.join("transfer.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!("wrote {}", out.join("transfer.json").display());
    Ok(())
}

/// The delay line process in a wire's router; killed when dropped.
struct DelayLine(std::process::Child);

impl DelayLine {
    fn start(wire: &thunkmesh_netlab::Wire, delay: std::time::Duration, mbit: u64) -> Result<DelayLine> {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &wire.router.ns])
            .arg(std::env::current_exe()?)
            .args(["delay-line", "--delay-us", &delay.as_micros().to_string(), "--rate-mbit", &mbit.to_string()])
            .spawn()
            .context("cannot start the delay line")?;
        let mut line = DelayLine(child);
        std::thread::sleep(std::time::Duration::from_millis(300));
        if let Some(status) = line.0.try_wait()? {
            bail!("the delay line stopped at once: {status}");
        }
        wire.route_through_tun()?;
        Ok(line)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fetches each size `--reps` times over `mesh`, prints a line per size; the fetches by size.
fn sizes(args: &TransferArgs, mesh: &Mesh, out: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let mut json = Vec::new();
    println!(
        "{:>8} {:>10} {:>14} {:>16} {:>16} {:>20}",
        "size", "MiB/s", "file MiB/s", "CPU s/GiB recv", "CPU s/GiB send", "peak MiB recv/send"
    );
    for text in &args.sizes {
        let size = thunkmesh_node::parse_size(text)?;
        let mut fetches = Vec::new();
        for rep in 0..args.reps {
            fetches.push(fetch_once(mesh, size, &format!("{text}-{rep}"))?);
            let _ = std::fs::remove_dir_all(out.join(format!("{text}-{rep}")));
        }
        let median = |f: fn(&Fetch) -> f64| crate::spread(&fetches.iter().map(f).collect::<Vec<_>>()).0;
        let gib = size as f64 / f64::from(1u32 << 30);
        println!(
            "{text:>8} {:>10.1} {:>14.1} {:>16.2} {:>16.2} {:>9.1} / {:<9.1}",
            median(|f| f.mib_per_s),
            median(|f| f.file_write_mib_per_s),
            median(|f| f.receiver_cpu_s) / gib,
            median(|f| f.sender_cpu_s) / gib,
            median(|f| f.receiver_peak_mib),
            median(|f| f.sender_peak_mib),
        );
        json.push(serde_json::json!({ "size": text, "bytes": size, "fetches": fetches }));
    }
    Ok(json)
}

/// Runs the crossing job once and measures its one peer fetch.
fn fetch_once(mesh: &Mesh, size: u64, label: &str) -> Result<Fetch> {
    let file_write_mib_per_s = file_write_rate(&mesh.dir().join(format!("{label}.write")), size)?;
    let pids = mesh.node_pids();
    let before: Vec<Usage> = pids.iter().map(|&pid| Usage::of(pid, true)).collect::<Result<_>>()?;
    let size_arg = usize::try_from(size)?;
    let summary = mesh.run(label, &crate::mesh::crossing_job(size_arg, label), "p2p", "none")?;
    let after: Vec<Usage> = pids.iter().map(|&pid| Usage::of(pid, false)).collect::<Result<_>>()?;
    if count(&summary, "peer_fetches")? != 1 || count(&summary, "peer_bytes")? != size {
        bail!("run {label} was to move one object of {size} bytes between the nodes: {summary}");
    }
    let seconds = crate::mesh::millis(&summary, "peer_fetch_ms")? / 1e3;
    // The receiver is the node that ran the consumer: its cache holds both producers' objects.
    let held: Vec<u64> = (0..pids.len()).map(|i| mesh.cache_bytes(i)).collect();
    let (recv, send) = if held[0] >= held[1] { (0, 1) } else { (1, 0) };
    let cost = |i: usize| after[i].cpu_s - before[i].cpu_s;
    let peak = |i: usize| after[i].peak_mib - before[i].resident_mib;
    Ok(Fetch {
        mib_per_s: mib(size) / seconds.max(1e-6),
        file_write_mib_per_s,
        receiver_cpu_s: cost(recv),
        sender_cpu_s: cost(send),
        receiver_peak_mib: peak(recv),
        sender_peak_mib: peak(send),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// MiB/s of writing a new file of `size` bytes at `path` in blocks of [`BLOCK`] (then removed).
fn file_write_rate(path: &std::path::Path, size: u64) -> Result<f64> {
    use std::io::Write;
    let block: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
    let started = std::time::Instant::now();
    let mut file = std::fs::File::create(path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64);
        file.write_all(&block[..usize::try_from(n)?])?;
        left -= n;
    }
    drop(file);
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(mib(size) / seconds.max(1e-6))
}

/// A node process' CPU time and memory.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_s: f64,
    resident_mib: f64,
    peak_mib: f64,
}

impl Usage {
    /// Reads `pid`'s usage; `reset` starts a new peak from what it holds now.
    fn of(pid: u32, reset: bool) -> Result<Usage> {
        if reset {
            // 5: reset the peak resident set size to the present one (proc(5)).
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("cannot reset a node's peak memory")?;
        }
        let [utime, stime, ..] = crate::cpu_ticks(&pid.to_string())?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(Usage {
            cpu_s: (utime + stime) as f64 / 100.0,
            resident_mib: status_mib(&status, "VmRSS")?,
            peak_mib: status_mib(&status, "VmHWM")?,
        })
    }
}
