//! Where a job runs and with what: the store a run names, the rendezvous it reaches (token,
//! trust) or the local mesh it starts, and running the job there.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use thunkmesh_client::{JobRun, LocalMesh, Reporter, RunError, Summary, Target, run_job};
use thunkmesh_net::{Trust, parse_fingerprint};
use thunkmesh_store::{Store, StoreError};

use crate::cli::{AwsArgs, EngineArg, RunFlags, TrustArgs};
use crate::exit::{Failure, Result, UsageError};

/// The environment variable that carries the mesh token.
pub const TOKEN_ENV: &str = "THUNKMESH_TOKEN";

/// A node's identity as a user names it: 8 to 64 hex digits of its certificate fingerprint,
/// lowercase.
pub fn node_id_prefix(flag: &str, given: &str) -> Result<String> {
    let valid = (8..=64).contains(&given.len()) && given.chars().all(|c| c.is_ascii_hexdigit());
    if !valid {
        let message =
            format!("{flag} {given}: a node is named by 8 to 64 hex digits of its fingerprint (`thunkmesh status`)");
        return Err(UsageError(message).into());
    }
    Ok(given.to_ascii_lowercase())
}

/// Opens `--store` (an s3:// one with the AWS CLI's credential chain), or the state folder's
/// store.
pub async fn open_store(store: Option<&str>, state_dir: &Path, aws: &AwsArgs) -> Result<Store> {
    let url = match store {
        Some(url) => url.to_owned(),
        None => Store::folder_url(&state_dir.join("store"))?,
    };
    Store::connect(&url, &aws.settings()).await.map_err(|e| match e {
        StoreError::Unsupported(_) | StoreError::BadUrl { .. } | StoreError::NoCredentials { .. } => {
            Failure::from(UsageError(e.to_string()))
        }
        other => other.into(),
    })
}

/// One in how many results a job on a self-hosted rendezvous checks on a second node by
/// default: anyone with the token may run a node there.
const DEFAULT_VERIFY: u32 = 16;

/// Runs `job` as the flags say, writing its targets to `out_dir`.
pub async fn execute(
    args: &RunFlags,
    job: &thunkmesh_client::LoadedJob,
    out_dir: &Path,
    bar: &mut dyn Reporter,
    started: Instant,
) -> Result<(Summary, Option<thunkmesh_lambda::Launched>)> {
    let store = open_store(args.store.as_deref(), &args.state_dir, &args.aws).await?;
    let run = JobRun {
        job,
        store: &store,
        mode: args.mode.into(),
        memo: args.memo.into(),
        require_direct: args.require_direct,
        keep_going: args.keep_going,
        verify: args.verify.unwrap_or(match (&args.rendezvous, args.engine) {
            (Some(_), EngineArg::Local) => DEFAULT_VERIFY,
            _ => 0,
        }),
        out_dir,
    };
    if let Some(addr) = &args.rendezvous {
        if args.ui.is_some() {
            let why = "--ui serves the local mesh's view; a self-hosted rendezvous serves its own (`thunkmesh rendezvous --http`)";
            return Err(UsageError(why.into()).into());
        }
        let target = remote_target(addr, &args.trust)?;
        if args.engine == EngineArg::Lambda {
            let spec = crate::lambda::launch_spec(args, store.url(), &target)?;
            let (summary, launched) = crate::lambda::run(run, &target, &spec, &args.aws, bar, started).await?;
            return Ok((summary, Some(launched)));
        }
        if args.workers.is_some() {
            let why =
                "--workers starts local nodes or Lambda workers; a self-hosted rendezvous' own nodes are started there";
            return Err(UsageError(why.into()).into());
        }
        return Ok((run_job(run, &target, bar, started).await.map_err(Failure::run)?, None));
    }
    if args.engine == EngineArg::Lambda {
        let why = "--engine lambda needs --rendezvous HOST:PORT: the self-hosted rendezvous Lambda workers dial";
        return Err(UsageError(why.into()).into());
    }
    let workers = args.workers.unwrap_or_else(default_workers);
    if workers == 0 {
        return Err(UsageError("--workers must be at least 1".into()).into());
    }
    let exe = std::env::current_exe().context("cannot find this program's own path to start nodes")?;
    // Local nodes read an s3:// store with the client's profile and region.
    let aws = [("AWS_PROFILE", &args.aws.profile), ("AWS_REGION", &args.aws.region)];
    let env: Vec<(&str, &str)> = aws.iter().filter_map(|(k, v)| Some((*k, v.as_deref()?))).collect();
    let web = args.ui.map(|addr| thunkmesh_rendezvous::Web::bind(addr, None)).transpose()?;
    let mut mesh =
        LocalMesh::start_with_env(workers, args.slots, args.cache_size, &exe, &args.state_dir, &env, web).await?;
    let target = mesh.target();
    if let Some(addr) = mesh.web() {
        eprintln!("live view: http://{addr}/?token={} (while the job runs)", target.token);
    }
    let logs = mesh.logs().display().to_string();
    tokio::select! {
        r = run_job(run, &target, bar, started) => Ok((r.map_err(Failure::run)?, None)),
        () = mesh.all_exited() => Err(RunError::NodesExited(logs).into()),
    }
}

pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).max(2)
}

/// The token from the environment; unset or empty is a usage error.
pub fn token() -> Result<String> {
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => Ok(t),
        Ok(_) => Err(UsageError(format!("{TOKEN_ENV} is empty: set it to the rendezvous' token")).into()),
        Err(_) => Err(UsageError(format!("set {TOKEN_ENV} to the rendezvous' token (see docs/operations.md)")).into()),
    }
}

/// How to trust the rendezvous, as the flags say.
pub fn trust(args: &TrustArgs) -> Result<Trust> {
    match (&args.fingerprint, &args.ca) {
        (Some(fp), _) => {
            Ok(Trust::Pinned(parse_fingerprint(fp).map_err(|e| UsageError(format!("--fingerprint: {e}")))?))
        }
        (None, Some(ca)) => Ok(Trust::from_ca_file(ca)?),
        (None, None) => Err(UsageError(
            "say how to trust the rendezvous: --fingerprint HEX (printed when it starts) or --ca FILE".into(),
        )
        .into()),
    }
}

/// The name the rendezvous' certificate must carry.
pub fn server_name(addr: &str, args: &TrustArgs) -> String {
    match (&args.server_name, &args.ca) {
        (Some(name), _) => name.clone(),
        (None, Some(_)) => addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_matches(['[', ']']).to_owned(),
        (None, None) => thunkmesh_net::SERVER_NAME.to_owned(),
    }
}

pub fn remote_target(addr: &str, args: &TrustArgs) -> Result<Target> {
    Ok(Target {
        rendezvous: addr.to_owned(),
        server_name: server_name(addr, args),
        trust: trust(args)?,
        token: token()?,
    })
}
