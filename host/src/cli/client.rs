//! `weft call` and `weft request`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value};
use weft::net::client::result_of;
use weft::net::{Client, ClientError};

/// The node a command talks to, and the token it shows.
#[derive(clap::Args)]
pub struct NodeTarget {
    /// The node's client URL.
    #[arg(long, env = "WEFT_URL", default_value = "ws://127.0.0.1:6000")]
    url: String,
    /// A tenant's API token, sent as `Authorization: Bearer` (nodes with tenants require one).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA (PEM) a `wss://` node's certificate must chain to.
    #[arg(long, env = "WEFT_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl NodeTarget {
    async fn connect(&self) -> anyhow::Result<Client> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(weft::net::tls::client_trusting(ca).context("loading the CA")?),
            None => None,
        };
        Ok(Client::connect_with(&self.url, self.token.as_deref(), tls).await?)
    }
}

#[derive(clap::Args)]
pub struct CallArgs {
    /// The command, e.g. `math.add`.
    fun: String,
    /// Positional arguments; each is parsed as JSON where it parses, else taken as a string.
    /// Negative numbers are arguments; options (`--url`, `--kw`, `--locs`) may follow them; after
    /// `--` everything is an argument.
    #[arg(allow_negative_numbers = true)]
    args: Vec<String>,
    /// Keyword argument NAME=VALUE (VALUE parsed like ARGS); repeatable.
    #[arg(long = "kw", value_name = "NAME=VALUE")]
    kwargs: Vec<String>,
    /// Resource tags the serving command must carry.
    #[arg(long, value_delimiter = ',')]
    locs: Vec<String>,
    /// The cluster that must run it (`target_cluster`) [default: this node's, else the nearest
    /// cluster serving it].
    #[arg(long = "cluster")]
    target_cluster: Option<String>,
    #[command(flatten)]
    node: NodeTarget,
}

#[derive(clap::Args)]
pub struct RequestArgs {
    /// A JSON request (`{"role":"rpc","cmds":[...]}`, or just the list of commands), `-` for stdin.
    file: PathBuf,
    #[command(flatten)]
    node: NodeTarget,
}

#[derive(clap::Args)]
pub struct PluginsArgs {
    /// Print the raw JSON report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    node: NodeTarget,
}

/// `weft plugins`: every plugin file of the node, with its state, digest, commands and last error.
pub async fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let Some(report) = report(&args.node, "weft.plugins", Map::new(), args.json).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let plugins = report.as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        println!("no plugins");
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    for plugin in &plugins {
        let digest = plugin["digest"]
            .as_str()
            .map_or("-".to_string(), |d| d.chars().take(12).collect());
        let origin = match (plugin["origin"].as_str(), plugin["compile_ms"].as_f64()) {
            (Some(origin), Some(ms)) => format!("{origin} {ms:.1} ms"),
            _ => "-".into(),
        };
        // Baseline code serves until Cranelift's is ready.
        let origin = match plugin["tier"].as_str() {
            Some("baseline") => format!("{origin} (baseline code)"),
            _ => origin,
        };
        let warm = match (plugin["warm_instances"].as_u64(), plugin["warm_memory_bytes"].as_u64()) {
            (Some(n), Some(bytes)) if n > 0 => format!("  warm {n} ({:.1} MiB)", bytes as f64 / f64::from(1 << 20)),
            _ => String::new(),
        };
        let replica = match plugin["replica_of"].as_str() {
            Some(node) => format!("  replica of {node} (fetched {}×)", plugin["fetches"]),
            None => String::new(),
        };
        println!(
            "{}  {}  {digest}  {origin}  {}{warm}{replica}",
            text(&plugin["name"]),
            text(&plugin["state"]),
            text(&plugin["file"])
        );
        for command in plugin["commands"].as_array().into_iter().flatten() {
            let tags: Vec<String> = command["tags"].as_array().into_iter().flatten().map(text).collect();
            let served = if command["served"].as_bool() == Some(true) {
                ""
            } else {
                "  (not served)"
            };
            println!(
                "    {} {} [{}]{served}",
                text(&command["name"]),
                text(&command["version"]),
                tags.join(",")
            );
        }
        if let Some(error) = plugin["last_error"].as_str() {
            println!("    error: {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct FabricArgs {
    /// Print the raw JSON report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    node: NodeTarget,
}

#[derive(clap::Args)]
pub struct PeersArgs {
    /// List only the members in this state (alive, suspect, dead, left); repeatable, or
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    #[command(flatten)]
    fabric: FabricArgs,
}

/// `weft peers`: the members this node knows, with state, link and round-trip time.
pub async fn peers(args: PeersArgs) -> anyhow::Result<ExitCode> {
    let mut kwargs = Map::new();
    if !args.state.is_empty() {
        kwargs.insert("state".into(), Value::from(args.state));
    }
    let Some(report) = report(&args.fabric.node, "weft.peers", kwargs, args.fabric.json).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let counts: Vec<String> = weft::rpc::PEER_STATES
        .iter()
        .filter_map(|state| {
            let n = report["counts"][state].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{n} {state}"))
        })
        .collect();
    println!(
        "node {} of cluster {} at {}; members: {}",
        text(&report["node"]),
        text(&report["cluster"]),
        text(&report["url"]),
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        }
    );
    for peer in report["peers"].as_array().into_iter().flatten() {
        // A linked peer shows its round-trip time; another, the link its calls leave on.
        let path = match (peer["rtt_us"].as_u64(), peer["via"].as_str()) {
            (Some(us), _) => format!("rtt {:.2} ms", us as f64 / 1000.0),
            (None, Some(via)) => format!("via {via} ({} hops)", peer["hops"].as_u64().unwrap_or(0)),
            (None, None) => "unreachable".to_string(),
        };
        println!(
            "  {}  {}  {}  {path}  commands {}",
            text(&peer["node"]),
            text(&peer["state"]),
            text(&peer["url"]),
            peer["commands"].as_u64().unwrap_or(0)
        );
    }
    for gateway in report["gateways"].as_array().into_iter().flatten() {
        let clusters: Vec<String> = gateway["clusters"].as_array().into_iter().flatten().map(text).collect();
        let default = if gateway["default_route"].as_bool() == Some(true) {
            " (and a default route)"
        } else {
            ""
        };
        println!(
            "  gateway {} of cluster {} (tier {})  {}  rtt {:.2} ms  reaches {}{default}",
            text(&gateway["node"]),
            text(&gateway["cluster"]),
            gateway["tier"].as_u64().unwrap_or(0),
            text(&gateway["url"]),
            gateway["rtt_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
            clusters.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `weft catalog`: every command of the fabric, with its tags and the nodes serving it.
pub async fn catalog(args: FabricArgs) -> anyhow::Result<ExitCode> {
    let Some(report) = report(&args.node, "weft.catalog", Map::new(), args.json).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    for row in report.as_array().into_iter().flatten() {
        let tags: Vec<String> = row["tags"].as_array().into_iter().flatten().map(text).collect();
        // A command of another cluster shows the cluster, how far it is and the way there.
        let place = match row["cluster"].as_str() {
            Some(cluster) => format!(
                "in cluster {cluster} ({} crossings, {} ms, via {})",
                row["crossings"].as_u64().unwrap_or(0),
                row["metric_ms"].as_u64().unwrap_or(0),
                text(&row["via"])
            ),
            None => format!("on {}", text(&row["node"])),
        };
        println!(
            "{} {} [{}] {place}",
            text(&row["command"]),
            text(&row["version"]),
            tags.join(","),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Calls a report built-in (`weft.plugins`, `weft.peers`, `weft.catalog`). With `json`, prints
/// the report and returns `None`; otherwise returns it for formatting.
async fn report(
    node: &NodeTarget,
    builtin: &str,
    kwargs: Map<String, Value>,
    json: bool,
) -> anyhow::Result<Option<Value>> {
    let client = node.connect().await?;
    let report = client.call(builtin, Vec::new(), kwargs, &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(None);
    }
    Ok(Some(report))
}

pub async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let positional: Vec<Value> = args.args.iter().map(|a| parse_arg(a)).collect();
    let mut kwargs = Map::new();
    for kw in &args.kwargs {
        let (name, value) = kw
            .split_once('=')
            .with_context(|| format!("--kw {kw:?}: expected NAME=VALUE"))?;
        kwargs.insert(name.to_string(), parse_arg(value));
    }
    let client = args.node.connect().await?;
    let locs: Vec<String> = args.locs.into_iter().filter(|l| !l.is_empty()).collect();
    let cluster = args.target_cluster.as_deref();
    match client.call_in(&args.fun, positional, kwargs, &locs, cluster).await {
        Ok(value) => {
            println!("{value}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ClientError::Remote { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the request from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let request: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", args.file.display()))?;
    let request = match request {
        Value::Array(cmds) => serde_json::json!({ "role": "rpc", "cmds": cmds }),
        other => other,
    };
    let client = args.node.connect().await?;
    let response = client.request(request).await?;
    let has_extras = response.get("intermediate_results").is_some() || response.get("execution_summary").is_some();
    if has_extras && response.get("error").is_none_or(Value::is_null) {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(ExitCode::SUCCESS);
    }
    match result_of(response) {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn parse_arg(arg: &str) -> Value {
    serde_json::from_str(arg).unwrap_or_else(|_| Value::String(arg.to_string()))
}
