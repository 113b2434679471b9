//! `thunkmesh-bench video`: `examples/video` (ExCamera-style chunked encoding) against one ffmpeg
//! encoding the whole source with as many threads as there are workers, on this machine. The
//! source is generated like the example's (a zooming Mandelbrot set with a tone, a keyframe
//! every second) at the size and length asked for; the job runs in p2p and in storage mode with
//! the memo cache off, after one cold run that ships ffmpeg's root to the store and the nodes.
//! Also measures what one frame costs x264 on one thread at 1080p, the figure the simulated
//! 1,000-worker encode (`simulate --workloads video`) is built on.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Options of `video`.
#[derive(Debug, clap::Args)]
pub struct VideoArgs {
    /// Runs of each step (the median is shown).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Local workers, and ffmpeg's threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds of generated source.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Its frame size.
    #[arg(long, default_value = "1280x720")]
    size: String,
    /// The thunkmesh binary [default: `thunkmesh` next to this program].
    #[arg(long)]
    thunkmesh: Option<std::path::PathBuf>,
}

/// The encoder settings the example's chunks use (`examples/video/plan.sh`).
const SETTINGS: [&str; 8] = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"];

pub fn main(args: &VideoArgs) -> Result<()> {
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the bench crate lives in the repository")?;
    let work = tempfile::tempdir()?;
    for file in ["job.toml", "plan.sh", "chunk.txt"] {
        std::fs::copy(repo.join("examples/video").join(file), work.path().join(file))?;
    }
    let source = work.path().join("source.mp4");
    generate(&source, &args.size, args.seconds, 25)?;
    let chunk = std::fs::read_to_string(work.path().join("chunk.txt"))?.trim().to_owned();
    let threads = args.workers.to_string();
    let ffmpeg = || {
        let mut c = Command::new("ffmpeg");
        c.args(["-v", "error", "-y", "-i"]).arg(&source).args(SETTINGS).args(["-g", &chunk, "-threads", &threads]);
        c.args(["-c:a", "copy"]).arg(work.path().join("whole.mp4"));
        c
    };
    let run = |mode: &str| {
        let mut c = Command::new(&binary);
        c.args(["run", "job.toml", "-q", "--memo", "off", "--mode", mode, "--workers", &threads]);
        c.current_dir(work.path());
        c
    };
    let cold = crate::timed(&mut run("p2p"))?;
    let mut one = Vec::new();
    let (mut p2p, mut storage) = (Vec::new(), Vec::new());
    for _ in 0..args.reps {
        one.push(crate::timed(&mut ffmpeg())?);
        p2p.push(crate::timed(&mut run("p2p"))?);
        storage.push(crate::timed(&mut run("storage"))?);
    }
    let median = |v: &[f64]| crate::spread(v).0;
    let frame_ms = one_frame_ms()?;
    println!(
        "source: {} s of {} at 25 fps, chunks of at least {chunk} frames, {} workers",
        args.seconds, args.size, args.workers
    );
    println!("{:<34} {:>9}", "one ffmpeg -threads N", format!("{:.2}s", median(&one)));
    println!("{:<34} {:>9} {:>7.2}x", "thunkmesh p2p", format!("{:.2}s", median(&p2p)), median(&p2p) / median(&one));
    println!(
        "{:<34} {:>9} {:>7.2}x",
        "thunkmesh storage",
        format!("{:.2}s", median(&storage)),
        median(&storage) / median(&one)
    );
    println!("{:<34} {:>9}", "thunkmesh p2p, cold (ships ffmpeg)", format!("{cold:.2}s"));
    println!("x264 {} one thread, 1080p: {frame_ms:.1} ms per frame", SETTINGS[3]);
    Ok(())
}

/// A source like the example's: `seconds` of a zooming Mandelbrot set of `size` with a tone.
fn generate(path: &Path, size: &str, seconds: u32, keyframe_every: u32) -> Result<()> {
    let video = format!("mandelbrot=size={size}:rate=25");
    let mut c = Command::new("ffmpeg");
    c.args([
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        &video,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
    ]);
    c.args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset", "veryfast", "-crf", "26"]);
    c.args(["-g", &keyframe_every.to_string(), "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"]).arg(path);
    crate::timed(&mut c).map(drop)
}

/// Milliseconds x264 takes per frame of 1080p on one thread with the example's settings.
fn one_frame_ms() -> Result<f64> {
    const FRAMES: u32 = 100;
    let scratch = tempfile::tempdir()?;
    let source = scratch.path().join("hd.mp4");
    generate(&source, "1920x1080", FRAMES / 25, 25)?;
    let mut c = Command::new("ffmpeg");
    c.args(["-v", "error", "-y", "-i"]).arg(&source).args(SETTINGS).args(["-threads", "1", "-an"]);
    c.arg(scratch.path().join("out.mp4"));
    Ok(crate::timed(&mut c)? * 1000.0 / f64::from(FRAMES))
}
