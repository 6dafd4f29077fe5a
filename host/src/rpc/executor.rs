//! Runs requests: plans them, runs each level's commands concurrently, routes each command
//! to a built-in or a local plugin, and assembles the response.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::builtins;
use super::plan::{plan, substitute};
use super::protocol::{
    self, codes, ErrorBody, ExecutionSummary, IntermediateResult, Request, RequestCommand, Response,
};
use crate::config::Limits;
use crate::error::CommandError;
use crate::metrics::{Metrics, Outcome};
use crate::plugins::{CommandTable, Selector};
use crate::runtime::{CallContext, CallFuture, GuestCall, HostCalls};
use crate::tenancy::{Refusal, Tenant, Tenants};

/// A future answered by another node.
pub type RemoteFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, CommandError>> + Send>>;

/// A call for another node.
pub struct RemoteCall {
    pub fun: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub selector: Selector,
    pub context: CallContext,
}

/// Where calls go that no local command serves: the fabric.
pub trait Remote: Send + Sync + 'static {
    fn call(&self, call: RemoteCall) -> RemoteFuture;
    /// What `weft.peers` answers: every member, or those in `states`.
    fn peers(&self, states: Option<&[String]>) -> Value;
    /// The cluster this node belongs to.
    fn cluster(&self) -> &str;
    /// What `weft.catalog` answers.
    fn catalog(&self, selector: &Selector) -> Value;
    /// `weft.fault ACTION NODES`: cut or restore links to `nodes` (only where enabled).
    fn fault(&self, action: &str, nodes: Vec<String>) -> Result<Value, CommandError>;
}

/// Executes client requests and calls made by plugins.
pub struct Executor {
    table: RwLock<Arc<CommandTable>>,
    table_changes: tokio::sync::watch::Sender<u64>,
    remote: std::sync::OnceLock<Arc<dyn Remote>>,
    tenants: std::sync::OnceLock<Arc<Tenants>>,
    metrics: Metrics,
    node_tags: Vec<String>,
    limits: Limits,
    me: Weak<Executor>,
}

impl Executor {
    pub fn new(limits: Limits, node_tags: Vec<String>) -> Arc<Self> {
        Arc::new_cyclic(|me| Executor {
            table: RwLock::new(Arc::new(CommandTable::default())),
            table_changes: tokio::sync::watch::channel(0).0,
            remote: std::sync::OnceLock::new(),
            tenants: std::sync::OnceLock::new(),
            metrics: Metrics::default(),
            node_tags,
            limits,
            me: me.clone(),
        })
    }

    /// Replaces the table of local commands; calls already routed finish where they are.
    pub fn set_table(&self, table: CommandTable) {
        if let Ok(mut current) = self.table.write() {
            *current = Arc::new(table);
        }
        self.table_changes.send_modify(|version| *version += 1);
    }

    /// Notified whenever the table of local commands changes.
    pub fn subscribe_table(&self) -> tokio::sync::watch::Receiver<u64> {
        self.table_changes.subscribe()
    }

    /// Routes calls no local command serves to `remote` (set once, by the fabric).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// Serves these tenants (set once, at start): clients must authenticate, and each sees its
    /// own commands and public ones.
    pub fn set_tenants(&self, tenants: Arc<Tenants>) {
        let _ = self.tenants.set(tenants);
    }

    /// The rest of the fabric, once the node takes part in one.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The node's tenants, when it has them.
    pub fn tenants(&self) -> Option<&Arc<Tenants>> {
        self.tenants.get()
    }

    /// The tenant a call acts as: `None` on a node without tenants (every command visible);
    /// on a node with tenants, a call that names none may use public commands only.
    pub fn caller_tenant(&self, tenant: Option<Arc<str>>) -> Option<Arc<str>> {
        self.tenants.get()?;
        Some(tenant.unwrap_or_else(|| Arc::from("")))
    }

    /// The current table of local commands.
    pub fn table(&self) -> Arc<CommandTable> {
        self.table.read().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Answers one request frame of a client of `tenant` (`None`: unauthenticated, on a node
    /// without tenants); never fails (errors become error responses).
    pub async fn handle_frame(&self, frame: &[u8], tenant: Option<&Arc<Tenant>>) -> Response {
        if frame.len() > self.limits.max_frame_bytes {
            return Response::error(
                protocol::request_id(frame),
                ErrorBody::new(
                    codes::INVALID_REQUEST,
                    format!(
                        "request of {} bytes exceeds the limit of {} bytes",
                        frame.len(),
                        self.limits.max_frame_bytes
                    ),
                ),
            );
        }
        if let Some(limit) = tenant.and_then(|t| t.max_request_bytes.filter(|limit| frame.len() > *limit)) {
            return Response::error(
                protocol::request_id(frame),
                ErrorBody::new(
                    codes::INVALID_REQUEST,
                    format!(
                        "request of {} bytes exceeds tenant `{}`'s limit of {limit} bytes",
                        frame.len(),
                        tenant.map_or("", |t| &*t.id)
                    ),
                ),
            );
        }
        let mut request = match protocol::parse(frame) {
            Ok(request) => request,
            Err((u, error)) => return Response::error(u, error),
        };
        let _slot = match tenant {
            // Boxed: waiting for a slot must not grow every request's future.
            Some(tenant) => match Box::pin(admit(tenant, request.cmds.len())).await {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    self.metrics.refused(matches!(refusal, Refusal::Busy(_)));
                    let details = match refusal {
                        Refusal::RateLimited(d) | Refusal::Busy(d) => d,
                    };
                    return Response::error(request.u, ErrorBody::new(codes::OVER_LIMIT, details));
                }
            },
            None => None,
        };
        // In a block: nothing but the slot is kept across the request's execution.
        {
            let caller = self.caller_tenant(tenant.map(|t| t.id.clone()));
            for cmd in &mut request.cmds {
                cmd.selector.tenant = caller.clone();
            }
        }
        // Its `u` is the trace id of every log line it causes, on every node.
        let span = tracing::info_span!("request", trace = %trace_id(&request.u));
        self.execute(request).instrument(span).await
    }

    /// Runs a parsed request.
    pub async fn execute(&self, request: Request) -> Response {
        let started = Instant::now();
        let Request {
            u,
            cmds,
            return_intermediate_results,
            include_execution_summary,
        } = request;
        let plan = match plan(&cmds) {
            Ok(plan) => plan,
            Err(details) => return Response::error(u, ErrorBody::new(codes::INVALID_REQUEST, details)),
        };
        let total_levels = plan.levels.len();
        let mut results: HashMap<String, Value> = HashMap::with_capacity(cmds.len());
        let mut intermediate = Vec::new();
        let mut level_times = Vec::with_capacity(total_levels);
        let mut accumulated = Map::new();
        for (level_index, level) in plan.levels.iter().enumerate() {
            let level_started = Instant::now();
            let outcomes = self.run_level(level, &cmds, &results, &u).await;
            let mut level_results = Map::new();
            for (&i, outcome) in level.iter().zip(outcomes) {
                let cmd = &cmds[i];
                match outcome {
                    Ok(value) => {
                        if return_intermediate_results {
                            level_results.insert(cmd.name.clone(), value.clone());
                        }
                        results.insert(cmd.name.clone(), value);
                    }
                    Err(error) => return Response::error(u, command_error(cmd, error)),
                }
            }
            let elapsed = ms(level_started);
            level_times.push(elapsed);
            if return_intermediate_results {
                accumulated.extend(level_results.clone());
                intermediate.push(IntermediateResult {
                    request_id: u.clone(),
                    level_index,
                    level_results,
                    accumulated_results: accumulated.clone(),
                    total_levels,
                    completed_levels: level_index + 1,
                    timestamp: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    execution_time_ms: elapsed,
                });
            }
        }
        // Every result no other command consumed, in request order.
        let mut r = Map::new();
        for (i, cmd) in cmds.iter().enumerate() {
            if !plan.consumed[i] {
                if let Some(value) = results.remove(&cmd.name) {
                    r.insert(cmd.name.clone(), value);
                }
            }
        }
        let execution_summary = include_execution_summary.then(|| {
            let bottleneck_level_index = level_times
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            ExecutionSummary {
                request_id: u.clone(),
                total_execution_time_ms: ms(started),
                total_levels,
                average_level_time_ms: level_times.iter().sum::<f64>() / total_levels.max(1) as f64,
                level_execution_times: level_times,
                bottleneck_level_index,
                parallel_commands_executed: cmds.len(),
                cross_cluster_hops: 0,
            }
        });
        Response {
            r: Value::Object(r),
            error: None,
            u,
            intermediate_results: return_intermediate_results.then_some(intermediate),
            execution_summary,
        }
    }

    /// Runs the commands of one level concurrently (on separate tasks when there are several;
    /// they are aborted if the request is dropped).
    async fn run_level(
        &self,
        level: &[usize],
        cmds: &[RequestCommand],
        results: &HashMap<String, Value>,
        u: &Value,
    ) -> Vec<Result<Value, CommandError>> {
        // The trace id is derived here, not kept: every byte held across the request's awaits
        // is paid by every request in flight.
        let context = self.client_context(Arc::from(trace_id(u)));
        let names: HashSet<&str> = results.keys().map(String::as_str).collect();
        let budget = self.limits.max_frame_bytes;
        // One command: run here, borrowing its name and selector from the request (nothing
        // copied into the future that every request in flight keeps).
        if let [i] = level {
            let cmd = &cmds[*i];
            return match resolve_args(cmd, results, &names, budget) {
                Ok((args, kwargs)) => vec![self.dispatch(&cmd.fun, args, kwargs, &cmd.selector, context).await],
                Err(e) => vec![Err(e)],
            };
        }
        let prepared: Vec<_> = level
            .iter()
            .map(|&i| {
                let cmd = &cmds[i];
                resolve_args(cmd, results, &names, budget)
                    .map(|(args, kwargs)| (cmd.fun.clone(), args, kwargs, cmd.selector.clone()))
            })
            .collect();
        let Some(me) = self.me.upgrade() else {
            return prepared.iter().map(|_| Err(shutting_down())).collect();
        };
        let mut tasks = JoinSet::new();
        for (slot, p) in prepared.into_iter().enumerate() {
            let (me, context) = (me.clone(), context.clone());
            tasks.spawn(async move {
                let outcome = match p {
                    Ok((fun, args, kwargs, selector)) => me.dispatch(&fun, args, kwargs, &selector, context).await,
                    Err(e) => Err(e),
                };
                (slot, outcome)
            });
        }
        let mut outcomes: Vec<Result<Value, CommandError>> = level.iter().map(|_| Err(shutting_down())).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((slot, outcome)) => {
                    if let Some(place) = outcomes.get_mut(slot) {
                        *place = outcome;
                    }
                }
                Err(e) => tracing::error!(error = %e, "a command task failed"),
            }
        }
        outcomes
    }

    /// The context of a call made by a client: a fresh deadline, depth 0.
    fn client_context(&self, trace: Arc<str>) -> CallContext {
        CallContext {
            deadline: Instant::now() + self.limits.call_deadline,
            budget: self.limits.call_deadline,
            depth: 0,
            memory_limit_bytes: self.limits.memory_limit_bytes,
            instance_reuse: self.limits.instance_reuse,
            grants: None,
            trace: Some(trace),
        }
    }

    /// Runs one command: here when a built-in or a local plugin serves it (local first),
    /// else on another node of the fabric.
    pub async fn dispatch(
        &self,
        fun: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        selector: &Selector,
        context: CallContext,
    ) -> Result<Value, CommandError> {
        // The table is consulted here only when another node could serve the call; a node
        // without a fabric goes straight to the local path.
        // A call for another cluster goes there even when a local plugin serves it.
        let remote = self.remote.get().filter(|remote| {
            !builtins::NAMES.contains(&fun)
                && (selector
                    .target_cluster
                    .as_deref()
                    .is_some_and(|c| c != remote.cluster())
                    || self.table().find(fun, selector).is_err())
        });
        match remote {
            Some(remote) => {
                let call = RemoteCall {
                    fun: fun.to_string(),
                    args,
                    kwargs,
                    selector: selector.clone(),
                    context,
                };
                Box::pin(remote.call(call)).await
            }
            _ => self.dispatch_local(fun, args, kwargs, selector, context).await,
        }
    }

    /// Runs one command on this node only: a built-in or a local plugin.
    pub async fn dispatch_local(
        &self,
        fun: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        selector: &Selector,
        context: CallContext,
    ) -> Result<Value, CommandError> {
        if builtins::NAMES.contains(&fun) {
            builtins::select(fun, selector, &self.node_tags)?;
            let remote = self.remote.get();
            return match fun {
                // A tenant sees the reports of its own plugins only.
                builtins::PLUGINS => {
                    let table = self.table();
                    let reports: Vec<_> = table
                        .reports()
                        .into_iter()
                        .filter(|r| {
                            selector
                                .tenant
                                .as_deref()
                                .is_none_or(|t| crate::tenancy::tenant_of(&r.name) == t)
                        })
                        .collect();
                    serde_json::to_value(reports).map_err(|e| CommandError::Failed(format!("{fun}: {e}")))
                }
                builtins::PEERS => {
                    let states = builtins::peers_args(&args, &kwargs)?;
                    Ok(remote.map_or(Value::Null, |r| r.peers(states.as_deref())))
                }
                builtins::CATALOG => Ok(remote.map_or(Value::Array(Vec::new()), |r| r.catalog(selector))),
                builtins::FAULT => {
                    let remote = remote.ok_or_else(|| CommandError::Denied("this node has no fabric".into()))?;
                    let (action, nodes) = builtins::fault_args(args)?;
                    remote.fault(&action, nodes)
                }
                _ => builtins::run(fun, args, kwargs),
            };
        }
        let table = self.table();
        let command = table.find(fun, selector)?;
        let plugin = command.plugin.clone();
        let settings = command.settings.clone();
        drop(table);
        // The plugin's own deadline and memory limit, within the caller's deadline.
        let own_deadline = Instant::now() + settings.deadline;
        let context = if own_deadline < context.deadline {
            CallContext {
                deadline: own_deadline,
                budget: settings.deadline,
                ..context
            }
        } else {
            context
        };
        let context = CallContext {
            memory_limit_bytes: settings.memory_limit_bytes,
            instance_reuse: settings.instance_reuse,
            grants: settings.grants.clone(),
            ..context
        };
        let _slot = match &settings.concurrency {
            Some(slots) => match tokio::time::timeout_at(context.deadline, slots.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_)) => return Err(shutting_down()),
                Err(_) => {
                    return Err(CommandError::Timeout(format!(
                        "{fun}: no instance of the plugin became free within the deadline of {} ms",
                        context.budget.as_millis()
                    )))
                }
            },
            None => None,
        };
        let args_json = Value::Array(args).to_string();
        let kwargs_json = Value::Object(kwargs).to_string();
        let host_calls: Arc<dyn HostCalls> = match self.me.upgrade() {
            Some(me) => me,
            None => return Err(shutting_down()),
        };
        // Boxed: the wasmtime call future is large, and requests that never reach a plugin
        // should not carry (and move) its space.
        let started = Instant::now();
        let outcome = Box::pin(plugin.invoke(fun, &args_json, &kwargs_json, context, host_calls))
            .await
            .and_then(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| CommandError::Failed(format!("{fun}: the plugin returned invalid JSON: {e}")))
            });
        let counted = match &outcome {
            Ok(_) => Outcome::Ok,
            Err(CommandError::Timeout(_)) => Outcome::Timeout,
            Err(_) => Outcome::Error,
        };
        let tenant = selector.tenant.as_deref().unwrap_or_default();
        self.metrics.call(fun, tenant, counted, started.elapsed());
        outcome
    }
}

impl HostCalls for Executor {
    fn call(&self, call: GuestCall) -> CallFuture {
        let me = self.me.upgrade();
        let max_depth = self.limits.max_call_depth;
        Box::pin(async move {
            let Some(me) = me else {
                return Err(CommandError::Failed("the node is shutting down".into()));
            };
            let depth = call.parent.depth + 1;
            if depth > max_depth {
                return Err(CommandError::Denied(format!(
                    "{}: call depth limit of {max_depth} exceeded (commands calling commands nest too deep)",
                    call.command
                )));
            }
            let args = match serde_json::from_str::<Value>(&call.args_json) {
                Ok(Value::Array(args)) => args,
                Ok(Value::Null) => Vec::new(),
                _ => {
                    return Err(CommandError::InvalidArgs(format!(
                        "{}: arguments must be a JSON list",
                        call.command
                    )))
                }
            };
            let kwargs = if call.kwargs_json.trim().is_empty() {
                Map::new()
            } else {
                match serde_json::from_str::<Value>(&call.kwargs_json) {
                    Ok(Value::Object(kwargs)) => kwargs,
                    Ok(Value::Null) => Map::new(),
                    _ => {
                        return Err(CommandError::InvalidArgs(format!(
                            "{}: keyword arguments must be a JSON object",
                            call.command
                        )))
                    }
                }
            };
            // A plugin's calls act as its tenant.
            let selector = Selector {
                locs: call.resources,
                tenant: me.caller_tenant(Some(Arc::from(crate::tenancy::tenant_of(&call.plugin)))),
                ..Selector::default()
            };
            let context = CallContext { depth, ..call.parent };
            let value = me.dispatch(&call.command, args, kwargs, &selector, context).await?;
            Ok(value.to_string())
        })
    }
}

/// The command's arguments with every reference replaced by the result it names; at most
/// `budget` bytes of results are copied in (a request must not multiply itself by reference).
fn resolve_args(
    cmd: &RequestCommand,
    results: &HashMap<String, Value>,
    names: &HashSet<&str>,
    mut budget: usize,
) -> Result<(Vec<Value>, Map<String, Value>), CommandError> {
    let mut resolve = |v: &Value| {
        substitute(v, results, names, &mut budget)
            .map_err(|e| CommandError::InvalidArgs(format!("`{}`: {e}", cmd.name)))
    };
    let args = cmd.args.iter().map(&mut resolve).collect::<Result<Vec<_>, _>>()?;
    let kwargs = cmd
        .kwargs
        .iter()
        .map(|(k, v)| Ok((k.clone(), resolve(v)?)))
        .collect::<Result<Map<_, _>, CommandError>>()?;
    Ok((args, kwargs))
}

/// Takes the request's calls from its tenant's rate and a running slot.
async fn admit(tenant: &Tenant, calls: usize) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
    tenant.admit(calls)?;
    tenant.slot().await
}

/// A request's `u` as a trace id: the string itself, or the JSON of another value.
fn trace_id(u: &Value) -> String {
    match u {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn shutting_down() -> CommandError {
    CommandError::Failed("the node is shutting down".into())
}

fn command_error(cmd: &RequestCommand, error: CommandError) -> ErrorBody {
    let code = match error {
        CommandError::NotFound(_) => codes::NOT_FOUND,
        CommandError::Timeout(_) => codes::TIMEOUT_OR_ROLE,
        _ => codes::EXECUTION_FAILED,
    };
    let mut body = ErrorBody::new(code, format!("command `{}` ({}): {error}", cmd.name, cmd.fun));
    if let CommandError::InvalidArgs(_) = error {
        body.message = "Invalid arguments".into();
    }
    body
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_futures_stay_small() {
        // Every in-flight request keeps one of these futures; large ones cost memory and copies.
        let executor = Executor::new(Limits::default(), Vec::new());
        let size = std::mem::size_of_val(&executor.handle_frame(b"{}", None));
        assert!(size <= 2048, "handle_frame future is {size} bytes");
    }
}
