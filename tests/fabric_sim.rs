//! The fabric's state machine under the deterministic simulator (`weft::fabric::sim`): a sweep
//! of random scenarios from 10 to 300 nodes, every seed that once failed, and determinism.
//!
//! `WEFT_SIM_SCENARIOS` sets the sweep's size (default 500), `WEFT_SIM_SEED` its first seed
//! (default: from the clock; printed). `weft sim --seed S --trace` replays one scenario with
//! what every node did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use weft::fabric::sim::scenario::{sweep, Bounds, Scenario};

/// Node counts the sweep draws from.
const MIN_NODES: usize = 10;
const MAX_NODES: usize = 300;

/// Seeds that failed once (drawn between `MIN_NODES` and `MAX_NODES`), and what they found.
const REGRESSIONS: &[(u64, &str)] = &[
    (4, "a joiner refused for lack of room learned nothing: an island of one"),
    (
        5,
        "a full node declared a suspect it could reach dead without dialing it",
    ),
    (1038, "a node whose seed had no room redialed it every second for ever"),
    (1041, "the same at 266 nodes, re-signing records at every redial"),
];

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_scenarios_converge_and_keep_their_properties() {
    let count = env("WEFT_SIM_SCENARIOS").unwrap_or(500);
    let first = env("WEFT_SIM_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("sweep: {count} scenarios from seed {first} (WEFT_SIM_SEED={first} to replay)");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    let results = sweep(first, count, MIN_NODES, MAX_NODES, threads);
    assert_eq!(results.len() as u64, count, "every scenario ran");
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, o)| !o.failures.is_empty())
        .map(|(s, o)| {
            format!(
                "{s}\n    {}\n    replay: weft sim --seed {} --trace",
                o.failures.join("\n    "),
                s.seed
            )
        })
        .collect();
    let slowest = results
        .iter()
        .filter_map(|(s, o)| o.converged_after.map(|c| (c, s.seed, s.nodes)))
        .max();
    eprintln!(
        "sweep: {} scenarios in {:.1} s; slowest convergence {slowest:?} (after, seed, nodes)",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} scenarios failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn seeds_that_once_failed_pass() {
    for (seed, found) in REGRESSIONS {
        let scenario = Scenario::draw(*seed, MIN_NODES, MAX_NODES);
        let outcome = scenario.run(&Bounds::default(), false);
        assert!(
            outcome.failures.is_empty(),
            "{scenario} (once: {found}):\n  {}\n  replay: weft sim --seed {seed} --trace",
            outcome.failures.join("\n  ")
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    // A scenario with faults, so that every kind of event is in the trace.
    let scenario = (1..)
        .map(|seed| Scenario::draw(seed, 12, 40))
        .find(|s| matches!(s.faults, weft::fabric::sim::scenario::Faults::Partition { .. }))
        .expect("a seed draws a partition");
    let first = scenario.run(&Bounds::default(), true);
    let second = scenario.run(&Bounds::default(), true);
    assert!(
        first.trace.len() > 1000,
        "the trace records the run ({} lines)",
        first.trace.len()
    );
    assert_eq!(first.steps, second.steps, "{scenario}");
    let diverged = first.trace.iter().zip(&second.trace).position(|(a, b)| a != b);
    assert_eq!(diverged, None, "{scenario}: the traces differ from line {diverged:?}");
    assert_eq!(first.trace.len(), second.trace.len());
    // Another seed gives another run.
    let other = Scenario {
        seed: scenario.seed + 1000,
        ..scenario.clone()
    };
    assert_ne!(other.run(&Bounds::default(), true).trace, first.trace);
}

/// The fabric's state machine reads no clock, draws no randomness of its own, touches no
/// runtime and iterates no map in a random order: the simulator and the node run the same
/// code, and a seed replays exactly.
#[test]
fn the_state_machine_is_free_of_io_clocks_and_hidden_randomness() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fabric");
    let machine = [
        "state.rs",
        "gossip.rs",
        "tree.rs",
        "route.rs",
        "health.rs",
        "federation.rs",
        "wire.rs",
        "sim/mod.rs",
        "sim/scenario.rs",
    ];
    let forbidden = [
        "tokio",
        "Instant::now",
        "SystemTime",
        "getrandom",
        "thread_rng",
        "auth::nonce",
        "HashMap",
        "HashSet",
        "std::thread::sleep",
    ];
    let mut found = Vec::new();
    for file in machine {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        // Unit tests may use the clock (they build states at `Instant::now()`).
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            // The sweep runs scenarios on threads, each scenario in one; virtual time counts
            // from one real instant, and only durations since it are ever used.
            let allowed = (file == "sim/scenario.rs" && line.contains("std::thread::scope"))
                || (file == "sim/mod.rs" && line.trim() == "base: Instant::now(),");
            for word in forbidden.iter().filter(|w| line.contains(*w) && !allowed) {
                found.push(format!("src/fabric/{file}:{}: `{word}`: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the state machine must stay deterministic:\n{}",
        found.join("\n")
    );
}
