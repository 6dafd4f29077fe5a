//! Plugins propagating as modules, with real node processes on loopback:
//! `cargo bench --bench replication [N...]` (default 10; after `scripts/build-plugins`).
//!
//! N nodes seeded as a chain, every one replicating every plugin eagerly. A plugin is renamed
//! into node 0's directory; measured: the time until every other node serves a replica of it
//! (fetched, checked, loaded: callable locally), how many times each node fetched it, and the
//! peer bytes each node received meanwhile against the module's size. Done for the small Rust
//! `math` plugin and the ~18 MB Python `textstats` plugin. The nodes share the compile cache
//! `scripts/build-plugins` fills, so the figures measure the fabric, not Cranelift (a cold
//! compile of the Python plugin takes about 9 s on this machine; see "The plugin directory").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use weft::net::Client;
use weft::node::NodeProcess;

struct Node {
    process: NodeProcess,
    dir: tempfile::TempDir,
    _data: tempfile::TempDir,
    client: Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10] } else { sizes };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let plugins = ["math", "textstats"].map(|name| (name, repo.join(format!("build/plugins/{name}.wasm"))));
    for (_, path) in &plugins {
        anyhow::ensure!(
            path.is_file(),
            "{} is missing (run scripts/build-plugins)",
            path.display()
        );
    }
    let cache = std::env::var_os("WEFT_PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("plugins/target"))
        .join("compiled");
    for n in sizes {
        let nodes = start(n, &cache).await?;
        for (name, path) in &plugins {
            measure(&nodes, name, path).await?;
        }
    }
    Ok(())
}

async fn start(n: usize, cache: &Path) -> anyhow::Result<Vec<Node>> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let mut args = vec![
            "node".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--plugins={}", dir.path().display()),
            format!("--cache-dir={}", cache.display()),
            format!("--node-id=n{i:03}"),
            "--cluster=replication-bench".into(),
            "--cluster-secret=bench".into(),
            format!("--data-dir={}", data.path().display()),
            "--replicate=eager".into(),
            "--replicate-accept=*".into(),
        ];
        if let Some(last) = nodes.last() {
            args.push(format!("--seed={}", last.process.url()));
        }
        let process = NodeProcess::spawn(&exe, &args, Duration::from_secs(60)).await?;
        let client = Client::connect(process.url()).await?;
        nodes.push(Node {
            process,
            dir,
            _data: data,
            client,
        });
    }
    let until = Instant::now() + Duration::from_secs(60);
    for node in &nodes {
        loop {
            let peers = node.client.call("weft.peers", Vec::new(), Map::new(), &[]).await?;
            let alive = peers["peers"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| p["state"] == "alive").count());
            if alive == n - 1 {
                break;
            }
            if Instant::now() >= until {
                let states: Vec<String> = peers["peers"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .filter(|p| p["state"] != "alive")
                            .map(|p| format!("{} {}", p["node"], p["state"]))
                            .collect()
                    })
                    .unwrap_or_default();
                anyhow::bail!(
                    "the fabric of {n} nodes did not form: {} knows {alive} alive; {states:?}",
                    peers["node"]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

async fn measure(nodes: &[Node], name: &str, component: &Path) -> anyhow::Result<()> {
    let n = nodes.len();
    let size = std::fs::metadata(component)?.len();
    let before = bytes_in(nodes).await?;
    let tmp = nodes[0].dir.path().join(format!(".{name}.wasm.tmp"));
    std::fs::copy(component, &tmp)?;
    let dropped = Instant::now();
    std::fs::rename(&tmp, nodes[0].dir.path().join(format!("{name}.wasm")))?;
    let mut pending: Vec<&Node> = nodes[1..].iter().collect();
    let until = dropped + Duration::from_secs(120);
    while !pending.is_empty() {
        anyhow::ensure!(
            Instant::now() < until,
            "{} nodes never served a replica of {name}",
            pending.len()
        );
        let checks = pending.iter().map(|node| replica(node, name));
        let states = futures_util::future::join_all(checks).await;
        let mut still = Vec::new();
        for (node, state) in pending.into_iter().zip(states) {
            if state?.is_none() {
                still.push(node);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5 * (n as u64).div_ceil(10))).await;
        }
    }
    let elapsed = dropped.elapsed();
    let after = bytes_in(nodes).await?;
    let mut fetches = 0;
    for node in &nodes[1..] {
        fetches += replica(node, name).await?.unwrap_or(0);
    }
    let received: u64 = after
        .iter()
        .zip(&before)
        .skip(1)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let per_node = received as f64 / (n - 1) as f64;
    println!(
        "N={n}: {name} ({:.1} MB) dropped on n000 → a local replica serving on all {} others after {:.0} ms; fetches per node {:.2}; peer bytes received per node {:.2} MB = {:.2} × the module",
        size as f64 / 1e6,
        n - 1,
        elapsed.as_secs_f64() * 1000.0,
        fetches as f64 / (n - 1) as f64,
        per_node / 1e6,
        per_node / size as f64
    );
    Ok(())
}

/// How many times `node` fetched its replica of `plugin`, once it serves it.
async fn replica(node: &Node, plugin: &str) -> anyhow::Result<Option<u64>> {
    let report = node.client.call("weft.plugins", Vec::new(), Map::new(), &[]).await?;
    let serving = report.as_array().and_then(|plugins| {
        plugins
            .iter()
            .find(|p| p["name"] == plugin && p["state"] == "serving" && !p["replica_of"].is_null())
    });
    Ok(serving.map(|p| p["fetches"].as_u64().unwrap_or(0)))
}

/// Peer frame bytes each node has received so far.
async fn bytes_in(nodes: &[Node]) -> anyhow::Result<Vec<u64>> {
    let mut all = Vec::new();
    for node in nodes {
        let peers: Value = node.client.call("weft.peers", Vec::new(), Map::new(), &[]).await?;
        all.push(
            peers["peers"]
                .as_array()
                .map_or(0, |p| p.iter().filter_map(|p| p["bytes_in"].as_u64()).sum::<u64>()),
        );
    }
    Ok(all)
}
