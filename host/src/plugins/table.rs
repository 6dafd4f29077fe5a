//! Which local plugin serves which command, with its effective resource tags and limits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::manifest::PluginSettings;
use crate::error::CommandError;
use crate::runtime::{Origin, Plugin, Tier};

/// A command served by a plugin on this node.
#[derive(Clone)]
pub struct LocalCommand {
    pub name: String,
    /// Tags the plugin declares ∪ its sidecar's ∪ the node's own.
    pub tags: BTreeSet<String>,
    pub version: semver::Version,
    pub plugin: Arc<Plugin>,
    pub settings: Arc<PluginSettings>,
    /// The tenant whose plugin serves it.
    pub tenant: Arc<str>,
    /// Callable by every tenant, not only its own.
    pub public: bool,
    /// The size of the plugin's component, in bytes.
    pub size: u64,
    /// The node whose plugin this is a replica of; `None`: a plugin of this node's directory.
    pub replica_of: Option<Arc<str>>,
}

impl LocalCommand {
    /// The identity clients may pin with `function_id`: `name@version`.
    pub fn function_id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What a call asks for besides the command name.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Resource tags the command must carry (`locs`).
    pub locs: Vec<String>,
    pub function_id: Option<String>,
    pub version_constraint: Option<String>,
    /// The caller's tenant; `None` on a node without tenants, where every command is visible.
    pub tenant: Option<Arc<str>>,
    /// The cluster that must run the call (`target_cluster`); `None`: the nearest that serves.
    pub target_cluster: Option<String>,
}

impl Selector {
    /// Whether the caller may see and call a command of `tenant`.
    pub fn sees(&self, tenant: &str, public: bool) -> bool {
        public || self.tenant.as_deref().is_none_or(|caller| caller == tenant)
    }
}

/// A loaded, enabled plugin offered to the table.
pub struct Served {
    pub plugin: Arc<Plugin>,
    /// Tags from the sidecar manifest.
    pub extra_tags: Vec<String>,
    pub settings: Arc<PluginSettings>,
    /// Its commands may be called by every tenant (sidecar `public = true`).
    pub public: bool,
    /// The size of its component, in bytes.
    pub size: u64,
    /// The node it is a replica of; `None`: a plugin of this node's directory.
    pub replica_of: Option<Arc<str>>,
}

/// What `weft plugins` shows of one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    pub name: String,
    pub file: String,
    /// `serving`, `failed` (no version could be loaded), `disabled` or `conflict`.
    pub state: &'static str,
    pub digest: Option<String>,
    /// `compiled` or `cache`.
    pub origin: Option<Origin>,
    /// `baseline` (Winch's code, until Cranelift's is ready) or `optimized`.
    pub tier: Option<Tier>,
    pub compile_ms: Option<f64>,
    pub description: Option<String>,
    pub commands: Vec<CommandReport>,
    pub last_error: Option<String>,
    /// The node whose plugin this is a replica of (fetched through the fabric).
    pub replica_of: Option<String>,
    /// How many times the replica's component was fetched from peers.
    pub fetches: u64,
    /// Idle instances kept warm for the next calls, and the linear memory they hold.
    pub warm_instances: usize,
    pub warm_memory_bytes: usize,
    /// The loaded plugin, for what changes between tables (its code's tier, warm instances).
    #[serde(skip)]
    pub plugin: Option<Arc<Plugin>>,
}

impl PluginReport {
    /// This report with the code's tier and the warm instances as they are now.
    fn now(&self) -> PluginReport {
        let mut report = self.clone();
        if let Some(plugin) = &self.plugin {
            report.tier = Some(plugin.tier());
            (report.warm_instances, report.warm_memory_bytes) = plugin.warm();
        }
        report
    }
}

/// One command in a [`PluginReport`].
#[derive(Debug, Clone, Serialize)]
pub struct CommandReport {
    pub name: String,
    pub version: String,
    pub tags: Vec<String>,
    pub description: String,
    /// False when another plugin serves this name (see `last_error`).
    pub served: bool,
}

/// The commands of all loaded plugins, and what is known of every plugin file.
#[derive(Default)]
pub struct CommandTable {
    by_name: HashMap<String, LocalCommand>,
    reports: Vec<PluginReport>,
}

impl CommandTable {
    /// Builds the table. A plugin may not serve a built-in command (nor any name under
    /// `weft.`, kept for the node), and when two plugins describe the same command, a plugin of
    /// the node's directory wins over a replica, then the plugin whose file name sorts first
    /// serves it: a command is never silently shadowed. Returns the refused claims as (plugin,
    /// reason).
    pub fn build(served: &[Served], node_tags: &[String]) -> (Self, Vec<(String, String)>) {
        let mut sorted: Vec<&Served> = served.iter().collect();
        sorted
            .sort_by(|a, b| (a.replica_of.is_some(), a.plugin.name()).cmp(&(b.replica_of.is_some(), b.plugin.name())));
        let mut by_name: HashMap<String, LocalCommand> = HashMap::new();
        let mut refused = Vec::new();
        for entry in sorted {
            let plugin = &entry.plugin;
            for spec in plugin.commands() {
                let reason = if crate::rpc::BUILTIN_COMMANDS.contains(&spec.name.as_str())
                    || spec.name.starts_with("weft.")
                {
                    Some(format!(
                        "command `{}` is a built-in command (or a name under `weft.`, kept for the node) and cannot be served by a plugin",
                        spec.name
                    ))
                } else {
                    by_name.get(&spec.name).map(|existing| {
                        format!(
                            "command `{}` is already served by plugin `{}` (the first by file name serves it)",
                            spec.name,
                            existing.plugin.name()
                        )
                    })
                };
                if let Some(reason) = reason {
                    tracing::error!(plugin = plugin.name(), "{reason}");
                    refused.push((plugin.name().to_string(), reason));
                    continue;
                }
                let tags = spec
                    .resources
                    .iter()
                    .chain(&entry.extra_tags)
                    .chain(node_tags)
                    .cloned()
                    .collect();
                by_name.insert(
                    spec.name.clone(),
                    LocalCommand {
                        name: spec.name.clone(),
                        tags,
                        version: spec.version.clone(),
                        plugin: plugin.clone(),
                        settings: entry.settings.clone(),
                        tenant: Arc::from(crate::tenancy::tenant_of(plugin.name())),
                        public: entry.public,
                        size: entry.size,
                        replica_of: entry.replica_of.clone(),
                    },
                );
            }
        }
        (
            CommandTable {
                by_name,
                reports: Vec::new(),
            },
            refused,
        )
    }

    /// Attaches the reports `weft plugins` shows.
    pub fn with_reports(mut self, reports: Vec<PluginReport>) -> Self {
        self.reports = reports;
        self
    }

    /// What is known of every plugin file, as of now.
    pub fn reports(&self) -> Vec<PluginReport> {
        self.reports.iter().map(PluginReport::now).collect()
    }

    /// Whether `plugin` serves command `name` in this table.
    pub fn serves(&self, name: &str, plugin: &Plugin) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(&c.plugin), plugin))
    }

    /// The effective tags of command `name`.
    pub fn tags(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.by_name.get(name).map(|c| &c.tags)
    }

    /// The command that serves `name` under `selector`, or why none does.
    pub fn find(&self, name: &str, selector: &Selector) -> Result<&LocalCommand, CommandError> {
        // Another tenant's private command is, to this caller, not there.
        let Some(command) = self.by_name.get(name).filter(|c| selector.sees(&c.tenant, c.public)) else {
            return Err(CommandError::NotFound(format!("command `{name}` not found")));
        };
        if let Some(missing) = selector.locs.iter().find(|tag| !command.tags.contains(*tag)) {
            return Err(CommandError::NotFound(format!(
                "command `{name}` not found with resources {:?} (no provider carries `{missing}`)",
                selector.locs
            )));
        }
        if let Some(id) = &selector.function_id {
            if *id != command.function_id() {
                return Err(CommandError::NotFound(format!(
                    "command `{name}` not found with function_id `{id}`"
                )));
            }
        }
        if let Some(constraint) = &selector.version_constraint {
            // Validated when the request was parsed; an unparsable one matches nothing.
            if !semver::VersionReq::parse(constraint).is_ok_and(|req| req.matches(&command.version)) {
                return Err(CommandError::NotFound(format!(
                    "command `{name}` not found with version {constraint} (available: {})",
                    command.version
                )));
            }
        }
        Ok(command)
    }

    /// Every command, sorted by name.
    pub fn commands(&self) -> Vec<&LocalCommand> {
        let mut all: Vec<&LocalCommand> = self.by_name.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
