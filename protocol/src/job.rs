//! Job files (TOML, or the same structure as JSON) and tails (the TOML syntax written by a
//! thunk): parsing, validation, and resolution into thunks with ids. A job built in code
//! ([`crate::builder::JobBuilder`]) goes through the same checks: a [`JobSpec`] exists only once
//! checked.
//!
//! Parsing is pure: the caller reads the file, hashes the values and pins host programs, then
//! calls [`JobSpec::resolve`]. Every error names the file and the place in it (thunk, key), and
//! nothing is resolved unless the whole job is valid. `docs/jobs.md` documents the format.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::thunk::{
    Program, ROOT_DIR, ROOT_RESERVED, Ref, STDOUT_OUTPUT, Thunk, check_sandbox_path, check_sandbox_paths,
};

/// The first line of a thunk output that is a tail call (a dynamic thunk).
pub const TAIL_MARKER: &str = "# thunkmesh-tail v1\n";

/// Timeout of a thunk that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether an output's bytes are a tail to be forced in turn.
pub fn is_tail(bytes: &[u8]) -> bool {
    bytes.starts_with(TAIL_MARKER.as_bytes())
}

/// A job file (or tail) that failed to parse or validate: which file, where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {place}{problem}")]
pub struct JobError {
    /// The file, as the user named it.
    pub file: String,
    /// Where in the file (`thunk `x`, key `inputs`: `), possibly empty.
    pub place: String,
    /// What is wrong.
    pub problem: JobProblem,
}

/// What is wrong with a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobProblem {
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A ref names no value, thunk or output of the job.
    #[error("`{0}` is not a value, nor `thunk#output` of a thunk in this job")]
    UnknownRef(String),
    /// Two thunks share a name.
    #[error("thunk name `{0}` is used twice")]
    DuplicateThunk(String),
    /// A thunk lists an output twice.
    #[error("output `{0}` is listed twice")]
    DuplicateOutput(String),
    /// A name is empty or holds `#` or `/`.
    #[error("name `{0}` must be non-empty and contain no `#` or `/`")]
    BadName(String),
    /// A path leaves its sandbox (or the output directory), or paths overlap.
    #[error("{0}")]
    Path(String),
    /// Thunks depend on each other in a loop.
    #[error("thunks form a cycle: {0}")]
    Cycle(String),
    /// A timeout is not a duration like `30s` or `5m`.
    #[error("timeout `{0}` is not a duration of at least 1ms such as `30s` or `5m`")]
    Timeout(String),
    /// A job with no targets, or a tail without `result`.
    #[error("{0}")]
    Missing(String),
    /// A file named by the job cannot be read.
    #[error("cannot read `{path}`: {reason}")]
    File {
        /// The path as written in the job.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A host program is not usable.
    #[error("host program `{path}`: {reason}")]
    HostProgram {
        /// The path as written in the job.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl JobError {
    /// An error at `place` (may be empty) of `file`.
    pub fn new(file: &str, place: impl Into<String>, problem: JobProblem) -> JobError {
        JobError { file: file.to_owned(), place: place.into(), problem }
    }
}

/// A ref as written in a job: a value name, or `thunk#output`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefSpec {
    /// A value of the `[values]` table.
    Value(String),
    /// An output of a thunk of the job.
    Output {
        /// The thunk's name.
        thunk: String,
        /// The output path.
        output: String,
    },
}

impl fmt::Display for RefSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefSpec::Value(v) => write!(f, "{v}"),
            RefSpec::Output { thunk, output } => write!(f, "{thunk}#{output}"),
        }
    }
}

/// A program as written in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramSpec {
    /// Content-addressed.
    Ref(RefSpec),
    /// A host program by absolute path.
    Host(String),
}

/// What a thunk ships as its own root (its `ship` key): files that travel with the job, so a node
/// without them runs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShipSpec {
    /// A file or folder by its absolute path. In a job, on the client's disk: a program with the
    /// shared libraries it loads, a folder with every file under it. In a tail, in the own root of
    /// the thunk that wrote it: the files at or under the path (`/` for all of them).
    Path(String),
    /// A Python interpreter with the modules a step imports (and what they import), found by
    /// importing them on the client's disk. Jobs only.
    Python {
        /// The interpreter, by its absolute path.
        interpreter: String,
        /// Module names, such as `cv2` or `xml.etree.ElementTree`.
        modules: Vec<String>,
    },
}

/// One validated thunk of a job, still by names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThunkSpec {
    /// Unique in the job.
    pub name: String,
    /// What runs.
    pub program: ProgramSpec,
    /// argv after argv\[0\].
    pub args: Vec<String>,
    /// The whole environment.
    pub env: BTreeMap<String, String>,
    /// Sandbox path -> ref.
    pub inputs: BTreeMap<String, RefSpec>,
    /// Declared outputs, sorted.
    pub outputs: Vec<String>,
    /// Run time limit.
    pub timeout: Duration,
    /// The program may use the node's network.
    pub network: bool,
    /// The program's standard output is its output `stdout` (listed in `outputs`).
    pub stdout: bool,
    /// The folder of the sandbox the program starts in (its top when `None`).
    pub dir: Option<String>,
    /// What it brings as its own root, besides its `.root/` inputs.
    pub ship: Vec<ShipSpec>,
}

/// Whether the text is a job file (values on the client's disk, targets) or a tail (values in
/// the sandbox that wrote it, a `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecKind {
    /// A job file.
    Job,
    /// A tail written by a thunk.
    Tail,
}

/// A validated job or tail, by names (made only by [`JobSpec::parse`] and the builder, so that
/// every one was checked).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobSpec {
    /// Value name -> path (relative to the job file, or to the sandbox for a tail).
    pub values: BTreeMap<String, String>,
    /// Thunks in dependency order (producers before consumers).
    pub thunks: Vec<ThunkSpec>,
    /// Output file -> ref (jobs only).
    pub targets: BTreeMap<String, RefSpec>,
    /// What a tail evaluates to (tails only).
    pub result: Option<RefSpec>,
}

/// A job whose values and host programs are known: thunks with ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedJob {
    /// Thunks in dependency order.
    pub thunks: Vec<NamedThunk>,
    /// Output file -> ref.
    pub targets: BTreeMap<String, Ref>,
    /// A tail's result.
    pub result: Option<Ref>,
}

/// A thunk with the name the job gave it and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedThunk {
    /// Name in the job (for messages only; not part of the id).
    pub name: String,
    /// The thunk's id.
    pub id: Id,
    /// The thunk.
    pub thunk: Thunk,
}

/// A job as written, before any check.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJob {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) values: BTreeMap<String, String>,
    #[serde(default, rename = "thunk")]
    pub(crate) thunks: Vec<RawThunk>,
    #[serde(default)]
    pub(crate) targets: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<String>,
}

/// One thunk as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThunk {
    pub(crate) name: String,
    pub(crate) program: RawProgram,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) outputs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) network: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stdout: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) ship: Vec<RawShip>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum RawShip {
    Path(String),
    Python(RawPython),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPython {
    pub(crate) python: String,
    #[serde(default)]
    pub(crate) modules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum RawProgram {
    Ref(String),
    Host(RawHost),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub(crate) host: String,
}

impl JobSpec {
    /// Parses and validates `text` (TOML); `file` names it in errors.
    pub fn parse(text: &str, file: &str, kind: SpecKind) -> Result<JobSpec, JobError> {
        let raw: RawJob = toml::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
        Checker { file, kind }.check(raw)
    }

    /// Parses and validates a job written as JSON: the TOML file's structure, with `thunk` an
    /// array of objects (`docs/jobs.md`); `file` names it in errors.
    pub fn parse_json(text: &str, file: &str) -> Result<JobSpec, JobError> {
        let raw: RawJob = serde_json::from_str(text).map_err(|e| {
            let place = format!("line {}, column {}: ", e.line(), e.column());
            let message = e.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m).to_owned();
            JobError::new(file, place, JobProblem::Syntax(message))
        })?;
        JobSpec::check(raw, file)
    }

    /// Checks a job built in code (`file` names it in errors).
    pub(crate) fn check(raw: RawJob, file: &str) -> Result<JobSpec, JobError> {
        Checker { file, kind: SpecKind::Job }.check(raw)
    }

    /// Builds the thunks, given the id of every value and the pin of every host program; a
    /// value or host program missing from the maps is an error naming it (the caller builds
    /// them from [`JobSpec::values`] and [`JobSpec::host_programs`]).
    pub fn resolve(
        &self,
        values: &BTreeMap<String, Id>,
        hosts: &BTreeMap<String, Id>,
    ) -> Result<ResolvedJob, JobProblem> {
        self.resolve_shipped(values, hosts, &BTreeMap::new())
    }

    /// [`JobSpec::resolve`] for a job whose thunks ship files: `roots` holds, by thunk name, each
    /// file its `ship` brings (absolute path in its root -> blob), which become its inputs under
    /// `.root/`. A thunk that ships and has no entry is an error, as is a shipped file that is
    /// also an input.
    pub fn resolve_shipped(
        &self,
        values: &BTreeMap<String, Id>,
        hosts: &BTreeMap<String, Id>,
        roots: &BTreeMap<String, BTreeMap<String, Id>>,
    ) -> Result<ResolvedJob, JobProblem> {
        let mut outputs: HashMap<&str, Id> = HashMap::new();
        let mut thunks = Vec::with_capacity(self.thunks.len());
        for spec in &self.thunks {
            let to_ref = |r: &RefSpec| resolve_ref(r, values, &outputs);
            let program = match &spec.program {
                ProgramSpec::Ref(r) => Program::Ref(to_ref(r)?),
                ProgramSpec::Host(path) => {
                    let pin = hosts.get(path).ok_or_else(|| JobProblem::HostProgram {
                        path: path.clone(),
                        reason: "was not pinned".into(),
                    })?;
                    Program::Host { path: path.clone(), pin: *pin }
                }
            };
            let mut inputs: BTreeMap<String, Ref> =
                spec.inputs.iter().map(|(p, r)| Ok((p.clone(), to_ref(r)?))).collect::<Result<_, _>>()?;
            shipped_inputs(spec, roots, &mut inputs)?;
            let thunk = Thunk {
                program,
                args: spec.args.clone(),
                env: Arc::new(spec.env.clone()),
                inputs: inputs.into_iter().collect(),
                outputs: spec.outputs.clone(),
                timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
                network: spec.network,
                stdout: spec.stdout,
                dir: spec.dir.clone(),
            };
            let id = thunk.id();
            outputs.insert(&spec.name, id);
            thunks.push(NamedThunk { name: spec.name.clone(), id, thunk });
        }
        let to_ref = |r: &RefSpec| resolve_ref(r, values, &outputs);
        Ok(ResolvedJob {
            thunks,
            targets: self.targets.iter().map(|(f, r)| Ok((f.clone(), to_ref(r)?))).collect::<Result<_, _>>()?,
            result: self.result.as_ref().map(to_ref).transpose()?,
        })
    }

    /// Every host program path the job names.
    pub fn host_programs(&self) -> BTreeSet<&str> {
        self.thunks
            .iter()
            .filter_map(|t| match &t.program {
                ProgramSpec::Host(p) => Some(p.as_str()),
                ProgramSpec::Ref(_) => None,
            })
            .collect()
    }
}

/// Adds to `inputs` the files `roots` has for `spec`'s `ship`, under [`ROOT_DIR`].
fn shipped_inputs(
    spec: &ThunkSpec,
    roots: &BTreeMap<String, BTreeMap<String, Id>>,
    inputs: &mut BTreeMap<String, Ref>,
) -> Result<(), JobProblem> {
    if spec.ship.is_empty() {
        return Ok(());
    }
    let files = roots
        .get(&spec.name)
        .ok_or_else(|| JobProblem::Missing(format!("thunk `{}` ships files, and none were found for it", spec.name)))?;
    for (path, id) in files {
        let input = format!("{ROOT_DIR}{path}");
        if inputs.get(&input).is_some_and(|r| *r != Ref::Blob(*id)) {
            let why = format!("thunk `{}`: `{input}` is both an input and a shipped file, with other bytes", spec.name);
            return Err(JobProblem::Path(why));
        }
        inputs.insert(input, Ref::Blob(*id));
    }
    Ok(())
}

/// `r` with ids; a value without an id, or an output of a thunk not resolved before (thunks are
/// in dependency order), is an unknown ref.
fn resolve_ref(r: &RefSpec, values: &BTreeMap<String, Id>, outputs: &HashMap<&str, Id>) -> Result<Ref, JobProblem> {
    let found = match r {
        RefSpec::Value(v) => values.get(v).map(|id| Ref::Blob(*id)),
        RefSpec::Output { thunk, output } => {
            outputs.get(thunk.as_str()).map(|id| Ref::Output { thunk: *id, name: output.clone() })
        }
    };
    found.ok_or_else(|| JobProblem::UnknownRef(r.to_string()))
}

fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> JobError {
    let place = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        }
        None => String::new(),
    };
    JobError::new(file, place, JobProblem::Syntax(e.message().trim().to_owned()))
}

struct Checker<'a> {
    file: &'a str,
    kind: SpecKind,
}

impl Checker<'_> {
    fn err(&self, place: impl Into<String>, problem: JobProblem) -> JobError {
        JobError::new(self.file, place, problem)
    }

    fn check(&self, raw: RawJob) -> Result<JobSpec, JobError> {
        for (name, path) in &raw.values {
            self.check_name(name, &format!("values, key `{name}`: "))?;
            if self.kind == SpecKind::Tail {
                check_sandbox_path(path)
                    .map_err(|e| self.err(format!("values, key `{name}`: "), JobProblem::Path(e.to_string())))?;
            }
        }
        let mut declared: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for t in &raw.thunks {
            self.check_name(&t.name, "thunk: ")?;
            let stdout = t.stdout.then_some(STDOUT_OUTPUT);
            let outs: BTreeSet<&str> = t.outputs.iter().map(String::as_str).chain(stdout).collect();
            if declared.insert(&t.name, outs).is_some() {
                return Err(self.err("", JobProblem::DuplicateThunk(t.name.clone())));
            }
        }
        let refs = RefTable { values: &raw.values, outputs: &declared };
        let mut thunks = Vec::with_capacity(raw.thunks.len());
        for t in &raw.thunks {
            thunks.push(self.check_thunk(t, &refs)?);
        }
        let targets = self.check_targets(&raw, &refs)?;
        let result = self.check_result(&raw, &refs)?;
        let thunks = self.order(thunks)?;
        Ok(JobSpec { values: raw.values, thunks, targets, result })
    }

    fn check_name(&self, name: &str, place: &str) -> Result<(), JobError> {
        if name.is_empty() || name.contains(['#', '/']) {
            return Err(self.err(place, JobProblem::BadName(name.to_owned())));
        }
        Ok(())
    }

    fn check_thunk(&self, t: &RawThunk, refs: &RefTable<'_>) -> Result<ThunkSpec, JobError> {
        let place = |key: &str| format!("thunk `{}`, key `{key}`: ", t.name);
        let program = match &t.program {
            RawProgram::Ref(r) => ProgramSpec::Ref(refs.parse(r).map_err(|p| self.err(place("program"), p))?),
            RawProgram::Host(h) if h.host.starts_with('/') => ProgramSpec::Host(h.host.clone()),
            RawProgram::Host(h) => {
                let reason = "must be an absolute path".to_owned();
                let problem = JobProblem::HostProgram { path: h.host.clone(), reason };
                return Err(self.err(place("program"), problem));
            }
        };
        let mut inputs = BTreeMap::new();
        for (path, r) in &t.inputs {
            let r = refs.parse(r).map_err(|p| self.err(place(&format!("inputs.{path}")), p))?;
            inputs.insert(path.clone(), r);
        }
        let mut outputs = t.outputs.clone();
        if t.stdout {
            outputs.push(STDOUT_OUTPUT.to_owned());
        }
        outputs.sort();
        if let Some(w) = outputs.windows(2).find(|w| w[0] == w[1]) {
            return Err(self.err(place("outputs"), JobProblem::DuplicateOutput(w[0].clone())));
        }
        if outputs.is_empty() {
            let missing = "a thunk needs at least one output (or `stdout = true`)".into();
            return Err(self.err(place("outputs"), JobProblem::Missing(missing)));
        }
        let paths: Vec<&str> = inputs.keys().chain(&outputs).map(String::as_str).collect();
        check_sandbox_paths(&paths).map_err(|e| self.err(place("inputs/outputs"), JobProblem::Path(e.to_string())))?;
        if let Some(dir) = &t.dir {
            check_sandbox_path(dir).map_err(|e| self.err(place("dir"), JobProblem::Path(e.to_string())))?;
        }
        let timeout = match &t.timeout {
            None => DEFAULT_TIMEOUT,
            // Timeouts travel in whole milliseconds: less than one would be no time at all.
            Some(s) => humantime::parse_duration(s)
                .ok()
                .filter(|d| *d >= Duration::from_millis(1))
                .ok_or_else(|| self.err(place("timeout"), JobProblem::Timeout(s.clone())))?,
        };
        let ship = t.ship.iter().map(|item| self.check_ship(item)).collect::<Result<Vec<_>, _>>();
        let ship = ship.map_err(|problem| self.err(place("ship"), problem))?;
        if let (ProgramSpec::Host(path), false) = (&program, ship.is_empty())
            && !ship.iter().any(|item| ships(item, path))
            && !inputs.contains_key(&format!("{ROOT_DIR}{path}"))
        {
            let reason = "is not shipped: list it (or a folder holding it) in `ship`".to_owned();
            return Err(self.err(place("program"), JobProblem::HostProgram { path: path.clone(), reason }));
        }
        let spec = ThunkSpec {
            name: t.name.clone(),
            program,
            args: t.args.clone(),
            env: t.env.clone(),
            inputs,
            outputs,
            timeout,
            network: t.network,
            stdout: t.stdout,
            dir: t.dir.clone(),
            ship,
        };
        self.check_strings(&spec)?;
        Ok(spec)
    }

    /// One item of `ship`: an absolute, normal path outside the folders the sandbox provides (in a
    /// tail, `/` too); a Python interpreter and module names (jobs only).
    fn check_ship(&self, item: &RawShip) -> Result<ShipSpec, JobProblem> {
        let path_problem = |path: &str, why: &str| JobProblem::Path(format!("cannot ship `{path}`: {why}"));
        let check_path = |path: &str| -> Result<(), JobProblem> {
            let parts: Vec<&str> =
                path.strip_prefix('/').ok_or_else(|| path_problem(path, "not an absolute path"))?.split('/').collect();
            if path == "/" {
                return match self.kind {
                    SpecKind::Tail => Ok(()),
                    SpecKind::Job => Err(path_problem(path, "the whole file system is not a root")),
                };
            }
            if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
                return Err(path_problem(path, "not a normal path (no `.`, `..`, `//` or trailing `/`)"));
            }
            if ROOT_RESERVED.contains(&parts[0]) {
                return Err(path_problem(path, "the sandbox provides /dev, /tmp, /thunk and /.program itself"));
            }
            Ok(())
        };
        match item {
            RawShip::Path(path) => check_path(path).map(|()| ShipSpec::Path(path.clone())),
            RawShip::Python(_) if self.kind == SpecKind::Tail => Err(JobProblem::Syntax(
                "a tail ships files of its writer's own root by path; a Python interpreter ships from a job".into(),
            )),
            RawShip::Python(RawPython { python, modules }) => {
                check_path(python)?;
                let module_name = |m: &String| {
                    !m.is_empty()
                        && m.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
                };
                if let Some(bad) = modules.iter().find(|m| !module_name(m)) {
                    return Err(JobProblem::Syntax(format!("`{bad}` is not a Python module name")));
                }
                Ok(ShipSpec::Python { interpreter: python.clone(), modules: modules.clone() })
            }
        }
    }

    /// Runs the thunk-level rules (env names, NUL bytes) on a stand-in with dummy refs.
    fn check_strings(&self, spec: &ThunkSpec) -> Result<(), JobError> {
        let dummy = Ref::Blob(Id::of_blob(b""));
        let stand_in = Thunk {
            program: match &spec.program {
                ProgramSpec::Host(path) => Program::Host { path: path.clone(), pin: Id::of_blob(b"") },
                ProgramSpec::Ref(_) => Program::Ref(dummy.clone()),
            },
            args: spec.args.clone(),
            env: Arc::new(spec.env.clone()),
            inputs: spec.inputs.keys().map(|k| (k.clone(), dummy.clone())).collect(),
            outputs: spec.outputs.clone(),
            timeout_ms: 1,
            network: spec.network,
            stdout: spec.stdout,
            dir: spec.dir.clone(),
        };
        let place = format!("thunk `{}`: ", spec.name);
        stand_in.validate().map_err(|e| self.err(place, JobProblem::Path(e.to_string())))
    }

    fn check_targets(&self, raw: &RawJob, refs: &RefTable<'_>) -> Result<BTreeMap<String, RefSpec>, JobError> {
        if self.kind == SpecKind::Tail && !raw.targets.is_empty() {
            return Err(self.err("", JobProblem::Syntax("a tail has a `result`, not `[targets]`".into())));
        }
        if self.kind == SpecKind::Job && raw.targets.is_empty() {
            return Err(self.err("", JobProblem::Missing("the job has no `[targets]`: nothing to compute".into())));
        }
        let mut targets = BTreeMap::new();
        for (file, r) in &raw.targets {
            let place = format!("targets, key `{file}`: ");
            check_sandbox_path(file).map_err(|e| self.err(&place, JobProblem::Path(e.to_string())))?;
            targets.insert(file.clone(), refs.parse(r).map_err(|p| self.err(&place, p))?);
        }
        let files: Vec<&str> = targets.keys().map(String::as_str).collect();
        check_sandbox_paths(&files).map_err(|e| self.err("targets: ", JobProblem::Path(e.to_string())))?;
        Ok(targets)
    }

    fn check_result(&self, raw: &RawJob, refs: &RefTable<'_>) -> Result<Option<RefSpec>, JobError> {
        match (&raw.result, self.kind) {
            (Some(_), SpecKind::Job) => {
                Err(self.err("", JobProblem::Syntax("`result` belongs in a tail; a job has `[targets]`".into())))
            }
            (None, SpecKind::Tail) => {
                Err(self.err("", JobProblem::Missing("a tail needs `result = \"thunk#output\"`".into())))
            }
            (Some(r), SpecKind::Tail) => Ok(Some(refs.parse(r).map_err(|p| self.err("key `result`: ", p))?)),
            (None, SpecKind::Job) => Ok(None),
        }
    }

    /// Orders thunks producers-first, or names a cycle.
    fn order(&self, thunks: Vec<ThunkSpec>) -> Result<Vec<ThunkSpec>, JobError> {
        let index: HashMap<&str, usize> = thunks.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let deps: Vec<Vec<usize>> =
            thunks.iter().map(|t| thunk_deps(t).filter_map(|n| index.get(n).copied()).collect()).collect();
        let mut state = vec![Visit::New; thunks.len()];
        let mut order = Vec::with_capacity(thunks.len());
        for start in 0..thunks.len() {
            if let Some(cycle) = visit(start, &deps, &mut state, &mut order) {
                let names: Vec<&str> = cycle.iter().rev().map(|&i| thunks[i].name.as_str()).collect();
                return Err(self.err("", JobProblem::Cycle(names.join(" -> "))));
            }
        }
        let mut slots: Vec<Option<ThunkSpec>> = thunks.into_iter().map(Some).collect();
        Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
    }
}

/// Whether `item` brings the file at `path` (it is the file, or a folder above it).
fn ships(item: &ShipSpec, path: &str) -> bool {
    let covers = |shipped: &str| {
        shipped == "/" || path == shipped || path.strip_prefix(shipped).is_some_and(|rest| rest.starts_with('/'))
    };
    match item {
        ShipSpec::Path(shipped) => covers(shipped),
        ShipSpec::Python { interpreter, .. } => path == interpreter,
    }
}

fn thunk_deps(t: &ThunkSpec) -> impl Iterator<Item = &str> {
    let program = match &t.program {
        ProgramSpec::Ref(r) => Some(r),
        ProgramSpec::Host(_) => None,
    };
    program.into_iter().chain(t.inputs.values()).filter_map(|r| match r {
        RefSpec::Output { thunk, .. } => Some(thunk.as_str()),
        RefSpec::Value(_) => None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    Open,
    Closed,
}

/// Depth-first post-order; returns the cycle (closing node first) if one is found.
fn visit(i: usize, deps: &[Vec<usize>], state: &mut [Visit], order: &mut Vec<usize>) -> Option<Vec<usize>> {
    match state[i] {
        Visit::Closed => return None,
        Visit::Open => return Some(vec![i]),
        Visit::New => {}
    }
    state[i] = Visit::Open;
    for &d in &deps[i] {
        if let Some(mut cycle) = visit(d, deps, state, order) {
            let closed = cycle.len() > 1 && cycle[0] == *cycle.last().unwrap_or(&usize::MAX);
            if !closed {
                cycle.push(i);
            }
            return Some(cycle);
        }
    }
    state[i] = Visit::Closed;
    order.push(i);
    None
}

struct RefTable<'a> {
    values: &'a BTreeMap<String, String>,
    outputs: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
}

impl RefTable<'_> {
    fn parse(&self, text: &str) -> Result<RefSpec, JobProblem> {
        let unknown = || JobProblem::UnknownRef(text.to_owned());
        match text.split_once('#') {
            None if self.values.contains_key(text) => Ok(RefSpec::Value(text.to_owned())),
            None => Err(unknown()),
            Some((thunk, output)) => {
                let outs = self.outputs.get(thunk).ok_or_else(unknown)?;
                if !outs.contains(output) {
                    return Err(unknown());
                }
                Ok(RefSpec::Output { thunk: thunk.to_owned(), output: output.to_owned() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[values]
corpus = "data/corpus.txt"
script = "bin/count.sh"

[[thunk]]
name = "merge"
program = { host = "/usr/bin/sort" }
inputs = { "a" = "count-0#out.txt" }
outputs = ["merged"]

[[thunk]]
name = "count-0"
program = "script"
args = ["in.txt", "out.txt"]
env = { LC_ALL = "C" }
inputs = { "in.txt" = "corpus" }
outputs = ["out.txt"]
timeout = "30s"

[targets]
"counts.txt" = "merge#merged"
"#;

    fn parse(text: &str) -> Result<JobSpec, JobError> {
        JobSpec::parse(text, "job.toml", SpecKind::Job)
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("job should be refused").to_string()
    }

    #[test]
    fn network_is_off_unless_a_thunk_asks_and_must_be_a_boolean() {
        assert!(!parse(GOOD).expect("valid job").thunks[0].network);
        let asking = GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\nnetwork = true");
        assert!(parse(&asking).expect("valid job").thunks[0].network);
        let text = GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\nnetwork = \"yes\"");
        assert!(
            error(&text).contains("line 20, column 11: invalid type: string \"yes\", expected a boolean"),
            "{}",
            error(&text)
        );
    }

    /// `stdout = true` adds the output `stdout`, which other thunks and targets may name; a thunk
    /// with neither outputs nor `stdout` is refused with a message saying both ways.
    #[test]
    fn a_thunk_may_give_its_standard_output_instead_of_files() {
        let printing = GOOD
            .replace("outputs = [\"out.txt\"]\ntimeout", "stdout = true\ntimeout")
            .replace("count-0#out.txt", "count-0#stdout");
        let spec = parse(&printing).expect("valid job");
        let count = spec.thunks.iter().find(|t| t.name == "count-0").expect("count-0");
        assert!(count.stdout);
        assert_eq!(count.outputs, [STDOUT_OUTPUT]);
        let silent = printing.replace("stdout = true\n", "").replace("count-0#stdout", "corpus");
        assert!(
            error(&silent).contains("a thunk needs at least one output (or `stdout = true`)"),
            "{}",
            error(&silent)
        );
    }

    /// `dir` names the folder of the sandbox the program starts in; it must stay inside it.
    #[test]
    fn a_thunk_may_start_in_a_folder_of_its_sandbox() {
        let inside = GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\ndir = \"work/here\"");
        let spec = parse(&inside).expect("valid job");
        assert_eq!(spec.thunks.iter().find(|t| t.name == "count-0").and_then(|t| t.dir.as_deref()), Some("work/here"));
        let climbing = GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\ndir = \"../up\"");
        assert_eq!(
            error(&climbing),
            "job.toml: thunk `count-0`, key `dir`: path `../up` must be relative and stay inside the sandbox"
        );
    }

    #[test]
    fn a_good_job_is_ordered_producers_first_and_resolves() {
        let spec = parse(GOOD).expect("valid job");
        let names: Vec<&str> = spec.thunks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["count-0", "merge"]);
        assert_eq!(spec.thunks[0].timeout, Duration::from_secs(30));
        assert_eq!(spec.thunks[1].timeout, DEFAULT_TIMEOUT);
        let values =
            BTreeMap::from([("corpus".to_owned(), Id::of_blob(b"c")), ("script".to_owned(), Id::of_blob(b"s"))]);
        let hosts = BTreeMap::from([("/usr/bin/sort".to_owned(), Id::of_blob(b"sort"))]);
        let job = spec.resolve(&values, &hosts).expect("every value and host pinned");
        let count = job.thunks[0].id;
        assert_eq!(job.thunks[1].thunk.inputs["a"], Ref::Output { thunk: count, name: "out.txt".into() });
        assert_eq!(job.targets["counts.txt"], Ref::Output { thunk: job.thunks[1].id, name: "merged".into() });
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace("timeout = \"30s\"", "timout = \"30s\"");
        let e = error(&text);
        assert!(e.starts_with("job.toml: line 19, column 1: unknown field `timout`"), "{e}");
    }

    #[test]
    fn unknown_ref_names_thunk_and_key() {
        let text = GOOD.replace("\"corpus\" }", "\"corpuss\" }");
        assert_eq!(
            error(&text),
            "job.toml: thunk `count-0`, key `inputs.in.txt`: `corpuss` is not a value, nor `thunk#output` of a thunk in this job"
        );
        let text = GOOD.replace("count-0#out.txt", "count-0#nope");
        assert!(error(&text).contains("thunk `merge`, key `inputs.a`: `count-0#nope` is not"));
    }

    #[test]
    fn cycle_is_named() {
        let text = GOOD.replace("inputs = { \"in.txt\" = \"corpus\" }", "inputs = { \"in.txt\" = \"merge#merged\" }");
        let e = error(&text);
        assert!(
            e == "job.toml: thunks form a cycle: merge -> count-0 -> merge"
                || e == "job.toml: thunks form a cycle: count-0 -> merge -> count-0",
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let text = GOOD.replace("name = \"merge\"", "name = \"count-0\"");
        assert_eq!(error(&text), "job.toml: thunk name `count-0` is used twice");
        let text = GOOD.replace("outputs = [\"out.txt\"]", "outputs = [\"out.txt\", \"out.txt\"]");
        assert_eq!(error(&text), "job.toml: thunk `count-0`, key `outputs`: output `out.txt` is listed twice");
    }

    #[test]
    fn escaping_paths_are_refused() {
        let text = GOOD.replace("outputs = [\"out.txt\"]", "outputs = [\"../out.txt\"]");
        let text = text.replace("count-0#out.txt", "count-0#../out.txt");
        assert_eq!(
            error(&text),
            "job.toml: thunk `count-0`, key `inputs/outputs`: path `../out.txt` must be relative and stay inside the sandbox"
        );
        let text = GOOD.replace("\"counts.txt\" =", "\"/etc/counts.txt\" =");
        assert!(error(&text).starts_with("job.toml: targets, key `/etc/counts.txt`: path"));
    }

    #[test]
    fn bad_timeout_and_relative_host_program_are_refused() {
        let text = GOOD.replace("\"30s\"", "\"soon\"");
        assert!(error(&text).contains("key `timeout`: timeout `soon` is not a duration"));
        // Issue 12, finding 11: under a millisecond used to pass here and fail at the rendezvous.
        let text = GOOD.replace("timeout = \"30s\"", "timeout = \"500us\"");
        assert!(error(&text).contains("key `timeout`: timeout `500us` is not a duration"), "{}", error(&text));
        let text = GOOD.replace("/usr/bin/sort", "sort");
        assert!(error(&text).contains("host program `sort`: must be an absolute path"));
    }

    #[test]
    fn job_without_targets_and_tail_without_result_are_refused() {
        let cut = GOOD.split("[targets]").next().unwrap_or_default();
        assert!(error(cut).contains("the job has no `[targets]`"));
        let tail = JobSpec::parse(cut, "tail", SpecKind::Tail).expect_err("no result");
        assert!(tail.to_string().contains("a tail needs `result"));
    }

    #[test]
    fn shipped_files_are_absolute_normal_and_hold_the_host_program() {
        let job = |ship: &str, kind: SpecKind| {
            let text = format!(
                "{}[[thunk]]\nname = \"t\"\nprogram = {{ host = \"/usr/bin/ffmpeg\" }}\nship = {ship}\nstdout = true\n{}",
                if kind == SpecKind::Tail { "result = \"t#stdout\"\n" } else { "" },
                if kind == SpecKind::Job { "[targets]\n\"o\" = \"t#stdout\"\n" } else { "" },
            );
            JobSpec::parse(&text, "job.toml", kind)
        };
        let spec =
            job(r#"["/usr/bin/ffmpeg", { python = "/usr/bin/python3", modules = ["cv2", "xml.dom"] }]"#, SpecKind::Job)
                .expect("valid");
        assert_eq!(spec.thunks[0].ship.len(), 2);
        let refused = |ship: &str, kind: SpecKind, says: &str| {
            let e = job(ship, kind).expect_err(ship).to_string();
            assert!(e.contains("key `") && e.contains(says), "{ship}: {e}");
        };
        refused(r#"["usr/bin/ffmpeg"]"#, SpecKind::Job, "not an absolute path");
        refused(r#"["/usr/bin/../bin/ffmpeg"]"#, SpecKind::Job, "not a normal path");
        refused(r#"["/tmp/ffmpeg", "/usr/bin/ffmpeg"]"#, SpecKind::Job, "the sandbox provides");
        refused(r#"["/"]"#, SpecKind::Job, "the whole file system");
        refused(r#"["/usr/bin/ffprobe"]"#, SpecKind::Job, "is not shipped");
        refused(r#"[{ python = "/usr/bin/python3", modules = ["no-dash"] }]"#, SpecKind::Job, "not a Python module");
        refused(r#"[{ python = "/usr/bin/python3" }]"#, SpecKind::Tail, "a tail ships");
        assert!(job(r#"["/"]"#, SpecKind::Tail).is_ok(), "a tail takes its writer's whole root");
        assert!(job(r#"["/usr"]"#, SpecKind::Job).is_ok(), "a folder holding the program ships it");
    }

    #[test]
    fn tail_values_stay_in_the_sandbox() {
        let text = "result = \"a#o\"\n[values]\nx = \"../secret\"\n[[thunk]]\nname = \"a\"\nprogram = \"x\"\noutputs = [\"o\"]\n";
        let e = JobSpec::parse(text, "tail", SpecKind::Tail).expect_err("escaping value");
        assert!(e.to_string().contains("values, key `x`: path `../secret`"), "{e}");
    }

    #[test]
    fn tail_marker_is_recognised() {
        assert!(is_tail(b"# thunkmesh-tail v1\n[values]\n"));
        assert!(!is_tail(b"# thunkmesh-tail v2\n"));
    }

    #[test]
    fn a_json_job_is_the_toml_job() {
        let json = r#"{"values": {"corpus": "corpus.txt", "script": "count.sh"},
            "thunk": [{"name": "count-0", "program": "script", "inputs": {"in.txt": "corpus"}, "outputs": ["out.txt"], "timeout": "30s"},
                      {"name": "merge", "program": {"host": "/usr/bin/sort"}, "args": ["a"], "inputs": {"a": "count-0#out.txt"}, "outputs": ["merged"]}],
            "targets": {"counts.txt": "merge#merged"}}"#;
        let from_json = JobSpec::parse_json(json, "job.json").expect("valid JSON job");
        assert_eq!(from_json.thunks.len(), 2);
        assert_eq!(from_json.targets["counts.txt"].to_string(), "merge#merged");
        let e = JobSpec::parse_json("{\"thunk\": [], \"targts\": {}}", "job.json").expect_err("typo").to_string();
        assert!(e.starts_with("job.json: line 1, column 22: unknown field `targts`"), "{e}");
    }
}
