//! What a node knows of the fabric: members, their signed records (catalog, links), its own
//! links, and how it picks the replica a call goes to and the link it goes through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use std::time::Instant;

use super::federation::Gateway;
use super::health::Scores;
use super::identity::NodeKey;
use super::modules::Offer;
use super::route;
use super::wire::{CatalogEntry, Death, NodeRecord, PeerMessage, RecordBody, RouteAd};
use super::FabricConfig;
use crate::plugins::Selector;

/// Live figures of one link, shared with the calls that use it.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Smoothed round-trip time, µs (0 until measured).
    pub rtt_us: AtomicU64,
    /// The least round trip of the last few samples, µs (0 until measured): the path's delay
    /// without the moment's queueing, which is what routing weighs (the calls in flight stand
    /// for load). One slow sample, as a node starts, does not make a link look far for seconds.
    pub path_rtt_us: AtomicU64,
    /// Calls sent on the link and not answered yet.
    pub inflight: AtomicUsize,
    /// Bytes of peer frames written to and read from the link.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Added to every frame sent on the link, µs (fault injection).
    pub delay_us: AtomicU64,
}

/// A connection this node keeps as its link to a peer. Messages for the peer go out on it as
/// `Output::Send` with its id; the driver owns the connection itself.
pub struct LinkHandle {
    pub id: u64,
    pub stats: Arc<LinkStats>,
    /// Which side dialed: when two nodes dial each other at once, both keep the connection
    /// dialed by the node with the smaller id.
    pub dialer: String,
}

/// A connection that passed the handshake, as registered.
pub struct Admitted {
    pub id: u64,
    pub stats: Arc<LinkStats>,
    /// Whether it is the node's link to the peer. A connection that lost a duplicate contest,
    /// or came past the bound of links, starts retired: the peer may already have sent calls
    /// on it.
    pub current: bool,
}

impl Admitted {
    /// What the node keeps of its link to the peer, when the connection is the current one.
    pub fn handle(&self, dialer: &str) -> LinkHandle {
        LinkHandle {
            id: self.id,
            stats: self.stats.clone(),
            dialer: dialer.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Alive,
    /// Its link went away; not yet confirmed dead.
    Suspect,
    Dead,
    Left,
}

impl Status {
    /// The state's name in reports (one of `builtins::PEER_STATES`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Dead => "dead",
            Status::Left => "left",
        }
    }
}

pub struct Member {
    pub url: String,
    pub incarnation: u64,
    /// The newest version of its record this node has taken or been told of at its death.
    pub heard: u64,
    pub status: Status,
    pub since: Instant,
    /// When the other peers were asked whether they still hear this suspect.
    pub probed: Option<Instant>,
    /// Its position on the ring of the partial view.
    ring: u64,
}

/// What the state machine asks its driver to do. The machine owns no connection: it names
/// them by the ids the driver gave them.
// A message is moved into its output once and out once: boxing it would cost an allocation per
// frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Output {
    /// Queue `message` on connection `link`.
    Send { link: u64, message: PeerMessage },
    /// Connection `link` is no longer this node's link to its peer: nothing new is sent on it,
    /// the calls crossing it (both ways) are answered, and it closes once quiet.
    Retire { link: u64 },
}

/// What a maintenance tick decided besides the messages it queued (deaths, probes, records,
/// tree announcements): the actions only the driver can take.
#[derive(Default)]
pub struct Maintenance {
    /// URLs to dial.
    pub dials: Vec<String>,
    /// Suspects the other peers were asked about; reached through the fabric meanwhile.
    pub probes: Vec<String>,
    /// Members no link watches, to check with a call through the fabric.
    pub verify: Vec<String>,
}

/// The round-trip time assumed for a link before its first pong when no link is measured (1 ms).
const UNMEASURED_RTT_US: u64 = 1000;

/// How long peers have to vouch for a suspect (or the suspect to answer a call sent through
/// them) before it is declared dead.
const PROBE_WINDOW: Duration = Duration::from_millis(300);

pub(super) struct Backoff {
    failures: u32,
    next: Instant,
}

/// How long a dead or departed member is remembered (and redialed) before it is forgotten.
const FORGET_DEAD: Duration = Duration::from_secs(600);

/// Longest pause between dials of an unreachable member: bounds how long a healed partition
/// waits to reconnect, at the cost of one refused connection per second per dead member.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A node that left is not dialed again before this.
const REDIAL_AFTER_LEAVE: Duration = Duration::from_secs(2);

/// Links a node keeps when the fabric is larger than `max_mesh` (a partial view): its two
/// neighbours on a ring of all members (which keeps the overlay connected) and random others
/// (which keep paths short).
const PARTIAL_VIEW: usize = 8;

/// How often one member that no link of this node watches is checked through the fabric.
const CHECK_UNLINKED: Duration = Duration::from_secs(2);

/// How long after a member came back (a partition healing) members no link watches are not
/// checked through the fabric: links and the records that show them change for a while, and
/// checks along stale paths would fail and raise false suspicions.
const SETTLE: Duration = Duration::from_secs(3);

/// Dials in a row that cannot reach an unlinked member before it is suspected.
const UNREACHABLE_DIALS: u32 = 2;

/// The hop count assumed for a node no known path reaches (so that known paths win).
const MAX_HOPS_GUESS: u32 = 4;

/// A change of links is announced (in a re-signed record) at most every `LINKS_ANNOUNCE_PER_MEMBER`
/// times the live members, within these bounds. Every member checks the signature of every
/// record, so the fabric-wide cost of announcing grows with the square of its size; this keeps it
/// near 50 announcements a second, and the neighbour lists used to route through other nodes
/// at most 2 s old.
const LINKS_ANNOUNCE_PER_MEMBER: Duration = Duration::from_millis(20);
const LINKS_ANNOUNCE_MIN: Duration = Duration::from_millis(300);
const LINKS_ANNOUNCE_MAX: Duration = Duration::from_secs(2);

/// The route to a node: the node that runs the call and the link it leaves on.
pub struct Route {
    pub target: String,
    pub via: String,
    pub link: u64,
    pub stats: Arc<LinkStats>,
    /// Calls in flight to the target node.
    pub inflight: Arc<AtomicUsize>,
}

/// What to do with a rumour of a node's death.
pub enum Rumour {
    /// Believed: relay it.
    Believed,
    /// This node is linked to the subject: pass it on to the subject, which refutes it.
    Subject,
    /// This node is linked to the subject and holds a record of it signed after the death: the
    /// answer to send to the claimant.
    Answer(Arc<NodeRecord>),
    Ignored,
}

/// What a `Versions` message showed.
#[derive(Default)]
pub struct Comparison {
    /// Records the peer holds newer.
    pub want: Vec<String>,
    /// This node's record, when the peer lacks it or holds it older.
    pub own: Option<Arc<NodeRecord>>,
    /// Records of nodes the peer holds dead, signed after the last one it heard of before the
    /// death: news that they live (the other side of a healed partition), which the peer
    /// would not ask for.
    pub revive: Vec<Arc<NodeRecord>>,
    /// The peer holds this node dead: refute it.
    pub refute: Option<u64>,
    /// Deaths the peer holds, to pass to their subjects (linked to this node) to refute.
    pub rumours: Vec<(Death, Rumour)>,
}

/// How a node answers a claim that it died or left.
pub enum Rebuttal {
    /// The claim is about an older incarnation: refuted already.
    Old,
    /// Its current record was signed after the last version the claimant heard of: sent to the
    /// claimant, it brings the node back wherever it spreads, with no new signature.
    Record(Arc<NodeRecord>),
    /// Only a new incarnation, announced to every member, answers it.
    Refute,
}

/// Whether a record was taken.
pub enum Accepted {
    /// `served_changed`: the record changes what its node serves or routes to (compared with the
    /// one held before), not only its links.
    New {
        served_changed: bool,
    },
    /// Already held (or older, or of a node held dead at that incarnation).
    Stale,
    Refused(&'static str),
}

pub struct State {
    pub(super) me: String,
    pub(super) cluster: String,
    pub(super) tier: u8,
    /// Cluster boundaries a call may cross (and, plus one, how far routes are advertised).
    pub(super) hop_budget: u8,
    my_url: String,
    key: NodeKey,
    pub incarnation: u64,
    local_version: u64,
    pub(super) local_entries: Vec<CatalogEntry>,
    /// The other clusters this node reaches through its gateway links (in its record).
    pub(super) local_routes: Vec<RouteAd>,
    /// Links to nodes of other clusters.
    pub(super) gateways: BTreeMap<String, Gateway>,
    /// How well each node served this node's calls.
    pub scores: Scores,
    /// Commands this node advertises without serving them (fault injection).
    pub fake_entries: Vec<CatalogEntry>,
    /// The time of the input being handled (set by the driver before each input).
    now: Instant,
    /// What the driver is to do, in order (drained after each input).
    out: Vec<Output>,
    /// The maintenance tick should run now (a new member to dial).
    pub(super) wake: bool,
    /// Something the routes between clusters depend on changed.
    pub(super) federation_dirty: bool,
    /// A record was taken or dropped.
    pub(super) records_dirty: bool,
    /// The node announced its departure: it refutes nothing and dials nobody.
    pub(super) leaving: bool,
    /// Seeds that turned out to be gateways (redialed whenever unlinked).
    pub(super) gateway_seeds: BTreeSet<String>,
    /// Delay added to frames sent to these nodes, µs (fault injection).
    pub(super) delays: BTreeMap<String, u64>,
    own: Option<Arc<NodeRecord>>,
    announced: bool,
    /// Since when links have changed without being announced (this node's record re-signed).
    links_changed: Option<Instant>,
    links_announced: Instant,
    /// When the next unlinked member is checked.
    next_check: Instant,
    /// No unlinked member is checked before this (the fabric is settling after a heal).
    settle_until: Instant,
    /// Seeds this node has been linked to.
    pub(super) seeds_joined: BTreeSet<String>,
    /// A member held dead to dial past the bound of the partial view (a partition healing).
    heal_dial: Option<String>,
    /// Nodes this node refuses to talk to (fault injection in tests).
    pub blocked: BTreeSet<String>,
    pub(super) links: BTreeMap<String, LinkHandle>,
    /// Which links records are pushed on (the others announce them).
    pub(super) tree: super::tree::Tree,
    members: BTreeMap<String, Member>,
    pub(super) records: BTreeMap<String, Arc<NodeRecord>>,
    /// Each node's public key: proven in a handshake, or taken from its first record.
    keys: BTreeMap<String, [u8; 32]>,
    /// Calls in flight to each node (through any link).
    pub(super) inflight: BTreeMap<String, Arc<AtomicUsize>>,
    /// The peer each node's record came through last (a route to it until its links are known).
    learned_from: BTreeMap<String, String>,
    /// First hops to every reachable node; recomputed after any change of records or links.
    routes: Option<BTreeMap<String, (String, u32)>>,
    /// URLs being dialed now.
    pub dialing: BTreeSet<String>,
    pub(super) backoff: BTreeMap<String, Backoff>,
    pub(super) seeds: Vec<String>,
    rng: u64,
    /// Checks the signatures of records, and counts the checks.
    pub(super) verifier: Verifier,
    /// `summary()`, until the records held change.
    summary: Option<u64>,
}

/// Checks record signatures and counts every check. A simulator of honest nodes may give its
/// nodes one shared set of signatures already found good, so that 10,000 simulated nodes do not
/// each spend the time of a check on every record, while each still counts the check it makes.
#[derive(Default)]
pub struct Verifier {
    pub checks: u64,
    shared: Option<Arc<std::sync::Mutex<BTreeSet<Vec<u8>>>>>,
}

impl Verifier {
    /// A verifier that trusts the signatures in `shared` and adds the ones it checks.
    pub fn sharing(shared: Arc<std::sync::Mutex<BTreeSet<Vec<u8>>>>) -> Self {
        Verifier {
            checks: 0,
            shared: Some(shared),
        }
    }

    fn verify(&mut self, record: &NodeRecord) -> bool {
        self.checks += 1;
        let Some(shared) = &self.shared else {
            return record.verify();
        };
        let Ok(mut known) = shared.lock() else {
            return record.verify();
        };
        if known.contains(&record.signature) {
            return true;
        }
        let good = record.verify();
        if good {
            known.insert(record.signature.clone());
        }
        good
    }
}

impl State {
    /// A node's state as it starts at `now`; `started_ms`: the wall-clock time of the start in
    /// ms (a restarted node outranks rumours about its previous life, and its record versions
    /// outrank the ones peers still hold from that life: both start at the start time); `seed`:
    /// the seed of its random choices.
    pub fn new(config: &FabricConfig, now: Instant, started_ms: u64, seed: u64) -> Self {
        let started = started_ms.max(1);
        State {
            me: config.node_id.clone(),
            cluster: config.cluster.clone(),
            tier: config.tier,
            hop_budget: config.hop_budget,
            local_routes: Vec::new(),
            gateways: BTreeMap::new(),
            now,
            out: Vec::new(),
            wake: false,
            federation_dirty: false,
            records_dirty: false,
            leaving: false,
            scores: Scores::default(),
            fake_entries: Vec::new(),
            gateway_seeds: BTreeSet::new(),
            delays: BTreeMap::new(),
            my_url: config.advertise_url.clone(),
            key: config.key.clone(),
            incarnation: started,
            local_version: started,
            local_entries: Vec::new(),
            own: None,
            announced: false,
            links_changed: None,
            links_announced: now,
            next_check: now,
            settle_until: now,
            seeds_joined: BTreeSet::new(),
            heal_dial: None,
            links: BTreeMap::new(),
            tree: Default::default(),
            members: BTreeMap::new(),
            records: BTreeMap::new(),
            keys: BTreeMap::new(),
            learned_from: BTreeMap::new(),
            inflight: BTreeMap::new(),
            routes: None,
            dialing: BTreeSet::new(),
            backoff: BTreeMap::new(),
            seeds: config.seeds.clone(),
            blocked: BTreeSet::new(),
            // xorshift needs a non-zero state.
            rng: seed | 1,
            verifier: Verifier::default(),
            summary: None,
        }
    }

    /// The state of member `node`, as this node holds it.
    pub fn status_of(&self, node: &str) -> Option<Status> {
        self.members.get(node).map(|m| m.status)
    }

    /// The version of `node`'s record held (this node's own included).
    pub fn record_version(&self, node: &str) -> Option<u64> {
        if node == self.me {
            return Some(self.local_version);
        }
        self.records.get(node).map(|r| r.body.version)
    }

    /// Whether the record held of `node` lists `command`.
    pub fn serves(&self, node: &str, command: &str) -> bool {
        let entries = if node == self.me {
            &self.local_entries
        } else {
            match self.records.get(node) {
                Some(record) => &record.body.entries,
                None => return false,
            }
        };
        entries.iter().any(|e| e.command == command)
    }

    /// The members held dead or gone.
    pub fn held_dead(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| matches!(m.status, Status::Dead | Status::Left))
            .map(|(node, _)| node.as_str())
    }

    /// How many members are held alive.
    pub fn alive_count(&self) -> usize {
        self.members.values().filter(|m| m.status == Status::Alive).count()
    }

    /// The peers this node keeps links to.
    pub fn linked(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    /// The members held in each state, and the records held.
    pub fn census(&self) -> (usize, usize) {
        (self.members.len(), self.records.len())
    }

    /// Sets the time of the input about to be handled.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// The time of the input being handled.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// What the driver is to do after the inputs handled since the last call, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Queues `message` on the link to `node`, if there is one.
    pub(super) fn send(&mut self, node: &str, message: PeerMessage) {
        if let Some(link) = self.links.get(node) {
            self.out.push(Output::Send { link: link.id, message });
        }
    }

    /// Queues `message` on connection `link` (the one a message came in on).
    pub(super) fn send_on(&mut self, link: u64, message: PeerMessage) {
        self.out.push(Output::Send { link, message });
    }

    /// Connection `link` is retired (see `Output::Retire`).
    pub(super) fn retire(&mut self, link: u64) {
        self.out.push(Output::Retire { link });
    }

    /// Queues `message` on every link but `except`'s.
    pub(super) fn broadcast(&mut self, except: Option<&str>, message: PeerMessage) {
        for (node, link) in &self.links {
            if except != Some(node.as_str()) {
                self.out.push(Output::Send {
                    link: link.id,
                    message: message.clone(),
                });
            }
        }
    }

    /// Replaces this node's own catalog; returns the record announcing it when it changed.
    pub fn set_local_catalog(&mut self, entries: Vec<CatalogEntry>) -> Option<PeerMessage> {
        if entries == self.local_entries && self.announced {
            return None;
        }
        self.announced = true;
        self.local_entries = entries;
        self.federation_changed();
        Some(self.republish())
    }

    /// Signs this node's record anew (a higher version) and returns it.
    pub fn republish(&mut self) -> PeerMessage {
        self.local_version += 1;
        self.summary = None;
        self.own = None;
        self.links_changed = None;
        self.links_announced = self.now;
        self.own_record_message()
    }

    /// Raises the incarnation above a rumour of this node's death and republishes.
    pub fn refute(&mut self, rumoured: u64) -> PeerMessage {
        self.incarnation = self.incarnation.max(rumoured).saturating_add(1);
        self.republish()
    }

    /// This node's current record.
    pub fn own_record_message(&mut self) -> PeerMessage {
        if self.own.is_none() {
            let mut neighbours: Vec<String> = self.links.keys().cloned().collect();
            neighbours.sort();
            let body = RecordBody {
                node: self.me.clone(),
                key: self.key.public(),
                url: self.my_url.clone(),
                incarnation: self.incarnation,
                version: self.local_version,
                entries: self.local_entries.iter().chain(&self.fake_entries).cloned().collect(),
                neighbours,
                routes: self.local_routes.clone(),
            };
            match NodeRecord::signed(body, &self.key) {
                Ok(record) => self.own = Some(Arc::new(record)),
                Err(e) => tracing::warn!(error = %e, "cannot sign this node's record"),
            }
        }
        match &self.own {
            Some(record) => PeerMessage::Record(record.clone()),
            None => PeerMessage::Versions {
                alive: Vec::new(),
                dead: Vec::new(),
                opening: false,
            },
        }
    }

    /// Registers a new authenticated connection `id` (numbered by the driver) as a link to
    /// `node` (`dialer`: the node that dialed it; `key`: the key it proved). `None` when the
    /// node is cut off; retired from the start when the node is already linked by the
    /// connection both sides keep, or this node has all the links it may have. A connection that
    /// becomes the link gets this node's record and the versions of every record held first.
    pub fn add_link(
        &mut self,
        id: u64,
        node: &str,
        url: &str,
        key: [u8; 32],
        dialer: &str,
        max_mesh: usize,
    ) -> Option<Admitted> {
        if self.blocked.contains(node) {
            return None;
        }
        let preferred_dialer = if self.me.as_str() < node {
            self.me.clone()
        } else {
            node.to_string()
        };
        // The round trip measured on a connection this one replaces: the same peer over the same
        // path (a new link counts as slow until its first pong, which would mislead routing).
        let mut measured = (0, 0);
        let current = match self.links.get(node) {
            Some(existing) if existing.dialer == preferred_dialer || dialer != preferred_dialer => false,
            // The new connection is the one both sides keep: the other retires.
            Some(existing) => {
                measured = (
                    existing.stats.rtt_us.load(Ordering::Relaxed),
                    existing.stats.path_rtt_us.load(Ordering::Relaxed),
                );
                self.retire_link(node);
                true
            }
            None => self.accepts_link(node, max_mesh),
        };
        // A seed reached is joined, whether or not either side keeps the link: the records
        // exchanged as it opens tell this node of the fabric. (Redialed until a link stuck, a
        // seed with no room was dialed every second for ever.)
        if self.seeds.iter().any(|s| s == url) {
            self.seeds_joined.insert(url.to_string());
        }
        let admitted = self.admit(id, node, current);
        admitted.stats.rtt_us.store(measured.0, Ordering::Relaxed);
        admitted.stats.path_rtt_us.store(measured.1, Ordering::Relaxed);
        if !current {
            if !self.links.contains_key(node) {
                // Past the bound of links, not a duplicate: before the connection retires, both
                // sides exchange records and versions as on a link, so a node that joins through
                // a node with no room still learns the membership (and dials nodes with room),
                // and this node learns of it. Refused outright, a joiner learned nothing and the
                // nodes that joined through it formed an island.
                self.send_opening(id);
            }
            return Some(admitted);
        }
        self.links.insert(node.to_string(), admitted.handle(dialer));
        self.tree.linked(node);
        self.backoff.remove(url);
        // The key the node proved is its key: a record held under another one is dropped.
        if self.keys.insert(node.to_string(), key).is_some_and(|old| old != key) {
            self.records.remove(node);
            self.records_changed();
        }
        let member = self.members.entry(node.to_string()).or_insert_with(|| Member {
            url: url.to_string(),
            incarnation: 0,
            heard: 0,
            status: Status::Alive,
            since: self.now,
            probed: None,
            ring: ring_position(node),
        });
        member.url = url.to_string();
        member.status = Status::Alive;
        member.since = self.now;
        member.probed = None;
        self.topology_changed();
        self.send_opening(id);
        Some(admitted)
    }

    /// What a peer needs first on connection `id`: this node's record, and the versions of
    /// every record held (the peer asks for what it lacks and sends what this node lacks).
    fn send_opening(&mut self, id: u64) {
        let record = self.own_record_message();
        self.send_on(id, record);
        let versions = self.versions_message(true);
        self.send_on(id, versions);
    }

    /// Connection `id` to `node`, with the delay set for it (fault injection).
    pub(super) fn admit(&mut self, id: u64, node: &str, current: bool) -> Admitted {
        let stats = Arc::new(LinkStats::default());
        if let Some(delay) = self.delays.get(node) {
            stats.delay_us.store(*delay, Ordering::Relaxed);
        }
        Admitted { id, stats, current }
    }

    /// Members held alive or suspect.
    fn live_members(&self) -> usize {
        self.members.values().filter(|m| Self::is_live(m.status)).count()
    }

    /// Whether the fabric is larger than a full mesh (this node keeps a partial view).
    fn partial(&self, max_mesh: usize) -> bool {
        self.live_members() >= max_mesh
    }

    /// Whether a link to `node` may be added: below the bound, or a little above it for a ring
    /// neighbour (which keeps the overlay connected), a node held dead (a partition healing) or
    /// a node this node holds no record of (joining: its first link). Surplus links are retired
    /// at the next tick, never a ring neighbour's.
    pub fn accepts_link(&self, node: &str, max_mesh: usize) -> bool {
        let cap = self.link_cap(max_mesh);
        let healing = self
            .members
            .get(node)
            .is_some_and(|m| matches!(m.status, Status::Dead | Status::Left));
        let joining = !self.records.contains_key(node);
        self.links.contains_key(node)
            || self.links.len() < cap
            || (self.links.len() < cap + 2 && (healing || joining || self.ring_neighbours().iter().any(|n| n == node)))
    }

    /// Links this node accepts at most.
    pub(super) fn link_cap(&self, max_mesh: usize) -> usize {
        if self.partial(max_mesh) {
            2 * max_mesh.min(PARTIAL_VIEW)
        } else {
            2 * max_mesh
        }
    }

    /// Stops using the link to `node` (without suspecting the node) and tells its task to
    /// retire it.
    fn retire_link(&mut self, node: &str) {
        if let Some(link) = self.links.remove(node) {
            self.retire(link.id);
            self.topology_changed();
        }
    }

    /// Forgets link `id` of `node`; its node becomes a suspect unless it left, or the link was
    /// dropped on purpose (`quietly`).
    pub fn remove_link(&mut self, node: &str, id: u64, quietly: bool) {
        if self.links.get(node).is_some_and(|l| l.id == id) {
            self.links.remove(node);
            let mut dropped_by_peer = None;
            if let Some(member) = self.members.get_mut(node) {
                if member.status == Status::Alive && !quietly {
                    member.status = Status::Suspect;
                    member.since = self.now;
                    member.probed = None;
                }
                if quietly {
                    dropped_by_peer = Some(member.url.clone());
                }
            }
            // The peer dropped the link on purpose (no room, or its partial view changed): it
            // is not dialed again at once.
            if let Some(url) = dropped_by_peer {
                self.dial_failed(&url, false);
            }
            self.topology_changed();
        }
    }

    /// Drops what is known of a node that died or left.
    fn forget_record(&mut self, node: &str) {
        self.records.remove(node);
        self.learned_from.remove(node);
        self.keys.remove(node);
        self.records_changed();
    }

    fn records_changed(&mut self) {
        self.routes = None;
        self.summary = None;
        self.federation_changed();
        self.records_dirty = true;
    }

    /// The plugins each node whose record is held serves from its own directory.
    pub fn offers(&self) -> BTreeMap<String, Vec<Offer>> {
        self.records
            .iter()
            .map(|(node, record)| {
                let mut offers: Vec<Offer> = Vec::new();
                for e in record.body.entries.iter().filter(|e| e.replica_of.is_none()) {
                    let version = semver::Version::parse(&e.version).unwrap_or(semver::Version::new(0, 0, 0));
                    match offers.iter_mut().find(|o| o.plugin == e.plugin) {
                        Some(offer) => {
                            offer.tags.extend(e.tags.iter().cloned());
                            offer.commands.push(e.command.clone());
                            offer.version = offer.version.clone().max(version);
                        }
                        None => offers.push(Offer {
                            node: node.clone(),
                            plugin: e.plugin.clone(),
                            digest: e.digest.clone(),
                            size: e.size,
                            tenant: e.tenant.clone(),
                            public: e.public,
                            tags: e.tags.iter().cloned().collect(),
                            commands: vec![e.command.clone()],
                            version,
                        }),
                    }
                }
                (node.clone(), offers)
            })
            .collect()
    }

    /// The nodes whose record shows the module `digest` (served or replicated), nearest first:
    /// linked ones by round trip and load, then the others by hops; with whether each is linked.
    pub fn holders(&mut self, digest: &str) -> Vec<(String, bool)> {
        let mut holders: Vec<(u32, u64, String)> = Vec::new();
        let routes = self.routes().clone();
        for (node, record) in &self.records {
            if !record.body.entries.iter().any(|e| e.digest == digest) {
                continue;
            }
            match self.links.get(node) {
                Some(link) => {
                    let rtt = link.stats.path_rtt_us.load(Ordering::Relaxed).max(1);
                    let load = 1 + link.stats.inflight.load(Ordering::Relaxed) as u64;
                    holders.push((1, rtt.saturating_mul(load), node.clone()));
                }
                None => {
                    if let Some((_, hops)) = routes.get(node) {
                        holders.push((*hops, 0, node.clone()));
                    }
                }
            }
        }
        holders.sort();
        holders.into_iter().map(|(hops, _, node)| (node, hops == 1)).collect()
    }

    fn topology_changed(&mut self) {
        self.links_changed.get_or_insert(self.now);
        self.routes = None;
    }

    /// Takes `record` (from the link of `from`) when it is newer than the one held and signed
    /// by its node's key.
    pub fn accept_record(&mut self, record: &Arc<NodeRecord>, from: &str) -> Accepted {
        let body = &record.body;
        if body.node == self.me {
            return Accepted::Stale;
        }
        if self
            .records
            .get(&body.node)
            .is_some_and(|held| held.body.version >= body.version)
        {
            return Accepted::Stale;
        }
        let linked = self.links.contains_key(&body.node);
        if let Some(member) = self.members.get(&body.node) {
            // A node held dead comes back with a higher incarnation (it refuted the death, or
            // restarted), or with a record signed after the last one heard of before its death
            // (it was alive beyond a partition). A node that left comes back only restarted.
            let outlived = self.lacks_record(&body.node, body.version);
            if !linked && !outlived && body.incarnation <= member.incarnation {
                return Accepted::Stale;
            }
        }
        if self.keys.get(&body.node).is_some_and(|key| *key != body.key) {
            return Accepted::Refused("signed with another key than the node's");
        }
        if !self.verifier.verify(record) {
            return Accepted::Refused("its signature does not verify");
        }
        self.keys.insert(body.node.clone(), body.key);
        if !self.members.contains_key(&body.node) {
            // A new member: dial it now rather than at the next maintenance tick.
            self.wake = true;
        }
        let member = self.members.entry(body.node.clone()).or_insert_with(|| Member {
            url: body.url.clone(),
            incarnation: body.incarnation,
            heard: body.version,
            status: Status::Alive,
            since: self.now,
            probed: None,
            ring: ring_position(&body.node),
        });
        member.url = body.url.clone();
        // Revived by its own record. The record may be older than a new failure (relayed across
        // a partition as it formed): then the dials of the nodes that keep links to it fail, and
        // they suspect it again. A suspect lives when the record was signed after anything heard
        // of it before (a stopped, killed or cut-off node signs nothing new that could arrive).
        let revived = matches!(member.status, Status::Dead | Status::Left);
        if revived || (member.status == Status::Suspect && body.version > member.heard) {
            member.status = Status::Alive;
            member.since = self.now;
            member.probed = None;
            if revived {
                self.settle_until = self.now + SETTLE;
            }
        }
        member.incarnation = member.incarnation.max(body.incarnation);
        member.heard = member.heard.max(body.version);
        let served_changed = self
            .records
            .insert(body.node.clone(), record.clone())
            .is_some_and(|held| held.body.entries != body.entries || held.body.routes != body.routes);
        self.learned_from.insert(body.node.clone(), from.to_string());
        self.records_changed();
        Accepted::New { served_changed }
    }

    /// Whether a record of `node` at `version` would be news here: newer than the one held, and
    /// for a node held dead, signed after the last one heard before its death (a node that left
    /// comes back only restarted, which a version alone does not show).
    pub(super) fn lacks_record(&self, node: &str, version: u64) -> bool {
        if node == self.me || self.records.get(node).is_some_and(|r| r.body.version >= version) {
            return false;
        }
        match self.members.get(node).map(|m| (m.status, m.heard)) {
            Some((Status::Dead, heard)) => version > heard,
            Some((Status::Left, _)) => false,
            _ => true,
        }
    }

    /// The records held for `nodes` (this node's own included).
    pub fn records_of(&mut self, nodes: &[String]) -> Vec<PeerMessage> {
        let mut out = Vec::new();
        for node in nodes {
            if *node == self.me {
                out.push(self.own_record_message());
            } else if let Some(record) = self.records.get(node) {
                out.push(PeerMessage::Record(record.clone()));
            }
        }
        out
    }

    fn alive_versions(&self) -> Vec<(String, u64)> {
        let mut alive: Vec<(String, u64)> = self
            .records
            .iter()
            .map(|(node, r)| (node.clone(), r.body.version))
            .collect();
        alive.push((self.me.clone(), self.local_version));
        alive.sort();
        alive
    }

    /// A hash of the record versions held (FNV-1a): equal on two nodes that hold the same.
    pub fn summary(&mut self) -> u64 {
        if let Some(summary) = self.summary {
            return summary;
        }
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut feed = |node: &str, version: u64| {
            for byte in node.bytes().chain([0]).chain(version.to_le_bytes()) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        // The records in order of node, this node's own in its place (as `alive_versions`).
        let mut mine = Some((self.me.as_str(), self.local_version));
        for (node, record) in &self.records {
            if let Some((me, version)) = mine.filter(|(me, _)| *me < node.as_str()) {
                feed(me, version);
                mine = None;
            }
            feed(node, record.body.version);
        }
        if let Some((me, version)) = mine {
            feed(me, version);
        }
        self.summary = Some(hash);
        hash
    }

    /// The versions of the records held and the members held dead or gone; `opening` as the
    /// link comes up (see `PeerMessage::Versions`).
    pub fn versions_message(&self, opening: bool) -> PeerMessage {
        let dead = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.status, Status::Dead | Status::Left))
            .map(|(node, m)| Death {
                node: node.clone(),
                incarnation: m.incarnation,
                version: m.heard,
                left: m.status == Status::Left,
            })
            .collect();
        PeerMessage::Versions {
            alive: self.alive_versions(),
            dead,
            opening,
        }
    }

    /// How this node answers a claim that it died (or left).
    pub fn rebuttal(&mut self, death: &Death) -> Rebuttal {
        if death.incarnation < self.incarnation {
            return Rebuttal::Old;
        }
        if death.answered_by(self.incarnation, self.local_version) {
            if let PeerMessage::Record(record) = self.own_record_message() {
                return Rebuttal::Record(record);
            }
        }
        Rebuttal::Refute
    }

    /// Compares the versions a peer holds with this node's (`opening`: the peer's list sent as
    /// the link came up, when it also got this node's list of deaths).
    pub fn compare(&mut self, alive: Vec<(String, u64)>, dead: Vec<Death>, opening: bool) -> Comparison {
        let mut out = Comparison::default();
        let theirs: BTreeMap<&str, u64> = alive.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        // Records are pulled: each side asks for what the other holds newer. The records of
        // nodes this node holds dead or gone are pushed by a peer that got its list of them (as
        // a link comes up): news that they live.
        for (node, version) in &alive {
            if *node == self.me {
                continue;
            }
            if opening
                && self
                    .members
                    .get(node)
                    .is_some_and(|m| matches!(m.status, Status::Dead | Status::Left))
            {
                continue;
            }
            let held = self.records.get(node).map_or(0, |r| r.body.version);
            if held < *version {
                out.want.push(node.clone());
            }
        }
        if let Some(death) = dead.iter().find(|d| d.node == self.me) {
            match self.rebuttal(death) {
                Rebuttal::Old => {}
                Rebuttal::Record(record) => out.own = Some(record),
                Rebuttal::Refute => out.refute = Some(death.incarnation),
            }
        } else if theirs.get(self.me.as_str()).is_none_or(|v| *v < self.local_version) {
            if let PeerMessage::Record(record) = self.own_record_message() {
                out.own = Some(record);
            }
        }
        // Deaths in a peer's list are old news, or news from the other side of a healed
        // partition: believed, they would spread false deaths through this side. Deaths are
        // spread by the `Dead` messages of the nodes that saw them. A death of which this node
        // holds a newer record is answered with that record (news the peer takes). A death is
        // passed to its subject when linked to it, so that it refutes (and its new record reaches
        // the peer's side); otherwise, unless this node heard from it after the peer did, it may
        // have died while this node missed the news: it becomes a suspect (probed, and declared
        // dead unless another node still hears it). Not while the fabric settles after members
        // came back (a partition healing): the peer is then likely from the other side, and its
        // list is its view of this side.
        let settling = self.now < self.settle_until;
        for death in dead {
            if death.node == self.me {
                continue;
            }
            let Some(record) = self.records.get(&death.node) else {
                continue;
            };
            // News the peer takes, which brings the node back there: nothing to pass on to the
            // node (its refutation would be a new incarnation every member checks) or suspect.
            if death.answered_by(record.body.incarnation, record.body.version) {
                out.revive.push(record.clone());
                continue;
            }
            let Some(member) = self.members.get_mut(&death.node) else {
                continue;
            };
            if member.incarnation > death.incarnation {
                continue;
            }
            if self.links.contains_key(&death.node) {
                out.rumours.push((death, Rumour::Subject));
            } else if !settling && member.status == Status::Alive && member.heard <= death.version {
                member.status = Status::Suspect;
                member.since = self.now;
                member.probed = None;
            }
        }
        out
    }

    /// `node` left: forget its record at once (news: `true`). It is dialed again only after a
    /// pause, in case it comes back (a restart keeps its id).
    pub fn node_left(&mut self, node: &str) -> bool {
        self.forget_record(node);
        let Some(member) = self.members.get_mut(node) else {
            return false;
        };
        if member.status == Status::Left {
            return false;
        }
        member.status = Status::Left;
        member.since = self.now;
        self.backoff.insert(
            member.url.clone(),
            Backoff {
                failures: 4,
                next: self.now + REDIAL_AFTER_LEAVE,
            },
        );
        true
    }

    /// A peer reports a node dead. Believed unless this node hears from it itself, or has
    /// taken a record of it newer than the last one the peer heard of.
    pub fn rumour_dead(&mut self, death: &Death) -> Rumour {
        let node = death.node.as_str();
        let Some(member) = self.members.get_mut(node) else {
            return Rumour::Ignored;
        };
        // A rumour about an incarnation the node has already refuted is old news.
        if member.incarnation > death.incarnation {
            return Rumour::Ignored;
        }
        if self.links.contains_key(node) {
            // Linked to it: a record signed after the death answers the claimant; else the node
            // itself does.
            return match self.records.get(node) {
                Some(record) if death.answered_by(record.body.incarnation, record.body.version) => {
                    Rumour::Answer(record.clone())
                }
                _ => Rumour::Subject,
            };
        }
        if matches!(member.status, Status::Dead | Status::Left) || member.heard > death.version {
            return Rumour::Ignored;
        }
        member.status = Status::Dead;
        member.since = self.now;
        member.incarnation = death.incarnation;
        member.heard = death.version;
        self.forget_record(node);
        Rumour::Believed
    }

    /// How long peers have to vouch for a suspect: the probe window, or three round trips of
    /// the slowest link when the machine is that busy.
    pub fn probe_window(&self) -> Duration {
        let slowest = self
            .links
            .values()
            .map(|l| l.stats.rtt_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        PROBE_WINDOW.max(Duration::from_micros(slowest) * 3)
    }

    /// A call reached `node` through the fabric, or another peer still hears it: it is alive
    /// (even if not linked). A suspect that others vouch for is not held suspect until a link to
    /// it comes back: in a partial view that may never happen, and a node that dies later is
    /// declared dead by the nodes linked to it.
    pub fn reached(&mut self, node: &str) {
        if let Some(member) = self.members.get_mut(node) {
            if member.status == Status::Suspect {
                member.status = Status::Alive;
                member.since = self.now;
                member.probed = None;
            }
        }
    }

    /// A call through the fabric did not reach `node`: unless linked to it, it is a suspect.
    pub fn unreached(&mut self, node: &str) {
        if self.links.contains_key(node) {
            return;
        }
        if let Some(member) = self.members.get_mut(node) {
            if member.status == Status::Alive {
                member.status = Status::Suspect;
                member.since = self.now;
                member.probed = None;
            }
        }
    }

    /// Whether this node has a live link to `node` (the answer to a peer's probe).
    pub fn hears(&self, node: &str) -> bool {
        self.links.contains_key(node)
    }

    fn is_live(status: Status) -> bool {
        matches!(status, Status::Alive | Status::Suspect)
    }

    /// What the maintenance tick should do. A suspect unreachable for `suspect_timeout` is
    /// probed through the other peers; if none of them vouches for it within the probe window,
    /// it is declared dead.
    pub fn plan_maintenance(&mut self, config: &FabricConfig) -> Maintenance {
        let now = self.now;
        let mut plan = Maintenance::default();
        let can_probe = !self.links.is_empty();
        let window = self.probe_window();
        let mut died = Vec::new();
        let mut deaths = Vec::new();
        for (node, member) in self.members.iter_mut() {
            if member.status != Status::Suspect
                || self.links.contains_key(node)
                || now.duration_since(member.since) < config.timing.suspect_timeout
            {
                continue;
            }
            match member.probed {
                None if can_probe => {
                    member.probed = Some(now);
                    plan.probes.push(node.clone());
                }
                Some(at) if now.duration_since(at) < window => {}
                _ => {
                    member.status = Status::Dead;
                    member.since = now;
                    member.probed = None;
                    died.push(node.clone());
                    deaths.push(Death {
                        node: node.clone(),
                        incarnation: member.incarnation,
                        version: member.heard,
                        left: false,
                    });
                }
            }
        }
        // Members no link here watches (a partial view) are checked one at a time, at random,
        // with a call through the fabric: a partition that left them on the other side is found.
        // Not while the machine is this busy (a link's round trip over 100 ms): calls through
        // the fabric would time out and turn a busy fabric into a storm of suspicions.
        if now >= self.next_check && now >= self.settle_until && window == PROBE_WINDOW {
            self.next_check = now + CHECK_UNLINKED;
            let unlinked: Vec<String> = self
                .members
                .iter()
                .filter(|(node, m)| m.status == Status::Alive && !self.links.contains_key(*node))
                .map(|(node, _)| node.clone())
                .collect();
            if !unlinked.is_empty() {
                let pick = (self.random() % unlinked.len() as u64) as usize;
                plan.verify.push(unlinked[pick].clone());
            }
        }
        for node in died {
            self.forget_record(&node);
        }
        for node in &plan.probes {
            tracing::debug!(peer = %node, "peer suspected; asking the others whether they still hear it");
            self.broadcast(None, PeerMessage::Probe { node: node.clone() });
        }
        for death in deaths {
            tracing::warn!(peer = %death.node, "peer declared dead; its commands are withdrawn");
            self.broadcast(None, PeerMessage::Dead(death));
        }
        // Dead members are forgotten after a while; until then they are still dialed (with
        // backoff), which is how the two sides of a healed partition find each other again.
        self.members.retain(|_, m| {
            !(matches!(m.status, Status::Dead | Status::Left) && now.duration_since(m.since) > FORGET_DEAD)
        });
        let wanted = if self.partial(config.max_mesh) {
            let view = config.max_mesh.min(PARTIAL_VIEW);
            self.retire_surplus_links(2 * view);
            self.partial_view_wanted(view)
        } else {
            self.full_mesh_wanted(config.max_mesh)
        };
        // Seeds (and, in a partial view, one member held dead) are dialed whatever the links
        // already made: they join this node to the rest of the fabric, or heal a partition.
        let mut seeds = self.unlinked_seeds();
        seeds.extend(self.heal_dial.take());
        // Suspects are dialed past the bound too: a direct link is the truest sign that a node
        // lives. A check through the fabric fails whenever the overlay between two nodes is
        // broken (a partition elsewhere), and a node that full would otherwise let a suspect it
        // can reach be declared dead.
        let suspects: BTreeSet<&str> = self
            .members
            .iter()
            .filter(|(node, m)| m.status == Status::Suspect && !self.links.contains_key(*node))
            .map(|(_, m)| m.url.as_str())
            .collect();
        let urgent: BTreeSet<String> = seeds
            .iter()
            .cloned()
            .chain(suspects.into_iter().map(str::to_string))
            .collect();
        for url in seeds.iter().chain(&wanted) {
            let url = url.clone();
            if url == self.my_url || self.dialing.contains(&url) || plan.dials.contains(&url) {
                continue;
            }
            if self.backoff.get(&url).is_some_and(|b| b.next > now) {
                continue;
            }
            if self.links.len() + self.dialing.len() >= config.max_mesh && !urgent.contains(&url) {
                continue;
            }
            self.dialing.insert(url.clone());
            plan.dials.push(url);
        }
        // A change of links waits half the interval, so that the changes of a burst (a heal, a
        // start) go out in one version rather than one now and another an interval later.
        let interval = self.links_announce_interval();
        if self
            .links_changed
            .is_some_and(|since| now.duration_since(since) >= interval / 2)
            && now.duration_since(self.links_announced) >= interval
        {
            let record = self.republish();
            self.broadcast(None, record);
        }
        self.tree_messages();
        plan
    }

    /// How often a change of links is announced at most (see `LINKS_ANNOUNCE_PER_MEMBER`).
    fn links_announce_interval(&self) -> Duration {
        (LINKS_ANNOUNCE_PER_MEMBER * u32::try_from(self.live_members()).unwrap_or(u32::MAX))
            .clamp(LINKS_ANNOUNCE_MIN, LINKS_ANNOUNCE_MAX)
    }

    /// Retires links over `cap` (the fabric outgrew the full mesh, or many peers picked this
    /// node): never a ring neighbour, a seed or a link with calls in flight.
    fn retire_surplus_links(&mut self, cap: usize) {
        if self.links.len() <= cap {
            return;
        }
        let keep: BTreeSet<String> = self.ring_neighbours().into_iter().collect();
        let seeds: BTreeSet<&str> = self.seeds.iter().map(String::as_str).collect();
        let mut candidates: Vec<String> = self
            .links
            .iter()
            .filter(|(node, l)| {
                !keep.contains(*node)
                    && l.stats.inflight.load(Ordering::Relaxed) == 0
                    && self.members.get(*node).is_none_or(|m| !seeds.contains(m.url.as_str()))
            })
            .map(|(node, _)| node.clone())
            .collect();
        candidates.sort();
        while self.links.len() > cap && !candidates.is_empty() {
            let pick = (self.random() % candidates.len() as u64) as usize;
            let node = candidates.swap_remove(pick);
            self.retire_link(&node);
        }
    }

    /// This node's two neighbours on the ring of live members.
    fn ring_neighbours(&self) -> Vec<String> {
        // One pass, no sort: the next position after this node's and the one before it,
        // wrapping around the ring.
        let mine = (ring_position(&self.me), self.me.as_str());
        let (mut next, mut prev) = (None, None);
        let (mut lowest, mut highest) = (None, None);
        for (node, m) in &self.members {
            if !Self::is_live(m.status) || self.blocked.contains(node) {
                continue;
            }
            let at = (m.ring, node.as_str());
            if at > mine && next.is_none_or(|n| at < n) {
                next = Some(at);
            }
            if at < mine && prev.is_none_or(|p| at > p) {
                prev = Some(at);
            }
            if lowest.is_none_or(|l| at < l) {
                lowest = Some(at);
            }
            if highest.is_none_or(|h| at > h) {
                highest = Some(at);
            }
        }
        [next.or(lowest), prev.or(highest)]
            .into_iter()
            .flatten()
            .map(|(_, node)| node.to_string())
            .collect()
    }

    /// Full mesh: every remembered member unlinked.
    fn full_mesh_wanted(&self, max_mesh: usize) -> Vec<String> {
        let mut wanted = Vec::new();
        if self.links.len() >= max_mesh {
            return wanted;
        }
        for (node, member) in &self.members {
            // Every remembered member is dialed while unlinked; backoff keeps it cheap.
            if !self.links.contains_key(node) && !self.blocked.contains(node) {
                wanted.push(member.url.clone());
            }
        }
        wanted
    }

    /// Seeds are dialed (with backoff) until linked once, and again whenever this node has no
    /// link at all, so a node whose peers all forgot it, or a fabric split for longer than
    /// members are remembered, rejoins. (Kept dialed for ever, they would fight the partial view
    /// of a seed that drops the link.)
    fn unlinked_seeds(&self) -> Vec<String> {
        let linked_urls: BTreeSet<&str> = self
            .links
            .keys()
            .filter_map(|n| self.members.get(n))
            .map(|m| m.url.as_str())
            .chain(self.gateways.values().map(|g| g.url.as_str()))
            .collect();
        self.seeds
            .iter()
            .filter(|s| !linked_urls.contains(s.as_str()))
            .filter(|s| self.links.is_empty() || !self.seeds_joined.contains(*s) || self.gateway_seeds.contains(*s))
            .cloned()
            .collect()
    }

    /// Partial view: the ring neighbours, suspects (to hear them again), random members up to
    /// `view` links; and one dead member (so split groups find each other), dialed past the
    /// bound.
    fn partial_view_wanted(&mut self, view: usize) -> Vec<String> {
        let mut wanted = Vec::new();
        for neighbour in self.ring_neighbours() {
            if !self.links.contains_key(&neighbour) {
                if let Some(m) = self.members.get(&neighbour) {
                    wanted.push(m.url.clone());
                }
            }
        }
        // The members not linked, in the order of their ids (the map's order).
        let (members, links, blocked) = (&self.members, &self.links, &self.blocked);
        let others = |status: Status| {
            members
                .iter()
                .filter(move |(node, m)| m.status == status && !links.contains_key(*node) && !blocked.contains(*node))
                .map(|(_, m)| m)
        };
        wanted.extend(others(Status::Suspect).map(|m| m.url.clone()));
        let missing = view.saturating_sub(self.links.len() + self.dialing.len() + wanted.len());
        let alive: Vec<&str> = if missing > 0 {
            others(Status::Alive).map(|m| m.url.as_str()).collect()
        } else {
            Vec::new()
        };
        for _ in 0..missing.min(alive.len()) {
            let pick = (next_random(&mut self.rng) % alive.len() as u64) as usize;
            wanted.push(alive[pick].to_string());
        }
        let dead = others(Status::Dead).count();
        if dead > 0 {
            let pick = (next_random(&mut self.rng) % dead as u64) as usize;
            self.heal_dial = others(Status::Dead).nth(pick).map(|m| m.url.clone());
        }
        wanted
    }

    /// A dial of `url` failed: wait longer (exponential, with jitter) before the next. When it
    /// could not reach the node (`unreachable`: not a refusal for lack of room) a few times in
    /// a row, an unlinked member held alive at that URL becomes a suspect.
    pub fn dial_failed(&mut self, url: &str, unreachable: bool) {
        self.dialing.remove(url);
        let jitter = self.random() % 1000;
        let backoff = self.backoff.entry(url.to_string()).or_insert(Backoff {
            failures: 0,
            next: self.now,
        });
        backoff.failures = backoff.failures.saturating_add(1);
        if unreachable && backoff.failures >= UNREACHABLE_DIALS {
            let unlinked = self
                .members
                .iter_mut()
                .filter(|(node, m)| m.url == url && !self.links.contains_key(*node));
            for (node, member) in unlinked {
                if member.status == Status::Alive {
                    tracing::debug!(peer = %node, %url, "peer unreachable; suspected");
                    member.status = Status::Suspect;
                    member.since = self.now;
                    member.probed = None;
                }
            }
        }
        // 50 ms after the first failure (a node starting at the same time as its seed), then
        // doubling up to the bound.
        let base = Duration::from_millis(25u64.saturating_mul(1 << backoff.failures.min(8))).min(MAX_BACKOFF);
        // ±20 %
        let spread = base.as_millis() as u64 * (800 + jitter * 400 / 1000) / 1000;
        backoff.next = self.now + Duration::from_millis(spread);
    }

    /// A dial of `url` reached an authenticated node (linked, or already linked).
    pub fn dial_done(&mut self, url: &str, linked: bool) {
        if linked {
            self.dialing.remove(url);
        } else {
            // Already linked through another connection (or refused): do not redial it at once.
            self.dial_failed(url, false);
        }
    }

    /// The replica for a call: among the reachable nodes whose record has a matching entry,
    /// the better of two random picks by the estimated path time (round-trip time of the link
    /// the call leaves on × hops) × (1 + calls in flight to the node).
    pub fn choose(&mut self, fun: &str, selector: &Selector, exclude: &[String]) -> Option<Route> {
        let wanted: Vec<String> = self
            .records
            .iter()
            .filter(|(node, _)| !exclude.contains(node))
            .filter(|(_, r)| r.body.entries.iter().any(|e| matches(e, fun, selector)))
            .map(|(node, _)| node.clone())
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let mut candidates: Vec<(String, String, u32)> = Vec::with_capacity(wanted.len());
        for node in wanted {
            if self.links.contains_key(&node) {
                candidates.push((node.clone(), node, 1));
            } else if let Some((via, hops)) = self.routes().get(&node).cloned() {
                candidates.push((node, via, hops));
            }
        }
        let (r1, r2) = (self.random(), self.random());
        let picked = match candidates.len() {
            0 => return None,
            1 => 0,
            n => {
                let a = (r1 % n as u64) as usize;
                let mut b = (r2 % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                // A link not measured yet counts as the slowest measured one (1 ms when none
                // is): never as the fastest, and not so slow that load elsewhere is ignored.
                let unmeasured = self
                    .links
                    .values()
                    .map(|l| l.stats.path_rtt_us.load(Ordering::Relaxed))
                    .max()
                    .filter(|slowest| *slowest > 0)
                    .unwrap_or(UNMEASURED_RTT_US);
                let score = |(node, via, hops): &(String, String, u32)| {
                    self.links.get(via).map_or(u64::MAX, |l| {
                        let rtt = match l.stats.path_rtt_us.load(Ordering::Relaxed) {
                            0 => unmeasured,
                            measured => measured,
                        };
                        let inflight = self.inflight.get(node).map_or(0, |c| c.load(Ordering::Relaxed));
                        rtt.saturating_mul(u64::from(*hops))
                            .saturating_mul(1 + inflight as u64)
                            .saturating_mul(self.scores.factor(node, self.now))
                    })
                };
                if score(&candidates[a]) <= score(&candidates[b]) {
                    a
                } else {
                    b
                }
            }
        };
        let (target, via, _) = candidates.swap_remove(picked);
        self.route(target, via)
    }

    fn route(&mut self, target: String, via: String) -> Option<Route> {
        let link = self.links.get(&via)?;
        let (link_id, stats) = (link.id, link.stats.clone());
        let inflight = self.inflight.entry(target.clone()).or_default().clone();
        Some(Route {
            target,
            via,
            link: link_id,
            stats,
            inflight,
        })
    }

    /// The link a call for `target` leaves on, avoiding the nodes it has passed through.
    pub fn next_hop(&mut self, target: &str, path: &[String]) -> Option<Route> {
        let via = if self.links.contains_key(target) {
            Some((target.to_string(), 1))
        } else if let Some(cached) = self
            .routes()
            .get(target)
            .filter(|(via, _)| !path.contains(via))
            .cloned()
        {
            Some(cached)
        } else if path.is_empty() {
            None
        } else {
            let avoid: BTreeSet<&str> = path.iter().map(String::as_str).chain([self.me.as_str()]).collect();
            self.compute_routes(&avoid).remove(target)
        };
        let (via, _) = via?;
        self.route(target.to_string(), via)
    }

    fn routes(&mut self) -> &BTreeMap<String, (String, u32)> {
        if self.routes.is_none() {
            let avoid = BTreeSet::from([self.me.as_str()]);
            self.routes = Some(self.compute_routes(&avoid));
        }
        self.routes.get_or_insert_with(BTreeMap::new)
    }

    fn compute_routes(&self, avoid: &BTreeSet<&str>) -> BTreeMap<String, (String, u32)> {
        let links: Vec<&str> = self
            .links
            .keys()
            .map(String::as_str)
            .filter(|n| !avoid.contains(n))
            .collect();
        let neighbours: BTreeMap<&str, Vec<&str>> = self
            .records
            .iter()
            .map(|(node, r)| {
                let list = r
                    .body
                    .neighbours
                    .iter()
                    .map(String::as_str)
                    .filter(|n| *n != self.me && self.records.contains_key(*n))
                    .collect();
                (node.as_str(), list)
            })
            .collect();
        let mut routes = route::first_hops(&links, &neighbours, avoid);
        // A node whose links are not known yet is reached through the peer its record came from.
        for (node, peer) in &self.learned_from {
            if !routes.contains_key(node)
                && !avoid.contains(node.as_str())
                && !avoid.contains(peer.as_str())
                && self.records.contains_key(node)
                && self.links.contains_key(peer)
            {
                routes.insert(node.clone(), (peer.clone(), 2));
            }
        }
        // Any other node with a record is tried through the nearest link: the records that
        // show its links may be a moment behind (they are announced every 300 ms at most).
        let nearest = self
            .links
            .iter()
            .filter(|(node, _)| !avoid.contains(node.as_str()))
            .min_by_key(|(_, l)| l.stats.path_rtt_us.load(Ordering::Relaxed))
            .map(|(node, _)| node.clone());
        if let Some(nearest) = nearest {
            for node in self.records.keys() {
                if !routes.contains_key(node) && !avoid.contains(node.as_str()) {
                    routes.insert(node.clone(), (nearest.clone(), MAX_HOPS_GUESS));
                }
            }
        }
        routes
    }

    fn random(&mut self) -> u64 {
        next_random(&mut self.rng)
    }

    /// What `weft.peers` shows: the members (all, or those in `states`) and how many are in
    /// each state.
    pub fn peers_report(&mut self, config: &FabricConfig, states: Option<&[String]>) -> Value {
        let counts: serde_json::Map<String, Value> = crate::rpc::PEER_STATES
            .into_iter()
            .map(|state| {
                let n = self.members.values().filter(|m| m.status.name() == state).count();
                (state.to_string(), Value::from(n))
            })
            .collect();
        let routes = self.routes().clone();
        let mut peers: Vec<Value> = self
            .members
            .iter()
            .filter(|(_, m)| states.is_none_or(|s| s.iter().any(|s| s == m.status.name())))
            .map(|(node, m)| {
                let link = self.links.get(node);
                json!({
                    "node": node,
                    "url": m.url,
                    "state": m.status.name(),
                    "linked": link.is_some(),
                    "via": routes.get(node).map(|(via, _)| via),
                    "hops": routes.get(node).map(|(_, hops)| hops),
                    "rtt_us": link.map(|l| l.stats.rtt_us.load(Ordering::Relaxed)),
                    "inflight": link.map(|l| l.stats.inflight.load(Ordering::Relaxed)),
                    "bytes_out": link.map(|l| l.stats.bytes_out.load(Ordering::Relaxed)),
                    "bytes_in": link.map(|l| l.stats.bytes_in.load(Ordering::Relaxed)),
                    "commands": self.records.get(node).map_or(0, |r| r.body.entries.len()),
                    "penalty": self.scores.penalty(node, self.now),
                    "neighbours": self.records.get(node).map(|r| &r.body.neighbours),
                })
            })
            .collect();
        peers.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        json!({
            "node": config.node_id, "cluster": config.cluster, "url": config.advertise_url,
            "region": config.region, "tier": config.tier, "counts": counts, "peers": peers,
            "gateways": self.gateways_report(),
        })
    }

    /// Every command of the fabric the caller of `selector` may see, with the nodes serving it.
    pub fn catalog_report(&self, selector: &Selector) -> Value {
        let mut rows: Vec<Value> = Vec::new();
        let own = std::iter::once((self.me.as_str(), &self.local_entries));
        let others = self.records.iter().map(|(node, r)| (node.as_str(), &r.body.entries));
        for (node, entries) in own.chain(others) {
            for e in entries.iter().filter(|e| selector.sees(&e.tenant, e.public)) {
                rows.push(json!({ "command": e.command, "tags": e.tags, "version": e.version, "digest": e.digest, "node": node, "tenant": e.tenant, "public": e.public, "plugin": e.plugin, "replica_of": e.replica_of }));
            }
        }
        rows.extend(self.federated_catalog(selector));
        rows.sort_by(|a, b| {
            (a["command"].as_str(), a["cluster"].as_str(), a["node"].as_str()).cmp(&(
                b["command"].as_str(),
                b["cluster"].as_str(),
                b["node"].as_str(),
            ))
        });
        Value::Array(rows)
    }
}

/// The next number of a xorshift64* generator.
fn next_random(rng: &mut u64) -> u64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Where a node sits on the ring of the partial view (FNV-1a of its id).
fn ring_position(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether catalog entry `e` can serve `fun` under `selector`.
pub(super) fn matches(e: &CatalogEntry, fun: &str, selector: &Selector) -> bool {
    e.command == fun
        && selector.sees(&e.tenant, e.public)
        && selector.locs.iter().all(|l| e.tags.contains(l))
        && selector
            .function_id
            .as_ref()
            .is_none_or(|id| *id == format!("{}@{}", e.command, e.version))
        && selector.version_constraint.as_ref().is_none_or(|c| {
            semver::VersionReq::parse(c)
                .ok()
                .zip(semver::Version::parse(&e.version).ok())
                .is_some_and(|(req, v)| req.matches(&v))
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config(node: &str) -> FabricConfig {
        FabricConfig {
            node_id: node.into(),
            key: NodeKey::generate(),
            cluster: "test".into(),
            secret: Vec::new(),
            advertise_url: format!("ws://{node}"),
            seeds: Vec::new(),
            max_mesh: 32,
            timing: super::super::Timing::default(),
            fault_injection: false,
            tls: None,
            bridge: Default::default(),
            gateway_secret: None,
            tier: 0,
            region: None,
            hop_budget: super::super::wire::DEFAULT_HOP_BUDGET,
        }
    }

    pub(crate) fn record(key: &NodeKey, node: &str, incarnation: u64, version: u64) -> Arc<NodeRecord> {
        let body = RecordBody {
            node: node.into(),
            key: key.public(),
            url: format!("ws://{node}"),
            incarnation,
            version,
            entries: Vec::new(),
            neighbours: Vec::new(),
            routes: Vec::new(),
        };
        Arc::new(NodeRecord::signed(body, key).expect("signing a record"))
    }

    /// A fresh state of node `node`.
    pub(crate) fn fresh(node: &str) -> State {
        State::new(&config(node), Instant::now(), 1, 7)
    }

    /// Connection `n` (its id) to `node`, dialed by `node`, as the link to it.
    pub(crate) fn link(state: &mut State, node: &str) -> u64 {
        let id = 100 + state.links.len() as u64;
        let key = NodeKey::generate().public();
        state.add_link(id, node, &format!("ws://{node}"), key, node, 32);
        id
    }

    /// The messages queued since the outputs were last taken, with the connection of each.
    pub(crate) fn sent(state: &mut State) -> Vec<(u64, PeerMessage)> {
        state
            .take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { link, message } => Some((link, message)),
                Output::Retire { .. } => None,
            })
            .collect()
    }

    /// A death of node "x" (incarnation 1) after the last version its declarer heard.
    fn death_of_x(version: u64) -> Death {
        Death {
            node: "x".into(),
            incarnation: 1,
            version,
            left: false,
        }
    }

    fn status(state: &State, node: &str) -> Option<Status> {
        state.members.get(node).map(|m| m.status)
    }

    #[test]
    fn a_death_is_not_believed_by_a_node_that_heard_from_it_since() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        assert!(matches!(
            state.accept_record(&record(&x, "x", 1, 10), "b"),
            Accepted::New { .. }
        ));
        // Declared dead by a node that last heard version 9: this node holds 10.
        let stale = death_of_x(9);
        assert!(matches!(state.rumour_dead(&stale), Rumour::Ignored));
        assert_eq!(status(&state, "x"), Some(Status::Alive));
        // Declared dead after the last version this node holds: believed.
        let fresh = Death { version: 10, ..stale };
        assert!(matches!(state.rumour_dead(&fresh), Rumour::Believed));
        assert_eq!(status(&state, "x"), Some(Status::Dead));
    }

    #[test]
    fn a_record_signed_after_a_death_revives_the_node_and_an_older_one_does_not() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        state.accept_record(&record(&x, "x", 1, 10), "b");
        let death = death_of_x(10);
        assert!(matches!(state.rumour_dead(&death), Rumour::Believed));
        assert!(matches!(
            state.accept_record(&record(&x, "x", 1, 10), "b"),
            Accepted::Stale
        ));
        assert_eq!(status(&state, "x"), Some(Status::Dead));
        assert!(matches!(
            state.accept_record(&record(&x, "x", 1, 11), "b"),
            Accepted::New { .. }
        ));
        assert_eq!(status(&state, "x"), Some(Status::Alive));
    }

    #[test]
    fn a_peers_list_of_deaths_raises_suspicion_at_most() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        state.accept_record(&record(&x, "x", 1, 10), "b");
        let death = death_of_x(9);
        // This node heard from x after the peer did: x stays alive, and the peer is sent the
        // newer record, which revives x there.
        let comparison = state.compare(Vec::new(), vec![death.clone()], false);
        assert!(comparison.rumours.is_empty(), "not linked to x: nothing to pass on");
        assert_eq!(status(&state, "x"), Some(Status::Alive));
        let sent: Vec<(&str, u64)> = comparison
            .revive
            .iter()
            .map(|r| (r.body.node.as_str(), r.body.version))
            .collect();
        assert_eq!(sent, [("x", 10)]);
        // The peer knows as much as this node: x may have died unseen; it is a suspect, not dead,
        // and there is no news to send.
        let comparison = state.compare(Vec::new(), vec![Death { version: 10, ..death }], false);
        assert!(comparison.revive.is_empty());
        assert_eq!(status(&state, "x"), Some(Status::Suspect));
    }

    #[test]
    fn a_claim_of_this_nodes_death_is_answered_with_its_newer_record_before_a_new_incarnation() {
        let mut state = fresh("a");
        let (incarnation, version) = (state.incarnation, state.local_version);
        let death = |version: u64, left: bool| Death {
            node: "a".into(),
            incarnation,
            version,
            left,
        };
        // The claimant last heard an older version: the current record answers it.
        match state.rebuttal(&death(version - 1, false)) {
            Rebuttal::Record(record) => assert_eq!(record.body.version, version),
            _ => panic!("the current record answers a death heard before it"),
        }
        assert_eq!(state.incarnation, incarnation, "no new incarnation");
        // The claimant heard the current version, or holds the node gone: a new incarnation.
        assert!(matches!(state.rebuttal(&death(version, false)), Rebuttal::Refute));
        assert!(matches!(state.rebuttal(&death(version - 1, true)), Rebuttal::Refute));
        // About an older incarnation: refuted already.
        let old = Death {
            incarnation: incarnation - 1,
            ..death(version, false)
        };
        assert!(matches!(state.rebuttal(&old), Rebuttal::Old));
    }

    #[test]
    fn a_death_claimed_of_a_linked_node_is_answered_with_its_newer_record() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        state
            .add_link(1, "x", "ws://x", x.public(), "a", 32)
            .expect("not cut off");
        state.accept_record(&record(&x, "x", 1, 10), "x");
        let death = death_of_x(9);
        // In a peer's list: the record is sent back, and the node is not asked to refute.
        let comparison = state.compare(Vec::new(), vec![death.clone()], false);
        assert_eq!(comparison.revive.len(), 1);
        assert!(comparison.rumours.is_empty());
        // In a `Dead` message: answered with the record.
        assert!(matches!(state.rumour_dead(&death), Rumour::Answer(r) if r.body.version == 10));
        // A death after the last version held is the node's to refute.
        let current = Death { version: 10, ..death };
        assert!(matches!(state.rumour_dead(&current), Rumour::Subject));
    }

    #[test]
    fn records_of_members_held_dead_are_asked_for_unless_the_peer_pushes_them() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        state.accept_record(&record(&x, "x", 1, 10), "b");
        let death = death_of_x(10);
        assert!(matches!(state.rumour_dead(&death), Rumour::Believed));
        let theirs = || vec![("x".to_string(), 11)];
        // As the link comes up the peer got this node's list of deaths, and pushes x's newer
        // record itself.
        assert!(state.compare(theirs(), Vec::new(), true).want.is_empty());
        // Digests that differ: the peer never saw the list, so the record is asked for.
        assert_eq!(state.compare(theirs(), Vec::new(), false).want, ["x"]);
    }

    #[test]
    fn a_suspect_another_peer_still_hears_is_alive() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        state.accept_record(&record(&x, "x", 1, 10), "b");
        state.compare(Vec::new(), vec![death_of_x(10)], false);
        assert_eq!(status(&state, "x"), Some(Status::Suspect));
        state.reached("x");
        assert_eq!(status(&state, "x"), Some(Status::Alive));
    }

    #[test]
    fn an_unlinked_member_that_dials_cannot_reach_becomes_a_suspect() {
        let mut state = fresh("a");
        let x = NodeKey::generate();
        state.accept_record(&record(&x, "x", 1, 10), "b");
        state.dial_failed("ws://x", false);
        state.dial_failed("ws://x", false);
        assert_eq!(
            status(&state, "x"),
            Some(Status::Alive),
            "refusals for lack of room are no failure"
        );
        state.backoff.clear();
        state.dial_failed("ws://x", true);
        assert_eq!(
            status(&state, "x"),
            Some(Status::Alive),
            "one failed dial is not enough"
        );
        state.dial_failed("ws://x", true);
        assert_eq!(status(&state, "x"), Some(Status::Suspect));
    }

    #[test]
    fn a_duplicate_connection_retires_without_raising_suspicion() {
        let mut state = fresh("a");
        let b = NodeKey::generate().public();
        let mut next = 0;
        let mut connect = |state: &mut State, dialer: &str| {
            next += 1;
            state.add_link(next, "b", "ws://b", b, dialer, 32).expect("not cut off")
        };
        let retired = |state: &mut State| -> Vec<u64> {
            state
                .take_outputs()
                .into_iter()
                .filter_map(|o| match o {
                    Output::Retire { link } => Some(link),
                    Output::Send { .. } => None,
                })
                .collect()
        };
        let first = connect(&mut state, "b");
        assert!(first.current);
        first.stats.rtt_us.store(250, Ordering::Relaxed);
        first.stats.path_rtt_us.store(200, Ordering::Relaxed);
        // Both nodes dialed at once: the connection dialed by the smaller id is the one both
        // keep, whichever arrives first. It starts with the round trip measured on the other.
        let kept = connect(&mut state, "a");
        assert!(kept.current);
        assert_eq!(kept.stats.rtt_us.load(Ordering::Relaxed), 250);
        assert_eq!(kept.stats.path_rtt_us.load(Ordering::Relaxed), 200);
        assert_eq!(retired(&mut state), [first.id], "the first one is retired");
        let late = connect(&mut state, "b");
        assert!(!late.current, "a later duplicate starts retired");
        assert!(retired(&mut state).is_empty(), "the kept one is not retired");
        assert_eq!(state.links.get("b").map(|l| l.id), Some(kept.id));
        // The retired connections close: the node keeps its link and is not suspected.
        state.remove_link("b", first.id, false);
        state.remove_link("b", late.id, false);
        assert_eq!(state.links.get("b").map(|l| l.id), Some(kept.id));
        assert_eq!(status(&state, "b"), Some(Status::Alive));
    }

    #[test]
    fn the_summary_hashes_every_version_held_in_order_of_node() {
        let mut state = fresh("m");
        for (node, version) in [("a", 3), ("z", 9), ("q", 4)] {
            state.accept_record(&record(&NodeKey::generate(), node, 1, version), "a");
        }
        let mut expected = 0xcbf2_9ce4_8422_2325u64;
        for (node, version) in state.alive_versions() {
            for byte in node.bytes().chain([0]).chain(version.to_le_bytes()) {
                expected ^= u64::from(byte);
                expected = expected.wrapping_mul(0x0100_0000_01b3);
            }
        }
        assert_eq!(state.summary(), expected);
        // A new version changes it (the cached summary is dropped).
        state.accept_record(&record(&NodeKey::generate(), "b", 1, 1), "a");
        assert_ne!(state.summary(), expected);
    }

    #[test]
    fn a_node_with_no_room_tells_a_dialer_what_it_knows_before_the_connection_retires() {
        let mut state = fresh("a");
        // A full view: 2 × max_mesh links in a fabric larger than the mesh.
        let max_mesh = 4;
        for i in 0..12 {
            let node = format!("m{i:02}");
            state.accept_record(&record(&NodeKey::generate(), &node, 1, 1), "m00");
        }
        for i in 0..8 {
            let node = format!("m{i:02}");
            let key = state.keys[&node];
            state.add_link(i, &node, &format!("ws://{node}"), key, &node, max_mesh);
        }
        state.take_outputs();
        // A member it knows, not a ring neighbour (the cap has room for those and joiners).
        let known = (8..12)
            .map(|i| format!("m{i:02}"))
            .find(|n| !state.ring_neighbours().contains(n))
            .expect("a member off the ring");
        assert!(!state.accepts_link(&known, max_mesh), "the view is full");
        let key = state.keys[&known];
        let admitted = state.add_link(50, &known, &format!("ws://{known}"), key, &known, max_mesh);
        assert!(admitted.is_some_and(|a| !a.current), "admitted, retired");
        let messages = sent(&mut state);
        assert!(
            matches!(messages.as_slice(), [(50, PeerMessage::Record(_)), (50, PeerMessage::Versions { alive, opening: true, .. })] if alive.len() == 13),
            "its record and every version held, on that connection: {messages:?}"
        );
        // A node it holds no record of (joining) gets a link past the cap.
        assert!(state.accepts_link("newcomer", max_mesh));
    }

    #[test]
    fn a_seed_reached_is_joined_even_when_no_link_stays() {
        let mut state = fresh("a");
        let full: Vec<String> = (0..70).map(|i| format!("m{i:02}")).collect();
        for node in &full {
            state.accept_record(&record(&NodeKey::generate(), node, 1, 1), "m00");
        }
        for (i, node) in full.iter().take(16).enumerate() {
            let key = state.keys[node];
            state.add_link(i as u64, node, &format!("ws://{node}"), key, node, 8);
        }
        // The seed: a member this node knows (not a joiner), off its ring.
        let seed = ["s", "t", "u", "v"]
            .into_iter()
            .find(|s| {
                state.accept_record(&record(&NodeKey::generate(), s, 1, 1), "m00");
                !state.ring_neighbours().contains(&s.to_string())
            })
            .expect("a member off the ring");
        let url = format!("ws://{seed}");
        state.seeds = vec![url.clone()];
        let key = state.keys[seed];
        let admitted = state.add_link(99, seed, &url, key, "a", 8).expect("not cut off");
        assert!(!admitted.current, "no room for the seed's link");
        state.remove_link(seed, 99, false);
        assert!(
            !state.unlinked_seeds().contains(&url),
            "a seed reached is not dialed again while the node has links"
        );
    }

    #[test]
    fn a_suspect_is_dialed_even_when_the_view_is_full() {
        let mut config = config("a");
        config.max_mesh = 8;
        let mut state = State::new(&config, Instant::now(), 1, 7);
        let members: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
        for node in &members {
            state.accept_record(&record(&NodeKey::generate(), node, 1, 1), "m00");
        }
        for (i, node) in members.iter().take(config.max_mesh).enumerate() {
            let key = state.keys[node];
            state.add_link(i as u64, node, &format!("ws://{node}"), key, node, config.max_mesh);
        }
        let suspect = members.last().cloned().expect("members");
        state.unreached(&suspect);
        assert_eq!(status(&state, &suspect), Some(Status::Suspect));
        let plan = state.plan_maintenance(&config);
        assert!(
            plan.dials.contains(&format!("ws://{suspect}")),
            "the suspect is dialed: {:?}",
            plan.dials
        );
    }
}
