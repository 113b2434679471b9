//! `thunkmesh-bench footprint`: what a node costs before it does any work, the two figures that
//! decide a Lambda worker's cold-start cost: the time from starting the process to its first
//! registration with a rendezvous (key generation, QUIC handshake, NAT classification), and its
//! resident memory once registered and idle.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Options of `footprint`.
#[derive(Debug, clap::Args)]
pub struct FootprintArgs {
    /// Nodes started, one after another.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// The thunkmesh binary [default: `thunkmesh` next to this program].
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
}

/// The token of the benchmark's rendezvous.
const TOKEN: &str = "footprint-benchmark-token";

pub fn main(args: &FootprintArgs) -> Result<()> {
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let state = tempfile::tempdir()?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let mut rendezvous = Command::new(&binary)
        .args(["rendezvous", "--listen", &addr, "--state-dir"])
        .arg(state.path().join("rdv"))
        .env("THUNKMESH_TOKEN", TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the rendezvous")?;
    let mut lines = BufReader::new(rendezvous.stderr.take().context("the rendezvous' stderr")?).lines();
    let fingerprint = crate::read_fingerprint(&mut lines)?;
    let drain = std::thread::spawn(move || lines.for_each(drop));
    let measured =
        (0..args.reps).map(|i| start_node(&binary, &addr, &fingerprint, &state.path().join(format!("n{i}"))));
    let results: Result<Vec<(f64, f64)>> = measured.collect();
    let _ = rendezvous.kill();
    let _ = rendezvous.wait();
    let _ = drain.join();
    let (mut starts, mut rss): (Vec<f64>, Vec<f64>) = results?.into_iter().unzip();
    starts.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    println!("{:<44} {:>8} {:>8} {:>8}", "node, on loopback", "median", "min", "max");
    let row = |label: &str, v: &[f64]| println!("{label:<44} {:>8.1} {:>8.1} {:>8.1}", median(v), v[0], v[v.len() - 1]);
    row("start to registered (ms)", &starts);
    row("resident memory, registered and idle (MiB)", &rss);
    Ok(())
}

/// Starts one node; returns ms until it logged its registration and its resident MiB 1 s later.
fn start_node(binary: &PathBuf, addr: &str, fingerprint: &str, cache: &std::path::Path) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut node = Command::new(binary)
        .args(["node", "--rendezvous", addr, "--bind", "127.0.0.1:0", "--fingerprint", fingerprint, "--cache-dir"])
        .arg(cache)
        .env("THUNKMESH_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start a node")?;
    let stderr = node.stderr.take().context("the node's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let registered = loop {
        let Some(line) = lines.next() else { bail!("the node exited before registering") };
        if line?.contains("registered") {
            break started.elapsed();
        }
    };
    let drain = std::thread::spawn(move || lines.for_each(drop));
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.id()))?;
    let _ = node.kill();
    let _ = node.wait();
    let _ = drain.join();
    Ok((registered.as_secs_f64() * 1e3, resident_mib(&status)?))
}

/// `VmRSS` of a `/proc/PID/status`, in MiB.
fn resident_mib(status: &str) -> Result<f64> {
    status_mib(status, "VmRSS")
}

/// A memory `field` of a `/proc/PID/status` (`VmRSS`, `VmHWM`), in MiB.
pub fn status_mib(status: &str, field: &str) -> Result<f64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
        .with_context(|| format!("no {field} in /proc status"))?;
    let kib: f64 = line.split_whitespace().nth(1).with_context(|| format!("{field} has no value"))?.parse()?;
    Ok(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tthunkmesh\nVmPeak:\t  90000 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(super::resident_mib(status).expect("parsed"), 12.0);
        assert!(super::resident_mib("Name:\tx\n").is_err());
    }
}
