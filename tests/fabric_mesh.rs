//! Several real nodes: discovery from seeds, catalog gossip and calls routed to the node that
//! serves them (SCENARIOS.md 2, 7, 8, 10, 11, 12, 14, 15).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{
    call_with_locs, cmd, error_code, eventually, fabric_node, install_plugin, no_kwargs, plugin_file, rpc, servers_of,
    TestNode,
};

const CONVERGE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn steps_of_one_request_run_on_the_nodes_that_serve_them() {
    // Scenarios 2 and 15: step 1 only on A, step 2 only on B (their node tags), called via A.
    let a = fabric_node(&["scenarios"], None, &["--resources=node-a"]).await;
    let b = fabric_node(&["scenarios"], Some(&a), &["--resources=node-b"]).await;
    let b_id = support::node_id(&b).await;
    assert!(
        eventually(CONVERGE, || async {
            servers_of(&a, "second_step").await.contains(&b_id)
        })
        .await
    );
    let response = a
        .client()
        .await
        .request(rpc(json!([
            {"name": "step1_result", "fun": "first_step", "args": ["test_input"], "locs": ["step1", "node-a"]},
            {"name": "step2_result", "fun": "second_step", "args": ["step1_result", 5], "locs": ["step2", "node-b"]},
        ])))
        .await
        .unwrap();
    assert_eq!(
        response["r"],
        json!({"step2_result": {"final": "final_processed_test_input", "computed": 210}})
    );
    // Scenario 4 across nodes: three steps bouncing A → B → A.
    let response = b
        .client()
        .await
        .request(rpc(json!([
            {"name": "s1", "fun": "first_step", "args": ["test_input"], "locs": ["node-a"]},
            {"name": "s2", "fun": "second_step", "args": ["s1", 5], "locs": ["node-b"]},
            {"name": "s3", "fun": "third_step", "args": ["s2.final", "s2.computed"], "locs": ["node-a"]},
        ])))
        .await
        .unwrap();
    assert_eq!(response["r"]["s3"]["ultimate_number"], json!(226), "{response}");
}

#[tokio::test]
async fn a_star_routes_by_resource_tags() {
    // Scenario 7: a coordinator with no commands; three specialised nodes.
    let hub = fabric_node(&[], None, &[]).await;
    let gpu = fabric_node(&["math"], Some(&hub), &["--resources=gpu,ml"]).await;
    let cpu = fabric_node(&["text"], Some(&hub), &["--resources=cpu-heavy"]).await;
    let db = fabric_node(&["scenarios"], Some(&hub), &["--resources=database"]).await;
    let _keep = (&gpu, &cpu, &db);
    assert!(
        eventually(CONVERGE, || async {
            !servers_of(&hub, "math.add").await.is_empty()
                && !servers_of(&hub, "text.upper").await.is_empty()
                && !servers_of(&hub, "first_step").await.is_empty()
        })
        .await
    );
    assert_eq!(
        call_with_locs(&hub, "math.mul", vec![json!(6), json!(7)], &["gpu", "ml"])
            .await
            .unwrap(),
        json!(42)
    );
    assert_eq!(
        call_with_locs(&hub, "text.upper", vec![json!("x")], &["cpu-heavy"])
            .await
            .unwrap(),
        json!("X")
    );
    assert_eq!(
        call_with_locs(&hub, "first_step", vec![json!("v")], &["database"])
            .await
            .unwrap()["result"],
        json!("processed_v")
    );
    // Nine at once.
    let mut tasks = Vec::new();
    for i in 0..9i64 {
        let url = hub.url().to_string();
        tasks.push(tokio::spawn(async move {
            let client = weft::net::Client::connect(&url).await.unwrap();
            let (fun, args, locs) = match i % 3 {
                0 => ("math.add", vec![json!(i), json!(1)], vec!["gpu".to_string()]),
                1 => (
                    "text.reverse",
                    vec![json!(format!("ab{i}"))],
                    vec!["cpu-heavy".to_string()],
                ),
                _ => ("first_step", vec![json!(i.to_string())], vec!["database".to_string()]),
            };
            (i, client.call(fun, args, no_kwargs(), &locs).await.unwrap())
        }));
    }
    for task in tasks {
        let (i, value) = task.await.unwrap();
        match i % 3 {
            0 => assert_eq!(value, json!(i + 1)),
            1 => assert_eq!(value, json!(format!("{i}ba"))),
            _ => assert_eq!(value["result"], json!(format!("processed_{i}"))),
        }
    }
    // Tags no node carries, and unknown commands: 1001, quickly.
    let started = std::time::Instant::now();
    let response = hub
        .client()
        .await
        .request(rpc(
            json!([{"name": "x", "fun": "math.add", "args": [1, 2], "locs": ["tpu"]}]),
        ))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1001), "{response}");
    let response = hub
        .client()
        .await
        .request(rpc(json!([cmd("x", "no.such.command", json!([]))])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1001), "{response}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_plugin_added_at_runtime_becomes_callable_everywhere() {
    // Scenario 8: a five-node star; a plugin dropped on the GPU node.
    let hub = fabric_node(&[], None, &[]).await;
    let gpu = fabric_node(&[], Some(&hub), &["--resources=gpu"]).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(fabric_node(&[], Some(&hub), &[]).await);
    }
    let gpu_id = support::node_id(&gpu).await;
    // Everyone knows the GPU node before the plugin arrives.
    for node in &others {
        assert!(
            eventually(CONVERGE, || async {
                support::peer_states(node)
                    .await
                    .iter()
                    .any(|(id, state)| *id == gpu_id && state == "alive")
            })
            .await
        );
    }
    let started = std::time::Instant::now();
    install_plugin(gpu.dir.path(), &plugin_file("math"), "math.wasm");
    assert!(
        eventually(CONVERGE, || async {
            call_with_locs(&hub, "math.add", vec![json!(2), json!(3)], &["gpu"]).await == Ok(json!(5))
        })
        .await
    );
    for node in &others {
        assert!(
            eventually(CONVERGE, || async {
                servers_of(node, "math.add").await == vec![gpu_id.clone()]
            })
            .await
        );
        assert_eq!(
            call_with_locs(node, "math.add", vec![json!(2), json!(3)], &["gpu"])
                .await
                .unwrap(),
            json!(5)
        );
    }
    eprintln!(
        "plugin dropped on one node → callable from all five in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_far_end_of_a_chain_of_seeds_reaches_everything() {
    // Scenarios 10 and 14: node i seeds from node i-1; node 0 serves math, node 4 serves text.
    let mut chain: Vec<TestNode> = Vec::new();
    for i in 0..5 {
        let plugins: &[&str] = match i {
            0 => &["math"],
            4 => &["text"],
            _ => &[],
        };
        let node = fabric_node(plugins, chain.last(), &[]).await;
        chain.push(node);
    }
    for node in &chain {
        assert!(
            eventually(CONVERGE, || async {
                call_with_locs(node, "math.add", vec![json!(1), json!(2)], &[]).await == Ok(json!(3))
            })
            .await
        );
        assert!(
            eventually(CONVERGE, || async {
                call_with_locs(node, "text.upper", vec![json!("a")], &[]).await == Ok(json!("A"))
            })
            .await
        );
    }
    // Every node knows every other: the chain became a mesh.
    for node in &chain {
        let alive = support::peer_states(node)
            .await
            .iter()
            .filter(|(_, s)| s == "alive")
            .count();
        assert_eq!(alive, 4);
    }
}

#[tokio::test]
async fn every_node_calls_every_nodes_function() {
    // Scenario 11: a three-node star, node i alone carries tag node-i.
    let n0 = fabric_node(&["math"], None, &["--resources=node-0"]).await;
    let n1 = fabric_node(&["math"], Some(&n0), &["--resources=node-1"]).await;
    let n2 = fabric_node(&["math"], Some(&n0), &["--resources=node-2"]).await;
    let nodes = [&n0, &n1, &n2];
    for from in nodes {
        for target in 0..3 {
            let tag = format!("node-{target}");
            assert!(
                eventually(CONVERGE, || async {
                    call_with_locs(from, "math.add", vec![json!(target), json!(10)], &[tag.as_str()]).await
                        == Ok(json!(target + 10))
                })
                .await,
                "node-{target} not reachable"
            );
        }
    }
}

#[tokio::test]
async fn version_constraints_select_across_the_mesh() {
    // Scenario 12: greeter 2.0.0 on node 0 only, called from node 2.
    let n0 = fabric_node(&["greeter-v2"], None, &[]).await;
    let _n1 = fabric_node(&[], Some(&n0), &[]).await;
    let n2 = fabric_node(&[], Some(&n0), &[]).await;
    let call = |constraint: &'static str| {
        let n2 = &n2;
        async move {
            n2.client()
                .await
                .request(rpc(
                    json!([{"name": "x", "fun": "greeter.hello", "args": ["v"], "version_constraint": constraint}]),
                ))
                .await
                .unwrap()
        }
    };
    assert!(
        eventually(CONVERGE, || async {
            call(">=2.0.0, <3.0.0").await["r"] == json!({"x": "hello v from v2"})
        })
        .await
    );
    assert_eq!(error_code(&call("<2.0.0").await), Some(1001));
    let response = n2
        .client()
        .await
        .request(rpc(
            json!([{"name": "x", "fun": "greeter.hello", "args": ["v"], "function_id": "greeter.hello@2.0.0"}]),
        ))
        .await
        .unwrap();
    assert_eq!(response["r"], json!({"x": "hello v from v2"}));
}

#[tokio::test]
async fn parallel_branches_on_three_nodes_join_into_one_list() {
    // Scenario 6: three branches on three nodes, joined by a command given the list of them.
    let a = fabric_node(&["scenarios"], None, &["--resources=node-a"]).await;
    let b = fabric_node(&["scenarios"], Some(&a), &["--resources=node-b"]).await;
    let c = fabric_node(&["scenarios"], Some(&a), &["--resources=node-c"]).await;
    let (id_b, id_c) = (support::node_id(&b).await, support::node_id(&c).await);
    assert!(
        eventually(CONVERGE, || async {
            let servers = servers_of(&a, "branch").await;
            servers.contains(&id_b) && servers.contains(&id_c)
        })
        .await
    );
    let response = a
        .client()
        .await
        .request(rpc(json!([
            {"name": "gpu_branch", "fun": "branch", "args": ["gpu", 1], "locs": ["node-a"]},
            {"name": "cpu_branch", "fun": "branch", "args": ["cpu", 2], "locs": ["node-b"]},
            {"name": "db_branch", "fun": "branch", "args": ["db", 3], "locs": ["node-c"]},
            {"name": "x", "fun": "analytics", "args": ["report", ["gpu_branch", "cpu_branch", "db_branch"]], "locs": ["node-c"]},
        ])))
        .await
        .unwrap();
    assert_eq!(
        response["r"]["x"],
        json!({"name": "report", "count": 3, "inputs": [
            {"branch": "gpu", "value": 2}, {"branch": "cpu", "value": 4}, {"branch": "db", "value": 6}
        ]}),
        "{response}"
    );
}

#[tokio::test]
async fn a_plugin_calls_commands_served_by_other_nodes() {
    // `pipeline.report` on C calls `math.stats` (only on A) and `text.upper` (only on B) through
    // `host.call`, routed like any client call.
    let a = fabric_node(&["math"], None, &[]).await;
    let b = fabric_node(&["text"], Some(&a), &[]).await;
    let c = fabric_node(&["pipeline"], Some(&a), &[]).await;
    let _keep = &b;
    assert!(
        eventually(CONVERGE, || async {
            !servers_of(&c, "math.stats").await.is_empty() && !servers_of(&c, "text.upper").await.is_empty()
        })
        .await
    );
    // Called on A, served on C, whose plugin calls back to A and over to B.
    assert!(
        eventually(CONVERGE, || async {
            !servers_of(&a, "pipeline.report").await.is_empty()
        })
        .await
    );
    let report = call_with_locs(&a, "pipeline.report", vec![json!("mesh"), json!([4, 2, 6])], &[])
        .await
        .unwrap();
    assert_eq!(report["title"], json!("MESH"));
    assert_eq!(report["stats"]["median"], json!(4.0));
}
