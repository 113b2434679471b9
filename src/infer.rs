//! `wrap`, `force`, `describe` and `hash`: the commands of model substitution, in terms of the
//! `thunkmesh-infer` library. Bad input (a path outside the build folder, a file that is not a
//! placeholder, a placeholder the state folder does not know) ends with one line and exit code 2.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use thunkmesh_infer::{Placeholder, State};
use thunkmesh_protocol::thunk::STDOUT_OUTPUT;
use thunkmesh_protocol::{Id, Kind, Program, Ref, Thunk};

use crate::cli::{DescribeArgs, ForceArgs, Global, HashArgs, InferArgs, RunFlags, WrapArgs};
use crate::exit::{Result, UsageError, failed};
use crate::invocation::{Done, Invocation};
use crate::mesh::open_store;

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

/// Puts the models first on the build's `PATH` and, as root, over every modelled tool's file in
/// a mount namespace of the build's own; runs the build; sums up what the models saw; exits as
/// the build did.
fn try_infer(args: &InferArgs, verbose: bool) -> Result<ExitCode> {
    use thunkmesh_infer::models::{
        CALL_LOG_ENV, PATHS_ENV, REAL_PATH_ENV, STATE_ENV, TOOLCHAIN_ENV, TOP_ENV, VERBOSE_ENV,
    };
    if let Some(why) = thunkmesh_infer::build::configure_step(&args.command) {
        return Err(anyhow::anyhow!(why).into());
    }
    let state = State::open(&args.state_dir)?;
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let shims = model_links(&state, &exe)?;
    let real_path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(shims).chain(std::env::split_paths(&real_path)))
        .context("PATH holds a folder with a `:`")?;
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let top = match &args.top {
        Some(top) => std::path::absolute(top).context("cannot read the current folder")?,
        None => thunkmesh_infer::build::build_top(&cwd),
    };
    let log = state.dir().join(format!("calls-{}.log", std::process::id()));
    let before = recorded(&state);
    let (program, rest) = args.command.split_first().context("no build command after --")?;
    let mut build = std::process::Command::new(program);
    build.args(rest).env("PATH", path).env(REAL_PATH_ENV, &real_path).env(CALL_LOG_ENV, &log);
    build.env(STATE_ENV, std::path::absolute(&args.state_dir).context("cannot read the current folder")?);
    build.env(TOP_ENV, &top).env(thunkmesh_infer::placeholder::RUNNER_ENV, &exe);
    let toolchain = match args.toolchain {
        crate::cli::ToolchainArg::Hermetic => "hermetic",
        crate::cli::ToolchainArg::Host => "host",
    };
    build.env(TOOLCHAIN_ENV, toolchain);
    if args.relocatable {
        build.env(PATHS_ENV, "relocatable");
    }
    if verbose {
        build.env(VERBOSE_ENV, "1");
    }
    let by_path = catch_by_path(&mut build, &exe, &real_path);
    let status = build.status().with_context(|| format!("cannot run {program}"));
    let calls = thunkmesh_infer::build::Calls::read(&std::fs::read_to_string(&log).unwrap_or_default());
    let _ = std::fs::remove_file(&log);
    let status = status?;
    say_what_was_seen(&calls, by_path.as_ref().err());
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

/// The folder of links to this binary under the models' names (and `thunkmesh` itself, for a
/// build that calls `thunkmesh wrap`, whichever way this binary was started).
fn model_links(state: &State, exe: &Path) -> Result<std::path::PathBuf> {
    use thunkmesh_infer::models::MODELS;
    let shims = state.dir().join("bin");
    std::fs::create_dir_all(&shims).with_context(|| format!("cannot make {}", shims.display()))?;
    for name in MODELS.into_iter().chain(["thunkmesh"]) {
        let link = shims.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, &link).with_context(|| format!("cannot make {}", link.display()))?;
    }
    Ok(shims)
}

/// Makes `build` start where every modelled tool's file is this binary, so that calls by path
/// are caught too; or says why not.
fn catch_by_path(
    build: &mut std::process::Command,
    exe: &Path,
    real_path: &std::ffi::OsStr,
) -> Result<(), thunkmesh_infer::intercept::InterceptError> {
    use thunkmesh_infer::intercept;
    let tools = intercept::tools(real_path, exe);
    intercept::in_namespace(build, exe, &tools)?;
    build.env(intercept::HOST_NS_ENV, format!("/proc/{}/ns/mnt", std::process::id()));
    Ok(())
}

/// Says how many calls the models saw and what became of them; never nothing in silence.
fn say_what_was_seen(
    calls: &thunkmesh_infer::build::Calls,
    by_path: Option<&thunkmesh_infer::intercept::InterceptError>,
) {
    let blind = by_path.map(|e| {
        format!(
            "\ncalls of tools by path (CMake's /usr/bin/cc, a versioned gcc-12) are not caught: {e}; \
             such calls build for real, unrecorded"
        )
    });
    match calls.seen() {
        0 => eprintln!(
            "infer: saw no call of a compiler, archiver or linker: nothing was recorded (was the build \
             already up to date?){}",
            blind.unwrap_or_default()
        ),
        _ => eprintln!("infer: {}{}", calls.summary(8), blind.unwrap_or_default()),
    }
}

/// How many thunks the state folder holds.
fn recorded(state: &State) -> usize {
    std::fs::read_dir(state.dir().join("thunks"))
        .map_or(0, |d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
}

/// Runs a program's placeholder that a build ran (`#!thunkmesh __run-placeholder` ARGS): forces
/// it, and the build's shared libraries it was linked with that are still placeholders
/// ([`thunkmesh_infer::force_quietly`]), then runs the real program in this process's place.
pub fn run_placeholder(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let Some((file, rest)) = args.split_first() else { return refused("no placeholder to run") };
    let state_dir = std::env::var_os(thunkmesh_infer::models::STATE_ENV).unwrap_or_else(|| ".thunkmesh".into());
    let libraries = match (State::open(Path::new(&state_dir)), std::env::current_dir()) {
        (Ok(state), Ok(cwd)) => {
            thunkmesh_infer::libraries_of(&state, Path::new(file), &thunkmesh_infer::models::build_folder(&cwd))
        }
        _ => Vec::new(),
    };
    let files: Vec<std::path::PathBuf> = std::iter::once(std::path::PathBuf::from(file)).chain(libraries).collect();
    let forced = std::env::current_exe().and_then(|exe| thunkmesh_infer::force_quietly(&exe, &files));
    match forced {
        Ok(Ok(())) => {}
        Ok(Err(failed)) => {
            let _ = std::io::stderr().write_all(failed.said.as_bytes());
            eprintln!("thunkmesh: {} is a placeholder, and forcing it failed", Path::new(file).display());
            return ExitCode::from(u8::try_from(failed.code).unwrap_or(1));
        }
        Err(e) => return refused(format_args!("cannot force {}: {e}", Path::new(file).display())),
    }
    let e = std::process::Command::new(Path::new(".").join(file)).args(rest).exec();
    refused(format_args!("cannot run {}: {e}", Path::new(file).display()))
}

/// How a wrapped program reaches the nodes: by its bytes, or with `--ship` as the program of its
/// own root, which holds it, what it needs to start and the files named.
fn shipped(args: &WrapArgs, program: &OsStr, cwd: &Path, path: Option<&String>) -> Result<thunkmesh_infer::Run> {
    use thunkmesh_protocol::job::ShipSpec;
    if args.ship.is_empty() {
        return Ok(thunkmesh_infer::Run::Shipped);
    }
    let found = thunkmesh_infer::wrap::find_program(cwd, program, path.map(OsStr::new))?;
    let mut files = std::collections::BTreeSet::new();
    for item in args.ship.iter().map(|p| cwd.join(p)).chain([found]) {
        let item = ShipSpec::Path(thunkmesh_client::ship::normal(&item).display().to_string());
        files.extend(thunkmesh_client::ship::files(&item)?);
    }
    Ok(thunkmesh_infer::Run::Rooted(thunkmesh_infer::toolchain::Root::of(files)))
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
        run: shipped(args, program.as_ref(), &cwd, env.get("PATH"))?,
    };
    let id = thunkmesh_infer::wrap(&state, &call)?;
    thunkmesh_infer::models::log_call("wrap", "recorded", "");
    tracing::info!(thunk = %id, "recorded");
    if args.stdout {
        let output = Ref::Output { thunk: id, name: STDOUT_OUTPUT.to_owned() };
        print!("{}", Placeholder { output }.text());
    }
    Ok(())
}

/// Forces placeholders like make builds targets: every thunk that does not depend on a failed
/// one runs (as `make -k`), each file that was made replaces its placeholder, and a named file
/// that is already built is up to date.
pub async fn force(args: ForceArgs, global: &Global) -> ExitCode {
    let mut invocation = match Invocation::begin(&args.flags, global, &args.flags.state_dir.join("thunks")) {
        Ok(invocation) => invocation,
        Err(e) => return failed(&e),
    };
    let result = async {
        invocation.lock(&args.flags.state_dir).await?;
        let (forcing, up_to_date) = plan_force(&args).map_err(|e| UsageError(format!("{e:#}")))?;
        let Some(forcing) = forcing else {
            let said = match up_to_date.as_slice() {
                [] => "nothing to force: no placeholder under the current folder".to_owned(),
                files => format!("nothing to force: {} up to date (not a placeholder)", shown(files)),
            };
            return Ok(Done { said, summary: None, launched: None, verdict: None });
        };
        let out = forcing.out.clone();
        let flags = RunFlags { keep_going: true, ..args.flags.clone() };
        let (mut summary, launched) = invocation.execute(&flags, &forcing.it.job, &out).await?;
        summary.keep_going = args.flags.keep_going;
        let placed = thunkmesh_infer::put_in_place(&out, &forcing.it.places)?;
        // The job's targets are numbered; the summary names the files they became.
        let by_path = |(index, id): (String, String)| {
            let place = index.parse::<usize>().ok().and_then(|i| forcing.it.places.get(i));
            (place.map_or(index, |(path, _)| path.display().to_string()), id)
        };
        summary.targets = std::mem::take(&mut summary.targets).into_iter().map(by_path).collect();
        let mut said = match placed == forcing.it.places.len() {
            true => format!("forced {placed} placeholder(s)"),
            false => {
                format!("forced {placed} of {} placeholder(s); the others stay placeholders", forcing.it.places.len())
            }
        };
        if !up_to_date.is_empty() {
            said.push_str(&format!("; {} up to date (not a placeholder)", shown(&up_to_date)));
        }
        Ok(Done { said, summary: Some(summary), launched, verdict: None })
    }
    .await;
    invocation.finish(result)
}

/// Files named in a message: the first few.
fn shown(files: &[std::path::PathBuf]) -> String {
    let mut names: Vec<String> = files.iter().take(3).map(|f| f.display().to_string()).collect();
    if files.len() > 3 {
        names.push(format!("and {} more", files.len() - 3));
    }
    names.join(", ")
}

/// The job that forces what `args` names, and the empty folder its targets go to first.
struct Planned {
    it: thunkmesh_infer::Forcing,
    out: std::path::PathBuf,
}

/// What to force, if anything, and the named files that are built already (not placeholders).
/// A named file that does not exist is an error.
fn plan_force(args: &ForceArgs) -> Result<(Option<Planned>, Vec<std::path::PathBuf>)> {
    let state = State::open(&args.flags.state_dir)?;
    let (files, up_to_date) = match args.all {
        true => (thunkmesh_infer::placeholders_under(Path::new("."), &args.flags.state_dir)?, Vec::new()),
        false => {
            if let Some(missing) = args.files.iter().find(|f| !f.exists()) {
                return Err(anyhow::anyhow!("{}: no such file (nothing recorded makes it)", missing.display()).into());
            }
            // A link to a placeholder (libtool's `libx.so` -> `libx.so.1.2.3`) forces the file it
            // names, and stays a link.
            let named = args.files.iter().map(|f| match f.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                true => std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()),
                false => f.clone(),
            });
            named.partition(|f| Placeholder::is_at(f) || Placeholder::read(f).is_err())
        }
    };
    if files.is_empty() {
        return Ok((None, up_to_date));
    }
    let it = thunkmesh_infer::forcing(&state, &files)?;
    let out = state.dir().join("forced");
    match std::fs::remove_dir_all(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot empty {}", out.display())).map_err(Into::into);
        }
        _ => {}
    }
    Ok((Some(Planned { it, out }), up_to_date))
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
    let state = State::open(&args.memo.state_dir)?;
    let path = Path::new(&args.what);
    let id = match path.exists() {
        true => match Placeholder::read(path).with_context(|| args.what.clone())? {
            Some(Placeholder { output: Ref::Output { thunk, name } }) => {
                let thunk_of = state.thunk_with_output(thunk, &name).with_context(|| args.what.clone())?;
                return Ok((thunk, thunk_of));
            }
            _ => return Err(anyhow::anyhow!("{}: is not a placeholder", args.what).into()),
        },
        false => match args.what.split_once('#').map_or(args.what.as_str(), |(id, _)| id).parse::<Id>() {
            Ok(id) if id.kind == Kind::Thunk => id,
            _ => {
                return Err(anyhow::anyhow!(
                    "{}: is neither a file nor a thunk id (T...) or output (T...#name)",
                    args.what
                )
                .into());
            }
        },
    };
    Ok((id, state.thunk(id).with_context(|| args.what.clone())?))
}

async fn print_description(args: &DescribeArgs, (id, thunk): &(Id, Thunk)) -> Result<()> {
    let store = open_store(args.memo.store.as_deref(), &args.memo.state_dir, &args.memo.aws).await?;
    let memo = store.batched_reductions().await?.remove(id).map(|r| r.outputs);
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
