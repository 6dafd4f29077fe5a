//! Compiled components on disk, so that an unchanged plugin is never compiled twice.
//!
//! An entry is keyed by the component's sha256 and the engine's compatibility hash (wasmtime
//! version, target and compilation settings); its file starts with the sha256 of the compiled
//! bytes that follow, so a corrupt or truncated entry is detected, deleted and rebuilt instead of
//! being loaded.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Compiled now (and stored, when there is a cache).
    Compiled,
    /// Loaded from the compile cache.
    Cache,
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("wasmtime48-{:016x}", hasher.finish());
        CompileCache { dir, engine_key }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(&self.engine_key).join(format!("{digest}.cwasm"))
    }

    /// The cached compilation of the component with this digest, if a sound one exists.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).ok()?;
        match verified_payload(&bytes) {
            Some(payload) => {
                // SAFETY: the payload was written by `store` below from `Component::serialize` of
                // an engine with the same compatibility hash (it is in the path), and its
                // checksum matches, so these are the bytes wasmtime produced, unmodified.
                #[allow(unsafe_code)]
                let component = unsafe { Component::deserialize(engine, payload) };
                match component {
                    Ok(component) => return Some(component),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "unusable compile cache entry; recompiling")
                    }
                }
            }
            None => tracing::warn!(file = %path.display(), "corrupt compile cache entry; recompiling"),
        }
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Stores a compiled component; failures are logged, never fatal.
    pub fn store(&self, digest: &str, component: &Component) {
        let path = self.path(digest);
        let payload = match component.serialize() {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot serialize a compiled component");
                return;
            }
        };
        if let Err(e) = write_entry(&path, &payload) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the compile cache");
        }
    }
}

fn verified_payload(bytes: &[u8]) -> Option<&[u8]> {
    let (checksum, payload) = bytes.split_at_checked(32)?;
    (Sha256::digest(payload).as_slice() == checksum).then_some(payload)
}

/// Writes atomically: a temporary file renamed over the entry.
fn write_entry(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let mut bytes = Vec::with_capacity(32 + payload.len());
    bytes.extend_from_slice(&Sha256::digest(payload));
    bytes.extend_from_slice(payload);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}
