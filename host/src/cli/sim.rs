//! `weft sim`: the fabric's state machine under the deterministic simulator. Replays one
//! scenario by its seed (with `--trace`, what every node did), or runs a sweep.

use std::process::ExitCode;

use weft::fabric::sim::scenario::{self as weft_sim, sweep, Faults, Graph, Scenario, Start};

#[derive(clap::Args)]
pub struct SimArgs {
    /// The seed of the scenario (a failing sweep prints it); the first seed of a sweep.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenarios to run, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    scenarios: u64,
    /// Nodes: drawn between these (the sweep's defaults).
    #[arg(long, default_value_t = 10)]
    min_nodes: usize,
    #[arg(long, default_value_t = 300)]
    max_nodes: usize,
    /// Exactly this many nodes (sets both bounds).
    #[arg(long)]
    nodes: Option<usize>,
    /// Override the drawn seed graph: chain, star, ring, random, several.
    #[arg(long)]
    graph: Option<String>,
    /// Override the drawn start order: one-by-one, at-once.
    #[arg(long)]
    start: Option<String>,
    /// Override the drawn faults: none, partition, pauses, crashes, lossy.
    #[arg(long)]
    faults: Option<String>,
    /// Override the drawn network: local (50–300 µs one way) or wide (1–40 ms).
    #[arg(long)]
    network: Option<String>,
    /// Override the drawn `--max-mesh`.
    #[arg(long)]
    max_mesh: Option<usize>,
    /// Print what every node did (one scenario).
    #[arg(long)]
    trace: bool,
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let (min, max) = args.nodes.map_or((args.min_nodes, args.max_nodes), |n| (n, n));
    let overridden = args.graph.is_some()
        || args.start.is_some()
        || args.faults.is_some()
        || args.max_mesh.is_some()
        || args.network.is_some();
    if args.scenarios > 1 && !args.trace && !overridden {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let started = std::time::Instant::now();
        let results = sweep(args.seed, args.scenarios, min, max, threads);
        let mut failed = 0;
        for (scenario, outcome) in &results {
            if !outcome.failures.is_empty() {
                failed += 1;
                println!("FAILED {scenario}\n  {}", outcome.failures.join("\n  "));
            }
        }
        println!(
            "{} scenarios, {failed} failed, in {:.1} s",
            results.len(),
            started.elapsed().as_secs_f64()
        );
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut failed = 0;
    for k in 0..args.scenarios {
        let mut scenario = Scenario::draw(args.seed.wrapping_add(k), min, max);
        if let Some(graph) = &args.graph {
            scenario.graph = match graph.as_str() {
                "chain" => Graph::Chain,
                "star" => Graph::Star,
                "ring" => Graph::Ring,
                "random" => Graph::Random,
                "several" => Graph::Several,
                other => anyhow::bail!("--graph {other}: chain, star, ring, random or several"),
            };
        }
        if let Some(start) = &args.start {
            scenario.start = match start.as_str() {
                "one-by-one" => Start::OneByOne(std::time::Duration::from_millis(20)),
                "at-once" => Start::AllAtOnce,
                other => anyhow::bail!("--start {other}: one-by-one or at-once"),
            };
        }
        if let Some(faults) = &args.faults {
            scenario.faults = match faults.as_str() {
                "none" => Faults::None,
                "partition" => Faults::Partition {
                    one_way: false,
                    lasting: std::time::Duration::from_secs(5),
                },
                "pauses" => Faults::Pauses,
                "crashes" => Faults::Crashes,
                "lossy" => Faults::Lossy,
                other => anyhow::bail!("--faults {other}: none, partition, pauses, crashes or lossy"),
            };
            scenario.network.loss = if scenario.faults == Faults::Lossy { 0.05 } else { 0.0 };
        }
        if let Some(network) = &args.network {
            let loss = scenario.network.loss;
            scenario.network = match network.as_str() {
                "local" => weft::fabric::sim::Network::default(),
                "wide" => weft::fabric::sim::Network::wide(),
                other => anyhow::bail!("--network {other}: local or wide"),
            };
            scenario.network.loss = loss;
        }
        if let Some(max_mesh) = args.max_mesh {
            scenario.max_mesh = max_mesh;
        }
        let started = std::time::Instant::now();
        let outcome = scenario.run(&weft_sim::Bounds::default(), args.trace);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!("{scenario}");
        let steady = outcome.steady.map_or("not measured (faults)".to_string(), |s| {
            format!(
                "{:.1} frames/s, {:.0} bytes/s, {:.1} signature checks/s",
                s.frames, s.bytes, s.signature_checks
            )
        });
        println!(
            "  discovery (first start → every node holds every other alive) {:?}; converged after the last start or fault {:?}; a new command on every node after {:?}; steady state per node: {steady}; {:.0} records held per node; {} events in {:.2} s",
            outcome.discovered_after,
            outcome.converged_after,
            outcome.propagated_after,
            outcome.records_per_node,
            outcome.steps,
            started.elapsed().as_secs_f64()
        );
        if !outcome.failures.is_empty() {
            failed += 1;
            println!("  FAILED:\n  {}", outcome.failures.join("\n  "));
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
