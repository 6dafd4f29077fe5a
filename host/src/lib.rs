//! weft: a fabric of nodes whose commands are WebAssembly components.
//!
//! - [`runtime`]: the wasmtime engine, plugin instances, limits and the sandbox.
//! - [`plugins`]: finding and loading plugin components; the table of commands a node serves.
//! - [`rpc`]: the MPREG-compatible client protocol, dependency resolution and execution.
//! - [`net`]: the WebSocket server and client.
//! - [`fabric`]: peers, membership, catalog gossip, failure detection and remote routing.
//! - [`replication`]: plugins fetched from other nodes by digest and run locally.
//! - [`config`]: limits and timeouts, with their defaults and environment variables.
//! - [`topology`]: local fabrics in the federation guide's shapes, built and measured.

pub mod bench;
pub mod config;
pub mod error;
pub mod fabric;
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
pub mod net;
pub mod node;
pub mod otlp;
pub mod plugins;
pub mod replication;
pub mod rpc;
pub mod runtime;
pub mod sdk;
pub mod tenancy;
pub mod topology;

pub use error::CommandError;
