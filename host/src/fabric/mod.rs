//! The fabric: nodes that find each other from seeds, gossip who serves what, watch each other
//! for failure, and route calls to any node that can serve them.
//!
//! - [`wire`]: the peer messages (binary MessagePack frames on the `/fabric` WebSocket path).
//! - [`auth`]: the cluster-secret proof of the handshake.
//! - [`link`]: one authenticated connection to a peer: handshake, frames, pings.
//! - [`identity`]: the node's ed25519 key.
//! - [`gossip`]: records relayed, anti-entropy, departures, deaths and probes.
//! - [`state`]: members, records, links, and the choice of a replica and of the link to it.
//! - [`health`]: how well each node served this node's calls (misbehaving nodes are demoted).
//! - [`route`]: shortest paths through nodes that are not linked directly.
//! - [`modules`]: what other nodes offer for replication, and modules fetched by digest.
//! - [`federation`]: clusters linked by gateways, the summaries they exchange, and the way a
//!   call takes to another cluster.
//!
//! Every node owns its record (catalog entries, URL, links) and signs it with its key; any node
//! relays it and none can forge it. Links form a full mesh up to `max_mesh` nodes and a partial
//! view beyond (a ring plus random links); calls for nodes not linked directly travel through
//! others, hop by hop, with a hop budget. Anti-entropy digests repair any update that was missed.

pub mod auth;
pub mod federation;
mod gossip;
mod health;
pub mod identity;
mod link;
pub mod modules;
mod route;
pub mod sim;
mod state;
mod tree;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::error::CommandError;
use crate::net::server::PeerHandler;
use crate::plugins::Selector;
use crate::rpc::{Executor, Remote, RemoteCall, RemoteFuture};
use crate::runtime::CallContext;
use identity::NodeKey;
use state::{Output, Route, State};
use wire::{CallRequest, CatalogEntry, PeerMessage, WireError, MAX_HOPS};

/// Timings of failure detection and repair, with their defaults.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often each link is pinged.
    pub ping: Duration,
    /// A link that carried nothing for this long is closed and its node suspected.
    pub link_timeout: Duration,
    /// A suspected node that cannot be reached again within this is probed through the other
    /// peers, and declared dead unless one of them still hears it (within 300 ms more).
    pub suspect_timeout: Duration,
    /// How often catalog digests are exchanged.
    pub anti_entropy: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping: Duration::from_millis(500),
            link_timeout: Duration::from_millis(1500),
            suspect_timeout: Duration::from_millis(700),
            anti_entropy: Duration::from_secs(1),
        }
    }
}

/// How a node takes part in the fabric.
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// The node's stable identity.
    pub node_id: String,
    /// The key the node proves its identity with and signs its record with.
    pub key: NodeKey,
    pub cluster: String,
    /// Shared by every node of the cluster; proven, never sent.
    pub secret: Vec<u8>,
    /// The URL other nodes (and clients) reach this node at.
    pub advertise_url: String,
    pub seeds: Vec<String>,
    /// Fabrics up to this many nodes form a full mesh; larger ones a partial view. A node
    /// dials at most this many peers and accepts links up to twice as many (twice its partial
    /// view in a larger fabric).
    pub max_mesh: usize,
    pub timing: Timing,
    /// Accept `weft.fault` calls that cut and restore links (tests only).
    pub fault_injection: bool,
    /// How `wss://` peers are dialed: the CA they must chain to, and this node's certificate
    /// with mutual TLS. `None`: only `ws://` peers.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The other clusters this node links to (through gateway links).
    pub bridge: federation::Bridging,
    /// Proven on links to other clusters; `None`: the cluster secret.
    pub gateway_secret: Option<Vec<u8>>,
    /// The node's tier (0: the top). A gateway link to a higher tier brings a default route
    /// down with the summaries.
    pub tier: u8,
    /// A label for operators (shown by `weft peers` and `/status`).
    pub region: Option<String>,
    /// Cluster boundaries a call may cross.
    pub hop_budget: u8,
}

impl FabricConfig {
    /// The secret proven on a link to a node of `cluster`.
    fn secret_for(&self, cluster: &str) -> &[u8] {
        match &self.gateway_secret {
            Some(secret) if cluster != self.cluster => secret,
            _ => &self.secret,
        }
    }
}

/// This node's part of the fabric.
pub struct Fabric {
    config: FabricConfig,
    executor: Arc<Executor>,
    /// The state machine; every input to it goes through `with_state`, which then carries
    /// out what it asked for.
    state: Mutex<State>,
    /// The connections that passed the handshake, by the id the state machine knows them by.
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    /// Poked when the maintenance tick should run now (a new member to dial).
    wake: tokio::sync::Notify,
    /// Poked when anything routes between clusters depend on changes.
    federation_dirty: tokio::sync::Notify,
    /// Moves whenever a record is taken or dropped.
    records: watch::Sender<u64>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    me: Weak<Fabric>,
    stop: watch::Receiver<bool>,
    /// Set once the node announced its departure: no new links, no dials.
    leaving: std::sync::atomic::AtomicBool,
    /// The node's plugins, to serve modules from and to replicate into.
    modules: std::sync::OnceLock<Arc<dyn modules::ModuleSource>>,
    /// Serve corrupted module bytes (fault injection in tests).
    tamper: std::sync::atomic::AtomicBool,
    /// Misbehave towards peers' calls (fault injection in tests).
    misbehave: std::sync::atomic::AtomicU8,
}

/// How a node misbehaves towards its peers' calls (fault injection).
const BEHAVE: u8 = 0;
const ANSWER_ERRORS: u8 = 1;
const DROP_CALLS: u8 = 2;

/// The driver's end of a connection: its queue of frames, and how its task is told it retired.
struct Conn {
    tx: mpsc::Sender<PeerMessage>,
    retire: Arc<tokio::sync::Notify>,
}

struct Pending {
    /// The link the call was sent on.
    link: u64,
    /// The reply may come back another way (a call crossing clusters): losing the link does
    /// not fail the call; the deadline does. A rerouted reply must carry this token.
    reroutable: Option<u64>,
    reply: oneshot::Sender<Result<Value, WireError>>,
}

impl Fabric {
    /// Starts taking part: dials the seeds, keeps links, gossips, and answers peers.
    pub fn start(config: FabricConfig, executor: Arc<Executor>, stop: watch::Receiver<bool>) -> Arc<Fabric> {
        if config.secret.is_empty() {
            tracing::warn!("no cluster secret is set: any node that knows the cluster id can join (--cluster-secret)");
        }
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let seed = u64::from_le_bytes(auth::nonce()[..8].try_into().unwrap_or_default());
        let state = State::new(&config, std::time::Instant::now(), started_ms, seed);
        let fabric = Arc::new_cyclic(|me| Fabric {
            state: Mutex::new(state),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            wake: tokio::sync::Notify::new(),
            federation_dirty: tokio::sync::Notify::new(),
            records: watch::Sender::new(0),
            config,
            executor: executor.clone(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            me: me.clone(),
            stop,
            leaving: std::sync::atomic::AtomicBool::new(false),
            modules: std::sync::OnceLock::new(),
            tamper: std::sync::atomic::AtomicBool::new(false),
            misbehave: std::sync::atomic::AtomicU8::new(BEHAVE),
        });
        executor.set_remote(fabric.clone());
        tokio::spawn(fabric.clone().maintain());
        tokio::spawn(fabric.clone().publish_local_catalog());
        tokio::spawn(fabric.clone().federate());
        fabric
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Hands the fabric the node's plugins (set once).
    pub fn set_modules(&self, source: Arc<dyn modules::ModuleSource>) {
        if self.modules.set(source).is_err() {
            tracing::warn!("the fabric's module source was already set");
        }
    }

    /// Tells every peer this node leaves, so they drop it at once.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        let me = self.config.node_id.clone();
        self.with_state(|s| {
            s.leaving = true;
            s.broadcast(None, PeerMessage::Leave { node: me });
        });
        // Let the writers put the frames on the wire.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// Largest peer frame, in both directions: twice the client request limit, as clients get.
    /// The TLS configuration peers are dialed with, when the fabric runs over `wss://`.
    fn peer_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.config.tls.clone()
    }

    fn peer_frame_limit(&self) -> usize {
        self.executor.limits().max_frame_bytes.saturating_mul(2)
    }

    /// Hands the state machine an input (`f`, at the current time), then carries out what it
    /// asked for: frames to queue, connections to retire, ticks to run now.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, outputs, wake, federation, records) = {
            let mut state = match self.state.lock() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            state.set_now(std::time::Instant::now());
            let result = f(&mut state);
            (
                result,
                state.take_outputs(),
                std::mem::take(&mut state.wake),
                std::mem::take(&mut state.federation_dirty),
                std::mem::take(&mut state.records_dirty),
            )
        };
        if !outputs.is_empty() {
            self.carry_out(outputs);
        }
        if wake {
            self.wake.notify_one();
        }
        if federation {
            self.federation_dirty.notify_one();
        }
        if records {
            self.records.send_modify(|n| *n = n.wrapping_add(1));
        }
        result
    }

    /// Queues the frames the state machine sent and retires the connections it retired. Never
    /// waits: a connection whose queue is full misses a frame (a peer that slow is about to be
    /// dropped; anti-entropy repairs what it missed).
    fn carry_out(&self, outputs: Vec<Output>) {
        let Ok(conns) = self.conns.lock() else {
            return;
        };
        for output in outputs {
            match output {
                Output::Send { link, message } => {
                    if let Some(conn) = conns.get(&link) {
                        if conn.tx.try_send(message).is_err() {
                            tracing::debug!(link, "peer queue full; a gossip message was skipped");
                        }
                    }
                }
                Output::Retire { link } => {
                    if let Some(conn) = conns.get(&link) {
                        conn.retire.notify_one();
                    }
                }
            }
        }
    }

    /// The queue of connection `link`, while it is open.
    fn sender(&self, link: u64) -> Option<mpsc::Sender<PeerMessage>> {
        self.conns.lock().ok()?.get(&link).map(|c| c.tx.clone())
    }

    /// Numbers a connection that passed the handshake and keeps its queue, before the state
    /// machine hears of it (so that what it queues for the connection at once is sent).
    fn open_conn(&self, tx: mpsc::Sender<PeerMessage>) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let retire = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(
                id,
                Conn {
                    tx,
                    retire: retire.clone(),
                },
            );
        }
        (id, retire)
    }

    /// Forgets connection `link` (closed).
    fn close_conn(&self, link: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&link);
        }
    }

    /// Follows changes of the records held (a counter that moves on each).
    pub fn watch_records(&self) -> watch::Receiver<u64> {
        self.records.subscribe()
    }

    /// Keeps the mesh: dials members and seeds, declares suspects dead, exchanges digests.
    async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_digest = Instant::now();
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
            if self.is_leaving() {
                return;
            }
            let now = Instant::now();
            let state::Maintenance { dials, probes, verify } = self.with_state(|s| s.plan_maintenance(&self.config));
            for node in verify {
                let me = self.clone();
                tokio::spawn(async move {
                    if !me.reach(&node, CHECK_DEADLINE).await {
                        tracing::debug!(peer = %node, "a member no link watches did not answer through the fabric");
                        me.with_state(|s| s.unreached(&node));
                    }
                });
            }
            for node in probes {
                let me = self.clone();
                tokio::spawn(async move {
                    let window = me.with_state(|s| s.probe_window());
                    if me.reach(&node, window).await {
                        me.with_state(|s| s.reached(&node));
                    }
                });
            }
            for url in dials {
                tokio::spawn(link::dial(self.clone(), url));
            }
            if now.duration_since(last_digest) >= self.config.timing.anti_entropy {
                last_digest = now;
                self.with_state(|s| {
                    let summary = s.summary();
                    s.broadcast(None, PeerMessage::Digest { summary });
                });
            }
        }
    }

    /// A call of the node itself (no tenant, no trace) for `fun` on `node`, starting here.
    fn node_call(&self, node: &str, fun: &str, args: Vec<Value>) -> CallRequest {
        CallRequest {
            id: 0,
            fun: fun.into(),
            args,
            kwargs: serde_json::Map::new(),
            locs: Vec::new(),
            function_id: None,
            version_constraint: None,
            deadline_ms: 0,
            depth: 0,
            target: node.to_string(),
            path: vec![self.config.node_id.clone()],
            hops: MAX_HOPS,
            tenant: None,
            trace: None,
            cluster: None,
            cluster_hops: 0,
            clusters: Vec::new(),
            reply_to: None,
        }
    }

    /// Keeps the routes between clusters: recomputes them whenever what they depend on
    /// changes (and every half second, for round trips), re-signs this node's record when its
    /// routes change, and sends each gateway peer its table when it changes.
    async fn federate(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = self.federation_dirty.notified() => {}
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if self.is_leaving() {
                return;
            }
            let sends = self.with_state(|s| {
                let (publish, sends) = s.federation_update();
                if let Some(record) = publish {
                    s.broadcast(None, record);
                }
                sends
            });
            for (link, table) in sends {
                let sent = self
                    .sender(link)
                    .is_some_and(|tx| tx.try_send(PeerMessage::Routes(table)).is_ok());
                if !sent {
                    self.with_state(|s| s.routes_unsent(link));
                }
            }
        }
    }

    /// Passes a rerouted reply on towards the node it is for.
    fn deliver(&self, mut delivery: wire::Delivery) {
        if delivery.to.node == self.config.node_id && delivery.to.cluster == self.config.cluster {
            self.complete(delivery.to.id, Arrival::Rerouted(delivery.to.token), delivery.outcome);
            return;
        }
        delivery.hops = delivery.hops.min(DELIVERY_HOPS);
        if delivery.hops == 0 {
            tracing::debug!(to = %delivery.to.node, "a rerouted reply ran out of hops");
            return;
        }
        delivery.hops -= 1;
        let route = self.with_state(|s| s.reply_route(&delivery.to.node, &delivery.to.cluster));
        match route {
            Some(route) => {
                tracing::debug!(to = %delivery.to.node, via = %route.via, "rerouting a reply");
                let sent = self
                    .sender(route.link)
                    .is_some_and(|tx| tx.try_send(PeerMessage::Deliver(delivery)).is_ok());
                if !sent {
                    tracing::debug!(via = %route.via, "the link for a rerouted reply is full or gone");
                }
            }
            None => tracing::debug!(to = %delivery.to.node, "no way back for a reply"),
        }
    }

    /// Calls `echo` on `node` through the fabric within `within`: whether it answered.
    async fn reach(&self, node: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let Some(route) = self.with_state(|s| s.next_hop(node, &[])) else {
            return false;
        };
        let request = self.node_call(node, "echo", vec![Value::Null]);
        let answered = matches!(
            self.exchange(&route, request, deadline).await,
            Exchange::Answered(Ok(_))
        );
        tracing::debug!(peer = %node, via = %route.via, answered, "checked a node through the fabric");
        answered
    }

    /// Follows the local command table and pushes this node's catalog whenever it changes.
    async fn publish_local_catalog(self: Arc<Self>) {
        let mut changes = self.executor.subscribe_table();
        let mut stop = self.stop.clone();
        loop {
            let entries: Vec<CatalogEntry> = self
                .executor
                .table()
                .commands()
                .into_iter()
                .map(|c| CatalogEntry {
                    command: c.name.clone(),
                    tags: c.tags.iter().cloned().collect(),
                    version: c.version.to_string(),
                    digest: c.plugin.digest().to_string(),
                    tenant: c.tenant.to_string(),
                    public: c.public,
                    plugin: c.plugin.name().to_string(),
                    size: c.size,
                    replica_of: c.replica_of.as_deref().map(str::to_string),
                })
                .collect();
            self.with_state(|s| {
                if let Some(message) = s.set_local_catalog(entries) {
                    s.broadcast(None, message);
                }
            });
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// Runs a call that came from a peer, on this node or (when it is for another node) on the
    /// next hop towards it; returns the reply, and where it goes if the link back is gone.
    async fn serve_call(self: Arc<Self>, request: CallRequest) -> (PeerMessage, Option<wire::ReturnAddress>) {
        let id = request.id;
        let reply_to = request.reply_to.clone();
        let outcome = if request.path.len() > usize::from(MAX_HOPS) + 1 || request.clusters.len() > MAX_CLUSTERS_PASSED
        {
            Err(WireError {
                kind: "invalid-args".into(),
                message: format!(
                    "{}: a call that passed more nodes or clusters than any route has",
                    request.fun
                ),
            })
        } else if request.target != self.config.node_id {
            self.forward(request).await
        } else if request.fun == modules::MODULE_FETCH {
            self.serve_module(&request.args).await
        } else if request.cluster.is_some() {
            self.toward_cluster(request).await
        } else {
            match self.misbehave.load(Ordering::Relaxed) {
                ANSWER_ERRORS => Err(WireError {
                    kind: "failed".into(),
                    message: format!(
                        "{}: node `{}` misbehaves (fault injection)",
                        request.fun, self.config.node_id
                    ),
                }),
                DROP_CALLS => std::future::pending().await,
                _ => self.run_here(request).await,
            }
        };
        (PeerMessage::Reply { id, outcome }, reply_to)
    }

    /// A call on its way to another cluster reached this node: runs it in this cluster when
    /// it is the one the call is for (or, for any cluster, when this one serves it), else
    /// passes it on towards it.
    async fn toward_cluster(&self, mut request: CallRequest) -> Result<Value, WireError> {
        let mine = &self.config.cluster;
        let cluster = request.cluster.clone().unwrap_or_default();
        let selector = self.selector_of(&request);
        let here = cluster == *mine
            || (cluster == federation::ANY_CLUSTER
                && (self.executor.table().find(&request.fun, &selector).is_ok()
                    || self.with_state(|s| s.served_in_cluster(&request.fun, &selector))));
        if here {
            let selector = Selector {
                target_cluster: Some(mine.clone()),
                ..selector
            };
            let context = self.context_of(&request);
            let span = tracing::info_span!("request", trace = %request.trace.as_deref().unwrap_or_default());
            return self
                .executor
                .dispatch(&request.fun, request.args, request.kwargs, &selector, context)
                .instrument(span)
                .await
                .map_err(to_wire);
        }
        let budget = Duration::from_millis(request.deadline_ms).min(self.executor.limits().call_deadline);
        let deadline = Instant::now() + budget;
        let fun = request.fun.clone();
        let want_cluster = (cluster != federation::ANY_CLUSTER).then_some(cluster.as_str());
        let step = self.step_towards(&fun, &selector, want_cluster, &request)?;
        self.take_step(&mut request, &step)?;
        match self.exchange(&step.route, request, deadline).await {
            Exchange::Answered(outcome) => outcome,
            // Never sent: the caller may try another way.
            Exchange::NotSent => Err(WireError {
                kind: UNREACHABLE.into(),
                message: format!("{fun}: the link to `{}` closed", step.route.via),
            }),
            other => Err(to_wire(other.into_error(&fun, &step.route, budget))),
        }
    }

    /// The next step of a call towards another cluster (`cluster`, or any that serves it).
    fn step_towards(
        &self,
        fun: &str,
        selector: &Selector,
        cluster: Option<&str>,
        request: &CallRequest,
    ) -> Result<federation::Step, WireError> {
        let mut visited = request.clusters.clone();
        visited.push(self.config.cluster.clone());
        let want = match cluster {
            Some(cluster) => federation::Want::Cluster(cluster),
            None => federation::Want::Serving { fun, selector },
        };
        let step = self.with_state(|s| s.toward(want, &visited, &request.path, request.cluster_hops));
        step.map_err(|miss| to_wire(self.missed(fun, selector, cluster, miss)))
    }

    /// Why no cluster could be found for a call.
    fn missed(&self, fun: &str, selector: &Selector, cluster: Option<&str>, miss: federation::Miss) -> CommandError {
        match miss {
            federation::Miss::BeyondBudget { cluster, crossings } => CommandError::NotFound(format!(
                "command `{fun}` is served in cluster `{cluster}`, {crossings} cluster hops away: beyond the hop budget of {} (--hop-budget)",
                self.config.hop_budget
            )),
            federation::Miss::Unknown => match cluster.or(selector.target_cluster.as_deref()) {
                Some(cluster) => CommandError::NotFound(format!(
                    "command `{fun}`: no route to cluster `{cluster}` serving it from cluster `{}`",
                    self.config.cluster
                )),
                None => not_found(fun, selector, false),
            },
        }
    }

    /// Moves `request` one step on: a crossing spends a cluster hop; every step a node hop.
    fn take_step(&self, request: &mut CallRequest, step: &federation::Step) -> Result<(), WireError> {
        let me = &self.config.node_id;
        if request.hops == 0 {
            return Err(WireError {
                kind: UNREACHABLE.into(),
                message: format!("{}: the hop budget of {MAX_HOPS} nodes is spent", request.fun),
            });
        }
        if step.crosses {
            if request.cluster_hops == 0 {
                return Err(WireError {
                    kind: "not-found".into(),
                    message: format!(
                        "{}: the hop budget of cluster crossings is spent at cluster `{}`",
                        request.fun, self.config.cluster
                    ),
                });
            }
            request.cluster_hops -= 1;
            request.clusters.push(self.config.cluster.clone());
            // The next cluster counts node hops (and looks for loops) afresh: the clusters the
            // call passed bound its crossings.
            request.path.clear();
            request.hops = MAX_HOPS;
        }
        if request.cluster.as_deref() == Some(federation::ANY_CLUSTER) || request.cluster.is_none() {
            request.cluster = Some(step.cluster.clone());
        }
        request.target = step.route.target.clone();
        if request.path.last() != Some(me) {
            request.path.push(me.clone());
        }
        request.hops -= 1;
        Ok(())
    }

    fn selector_of(&self, request: &CallRequest) -> Selector {
        Selector {
            locs: request.locs.clone(),
            function_id: request.function_id.clone(),
            version_constraint: request.version_constraint.clone(),
            tenant: self.executor.caller_tenant(request.tenant.as_deref().map(Arc::from)),
            target_cluster: None,
        }
    }

    fn context_of(&self, request: &CallRequest) -> CallContext {
        let limits = self.executor.limits();
        let budget = Duration::from_millis(request.deadline_ms).min(limits.call_deadline);
        CallContext {
            deadline: Instant::now() + budget,
            budget,
            depth: request.depth,
            memory_limit_bytes: limits.memory_limit_bytes,
            instance_reuse: limits.instance_reuse,
            grants: None,
            trace: request.trace.as_deref().map(Arc::from),
        }
    }

    async fn run_here(&self, request: CallRequest) -> Result<Value, WireError> {
        let context = self.context_of(&request);
        let selector = self.selector_of(&request);
        let span = tracing::info_span!("request", trace = %request.trace.as_deref().unwrap_or_default());
        self.executor
            .dispatch_local(&request.fun, request.args, request.kwargs, &selector, context)
            .instrument(span)
            .await
            .map_err(to_wire)
    }

    /// Passes a call on towards its target, and its reply back.
    async fn forward(&self, mut request: CallRequest) -> Result<Value, WireError> {
        let me = &self.config.node_id;
        let (fun, target) = (request.fun.clone(), request.target.clone());
        let unreachable = |why: String| WireError {
            kind: UNREACHABLE.into(),
            message: format!("{fun}: node `{target}` cannot be reached from `{me}`: {why}"),
        };
        if request.path.contains(me) {
            return Err(unreachable("the call came back to a node it passed (a loop)".into()));
        }
        if request.hops == 0 {
            return Err(unreachable(format!("the hop budget of {MAX_HOPS} is spent")));
        }
        let budget = Duration::from_millis(request.deadline_ms).min(self.executor.limits().call_deadline);
        let deadline = Instant::now() + budget;
        let Some(route) = self.with_state(|s| s.next_hop(&request.target, &request.path)) else {
            return Err(unreachable("no route".into()));
        };
        request.path.push(me.clone());
        request.hops -= 1;
        let avoid = request.path.clone();
        let (outcome, route) = self.exchange_routed(route, request, deadline, avoid).await;
        match outcome {
            Exchange::Answered(outcome) => outcome,
            Exchange::NotSent => Err(unreachable(format!("the link to `{}` closed", route.via))),
            other => Err(to_wire(other.into_error(&fun, &route, budget))),
        }
    }

    /// Sends a call on `route`; when it goes through another node and found no path from there
    /// (or its link closed before it was sent), tries other first links (never one in `avoid`),
    /// up to three in all. Records that show links lag a little (after a partition heals, say).
    /// Returns the outcome and the route it came by.
    async fn exchange_routed(
        &self,
        mut route: Route,
        request: CallRequest,
        deadline: Instant,
        mut avoid: Vec<String>,
    ) -> (Exchange, Route) {
        for _ in 1..ROUTE_ATTEMPTS {
            // A call sent straight to its target is not re-routed (and not copied).
            if route.via == route.target {
                break;
            }
            let outcome = self.exchange(&route, request.clone(), deadline).await;
            let no_path = match &outcome {
                Exchange::NotSent => true,
                Exchange::Answered(Err(error)) => error.kind == UNREACHABLE,
                _ => false,
            };
            if !no_path {
                return (outcome, route);
            }
            avoid.push(route.via.clone());
            match self.with_state(|s| s.next_hop(&route.target, &avoid)) {
                Some(next) => route = next,
                None => return (outcome, route),
            }
        }
        let outcome = self.exchange(&route, request, deadline).await;
        (outcome, route)
    }

    /// Sends a call on `route` and waits for its reply until `deadline`.
    async fn exchange(&self, route: &Route, mut request: CallRequest, deadline: Instant) -> Exchange {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        request.deadline_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
        // At the node the call starts from, a rerouted reply comes back under this id, with
        // a fresh token.
        let mine = |to: &wire::ReturnAddress| to.node == self.config.node_id && to.cluster == self.config.cluster;
        if let Some(to) = request.reply_to.as_mut().filter(|to| mine(to)) {
            to.id = id;
            to.token = u64::from_le_bytes(auth::nonce()[..8].try_into().unwrap_or_default());
        }
        let reroutable = request.reply_to.as_ref().filter(|to| mine(to)).map(|to| to.token);
        let (reply, answer) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                id,
                Pending {
                    link: route.link,
                    reroutable,
                    reply,
                },
            );
        }
        route.stats.inflight.fetch_add(1, Ordering::Relaxed);
        route.inflight.fetch_add(1, Ordering::Relaxed);
        let _guards = (
            Inflight(&route.stats.inflight),
            Inflight(&route.inflight),
            Forget {
                pending: &self.pending,
                id,
            },
        );
        let Some(tx) = self.sender(route.link) else {
            return Exchange::NotSent;
        };
        match tokio::time::timeout_at(deadline, tx.send(PeerMessage::Call(request))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Exchange::NotSent,
            Err(_) => return Exchange::Full,
        }
        match tokio::time::timeout_at(deadline + Duration::from_millis(50), answer).await {
            Ok(Ok(outcome)) => Exchange::Answered(outcome),
            Ok(Err(_)) => Exchange::Lost,
            Err(_) => Exchange::TimedOut,
        }
    }

    /// Completes pending call `id` with a reply that came on the link the call left on, or
    /// rerouted with the call's token; anything else is ignored (a peer cannot answer calls it
    /// was not sent).
    fn complete(&self, id: u64, arrival: Arrival, outcome: Result<Value, WireError>) {
        let pending = self.pending.lock().ok().and_then(|mut pending| {
            let expected = match (pending.get(&id)?, arrival) {
                (p, Arrival::Link(link)) => p.link == link,
                (p, Arrival::Rerouted(token)) => p.reroutable == Some(token),
            };
            if expected {
                pending.remove(&id)
            } else {
                None
            }
        });
        match pending {
            Some(pending) => {
                let _ = pending.reply.send(outcome);
            }
            None => tracing::debug!(id, "a reply for no call of this node (late, or not ours) was dropped"),
        }
    }

    /// Whether a call of this node waits for a reply on link `link`.
    fn awaits_reply_on(&self, link: u64) -> bool {
        self.pending
            .lock()
            .is_ok_and(|pending| pending.values().any(|p| p.link == link))
    }

    /// Fails every call waiting on link `link` (it went away).
    fn fail_pending(&self, link: u64) {
        let failed: Vec<Pending> = match self.pending.lock() {
            Ok(mut pending) => {
                let ids: Vec<u64> = pending
                    .iter()
                    .filter(|(_, p)| p.link == link && p.reroutable.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
            }
            Err(_) => Vec::new(),
        };
        drop(failed);
    }

    async fn call_remote(self: Arc<Self>, call: RemoteCall) -> Result<Value, CommandError> {
        let RemoteCall {
            fun,
            args,
            kwargs,
            selector,
            context,
        } = call;
        // A plugin this node replicates on demand is fetched (once, however many calls wait)
        // and the call runs here. A fetch slower than half the call's time left is not waited
        // for: the call goes to a node that serves the command (the fetch goes on).
        let fetch = self.modules.get().and_then(|m| m.on_demand(&fun, &selector));
        if let Some(fetch) = fetch {
            let wait = context.deadline.saturating_duration_since(Instant::now()) / 2;
            let fetched = tokio::time::timeout(wait, fetch).await.unwrap_or(false);
            if fetched && self.executor.table().find(&fun, &selector).is_ok() {
                return self
                    .executor
                    .dispatch_local(&fun, args, kwargs, &selector, context)
                    .await;
            }
        }
        let mine = &self.config.cluster;
        let elsewhere = selector.target_cluster.as_deref().is_some_and(|c| c != mine);
        let mut tried = Vec::new();
        loop {
            let route = if elsewhere {
                None
            } else {
                self.with_state(|s| s.choose(&fun, &selector, &tried))
            };
            let Some(route) = route else {
                if !tried.is_empty() {
                    return Err(not_found(&fun, &selector, true));
                }
                if selector.target_cluster.as_deref() == Some(mine) {
                    return Err(CommandError::NotFound(format!(
                        "command `{fun}` not found in cluster `{mine}`"
                    )));
                }
                return self.call_cluster(fun, args, kwargs, selector, context).await;
            };
            let request = CallRequest {
                id: 0,
                fun: fun.clone(),
                args: args.clone(),
                kwargs: kwargs.clone(),
                locs: selector.locs.clone(),
                function_id: selector.function_id.clone(),
                version_constraint: selector.version_constraint.clone(),
                deadline_ms: 0,
                depth: context.depth,
                target: route.target.clone(),
                path: vec![self.config.node_id.clone()],
                hops: MAX_HOPS,
                tenant: selector.tenant.as_deref().map(str::to_string),
                trace: context.trace.as_deref().map(str::to_string),
                cluster: None,
                cluster_hops: 0,
                clusters: Vec::new(),
                reply_to: None,
            };
            tracing::debug!(target_node = %route.target, %fun, "routing a call");
            let avoid = vec![self.config.node_id.clone()];
            let (outcome, route) = self.exchange_routed(route, request, context.deadline, avoid).await;
            // Through another node, a call that went unanswered, or an error, may be the relay's
            // doing: there only the target's answers and the relay's silence are scored.
            let direct = route.via == route.target;
            let record = |outcome| {
                let node = match outcome {
                    health::Outcome::Answered => Some(&route.target),
                    health::Outcome::Dropped if !direct => Some(&route.via),
                    _ if direct => Some(&route.target),
                    _ => None,
                };
                if let Some(node) = node {
                    self.with_state(|s| {
                        let now = s.now();
                        s.scores.record(node, outcome, now)
                    });
                }
            };
            match outcome {
                Exchange::Answered(Ok(value)) => {
                    record(health::Outcome::Answered);
                    return Ok(value);
                }
                // The replica no longer serves it (withdrawn meanwhile, or it never did), or no
                // path reached it: it did not run; try another.
                Exchange::Answered(Err(error)) if error.kind == "not-found" || error.kind == UNREACHABLE => {
                    if error.kind == "not-found" {
                        record(health::Outcome::Lied);
                    }
                    tried.push(route.target);
                }
                Exchange::Answered(Err(error)) => {
                    // Wrong arguments and denied calls are the caller's doing.
                    if error.kind != "invalid-args" && error.kind != "denied" {
                        record(health::Outcome::Failed);
                    }
                    return Err(from_wire(error));
                }
                // Never sent: it cannot have run; try another replica.
                Exchange::NotSent => tried.push(route.target),
                other => {
                    if matches!(other, Exchange::Lost | Exchange::TimedOut) {
                        record(health::Outcome::Dropped);
                    }
                    return Err(other.into_error(&fun, &route, context.budget));
                }
            }
        }
    }
}

impl Fabric {
    /// Sends a call no node of this cluster serves to the nearest cluster that does (or to
    /// the selector's `target_cluster`), through gateways.
    async fn call_cluster(
        &self,
        fun: String,
        args: Vec<Value>,
        kwargs: serde_json::Map<String, Value>,
        selector: Selector,
        context: CallContext,
    ) -> Result<Value, CommandError> {
        let me = self.config.node_id.clone();
        let request = CallRequest {
            id: 0,
            fun: fun.clone(),
            args,
            kwargs,
            locs: selector.locs.clone(),
            function_id: selector.function_id.clone(),
            version_constraint: selector.version_constraint.clone(),
            deadline_ms: 0,
            depth: context.depth,
            target: String::new(),
            path: vec![me.clone()],
            hops: MAX_HOPS,
            tenant: selector.tenant.as_deref().map(str::to_string),
            trace: context.trace.as_deref().map(str::to_string),
            cluster: Some(
                selector
                    .target_cluster
                    .clone()
                    .unwrap_or_else(|| federation::ANY_CLUSTER.to_string()),
            ),
            cluster_hops: self.config.hop_budget,
            clusters: Vec::new(),
            reply_to: Some(wire::ReturnAddress {
                node: me.clone(),
                cluster: self.config.cluster.clone(),
                id: 0,
                token: 0,
            }),
        };
        // Gateways whose route did not reach (a link closed, a path went away) are avoided.
        let mut avoided = request.clone();
        for _ in 0..ROUTE_ATTEMPTS {
            let step = self.step_towards(&fun, &selector, None, &avoided).map_err(from_wire)?;
            let mut attempt = request.clone();
            self.take_step(&mut attempt, &step).map_err(from_wire)?;
            tracing::debug!(via = %step.route.via, cluster = %step.cluster, %fun, "routing a call to another cluster");
            let outcome = self.exchange(&step.route, attempt, context.deadline).await;
            // The first node on the way (a gateway, or the member whose gateway it is) answers
            // for the route it advertised.
            let record = |outcome| {
                self.with_state(|s| {
                    let now = s.now();
                    s.scores.record(&step.route.via, outcome, now)
                })
            };
            match outcome {
                Exchange::Answered(Ok(value)) => {
                    record(health::Outcome::Answered);
                    return Ok(value);
                }
                Exchange::Answered(Err(error)) if error.kind == UNREACHABLE => record(health::Outcome::Lied),
                Exchange::Answered(Err(error)) => return Err(from_wire(error)),
                Exchange::NotSent => {}
                other => {
                    if matches!(other, Exchange::Lost | Exchange::TimedOut) {
                        record(health::Outcome::Dropped);
                    }
                    return Err(other.into_error(&fun, &step.route, context.budget));
                }
            }
            avoided.path.push(step.route.via);
        }
        Err(CommandError::Failed(format!(
            "{fun}: {ROUTE_ATTEMPTS} routes to other clusters failed"
        )))
    }
}

/// How long a check of a member no link watches may take (a busy fabric answers slowly; a
/// failed check only makes the member a suspect, which is then probed).
const CHECK_DEADLINE: Duration = Duration::from_secs(1);

/// First links a call for a node not linked directly is tried on.
const ROUTE_ATTEMPTS: usize = 3;

/// The error kind of a call that found no path to its target (it did not run).
const UNREACHABLE: &str = "unreachable";

/// How a reply reached this node.
#[derive(Clone, Copy)]
pub(crate) enum Arrival {
    /// On this link.
    Link(u64),
    /// Rerouted, with this token.
    Rerouted(u64),
}

/// Clusters a call may have passed (more than any hop budget allows).
const MAX_CLUSTERS_PASSED: usize = u8::MAX as usize;

/// Hops a rerouted reply may travel.
const DELIVERY_HOPS: u8 = MAX_HOPS.saturating_mul(2);

/// How a call sent on a link ended.
enum Exchange {
    Answered(Result<Value, WireError>),
    /// The link closed before the call was sent: it cannot have run.
    NotSent,
    /// The link stayed full until the deadline.
    Full,
    /// The link closed after the call was sent: it may have run.
    Lost,
    TimedOut,
}

impl Exchange {
    fn into_error(self, fun: &str, route: &Route, budget: Duration) -> CommandError {
        let (target, via) = (&route.target, &route.via);
        let through = if target == via {
            String::new()
        } else {
            format!(" (through `{via}`)")
        };
        match self {
            Exchange::Answered(Ok(_)) => CommandError::Failed(format!("{fun}: an answer was taken for an error")),
            Exchange::Answered(Err(error)) => from_wire(error),
            Exchange::NotSent => CommandError::Failed(format!("{fun}: the link to node `{via}` closed")),
            Exchange::Full => CommandError::Timeout(format!(
                "{fun}: the link to node `{via}` stayed full until the deadline of {} ms",
                budget.as_millis()
            )),
            Exchange::Lost => CommandError::Failed(format!(
                "{fun}: node `{target}`{through} went away before answering; the command may have run"
            )),
            Exchange::TimedOut => CommandError::Timeout(format!(
                "{fun}: node `{target}`{through} did not answer within the deadline of {} ms",
                budget.as_millis()
            )),
        }
    }
}

fn to_wire(error: CommandError) -> WireError {
    WireError {
        kind: error.kind().to_string(),
        message: error.to_string(),
    }
}

struct Inflight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drops a call's entry among the pending calls when its exchange ends, however it ends: a
/// reply, a timeout, or a caller that went away (its future dropped mid-call). A retired link
/// waits for its pending calls before closing, so a leaked entry would hold it open.
struct Forget<'a> {
    pending: &'a Mutex<HashMap<u64, Pending>>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&self.id);
        }
    }
}

fn not_found(fun: &str, selector: &Selector, tried: bool) -> CommandError {
    if tried {
        return CommandError::NotFound(format!("command `{fun}`: every node serving it went away"));
    }
    if selector.locs.is_empty() {
        CommandError::NotFound(format!("command `{fun}` not found on this node or any peer"))
    } else {
        CommandError::NotFound(format!(
            "command `{fun}` not found with resources {:?} on this node or any peer",
            selector.locs
        ))
    }
}

fn from_wire(error: WireError) -> CommandError {
    match error.kind.as_str() {
        "not-found" => CommandError::NotFound(error.message),
        "invalid-args" => CommandError::InvalidArgs(error.message),
        "denied" => CommandError::Denied(error.message),
        "timeout" => CommandError::Timeout(error.message),
        _ => CommandError::Failed(error.message),
    }
}

impl Remote for Fabric {
    fn call(&self, call: RemoteCall) -> RemoteFuture {
        let me = self.me.upgrade();
        Box::pin(async move {
            match me {
                Some(me) => me.call_remote(call).await,
                None => Err(CommandError::Failed("the node is shutting down".into())),
            }
        })
    }

    fn peers(&self, states: Option<&[String]>) -> Value {
        self.with_state(|s| s.peers_report(&self.config, states))
    }

    fn cluster(&self) -> &str {
        &self.config.cluster
    }

    fn catalog(&self, selector: &Selector) -> Value {
        self.with_state(|s| s.catalog_report(selector))
    }

    fn fault(&self, action: &str, nodes: Vec<String>) -> Result<Value, CommandError> {
        if !self.config.fault_injection {
            return Err(CommandError::Denied(
                "fault injection is off on this node (--fault-injection)".into(),
            ));
        }
        if action == "tamper" || action == "untamper" {
            self.tamper.store(action == "tamper", Ordering::Relaxed);
            return Ok(Value::Bool(action == "tamper"));
        }
        if let Some(how) = action.strip_prefix("misbehave:") {
            let mode = match how {
                "error" => ANSWER_ERRORS,
                "drop" => DROP_CALLS,
                "off" => BEHAVE,
                other => {
                    return Err(CommandError::InvalidArgs(format!(
                        "weft.fault: misbehave:{other}: error, drop or off"
                    )))
                }
            };
            self.misbehave.store(mode, Ordering::Relaxed);
            return Ok(Value::from(how));
        }
        if let Some(command) = action.strip_prefix("advertise:") {
            self.with_state(|s| {
                s.fake_entries.push(CatalogEntry {
                    command: command.to_string(),
                    tags: Vec::new(),
                    version: "1.0.0".into(),
                    digest: String::new(),
                    tenant: crate::tenancy::DEFAULT_TENANT.to_string(),
                    public: false,
                    plugin: "fake".into(),
                    size: 0,
                    replica_of: None,
                });
                let record = s.republish();
                s.broadcast(None, record);
            });
            return Ok(Value::from(command));
        }
        if let Some(ms) = action.strip_prefix("delay:") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| CommandError::InvalidArgs(format!("weft.fault: `{action}`: the delay is whole ms")))?;
            self.with_state(|s| s.set_delay(&nodes, ms.saturating_mul(1000)));
            return Ok(Value::from(ms));
        }
        self.with_state(|s| match action {
            "cut" => {
                s.blocked.extend(nodes);
                Ok(())
            }
            "restore" => {
                for node in &nodes {
                    s.blocked.remove(node);
                }
                Ok(())
            }
            other => Err(CommandError::InvalidArgs(format!(
                "weft.fault: unknown action `{other}` (cut, restore, delay:MS, misbehave:error|drop|off, advertise:COMMAND, tamper, untamper)"
            ))),
        })?;
        Ok(self.with_state(|s| Value::from(s.blocked.iter().cloned().collect::<Vec<_>>())))
    }
}

impl PeerHandler for Fabric {
    fn accept(
        &self,
        ws: WebSocketStream<crate::net::tls::Stream>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let me = self.me.upgrade();
        Box::pin(async move {
            if let Some(me) = me {
                link::accept(me, ws).await;
            }
        })
    }
}
