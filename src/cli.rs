//! Command-line flags. Doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use thunkmesh_rendezvous::JobLimits;

/// Run graphs of hermetic commands (thunks) on a mesh of workers that pass intermediate
/// outputs peer to peer over QUIC.
#[derive(Debug, Parser)]
#[command(name = "thunkmesh", version, about, after_help = ENVIRONMENT)]
pub struct Cli {
    /// Logging, colour and quiet: the flags every subcommand takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The environment, as `--help` shows it (each flag's own variable is shown beside it).
const ENVIRONMENT: &str = "\
Environment:
  THUNKMESH_TOKEN   the mesh's secret, for `run --rendezvous`, `node` and `status` (never a
                    flag: it would show in `ps`); `rendezvous` generates one if it is unset
  THUNKMESH_CONFIG  the config file [default: ~/.config/thunkmesh/config.toml]
  RUST_LOG          log filter (overrides -v and -q), such as `thunkmesh_node=debug`
  NO_COLOR          no colour in logs when set (unless --color always)
  AWS_PROFILE, AWS_REGION, AWS_ACCESS_KEY_ID, ...  the AWS CLI's settings, for s3:// stores and
                    Lambda (docs/lambda.md)

Exit status: 0 done, 1 the job or a thunk failed, 2 a bad job, flag or setting, 130 interrupted.";

/// The flags every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// More log output: -v info, -vv debug, -vvv trace (RUST_LOG, when set, decides instead).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors: no progress and no summary (`--summary-json` is still written).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When log output is coloured: `auto` on a terminal unless NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto, global = true, value_name = "WHEN")]
    pub color: ColorArg,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always, also into files and pipes.
    Always,
    /// Never.
    Never,
}

impl ColorArg {
    /// Whether output to stderr is coloured.
    pub fn stderr(self) -> bool {
        use std::io::IsTerminal;
        match self {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: on a local mesh started for the run (the default), or on a self-hosted
    /// rendezvous with --rendezvous.
    Run(RunArgs),
    /// Serve a rendezvous that nodes and clients connect to (self-hosting).
    Rendezvous(RendezvousArgs),
    /// Run a worker node that joins a rendezvous.
    Node(NodeArgs),
    /// Show the nodes registered with a rendezvous: addresses, NAT, slots, running thunks.
    Status(StatusArgs),
    /// Run a build command (`make`, `ninja`, `cmake --build`, `meson compile`) with thunkmesh
    /// standing in for the compiler drivers, `ar`, `ranlib` and `strip`, however they are called
    /// (by path too, as root): each call is recorded as a thunk and leaves placeholders (see
    /// docs/infer.md); `force` then builds them. Configure first, without infer.
    Infer(InferArgs),
    /// Record one call of a program as a thunk, leaving placeholders where its outputs go
    /// (the generic model; see docs/infer.md).
    Wrap(WrapArgs),
    /// Evaluate placeholders and put the real files in their place (with all of run's flags), as
    /// `make -k` would: what does not depend on a failure is built and put in place; a named
    /// file that is already built is up to date.
    Force(ForceArgs),
    /// Run a test suite one test per thunk: a googletest binary's tests (`-- ./build/tests`) or a
    /// CTest project's (`-- ctest --test-dir build`). Every test runs, each failure is named with
    /// its output, the counts are of tests; a test that passed is not run again until its program
    /// or inputs change (see docs/tests.md).
    Test(TestArgs),
    /// Show what a placeholder or recorded thunk runs, reads and writes, and whether the memo
    /// cache has it.
    Describe(DescribeArgs),
    /// Print the id each file's bytes get.
    Hash(HashArgs),
    /// Deploy the node as an AWS Lambda function (see docs/lambda.md).
    #[command(subcommand)]
    Lambda(LambdaCommand),
    /// Show or empty the local caches: the state folder's store, memo cache and nodes' caches.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Manage the memo cache of a store.
    #[command(subcommand)]
    Memo(MemoCommand),
    /// Print a completion script for a shell (`thunkmesh completions bash >
    /// /etc/bash_completion.d/thunkmesh`).
    Completions(CompletionsArgs),
}

/// Flags of `thunkmesh completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `thunkmesh cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Sizes and counts: objects and memo entries in the state folder's store, the local nodes'
    /// caches, and what the last runs found in the memo cache.
    Stats(CacheArgs),
    /// Remove the local nodes' caches and, with --all, the state folder's store and memo cache
    /// (waits for a run holding the state folder).
    Clean(CleanArgs),
}

/// `thunkmesh memo ...`.
#[derive(Debug, Subcommand)]
pub enum MemoCommand {
    /// Forget every memo entry a node produced (one that lied, or whose machine was
    /// compromised), so the next run recomputes them and everything computed from them.
    Forget(ForgetArgs),
}

/// Flags of `thunkmesh memo forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The node's certificate fingerprint, as `thunkmesh status` shows it (its first 8 or more
    /// hex digits will do).
    #[arg(long)]
    pub node: String,
    /// The memo cache.
    #[command(flatten)]
    pub memo: MemoStore,
}

/// The store whose memo cache a command reads or cleans.
#[derive(Debug, Args)]
pub struct MemoStore {
    /// The state folder: recorded thunks, and the default store.
    #[arg(long, default_value = ".thunkmesh", env = "THUNKMESH_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The store whose memo cache is used [default: the state folder's store, as `run`].
    #[arg(long, env = "THUNKMESH_STORE")]
    pub store: Option<String>,
    /// The AWS profile and region (of an s3:// store).
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Flags of `thunkmesh cache stats`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The state folder.
    #[arg(long, default_value = ".thunkmesh", env = "THUNKMESH_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `thunkmesh cache clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// The state folder.
    #[arg(long, default_value = ".thunkmesh", env = "THUNKMESH_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Also remove the state folder's store: its inputs, targets and the memo cache.
    #[arg(long)]
    pub all: bool,
}

/// `thunkmesh lambda ...`.
#[derive(Debug, Subcommand)]
pub enum LambdaCommand {
    /// Package this binary as a `provided.al2023` function (a zip holding `bootstrap`) and create
    /// the function, or update its code and configuration; AWS settings come from the
    /// environment, profile and region as for the AWS CLI.
    Deploy(DeployArgs),
}

/// Flags of `thunkmesh lambda deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The function's name.
    #[arg(long)]
    pub function: String,
    /// ARN of the function's execution role (docs/lambda.md lists what it needs).
    #[arg(long, required_unless_present = "package_only")]
    pub role: Option<String>,
    /// Memory in MB (128 to 10240); Lambda gives one vCPU per 1,769 MB.
    #[arg(long, default_value_t = 1769, value_parser = clap::value_parser!(i32).range(128..=10240))]
    pub memory: i32,
    /// Size of the function's /tmp in MB (512 to 10240), which holds the node's cache.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(i32).range(512..=10240))]
    pub tmp: i32,
    /// Seconds an invocation may run (30 to 900); a worker drains 10 s before its end.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(i32).range(30..=900))]
    pub timeout: i32,
    /// The function's architecture [default: the binary's].
    #[arg(long, value_enum)]
    pub arch: Option<ArchArg>,
    /// The binary to deploy [default: this program], built for Linux (docs/lambda.md).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Write the deployment package to this file and call no AWS API.
    #[arg(long)]
    pub package_only: Option<PathBuf>,
    /// The AWS profile and region.
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `--arch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// x86-64.
    #[value(name = "x86_64")]
    X86_64,
    /// AArch64 (Graviton).
    Arm64,
}

impl From<ArchArg> for thunkmesh_lambda::Arch {
    fn from(a: ArchArg) -> Self {
        match a {
            ArchArg::X86_64 => thunkmesh_lambda::Arch::X86_64,
            ArchArg::Arm64 => thunkmesh_lambda::Arch::Arm64,
        }
    }
}

/// Flags of `thunkmesh status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The rendezvous (host:port); the token comes from THUNKMESH_TOKEN.
    #[arg(long, env = "THUNKMESH_RENDEZVOUS", value_parser = host_port)]
    pub rendezvous: String,
    /// How to trust the rendezvous.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A `host:port` address: the port is required (a rendezvous has no default port to guess).
fn host_port(text: &str) -> Result<String, String> {
    let port = text.rsplit_once(':').map(|(host, port)| (host.trim_matches(['[', ']']), port));
    match port {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(text.to_owned()),
        _ => Err(format!("`{text}` is not HOST:PORT (such as rendezvous.example.org:7700 or 127.0.0.1:7700)")),
    }
}

/// Flags of `thunkmesh run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file (TOML; see docs/jobs.md).
    pub job: PathBuf,
    /// Where the targets are written.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// How the job runs.
    #[command(flatten)]
    pub flags: RunFlags,
}

/// Flags of `thunkmesh test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Also write each test's verdict as JUnit XML to FILE (what CI systems read).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// How the tests run (every test runs: --keep-going is implied).
    #[command(flatten)]
    pub flags: RunFlags,
    /// The suite: a googletest binary and its arguments, or `ctest` and its own arguments.
    #[arg(last = true, required = true, value_name = "SUITE")]
    pub command: Vec<String>,
}

/// Flags of `thunkmesh force`.
#[derive(Debug, Args)]
pub struct ForceArgs {
    /// The placeholders to force (files left by `thunkmesh wrap` or `infer`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub files: Vec<PathBuf>,
    /// Force every placeholder under the current folder (not in the state folder or a version
    /// control folder such as .git; hidden build folders such as .libs are searched).
    #[arg(long)]
    pub all: bool,
    /// How the job that forces them runs.
    #[command(flatten)]
    pub flags: RunFlags,
}

/// Flags of `thunkmesh wrap`.
#[derive(Debug, Args)]
pub struct WrapArgs {
    /// Files the program reads, relative to the current folder; they must be inside the build
    /// folder (the current folder, or under `infer` the folder it was started in).
    #[arg(long = "in", value_name = "FILE", num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Files the program writes; each gets a placeholder now.
    #[arg(long = "out", value_name = "FILE", num_args = 1.., required_unless_present = "stdout")]
    pub outputs: Vec<PathBuf>,
    /// The program's standard output is its result (a test that only prints): the placeholder
    /// for it is printed on this call's standard output, so where a test harness sends the
    /// test's output (its log file) becomes the placeholder, and `force` puts what the test
    /// printed there.
    #[arg(long)]
    pub stdout: bool,
    /// The exit status of this call, which records and runs nothing: 77 makes an automake test
    /// harness report the test as SKIP, which it is until forced.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub status: u8,
    /// The outputs are programs: their placeholders, and so the forced files, get mode 0755.
    #[arg(long)]
    pub executable: bool,
    /// Ship FILE (a program, with its shared libraries; a folder, whole) as part of the thunk's
    /// own root, so a node without it runs the thunk; the program itself is shipped with them and
    /// runs from that root (see docs/jobs.md, "Shipping programs").
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub ship: Vec<PathBuf>,
    /// The program's environment, one NAME=VALUE each; nothing else is inherited, and PATH is
    /// /usr/bin:/bin unless given.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// How long one run may take.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where recorded thunks and the files they read are kept.
    #[arg(long, default_value = ".thunkmesh", env = "THUNKMESH_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The program (a path, or a name on PATH) and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    pub command: Vec<String>,
}

/// Flags of `thunkmesh infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Where recorded thunks and the files they read are kept.
    #[arg(long, default_value = ".thunkmesh", env = "THUNKMESH_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Where the modelled tools come from on the nodes: `hermetic` ships each tool with its
    /// libraries, helpers and the system headers and libraries the call reads, so a node needs no
    /// compiler (it needs namespaces); `host` runs the node's own tools, pinned by their hash (for
    /// nodes without namespaces, such as Lambda, that have the same compiler).
    #[arg(long, value_enum, default_value_t = ToolchainArg::Hermetic)]
    pub toolchain: ToolchainArg,
    /// Outputs name the build folder as `.` instead of its real path (debug information,
    /// `__FILE__`), like ccache's `base_dir`: the same build in another folder then records the
    /// same thunks and shares their memo records, but `-g` objects differ from the build's own
    /// and a debugger needs to be told where the sources are.
    #[arg(long)]
    pub relocatable: bool,
    /// The build folder, which every thunk's sandbox mirrors; default: the current folder, or
    /// the folder that holds it and the sources CMake, Meson or automake name (an out-of-tree
    /// `build/`'s parent).
    #[arg(long, value_name = "DIR")]
    pub top: Option<PathBuf>,
    /// The build command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND ARGS")]
    pub command: Vec<String>,
}

/// Where modelled tools come from on the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolchainArg {
    /// Shipped with each thunk as its own root.
    Hermetic,
    /// The nodes' own programs, pinned by their hash.
    Host,
}

/// Flags of `thunkmesh hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// The files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Flags of `thunkmesh describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// A placeholder, or a thunk output (`T...#name`) or thunk id recorded in the state folder.
    pub what: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where recorded thunks and the memo cache are.
    #[command(flatten)]
    pub memo: MemoStore,
}

/// How a job runs: the flags `run` and `force` share.
#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// Where the job's workers come from.
    #[arg(long, value_enum, default_value_t = EngineArg::Local)]
    pub engine: EngineArg,
    /// Workers: local node processes [default: one per core, at least 2], or with --engine
    /// lambda the most Lambda workers alive at once.
    #[arg(short = 'j', long, env = "THUNKMESH_WORKERS")]
    pub workers: Option<usize>,
    /// Thunks each worker (local node or Lambda worker) runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Most bytes each local node's cache keeps (512MiB, 10GiB, ...): past it the least recently
    /// used objects no running task needs are removed [default: half the free space of its disk].
    #[arg(long, value_parser = thunkmesh_node::parse_size)]
    pub cache_size: Option<u64>,
    /// The Lambda function to invoke (with --engine lambda), as deployed by `thunkmesh lambda
    /// deploy`.
    #[arg(long, required_if_eq("engine", "lambda"))]
    pub function: Option<String>,
    /// A Lambda worker with nothing to run this long drains and answers (with --engine lambda).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub lambda_idle: Duration,
    /// Storage for inputs, targets and the memo cache: s3://bucket/prefix (credentials and
    /// region as the AWS CLI finds them), file:///path, or memory:// [default: the state
    /// folder's store, as file://].
    #[arg(long, env = "THUNKMESH_STORE")]
    pub store: Option<String>,
    /// The AWS profile and region.
    #[command(flatten)]
    pub aws: AwsArgs,
    /// How intermediate outputs travel.
    #[arg(long, value_enum, default_value_t = ModeArg::P2p)]
    pub mode: ModeArg,
    /// How the memo cache in the store is used.
    #[arg(long, value_enum, default_value_t = MemoArg::On)]
    pub memo: MemoArg,
    /// Fail the job rather than move an object between nodes through the rendezvous' relay or
    /// storage when no direct path forms (for benchmarking the direct path).
    #[arg(long)]
    pub require_direct: bool,
    /// Keep going when a thunk fails: every thunk that does not depend on it still runs, the
    /// targets that could be made are written, and the summary ends with `N passed, N failed`
    /// and each failure's output (exit status 1 if any failed).
    #[arg(long)]
    pub keep_going: bool,
    /// Run one in N results again on another node and compare before it is final and recorded
    /// (0: never, 1: every result). A node a majority outvotes fails the job and has every memo
    /// entry it produced forgotten (docs/reliability.md) [default: 16 on a self-hosted
    /// rendezvous, whose nodes anyone with the token may run; 0 on the local mesh and with
    /// --engine lambda, whose nodes this run starts].
    #[arg(long, env = "THUNKMESH_VERIFY")]
    pub verify: Option<u32>,
    /// Local state: the default store, the local nodes' caches and logs, and recorded thunks.
    #[arg(long, default_value = ".thunkmesh", env = "THUNKMESH_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Also write the summary as JSON to this file (`-`: standard output, the text summary then
    /// goes to standard error), on success and on failure; docs/jobs.md has its schema.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Without a terminal, print a progress line this often (on a terminal a bar is drawn).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub progress_every: Duration,
    /// Write a report of the run to this HTML page, in the manner of `cargo build --timings`:
    /// a time line per node, the critical path, the slowest thunks, the bytes on each edge
    /// (docs/operations.md, "Seeing the mesh work").
    #[arg(long, value_name = "FILE.html")]
    pub timings: Option<PathBuf>,
    /// Write the run's tasks to this file in the Chrome trace event format, which Perfetto
    /// (ui.perfetto.dev) and chrome://tracing open: one process per node, one bar per task.
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
    /// Serve the local mesh's live web view while the job runs, at this address (TCP,
    /// loopback by default) and print where to open it.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    pub ui: Option<SocketAddr>,
    /// Submit to this self-hosted rendezvous (host:port) instead of starting a local mesh;
    /// the token comes from THUNKMESH_TOKEN. Lambda workers dial this address too.
    #[arg(long, env = "THUNKMESH_RENDEZVOUS", value_parser = host_port)]
    pub rendezvous: Option<String>,
    /// How to trust the rendezvous (with --rendezvous).
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// The AWS CLI's `--profile` and `--region`, for s3:// stores and Lambda.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// The AWS profile of ~/.aws/credentials and ~/.aws/config for s3:// stores and Lambda
    /// [default: AWS_PROFILE, else `default`].
    #[arg(long)]
    pub profile: Option<String>,
    /// The AWS region for s3:// stores and Lambda [default: AWS_REGION, else the profile's].
    #[arg(long)]
    pub region: Option<String>,
}

impl AwsArgs {
    /// The settings the store and Lambda clients take.
    pub fn settings(&self) -> thunkmesh_store::AwsSettings {
        thunkmesh_store::AwsSettings { profile: self.profile.clone(), region: self.region.clone() }
    }
}

/// How to trust the rendezvous certificate: pin its fingerprint, or name a CA file.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// SHA-256 fingerprint of the rendezvous certificate, 64 hex digits (printed when it
    /// starts).
    #[arg(long, conflicts_with = "ca", env = "THUNKMESH_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// PEM file of the CA that issued the rendezvous certificate.
    #[arg(long, env = "THUNKMESH_CA")]
    pub ca: Option<PathBuf>,
    /// Name the certificate must carry (with --ca) [default: the host part of the address].
    #[arg(long)]
    pub server_name: Option<String>,
}

/// Flags of `thunkmesh rendezvous`.
#[derive(Debug, Args)]
pub struct RendezvousArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7700")]
    pub listen: SocketAddr,
    /// A second UDP address that tells each node the address it sees, so nodes can classify
    /// their NAT (see docs/networking.md); without it their NAT kind shows as unknown.
    #[arg(long)]
    pub probe_listen: Option<SocketAddr>,
    /// Keeps the certificate, key and generated token across restarts.
    #[arg(long, default_value = ".thunkmesh/rendezvous")]
    pub state_dir: PathBuf,
    /// A certificate chain (PEM) to serve instead of the self-signed one; needs --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Keep this many Lambda workers joined between jobs (a warm pool); each works until its
    /// deadline and is invoked again. Needs --function and --public-addr.
    #[arg(long, requires_all = ["function", "public_addr"])]
    pub lambda_pool: Option<usize>,
    /// The Lambda function of the warm pool.
    #[arg(long)]
    pub function: Option<String>,
    /// The address (host:port) Lambda workers dial to reach this rendezvous.
    #[arg(long)]
    pub public_addr: Option<String>,
    /// Thunks each pool worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub lambda_slots: u32,
    /// The AWS profile and region of the warm pool's Lambda calls.
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Refuse a job of more thunks than this (the client exits with status 2, naming it).
    #[arg(long, default_value_t = JobLimits::default().thunks)]
    pub max_job_thunks: u64,
    /// Refuse a job that takes more memory than this as the rendezvous holds it: its strings,
    /// plus 64 bytes per ref, a shared input set counted once (such as 512MiB or 8GiB).
    #[arg(long, default_value = "8GiB", value_parser = thunkmesh_node::parse_size)]
    pub max_job_bytes: u64,
    /// Hold at most this much of all jobs still being sent, together (counted as for
    /// --max-job-bytes): past it, the job that holds the most is refused. Raise it for jobs of
    /// hundreds of thousands of thunks; it bounds what clients that never end a job can make the
    /// rendezvous hold.
    #[arg(long, default_value = "128MiB", value_parser = thunkmesh_node::parse_size)]
    pub max_unfinished_bytes: u64,
    /// Refuse a job not whole within this time of its first message (such as 30s or 10m).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub submit_within: std::time::Duration,
    /// Serve the live web view and its JSON API (/api/status, /api/journal, /api/events) on
    /// this TCP address [default when given alone: 127.0.0.1:7780]. It opens with the mesh's
    /// token, or THUNKMESH_VIEW_TOKEN if set: open http://ADDR/?token=TOKEN once (docs/operations.md).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:7780")]
    pub http: Option<SocketAddr>,
    /// Refuse the node whose certificate fingerprint begins with these hex digits (8 or more, as
    /// `thunkmesh status` shows them); repeat for more. For a node that lied: see `thunkmesh memo
    /// forget`.
    #[arg(long = "forbid-node", value_name = "FINGERPRINT")]
    pub forbid_nodes: Vec<String>,
}

/// Flags of `thunkmesh node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The rendezvous (host:port); the token comes from THUNKMESH_TOKEN.
    #[arg(long, env = "THUNKMESH_RENDEZVOUS", value_parser = host_port)]
    pub rendezvous: String,
    /// How to trust the rendezvous.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Thunks run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Object cache and sandboxes; kept across restarts [default: a folder in the temp dir].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache keeps (512MiB, 10GiB, ...): past it the least recently used objects
    /// no running task needs are removed [default: half the free space of its disk, at least
    /// 1GiB].
    #[arg(long, value_parser = thunkmesh_node::parse_size)]
    pub cache_size: Option<u64>,
    /// Local UDP address of the node's endpoint (peers reach it here).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// Name shown in the rendezvous' logs [default: host name and process id].
    #[arg(long)]
    pub name: Option<String>,
    /// How programs are isolated: `auto`, the best the kernel allows (a private root and
    /// namespaces, else only the process tree; docs/reliability.md), `process-tree` (as on
    /// Lambda), or `off`.
    #[arg(long, value_enum, default_value_t = SandboxArg::Auto, env = "THUNKMESH_SANDBOX")]
    pub sandbox: SandboxArg,
    /// How long to keep dialling the rendezvous when it is gone (a restart) or not up yet,
    /// waiting 0.25 s, then twice as long each time up to 15 s; `forever`, or a duration such
    /// as `10m` (`0s`: stop when it goes).
    #[arg(long, default_value = "forever", value_parser = forever_or_duration, value_name = "DURATION")]
    pub retry_for: Duration,
}

/// `forever` (as long as a [`Duration`] goes) or a duration such as `90s` or `10m`.
fn forever_or_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    match text {
        "forever" => Ok(Duration::MAX),
        _ => humantime::parse_duration(text),
    }
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxArg {
    /// The best isolation the kernel allows.
    Auto,
    /// Only the process tree: every process a program starts is killed when it ends.
    ProcessTree,
    /// None: programs run as the node's children and see its whole file system.
    Off,
}

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// Local node processes started for the run; with --rendezvous, the nodes already joined.
    Local,
    /// AWS Lambda workers invoked for the run; they join --rendezvous (docs/lambda.md).
    Lambda,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Outputs stay on their producer and move directly to the nodes that need them.
    P2p,
    /// gg's way: every output is written to storage and every input read from it.
    Storage,
}

/// `--memo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoArg {
    /// Reuse recorded results and record new ones (one storage request per executed thunk).
    On,
    /// Reuse recorded results, record nothing (a read-only cache, for instance in CI).
    Read,
    /// Run every needed thunk; no memo request reaches storage.
    Off,
}

impl From<MemoArg> for thunkmesh_client::Memo {
    fn from(m: MemoArg) -> Self {
        match m {
            MemoArg::On => thunkmesh_client::Memo::On,
            MemoArg::Read => thunkmesh_client::Memo::Read,
            MemoArg::Off => thunkmesh_client::Memo::Off,
        }
    }
}

impl From<ModeArg> for thunkmesh_protocol::wire::Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::P2p => thunkmesh_protocol::wire::Mode::P2p,
            ModeArg::Storage => thunkmesh_protocol::wire::Mode::Storage,
        }
    }
}
