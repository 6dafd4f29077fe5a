//! One dependency-resolving request chaining Rust, Python and JavaScript commands served by
//! three different nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{built_compile_cache, eventually, fabric_node, rpc, servers_of};

#[tokio::test]
async fn rust_then_python_then_javascript_across_three_nodes() {
    let cache = format!("--cache-dir={}", built_compile_cache().display());
    let rust = fabric_node(&["text", "math"], None, &[&cache]).await;
    let python = fabric_node(&["textstats"], Some(&rust), &[&cache]).await;
    let js = fabric_node(&["reshape"], Some(&rust), &[&cache]).await;
    for command in ["text.word_count", "textstats.top_words", "reshape.render"] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                servers_of(&js, command).await.len() == 1
            })
            .await,
            "{command} never reached the catalog"
        );
    }
    let client = js.client().await;
    let response = client
        .request(rpc(json!([
            {"name": "counts", "fun": "text.word_count", "args": ["the cat and the dog and the emu"], "locs": []},
            {"name": "top", "fun": "textstats.top_words", "args": ["counts"], "kwargs": {"n": 2}, "locs": []},
            {"name": "line", "fun": "reshape.render",
             "args": ["{{0.word}} x{{0.count}}, {{1.word}} x{{1.count}}", "top"], "locs": []},
        ])))
        .await
        .unwrap();
    assert_eq!(response["r"], json!({"line": "the x3, and x2"}), "{response}");

    // A JavaScript command on one node calling a Rust command served by another.
    let total = client
        .call(
            "reshape.total",
            vec![json!([{"n": 1}, {"n": 2.5}]), json!("n")],
            support::no_kwargs(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(total, json!(3.5));
    drop(python);
}
