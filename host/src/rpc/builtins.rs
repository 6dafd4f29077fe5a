//! Commands every node serves without a plugin.

use serde_json::{Map, Value};

use crate::error::CommandError;
use crate::plugins::Selector;

/// Built-ins carry the node's version and resource tags.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Checks a call's selector against a built-in: its tags are the node's, its version the node's.
pub fn select(name: &str, selector: &Selector, node_tags: &[String]) -> Result<(), CommandError> {
    if let Some(missing) = selector.locs.iter().find(|tag| !node_tags.contains(tag)) {
        return Err(CommandError::NotFound(format!(
            "command `{name}` not found with resources {:?} (this node does not carry `{missing}`)",
            selector.locs
        )));
    }
    if let Some(id) = &selector.function_id {
        if *id != format!("{name}@{VERSION}") {
            return Err(CommandError::NotFound(format!(
                "command `{name}` not found with function_id `{id}`"
            )));
        }
    }
    if let Some(constraint) = &selector.version_constraint {
        let matches = semver::VersionReq::parse(constraint)
            .ok()
            .zip(semver::Version::parse(VERSION).ok())
            .is_some_and(|(req, version)| req.matches(&version));
        if !matches {
            return Err(CommandError::NotFound(format!(
                "command `{name}` not found with version {constraint} (available: {VERSION})"
            )));
        }
    }
    Ok(())
}

/// `weft.plugins`: what `weft plugins` shows (answered by the executor, which has the table).
pub const PLUGINS: &str = "weft.plugins";

/// `weft.peers` and `weft.catalog`: the fabric as this node sees it.
pub const PEERS: &str = "weft.peers";
pub const CATALOG: &str = "weft.catalog";

/// The states a member can be in, as `weft.peers` names them.
pub const PEER_STATES: [&str; 4] = ["alive", "suspect", "dead", "left"];

/// The arguments of `weft.peers`: optionally `state`, one state or a list of them, to list only
/// the members in those states (the counts per state cover every member).
pub fn peers_args(args: &[Value], kwargs: &Map<String, Value>) -> Result<Option<Vec<String>>, CommandError> {
    let usage = || {
        CommandError::InvalidArgs(format!(
            "weft.peers: takes only the keyword `state`, one of {PEER_STATES:?} or a list of them"
        ))
    };
    if !args.is_empty() || kwargs.keys().any(|k| k != "state") {
        return Err(usage());
    }
    let states = match kwargs.get("state") {
        None => return Ok(None),
        Some(Value::String(state)) => vec![state.clone()],
        Some(Value::Array(states)) => states
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(usage))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(usage()),
    };
    if let Some(unknown) = states.iter().find(|s| !PEER_STATES.contains(&s.as_str())) {
        return Err(CommandError::InvalidArgs(format!(
            "weft.peers: no state `{unknown}` (states: {PEER_STATES:?})"
        )));
    }
    Ok(Some(states))
}

/// `weft.fault ACTION NODES`: cut or restore links, on nodes started with `--fault-injection`.
pub const FAULT: &str = "weft.fault";

/// Names of the built-in commands.
pub const NAMES: [&str; 6] = ["echo", "echos", PLUGINS, PEERS, CATALOG, FAULT];

/// The arguments of `weft.fault`: an action and a list of node ids.
pub fn fault_args(args: Vec<Value>) -> Result<(String, Vec<String>), CommandError> {
    let usage =
        || CommandError::InvalidArgs("weft.fault: takes an action (`cut`, `restore`) and a list of node ids".into());
    let mut args = args.into_iter();
    let (Some(Value::String(action)), Some(Value::Array(nodes)), None) = (args.next(), args.next(), args.next()) else {
        return Err(usage());
    };
    let nodes = nodes
        .into_iter()
        .map(|n| match n {
            Value::String(s) => Ok(s),
            _ => Err(usage()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((action, nodes))
}

/// Runs a built-in command (one of [`NAMES`]).
pub fn run(name: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, CommandError> {
    match name {
        // echo(value) → value
        "echo" => match (args.len(), kwargs.is_empty()) {
            (1, true) => Ok(args.into_iter().next().unwrap_or(Value::Null)),
            (0, false) if kwargs.len() == 1 && kwargs.contains_key("value") => {
                Ok(kwargs.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null))
            }
            _ => Err(CommandError::InvalidArgs(format!(
                "echo: takes exactly 1 argument (`value`), got {} positional and {} keyword",
                args.len(),
                kwargs.len()
            ))),
        },
        // echos(*values) → [values...]
        "echos" if kwargs.is_empty() => Ok(Value::Array(args)),
        "echos" => Err(CommandError::InvalidArgs(
            "echos: takes positional arguments only".into(),
        )),
        other => Err(CommandError::NotFound(format!("command `{other}` not found"))),
    }
}
