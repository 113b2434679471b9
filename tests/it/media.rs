//! gg's media applications (issue 30): `examples/video` (ExCamera-style chunked encoding) and
//! `examples/faces` (face detection over video) on the embedded mesh, compared with their
//! `expected.sh`, and both on nodes that have no ffmpeg, no OpenCV and no Python: everything they
//! run is shipped with the job. Real ffmpeg, OpenCV and Python from Debian (`scripts/test`
//! installs them), real processes, the real sandbox.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{Run, SelfHosted, repo, run_in};

/// Hides from a node what the media jobs run (and refuses to start it if anything is left):
/// the libraries of ffmpeg, OpenCV and Python emptied, then every program of `/usr/bin` and
/// Python's modules and OpenCV's data behind empty folders.
const HIDE: &str = "lib=/usr/lib/x86_64-linux-gnu; \
    for f in $lib/libav* $lib/libopencv* $lib/libpython3* $lib/libx264* $lib/libswscale*; do \
      if [ -f $f ]; then mount --bind /dev/null $f || exit 99; fi; done; \
    for d in /usr/lib/python3 /usr/lib/python3.11 /usr/share/opencv4 /usr/bin; do \
      if [ -d $d ]; then mount -t tmpfs hidden $d || exit 99; fi; done; \
    for f in $lib/libavcodec.so.* $lib/libopencv_core.so.*; do if [ -s $f ]; then exit 98; fi; done; \
    if [ -e /usr/bin/ffmpeg ] || [ -e /usr/bin/python3 ] || [ -e /usr/bin/sh ]; then exit 98; fi; \
    exec \"$0\" \"$@\"";

/// A program's standard output, which must succeed.
fn output(program: &str, args: &[&str]) -> String {
    let done = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(done.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&done.stderr));
    String::from_utf8_lossy(&done.stdout).into_owned()
}

/// Each stream's type, frame count and duration, and the file's duration, as ffprobe counts them
/// by decoding.
fn frames_and_duration(video: &Path) -> String {
    let path = video.to_str().expect("utf-8");
    let streams = ["-v", "error", "-count_frames", "-show_entries", "stream=codec_type,nb_read_frames,duration"];
    let format = ["-v", "error", "-show_entries", "format=duration"];
    output("ffprobe", &[&streams[..], &["-of", "csv=p=0", path]].concat())
        + &output("ffprobe", &[&format[..], &["-of", "csv=p=0", path]].concat())
}

/// The PSNR (dB, average) and SSIM (all planes) of `encoded` against `source`.
fn quality(encoded: &Path, source: &Path) -> (f64, f64) {
    let measure = |filter: &str, key: &str| -> f64 {
        let args = ["-i", encoded.to_str().expect("utf-8"), "-i", source.to_str().expect("utf-8")];
        let lavfi = format!("[0:v][1:v]{filter}");
        let done =
            Command::new("ffmpeg").args(args).args(["-lavfi", &lavfi, "-f", "null", "-"]).output().expect("ffmpeg");
        let said = String::from_utf8_lossy(&done.stderr).into_owned();
        let value = said.rsplit(key).next().and_then(|rest| rest.split_whitespace().next()).map(str::parse);
        value.and_then(Result::ok).unwrap_or_else(|| panic!("no {key} in: {said}"))
    };
    (measure("psnr", "average:"), measure("ssim", "All:"))
}

/// The video example's output is the bytes of its shell encode, keeps every frame of the source
/// (video and audio) and its duration, and is within 0.5 dB PSNR and 0.005 SSIM of one ffmpeg
/// encoding the whole source with the same settings (a keyframe every chunk, as the chunks have).
fn check_video(run: &Run, dir: &Path) {
    let direct = dir.join("direct-video");
    crate::util::shell(&repo("examples/video/expected.sh"), &[&direct]);
    let encoded = run.dir.join("out/encoded.mp4");
    assert!(std::fs::read(&encoded).expect("encoded") == std::fs::read(direct.join("encoded.mp4")).expect("direct"));
    let source = repo("examples/video/source.mp4");
    assert_eq!(frames_and_duration(&encoded), frames_and_duration(&source));
    let chunk = std::fs::read_to_string(repo("examples/video/chunk.txt")).expect("chunk.txt");
    let whole = dir.join("whole.mp4");
    let settings = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-g", chunk.trim()];
    let args = [
        &["-v", "error", "-y", "-i", source.to_str().expect("utf-8")][..],
        &settings,
        &[whole.to_str().expect("utf-8")],
    ];
    output("ffmpeg", &args.concat());
    let (chunked, one) = (quality(&encoded, &source), quality(&whole, &source));
    assert!((chunked.0 - one.0).abs() <= 0.5, "PSNR {chunked:?} against one ffmpeg's {one:?}");
    assert!((chunked.1 - one.1).abs() <= 0.005, "SSIM {chunked:?} against one ffmpeg's {one:?}");
}

/// The faces example's timeline is the one the detector finds in one process over the whole
/// video, and its montage the bytes of the shell's.
fn check_faces(run: &Run, dir: &Path) {
    let direct = dir.join("direct-faces");
    crate::util::shell(&repo("examples/faces/expected.sh"), &[&direct]);
    let timeline = run.out("timeline.txt");
    assert!(!timeline.is_empty(), "faces are found");
    assert_eq!(
        String::from_utf8_lossy(&timeline),
        std::fs::read_to_string(direct.join("timeline.txt")).expect("direct")
    );
    assert!(run.out("montage.mp4") == std::fs::read(direct.join("montage.mp4")).expect("direct montage"));
}

#[test]
fn the_video_example_encodes_in_chunks_as_its_shell_does_and_keeps_one_ffmpeg_s_quality() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &repo("examples/video/job.toml"), &["--workers", "2"]);
    run.ok();
    // The probe, the plan, and from its tail the split, one encode per chunk and the stitch.
    let chunks = (run.num("thunks_total") - 4) as usize;
    assert!(chunks >= 2, "{} thunks", run.num("thunks_total"));
    check_video(&run, dir.path());
    let again = run_in(dir.path(), &repo("examples/video/job.toml"), &["--workers", "2"]);
    again.ok();
    assert_eq!(again.num("thunks_executed"), 0, "a second run reuses every result");
}

#[test]
fn the_faces_example_finds_the_faces_one_process_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_in(dir.path(), &repo("examples/faces/job.toml"), &["--workers", "2"]);
    run.ok();
    // decode, probe, plan; split, one detection per chunk, merge, montage.
    assert!(run.num("thunks_total") >= 3 + 3 + 2, "{} thunks", run.num("thunks_total"));
    check_faces(&run, dir.path());
}

/// Both jobs on two nodes that cannot see ffmpeg's, OpenCV's or Python's files nor any program
/// of `/usr/bin` (`HIDE`), with the sandbox `sandbox`, give the same results: everything the
/// thunks run came with the job.
fn run_on_bare_nodes(test: &str, sandbox: &str) {
    if !crate::util::root_or_skip(test, "hiding programs from a node takes a mount namespace (root, as in CI)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rendezvous"));
    let _nodes: Vec<_> = (0..2)
        .map(|i| {
            let cache = dir.path().join(format!("node-{i}"));
            rdv.node_hiding(HIDE, &cache, &format!("bare-{i}"), &["--sandbox", sandbox])
        })
        .collect();
    rdv.wait_for_nodes(2, Duration::from_secs(30));
    for (example, check) in [("video", check_video as fn(&Run, &Path)), ("faces", check_faces)] {
        let work = dir.path().join(example);
        std::fs::create_dir_all(&work).expect("mkdir");
        let run = rdv.run_with(&work, &repo(&format!("examples/{example}/job.toml")), &[]);
        run.ok();
        assert!(run.num("thunks_executed") > 3, "{example} ran on the bare nodes");
        check(&run, dir.path());
    }
}

/// With namespaces, each thunk's whole file system is what it shipped.
#[test]
fn nodes_without_ffmpeg_opencv_or_python_run_the_media_examples() {
    run_on_bare_nodes("media::nodes_without_ffmpeg_opencv_or_python_run_the_media_examples", "auto");
}

/// Without namespaces, as on Lambda (the process tree only), each shipped program starts through
/// its root's own loader with its root's libraries (`node/src/loader.rs`): the node's own files,
/// hidden here, are never what runs.
#[test]
fn nodes_without_namespaces_or_media_programs_run_the_media_examples_through_the_shipped_loader() {
    let test = "media::nodes_without_namespaces_or_media_programs_run_the_media_examples_through_the_shipped_loader";
    run_on_bare_nodes(test, "process-tree");
}
