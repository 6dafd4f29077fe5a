//! The WebAssembly runtime: a wasmtime [`Engine`](wasmtime::Engine) per compiler (Cranelift,
//! and Winch for a fast first compile), plugin
//! components compiled once and instantiated from an `InstancePre`, per-call deadlines by
//! epoch interruption, a memory limit per instance, and WASI with nothing granted.
//!
//! The runtime knows nothing of the network: calls a plugin makes through `host.call` go to a
//! [`HostCalls`] implementation that the node provides.

mod bindings;
mod cache;
mod engine;
mod host;
mod idle;
mod plugin;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::CommandError;

pub use cache::Origin;
pub use engine::{Compilation, Runtime, RuntimeError};
pub use plugin::{digest, digest_off_thread, CommandSpec, Plugin, Tier};

/// A future returned by [`HostCalls::call`].
pub type CallFuture = Pin<Box<dyn Future<Output = Result<String, CommandError>> + Send>>;

/// A command called by a plugin through `host.call`.
#[derive(Debug, Clone)]
pub struct GuestCall {
    pub command: String,
    /// JSON array of positional arguments.
    pub args_json: String,
    /// JSON object of keyword arguments (possibly empty).
    pub kwargs_json: String,
    pub resources: Vec<String>,
    /// The plugin making the call (`TENANT/NAME` for a tenant's plugin).
    pub plugin: Arc<str>,
    /// The context of the call that made this one.
    pub parent: CallContext,
}

/// Where the calls plugins make through `host.call` go.
pub trait HostCalls: Send + Sync + 'static {
    fn call(&self, call: GuestCall) -> CallFuture;
}

/// What travels with one call into a plugin.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the call must have finished.
    pub deadline: Instant,
    /// The deadline's length, for messages.
    pub budget: std::time::Duration,
    /// How many `host.call`s deep this call is (0 for a client's call).
    pub depth: u32,
    /// Linear memory the serving instance may use.
    pub memory_limit_bytes: usize,
    /// Calls the serving instance may serve before it is replaced (1: a fresh instance per call).
    pub instance_reuse: u32,
    /// What the serving plugin's instances are granted beyond the contract (files, environment).
    pub grants: Option<Arc<Grants>>,
    /// The id of the client request this call serves (its `u`), carried across hops so every
    /// node's log lines for it can be found.
    pub trace: Option<Arc<str>>,
}

/// Capabilities granted to a plugin by its sidecar (and allowed by its tenant): nothing else
/// of the host is visible to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// A host directory the plugin may read, mounted read-only at [`GRANTED_DIR`].
    pub read_dir: Option<std::path::PathBuf>,
    /// Environment variables the plugin sees, with the node's values.
    pub env: Vec<(String, String)>,
}

/// Where a granted directory appears inside a plugin.
pub const GRANTED_DIR: &str = "/data";
