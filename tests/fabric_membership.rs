//! Meshes built from sparse seeds, churn, and commands reaching every node (SCENARIOS.md 9, 16,
//! 25, 27).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, fabric_node, install_plugin, no_kwargs, peer_states, plugin_file, servers_of, TestNode};

const CONVERGE: Duration = Duration::from_secs(15);

async fn alive(node: &TestNode) -> usize {
    peer_states(node).await.iter().filter(|(_, s)| s == "alive").count()
}

/// Starts `n` nodes; node i seeds from `seed_of(i)` (an earlier node).
async fn topology(n: usize, seed_of: impl Fn(usize) -> Option<usize>) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..n {
        let seed = seed_of(i).map(|s| &nodes[s]);
        let node = fabric_node(&[], seed, &[]).await;
        nodes.push(node);
    }
    nodes
}

async fn full_mesh_and_propagation(nodes: &[TestNode]) {
    let n = nodes.len();
    for node in nodes {
        assert!(
            eventually(CONVERGE, || async { alive(node).await == n - 1 }).await,
            "{} of {n} nodes never meshed",
            alive(node).await + 1
        );
    }
    let origin = support::node_id(&nodes[0]).await;
    install_plugin(nodes[0].dir.path(), &plugin_file("math"), "math.wasm");
    for node in nodes {
        assert!(
            eventually(CONVERGE, || async {
                servers_of(node, "math.add").await == vec![origin.clone()]
            })
            .await
        );
    }
}

#[tokio::test]
async fn chains_stars_rings_and_hubs_become_full_meshes() {
    // Scenario 9 (the shapes; sizes up to 10 to keep the test suite quick).
    full_mesh_and_propagation(&topology(5, |i| i.checked_sub(1)).await).await; // chain
    full_mesh_and_propagation(&topology(10, |i| (i > 0).then_some(0)).await).await; // star
                                                                                    // Ring: node 0 seeds from nobody, each later node from its predecessor, and node 0 is
                                                                                    // closed into the ring by node 4 seeding it too.
    let ring = topology(5, |i| i.checked_sub(1)).await;
    let closing = fabric_node(&[], Some(&ring[4]), &[&format!("--seed={}", ring[0].url())]).await;
    let mut all = ring;
    all.push(closing);
    full_mesh_and_propagation(&all).await;
    // Multi-hub: three hubs in a chain, each with three leaves.
    let multi = topology(12, |i| match i {
        0 => None,
        1 | 2 => Some(i - 1),
        _ => Some((i - 3) % 3),
    })
    .await;
    full_mesh_and_propagation(&multi).await;
}

#[tokio::test]
async fn members_stay_known_past_any_refresh_interval() {
    // Scenario 16: no entry lifetime expires under live nodes.
    let a = fabric_node(&["math"], None, &[]).await;
    let b = fabric_node(&[], Some(&a), &[]).await;
    let id_a = support::node_id(&a).await;
    assert!(
        eventually(CONVERGE, || async {
            servers_of(&b, "math.add").await == vec![id_a.clone()]
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(servers_of(&b, "math.add").await, vec![id_a]);
    assert_eq!(alive(&b).await, 1);
}

#[tokio::test]
async fn churn_in_a_twelve_node_star() {
    // Scenario 25: every node serves math; two leave and two join while calls run.
    let hub = fabric_node(&["math"], None, &[]).await;
    let mut nodes = Vec::new();
    for _ in 0..11 {
        nodes.push(fabric_node(&["math"], Some(&hub), &[]).await);
    }
    assert!(eventually(CONVERGE, || async { alive(&hub).await == 11 }).await);
    let url = hub.url().to_string();
    let load = tokio::spawn(async move {
        let client = std::sync::Arc::new(weft::net::Client::connect(&url).await.unwrap());
        let mut ok = 0;
        for round in 0..40i64 {
            let calls = (0..8i64).map(|i| {
                let client = client.clone();
                async move {
                    client
                        .call("math.add", vec![json!(round), json!(i)], no_kwargs(), &[])
                        .await
                }
            });
            for (i, outcome) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
                assert_eq!(outcome.unwrap(), json!(round + i as i64));
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ok
    });
    // Two leave gracefully, two join.
    for mut leaving in nodes.drain(..2) {
        let pid = leaving.process.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        leaving.process.wait().await.unwrap();
    }
    for _ in 0..2 {
        nodes.push(fabric_node(&["math"], Some(&hub), &[]).await);
    }
    assert_eq!(load.await.unwrap(), 320);
    assert!(eventually(CONVERGE, || async { alive(&hub).await == 11 }).await);
    let left = peer_states(&hub).await.iter().filter(|(_, s)| s == "left").count();
    assert_eq!(left, 2);
}

#[tokio::test]
async fn a_chain_becomes_a_mesh_and_survives_losing_two_nodes() {
    // Scenario 27: eight nodes seeded as a chain; then two are cut off (killed).
    let chain = topology(8, |i| i.checked_sub(1)).await;
    full_mesh_and_propagation(&chain).await;
    let (victims, survivors) = chain.split_at(2);
    for victim in victims {
        let pid = victim.process.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap();
    }
    let origin = support::node_id(&survivors[0]).await;
    install_plugin(survivors[0].dir.path(), &plugin_file("text"), "text.wasm");
    for node in survivors {
        assert!(
            eventually(CONVERGE, || async {
                servers_of(node, "text.upper").await == vec![origin.clone()]
            })
            .await
        );
        assert!(eventually(CONVERGE, || async { alive(node).await == 5 }).await);
    }
}
