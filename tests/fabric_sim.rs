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
    (5, "a full node declared a suspect it could reach dead without dialing it"),
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
        .map(|(s, o)| format!("{s}\n    {}\n    replay: weft sim --seed {} --trace", o.failures.join("\n    "), s.seed))
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
    assert!(failures.is_empty(), "{} of {count} scenarios failed:\n{}", failures.len(), failures.join("\n"));
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
    assert!(first.trace.len() > 1000, "the trace records the run ({} lines)", first.trace.len());
    assert_eq!(first.steps, second.steps, "{scenario}");
    let diverged = first.trace.iter().zip(&second.trace).position(|(a, b)| a != b);
    assert_eq!(diverged, None, "{scenario}: the traces differ from line {diverged:?}");
    assert_eq!(first.trace.len(), second.trace.len());
    // Another seed gives another run.
    let other = Scenario { seed: scenario.seed + 1000, ..scenario.clone() };
    assert_ne!(other.run(&Bounds::default(), true).trace, first.trace);
}
