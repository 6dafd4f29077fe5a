//! A deterministic simulator of the fabric: the node's own state machine ([`State`], the code
//! every `weft node` runs) driven over a simulated network and clock, in one thread, from one
//! seeded random generator. Nothing here opens a socket or reads a clock: the same seed gives
//! the same run, event for event.
//!
//! What is simulated, and how closely it follows the real driver (`link.rs`, `mod.rs`):
//! - **Links** are connections with a one-way delay (with jitter) per pair of nodes, in order
//!   per direction (TCP). A dial is the handshake's three legs: `Hello` (the listener checks
//!   `accepts_link`, so a node with all the links it keeps refuses), `Welcome` (the dialer
//!   registers the link), `Proof` (the listener registers it).
//! - **Failure detection** of a link: pings are not sent as messages; a link hears its peer
//!   while the peer runs and the network carries the peer's frames, and closes after
//!   `link_timeout` of silence, as the real link does. A crashed node's connections close at
//!   once (its kernel resets them); a stopped node's go silent.
//! - **Faults**: partitions (two-way or one-way) with heals, pauses (SIGSTOP/SIGCONT), crashes
//!   and restarts under the same id and key, slow nodes (a longer delay on every frame they
//!   send), and lost gossip frames (what a full link queue drops).
//! - **Calls through the fabric** (the probes that confirm a suspect, the checks of members no
//!   link watches) are answered when the target runs and the links open now connect the caller
//!   to it.
//!
//! [`scenario`] draws scenarios from a seed and checks the properties the fabric promises.

pub mod scenario;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::identity::NodeKey;
use super::state::{Output, State, Status, Verifier};
use super::wire::{CatalogEntry, PeerMessage};
use super::{FabricConfig, Timing};

/// How often each node runs its maintenance tick (as `Fabric::maintain`).
const TICK: Duration = Duration::from_millis(100);

/// How long a dial waits for a handshake (as `link::HANDSHAKE_TIMEOUT`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// When an unanswered TCP SYN is sent again (Linux: 1 s, then 3 s, past the handshake timeout).
const SYN_RETRY: Duration = Duration::from_secs(1);

/// A deterministic random generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Spread small seeds over the whole state (splitmix64), never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// One side of a connection.
struct Conn {
    owner: usize,
    peer: usize,
    /// The peer's side (0 until the peer registered it).
    other: u64,
    open: bool,
    /// When the last frame sent on it arrives (frames arrive in order).
    last_arrival: Duration,
    /// When the owner last heard the peer (its frames or its pings).
    heard: Duration,
    /// Retired: closes once a ping interval passed.
    retired: bool,
}

/// What happens at a moment of virtual time.
// A frame is moved into its event once and out once: boxing it would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Event {
    Start(usize),
    Tick(usize),
    /// The maintenance runs now, between ticks.
    Wake(usize),
    /// A dial's connection attempt (again, when its SYN went unanswered).
    Connect {
        from: usize,
        to: usize,
        url: String,
        since: Duration,
    },
    /// A dialer's `Hello` reaches the listener.
    Hello {
        from: usize,
        to: usize,
        url: String,
    },
    /// The listener's answer reaches the dialer: `Some(conn)` (the listener's side) when it
    /// welcomed the dial.
    Welcome {
        from: usize,
        to: usize,
        url: String,
        accepted: bool,
    },
    /// The dialer's `Proof` reaches the listener, which registers connection `conn`.
    Proof {
        to: usize,
        from: usize,
        conn: u64,
        dialer_conn: u64,
    },
    /// A dial failed at the dialer (`unreachable`: not a refusal for lack of room).
    DialFailed {
        node: usize,
        url: String,
        unreachable: bool,
    },
    /// A frame arrives on connection `conn` (the receiver's side).
    Deliver {
        conn: u64,
        message: PeerMessage,
    },
    /// The peer closed connection `conn` (the receiver's side).
    Closed {
        conn: u64,
    },
    /// A retired connection (`conn`, its owner's side) is quiet and closes.
    CloseRetired {
        conn: u64,
    },
    /// A call through the fabric from `node` to `target` ended.
    Reached {
        node: usize,
        target: String,
        answered: bool,
        probe: bool,
    },
    /// A scripted fault.
    Fault(Fault),
}

/// An event at its time; among events at the same time, the one scheduled first comes first.
#[derive(Debug)]
struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A fault a scenario scripts.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Splits the nodes into groups (`group[i]`); `one_way`: only frames from a lower group to
    /// a higher one are lost.
    Partition {
        groups: Vec<u32>,
        one_way: bool,
    },
    Heal,
    Pause(usize),
    Resume(usize),
    Crash(usize),
    Restart(usize),
    /// Every frame the node sends takes this much longer.
    Slow(usize, Duration),
    /// The node starts serving a command.
    Serve(usize, String),
}

/// A simulated node.
pub struct Node {
    pub id: String,
    pub url: String,
    key: NodeKey,
    config: FabricConfig,
    /// `None` before the node starts and while it is crashed.
    pub state: Option<State>,
    pub paused: bool,
    /// Events that came while the node was stopped, handled when it continues.
    held: Vec<Event>,
    next_digest: Duration,
    /// Extra delay on every frame it sends.
    slow: Duration,
    /// Counted work, for the cost figures.
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Commands it serves.
    entries: Vec<CatalogEntry>,
    /// Ever stopped, crashed or cut off from others (its deaths are not false).
    pub impaired: bool,
    /// Its side of its connections.
    conns: BTreeSet<u64>,
    /// A `Wake` is scheduled.
    wake_pending: bool,
}

/// How the simulated network behaves.
#[derive(Debug, Clone)]
pub struct Network {
    /// One-way delay between two nodes, chosen per pair in this range.
    pub delay: (Duration, Duration),
    /// Extra delay per frame, up to this.
    pub jitter: Duration,
    /// Gossip frames lost (a full queue skips them).
    pub loss: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            delay: (Duration::from_micros(50), Duration::from_micros(300)),
            jitter: Duration::from_micros(100),
            loss: 0.0,
        }
    }
}

impl Network {
    /// Machines far apart: 1–40 ms one way, 5 ms of jitter.
    pub fn wide() -> Self {
        Network {
            delay: (Duration::from_millis(1), Duration::from_millis(40)),
            jitter: Duration::from_millis(5),
            loss: 0.0,
        }
    }
}

/// The simulated fabric.
pub struct World {
    rng: Rng,
    base: Instant,
    pub now: Duration,
    seq: u64,
    /// Events by time, then by the order they were scheduled in.
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub nodes: Vec<Node>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    urls: BTreeMap<String, usize>,
    pub max_mesh: usize,
    network: Network,
    /// A pair's delay, by (lower index, higher index).
    delays: BTreeMap<(usize, usize), Duration>,
    /// The partition's group of each node (all 0 when whole), and whether it is one-way.
    groups: Vec<u32>,
    one_way: bool,
    /// Frames held by a cut (per receiving connection), delivered in order at the heal.
    stalled: Vec<(u64, PeerMessage)>,
    timing: Timing,
    trace: Option<Vec<String>>,
    /// Events handled.
    pub steps: u64,
    /// Whether the bytes of frames are counted (each frame is encoded to count them).
    pub count_bytes: bool,
    verified: Arc<Mutex<BTreeSet<Vec<u8>>>>,
}

impl World {
    /// A world of `n` nodes named `n000`…, not started, each seeding the nodes `seeds[i]`.
    pub fn new(seed: u64, n: usize, seeds: &[Vec<usize>], max_mesh: usize, network: Network) -> Self {
        let mut rng = Rng::new(seed);
        let timing = Timing::default();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let id = format!("n{i:03}");
                let url = format!("ws://10.0.{}.{}:6000", i / 250, i % 250 + 1);
                let mut key_seed = [0u8; 32];
                for chunk in key_seed.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                let key = NodeKey::from_seed(key_seed);
                let config = FabricConfig {
                    node_id: id.clone(),
                    key: key.clone(),
                    cluster: "sim".into(),
                    secret: Vec::new(),
                    advertise_url: url.clone(),
                    seeds: Vec::new(),
                    max_mesh,
                    timing: timing.clone(),
                    fault_injection: false,
                    tls: None,
                    bridge: Default::default(),
                    gateway_secret: None,
                    tier: 0,
                    region: None,
                    hop_budget: super::wire::DEFAULT_HOP_BUDGET,
                };
                Node {
                    id,
                    url,
                    key,
                    config,
                    state: None,
                    paused: false,
                    held: Vec::new(),
                    next_digest: Duration::ZERO,
                    slow: Duration::ZERO,
                    frames_in: 0,
                    frames_out: 0,
                    bytes_out: 0,
                    entries: Vec::new(),
                    impaired: false,
                    conns: BTreeSet::new(),
                    wake_pending: false,
                }
            })
            .collect();
        let urls = nodes.iter().enumerate().map(|(i, n)| (n.url.clone(), i)).collect();
        let mut world = World {
            rng,
            // Virtual time counts from here; only durations since it are ever used, so runs
            // do not depend on it.
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            conns: BTreeMap::new(),
            next_conn: 1,
            urls,
            max_mesh,
            network,
            delays: BTreeMap::new(),
            groups: vec![0; n],
            one_way: false,
            stalled: Vec::new(),
            timing,
            trace: None,
            steps: 0,
            count_bytes: false,
            verified: Arc::new(Mutex::new(BTreeSet::new())),
        };
        for (i, list) in seeds.iter().enumerate().take(n) {
            let urls: Vec<String> = list
                .iter()
                .filter_map(|s| world.nodes.get(*s))
                .map(|n| n.url.clone())
                .collect();
            if let Some(node) = world.nodes.get_mut(i) {
                node.config.seeds = urls;
            }
        }
        world
    }

    /// Records what every node does (`replay`).
    pub fn enable_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// The trace so far.
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let at = self.now.as_micros();
            trace.push(format!("{:>10}.{:03} ms {}", at / 1000, at % 1000, line()));
        }
    }

    /// Schedules `event` at `at` (virtual time).
    fn at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Schedules a scripted fault.
    pub fn schedule(&mut self, at: Duration, fault: Fault) {
        self.at(at, Event::Fault(fault));
    }

    /// Schedules node `i`'s start.
    pub fn start_at(&mut self, at: Duration, i: usize) {
        self.at(at, Event::Start(i));
    }

    /// Runs every event up to `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.queue.peek().is_some_and(|Reverse(next)| next.at <= until) {
            let Some(Reverse(Scheduled { at, event, .. })) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.steps += 1;
            self.handle(event);
        }
        self.now = self.now.max(until);
    }

    /// The one-way delay of a frame from `a` to `b`.
    fn delay(&mut self, a: usize, b: usize) -> Duration {
        let pair = (a.min(b), a.max(b));
        let (lo, hi) = self.network.delay;
        let base = match self.delays.get(&pair) {
            Some(d) => *d,
            None => {
                let d = Duration::from_nanos(self.rng.between(lo.as_nanos() as u64, hi.as_nanos() as u64));
                self.delays.insert(pair, d);
                d
            }
        };
        let jitter = Duration::from_nanos(self.rng.below(self.network.jitter.as_nanos() as u64 + 1));
        base + jitter + self.nodes.get(a).map_or(Duration::ZERO, |n| n.slow)
    }

    /// Whether the network carries frames from `a` to `b` now.
    fn carries(&self, a: usize, b: usize) -> bool {
        let (ga, gb) = (self.groups[a], self.groups[b]);
        ga == gb || (self.one_way && ga > gb)
    }

    /// Whether node `i` runs (started, not crashed, not stopped).
    pub fn runs(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.state.is_some() && !n.paused)
    }

    /// Whether node `i` is up (started and not crashed; it may be stopped).
    pub fn up(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.state.is_some())
    }

    fn handle(&mut self, event: Event) {
        // A stopped node handles nothing until it continues.
        let target = match &event {
            Event::Tick(i) | Event::Wake(i) | Event::DialFailed { node: i, .. } | Event::Reached { node: i, .. } => {
                Some(*i)
            }
            Event::Connect { from, .. } => Some(*from),
            Event::Hello { to, .. } | Event::Proof { to, .. } => Some(*to),
            Event::Welcome { from, .. } => Some(*from),
            Event::Deliver { conn, .. } | Event::Closed { conn } | Event::CloseRetired { conn } => {
                self.conns.get(conn).map(|c| c.owner)
            }
            Event::Start(_) | Event::Fault(_) => None,
        };
        if let Some(i) = target {
            if self.nodes[i].paused {
                self.nodes[i].held.push(event);
                return;
            }
            if self.nodes[i].state.is_none() && !matches!(event, Event::Tick(_)) {
                return;
            }
        }
        match event {
            Event::Start(i) => self.start(i),
            Event::Tick(i) => self.tick(i),
            Event::Wake(i) => {
                self.nodes[i].wake_pending = false;
                self.maintain(i);
            }
            Event::Connect { from, to, url, since } => self.connect(from, to, url, since),
            Event::Hello { from, to, url } => self.hello(from, to, url),
            Event::Welcome {
                from,
                to,
                url,
                accepted,
            } => self.welcome(from, to, url, accepted),
            Event::Proof {
                to,
                from,
                conn,
                dialer_conn,
            } => self.proof(to, from, conn, dialer_conn),
            Event::DialFailed { node, url, unreachable } => {
                self.note(|| format!("{} dial {url} failed (unreachable: {unreachable})", node));
                self.input(node, |s| s.dial_failed(&url, unreachable));
            }
            Event::Deliver { conn, message } => self.deliver(conn, message),
            Event::Closed { conn } => self.close(conn, false),
            Event::CloseRetired { conn } => self.close(conn, true),
            Event::Reached {
                node,
                target,
                answered,
                probe,
            } => {
                self.note(|| format!("n{node:03} reached {target}: {answered}"));
                if probe && answered {
                    self.input(node, |s| s.reached(&target));
                } else if !probe && !answered {
                    self.input(node, |s| s.unreached(&target));
                }
            }
            Event::Fault(fault) => self.fault(fault),
        }
    }

    /// Hands node `i`'s state machine an input now, then carries out what it asked for.
    fn input<R>(&mut self, i: usize, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let now = self.base + self.now;
        let state = self.nodes[i].state.as_mut()?;
        state.set_now(now);
        let result = f(state);
        let outputs = state.take_outputs();
        let wake = std::mem::take(&mut state.wake);
        state.federation_dirty = false;
        state.records_dirty = false;
        // A new member to dial: the maintenance runs now, as `Fabric::maintain` wakes.
        if wake && !self.nodes[i].wake_pending {
            self.nodes[i].wake_pending = true;
            let now = self.now;
            self.at(now, Event::Wake(i));
        }
        for output in outputs {
            match output {
                Output::Send { link, message } => self.send(link, message),
                Output::Retire { link } => self.retire(link),
            }
        }
        Some(result)
    }

    fn start(&mut self, i: usize) {
        let wall_ms = 1_700_000_000_000 + self.now.as_millis() as u64;
        let seed = self.rng.next_u64();
        let node = &mut self.nodes[i];
        let mut state = State::new(&node.config, self.base + self.now, wall_ms, seed);
        state.verifier = Verifier::sharing(self.verified.clone());
        node.state = Some(state);
        node.paused = false;
        node.wake_pending = false;
        node.next_digest = self.now + self.timing.anti_entropy;
        let entries = node.entries.clone();
        self.note(|| format!("n{i:03} starts"));
        self.input(i, |s| {
            if let Some(record) = s.set_local_catalog(entries) {
                s.broadcast(None, record);
            }
        });
        // The first maintenance runs as the node starts (a tokio interval's first tick).
        let now = self.now;
        self.at(now, Event::Tick(i));
    }

    fn tick(&mut self, i: usize) {
        if self.nodes[i].state.is_none() {
            // Crashed: its ticks stop (a restart starts new ones).
            return;
        }
        self.at(self.now + TICK, Event::Tick(i));
        self.check_links(i);
        self.maintain(i);
    }

    /// The maintenance of `Fabric::maintain`: dials, probes, checks, digests.
    fn maintain(&mut self, i: usize) {
        let config = self.nodes[i].config.clone();
        let Some(plan) = self.input(i, |s| s.plan_maintenance(&config)) else {
            return;
        };
        for url in plan.dials {
            self.dial(i, url);
        }
        for target in plan.probes {
            self.reach(i, target, true);
        }
        for target in plan.verify {
            self.reach(i, target, false);
        }
        if self.now >= self.nodes[i].next_digest {
            self.nodes[i].next_digest = self.now + self.timing.anti_entropy;
            self.input(i, |s| {
                let summary = s.summary();
                s.broadcast(None, PeerMessage::Digest { summary });
            });
        }
    }

    /// Closes node `i`'s links that have not heard their peer within the link timeout. A peer
    /// is heard while it runs and the network carries its frames (its pings).
    fn check_links(&mut self, i: usize) {
        let mut silent = Vec::new();
        let ids: Vec<u64> = self.nodes[i].conns.iter().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get(&id).filter(|c| c.open) else {
                continue;
            };
            let peer = conn.peer;
            if self.runs(peer) && self.carries(peer, i) {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.heard = self.now;
                }
            } else if self.now.saturating_sub(conn.heard) > self.timing.link_timeout {
                silent.push(id);
            }
        }
        for id in silent {
            self.note(|| format!("n{i:03} link {id} silent; closing it"));
            self.close(id, true);
        }
    }

    fn dial(&mut self, from: usize, url: String) {
        let Some(to) = self.urls.get(&url).copied() else {
            let at = self.now + HANDSHAKE_TIMEOUT;
            self.at(
                at,
                Event::DialFailed {
                    node: from,
                    url,
                    unreachable: true,
                },
            );
            return;
        };
        self.note(|| format!("n{from:03} dials n{to:03}"));
        let since = self.now;
        self.connect(from, to, url, since);
    }

    /// A connection attempt of a dial that started at `since`. Across a cut the TCP handshake
    /// gets no answer: its SYN is sent again a second later, and the dial gives up at the
    /// handshake timeout.
    fn connect(&mut self, from: usize, to: usize, url: String, since: Duration) {
        let d = self.delay(from, to);
        if !self.carries(from, to) || !self.carries(to, from) {
            let retry = self.now + SYN_RETRY;
            if retry < since + HANDSHAKE_TIMEOUT {
                self.at(retry, Event::Connect { from, to, url, since });
            } else {
                self.at(
                    since + HANDSHAKE_TIMEOUT,
                    Event::DialFailed {
                        node: from,
                        url,
                        unreachable: true,
                    },
                );
            }
        } else if !self.up(to) {
            // Nothing listens there: refused at once.
            let at = self.now + d * 2;
            self.at(
                at,
                Event::DialFailed {
                    node: from,
                    url,
                    unreachable: true,
                },
            );
        } else {
            let at = self.now + d;
            self.at(at, Event::Hello { from, to, url });
        }
    }

    fn hello(&mut self, from: usize, to: usize, url: String) {
        // A node with all the links it keeps welcomes the dial too: the connection retires once
        // both sides exchanged records (as `link::listener_handshake` and `State::add_link`).
        let from_id = self.nodes[from].id.clone();
        let accepted = self.input(to, |s| from_id != s.me).unwrap_or(false);
        self.note(|| format!("n{to:03} hears hello of n{from:03}: welcome {accepted}"));
        let d = self.delay(to, from);
        if !self.carries(to, from) {
            let at = self.now + HANDSHAKE_TIMEOUT;
            self.at(
                at,
                Event::DialFailed {
                    node: from,
                    url,
                    unreachable: true,
                },
            );
            return;
        }
        let at = self.now + d;
        self.at(
            at,
            Event::Welcome {
                from,
                to,
                url,
                accepted,
            },
        );
    }

    fn welcome(&mut self, from: usize, to: usize, url: String, accepted: bool) {
        if !accepted {
            self.input(from, |s| s.dial_failed(&url, false));
            return;
        }
        let dialer_conn = self.open_conn(from, to);
        let (peer_id, peer_url, peer_key) = {
            let n = &self.nodes[to];
            (n.id.clone(), n.url.clone(), n.key.public())
        };
        let me = self.nodes[from].id.clone();
        let max_mesh = self.max_mesh;
        // The Proof leaves before anything the dialer sends on the link.
        let d = self.delay(from, to);
        let proof_at = self.now + d;
        if let Some(conn) = self.conns.get_mut(&dialer_conn) {
            conn.last_arrival = proof_at;
        }
        let listener_conn = self.open_conn(to, from);
        if let Some(conn) = self.conns.get_mut(&dialer_conn) {
            conn.other = listener_conn;
        }
        if let Some(conn) = self.conns.get_mut(&listener_conn) {
            conn.other = dialer_conn;
            conn.open = false;
        }
        self.at(
            proof_at,
            Event::Proof {
                to,
                from,
                conn: listener_conn,
                dialer_conn,
            },
        );
        let added = self
            .input(from, |s| {
                let added = s.add_link(dialer_conn, &peer_id, &peer_url, peer_key, &me, max_mesh);
                s.dial_done(&url, added.as_ref().is_some_and(|a| a.current));
                added.map(|a| a.current)
            })
            .flatten();
        self.note(|| format!("n{from:03} linked to n{to:03} on {dialer_conn}: {added:?}"));
        match added {
            None => self.close(dialer_conn, true),
            Some(false) => self.retire(dialer_conn),
            Some(true) => {}
        }
    }

    fn proof(&mut self, to: usize, from: usize, conn: u64, dialer_conn: u64) {
        if !self.conns.get(&dialer_conn).is_some_and(|c| c.open) {
            // The dialer gave the connection up before it got here.
            self.drop_conn(conn);
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.open = true;
            c.heard = self.now;
        }
        let (peer_id, peer_url, peer_key) = {
            let n = &self.nodes[from];
            (n.id.clone(), n.url.clone(), n.key.public())
        };
        let max_mesh = self.max_mesh;
        let added = self
            .input(to, |s| {
                s.add_link(conn, &peer_id, &peer_url, peer_key, &peer_id, max_mesh)
                    .map(|a| a.current)
            })
            .flatten();
        self.note(|| format!("n{to:03} linked to n{from:03} on {conn}: {added:?}"));
        match added {
            None => self.close(conn, true),
            Some(false) => self.retire(conn),
            Some(true) => {}
        }
        // Frames the dialer sent before this arrive now, in order.
    }

    /// Forgets connection `id`.
    fn drop_conn(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        self.nodes[conn.owner].conns.remove(&id);
        Some(conn)
    }

    fn open_conn(&mut self, owner: usize, peer: usize) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.nodes[owner].conns.insert(id);
        self.conns.insert(
            id,
            Conn {
                owner,
                peer,
                other: 0,
                open: true,
                last_arrival: self.now,
                heard: self.now,
                retired: false,
            },
        );
        id
    }

    /// Sends `message` on connection `link` (the sender's side).
    fn send(&mut self, link: u64, message: PeerMessage) {
        let Some(conn) = self.conns.get(&link) else { return };
        if !conn.open {
            return;
        }
        let (from, to, other, last) = (conn.owner, conn.peer, conn.other, conn.last_arrival);
        let gossip = !matches!(message, PeerMessage::Unlink);
        if gossip && self.rng.chance(self.network.loss) {
            return;
        }
        let bytes = if self.count_bytes {
            super::wire::encode(&message).map_or(0, |f| f.len() as u64)
        } else {
            0
        };
        let node = &mut self.nodes[from];
        node.frames_out += 1;
        node.bytes_out += bytes;
        let d = self.delay(from, to);
        let arrival = (self.now + d).max(last);
        if let Some(conn) = self.conns.get_mut(&link) {
            conn.last_arrival = arrival;
        }
        self.at(arrival, Event::Deliver { conn: other, message });
    }

    fn deliver(&mut self, conn: u64, message: PeerMessage) {
        let Some(c) = self.conns.get(&conn) else { return };
        let (owner, peer) = (c.owner, c.peer);
        if !self.carries(peer, owner) {
            self.stalled.push((conn, message));
            return;
        }
        if !c.open {
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.heard = self.now;
        }
        self.nodes[owner].frames_in += 1;
        let peer_id = self.nodes[peer].id.clone();
        if self.trace.is_some() {
            let kind = message_kind(&message);
            self.note(|| format!("n{owner:03} <- {peer_id}: {kind}"));
        }
        match message {
            PeerMessage::Unlink => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if !c.retired {
                        c.retired = true;
                        let at = self.now + self.timing.ping;
                        self.at(at, Event::CloseRetired { conn });
                    }
                }
                self.input(owner, |s| s.remove_link(&peer_id, conn, true));
            }
            message => {
                let flow = self.input(owner, |s| s.on_gossip(&peer_id, conn, message));
                if flow == Some(super::gossip::Flow::Left) {
                    self.close(conn, true);
                    self.input(owner, |s| s.node_left(&peer_id));
                }
            }
        }
    }

    /// The owner retires connection `link`: tells the peer, and closes it a ping interval later.
    fn retire(&mut self, link: u64) {
        let Some(conn) = self.conns.get_mut(&link) else { return };
        if conn.retired || !conn.open {
            return;
        }
        conn.retired = true;
        self.send(link, PeerMessage::Unlink);
        let at = self.now + self.timing.ping;
        self.at(at, Event::CloseRetired { conn: link });
    }

    /// Closes connection `link` on its owner's side; `tell`: the peer learns of it (a close
    /// the network carries), else the peer's side was closed already.
    fn close(&mut self, link: u64, tell: bool) {
        let Some(conn) = self.conns.get_mut(&link) else { return };
        if !conn.open {
            self.drop_conn(link);
            return;
        }
        conn.open = false;
        let (owner, peer, other) = (conn.owner, conn.peer, conn.other);
        self.drop_conn(link);
        let peer_id = self.nodes[peer].id.clone();
        self.input(owner, |s| s.remove_link(&peer_id, link, false));
        if tell && other != 0 && self.carries(owner, peer) {
            let d = self.delay(owner, peer);
            self.at(self.now + d, Event::Closed { conn: other });
        }
    }

    /// A call through the fabric from `node` to `target`: answered when the target runs and
    /// open links connect the two now.
    fn reach(&mut self, node: usize, target: String, probe: bool) {
        let answered = self
            .index_of(&target)
            .is_some_and(|t| self.runs(t) && self.connected(node, t));
        let window = Duration::from_millis(if probe { 300 } else { 1000 });
        let at = self.now + if answered { Duration::from_millis(1) } else { window };
        self.at(
            at,
            Event::Reached {
                node,
                target,
                answered,
                probe,
            },
        );
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        id.strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .filter(|i| *i < self.nodes.len())
    }

    /// Whether open links that carry frames both ways connect `a` to `b`.
    fn connected(&self, a: usize, b: usize) -> bool {
        let mut seen = vec![false; self.nodes.len()];
        let mut queue = VecDeque::from([a]);
        seen[a] = true;
        while let Some(x) = queue.pop_front() {
            if x == b {
                return true;
            }
            let peers = self.nodes[x]
                .conns
                .iter()
                .filter_map(|id| self.conns.get(id))
                .filter(|c| c.open)
                .map(|c| c.peer);
            for y in peers {
                if !seen[y] && self.runs(y) && self.carries(x, y) && self.carries(y, x) {
                    seen[y] = true;
                    queue.push_back(y);
                }
            }
        }
        false
    }

    fn fault(&mut self, fault: Fault) {
        self.note(|| format!("fault {fault:?}"));
        match fault {
            Fault::Partition { groups, one_way } => {
                if groups.len() == self.nodes.len() {
                    self.groups = groups;
                    self.one_way = one_way;
                }
                // A death declared across the cut is news that spreads through both sides at
                // the heal (and is refuted): with a partition, the property is reconvergence.
                for n in &mut self.nodes {
                    n.impaired = true;
                }
            }
            Fault::Heal => {
                self.groups = vec![0; self.nodes.len()];
                self.one_way = false;
                for (conn, message) in std::mem::take(&mut self.stalled) {
                    let at = self.now;
                    self.at(at, Event::Deliver { conn, message });
                }
            }
            Fault::Pause(i) => {
                if let Some(n) = self.nodes.get_mut(i) {
                    n.paused = true;
                    n.impaired = true;
                }
            }
            Fault::Resume(i) => {
                let Some(n) = self.nodes.get_mut(i) else { return };
                if !n.paused {
                    return;
                }
                n.paused = false;
                let held = std::mem::take(&mut n.held);
                // Its own links do not count its stop as the peers' silence.
                let now = self.now;
                let mine: Vec<u64> = n.conns.iter().copied().collect();
                for id in mine {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.heard = now;
                    }
                }
                for event in held {
                    self.at(now, event);
                }
            }
            Fault::Crash(i) => {
                if self.nodes.get(i).is_none_or(|n| n.state.is_none()) {
                    return;
                }
                self.nodes[i].state = None;
                self.nodes[i].paused = false;
                self.nodes[i].held.clear();
                self.nodes[i].impaired = true;
                let mine: Vec<u64> = self.nodes[i].conns.iter().copied().collect();
                for id in mine {
                    let Some(conn) = self.drop_conn(id) else { continue };
                    if conn.open && conn.other != 0 && self.carries(i, conn.peer) {
                        let d = self.delay(i, conn.peer);
                        self.at(self.now + d, Event::Closed { conn: conn.other });
                    }
                }
            }
            Fault::Restart(i) => {
                if self.nodes.get(i).is_some_and(|n| n.state.is_none()) {
                    self.start(i);
                }
            }
            Fault::Slow(i, by) => {
                if let Some(n) = self.nodes.get_mut(i) {
                    n.slow = by;
                }
            }
            Fault::Serve(i, command) => {
                let entry = CatalogEntry {
                    command,
                    tags: vec!["sim".into()],
                    version: "1.0.0".into(),
                    digest: String::new(),
                    tenant: crate::tenancy::DEFAULT_TENANT.to_string(),
                    public: true,
                    plugin: "sim".into(),
                    size: 0,
                    replica_of: None,
                };
                self.nodes[i].entries.push(entry);
                let entries = self.nodes[i].entries.clone();
                self.input(i, |s| {
                    if let Some(record) = s.set_local_catalog(entries) {
                        s.broadcast(None, record);
                    }
                });
            }
        }
    }

    /// The nodes that are up, by index.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.up(*i)).collect()
    }

    /// The live members node `i` does not hold alive with their current record.
    pub fn missing(&self, i: usize) -> Vec<usize> {
        let Some(state) = &self.nodes[i].state else {
            return Vec::new();
        };
        self.live()
            .into_iter()
            .filter(|j| *j != i)
            .filter(|j| {
                let node = &self.nodes[*j];
                let current = node.state.as_ref().and_then(|s| s.record_version(&node.id));
                state.status_of(&node.id) != Some(Status::Alive) || state.record_version(&node.id) != current
            })
            .collect()
    }

    /// Whether every live node holds every other alive (what `weft peers` shows; the records
    /// may lag behind a re-signing).
    pub fn all_alive(&self) -> bool {
        let live = self.live();
        // Counts first: a node that holds fewer alive than there are cannot have them all.
        let others = live.len().saturating_sub(1);
        if live
            .iter()
            .any(|i| self.nodes[*i].state.as_ref().is_some_and(|s| s.alive_count() < others))
        {
            return false;
        }
        live.iter().all(|i| {
            let Some(state) = &self.nodes[*i].state else {
                return true;
            };
            live.iter()
                .all(|j| i == j || state.status_of(&self.nodes[*j].id) == Some(Status::Alive))
        })
    }

    /// Whether every live node holds every other alive with its current record.
    pub fn converged(&self) -> bool {
        self.all_alive() && self.live().into_iter().all(|i| self.missing(i).is_empty())
    }

    /// The live nodes whose record of node `owner` does not list `command` yet.
    pub fn lacking(&self, owner: usize, command: &str) -> usize {
        let id = &self.nodes[owner].id;
        self.live()
            .into_iter()
            .filter(|i| !self.nodes[*i].state.as_ref().is_some_and(|s| s.serves(id, command)))
            .count()
    }

    /// Links kept, as each live node's list of linked peers (by index).
    pub fn links(&self) -> Vec<(usize, Vec<usize>)> {
        self.live()
            .into_iter()
            .map(|i| {
                let peers = self.nodes[i]
                    .state
                    .as_ref()
                    .map(|s| s.linked().filter_map(|p| self.index_of(p)).collect())
                    .unwrap_or_default();
                (i, peers)
            })
            .collect()
    }

    /// The most links node `i` may keep.
    pub fn link_cap(&self, i: usize) -> usize {
        self.nodes[i].state.as_ref().map_or(0, |s| s.link_cap(self.max_mesh)) + 2
    }

    /// Pairs (holder, member) where a live node holds a member dead that never stopped,
    /// crashed or was cut off from it.
    pub fn false_deaths(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for i in self.live() {
            let Some(state) = &self.nodes[i].state else { continue };
            for j in state.held_dead().filter_map(|id| self.index_of(id)) {
                if self.up(j) && !self.nodes[j].impaired {
                    out.push((i, j));
                }
            }
        }
        out
    }

    /// Signature checks made by every node so far.
    pub fn signature_checks(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.state.as_ref())
            .map(|s| s.verifier.checks)
            .sum()
    }

    /// Frames sent by every node so far, and their bytes.
    pub fn frames(&self) -> (u64, u64) {
        self.nodes
            .iter()
            .fold((0, 0), |(f, b), n| (f + n.frames_out, b + n.bytes_out))
    }
}

fn message_kind(message: &PeerMessage) -> String {
    match message {
        PeerMessage::Record(r) => format!("record {}@{}", r.body.node, r.body.version),
        PeerMessage::Digest { .. } => "digest".into(),
        PeerMessage::Versions { alive, dead, opening } => {
            format!(
                "versions ({} alive, {} dead, opening {opening})",
                alive.len(),
                dead.len()
            )
        }
        PeerMessage::Want { nodes } => format!("want {}", nodes.len()),
        PeerMessage::Have { records } => format!("have {}", records.len()),
        PeerMessage::Dead(d) => format!("dead {}", d.node),
        PeerMessage::Leave { node } => format!("leave {node}"),
        PeerMessage::Probe { node } => format!("probe {node}"),
        PeerMessage::ProbeAck { node, alive } => format!("probe-ack {node} {alive}"),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}
