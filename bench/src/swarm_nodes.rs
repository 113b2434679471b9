//! One swarm process (`thunkmesh-bench swarm-nodes`, started by `swarm`): many synthetic node
//! sessions, each a real QUIC connection to the rendezvous that says hello as a node, takes
//! assignments and reports each one done (after `--work-ms`, if given) with an output id made
//! from the thunk's name, running nothing. Asked to upload, it says the object is stored.
//!
//! It prints `ready N` when N sessions were welcomed, and when its standard input closes it ends
//! the sessions, writes what it saw to `--record` (for the latency figures: when each task was
//! reported done, when each assignment arrived and which thunks it read) and prints its counts as
//! one JSON line. Every session shares one UDP socket per [`SESSIONS_PER_ENDPOINT`]: QUIC tells
//! connections apart by id, so thousands of sessions take a handful of file descriptors.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use thunkmesh_net::{Identity, Trust, client_config, connect, parse_fingerprint, reader, send_msg};
use thunkmesh_protocol::wire::{
    ALPN_RENDEZVOUS, Assignment, FromRendezvous, Hello, NodeHello, OutputValue, PROTOCOL_VERSION, Role, Stored,
    TaskDone, ToRendezvous, TransferStats,
};
use thunkmesh_protocol::{Id, Ref};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

/// Sessions that share one endpoint (one UDP socket).
pub const SESSIONS_PER_ENDPOINT: usize = 500;

/// Handshakes in flight at once per process: the rendezvous admits at most 32 connections that
/// have not said hello yet, for all processes together.
const HANDSHAKES: usize = 6;

#[derive(Debug, clap::Args)]
pub struct SwarmNodesArgs {
    /// The rendezvous (ip:port).
    #[arg(long)]
    rendezvous: SocketAddr,
    /// Its certificate's fingerprint.
    #[arg(long)]
    fingerprint: String,
    /// Sessions to open.
    #[arg(long)]
    sessions: usize,
    /// Slots each session says it has.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Name prefix of the sessions.
    #[arg(long, default_value = "swarm")]
    name: String,
    /// Milliseconds a task takes before it is reported done.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Where to write the timing records.
    #[arg(long)]
    record: PathBuf,
}

/// What the sessions of this process saw.
#[derive(Default)]
struct Tally {
    welcomed: AtomicU64,
    assigned: AtomicU64,
    done: AtomicU64,
    uploads: AtomicU64,
    /// Sessions whose connection ended before they were asked to stop.
    lost: AtomicU64,
    records: Mutex<Records>,
}

/// Times in microseconds since the epoch (one clock for every process of the machine).
#[derive(Default)]
struct Records {
    /// (thunk key, when its done report was sent).
    done: Vec<(u64, u64)>,
    /// (when the assignment arrived, how many producer keys follow in `producers`).
    assigned: Vec<(u64, u32)>,
    producers: Vec<u64>,
}

/// A thunk's key in the records: the first 8 bytes of its id's hash.
pub fn key(id: &Id) -> u64 {
    u64::from_le_bytes(id.hash[..8].try_into().expect("8 bytes of 32"))
}

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn main(args: &SwarmNodesArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: &SwarmNodesArgs) -> Result<()> {
    let trust = Trust::Pinned(parse_fingerprint(&args.fingerprint)?);
    let config = client_config(&trust, ALPN_RENDEZVOUS)?;
    let tally = Arc::new(Tally::default());
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut sessions = JoinSet::new();
    let mut endpoints = Vec::new();
    for i in 0..args.sessions {
        if i % SESSIONS_PER_ENDPOINT == 0 {
            let bind = "127.0.0.1:0".parse().expect("an address");
            endpoints.push(thunkmesh_net::endpoint(bind, &Identity::generate()?)?);
        }
        let endpoint = endpoints.last().expect("one was made").clone();
        let session = Session {
            name: format!("{}-{i}", args.name),
            slots: args.slots,
            work: Duration::from_millis(args.work_ms),
            tally: tally.clone(),
        };
        let (config, handshakes, stop, addr) = (config.clone(), handshakes.clone(), stop.clone(), args.rendezvous);
        sessions.spawn(async move { session.run(&endpoint, config, addr, &handshakes, stop).await });
    }
    let ready = wait_welcomed(&tally, args.sessions, &mut sessions).await;
    println!("ready {ready}");
    std::io::stdout().flush()?;
    // Standard input closing is the signal to stop.
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await??;
    let _ = stop_tx.send(true);
    while let Some(done) = sessions.join_next().await {
        if let Ok(Err(e)) = done {
            eprintln!("swarm session: {e:#}");
        }
    }
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"swarm done");
    }
    write_records(&tally, &args.record).await?;
    let counts = serde_json::json!({
        "sessions": args.sessions,
        "welcomed": tally.welcomed.load(Ordering::Relaxed),
        "lost": tally.lost.load(Ordering::Relaxed),
        "assigned": tally.assigned.load(Ordering::Relaxed),
        "done": tally.done.load(Ordering::Relaxed),
        "uploads": tally.uploads.load(Ordering::Relaxed),
    });
    println!("{counts}");
    Ok(())
}

/// Waits until every session was welcomed or ended; returns how many were welcomed.
async fn wait_welcomed(tally: &Tally, sessions: usize, set: &mut JoinSet<Result<()>>) -> u64 {
    let mut ended = 0;
    loop {
        let welcomed = tally.welcomed.load(Ordering::Relaxed);
        if welcomed as usize + ended >= sessions {
            return welcomed;
        }
        tokio::select! {
            Some(done) = set.join_next() => {
                ended += 1;
                if let Ok(Err(e)) = done {
                    eprintln!("swarm session: {e:#}");
                }
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

async fn write_records(tally: &Tally, path: &PathBuf) -> Result<()> {
    let records = tally.records.lock().await;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| path.display().to_string())?);
    let put = |out: &mut std::io::BufWriter<std::fs::File>, v: u64| out.write_all(&v.to_le_bytes());
    put(&mut out, records.done.len() as u64)?;
    for &(k, t) in &records.done {
        put(&mut out, k)?;
        put(&mut out, t)?;
    }
    put(&mut out, records.assigned.len() as u64)?;
    let mut at = 0;
    for &(t, n) in &records.assigned {
        put(&mut out, t)?;
        put(&mut out, u64::from(n))?;
        for &p in &records.producers[at..at + n as usize] {
            put(&mut out, p)?;
        }
        at += n as usize;
    }
    out.flush()?;
    Ok(())
}

struct Session {
    name: String,
    slots: u32,
    work: Duration,
    tally: Arc<Tally>,
}

impl Session {
    async fn run(
        self,
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        handshakes: &Semaphore,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<()> {
        let (conn, mut send, recv) = {
            let _permit = handshakes.acquire().await?;
            let conn = connect(endpoint, config, addr, "localhost").await?;
            let (mut send, recv) = conn.open_bi().await?;
            let hello = NodeHello {
                name: self.name.clone(),
                slots: self.slots,
                fingerprint: [0; 32],
                local: endpoint.local_addr()?.to_string(),
                isolation: "none (synthetic swarm node)".into(),
                holds: 0,
            };
            let hello = Hello { version: PROTOCOL_VERSION, token: crate::mesh::TOKEN.into(), role: Role::Node(hello) };
            send_msg(&mut send, &hello).await?;
            (conn, send, recv)
        };
        let (_reader, mut messages) = reader::<FromRendezvous>(recv);
        let mut replies = FuturesUnordered::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(reply) = replies.next() => self.reply(&mut send, reply).await?,
                msg = messages.recv() => match msg {
                    Some(Ok(msg)) => {
                        if let Some(reply) = self.answer(msg).await {
                            let work = self.work;
                            replies.push(async move {
                                tokio::time::sleep(work).await;
                                reply
                            });
                        }
                    }
                    Some(Err(_)) | None => {
                        self.tally.lost.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                },
            }
        }
        conn.close(0u32.into(), b"swarm done");
        Ok(())
    }

    /// What to answer a message with (after the work time), if anything, and for a task the key
    /// of its thunk (its done time is recorded when the answer is sent).
    async fn answer(&self, msg: FromRendezvous) -> Option<(ToRendezvous, Option<u64>)> {
        match msg {
            FromRendezvous::Welcome { .. } => {
                self.tally.welcomed.fetch_add(1, Ordering::Relaxed);
                None
            }
            FromRendezvous::Assign(a) => Some(self.assigned(a).await),
            FromRendezvous::Upload(u) => {
                self.tally.uploads.fetch_add(1, Ordering::Relaxed);
                let stored =
                    Stored { job: u.job, blob: u.blob, error: None, stats: TransferStats::default(), bytes: None };
                Some((ToRendezvous::Stored(stored), None))
            }
            _ => None,
        }
    }

    async fn assigned(&self, a: Assignment) -> (ToRendezvous, Option<u64>) {
        let arrived = now_micros();
        self.tally.assigned.fetch_add(1, Ordering::Relaxed);
        let producers: Vec<u64> = a
            .thunk
            .refs()
            .filter_map(|r| if let Ref::Output { thunk, .. } = r { Some(key(thunk)) } else { None })
            .collect();
        {
            let mut records = self.tally.records.lock().await;
            records.assigned.push((arrived, producers.len() as u32));
            records.producers.extend(producers);
        }
        let outputs = a
            .thunk
            .outputs
            .iter()
            .map(|name| {
                let id = Id::blob(*blake3::hash(format!("{}#{name}", a.name).as_bytes()).as_bytes(), 1024);
                (name.clone(), OutputValue::Blob(id))
            })
            .collect();
        let done = TaskDone { task: a.task, outputs, stats: TransferStats::default() };
        (ToRendezvous::Done(done), Some(key(&a.thunk.id())))
    }

    async fn reply(&self, send: &mut quinn::SendStream, (reply, thunk): (ToRendezvous, Option<u64>)) -> Result<()> {
        send_msg(send, &reply).await?;
        if let Some(k) = thunk {
            self.tally.done.fetch_add(1, Ordering::Relaxed);
            self.tally.records.lock().await.done.push((k, now_micros()));
        }
        Ok(())
    }
}
