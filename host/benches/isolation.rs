//! A well-behaved tenant's latency while another tenant attacks the node:
//! `cargo bench --bench isolation` (after `scripts/build-plugins`).
//!
//! One node, two tenants. `good` serves the Rust `math` plugin and calls `math.add`, one call at a
//! time, from one client; `bad` serves the `hostile` plugin and, from several clients at once, calls
//! commands that spin until their deadline, grow memory until the limit, recurse through
//! `host.call`, trap and answer hugely. The good tenant's p50 and p99 are measured without the
//! attack and during it, in the same run, for several settings of the attacker tenant's
//! `max_concurrent`: the default, as many as the cores, and practically unlimited.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map};
use weft::net::Client;
use weft::node::NodeProcess;
use weft::tenancy::hash_token;

const MEASURE: Duration = Duration::from_secs(4);
const ATTACKERS: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let built = |name: &str| repo.join("build").join(name);
    println!("| attacker's max_concurrent | good p50 µs | good p99 µs | p99 vs baseline | attack calls done |");
    println!("|---|---:|---:|---:|---:|");
    // None: the default (one less than the cores).
    for limit in [None, Some(2), Some(1000)] {
        let dir = tempfile::tempdir()?;
        let plugins = dir.path().join("plugins");
        for (tenant, file, from) in [
            ("good", "math.wasm", built("plugins/math.wasm")),
            ("bad", "hostile.wasm", built("test-plugins/hostile.wasm")),
        ] {
            std::fs::create_dir_all(plugins.join(tenant))?;
            std::fs::copy(&from, plugins.join(tenant).join(file))
                .map_err(|e| anyhow::anyhow!("{}: {e} (run scripts/build-plugins)", from.display()))?;
        }
        // The attacker's spins end at 200 ms; its memory at 64 MiB.
        std::fs::write(
            plugins.join("bad/hostile.toml"),
            "[limits]\ndeadline_ms = 200\nmemory_mb = 64\n",
        )?;
        let bad_limit = limit.map_or(String::new(), |n| format!("max_concurrent = {n}\n"));
        let tenants = dir.path().join("tenants.toml");
        std::fs::write(
            &tenants,
            format!(
                "[[tenant]]\nid = \"good\"\ntokens = [\"{}\"]\n\n[[tenant]]\nid = \"bad\"\ntokens = [\"{}\"]\n{bad_limit}",
                hash_token("good"),
                hash_token("bad")
            ),
        )?;
        let node = start(&plugins, &tenants, dir.path()).await?;
        let good = Client::connect_as(node.url(), Some("good")).await?;
        // Warm up.
        for _ in 0..500 {
            good.call("math.add", vec![json!(1), json!(2)], Map::new(), &[]).await?;
        }
        let baseline = latencies(&good).await?;

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut attackers = Vec::new();
        for i in 0..ATTACKERS {
            let bad = Client::connect_as(node.url(), Some("bad")).await?;
            let (stop, done) = (stop.clone(), done.clone());
            attackers.push(tokio::spawn(async move {
                let attacks = [
                    ("hostile.spin", json!([])),
                    ("hostile.grow", json!([])),
                    ("hostile.recurse", json!([0])),
                    ("hostile.trap", json!(["boom"])),
                    ("hostile.huge", json!([16])),
                ];
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let (fun, args) = &attacks[n % attacks.len()];
                    let args = args.as_array().cloned().unwrap_or_default();
                    // Every attack fails (or is refused); that is the point.
                    let _ = bad.call(fun, args, Map::new(), &[]).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let attacked = latencies(&good).await?;
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            attacker.await?;
        }
        let (p50, p99) = percentiles(&baseline);
        let (a50, a99) = percentiles(&attacked);
        println!(
            "| {} | {p50:.0} → {a50:.0} | {p99:.0} → {a99:.0} | {:.1}× | {} |",
            limit.map_or(format!("default ({})", weft::tenancy::default_max_concurrent()), |n| n
                .to_string()),
            a99 / p99,
            done.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

async fn start(plugins: &Path, tenants: &Path, dir: &Path) -> anyhow::Result<NodeProcess> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let args = vec![
        "node".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--plugins={}", plugins.display()),
        format!("--tenants={}", tenants.display()),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--cache-dir={}", dir.join("cache").display()),
    ];
    NodeProcess::spawn(&exe, &args, Duration::from_secs(60)).await
}

/// Sequential `math.add` calls for [`MEASURE`]: each one's latency in µs.
async fn latencies(client: &Client) -> anyhow::Result<Vec<f64>> {
    let until = Instant::now() + MEASURE;
    let mut all = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        client
            .call("math.add", vec![json!(1), json!(2)], Map::new(), &[])
            .await?;
        all.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(all)
}

fn percentiles(samples: &[f64]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99))
}
