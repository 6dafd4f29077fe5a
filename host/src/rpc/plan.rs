//! Dependency resolution between the commands of one request.
//!
//! A string argument equal to another command's `name`, or to `name.field.sub`, refers to
//! that command's result (or a field of it); references are found anywhere in `args` and
//! `kwargs`, inside lists and object values. Commands are grouped in levels: a command runs
//! in the first level after every command it refers to.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::protocol::{RequestCommand, MAX_NAME_BYTES};

/// The order in which a request's commands run.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Indices into the request's commands, level by level.
    pub levels: Vec<Vec<usize>>,
    /// Whether another command refers to command `i`'s result.
    pub consumed: Vec<bool>,
}

/// Builds the levels; fails on duplicate names or a cycle.
pub fn plan(cmds: &[RequestCommand]) -> Result<Plan, String> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(cmds.len());
    for (i, cmd) in cmds.iter().enumerate() {
        if index.insert(cmd.name.as_str(), i).is_some() {
            return Err(format!("duplicate command name `{}`", cmd.name));
        }
    }
    let names: HashSet<&str> = index.keys().copied().collect();
    let mut deps: Vec<HashSet<usize>> = Vec::with_capacity(cmds.len());
    let mut consumed = vec![false; cmds.len()];
    for cmd in cmds {
        let mut found = HashSet::new();
        let mut visit = |s: &str| {
            if let Some(&i) = reference(s, &names).and_then(|(name, _)| index.get(name)) {
                found.insert(i);
            }
        };
        cmd.args.iter().for_each(|v| walk_strings(v, &mut visit));
        cmd.kwargs.values().for_each(|v| walk_strings(v, &mut visit));
        for &d in &found {
            consumed[d] = true;
        }
        deps.push(found);
    }

    // Kahn's algorithm, a level at a time: O(commands + references).
    let mut waiting: Vec<usize> = deps.iter().map(HashSet::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); cmds.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut levels: Vec<Vec<usize>> = Vec::new();
    let mut ready: Vec<usize> = (0..cmds.len()).filter(|&i| waiting[i] == 0).collect();
    let mut placed = 0;
    while !ready.is_empty() {
        placed += ready.len();
        let mut next = Vec::new();
        for &i in &ready {
            for &j in &dependents[i] {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        levels.push(std::mem::replace(&mut ready, next));
    }
    if placed < cmds.len() {
        let stuck: Vec<&str> = (0..cmds.len())
            .filter(|&i| waiting[i] > 0)
            .map(|i| cmds[i].name.as_str())
            .collect();
        return Err(format!("dependency cycle among commands {stuck:?}"));
    }
    Ok(Plan { levels, consumed })
}

/// If `s` refers to a command: that command's name and the field path after it. The longest
/// matching name wins, so names may themselves contain dots.
fn reference<'a>(s: &'a str, names: &HashSet<&str>) -> Option<(&'a str, Option<&'a str>)> {
    if s.len() <= MAX_NAME_BYTES && names.contains(s) {
        return Some((s, None));
    }
    // Names are at most MAX_NAME_BYTES long, so only dots within that prefix can end one.
    let window = &s.as_bytes()[..s.len().min(MAX_NAME_BYTES + 1)];
    window
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'.')
        .map(|(i, _)| (&s[..i], &s[i + 1..]))
        .find(|(name, _)| names.contains(name))
        .map(|(name, path)| (name, Some(path)))
}

fn walk_strings(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) => visit(s),
        Value::Array(items) => items.iter().for_each(|v| walk_strings(v, visit)),
        Value::Object(map) => map.values().for_each(|v| walk_strings(v, visit)),
        _ => {}
    }
}

/// Replaces every reference in `value` by the result it names, charging the size of every
/// copied result to `budget`.
pub fn substitute(
    value: &Value,
    results: &HashMap<String, Value>,
    names: &HashSet<&str>,
    budget: &mut usize,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match reference(s, names).and_then(|(name, path)| Some((results.get(name)?, name, path))) {
            Some((result, name, path)) => {
                let found = lookup(result, name, path)?;
                let size = approximate_size(&found);
                *budget = budget.checked_sub(size).ok_or_else(|| {
                    "arguments grow past the request size limit when references are resolved".to_string()
                })?;
                found
            }
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, results, names, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, results, names, budget)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => other.clone(),
    })
}

/// About how many bytes `value` takes as JSON text.
fn approximate_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => items.iter().map(approximate_size).sum::<usize>() + 2,
        Value::Object(map) => {
            map.iter()
                .map(|(k, v)| k.len() + 3 + approximate_size(v))
                .sum::<usize>()
                + 2
        }
    }
}

fn lookup(result: &Value, name: &str, path: Option<&str>) -> Result<Value, String> {
    let Some(path) = path else {
        return Ok(result.clone());
    };
    let mut current = result;
    for field in path.split('.') {
        let next = match current {
            Value::Object(map) => map.get(field),
            Value::Array(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.ok_or_else(|| {
            format!("reference `{name}.{path}`: the result of `{name}` has no field `{field}` (result: {result})")
        })?;
    }
    Ok(current.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::Selector;
    use serde_json::json;

    fn cmd(name: &str, args: Value) -> RequestCommand {
        RequestCommand {
            name: name.into(),
            fun: "f".into(),
            args: args.as_array().cloned().unwrap_or_default(),
            kwargs: Map::new(),
            selector: Selector::default(),
        }
    }

    #[test]
    fn levels_follow_references() {
        let cmds = [
            cmd("a", json!([1])),
            cmd("b", json!(["a.x"])),
            cmd("c", json!([["a", {"k": "b"}]])),
            cmd("d", json!([])),
        ];
        let plan = plan(&cmds).unwrap();
        assert_eq!(plan.levels, vec![vec![0, 3], vec![1], vec![2]]);
        assert_eq!(plan.consumed, vec![true, true, false, false]);
    }

    #[test]
    fn cycles_and_duplicates_are_refused() {
        let err = plan(&[cmd("a", json!(["b"])), cmd("b", json!(["a"]))]).unwrap_err();
        assert!(err.contains("cycle"), "{err}");
        let err = plan(&[cmd("a", json!([])), cmd("a", json!([]))]).unwrap_err();
        assert!(err.contains("duplicate command name `a`"), "{err}");
    }

    #[test]
    fn substitution_navigates_fields_and_indices() {
        let results = HashMap::from([("s.1".to_string(), json!({"x": [10, {"y": "deep"}]}))]);
        let names: HashSet<&str> = results.keys().map(String::as_str).collect();
        let mut budget = 1 << 20;
        let out = substitute(
            &json!(["s.1.x.1.y", {"k": "s.1.x.0"}, "s.1", "other"]),
            &results,
            &names,
            &mut budget,
        )
        .unwrap();
        assert_eq!(out, json!(["deep", {"k": 10}, {"x": [10, {"y": "deep"}]}, "other"]));
        let err = substitute(&json!("s.1.nope"), &results, &names, &mut budget).unwrap_err();
        assert!(err.contains("no field `nope`"), "{err}");
    }

    #[test]
    fn substitution_cannot_multiply_a_request() {
        let results = HashMap::from([("big".to_string(), json!("x".repeat(1000)))]);
        let names: HashSet<&str> = results.keys().map(String::as_str).collect();
        let mut budget = 10_000;
        let err = substitute(&json!(vec!["big"; 20]), &results, &names, &mut budget).unwrap_err();
        assert!(err.contains("size limit"), "{err}");
    }
}
