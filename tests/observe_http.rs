//! The operator endpoints of `--http`: health, readiness, Prometheus metrics that move as calls
//! happen, and the `/status` document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Map, Value};
use support::{eventually, fabric_node, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET base+path`: the status code and the body.
async fn get(base: &str, path: &str) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn http_url(node: &TestNode) -> String {
    node.process.http_url().expect("the node printed WEFT_HTTP").to_string()
}

/// The value of the metric line that starts with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn health_readiness_and_metrics_that_follow_the_calls() {
    let node = TestNode::start(&["math"], &["--http=127.0.0.1:0"]).await;
    let http = http_url(&node);
    assert_eq!(get(&http, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get(&http, "/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(get(&http, "/nothing-here").await.0, 404);

    let ok = r#"weft_calls_total{command="math.add",tenant="",outcome="ok"}"#;
    let error = r#"weft_calls_total{command="math.add",tenant="",outcome="error"}"#;
    let count = r#"weft_call_duration_seconds_count{command="math.add",tenant=""}"#;
    let (_, before) = get(&http, "/metrics").await;
    assert_eq!(metric(&before, ok), None, "{before}");
    assert_eq!(
        metric(&before, r#"weft_plugins{state="serving"}"#),
        Some(1.0),
        "{before}"
    );
    assert_eq!(metric(&before, "weft_local_commands"), Some(4.0), "{before}");

    let client = node.client().await;
    for i in 0..3 {
        client
            .call("math.add", vec![json!(i), json!(1)], Map::new(), &[])
            .await
            .unwrap();
    }
    assert!(client
        .call("math.add", vec![json!("x")], Map::new(), &[])
        .await
        .is_err());
    let (code, after) = get(&http, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric(&after, ok), Some(3.0), "{after}");
    assert_eq!(metric(&after, error), Some(1.0), "{after}");
    assert_eq!(metric(&after, count), Some(4.0), "{after}");
    assert_eq!(
        metric(&after, r#"weft_warm_instances{plugin="math"}"#),
        Some(1.0),
        "{after}"
    );
    assert!(after.contains("# TYPE weft_call_duration_seconds histogram"));
}

#[tokio::test]
async fn status_describes_the_node_its_plugins_peers_and_catalog() {
    let a = fabric_node(&["math"], None, &["--http=127.0.0.1:0"]).await;
    let b = fabric_node(&["text"], Some(&a), &[]).await;
    let http = http_url(&a);
    let status = || async {
        let (code, body) = get(&http, "/status").await;
        assert_eq!(code, 200);
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            status().await["peers"]
                .as_array()
                .is_some_and(|p| p.len() == 1 && p[0]["state"] == "alive")
        })
        .await,
        "{}",
        status().await
    );
    let status = status().await;
    assert_eq!(status["url"], json!(a.url()));
    assert!(status["node"].is_string() && status["cluster"] == "default", "{status}");
    assert!(status["uptime_s"].as_f64().unwrap() > 0.0);
    assert_eq!(status["tenants"], json!([]));
    assert_eq!(status["plugins"][0]["name"], "math");
    assert_eq!(status["plugins"][0]["state"], "serving");
    assert_eq!(status["peers"][0]["url"], json!(b.url()));
    let commands: Vec<&str> = status["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["command"].as_str().unwrap())
        .collect();
    assert!(
        commands.contains(&"math.add") && commands.contains(&"text.upper"),
        "{commands:?}"
    );
}
