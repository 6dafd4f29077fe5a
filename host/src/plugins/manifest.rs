//! The optional sidecar manifest `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! description = "Arithmetic for the finance team"
//! resources = ["finance", "eu"]   # added to the tags the plugin declares
//! enabled = true                  # false: loaded, but none of its commands is served
//!
//! [limits]
//! memory_mb = 64                  # linear memory per instance (default: the node's)
//! deadline_ms = 2000              # per call (default: the node's)
//! max_instances = 8               # calls of this plugin running at once; more wait
//! ```
//!
//! Unknown keys are errors that name the key, so a typo never silently does nothing.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::runtime::Grants;
use crate::tenancy::Ceiling;

/// A parsed sidecar manifest.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Every tenant may call the plugin's commands, not only the tenant whose directory holds it.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub limits: ManifestLimits,
    /// Capabilities beyond the contract; honoured only where the plugin's tenant allows them.
    #[serde(default)]
    pub grants: ManifestGrants,
}

/// What a plugin may see of the host; nothing by default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestGrants {
    /// An absolute host directory the plugin may read, mounted read-only at `/data`.
    pub read_dir: Option<std::path::PathBuf>,
    /// Names of the node's environment variables the plugin sees.
    #[serde(default)]
    pub env: Vec<String>,
}

impl ManifestGrants {
    /// The kinds of capability granted, as tenants allow them: `read_dir`, `env`.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.read_dir.is_some() {
            kinds.push("read_dir");
        }
        if !self.env.is_empty() {
            kinds.push("env");
        }
        kinds
    }
}

/// Per-plugin limits; each falls back to the node's.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub memory_mb: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_instances: Option<u32>,
    /// Calls one instance serves before a fresh one replaces it (1: a fresh instance per call).
    pub instance_reuse: Option<u32>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            description: None,
            resources: Vec::new(),
            enabled: true,
            public: false,
            limits: ManifestLimits::default(),
            grants: ManifestGrants::default(),
        }
    }
}

impl Manifest {
    /// Parses a manifest; the error names the offending key or value.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        if manifest.resources.iter().any(|r| r.trim().is_empty()) {
            return Err("`resources` holds an empty tag".into());
        }
        let limits = &manifest.limits;
        if limits.memory_mb == Some(0)
            || limits.deadline_ms == Some(0)
            || limits.max_instances == Some(0)
            || limits.instance_reuse == Some(0)
        {
            return Err("a limit of 0 would make the plugin unusable; remove the key to use the node's".into());
        }
        if limits.memory_mb.is_some_and(|mb| mb > 1 << 20) {
            return Err("`limits.memory_mb` is larger than 1 TiB".into());
        }
        if let Some(dir) = &manifest.grants.read_dir {
            if !dir.is_absolute() {
                return Err(format!(
                    "`grants.read_dir` must be an absolute path, not {}",
                    dir.display()
                ));
            }
        }
        Ok(manifest)
    }

    /// The limits calls of this plugin run under: its own, else the node's, never above its
    /// tenant's `ceiling`. Memory is never above the node's either: instances come from a pool
    /// whose memories are that size, so a larger limit could not be granted and a plugin
    /// reaching the pool's would fail without the memory-limit error.
    pub fn settings(&self, node: &Limits, ceiling: Ceiling) -> Arc<PluginSettings> {
        let deadline = self
            .limits
            .deadline_ms
            .map_or(node.call_deadline, Duration::from_millis);
        let memory = self
            .limits
            .memory_mb
            .map_or(node.memory_limit_bytes, |mb| (mb as usize) << 20)
            .min(node.memory_limit_bytes);
        Arc::new(PluginSettings {
            deadline: ceiling.deadline.map_or(deadline, |c| deadline.min(c)),
            memory_limit_bytes: ceiling.memory_bytes.map_or(memory, |c| memory.min(c)),
            concurrency: self.limits.max_instances.map(|n| Arc::new(Semaphore::new(n as usize))),
            instance_reuse: self.limits.instance_reuse.unwrap_or(node.instance_reuse),
            grants: self.granted(),
        })
    }

    /// The grants, resolved: environment variables take the node's values (unset ones are left out).
    fn granted(&self) -> Option<Arc<Grants>> {
        let grants = &self.grants;
        if grants.kinds().is_empty() {
            return None;
        }
        let env = grants
            .env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
            .collect();
        Some(Arc::new(Grants {
            read_dir: grants.read_dir.clone(),
            env,
        }))
    }
}

/// Effective limits of one plugin.
#[derive(Debug)]
pub struct PluginSettings {
    pub deadline: Duration,
    pub memory_limit_bytes: usize,
    /// Calls of this plugin that may run at once, when limited.
    pub concurrency: Option<Arc<Semaphore>>,
    /// Calls one instance serves before it is replaced.
    pub instance_reuse: u32,
    /// What its instances may see of the host.
    pub grants: Option<Arc<Grants>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_manifest_parses() {
        let m = Manifest::parse(
            "description = \"d\"\nresources = [\"a\", \"b\"]\nenabled = false\n[limits]\nmemory_mb = 8\ndeadline_ms = 50\nmax_instances = 2\ninstance_reuse = 1\n",
        )
        .unwrap();
        assert_eq!(m.resources, vec!["a", "b"]);
        assert!(!m.enabled);
        let s = m.settings(&Limits::default(), Ceiling::default());
        assert_eq!(s.deadline, Duration::from_millis(50));
        assert_eq!(s.memory_limit_bytes, 8 << 20);
        assert_eq!(s.concurrency.as_ref().map(|c| c.available_permits()), Some(2));
        assert_eq!(s.instance_reuse, 1);
    }

    #[test]
    fn a_tenant_ceiling_caps_the_sidecar_and_the_node() {
        let m = Manifest::parse("[limits]\nmemory_mb = 512\n").unwrap();
        let ceiling = Ceiling {
            memory_bytes: Some(64 << 20),
            deadline: Some(Duration::from_millis(100)),
        };
        let s = m.settings(&Limits::default(), ceiling);
        assert_eq!(s.memory_limit_bytes, 64 << 20);
        assert_eq!(s.deadline, Duration::from_millis(100));
    }

    #[test]
    fn a_sidecar_cannot_raise_memory_above_the_nodes() {
        let m = Manifest::parse("[limits]\nmemory_mb = 4096\n").unwrap();
        let node = Limits::default();
        let s = m.settings(&node, Ceiling::default());
        assert_eq!(s.memory_limit_bytes, node.memory_limit_bytes);
    }

    #[test]
    fn empty_manifest_keeps_node_limits() {
        let m = Manifest::parse("").unwrap();
        assert!(m.enabled);
        let node = Limits::default();
        let s = m.settings(&node, Ceiling::default());
        assert_eq!(s.deadline, node.call_deadline);
        assert!(s.concurrency.is_none());
        assert_eq!(s.instance_reuse, node.instance_reuse);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Manifest::parse("resourcez = [\"a\"]").unwrap_err();
        assert!(err.contains("resourcez"), "{err}");
        let err = Manifest::parse("[limits]\nmemory = 3").unwrap_err();
        assert!(err.contains("memory"), "{err}");
        let err = Manifest::parse("enabled = \"yes\"").unwrap_err();
        assert!(err.contains("enabled") || err.contains("bool"), "{err}");
        assert!(Manifest::parse("[limits]\ndeadline_ms = 0").is_err());
    }
}
