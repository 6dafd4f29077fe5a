//! Matching a call's positional and keyword arguments to a command's parameters.

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::bindings::weft::plugin::types::CallError;

/// The arguments of one call, consumed parameter by parameter.
pub struct Args {
    command: &'static str,
    positional: VecDeque<Value>,
    given: usize,
    taken: usize,
    keywords: Map<String, Value>,
}

impl Args {
    /// Parses the JSON the host passed: an array of positional arguments and an object (or
    /// an empty string) of keyword arguments.
    pub fn parse(command: &'static str, args_json: &str, kwargs_json: &str) -> Result<Self, CallError> {
        let positional = match serde_json::from_str::<Value>(args_json) {
            Ok(Value::Array(values)) => values,
            Ok(Value::Null) => Vec::new(),
            Ok(other) => {
                return Err(invalid(
                    command,
                    format!("positional arguments must be a list, got {other}"),
                ))
            }
            Err(e) => return Err(invalid(command, format!("positional arguments are not JSON: {e}"))),
        };
        let keywords = if kwargs_json.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(kwargs_json) {
                Ok(Value::Object(map)) => map,
                Ok(Value::Null) => Map::new(),
                Ok(other) => {
                    return Err(invalid(
                        command,
                        format!("keyword arguments must be an object, got {other}"),
                    ))
                }
                Err(e) => return Err(invalid(command, format!("keyword arguments are not JSON: {e}"))),
            }
        };
        Ok(Args {
            command,
            given: positional.len(),
            positional: positional.into(),
            taken: 0,
            keywords,
        })
    }

    /// The next parameter, `name`: the next positional argument, else the keyword argument of
    /// that name, else `null` (which only an `Option` accepts).
    pub fn take<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, CallError> {
        let command = self.command;
        let value = match self.positional.pop_front() {
            Some(value) => {
                if self.keywords.contains_key(name) {
                    return Err(invalid(
                        command,
                        format!("argument `{name}` given both by position and by keyword"),
                    ));
                }
                Some(value)
            }
            None => self.keywords.remove(name),
        };
        self.taken += 1;
        match value {
            Some(value) => {
                serde_json::from_value(value).map_err(|e| invalid(command, format!("argument `{name}`: {e}")))
            }
            None => {
                serde_json::from_value(Value::Null).map_err(|_| invalid(command, format!("missing argument `{name}`")))
            }
        }
    }

    /// Checks that nothing was left over.
    pub fn finish(self) -> Result<(), CallError> {
        if !self.positional.is_empty() {
            return Err(invalid(
                self.command,
                format!(
                    "takes {} positional argument(s) but {} were given",
                    self.taken, self.given
                ),
            ));
        }
        if let Some(name) = self.keywords.keys().next() {
            return Err(invalid(self.command, format!("unexpected keyword argument `{name}`")));
        }
        Ok(())
    }
}

fn invalid(command: &str, message: String) -> CallError {
    CallError::InvalidArgs(format!("{command}: {message}"))
}
