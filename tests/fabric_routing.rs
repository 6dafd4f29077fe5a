//! Which replica a call goes to (SCENARIOS.md 13, 23) and partitions that heal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{
    call_with_locs as call, error_code, eventually, fabric_node, no_kwargs, peer_states, rpc, servers_of, TestNode,
};

const CONVERGE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_same_command_with_different_tags_is_chosen_by_locs() {
    // Scenario 13, asked from a third node that serves neither.
    let gpu = fabric_node(&["flavour-gpu"], None, &[]).await;
    let _cpu = fabric_node(&["flavour-cpu"], Some(&gpu), &[]).await;
    let asker = fabric_node(&[], Some(&gpu), &[]).await;
    assert!(eventually(CONVERGE, || async { servers_of(&asker, "f").await.len() == 2 }).await);
    assert_eq!(
        call(&asker, "f", vec![json!("payload")], &["gpu"]).await.unwrap(),
        json!("gpu:payload")
    );
    assert_eq!(
        call(&asker, "f", vec![json!("payload")], &["cpu"]).await.unwrap(),
        json!("cpu:payload")
    );
    let response = asker
        .client()
        .await
        .request(rpc(json!([{"name": "x", "fun": "f", "args": ["p"], "locs": ["tpu"]}])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1001));
}

#[tokio::test]
async fn calls_go_to_the_idle_provider() {
    // Scenario 23: two providers; the caller keeps one busy (calls pinned to it by a tag only
    // it carries); new calls go to the other.
    let gpu = fabric_node(&["flavour-gpu"], None, &["--resources=gpu-node"]).await;
    let _cpu = fabric_node(&["flavour-cpu"], Some(&gpu), &["--resources=cpu-node"]).await;
    let caller = fabric_node(&[], Some(&gpu), &[]).await;
    assert!(
        eventually(CONVERGE, || async {
            servers_of(&caller, "flavour.slow").await.len() == 2
        })
        .await
    );
    let url = caller.url().to_string();
    let busy = tokio::spawn(async move {
        let client = weft::net::Client::connect(&url).await.unwrap();
        let gpu = ["gpu-node".to_string()];
        let calls = (0..12).map(|_| client.call("flavour.slow", vec![json!(1500)], no_kwargs(), &gpu));
        futures_util::future::join_all(calls).await
    });
    // Wait until the caller has all twelve running on the GPU node.
    let gpu_id = support::node_id(&gpu).await;
    let busy_seen = eventually(CONVERGE, || async {
        support::peer_row(&caller, &gpu_id)
            .await
            .is_some_and(|p| p["inflight"] == 12)
    })
    .await;
    assert!(busy_seen, "the slow calls never ran");
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(call(&caller, "flavour.name", vec![], &[]).await.unwrap());
    }
    // What the caller knew of both providers (round trip, calls in flight, path), for a failure.
    let seen: Vec<String> = support::peer_rows(&caller)
        .await
        .iter()
        .map(|p| {
            format!(
                "{}: rtt_us {} inflight {} via {} penalty {}",
                p["node"], p["rtt_us"], p["inflight"], p["via"], p["penalty"]
            )
        })
        .collect();
    assert!(
        answers.iter().all(|a| a == "cpu"),
        "calls went to the busy provider: {answers:?}; the caller saw {seen:?}"
    );
    for outcome in busy.await.unwrap() {
        assert_eq!(outcome.unwrap(), json!("gpu"));
    }
}

#[tokio::test]
async fn a_partition_splits_the_fabric_and_heals_by_itself() {
    // Four nodes, each side with its own command; links between the sides are really cut.
    let a = fabric_node(&["math"], None, &["--fault-injection"]).await;
    let b = fabric_node(&[], Some(&a), &["--fault-injection"]).await;
    let c = fabric_node(&["text"], Some(&a), &["--fault-injection"]).await;
    let d = fabric_node(&[], Some(&c), &["--fault-injection"]).await;
    let nodes = [&a, &b, &c, &d];
    let mut ids = Vec::new();
    for node in nodes {
        ids.push(support::node_id(node).await);
    }
    for node in nodes {
        assert!(
            eventually(CONVERGE, || async {
                peer_states(node).await.iter().filter(|(_, s)| s == "alive").count() == 3
            })
            .await
        );
        assert!(
            eventually(CONVERGE, || async {
                call(node, "text.upper", vec![json!("x")], &[]).await.is_ok()
            })
            .await
        );
    }
    let cut = |node: &TestNode, action: &str, targets: &[String]| {
        let (url, action, targets) = (node.url().to_string(), action.to_string(), targets.to_vec());
        async move {
            let client = weft::net::Client::connect(&url).await.unwrap();
            client
                .call("weft.fault", vec![json!(action), json!(targets)], no_kwargs(), &[])
                .await
                .unwrap();
        }
    };
    let left = [ids[0].clone(), ids[1].clone()];
    let right = [ids[2].clone(), ids[3].clone()];
    for node in [&a, &b] {
        cut(node, "cut", &right).await;
    }
    for node in [&c, &d] {
        cut(node, "cut", &left).await;
    }
    // Each side keeps serving what it has, and only that.
    for node in [&a, &b] {
        assert!(eventually(CONVERGE, || async { servers_of(node, "text.upper").await.is_empty() }).await);
        assert_eq!(
            call(node, "math.add", vec![json!(1), json!(1)], &[]).await.unwrap(),
            json!(2)
        );
        assert!(call(node, "text.upper", vec![json!("x")], &[])
            .await
            .unwrap_err()
            .contains("1001"));
    }
    for node in [&c, &d] {
        assert!(eventually(CONVERGE, || async { servers_of(node, "math.add").await.is_empty() }).await);
        assert_eq!(
            call(node, "text.upper", vec![json!("x")], &[]).await.unwrap(),
            json!("X")
        );
    }
    // Heal: nobody is told to reconnect; the fabric finds itself again.
    let healed = std::time::Instant::now();
    for node in [&a, &b] {
        cut(node, "restore", &right).await;
    }
    for node in [&c, &d] {
        cut(node, "restore", &left).await;
    }
    for node in nodes {
        assert!(
            eventually(Duration::from_secs(15), || async {
                call(node, "math.add", vec![json!(1), json!(1)], &[]).await.is_ok()
                    && call(node, "text.upper", vec![json!("x")], &[]).await.is_ok()
            })
            .await
        );
        assert!(
            eventually(CONVERGE, || async {
                peer_states(node).await.iter().filter(|(_, s)| s == "alive").count() == 3
            })
            .await
        );
    }
    // Nothing lost or doubled.
    for node in nodes {
        assert_eq!(servers_of(node, "math.add").await, vec![ids[0].clone()]);
        assert_eq!(servers_of(node, "text.upper").await, vec![ids[2].clone()]);
    }
    eprintln!("partition healed after {:?}", healed.elapsed());
}

#[tokio::test]
async fn fault_injection_is_refused_unless_enabled() {
    let node = fabric_node(&[], None, &[]).await;
    let err = node
        .client()
        .await
        .call("weft.fault", vec![json!("cut"), json!(["x"])], no_kwargs(), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fault injection is off"), "{err}");
}
