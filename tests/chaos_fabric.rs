//! Chaos: a 10-node fabric (a full mesh) and a 40-node one (`--max-mesh 16`, a partial view)
//! under steady load while a nemesis kills nodes (-9), stops and
//! continues them, cuts the fabric in two and heals it, and restarts nodes gracefully. A checker
//! holds every call to one rule: the right answer, or a clear error, within its deadline (no
//! hang, no wrong answer). When the faults stop, the catalogs must converge, no node may have
//! crashed, and the long-lived nodes must not have leaked file descriptors.
//!
//! `WEFT_CHAOS_SECS` sets how long the nemesis runs (default 30; `docs/reliability.md` records
//! runs of 300). `WEFT_CHAOS_SEED` replays a run's sequence of faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::time::Instant;
use weft::net::{Client, ClientError};
use weft::node::NodeProcess;

/// The fabric's size and, for a partial view, its `--max-mesh`.
#[derive(Clone, Copy)]
struct Shape {
    nodes: usize,
    max_mesh: Option<usize>,
}
/// The nodes' call deadline.
const DEADLINE: Duration = Duration::from_secs(3);
/// The longest a node is kept stopped.
const LONGEST_STOP: Duration = Duration::from_secs(3);
/// A call must end within this: its deadline, plus a stop of the node the client talks to,
/// plus slack for a loaded machine.
const CALL_BOUND: Duration = Duration::from_secs(3 + 3 + 3);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Member {
    name: String,
    port: u16,
    home: PathBuf,
    process: Option<NodeProcess>,
    /// Restarted at least once (its descriptors start afresh).
    restarted: bool,
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn spawn(member: &Member, seed: u16, cache: &Path, shape: Shape) -> NodeProcess {
    let mut args = vec![
        "node".to_string(),
        format!("--listen=127.0.0.1:{}", member.port),
        format!("--plugins={}", member.home.join("plugins").display()),
        format!("--data-dir={}", member.home.join("data").display()),
        format!("--cache-dir={}", cache.display()),
        format!("--node-id={}", member.name),
        "--cluster-secret=chaos".into(),
        "--fault-injection".into(),
        format!("--call-deadline-ms={}", DEADLINE.as_millis()),
        format!("--seed=ws://127.0.0.1:{seed}"),
    ];
    args.extend(shape.max_mesh.map(|m| format!("--max-mesh={m}")));
    let log = std::fs::File::create(member.home.join("node.log")).unwrap();
    NodeProcess::spawn_with(
        Path::new(env!("CARGO_BIN_EXE_weft")),
        &args,
        Duration::from_secs(30),
        &[],
        Some(log),
    )
    .await
    .unwrap()
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What the checker saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Clear errors by kind (the node's error code, or a closed connection).
    errors: BTreeMap<String, u64>,
    wrong: Vec<String>,
    late: Vec<String>,
}

/// One worker: calls commands on any live node, checks every answer.
async fn worker(id: u64, urls: Arc<Mutex<Vec<Option<String>>>>, tally: Arc<Mutex<Tally>>, stop: Arc<AtomicBool>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut client: Option<Client> = None;
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            let live: Vec<String> = urls.lock().unwrap().iter().flatten().cloned().collect();
            if live.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let url = live[rng.below(live.len())].clone();
            match tokio::time::timeout(Duration::from_secs(2), Client::connect(&url)).await {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        n += 1;
        let (fun, args, expected) = if n % 2 == 0 {
            ("math.add", vec![json!(n), json!(id)], json!(n + id as i64))
        } else {
            let word = format!("chaos-{id}-{n}");
            ("text.upper", vec![json!(word)], json!(word.to_uppercase()))
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(CALL_BOUND * 2, c.call(fun, args, no_kwargs(), &[])).await;
        let took = started.elapsed();
        let mut tally = tally.lock().unwrap();
        match outcome {
            Err(_) => {
                tally.late.push(format!("{fun}: no answer in {took:?}"));
                client = None;
            }
            Ok(result) => {
                if took > CALL_BOUND {
                    tally.late.push(format!("{fun}: {took:?}"));
                }
                match result {
                    Ok(value) if value == expected => tally.ok += 1,
                    Ok(value) => tally.wrong.push(format!("{fun}: {value}, expected {expected}")),
                    Err(ClientError::Remote { code, message, .. }) => {
                        assert!(!message.is_empty(), "an error without a message");
                        *tally.errors.entry(format!("code {code}")).or_default() += 1;
                    }
                    Err(_) => {
                        *tally.errors.entry("connection closed".into()).or_default() += 1;
                        client = None;
                    }
                }
            }
        }
    }
}

/// Every live node sees all others alive, and both commands served by all five of their
/// nodes.
async fn converged(members: &[Member], shape: Shape) -> bool {
    let nodes = shape.nodes;
    for member in members {
        let Some(process) = &member.process else { return false };
        let Ok(client) = Client::connect(process.url()).await else {
            return false;
        };
        let Ok(peers) = client.call("weft.peers", vec![], no_kwargs(), &[]).await else {
            return false;
        };
        let alive = peers["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["state"] == "alive").count());
        if alive != nodes - 1 {
            return false;
        }
        let Ok(catalog) = client.call("weft.catalog", vec![], no_kwargs(), &[]).await else {
            return false;
        };
        let servers = |command: &str| {
            catalog
                .as_array()
                .map_or(0, |rows| rows.iter().filter(|r| r["command"] == command).count())
        };
        if servers("math.add") != nodes / 2 || servers("text.upper") != nodes / 2 {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_correct_through_kills_stops_partitions_and_restarts() {
    chaos(Shape {
        nodes: 10,
        max_mesh: None,
    })
    .await;
}

/// The same nemesis on a fabric larger than its full mesh: each node keeps a partial view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_view_stays_correct_through_kills_stops_partitions_and_restarts() {
    chaos(Shape {
        nodes: 40,
        max_mesh: Some(16),
    })
    .await;
}

async fn chaos(shape: Shape) {
    let nodes = shape.nodes;
    let seconds: u64 = std::env::var("WEFT_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("WEFT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!(
        "chaos: {nodes} nodes (max-mesh {:?}), {seconds} s, seed {seed}",
        shape.max_mesh
    );
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let ports = free_ports(nodes);
    let mut members: Vec<Member> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let home = root.path().join(format!("c{i}"));
        std::fs::create_dir_all(home.join("plugins")).unwrap();
        let plugin = if i < nodes / 2 { "math" } else { "text" };
        std::fs::copy(plugin_file(plugin), home.join("plugins").join(format!("{plugin}.wasm"))).unwrap();
        members.push(Member {
            name: format!("c{i}"),
            port: *port,
            home,
            process: None,
            restarted: false,
        });
    }
    let seed_of = |i: usize| if i == 0 { ports[1] } else { ports[0] };
    for (i, member) in members.iter_mut().enumerate() {
        member.process = Some(spawn(member, seed_of(i), &cache, shape).await);
    }
    assert!(
        eventually(Duration::from_secs(30), || converged(&members, shape)).await,
        "the fabric forms"
    );
    let fds_at_start: Vec<usize> = members
        .iter()
        .map(|m| fds(m.process.as_ref().unwrap().id().unwrap()))
        .collect();

    let urls: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(
        members
            .iter()
            .map(|m| Some(m.process.as_ref().unwrap().url().to_string()))
            .collect(),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|id| tokio::spawn(worker(id, urls.clone(), tally.clone(), stop.clone())))
        .collect();

    let mut rng = Rng(seed);
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut graceful_exits = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500) as u64)).await;
        let i = rng.below(nodes);
        match rng.below(4) {
            0 => {
                *faults.entry("kill -9, restart 2 s later").or_default() += 1;
                urls.lock().unwrap()[i] = None;
                members[i].process = None; // killed (SIGKILL) when dropped
                tokio::time::sleep(Duration::from_secs(2)).await;
                let process = spawn(&members[i], seed_of(i), &cache, shape).await;
                urls.lock().unwrap()[i] = Some(process.url().to_string());
                members[i].process = Some(process);
                members[i].restarted = true;
            }
            1 => {
                *faults.entry("SIGSTOP, SIGCONT 1-3 s later").or_default() += 1;
                let pid = members[i].process.as_ref().unwrap().id().unwrap();
                signal_pid(pid, "-STOP");
                tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000) as u64).min(LONGEST_STOP)).await;
                signal_pid(pid, "-CONT");
            }
            2 => {
                *faults.entry("partition in two, healed 2-4 s later").or_default() += 1;
                let cut = 1 + rng.below(nodes - 1);
                let mut order: Vec<usize> = (0..nodes).collect();
                for k in (1..nodes).rev() {
                    order.swap(k, rng.below(k + 1));
                }
                let side = |n: usize| order.iter().position(|o| *o == n).unwrap() < cut;
                for (n, member) in members.iter().enumerate() {
                    let others: Vec<String> = (0..nodes)
                        .filter(|o| side(*o) != side(n))
                        .map(|o| members[o].name.clone())
                        .collect();
                    if let Ok(client) = Client::connect(member.process.as_ref().unwrap().url()).await {
                        let _ = client
                            .call("weft.fault", vec![json!("cut"), json!(others)], no_kwargs(), &[])
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2000 + rng.below(2000) as u64)).await;
                for member in &members {
                    let all: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
                    if let Ok(client) = Client::connect(member.process.as_ref().unwrap().url()).await {
                        let _ = client
                            .call("weft.fault", vec![json!("restore"), json!(all)], no_kwargs(), &[])
                            .await;
                    }
                }
            }
            _ => {
                *faults.entry("graceful restart (SIGTERM)").or_default() += 1;
                urls.lock().unwrap()[i] = None;
                let mut process = members[i].process.take().unwrap();
                signal_pid(process.id().unwrap(), "-TERM");
                let status = tokio::time::timeout(Duration::from_secs(10), process.wait())
                    .await
                    .unwrap()
                    .unwrap();
                graceful_exits.push(status.success());
                let process = spawn(&members[i], seed_of(i), &cache, shape).await;
                urls.lock().unwrap()[i] = Some(process.url().to_string());
                members[i].process = Some(process);
                members[i].restarted = true;
            }
        }
    }
    // The faults stop: the fabric converges by itself, under the same load.
    let calm = Instant::now();
    let converged_in = eventually(Duration::from_secs(60), || converged(&members, shape)).await;
    let convergence = calm.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let tally = tally.lock().unwrap();
    println!(
        "chaos: {} calls right, {} clear errors {:?}, {} wrong, {} late; faults {faults:?}; converged {:.1} s after the last fault",
        tally.ok,
        tally.errors.values().sum::<u64>(),
        tally.errors,
        tally.wrong.len(),
        tally.late.len(),
        convergence.as_secs_f64()
    );
    assert!(tally.wrong.is_empty(), "wrong answers: {:?}", tally.wrong);
    assert!(tally.late.is_empty(), "calls past their bound: {:?}", tally.late);
    assert!(tally.ok > 100, "the load ran: {} calls", tally.ok);
    assert!(converged_in, "catalogs converge after the faults stop");
    assert!(
        graceful_exits.iter().all(|ok| *ok),
        "a gracefully stopped node exited with an error"
    );
    for (i, member) in members.iter_mut().enumerate() {
        let process = member.process.as_mut().unwrap();
        assert!(process.try_wait().unwrap().is_none(), "node {} crashed", member.name);
        if !member.restarted {
            let now = fds(process.id().unwrap());
            assert!(
                now <= fds_at_start[i] + 16,
                "node {} leaked descriptors: {} → {now}",
                member.name,
                fds_at_start[i]
            );
        }
    }
}
