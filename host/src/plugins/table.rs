//! Which local plugin serves which command, with its effective resource tags.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::CommandError;
use crate::runtime::Plugin;

/// A command served by a plugin on this node.
#[derive(Clone)]
pub struct LocalCommand {
    pub name: String,
    /// Tags the plugin declares ∪ the node's own tags.
    pub tags: BTreeSet<String>,
    pub version: semver::Version,
    pub plugin: Arc<Plugin>,
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
}

/// The commands of all loaded plugins.
#[derive(Default)]
pub struct CommandTable {
    by_name: HashMap<String, LocalCommand>,
}

impl CommandTable {
    /// Builds the table. When two plugins describe the same command, the plugin whose file
    /// name sorts first serves it and the other claim is reported as an error: a command is
    /// never silently shadowed.
    pub fn build(plugins: &[Arc<Plugin>], node_tags: &[String]) -> Self {
        let mut sorted: Vec<&Arc<Plugin>> = plugins.iter().collect();
        sorted.sort_by(|a, b| a.name().cmp(b.name()));
        let mut by_name: HashMap<String, LocalCommand> = HashMap::new();
        for plugin in sorted {
            for spec in plugin.commands() {
                if crate::rpc::BUILTIN_COMMANDS.contains(&spec.name.as_str()) {
                    tracing::error!(command = %spec.name, plugin = plugin.name(), "a plugin may not serve a built-in command");
                    continue;
                }
                if let Some(existing) = by_name.get(&spec.name) {
                    tracing::error!(
                        command = %spec.name,
                        served_by = existing.plugin.name(),
                        rejected = plugin.name(),
                        "two plugins claim the same command; the first by file name serves it"
                    );
                    continue;
                }
                let tags = spec.resources.iter().chain(node_tags).cloned().collect();
                by_name.insert(
                    spec.name.clone(),
                    LocalCommand {
                        name: spec.name.clone(),
                        tags,
                        version: spec.version.clone(),
                        plugin: plugin.clone(),
                    },
                );
            }
        }
        CommandTable { by_name }
    }

    /// The command that serves `name` under `selector`, or why none does.
    pub fn find(&self, name: &str, selector: &Selector) -> Result<&LocalCommand, CommandError> {
        let Some(command) = self.by_name.get(name) else {
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
