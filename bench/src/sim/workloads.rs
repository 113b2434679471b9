//! The simulator's workloads: jobs of real thunks (so the planner sees exactly what a real run
//! would give it) with a modelled duration and output sizes for each. Values (job inputs) start
//! in storage.

use std::collections::BTreeMap;

use thunkmesh_protocol::{Id, Program, Ref, Thunk};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What the simulator knows about a thunk beyond the thunk itself.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Seconds the program runs.
    pub seconds: f64,
    /// Output name -> bytes.
    pub outputs: BTreeMap<String, u64>,
}

/// A job to simulate.
#[derive(Debug, Default)]
pub struct SimJob {
    /// In dependency order, with names.
    pub thunks: Vec<(String, Thunk, Cost)>,
    /// Values, already in storage.
    pub values: Vec<Id>,
    /// What the job wants.
    pub targets: Vec<Ref>,
}

/// The shapes of job the simulator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Thousands of compiles (each reads its source and a shared header bundle), archives of 100
    /// objects, one link.
    Compile,
    /// Map/reduce: mappers read a split from storage and write one partition per reducer;
    /// each reducer reads its partition from every mapper.
    Shuffle,
    /// 1,000 thunks, each transforming the previous one's 1 MiB output.
    Chain,
    /// Recursive fan-out: a 256 MiB input split in halves down to 4,096 leaves, then merged back
    /// up in pairs.
    Fanout,
    /// The benchmark's fan-in: 64 producers of 4 MiB, 8 reducers each concatenating 8 of them,
    /// one final thunk reading the 8 results.
    FanIn,
    /// `examples/video` at scale, ExCamera's shape: a 10-minute 1080p source (18,000 frames,
    /// 600 MiB) probed, planned, split at keyframes into chunks without re-encoding, one x264
    /// encode per chunk, a stitch; every thunk brings ffmpeg's shipped root (240 MiB).
    Video,
    /// A build with a long link tail: a generator whose header 200 compiles of a core library
    /// need, that library archived, then 20 links one after another (each needs the core
    /// library and the link before it); beside it the rest of the thunks compile tests, run by
    /// 100 (a 16 KiB report each), and a last thunk packages the reports with the last link. The
    /// generator starts the longest chain: served first in, first out, it waits behind the test
    /// compiles.
    Build,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 7] =
        [Shape::Compile, Shape::Shuffle, Shape::Chain, Shape::Fanout, Shape::FanIn, Shape::Video, Shape::Build];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Compile => "compile",
            Shape::Shuffle => "shuffle",
            Shape::Chain => "chain",
            Shape::Fanout => "fanout",
            Shape::FanIn => "fan-in",
            Shape::Video => "video",
            Shape::Build => "build",
        }
    }

    /// Builds the job; `size` scales it (thunks for `compile`, mappers for `shuffle`, chunks for
    /// `video`, whose frames each take `frame_seconds` to encode on one thread).
    pub fn build(self, size: usize, frame_seconds: f64, seed: u64) -> SimJob {
        let mut b = Builder { job: SimJob::default(), seed, n: 0 };
        match self {
            Shape::Compile => b.compile(size),
            Shape::Shuffle => b.shuffle(size),
            Shape::Chain => b.chain(1000),
            Shape::Fanout => b.fanout(12),
            Shape::FanIn => b.fan_in(64, 8),
            Shape::Video => b.video(size, frame_seconds),
            Shape::Build => b.build(size),
        }
        b.job
    }
}

struct Builder {
    job: SimJob,
    seed: u64,
    n: u64,
}

impl Builder {
    /// A duration around `mean` (x0.5 to x1.5), drawn from the seed.
    fn jitter(&mut self, mean: f64) -> f64 {
        self.n += 1;
        mean * (0.5 + unit(self.seed, self.n))
    }

    fn value(&mut self, name: &str, size: u64) -> Ref {
        let id = Id::blob(*blake3::hash(name.as_bytes()).as_bytes(), size);
        self.job.values.push(id);
        Ref::Blob(id)
    }

    /// Adds a thunk; returns refs to its outputs, in the order given.
    fn thunk(&mut self, name: String, inputs: Vec<Ref>, outputs: &[(&str, u64)], seconds: f64) -> Vec<Ref> {
        let thunk = Thunk {
            program: Program::Host { path: "/sim".into(), pin: Id::of_blob(b"sim") },
            args: vec![name.clone()],
            env: Default::default(),
            inputs: inputs.into_iter().enumerate().map(|(i, r)| (format!("in/{i}"), r)).collect(),
            outputs: {
                let mut names: Vec<String> = outputs.iter().map(|(n, _)| (*n).to_owned()).collect();
                names.sort();
                names
            },
            timeout_ms: 600_000,
            network: false,
            stdout: false,
            dir: None,
        };
        let id = thunk.id();
        let refs = outputs.iter().map(|(n, _)| Ref::Output { thunk: id, name: (*n).to_owned() }).collect();
        let outputs = outputs.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect();
        self.job.thunks.push((name, thunk, Cost { seconds, outputs }));
        refs
    }

    fn one(&mut self, name: String, inputs: Vec<Ref>, bytes: u64, seconds: f64) -> Ref {
        self.thunk(name, inputs, &[("out", bytes)], seconds).remove(0)
    }

    fn compile(&mut self, thunks: usize) {
        const PER_ARCHIVE: usize = 100;
        let archives = thunks.div_ceil(PER_ARCHIVE + 1).max(1);
        let files = thunks.saturating_sub(archives + 1).max(1);
        let headers = self.value("headers", 4 * MIB);
        let mut libs = Vec::new();
        for a in 0..archives {
            let mut objects = Vec::new();
            for f in (a * files / archives)..((a + 1) * files / archives) {
                let source = self.value(&format!("src/{f}.c"), 20 * KIB);
                let seconds = self.jitter(1.0);
                objects.push(self.one(format!("cc/{f}"), vec![source, headers.clone()], 64 * KIB, seconds));
            }
            let bytes = objects.len() as u64 * 64 * KIB;
            let seconds = self.jitter(0.5);
            libs.push(self.one(format!("ar/{a}"), objects, bytes, seconds));
        }
        let link = self.one("link".into(), libs, 64 * MIB, 5.0);
        self.job.targets.push(link);
    }

    /// The build shape in about `thunks` thunks (see [`Shape::Build`]).
    fn build(&mut self, thunks: usize) {
        const CORE: usize = 200;
        const LINKS: usize = 20;
        const PER_BUNDLE: usize = 100;
        let headers = self.value("include", 4 * MIB);
        let tests = thunks.saturating_sub(CORE + LINKS + 3).max(1) * PER_BUNDLE / (PER_BUNDLE + 1);
        let mut bundles = Vec::new();
        for b in 0..tests.div_ceil(PER_BUNDLE) {
            let mut objects = Vec::new();
            for t in (b * PER_BUNDLE)..((b + 1) * PER_BUNDLE).min(tests) {
                let source = self.value(&format!("tests/{t}.c"), 20 * KIB);
                let seconds = self.jitter(1.0);
                objects.push(self.one(format!("cc/tests/{t}"), vec![source, headers.clone()], 64 * KIB, seconds));
            }
            let seconds = self.jitter(0.5);
            bundles.push(self.one(format!("test/{b}"), objects, 16 * KIB, seconds));
        }
        let schema = self.value("schema.in", 64 * KIB);
        let generated = self.one("generate".into(), vec![schema], MIB, 3.0);
        let mut objects = Vec::new();
        for c in 0..CORE {
            let source = self.value(&format!("core/{c}.c"), 20 * KIB);
            let seconds = self.jitter(1.0);
            let inputs = vec![source, headers.clone(), generated.clone()];
            objects.push(self.one(format!("cc/core/{c}"), inputs, 64 * KIB, seconds));
        }
        let core = self.one("ar/core".into(), objects, CORE as u64 * 64 * KIB, 1.0);
        let mut last = core.clone();
        for l in 0..LINKS {
            last = self.one(format!("link/{l}"), vec![core.clone(), last], 32 * MIB, 4.0);
        }
        let package = self.one("package".into(), [bundles, vec![last]].concat(), 256 * MIB, 2.0);
        self.job.targets.push(package);
    }

    /// The video shape in `chunks` chunks (see [`Shape::Video`]). A chunk's encode takes its
    /// frames times `frame_seconds`, jittered for the footage's complexity; its output is half
    /// its input (x264 `veryfast`, CRF 23, against an 8 Mbit/s camera file).
    fn video(&mut self, chunks: usize, frame_seconds: f64) {
        const FRAMES: usize = 18_000;
        let chunks = chunks.clamp(1, FRAMES);
        let source_bytes = 600 * MIB;
        let source = self.value("source.mp4", source_bytes);
        let ffmpeg = self.value("ffmpeg's root", 240 * MIB);
        let probe = self.one("probe".into(), vec![source.clone(), ffmpeg.clone()], 64 * KIB, 2.0);
        let plan = self.one("plan".into(), vec![probe, ffmpeg.clone()], 256 * KIB, 0.1);
        let names: Vec<String> = (0..chunks).map(|c| format!("c{c}")).collect();
        let piece = source_bytes / chunks as u64;
        let outputs: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), piece)).collect();
        let pieces = self.thunk("split".into(), vec![source, ffmpeg.clone(), plan], &outputs, 3.0);
        let frames = (FRAMES / chunks) as f64;
        let encoded: Vec<Ref> = pieces
            .into_iter()
            .enumerate()
            .map(|(c, piece_ref)| {
                let seconds = self.jitter(frames * frame_seconds);
                self.one(format!("encode/{c}"), vec![piece_ref, ffmpeg.clone()], piece / 2, seconds)
            })
            .collect();
        let stitch = self.one("stitch".into(), [encoded, vec![ffmpeg]].concat(), source_bytes / 2, 2.0);
        self.job.targets.push(stitch);
    }

    fn shuffle(&mut self, mappers: usize) {
        let reducers = (mappers / 10).max(1);
        let split = 64 * MIB;
        let part = split / reducers as u64;
        let names: Vec<String> = (0..reducers).map(|r| format!("part-{r}")).collect();
        let mut parts: Vec<Vec<Ref>> = vec![Vec::new(); reducers];
        for m in 0..mappers {
            let input = self.value(&format!("split/{m}"), split);
            let outputs: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), part)).collect();
            let seconds = self.jitter(2.0);
            for (r, out) in self.thunk(format!("map/{m}"), vec![input], &outputs, seconds).into_iter().enumerate() {
                parts[r].push(out);
            }
        }
        for (r, inputs) in parts.into_iter().enumerate() {
            let seconds = self.jitter(1.0);
            let out = self.one(format!("reduce/{r}"), inputs, MIB, seconds);
            self.job.targets.push(out);
        }
    }

    fn chain(&mut self, length: usize) {
        let mut prev = self.value("seed", MIB);
        for i in 0..length {
            let seconds = self.jitter(0.05);
            prev = self.one(format!("step/{i}"), vec![prev], MIB, seconds);
        }
        self.job.targets.push(prev);
    }

    fn fan_in(&mut self, producers: usize, reducers: usize) {
        let per = producers / reducers;
        let mut results = Vec::new();
        for r in 0..reducers {
            let inputs: Vec<Ref> = (0..per)
                .map(|k| {
                    let seconds = self.jitter(0.03);
                    self.one(format!("produce/{}", r * per + k), Vec::new(), 4 * MIB, seconds)
                })
                .collect();
            let seconds = self.jitter(0.05);
            results.push(self.one(format!("reduce/{r}"), inputs, per as u64 * 4 * MIB, seconds));
        }
        let seconds = self.jitter(0.2);
        let total = self.one("total".into(), results, KIB, seconds);
        self.job.targets.push(total);
    }

    fn fanout(&mut self, depth: u32) {
        let input = self.value("input", 256 * MIB);
        let root = self.split(input, 256 * MIB, depth, "t");
        self.job.targets.push(root);
    }

    /// Splits `input` in halves `depth` times, works on each leaf, merges back; returns the merge.
    fn split(&mut self, input: Ref, bytes: u64, depth: u32, path: &str) -> Ref {
        if depth == 0 {
            let seconds = self.jitter(1.0);
            return self.one(format!("leaf/{path}"), vec![input], bytes, seconds);
        }
        let half = bytes / 2;
        let seconds = self.jitter(0.2);
        let halves = self.thunk(format!("split/{path}"), vec![input], &[("a", half), ("b", half)], seconds);
        let left = self.split(halves[0].clone(), half, depth - 1, &format!("{path}0"));
        let right = self.split(halves[1].clone(), half, depth - 1, &format!("{path}1"));
        let seconds = self.jitter(0.2);
        self.one(format!("merge/{path}"), vec![left, right], bytes, seconds)
    }
}

/// A number in [0, 1] drawn from `seed`: SplitMix64's state `n`, from the planner's stream
/// (whose `mix(seed, m)` is state `m + 1`).
pub fn unit(seed: u64, n: u64) -> f64 {
    thunkmesh_planner::place::mix(seed, n.wrapping_sub(1)) as f64 / u64::MAX as f64
}

/// A job file as a workload: its thunks, values and targets as the client would submit them,
/// with each thunk's run time drawn around `seconds` and each output's size around `bytes`
/// (x0.5 to x1.5), since a job file says neither.
pub fn from_job_file(path: &std::path::Path, seconds: f64, bytes: u64, seed: u64) -> anyhow::Result<SimJob> {
    let loaded = thunkmesh_client::load::load_job(path)?;
    let mut b = Builder { job: SimJob::default(), seed, n: 0 };
    b.job.values = loaded.values.keys().copied().collect();
    b.job.targets = loaded.job.targets.values().cloned().collect();
    for named in loaded.job.thunks {
        let run = b.jitter(seconds);
        let outputs = named.thunk.outputs.iter().map(|o| (o.clone(), b.jitter(bytes as f64) as u64)).collect();
        b.job.thunks.push((named.name, named.thunk, Cost { seconds: run, outputs }));
    }
    Ok(b.job)
}
