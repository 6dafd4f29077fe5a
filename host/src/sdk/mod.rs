//! Plugin authoring: scaffolds (`weft plugin new`) and builds (`weft plugin build`) of plugins
//! written in Rust, Python or JavaScript.
//!
//! The WIT contract and the Python and JavaScript SDK modules are compiled into `weft`, so a
//! build needs only the language's own toolchain: cargo with the `wasm32-wasip2` target,
//! componentize-py, or componentize-js. Versions are pinned here, in one place.

mod build;
mod scaffold;

use std::path::{Path, PathBuf};

pub use build::{build, place, Built};
pub use scaffold::scaffold;

/// The contract every plugin exports (`wit/plugin.wit`).
pub const WIT: &str = include_str!("../../../wit/plugin.wit");
/// The WIT world a plugin targets.
pub const WORLD: &str = "command-plugin";
/// The Python SDK module, added to every Python build as `weft_plugin`.
pub const PYTHON_SDK: &str = include_str!("../../../plugin-sdk/python/weft_plugin.py");
/// The JavaScript SDK module, added to every JavaScript build as `weft.js`.
pub const JS_SDK: &str = include_str!("../../../plugin-sdk/js/weft.js");

/// The componentize-py release builds are made and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The componentize-js release builds are made and tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The Rust target of plugin components.
pub const RUST_TARGET: &str = "wasm32-wasip2";

/// A language plugins are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        })
    }
}

/// Why a scaffold or a build failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("plugin names are lower-case letters, digits and `_`, starting with a letter: `{0}` is not")]
    BadName(String),
    #[error("{0} already exists; choose another name or remove it")]
    Exists(PathBuf),
    #[error("{0} holds no plugin: expected Cargo.toml (Rust), {1}.py (Python) or {1}.js (JavaScript)")]
    NoPlugin(PathBuf, String),
    #[error("{tool} is not installed (needed to build {lang} plugins); install it with: {install}")]
    MissingTool {
        tool: &'static str,
        lang: Lang,
        install: String,
    },
    #[error("{tool} failed (exit {code}); its output is above")]
    ToolFailed { tool: &'static str, code: String },
    #[error("the build produced no component: {0}")]
    NoArtifact(String),
    #[error("the Rust SDK is not at {0}: scaffold Rust plugins with a weft built from its source tree")]
    NoRustSdk(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SdkError {
    let path = path.to_path_buf();
    move |source| SdkError::Io { what, path, source }
}

/// Checks a plugin name: it becomes a file name, a Python module, a crate and a command prefix.
pub fn check_name(name: &str) -> Result<(), SdkError> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if starts_well && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else {
        Err(SdkError::BadName(name.to_string()))
    }
}

/// The plugin's name (its directory's) and language.
pub fn detect(dir: &Path) -> Result<(String, Lang), SdkError> {
    let canonical = dir.canonicalize().map_err(io("reading", dir))?;
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.join("Cargo.toml").is_file() {
        return Ok((name.replace('-', "_"), Lang::Rust));
    }
    if dir.join(format!("{name}.py")).is_file() {
        return Ok((name, Lang::Python));
    }
    if dir.join(format!("{name}.js")).is_file() {
        return Ok((name, Lang::Js));
    }
    Err(SdkError::NoPlugin(canonical, name))
}
