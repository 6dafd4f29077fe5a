//! Misbehaving nodes: one that answers every call with an error, one that drops calls, one
//! that advertises a command it does not serve. Its record is its own (signed), so routing
//! scores it by what it does: after the first bad answers, calls go to the healthy replica.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

/// A caller with a short deadline, a healthy node serving `flavour.name` ("cpu") and a node
/// told to misbehave with `fault` (serving "gpu" unless it only pretends to).
async fn fabric(fault: &str, bad_serves: bool) -> (TestNode, TestNode, TestNode) {
    let good = fabric_node(&["flavour-cpu"], None, &[]).await;
    let plugins: &[&str] = if bad_serves { &["flavour-gpu"] } else { &[] };
    let bad = fabric_node(plugins, Some(&good), &["--fault-injection"]).await;
    let caller = fabric_node(&[], Some(&good), &["--call-deadline-ms=800"]).await;
    let client = bad.client().await;
    client
        .call("weft.fault", vec![json!(fault), json!([])], no_kwargs(), &[])
        .await
        .unwrap();
    let bad_id = node_id(&bad).await;
    let good_id = node_id(&good).await;
    let both = eventually(std::time::Duration::from_secs(10), || async {
        let servers = servers_of(&caller, "flavour.name").await;
        servers.contains(&bad_id) && servers.contains(&good_id)
    })
    .await;
    assert!(both, "the caller sees both replicas");
    (caller, good, bad)
}

/// Makes `n` calls of `flavour.name` from `caller`: the answers, in order.
async fn calls(caller: &TestNode, n: usize) -> Vec<Result<String, String>> {
    let client = caller.client().await;
    let mut out = Vec::new();
    for _ in 0..n {
        let answer = client.call("flavour.name", vec![], no_kwargs(), &[]).await;
        out.push(
            answer
                .map(|v| v.as_str().unwrap().to_string())
                .map_err(|e| e.to_string()),
        );
    }
    out
}

async fn penalty(caller: &TestNode, bad: &TestNode) -> f64 {
    let row = peer_row(caller, &node_id(bad).await).await.unwrap();
    row["penalty"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_errors_is_demoted() {
    let (caller, _good, bad) = fabric("misbehave:error", true).await;
    let answers = calls(&caller, 40).await;
    let failed = answers.iter().filter(|a| a.is_err()).count();
    assert!(failed <= 3, "at most a few calls meet the bad node: {answers:?}");
    assert!(
        answers[10..].iter().all(|a| a.as_deref() == Ok("cpu")),
        "then every call goes to the healthy node: {answers:?}"
    );
    if failed > 0 {
        assert!(penalty(&caller, &bad).await > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropping_calls_is_demoted() {
    let (caller, _good, bad) = fabric("misbehave:drop", true).await;
    let answers = calls(&caller, 30).await;
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failed.len() <= 2, "at most a few calls meet the bad node: {answers:?}");
    for error in failed {
        assert!(error.contains("did not answer within the deadline"), "{error}");
    }
    assert!(answers[5..].iter().all(|a| a.as_deref() == Ok("cpu")), "{answers:?}");
    let _ = penalty(&caller, &bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_advertising_what_it_does_not_serve_is_passed_over() {
    let (caller, _good, bad) = fabric("advertise:flavour.name", false).await;
    let answers = calls(&caller, 30).await;
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("cpu")),
        "calls that meet the liar are retried on the healthy node: {answers:?}"
    );
    let _ = penalty(&caller, &bad).await;
}
