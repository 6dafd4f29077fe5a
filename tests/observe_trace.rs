//! A request's id travels with its calls: the log lines of every node it crossed carry it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::eventually;
use weft::net::Client;
use weft::node::NodeProcess;

/// A node serving copies of `plugins`, logging (at `log_filter`) to `dir/NAME.log`.
async fn node(dir: &Path, name: &str, plugins: &[&str], seed: Option<&str>, log_filter: &str) -> NodeProcess {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let env = [("RUST_LOG", log_filter), ("NO_COLOR", "1")];
    support::named_node(dir, name, plugins, seed, &[], &env, Some(log)).await
}

#[tokio::test]
async fn one_requests_trace_id_is_in_the_logs_of_both_nodes_it_crossed() {
    let dir = tempfile::tempdir().unwrap();
    let serving = node(dir.path(), "serving", &["pipeline", "math", "text"], None, "info").await;
    let entry = node(dir.path(), "entry", &[], Some(serving.url()), "info,weft::fabric=debug").await;
    let client = Client::connect(entry.url()).await.unwrap();
    let request = |u: &str| {
        json!({"role": "rpc", "u": u, "cmds": [
            {"name": "r", "fun": "pipeline.report", "args": ["weekly", [3, 1, 2]], "kwargs": {}, "locs": []}
        ]})
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            client
                .request(request("warm-up"))
                .await
                .is_ok_and(|r| r["error"].is_null())
        })
        .await
    );
    let response = client.request(request("trace-7f3a9c")).await.unwrap();
    assert!(response["error"].is_null(), "{response}");

    let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
    // The entry node routed it; the serving node ran the plugin, whose own log line carries it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            log("entry").contains("trace=trace-7f3a9c") && log("serving").contains("trace=trace-7f3a9c")
        })
        .await,
        "entry:\n{}\nserving:\n{}",
        log("entry"),
        log("serving")
    );
    let line = log("serving")
        .lines()
        .find(|l| l.contains("trace=trace-7f3a9c"))
        .unwrap()
        .to_string();
    assert!(line.contains("report `weekly`"), "{line}");
}
