//! Running a loaded job on a mesh: consult the memo cache, upload the inputs storage lacks (in
//! p2p mode the small ones ride with the job instead), submit, follow progress, record
//! reductions as they arrive, and fetch the targets.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use thunkmesh_net::{Identity, NetError, Trust, client_config, connect, recv_msg, send_msg};
use thunkmesh_protocol::inputs::share;
use thunkmesh_protocol::job::NamedThunk;
use thunkmesh_protocol::submit::{ThunkTooLarge, check_fits, pieces};
use thunkmesh_protocol::wire::{
    ALPN_RENDEZVOUS, CARRIED_JOB_BYTES, CARRIED_VALUE_BYTES, Carried, Disagreement, ErrorCode, FromRendezvous, Hello,
    JobOutcome, MeshStatus, Mode, PROTOCOL_VERSION, Progress, Reduction, Resolution, Role, Submission, SubmittedThunk,
    TaskReport, ToRendezvous, WireError,
};
use thunkmesh_protocol::{Id, Ref};
use thunkmesh_store::{MemoRecord, Reductions, Store, StoreError};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::load::LoadedJob;
use crate::summary::Summary;

/// Storage requests in flight at once while uploading.
const PARALLEL_REQUESTS: usize = 64;

/// How often a [`Reporter`] hears from a running job when nothing changed.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection to the rendezvous failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The rendezvous refused the client.
    #[error("the rendezvous refused this client: {0}")]
    Refused(WireError),
    /// A thunk (or the job) failed.
    #[error("job failed: {0}")]
    JobFailed(WireError),
    /// A thunk of the job does not fit in one message to the rendezvous.
    #[error(transparent)]
    TooLarge(#[from] ThunkTooLarge),
    /// The job is over a limit of the rendezvous.
    #[error("{0}")]
    OverLimit(WireError),
    /// The rendezvous went away before the job ended.
    #[error(
        "the rendezvous closed the connection before the job ended (it stopped or restarted); a rerun reuses every result the memo cache recorded"
    )]
    Disconnected,
    /// An input file's bytes are no longer those the job was loaded with.
    #[error("input file {path} changed after the job was read; run again")]
    InputChanged {
        /// The file.
        path: PathBuf,
    },
    /// The local nodes all exited.
    #[error("all local nodes exited; their logs are in {0}")]
    NodesExited(String),
    /// A target could not be written to the output directory.
    #[error("cannot write target {path}: {reason}")]
    Output {
        /// The target file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where to send the job and how to trust it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the rendezvous.
    pub rendezvous: String,
    /// Name to check in its certificate (CA trust only).
    pub server_name: String,
    /// How to trust it.
    pub trust: Trust,
    /// The mesh's secret.
    pub token: String,
}

/// Shows progress on a terminal; silent elsewhere.
pub trait Reporter: Send {
    /// A phase before the job runs.
    fn phase(&mut self, what: &str);
    /// Counts from the rendezvous.
    fn progress(&mut self, p: Progress);
    /// Called every [`TICK`] while the job runs, whether or not counts changed.
    fn tick(&mut self) {}
    /// Whether it wants a [`TaskReport`] of each task (`--timings`, `--trace`).
    fn wants_tasks(&self) -> bool {
        false
    }
    /// Tasks that ended, when it wants them.
    fn tasks(&mut self, _reports: Vec<TaskReport>) {}
}

/// What the memo cache said about the job.
#[derive(Debug, Default)]
struct MemoScan {
    reductions: Vec<Reduction>,
    stored: BTreeSet<Id>,
    values_needed: BTreeSet<Id>,
}

/// How a job uses the memo cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Memo {
    /// Reuse recorded results and record new ones (one storage request per executed thunk).
    #[default]
    On,
    /// Reuse recorded results, record nothing (a read-only cache, for instance in CI).
    Read,
    /// Neither: every needed thunk runs, and storage sees no memo request.
    Off,
}

/// One job to run: what, with which storage and mode, where the targets go.
#[derive(Debug, Clone, Copy)]
pub struct JobRun<'a> {
    /// The loaded job.
    pub job: &'a LoadedJob,
    /// Its storage.
    pub store: &'a Store,
    /// How intermediates travel.
    pub mode: Mode,
    /// How the memo cache is used.
    pub memo: Memo,
    /// Fail rather than move an object between nodes any way but directly.
    pub require_direct: bool,
    /// A failed thunk does not end the job: every thunk that does not depend on it still runs,
    /// the targets that could be made are written, and the summary names each failure.
    pub keep_going: bool,
    /// One in how many results is run again on another node and compared before it is final
    /// (0: none, 1: all).
    pub verify: u32,
    /// The directory the targets are written to.
    pub out_dir: &'a Path,
}

/// Runs a job on the mesh at `target`; `started` is when the user's command started (for
/// `wall_ms`). A job that failed because one of its own inputs was not in storage after all (a
/// node found the stored copy corrupt and removed it, or it went missing) is submitted again
/// after the next upload puts the right bytes there, once for each such input: what completed
/// is in the memo cache and does not run again.
pub async fn run_job(
    run: JobRun<'_>,
    target: &Target,
    reporter: &mut dyn Reporter,
    started: Instant,
) -> Result<Summary, RunError> {
    let mut uploaded_again = BTreeSet::new();
    loop {
        match run_once(run, target, reporter, started).await {
            Err(RunError::JobFailed(e)) if let Some(lost) = lost_value(&e, run.job, &uploaded_again) => {
                reporter.phase(&format!("input {lost} was not in storage after all: uploading it again"));
                uploaded_again.insert(lost);
            }
            other => return other,
        }
    }
}

/// The job's own input that `e` says no node and no store has (and that was not uploaded again
/// already).
fn lost_value(e: &WireError, job: &LoadedJob, uploaded_again: &BTreeSet<Id>) -> Option<Id> {
    if e.code != ErrorCode::InputUnavailable {
        return None;
    }
    job.values.keys().copied().find(|id| !uploaded_again.contains(id) && e.message.contains(&id.to_string()))
}

async fn run_once(
    run: JobRun<'_>,
    target: &Target,
    reporter: &mut dyn Reporter,
    started: Instant,
) -> Result<Summary, RunError> {
    let JobRun { job, store, mode, memo, require_direct, keep_going, verify, out_dir } = run;
    let job_started = Instant::now();
    reporter.phase("consulting the memo cache");
    let scan = scan_memo(job, store, memo).await?;
    let mut submission = Submission {
        store: store.url().to_owned(),
        mode,
        thunks: job
            .job
            .thunks
            .iter()
            .map(|t| SubmittedThunk { name: t.name.clone(), thunk: t.thunk.clone() })
            .collect(),
        targets: job.job.targets.values().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
        // The most it can say is stored: every value (the uploads below can only say less).
        stored: job.values.keys().copied().chain(scan.stored.iter().copied()).collect(),
        memo: scan.reductions.clone(),
        require_direct,
        keep_going,
        verify,
        verify_salt: rand::random(),
        report_tasks: reporter.wants_tasks(),
        carried: match mode {
            Mode::P2p => carry(job, &scan).await?,
            Mode::Storage => Vec::new(),
        },
    };
    share(submission.thunks.iter_mut().map(|t| &mut t.thunk));
    check_fits(&submission.thunks)?;
    reporter.phase("uploading inputs");
    let carried: HashSet<Id> = submission.carried.iter().map(|c| c.blob).collect();
    let uploaded = upload_values(job, store, &scan, &carried).await?;
    submission.stored = uploaded.into_iter().chain(scan.stored).collect();
    reporter.phase("waiting for nodes");
    let mut log = MemoLog::new((memo == Memo::On).then(|| store.clone()));
    let outcome = submit(&submission, &mut log, target, reporter).await;
    // The last batch of memo entries goes to storage while the targets come out of it; entries
    // of what completed are recorded even when the job failed, so a rerun resumes.
    let targets = async {
        match &outcome {
            Ok(outcome) => write_targets(job, store, outcome, out_dir).await.map(Some),
            Err(_) => Ok(None),
        }
    };
    let (targets, ()) = futures::join!(targets, log.finish());
    let outcome = outcome?;
    let targets = targets?.unwrap_or_default();
    let summary = Summary::new(&outcome, store.stats(), targets, started.elapsed(), job_started.elapsed());
    Ok(Summary { keep_going, ..summary })
}

/// Reads the memo cache and keeps the entries that still hold: a thunk's entry is reused only
/// if its inputs resolve, through the entries of the thunks it reads, to the blobs it ran on (so
/// an entry forgotten, say a lying node's, takes everything downstream of it with it). A target
/// whose entry holds and whose blob is in storage needs nothing upstream.
async fn scan_memo(job: &LoadedJob, store: &Store, memo: Memo) -> Result<MemoScan, StoreError> {
    let by_id: HashMap<Id, &NamedThunk> = job.job.thunks.iter().map(|t| (t.id, t)).collect();
    let records = match memo {
        Memo::Off => Reductions::new(),
        Memo::On | Memo::Read => store.batched_reductions().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the memo cache's batches; they count as absent");
            Reductions::new()
        }),
    };
    let holding = entries_that_hold(&by_id, &records);
    let mut wanted: BTreeMap<Id, BTreeSet<String>> = BTreeMap::new();
    let mut scan = MemoScan::default();
    for r in job.job.targets.values() {
        match r {
            Ref::Output { thunk, name } => {
                wanted.entry(*thunk).or_default().insert(name.clone());
            }
            Ref::Blob(value) => {
                scan.values_needed.insert(*value);
            }
        }
    }
    let mut unsatisfied = Vec::new();
    for (id, names) in &wanted {
        let satisfied = match holding.get(id) {
            Some(r) => targets_stored(r, names, store, &mut scan.stored).await?,
            None => false,
        };
        if !satisfied {
            unsatisfied.push(*id);
        }
    }
    let upstream = upstream_of(&unsatisfied, &by_id, &mut scan.values_needed);
    let reused = wanted.keys().chain(&upstream).collect::<BTreeSet<_>>();
    scan.reductions = reused.into_iter().filter_map(|id| holding.get(id).cloned()).collect();
    Ok(scan)
}

/// The thunks of the job whose memo entries hold: each output the thunk declares is there, and
/// its inputs, resolved through the entries that hold, digest to what the entry ran on.
fn entries_that_hold(by_id: &HashMap<Id, &NamedThunk>, records: &Reductions) -> HashMap<Id, Reduction> {
    let mut holding: HashMap<Id, Reduction> = HashMap::new();
    let mut judged: HashSet<Id> = HashSet::new();
    for &root in by_id.keys() {
        // Depth first, a thunk judged after every thunk it reads (no recursion: chains are long).
        let mut stack = vec![(root, false)];
        while let Some((id, upstream_judged)) = stack.pop() {
            if judged.contains(&id) {
                continue;
            }
            let (Some(thunk), Some(record)) = (by_id.get(&id), records.get(&id)) else {
                judged.insert(id);
                continue;
            };
            if !upstream_judged {
                stack.push((id, true));
                stack.extend(thunk.thunk.refs().filter_map(|r| match r {
                    Ref::Output { thunk, .. } if !judged.contains(thunk) => Some((*thunk, false)),
                    _ => None,
                }));
                continue;
            }
            judged.insert(id);
            if let Some(reduction) = holds(thunk, record, &holding) {
                holding.insert(id, reduction);
            }
        }
    }
    holding
}

/// `record` as the reduction of `thunk`, if it holds given the entries that hold upstream.
fn holds(thunk: &NamedThunk, record: &MemoRecord, holding: &HashMap<Id, Reduction>) -> Option<Reduction> {
    let names: Vec<&String> = record.outputs.iter().map(|(n, _)| n).collect();
    if names != thunk.thunk.outputs.iter().collect::<Vec<_>>() {
        warn!(thunk = %thunk.name, "ignoring a memo entry whose outputs do not match the thunk");
        return None;
    }
    let mut resolved = Vec::new();
    for r in thunk.thunk.refs() {
        resolved.push(match r {
            Ref::Blob(blob) => *blob,
            Ref::Output { thunk, name } => {
                let upstream = holding.get(thunk)?;
                upstream.outputs.iter().find(|(n, _)| n == name)?.1
            }
        });
    }
    (record.inputs? == Id::digest_of(&resolved)).then(|| Reduction { thunk: thunk.id, outputs: record.outputs.clone() })
}

/// The thunks `roots` depend on, directly or not, roots included; records the blobs they read.
fn upstream_of(roots: &[Id], by_id: &HashMap<Id, &NamedThunk>, values: &mut BTreeSet<Id>) -> BTreeSet<Id> {
    let mut seen: BTreeSet<Id> = roots.iter().copied().collect();
    let mut stack: Vec<Id> = roots.to_vec();
    while let Some(id) = stack.pop() {
        let Some(thunk) = by_id.get(&id) else { continue };
        for r in thunk.thunk.refs() {
            match r {
                Ref::Blob(b) => {
                    values.insert(*b);
                }
                Ref::Output { thunk, .. } if seen.insert(*thunk) => stack.push(*thunk),
                Ref::Output { .. } => {}
            }
        }
    }
    seen
}

/// Whether every wanted output of a memoized thunk is in storage (records those that are).
async fn targets_stored(
    r: &Reduction,
    wanted: &BTreeSet<String>,
    store: &Store,
    stored: &mut BTreeSet<Id>,
) -> Result<bool, StoreError> {
    for (name, blob) in r.outputs.iter().filter(|(n, _)| wanted.contains(n)) {
        if !store.has_blob(*blob).await? {
            debug!(output = %name, "memoized target is not in storage");
            return Ok(false);
        }
        stored.insert(*blob);
    }
    Ok(true)
}

/// The values thunks may read that the job carries itself rather than through storage (p2p
/// mode): each of at most `CARRIED_VALUE_BYTES`, together at most `CARRIED_JOB_BYTES`, the
/// smallest first, none that is itself a target (a target must be in storage).
async fn carry(job: &LoadedJob, scan: &MemoScan) -> Result<Vec<Carried>, RunError> {
    let targets: HashSet<&Id> =
        job.job.targets.values().filter_map(|r| if let Ref::Blob(b) = r { Some(b) } else { None }).collect();
    let mut small: Vec<(Id, &PathBuf)> = job
        .values
        .iter()
        .filter(|(id, _)| scan.values_needed.contains(id) && id.size <= CARRIED_VALUE_BYTES && !targets.contains(id))
        .map(|(id, p)| (*id, p))
        .collect();
    small.sort_by_key(|(id, _)| id.size);
    let mut total = 0;
    let mut carried = Vec::new();
    for (blob, path) in small.into_iter().take_while(|(id, _)| {
        total += id.size;
        total <= CARRIED_JOB_BYTES
    }) {
        let bytes = tokio::fs::read(path).await.map_err(|error| StoreError::Local { path: path.clone(), error })?;
        let value = Carried { blob, bytes };
        if !value.is_intact() {
            return Err(RunError::InputChanged { path: path.clone() });
        }
        carried.push(value);
    }
    Ok(carried)
}

/// Uploads the values thunks may read that storage lacks and the job does not carry (asking
/// storage, never an index).
async fn upload_values(
    job: &LoadedJob,
    store: &Store,
    scan: &MemoScan,
    carried: &HashSet<Id>,
) -> Result<Vec<Id>, StoreError> {
    let needed: Vec<(Id, &PathBuf)> = job
        .values
        .iter()
        .filter(|(id, _)| scan.values_needed.contains(id) && !carried.contains(id))
        .map(|(id, p)| (*id, p))
        .collect();
    let uploads = futures::stream::iter(needed)
        .map(|(id, path)| async move {
            if !store.has_blob(id).await? {
                store.put_file(id, path).await?;
            }
            Ok::<Id, StoreError>(id)
        })
        .buffer_unordered(PARALLEL_REQUESTS);
    uploads.collect::<Vec<_>>().await.into_iter().collect()
}

/// Submits the job and follows it; reductions go to `log`.
async fn submit(
    sub: &Submission,
    log: &mut MemoLog,
    target: &Target,
    reporter: &mut dyn Reporter,
) -> Result<JobOutcome, RunError> {
    let (mut session, recv) = Session::open(target).await?;
    // The job goes in pieces while the answers are read: a job refused for its size stops being
    // sent at once.
    let send = async {
        for frame in pieces(sub) {
            session.send.write_all(&frame?).await.map_err(NetError::from)?;
        }
        debug!(thunks = sub.thunks.len(), "job sent");
        std::future::pending::<Result<JobOutcome, RunError>>().await
    };
    let result = tokio::select! {
        sent = send => sent,
        followed = follow(recv, log, reporter) => followed,
    };
    session.close();
    result
}

/// Memo entries pile up here and are written in batches (`Store::put_reductions`): when
/// [`MEMO_BATCH`] are waiting, every [`MEMO_FLUSH`] while the job runs, and when it ends, failed
/// or not. A client that dies mid-job loses the entries still waiting: at most that many
/// seconds' or entries' worth of thunks run again next time.
struct MemoLog {
    store: Option<Store>,
    pending: Vec<(Id, MemoRecord)>,
    writes: JoinSet<Result<(), StoreError>>,
    /// Nodes a majority outvoted in this job: what they produced is forgotten at the end.
    outvoted: BTreeSet<[u8; 32]>,
}

/// Entries that make a batch write at once.
pub const MEMO_BATCH: usize = 512;

/// Longest a recorded entry waits for its batch while the job runs.
pub const MEMO_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

impl MemoLog {
    /// A log writing to `store` (`None`: the memo cache is not written).
    fn new(store: Option<Store>) -> MemoLog {
        MemoLog { store, pending: Vec::new(), writes: JoinSet::new(), outvoted: BTreeSet::new() }
    }

    /// Writes what is waiting and waits for every write; then forgets every entry of the nodes
    /// that were outvoted.
    async fn finish(&mut self) {
        self.flush();
        while let Some(done) = self.writes.join_next().await {
            if let Ok(Err(e)) = done {
                warn!(error = %e, "could not record memo entries");
            }
        }
        let (Some(store), false) = (&self.store, self.outvoted.is_empty()) else { return };
        let outvoted = &self.outvoted;
        match store.forget_reductions(|r| r.producer.is_some_and(|p| outvoted.contains(&p))).await {
            Ok(n) => warn!("forgot {n} memo entries produced by the outvoted node(s)"),
            Err(e) => warn!(error = %e, "could not forget the outvoted nodes' memo entries"),
        }
    }

    fn record(&mut self, resolution: Resolution) {
        if self.store.is_none() {
            return;
        }
        let Resolution { reduction, inputs, producer, .. } = resolution;
        let producer = (producer != [0; 32]).then_some(producer);
        let record = MemoRecord { outputs: reduction.outputs, inputs: Some(inputs), producer };
        self.pending.push((reduction.thunk, record));
        if self.pending.len() >= MEMO_BATCH {
            self.flush();
        }
    }

    /// A checked result differed: outvoted nodes are remembered, and both cases are said.
    fn disagreed(&mut self, d: Disagreement) {
        let hex = |nodes: &[[u8; 32]]| nodes.iter().map(hex::encode).collect::<Vec<_>>().join(", ");
        if !d.outvoted.is_empty() {
            warn!(
                thunk = %d.thunk,
                "node(s) {} gave a result for this thunk that the other nodes did not: the job fails and \
                 every memo entry they produced is forgotten; keep them out with \
                 `thunkmesh rendezvous --forbid-node FINGERPRINT`",
                hex(&d.outvoted)
            );
            self.outvoted.extend(d.outvoted);
        }
        if !d.undecided.is_empty() {
            warn!(
                thunk = %d.thunk,
                "nodes {} gave different results for this thunk and no third node could decide: it is \
                 not recorded in the memo cache (the thunk is not deterministic, or a node lies)",
                hex(&d.undecided)
            );
        }
    }

    fn flush(&mut self) {
        let (Some(store), false) = (self.store.clone(), self.pending.is_empty()) else { return };
        let batch = std::mem::take(&mut self.pending);
        self.writes.spawn(async move { store.put_reductions(&batch).await });
    }
}

/// A client's admitted connection to a rendezvous and its control stream.
struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
}

impl Session {
    /// The session and its control stream's receiving side.
    async fn open(target: &Target) -> Result<(Session, quinn::RecvStream), RunError> {
        let addr = thunkmesh_net::resolve(&target.rendezvous).await?;
        let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let bind = bind.parse().map_err(|_| NetError::Closed("a bind address"))?;
        let endpoint = thunkmesh_net::endpoint(bind, &Identity::generate()?)?;
        let conn =
            connect(&endpoint, client_config(&target.trust, ALPN_RENDEZVOUS)?, addr, &target.server_name).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
        let hello = Hello { version: PROTOCOL_VERSION, token: target.token.clone(), role: Role::Client };
        send_msg(&mut send, &hello).await?;
        match recv_msg::<FromRendezvous>(&mut recv).await? {
            Some(FromRendezvous::Welcome { .. }) => Ok((Session { endpoint, conn, send }, recv)),
            Some(FromRendezvous::Refused(e)) => Err(RunError::Refused(e)),
            _ => Err(RunError::Disconnected),
        }
    }

    fn close(&self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// The nodes registered with the rendezvous at `target`, and its jobs.
pub async fn status(target: &Target) -> Result<MeshStatus, RunError> {
    let (mut session, mut recv) = Session::open(target).await?;
    send_msg(&mut session.send, &ToRendezvous::Status).await?;
    let reply = recv_msg::<FromRendezvous>(&mut recv).await;
    session.close();
    match reply? {
        Some(FromRendezvous::Status(status)) => Ok(status),
        Some(FromRendezvous::Refused(e)) => Err(RunError::Refused(e)),
        _ => Err(RunError::Disconnected),
    }
}

async fn follow(
    recv: quinn::RecvStream,
    log: &mut MemoLog,
    reporter: &mut dyn Reporter,
) -> Result<JobOutcome, RunError> {
    let (_reader, mut inbox) = thunkmesh_net::reader::<FromRendezvous>(recv);
    let mut flush = tokio::time::interval(MEMO_FLUSH);
    let mut tick = tokio::time::interval(TICK);
    loop {
        let msg = tokio::select! {
            msg = inbox.recv() => msg.transpose(),
            _ = flush.tick() => {
                log.flush();
                continue;
            }
            _ = tick.tick() => {
                reporter.tick();
                continue;
            }
        };
        match msg {
            Ok(Some(FromRendezvous::Progress(p))) => {
                // Every thunk is done, its entry received: the entries go to storage while the
                // targets are stored, rather than after.
                if p.total > 0 && p.done == p.total {
                    log.flush();
                }
                reporter.progress(p);
            }
            Ok(Some(FromRendezvous::Tasks(reports))) => reporter.tasks(reports),
            Ok(Some(FromRendezvous::Resolved(resolved))) => resolved.into_iter().for_each(|r| log.record(r)),
            Ok(Some(FromRendezvous::Disagreed(d))) => log.disagreed(d),
            Ok(Some(FromRendezvous::JobDone(outcome))) => return Ok(outcome),
            Ok(Some(FromRendezvous::JobFailed(e))) if e.code == ErrorCode::TooLarge => {
                return Err(RunError::OverLimit(e));
            }
            Ok(Some(FromRendezvous::JobFailed(e))) => return Err(RunError::JobFailed(e)),
            Ok(Some(FromRendezvous::Refused(e))) => return Err(RunError::Refused(e)),
            Ok(Some(_)) => warn!("ignoring a message meant for nodes"),
            Ok(None) | Err(NetError::Read(_)) => return Err(RunError::Disconnected),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes each target into `out_dir`: a small one from the bytes that came with the outcome
/// (if they are its blob), the others read from storage, all at once; returns file -> blob id.
async fn write_targets(
    job: &LoadedJob,
    store: &Store,
    outcome: &JobOutcome,
    out_dir: &Path,
) -> Result<BTreeMap<String, Id>, RunError> {
    let blobs: HashMap<&Ref, Id> = outcome.targets.iter().map(|(r, b)| (r, *b)).collect();
    let carried: HashMap<Id, &Carried> =
        outcome.carried.iter().filter(|c| c.is_intact()).map(|c| (c.blob, c)).collect();
    let mut wanted = Vec::new();
    for (file, r) in &job.job.targets {
        match blobs.get(r) {
            Some(&blob) => wanted.push((file.clone(), blob)),
            // A job that kept going leaves out the targets whose thunks failed.
            None if !outcome.failures.is_empty() => {}
            None => {
                let reason = "the rendezvous did not report it".into();
                return Err(RunError::Output { path: out_dir.join(file), reason });
            }
        }
    }
    let writes = futures::stream::iter(wanted)
        .map(|(file, blob)| {
            let value = carried.get(&blob).copied();
            async move { write_target(store, &out_dir.join(&file), blob, value).await.map(|()| (file, blob)) }
        })
        .buffer_unordered(PARALLEL_REQUESTS);
    writes.collect::<Vec<_>>().await.into_iter().collect()
}

/// Writes one target to `dest`, through a partial file beside it renamed into place.
async fn write_target(store: &Store, dest: &Path, blob: Id, carried: Option<&Carried>) -> Result<(), RunError> {
    let fail = |reason: String| RunError::Output { path: dest.to_owned(), reason };
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(fail("not a file's path".into()));
    };
    tokio::fs::create_dir_all(parent).await.map_err(|e| fail(e.to_string()))?;
    let partial = parent.join(format!(".{}.partial", name.to_string_lossy()));
    match carried {
        Some(value) => tokio::fs::write(&partial, &value.bytes).await.map_err(|e| fail(e.to_string()))?,
        None if !store.get_blob_to_file(blob, &partial).await? => {
            return Err(fail(format!("{blob} is not in storage")));
        }
        None => {}
    }
    tokio::fs::rename(&partial, dest).await.map_err(|e| fail(e.to_string()))
}
