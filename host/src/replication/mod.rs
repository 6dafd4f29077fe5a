//! Plugins that travel: a node serves the modules it holds to its peers, and replicates the
//! plugins of other nodes that its [`Policy`] accepts — eagerly, as soon as the catalog shows
//! them, or on demand, at the first call that no local plugin serves.
//!
//! The origin node's signed record is the only authority on a plugin: a replica follows the
//! plugin its origin serves now (a new digest there replaces it, a record without it withdraws
//! it), and is kept while the origin is unknown (dead, or beyond a partition) until a newer
//! record of the origin says otherwise. Replicas load through [`PluginDir`] like any plugin, so
//! tenants' signature requirements and limits apply to them unchanged.

pub mod policy;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;

use crate::fabric::modules::{Module, ModuleSource, Offer};
use crate::fabric::Fabric;
use crate::plugins::{PluginDir, ReplicaModule, Selector};
pub use policy::{Accept, Mode, Policy};
use store::ModuleStore;

/// How long a replica that failed to fetch or load waits before it is tried again; doubled at
/// each failure in a row, up to [`RETRY_MAX`].
const RETRY_AFTER: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Replications fetching at once (eager replication of many plugins does not start them all).
const FETCHES_AT_ONCE: usize = 2;

/// How often the catalog is compared with the replicas held, besides on every change.
const RECHECK: Duration = Duration::from_secs(2);

/// How long an eager replication waits for a linked node to hold the module before it fetches
/// through other nodes: this, plus a second per [`WAIT_PER_SECOND`] bytes of module (the time a
/// neighbour takes to fetch and load it). Replicas spread like an epidemic, each node fetching
/// from a neighbour (no node serves everyone, and no bytes are relayed); the wait bounds the case
/// where no neighbour accepts the plugin.
const WAIT_FOR_NEIGHBOUR: Duration = Duration::from_secs(2);
const WAIT_PER_SECOND: u64 = 4 << 20;

/// Modules kept in memory while peers fetch them.
const SERVED_CACHE: usize = 4;

/// How long a module stays in memory after it was last served.
const SERVED_FOR: Duration = Duration::from_secs(30);

type Replicating = Shared<BoxFuture<'static, bool>>;

struct Served {
    digest: String,
    bytes: Arc<[u8]>,
    signature: std::path::PathBuf,
    at: Instant,
}

/// The node's side of module replication.
pub struct Replication {
    me: Weak<Replication>,
    policy: Policy,
    dir: Arc<PluginDir>,
    fabric: Weak<Fabric>,
    store: ModuleStore,
    /// The store's directory when none was configured.
    _scratch: Option<tempfile::TempDir>,
    /// Replications under way, by `plugin@digest`: concurrent first calls wait for one.
    inflight: Mutex<HashMap<String, Replicating>>,
    /// When a failed `plugin@digest` may be tried again, and how many times in a row it failed.
    failed: Mutex<HashMap<String, (Instant, u32)>>,
    /// The digest of each replica loaded, by plugin name.
    installed: Mutex<HashMap<String, String>>,
    /// Bounds the fetches running at once.
    fetching: tokio::sync::Semaphore,
    /// Reading a module to serve it happens once however many peers ask at once.
    reading: tokio::sync::Mutex<()>,
    /// How many times each replica's module was fetched.
    fetches: Mutex<HashMap<String, u64>>,
    /// Since when an eager replication waits for a neighbour to hold the module, by digest.
    waiting: Mutex<HashMap<String, Instant>>,
    /// Modules recently served to peers: digest, bytes, signature file, last served.
    served: Mutex<Vec<Served>>,
}

impl Replication {
    /// Serves this node's modules to its peers and, unless the policy is off, replicates the
    /// plugins it accepts until `stop`.
    pub fn start(
        policy: Policy,
        dir: Arc<PluginDir>,
        fabric: &Arc<Fabric>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Replication>> {
        let (store_dir, scratch) = match &policy.store {
            Some(dir) => (dir.clone(), None),
            None => {
                let scratch = tempfile::Builder::new().prefix("weft-modules-").tempdir()?;
                (scratch.path().to_path_buf(), Some(scratch))
            }
        };
        let store = ModuleStore::open(store_dir)?;
        let replication = Arc::new_cyclic(|me| Replication {
            me: me.clone(),
            store,
            policy,
            dir,
            fabric: Arc::downgrade(fabric),
            _scratch: scratch,
            inflight: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            installed: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Semaphore::new(FETCHES_AT_ONCE),
            reading: tokio::sync::Mutex::new(()),
            fetches: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            served: Mutex::new(Vec::new()),
        });
        fabric.set_modules(replication.clone());
        if replication.policy.mode != Mode::Off {
            tracing::info!(mode = ?replication.policy.mode, accept = ?replication.policy.accept, "replicating plugins of other nodes");
            tokio::spawn(replication.clone().follow(fabric.watch_records(), stop));
        }
        Ok(replication)
    }

    /// Compares the catalog with the replicas held on every change of the records (and every
    /// few seconds, to retry what failed).
    async fn follow(self: Arc<Self>, mut records: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = records.changed() => if changed.is_err() { return },
                _ = recheck.tick() => {}
                _ = stop.changed() => return,
            }
            // Records often arrive in bursts: act once on the burst.
            tokio::time::sleep(Duration::from_millis(10)).await;
            records.borrow_and_update();
            self.reconcile().await;
        }
    }

    /// Fetches, replaces and withdraws replicas to match what their origins serve now.
    async fn reconcile(self: &Arc<Self>) {
        let Some(fabric) = self.fabric.upgrade() else {
            return;
        };
        let offers = fabric.offers();
        let mut desired: BTreeMap<String, Offer> = BTreeMap::new();
        for offer in offers.values().flatten() {
            if !self.policy.accepts(offer) || self.dir.has_own(&offer.plugin).await {
                continue;
            }
            if desired.get(&offer.plugin).is_none_or(|best| preferred(offer, best)) {
                desired.insert(offer.plugin.clone(), offer.clone());
            }
        }
        let held = self.dir.replicas().await;
        for replica in &held {
            match desired.get(&replica.name) {
                Some(offer) if replica.digest.as_deref() == Some(offer.digest.as_str()) => {}
                // A new version at the origin (or a replica that failed): fetch it.
                // (Replications run in their own task: nothing waits for them here.)
                Some(offer) => drop(self.replicate(offer.clone())),
                // Its origin's current record no longer offers it: withdrawn there.
                None if offers.contains_key(&replica.origin) => {
                    self.dir.remove_replica(&replica.name).await;
                    let digest = lock(&self.installed).remove(&replica.name);
                    if let Some(digest) = digest {
                        self.store.remove(&digest).await;
                    }
                }
                // Its origin is not known now (dead, or beyond a partition): kept.
                None => {}
            }
        }
        if self.policy.mode == Mode::Eager {
            for offer in desired.values() {
                if !held.iter().any(|r| r.name == offer.plugin) && self.neighbour_has(&fabric, offer) {
                    drop(self.replicate(offer.clone()));
                }
            }
        }
        lock(&self.waiting).retain(|digest, _| desired.values().any(|o| o.digest == *digest));
    }

    /// Whether an eager replication of `offer` should start now: a linked node holds the module,
    /// or none has for a while.
    fn neighbour_has(&self, fabric: &Fabric, offer: &Offer) -> bool {
        let mut waiting = lock(&self.waiting);
        if fabric.linked_holder(&offer.digest) {
            waiting.remove(&offer.digest);
            return true;
        }
        let since = *waiting.entry(offer.digest.clone()).or_insert_with(Instant::now);
        let wait = WAIT_FOR_NEIGHBOUR + Duration::from_secs(offer.size / WAIT_PER_SECOND);
        since.elapsed() >= wait
    }

    /// Starts (or joins) the replication of `offer`; resolves to whether it now serves here.
    fn replicate(self: &Arc<Self>, offer: Offer) -> Replicating {
        let key = format!("{}@{}", offer.plugin, offer.digest);
        let mut inflight = lock(&self.inflight);
        if let Some(running) = inflight.get(&key) {
            return running.clone();
        }
        if lock(&self.failed).get(&key).is_some_and(|(at, _)| *at > Instant::now()) {
            return futures_util::future::ready(false).boxed().shared();
        }
        let me = self.clone();
        let task_key = key.clone();
        let running = async move {
            let ok = me.fetch_and_install(&offer).await;
            let mut failed = lock(&me.failed);
            if ok {
                failed.remove(&task_key);
            } else {
                let times = failed.get(&task_key).map_or(0, |(_, n)| *n).saturating_add(1);
                let wait = RETRY_AFTER.saturating_mul(1 << times.min(6)).min(RETRY_MAX) / 2;
                failed.insert(task_key.clone(), (Instant::now() + wait, times));
            }
            drop(failed);
            lock(&me.inflight).remove(&task_key);
            ok
        }
        .boxed()
        .shared();
        inflight.insert(key, running.clone());
        // It runs to the end even if every caller waiting for it goes away.
        tokio::spawn(running.clone());
        running
    }

    async fn fetch_and_install(&self, offer: &Offer) -> bool {
        let Some(fabric) = self.fabric.upgrade() else {
            return false;
        };
        let (bytes, signature) = match self.store.get(&offer.digest).await {
            Some(held) => held,
            None => {
                let Ok(_slot) = self.fetching.acquire().await else {
                    return false;
                };
                let started = Instant::now();
                match fabric.fetch_module(&offer.digest, offer.size).await {
                    Ok((bytes, signature, from)) => {
                        tracing::info!(
                            plugin = %offer.plugin,
                            origin = %offer.node,
                            %from,
                            bytes = bytes.len(),
                            ms = started.elapsed().as_secs_f64() * 1000.0,
                            "module fetched"
                        );
                        *lock(&self.fetches).entry(offer.plugin.clone()).or_default() += 1;
                        if let Err(e) = self.store.put(&offer.digest, &bytes, signature.as_deref()).await {
                            tracing::warn!(error = %e, "cannot keep a fetched module in the store");
                        }
                        (bytes, signature)
                    }
                    Err(e) => {
                        let message = format!("replica of `{}` from node `{}`: {e}", offer.plugin, offer.node);
                        tracing::error!("{message}");
                        self.dir.replica_failed(&offer.plugin, &offer.node, message).await;
                        return false;
                    }
                }
            }
        };
        let fetches = lock(&self.fetches).get(&offer.plugin).copied().unwrap_or(0);
        let module = ReplicaModule {
            name: offer.plugin.clone(),
            origin: offer.node.clone(),
            file: self.store.path(&offer.digest),
            digest: offer.digest.clone(),
            bytes,
            signature,
            public: offer.public,
        };
        let installed = self.dir.install_replica(module, fetches).await.is_ok();
        if installed {
            let before = lock(&self.installed).insert(offer.plugin.clone(), offer.digest.clone());
            if let Some(before) = before.filter(|d| *d != offer.digest) {
                self.store.remove(&before).await;
            }
        } else {
            // Fetched again next time, with the signature the origin has then.
            self.store.remove(&offer.digest).await;
        }
        installed
    }
}

/// Among offers of the same plugin by several nodes: the highest version, then the smallest
/// node id (every node picks the same).
fn preferred(offer: &Offer, best: &Offer) -> bool {
    (&offer.version, std::cmp::Reverse(&offer.node)) > (&best.version, std::cmp::Reverse(&best.node))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ModuleSource for Replication {
    fn module(&self, digest: String) -> crate::fabric::modules::BoxFuture<'_, Option<Arc<Module>>> {
        Box::pin(async move {
            let cached = {
                let mut served = lock(&self.served);
                served.retain(|s| s.at.elapsed() < SERVED_FOR);
                served.iter_mut().find(|s| s.digest == digest).map(|s| {
                    s.at = Instant::now();
                    (s.bytes.clone(), s.signature.clone())
                })
            };
            let (bytes, sig) = match cached {
                Some(cached) => cached,
                None => {
                    let _reading = self.reading.lock().await;
                    // Another peer's request may have read it meanwhile.
                    let read = lock(&self.served)
                        .iter()
                        .find(|s| s.digest == digest)
                        .map(|s| (s.bytes.clone(), s.signature.clone()));
                    if let Some((bytes, sig)) = read {
                        let signature = tokio::fs::read_to_string(&sig).await.ok();
                        return Some(Arc::new(Module { bytes, signature }));
                    }
                    let (file, sig) = self.dir.module_file(&digest).await?;
                    let bytes: Arc<[u8]> = tokio::fs::read(&file).await.ok()?.into();
                    // The file may have changed since it was loaded: serve only what the digest
                    // names.
                    let (bytes, actual) = crate::runtime::digest_off_thread(bytes).await?;
                    if actual != digest {
                        return None;
                    }
                    let mut served = lock(&self.served);
                    if served.len() >= SERVED_CACHE {
                        // The least recently served goes.
                        if let Some(oldest) = (0..served.len()).min_by_key(|i| served[*i].at) {
                            served.remove(oldest);
                        }
                    }
                    served.push(Served {
                        digest,
                        bytes: bytes.clone(),
                        signature: sig.clone(),
                        at: Instant::now(),
                    });
                    (bytes, sig)
                }
            };
            // The signature is read each time: a component signed after it loaded counts.
            let signature = tokio::fs::read_to_string(&sig).await.ok();
            Some(Arc::new(Module { bytes, signature }))
        })
    }

    fn on_demand(&self, fun: &str, selector: &Selector) -> Option<crate::fabric::modules::BoxFuture<'static, bool>> {
        if self.policy.mode == Mode::Off {
            return None;
        }
        let installed = lock(&self.installed).clone();
        let fabric = self.fabric.upgrade()?;
        let mut best: Option<Offer> = None;
        for offer in fabric.offers().into_values().flatten() {
            if offer.commands.iter().any(|c| c == fun)
                && selector.sees(&offer.tenant, offer.public)
                && self.policy.accepts(&offer)
                && installed.get(&offer.plugin) != Some(&offer.digest)
                && best.as_ref().is_none_or(|b| preferred(&offer, b))
            {
                best = Some(offer);
            }
        }
        let running = self.me.upgrade()?.replicate(best?);
        Some(Box::pin(running))
    }
}
