//! Misbehaving nodes: one that answers every call with an error, one that drops calls, one
//! that advertises a command it does not serve. Its record is its own (signed), so routing
//! scores it by what it does: after the first bad answers, calls go to the healthy replica,
//! even though the healthy replica's link is the slower one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

/// A caller with a short deadline, a healthy node serving `flavour.name` ("cpu") and a node
/// told to misbehave with `fault` (serving "gpu" unless it only pretends to). The healthy
/// node delays what it sends the caller by 1 ms from the first frame, so that routing by
/// round-trip time alone would send every call to the bad node.
async fn fabric(fault: &str, bad_serves: bool) -> (TestNode, TestNode, TestNode) {
    const CALLER: &str = "caller";
    let good = fabric_node(&["flavour-cpu"], None, &["--fault-injection"]).await;
    good.client()
        .await
        .call("weft.fault", vec![json!("delay:1"), json!([CALLER])], no_kwargs(), &[])
        .await
        .unwrap();
    let plugins: &[&str] = if bad_serves { &["flavour-gpu"] } else { &[] };
    let bad = fabric_node(plugins, Some(&good), &["--fault-injection"]).await;
    let caller = fabric_node(
        &[],
        Some(&good),
        &["--call-deadline-ms=800", &format!("--node-id={CALLER}")],
    )
    .await;
    bad.client()
        .await
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
    let observer = &caller;
    let rtt = |id: String| async move { peer_row(observer, &id).await.and_then(|row| row["rtt_us"].as_u64()) };
    let slower = eventually(std::time::Duration::from_secs(10), || async {
        let (good, bad) = (rtt(good_id.clone()).await, rtt(bad_id.clone()).await);
        matches!((good, bad), (Some(good), Some(bad)) if bad > 0 && good > 2 * bad)
    })
    .await;
    assert!(
        slower,
        "the caller measures its link to the healthy node as the slower one"
    );
    (caller, good, bad)
}

/// Asserts that the first call met the bad node (the faster link) and at most `at_most` calls
/// did; returns their errors.
fn demoted(answers: &[Result<String, String>], at_most: usize) -> Vec<&String> {
    assert!(answers[0].is_err(), "the first call meets the bad node: {answers:?}");
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.len() <= at_most,
        "at most {at_most} calls meet the bad node: {answers:?}"
    );
    failed
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
    // Each error multiplies the node's cost by 4. The delay makes the healthy link 2 to about
    // 30 times slower on loopback (up to 100 on a busy machine), so one to four errors demote
    // the bad node.
    for error in demoted(&answers, 4) {
        assert!(error.contains("misbehaves"), "{error}");
    }
    assert!(penalty(&caller, &bad).await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropping_calls_is_demoted() {
    let (caller, _good, bad) = fabric("misbehave:drop", true).await;
    let answers = calls(&caller, 30).await;
    // A dropped call multiplies the node's cost by 256: one is enough.
    for error in demoted(&answers, 1) {
        assert!(error.contains("did not answer within the deadline"), "{error}");
    }
    assert!(penalty(&caller, &bad).await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_advertising_what_it_does_not_serve_is_passed_over() {
    let (caller, _good, bad) = fabric("advertise:flavour.name", false).await;
    let answers = calls(&caller, 30).await;
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("cpu")),
        "calls that meet the liar are retried on the healthy node: {answers:?}"
    );
    assert!(penalty(&caller, &bad).await > 0.0, "the liar was met and demoted");
}
