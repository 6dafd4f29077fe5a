//! `--otlp-endpoint`: spans go to an OpenTelemetry collector (here a real HTTP server on a real
//! socket that keeps what it receives), and one request's spans on both nodes it crossed share
//! one trace id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft::net::Client;
use weft::node::NodeProcess;

/// An OTLP/HTTP collector: keeps the JSON body of every POST to /v1/traces.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 65536];
                let (head_end, length) = loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the exporter closed before its request was whole");
                    data.extend_from_slice(&buf[..n]);
                    if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..at]).to_lowercase();
                        assert!(head.starts_with("post /v1/traces "), "{head}");
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        break (at + 4, length);
                    }
                };
                while data.len() < head_end + length {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    data.extend_from_slice(&buf[..n]);
                }
                let body: Value = serde_json::from_slice(&data[head_end..head_end + length]).unwrap();
                kept.lock().unwrap().push(body);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                    .await;
            });
        }
    });
    (url, received)
}

async fn node(dir: &Path, name: &str, plugins: &[&str], seed: Option<&str>, otlp: &str) -> NodeProcess {
    let extra = [format!("--otlp-endpoint={otlp}")];
    support::named_node(dir, name, plugins, seed, &extra, &[], None).await
}

/// The (node, span name) of every exported span of the OTLP trace `trace_id`.
fn spans_of(received: &[Value], trace_id: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for body in received {
        for resource in body["resourceSpans"].as_array().unwrap() {
            let node = resource["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "weft.node")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_string();
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    if span["traceId"] == trace_id {
                        out.push((node.clone(), span["name"].as_str().unwrap().to_string()));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn one_requests_spans_on_both_nodes_share_its_trace_id() {
    let (otlp, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let serving = node(dir.path(), "serving", &["pipeline", "math", "text"], None, &otlp).await;
    let entry = node(dir.path(), "entry", &[], Some(serving.url()), &otlp).await;
    let client = Client::connect(entry.url()).await.unwrap();
    let request = |u: &str| {
        json!({"role": "rpc", "u": u, "cmds": [
            {"name": "r", "fun": "pipeline.report", "args": ["weekly", [3, 1, 2]], "kwargs": {}, "locs": []}
        ]})
    };
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            client
                .request(request("warm-up"))
                .await
                .is_ok_and(|r| r["error"].is_null())
        })
        .await
    );
    let response = client.request(request("otlp-trace-1")).await.unwrap();
    assert!(response["error"].is_null(), "{response}");

    let trace_id: String = Sha256::digest(b"otlp-trace-1")[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            let spans = spans_of(&received.lock().unwrap(), &trace_id);
            ["entry", "serving"]
                .iter()
                .all(|node| spans.iter().any(|(n, name)| n == node && name == "request"))
        })
        .await,
        "spans of the trace: {:?}",
        spans_of(&received.lock().unwrap(), &trace_id)
    );
}
