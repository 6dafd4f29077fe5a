//! `weft node --config FILE`: every node option in one TOML file, and `weft config check FILE`.
//!
//! The file's keys are the node's long options, with `_` or `-` (`max_mesh = 16`,
//! `seed = ["ws://a:6000"]`, `peer_mtls = true`). Precedence, highest first: command-line flags,
//! `WEFT_*` environment variables, the file, the defaults. A key that names no option is an
//! error that names it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory};

/// `args` with the options of the node's configuration file added, when `weft node` is given
/// one (`--config` or `WEFT_CONFIG`); the names of the options the file set.
pub fn with_config_file(args: Vec<OsString>) -> anyhow::Result<(Vec<OsString>, BTreeSet<String>)> {
    let command = super::Cli::command();
    // Parse errors are reported by the real parse that follows.
    let Ok(matches) = command.clone().try_get_matches_from(&args) else {
        return Ok((args, BTreeSet::new()));
    };
    let Some(("node", node)) = matches.subcommand() else {
        return Ok((args, BTreeSet::new()));
    };
    let Some(file) = node.get_one::<PathBuf>("config") else {
        return Ok((args, BTreeSet::new()));
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading the configuration {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the configuration {}", file.display()))?;
    let node_command = command
        .find_subcommand("node")
        .context("the node command is missing")?
        .clone();
    // Whether option `id` was given as a flag or an environment variable.
    let given = |id: &str| {
        [&matches, node].iter().any(|m| {
            m.try_get_raw(id).is_ok()
                && matches!(
                    m.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
        })
    };
    let mut extra = Vec::new();
    let mut set = BTreeSet::new();
    for (key, value) in &table {
        let wanted = key.replace('-', "_");
        // The node's options and the global ones (`log_format`, `otlp_endpoint`); never hidden
        // (test-only) ones.
        let Some(arg) = node_command.get_arguments().chain(command.get_arguments()).find(|a| {
            a.get_long()
                .is_some_and(|long| long.replace('-', "_") == wanted || a.get_id().as_str() == wanted)
                && !a.is_hide_set()
                && !["config", "help", "version"].contains(&a.get_id().as_str())
        }) else {
            anyhow::bail!(
                "{}: unknown key `{key}` (keys are the options of `weft node --help`, e.g. `max_mesh`, `seed`)",
                file.display()
            );
        };
        let id = arg.get_id().as_str().to_string();
        // Flags and environment variables win over the file, also over a file value that
        // conflicts with them (`no_cache` against `cache_dir`).
        if given(&id)
            || node_command
                .get_arg_conflicts_with(arg)
                .iter()
                .any(|other| given(other.get_id().as_str()))
        {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        let bad = |what: &str| anyhow::anyhow!("{}: `{key}` {what}", file.display());
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => extra.push(OsString::from(format!("--{long}"))),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("must be true or false")),
            },
            ArgAction::Append => {
                let items: Vec<&toml::Value> = match value {
                    toml::Value::Array(items) => items.iter().collect(),
                    one => vec![one],
                };
                for item in items {
                    extra.push(OsString::from(format!(
                        "--{long}={}",
                        scalar(item).ok_or_else(|| bad("must be a list of strings or numbers"))?
                    )));
                }
            }
            _ => {
                let value = scalar(value).ok_or_else(|| bad("must be a string, a number or a boolean"))?;
                extra.push(OsString::from(format!("--{long}={value}")));
            }
        }
        set.insert(id);
    }
    let mut args = args;
    args.extend(extra);
    Ok((args, set))
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `weft config check FILE`: validates the file and prints the node's effective configuration,
/// each option with where its value comes from.
pub fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let args: Vec<OsString> = vec!["weft".into(), "node".into(), "--config".into(), file.into()];
    let (args, from_file) = with_config_file(args)?;
    let matches = super::Cli::command()
        .try_get_matches_from(&args)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.render().to_string().trim()))?;
    let node: &ArgMatches = matches
        .subcommand_matches("node")
        .context("the node command is missing")?;
    let command = super::Cli::command();
    let node_command = command.find_subcommand("node").context("the node command is missing")?;
    println!("# effective configuration of `weft node --config {}`", file.display());
    for arg in node_command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || id == "config" || id == "help" {
            continue;
        }
        let key = long.replace('-', "_");
        let values: Vec<String> = node
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = if from_file.contains(id) {
            "file"
        } else {
            match node.value_source(id) {
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::DefaultValue) => "default",
                _ => "unset",
            }
        };
        let shown = if id.contains("secret") && !values.is_empty() {
            "\"(set)\"".to_string()
        } else {
            match (arg.get_action(), values.as_slice()) {
                (ArgAction::SetTrue, [one]) => one.clone(),
                (ArgAction::SetTrue, []) => "false".into(),
                (ArgAction::Append, many) => format!("{many:?}"),
                (_, []) => {
                    println!("# {key} (unset)");
                    continue;
                }
                (_, [one, ..]) => match one.parse::<f64>() {
                    Ok(_) => one.clone(),
                    Err(_) => format!("{one:?}"),
                },
            }
        };
        println!("{key} = {shown}  # {source}");
    }
    Ok(ExitCode::SUCCESS)
}
