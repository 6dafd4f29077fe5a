//! Local fabrics in the shapes of MPREG's federation guide, built from real node processes on
//! loopback, and the guide's metrics measured on them: connection efficiency, function
//! propagation and setup time, plus propagation time, the latency of a call between the
//! farthest pair, and (for the self-healing pattern) heal time after each partition.
//!
//! - `mesh`: one cluster; seeds in a chain, a full mesh by gossip.
//! - `regions`: three clusters of three (one per region), meshed inside; one gateway per
//!   region, bridged to the other regions.
//! - `hierarchy`: local clusters (tier 2) under regional ones (tier 1) under a global one
//!   (tier 0); gateways link only upwards.
//! - `datacenters`: clusters of 3, 3 and 2 nodes; their gateways linked with 80, 150 and 120 ms
//!   of round trip added (dc-1↔dc-2, dc-1↔dc-3, dc-2↔dc-3).
//! - `self-healing`: one cluster of 10, cut into 5-5, 7-3 and 6-2-2 (links really cut), each
//!   side checked to serve what it has, then healed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::net::Client;
use crate::node::NodeProcess;

/// How long each phase may take before it is reported incomplete.
const PHASE_LIMIT: Duration = Duration::from_secs(20);

/// How often nodes are asked whether a phase is complete.
const POLL: Duration = Duration::from_millis(10);

/// Calls timed between the farthest pair.
const TIMED_CALLS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    Mesh,
    Regions,
    Hierarchy,
    Datacenters,
    SelfHealing,
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "mesh" => Pattern::Mesh,
            "regions" => Pattern::Regions,
            "hierarchy" => Pattern::Hierarchy,
            "datacenters" => Pattern::Datacenters,
            "self-healing" => Pattern::SelfHealing,
            other => {
                return Err(format!(
                    "unknown pattern `{other}` (mesh, regions, hierarchy, datacenters, self-healing)"
                ))
            }
        })
    }
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Mesh => "mesh",
            Pattern::Regions => "regions",
            Pattern::Hierarchy => "hierarchy",
            Pattern::Datacenters => "datacenters",
            Pattern::SelfHealing => "self-healing",
        }
    }

    /// The reference's size for the pattern.
    pub fn default_nodes(self) -> usize {
        match self {
            Pattern::Mesh | Pattern::SelfHealing => 10,
            Pattern::Regions => 9,
            Pattern::Hierarchy => 7,
            Pattern::Datacenters => 8,
        }
    }

    /// The reference's published figures: connection efficiency %, function propagation %,
    /// setup time in ms.
    pub fn published(self) -> (f64, f64, f64) {
        match self {
            Pattern::Mesh => (83.0, 100.0, 1247.0),
            Pattern::Regions => (67.0, 83.0, 1789.0),
            Pattern::Hierarchy => (57.0, 71.0, 2156.0),
            Pattern::Datacenters => (30.0, 75.0, 3421.0),
            Pattern::SelfHealing => (46.0, 80.0, 2987.0),
        }
    }
}

/// One node of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub cluster: String,
    pub tier: u8,
    pub region: Option<String>,
    /// Clusters it bridges to.
    pub bridge: Vec<String>,
    /// Nodes (indexes) it seeds from.
    pub seeds: Vec<usize>,
}

/// A topology to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub pattern: Pattern,
    pub nodes: Vec<NodePlan>,
    /// Round trip added between two gateway nodes, in ms.
    pub delays: Vec<(usize, usize, u64)>,
    /// Partitions to cut and heal, as group sizes.
    pub partitions: Vec<Vec<usize>>,
    /// Nodes that serve the plugins from the start.
    pub serving: Vec<usize>,
    /// The node the probe plugin is dropped on, and the one farthest from it that calls it.
    pub far: usize,
    pub near: usize,
}

impl Plan {
    /// The plan of `pattern` with `nodes` nodes (the reference's size when `None`).
    pub fn new(pattern: Pattern, nodes: Option<usize>) -> anyhow::Result<Plan> {
        let n = nodes.unwrap_or(pattern.default_nodes());
        let mut plan = Plan {
            pattern,
            nodes: Vec::new(),
            delays: Vec::new(),
            partitions: Vec::new(),
            serving: Vec::new(),
            far: 0,
            near: 0,
        };
        match pattern {
            Pattern::Mesh | Pattern::SelfHealing => {
                if n < 2 {
                    bail!("the {} pattern needs 2 nodes at least", pattern.name());
                }
                let cluster = pattern.name().to_string();
                for i in 0..n {
                    let seeds = if i == 0 { Vec::new() } else { vec![i - 1] };
                    plan.add(&cluster, i + 1, 0, None, Vec::new(), seeds);
                }
                plan.serving = if pattern == Pattern::SelfHealing {
                    (0..n).collect()
                } else {
                    vec![0]
                };
                plan.far = n - 1;
                if pattern == Pattern::SelfHealing {
                    if n < 5 {
                        bail!("the self-healing pattern needs 5 nodes at least");
                    }
                    let split = |shares: &[usize]| -> Vec<usize> {
                        let mut sizes: Vec<usize> = shares.iter().map(|s| (n * s / 10).max(1)).collect();
                        let rest = n - sizes[1..].iter().sum::<usize>();
                        sizes[0] = rest;
                        sizes
                    };
                    plan.partitions = vec![split(&[5, 5]), split(&[7, 3]), split(&[6, 2, 2])];
                }
            }
            Pattern::Regions => {
                if n < 3 || !n.is_multiple_of(3) {
                    bail!("the regions pattern takes a multiple of 3 nodes (3 regions)");
                }
                plan.clusters_with_gateways(&[n / 3; 3], "region", |a, b| a != b, |_| 0);
                plan.far = n - 1;
                plan.near = n / 3 - 1;
            }
            Pattern::Datacenters => {
                if n < 3 {
                    bail!("the datacenters pattern needs 3 nodes at least");
                }
                let small = (n * 2 / 8).max(1);
                let first = (n - small).div_ceil(2);
                let sizes = [first, n - small - first, small];
                if sizes.contains(&0) {
                    bail!("the datacenters pattern needs 3 nodes at least");
                }
                let gateways = plan.clusters_with_gateways(&sizes, "dc", |a, b| a != b, |_| 0);
                plan.delays = vec![
                    (gateways[0], gateways[1], 80),
                    (gateways[0], gateways[2], 150),
                    (gateways[1], gateways[2], 120),
                ];
                plan.far = n - 1;
                plan.near = sizes[0] - 1;
            }
            Pattern::Hierarchy => {
                if n < 7 {
                    bail!("the hierarchy pattern needs 7 nodes at least (4 local, 2 regional, 1 global)");
                }
                let local = ((n * 4 + 12) / 24).max(1);
                let regional = ((n * 3 + 12) / 24).max(1);
                let global = n
                    .checked_sub(4 * local + 2 * regional)
                    .filter(|g| *g >= 1)
                    .context("the hierarchy pattern cannot split that many nodes")?;
                // Clusters: global, regional-1..2, local-1..4. Local k sits under regional
                // (k+1)/2; every regional under global.
                let mut sizes = vec![global, regional, regional];
                sizes.extend([local; 4]);
                let parent = |c: usize| match c {
                    0 => None,
                    1 | 2 => Some(0),
                    local => Some(1 + (local - 3) / 2),
                };
                let linked = |a: usize, b: usize| parent(a) == Some(b) || parent(b) == Some(a);
                let tier = |c: usize| match c {
                    0 => 0,
                    1 | 2 => 1,
                    _ => 2,
                };
                plan.clusters_with_gateways(&sizes, "", linked, tier);
                // The probe lands in the last local cluster and is called from the first.
                plan.far = n - 1;
                plan.near = global + 2 * regional + local - 1;
                plan.serving = vec![0];
                return Ok(plan);
            }
        }
        if plan.serving.is_empty() {
            plan.serving = vec![0];
        }
        Ok(plan)
    }

    fn add(
        &mut self,
        cluster: &str,
        k: usize,
        tier: u8,
        region: Option<String>,
        bridge: Vec<String>,
        seeds: Vec<usize>,
    ) {
        self.nodes.push(NodePlan {
            name: format!("{cluster}-{k}"),
            cluster: cluster.to_string(),
            tier,
            region,
            bridge,
            seeds,
        });
    }

    /// Clusters of `sizes` nodes (named `PREFIX-i`, or by tier for the hierarchy), meshed
    /// inside from their first node; first nodes are gateways, linked where `linked(a, b)`
    /// (the later cluster's gateway seeds the earlier's). Returns the gateways.
    fn clusters_with_gateways(
        &mut self,
        sizes: &[usize],
        prefix: &str,
        linked: impl Fn(usize, usize) -> bool,
        tier: impl Fn(usize) -> u8,
    ) -> Vec<usize> {
        let name = |c: usize| -> String {
            if !prefix.is_empty() {
                return format!("{prefix}-{}", c + 1);
            }
            match c {
                0 => "global".to_string(),
                1 | 2 => format!("regional-{c}"),
                local => format!("local-{}", local - 2),
            }
        };
        let mut gateways = Vec::new();
        for (c, size) in sizes.iter().enumerate() {
            let cluster = name(c);
            let first = self.nodes.len();
            let bridge: Vec<String> = (0..sizes.len())
                .filter(|o| *o != c && linked(c, *o))
                .map(name)
                .collect();
            let seeds: Vec<usize> = gateways
                .iter()
                .enumerate()
                .filter(|(o, _)| linked(c, *o))
                .map(|(_, g)| *g)
                .collect();
            let region = (prefix == "region").then(|| cluster.clone());
            self.add(&cluster, 1, tier(c), region.clone(), bridge, seeds);
            for k in 1..*size {
                self.add(&cluster, k + 1, tier(c), region.clone(), Vec::new(), vec![first]);
            }
            gateways.push(first);
        }
        gateways
    }

    /// The links each node should have once built: the rest of its cluster, and its gateway
    /// links.
    pub fn expected_links(&self) -> Vec<usize> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for node in &self.nodes {
            *counts.entry(node.cluster.as_str()).or_default() += 1;
        }
        let mut links: Vec<usize> = self.nodes.iter().map(|n| counts[n.cluster.as_str()] - 1).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for seed in &node.seeds {
                if self.nodes[*seed].cluster != node.cluster {
                    links[i] += 1;
                    links[*seed] += 1;
                }
            }
        }
        links
    }

    pub fn clusters(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.cluster.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// What `up` needs besides the plan.
pub struct Options {
    pub dir: PathBuf,
    /// The `weft` binary the nodes run.
    pub exe: PathBuf,
    /// Components the serving nodes start with.
    pub plugins: Vec<PathBuf>,
    /// The component dropped on the far node to measure propagation, and the call made to it
    /// from the near node.
    pub probe: PathBuf,
    pub probe_call: String,
    pub probe_args: Vec<Value>,
    /// Shared compile cache.
    pub cache_dir: Option<PathBuf>,
}

/// The heal of one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heal {
    pub groups: Vec<usize>,
    /// Each side held the others dead before the links were restored.
    pub formed: bool,
    /// Every node kept serving calls (from its own side) while cut off.
    pub served_while_cut: bool,
    /// From the links restored until every node links to and lists every other.
    pub heal_ms: f64,
    pub healed: bool,
}

/// A built topology and its measures (kept in `DIR/topology.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Built {
    pub plan: Plan,
    pub urls: Vec<String>,
    pub setup_ms: f64,
    /// Every node had its links and every command within the phase limit.
    pub complete: bool,
    pub links: usize,
    pub efficiency_pct: f64,
    pub propagation_pct: f64,
    pub propagation_ms: f64,
    pub probe_commands: Vec<String>,
    pub call: Option<CallFigures>,
    pub heals: Vec<Heal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallFigures {
    pub from: String,
    pub to: String,
    pub ok: usize,
    pub failed: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub answer: Value,
}

/// Running nodes of a topology; killed when dropped.
pub struct Running {
    pub built: Built,
    pub processes: Vec<NodeProcess>,
}

/// Free loopback ports, one per node (bound and released; the nodes bind them again).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<Vec<_>, std::io::Error>>()
        .context("reading a free port")
}

/// Writes `from` into `dir` under its file name, by write-then-rename.
fn install(dir: &Path, from: &Path) -> anyhow::Result<()> {
    let name = from.file_name().context("a plugin path without a file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    std::fs::rename(&tmp, dir.join(name)).context("renaming a plugin into place")?;
    Ok(())
}

/// One node's view: links (peers linked plus gateways) and the commands its catalog lists.
struct View {
    links: usize,
    commands: BTreeSet<String>,
    /// Peers it holds alive, and dead.
    alive: usize,
    dead: usize,
}

async fn view(client: &Client) -> anyhow::Result<View> {
    let peers = client.call("weft.peers", Vec::new(), Map::new(), &[]).await?;
    let catalog = client.call("weft.catalog", Vec::new(), Map::new(), &[]).await?;
    let rows = peers["peers"].as_array().cloned().unwrap_or_default();
    let linked = rows.iter().filter(|p| p["linked"] == true).count();
    let alive = rows.iter().filter(|p| p["state"] == "alive").count();
    let dead = rows.iter().filter(|p| p["state"] == "dead").count();
    let gateways = peers["gateways"].as_array().map_or(0, Vec::len);
    let commands = catalog
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["command"].as_str().map(str::to_string))
        .collect();
    Ok(View {
        links: linked + gateways,
        commands,
        alive,
        dead,
    })
}

/// Polls every node until `done(i, view)` holds for each, or the phase limit passes; returns
/// whether all held and when the last one did.
async fn until_all(clients: &[Client], done: impl Fn(usize, &View) -> bool) -> (bool, Instant) {
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut pending: Vec<usize> = (0..clients.len()).collect();
    let mut last = Instant::now();
    while !pending.is_empty() && Instant::now() < deadline {
        let checks = pending.iter().map(|i| view(&clients[*i]));
        let views = futures_util::future::join_all(checks).await;
        let now = Instant::now();
        let mut still = Vec::new();
        for (i, view) in pending.iter().zip(views) {
            match view {
                Ok(view) if done(*i, &view) => last = now,
                _ => still.push(*i),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    (pending.is_empty(), last)
}

async fn fault(client: &Client, action: &str, nodes: &[String]) -> anyhow::Result<()> {
    client
        .call("weft.fault", vec![json!(action), json!(nodes)], Map::new(), &[])
        .await
        .with_context(|| format!("weft.fault {action}"))?;
    Ok(())
}

/// Starts the plan's nodes, waits until the topology is built, then measures it.
pub async fn up(plan: Plan, options: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Running> {
    let n = plan.nodes.len();
    let ports = free_ports(n)?;
    let urls: Vec<String> = ports.iter().map(|p| format!("ws://127.0.0.1:{p}")).collect();
    let mut spawns = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        let home = options.dir.join(&node.name);
        let plugins = home.join("plugins");
        std::fs::create_dir_all(&plugins).with_context(|| format!("creating {}", plugins.display()))?;
        if plan.serving.contains(&i) {
            for plugin in &options.plugins {
                install(&plugins, plugin)?;
            }
        }
        let mut args = vec![
            "node".to_string(),
            format!("--listen=127.0.0.1:{}", ports[i]),
            format!("--plugins={}", plugins.display()),
            format!("--data-dir={}", home.join("data").display()),
            format!("--node-id={}", node.name),
            format!("--cluster={}", node.cluster),
            format!("--tier={}", node.tier),
            "--cluster-secret=weft-topology".to_string(),
            "--fault-injection".to_string(),
        ];
        match &options.cache_dir {
            Some(cache) => args.push(format!("--cache-dir={}", cache.display())),
            None => args.push("--no-cache".into()),
        }
        args.extend(node.region.iter().map(|r| format!("--region={r}")));
        args.extend(node.bridge.iter().map(|b| format!("--bridge={b}")));
        args.extend(node.seeds.iter().map(|s| format!("--seed={}", urls[*s])));
        let log = std::fs::File::create(options.dir.join(format!("{}.log", node.name)))
            .context("creating a node's log file")?;
        let exe = options.exe.clone();
        spawns.push(async move { NodeProcess::spawn_with(&exe, &args, Duration::from_secs(30), &[], Some(log)).await });
    }
    progress(&format!("starting {n} nodes"));
    let started = Instant::now();
    let processes = futures_util::future::join_all(spawns)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut clients = Vec::with_capacity(n);
    for process in &processes {
        clients.push(Client::connect(process.url()).await.context("connecting to a node")?);
    }
    // Built: every node has its links and lists every command served anywhere.
    progress("linking and propagating");
    let expected = plan.expected_links();
    let mut served = BTreeSet::new();
    for i in &plan.serving {
        let (_, _) = until_all(&clients[*i..=*i], |_, v| !v.commands.is_empty()).await;
        served.extend(view(&clients[*i]).await?.commands);
    }
    let (complete, last) = until_all(&clients, |i, v| {
        v.links >= expected[i] && served.iter().all(|c| v.commands.contains(c))
    })
    .await;
    let setup_ms = last.duration_since(started).as_secs_f64() * 1000.0;
    let links: usize = {
        let views = futures_util::future::join_all(clients.iter().map(view)).await;
        views.into_iter().filter_map(Result::ok).map(|v| v.links).sum()
    };
    let efficiency_pct = if n > 1 {
        100.0 * links as f64 / (n * (n - 1)) as f64
    } else {
        100.0
    };

    if !plan.delays.is_empty() {
        progress("adding latency between datacenters");
        for (a, b, ms) in &plan.delays {
            // Half each way: the round trip grows by `ms`.
            fault(
                &clients[*a],
                &format!("delay:{}", ms / 2),
                &[plan.nodes[*b].name.clone()],
            )
            .await?;
            fault(
                &clients[*b],
                &format!("delay:{}", ms - ms / 2),
                &[plan.nodes[*a].name.clone()],
            )
            .await?;
        }
        // Round trips are measured by pings (every 500 ms) and re-advertised.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    let mut heals = Vec::new();
    for groups in &plan.partitions {
        progress(&format!("partition {}", sizes_label(groups)));
        heals.push(partition(&plan, &clients, groups, &served).await?);
    }

    progress("propagating a new plugin");
    let before = view(&clients[plan.far]).await?.commands;
    let far_plugins = options.dir.join(&plan.nodes[plan.far].name).join("plugins");
    let dropped = Instant::now();
    install(&far_plugins, &options.probe)?;
    let (_, _) = until_all(&clients[plan.far..=plan.far], |_, v| v.commands.len() > before.len()).await;
    let probe_commands: Vec<String> = view(&clients[plan.far])
        .await?
        .commands
        .difference(&before)
        .cloned()
        .collect();
    let (_, last) = until_all(&clients, |_, v| probe_commands.iter().all(|c| v.commands.contains(c))).await;
    let propagation_ms = last.duration_since(dropped).as_secs_f64() * 1000.0;
    let mut reached = 0;
    for client in &clients {
        if let Ok(v) = view(client).await {
            if !probe_commands.is_empty() && probe_commands.iter().all(|c| v.commands.contains(c)) {
                reached += 1;
            }
        }
    }
    let propagation_pct = 100.0 * reached as f64 / n as f64;
    let call = time_calls(&plan, &clients, options).await;
    let built = Built {
        urls,
        setup_ms,
        complete,
        links,
        efficiency_pct,
        propagation_pct,
        propagation_ms,
        probe_commands,
        call: Some(call),
        heals,
        plan,
    };
    Ok(Running { built, processes })
}

fn sizes_label(groups: &[usize]) -> String {
    groups.iter().map(usize::to_string).collect::<Vec<_>>().join("-")
}

/// Cuts the fabric into `groups` (every link between groups refused), waits until each side
/// holds the others dead, checks every node keeps serving from its own side, restores the links
/// and times the heal.
async fn partition(
    plan: &Plan,
    clients: &[Client],
    groups: &[usize],
    served: &BTreeSet<String>,
) -> anyhow::Result<Heal> {
    let n = plan.nodes.len();
    let mut group_of = Vec::with_capacity(n);
    for (g, size) in groups.iter().enumerate() {
        group_of.extend(std::iter::repeat_n(g, *size));
    }
    let names: Vec<String> = plan.nodes.iter().map(|p| p.name.clone()).collect();
    for i in 0..n {
        let others: Vec<String> = (0..n)
            .filter(|j| group_of[*j] != group_of[i])
            .map(|j| names[j].clone())
            .collect();
        fault(&clients[i], "cut", &others).await?;
    }
    // Each side declares the others dead (their commands withdrawn), and serves what it has.
    let size_of = |i: usize| groups[group_of[i]];
    let (formed, _) = until_all(clients, |i, v| {
        v.alive == size_of(i) - 1 && v.links == size_of(i) - 1 && v.dead == n - size_of(i)
    })
    .await;
    let mut served_while_cut = true;
    let command = served.iter().find(|c| c.starts_with("math.")).cloned();
    if let Some(command) = command {
        for client in clients {
            let answer = client.call(&command, vec![json!(1), json!(2)], Map::new(), &[]).await;
            served_while_cut &= answer.is_ok();
        }
    }
    for (i, client) in clients.iter().enumerate() {
        let others: Vec<String> = (0..n).filter(|j| *j != i).map(|j| names[j].clone()).collect();
        fault(client, "restore", &others).await?;
    }
    let restored = Instant::now();
    let (healed, last) = until_all(clients, |_, v| v.alive == n - 1 && v.links == n - 1).await;
    Ok(Heal {
        groups: groups.to_vec(),
        formed,
        served_while_cut,
        heal_ms: last.duration_since(restored).as_secs_f64() * 1000.0,
        healed,
    })
}

/// Calls the probe from the near node: how many succeed, and their latency.
async fn time_calls(plan: &Plan, clients: &[Client], options: &Options) -> CallFigures {
    let client = &clients[plan.near];
    let mut times = Vec::with_capacity(TIMED_CALLS);
    let (mut ok, mut failed, mut answer) = (0, 0, Value::Null);
    for _ in 0..TIMED_CALLS {
        let at = std::time::Instant::now();
        match client
            .call(&options.probe_call, options.probe_args.clone(), Map::new(), &[])
            .await
        {
            Ok(value) => {
                times.push(at.elapsed().as_micros() as u64);
                ok += 1;
                answer = value;
            }
            Err(e) => {
                failed += 1;
                answer = json!(e.to_string());
            }
        }
    }
    times.sort_unstable();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .copied()
    };
    CallFigures {
        from: plan.nodes[plan.near].name.clone(),
        to: plan.nodes[plan.far].name.clone(),
        ok,
        failed,
        p50_us: at(0.5).unwrap_or(0),
        p99_us: at(0.99).unwrap_or(0),
        answer,
    }
}

/// The report of a built topology, as a table beside the reference's figures.
pub fn report(built: &Built) -> String {
    let pattern = built.plan.pattern;
    let (eff, prop, setup) = pattern.published();
    let mut out = String::new();
    out.push_str(&format!(
        "pattern {}: {} nodes in {} clusters, {} links\n",
        pattern.name(),
        built.plan.nodes.len(),
        built.plan.clusters(),
        built.links
    ));
    out.push_str("                        weft        reference\n");
    out.push_str(&format!(
        "connection efficiency   {:>6.1} %    {eff:>6.0} %\n",
        built.efficiency_pct
    ));
    out.push_str(&format!(
        "function propagation    {:>6.1} %    {prop:>6.0} %\n",
        built.propagation_pct
    ));
    out.push_str(&format!(
        "setup time              {:>6.0} ms   {setup:>6.0} ms{}\n",
        built.setup_ms,
        if built.complete { "" } else { "  (incomplete)" }
    ));
    out.push_str(&format!(
        "propagation time        {:>6.0} ms   (plugin {} dropped on {})\n",
        built.propagation_ms,
        built.probe_commands.join(","),
        built.plan.nodes[built.plan.far].name
    ));
    if let Some(call) = &built.call {
        out.push_str(&format!(
            "call {} -> {}: {} ok, {} failed, p50 {:.2} ms, p99 {:.2} ms\n",
            call.from,
            call.to,
            call.ok,
            call.failed,
            call.p50_us as f64 / 1000.0,
            call.p99_us as f64 / 1000.0
        ));
    }
    for (a, b, ms) in &built.plan.delays {
        out.push_str(&format!(
            "added round trip {} <-> {}: {ms} ms\n",
            built.plan.nodes[*a].cluster, built.plan.nodes[*b].cluster
        ));
    }
    for heal in &built.heals {
        out.push_str(&format!(
            "partition {}{}: served while cut {}, heal {:.0} ms{}\n",
            sizes_label(&heal.groups),
            if heal.formed { "" } else { " (never fully formed)" },
            if heal.served_while_cut { "yes" } else { "NO" },
            heal.heal_ms,
            if heal.healed { "" } else { " (did not heal)" }
        ));
    }
    out
}

/// Re-measures a running topology from its `topology.json`: links, efficiency and the
/// probe's propagation now.
pub async fn remeasure(mut built: Built) -> anyhow::Result<Built> {
    let n = built.urls.len();
    let mut clients = Vec::with_capacity(n);
    for url in &built.urls {
        clients.push(Client::connect(url).await.with_context(|| {
            format!("the topology's node at {url} does not answer (is `weft topology up` running?)")
        })?);
    }
    let mut links = 0;
    let mut reached = 0;
    for client in &clients {
        let v = view(client).await?;
        links += v.links;
        if !built.probe_commands.is_empty() && built.probe_commands.iter().all(|c| v.commands.contains(c)) {
            reached += 1;
        }
    }
    built.links = links;
    built.efficiency_pct = if n > 1 {
        100.0 * links as f64 / (n * (n - 1)) as f64
    } else {
        100.0
    };
    built.propagation_pct = 100.0 * reached as f64 / n.max(1) as f64;
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_reference_shapes() {
        let hierarchy = Plan::new(Pattern::Hierarchy, None).unwrap();
        assert_eq!(hierarchy.nodes.len(), 7);
        assert_eq!(hierarchy.clusters(), 7);
        let local4 = &hierarchy.nodes[hierarchy.far];
        assert_eq!((local4.cluster.as_str(), local4.tier), ("local-4", 2));
        assert_eq!(hierarchy.nodes[local4.seeds[0]].cluster, "regional-2");
        assert_eq!(hierarchy.nodes[hierarchy.near].cluster, "local-1");
        let big = Plan::new(Pattern::Hierarchy, Some(24)).unwrap();
        assert_eq!(big.nodes.len(), 24);
        assert_eq!(big.nodes.iter().filter(|n| n.cluster == "local-2").count(), 4);

        let dcs = Plan::new(Pattern::Datacenters, None).unwrap();
        let sizes: Vec<usize> = ["dc-1", "dc-2", "dc-3"]
            .iter()
            .map(|c| dcs.nodes.iter().filter(|n| n.cluster == *c).count())
            .collect();
        assert_eq!(sizes, [3, 3, 2]);
        assert_eq!(dcs.delays.len(), 3);

        let regions = Plan::new(Pattern::Regions, None).unwrap();
        assert_eq!(regions.expected_links(), [4, 2, 2, 4, 2, 2, 4, 2, 2]);
        let healing = Plan::new(Pattern::SelfHealing, None).unwrap();
        assert_eq!(healing.partitions, [vec![5, 5], vec![7, 3], vec![6, 2, 2]]);
        assert!(Plan::new(Pattern::Regions, Some(10)).is_err());
    }
}
