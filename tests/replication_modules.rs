//! Plugins propagate as modules: nodes whose policy accepts a plugin of another node fetch it by
//! digest, check it, and run it themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Map, Value};
use support::{eventually, fabric_node, install_plugin, node_id, peer_states, plugin_file, plugin_report, TestNode};
use weft::net::Client;

async fn hello(node: &TestNode) -> Result<Value, String> {
    let client = node.client().await;
    client
        .call("greeter.hello", vec![json!("ada")], Map::new(), &[])
        .await
        .map_err(|e| e.to_string())
}

async fn report(node: &TestNode, plugin: &str) -> Value {
    plugin_report(&node.client().await, plugin).await
}

/// Cuts (or restores) every link between `node` and `others`, on both sides.
async fn fault(node: &TestNode, others: &[&TestNode], action: &str) {
    let mut ids = Vec::new();
    for other in others {
        ids.push(node_id(other).await);
        let client = other.client().await;
        client
            .call(
                "weft.fault",
                vec![action.into(), json!([node_id(node).await])],
                Map::new(),
                &[],
            )
            .await
            .unwrap();
    }
    let client = node.client().await;
    client
        .call("weft.fault", vec![action.into(), json!(ids)], Map::new(), &[])
        .await
        .unwrap();
}

/// Waits until every node holds every other alive.
async fn mesh(nodes: &[&TestNode]) {
    for node in nodes {
        assert!(
            eventually(Duration::from_secs(20), || async {
                let states = peer_states(node).await;
                states.len() == nodes.len() - 1 && states.iter().all(|(_, s)| s == "alive")
            })
            .await,
            "{:?}",
            peer_states(node).await
        );
    }
}

#[tokio::test]
async fn eager_replicas_run_on_accepting_nodes_follow_updates_and_leave_with_their_origin() {
    let accept = [
        "--replicate=eager",
        "--replicate-accept=plugin:greeter",
        "--fault-injection",
    ];
    let refuse = [
        "--replicate=eager",
        "--replicate-accept=plugin:math",
        "--fault-injection",
    ];
    let origin = fabric_node(&[], None, &["--fault-injection"]).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(fabric_node(&[], Some(&origin), &accept).await);
    }
    let refusing = fabric_node(&[], Some(&origin), &refuse).await;
    let all: Vec<&TestNode> = std::iter::once(&origin)
        .chain(&replicas)
        .chain(std::iter::once(&refusing))
        .collect();
    mesh(&all).await;
    let origin_id = node_id(&origin).await;

    install_plugin(origin.dir.path(), &plugin_file("greeter-v1"), "greeter.wasm");
    for node in &replicas {
        assert!(
            eventually(Duration::from_secs(20), || async {
                let r = report(node, "greeter").await;
                r["state"] == "serving" && r["replica_of"] == origin_id.as_str()
            })
            .await,
            "{}",
            report(node, "greeter").await
        );
        assert_eq!(report(node, "greeter").await["fetches"], 1);
    }
    assert_eq!(report(&refusing, "greeter").await, Value::Null, "refused by policy");

    // Cut off from every other node, each replica still answers: the calls run on it.
    for (i, node) in replicas.iter().enumerate() {
        let others: Vec<&TestNode> = all.iter().copied().filter(|n| !std::ptr::eq(*n, node)).collect();
        fault(node, &others, "cut").await;
        assert_eq!(hello(node).await, Ok(json!("hello ada from v1")), "replica {i}");
        fault(node, &others, "restore").await;
    }
    mesh(&all).await;

    // A new version at the origin replaces every replica.
    let v2 = plugin_file("greeter-v2");
    install_plugin(origin.dir.path(), &v2, "greeter.wasm");
    let digest = weft::runtime::digest(&std::fs::read(&v2).unwrap());
    for node in &replicas {
        assert!(
            eventually(Duration::from_secs(20), || async {
                report(node, "greeter").await["digest"] == digest.as_str()
            })
            .await,
            "{}",
            report(node, "greeter").await
        );
        assert_eq!(hello(node).await, Ok(json!("hello ada from v2")));
    }

    // Removed at the origin: withdrawn everywhere.
    std::fs::remove_file(origin.dir.path().join("greeter.wasm")).unwrap();
    for node in &replicas {
        assert!(
            eventually(Duration::from_secs(20), || async {
                report(node, "greeter").await == Value::Null
            })
            .await,
            "{}",
            report(node, "greeter").await
        );
    }
    for node in &all {
        let error = hello(node).await.unwrap_err();
        assert!(error.contains("not found"), "{error}");
    }
}

#[tokio::test]
async fn on_demand_fetches_once_for_twenty_concurrent_first_calls_then_runs_locally() {
    let origin = fabric_node(&["math"], None, &["--fault-injection"]).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(fabric_node(&[], Some(&origin), &["--fault-injection"]).await);
    }
    let node = fabric_node(
        &[],
        Some(&origin),
        &["--replicate=on-demand", "--replicate-accept=*", "--fault-injection"],
    )
    .await;
    let mut all: Vec<&TestNode> = vec![&origin, &node];
    all.extend(&others);
    mesh(&all).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            !support::servers_of(&node, "math.add").await.is_empty()
        })
        .await
    );
    // Nothing is fetched before a call needs it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(report(&node, "math").await, Value::Null);

    let calls = (0..20).map(|i| {
        let url = node.url().to_string();
        async move {
            let client = Client::connect(&url).await.unwrap();
            client.call("math.add", vec![json!(i), json!(1)], Map::new(), &[]).await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), json!(i + 1));
    }
    let replica = report(&node, "math").await;
    assert_eq!(replica["state"], "serving", "{replica}");
    assert_eq!(replica["replica_of"], node_id(&origin).await.as_str());
    assert_eq!(replica["fetches"], 1, "{replica}");

    // Later calls run here, even cut off from every other node.
    let rest: Vec<&TestNode> = all.iter().copied().filter(|n| !std::ptr::eq(*n, &node)).collect();
    fault(&node, &rest, "cut").await;
    let client = node.client().await;
    assert_eq!(
        client
            .call("math.add", vec![json!(40), json!(2)], Map::new(), &[])
            .await
            .unwrap(),
        json!(42)
    );
}

#[tokio::test]
async fn tampered_bytes_from_a_peer_are_refused_and_calls_still_reach_the_origin() {
    let origin = fabric_node(&["math"], None, &["--fault-injection"]).await;
    let tamper = origin.client().await;
    tamper
        .call("weft.fault", vec!["tamper".into(), json!([])], Map::new(), &[])
        .await
        .unwrap();
    let node = fabric_node(&[], Some(&origin), &["--replicate=eager", "--replicate-accept=*"]).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            report(&node, "math").await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("tampered"))
        })
        .await,
        "{}",
        report(&node, "math").await
    );
    assert_eq!(report(&node, "math").await["state"], "failed");
    let client = node.client().await;
    assert_eq!(
        client
            .call("math.add", vec![json!(1), json!(2)], Map::new(), &[])
            .await
            .unwrap(),
        json!(3),
        "served by the origin"
    );

    // Honest bytes again: the replica is fetched on the next attempt.
    tamper
        .call("weft.fault", vec!["untamper".into(), json!([])], Map::new(), &[])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            report(&node, "math").await["state"] == "serving"
        })
        .await,
        "{}",
        report(&node, "math").await
    );
}

#[tokio::test]
async fn a_tenant_that_requires_signatures_replicates_only_signed_modules() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("publisher.key");
    let public = support::keygen(&key);
    let tenants = keys.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nid = \"acme\"\ntokens = [\"{}\"]\npublishers = [\"{public}\"]\n",
            weft::tenancy::hash_token("t")
        ),
    )
    .unwrap();

    let origin = fabric_node(&[], None, &[]).await;
    let dir = origin.dir.path().join("acme");
    std::fs::create_dir(&dir).unwrap();
    let node = fabric_node(
        &[],
        Some(&origin),
        &[
            "--replicate=eager",
            "--replicate-accept=tenant:acme",
            &format!("--tenants={}", tenants.display()),
        ],
    )
    .await;
    let client = Client::connect_as(node.url(), Some("t")).await.unwrap();
    let last_error = || async {
        plugin_report(&client, "acme/greeter").await["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    install_plugin(&dir, &plugin_file("greeter-v1"), "greeter.wasm");
    assert!(
        eventually(Duration::from_secs(20), || async {
            last_error().await.contains("unsigned")
        })
        .await,
        "{}",
        last_error().await
    );

    let component = dir.join("greeter.wasm");
    support::sign(&component, &key);
    assert!(
        eventually(Duration::from_secs(20), || async {
            plugin_report(&client, "acme/greeter").await["state"] == "serving"
        })
        .await,
        "{}",
        last_error().await
    );
    assert_eq!(
        client
            .call("greeter.hello", vec![json!("ada")], Map::new(), &[])
            .await
            .unwrap(),
        json!("hello ada from v1")
    );
}

#[tokio::test]
async fn a_plugin_of_the_nodes_own_directory_wins_over_a_replica() {
    let origin = fabric_node(&[], None, &[]).await;
    install_plugin(origin.dir.path(), &plugin_file("greeter-v1"), "agreeter.wasm");
    let node = fabric_node(&[], Some(&origin), &["--replicate=eager", "--replicate-accept=*"]).await;
    // Its own plugin serves the same command under a name that sorts after the replica's.
    install_plugin(node.dir.path(), &plugin_file("greeter-v2"), "zgreeter.wasm");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let replica = report(&node, "agreeter").await;
            replica["state"] == "conflict" && report(&node, "zgreeter").await["state"] == "serving"
        })
        .await,
        "{} {}",
        report(&node, "agreeter").await,
        report(&node, "zgreeter").await
    );
    assert_eq!(hello(&node).await, Ok(json!("hello ada from v2")));
}
