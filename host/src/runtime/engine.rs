//! The node's wasmtime engine and the ticker that drives call deadlines.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::CommandPlugin;
use super::cache::{CompileCache, Origin};
use super::host::HostState;
use super::idle::IdlePool;
use super::plugin::{Code, Plugin, Tier};
use crate::config::{Limits, EPOCH_TICK};

/// Why the runtime or a plugin could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("creating the wasmtime engine: {0}")]
    Engine(String),
    #[error("{name}: not a valid weft plugin component: {reason}")]
    Compile { name: String, reason: String },
    #[error("{name}: does not fit the weft:plugin/command-plugin world: {reason}")]
    Link { name: String, reason: String },
    #[error("{name}: instantiation failed: {reason}")]
    Instantiate { name: String, reason: String },
    #[error("{name}: describe() failed: {reason}")]
    Describe { name: String, reason: String },
    #[error("{name}: invalid command list: {reason}")]
    Commands { name: String, reason: String },
}

/// An engine and the linker of the plugin contract for it.
pub(crate) struct Backend {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
}

impl Backend {
    fn new(engine: Engine) -> Result<Self, RuntimeError> {
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("adding WASI to the linker: {e:#}")))?;
        CommandPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| RuntimeError::Engine(format!("adding weft:plugin/host to the linker: {e:#}")))?;
        Ok(Backend { engine, linker })
    }
}

/// How a plugin the compile cache does not hold is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compilation {
    /// With the baseline compiler (Winch) first, which compiles 3–4 times faster: the
    /// plugin serves at once, and is swapped for Cranelift's code (which runs faster, and goes
    /// to the cache) when that is ready. Where Winch is not available, as `Optimized`.
    #[default]
    Tiered,
    /// With Cranelift only, before the plugin serves.
    Optimized,
}

impl std::str::FromStr for Compilation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tiered" => Ok(Compilation::Tiered),
            "optimized" => Ok(Compilation::Optimized),
            other => Err(format!("`{other}` is not a compilation mode (tiered, optimized)")),
        }
    }
}

impl Shared {
    /// The baseline compiler's backend, created at its first use (a node whose plugins are all
    /// in the cache never pays for it).
    pub(crate) fn baseline(&self) -> Option<&Backend> {
        self.baseline
            .get_or_init(|| {
                let backend = baseline_backend(&self.limits)?;
                self.ticker.add(backend.engine.clone());
                Some(backend)
            })
            .as_ref()
    }
}

/// State shared by the runtime and every plugin it loaded.
pub(crate) struct Shared {
    /// Cranelift, with the pooling allocator: the code plugins run on for good.
    pub(crate) optimized: Backend,
    /// Winch, with the same pooling limits: the code a plugin runs on until Cranelift's is ready.
    /// Created at the first compile that needs it (`None` inside: unavailable, or turned off).
    baseline: std::sync::OnceLock<Option<Backend>>,
    /// One background compilation at a time, so that they never crowd out calls.
    pub(crate) optimizing: Semaphore,
    pub(crate) limits: Limits,
    /// Instances running a call (or being created); half of the instance capacity.
    pub(crate) active: Semaphore,
    /// Warm instances kept idle across all plugins; bounded by the other half.
    pub(crate) idle: IdlePool,
    pub(crate) ticker: Arc<Ticker>,
}

/// The node's WebAssembly runtime.
pub struct Runtime {
    pub(crate) shared: Arc<Shared>,
    cache: Option<CompileCache>,
}

impl Runtime {
    /// Creates Cranelift's engine (pooling allocator when the machine allows it), the linker
    /// with WASI and the `weft:plugin/host` interface, and starts the epoch ticker. Winch's
    /// engine is made the same way at the first compile that needs it.
    /// `cache_dir`: where compiled components are kept between runs (none: always compile).
    pub fn new(
        limits: Limits,
        cache_dir: Option<std::path::PathBuf>,
        compilation: Compilation,
    ) -> Result<Self, RuntimeError> {
        let optimized = Backend::new(build_engine(&limits, wasmtime::Strategy::Cranelift)?)?;
        let ticker = Ticker::start(optimized.engine.clone())?;

        let baseline = std::sync::OnceLock::new();
        if compilation == Compilation::Optimized {
            let _ = baseline.set(None);
        }
        let half = (limits.max_instances / 2).max(1) as usize;
        let shared = Arc::new(Shared {
            optimized,
            baseline,
            optimizing: Semaphore::new(1),
            active: Semaphore::new(half),
            idle: IdlePool::new(half),
            limits,
            ticker,
        });
        let cache = cache_dir.map(|dir| CompileCache::new(dir, &shared.optimized.engine));
        Ok(Runtime { shared, cache })
    }

    /// Compiles a component (or loads its compilation from the cache) and prepares it for
    /// instantiation: validates that it fits the contract and asks it for its commands.
    /// Compilation runs off the async workers. A plugin compiled by the baseline compiler is
    /// swapped for Cranelift's code in the background (see [`Compilation::Tiered`]).
    #[tracing::instrument(skip(self, bytes), fields(size = bytes.len()))]
    pub async fn load(&self, name: &str, bytes: Vec<u8>) -> Result<Plugin, RuntimeError> {
        let shared = self.shared.clone();
        let cache = self.cache.clone();
        let digest = super::plugin::digest(&bytes);
        let key = digest.clone();
        let plugin_name = name.to_string();
        let started = std::time::Instant::now();
        let compiled = tokio::task::spawn_blocking(move || -> Result<(Component, Tier, Origin, Vec<u8>), String> {
            let optimized = &shared.optimized.engine;
            if let Some(component) = cache.as_ref().and_then(|c| c.load(optimized, &key)) {
                return Ok((component, Tier::Optimized, Origin::Cache, bytes));
            }
            if let Some(baseline) = shared.baseline() {
                match Component::new(&baseline.engine, &bytes) {
                    Ok(component) => return Ok((component, Tier::Baseline, Origin::Compiled, bytes)),
                    Err(e) => tracing::debug!(
                        plugin = %plugin_name,
                        error = %format!("{e:#}"),
                        "the baseline compiler refused the component; compiling with cranelift"
                    ),
                }
            }
            let component = compile_optimized(optimized, cache.as_ref(), &key, &bytes)?;
            Ok((component, Tier::Optimized, Origin::Compiled, bytes))
        })
        .await
        .map_err(|e| RuntimeError::Compile {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let (component, tier, origin, bytes) = compiled.map_err(|reason| RuntimeError::Compile {
            name: name.to_string(),
            reason,
        })?;
        let compile_time = started.elapsed();
        tracing::debug!(
            plugin = name,
            ?origin,
            ?tier,
            elapsed_ms = compile_time.as_millis() as u64,
            "compiled"
        );
        let backend = match tier {
            Tier::Baseline => self.shared.baseline(),
            Tier::Optimized => None,
        };
        let code = Code::new(backend.unwrap_or(&self.shared.optimized), name, component, tier)?;
        let plugin = Plugin::prepare(
            self.shared.clone(),
            name.to_string(),
            digest,
            code,
            origin,
            compile_time,
        )
        .await?;
        if tier == Tier::Baseline {
            self.optimize_later(&plugin, bytes);
        }
        Ok(plugin)
    }

    /// Compiles `plugin`'s component with Cranelift in the background, stores it in the cache
    /// and swaps it in: calls in flight finish on the baseline code, later ones run the new.
    fn optimize_later(&self, plugin: &Plugin, bytes: Vec<u8>) {
        let shared = self.shared.clone();
        let cache = self.cache.clone();
        let target = plugin.upgrade_handle();
        let name = plugin.name().to_string();
        let key = plugin.digest().to_string();
        tokio::spawn(async move {
            let Ok(_turn) = shared.optimizing.acquire().await else {
                return;
            };
            // A plugin replaced or withdrawn meanwhile needs no better code.
            if !target.wanted() {
                return;
            }
            let engine = shared.optimized.engine.clone();
            let started = std::time::Instant::now();
            // A thread of its own rather than the blocking pool: the node does not wait for it
            // when it stops.
            let (done, compiled) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new().name("weft-optimize".into()).spawn(move || {
                // Another node sharing the cache (or a file of the same bytes) may have compiled it.
                if let Some(component) = cache.as_ref().and_then(|c| c.load(&engine, &key)) {
                    let _ = done.send(Ok(component));
                    return;
                }
                // On one thread: on the shared pool, its many jobs would queue ahead of (and
                // starve) the next plugin's baseline compile and the calls being served.
                let compiled = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "weft-optimize".into())
                    .build()
                    .map_err(|e| format!("a thread pool for compiling: {e}"))
                    .and_then(|pool| pool.install(|| compile_optimized(&engine, cache.as_ref(), &key, &bytes)));
                let _ = done.send(compiled);
            });
            let compiled = match spawned {
                Ok(_) => compiled
                    .await
                    .map_err(|_| "the compiling thread ended without an answer".to_string())
                    .and_then(|compiled| compiled),
                Err(e) => Err(format!("starting a compiling thread: {e}")),
            };
            let upgraded = compiled
                .and_then(|component| {
                    Code::new(&shared.optimized, &name, component, Tier::Optimized).map_err(|e| e.to_string())
                })
                .map(|code| target.upgrade(code));
            match upgraded {
                Ok(true) => tracing::info!(
                    plugin = %name,
                    compile_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "plugin now runs cranelift's code"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    plugin = %name,
                    error = %e,
                    "cranelift could not compile the plugin; its baseline code keeps serving"
                ),
            }
        });
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.ticker.stop();
    }
}

/// An engine compiling with `strategy`, with the pooling allocator and its limits (memory size,
/// memories, tables and instance sizes per component): both compilers' code runs under the same.
fn build_engine(limits: &Limits, strategy: wasmtime::Strategy) -> Result<Engine, RuntimeError> {
    let mut config = base_config();
    config.strategy(strategy);
    let mut pooling = PoolingAllocationConfig::default();
    let instances = limits.max_instances.max(2);
    pooling
        .total_component_instances(instances)
        // A Rust wasip2 component has a handful of core instances, memories and tables;
        // language runtimes (Python, JavaScript) a few more.
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(limits.memory_limit_bytes.max(1 << 20))
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_memories_per_component(8)
        .max_tables_per_component(16);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    match Engine::new(&config) {
        Ok(engine) => {
            tracing::info!(instances, compiler = ?strategy, "wasmtime engine with the pooling allocator");
            Ok(engine)
        }
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "the pooling allocator is unavailable on this machine; falling back to on-demand \
                 instance allocation (slower instantiation)"
            );
            let mut config = base_config();
            config.strategy(strategy);
            Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
        }
    }
}

/// Compiles with Cranelift (`engine`) and keeps the result in `cache`.
fn compile_optimized(
    engine: &Engine,
    cache: Option<&CompileCache>,
    key: &str,
    bytes: &[u8],
) -> Result<Component, String> {
    let component = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let Some(cache) = cache {
        cache.store(key, &component);
    }
    Ok(component)
}

/// The baseline compiler's backend, where Winch supports the machine (x86_64); `None` elsewhere
/// or when it cannot be created (plugins are then compiled by Cranelift only).
fn baseline_backend(limits: &Limits) -> Option<Backend> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    match build_engine(limits, wasmtime::Strategy::Winch).and_then(Backend::new) {
        Ok(backend) => Some(backend),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no baseline compiler; plugins are compiled by cranelift before they serve");
            None
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Plugins use the synchronous component model; skipping the async-component machinery
    // makes every call cheaper.
    config.concurrency_support(false);
    config
}

/// Advances the engines' epochs every [`EPOCH_TICK`] while guest code may run, and sleeps
/// otherwise: an idle node costs no wake-ups.
pub(crate) struct Ticker {
    /// The baseline compiler's engine, once created (the optimizing one is the thread's own).
    baseline: std::sync::OnceLock<Engine>,
    /// Calls and instantiations running now.
    running: AtomicUsize,
    stop: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// Keeps the ticker going while held.
pub(crate) struct Ticking(Arc<Ticker>);

impl Ticker {
    fn start(engine: Engine) -> Result<Arc<Ticker>, RuntimeError> {
        let ticker = Arc::new(Ticker {
            baseline: std::sync::OnceLock::new(),
            running: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        });
        let me = ticker.clone();
        let handle = std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || {
                while !me.stop.load(Ordering::Relaxed) {
                    if me.running.load(Ordering::SeqCst) == 0 {
                        // Woken by the next call (or within 100 ms to notice a stop).
                        std::thread::park_timeout(std::time::Duration::from_millis(100));
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    if let Some(baseline) = me.baseline.get() {
                        baseline.increment_epoch();
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("starting the epoch ticker: {e}")))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// Advances `engine`'s epoch too.
    fn add(&self, engine: Engine) {
        let _ = self.baseline.set(engine);
    }

    /// Guest code is about to run: the epoch must advance until the guard is dropped.
    pub(crate) fn ticking(self: &Arc<Self>) -> Ticking {
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
        Ticking(self.clone())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}
