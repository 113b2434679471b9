//! The Lambda glue of the CLI: `thunkmesh lambda deploy`, running a job with `--engine lambda`
//! (the launcher beside the job, fed the job's progress), and a rendezvous' warm pool.

use std::time::{Duration, Instant};

use anyhow::Context;
use thunkmesh_client::{JobRun, Reporter, Summary, Target, run_job};
use thunkmesh_lambda::{Arch, Demand, FunctionSpec, Invocation, LaunchSpec, Launched};
use thunkmesh_protocol::wire::Progress;
use tokio::sync::watch;

use crate::cli::{DeployArgs, RendezvousArgs, RunFlags};
use crate::exit::{Failure, Interrupted, Result, UsageError};

/// Beyond the idle time, how long a finished job waits for its workers' reports (a drain may
/// upload).
const REPORT_GRACE: Duration = Duration::from_secs(30);

pub async fn deploy(args: DeployArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this program's own path")?,
    };
    let arch = match args.arch {
        Some(arch) => arch.into(),
        None => Arch::from_machine(std::env::consts::ARCH)
            .ok_or_else(|| UsageError(format!("Lambda has no {} functions: pass --arch", std::env::consts::ARCH)))?,
    };
    let zip = thunkmesh_lambda::package(&binary, arch)?;
    if let Some(path) = &args.package_only {
        std::fs::write(path, &zip).with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "wrote {} ({} bytes, {}): upload it as a provided.al2023 function",
            path.display(),
            zip.len(),
            arch.as_str()
        );
        return Ok(());
    }
    let Some(role) = args.role.clone() else {
        return Err(UsageError("--role ARN is needed to deploy (or --package-only FILE)".into()).into());
    };
    let spec = FunctionSpec {
        name: args.function.clone(),
        role,
        memory_mb: args.memory,
        tmp_mb: args.tmp,
        timeout_seconds: args.timeout,
        arch,
    };
    eprintln!("deploying {} ({} byte package, {}) ...", spec.name, zip.len(), arch.as_str());
    let client = thunkmesh_lambda::client(&args.aws.settings(), true).await;
    let deployed = thunkmesh_lambda::deploy(&client, &spec, zip).await?;
    println!("{} {}", if deployed.created { "created" } else { "updated" }, deployed.arn);
    Ok(())
}

/// The launch for `thunkmesh run --engine lambda`, checked against the other flags.
pub fn launch_spec(args: &RunFlags, store_url: &str, target: &Target) -> Result<LaunchSpec> {
    let usage = |m: &str| Failure::from(UsageError(m.into()));
    let function = args.function.clone().ok_or_else(|| usage("--engine lambda needs --function NAME"))?;
    let workers = args.workers.ok_or_else(|| usage("--engine lambda needs --workers N (the most alive at once)"))?;
    if workers == 0 {
        return Err(usage("--workers must be at least 1"));
    }
    if !store_url.starts_with("s3://") {
        return Err(usage(
            "Lambda workers read inputs from storage the client shares with them: pass --store s3://BUCKET/PREFIX",
        ));
    }
    let Some(fingerprint) = &args.trust.fingerprint else {
        return Err(usage("Lambda workers trust the rendezvous by its fingerprint: pass --fingerprint HEX"));
    };
    let idle_seconds = args.lambda_idle.as_secs().max(1);
    Ok(LaunchSpec {
        function,
        workers,
        invocation: Invocation {
            rendezvous: target.rendezvous.clone(),
            fingerprint: fingerprint.clone(),
            token: target.token.clone(),
            slots: args.slots.max(1),
            max_seconds: None,
            idle_seconds: Some(idle_seconds),
        },
        linger: Duration::from_secs(idle_seconds) + REPORT_GRACE,
    })
}

/// Passes progress on and turns it into demand for workers.
struct Demanding<'a> {
    inner: &'a mut dyn Reporter,
    demand: &'a watch::Sender<Demand>,
}

impl Reporter for Demanding<'_> {
    fn phase(&mut self, what: &str) {
        self.inner.phase(what);
    }

    fn progress(&mut self, p: Progress) {
        // Workers for what could run now; a thunk still waiting for inputs would keep a worker
        // idle (and billed) until they exist.
        self.demand.send_replace(Demand::Thunks(p.ready + p.running));
        // No node yet is no news here: the launcher is starting the workers.
        self.inner.progress(Progress { nodes: p.nodes.max(1), ..p });
    }

    fn tick(&mut self) {
        self.inner.tick();
    }
}

/// Runs the job while launching its Lambda workers; after it ends, waits for their reports.
pub async fn run(
    run: JobRun<'_>,
    target: &Target,
    spec: &LaunchSpec,
    aws: &crate::cli::AwsArgs,
    reporter: &mut dyn Reporter,
    started: Instant,
) -> Result<(Summary, Launched)> {
    let client = thunkmesh_lambda::client(&aws.settings(), false).await;
    let (demand, wants) = watch::channel(Demand::Unknown);
    let launcher = thunkmesh_lambda::launch(&client, spec, wants);
    tokio::pin!(launcher);
    let summary = {
        let mut demanding = Demanding { inner: &mut *reporter, demand: &demand };
        let job = run_job(run, target, &mut demanding, started);
        tokio::select! {
            r = job => r.map_err(Failure::run)?,
            l = &mut launcher => match l {
                Err(e) => return Err(anyhow::anyhow!("{e}; completed thunks are in the memo cache").into()),
                Ok(_) => return Err(anyhow::anyhow!("the Lambda launcher stopped before the job ended").into()),
            },
            _ = tokio::signal::ctrl_c() => return Err(Interrupted { memo: true }.into()),
        }
    };
    demand.send_replace(Demand::Ended);
    reporter.phase("waiting for the Lambda workers' reports");
    let launched = launcher.await?;
    Ok((summary, launched))
}

/// One line for the summary.
pub fn describe(l: &Launched) -> String {
    let mut line = format!(
        "lambda    {} invocations ({} cold starts), {} reports, {} throttled, {} failed, {:.1} worker-seconds",
        l.invocations, l.cold_starts, l.reports, l.throttled, l.failed, l.worker_seconds
    );
    if l.still_running > 0 {
        line += &format!(", {} still running (they stop when idle)", l.still_running);
    }
    if let Some(e) = &l.last_error {
        line += &format!("; last error: {e}");
    }
    line
}

/// The warm pool a rendezvous keeps, if asked for.
pub fn pool_spec(args: &RendezvousArgs, fingerprint: &str, token: &str) -> Result<Option<LaunchSpec>> {
    let (Some(workers), Some(function), Some(addr)) = (args.lambda_pool, &args.function, &args.public_addr) else {
        return Ok(None);
    };
    if workers == 0 {
        return Err(UsageError("--lambda-pool must be at least 1".into()).into());
    }
    Ok(Some(LaunchSpec {
        function: function.clone(),
        workers,
        invocation: Invocation {
            rendezvous: addr.clone(),
            fingerprint: fingerprint.to_owned(),
            token: token.to_owned(),
            slots: args.lambda_slots.max(1),
            max_seconds: None,
            idle_seconds: None,
        },
        linger: Duration::ZERO,
    }))
}

/// Serves the rendezvous while keeping its pool of Lambda workers; a pool whose function keeps
/// failing stops the rendezvous with that error.
pub async fn with_pool(
    serve: impl std::future::Future<Output = Result<(), thunkmesh_rendezvous::RendezvousError>>,
    spec: &LaunchSpec,
    aws: &crate::cli::AwsArgs,
) -> Result<()> {
    let client = thunkmesh_lambda::client(&aws.settings(), false).await;
    let (_keep, wants) = watch::channel(Demand::Pool);
    eprintln!("keeping {} Lambda workers of `{}` joined", spec.workers, spec.function);
    tokio::select! {
        served = serve => Ok(served?),
        launched = thunkmesh_lambda::launch(&client, spec, wants) => match launched {
            Err(e) => Err(anyhow::anyhow!("the warm pool stopped: {e}").into()),
            Ok(_) => Err(anyhow::anyhow!("the warm pool stopped").into()),
        },
    }
}
