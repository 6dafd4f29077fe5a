//! Request and response frames of the client protocol (see README, "Protocol reference").

use serde::Serialize;
use serde_json::{Map, Value};

use crate::plugins::Selector;

/// Error codes of the client protocol.
pub mod codes {
    /// Command not found, or no node can serve it.
    pub const NOT_FOUND: i64 = 1001;
    /// The request is malformed: not JSON, missing or mistyped fields, duplicate names, a
    /// dependency cycle, a frame over the size limit.
    pub const INVALID_REQUEST: i64 = 1002;
    /// A command ran and failed (including wrong arguments and plugin traps).
    pub const EXECUTION_FAILED: i64 = 1003;
    /// A command did not finish within its deadline, or the role is not `rpc`.
    pub const TIMEOUT_OR_ROLE: i64 = 1004;
    /// The caller's tenant is over its rate of calls or its requests running at once.
    pub const OVER_LIMIT: i64 = 1005;
}

/// Most commands one request may hold.
pub const MAX_COMMANDS: usize = 1000;

/// Longest command `name` (the name results are referred to by).
pub const MAX_NAME_BYTES: usize = 256;

/// One command of a request.
#[derive(Debug, Clone)]
pub struct RequestCommand {
    /// The name other commands use to refer to this command's result.
    pub name: String,
    /// The command to run.
    pub fun: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub selector: Selector,
}

/// A parsed `role: "rpc"` request.
#[derive(Debug, Clone)]
pub struct Request {
    pub u: Value,
    pub cmds: Vec<RequestCommand>,
    pub return_intermediate_results: bool,
    pub include_execution_summary: bool,
}

/// The `error` member of a response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
    pub details: String,
}

impl ErrorBody {
    pub fn new(code: i64, details: impl Into<String>) -> Self {
        let message = match code {
            codes::NOT_FOUND => "Command not found",
            codes::INVALID_REQUEST => "Invalid request",
            codes::EXECUTION_FAILED => "Execution failed",
            codes::TIMEOUT_OR_ROLE => "Timeout or invalid role",
            _ => "Error",
        };
        ErrorBody {
            code,
            message: message.to_string(),
            details: details.into(),
        }
    }
}

/// A response frame. It carries no `role`, as MPREG's does not.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub r: Value,
    pub error: Option<ErrorBody>,
    pub u: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intermediate_results: Option<Vec<IntermediateResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_summary: Option<ExecutionSummary>,
}

impl Response {
    pub fn error(u: Value, error: ErrorBody) -> Self {
        Response {
            r: Value::Null,
            error: Some(error),
            u,
            intermediate_results: None,
            execution_summary: None,
        }
    }
}

/// The state of a request after one level, sent when `return_intermediate_results` is set.
#[derive(Debug, Clone, Serialize)]
pub struct IntermediateResult {
    pub request_id: Value,
    pub level_index: usize,
    pub level_results: Map<String, Value>,
    pub accumulated_results: Map<String, Value>,
    pub total_levels: usize,
    pub completed_levels: usize,
    pub timestamp: f64,
    pub execution_time_ms: f64,
}

/// Timing of a whole request, sent when `include_execution_summary` is set.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionSummary {
    pub request_id: Value,
    pub total_execution_time_ms: f64,
    pub total_levels: usize,
    pub level_execution_times: Vec<f64>,
    pub bottleneck_level_index: usize,
    pub average_level_time_ms: f64,
    pub parallel_commands_executed: usize,
    pub cross_cluster_hops: u32,
}

/// Parses one request frame. On failure returns the request's `u` (when it could be read)
/// and the error to answer with.
pub fn parse(frame: &[u8]) -> Result<Request, (Value, ErrorBody)> {
    let value: Value = serde_json::from_slice(frame).map_err(|e| {
        (
            Value::Null,
            ErrorBody::new(codes::INVALID_REQUEST, format!("request is not valid JSON: {e}")),
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err((
            Value::Null,
            ErrorBody::new(codes::INVALID_REQUEST, "request must be a JSON object"),
        ));
    };
    let u = object.remove("u").unwrap_or(Value::Null);
    let fail = |code, details: String| Err((u.clone(), ErrorBody::new(code, details)));
    match object.get("role") {
        Some(Value::String(role)) if role == "rpc" => {}
        Some(Value::String(role)) => {
            return fail(
                codes::TIMEOUT_OR_ROLE,
                format!("invalid role `{role}`: this endpoint serves role `rpc`"),
            )
        }
        Some(other) => {
            return fail(
                codes::TIMEOUT_OR_ROLE,
                format!("invalid role {other}: expected \"rpc\""),
            )
        }
        None => return fail(codes::INVALID_REQUEST, "missing field `role` (expected \"rpc\")".into()),
    }
    let flag = |object: &Map<String, Value>, key: &str| object.get(key).and_then(Value::as_bool).unwrap_or(false);
    let return_intermediate_results = flag(&object, "return_intermediate_results");
    let include_execution_summary = flag(&object, "include_execution_summary");
    let cmds = match object.remove("cmds") {
        Some(Value::Array(cmds)) => cmds,
        Some(_) => return fail(codes::INVALID_REQUEST, "field `cmds` must be a list of commands".into()),
        None => return fail(codes::INVALID_REQUEST, "missing field `cmds`".into()),
    };
    if cmds.is_empty() {
        return fail(codes::INVALID_REQUEST, "field `cmds` is empty".into());
    }
    if cmds.len() > MAX_COMMANDS {
        return fail(
            codes::INVALID_REQUEST,
            format!(
                "a request may hold at most {MAX_COMMANDS} commands, this one has {}",
                cmds.len()
            ),
        );
    }
    let mut parsed = Vec::with_capacity(cmds.len());
    for (index, cmd) in cmds.into_iter().enumerate() {
        match parse_command(cmd) {
            Ok(cmd) => parsed.push(cmd),
            Err(details) => return fail(codes::INVALID_REQUEST, format!("cmds[{index}]: {details}")),
        }
    }
    Ok(Request {
        u,
        cmds: parsed,
        return_intermediate_results,
        include_execution_summary,
    })
}

fn parse_command(value: Value) -> Result<RequestCommand, String> {
    let Value::Object(mut object) = value else {
        return Err("a command must be a JSON object".into());
    };
    let mut string = |key: &str, required: bool| -> Result<Option<String>, String> {
        match object.remove(key) {
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Null) | None if !required => Ok(None),
            None | Some(Value::Null) => Err(format!("missing field `{key}`")),
            Some(other) => Err(format!("field `{key}` must be a string, got {other}")),
        }
    };
    let name = string("name", true)?.unwrap_or_default();
    let fun = string("fun", true)?.unwrap_or_default();
    let function_id = string("function_id", false)?;
    let version_constraint = string("version_constraint", false)?;
    let target_cluster = string("target_cluster", false)?;
    let args = match object.remove("args") {
        Some(Value::Array(args)) => args,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => return Err(format!("field `args` must be a list, got {other}")),
    };
    let kwargs = match object.remove("kwargs") {
        Some(Value::Object(kwargs)) => kwargs,
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(format!("field `kwargs` must be an object, got {other}")),
    };
    let locs = match object.remove("locs") {
        Some(Value::Array(locs)) => locs
            .into_iter()
            .map(|loc| match loc {
                Value::String(s) => Ok(s),
                other => Err(format!("field `locs` must hold strings, got {other}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => return Err(format!("field `locs` must be a list of strings, got {other}")),
    };
    if name.is_empty() {
        return Err("field `name` is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("field `name` is longer than {MAX_NAME_BYTES} bytes"));
    }
    if let Some(constraint) = &version_constraint {
        semver::VersionReq::parse(constraint)
            .map_err(|e| format!("field `version_constraint` {constraint:?} is not a semver requirement: {e}"))?;
    }
    Ok(RequestCommand {
        name,
        fun,
        args,
        kwargs,
        selector: Selector {
            locs,
            function_id,
            version_constraint,
            tenant: None,
            target_cluster,
        },
    })
}

/// The `u` of a request that is not otherwise parsed (an oversized one), so that its error
/// still reaches the waiting caller.
pub fn request_id(frame: &[u8]) -> Value {
    #[derive(serde::Deserialize)]
    struct OnlyU {
        #[serde(default)]
        u: Value,
    }
    serde_json::from_slice::<OnlyU>(frame)
        .map(|r| r.u)
        .unwrap_or(Value::Null)
}
