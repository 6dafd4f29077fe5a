//! The node's HTTP listener (`--http ADDR`) for operators: `/healthz`, `/readyz`, `/metrics`
//! (Prometheus text format) and `/status` (JSON; the schema is in `docs/observability.md`).
//! GET only, one request per connection.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::escape;
use crate::plugins::Selector;
use crate::rpc::Executor;

/// The most a request head may take, and how long it may take to arrive.
const MAX_HEAD: usize = 8 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints report on.
pub struct Observed {
    pub executor: Arc<Executor>,
    pub started: Instant,
    /// Turns true when the node begins to stop: `/readyz` then answers 503.
    pub stopping: watch::Receiver<bool>,
}

/// Serves the endpoints until `stopping` turns true.
pub async fn serve(listener: TcpListener, observed: Arc<Observed>) {
    let mut stop = observed.stopping.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, observed.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn answer(mut stream: TcpStream, observed: Arc<Observed>) {
    let Ok(Some(path)) = tokio::time::timeout(HEAD_TIMEOUT, read_path(&mut stream)).await else {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "a GET request was expected\n",
        )
        .await;
        return;
    };
    let (status, kind, body) = match path.split('?').next().unwrap_or_default() {
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if *observed.stopping.borrow() => ("503 Service Unavailable", "text/plain", "stopping\n".into()),
        "/readyz" => ("200 OK", "text/plain", "ready\n".into()),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(&observed)),
        "/status" => ("200 OK", "application/json", status(&observed).to_string()),
        "/" => ("200 OK", "text/html; charset=utf-8", DASHBOARD.to_string()),
        _ => (
            "404 Not Found",
            "text/plain",
            "endpoints: / (dashboard) /healthz /readyz /metrics /status\n".into(),
        ),
    };
    let _ = respond(&mut stream, status, kind, &body).await;
}

/// The path of a `GET` request, once its head has arrived.
async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = std::str::from_utf8(&head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.to_string()),
        _ => None,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The live dashboard: one self-contained page (no external fetches) that polls `/status`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Everything an operator sees of the node at once: what `weft peers`, `weft catalog` and
/// `weft plugins` show, with the tenants and the uptime.
pub fn status(observed: &Observed) -> Value {
    let executor = &observed.executor;
    let open = Selector::default();
    let (peers, catalog) = match executor.remote() {
        Some(remote) => (remote.peers(None), remote.catalog(&open)),
        None => (Value::Null, Value::Array(Vec::new())),
    };
    let tenants: Vec<&str> = executor
        .tenants()
        .map(|t| t.ids().iter().map(|id| &**id).collect())
        .unwrap_or_default();
    json!({
        "node": peers.get("node").cloned().unwrap_or(Value::Null),
        "cluster": peers.get("cluster").cloned().unwrap_or(Value::Null),
        "url": peers.get("url").cloned().unwrap_or(Value::Null),
        "uptime_s": observed.started.elapsed().as_secs_f64(),
        "tenants": tenants,
        "plugins": executor.table().reports(),
        "peers": peers.get("peers").cloned().unwrap_or(Value::Array(Vec::new())),
        "catalog": catalog,
        "calls": executor.metrics().totals(),
    })
}

fn metrics(observed: &Observed) -> String {
    let executor = &observed.executor;
    let mut out = String::new();
    executor.metrics().render_calls(&mut out);
    let table = executor.table();
    let reports = table.reports();
    let _ = writeln!(out, "# HELP weft_plugins Plugin files of this node, by state.");
    let _ = writeln!(out, "# TYPE weft_plugins gauge");
    for state in ["serving", "failed", "disabled", "conflict"] {
        let n = reports.iter().filter(|r| r.state == state).count();
        let _ = writeln!(out, "weft_plugins{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP weft_plugin_errors Plugins whose last change failed (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE weft_plugin_errors gauge");
    for r in &reports {
        let _ = writeln!(
            out,
            "weft_plugin_errors{{plugin=\"{}\"}} {}",
            escape(&r.name),
            u8::from(r.last_error.is_some())
        );
    }
    let _ = writeln!(out, "# HELP weft_warm_instances Idle instances kept warm, by plugin.");
    let _ = writeln!(out, "# TYPE weft_warm_instances gauge");
    for r in &reports {
        let _ = writeln!(
            out,
            "weft_warm_instances{{plugin=\"{}\"}} {}",
            escape(&r.name),
            r.warm_instances
        );
    }
    let _ = writeln!(
        out,
        "# HELP weft_warm_memory_bytes Linear memory held by idle warm instances, by plugin."
    );
    let _ = writeln!(out, "# TYPE weft_warm_memory_bytes gauge");
    for r in &reports {
        let _ = writeln!(
            out,
            "weft_warm_memory_bytes{{plugin=\"{}\"}} {}",
            escape(&r.name),
            r.warm_memory_bytes
        );
    }
    let _ = writeln!(out, "# HELP weft_local_commands Commands this node serves.");
    let _ = writeln!(out, "# TYPE weft_local_commands gauge");
    let _ = writeln!(out, "weft_local_commands {}", table.commands().len());
    if let Some(remote) = executor.remote() {
        let catalog = remote.catalog(&Selector::default());
        let _ = writeln!(
            out,
            "# HELP weft_catalog_entries Commands of the whole fabric, one per serving node."
        );
        let _ = writeln!(out, "# TYPE weft_catalog_entries gauge");
        let _ = writeln!(out, "weft_catalog_entries {}", catalog.as_array().map_or(0, Vec::len));
        let report = remote.peers(None);
        let peers = report["peers"].as_array().map_or(&[][..], Vec::as_slice);
        let _ = writeln!(out, "# HELP weft_peers Members this node knows, by state.");
        let _ = writeln!(out, "# TYPE weft_peers gauge");
        for state in crate::rpc::PEER_STATES {
            let n = report["counts"][state].as_u64().unwrap_or(0);
            let _ = writeln!(out, "weft_peers{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP weft_peer_rtt_seconds Round-trip time of each link.");
        let _ = writeln!(out, "# TYPE weft_peer_rtt_seconds gauge");
        for p in peers {
            if let (Some(node), Some(rtt)) = (p["node"].as_str(), p["rtt_us"].as_u64()) {
                let _ = writeln!(
                    out,
                    "weft_peer_rtt_seconds{{peer=\"{}\"}} {}",
                    escape(node),
                    rtt as f64 / 1e6
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP weft_peer_bytes_total Bytes sent and received on each link."
        );
        let _ = writeln!(out, "# TYPE weft_peer_bytes_total counter");
        for p in peers {
            let Some(node) = p["node"].as_str() else { continue };
            for (direction, key) in [("out", "bytes_out"), ("in", "bytes_in")] {
                if let Some(bytes) = p[key].as_u64() {
                    let _ = writeln!(
                        out,
                        "weft_peer_bytes_total{{peer=\"{}\",direction=\"{direction}\"}} {bytes}",
                        escape(node)
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "# HELP weft_uptime_seconds Time since the node started.");
    let _ = writeln!(out, "# TYPE weft_uptime_seconds gauge");
    let _ = writeln!(out, "weft_uptime_seconds {}", observed.started.elapsed().as_secs_f64());
    out
}
