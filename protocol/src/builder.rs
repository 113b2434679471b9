//! Building a job in code: [`JobBuilder`] and [`ThunkBuilder`] write the same structure a job
//! file holds, and [`JobBuilder::build`] runs every check [`JobSpec::parse`] runs (names, refs,
//! paths, cycles, timeouts, strings), returning the same errors instead of panicking later.
//! [`JobBuilder::to_toml`] writes the job as a file `thunkmesh run` takes.
//!
//! ```
//! use thunkmesh_protocol::builder::{JobBuilder, ThunkBuilder};
//!
//! let job = JobBuilder::new()
//!     .value("text", "words.txt")
//!     .thunk(ThunkBuilder::host("count", "/bin/sh").args(["-c", "wc -w < in > n"]).input("in", "text").output("n"))
//!     .target("count.txt", "count#n");
//! let spec = job.build().expect("a valid job");
//! assert_eq!(spec.thunks.len(), 1);
//! ```

use crate::job::{JobError, JobSpec, RawHost, RawJob, RawProgram, RawPython, RawShip, RawThunk};

/// What errors of a built job name as their file.
pub const BUILT_JOB: &str = "the built job";

/// A job under construction.
#[derive(Debug, Clone, Default)]
pub struct JobBuilder {
    raw: RawJob,
}

impl JobBuilder {
    /// An empty job.
    pub fn new() -> JobBuilder {
        JobBuilder::default()
    }

    /// A value: the file at `path` (relative to where the job is loaded from), named `name`.
    pub fn value(mut self, name: impl Into<String>, path: impl Into<String>) -> JobBuilder {
        self.raw.values.insert(name.into(), path.into());
        self
    }

    /// A thunk.
    pub fn thunk(mut self, thunk: ThunkBuilder) -> JobBuilder {
        self.raw.thunks.push(thunk.raw);
        self
    }

    /// A target: `file` in the output folder gets the bytes of `source` (a value name or
    /// `thunk#output`).
    pub fn target(mut self, file: impl Into<String>, source: impl Into<String>) -> JobBuilder {
        self.raw.targets.insert(file.into(), source.into());
        self
    }

    /// The job, checked as a job file is.
    pub fn build(&self) -> Result<JobSpec, JobError> {
        JobSpec::check(self.raw.clone(), BUILT_JOB)
    }

    /// The job as a TOML job file; checked first, so the file is one `thunkmesh run` takes.
    pub fn to_toml(&self) -> Result<String, JobError> {
        self.build()?;
        toml::to_string(&self.raw).map_err(|e| {
            JobError::new(BUILT_JOB, "", crate::job::JobProblem::Syntax(format!("cannot write it as TOML: {e}")))
        })
    }
}

/// A thunk under construction.
#[derive(Debug, Clone)]
pub struct ThunkBuilder {
    raw: RawThunk,
}

impl ThunkBuilder {
    /// A thunk named `name` that runs the node's program at the absolute `path`, pinned by the
    /// hash of the client's copy.
    pub fn host(name: impl Into<String>, path: impl Into<String>) -> ThunkBuilder {
        ThunkBuilder::with(name.into(), RawProgram::Host(RawHost { host: path.into() }))
    }

    /// A thunk named `name` whose program is `program`: a value name or `thunk#output`.
    pub fn program(name: impl Into<String>, program: impl Into<String>) -> ThunkBuilder {
        ThunkBuilder::with(name.into(), RawProgram::Ref(program.into()))
    }

    fn with(name: String, program: RawProgram) -> ThunkBuilder {
        ThunkBuilder {
            raw: RawThunk {
                name,
                program,
                args: Vec::new(),
                env: Default::default(),
                inputs: Default::default(),
                outputs: Vec::new(),
                timeout: None,
                network: false,
                stdout: false,
                dir: None,
                ship: Vec::new(),
            },
        }
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl Into<String>) -> ThunkBuilder {
        self.raw.args.push(arg.into());
        self
    }

    /// More arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> ThunkBuilder {
        self.raw.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable (the environment is only what is set here).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> ThunkBuilder {
        self.raw.env.insert(name.into(), value.into());
        self
    }

    /// An input: `source` (a value name or `thunk#output`) at `path` in the sandbox.
    pub fn input(mut self, path: impl Into<String>, source: impl Into<String>) -> ThunkBuilder {
        self.raw.inputs.insert(path.into(), source.into());
        self
    }

    /// An output the program writes at `path` in its sandbox.
    pub fn output(mut self, path: impl Into<String>) -> ThunkBuilder {
        self.raw.outputs.push(path.into());
        self
    }

    /// How long the program may run, such as `30s` or `5m` (checked by [`JobBuilder::build`]).
    pub fn timeout(mut self, timeout: impl Into<String>) -> ThunkBuilder {
        self.raw.timeout = Some(timeout.into());
        self
    }

    /// Let the program use the node's network.
    pub fn network(mut self) -> ThunkBuilder {
        self.raw.network = true;
        self
    }

    /// The program's standard output is its output `stdout`.
    pub fn stdout(mut self) -> ThunkBuilder {
        self.raw.stdout = true;
        self
    }

    /// The folder of the sandbox the program starts in.
    pub fn dir(mut self, dir: impl Into<String>) -> ThunkBuilder {
        self.raw.dir = Some(dir.into());
        self
    }

    /// Ships the file or folder at the absolute `path` as part of the thunk's own root (a program
    /// with its shared libraries).
    pub fn ship(mut self, path: impl Into<String>) -> ThunkBuilder {
        self.raw.ship.push(RawShip::Path(path.into()));
        self
    }

    /// Ships the Python interpreter at `python` with `modules` and what they import.
    pub fn ship_python<S: Into<String>>(
        mut self,
        python: impl Into<String>,
        modules: impl IntoIterator<Item = S>,
    ) -> ThunkBuilder {
        let modules = modules.into_iter().map(Into::into).collect();
        self.raw.ship.push(RawShip::Python(RawPython { python: python.into(), modules }));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobProblem, SpecKind};

    fn two_steps() -> JobBuilder {
        JobBuilder::new()
            .value("text", "words.txt")
            .thunk(
                ThunkBuilder::host("upper", "/bin/sh")
                    .args(["-c", "tr a-z A-Z < in > out"])
                    .input("in", "text")
                    .output("out"),
            )
            .thunk(
                ThunkBuilder::host("count", "/bin/sh")
                    .args(["-c", "wc -c < in > n"])
                    .input("in", "upper#out")
                    .output("n"),
            )
            .target("n.txt", "count#n")
    }

    #[test]
    fn a_built_job_is_the_job_its_toml_file_parses_to() {
        let built = two_steps().build().expect("valid");
        let text = two_steps().to_toml().expect("toml");
        assert_eq!(JobSpec::parse(&text, "job.toml", SpecKind::Job).expect("parses"), built);
    }

    #[test]
    fn every_check_of_a_file_runs_on_a_built_job() {
        let cycle = two_steps().thunk(ThunkBuilder::host("a", "/bin/sh").input("x", "b#o").output("o"));
        let cycle = cycle.thunk(ThunkBuilder::host("b", "/bin/sh").input("x", "a#o").output("o"));
        let e = cycle.build().expect_err("a cycle");
        assert!(matches!(e.problem, JobProblem::Cycle(_)), "{e}");
        assert!(e.to_string().starts_with("the built job: thunks form a cycle: "), "{e}");

        let unknown = two_steps().target("x", "nope#out").build().expect_err("unknown ref");
        assert_eq!(unknown.problem, JobProblem::UnknownRef("nope#out".into()));
        let escape = two_steps().thunk(ThunkBuilder::host("e", "/bin/sh").output("../x")).build();
        assert!(matches!(escape.expect_err("escape").problem, JobProblem::Path(_)));
        let timeout = two_steps().thunk(ThunkBuilder::host("t", "/bin/sh").output("o").timeout("soon")).build();
        assert_eq!(timeout.expect_err("timeout").problem, JobProblem::Timeout("soon".into()));
        let empty = JobBuilder::new().build().expect_err("no targets");
        assert!(matches!(empty.problem, JobProblem::Missing(_)));
        assert!(two_steps().thunk(ThunkBuilder::host("upper", "/bin/sh")).to_toml().is_err(), "a duplicate name");
    }

    #[test]
    fn resolving_without_an_id_for_a_value_is_an_error_not_a_panic() {
        let spec = two_steps().build().expect("valid");
        let e = spec.resolve(&Default::default(), &Default::default()).expect_err("nothing pinned");
        assert!(matches!(e, JobProblem::HostProgram { .. } | JobProblem::UnknownRef(_)), "{e}");
    }
}
