//! The node's plugin directory: what is on disk, what is loaded, and the table built from it.
//!
//! [`PluginDir::reconcile`] compares the directory with what is loaded and acts on the
//! difference: a new or changed `NAME.wasm` is compiled and, only if it is a valid plugin,
//! swapped in (calls in flight finish on the old version, whose instances then drain); a removed
//! one is withdrawn; a changed `NAME.toml` re-applies its settings without recompiling. A file
//! that fails leaves the previous version serving and its reason in `weft plugins`.
//!
//! Beside the directory's plugins it holds replicas: plugins of other nodes fetched through the
//! fabric ([`crate::replication`]), loaded from the node's module store. A plugin of the
//! directory with the same name always wins over a replica.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::manifest::{Manifest, PluginSettings};
use super::signature;
use super::table::{CommandReport, CommandTable, PluginReport, Served};
use crate::config::Limits;
use crate::rpc::Executor;
use crate::runtime::{Plugin, Runtime};

/// Size and modification time (and inode) of a file: changes whenever a save completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

struct Entry {
    /// The state of `NAME.wasm` that `plugin` / `wasm_error` reflect.
    wasm_stamp: Option<Stamp>,
    /// The state of its signature `NAME.wasm.sig` they reflect.
    sig_stamp: Option<Stamp>,
    plugin: Option<Arc<Plugin>>,
    wasm_error: Option<String>,
    toml_stamp: Option<Stamp>,
    /// The last good manifest (the default when there is none).
    manifest: Manifest,
    settings: Arc<PluginSettings>,
    toml_error: Option<String>,
    /// The size of the loaded component, in bytes.
    size: u64,
    /// Set for a replica of another node's plugin.
    replica: Option<ReplicaOf>,
}

impl Entry {
    fn new(manifest: Manifest, settings: Arc<PluginSettings>) -> Self {
        Entry {
            wasm_stamp: None,
            sig_stamp: None,
            plugin: None,
            wasm_error: None,
            toml_stamp: None,
            manifest,
            settings,
            toml_error: None,
            size: 0,
            replica: None,
        }
    }
}

/// Where a replica came from.
struct ReplicaOf {
    /// The node whose plugin it is.
    origin: Arc<str>,
    /// Its component in the module store.
    file: PathBuf,
    /// How many times it was fetched.
    fetches: u64,
}

/// A component fetched from another node, to load as a replica of its plugin.
pub struct ReplicaModule {
    pub name: String,
    /// The node whose plugin it is.
    pub origin: String,
    /// Where the module store keeps it.
    pub file: PathBuf,
    /// The sha256 of `bytes` (checked when they were fetched or read from the store).
    pub digest: String,
    pub bytes: Vec<u8>,
    /// Its publisher signature (the text of a `.sig` file), if it has one.
    pub signature: Option<String>,
    /// Its commands are callable by every tenant.
    pub public: bool,
}

/// A replica as loaded: its name, origin node and component digest (`None`: it failed).
pub struct LoadedReplica {
    pub name: String,
    pub origin: String,
    pub digest: Option<String>,
}

/// A watched directory of plugins.
pub struct PluginDir {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    executor: Arc<Executor>,
    node_tags: Vec<String>,
    limits: Limits,
    entries: tokio::sync::Mutex<BTreeMap<String, Entry>>,
}

impl PluginDir {
    pub fn new(dir: PathBuf, runtime: Arc<Runtime>, executor: Arc<Executor>, node_tags: Vec<String>) -> Self {
        let limits = runtime.limits().clone();
        PluginDir {
            dir,
            runtime,
            executor,
            node_tags,
            limits,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The watched directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Brings what is loaded in line with the directory, and publishes the new table if
    /// anything changed.
    pub async fn reconcile(&self) {
        let listing = match self.scan() {
            Ok(listing) => listing,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the plugin directory");
                return;
            }
        };
        let mut entries = self.entries.lock().await;
        let mut changed = false;
        let gone: Vec<String> = entries
            .keys()
            .filter(|name| !listing.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if entries.get(&name).is_some_and(|e| e.replica.is_some()) {
                continue;
            }
            if let Some(entry) = entries.remove(&name) {
                if entry.plugin.is_some() {
                    tracing::info!(plugin = %name, "plugin removed; its commands are withdrawn");
                }
                changed = true;
            }
        }
        for (name, (has_wasm, has_toml)) in listing {
            // A plugin of the directory takes the place of a replica of the same name.
            if entries.get(&name).is_some_and(|e| e.replica.is_some()) {
                tracing::info!(plugin = %name, "a plugin of the directory replaces the replica of the same name");
                entries.remove(&name);
            }
            let entry = entries
                .entry(name.clone())
                .or_insert_with(|| Entry::new(Manifest::default(), self.default_settings(&name)));
            changed |= self.reconcile_manifest(&name, entry, has_toml);
            changed |= self.reconcile_component(&name, entry, has_wasm).await;
        }
        if changed {
            self.publish(&entries);
        }
    }

    fn reconcile_manifest(&self, name: &str, entry: &mut Entry, present: bool) -> bool {
        let path = self.dir.join(format!("{name}.toml"));
        let current = if present { stamp(&path) } else { None };
        if current == entry.toml_stamp {
            return false;
        }
        entry.toml_stamp = current;
        let parsed = match current {
            None => Ok(Manifest::default()),
            Some(_) => std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| Manifest::parse(&text))
                .and_then(|manifest| self.check_grants(name, manifest)),
        };
        match parsed {
            Ok(manifest) => {
                entry.toml_error = None;
                if manifest != entry.manifest {
                    tracing::info!(plugin = %name, "sidecar manifest applied");
                    entry.settings = manifest.settings(&self.limits, self.ceiling(name));
                    entry.manifest = manifest;
                    // Instances made under the old limits are not reused.
                    if let Some(plugin) = &entry.plugin {
                        plugin.drain_idle();
                    }
                }
            }
            Err(e) => {
                let message = format!("{name}.toml: {e}; keeping the last good settings");
                tracing::error!(plugin = %name, "{message}");
                entry.toml_error = Some(message);
            }
        }
        true
    }

    /// Checks the component's signature when its tenant requires one.
    fn check_signature(&self, name: &str, digest: &str, sig_path: &Path) -> Result<(), signature::SignatureError> {
        self.check_signature_text(name, digest, || std::fs::read_to_string(sig_path).ok())
    }

    /// Checks a signature (read by `text` only when the tenant requires one).
    fn check_signature_text(
        &self,
        name: &str,
        digest: &str,
        text: impl FnOnce() -> Option<String>,
    ) -> Result<(), signature::SignatureError> {
        let Some(tenants) = self.executor.tenants() else {
            return Ok(());
        };
        let tenant = crate::tenancy::tenant_of(name);
        let publishers = tenants.publishers(tenant);
        if publishers.is_empty() {
            return Ok(());
        }
        signature::check(digest, text().as_deref(), tenant, publishers)
    }

    fn default_settings(&self, name: &str) -> Arc<PluginSettings> {
        Manifest::default().settings(&self.limits, self.ceiling(name))
    }

    /// Loads `module` as a replica (replacing an older one of the same name) and publishes the
    /// table. Refused when the directory has a plugin of that name, when its tenant requires a
    /// signature it lacks, or when it does not load: the reason is kept for `weft plugins`
    /// (and a replica that served before keeps serving).
    pub async fn install_replica(&self, module: ReplicaModule, fetches: u64) -> Result<(), String> {
        let ReplicaModule {
            name,
            origin,
            file,
            digest,
            bytes,
            signature,
            public,
        } = module;
        let mut entries = self.entries.lock().await;
        if entries.get(&name).is_some_and(|e| e.replica.is_none()) {
            return Err(format!("this node's directory has a plugin `{name}`"));
        }
        let size = bytes.len() as u64;
        let loaded = match self.check_signature_text(&name, &digest, || signature) {
            Ok(()) => self.runtime.load(&name, bytes).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let manifest = Manifest {
            public,
            ..Manifest::default()
        };
        let settings = manifest.settings(&self.limits, self.ceiling(&name));
        let entry = entries
            .entry(name.clone())
            .or_insert_with(|| Entry::new(manifest.clone(), settings.clone()));
        let outcome = match loaded {
            Ok(plugin) => {
                entry.replica = Some(ReplicaOf {
                    origin: Arc::from(origin.as_str()),
                    file: file.clone(),
                    fetches,
                });
                tracing::info!(
                    plugin = %name,
                    %origin,
                    digest = &plugin.digest()[..12],
                    compile_ms = plugin.compile_time().as_secs_f64() * 1000.0,
                    "replica loaded"
                );
                entry.plugin = Some(Arc::new(plugin));
                entry.wasm_error = None;
                entry.size = size;
                entry.manifest = manifest;
                entry.settings = settings;
                Ok(())
            }
            Err(e) => {
                let message = format!("replica of `{name}` from node `{origin}`: {e}");
                tracing::error!(plugin = %name, %origin, "replica not loaded: {e}");
                note_failed_replica(entry, &origin, fetches);
                entry.wasm_error = Some(message.clone());
                Err(message)
            }
        };
        self.publish(&entries);
        outcome
    }

    /// Notes a replica that could not be fetched (shown by `weft plugins`).
    pub async fn replica_failed(&self, name: &str, origin: &str, error: String) {
        let mut entries = self.entries.lock().await;
        if entries.get(name).is_some_and(|e| e.replica.is_none()) {
            return;
        }
        let entry = entries
            .entry(name.to_string())
            .or_insert_with(|| Entry::new(Manifest::default(), self.default_settings(name)));
        let fetches = entry.replica.as_ref().map_or(0, |r| r.fetches);
        note_failed_replica(entry, origin, fetches);
        entry.wasm_error = Some(error);
        self.publish(&entries);
    }

    /// Withdraws the replica `name` (its origin withdrew the plugin).
    pub async fn remove_replica(&self, name: &str) {
        let mut entries = self.entries.lock().await;
        if entries.get(name).is_some_and(|e| e.replica.is_some()) {
            entries.remove(name);
            tracing::info!(plugin = %name, "replica withdrawn with its origin's plugin");
            self.publish(&entries);
        }
    }

    /// The replicas held (loaded or failed).
    pub async fn replicas(&self) -> Vec<LoadedReplica> {
        let entries = self.entries.lock().await;
        entries
            .iter()
            .filter_map(|(name, e)| {
                let replica = e.replica.as_ref()?;
                Some(LoadedReplica {
                    name: name.clone(),
                    origin: replica.origin.to_string(),
                    digest: e.plugin.as_ref().map(|p| p.digest().to_string()),
                })
            })
            .collect()
    }

    /// Whether the directory (not a replica) has a plugin called `name`.
    pub async fn has_own(&self, name: &str) -> bool {
        self.entries.lock().await.get(name).is_some_and(|e| e.replica.is_none())
    }

    /// The component file (and signature file) of the loaded plugin whose digest is `digest`.
    pub async fn module_file(&self, digest: &str) -> Option<(PathBuf, PathBuf)> {
        let entries = self.entries.lock().await;
        let (name, entry) = entries
            .iter()
            .find(|(_, e)| e.plugin.as_ref().is_some_and(|p| p.digest() == digest))?;
        let file = match &entry.replica {
            Some(replica) => replica.file.clone(),
            None => self.dir.join(format!("{name}.wasm")),
        };
        let mut sig = file.clone().into_os_string();
        sig.push(signature::SUFFIX);
        Some((file, PathBuf::from(sig)))
    }

    /// The ceilings of the plugin's tenant.
    fn ceiling(&self, name: &str) -> crate::tenancy::Ceiling {
        self.executor
            .tenants()
            .map(|t| t.ceiling(crate::tenancy::tenant_of(name)))
            .unwrap_or_default()
    }

    /// Refuses grants the plugin's tenant does not allow (a node without tenants allows all).
    fn check_grants(&self, name: &str, manifest: Manifest) -> Result<Manifest, String> {
        let Some(tenants) = self.executor.tenants() else {
            return Ok(manifest);
        };
        let tenant = crate::tenancy::tenant_of(name);
        match manifest.grants.kinds().into_iter().find(|kind| !tenants.allows(tenant, kind)) {
            Some(kind) => Err(format!(
                "grant `{kind}` is not allowed for tenant `{tenant}` (add it to the tenant's `grants` in the tenants file)"
            )),
            None => Ok(manifest),
        }
    }

    async fn reconcile_component(&self, name: &str, entry: &mut Entry, present: bool) -> bool {
        let path = self.dir.join(format!("{name}.wasm"));
        let sig_path = self.dir.join(format!("{name}.wasm{}", signature::SUFFIX));
        let current = if present { stamp(&path) } else { None };
        let sig_now = stamp(&sig_path);
        if current == entry.wasm_stamp && sig_now == entry.sig_stamp {
            return false;
        }
        let Some(before) = current else {
            entry.wasm_stamp = None;
            entry.wasm_error = None;
            if entry.plugin.take().is_some() {
                tracing::info!(plugin = %name, "plugin removed; its commands are withdrawn");
            }
            return true;
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "plugin file vanished while reading");
                return false;
            }
        };
        // Still being written: the next change notification brings us back.
        if stamp(&path) != Some(before) {
            return false;
        }
        entry.wasm_stamp = Some(before);
        entry.sig_stamp = sig_now;
        let digest = crate::runtime::digest(&bytes);
        if let Err(e) = self.check_signature(name, &digest, &sig_path) {
            let kept = if entry.plugin.is_some() {
                "; the previous version keeps serving"
            } else {
                ""
            };
            let message = format!("{name}.wasm: {e}{kept}");
            tracing::error!(file = %path.display(), "plugin not loaded: {message}");
            entry.wasm_error = Some(message);
            return true;
        }
        if entry.plugin.as_ref().is_some_and(|p| p.digest() == digest) {
            let had_error = entry.wasm_error.take().is_some();
            return had_error;
        }
        match self.runtime.load(name, bytes).await {
            Ok(plugin) => {
                let replaced = entry.plugin.is_some();
                tracing::info!(
                    file = %path.display(),
                    digest = &plugin.digest()[..12],
                    origin = ?plugin.origin(),
                    compile_ms = plugin.compile_time().as_secs_f64() * 1000.0,
                    commands = ?plugin.commands().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                    "{}", if replaced { "plugin replaced" } else { "plugin loaded" }
                );
                entry.plugin = Some(Arc::new(plugin));
                entry.wasm_error = None;
                entry.size = before.len;
            }
            Err(e) => {
                let kept = if entry.plugin.is_some() {
                    "; the previous version keeps serving"
                } else {
                    ""
                };
                let message = format!("{e}{kept}");
                tracing::error!(file = %path.display(), "plugin not loaded: {message}");
                entry.wasm_error = Some(message);
            }
        }
        true
    }

    /// Builds the command table from the loaded, enabled plugins and hands it to the executor.
    fn publish(&self, entries: &BTreeMap<String, Entry>) {
        let served: Vec<Served> = entries
            .values()
            .filter(|e| e.manifest.enabled)
            .filter_map(|e| {
                Some(Served {
                    plugin: e.plugin.clone()?,
                    extra_tags: e.manifest.resources.clone(),
                    settings: e.settings.clone(),
                    public: e.manifest.public,
                    size: e.size,
                    replica_of: e.replica.as_ref().map(|r| r.origin.clone()),
                })
            })
            .collect();
        let (table, refused) = CommandTable::build(&served, &self.node_tags);
        let reports = entries
            .iter()
            .map(|(name, entry)| self.report(name, entry, &table, &refused))
            .collect();
        self.executor.set_table(table.with_reports(reports));
    }

    fn report(&self, name: &str, entry: &Entry, table: &CommandTable, refused: &[(String, String)]) -> PluginReport {
        let refusals: Vec<&str> = refused
            .iter()
            .filter(|(p, _)| p == name)
            .map(|(_, r)| r.as_str())
            .collect();
        let missing = (entry.plugin.is_none() && entry.wasm_stamp.is_none() && entry.wasm_error.is_none())
            .then(|| format!("no {name}.wasm beside {name}.toml"));
        let errors: Vec<&str> = entry
            .wasm_error
            .as_deref()
            .into_iter()
            .chain(missing.as_deref())
            .chain(entry.toml_error.as_deref())
            .chain(refusals.iter().copied())
            .collect();
        let state = match &entry.plugin {
            None => "failed",
            Some(_) if !entry.manifest.enabled => "disabled",
            Some(_) if !refusals.is_empty() => "conflict",
            Some(_) => "serving",
        };
        let commands = entry
            .plugin
            .iter()
            .flat_map(|plugin| {
                plugin.commands().iter().map(|spec| {
                    let served = table.serves(&spec.name, plugin);
                    let tags: BTreeSet<String> = match table.tags(&spec.name).filter(|_| served) {
                        Some(tags) => tags.clone(),
                        None => spec.resources.iter().cloned().collect(),
                    };
                    CommandReport {
                        name: spec.name.clone(),
                        version: spec.version.to_string(),
                        tags: tags.into_iter().collect(),
                        description: spec.description.clone(),
                        served,
                    }
                })
            })
            .collect();
        PluginReport {
            name: name.to_string(),
            file: match &entry.replica {
                Some(replica) => replica.file.display().to_string(),
                None => self.dir.join(format!("{name}.wasm")).display().to_string(),
            },
            state,
            digest: entry.plugin.as_ref().map(|p| p.digest().to_string()),
            origin: entry.plugin.as_ref().map(|p| p.origin()),
            // Filled in when the report is read, like the warm instances.
            tier: None,
            compile_ms: entry.plugin.as_ref().map(|p| p.compile_time().as_secs_f64() * 1000.0),
            description: entry.manifest.description.clone(),
            commands,
            last_error: (!errors.is_empty()).then(|| errors.join("; ")),
            replica_of: entry.replica.as_ref().map(|r| r.origin.to_string()),
            fetches: entry.replica.as_ref().map_or(0, |r| r.fetches),
            // Filled in when the report is read.
            warm_instances: 0,
            warm_memory_bytes: 0,
            plugin: entry.plugin.clone(),
        }
    }

    /// The plugin names in the directory, with whether each has a component and a manifest.
    /// Plugins in a subdirectory belong to the tenant it names and are called `TENANT/NAME`.
    /// Hidden files (editors' and deploy tools' temporaries) are ignored.
    fn scan(&self) -> std::io::Result<BTreeMap<String, (bool, bool)>> {
        let mut listing: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for item in std::fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.is_dir() {
                let Some(tenant) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if tenant.starts_with('.') {
                    continue;
                }
                if !crate::tenancy::valid_id(tenant) {
                    tracing::warn!(dir = %path.display(), "not a tenant's plugin directory: tenant ids are lower-case letters, digits, `_` and `-`");
                    continue;
                }
                // A tenant directory that vanishes while it is read is simply empty.
                if let Ok(items) = std::fs::read_dir(&path) {
                    for item in items.flatten() {
                        add_file(&mut listing, &item.path(), Some(tenant));
                    }
                }
                continue;
            }
            add_file(&mut listing, &path, None);
        }
        listing.retain(|_, (wasm, toml)| *wasm || *toml);
        Ok(listing)
    }
}

/// Marks `entry` as a replica that failed. A replica that serves keeps its origin and file (it
/// still serves, and peers may fetch its module); one that never loaded takes the new origin.
fn note_failed_replica(entry: &mut Entry, origin: &str, fetches: u64) {
    match &mut entry.replica {
        Some(replica) if entry.plugin.is_some() => replica.fetches = fetches,
        _ => {
            entry.replica = Some(ReplicaOf {
                origin: Arc::from(origin),
                file: PathBuf::new(),
                fetches,
            })
        }
    }
}

/// Notes `path` in the listing when it is a plugin's component or manifest.
fn add_file(listing: &mut BTreeMap<String, (bool, bool)>, path: &Path, tenant: Option<&str>) {
    let (Some(stem), Some(ext)) = (path.file_stem().and_then(|s| s.to_str()), path.extension()) else {
        return;
    };
    if stem.starts_with('.') || stem.is_empty() || path.is_dir() {
        return;
    }
    let name = match tenant {
        Some(tenant) => format!("{tenant}/{stem}"),
        None => stem.to_string(),
    };
    let slot = listing.entry(name).or_default();
    if ext == "wasm" {
        slot.0 = true;
    } else if ext == "toml" {
        slot.1 = true;
    }
}
