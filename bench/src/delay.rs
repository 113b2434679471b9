//! A delay line for links this machine's kernel cannot emulate (it has no `netem` qdisc): a
//! process attached to a TUN device in a router namespace (`thunkmesh_netlab::Lab::wire`) reads
//! every packet forwarded between two hosts, holds it for a one-way delay after serialising it at
//! the link's rate behind the packets before it (a queue of at most [`QUEUE`] of sending time;
//! later packets are dropped, as a router's buffer does), and writes it back for the kernel to
//! deliver. Started by `transfer --link` as `thunkmesh-bench delay-line` inside the router.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Longest a packet may wait for its turn on the link before it is dropped.
const QUEUE: Duration = Duration::from_millis(50);

/// Options of the hidden `delay-line` subcommand.
#[derive(Debug, clap::Args)]
pub struct DelayArgs {
    /// The TUN device to attach to.
    #[arg(long, default_value = "tun0")]
    dev: String,
    /// One-way delay added to every packet, in microseconds.
    #[arg(long)]
    delay_us: u64,
    /// The link's rate, in megabits per second.
    #[arg(long)]
    rate_mbit: u64,
}

pub fn main(args: &DelayArgs) -> Result<()> {
    let tun = attach(&args.dev)?;
    let mut writer = tun.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let delay = Duration::from_micros(args.delay_us);
    let bytes_per_second = args.rate_mbit as f64 * 1e6 / 8.0;
    let sender = std::thread::spawn(move || -> Result<()> {
        for (release, packet) in rx {
            let now = Instant::now();
            if release > now {
                std::thread::sleep(release - now);
            }
            // A packet the kernel no longer routes is lost, as on a real link.
            let _ = writer.write(&packet);
        }
        Ok(())
    });
    let mut reader = tun;
    let mut link_free = Instant::now();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = reader.read(&mut buf).context("reading the TUN device")?;
        let now = Instant::now();
        let start = link_free.max(now);
        if start - now > QUEUE {
            continue;
        }
        link_free = start + Duration::from_secs_f64(n as f64 / bytes_per_second);
        if tx.send((link_free + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    sender.join().map_err(|_| anyhow::anyhow!("the delay line's sender panicked"))?
}

/// Opens `/dev/net/tun` attached to the existing device `dev` (IP packets, no extra header).
fn attach(dev: &str) -> Result<std::fs::File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").context("/dev/net/tun")?;
    if dev.len() >= libc::IFNAMSIZ {
        bail!("device name `{dev}` is too long");
    }
    // struct ifreq: the name, then the flags (a union whose first member is a short).
    let mut request = [0u8; 40];
    request[..dev.len()].copy_from_slice(dev.as_bytes());
    request[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `request` is large enough for.
    #[allow(unsafe_code)]
    let done = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    if done != 0 {
        bail!("cannot attach to {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(file)
}
