//! `wrap`, `force`, `describe` and `hash`: the commands of model substitution, in terms of the
//! `thunkmesh-infer` library. Bad input (a path outside the build folder, a file that is not a
//! placeholder, a placeholder the state folder does not know) ends with one line and exit code 2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use thunkmesh_infer::{Placeholder, State};
use thunkmesh_protocol::thunk::STDOUT_OUTPUT;
use thunkmesh_protocol::{Id, Kind, Program, Ref, Thunk};

use crate::cli::{DescribeArgs, ForceArgs, Global, HashArgs, InferArgs, WrapArgs};
use crate::commands::{UsageError, failed, open_store};
use crate::session::{Done, Session};

/// Says why and exits 2: the input, not the run, was wrong.
fn refused(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

pub fn hash(args: &HashArgs) -> ExitCode {
    for file in &args.files {
        match thunkmesh_client::hash_file(file) {
            Ok(id) => println!("{id}  {}", file.display()),
            Err(e) => return refused(format_args!("{}: {e}", file.display())),
        }
    }
    ExitCode::SUCCESS
}

pub fn infer(args: &InferArgs, global: &Global) -> ExitCode {
    match try_infer(args, global.verbose > 0) {
        Ok(code) => code,
        Err(e) => refused(format_args!("{e:#}")),
    }
}

/// Puts the models first on the build's `PATH` and runs it; exits as the build did.
fn try_infer(args: &InferArgs, verbose: bool) -> Result<ExitCode> {
    use thunkmesh_infer::models::{MODELS, REAL_PATH_ENV, STATE_ENV, TOP_ENV, VERBOSE_ENV};
    let state = State::open(&args.state_dir)?;
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let shims = state.dir().join("bin");
    std::fs::create_dir_all(&shims).with_context(|| format!("cannot make {}", shims.display()))?;
    // `thunkmesh` itself, for a build that calls `thunkmesh wrap` (a test harness's
    // `LOG_COMPILER`), whichever way this binary was started.
    for name in MODELS.into_iter().chain(["thunkmesh"]) {
        let link = shims.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).with_context(|| format!("cannot make {}", link.display()))?;
    }
    let real_path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(shims.clone()).chain(std::env::split_paths(&real_path)))
        .context("PATH holds a folder with a `:`")?;
    let before = recorded(&state);
    let (program, rest) = args.command.split_first().context("no build command after --")?;
    let mut build = std::process::Command::new(program);
    build.args(rest).env("PATH", path).env(REAL_PATH_ENV, &real_path);
    build.env(STATE_ENV, std::path::absolute(&args.state_dir).context("cannot read the current folder")?);
    build.env(TOP_ENV, std::env::current_dir().context("cannot read the current folder")?);
    let toolchain = match args.toolchain {
        crate::cli::ToolchainArg::Hermetic => "hermetic",
        crate::cli::ToolchainArg::Host => "host",
    };
    build.env(thunkmesh_infer::models::TOOLCHAIN_ENV, toolchain);
    if verbose {
        build.env(VERBOSE_ENV, "1");
    }
    let status = build.status().with_context(|| format!("cannot run {program}"))?;
    let new = recorded(&state).saturating_sub(before);
    eprintln!(
        "recorded {new} new thunk(s) in {}; `thunkmesh force FILE` or `--all` builds them",
        state.dir().display()
    );
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        code => ExitCode::from(u8::try_from(code.unwrap_or(1)).unwrap_or(1)),
    })
}

/// How many thunks the state folder holds.
fn recorded(state: &State) -> usize {
    std::fs::read_dir(state.dir().join("thunks"))
        .map_or(0, |d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
}

pub fn wrap(args: &WrapArgs) -> ExitCode {
    match try_wrap(args) {
        Ok(()) => ExitCode::from(args.status),
        Err(e) => refused(format_args!("{e:#}")),
    }
}

fn try_wrap(args: &WrapArgs) -> Result<()> {
    let mut env = BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]);
    for pair in &args.env {
        let (name, value) = pair.split_once('=').with_context(|| format!("--env {pair}: give NAME=VALUE"))?;
        env.insert(name.to_owned(), value.to_owned());
    }
    let (program, rest) = args.command.split_first().context("no program after --")?;
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    // Under `infer`, the build folder is where it was started (a recursive make's call runs in
    // a subfolder of it).
    let top = thunkmesh_infer::models::build_folder(&cwd);
    let state = State::open(&args.state_dir)?;
    let call = thunkmesh_infer::Wrap {
        top: &top,
        cwd: &cwd,
        stdout: args.stdout,
        program: program.as_ref(),
        args: rest,
        inputs: &args.inputs,
        outputs: &args.outputs,
        path: env.get("PATH").map(|p| p.as_ref()),
        env: env.clone(),
        timeout: args.timeout,
        mode: if args.executable { 0o755 } else { 0o644 },
        run: thunkmesh_infer::Run::Shipped,
    };
    let id = thunkmesh_infer::wrap(&state, &call)?;
    tracing::info!(thunk = %id, "recorded");
    if args.stdout {
        let output = Ref::Output { thunk: id, name: STDOUT_OUTPUT.to_owned() };
        print!("{}", Placeholder { output }.text());
    }
    Ok(())
}

pub async fn force(args: ForceArgs, global: &Global) -> ExitCode {
    let mut session = match Session::begin(&args.flags, global, &args.flags.state_dir.join("thunks")) {
        Ok(session) => session,
        Err(e) => return failed(&e),
    };
    let result = async {
        session.lock(&args.flags.state_dir).await?;
        let Some(forcing) = plan_force(&args).map_err(|e| UsageError(format!("{e:#}")))? else {
            let said = "nothing to force: no placeholder under the current folder".to_owned();
            return Ok(Done { said, summary: None, launched: None });
        };
        let out = forcing.out.clone();
        let (mut summary, launched) = session.execute(&args.flags, &forcing.it.job, &out).await?;
        let placed = thunkmesh_infer::put_in_place(&out, &forcing.it.places)?;
        // The job's targets are numbered; the summary names the files they became.
        let by_path = |(index, id): (String, String)| {
            let place = index.parse::<usize>().ok().and_then(|i| forcing.it.places.get(i));
            (place.map_or(index, |(path, _)| path.display().to_string()), id)
        };
        summary.targets = std::mem::take(&mut summary.targets).into_iter().map(by_path).collect();
        let said = match placed == forcing.it.places.len() {
            true => format!("forced {placed} placeholder(s)"),
            false => {
                format!("forced {placed} of {} placeholder(s); the others stay placeholders", forcing.it.places.len())
            }
        };
        Ok(Done { said, summary: Some(summary), launched })
    }
    .await;
    session.finish(result)
}

/// The job that forces what `args` names, and the empty folder its targets go to first.
struct Planned {
    it: thunkmesh_infer::Forcing,
    out: std::path::PathBuf,
}

fn plan_force(args: &ForceArgs) -> Result<Option<Planned>> {
    let state = State::open(&args.flags.state_dir)?;
    let files = match args.all {
        true => thunkmesh_infer::placeholders_under(Path::new("."), &args.flags.state_dir)?,
        false => args.files.clone(),
    };
    if files.is_empty() {
        return Ok(None);
    }
    let it = thunkmesh_infer::forcing(&state, &files)?;
    let out = state.dir().join("forced");
    match std::fs::remove_dir_all(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot empty {}", out.display()));
        }
        _ => {}
    }
    Ok(Some(Planned { it, out }))
}

pub async fn describe(args: &DescribeArgs) -> ExitCode {
    let found = match what_to_describe(args) {
        Ok(found) => found,
        Err(e) => return refused(format_args!("{e:#}")),
    };
    match print_description(args, &found).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

/// The thunk `args.what` names (a placeholder's, or by id or output ref), and its id.
fn what_to_describe(args: &DescribeArgs) -> Result<(Id, Thunk)> {
    let state = State::open(&args.state_dir)?;
    let path = Path::new(&args.what);
    let id = match path.exists() {
        true => match Placeholder::read(path).with_context(|| args.what.clone())? {
            Some(Placeholder { output: Ref::Output { thunk, .. } }) => thunk,
            _ => anyhow::bail!("{}: is not a placeholder", args.what),
        },
        false => match args.what.split_once('#').map_or(args.what.as_str(), |(id, _)| id).parse::<Id>() {
            Ok(id) if id.kind == Kind::Thunk => id,
            _ => anyhow::bail!("{}: is neither a file nor a thunk id (T...) or output (T...#name)", args.what),
        },
    };
    Ok((id, state.thunk(id).with_context(|| args.what.clone())?))
}

async fn print_description(args: &DescribeArgs, (id, thunk): &(Id, Thunk)) -> Result<()> {
    let store = open_store(args.store.as_deref(), &args.state_dir, &args.aws).await?;
    let memo = match store.get_reduction(*id).await? {
        Some(outputs) => Some(outputs),
        None => store.batched_reductions().await?.remove(id),
    };
    let source = |r: &Ref| match r {
        Ref::Blob(_) => "a file's bytes, recorded",
        Ref::Output { .. } => "an output of another recorded thunk",
    };
    let program = match &thunk.program {
        Program::Ref(r) => (r.to_string(), source(r).to_owned()),
        Program::Host { path, pin } if thunk.has_root() => {
            (path.clone(), format!("from the thunk's own root, pinned as {pin}"))
        }
        Program::Host { path, pin } => (path.clone(), format!("a host program pinned as {pin}")),
    };
    if args.json {
        let inputs: BTreeMap<&String, serde_json::Value> = thunk
            .inputs
            .iter()
            .map(|(path, r)| (path, serde_json::json!({ "ref": r.to_string(), "source": source(r) })))
            .collect();
        let memo = memo.map(|outputs| outputs.into_iter().map(|(n, b)| (n, b.to_string())).collect::<BTreeMap<_, _>>());
        let json = serde_json::json!({
            "thunk": id.to_string(),
            "program": { "ref": program.0, "source": program.1 },
            "args": thunk.args,
            "env": thunk.env,
            "inputs": inputs,
            "outputs": thunk.outputs,
            "timeout_ms": thunk.timeout_ms,
            "network": thunk.network,
            "memo": memo,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("thunk    {id}");
    println!("program  {} ({})", program.0, program.1);
    println!("args     {:?}", thunk.args);
    for (i, (name, value)) in thunk.env.iter().enumerate() {
        println!("{}{name}={value}", if i == 0 { "env      " } else { "         " });
    }
    let (root, inputs): (Vec<_>, Vec<_>) = thunk.inputs.iter().partition(|(path, _)| path.starts_with(".root/"));
    for (i, (path, r)) in inputs.iter().enumerate() {
        println!("{}{path} <- {r} ({})", if i == 0 { "inputs   " } else { "         " }, source(r));
    }
    if !root.is_empty() {
        let bytes: u64 = root.iter().map(|(_, r)| if let Ref::Blob(id) = r { id.size } else { 0 }).sum();
        let size = thunkmesh_client::summary::bytes(bytes);
        println!(
            "root     {} files, {size}: the toolchain, libraries and headers it runs with (`--json` lists them)",
            root.len()
        );
    }
    println!("outputs  {}", thunk.outputs.join(", "));
    println!("timeout  {}", humantime::format_duration(thunk.timeout()));
    println!("network  {}", if thunk.network { "yes" } else { "no" });
    match memo {
        Some(outputs) => {
            let listed: Vec<String> = outputs.iter().map(|(n, b)| format!("{n} = {b}")).collect();
            println!("memo     recorded in {}: {}", store.url(), listed.join(", "));
        }
        None => println!("memo     not recorded in {}", store.url()),
    }
    Ok(())
}
