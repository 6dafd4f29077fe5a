//! Shared by the integration tests: real `weft node` processes serving real plugin
//! components built from `plugins/` by `scripts/build-plugins`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use weft::net::Client;
use weft::node::NodeProcess;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The built component of plugin `name` (an example or a test-only plugin).
pub fn plugin_file(name: &str) -> PathBuf {
    for dir in ["build/plugins", "build/test-plugins"] {
        let path = repo().join(dir).join(format!("{name}.wasm"));
        if path.is_file() {
            return path;
        }
    }
    panic!("plugin `{name}` is not built: run scripts/build-plugins (the README's test command does)");
}

/// A node process with its own plugin directory and compile cache; killed when dropped.
pub struct TestNode {
    pub process: NodeProcess,
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
    /// The CA its `wss://` listener's certificate chains to (`--tls-ca`), if it serves TLS.
    pub tls_ca: Option<PathBuf>,
}

impl TestNode {
    /// Starts `weft node` on a free loopback port serving copies of the named plugins.
    pub async fn start(plugins: &[&str], extra_args: &[&str]) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        for name in plugins {
            std::fs::copy(plugin_file(name), dir.path().join(format!("{name}.wasm"))).unwrap();
        }
        let cache = tempfile::tempdir().unwrap();
        let mut args = vec![
            "node".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--plugins={}", dir.path().display()),
        ];
        if !extra_args.iter().any(|a| a.starts_with("--cache-dir")) {
            args.push(format!("--cache-dir={}", cache.path().display()));
        }
        // Every test node has an identity of its own.
        if !extra_args
            .iter()
            .any(|a| a.starts_with("--node-id") || a.starts_with("--data-dir"))
        {
            args.push(format!("--data-dir={}", cache.path().join("data").display()));
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let process = NodeProcess::spawn(Path::new(env!("CARGO_BIN_EXE_weft")), &args, Duration::from_secs(60))
            .await
            .expect("node starts");
        let tls_ca = extra_args
            .iter()
            .find_map(|a| a.strip_prefix("--tls-ca="))
            .map(PathBuf::from);
        TestNode {
            process,
            dir,
            cache,
            tls_ca,
        }
    }

    pub fn url(&self) -> &str {
        self.process.url()
    }

    pub async fn client(&self) -> Client {
        let tls = self
            .tls_ca
            .as_deref()
            .map(|ca| weft::net::tls::client_trusting(ca).unwrap());
        Client::connect_with(self.url(), None, tls).await.unwrap()
    }
}

/// A request of the given commands.
pub fn rpc(cmds: Value) -> Value {
    json!({ "role": "rpc", "cmds": cmds })
}

/// One command of a request.
pub fn cmd(name: &str, fun: &str, args: Value) -> Value {
    json!({ "name": name, "fun": fun, "args": args, "kwargs": {}, "locs": [] })
}

/// The error code of a response, or `None` when it succeeded.
pub fn error_code(response: &Value) -> Option<i64> {
    response
        .get("error")
        .filter(|e| !e.is_null())
        .map(|e| e["code"].as_i64().unwrap())
}

/// The error details of a response.
pub fn error_details(response: &Value) -> String {
    response["error"]["details"].as_str().unwrap_or_default().to_string()
}

/// No keyword arguments.
pub fn no_kwargs() -> Map<String, Value> {
    Map::new()
}

/// Copies `from` into `dir` as `name` the way deploy tools do: write a hidden temporary file,
/// then rename it into place (one atomic change for the watcher).
pub fn install_plugin(dir: &Path, from: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Writes `bytes` into `dir/name` by write-then-rename.
pub fn install_bytes(dir: &Path, bytes: &[u8], name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Polls `check` every 10 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A client calling one command continuously (every 2 ms) until stopped; it records every
/// outcome: the result, or the error code.
pub struct Caller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<Result<Value, i64>>>,
}

impl Caller {
    pub async fn start(url: &str, fun: &str, args: Vec<Value>) -> Caller {
        let client = Client::connect(url).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), done.clone());
        let fun = fun.to_string();
        let task = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let outcome = match client.call(&fun, args.clone(), Map::new(), &[]).await {
                    Ok(value) => Ok(value),
                    Err(weft::net::ClientError::Remote { code, .. }) => Err(code),
                    Err(e) => panic!("the connection failed: {e}"),
                };
                outcomes.push(outcome);
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            outcomes
        });
        Caller { stop, done, task }
    }

    /// Stops calling and returns every outcome, in order. The caller first completes two more calls, so the
    /// last one was sent after this was asked and sees the node as it is now.
    pub async fn finish(self) -> Vec<Result<Value, i64>> {
        let seen = self.done.load(std::sync::atomic::Ordering::Relaxed);
        while self.done.load(std::sync::atomic::Ordering::Relaxed) < seen + 2 && !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Every outcome of a [`Caller`] succeeded (and there was at least one).
pub fn all_ok(outcomes: &[Result<Value, i64>]) {
    assert!(!outcomes.is_empty());
    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
}

/// The node's `weft.plugins` report of plugin `name`.
pub async fn plugin_report(client: &Client, name: &str) -> Value {
    let report = client.call("weft.plugins", vec![], Map::new(), &[]).await.unwrap();
    report
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Starts a node that seeds from `seed` (when given), with a shared test cluster secret.
pub async fn fabric_node(plugins: &[&str], seed: Option<&TestNode>, extra_args: &[&str]) -> TestNode {
    let mut args: Vec<String> = vec!["--cluster-secret=test-secret".into()];
    if let Some(seed) = seed {
        args.push(format!("--seed={}", seed.url()));
    }
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestNode::start(plugins, &args).await
}

/// The nodes serving `command`, as `node`'s catalog lists them.
pub async fn servers_of(node: &TestNode, command: &str) -> Vec<String> {
    let client = node.client().await;
    let catalog = client.call("weft.catalog", vec![], Map::new(), &[]).await.unwrap();
    catalog
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["command"] == command)
        .map(|row| row["node"].as_str().unwrap().to_string())
        .collect()
}

/// Every row of `node`'s `weft.peers` report (state, link, in-flight calls, penalty).
pub async fn peer_rows(node: &TestNode) -> Vec<Value> {
    let client = node.client().await;
    let report = client.call("weft.peers", vec![], Map::new(), &[]).await.unwrap();
    report["peers"].as_array().unwrap().clone()
}

/// The members `node` knows, with their state.
pub async fn peer_states(node: &TestNode) -> Vec<(String, String)> {
    peer_rows(node)
        .await
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `node`'s row for peer `id`, if it knows the peer.
pub async fn peer_row(node: &TestNode, id: &str) -> Option<Value> {
    peer_rows(node).await.into_iter().find(|p| p["node"] == id)
}

/// Every row of `node`'s `weft.catalog` (this cluster's commands by node, other clusters' by
/// cluster).
pub async fn catalog_rows(node: &TestNode) -> Vec<Value> {
    let client = node.client().await;
    let catalog = client.call("weft.catalog", vec![], Map::new(), &[]).await.unwrap();
    catalog.as_array().unwrap().clone()
}

/// This node's id, as the fabric knows it.
pub async fn node_id(node: &TestNode) -> String {
    let client = node.client().await;
    let report = client.call("weft.peers", vec![], Map::new(), &[]).await.unwrap();
    report["node"].as_str().unwrap().to_string()
}

/// Calls `fun` on `node` with resource tags `locs`; the error as text.
pub async fn call_with_locs(node: &TestNode, fun: &str, args: Vec<Value>, locs: &[&str]) -> Result<Value, String> {
    let locs: Vec<String> = locs.iter().map(|l| l.to_string()).collect();
    node.client()
        .await
        .call(fun, args, Map::new(), &locs)
        .await
        .map_err(|e| e.to_string())
}

/// Sends `signal` (`-KILL`, `-STOP`, …) to a node's process.
pub fn signal(node: &TestNode, signal: &str) {
    let pid = node.process.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

/// The compile cache `scripts/build-plugins` fills when it builds the Python and JavaScript
/// plugins; nodes given it load those large components without compiling them again.
pub fn built_compile_cache() -> PathBuf {
    std::env::var_os("WEFT_PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("plugins/target"))
        .join("compiled")
}

/// Starts a node serving copies of the named plugins from the built compile cache.
pub async fn warm_node(plugins: &[&str], extra_args: &[&str]) -> TestNode {
    let cache = format!("--cache-dir={}", built_compile_cache().display());
    let mut args = vec![cache.as_str()];
    args.extend_from_slice(extra_args);
    TestNode::start(plugins, &args).await
}

/// The outcome of calling `fun` with positional and keyword arguments: the result, or the error's
/// code and details.
pub async fn outcome(client: &Client, fun: &str, args: Value, kwargs: Value) -> Result<Value, (i64, String)> {
    let args = args.as_array().cloned().unwrap_or_default();
    let kwargs = kwargs.as_object().cloned().unwrap_or_default();
    match client.call(fun, args, kwargs, &[]).await {
        Ok(value) => Ok(value),
        Err(weft::net::ClientError::Remote { code, details, .. }) => Err((code, details)),
        Err(e) => panic!("the connection failed: {e}"),
    }
}

/// Runs the `weft` CLI with `args`.
pub fn weft_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap()
}

/// Creates a publisher key at `path` (`weft plugin keygen`); returns its `ed25519:` public key.
pub fn keygen(path: &Path) -> String {
    let out = weft_cli(&["plugin", "keygen", "--key", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = stdout.find("ed25519:").unwrap();
    stdout[start..start + 8 + 64].to_string()
}

/// Signs `file` with the publisher key at `key` (`weft plugin sign`).
pub fn sign(file: &Path, key: &Path) {
    let out = weft_cli(&["plugin", "sign", file.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A node with id `name` whose plugin directory, data and cache live under `dir`, serving copies
/// of `plugins`, seeded from `seed`, with `extra` arguments, `env` and (when given) its standard
/// error in `log`.
pub async fn named_node(
    dir: &Path,
    name: &str,
    plugins: &[&str],
    seed: Option<&str>,
    extra: &[String],
    env: &[(&str, &str)],
    log: Option<std::fs::File>,
) -> NodeProcess {
    let plugin_dir = dir.join(format!("{name}-plugins"));
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for plugin in plugins {
        std::fs::copy(plugin_file(plugin), plugin_dir.join(format!("{plugin}.wasm"))).unwrap();
    }
    let mut args = vec![
        "node".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--plugins={}", plugin_dir.display()),
        format!("--data-dir={}", dir.join(format!("{name}-data")).display()),
        format!("--cache-dir={}", dir.join(format!("{name}-cache")).display()),
        format!("--node-id={name}"),
        "--cluster-secret=named-nodes".into(),
    ];
    if let Some(seed) = seed {
        args.push(format!("--seed={seed}"));
    }
    args.extend(extra.iter().cloned());
    NodeProcess::spawn_with(
        Path::new(env!("CARGO_BIN_EXE_weft")),
        &args,
        Duration::from_secs(60),
        env,
        log,
    )
    .await
    .unwrap()
}
