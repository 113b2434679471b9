//! What each subcommand does, in terms of the libraries. Errors end here as one line on stderr
//! and an exit code ([`crate::exit`]): 2 for a bad job or bad flags, 1 for a run that failed.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use thunkmesh_client::load_job;
use thunkmesh_net::Identity;
use thunkmesh_node::NodeConfig;
use thunkmesh_rendezvous::JobLimits;

use crate::cli::{Command, Global, LambdaCommand, NodeArgs, RendezvousArgs, RunArgs, SandboxArg, StatusArgs};
use crate::exit::{Failure, Result, failed};
use crate::invocation::{Done, Invocation};
use crate::mesh::{TOKEN_ENV, node_id_prefix, remote_target, server_name, token, trust};

pub async fn dispatch(command: Command, global: Global) -> ExitCode {
    let result = match command {
        Command::Run(args) => return run(args, &global).await,
        Command::Rendezvous(args) => rendezvous(args).await,
        Command::Node(args) => node(args).await,
        Command::Status(args) => status(args).await,
        Command::Infer(args) => return crate::infer::infer(&args, &global),
        Command::Wrap(args) => return crate::infer::wrap(&args),
        Command::Force(args) => return crate::infer::force(args, &global).await,
        Command::Test(args) => return crate::test::test(args, &global).await,
        Command::Describe(args) => return crate::infer::describe(&args).await,
        Command::Hash(args) => return crate::infer::hash(&args),
        Command::Lambda(LambdaCommand::Deploy(args)) => crate::lambda::deploy(args).await,
        Command::Cache(command) => crate::cache::cache(command).await,
        Command::Memo(command) => crate::cache::memo(command).await,
        Command::Completions(args) => {
            let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut command, "thunkmesh", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

async fn run(args: RunArgs, global: &Global) -> ExitCode {
    let mut invocation = match Invocation::begin(&args.flags, global, &args.job) {
        Ok(invocation) => invocation,
        Err(e) => return failed(&e),
    };
    let result = async {
        let job = load_job(&args.job).map_err(Failure::bad_job)?;
        invocation.lock(&args.flags.state_dir).await?;
        let (summary, launched) = invocation.execute(&args.flags, &job, &args.out).await?;
        let said = format!("wrote {} target(s) to {}", summary.targets.len(), args.out.display());
        Ok(Done { said, summary: Some(summary), launched, verdict: None })
    }
    .await;
    invocation.finish(result)
}

async fn rendezvous(args: RendezvousArgs) -> Result<()> {
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
        _ => Identity::load_or_create(&args.state_dir)?,
    };
    let token = match std::env::var_os(TOKEN_ENV) {
        Some(_) => token()?,
        None => stored_token(&args.state_dir)?,
    };
    let endpoint = thunkmesh_net::endpoint(args.listen, &identity)?;
    let probe = args.probe_listen.map(|addr| thunkmesh_net::endpoint(addr, &identity)).transpose()?;
    let fingerprint: String = identity.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("rendezvous listening on {} (UDP)", endpoint.local_addr()?);
    if let Some(probe) = &probe {
        eprintln!("probe port for NAT classification on {} (UDP)", probe.local_addr()?);
    }
    eprintln!("certificate fingerprint: {fingerprint}");
    eprintln!("nodes join with: THUNKMESH_TOKEN=... thunkmesh node --rendezvous HOST:PORT --fingerprint {fingerprint}");
    let pool = crate::lambda::pool_spec(&args, &fingerprint, &token)?;
    // SIGTERM too: systemd and `docker stop` send it, and a container's first process that has
    // no handler for it is not stopped by it at all.
    let shutdown = stop_requested();
    let limits = JobLimits {
        thunks: args.max_job_thunks,
        bytes: args.max_job_bytes,
        unfinished: args.max_unfinished_bytes,
        submit_within: args.submit_within,
    };
    let forbidden = args.forbid_nodes.iter().map(|n| node_id_prefix("--forbid-node", n)).collect::<Result<_>>()?;
    let rules = thunkmesh_rendezvous::Rules { limits, forbidden };
    let view_token = view_token();
    let which = if view_token.is_some() { VIEW_TOKEN_ENV } else { "the mesh token" };
    let web = args.http.map(|addr| thunkmesh_rendezvous::Web::bind(addr, view_token)).transpose()?;
    if let Some(addr) = web.as_ref().and_then(thunkmesh_rendezvous::Web::local_addr) {
        eprintln!("web view on http://{addr}/ (open http://{addr}/?token=TOKEN once, with {which})");
    }
    let serve = thunkmesh_rendezvous::serve(endpoint, probe, web, token, rules, shutdown);
    match pool {
        None => serve.await?,
        Some(spec) => crate::lambda::with_pool(serve, &spec, &args.aws).await?,
    }
    Ok(())
}

/// The environment variable of a token that opens the web view and nothing else.
const VIEW_TOKEN_ENV: &str = "THUNKMESH_VIEW_TOKEN";

/// The view token from the environment, if one is set.
fn view_token() -> Option<String> {
    std::env::var(VIEW_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty())
}

async fn status(args: StatusArgs) -> Result<()> {
    let target = remote_target(&args.rendezvous, &args.trust)?;
    let status = thunkmesh_client::status(&target).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&thunkmesh_rendezvous::web::status_json(&status))?);
        return Ok(());
    }
    let header = ("NODE", "OBSERVED", "LOCAL", "NAT", "SLOTS", "RUNNING", "ID", "SANDBOX");
    println!(
        "{:<20} {:<22} {:<22} {:<31} {:>5} {:>7}  {:<16}  {}",
        header.0, header.1, header.2, header.3, header.4, header.5, header.6, header.7
    );
    for n in &status.nodes {
        let (nat, id) = (n.nat.to_string(), hex::encode(&n.fingerprint[..8]));
        let (name, observed, local, slots, running) = (&n.name, &n.observed, &n.local, n.slots, n.running);
        println!("{name:<20} {observed:<22} {local:<22} {nat:<31} {slots:>5} {running:>7}  {id}  {}", n.isolation);
    }
    let slots: u64 = status.nodes.iter().map(|n| u64::from(n.slots)).sum();
    println!("{} node(s), {slots} slot(s)", status.nodes.len());
    if !status.jobs.is_empty() {
        println!(
            "\n{:<8} {:<7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>10}",
            "JOB", "MODE", "THUNKS", "DONE", "RUNNING", "QUEUED", "AGE", "THUNKS/S"
        );
        for j in &status.jobs {
            let p = j.progress;
            let (age, rate) = (j.running_ms as f64 / 1000.0, thunkmesh_rendezvous::web::throughput(j));
            let mode = j.mode.name();
            println!(
                "{:<8} {mode:<7} {:>9} {:>9} {:>8} {:>8} {:>8.1}s {rate:>10.1}",
                j.session, p.total, p.done, p.running, p.ready, age
            );
        }
    }
    let queued: u64 = status.jobs.iter().map(|j| j.progress.ready).sum();
    println!("{} job(s), {queued} thunk(s) queued; up {}", status.jobs.len(), uptime(status.uptime_ms));
    Ok(())
}

fn uptime(ms: u64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(ms / 1000))
}

/// The token in `state_dir/token`, generated (readable by the owner only) on first use.
fn stored_token(state_dir: &Path) -> Result<String> {
    let path = state_dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    let token = format!("{:032x}", rand::random::<u128>());
    thunkmesh_net::write_private(&path, token.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("generated a token in {} (or set {TOKEN_ENV})", path.display());
    Ok(token)
}

async fn node(args: NodeArgs) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("thunkmesh-node-{}", std::process::id())));
    let config = NodeConfig {
        server_name: server_name(&args.rendezvous, &args.trust),
        rendezvous: args.rendezvous.clone(),
        trust: trust(&args.trust)?,
        token: token()?,
        slots: args.slots.max(1),
        cache_dir: cache.clone(),
        cache_size: args.cache_size,
        bind: args.bind,
        name,
        idle_exit: None,
        retry_for: args.retry_for,
        launcher: match args.sandbox {
            SandboxArg::Off => None,
            mode => Some(thunkmesh_node::jail::Launcher {
                binary: std::env::current_exe().context("cannot find this program's own path")?,
                namespaces: mode == SandboxArg::Auto,
            }),
        },
    };
    let worked = thunkmesh_node::run(config, stop_requested()).await?;
    if worked.disk_full {
        return Err(anyhow::anyhow!(
            "node stopped after {} thunks: the disk holding its cache ({}) is full",
            worked.thunks,
            cache.display()
        )
        .into());
    }
    eprintln!("node stopped after {} thunks", worked.thunks);
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what service managers and Lambda send before stopping).
async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into())
}
