//! Warm instances kept between calls, for all plugins of a node.
//!
//! Idle instances occupy slots of the pooling allocator, so when an instantiation finds the
//! pool full, the runtime evicts an idle instance (of any plugin) and tries again: a warm
//! instance never stands in the way of a call.

use std::collections::HashMap;
use std::sync::Mutex;

use wasmtime::Store;

use super::bindings::CommandPlugin;
use super::host::HostState;

/// An instance with its store, ready for its next call.
pub(crate) struct Warm {
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: CommandPlugin,
    pub(crate) uses: u32,
    /// What it was instantiated with.
    pub(crate) grants: Option<std::sync::Arc<super::Grants>>,
    /// The code it runs.
    pub(crate) code: std::sync::Arc<super::plugin::Code>,
}

/// Idle instances of every plugin, bounded in number.
pub(crate) struct IdlePool {
    inner: Mutex<Inner>,
    max: usize,
}

#[derive(Default)]
struct Inner {
    by_plugin: HashMap<u64, Vec<Warm>>,
    count: usize,
}

impl IdlePool {
    pub(crate) fn new(max: usize) -> Self {
        IdlePool {
            inner: Mutex::new(Inner::default()),
            max,
        }
    }

    /// A warm instance of `plugin`, if one is idle.
    pub(crate) fn take(&self, plugin: u64) -> Option<Warm> {
        let mut inner = self.inner.lock().ok()?;
        let warm = inner.by_plugin.get_mut(&plugin)?.pop()?;
        inner.count -= 1;
        Some(warm)
    }

    /// Keeps `warm` idle unless the pool is full (then it is dropped).
    pub(crate) fn put(&self, plugin: u64, warm: Warm) {
        let Ok(mut inner) = self.inner.lock() else { return };
        if inner.count >= self.max {
            drop(inner);
            drop(warm);
            return;
        }
        inner.count += 1;
        inner.by_plugin.entry(plugin).or_default().push(warm);
    }

    /// How many instances of `plugin` are idle, and the linear memory they hold in bytes.
    pub(crate) fn held_by(&self, plugin: u64) -> (usize, usize) {
        let Ok(inner) = self.inner.lock() else { return (0, 0) };
        inner.by_plugin.get(&plugin).map_or((0, 0), |warm| {
            let bytes = warm.iter().map(|w| w.store.data().limiter.current).sum();
            (warm.len(), bytes)
        })
    }

    /// Drops one idle instance, of any plugin; false when none is idle.
    pub(crate) fn evict_one(&self) -> bool {
        let evicted = {
            let Ok(mut inner) = self.inner.lock() else { return false };
            let found = inner.by_plugin.values_mut().find_map(Vec::pop);
            if found.is_some() {
                inner.count -= 1;
            }
            found
        };
        evicted.is_some()
    }

    /// Drops every idle instance of `plugin`.
    pub(crate) fn clear(&self, plugin: u64) {
        let removed = {
            let Ok(mut inner) = self.inner.lock() else { return };
            let removed = inner.by_plugin.remove(&plugin).unwrap_or_default();
            inner.count -= removed.len();
            removed
        };
        drop(removed);
    }
}
