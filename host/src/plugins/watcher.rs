//! Follows the plugin directory: file-system notifications (debounced) and a periodic rescan
//! as a safety net both lead to [`PluginDir::reconcile`].

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::directory::PluginDir;

/// Quiet time after the last notification before the directory is reconciled: saves, renames
/// and copies arrive as bursts of events.
const DEBOUNCE: Duration = Duration::from_millis(15);

/// Reconcile even without notifications this often (events can be lost, e.g. on overflow).
const RESCAN: Duration = Duration::from_secs(2);

/// Keeps the watch alive; dropping it stops following the directory.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following `dir`.
pub fn watch(dir: Arc<PluginDir>) -> notify::Result<WatchHandle> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match &event {
            // Reads (the node's own scans among them) change nothing: following them would
            // rescan the directory for ever. A file closed after writing does count.
            Ok(event)
                if matches!(event.kind, notify::EventKind::Access(access)
                    if access != notify::event::AccessKind::Close(notify::event::AccessMode::Write)) =>
            {
                return
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "plugin directory watch error"),
        }
        let _ = tx.send(());
    })?;
    watcher.watch(dir.path(), RecursiveMode::Recursive)?;
    let task = tokio::spawn(async move {
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                }
                _ = rescan.tick() => {}
            }
            dir.reconcile().await;
        }
    });
    Ok(WatchHandle {
        _watcher: watcher,
        task,
    })
}
