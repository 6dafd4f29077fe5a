//! `weft node`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use weft::config::{self, Limits};
use weft::fabric::identity::NodeKey;
use weft::fabric::{FabricConfig, Timing};
use weft::node::{Node, NodeConfig};

#[derive(clap::Args)]
pub struct NodeArgs {
    /// A TOML file of these options (`max_mesh = 16`, `seed = ["ws://…"]`); flags and WEFT_*
    /// variables override it. `weft config check FILE` shows the result.
    #[arg(long, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the client listener.
    #[arg(long, default_value = "127.0.0.1:6000", env = "WEFT_LISTEN")]
    listen: SocketAddr,
    /// Directory of plugin components (`*.wasm`).
    #[arg(long, env = "WEFT_PLUGINS")]
    plugins: Option<PathBuf>,
    /// The node's resource tags, added to every command it serves.
    #[arg(long, value_delimiter = ',', env = "WEFT_RESOURCES")]
    resources: Vec<String>,
    /// Deadline of one command call, in milliseconds.
    #[arg(long, env = config::CALL_DEADLINE_MS_ENV, default_value_t = config::DEFAULT_CALL_DEADLINE_MS)]
    call_deadline_ms: u64,
    /// Linear memory one plugin instance may use, in MiB.
    #[arg(long, env = config::MEMORY_LIMIT_MB_ENV, default_value_t = config::DEFAULT_MEMORY_LIMIT_MB)]
    memory_limit_mb: u64,
    /// Largest request frame, in bytes.
    #[arg(long, env = config::MAX_FRAME_BYTES_ENV, default_value_t = config::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// How deep commands may call commands.
    #[arg(long, env = config::MAX_CALL_DEPTH_ENV, default_value_t = config::DEFAULT_MAX_CALL_DEPTH)]
    max_call_depth: u32,
    /// Plugin instances that may exist at once.
    #[arg(long, env = config::MAX_INSTANCES_ENV, default_value_t = config::DEFAULT_MAX_INSTANCES)]
    max_instances: u32,
    /// Directory of compiled components kept between runs [default: $XDG_CACHE_HOME/weft/compiled,
    /// else ~/.cache/weft/compiled].
    #[arg(long, env = "WEFT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// A node to join the fabric through (its client URL); repeatable.
    #[arg(long = "seed", env = "WEFT_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// The cluster this node belongs to; nodes of other clusters are refused unless --bridge
    /// names them.
    #[arg(long, env = "WEFT_CLUSTER", default_value = "default")]
    cluster: String,
    /// Another cluster this node links to as a gateway (a --seed of that cluster, or a node of
    /// it dialing in); repeatable; `*`: any cluster [default: none, the cluster is isolated].
    #[arg(long = "bridge", env = "WEFT_BRIDGE", value_delimiter = ',')]
    bridge: Vec<String>,
    /// Secret proven on links to other clusters [default: the cluster secret].
    #[arg(long, env = "WEFT_GATEWAY_SECRET", hide_env_values = true)]
    gateway_secret: Option<String>,
    /// The node's tier (0: the top). A gateway link to a higher tier brings a default route
    /// down with the summaries: what this cluster does not know goes up (leafnode style).
    #[arg(long, env = "WEFT_TIER", default_value_t = 0)]
    tier: u8,
    /// A region label, shown by `weft peers` and /status.
    #[arg(long, env = "WEFT_REGION")]
    region: Option<String>,
    /// Cluster boundaries a call may cross; routes are advertised one boundary farther, so a
    /// command just out of reach gets an error naming the budget.
    #[arg(long, env = "WEFT_HOP_BUDGET", default_value_t = weft::fabric::wire::DEFAULT_HOP_BUDGET)]
    hop_budget: u8,
    /// Secret shared by the cluster's nodes; proven in every peer handshake, never sent.
    #[arg(long, env = "WEFT_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// The node's identity [default: a random id kept in DATA_DIR/node-id].
    #[arg(long, env = "WEFT_NODE_ID")]
    node_id: Option<String>,
    /// Where the node keeps its identity [default: $XDG_DATA_HOME/weft, else ~/.local/share/weft].
    #[arg(long, env = "WEFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The URL peers and clients reach this node at [default: the listener's address].
    #[arg(long, env = "WEFT_ADVERTISE")]
    advertise: Option<String>,
    /// Fabrics up to this many nodes form a full mesh; larger ones a partial view (each node
    /// links to a few others and calls travel through them). A node dials at most this many
    /// peers and accepts up to twice as many links.
    #[arg(long, env = "WEFT_MAX_MESH", default_value_t = 32)]
    max_mesh: usize,
    /// Accept `weft.fault` calls that cut and restore peer links (for tests; never in production).
    #[arg(long, hide = true)]
    fault_injection: bool,
    /// Serve the operator endpoints (/healthz, /readyz, /metrics, /status) over HTTP here; the
    /// address is printed as `WEFT_HTTP=` before `WEFT_URL=`.
    #[arg(long, env = "WEFT_HTTP")]
    http: Option<SocketAddr>,
    /// Serve `wss://` with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "WEFT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WEFT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that peers' certificates must chain to; dialed `wss://` peers are checked
    /// against it and nothing else.
    #[arg(long, env = "WEFT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS between peers: present --tls-cert when dialing, and refuse peers that show no
    /// certificate signed by --tls-ca (clients still need none).
    #[arg(long, env = "WEFT_PEER_MTLS")]
    peer_mtls: bool,
    /// A TOML file of tenants (ids, hashed API tokens, limits). With it, clients must send a
    /// tenant's token and see only its commands and public ones [default: an open node].
    #[arg(long, env = "WEFT_TENANTS")]
    tenants: Option<PathBuf>,
    /// Compile every plugin at every load; keep nothing on disk.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// How plugins missing from the compile cache are compiled: `tiered` (Winch first, so they
    /// serve at once, then Cranelift's faster code in the background) or `optimized` (Cranelift
    /// before serving).
    #[arg(long, env = "WEFT_COMPILATION", default_value = "tiered")]
    compilation: weft::runtime::Compilation,
    /// Replicate plugins of other nodes that --replicate-accept accepts: `eager` (as soon as the
    /// catalog shows them) or `on-demand` (at the first call no local plugin serves).
    #[arg(long, env = "WEFT_REPLICATE", default_value = "off")]
    replicate: weft::replication::Mode,
    /// What to replicate: `*`, `tenant:ID`, `plugin:NAME` or `tag:TAG`; repeatable [default:
    /// nothing].
    #[arg(long = "replicate-accept", env = "WEFT_REPLICATE_ACCEPT", value_delimiter = ',')]
    replicate_accept: Vec<weft::replication::Accept>,
    /// Connections (clients and peers) held at once; new ones beyond it are closed at once.
    #[arg(long, env = config::MAX_CONNECTIONS_ENV, default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// How long a new connection may take to finish its TLS and WebSocket handshakes, in ms.
    #[arg(long, env = config::HANDSHAKE_TIMEOUT_MS_ENV, default_value_t = config::DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    handshake_timeout_ms: u64,
    /// Calls a warm instance serves before it is replaced (1 = a fresh instance per call).
    #[arg(long, env = config::INSTANCE_REUSE_ENV, default_value_t = config::DEFAULT_INSTANCE_REUSE)]
    instance_reuse: u32,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        call_deadline: Duration::from_millis(args.call_deadline_ms.max(1)),
        memory_limit_bytes: usize::try_from(args.memory_limit_mb.max(1) << 20)
            .context("--memory-limit-mb is too large")?,
        max_frame_bytes: args.max_frame_bytes.max(1024),
        max_call_depth: args.max_call_depth,
        max_instances: args.max_instances.max(2),
        instance_reuse: args.instance_reuse.max(1),
        max_connections: args.max_connections.max(1),
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
    };
    let resources = args.resources.into_iter().filter(|r| !r.is_empty()).collect();
    let tenants = match &args.tenants {
        Some(path) => {
            let tenants = weft::tenancy::Tenants::load(path).context("loading the tenants")?;
            tracing::info!(tenants = ?tenants.ids(), "clients must authenticate as a tenant");
            Some(std::sync::Arc::new(tenants))
        }
        None => None,
    };
    let cache_dir = match (args.no_cache, args.cache_dir) {
        (true, _) => None,
        (false, Some(dir)) => Some(dir),
        (false, None) => super::default_cache_dir(),
    };
    let data_dir = args.data_dir.or_else(super::default_data_dir);
    let node_id = match args.node_id {
        Some(id) => id,
        None => persistent_node_id(data_dir.as_deref())?,
    };
    weft::otlp::set_node(&node_id);
    let key = match &data_dir {
        Some(dir) => NodeKey::load_or_create(dir).context("keeping the node's key")?,
        None => {
            tracing::warn!("no data directory: this node's key lasts until the node stops (--data-dir)");
            NodeKey::generate()
        }
    };
    let fabric = FabricConfig {
        node_id,
        key,
        cluster: args.cluster,
        secret: args.cluster_secret.unwrap_or_default().into_bytes(),
        advertise_url: args.advertise.unwrap_or_default(),
        seeds: args.seeds.into_iter().filter(|s| !s.is_empty()).collect(),
        max_mesh: args.max_mesh.max(1),
        timing: Timing::default(),
        fault_injection: args.fault_injection,
        tls: None,
        bridge: weft::fabric::federation::Bridging::from_list(&args.bridge),
        gateway_secret: args.gateway_secret.map(String::into_bytes),
        tier: args.tier,
        region: args.region,
        hop_budget: args.hop_budget,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            weft::net::tls::Tls::load(&weft::net::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: args.tls_ca.clone(),
                peer_mtls: args.peer_mtls,
            })
            .context("loading the TLS certificate")?,
        ),
        (None, None) if args.tls_ca.is_none() && !args.peer_mtls => None,
        _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key (--tls-ca and --peer-mtls only with them)"),
    };
    tracing::info!(node = %fabric.node_id, cluster = %fabric.cluster, seeds = ?fabric.seeds, "joining the fabric");
    let stop = super::stop_signal()?;
    let node = Node::start(NodeConfig {
        listen: args.listen,
        plugins: args.plugins,
        resources,
        limits,
        cache_dir,
        compilation: args.compilation,
        fabric: Some(fabric),
        tenants,
        tls,
        http: args.http,
        replication: weft::replication::Policy {
            mode: args.replicate,
            accept: args.replicate_accept,
            store: data_dir.as_ref().map(|d| d.join("modules")),
        },
    })
    .await?;
    {
        let mut out = std::io::stdout().lock();
        if let Some(http) = node.http_url() {
            writeln!(out, "WEFT_HTTP={http}").context("writing to standard output")?;
        }
        writeln!(out, "WEFT_URL={}", node.url()).context("writing to standard output")?;
        out.flush().context("writing to standard output")?;
    }
    stop.await;
    tracing::info!("stopping");
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The node id kept in `dir/node-id`, created (random) on first use.
fn persistent_node_id(dir: Option<&std::path::Path>) -> anyhow::Result<String> {
    let random = || {
        let nonce = weft::fabric::auth::nonce();
        nonce[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let Some(dir) = dir else {
        let id = random();
        tracing::warn!(node = %id, "no data directory: this node id lasts until the node stops (--node-id, --data-dir)");
        return Ok(id);
    };
    let file = dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = random();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&file, format!("{id}\n")).with_context(|| format!("writing {}", file.display()))?;
    Ok(id)
}
