//! A loaded plugin: its compiled component, its commands and its warm instances.
//!
//! Instance strategy: an instance serves up to `instance_reuse` calls (see `config.rs`), one
//! call at a time, and is discarded at once after a trap, a deadline or a memory-limit hit,
//! so a broken instance never serves again. Warm reuse keeps a plugin's globals between its
//! own calls (never between plugins); `WEFT_INSTANCE_REUSE=1` gives every call a fresh
//! instance. `docs/runtime.md` has the measurements behind the default.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::time::Instant;
use wasmtime::component::Component;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{CommandPlugin, CommandPluginPre};
use super::engine::{RuntimeError, Shared};
use super::host::{from_wit, CallScope, HostState};
use super::{CallContext, HostCalls};
use crate::error::CommandError;

/// Extra time past a call's deadline before the host abandons it while it waits in a host
/// call (code running in the guest is stopped at the deadline by epoch interruption).
const ABANDON_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// One command as a plugin describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandSpec {
    pub name: String,
    pub resources: Vec<String>,
    pub version: semver::Version,
    pub description: String,
    pub params: Vec<String>,
}

struct Warm {
    store: Store<HostState>,
    bindings: CommandPlugin,
    uses: u32,
}

/// A compiled, validated plugin component.
pub struct Plugin {
    name: Arc<str>,
    digest: String,
    commands: Vec<CommandSpec>,
    pre: CommandPluginPre<HostState>,
    idle: Mutex<Vec<Warm>>,
    shared: Arc<Shared>,
}

/// The hex sha256 of a component's bytes.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Plugin {
    pub(crate) async fn prepare(
        shared: Arc<Shared>,
        name: String,
        digest: String,
        component: Component,
    ) -> Result<Plugin, RuntimeError> {
        let link_err = |e: wasmtime::Error| RuntimeError::Link {
            name: name.clone(),
            reason: format!("{e:#}"),
        };
        let pre = shared.linker.instantiate_pre(&component).map_err(link_err)?;
        let pre = CommandPluginPre::new(pre).map_err(link_err)?;
        let mut plugin = Plugin {
            name: Arc::from(name.as_str()),
            digest,
            commands: Vec::new(),
            pre,
            idle: Mutex::new(Vec::new()),
            shared,
        };
        let shared = plugin.shared.clone();
        let permit = shared.active.acquire().await.map_err(|e| RuntimeError::Instantiate {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let deadline = Instant::now() + plugin.shared.limits.call_deadline;
        let mut warm = plugin
            .instantiate(deadline)
            .await
            .map_err(|reason| RuntimeError::Instantiate {
                name: name.clone(),
                reason,
            })?;
        warm.store.data_mut().deadline = deadline;
        let specs = warm
            .bindings
            .call_describe(&mut warm.store)
            .await
            .map_err(|e| RuntimeError::Describe {
                name: name.clone(),
                reason: format!("{e:#}"),
            })?;
        plugin.commands = validate(specs).map_err(|reason| RuntimeError::Commands {
            name: name.clone(),
            reason,
        })?;
        plugin.release(warm);
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

    /// The commands the plugin serves.
    pub fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// Runs `command` in a warm or fresh instance, within the call's deadline.
    pub async fn invoke(
        &self,
        command: &str,
        args_json: &str,
        kwargs_json: &str,
        context: CallContext,
        host_calls: Arc<dyn HostCalls>,
    ) -> Result<String, CommandError> {
        let limits = &self.shared.limits;
        let _permit = self
            .shared
            .active
            .acquire()
            .await
            .map_err(|_| CommandError::Failed("the node is shutting down".into()))?;
        let mut warm = match self.take_idle() {
            Some(warm) => warm,
            None => self
                .instantiate(context.deadline)
                .await
                .map_err(|reason| CommandError::Failed(format!("{}: instantiation failed: {reason}", self.name)))?,
        };
        {
            let state = warm.store.data_mut();
            state.deadline = context.deadline;
            state.scope = Some(CallScope {
                command: command.to_string(),
                context,
                host_calls,
                last_error_log: None,
            });
        }
        warm.store.set_epoch_deadline(1);
        warm.uses += 1;

        let call = async move {
            let result = warm
                .bindings
                .call_invoke(&mut warm.store, command, args_json, kwargs_json)
                .await;
            (warm, result)
        };
        let deadline_ms = limits.call_deadline.as_millis();
        let (mut warm, result) = match tokio::time::timeout_at(context.deadline + ABANDON_GRACE, call).await {
            Ok(done) => done,
            // Abandoned while waiting in a host call; the instance is dropped with the future.
            Err(_) => return Err(timeout(command, deadline_ms)),
        };
        let scope = warm.store.data_mut().scope.take();
        match result {
            Ok(Ok(json)) => {
                self.release(warm);
                Ok(json)
            }
            Ok(Err(error)) => {
                self.release(warm);
                Err(from_wit(error))
            }
            Err(trap) => {
                let memory_hit = warm.store.data().limiter.hit;
                drop(warm);
                Err(self.trap_error(command, trap, memory_hit, scope, deadline_ms))
            }
        }
    }

    fn trap_error(
        &self,
        command: &str,
        trap: wasmtime::Error,
        memory_hit: bool,
        scope: Option<CallScope>,
        deadline_ms: u128,
    ) -> CommandError {
        if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return timeout(command, deadline_ms);
        }
        if memory_hit {
            return CommandError::Failed(format!(
                "{command}: exceeded the memory limit of {} MiB per instance",
                self.shared.limits.memory_limit_bytes >> 20
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

    async fn instantiate(&self, deadline: Instant) -> Result<Warm, String> {
        let state = HostState::new(self.name.clone(), self.shared.limits.memory_limit_bytes, deadline);
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        store.set_epoch_deadline(1);
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(Warm {
            store,
            bindings,
            uses: 0,
        })
    }

    fn take_idle(&self) -> Option<Warm> {
        let warm = self.idle.lock().ok()?.pop()?;
        self.shared.idle.fetch_sub(1, Ordering::Relaxed);
        Some(warm)
    }

    /// Keeps a healthy instance warm, unless it has served its share of calls or the node
    /// already keeps as many idle instances as it may.
    fn release(&self, warm: Warm) {
        if warm.uses >= self.shared.limits.instance_reuse {
            return;
        }
        if self.shared.idle.fetch_add(1, Ordering::Relaxed) >= self.shared.max_idle {
            self.shared.idle.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        match self.idle.lock() {
            Ok(mut idle) => idle.push(warm),
            Err(_) => {
                self.shared.idle.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Ok(idle) = self.idle.get_mut() {
            self.shared.idle.fetch_sub(idle.len(), Ordering::Relaxed);
        }
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
