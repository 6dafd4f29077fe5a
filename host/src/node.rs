//! A running node: runtime, plugins, executor and client listener put together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Limits, SHUTDOWN_GRACE};
use crate::fabric::{Fabric, FabricConfig};
use crate::net::server::PeerHandler;
use crate::plugins::{self, PluginDir, WatchHandle};
use crate::rpc::Executor;
use crate::runtime::Runtime;

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub plugins: Option<PathBuf>,
    /// The node's own resource tags, added to every command it serves.
    pub resources: Vec<String>,
    pub limits: Limits,
    /// Where compiled components are kept between runs; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// How plugins missing from the compile cache are compiled.
    pub compilation: crate::runtime::Compilation,
    /// How the node takes part in the fabric (`advertise_url` empty: the listener's URL).
    pub fabric: Option<FabricConfig>,
    /// The tenants it serves; `None`: an open node, every client sees every command.
    pub tenants: Option<Arc<crate::tenancy::Tenants>>,
    /// TLS for the listener (`wss://`) and for dialing peers; `None`: plain `ws://`.
    pub tls: Option<crate::net::tls::Tls>,
    /// Where to serve `/healthz`, `/readyz`, `/metrics` and `/status`; `None`: nowhere.
    pub http: Option<SocketAddr>,
    /// Which plugins of other nodes to replicate, and when (default: none).
    pub replication: crate::replication::Policy,
}

/// A node serving clients.
pub struct Node {
    url: String,
    http_url: Option<String>,
    executor: Arc<Executor>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    _watch: Option<WatchHandle>,
    fabric: Option<Arc<Fabric>>,
    _replication: Option<Arc<crate::replication::Replication>>,
    /// The empty plugin directory of a node that replicates without one of its own.
    _scratch: Option<tempfile::TempDir>,
    _runtime: Arc<Runtime>,
}

impl Node {
    /// Loads the plugins, binds the listener and starts serving.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let runtime = Arc::new(
            Runtime::new(config.limits.clone(), config.cache_dir.clone(), config.compilation)
                .context("starting the webassembly runtime")?,
        );
        let executor = Executor::new(config.limits.clone(), config.resources.clone());
        if let Some(tenants) = &config.tenants {
            executor.set_tenants(tenants.clone());
        }
        let (plugin_dir, watch) = match &config.plugins {
            Some(dir) => {
                if !dir.is_dir() {
                    anyhow::bail!("plugin directory {} does not exist", dir.display());
                }
                let dir = Arc::new(PluginDir::new(
                    dir.clone(),
                    runtime.clone(),
                    executor.clone(),
                    config.resources.clone(),
                ));
                dir.reconcile().await;
                let watch =
                    plugins::watch(dir.clone()).with_context(|| format!("watching {}", dir.path().display()))?;
                (Some(dir), Some(watch))
            }
            None => (None, None),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the client listener on {}", config.listen))?;
        let local = listener.local_addr().context("reading the listener's address")?;
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            local.ip().to_string()
        };
        let scheme = if config.tls.is_some() { "wss" } else { "ws" };
        let url = match local {
            SocketAddr::V6(_) if !local.ip().is_unspecified() => {
                format!("{scheme}://[{host}]:{}", local.port())
            }
            _ => format!("{scheme}://{host}:{}", local.port()),
        };
        let (shutdown, stop) = watch::channel(false);
        let fabric = config.fabric.map(|mut fabric| {
            if fabric.advertise_url.is_empty() {
                fabric.advertise_url = url.clone();
            }
            if let Some(tls) = &config.tls {
                fabric.tls = Some(tls.peer_client.clone());
            }
            Fabric::start(fabric, executor.clone(), stop.clone())
        });
        // Replicas need a plugin table to join; a node without a directory gets an empty one
        // (in the module store).
        let mut scratch = None;
        let replication = match (&fabric, plugin_dir) {
            (Some(fabric), dir) if dir.is_some() || config.replication.mode != crate::replication::Mode::Off => {
                let dir = match dir {
                    Some(dir) => dir,
                    None => {
                        let empty = tempfile::Builder::new()
                            .prefix("weft-no-plugins-")
                            .tempdir()
                            .context("making an empty plugin directory")?;
                        let path = empty.path().to_path_buf();
                        scratch = Some(empty);
                        Arc::new(PluginDir::new(
                            path,
                            runtime.clone(),
                            executor.clone(),
                            config.resources.clone(),
                        ))
                    }
                };
                let replication =
                    crate::replication::Replication::start(config.replication.clone(), dir, fabric, stop.clone())
                        .context("opening the module store")?;
                Some(replication)
            }
            _ => None,
        };
        let peers = fabric.clone().map(|f| f as Arc<dyn PeerHandler>);
        let server = tokio::spawn(crate::net::server::serve(
            listener,
            executor.clone(),
            peers,
            config.tls.clone(),
            stop,
        ));
        let http_url = match config.http {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the http listener on {addr}"))?;
                let local = listener.local_addr().context("reading the http listener's address")?;
                let observed = Arc::new(crate::net::http::Observed {
                    executor: executor.clone(),
                    started: std::time::Instant::now(),
                    stopping: shutdown.subscribe(),
                });
                tokio::spawn(crate::net::http::serve(listener, observed));
                tracing::info!(%local, "operator endpoints: /healthz /readyz /metrics /status");
                Some(format!("http://{local}"))
            }
            None => None,
        };
        tracing::info!(%url, commands = executor.table().commands().len(), "node serving");
        Ok(Node {
            url,
            http_url,
            executor,
            shutdown,
            server,
            _watch: watch,
            fabric,
            _replication: replication,
            _scratch: scratch,
            _runtime: runtime,
        })
    }

    /// The base URL of the operator endpoints, with `--http`.
    pub fn http_url(&self) -> Option<&str> {
        self.http_url.as_deref()
    }

    /// The URL clients connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }

    /// Leaves the fabric (peers drop this node at once), stops accepting, lets requests in
    /// flight finish (up to a grace period) and stops.
    pub async fn shutdown(self) {
        if let Some(fabric) = &self.fabric {
            fabric.leave().await;
        }
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
            tracing::warn!("requests still running after the shutdown grace period; stopping anyway");
            server.abort();
        }
    }
}

/// A `weft` process started by this one (by `weft bench` and the tests): it is killed when
/// dropped.
pub struct NodeProcess {
    child: tokio::process::Child,
    url: String,
    http_url: Option<String>,
}

impl NodeProcess {
    /// Runs `exe ARGS...` and waits (up to `timeout`) for the `WEFT_URL=` line it prints once
    /// it serves. Its standard error is passed through.
    pub async fn spawn(exe: &std::path::Path, args: &[String], timeout: std::time::Duration) -> anyhow::Result<Self> {
        Self::spawn_with(exe, args, timeout, &[], None).await
    }

    /// Like [`NodeProcess::spawn`], with extra environment variables and, when given, its
    /// standard error written to `log`.
    pub async fn spawn_with(
        exe: &std::path::Path,
        args: &[String],
        timeout: std::time::Duration,
        env: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let stderr = log.map_or_else(std::process::Stdio::inherit, std::process::Stdio::from);
        let mut child = tokio::process::Command::new(exe)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("no standard output of the child")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut http_url = None;
        let url = tokio::time::timeout(timeout, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("WEFT_HTTP=") {
                    http_url = Some(url.to_string());
                }
                if let Some(url) = line.strip_prefix("WEFT_URL=") {
                    return Ok(url.to_string());
                }
            }
            anyhow::bail!("{} exited before printing WEFT_URL", exe.display())
        })
        .await
        .with_context(|| format!("{} did not print WEFT_URL within {timeout:?}", exe.display()))??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(NodeProcess { child, url, http_url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The operator endpoints' base URL (`WEFT_HTTP=`, printed before `WEFT_URL=`), with `--http`.
    pub fn http_url(&self) -> Option<&str> {
        self.http_url.as_deref()
    }

    /// The process id, for signals.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}
