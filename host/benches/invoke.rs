//! Cost of one plugin call inside the node, without the network: `cargo bench --bench invoke`.
//! Needs `scripts/build-plugins` first. Prints ns per call of `math.add` on a warm instance, of
//! the same through the executor (JSON in and out), and of a fresh instance per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map};
use weft::config::Limits;
use weft::plugins::{CommandTable, Manifest, Selector, Served};
use weft::rpc::Executor;
use weft::runtime::{CallContext, Compilation, HostCalls, Runtime};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/plugins/math.wasm");
    let bytes =
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e} (run scripts/build-plugins)", path.display()))?;
    for reuse in [10_000, 1] {
        let limits = Limits {
            instance_reuse: reuse,
            ..Limits::default()
        };
        let rt = Runtime::new(limits.clone(), None, Compilation::Optimized)?;
        let plugin = Arc::new(rt.load("math", bytes.clone()).await?);
        let executor = Executor::new(limits.clone(), Vec::new());
        let served = Served {
            plugin: plugin.clone(),
            extra_tags: Vec::new(),
            settings: Manifest::default().settings(&limits, weft::tenancy::Ceiling::default()),
            public: false,
            size: bytes.len() as u64,
            replica_of: None,
        };
        executor.set_table(CommandTable::build(&[served], &[]).0);
        let host_calls: Arc<dyn HostCalls> = executor.clone();
        let n = if reuse == 1 { 2_000 } else { 100_000 };

        let started = Instant::now();
        for _ in 0..n {
            let context = context(&limits);
            plugin
                .invoke("math.add", "[2,3]", "{}", context, host_calls.clone())
                .await?;
        }
        println!(
            "instance reuse {reuse:>5}: plugin.invoke       {:>7.0} ns/call",
            ns(started, n)
        );

        let started = Instant::now();
        for _ in 0..n {
            let context = context(&limits);
            executor
                .dispatch(
                    "math.add",
                    vec![json!(2), json!(3)],
                    Map::new(),
                    &Selector::default(),
                    context,
                )
                .await?;
        }
        println!(
            "instance reuse {reuse:>5}: executor.dispatch   {:>7.0} ns/call",
            ns(started, n)
        );

        let frame =
            br#"{"role":"rpc","u":"1","cmds":[{"name":"r","fun":"math.add","args":[2,3],"kwargs":{},"locs":[]}]}"#;
        let started = Instant::now();
        for _ in 0..n {
            let response = executor.handle_frame(frame, None).await;
            std::hint::black_box(serde_json::to_string(&response)?);
        }
        println!(
            "instance reuse {reuse:>5}: request frame → JSON {:>7.0} ns/call",
            ns(started, n)
        );
    }
    Ok(())
}

fn context(limits: &Limits) -> CallContext {
    CallContext {
        deadline: tokio::time::Instant::now() + Duration::from_secs(5),
        budget: Duration::from_secs(5),
        depth: 0,
        memory_limit_bytes: limits.memory_limit_bytes,
        instance_reuse: limits.instance_reuse,
        grants: None,
        trace: None,
    }
}

fn ns(started: Instant, n: u32) -> f64 {
    started.elapsed().as_nanos() as f64 / f64::from(n)
}
