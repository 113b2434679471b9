//! The embedded default: a rendezvous in this process on loopback and N node processes (this
//! same binary, `node` subcommand), with a fresh random token. Everything stops when the
//! [`LocalMesh`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use thunkmesh_net::{Identity, NetError, Trust};
use thunkmesh_rendezvous::{Config, JobLimits, Running};

use crate::submit::Target;

/// How long local nodes have to start and register.
const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the local mesh could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The rendezvous could not start.
    #[error(transparent)]
    Rendezvous(#[from] thunkmesh_rendezvous::RendezvousError),
    /// Identity generation failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Nodes exited or did not register in time.
    #[error("local nodes did not start; their logs are in {logs}")]
    NodesFailed {
        /// Where the logs are.
        logs: String,
    },
    /// A node process could not start.
    #[error("cannot start local node {index} ({exe}): {source}")]
    Spawn {
        /// Which node.
        index: usize,
        /// The binary.
        exe: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running local mesh.
#[derive(Debug)]
pub struct LocalMesh {
    rendezvous: Running,
    token: String,
    nodes: Vec<tokio::process::Child>,
    logs: PathBuf,
}

impl LocalMesh {
    /// Starts the rendezvous and `workers` node processes of `exe` running `slots` thunks each,
    /// with caches (of at most `cache_size` bytes, or the nodes' default) and logs under
    /// `state_dir/nodes/`.
    pub async fn start(
        workers: usize,
        slots: u32,
        cache_size: Option<u64>,
        exe: &Path,
        state_dir: &Path,
    ) -> Result<LocalMesh, MeshError> {
        LocalMesh::start_with_env(workers, slots, cache_size, exe, state_dir, &[], None).await
    }

    /// Like [`LocalMesh::start`], with `env` set in each node's environment (such as
    /// `AWS_PROFILE`), and the rendezvous serving its web view on `web` if given.
    #[allow(clippy::too_many_arguments, reason = "each is one setting of the mesh; all are plain values")]
    pub async fn start_with_env(
        workers: usize,
        slots: u32,
        cache_size: Option<u64>,
        exe: &Path,
        state_dir: &Path,
        env: &[(&str, &str)],
        web: Option<thunkmesh_rendezvous::Web>,
    ) -> Result<LocalMesh, MeshError> {
        let workers = workers.max(1);
        let token = format!("{:032x}", rand::random::<u128>());
        let config = Config {
            token: token.clone(),
            identity: Identity::generate()?,
            limits: embedded_limits(),
            forbidden: Vec::new(),
            web,
        };
        let rendezvous = thunkmesh_rendezvous::spawn(([127, 0, 0, 1], 0).into(), config)?;
        let logs = state_dir.join("nodes");
        let mut nodes = Vec::with_capacity(workers);
        for index in 0..workers {
            let node = NodeSpawn { index, slots, cache_size, exe, logs: &logs, env };
            nodes.push(node.spawn(&rendezvous, &token)?);
        }
        let mut mesh = LocalMesh { rendezvous, token, nodes, logs };
        mesh.wait_until_registered(workers).await?;
        Ok(mesh)
    }

    /// Waits until every node registered (so cached objects they announce count for planning),
    /// or fails if one exits first or they take too long.
    async fn wait_until_registered(&mut self, workers: usize) -> Result<(), MeshError> {
        let logs = self.logs.display().to_string();
        let registered = self.rendezvous.wait_for_nodes(workers);
        let exited = futures::future::select_all(self.nodes.iter_mut().map(|n| Box::pin(n.wait())));
        tokio::select! {
            () = registered => Ok(()),
            _ = exited => Err(MeshError::NodesFailed { logs }),
            () = tokio::time::sleep(REGISTER_TIMEOUT) => Err(MeshError::NodesFailed { logs }),
        }
    }

    /// How a client reaches this mesh.
    pub fn target(&self) -> Target {
        Target {
            rendezvous: self.rendezvous.addr.to_string(),
            server_name: thunkmesh_net::SERVER_NAME.into(),
            trust: Trust::Pinned(self.rendezvous.fingerprint),
            token: self.token.clone(),
        }
    }

    /// Where the rendezvous serves its web view, if it does.
    pub fn web(&self) -> Option<std::net::SocketAddr> {
        self.rendezvous.web
    }

    /// Where node logs are.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// Completes when every node process has exited.
    pub async fn all_exited(&mut self) {
        for node in &mut self.nodes {
            let _ = node.wait().await;
        }
    }
}

/// How one local node is started.
struct NodeSpawn<'a> {
    index: usize,
    slots: u32,
    cache_size: Option<u64>,
    exe: &'a Path,
    logs: &'a Path,
    env: &'a [(&'a str, &'a str)],
}

impl NodeSpawn<'_> {
    fn spawn(&self, rendezvous: &Running, token: &str) -> Result<tokio::process::Child, MeshError> {
        let NodeSpawn { index, slots, cache_size, exe, logs, env } = *self;
        let fail = |source| MeshError::Spawn { index, exe: exe.display().to_string(), source };
        let dir = logs.join(index.to_string());
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let log = std::fs::File::create(logs.join(format!("{index}.log"))).map_err(fail)?;
        let mut command = tokio::process::Command::new(exe);
        command.arg("node");
        if let Some(size) = cache_size {
            command.args(["--cache-size", &size.to_string()]);
        }
        command
            .args(["--rendezvous", &rendezvous.addr.to_string()])
            .args(["--fingerprint", &hex(&rendezvous.fingerprint)])
            .args(["--bind", "127.0.0.1:0", "--slots", &slots.max(1).to_string(), "--name", &format!("local-{index}")])
            // The rendezvous lives and dies with this process: a node that loses it stops.
            .args(["--retry-for", "0s"])
            .arg("--cache-dir")
            .arg(&dir)
            .env("THUNKMESH_TOKEN", token)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(fail)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The embedded rendezvous' only client is this process: the job being sent may hold as much as
/// a whole job may, and there is no one else's submission to bound.
fn embedded_limits() -> JobLimits {
    let limits = JobLimits::default();
    JobLimits { unfinished: limits.bytes, submit_within: std::time::Duration::from_secs(24 * 3600), ..limits }
}
