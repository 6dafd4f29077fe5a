//! `weft bench`: latency and throughput of calls through the client protocol, next to a raw
//! tokio-tungstenite JSON echo server measured by the same load generator in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use weft::bench::{measure, raw_echo_server, Stats};
use weft::node::NodeProcess;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Plugin directory of the measured node (must hold `math.wasm`).
    #[arg(long, default_value = "build/plugins")]
    plugins: PathBuf,
    /// Seconds each measurement runs (after a warm-up of a quarter of that).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Requests in flight to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    in_flight: Vec<usize>,
    /// Extra flags for the measured node, e.g. `--instance-reuse=1`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

#[derive(clap::Args)]
pub struct RawEchoArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

pub async fn raw_echo(args: RawEchoArgs) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(args.listen)
        .await
        .context("binding the raw echo listener")?;
    println!("WEFT_URL=ws://{}", listener.local_addr()?);
    raw_echo_server(listener).await;
    Ok(ExitCode::SUCCESS)
}

const LIMIT: &str = "raw tokio-tungstenite JSON echo (limit)";

/// One server and request kind to measure.
struct Target<'a> {
    label: &'static str,
    url: &'a str,
    request: fn(u64) -> String,
}

fn echo_request(u: u64) -> String {
    format!(
        r#"{{"role":"rpc","u":"{u}","cmds":[{{"name":"r","fun":"echo","args":["hello"],"kwargs":{{}},"locs":[]}}]}}"#
    )
}

fn add_request(u: u64) -> String {
    format!(
        r#"{{"role":"rpc","u":"{u}","cmds":[{{"name":"r","fun":"math.add","args":[2,3],"kwargs":{{}},"locs":[]}}]}}"#
    )
}

fn python_request(u: u64) -> String {
    format!(
        r#"{{"role":"rpc","u":"{u}","cmds":[{{"name":"r","fun":"textstats.summary","args":["The cat sat. The cat ran away!"],"kwargs":{{}},"locs":[]}}]}}"#
    )
}

fn js_request(u: u64) -> String {
    format!(
        r#"{{"role":"rpc","u":"{u}","cmds":[{{"name":"r","fun":"reshape.pick","args":[{{"id":7,"name":"ada"}},["name"]],"kwargs":{{}},"locs":[]}}]}}"#
    )
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the weft binary")?;
    let startup = Duration::from_secs(120);
    let raw = NodeProcess::spawn(&exe, &["raw-echo".into()], startup).await?;
    let mut node_args = vec![
        "node".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--plugins={}", args.plugins.display()),
        "--node-id=bench-server".into(),
        "--cluster=bench".into(),
    ];
    node_args.extend(args.node_args.iter().cloned());
    let node = NodeProcess::spawn(&exe, &node_args, startup).await?;
    // A second node without plugins: its calls take one hop to the first.
    let hub_args = vec![
        "node".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--node-id=bench-hub".into(),
        "--cluster=bench".into(),
        format!("--seed={}", node.url()),
    ];
    let hub = NodeProcess::spawn(&exe, &hub_args, startup).await?;
    wait_for_route(hub.url()).await?;
    let duration = Duration::from_secs_f64(args.seconds.max(0.1));

    let mut targets = vec![
        Target {
            label: LIMIT,
            url: raw.url(),
            request: echo_request,
        },
        Target {
            label: "weft built-in `echo`",
            url: node.url(),
            request: echo_request,
        },
        Target {
            label: "weft Rust plugin `math.add`",
            url: node.url(),
            request: add_request,
        },
        Target {
            label: "weft `math.add` on a peer (one hop)",
            url: hub.url(),
            request: add_request,
        },
    ];
    // The Python and JavaScript examples, when the plugin directory has them.
    if args.plugins.join("textstats.wasm").is_file() {
        targets.push(Target {
            label: "weft Python plugin `textstats.summary`",
            url: node.url(),
            request: python_request,
        });
    }
    if args.plugins.join("reshape.wasm").is_file() {
        targets.push(Target {
            label: "weft JavaScript plugin `reshape.pick`",
            url: node.url(),
            request: js_request,
        });
    }
    let mut rows: Vec<(&str, usize, Stats)> = Vec::new();
    for &in_flight in &args.in_flight {
        for &Target { label, url, request } in targets.iter() {
            let stats = measure(url, request, in_flight, duration).await?;
            if stats.errors > 0 {
                anyhow::bail!("{label}: {} of {} calls failed", stats.errors, stats.calls);
            }
            eprintln!(
                "{label:<42} in flight {in_flight:>3}: {:>9.0} calls/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
                stats.calls_per_sec, stats.p50_us, stats.p99_us
            );
            rows.push((label, in_flight, stats));
        }
    }
    println!("| target | in flight | calls/s | p50 µs | p99 µs | vs limit (calls/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, in_flight, stats) in &rows {
        let limit = rows
            .iter()
            .find(|(l, f, _)| *l == LIMIT && f == in_flight)
            .map_or(f64::NAN, |(_, _, s)| s.calls_per_sec);
        println!(
            "| {label} | {in_flight} | {:.0} | {:.1} | {:.1} | {:.0} % |",
            stats.calls_per_sec,
            stats.p50_us,
            stats.p99_us,
            100.0 * stats.calls_per_sec / limit
        );
    }
    warm_instances(node.url()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints each plugin's warm instances after the runs and the linear memory each holds.
async fn warm_instances(url: &str) -> anyhow::Result<()> {
    let client = weft::net::Client::connect(url).await?;
    let report = client
        .call("weft.plugins", vec![], serde_json::Map::new(), &[])
        .await
        .context("asking for the plugin report")?;
    println!();
    println!("| plugin | warm instances | linear memory per warm instance |");
    println!("|---|---:|---:|");
    for plugin in report.as_array().into_iter().flatten() {
        let count = plugin["warm_instances"].as_u64().unwrap_or(0);
        let bytes = plugin["warm_memory_bytes"].as_u64().unwrap_or(0);
        let per = if count > 0 {
            bytes as f64 / count as f64 / f64::from(1 << 20)
        } else {
            0.0
        };
        println!(
            "| {} | {count} | {per:.1} MiB |",
            plugin["name"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// Waits until `math.add` can be called through the node at `url`.
async fn wait_for_route(url: &str) -> anyhow::Result<()> {
    let client = weft::net::Client::connect(url).await?;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < until {
        let args = vec![serde_json::json!(1), serde_json::json!(1)];
        if client.call("math.add", args, serde_json::Map::new(), &[]).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("the second node never learned of math.add")
}
