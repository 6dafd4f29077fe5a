//! Fabrics drawn at random: 50 to 100 real `weft node` processes on loopback, joined through a
//! seed graph drawn from a seed (a chain, a star, a ring, random earlier nodes, or a few shared
//! seeds), started one after another, all at once or staggered, with or without a cluster
//! secret, `--max-mesh` 8, 16 or 32. Every drawn fabric must converge: every node sees every
//! other alive, and a plugin dropped on the last node becomes callable from every node.
//!
//! `WEFT_DRAWS` sets how many fabrics a run draws (default 2; 1 when `WEFT_DRAW_SEED` is set).
//! Every draw prints its seed, and every failure names it: `WEFT_DRAW_SEED=SEED` draws that
//! fabric again (`docs/reliability.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::{install_plugin, no_kwargs, plugin_file};
use tokio::time::Instant;
use weft::net::{Client, ClientError};
use weft::node::NodeProcess;

/// How long every node may take to see every other alive, once all are started.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long the dropped plugin may take to be callable from every node.
const SPREAD: Duration = Duration::from_secs(30);
/// How long one node may take to print its URL.
const START: Duration = Duration::from_secs(60);
/// How long one connection or call of the checker may take.
const ASK: Duration = Duration::from_secs(5);
/// The pause between two rounds of polling.
const POLL: Duration = Duration::from_millis(250);
/// How often a wait prints where it stands.
const PROGRESS: Duration = Duration::from_secs(5);

/// xorshift64, as in `chaos_fabric.rs`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut rng = Rng(seed.max(1));
        // Small seeds give small first numbers: stir them.
        for _ in 0..8 {
            rng.next();
        }
        rng
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A number in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }
}

/// Which nodes each node is given as `--seed`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seeding {
    /// Node i seeds from node i-1.
    Chain,
    /// Every node seeds from node 0.
    Star,
    /// Node i seeds from node i-1, and the last node also from node 0 (its (i+1) mod N, already
    /// started), closing the ring.
    Ring,
    /// Every node seeds from 1–3 random earlier nodes.
    Random,
    /// Every node seeds from 2–3 of the first three nodes (the first three from each other).
    Several,
}

impl Seeding {
    const ALL: [Seeding; 5] = [
        Seeding::Chain,
        Seeding::Star,
        Seeding::Ring,
        Seeding::Random,
        Seeding::Several,
    ];

    fn name(self) -> &'static str {
        match self {
            Seeding::Chain => "a chain of seeds",
            Seeding::Star => "a star (all seed node 0)",
            Seeding::Ring => "a ring of seeds",
            Seeding::Random => "1-3 random earlier seeds each",
            Seeding::Several => "2-3 of the first 3 nodes as seeds each",
        }
    }

    /// The seeds of node `i` of `n`.
    fn seeds_of(self, i: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
        let previous = if i == 0 { vec![] } else { vec![i - 1] };
        match self {
            Seeding::Chain => previous,
            Seeding::Star => {
                if i == 0 {
                    vec![]
                } else {
                    vec![0]
                }
            }
            Seeding::Ring => {
                let mut seeds = previous;
                if i == n - 1 && i > 1 {
                    seeds.push(0);
                }
                seeds
            }
            Seeding::Random => {
                if i == 0 {
                    return vec![];
                }
                let want = rng.between(1, 3).min(i);
                let mut seeds = Vec::new();
                while seeds.len() < want {
                    let pick = rng.below(i);
                    if !seeds.contains(&pick) {
                        seeds.push(pick);
                    }
                }
                seeds.sort_unstable();
                seeds
            }
            Seeding::Several => {
                let mut first: Vec<usize> = (0..3).filter(|j| *j != i).collect();
                for k in (1..first.len()).rev() {
                    first.swap(k, rng.below(k + 1));
                }
                let want = rng.between(2, 3).min(first.len());
                first.truncate(want);
                first.sort_unstable();
                first
            }
        }
    }
}

/// How the nodes are started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Start {
    /// Each node once the one before printed its URL.
    OneByOne,
    /// All spawned at once, then waited for.
    AllAtOnce,
    /// Spawned 0–50 ms apart, without waiting for each other.
    Staggered,
}

impl Start {
    const ALL: [Start; 3] = [Start::OneByOne, Start::AllAtOnce, Start::Staggered];

    fn name(self) -> &'static str {
        match self {
            Start::OneByOne => "started one after another",
            Start::AllAtOnce => "started all at once",
            Start::Staggered => "started 0-50 ms apart",
        }
    }
}

/// One fabric, all drawn from `seed`.
struct Draw {
    seed: u64,
    nodes: usize,
    seeding: Seeding,
    start: Start,
    secret: bool,
    max_mesh: usize,
    /// The nodes each node seeds from.
    seeds: Vec<Vec<usize>>,
    /// The pause before spawning each node (staggered starts only).
    pauses: Vec<Duration>,
}

impl Draw {
    fn new(seed: u64) -> Draw {
        let mut rng = Rng::new(seed);
        let nodes = rng.between(50, 100);
        let seeding = Seeding::ALL[rng.below(Seeding::ALL.len())];
        let start = Start::ALL[rng.below(Start::ALL.len())];
        let secret = rng.below(2) == 1;
        let max_mesh = [8, 16, 32][rng.below(3)];
        let seeds = (0..nodes).map(|i| seeding.seeds_of(i, nodes, &mut rng)).collect();
        let pauses = (0..nodes)
            .map(|i| {
                if start == Start::Staggered && i > 0 {
                    Duration::from_millis(rng.between(0, 50) as u64)
                } else {
                    Duration::ZERO
                }
            })
            .collect();
        Draw {
            seed,
            nodes,
            seeding,
            start,
            secret,
            max_mesh,
            seeds,
            pauses,
        }
    }
}

impl fmt::Display for Draw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "draw seed {} ({} nodes, {}, {}, --max-mesh {}, {}; replay: WEFT_DRAW_SEED={})",
            self.seed,
            self.nodes,
            self.seeding.name(),
            self.start.name(),
            self.max_mesh,
            if self.secret {
                "one cluster secret"
            } else {
                "no cluster secret"
            },
            self.seed
        )
    }
}

/// Free loopback ports, each held by a listener until its node is spawned (so no other socket
/// takes it meanwhile).
fn reserve_ports(n: usize) -> Vec<std::net::TcpListener> {
    (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect()
}

/// Waits `pause`, gives the port up and spawns the node, waiting for its URL.
async fn spawn(
    args: Vec<String>,
    log: std::fs::File,
    reservation: std::net::TcpListener,
    pause: Duration,
) -> Result<NodeProcess, String> {
    tokio::time::sleep(pause).await;
    drop(reservation);
    NodeProcess::spawn_with(Path::new(env!("CARGO_BIN_EXE_weft")), &args, START, &[], Some(log))
        .await
        .map_err(|e| format!("{e:#}"))
}

/// Calls `fun` on the node at `url` through the client in `slot` (connecting it first when
/// there is none, and dropping it when its connection failed); the error as text.
async fn ask(slot: &mut Option<Client>, url: &str, fun: &str, args: Vec<Value>) -> Result<Value, String> {
    let client = match slot.take() {
        Some(client) => client,
        None => match tokio::time::timeout(ASK, Client::connect(url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no connection within {ASK:?}")),
        },
    };
    let outcome = tokio::time::timeout(ASK, client.call(fun, args, no_kwargs(), &[])).await;
    match outcome {
        Ok(Ok(value)) => {
            *slot = Some(client);
            Ok(value)
        }
        Ok(Err(e @ ClientError::Remote { .. })) => {
            *slot = Some(client);
            Err(e.to_string())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ASK:?}")),
    }
}

/// The other nodes a `weft.peers` report of node `me` does not list alive.
fn not_alive(report: &Value, me: usize, names: &[String]) -> Vec<String> {
    let alive: HashSet<&str> = report["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "alive")
        .filter_map(|p| p["node"].as_str())
        .collect();
    names
        .iter()
        .enumerate()
        .filter(|(j, name)| *j != me && !alive.contains(name.as_str()))
        .map(|(_, name)| name.clone())
        .collect()
}

/// A node's view (the others it does not see alive, or why it did not answer) holds every other
/// node alive.
fn sees_all(view: &Result<Vec<String>, String>) -> bool {
    matches!(view, Ok(missing) if missing.is_empty())
}

/// The first few of `names`.
fn preview(names: &[String]) -> String {
    let mut text = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        text.push_str(", …");
    }
    text
}

/// The nodes that have not converged and why, at most ten of them.
fn unconverged(names: &[String], views: &[Result<Vec<String>, String>]) -> String {
    let mut lines: Vec<String> = names
        .iter()
        .zip(views)
        .filter_map(|(name, view)| match view {
            Ok(missing) if missing.is_empty() => None,
            Ok(missing) => Some(format!(
                "  {name} does not see {} alive: {}",
                missing.len(),
                preview(missing)
            )),
            Err(e) => Some(format!("  {name} did not answer: {e}")),
        })
        .collect();
    let more = lines.len().saturating_sub(10);
    lines.truncate(10);
    if more > 0 {
        lines.push(format!("  … and {more} more"));
    }
    lines.join("\n")
}

/// The nodes whose process has exited, with their status.
fn exited(names: &[String], processes: &mut [NodeProcess]) -> Vec<String> {
    names
        .iter()
        .zip(processes.iter_mut())
        .filter_map(|(name, process)| match process.try_wait() {
            Ok(Some(status)) => Some(format!("{name} ({status})")),
            _ => None,
        })
        .collect()
}

/// The last `lines` lines of a node's log.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts the drawn fabric, waits until every node sees every other alive, drops a plugin on
/// the last node and waits until every node can call it. The nodes are killed when it returns
/// or panics (`NodeProcess` kills its process when dropped).
async fn run(draw: &Draw) {
    let n = draw.nodes;
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let names: Vec<String> = (0..n).map(|i| format!("n{i:03}")).collect();
    let homes: Vec<PathBuf> = names.iter().map(|name| root.path().join(name)).collect();
    for home in &homes {
        std::fs::create_dir_all(home.join("plugins")).unwrap();
    }
    let reservations = reserve_ports(n);
    let ports: Vec<u16> = reservations.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let urls: Vec<String> = ports.iter().map(|port| format!("ws://127.0.0.1:{port}")).collect();
    let secret = format!("--cluster-secret=draw-{}", draw.seed);
    let args_of = |i: usize| {
        let mut args = vec![
            "node".to_string(),
            format!("--listen=127.0.0.1:{}", ports[i]),
            format!("--plugins={}", homes[i].join("plugins").display()),
            format!("--data-dir={}", homes[i].join("data").display()),
            format!("--cache-dir={}", cache.display()),
            format!("--node-id={}", names[i]),
            format!("--max-mesh={}", draw.max_mesh),
        ];
        if draw.secret {
            args.push(secret.clone());
        }
        args.extend(draw.seeds[i].iter().map(|s| format!("--seed={}", urls[*s])));
        args
    };

    // Start.
    let started = Instant::now();
    let mut processes: Vec<NodeProcess> = Vec::with_capacity(n);
    let mut starting = Vec::with_capacity(n);
    let mut at = Duration::ZERO;
    for (i, reservation) in reservations.into_iter().enumerate() {
        let log = std::fs::File::create(homes[i].join("node.log")).unwrap();
        if draw.start == Start::OneByOne {
            let process = spawn(args_of(i), log, reservation, Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("{draw}: node {} did not start: {e}", names[i]));
            processes.push(process);
            if (i + 1).is_multiple_of(10) {
                eprintln!(
                    "draw seed {}: {} of {n} nodes started ({:.1} s)",
                    draw.seed,
                    i + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        } else {
            at += draw.pauses[i];
            starting.push(spawn(args_of(i), log, reservation, at));
        }
    }
    if !starting.is_empty() {
        let outcomes = futures_util::future::join_all(starting).await;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(process) => processes.push(process),
                Err(e) => panic!("{draw}: node {} did not start: {e}", names[i]),
            }
        }
    }
    eprintln!(
        "draw seed {}: all {n} nodes started in {:.1} s",
        draw.seed,
        started.elapsed().as_secs_f64()
    );

    // Every node sees every other alive.
    let mut clients: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    let converging = Instant::now();
    let mut progress = converging;
    let mut views: Vec<Result<Vec<String>, String>>;
    loop {
        views = Vec::with_capacity(n);
        for (i, (slot, url)) in clients.iter_mut().zip(&urls).enumerate() {
            let view = ask(slot, url, "weft.peers", vec![])
                .await
                .map(|report| not_alive(&report, i, &names));
            views.push(view);
        }
        let converged = views.iter().filter(|v| sees_all(v)).count();
        if converged == n || converging.elapsed() > CONVERGE {
            break;
        }
        if progress.elapsed() >= PROGRESS {
            progress = Instant::now();
            let fewest = views
                .iter()
                .zip(&names)
                .filter_map(|(v, name)| v.as_ref().ok().map(|missing| (n - 1 - missing.len(), name)))
                .min();
            eprintln!(
                "draw seed {}: {:.1} s, {converged} of {n} nodes see the {} others alive; fewest seen alive: {fewest:?}",
                draw.seed,
                converging.elapsed().as_secs_f64(),
                n - 1
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let converged = views.iter().filter(|v| sees_all(v)).count();
    if converged < n {
        let first = views.iter().position(|v| !sees_all(v)).unwrap_or(0);
        panic!(
            "{draw}: the fabric did not converge within {CONVERGE:?}: {converged} of {n} nodes see every other \
             alive\n{}\nexited: {:?}\nthe last lines of {}'s log:\n{}",
            unconverged(&names, &views),
            exited(&names, &mut processes),
            names[first],
            log_tail(&homes[first].join("node.log"), 20)
        );
    }
    let convergence = converging.elapsed();
    eprintln!(
        "draw seed {}: every node sees the {} others alive after {:.1} s",
        draw.seed,
        n - 1,
        convergence.as_secs_f64()
    );

    // A plugin dropped on the last node becomes callable from every node.
    let last = n - 1;
    install_plugin(&homes[last].join("plugins"), &plugin_file("greeter-v1"), "greeter.wasm");
    let dropped = Instant::now();
    let mut progress = dropped;
    let mut waiting: Vec<usize> = (0..n).collect();
    let mut errors: Vec<String> = vec![String::new(); n];
    loop {
        let mut still = Vec::new();
        for i in waiting {
            match ask(&mut clients[i], &urls[i], "greeter.hello", vec![json!("ada")]).await {
                Ok(value) => assert_eq!(
                    value,
                    json!("hello ada from v1"),
                    "{draw}: {} answered greeter.hello wrongly",
                    names[i]
                ),
                Err(e) => {
                    errors[i] = e;
                    still.push(i);
                }
            }
        }
        waiting = still;
        if waiting.is_empty() || dropped.elapsed() > SPREAD {
            break;
        }
        if progress.elapsed() >= PROGRESS {
            progress = Instant::now();
            eprintln!(
                "draw seed {}: {:.1} s after the plugin was dropped on {}, {} of {n} nodes call it",
                draw.seed,
                dropped.elapsed().as_secs_f64(),
                names[last],
                n - waiting.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let failing: Vec<String> = waiting
        .iter()
        .take(10)
        .map(|i| format!("  {}: {}", names[*i], errors[*i]))
        .collect();
    assert!(
        waiting.is_empty(),
        "{draw}: {} of {n} nodes could not call greeter.hello (dropped on {}) within {SPREAD:?}\n{}\nexited: {:?}",
        waiting.len(),
        names[last],
        failing.join("\n"),
        exited(&names, &mut processes)
    );
    let spread = dropped.elapsed();

    let crashed = exited(&names, &mut processes);
    assert!(crashed.is_empty(), "{draw}: nodes exited: {crashed:?}");
    eprintln!(
        "draw seed {}: passed: converged in {:.1} s, greeter.hello callable from all {n} nodes {:.1} s after the drop",
        draw.seed,
        convergence.as_secs_f64(),
        spread.as_secs_f64()
    );
    drop(clients);
    drop(processes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabrics_drawn_at_random_converge() {
    let given: Option<u64> = std::env::var("WEFT_DRAW_SEED").ok().and_then(|s| s.trim().parse().ok());
    let first = given.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    let draws: usize = std::env::var("WEFT_DRAWS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(if given.is_some() { 1 } else { 2 });
    eprintln!("fabric draws: {draws}, first seed {first}");
    // The first draw takes the run's seed; the others seeds of their own, each printed, so any
    // one draw replays alone.
    let mut seeds = Rng::new(first);
    for k in 0..draws {
        let seed = if k == 0 { first } else { seeds.next() };
        let draw = Draw::new(seed);
        eprintln!("draw {} of {draws}: {draw}", k + 1);
        run(&draw).await;
    }
}
