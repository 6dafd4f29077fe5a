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
use super::plugin::Plugin;
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

/// State shared by the runtime and every plugin it loaded.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
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
    /// Creates the engine (pooling allocator when the machine allows it), the linker with WASI
    /// and the `weft:plugin/host` interface, and starts the epoch ticker.
    /// `cache_dir`: where compiled components are kept between runs (none: always compile).
    pub fn new(limits: Limits, cache_dir: Option<std::path::PathBuf>) -> Result<Self, RuntimeError> {
        let engine = build_engine(&limits)?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("adding WASI to the linker: {e:#}")))?;
        CommandPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| RuntimeError::Engine(format!("adding weft:plugin/host to the linker: {e:#}")))?;

        let ticker = Ticker::start(engine.clone())?;

        let half = (limits.max_instances / 2).max(1) as usize;
        let shared = Arc::new(Shared {
            engine,
            linker,
            active: Semaphore::new(half),
            idle: IdlePool::new(half),
            limits,
            ticker,
        });
        let cache = cache_dir.map(|dir| CompileCache::new(dir, &shared.engine));
        Ok(Runtime { shared, cache })
    }

    /// Compiles a component (or loads its compilation from the cache) and prepares it for
    /// instantiation: validates that it fits the contract and asks it for its commands.
    /// Compilation runs off the async workers.
    #[tracing::instrument(skip(self, bytes), fields(size = bytes.len()))]
    pub async fn load(&self, name: &str, bytes: Vec<u8>) -> Result<Plugin, RuntimeError> {
        let engine = self.shared.engine.clone();
        let cache = self.cache.clone();
        let digest = super::plugin::digest(&bytes);
        let key = digest.clone();
        let started = std::time::Instant::now();
        let compiled = tokio::task::spawn_blocking(move || -> Result<(Component, Origin), String> {
            if let Some(component) = cache.as_ref().and_then(|c| c.load(&engine, &key)) {
                return Ok((component, Origin::Cache));
            }
            let component = Component::new(&engine, &bytes).map_err(|e| format!("{e:#}"))?;
            if let Some(cache) = &cache {
                cache.store(&key, &component);
            }
            Ok((component, Origin::Compiled))
        })
        .await
        .map_err(|e| RuntimeError::Compile {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let (component, origin) = compiled.map_err(|reason| RuntimeError::Compile {
            name: name.to_string(),
            reason,
        })?;
        let compile_time = started.elapsed();
        tracing::debug!(
            plugin = name,
            ?origin,
            elapsed_ms = compile_time.as_millis() as u64,
            "compiled"
        );
        Plugin::prepare(
            self.shared.clone(),
            name.to_string(),
            digest,
            component,
            origin,
            compile_time,
        )
        .await
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

fn build_engine(limits: &Limits) -> Result<Engine, RuntimeError> {
    let mut config = base_config();
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
            tracing::info!(instances, "wasmtime engine with the pooling allocator");
            Ok(engine)
        }
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "the pooling allocator is unavailable on this machine; falling back to on-demand \
                 instance allocation (slower instantiation)"
            );
            Engine::new(&base_config()).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
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

/// Advances the engine's epoch every [`EPOCH_TICK`] while guest code may run, and sleeps
/// otherwise: an idle node costs no wake-ups.
pub(crate) struct Ticker {
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
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("starting the epoch ticker: {e}")))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
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
