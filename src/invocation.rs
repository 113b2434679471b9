//! What `run` and `force` share around a job: the state folder's lock, the summary file opened
//! before anything runs, progress on a terminal or as lines without one, Ctrl-C, the printed
//! summary, the summary JSON (on success and on failure), the `--timings` and `--trace` reports,
//! and the exit status.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use thunkmesh_client::report::Timeline;
use thunkmesh_client::{LoadedJob, Memo, Reporter, Summary};
use thunkmesh_protocol::wire::{Progress, TaskReport};

use crate::cli::{EngineArg, Global, ModeArg, RunFlags};
use crate::exit::{Failure, Interrupted, Result, UsageError, failed};

/// The version of the summary JSON's layout (docs/jobs.md); it changes when a field is removed
/// or changes meaning, not when one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// Thunks failed in a job that kept going.
#[derive(Debug, thiserror::Error)]
#[error("{0} thunk(s) failed (each is named above); everything that did not depend on them ran")]
pub struct ThunksFailed(u64);

/// A job that ran: what to say, its summary and, on Lambda, what was launched.
#[derive(Debug)]
pub struct Done {
    /// The first line printed, such as `wrote 3 target(s) to out`.
    pub said: String,
    /// The summary (none when there was nothing to run).
    pub summary: Option<Summary>,
    /// The Lambda workers, when the job ran on them.
    pub launched: Option<thunkmesh_lambda::Launched>,
    /// What decides the outcome instead of the thunks that failed (a test run's report).
    pub verdict: Option<Verdict>,
}

/// A verdict of the command's own on a job that ran: printed after the summary's figures in
/// place of its failures, and the failure the command ends with, if any.
#[derive(Debug)]
pub struct Verdict {
    /// What is printed last.
    pub report: String,
    /// The failure, if the verdict is one.
    pub failed: Option<Failure>,
}

/// One run or force, from taking the state folder's lock to the exit status.
pub struct Invocation {
    started: Instant,
    quiet: bool,
    json: Option<JsonOut>,
    job: String,
    mode: ModeArg,
    engine: EngineArg,
    memo: Memo,
    /// Progress, drawn or as lines.
    pub bar: Bar,
    /// The state folder's lock, held until the invocation ends: another run in this state folder
    /// waits for it.
    lock: Option<File>,
}

/// Where the summary JSON goes.
enum JsonOut {
    Stdout,
    File(PathBuf, File),
}

impl Invocation {
    /// Opens the summary file, so that an unwritable path fails now rather than after the job.
    pub fn begin(flags: &RunFlags, global: &Global, job: &Path) -> Result<Invocation> {
        let started = Instant::now();
        let json = match flags.summary_json.as_deref() {
            None => None,
            Some(p) if p == Path::new("-") => Some(JsonOut::Stdout),
            Some(p) => Some(JsonOut::File(
                p.to_owned(),
                File::create(p)
                    .map_err(|e| UsageError(format!("--summary-json: cannot write {}: {e}", p.display())))?,
            )),
        };
        Ok(Invocation {
            started,
            quiet: global.quiet,
            json,
            job: job.display().to_string(),
            mode: flags.mode,
            engine: flags.engine,
            memo: flags.memo.into(),
            bar: Bar::new(global.quiet, flags.progress_every),
            lock: None,
        })
    }

    /// Takes the state folder's lock, waiting (and saying so) while another command holds it.
    pub async fn lock(&mut self, state_dir: &Path) -> Result<()> {
        self.lock = Some(lock_state(state_dir).await?);
        Ok(())
    }

    /// Runs `job` as `flags` say; Ctrl-C ends it with [`Interrupted`].
    pub async fn execute(
        &mut self,
        flags: &RunFlags,
        job: &LoadedJob,
        out: &Path,
    ) -> Result<(Summary, Option<thunkmesh_lambda::Launched>)> {
        let memo = self.memo == Memo::On;
        let reports = Reports::open(flags)?;
        let mut recording = Recording { bar: &mut self.bar, tasks: reports.wanted().then(Vec::new) };
        let result = tokio::select! {
            r = crate::mesh::execute(flags, job, out, &mut recording, self.started) => r,
            _ = tokio::signal::ctrl_c() => Err(Interrupted { memo }.into()),
        };
        let written = recording.tasks.map_or(Ok(()), |tasks| reports.write(&tasks, job));
        // The job's own error, if it failed, says more than a report that could not be written.
        result.and_then(|done| written.map(|()| done))
    }

    /// Prints the outcome, writes the summary JSON and gives the exit status.
    pub fn finish(mut self, result: Result<Done>) -> ExitCode {
        self.bar.0.finish_and_clear();
        let (summary, launched, error) = match result {
            Ok(done) => {
                self.print(&done);
                let error = match done.verdict {
                    Some(verdict) => verdict.failed,
                    None => {
                        let failed = done.summary.as_ref().map_or(0, |s| s.thunks_failed);
                        (failed > 0).then(|| Failure::from(ThunksFailed(failed)))
                    }
                };
                (done.summary, done.launched, error)
            }
            Err(e) => (None, None, Some(e)),
        };
        if let Err(e) = self.write_json(summary.as_ref(), launched.as_ref(), error.as_ref()) {
            let code = failed(&e);
            return error.as_ref().map_or(code, failed);
        }
        error.as_ref().map_or(ExitCode::SUCCESS, failed)
    }

    fn print(&self, done: &Done) {
        if self.quiet {
            return;
        }
        let mut text = format!("{}\n", done.said);
        match (&done.summary, &done.verdict) {
            (Some(summary), Some(verdict)) => text += &format!("{}\n\n{}\n", summary.figures(), verdict.report),
            (None, Some(verdict)) => text += &format!("{}\n", verdict.report),
            (Some(summary), None) => text += &format!("{summary}\n"),
            (None, None) => {}
        }
        if let Some(launched) = &done.launched {
            text += &format!("{}\n", crate::lambda::describe(launched));
        }
        // With the JSON on standard output, the words go to standard error.
        let _ = match self.json {
            Some(JsonOut::Stdout) => std::io::stderr().write_all(text.as_bytes()),
            _ => std::io::stdout().write_all(text.as_bytes()),
        };
    }

    fn write_json(
        &mut self,
        summary: Option<&Summary>,
        launched: Option<&thunkmesh_lambda::Launched>,
        error: Option<&Failure>,
    ) -> Result<()> {
        let Some(out) = &mut self.json else { return Ok(()) };
        let status = match error {
            None => "succeeded",
            Some(Failure::Interrupted(_)) => "interrupted",
            Some(_) => "failed",
        };
        let mut json = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "status": status,
            "exit_status": error.map_or(0, Failure::exit_status),
            "error": error.map(ToString::to_string),
            "job": self.job,
            "mode": thunkmesh_protocol::wire::Mode::from(self.mode).name(),
            "engine": self.engine.name(),
            "wall_ms": self.started.elapsed().as_secs_f64() * 1000.0,
        });
        if let Some(fields) = json.as_object_mut() {
            if let Some(serde_json::Value::Object(summary)) = summary.map(serde_json::to_value).transpose()? {
                fields.extend(summary);
            }
            if let Some(launched) = launched {
                fields.insert("lambda".into(), serde_json::to_value(launched)?);
            }
        }
        let text = serde_json::to_string_pretty(&json)? + "\n";
        match out {
            JsonOut::Stdout => Ok(std::io::stdout().write_all(text.as_bytes()).context("cannot write the summary")?),
            JsonOut::File(path, file) => {
                Ok(file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?)
            }
        }
    }
}

/// Locks `state_dir/lock` for this process (released when the file closes, also when the process
/// dies). Two runs in one state folder would share the local nodes' folders and the forced
/// outputs; the second waits, as cargo does for its build folder.
pub async fn lock_state(state_dir: &Path) -> Result<File> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    let path = state_dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "waiting for another thunkmesh command to finish with the state folder {} (lock file {})",
                state_dir.display(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display())).map_err(Into::into);
        }
    }
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file)).await?;
    Ok(locked.with_context(|| format!("cannot lock {}", path.display()))?)
}

/// Progress: a bar on a terminal; without one (CI, a pipe, a file) a line when the phase
/// changes and at most one every `--progress-every` while the job runs; nothing with `-q`.
pub struct Bar(pub ProgressBar, Lines);

/// The state of progress lines.
struct Lines {
    /// Print lines (no terminal, not quiet).
    on: bool,
    quiet: bool,
    every: Duration,
    started: Instant,
    last: Option<Instant>,
    latest: Option<Progress>,
    told_no_nodes: bool,
}

impl Bar {
    /// The display for stderr as it is.
    pub fn new(quiet: bool, every: Duration) -> Bar {
        let terminal = std::io::stderr().is_terminal() && !quiet;
        let bar = if terminal { ProgressBar::new(0) } else { ProgressBar::hidden() };
        let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} thunks  {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        if terminal {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        let lines = Lines {
            on: !terminal && !quiet,
            quiet,
            every,
            started: Instant::now(),
            last: None,
            latest: None,
            told_no_nodes: false,
        };
        Bar(bar, lines)
    }

    /// A line above the bar, or on its own without a terminal; nothing with `-q`.
    fn say(&self, line: &str) {
        if self.1.quiet {
            return;
        }
        match self.0.is_hidden() {
            true => eprintln!("{line}"),
            false => self.0.println(line),
        }
    }

    fn line(&mut self, p: Progress) {
        let seconds = self.1.started.elapsed().as_secs_f64();
        let waits = waits(&p);
        eprintln!(
            "[{seconds:6.1}s] {}/{} thunks done, {} running on {} node(s){waits}",
            p.done, p.total, p.running, p.nodes
        );
        self.1.last = Some(Instant::now());
    }

    fn line_due(&self) -> bool {
        self.1.on && self.1.last.is_none_or(|t| t.elapsed() >= self.1.every)
    }
}

/// What a job waits for besides running thunks, for the progress line (empty when nothing).
fn waits(p: &Progress) -> String {
    let mut waits = String::new();
    if p.uploads > 0 {
        waits.push_str(&format!(", waiting for {} upload(s) to storage", p.uploads));
    }
    if p.checking > 0 {
        waits.push_str(&format!(", {} result(s) being checked on another node", p.checking));
    }
    waits
}

impl Reporter for Bar {
    fn phase(&mut self, what: &str) {
        self.0.set_message(what.to_owned());
        if self.1.on {
            eprintln!("[{:6.1}s] {what}", self.1.started.elapsed().as_secs_f64());
        }
    }

    fn progress(&mut self, p: Progress) {
        self.0.set_length(p.total);
        self.0.set_position(p.done);
        self.0.set_message(format!("{} running{}", p.running, waits(&p)));
        self.1.latest = Some(p);
        if self.line_due() {
            self.line(p);
        }
        if p.nodes == 0 && p.done < p.total && !self.1.told_no_nodes {
            self.say("waiting for a node to join the rendezvous (none has; start one with `thunkmesh node`)");
            self.1.told_no_nodes = true;
        }
    }

    fn tick(&mut self) {
        if let Some(p) = self.1.latest.filter(|_| self.line_due()) {
            self.line(p);
        }
    }
}

/// The `--timings` and `--trace` files, created before the job runs (so that an unwritable
/// path fails at once) and written when it ends, failed or not.
struct Reports {
    timings: Option<(PathBuf, File)>,
    trace: Option<(PathBuf, File)>,
    title: String,
}

impl Reports {
    fn open(flags: &RunFlags) -> Result<Reports> {
        let create = |flag: &str, path: &Option<PathBuf>| -> Result<Option<(PathBuf, File)>> {
            let Some(path) = path else { return Ok(None) };
            let file =
                File::create(path).map_err(|e| UsageError(format!("{flag}: cannot write {}: {e}", path.display())))?;
            Ok(Some((path.clone(), file)))
        };
        let title = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        Ok(Reports { timings: create("--timings", &flags.timings)?, trace: create("--trace", &flags.trace)?, title })
    }

    fn wanted(&self) -> bool {
        self.timings.is_some() || self.trace.is_some()
    }

    fn write(self, tasks: &[TaskReport], job: &LoadedJob) -> Result<()> {
        let timeline = Timeline::new(tasks, &job.job);
        let write = |(path, mut file): (PathBuf, File), text: String| -> Result<()> {
            file.write_all(text.as_bytes()).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            Ok(())
        };
        if let Some(out) = self.timings {
            write(out, timeline.timings_html(&self.title))?;
        }
        if let Some(out) = self.trace {
            write(out, timeline.trace_json().to_string())?;
        }
        Ok(())
    }
}

/// The progress display, keeping the reports of the tasks that ended when they are wanted.
struct Recording<'a> {
    bar: &'a mut Bar,
    tasks: Option<Vec<TaskReport>>,
}

impl Reporter for Recording<'_> {
    fn phase(&mut self, what: &str) {
        self.bar.phase(what);
    }

    fn progress(&mut self, p: Progress) {
        self.bar.progress(p);
    }

    fn tick(&mut self) {
        self.bar.tick();
    }

    fn wants_tasks(&self) -> bool {
        self.tasks.is_some()
    }

    fn tasks(&mut self, reports: Vec<TaskReport>) {
        if let Some(tasks) = &mut self.tasks {
            tasks.extend(reports);
        }
    }
}

impl EngineArg {
    /// The name `--engine` takes.
    pub fn name(self) -> &'static str {
        match self {
            EngineArg::Local => "local",
            EngineArg::Lambda => "lambda",
        }
    }
}
