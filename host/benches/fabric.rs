//! Fabric timings with real node processes on loopback: `cargo bench --bench fabric [N...]`
//! (default 10 and 30 nodes; after `scripts/build-plugins`).
//!
//! Nodes run with the default `--max-mesh` (32): up to 32 nodes a full mesh, beyond it a partial
//! view. For each N: discovery (N nodes seeded as a chain → every node knows every other), propagation
//! (a plugin dropped on node 0 → listed by every node's catalog), failure detection for SIGKILL
//! and SIGSTOP (→ every other node marks it dead), graceful leave, and RSS per node.
//!
//! `--one-by-one`: the nodes start one after another (each once the one before it serves), as
//! an operator brings up a fabric; discovery is then timed from the first start.

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
    id: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 30] } else { sizes };
    let one_by_one = std::env::args().any(|a| a == "--one-by-one");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let math = repo.join("build/plugins/math.wasm");
    anyhow::ensure!(
        math.is_file(),
        "{} is missing (run scripts/build-plugins)",
        math.display()
    );
    for n in sizes {
        run(n, &math, one_by_one).await?;
    }
    Ok(())
}

async fn run(n: usize, math: &Path, one_by_one: bool) -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    // Every node starts at once, each seeded by the one before it (a chain): the ports are
    // chosen up front.
    let ports: Vec<u16> = {
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?
    };
    let mut dirs = Vec::new();
    let mut spawns = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let mut args = vec![
            "node".to_string(),
            format!("--listen=127.0.0.1:{}", ports[i]),
            format!("--plugins={}", dir.path().display()),
            format!("--cache-dir={}", cache.path().display()),
            format!("--node-id=n{i:03}"),
            "--cluster=bench".into(),
            "--cluster-secret=bench".into(),
            "--fault-injection".into(),
            format!("--data-dir={}", data.path().display()),
        ];
        if i > 0 {
            args.push(format!("--seed=ws://127.0.0.1:{}", ports[i - 1]));
        }
        let exe = exe.clone();
        spawns.push(async move { NodeProcess::spawn(&exe, &args, Duration::from_secs(60)).await });
        dirs.push((dir, data));
    }
    let started = Instant::now();
    let processes = if one_by_one {
        let mut processes = Vec::new();
        for spawn in spawns {
            processes.push(spawn.await?);
        }
        processes
    } else {
        futures_util::future::join_all(spawns)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
    };
    // Every process has printed its URL.
    let all_up = started.elapsed();
    // The clients connect all at once: one after another, on a machine this busy, they took
    // about 0.1 s each, which the figure used to include.
    let clients = futures_util::future::join_all(processes.iter().map(|p| Client::connect(p.url()))).await;
    let mut nodes: Vec<Node> = Vec::new();
    for (i, ((process, client), (dir, data))) in processes.into_iter().zip(clients).zip(dirs).enumerate() {
        let client = client?;
        nodes.push(Node {
            process,
            dir,
            _data: data,
            client,
            id: format!("n{i:03}"),
        });
    }
    wait_all(&nodes, Read::Peers, Duration::from_secs(60), |peers, _| {
        alive_count(peers) == n - 1
    })
    .await?;
    let discovery = started.elapsed();
    let mut links = 0;
    for node in &nodes {
        let peers = node.client.call("weft.peers", Vec::new(), Map::new(), &[]).await?;
        links += peers["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["linked"] == true).count());
    }
    println!(
        "N={n}: discovery ({}, seeded as a chain → every node knows every node) {:.0} ms from the first start ({:.0} ms after the last node was up); {:.1} links per node",
        if one_by_one { "started one after another" } else { "all started at once" },
        ms(discovery),
        ms(discovery - all_up),
        links as f64 / n as f64
    );

    // Warm the compile cache so that propagation measures the fabric, not Cranelift: a node of
    // another cluster compiles math.wasm once into the shared cache.
    let warm = tempfile::tempdir()?;
    std::fs::copy(math, warm.path().join("math.wasm"))?;
    let warm_args = vec![
        "node".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--plugins={}", warm.path().display()),
        format!("--cache-dir={}", cache.path().display()),
        "--node-id=warm".into(),
        "--cluster=other".into(),
    ];
    drop(NodeProcess::spawn(&exe, &warm_args, Duration::from_secs(60)).await?);

    let tmp = nodes[0].dir.path().join(".math.wasm.tmp");
    std::fs::copy(math, &tmp)?;
    let dropped = Instant::now();
    std::fs::rename(&tmp, nodes[0].dir.path().join("math.wasm"))?;
    wait_all(&nodes, Read::Catalog, Duration::from_secs(30), |_, catalog| {
        serves(catalog, "math.add", "n000")
    })
    .await?;
    println!(
        "N={n}: propagation (plugin dropped on n000 → in every catalog) {:.0} ms",
        ms(dropped.elapsed())
    );

    let rss: Vec<u64> = nodes
        .iter()
        .filter_map(|node| node.process.id().and_then(rss_kib))
        .collect();
    let mean_rss = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64 / 1024.0;
    println!("N={n}: RSS per node, mean {mean_rss:.1} MiB");

    // Idle control traffic: bytes every node writes to its peer links over 5 quiet seconds, once
    // the links have settled (discovery completes before every link is made).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(5);
    let before = bytes_out(&nodes).await?;
    tokio::time::sleep(window).await;
    let after = bytes_out(&nodes).await?;
    let per_node = (after.saturating_sub(before)) as f64 / n as f64 / window.as_secs_f64() / 1024.0;
    println!("N={n}: idle control traffic sent per node {per_node:.2} KiB/s");

    // SIGSTOP the last node, then SIGKILL the one before it.
    let mut victims: Vec<String> = Vec::new();
    for (signal, victim) in [("-STOP", n - 1), ("-KILL", n - 2)] {
        let pid = nodes[victim].process.id().unwrap_or_default().to_string();
        let id = nodes[victim].id.clone();
        let observers: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < n - 2)
            .map(|(_, node)| node)
            .collect();
        victims.push(id.clone());
        let at = Instant::now();
        std::process::Command::new("kill").args([signal, &pid]).status()?;
        // Any other node an observer holds dead meanwhile is a false death.
        let false_deaths = std::cell::RefCell::new(std::collections::BTreeSet::new());
        wait_all_refs(&observers, Read::Peers, Duration::from_secs(30), |peers, _| {
            for row in peers["peers"].as_array().into_iter().flatten() {
                let node = row["node"].as_str().unwrap_or_default();
                if row["state"] == "dead" && !victims.iter().any(|v| v == node) {
                    let observer = peers["node"].as_str().unwrap_or_default();
                    false_deaths
                        .borrow_mut()
                        .insert(format!("{node} (held dead by {observer})"));
                }
            }
            state(peers, &id) == Some("dead")
        })
        .await?;
        let false_deaths = false_deaths.into_inner();
        println!(
            "N={n}: {signal} of {id} → dead on every other node after {:.0} ms; false deaths meanwhile: {}",
            ms(at.elapsed()),
            if false_deaths.is_empty() {
                "none".to_string()
            } else {
                false_deaths.into_iter().collect::<Vec<_>>().join(", ")
            }
        );
    }
    let pid = nodes[n - 1].process.id().unwrap_or_default().to_string();
    std::process::Command::new("kill").args(["-CONT", &pid]).status()?;

    // A partition of the live nodes (the continued one included: it would bridge the halves)
    // into two halves (links really cut), then healed.
    let live: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != n - 2)
        .map(|(_, node)| node)
        .collect();
    let (left, right) = live.split_at(live.len() / 2);
    fault(left, right, "cut").await?;
    let names = |side: &[&Node]| side.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    let (left_ids, right_ids) = (names(left), names(right));
    // The polls list only the members not alive.
    let none_alive = |of: &[String], peers: &Value| of.iter().all(|id| state(peers, id).is_some());
    wait_all_refs(left, Read::Peers, Duration::from_secs(30), |peers, _| {
        none_alive(&right_ids, peers)
    })
    .await?;
    wait_all_refs(right, Read::Peers, Duration::from_secs(30), |peers, _| {
        none_alive(&left_ids, peers)
    })
    .await?;
    let at = Instant::now();
    fault(left, right, "restore").await?;
    let restored = at.elapsed();
    let all_ids: Vec<String> = live.iter().map(|n| n.id.clone()).collect();
    let healed = wait_all_refs(&live, Read::Both, Duration::from_secs(30), |peers, catalog| {
        alive_count(peers) == all_ids.len() - 1
            && all_ids.iter().all(|id| state(peers, id).is_none())
            && serves(catalog, "math.add", "n000")
    })
    .await?;
    println!(
        "N={n}: partition into halves healed (links restored → every node alive and n000's catalog everywhere) after {:.0} ms (half the nodes after {:.0} ms; the last node's links restored after {:.0} ms)",
        ms(at.elapsed()),
        ms(healed[healed.len() / 2]),
        ms(restored)
    );

    // Graceful leave of node 1.
    let id = nodes[1].id.clone();
    let pid = nodes[1].process.id().unwrap_or_default().to_string();
    let observers: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1 && *i != n - 2)
        .map(|(_, node)| node)
        .collect();
    let at = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
    wait_all_refs(&observers, Read::Peers, Duration::from_secs(30), |peers, _| {
        state(peers, &id) == Some("left")
    })
    .await?;
    println!(
        "N={n}: graceful leave of {id} → seen by every other node after {:.0} ms",
        ms(at.elapsed())
    );
    Ok(())
}

/// Cuts (or restores) every link between the two sides, on every node at once.
async fn fault(left: &[&Node], right: &[&Node], action: &str) -> anyhow::Result<()> {
    let ids = |side: &[&Node]| Value::from(side.iter().map(|n| n.id.clone()).collect::<Vec<_>>());
    let (left_ids, right_ids) = (ids(left), ids(right));
    let calls = left
        .iter()
        .map(|node| (node, &right_ids))
        .chain(right.iter().map(|node| (node, &left_ids)))
        .map(|(node, other)| {
            node.client
                .call("weft.fault", vec![action.into(), other.clone()], Map::new(), &[])
        });
    for outcome in futures_util::future::join_all(calls).await {
        outcome?;
    }
    Ok(())
}

/// What a wait reads of every node: only that is asked for, since on a busy machine every reply
/// slows the fabric it measures. `Peers` reads the counts of members per state and lists only
/// the members not alive: a full list at 100 nodes is about 30 KB, and polling it from every
/// node took about a core of this two-core machine.
#[derive(Clone, Copy)]
enum Read {
    Peers,
    Catalog,
    Both,
}

async fn wait_all(
    nodes: &[Node],
    read: Read,
    limit: Duration,
    done: impl Fn(&Value, &Value) -> bool,
) -> anyhow::Result<()> {
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_all_refs(&refs, read, limit, done).await.map(drop)
}

/// Polls every node's `weft.peers` and `weft.catalog` (all at once, every 5 ms per 10 nodes, so
/// that polling does not load the machine more with more nodes) until `done` holds for all.
/// Returns when each node was first seen done, from the start of the wait, earliest first.
async fn wait_all_refs(
    nodes: &[&Node],
    read: Read,
    limit: Duration,
    done: impl Fn(&Value, &Value) -> bool,
) -> anyhow::Result<Vec<Duration>> {
    let start = Instant::now();
    let until = start + limit;
    let mut seen_done = Vec::with_capacity(nodes.len());
    let mut pending: Vec<&Node> = nodes.to_vec();
    while !pending.is_empty() {
        if Instant::now() >= until {
            let peers = pending[0]
                .client
                .call("weft.peers", Vec::new(), Map::new(), &[])
                .await?;
            anyhow::bail!(
                "{} nodes did not converge within {limit:?}; {} sees {peers}",
                pending.len(),
                pending[0].id
            );
        }
        let checks = pending.iter().map(|node| async {
            let peers = match read {
                Read::Peers | Read::Both => {
                    let mut not_alive = Map::new();
                    not_alive.insert("state".into(), serde_json::json!(["suspect", "dead", "left"]));
                    node.client.call("weft.peers", Vec::new(), not_alive, &[]).await?
                }
                Read::Catalog => Value::Null,
            };
            let catalog = match read {
                Read::Catalog | Read::Both => node.client.call("weft.catalog", Vec::new(), Map::new(), &[]).await?,
                Read::Peers => Value::Null,
            };
            anyhow::Ok(done(&peers, &catalog))
        });
        let outcomes = futures_util::future::join_all(checks).await;
        let mut still = Vec::new();
        let polled = start.elapsed();
        for (node, outcome) in pending.into_iter().zip(outcomes) {
            if outcome? {
                seen_done.push(polled);
            } else {
                still.push(node);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(poll_interval(nodes.len())).await;
        }
    }
    Ok(seen_done)
}

fn poll_interval(nodes: usize) -> Duration {
    Duration::from_millis(5 * (nodes as u64).div_ceil(10).max(1))
}

fn alive_count(peers: &Value) -> usize {
    peers["counts"]["alive"].as_u64().unwrap_or(0) as usize
}

fn state<'a>(peers: &'a Value, id: &str) -> Option<&'a str> {
    peers["peers"].as_array()?.iter().find(|p| p["node"] == id)?["state"].as_str()
}

fn serves(catalog: &Value, command: &str, node: &str) -> bool {
    catalog
        .as_array()
        .is_some_and(|rows| rows.iter().any(|r| r["command"] == command && r["node"] == node))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes all nodes have written to their peer links so far.
async fn bytes_out(nodes: &[Node]) -> anyhow::Result<u64> {
    let mut total = 0;
    for node in nodes {
        let peers = node.client.call("weft.peers", Vec::new(), Map::new(), &[]).await?;
        total += peers["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter_map(|p| p["bytes_out"].as_u64()).sum::<u64>());
    }
    Ok(total)
}
