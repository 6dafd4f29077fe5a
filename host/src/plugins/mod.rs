//! Plugin components on disk and the table of commands a node serves from them.

mod table;

use std::path::Path;
use std::sync::Arc;

use crate::runtime::{Plugin, Runtime};

pub use table::{CommandTable, LocalCommand, Selector};

/// Why a plugin directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PluginDirError {
    #[error("reading plugin directory {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// Loads every `*.wasm` component in `dir` (sorted by file name). A file that fails to load
/// is reported and skipped; the others are served.
pub async fn load_dir(runtime: &Runtime, dir: &Path) -> Result<Vec<Arc<Plugin>>, PluginDirError> {
    let read_err = |source| PluginDirError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut plugins = Vec::with_capacity(files.len());
    for path in files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read plugin");
                continue;
            }
        };
        match runtime.load(&name, bytes).await {
            Ok(plugin) => {
                tracing::info!(
                    file = %path.display(),
                    digest = &plugin.digest()[..12],
                    commands = ?plugin.commands().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                    "plugin loaded"
                );
                plugins.push(Arc::new(plugin));
            }
            Err(e) => tracing::error!(file = %path.display(), error = %e, "plugin not loaded"),
        }
    }
    Ok(plugins)
}
