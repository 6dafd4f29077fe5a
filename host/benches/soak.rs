//! Soak: two nodes (math on one, text on the other) under a steady load at half their measured
//! capacity for a long time; every window reports both nodes' memory and file descriptors and
//! the latency of the window, and the end compares them with the first window after warm-up.
//!
//! `cargo bench --bench soak -- [SECONDS] [WINDOW_SECONDS]` (default 1800 and 60). Each request
//! runs `math.add` on the node the client talks to and `text.upper` on the other (a remote
//! call through the fabric).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use weft::net::Client;
use weft::node::NodeProcess;

fn request(u: u64) -> String {
    json!({
        "role": "rpc",
        "u": u.to_string(),
        "cmds": [
            { "name": "sum", "fun": "math.add", "args": [u, 1] },
            { "name": "loud", "fun": "text.upper", "args": ["soak"] },
        ],
    })
    .to_string()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct Window {
    rss: [u64; 2],
    fds: [usize; 2],
    calls: usize,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let seconds = args.first().copied().unwrap_or(1800);
    let window = Duration::from_secs(args.get(1).copied().unwrap_or(60).max(1));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let cache = tempfile::tempdir()?;
    for (dir, plugin) in dirs.iter().zip(["math", "text"]) {
        let from = repo.join(format!("build/plugins/{plugin}.wasm"));
        anyhow::ensure!(
            from.is_file(),
            "{} is missing (run scripts/build-plugins)",
            from.display()
        );
        std::fs::copy(&from, dir.path().join(format!("{plugin}.wasm")))?;
    }
    let node = |dir: &Path, seed: Option<&str>| {
        let mut args = vec![
            "node".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--plugins={}", dir.display()),
            format!("--cache-dir={}", cache.path().display()),
            format!("--data-dir={}", dir.join(".data").display()),
            "--cluster-secret=soak".into(),
        ];
        args.extend(seed.map(|s| format!("--seed={s}")));
        args
    };
    let a = NodeProcess::spawn(&exe, &node(dirs[0].path(), None), Duration::from_secs(60)).await?;
    let b = NodeProcess::spawn(&exe, &node(dirs[1].path(), Some(a.url())), Duration::from_secs(60)).await?;
    let pids = [a.id().unwrap_or(0), b.id().unwrap_or(0)];
    let client = Client::connect(a.url()).await?;
    let ready = Instant::now() + Duration::from_secs(30);
    while client
        .call("text.upper", vec![json!("x")], Default::default(), &[])
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < ready, "the two nodes did not link");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let capacity = weft::bench::measure(a.url(), request, 16, Duration::from_secs(5)).await?;
    let rate = (capacity.calls_per_sec / 2.0).max(1.0);
    println!(
        "capacity (16 in flight): {:.0} requests/s (p50 {:.0} µs); soaking at {rate:.0}/s for {seconds} s, windows of {} s",
        capacity.calls_per_sec,
        capacity.p50_us,
        window.as_secs()
    );
    println!("| minute | RSS a (KiB) | RSS b (KiB) | fds a | fds b | requests | errors | p50 µs | p99 µs |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");

    // Paced load over 4 connections; each request is its own task, so a slow one does not
    // hold back the pace.
    let clients: Vec<Arc<Client>> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Arc::new(Client::connect(a.url()).await?));
        }
        v
    };
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut next_window = start + window;
    let mut windows: Vec<Window> = Vec::new();
    let mut u = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        u += 1;
        let client = clients[(u % 4) as usize].clone();
        let (seen, failed) = (latencies.clone(), errors.clone());
        tokio::spawn(async move {
            let frame: serde_json::Value = serde_json::from_str(&request(u)).unwrap_or_default();
            let at = std::time::Instant::now();
            let ok = matches!(client.request(frame).await, Ok(r) if r["error"].is_null() && r["r"]["loud"] == "SOAK");
            if ok {
                if let Ok(mut l) = seen.lock() {
                    l.push(at.elapsed().as_micros() as u64);
                }
            } else {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        if Instant::now() >= next_window {
            next_window += window;
            let mut l = latencies
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default();
            l.sort_unstable();
            let pick = |q: f64| {
                l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                    .copied()
                    .unwrap_or(0)
            };
            let w = Window {
                rss: [rss_kib(pids[0]), rss_kib(pids[1])],
                fds: [fds(pids[0]), fds(pids[1])],
                calls: l.len(),
                errors: errors.swap(0, std::sync::atomic::Ordering::Relaxed),
                p50_us: pick(0.5),
                p99_us: pick(0.99),
            };
            println!(
                "| {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
                (windows.len() + 1) as f64 * window.as_secs_f64() / 60.0,
                w.rss[0],
                w.rss[1],
                w.fds[0],
                w.fds[1],
                w.calls,
                w.errors,
                w.p50_us,
                w.p99_us
            );
            windows.push(w);
        }
    }
    anyhow::ensure!(windows.len() >= 2, "run longer than two windows");
    // The first window is warm-up (instances, caches, allocator arenas): compare with the second.
    let (first, last) = (&windows[1], &windows[windows.len() - 1]);
    let growth = |i: usize| 100.0 * (last.rss[i] as f64 - first.rss[i] as f64) / first.rss[i].max(1) as f64;
    let errors: u64 = windows.iter().map(|w| w.errors).sum();
    let requests: usize = windows.iter().map(|w| w.calls).sum();
    println!(
        "soak: {requests} requests, {errors} errors; RSS growth a {:+.1} %, b {:+.1} % (target < 10 %); fds a {} → {}, b {} → {}; p50 {} → {} µs, p99 {} → {} µs",
        growth(0),
        growth(1),
        first.fds[0],
        last.fds[0],
        first.fds[1],
        last.fds[1],
        first.p50_us,
        last.p50_us,
        first.p99_us,
        last.p99_us
    );
    drop((a, b));
    Ok(())
}
