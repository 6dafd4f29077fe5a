//! Plugin directory timings: `cargo bench --bench reload` (after `scripts/build-plugins`).
//!
//! - time from a component renamed into the watched directory to the first call it serves,
//!   with the compile cache disabled (cold: Winch first, as nodes do by default, and Cranelift
//!   only, `--compilation optimized`) and with a warm cache;
//! - node start-up to serving with 20 cached plugins, next to a node with none;
//! - calls per 100 ms while the served plugin is replaced every 300 ms under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map};
use weft::net::Client;
use weft::node::NodeProcess;

const ROUNDS: usize = 7;

/// The cases of a drop: label, compile cache, `--compilation`.
const COLD_AND_WARM: [(&str, bool, &str); 3] = [
    ("cold (no cache), tiered", false, "tiered"),
    ("cold (no cache), cranelift only", false, "optimized"),
    ("warm cache", true, "tiered"),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let math = std::fs::read(repo.join("build/plugins/math.wasm"))
        .map_err(|e| anyhow::anyhow!("build/plugins/math.wasm: {e} (run scripts/build-plugins)"))?;

    let rust = Probe {
        file: "math.wasm",
        command: "math.add",
        args: json!([1, 2]),
    };
    for (label, cache, compilation) in COLD_AND_WARM {
        let times = drop_to_first_call(&math, &rust, cache, compilation, ROUNDS).await?;
        println!(
            "drop → first call, Rust math.wasm ({} KB), {label}: {}",
            math.len() / 1000,
            summary(&times)
        );
    }
    // The Python example (componentize-py): about 18 MB, most of it the interpreter.
    if let Ok(textstats) = std::fs::read(repo.join("build/plugins/textstats.wasm")) {
        let python = Probe {
            file: "textstats.wasm",
            command: "textstats.summary",
            args: json!(["one two"]),
        };
        for (label, cache, compilation) in COLD_AND_WARM {
            let rounds = if cache { ROUNDS } else { 3 };
            let times = drop_to_first_call(&textstats, &python, cache, compilation, rounds).await?;
            println!(
                "drop → first call, Python textstats.wasm ({:.1} MB), {label}: {}",
                textstats.len() as f64 / 1e6,
                summary(&times)
            );
        }
    }

    let (empty, twenty) = startup(&math).await?;
    println!("node start → serving, 0 plugins: {}", summary(&empty));
    println!("node start → serving, 20 cached plugins: {}", summary(&twenty));

    let buckets = reload_under_load(&math).await?;
    let min = buckets.iter().copied().min().unwrap_or(0);
    let mean = buckets.iter().sum::<u64>() as f64 / buckets.len().max(1) as f64;
    println!(
        "calls per 100 ms while math.wasm is replaced every 300 ms (16 in flight): min {min}, mean {mean:.0}, buckets {buckets:?}"
    );
    Ok(())
}

fn summary(times: &[Duration]) -> String {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN);
    format!(
        "median {median:.1} ms, min {:.1} ms, max {:.1} ms ({} runs)",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    )
}

/// The component with a custom section appended: the same code under another digest.
fn variant(component: &[u8], tag: u32) -> Vec<u8> {
    let name = b"weft-bench";
    let payload = tag.to_le_bytes();
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

async fn start(dir: &Path, cache: Option<&Path>, compilation: &str) -> anyhow::Result<NodeProcess> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let cache_arg = cache.map_or("--no-cache".to_string(), |c| format!("--cache-dir={}", c.display()));
    let args = vec![
        "node".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--plugins={}", dir.display()),
        cache_arg,
        format!("--compilation={compilation}"),
    ];
    NodeProcess::spawn(&exe, &args, Duration::from_secs(60)).await
}

fn install(dir: &Path, bytes: &[u8], name: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// A plugin file and a call that succeeds once the plugin serves.
struct Probe {
    file: &'static str,
    command: &'static str,
    args: serde_json::Value,
}

async fn drop_to_first_call(
    component: &[u8],
    probe: &Probe,
    cache: bool,
    compilation: &str,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let cache_dir = tempfile::tempdir()?;
    let node = start(dir.path(), cache.then_some(cache_dir.path()), compilation).await?;
    let client = Client::connect(node.url()).await?;
    if cache {
        // Fill the cache once: Cranelift's code is stored before the plugin switches to it.
        install(dir.path(), component, probe.file)?;
        wait_for(&client, probe, true).await?;
        wait_optimized(&client, probe).await?;
        std::fs::remove_file(dir.path().join(probe.file))?;
        wait_for(&client, probe, false).await?;
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        // Cold: a new digest every round, so nothing can be reused.
        let bytes = if cache {
            component.to_vec()
        } else {
            variant(component, round as u32)
        };
        let started = Instant::now();
        install(dir.path(), &bytes, probe.file)?;
        wait_for(&client, probe, true).await?;
        times.push(started.elapsed());
        std::fs::remove_file(dir.path().join(probe.file))?;
        wait_for(&client, probe, false).await?;
    }
    Ok(times)
}

/// Waits until the probe's plugin runs Cranelift's code.
async fn wait_optimized(client: &Client, probe: &Probe) -> anyhow::Result<()> {
    let name = probe.file.trim_end_matches(".wasm");
    let until = Instant::now() + Duration::from_secs(300);
    while Instant::now() < until {
        let plugins = client.call("weft.plugins", vec![], Map::new(), &[]).await?;
        let tier = plugins
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == name))
            .map(|p| p["tier"].clone());
        if tier == Some(json!("optimized")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{name} never switched to cranelift's code")
}

/// Polls the probe's call every millisecond until it succeeds (or no longer does).
async fn wait_for(client: &Client, probe: &Probe, served: bool) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    let args = probe.args.as_array().cloned().unwrap_or_default();
    while Instant::now() < until {
        let ok = client.call(probe.command, args.clone(), Map::new(), &[]).await.is_ok();
        if ok == served {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    anyhow::bail!(
        "{} did not become {}",
        probe.command,
        if served { "served" } else { "withdrawn" }
    )
}

async fn startup(math: &[u8]) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let empty_dir = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("plugin{i:02}.wasm")), variant(math, 1000 + i))?;
    }
    // Fill the cache (Cranelift before serving, so every plugin is in it when the node serves).
    drop(start(dir.path(), Some(cache.path()), "optimized").await?);
    let (mut empty, mut twenty) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        drop(start(empty_dir.path(), Some(cache.path()), "tiered").await?);
        empty.push(started.elapsed());
        let started = Instant::now();
        drop(start(dir.path(), Some(cache.path()), "tiered").await?);
        twenty.push(started.elapsed());
    }
    Ok((empty, twenty))
}

async fn reload_under_load(math: &[u8]) -> anyhow::Result<Vec<u64>> {
    let dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    install(dir.path(), math, "math.wasm")?;
    let node = start(dir.path(), Some(cache.path()), "tiered").await?;
    let client = Arc::new(Client::connect(node.url()).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if client
                    .call("math.add", vec![json!(1), json!(2)], Map::new(), &[])
                    .await
                    .is_ok()
                {
                    done.push(started.elapsed());
                }
            }
            done
        }));
    }
    for round in 0..10u32 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        install(dir.path(), &variant(math, round), "math.wasm")?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut buckets = vec![0u64; (elapsed.as_millis() / 100) as usize];
    for worker in workers {
        for at in worker.await? {
            if let Some(bucket) = buckets.get_mut((at.as_millis() / 100) as usize) {
                *bucket += 1;
            }
        }
    }
    Ok(buckets)
}
