//! What a plugin instance's store holds, and the host side of `weft:plugin/host`.

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::bindings::weft::plugin::host::{Host, Level};
use super::bindings::weft::plugin::types::{self, CallError};
use super::{CallContext, Grants, GuestCall, HostCalls};
use crate::error::CommandError;

/// Longest plugin log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 8 * 1024;

/// The store data of one plugin instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    plugin: Arc<str>,
    /// When the current call (or instantiation) must end; read by the epoch callback.
    pub(crate) deadline: Instant,
    /// Set while a call runs.
    pub(crate) scope: Option<CallScope>,
}

/// The call an instance is serving.
pub(crate) struct CallScope {
    pub(crate) command: String,
    pub(crate) context: CallContext,
    pub(crate) host_calls: Arc<dyn HostCalls>,
    /// The last error-level line the plugin logged (a panic message, with the Rust SDK).
    pub(crate) last_error_log: Option<String>,
}

impl HostState {
    /// The state of a new instance. Nothing is granted but `grants`: no other files, no other
    /// environment, no arguments, sockets or name lookups; stdin is closed and stdout/stderr
    /// are discarded (plugins log through `host.log`).
    pub(crate) fn new(
        plugin: Arc<str>,
        memory_limit: usize,
        deadline: Instant,
        grants: Option<&Grants>,
    ) -> Result<Self, String> {
        let mut builder = WasiCtx::builder();
        builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if let Some(grants) = grants {
            if let Some(dir) = &grants.read_dir {
                builder
                    .preopened_dir(dir, super::GRANTED_DIR, FsPerms::ReadOnly)
                    .map_err(|e| format!("the granted directory {}: {e:#}", dir.display()))?;
            }
            for (name, value) in &grants.env {
                builder.env(name, value);
            }
        }
        let wasi = builder.build();
        Ok(HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                hit: false,
                current: 0,
                initial: 0,
            },
            plugin,
            deadline,
            scope: None,
        })
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps an instance's linear memory, remembers that a plugin hit the cap, and tracks how
/// much memory the instance holds.
pub(crate) struct MemoryLimiter {
    pub(crate) limit: usize,
    /// The current call asked for more than `limit`.
    pub(crate) hit: bool,
    /// Bytes of linear memory granted so far (all memories of the instance).
    pub(crate) current: usize,
    /// `current` right after instantiation.
    pub(crate) initial: usize,
}

/// Table elements one instance may have; generous, but bounded.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.current = self.current.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl types::Host for HostState {}

impl Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin;
        let command = self.scope.as_ref().map_or("", |s| s.command.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "weft::plugin", plugin, command, "{message}"),
            Level::Debug => tracing::debug!(target: "weft::plugin", plugin, command, "{message}"),
            Level::Info => tracing::info!(target: "weft::plugin", plugin, command, "{message}"),
            Level::Warn => tracing::warn!(target: "weft::plugin", plugin, command, "{message}"),
            Level::Error => {
                tracing::error!(target: "weft::plugin", plugin, command, "{message}");
                if let Some(scope) = self.scope.as_mut() {
                    scope.last_error_log = Some(message);
                }
            }
        }
    }

    async fn call(
        &mut self,
        command: String,
        args_json: String,
        kwargs_json: String,
        resources: Vec<String>,
    ) -> Result<String, CallError> {
        let Some(scope) = self.scope.as_ref() else {
            return Err(CallError::Denied(
                "host.call is only available while serving a command".into(),
            ));
        };
        let call = GuestCall {
            command,
            args_json,
            kwargs_json,
            resources,
            plugin: self.plugin.clone(),
            parent: scope.context.clone(),
        };
        let future = scope.host_calls.call(call);
        future.await.map_err(to_wit)
    }
}

fn to_wit(error: CommandError) -> CallError {
    match error {
        CommandError::NotFound(m) => CallError::NotFound(m),
        CommandError::InvalidArgs(m) => CallError::InvalidArgs(m),
        CommandError::Failed(m) => CallError::Failed(m),
        CommandError::Denied(m) => CallError::Denied(m),
        CommandError::Timeout(m) => CallError::Timeout(m),
    }
}

pub(crate) fn from_wit(error: CallError) -> CommandError {
    match error {
        CallError::NotFound(m) => CommandError::NotFound(m),
        CallError::InvalidArgs(m) => CommandError::InvalidArgs(m),
        CallError::Failed(m) => CommandError::Failed(m),
        CallError::Denied(m) => CommandError::Denied(m),
        CallError::Timeout(m) => CommandError::Timeout(m),
    }
}
