//! A loaded plugin: its compiled component, its commands and its warm instances.
//!
//! Instance strategy: an instance serves up to `instance_reuse` calls (the node's, or its
//! sidecar's `limits.instance_reuse`), one
//! call at a time, and is discarded at once after a trap, a deadline or a memory-limit hit,
//! so a broken instance never serves again. Warm reuse keeps a plugin's globals between its
//! own calls (never between plugins); `WEFT_INSTANCE_REUSE=1` gives every call a fresh
//! instance. `docs/runtime.md` has the measurements behind the default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use sha2::{Digest, Sha256};
use tokio::time::Instant;
use wasmtime::component::Component;
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};

use super::bindings::CommandPluginPre;
use super::cache::Origin;
use super::engine::{Backend, RuntimeError, Shared};
use super::host::{from_wit, CallScope, HostState};
use super::idle::Warm;
use super::{CallContext, Grants, HostCalls};
use crate::error::CommandError;

/// Extra time past a call's deadline before the host abandons it while it waits in a host
/// call (code running in the guest is stopped at the deadline by epoch interruption).
const ABANDON_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

static NEXT_PLUGIN_ID: AtomicU64 = AtomicU64::new(0);

/// Idle instances may keep at least this much linear memory (see `release`).
const WARM_MEMORY_FLOOR: usize = 16 << 20;

/// One command as a plugin describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandSpec {
    pub name: String,
    pub resources: Vec<String>,
    pub version: semver::Version,
    pub description: String,
    pub params: Vec<String>,
}

/// Which compiler produced the code a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Winch: compiled fast, runs slower; replaced by `Optimized` once that is compiled.
    Baseline,
    /// Cranelift.
    Optimized,
}

/// A plugin's compiled code, ready to instantiate, and the engine it runs on.
pub(crate) struct Code {
    engine: Engine,
    pre: CommandPluginPre<HostState>,
    tier: Tier,
}

impl Code {
    /// Links `component` (compiled by `backend`'s engine, as `tier`) against the plugin contract.
    pub(crate) fn new(
        backend: &Backend,
        name: &str,
        component: Component,
        tier: Tier,
    ) -> Result<Arc<Code>, RuntimeError> {
        let link_err = |e: wasmtime::Error| RuntimeError::Link {
            name: name.to_string(),
            reason: format!("{e:#}"),
        };
        let pre = backend.linker.instantiate_pre(&component).map_err(link_err)?;
        let pre = CommandPluginPre::new(pre).map_err(link_err)?;
        Ok(Arc::new(Code {
            engine: backend.engine.clone(),
            pre,
            tier,
        }))
    }
}

/// The code a plugin runs now; swapped once when baseline code is replaced.
type CodeCell = RwLock<Arc<Code>>;

/// Swaps better code into a plugin, if the plugin still exists.
pub(crate) struct Upgrade {
    cell: Weak<CodeCell>,
    plugin: u64,
    shared: Arc<Shared>,
}

impl Upgrade {
    /// Whether the plugin is still loaded.
    pub(crate) fn wanted(&self) -> bool {
        self.cell.strong_count() > 0
    }

    /// Makes `code` the plugin's code, and drops its idle instances of the old code; false when
    /// the plugin is gone.
    pub(crate) fn upgrade(&self, code: Arc<Code>) -> bool {
        let Some(cell) = self.cell.upgrade() else {
            return false;
        };
        // Idle instances of the old code are dropped under the lock, so none is put back after.
        let mut current = cell.write().unwrap_or_else(PoisonError::into_inner);
        *current = code;
        self.shared.idle.clear(self.plugin);
        true
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("tier", &self.tier())
            .finish_non_exhaustive()
    }
}

/// A compiled, validated plugin component.
pub struct Plugin {
    name: Arc<str>,
    digest: String,
    commands: Vec<CommandSpec>,
    code: Arc<CodeCell>,
    /// Identifies the plugin's instances in the node's idle pool.
    id: u64,
    origin: Origin,
    compile_time: std::time::Duration,
    shared: Arc<Shared>,
}

/// The hex sha256 of a component's bytes.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// [`digest`] on a blocking thread (a large component takes tens of milliseconds, too long for
/// an async worker); gives the bytes back.
pub async fn digest_off_thread<B: AsRef<[u8]> + Send + 'static>(bytes: B) -> Option<(B, String)> {
    tokio::task::spawn_blocking(move || {
        let digest = digest(bytes.as_ref());
        (bytes, digest)
    })
    .await
    .ok()
}

impl Plugin {
    pub(crate) async fn prepare(
        shared: Arc<Shared>,
        name: String,
        digest: String,
        code: Arc<Code>,
        origin: Origin,
        compile_time: std::time::Duration,
    ) -> Result<Plugin, RuntimeError> {
        let mut plugin = Plugin {
            name: Arc::from(name.as_str()),
            digest,
            commands: Vec::new(),
            code: Arc::new(RwLock::new(code)),
            id: NEXT_PLUGIN_ID.fetch_add(1, Ordering::Relaxed),
            origin,
            compile_time,
            shared,
        };
        let shared = plugin.shared.clone();
        let permit = shared.active.acquire().await.map_err(|e| RuntimeError::Instantiate {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let deadline = Instant::now() + plugin.shared.limits.call_deadline;
        let mut warm = plugin
            .instantiate(deadline, None)
            .await
            .map_err(|reason| RuntimeError::Instantiate {
                name: name.clone(),
                reason,
            })?;
        warm.store.data_mut().deadline = deadline;
        let ticking = plugin.shared.ticker.ticking();
        let specs = warm
            .bindings
            .call_describe(&mut warm.store)
            .await
            .map_err(|e| RuntimeError::Describe {
                name: name.clone(),
                reason: format!("{e:#}"),
            })?;
        drop(ticking);
        plugin.commands = validate(specs).map_err(|reason| RuntimeError::Commands {
            name: name.clone(),
            reason,
        })?;
        let reuse = plugin.shared.limits.instance_reuse;
        plugin.release(warm, reuse);
        drop(permit);
        Ok(plugin)
    }

    /// The file-derived name of the plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hex sha256 of the component.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether the component was compiled or came from the compile cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Which compiler produced the code the plugin runs now.
    pub fn tier(&self) -> Tier {
        self.code().tier
    }

    fn code(&self) -> Arc<Code> {
        self.code.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A handle to swap better code in later.
    pub(crate) fn upgrade_handle(&self) -> Upgrade {
        Upgrade {
            cell: Arc::downgrade(&self.code),
            plugin: self.id,
            shared: self.shared.clone(),
        }
    }

    /// How long compiling (or loading from the cache) took.
    pub fn compile_time(&self) -> std::time::Duration {
        self.compile_time
    }

    /// The commands the plugin serves.
    pub fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// Runs `command` in a warm or fresh instance. Everything (waiting for an instance slot,
    /// instantiating, running) happens within the call's deadline.
    pub async fn invoke(
        &self,
        command: &str,
        args_json: &str,
        kwargs_json: &str,
        context: CallContext,
        host_calls: Arc<dyn HostCalls>,
    ) -> Result<String, CommandError> {
        let budget_ms = context.budget.as_millis();
        let abandon_at = context.deadline + ABANDON_GRACE;
        let run = self.invoke_within(command, args_json, kwargs_json, context, host_calls);
        match tokio::time::timeout_at(abandon_at, run).await {
            Ok(outcome) => outcome,
            // Abandoned while waiting (for a slot, or in a host call); an instance in use is
            // dropped with the future and never serves again.
            Err(_) => Err(timeout(command, budget_ms)),
        }
    }

    async fn invoke_within(
        &self,
        command: &str,
        args_json: &str,
        kwargs_json: &str,
        context: CallContext,
        host_calls: Arc<dyn HostCalls>,
    ) -> Result<String, CommandError> {
        // A client's call takes an instance slot; calls made from inside a plugin run on their
        // caller's slot (their depth is bounded), so nested calls can never wait for slots
        // their own callers hold.
        let _permit = if context.depth == 0 {
            Some(
                self.shared
                    .active
                    .acquire()
                    .await
                    .map_err(|_| CommandError::Failed("the node is shutting down".into()))?,
            )
        } else {
            None
        };
        let mut warm = match self.take_idle(context.grants.as_ref()) {
            Some(warm) => warm,
            None => self
                .instantiate(context.deadline, context.grants.clone())
                .await
                .map_err(|reason| CommandError::Failed(format!("{}: instantiation failed: {reason}", self.name)))?,
        };
        let reuse = context.instance_reuse;
        {
            let state = warm.store.data_mut();
            state.deadline = context.deadline;
            state.limiter.limit = context.memory_limit_bytes;
            state.limiter.hit = false;
            state.scope = Some(CallScope {
                command: command.to_string(),
                context: context.clone(),
                host_calls,
                last_error_log: None,
            });
        }
        warm.store.set_epoch_deadline(1);
        warm.uses += 1;
        let ticking = self.shared.ticker.ticking();
        let result = warm
            .bindings
            .call_invoke(&mut warm.store, command, args_json, kwargs_json)
            .await;
        drop(ticking);
        let scope = warm.store.data_mut().scope.take();
        match result {
            Ok(Ok(json)) => {
                self.release(warm, reuse);
                // A result must fit in a frame, like a request.
                let limit = self.shared.limits.max_frame_bytes;
                if json.len() > limit {
                    return Err(CommandError::Failed(format!(
                        "{command}: the result of {} bytes exceeds the limit of {limit} bytes",
                        json.len()
                    )));
                }
                Ok(json)
            }
            Ok(Err(error)) => {
                self.release(warm, reuse);
                Err(from_wit(error))
            }
            Err(trap) => {
                let memory_hit = warm.store.data().limiter.hit;
                drop(warm);
                Err(self.trap_error(command, trap, memory_hit, scope, &context))
            }
        }
    }

    fn trap_error(
        &self,
        command: &str,
        trap: wasmtime::Error,
        memory_hit: bool,
        scope: Option<CallScope>,
        context: &CallContext,
    ) -> CommandError {
        if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return timeout(command, context.budget.as_millis());
        }
        if memory_hit {
            return CommandError::Failed(format!(
                "{command}: exceeded the memory limit of {} MiB per instance",
                context.memory_limit_bytes >> 20
            ));
        }
        let reason = match trap.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{trap:#}"),
        };
        match scope.and_then(|s| s.last_error_log) {
            Some(logged) => CommandError::Failed(format!("{command}: plugin trapped: {logged} ({reason})")),
            None => CommandError::Failed(format!("{command}: plugin trapped: {reason}")),
        }
    }

    /// A new instance, with `grants` (none: nothing of the host is visible to it).
    async fn instantiate(&self, deadline: Instant, grants: Option<Arc<Grants>>) -> Result<Warm, String> {
        let _ticking = self.shared.ticker.ticking();
        let code = self.code();
        loop {
            let state = HostState::new(
                self.name.clone(),
                self.shared.limits.memory_limit_bytes,
                deadline,
                grants.as_deref(),
            )?;
            let mut store = Store::new(&code.engine, state);
            store.limiter(|state| &mut state.limiter);
            store.epoch_deadline_callback(|ctx| {
                if Instant::now() >= ctx.data().deadline {
                    Ok(UpdateDeadline::Interrupt)
                } else {
                    Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
                }
            });
            store.set_epoch_deadline(1);
            match code.pre.instantiate_async(&mut store).await {
                Ok(bindings) => {
                    let limiter = &mut store.data_mut().limiter;
                    limiter.initial = limiter.current;
                    return Ok(Warm {
                        store,
                        bindings,
                        uses: 0,
                        grants,
                        code: code.clone(),
                    });
                }
                // The pool is full: idle instances give way to a call.
                Err(e) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() && self.shared.idle.evict_one() => {
                    continue
                }
                Err(e) => return Err(format!("{e:#}")),
            }
        }
    }

    /// An idle instance made with the same grants; one made with others (the sidecar changed,
    /// or it is the instance that answered `describe`) is dropped. (Idle instances are all of
    /// the current code: a swap drops them, and `release` keeps only those of the current.)
    fn take_idle(&self, grants: Option<&Arc<Grants>>) -> Option<Warm> {
        let warm = self.shared.idle.take(self.id)?;
        let same = match (warm.grants.as_ref(), grants) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        same.then_some(warm)
    }

    /// Keeps a healthy instance warm, unless it has served its share of calls or grew.
    fn release(&self, warm: Warm, reuse: u32) {
        if warm.uses >= reuse {
            return;
        }
        // An instance whose memory grew past twice its size after instantiation would keep
        // that memory while idle; start afresh instead.
        let limiter = &warm.store.data().limiter;
        if limiter.current > limiter.initial.saturating_mul(2).max(WARM_MEMORY_FLOOR) {
            return;
        }
        // Checked and put under the lock: an upgrade cannot slip in between.
        let code = self.code.read().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&warm.code, &code) {
            self.shared.idle.put(self.id, warm);
        }
    }

    /// The plugin's idle warm instances and the linear memory they hold, in bytes.
    pub fn warm(&self) -> (usize, usize) {
        self.shared.idle.held_by(self.id)
    }

    /// Drops the plugin's idle instances (after its settings changed, for example).
    pub fn drain_idle(&self) {
        self.shared.idle.clear(self.id);
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.drain_idle();
    }
}

fn timeout(command: &str, deadline_ms: u128) -> CommandError {
    CommandError::Timeout(format!(
        "{command}: did not finish within its deadline of {deadline_ms} ms"
    ))
}

/// Checks what `describe()` returned: names present and unique, versions semantic.
fn validate(specs: Vec<super::bindings::weft::plugin::types::CommandSpec>) -> Result<Vec<CommandSpec>, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut commands = Vec::with_capacity(specs.len());
    if specs.is_empty() {
        return Err("the plugin describes no commands".into());
    }
    for spec in specs {
        if spec.name.trim().is_empty() || spec.name.chars().any(char::is_whitespace) {
            return Err(format!("command name {:?} is empty or contains whitespace", spec.name));
        }
        if !seen.insert(spec.name.clone()) {
            return Err(format!("command `{}` is described twice", spec.name));
        }
        let version = semver::Version::parse(&spec.version).map_err(|e| {
            format!(
                "command `{}`: version {:?} is not semantic: {e}",
                spec.name, spec.version
            )
        })?;
        commands.push(CommandSpec {
            name: spec.name,
            resources: spec.resources,
            version,
            description: spec.description,
            params: spec.params,
        });
    }
    Ok(commands)
}
