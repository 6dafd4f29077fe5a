//! Clusters bridged by gateways (SCENARIOS.md 17–22): isolation by default, `target_cluster`,
//! calls across several clusters, the hop budget, replies that come back another way when a
//! gateway dies, and how far summaries travel. Every node is a real process; every link a real
//! socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// A node `name` of `cluster` serving `plugins`, seeded from `seeds`.
async fn member(name: &str, cluster: &str, plugins: &[&str], seeds: &[&TestNode], extra: &[&str]) -> TestNode {
    let mut args = vec![
        format!("--node-id={name}"),
        format!("--cluster={cluster}"),
        "--cluster-secret=federation".to_string(),
    ];
    args.extend(seeds.iter().map(|s| format!("--seed={}", s.url())));
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestNode::start(plugins, &args).await
}

/// One request for `fun`, for `target_cluster` when given; the whole response.
async fn request(node: &TestNode, fun: &str, args: Value, target_cluster: Option<&str>) -> Value {
    let mut command = cmd("r", fun, args);
    if let Some(cluster) = target_cluster {
        command["target_cluster"] = json!(cluster);
    }
    node.client().await.request(rpc(json!([command]))).await.unwrap()
}

/// Waits until `node`'s catalog lists `command` in `cluster`.
async fn sees(node: &TestNode, command: &str, cluster: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        catalog_rows(node)
            .await
            .iter()
            .any(|row| row["command"] == command && row["cluster"] == cluster)
    })
    .await
}

/// Clusters `names` in a chain, one node each, every one bridged to its neighbours only.
async fn chain(names: &[&str], last_plugins: &[&str], extra: &[&str]) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        if i > 0 {
            args.push(format!("--bridge={}", names[i - 1]));
        }
        if let Some(next) = names.get(i + 1) {
            args.push(format!("--bridge={next}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let plugins = if i + 1 == names.len() { last_plugins } else { &[] };
        let seeds: Vec<&TestNode> = nodes.last().into_iter().collect();
        let node = member(&format!("{name}1"), name, plugins, &seeds, &args).await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_are_isolated_unless_both_bridge() {
    // Scenario 17: beta seeds alpha under the default policy (refused); gamma bridges to alpha
    // but alpha does not bridge back (refused too).
    let alpha = member("alpha1", "alpha", &["greeter-v1"], &[], &[]).await;
    let beta = member("beta1", "beta", &["flavour-cpu"], &[&alpha], &[]).await;
    let gamma = member("gamma1", "gamma", &["flavour-gpu"], &[&alpha], &["--bridge=alpha"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for (node, other) in [
        (&alpha, "flavour.name"),
        (&beta, "greeter.hello"),
        (&gamma, "greeter.hello"),
    ] {
        let response = request(node, other, json!([]), None).await;
        assert_eq!(error_code(&response), Some(1001), "{response}");
    }
    let catalog = catalog_rows(&alpha).await;
    assert!(
        catalog.iter().all(|row| row["command"] == "greeter.hello"),
        "alpha sees only its own commands: {catalog:?}"
    );
    let peers = alpha
        .client()
        .await
        .call("weft.peers", vec![], no_kwargs(), &[])
        .await
        .unwrap();
    assert!(peers["peers"].as_array().unwrap().is_empty(), "{peers}");
    assert!(peers["gateways"].as_array().unwrap().is_empty(), "{peers}");
    // Alpha's own commands keep working.
    let response = request(&alpha, "greeter.hello", json!(["ann"]), None).await;
    assert_eq!(error_code(&response), None, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_cluster_picks_among_bridged_clusters() {
    // Scenario 18: hub bridges to left and right, which serve the same command differently.
    let hub = member("hub1", "hub", &[], &[], &["--bridge=left,right"]).await;
    let left = member("left1", "left", &["flavour-cpu"], &[&hub], &["--bridge=hub"]).await;
    let right = member("right1", "right", &["flavour-gpu"], &[&hub], &["--bridge=hub"]).await;
    assert!(sees(&hub, "flavour.name", "left").await && sees(&hub, "flavour.name", "right").await);

    for (cluster, answer) in [("left", "cpu"), ("right", "gpu")] {
        for _ in 0..5 {
            let response = request(&hub, "flavour.name", json!([]), Some(cluster)).await;
            assert_eq!(response["r"]["r"], answer, "{response}");
        }
    }
    // From a cluster that serves it itself, `target_cluster` still sends it across.
    let response = request(&left, "flavour.name", json!([]), Some("right")).await;
    assert_eq!(response["r"]["r"], "gpu", "{response}");
    let response = request(&right, "flavour.name", json!([]), Some("right")).await;
    assert_eq!(response["r"]["r"], "gpu", "{response}");

    // The same from the command line: `weft call --cluster`.
    for (cluster, answer) in [("left", "\"cpu\""), ("right", "\"gpu\"")] {
        let out = weft_cli(&["call", "flavour.name", "--cluster", cluster, "--url", hub.url()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), answer);
    }

    let response = request(&hub, "flavour.name", json!([]), Some("nowhere")).await;
    assert_eq!(error_code(&response), Some(1001), "{response}");
    assert!(error_details(&response).contains("nowhere"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_several_clusters_and_all_return() {
    // Scenario 19: a–b–c (c's command from a), then a–b–c–d with concurrent calls.
    let nodes = chain(&["a", "b", "c", "d"], &["math"], &[]).await;
    let (a, d) = (&nodes[0], &nodes[3]);
    assert!(sees(a, "math.add", "d").await);
    let response = request(a, "math.add", json!([2, 3]), None).await;
    assert_eq!(response["r"]["r"], 5, "{response}");

    let mut calls = Vec::new();
    for i in 0..64i64 {
        let url = a.url().to_string();
        calls.push(tokio::spawn(async move {
            let client = weft::net::Client::connect(&url).await.unwrap();
            client
                .call("math.add", vec![json!(i), json!(1)], no_kwargs(), &[])
                .await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), json!(i as i64 + 1));
    }
    // And the other way: a plugin dropped on a is callable from d.
    install_plugin(a.dir.path(), &plugin_file("greeter-v1"), "greeter.wasm");
    assert!(sees(d, "greeter.hello", "a").await);
    let response = request(d, "greeter.hello", json!(["d"]), None).await;
    assert_eq!(error_code(&response), None, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_budget_bounds_how_far_calls_go() {
    // Scenario 20: a–b–c with a hop budget of 1 at a: c's command is two crossings away.
    let nodes = chain(&["a", "b", "c"], &["math"], &["--hop-budget=1"]).await;
    let a = &nodes[0];
    assert!(
        sees(a, "math.add", "c").await,
        "a command one crossing past the budget is known"
    );
    let response = request(a, "math.add", json!([2, 3]), None).await;
    assert_eq!(error_code(&response), Some(1001), "{response}");
    assert!(error_details(&response).contains("hop budget of 1"), "{response}");
    // b, one crossing away, reaches it.
    let response = request(&nodes[1], "math.add", json!([2, 3]), None).await;
    assert_eq!(response["r"]["r"], 5, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_travel_one_crossing_past_the_hop_budget() {
    // Scenario 22: five clusters in a chain, hop budget 3: cluster 1's command is callable
    // from cluster 3 and not from cluster 5.
    let names = ["k5", "k4", "k3", "k2", "k1"];
    let nodes = chain(&names, &["math"], &["--hop-budget=3"]).await;
    let (k5, k3) = (&nodes[0], &nodes[2]);
    assert!(sees(k3, "math.add", "k1").await);
    let response = request(k3, "math.add", json!([2, 3]), None).await;
    assert_eq!(response["r"]["r"], 5, "{response}");
    assert!(sees(k5, "math.add", "k1").await);
    let response = request(k5, "math.add", json!([2, 3]), None).await;
    assert_eq!(error_code(&response), Some(1001), "{response}");
    assert!(error_details(&response).contains("hop budget of 3"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_comes_back_another_way_when_a_gateway_dies() {
    // Scenario 21: links a–b, b–c, a–d, d–c. The way through d is made slower (80 ms added on
    // a's link to d), so the call goes through b; c's command blocks; b is killed (it cannot
    // relay anything) while it runs; the reply reaches the caller through d.
    let a = member("a1", "a", &[], &[], &["--bridge=b,d", "--fault-injection"]).await;
    let b = member("b1", "b", &[], &[&a], &["--bridge=a,c"]).await;
    let d = member("d1", "d", &[], &[&a], &["--bridge=a,c"]).await;
    let c = member("c1", "c", &["flavour-cpu"], &[&b, &d], &["--bridge=b,d"]).await;
    let client = a.client().await;
    let delayed = client
        .call("weft.fault", vec![json!("delay:80"), json!(["d1"])], no_kwargs(), &[])
        .await
        .unwrap();
    assert_eq!(delayed, 80);
    assert!(sees(&a, "flavour.slow", "c").await);
    // The routes through b and through d are both known, b's the nearer.
    let nearer = eventually(Duration::from_secs(10), || async {
        catalog_rows(&a)
            .await
            .iter()
            .any(|row| row["command"] == "flavour.slow" && row["via"] == "b1")
    })
    .await;
    assert!(nearer, "a prefers the way through b");
    let response = request(&a, "flavour.name", json!([]), None).await;
    assert_eq!(response["r"]["r"], "cpu", "{response}");

    let url = a.url().to_string();
    let call = tokio::spawn(async move {
        let client = weft::net::Client::connect(&url).await.unwrap();
        client.call("flavour.slow", vec![json!(2000)], no_kwargs(), &[]).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&b, "-KILL");
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.unwrap(), json!("cpu"), "the reply came back through d");
    drop((c, d));
}
