//! `thunkmesh-bench nat`: how long one fetch between two nodes behind NATs takes, by the path it
//! takes: directly (the first fetch also sets the path up through both NATs; later ones reuse
//! it), through the rendezvous' relay, or through storage. It builds real NATs with
//! `thunkmesh-netlab` (root needed), runs a rendezvous on the public side and a node behind each
//! NAT, and runs a two-step job whose one small intermediate must cross between the nodes,
//! reading the fetch times the nodes report in each run's summary.

use std::path::PathBuf;

use anyhow::{Result, bail};
use thunkmesh_netlab::{Lab, Mapping};

use crate::mesh::{Mesh, count, millis};

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
            let places = [(&ha).into(), (&hb).into()];
            let mesh = Mesh::start(&binary, &(&lab.public()).into(), &places, 1, &out.join(format!("cone-{rep}")))?;
            let times = fetch_times(&mesh, 2, args.size, "p2p", "none", "peer")?;
            first.push(times[0]);
            reused.push(times[1]);
        }
        rows.push(("direct, first fetch (sets the path up)".into(), first));
        rows.push(("direct, path reused".into(), reused));
        let mesh = Mesh::start(&binary, &(&lab.public()).into(), &[(&ha).into(), (&hb).into()], 1, &out.join("cone"))?;
        for profile in ["none", "s3-express", "s3-standard"] {
            let stored = fetch_times(&mesh, args.reps, args.size, "storage", profile, "storage")?;
            rows.push((format!("through storage ({profile}), one read"), stored));
        }
    }
    {
        let mut lab = Lab::new("br")?;
        let (mut a, mut b) = (lab.nat(Mapping::EndpointIndependent)?, lab.nat(Mapping::Symmetric)?);
        let (ha, hb) = (lab.host_behind(&mut a)?, lab.host_behind(&mut b)?);
        let mesh =
            Mesh::start(&binary, &(&lab.public()).into(), &[(&ha).into(), (&hb).into()], 1, &out.join("symmetric"))?;
        let relayed = fetch_times(&mesh, args.reps, args.size, "p2p", "none", "relay")?;
        rows.push(("relayed (cone and symmetric NAT)".into(), relayed));
    }
    println!("\nfetch of a {}-byte object between two nodes behind NATs, ms per fetch", args.size);
    println!("{:<42} {:>8} {:>8} {:>8} {:>5}", "path", "median", "min", "max", "runs");
    let mut json = Vec::new();
    for (path, times) in &rows {
        let (median, min, max) = crate::spread(times);
        println!("{path:<42} {median:>8.2} {min:>8.2} {max:>8.2} {:>5}", times.len());
        json.push(serde_json::json!({ "path": path, "ms": times, "median_ms": median }));
    }
    let report = serde_json::json!({ "size": args.size, "reps": args.reps, "rows": json });
    std::fs::write(out.join("nat.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", out.join("nat.json").display());
    Ok(())
}

/// Runs the crossing job with `size`-byte objects `reps` times in `mode`, storage under latency
/// `profile`; returns the time of each fetch of `kind` (peer, relay, storage), in ms.
fn fetch_times(mesh: &Mesh, reps: usize, size: usize, mode: &str, profile: &str, kind: &str) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for rep in 0..reps {
        // Each run's objects differ, so no node already holds what it needs.
        let label = format!("{mode}-{profile}-{rep}");
        let summary = mesh.run(&label, &crate::mesh::crossing_job(size, &label), mode, profile)?;
        let (count, ms) = match kind {
            "peer" => (count(&summary, "peer_fetches")?, millis(&summary, "peer_fetch_ms")?),
            "relay" => (count(&summary, "relayed_fetches")?, millis(&summary, "relay_fetch_ms")?),
            // Storage mode reads both of the consumer's inputs from storage.
            _ => (2, millis(&summary, "storage_read_ms")?),
        };
        if count == 0 {
            bail!("run {rep} in {mode} mode made no {kind} fetch: {summary}");
        }
        times.push(ms / count as f64);
    }
    Ok(times)
}
