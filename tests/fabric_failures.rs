//! Nodes that leave, die, stall or do not belong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{eventually, fabric_node, no_kwargs, peer_states, servers_of, signal, TestNode};

const CONVERGE: Duration = Duration::from_secs(10);

async fn state_of(node: &TestNode, peer: &str) -> Option<String> {
    peer_states(node)
        .await
        .into_iter()
        .find(|(id, _)| id == peer)
        .map(|(_, state)| state)
}

#[tokio::test]
async fn a_node_that_leaves_is_dropped_at_once() {
    // Scenario 24: hub + two nodes; node 1 stops gracefully.
    let hub = fabric_node(&[], None, &[]).await;
    let mut n1 = fabric_node(&["math"], Some(&hub), &[]).await;
    let n2 = fabric_node(&["text"], Some(&hub), &[]).await;
    let (id1, id2) = (support::node_id(&n1).await, support::node_id(&n2).await);
    assert!(
        eventually(CONVERGE, || async {
            servers_of(&hub, "math.add").await == vec![id1.clone()]
        })
        .await
    );
    let started = Instant::now();
    signal(&n1, "-TERM");
    assert!(
        eventually(CONVERGE, || async {
            state_of(&hub, &id1).await.as_deref() == Some("left")
        })
        .await
    );
    let dropped = started.elapsed();
    assert!(servers_of(&hub, "math.add").await.is_empty());
    assert_eq!(state_of(&hub, &id2).await.as_deref(), Some("alive"));
    assert!(!servers_of(&hub, "text.upper").await.is_empty());
    n1.process.wait().await.unwrap();
    eprintln!("graceful leave seen by the hub after {dropped:?}");

    // An operator lists the members in some states only; the counts cover every member.
    let client = hub.client().await;
    let mut kwargs = no_kwargs();
    kwargs.insert("state".into(), json!("left"));
    let report = client.call("weft.peers", vec![], kwargs, &[]).await.unwrap();
    let listed: Vec<&str> = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id1.as_str()]);
    assert_eq!(
        report["counts"],
        json!({"alive": 1, "suspect": 0, "dead": 0, "left": 1})
    );
    let mut kwargs = no_kwargs();
    kwargs.insert("state".into(), json!(["alive", "gone"]));
    let error = client
        .call("weft.peers", vec![], kwargs, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no state `gone`"), "{error}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["peers", "--state", "alive,suspect", "--url", hub.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("members: 1 alive, 1 left"), "{text}");
    assert!(text.contains(&id2) && !text.contains(&id1), "{text}");
}

#[tokio::test]
async fn a_killed_replica_is_routed_around() {
    let a = fabric_node(&["math"], None, &["--resources=replica"]).await;
    let b = fabric_node(&["math"], Some(&a), &["--resources=replica"]).await;
    let caller = fabric_node(&[], Some(&a), &[]).await;
    let (id_a, id_b) = (support::node_id(&a).await, support::node_id(&b).await);
    assert!(eventually(CONVERGE, || async { servers_of(&caller, "math.add").await.len() == 2 }).await);
    let client = caller.client().await;
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(6) {
        if !killed && started.elapsed() > Duration::from_millis(500) {
            signal(&b, "-KILL");
            killed = true;
        }
        match client
            .call("math.add", vec![json!(2), json!(2)], no_kwargs(), &[])
            .await
        {
            Ok(value) => assert_eq!(value, json!(4)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // A call in flight when its node died gets a clear error; nothing else fails.
    assert!(failures.len() <= 1, "{failures:?}");
    assert!(
        failures.iter().all(|f| f.contains("went away before answering")),
        "{failures:?}"
    );
    assert_eq!(servers_of(&caller, "math.add").await, vec![id_a.clone()]);
    assert_eq!(state_of(&caller, &id_b).await.as_deref(), Some("dead"));
}

#[tokio::test]
async fn a_stopped_node_is_declared_dead_and_rejoins_when_continued() {
    let a = fabric_node(&[], None, &[]).await;
    let b = fabric_node(&["math"], Some(&a), &[]).await;
    let id_b = support::node_id(&b).await;
    assert!(
        eventually(CONVERGE, || async {
            servers_of(&a, "math.add").await == vec![id_b.clone()]
        })
        .await
    );
    let started = Instant::now();
    signal(&b, "-STOP");
    assert!(
        eventually(CONVERGE, || async {
            state_of(&a, &id_b).await.as_deref() == Some("dead")
        })
        .await
    );
    let detected = started.elapsed();
    assert!(servers_of(&a, "math.add").await.is_empty());
    signal(&b, "-CONT");
    assert!(
        eventually(CONVERGE, || async {
            state_of(&a, &id_b).await.as_deref() == Some("alive")
        })
        .await
    );
    assert!(
        eventually(CONVERGE, || async {
            a.client()
                .await
                .call("math.add", vec![json!(1), json!(1)], no_kwargs(), &[])
                .await
                .is_ok()
        })
        .await
    );
    eprintln!("SIGSTOP detected after {detected:?}");
}

#[tokio::test]
async fn a_wrong_secret_or_cluster_cannot_join_or_inject() {
    let a = fabric_node(&[], None, &[]).await;
    let wrong_secret = TestNode::start(&["math"], &["--cluster-secret=guess", &format!("--seed={}", a.url())]).await;
    let wrong_cluster = TestNode::start(
        &["text"],
        &[
            "--cluster-secret=test-secret",
            "--cluster=beta",
            &format!("--seed={}", a.url()),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(peer_states(&a).await.is_empty(), "{:?}", peer_states(&a).await);
    assert!(servers_of(&a, "math.add").await.is_empty());
    assert!(servers_of(&a, "text.upper").await.is_empty());
    assert!(peer_states(&wrong_secret).await.is_empty());
    assert!(peer_states(&wrong_cluster).await.is_empty());
    let err = a
        .client()
        .await
        .call("math.add", vec![json!(1), json!(1)], no_kwargs(), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1001"), "{err}");
}

#[tokio::test]
async fn a_node_others_still_hear_is_not_declared_dead() {
    // Only the link A–B is cut; C hears both. A suspects B, asks the others, C vouches and B
    // answers through C: B is not declared dead (a broken link is not a dead node).
    let a = fabric_node(&[], None, &["--fault-injection"]).await;
    let b = fabric_node(&["math"], Some(&a), &["--fault-injection"]).await;
    let c = fabric_node(&[], Some(&a), &["--fault-injection"]).await;
    let (id_a, id_b) = (support::node_id(&a).await, support::node_id(&b).await);
    assert!(
        eventually(CONVERGE, || async {
            state_of(&c, &id_b).await.as_deref() == Some("alive")
        })
        .await
    );
    assert!(
        eventually(CONVERGE, || async {
            state_of(&a, &id_b).await.as_deref() == Some("alive")
        })
        .await
    );
    let cut = |node: &TestNode, action: &'static str, peer: String| {
        let url = node.url().to_string();
        async move {
            let client = weft::net::Client::connect(&url).await.unwrap();
            client
                .call("weft.fault", vec![json!(action), json!([peer])], no_kwargs(), &[])
                .await
                .unwrap();
        }
    };
    cut(&a, "cut", id_b.clone()).await;
    cut(&b, "cut", id_a.clone()).await;
    assert!(
        eventually(CONVERGE, || async {
            state_of(&a, &id_b).await.as_deref() == Some("suspect")
        })
        .await
    );
    // Far longer than link timeout + suspicion + probe window. B stays reachable through C:
    // never dead, and its command answers A's calls.
    let client = a.client().await;
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let state = state_of(&a, &id_b).await;
        assert!(
            matches!(state.as_deref(), Some("suspect" | "alive")),
            "B was declared dead although C hears it: {state:?}"
        );
        assert_eq!(
            client
                .call("math.add", vec![json!(1), json!(2)], no_kwargs(), &[])
                .await
                .unwrap(),
            json!(3)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state_of(&c, &id_b).await.as_deref(), Some("alive"));
    cut(&a, "restore", id_b.clone()).await;
    cut(&b, "restore", id_a.clone()).await;
    assert!(
        eventually(CONVERGE, || async {
            state_of(&a, &id_b).await.as_deref() == Some("alive")
        })
        .await
    );
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_replaces_its_old_catalog() {
    // B is killed and comes back at once with the same id and another version of its plugin:
    // A must serve what B serves now, never what it served in its previous life.
    let a = fabric_node(&[], None, &[]).await;
    let b = fabric_node(&["greeter-v1"], Some(&a), &["--node-id=phoenix"]).await;
    let hello = || async {
        a.client()
            .await
            .call("greeter.hello", vec![json!("a")], no_kwargs(), &[])
            .await
            .map_err(|e| e.to_string())
    };
    assert!(eventually(CONVERGE, || async { hello().await == Ok(json!("hello a from v1")) }).await);
    signal(&b, "-KILL");
    drop(b);
    let _b = fabric_node(&["greeter-v2"], Some(&a), &["--node-id=phoenix"]).await;
    assert!(eventually(CONVERGE, || async { hello().await == Ok(json!("hello a from v2")) }).await);
    assert_eq!(servers_of(&a, "greeter.hello").await, vec!["phoenix".to_string()]);
}
