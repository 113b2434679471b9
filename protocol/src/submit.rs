//! A job on its way to the rendezvous: cut into frames no larger than a budget on the client
//! ([`pieces`]), and put together again on the rendezvous ([`Assembler`]) within the limits it is
//! configured with.
//!
//! A job travels as `Submit(header)`, any number of `JobPart`s, and `JobEnd`. Thunks go in
//! batches sized so that each frame stays under [`PART_BYTES`]; a shared input part (see
//! [`crate::inputs`]) is written once per batch, and the assembler makes the copies from
//! different batches one allocation again. Nothing is planned before `JobEnd`: the planner checks
//! the whole graph (every ref names a thunk of the job, no cycles) before any of it runs, so a
//! job that is wrong at its end has not half run. `docs/wire.md` describes the exchange.

use crate::inputs::Interner;
use crate::wire::{
    CARRIED_JOB_BYTES, CARRIED_VALUE_BYTES, Carried, ErrorCode, FRAME_HEADER, JobHeader, JobPart, MAX_FRAME, Mode,
    Submission, SubmittedThunk, ToRendezvous, WireError, encode_frame,
};

/// Frame size a piece of a job aims to stay under.
pub const PART_BYTES: usize = 4 << 20;

/// Ids, refs or memo entries per message (each far smaller than `PART_BYTES / 16,384`).
const ITEMS_PER_PART: usize = 16_384;

/// Thunks in the first batch; later batches are sized from the bytes per thunk seen.
const FIRST_BATCH: usize = 256;

/// A thunk that does not fit in one frame on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("thunk `{name}` is {bytes} bytes as a message, over the {limit}-byte limit of one frame")]
pub struct ThunkTooLarge {
    /// The thunk's name.
    pub name: String,
    /// Its encoded size.
    pub bytes: usize,
    /// [`MAX_FRAME`].
    pub limit: usize,
}

/// Carried values' bytes per message.
const CARRIED_PER_PART: u64 = 1 << 20;

/// The frames that submit `sub`, in order: header, thunk batches, memo entries, stored ids,
/// targets, carried values, end. Made one at a time, so a large job is never held encoded all at once.
pub fn pieces(sub: &Submission) -> impl Iterator<Item = Result<Vec<u8>, ThunkTooLarge>> + '_ {
    let header = ToRendezvous::Submit(JobHeader {
        store: sub.store.clone(),
        mode: sub.mode,
        require_direct: sub.require_direct,
        keep_going: sub.keep_going,
        verify: sub.verify,
        verify_salt: sub.verify_salt,
        report_tasks: sub.report_tasks,
    });
    let items = sub
        .memo
        .chunks(ITEMS_PER_PART)
        .map(|c| JobPart::Memo(c.to_vec()))
        .chain(sub.stored.chunks(ITEMS_PER_PART).map(|c| JobPart::Stored(c.to_vec())))
        .chain(sub.targets.chunks(ITEMS_PER_PART).map(|c| JobPart::Targets(c.to_vec())))
        .chain(carried_parts(&sub.carried))
        .map(|part| Ok(encode_frame(&ToRendezvous::JobPart(part))));
    std::iter::once(Ok(encode_frame(&header)))
        .chain(ThunkBatches { rest: &sub.thunks, size: FIRST_BATCH })
        .chain(items)
        .chain(std::iter::once(Ok(encode_frame(&ToRendezvous::JobEnd))))
}

/// Carried values in parts of about [`CARRIED_PER_PART`] bytes.
fn carried_parts(carried: &[Carried]) -> impl Iterator<Item = JobPart> + '_ {
    let mut rest = carried;
    std::iter::from_fn(move || {
        let mut bytes = 0;
        let take = rest
            .iter()
            .take_while(|c| {
                bytes += c.bytes.len() as u64;
                bytes <= CARRIED_PER_PART
            })
            .count()
            .max(1)
            .min(rest.len());
        let (part, after) = rest.split_at(take);
        rest = after;
        (!part.is_empty()).then(|| JobPart::Carried(part.to_vec()))
    })
}

/// Finds a thunk too large for a frame of its own without encoding the others (the client
/// checks before it uploads anything).
pub fn check_fits(thunks: &[SubmittedThunk]) -> Result<(), ThunkTooLarge> {
    for t in thunks {
        let shared = t.thunk.inputs.shared().map_or(0, |s| s.iter().map(|(p, _)| p.len() as u64 + REF_WEIGHT).sum());
        let env: u64 = t.thunk.env.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        if weight(t) + shared + env <= (MAX_FRAME / 2) as u64 {
            continue;
        }
        let bytes = encode_frame(&ToRendezvous::JobPart(JobPart::Thunks(vec![t.clone()]))).len() - FRAME_HEADER;
        if bytes > MAX_FRAME {
            return Err(ThunkTooLarge { name: t.name.clone(), bytes, limit: MAX_FRAME });
        }
    }
    Ok(())
}

/// Thunks in frames of at most [`PART_BYTES`] (or one thunk alone, up to [`MAX_FRAME`]).
struct ThunkBatches<'a> {
    rest: &'a [SubmittedThunk],
    size: usize,
}

impl Iterator for ThunkBatches<'_> {
    type Item = Result<Vec<u8>, ThunkTooLarge>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take = self.size.clamp(1, self.rest.len().max(1));
            let batch = self.rest.get(..take).filter(|b| !b.is_empty())?;
            let frame = encode_frame(&ToRendezvous::JobPart(JobPart::Thunks(batch.to_vec())));
            let bytes = frame.len() - FRAME_HEADER;
            if bytes > PART_BYTES && take > 1 {
                self.size = take / 2;
                continue;
            }
            if bytes > MAX_FRAME {
                let name = batch[0].name.clone();
                self.rest = &[];
                return Some(Err(ThunkTooLarge { name, bytes, limit: MAX_FRAME }));
            }
            self.rest = &self.rest[take..];
            // The next batch aims at half the budget, from what this one weighed per thunk.
            self.size = (PART_BYTES / 2 / (bytes / take).max(1)).max(1);
            return Some(Ok(frame));
        }
    }
}

/// What a rendezvous takes in one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Most thunks.
    pub thunks: u64,
    /// Most bytes held for it: every string, plus [`REF_WEIGHT`] per ref or id; a shared input
    /// part counts once.
    pub bytes: u64,
    /// Most bytes (counted as for [`JobLimits::bytes`]) that all jobs still being received hold
    /// together: past it, the one holding the most is refused.
    pub unfinished: u64,
    /// How long a client has from its job's first message to its last.
    pub submit_within: std::time::Duration,
}

/// What a ref, id or memo entry counts for in [`JobLimits::bytes`] besides its strings.
pub const REF_WEIGHT: u64 = 64;

impl Default for JobLimits {
    /// Room for a build of millions of compiles in well under the memory of a small server;
    /// jobs being received hold at most 128 MiB together (a self-hosted mesh shared by clients
    /// who may never end a submission), and each is whole within two minutes.
    fn default() -> JobLimits {
        JobLimits {
            thunks: 5_000_000,
            bytes: 8 << 30,
            unfinished: 128 << 20,
            submit_within: std::time::Duration::from_secs(120),
        }
    }
}

/// A job being received: parts are added as they come, limits checked on each.
#[derive(Debug)]
pub struct Assembler {
    sub: Submission,
    interner: Interner,
    limits: JobLimits,
    bytes: u64,
    /// Bytes of the values carried so far.
    carried: u64,
}

impl Assembler {
    /// A job that begins with `header`.
    pub fn new(header: JobHeader, limits: JobLimits) -> Assembler {
        let JobHeader { store, mode, require_direct, keep_going, verify, verify_salt, report_tasks } = header;
        let sub = Submission {
            store,
            mode,
            thunks: Vec::new(),
            targets: Vec::new(),
            stored: Vec::new(),
            memo: Vec::new(),
            require_direct,
            keep_going,
            verify,
            verify_salt,
            report_tasks,
            carried: Vec::new(),
        };
        Assembler { sub, interner: Interner::default(), limits, bytes: 0, carried: 0 }
    }

    /// Adds a part; an error says which limit the job went over (and nothing more is taken).
    pub fn add(&mut self, part: JobPart) -> Result<(), WireError> {
        match part {
            JobPart::Thunks(thunks) => {
                let total = self.sub.thunks.len() as u64 + thunks.len() as u64;
                if total > self.limits.thunks {
                    return Err(over(format!("{} thunks", self.limits.thunks), "--max-job-thunks"));
                }
                for mut t in thunks {
                    self.bytes += self.interner.intern_inputs(&mut t.thunk.inputs, REF_WEIGHT)
                        + self.interner.intern_env(&mut t.thunk.env)
                        + weight(&t);
                    self.sub.thunks.push(t);
                }
            }
            JobPart::Targets(targets) => {
                self.bytes += REF_WEIGHT * targets.len() as u64;
                self.sub.targets.extend(targets);
            }
            JobPart::Stored(ids) => {
                self.bytes += REF_WEIGHT * ids.len() as u64;
                self.sub.stored.extend(ids);
            }
            JobPart::Memo(memo) => {
                let outputs: usize = memo.iter().map(|r| r.outputs.len()).sum();
                self.bytes += REF_WEIGHT * (memo.len() + outputs) as u64;
                self.sub.memo.extend(memo);
            }
            JobPart::Carried(values) => self.carry(values)?,
        }
        match self.bytes > self.limits.bytes {
            true => Err(over(format!("{} bytes", self.limits.bytes), "--max-job-bytes")),
            false => Ok(()),
        }
    }

    /// Takes carried values: each must be the blob it names and small, the job's together under
    /// [`CARRIED_JOB_BYTES`], and the job in p2p mode (in storage mode every input is read from
    /// storage).
    fn carry(&mut self, values: Vec<Carried>) -> Result<(), WireError> {
        let bad = |message: String| WireError::new(ErrorCode::BadMessage, message);
        if self.sub.mode != Mode::P2p {
            return Err(bad("a job in storage mode cannot carry values: every input is read from storage".into()));
        }
        for value in values {
            let size = value.bytes.len() as u64;
            if size > CARRIED_VALUE_BYTES {
                return Err(bad(format!(
                    "carried value {} is {size} bytes, over the {CARRIED_VALUE_BYTES}-byte limit of one",
                    value.blob
                )));
            }
            value.check().map_err(bad)?;
            self.carried += size;
            if self.carried > CARRIED_JOB_BYTES {
                let message =
                    format!("the job carries more than {CARRIED_JOB_BYTES} bytes of values, the most one may");
                return Err(WireError::new(ErrorCode::TooLarge, message));
            }
            self.bytes += REF_WEIGHT + size;
            self.sub.carried.push(value);
        }
        Ok(())
    }

    /// Bytes held so far, as [`JobLimits::bytes`] counts them.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Thunks received so far.
    pub fn thunks(&self) -> usize {
        self.sub.thunks.len()
    }

    /// The whole job.
    pub fn finish(self) -> Submission {
        self.sub
    }
}

fn over(limit: String, flag: &str) -> WireError {
    WireError::new(
        ErrorCode::TooLarge,
        format!("the job is larger than this rendezvous takes: its limit is {limit} (`thunkmesh rendezvous {flag}`)"),
    )
}

/// What a thunk counts for in [`JobLimits::bytes`], its shared input part and environment aside.
fn weight(t: &SubmittedThunk) -> u64 {
    let thunk = &t.thunk;
    let strings = t.name.len()
        + thunk.args.iter().map(String::len).sum::<usize>()
        + thunk.outputs.iter().map(String::len).sum::<usize>()
        + thunk.dir.as_ref().map_or(0, String::len);
    let own = thunk.inputs.own();
    let paths: usize = own.iter().map(|(p, _)| p.len()).sum();
    (strings + paths) as u64 + REF_WEIGHT * (1 + own.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::inputs::{Input, Inputs};
    use crate::wire::{FromRendezvous, Mode, decode_body};
    use crate::{Id, Program, Ref, Thunk};

    /// `n` compile-like thunks reading one shared set of `headers` inputs and a source each.
    fn compiles(n: usize, headers: usize) -> Submission {
        let shared: Arc<[Input]> = (0..headers)
            .map(|h| (format!("include/header-{h:04}.h"), Ref::Blob(Id::of_blob(format!("h{h}").as_bytes()))))
            .collect::<Vec<_>>()
            .into();
        let thunks: Vec<SubmittedThunk> = (0..n)
            .map(|i| {
                let source = (format!("src/file-{i}.c"), Ref::Blob(Id::of_blob(format!("s{i}").as_bytes())));
                let thunk = Thunk {
                    program: Program::Host { path: "/usr/bin/cc".into(), pin: Id::of_blob(b"cc") },
                    args: vec!["-c".into(), format!("src/file-{i}.c"), "-o".into(), "out.o".into()],
                    env: Arc::new(BTreeMap::from([("PATH".to_owned(), "/usr/bin".to_owned())])),
                    inputs: Inputs::split(shared.clone(), vec![source]),
                    outputs: vec!["out.o".into()],
                    timeout_ms: 1000,
                    network: false,
                    stdout: false,
                    dir: None,
                };
                SubmittedThunk { name: format!("cc/{i}"), thunk }
            })
            .collect();
        let targets = thunks.iter().map(|t| Ref::Output { thunk: t.thunk.id(), name: "out.o".into() }).collect();
        Submission {
            store: "file:///tmp/s".into(),
            mode: Mode::P2p,
            thunks,
            targets,
            stored: vec![],
            memo: vec![],
            require_direct: false,
            keep_going: true,
            verify: 0,
            verify_salt: 0,
            report_tasks: false,
            carried: Vec::new(),
        }
    }

    fn assemble(sub: &Submission, limits: JobLimits) -> Result<Submission, WireError> {
        let mut assembler = None;
        for frame in pieces(sub) {
            let frame = frame.expect("every thunk fits");
            assert!(frame.len() - FRAME_HEADER <= PART_BYTES, "a piece of {} bytes", frame.len());
            match decode_body::<ToRendezvous>(&frame[FRAME_HEADER..]).expect("valid frame") {
                ToRendezvous::Submit(header) => assembler = Some(Assembler::new(header, limits)),
                ToRendezvous::JobPart(part) => assembler.as_mut().expect("header first").add(part)?,
                ToRendezvous::JobEnd => return Ok(assembler.take().expect("header first").finish()),
                other => panic!("not part of a submission: {other:?}"),
            }
        }
        panic!("no JobEnd")
    }

    #[test]
    fn a_job_larger_than_a_frame_arrives_whole_in_pieces_with_its_shared_inputs_shared_again() {
        let sub = compiles(20_000, 100);
        let whole = encode_frame(&ToRendezvous::JobPart(JobPart::Thunks(sub.thunks.clone())));
        assert!(whole.len() > PART_BYTES, "the job should not fit one piece ({} bytes)", whole.len());
        let got = assemble(&sub, JobLimits::default()).expect("within limits");
        assert_eq!(got, sub);
        let first = &got.thunks[0].thunk;
        let shared = first.inputs.shared().expect("shared");
        assert!(got.thunks.iter().all(|t| Arc::ptr_eq(t.thunk.inputs.shared().expect("shared"), shared)));
        assert!(got.thunks.iter().all(|t| Arc::ptr_eq(&t.thunk.env, &first.env)));
    }

    #[test]
    fn unshared_inputs_make_many_more_pieces_than_shared_ones() {
        let shared = compiles(4_000, 100);
        let mut unshared = shared.clone();
        for t in &mut unshared.thunks {
            t.thunk.inputs = t.thunk.inputs.iter().map(|(p, r)| (p.clone(), r.clone())).collect();
        }
        let bytes = |sub: &Submission| pieces(sub).map(|f| f.expect("fits").len()).sum::<usize>();
        assert!(bytes(&unshared) > 10 * bytes(&shared), "{} vs {}", bytes(&unshared), bytes(&shared));
    }

    #[test]
    fn a_job_over_a_limit_is_refused_naming_the_limit() {
        let sub = compiles(1_000, 10);
        let e = assemble(&sub, JobLimits { thunks: 999, ..JobLimits::default() }).expect_err("over");
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("999 thunks") && e.message.contains("--max-job-thunks"), "{e}");
        let e = assemble(&sub, JobLimits { bytes: 10_000, ..JobLimits::default() }).expect_err("over");
        assert!(e.message.contains("10000 bytes") && e.message.contains("--max-job-bytes"), "{e}");
        assert!(assemble(&sub, JobLimits { thunks: 1_000, bytes: 1 << 20, ..JobLimits::default() }).is_ok());
        let _ = FromRendezvous::JobFailed(e);
    }

    #[test]
    fn a_thunk_larger_than_a_frame_is_named() {
        let mut sub = compiles(3, 1);
        sub.thunks[1].thunk.args = vec!["x".repeat(60_000); 300];
        let results: Vec<_> = pieces(&sub).collect();
        let e = results.into_iter().find_map(Result::err).expect("refused");
        assert_eq!(e.name, "cc/1");
        assert!(e.bytes > MAX_FRAME);
        assert_eq!(check_fits(&sub.thunks), Err(e));
        sub.thunks[1].thunk.args.truncate(200);
        assert_eq!(check_fits(&sub.thunks), Ok(()));
    }

    fn carried(bytes: Vec<u8>) -> Carried {
        Carried { blob: Id::of_blob(&bytes), bytes }
    }

    #[test]
    fn carried_values_arrive_whole_in_parts_and_the_job_may_carry_at_most_its_budget() {
        let mut sub = compiles(10, 2);
        let value = |i: u8| carried(vec![i; CARRIED_VALUE_BYTES as usize]);
        sub.carried = (0..(CARRIED_JOB_BYTES / CARRIED_VALUE_BYTES) as u8).map(value).collect();
        let parts = pieces(&sub).filter(|f| f.as_ref().is_ok_and(|f| f.len() > CARRIED_PER_PART as usize / 2)).count();
        assert_eq!(parts, (CARRIED_JOB_BYTES / CARRIED_PER_PART) as usize, "carried values go in parts of 1 MiB");
        assert_eq!(assemble(&sub, JobLimits::default()).expect("within the budget"), sub);
        sub.carried.push(carried(b"one byte too many".to_vec()));
        let e = assemble(&sub, JobLimits::default()).expect_err("over the budget");
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains(&format!("more than {CARRIED_JOB_BYTES} bytes of values")), "{e}");
    }

    #[test]
    fn a_carried_value_that_is_not_its_blob_too_large_or_in_storage_mode_is_refused_by_name() {
        let mut sub = compiles(2, 1);
        let mut lie = carried(b"the real bytes".to_vec());
        lie.bytes = b"other bytes".to_vec();
        sub.carried = vec![carried(b"fine".to_vec()), lie.clone()];
        let e = assemble(&sub, JobLimits::default()).expect_err("a lie");
        assert_eq!(e.code, ErrorCode::BadMessage);
        assert_eq!(e.message, format!("carried value {}: its bytes are not that blob", lie.blob));
        let big = carried(vec![7; CARRIED_VALUE_BYTES as usize + 1]);
        sub.carried = vec![big.clone()];
        let e = assemble(&sub, JobLimits::default()).expect_err("too large");
        assert!(e.message.contains(&big.blob.to_string()) && e.message.contains("over the 65536-byte limit"), "{e}");
        sub.carried = vec![carried(b"fine".to_vec())];
        sub.mode = Mode::Storage;
        let e = assemble(&sub, JobLimits::default()).expect_err("storage mode");
        assert!(e.message.contains("storage mode cannot carry values"), "{e}");
    }
}
