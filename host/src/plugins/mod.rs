//! Plugin components on disk: the watched directory, sidecar manifests, and the table of
//! commands a node serves from them.

mod directory;
mod manifest;
pub mod signature;
mod table;
mod watcher;

pub use directory::{LoadedReplica, PluginDir, ReplicaModule};
pub use manifest::{Manifest, PluginSettings};
pub use table::{CommandReport, CommandTable, LocalCommand, PluginReport, Selector, Served};
pub use watcher::{watch, WatchHandle};
