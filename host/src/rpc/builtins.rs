//! Commands every node serves without a plugin.

use serde_json::{Map, Value};

use crate::error::CommandError;

/// Names of the built-in commands.
pub const NAMES: [&str; 2] = ["echo", "echos"];

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
