//! Scenarios drawn from a seed, run in the simulator, and the properties checked after each:
//! every live node knows every live member's current record, the overlay of links is
//! connected and within its caps, a command added anywhere reaches every node, no node that
//! was never stopped or cut off is held dead, a healed partition reconverges, and the steady
//! state costs each node a bounded number of frames and signature checks per second.

use std::fmt;
use std::time::Duration;

use super::{Fault, Network, Rng, World};

/// How nodes are told where to join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    /// Node i seeds node i−1.
    Chain,
    /// Every node seeds node 0.
    Star,
    /// Node i seeds i−1, and node 0 seeds the last.
    Ring,
    /// Node i seeds one to three earlier nodes at random.
    Random,
    /// Every node seeds two or three of the first three.
    Several,
}

/// The order nodes start in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// One after another, `gap` apart (a process that starts and serves).
    OneByOne(Duration),
    AllAtOnce,
    /// At random moments within this.
    Stagger(Duration),
}

/// The faults of a scenario, after every node started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    None,
    /// The fabric splits in two (one-way: frames cross in one direction only), then heals.
    Partition {
        one_way: bool,
        lasting: Duration,
    },
    /// A few nodes stop and continue.
    Pauses,
    /// A few nodes crash; some restart.
    Crashes,
    /// Gossip frames are lost and a few nodes are slow.
    Lossy,
}

/// A scenario: everything a run depends on follows from `seed`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: usize,
    pub max_mesh: usize,
    pub graph: Graph,
    pub start: Start,
    pub faults: Faults,
    pub network: Network,
}

/// The bounds the properties are held to (virtual time).
pub struct Bounds {
    /// From the last start (or the end of the faults) to every node knowing every other.
    pub converge: Duration,
    /// From a command being added to every node's record of it listing it.
    pub propagate: Duration,
    /// Frames each node sends per second at steady state, at most.
    pub frames_per_node_s: f64,
    /// Signature checks each node makes per second at steady state, at most.
    pub checks_per_node_s: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            converge: Duration::from_secs(60),
            propagate: Duration::from_secs(2),
            frames_per_node_s: 60.0,
            checks_per_node_s: 20.0,
        }
    }
}

/// What a run measured, and the properties it broke.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the first start to every node holding every other alive (sampled every 10 ms up to
    /// 300 nodes, 100 ms beyond; `None` when faults began first).
    pub discovered_after: Option<Duration>,
    /// From the last start, or the heal, to convergence.
    pub converged_after: Option<Duration>,
    /// From a command added on the last node to every node listing it.
    pub propagated_after: Option<Duration>,
    /// What each node sends and checks at steady state, in a fabric without faults.
    pub steady: Option<Steady>,
    /// Records held per node at the end (the member table).
    pub records_per_node: f64,
    /// Events the simulator handled.
    pub steps: u64,
    pub failures: Vec<String>,
    pub trace: Vec<String>,
}

/// Per node per second, at steady state.
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    pub frames: f64,
    pub bytes: f64,
    pub signature_checks: f64,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} nodes, max-mesh {}, {:?} seeds, {:?} start, faults {:?}, loss {}",
            self.seed, self.nodes, self.max_mesh, self.graph, self.start, self.faults, self.network.loss
        )
    }
}

impl Scenario {
    /// Draws a scenario of `min..=max` nodes from `seed` (sizes spread evenly on a log scale).
    pub fn draw(seed: u64, min: usize, max: usize) -> Scenario {
        let mut rng = Rng::new(seed);
        let (lo, hi) = ((min.max(2) as f64).ln(), (max.max(min).max(2) as f64).ln());
        let t = rng.below(1_000_001) as f64 / 1_000_000.0;
        let nodes = ((lo + (hi - lo) * t).exp().round() as usize).clamp(min.max(2), max.max(min).max(2));
        let max_mesh = [8, 16, 32][rng.below(3) as usize];
        let graph = [Graph::Chain, Graph::Star, Graph::Ring, Graph::Random, Graph::Several][rng.below(5) as usize];
        let start = match rng.below(3) {
            0 => Start::OneByOne(Duration::from_millis(rng.between(5, 60))),
            1 => Start::AllAtOnce,
            _ => Start::Stagger(Duration::from_millis(rng.between(100, 5000))),
        };
        let faults = match rng.below(8) {
            0..=2 => Faults::None,
            3 => Faults::Partition {
                one_way: false,
                lasting: Duration::from_millis(rng.between(500, 8000)),
            },
            4 => Faults::Partition {
                one_way: true,
                lasting: Duration::from_millis(rng.between(500, 8000)),
            },
            5 => Faults::Pauses,
            6 => Faults::Crashes,
            _ => Faults::Lossy,
        };
        let wide = rng.chance(0.2);
        let mut network = if wide { Network::wide() } else { Network::default() };
        network.loss = if faults == Faults::Lossy { 0.05 } else { 0.0 };
        Scenario {
            seed,
            nodes,
            max_mesh,
            graph,
            start,
            faults,
            network,
        }
    }

    /// The nodes each node seeds.
    fn seeds(&self, rng: &mut Rng) -> Vec<Vec<usize>> {
        let n = self.nodes;
        (0..n)
            .map(|i| match self.graph {
                Graph::Chain if i > 0 => vec![i - 1],
                Graph::Chain => Vec::new(),
                Graph::Star if i > 0 => vec![0],
                Graph::Star => Vec::new(),
                Graph::Ring if i == 0 => vec![n - 1],
                Graph::Ring => vec![i - 1],
                Graph::Random if i == 0 => Vec::new(),
                Graph::Random => {
                    let k = rng.between(1, 3) as usize;
                    let mut picks: Vec<usize> = (0..k).map(|_| rng.below(i as u64) as usize).collect();
                    picks.sort_unstable();
                    picks.dedup();
                    picks
                }
                Graph::Several => {
                    let mut picks: Vec<usize> = (0..3).filter(|s| *s != i && (rng.chance(0.7))).collect();
                    if picks.is_empty() && i != 0 {
                        picks.push(0);
                    }
                    picks
                }
            })
            .collect()
    }

    /// Runs the scenario and checks its properties (`trace`: keep what every node did).
    pub fn run(&self, bounds: &Bounds, trace: bool) -> Outcome {
        let mut rng = Rng::new(self.seed ^ 0x5eed);
        let seeds = self.seeds(&mut rng);
        let mut world = World::new(rng.next_u64(), self.nodes, &seeds, self.max_mesh, self.network.clone());
        if trace {
            world.enable_trace();
        }
        let mut out = Outcome::default();
        // Starts.
        let mut last_start = Duration::ZERO;
        for i in 0..self.nodes {
            let at = match self.start {
                Start::OneByOne(gap) => gap * i as u32,
                Start::AllAtOnce => Duration::ZERO,
                Start::Stagger(within) => Duration::from_micros(rng.below(within.as_micros() as u64)),
            };
            last_start = last_start.max(at);
            world.start_at(at, i);
        }
        // Faults, once every node started and had a moment to join.
        let faults_at = last_start + Duration::from_secs(3);
        let settled = self.script_faults(&mut world, &mut rng, faults_at);
        let mut false_deaths = Vec::new();
        let sample = Duration::from_millis(100);
        let mut t = Duration::ZERO;
        while t < settled {
            // Discovery is timed to 10 ms where the check is cheap.
            let timing = out.discovered_after.is_none() && t >= last_start && self.nodes <= 300;
            t += if timing { Duration::from_millis(10) } else { sample };
            world.run_until(t);
            false_deaths.extend(world.false_deaths());
            if out.discovered_after.is_none() && t >= last_start && t <= faults_at && world.all_alive() {
                out.discovered_after = Some(t);
            }
        }
        // Convergence.
        let deadline = settled + bounds.converge;
        let converged = loop {
            if world.converged() {
                break Some(world.now);
            }
            if world.now >= deadline {
                break None;
            }
            let next = world.now + sample;
            world.run_until(next);
            false_deaths.extend(world.false_deaths());
        };
        match converged {
            Some(at) => out.converged_after = Some(at.saturating_sub(settled)),
            None => {
                let live = world.live();
                let lagging: Vec<String> = live
                    .iter()
                    .filter_map(|i| {
                        let missing = world.missing(*i);
                        (!missing.is_empty()).then(|| {
                            let shown: Vec<String> = missing.iter().take(4).map(|j| format!("n{j:03}")).collect();
                            format!("n{i:03} lacks {} ({})", missing.len(), shown.join(" "))
                        })
                    })
                    .take(8)
                    .collect();
                out.failures.push(format!(
                    "did not converge within {:?} of the last start or fault: {}",
                    bounds.converge,
                    lagging.join(", ")
                ));
            }
        }
        // The overlay: connected once converged (its caps are checked at rest, at the end).
        let parts = components(&world.links());
        if parts > 1 {
            out.failures.push(format!(
                "the overlay of links is split into {parts} parts once converged"
            ));
        }
        // A command added on the last live node reaches every node.
        if let Some(&owner) = world.live().last() {
            let added = world.now;
            world.schedule(added, Fault::Serve(owner, "sim.added".into()));
            let deadline = added + bounds.propagate;
            let step = Duration::from_millis(5);
            loop {
                let next = world.now + step;
                world.run_until(next);
                if world.lacking(owner, "sim.added") == 0 {
                    out.propagated_after = Some(world.now - added);
                    break;
                }
                if world.now >= deadline {
                    out.failures.push(format!(
                        "a command added on n{owner:03} was not listed on {} nodes within {:?}",
                        world.lacking(owner, "sim.added"),
                        bounds.propagate
                    ));
                    break;
                }
            }
        }
        // Steady state, in a fabric without faults (after faults the fabric churns for a while
        // as links come back; its convergence is what is held to a bound there).
        if self.faults == Faults::None {
            let steady = steady_state(&mut world, Duration::from_secs(3));
            if steady.frames > bounds.frames_per_node_s {
                out.failures.push(format!(
                    "steady state: {:.1} frames per node per second (bound {})",
                    steady.frames, bounds.frames_per_node_s
                ));
            }
            if steady.signature_checks > bounds.checks_per_node_s {
                out.failures.push(format!(
                    "steady state: {:.1} signature checks per node per second (bound {})",
                    steady.signature_checks, bounds.checks_per_node_s
                ));
            }
            out.steady = Some(steady);
        } else {
            // A moment at rest: links surplus after a heal are retired at the next ticks.
            let rest = world.now + Duration::from_secs(1);
            world.run_until(rest);
        }
        false_deaths.extend(world.false_deaths());
        false_deaths.sort_unstable();
        false_deaths.dedup();
        if !false_deaths.is_empty() {
            let shown: Vec<String> = false_deaths
                .iter()
                .take(5)
                .map(|(i, j)| format!("n{i:03} held n{j:03} dead"))
                .collect();
            out.failures.push(format!(
                "{} false deaths of nodes never stopped or cut off: {}",
                false_deaths.len(),
                shown.join(", ")
            ));
        }
        // Versions signed at any moment (a link retired, say) take a moment to spread.
        let end = world.now + Duration::from_secs(5);
        while !world.converged() && world.now < end {
            let next = world.now + sample;
            world.run_until(next);
        }
        if !world.converged() {
            out.failures
                .push("not converged again within 5 s at the end of the run".into());
        }
        // At rest: the overlay is connected, and no node keeps more links than its cap.
        let links = world.links();
        for (i, peers) in &links {
            if peers.len() > world.link_cap(*i) {
                out.failures.push(format!(
                    "n{i:03} keeps {} links, over its cap of {}",
                    peers.len(),
                    world.link_cap(*i)
                ));
            }
        }
        let components = components(&links);
        if components > 1 {
            out.failures
                .push(format!("the overlay of links is split into {components} parts"));
        }
        let live = world.live();
        out.records_per_node = live
            .iter()
            .filter_map(|i| world.nodes[*i].state.as_ref())
            .map(|s| s.census().1 as f64)
            .sum::<f64>()
            / live.len().max(1) as f64;
        out.steps = world.steps;
        out.trace = world.trace().to_vec();
        out
    }

    /// Schedules the scenario's faults from `at`; returns when the last one is over.
    fn script_faults(&self, world: &mut World, rng: &mut Rng, at: Duration) -> Duration {
        let n = self.nodes;
        match self.faults {
            Faults::None => at,
            Faults::Partition { one_way, lasting } => {
                let cut = rng.between(1, (n as u64 - 1).max(1));
                let mut order: Vec<usize> = (0..n).collect();
                shuffle(&mut order, rng);
                let mut groups = vec![0u32; n];
                for i in order.iter().take(cut as usize) {
                    groups[*i] = 1;
                }
                world.schedule(at, Fault::Partition { groups, one_way });
                world.schedule(at + lasting, Fault::Heal);
                at + lasting
            }
            Faults::Pauses => {
                let mut end = at;
                for _ in 0..rng.between(1, 3) {
                    let node = rng.below(n as u64) as usize;
                    let from = at + Duration::from_millis(rng.below(2000));
                    let lasting = Duration::from_millis(rng.between(200, 5000));
                    world.schedule(from, Fault::Pause(node));
                    world.schedule(from + lasting, Fault::Resume(node));
                    end = end.max(from + lasting);
                }
                end
            }
            Faults::Crashes => {
                let mut end = at;
                for _ in 0..rng.between(1, 3) {
                    let node = rng.below(n as u64) as usize;
                    let from = at + Duration::from_millis(rng.below(2000));
                    world.schedule(from, Fault::Crash(node));
                    if rng.chance(0.5) {
                        let back = from + Duration::from_millis(rng.between(100, 4000));
                        world.schedule(back, Fault::Restart(node));
                        end = end.max(back);
                    } else {
                        end = end.max(from);
                    }
                }
                end
            }
            Faults::Lossy => {
                for _ in 0..rng.between(1, 3) {
                    let node = rng.below(n as u64) as usize;
                    world.schedule(at, Fault::Slow(node, Duration::from_millis(rng.between(5, 50))));
                }
                at
            }
        }
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// The parts the links split the live nodes into (links taken both ways).
fn components(links: &[(usize, Vec<usize>)]) -> usize {
    let index: std::collections::BTreeMap<usize, usize> = links.iter().enumerate().map(|(k, (i, _))| (*i, k)).collect();
    let mut parent: Vec<usize> = (0..links.len()).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for (k, (_, peers)) in links.iter().enumerate() {
        for p in peers {
            if let Some(&q) = index.get(p) {
                let (a, b) = (find(&mut parent, k), find(&mut parent, q));
                parent[a] = b;
            }
        }
    }
    (0..links.len()).filter(|k| find(&mut parent, *k) == *k).count()
}

/// Runs `count` scenarios drawn from seeds `first..` (of `min..=max` nodes) on `threads`
/// threads; returns each scenario with its outcome, in the order of their seeds.
pub fn sweep(first: u64, count: u64, min: usize, max: usize, threads: usize) -> Vec<(Scenario, Outcome)> {
    let next = std::sync::atomic::AtomicU64::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= count {
                    break;
                }
                let scenario = Scenario::draw(first.wrapping_add(k), min, max);
                let outcome = scenario.run(&Bounds::default(), false);
                if let Ok(mut results) = results.lock() {
                    results.push((scenario, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(s, _)| s.seed.wrapping_sub(first));
    results
}

/// Runs `window` and measures what each live node sent and checked per second.
fn steady_state(world: &mut World, window: Duration) -> Steady {
    world.count_bytes = true;
    let (frames0, bytes0) = world.frames();
    let checks0 = world.signature_checks();
    let from = world.now;
    world.run_until(from + window);
    world.count_bytes = false;
    let (frames1, bytes1) = world.frames();
    let checks1 = world.signature_checks();
    let per = |d: u64| d as f64 / world.live().len().max(1) as f64 / window.as_secs_f64();
    Steady {
        frames: per(frames1.saturating_sub(frames0)),
        bytes: per(bytes1.saturating_sub(bytes0)),
        signature_checks: per(checks1.saturating_sub(checks0)),
    }
}
