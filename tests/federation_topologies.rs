//! The five topologies of MPREG's federation guide, built by `weft topology up` from real node
//! processes at the reference's sizes: every function propagates to every node, calls between
//! the farthest pair succeed, partitions really cut links and heal, added latency really
//! delays them and the nearest replica wins, and clusters without a bridge stay apart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncBufReadExt;

/// A running `weft topology up`; stopped (with its nodes) when dropped.
struct Topology {
    child: tokio::process::Child,
    built: Value,
    dir: tempfile::TempDir,
    _cache: tempfile::TempDir,
}

impl Topology {
    async fn up(pattern: &str, extra: &[&str]) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "topology".into(),
            "up".into(),
            format!("--pattern={pattern}"),
            format!("--dir={}", dir.path().join("topology").display()),
            format!("--plugin={}", plugin_file("math").display()),
            format!("--probe={}", plugin_file("text").display()),
            format!("--cache-dir={}", cache.path().display()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let file = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                println!("{line}");
                if let Some(file) = line.strip_prefix("WEFT_TOPOLOGY=") {
                    return PathBuf::from(file);
                }
            }
            panic!("weft topology up exited before its report");
        })
        .await
        .expect("the topology is up within 2 minutes");
        let built: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        Topology {
            child,
            built,
            dir,
            _cache: cache,
        }
    }

    /// The index of node `name`.
    fn index(&self, name: &str) -> usize {
        self.built["plan"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .position(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn url(&self, name: &str) -> String {
        self.built["urls"][self.index(name)].as_str().unwrap().to_string()
    }

    fn plugins(&self, name: &str) -> PathBuf {
        self.dir.path().join("topology").join(name).join("plugins")
    }

    async fn client(&self, name: &str) -> weft::net::Client {
        weft::net::Client::connect(&self.url(name)).await.unwrap()
    }

    /// Asserts what every pattern must show: built completely, the new function on every
    /// node, calls between the farthest pair all answered.
    fn assert_built(&self, nodes: usize, clusters: usize) {
        let built = &self.built;
        assert_eq!(built["plan"]["nodes"].as_array().unwrap().len(), nodes);
        let names: std::collections::BTreeSet<&str> = built["plan"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["cluster"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), clusters);
        assert_eq!(
            built["complete"], true,
            "every node got its links and every command: {built}"
        );
        assert_eq!(built["propagation_pct"], 100.0, "{built}");
        let call = &built["call"];
        assert_eq!(
            (call["ok"].as_u64(), call["failed"].as_u64()),
            (Some(50), Some(0)),
            "{call}"
        );
        assert_eq!(call["answer"]["counts"]["fabric"], 2, "{call}");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // SIGTERM: the tool stops its nodes before it exits.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_of_fifteen_from_a_chain_of_seeds() {
    let topology = Topology::up("mesh", &["--nodes=15"]).await;
    topology.assert_built(15, 1);
    // A full mesh: every node links to every other.
    assert_eq!(topology.built["links"], 15 * 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_bridged_by_gateways_and_an_unbridged_cluster_kept_out() {
    let topology = Topology::up("regions", &[]).await;
    topology.assert_built(9, 3);
    // Three meshes of three, and three gateway links.
    assert_eq!(topology.built["links"], 3 * 3 * 2 + 3 * 2);
    // `weft topology report` measures the running topology again.
    let dir = topology.dir.path().join("topology");
    let out = weft_cli(&["topology", "report", "--json", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["links"], 3 * 3 * 2 + 3 * 2);
    assert_eq!(report["propagation_pct"], 100.0);
    let out = weft_cli(&["topology", "report", "--dir", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("connection efficiency") && text.contains("reference"),
        "{text}"
    );

    // A cluster no region bridges to seeds a gateway: refused, and kept apart both ways.
    let outsider = TestNode::start(
        &["flavour-cpu"],
        &[
            "--node-id=outsider-1",
            "--cluster=outsider",
            "--bridge=region-1",
            "--cluster-secret=weft-topology",
            &format!("--seed={}", topology.url("region-1-1")),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in ["region-1-1", "region-3-3"] {
        let client = topology.client(name).await;
        let error = client.call("flavour.name", vec![], no_kwargs(), &[]).await.unwrap_err();
        assert!(error.to_string().contains("not found"), "{error}");
    }
    let client = outsider.client().await;
    let error = client
        .call("math.add", vec![json!(1), json!(2)], no_kwargs(), &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not found"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_local_regional_global() {
    let topology = Topology::up("hierarchy", &[]).await;
    topology.assert_built(7, 7);
    // Leaves link only upwards: 4 local→regional and 2 regional→global links, both ways.
    assert_eq!(topology.built["links"], 2 * 6);
    // A command of the global cluster is callable from every leaf.
    for leaf in ["local-1-1", "local-2-1", "local-3-1", "local-4-1"] {
        let client = topology.client(leaf).await;
        let sum = client
            .call("math.add", vec![json!(20), json!(22)], no_kwargs(), &[])
            .await
            .unwrap();
        assert_eq!(sum, 42, "from {leaf}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_of_twenty_four() {
    let topology = Topology::up("hierarchy", &["--nodes=24"]).await;
    topology.assert_built(24, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenters_with_latency_choose_the_nearest_replica() {
    let topology = Topology::up("datacenters", &[]).await;
    topology.assert_built(8, 3);
    // The farthest pair (dc-1 to dc-3, 150 ms added) pays the added round trip once.
    let p50 = topology.built["call"]["p50_us"].as_u64().unwrap();
    assert!(p50 >= 150_000, "the call crossed the delayed link: p50 {p50} µs");

    // The same command in dc-2 (80 ms from dc-1) and dc-3 (150 ms from dc-1).
    install_plugin(&topology.plugins("dc-2-3"), &plugin_file("flavour-cpu"), "flavour.wasm");
    install_plugin(&topology.plugins("dc-3-2"), &plugin_file("flavour-gpu"), "flavour.wasm");
    let client = topology.client("dc-1-3").await;
    let both = eventually(Duration::from_secs(10), || async {
        let catalog = client.call("weft.catalog", vec![], no_kwargs(), &[]).await.unwrap();
        let clusters: Vec<&str> = catalog
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["command"] == "flavour.name")
            .filter_map(|r| r["cluster"].as_str())
            .collect();
        clusters.contains(&"dc-2") && clusters.contains(&"dc-3")
    })
    .await;
    assert!(both, "dc-1 sees the command in dc-2 and dc-3");
    for _ in 0..10 {
        let answer = client.call("flavour.name", vec![], no_kwargs(), &[]).await.unwrap();
        assert_eq!(answer, "cpu", "dc-2 is nearer to dc-1 than dc-3");
    }
    // From dc-3, its own replica.
    let client = topology.client("dc-3-1").await;
    let answer = client.call("flavour.name", vec![], no_kwargs(), &[]).await.unwrap();
    assert_eq!(answer, "gpu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_healing_after_three_partitions() {
    let topology = Topology::up("self-healing", &[]).await;
    topology.assert_built(10, 1);
    let heals = topology.built["heals"].as_array().unwrap();
    let groups: Vec<Value> = heals.iter().map(|h| h["groups"].clone()).collect();
    assert_eq!(groups, [json!([5, 5]), json!([7, 3]), json!([6, 2, 2])]);
    for heal in heals {
        assert_eq!(heal["formed"], true, "each side held the other dead: {heal}");
        assert_eq!(heal["served_while_cut"], true, "{heal}");
        assert_eq!(heal["healed"], true, "{heal}");
    }
}
