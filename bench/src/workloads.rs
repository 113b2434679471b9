//! The benchmark workloads, written out as job files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

/// Length of the chain workloads.
pub const CHAIN: usize = 100;
/// Producers, reducers and bytes per producer of the fan-in workload.
pub const FAN_IN: (usize, usize, usize) = (64, 8, 4 << 20);
/// Thunks of the no-op workload (a final thunk gathers them).
pub const NOOPS: usize = 2000;

/// A workload of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 100 thunks, each transforming the previous output (1 KiB).
    #[value(name = "chain-1k")]
    #[serde(rename = "chain-1k")]
    Chain1k,
    /// The same chain with 1 MiB objects.
    #[value(name = "chain-1m")]
    #[serde(rename = "chain-1m")]
    Chain1m,
    /// The same chain with 16 MiB objects.
    #[value(name = "chain-16m")]
    #[serde(rename = "chain-16m")]
    Chain16m,
    /// 64 producers of 4 MiB, 8 reducers concatenating 8 each (32 MiB), 1 final thunk counting
    /// the 256 MiB.
    FanIn,
    /// The C example: compile per file, link, run.
    Cc,
    /// 2,000 independent thunks that only create an empty output, then one gathering them.
    Noop,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 6] =
        [Workload::Chain1k, Workload::Chain1m, Workload::Chain16m, Workload::FanIn, Workload::Cc, Workload::Noop];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Chain1k => "chain-1k",
            Workload::Chain1m => "chain-1m",
            Workload::Chain16m => "chain-16m",
            Workload::FanIn => "fan-in",
            Workload::Cc => "cc",
            Workload::Noop => "noop",
        }
    }

    /// Thunks the job forces.
    pub fn thunks(self) -> usize {
        match self {
            Workload::Chain1k | Workload::Chain1m | Workload::Chain16m => CHAIN,
            Workload::FanIn => FAN_IN.0 + FAN_IN.1 + 1,
            Workload::Cc => 5,
            Workload::Noop => NOOPS + 1,
        }
    }

    /// Writes the job (and its input files) under `dir`; returns the job file.
    pub fn write(self, dir: &Path, repo: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let text = match self {
            Workload::Chain1k => chain(dir, 1 << 10, CHAIN)?,
            Workload::Chain1m => chain(dir, 1 << 20, CHAIN)?,
            Workload::Chain16m => chain(dir, 16 << 20, CHAIN)?,
            Workload::FanIn => fan_in(),
            Workload::Cc => return Ok(repo.join("examples/cc/job.toml")),
            Workload::Noop => noop(),
        };
        let job = dir.join("job.toml");
        std::fs::write(&job, text)?;
        Ok(job)
    }
}

/// Deterministic pseudo-random bytes (xorshift), so every run hashes the same input.
fn seed_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `length` thunks, each `dd conv=swab` of the previous output, from a `size`-byte `seed.bin`
/// written into `dir`.
pub fn chain(dir: &Path, size: usize, length: usize) -> std::io::Result<String> {
    std::fs::write(dir.join("seed.bin"), seed_bytes(size))?;
    let mut text = String::from("[values]\nseed = \"seed.bin\"\n\n");
    let mut prev = "seed".to_owned();
    for i in 0..length {
        let _ = write!(
            text,
            "[[thunk]]\nname = \"hop-{i}\"\nprogram = {{ host = \"/usr/bin/dd\" }}\n\
             args = [\"if=in\", \"of=out\", \"bs=1M\", \"conv=swab\", \"status=none\"]\n\
             inputs = {{ \"in\" = \"{prev}\" }}\noutputs = [\"out\"]\n\n"
        );
        prev = format!("hop-{i}#out");
    }
    let _ = write!(text, "[targets]\n\"last.bin\" = \"{prev}\"\n");
    Ok(text)
}

/// 64 producers of 4 MiB, 8 reducers concatenating 8 of them each, a final thunk counting the
/// bytes of the 8 results.
pub fn fan_in() -> String {
    let (producers, reducers, bytes) = FAN_IN;
    let per = producers / reducers;
    let mut text = String::new();
    for p in 0..producers {
        let _ = write!(
            text,
            "[[thunk]]\nname = \"produce-{p}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"yes {p} | head -c {bytes} > out\"]\nenv = {{ PATH = \"/usr/bin:/bin\" }}\n\
             outputs = [\"out\"]\n\n"
        );
    }
    for r in 0..reducers {
        let inputs: Vec<String> = (0..per).map(|k| format!("\"in{k}\" = \"produce-{}#out\"", r * per + k)).collect();
        let _ = write!(
            text,
            "[[thunk]]\nname = \"reduce-{r}\"\nprogram = {{ host = \"/bin/sh\" }}\n\
             args = [\"-c\", \"cat in* > out\"]\nenv = {{ PATH = \"/usr/bin:/bin\" }}\n\
             inputs = {{ {} }}\noutputs = [\"out\"]\n\n",
            inputs.join(", ")
        );
    }
    let inputs: Vec<String> = (0..reducers).map(|r| format!("\"r{r}\" = \"reduce-{r}#out\"")).collect();
    let _ = write!(
        text,
        "[[thunk]]\nname = \"total\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat r* | wc -c > out\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ {} }}\noutputs = [\"out\"]\n\n\
         [targets]\n\"total.txt\" = \"total#out\"\n",
        inputs.join(", ")
    );
    text
}

fn noop() -> String {
    let mut text = String::new();
    for i in 0..NOOPS {
        let _ = write!(
            text,
            "[[thunk]]\nname = \"noop-{i}\"\nprogram = {{ host = \"/usr/bin/touch\" }}\nargs = [\"out\"]\n\
             env = {{ N = \"{i}\" }}\noutputs = [\"out\"]\n\n"
        );
    }
    let inputs: Vec<String> = (0..NOOPS).map(|i| format!("\"d/{i}\" = \"noop-{i}#out\"")).collect();
    let _ = write!(
        text,
        "[[thunk]]\nname = \"gather\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"ls d | wc -l > count\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\ninputs = {{ {} }}\noutputs = [\"count\"]\n\n\
         [targets]\n\"count.txt\" = \"gather#count\"\n",
        inputs.join(", ")
    );
    text
}
