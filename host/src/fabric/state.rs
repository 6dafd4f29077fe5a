//! What a node knows of the fabric: members, their catalogs, its links, and how it picks the
//! replica a call goes to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::wire::{CatalogEntry, MemberInfo, PeerMessage};
use super::FabricConfig;
use crate::plugins::Selector;

/// Live figures of one link, shared with the calls that use it.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Smoothed round-trip time, µs (0 until measured).
    pub rtt_us: AtomicU64,
    /// Calls sent on the link and not answered yet.
    pub inflight: AtomicUsize,
    /// Bytes of peer frames written to and read from the link.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

pub struct LinkHandle {
    pub id: u64,
    pub tx: mpsc::Sender<PeerMessage>,
    pub stats: Arc<LinkStats>,
    /// Which side dialed: when two nodes dial each other at once, both keep the connection
    /// dialed by the node with the smaller id.
    pub dialer: String,
    /// Tells the link's task to close (it lost a duplicate contest).
    pub close: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Alive,
    /// Its link went away; not yet confirmed dead.
    Suspect,
    Dead,
    Left,
}

pub struct Member {
    pub url: String,
    pub incarnation: u64,
    pub status: Status,
    pub since: Instant,
    /// When the other peers were asked whether they still hear this suspect.
    pub probed: Option<Instant>,
}

/// What a maintenance tick decided.
#[derive(Default)]
pub struct Maintenance {
    /// URLs to dial.
    pub dials: Vec<String>,
    /// Suspects now declared dead (with their incarnation).
    pub dead: Vec<(String, u64)>,
    /// Suspects to ask the other peers about.
    pub probes: Vec<String>,
}

/// The round-trip time assumed for a link before its first pong (1 ms).
const UNMEASURED_RTT_US: u64 = 1000;

/// How long peers have to vouch for a suspect before it is declared dead.
const PROBE_WINDOW: Duration = Duration::from_millis(300);

struct Backoff {
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

pub struct State {
    me: String,
    my_url: String,
    pub incarnation: u64,
    local_version: u64,
    local_entries: Vec<CatalogEntry>,
    announced: bool,
    /// Nodes this node refuses to talk to (fault injection in tests).
    pub blocked: HashSet<String>,
    links: HashMap<String, LinkHandle>,
    members: HashMap<String, Member>,
    catalogs: HashMap<String, (u64, Vec<CatalogEntry>)>,
    /// URLs being dialed now.
    pub dialing: HashSet<String>,
    backoff: HashMap<String, Backoff>,
    seeds: Vec<String>,
    next_link: u64,
    rng: u64,
}

impl State {
    pub fn new(config: &FabricConfig) -> Self {
        // A restarted node outranks rumours about its previous life, and its catalog versions
        // outrank the ones peers still hold from that life: both start at the start time.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        State {
            me: config.node_id.clone(),
            my_url: config.advertise_url.clone(),
            incarnation: started,
            local_version: started,
            announced: false,
            local_entries: Vec::new(),
            links: HashMap::new(),
            members: HashMap::new(),
            catalogs: HashMap::new(),
            dialing: HashSet::new(),
            backoff: HashMap::new(),
            seeds: config.seeds.clone(),
            blocked: HashSet::new(),
            next_link: 1,
            rng: super::auth::nonce()
                .iter()
                .fold(0x9e37_79b9_7f4a_7c15u64, |h, b| h.rotate_left(8) ^ u64::from(*b)),
        }
    }

    pub fn local_version(&self) -> u64 {
        self.local_version
    }

    /// Replaces this node's own catalog; returns the message announcing it when it changed.
    pub fn set_local_catalog(&mut self, entries: Vec<CatalogEntry>, me: &str) -> Option<PeerMessage> {
        if entries == self.local_entries && self.announced {
            return None;
        }
        self.announced = true;
        self.local_entries = entries;
        self.local_version += 1;
        Some(self.local_catalog_message(me))
    }

    pub fn local_catalog_message(&self, me: &str) -> PeerMessage {
        PeerMessage::Catalog {
            node: me.to_string(),
            version: self.local_version,
            entries: self.local_entries.clone(),
        }
    }

    /// Every member this node knows alive, itself included.
    pub fn members_message(&self) -> PeerMessage {
        let mut members: Vec<MemberInfo> = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.status, Status::Alive))
            .map(|(node, m)| MemberInfo {
                node: node.clone(),
                url: m.url.clone(),
                incarnation: m.incarnation,
            })
            .collect();
        members.push(MemberInfo {
            node: self.me.clone(),
            url: self.my_url.clone(),
            incarnation: self.incarnation,
        });
        PeerMessage::Members { members }
    }

    /// Registers a new authenticated link (`dialer`: the node that dialed it). `None` when the
    /// node is cut off, or already linked by the connection both sides keep.
    pub fn add_link(
        &mut self,
        node: &str,
        url: &str,
        dialer: &str,
        tx: mpsc::Sender<PeerMessage>,
    ) -> Option<(u64, Arc<LinkStats>, Arc<tokio::sync::Notify>)> {
        if self.blocked.contains(node) {
            return None;
        }
        let preferred_dialer = if self.me.as_str() < node {
            self.me.clone()
        } else {
            node.to_string()
        };
        if let Some(existing) = self.links.get(node) {
            if existing.dialer == preferred_dialer || dialer != preferred_dialer {
                return None;
            }
            // The new connection is the one both sides keep: close the other.
            existing.close.notify_one();
            self.links.remove(node);
        }
        let id = self.next_link;
        self.next_link += 1;
        let stats = Arc::new(LinkStats::default());
        let close = Arc::new(tokio::sync::Notify::new());
        self.links.insert(
            node.to_string(),
            LinkHandle {
                id,
                tx,
                stats: stats.clone(),
                dialer: dialer.to_string(),
                close: close.clone(),
            },
        );
        self.backoff.remove(url);
        // What the node serves now comes from this link; whatever was held from an earlier link
        // (or an earlier life of the node) is replaced by the catalog it sends first.
        self.catalogs.remove(node);
        let member = self.members.entry(node.to_string()).or_insert_with(|| Member {
            url: url.to_string(),
            incarnation: 0,
            status: Status::Alive,
            since: Instant::now(),
            probed: None,
        });
        member.url = url.to_string();
        member.status = Status::Alive;
        member.since = Instant::now();
        member.probed = None;
        Some((id, stats, close))
    }

    /// Forgets link `id` of `node`; its node becomes a suspect unless it left.
    pub fn remove_link(&mut self, node: &str, id: u64) {
        if self.links.get(node).is_some_and(|l| l.id == id) {
            self.links.remove(node);
            if let Some(member) = self.members.get_mut(node) {
                if member.status == Status::Alive {
                    member.status = Status::Suspect;
                    member.since = Instant::now();
                    member.probed = None;
                }
            }
        }
    }

    pub fn link_senders(&self) -> Vec<(String, mpsc::Sender<PeerMessage>)> {
        self.links
            .iter()
            .map(|(node, l)| (node.clone(), l.tx.clone()))
            .collect()
    }

    /// Learns members from gossip; a higher incarnation revives a dead or departed member.
    pub fn learn_members(&mut self, members: Vec<MemberInfo>) {
        for info in members {
            if info.node == self.me {
                continue;
            }
            match self.members.get_mut(&info.node) {
                Some(member) => {
                    if info.incarnation > member.incarnation {
                        member.incarnation = info.incarnation;
                        member.url = info.url;
                        if matches!(member.status, Status::Dead | Status::Left) {
                            member.status = Status::Suspect;
                            member.since = Instant::now();
                            member.probed = None;
                        }
                    }
                }
                None => {
                    self.members.insert(
                        info.node,
                        Member {
                            url: info.url,
                            incarnation: info.incarnation,
                            status: Status::Suspect,
                            since: Instant::now(),
                            probed: None,
                        },
                    );
                }
            }
        }
    }

    /// Stores `node`'s catalog when it is newer than the one held.
    pub fn learn_catalog(&mut self, node: &str, version: u64, entries: Vec<CatalogEntry>) -> bool {
        match self.catalogs.get(node) {
            Some((held, _)) if *held >= version => false,
            _ => {
                self.catalogs.insert(node.to_string(), (version, entries));
                true
            }
        }
    }

    pub fn catalog_version(&self, node: &str) -> u64 {
        self.catalogs.get(node).map_or(0, |(v, _)| *v)
    }

    /// `node` left: forget its catalog at once. It is dialed again only after a pause, in
    /// case it comes back (a restart keeps its id).
    pub fn node_left(&mut self, node: &str) {
        self.catalogs.remove(node);
        if let Some(member) = self.members.get_mut(node) {
            member.status = Status::Left;
            member.since = Instant::now();
            self.backoff.insert(
                member.url.clone(),
                Backoff {
                    failures: 4,
                    next: Instant::now() + REDIAL_AFTER_LEAVE,
                },
            );
        }
    }

    /// A peer reports `node` dead. Believed unless this node hears from it itself.
    pub fn rumour_dead(&mut self, node: &str, incarnation: u64) {
        if self.links.contains_key(node) {
            return;
        }
        if let Some(member) = self.members.get_mut(node) {
            if member.incarnation <= incarnation && member.status != Status::Left {
                member.status = Status::Dead;
                member.since = Instant::now();
                self.catalogs.remove(node);
            }
        }
    }

    /// Another peer still hears `node`: it stays a suspect (and is dialed) instead of dying.
    pub fn vouched(&mut self, node: &str) {
        if let Some(member) = self.members.get_mut(node) {
            if member.status == Status::Suspect {
                member.since = Instant::now();
                member.probed = None;
            }
        }
    }

    /// Whether this node has a live link to `node` (the answer to a peer's probe).
    pub fn hears(&self, node: &str) -> bool {
        self.links.contains_key(node)
    }

    /// What the maintenance tick should do. A suspect unreachable for `suspect_timeout` is
    /// probed through the other peers; if none of them vouches for it within the probe window,
    /// it is declared dead.
    pub fn plan_maintenance(&mut self, now: Instant, config: &FabricConfig) -> Maintenance {
        let mut plan = Maintenance::default();
        let can_probe = !self.links.is_empty();
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
                Some(at) if now.duration_since(at) < PROBE_WINDOW => {}
                _ => {
                    member.status = Status::Dead;
                    member.since = now;
                    member.probed = None;
                    self.catalogs.remove(node);
                    plan.dead.push((node.clone(), member.incarnation));
                }
            }
        }
        // Dead members are forgotten after a while; until then they are still dialed (with
        // backoff), which is how the two sides of a healed partition find each other again.
        self.members.retain(|_, m| {
            !(matches!(m.status, Status::Dead | Status::Left) && now.duration_since(m.since) > FORGET_DEAD)
        });
        let mut wanted: Vec<String> = Vec::new();
        if self.links.len() < config.max_mesh {
            for (node, member) in &self.members {
                // Every remembered member is dialed while unlinked; backoff keeps it cheap.
                if !self.links.contains_key(node) && !self.blocked.contains(node) {
                    wanted.push(member.url.clone());
                }
            }
            // Seeds are kept dialed (with backoff) until linked, so a node whose peers all
            // forgot it, or a fabric split for longer than members are remembered, rejoins.
            let linked_urls: HashSet<&str> = self
                .links
                .keys()
                .filter_map(|n| self.members.get(n))
                .map(|m| m.url.as_str())
                .collect();
            wanted.extend(self.seeds.iter().filter(|s| !linked_urls.contains(s.as_str())).cloned());
        }
        for url in wanted {
            if url == self.my_url || self.dialing.contains(&url) || plan.dials.contains(&url) {
                continue;
            }
            if self.backoff.get(&url).is_some_and(|b| b.next > now) {
                continue;
            }
            if self.links.len() + self.dialing.len() >= config.max_mesh {
                break;
            }
            self.dialing.insert(url.clone());
            plan.dials.push(url);
        }
        plan
    }

    /// A dial of `url` failed: wait longer (exponential, with jitter) before the next.
    pub fn dial_failed(&mut self, url: &str) {
        self.dialing.remove(url);
        let jitter = self.random() % 1000;
        let backoff = self.backoff.entry(url.to_string()).or_insert(Backoff {
            failures: 0,
            next: Instant::now(),
        });
        backoff.failures = backoff.failures.saturating_add(1);
        let base = Duration::from_millis(100u64.saturating_mul(1 << backoff.failures.min(6))).min(MAX_BACKOFF);
        // ±20 %
        let spread = base.as_millis() as u64 * (800 + jitter * 400 / 1000) / 1000;
        backoff.next = Instant::now() + Duration::from_millis(spread);
    }

    /// A dial of `url` reached an authenticated node (linked, or already linked).
    pub fn dial_done(&mut self, url: &str, linked: bool) {
        if linked {
            self.dialing.remove(url);
        } else {
            // Already linked through another connection: do not redial it at once.
            self.dial_failed(url);
        }
    }

    /// The replica for a call: among linked nodes whose catalog has a matching entry, the
    /// better of two random picks by round-trip time × calls in flight.
    pub fn choose(
        &mut self,
        fun: &str,
        selector: &Selector,
        exclude: &[String],
    ) -> Option<(String, u64, mpsc::Sender<PeerMessage>, Arc<LinkStats>)> {
        let candidates: Vec<String> = self
            .catalogs
            .iter()
            .filter(|(node, _)| !exclude.contains(node) && self.links.contains_key(*node))
            .filter(|(_, (_, entries))| entries.iter().any(|e| matches(e, fun, selector)))
            .map(|(node, _)| node.clone())
            .collect();
        let (r1, r2) = (self.random(), self.random());
        let picked = match candidates.len() {
            0 => return None,
            1 => candidates[0].clone(),
            n => {
                let a = (r1 % n as u64) as usize;
                let mut b = (r2 % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let score = |node: &String| {
                    self.links.get(node).map_or(u64::MAX, |l| {
                        // A link not measured yet counts as slow-ish, never as the fastest.
                        let rtt = match l.stats.rtt_us.load(Ordering::Relaxed) {
                            0 => UNMEASURED_RTT_US,
                            measured => measured,
                        };
                        rtt.saturating_mul(1 + l.stats.inflight.load(Ordering::Relaxed) as u64)
                    })
                };
                let (a, b) = (&candidates[a], &candidates[b]);
                if score(a) <= score(b) {
                    a.clone()
                } else {
                    b.clone()
                }
            }
        };
        let link = self.links.get(&picked)?;
        Some((picked, link.id, link.tx.clone(), link.stats.clone()))
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn peers_report(&self, config: &FabricConfig) -> Value {
        let mut peers: Vec<Value> = self
            .members
            .iter()
            .map(|(node, m)| {
                let link = self.links.get(node);
                json!({
                    "node": node,
                    "url": m.url,
                    "state": match m.status {
                        Status::Alive => "alive",
                        Status::Suspect => "suspect",
                        Status::Dead => "dead",
                        Status::Left => "left",
                    },
                    "linked": link.is_some(),
                    "rtt_us": link.map(|l| l.stats.rtt_us.load(Ordering::Relaxed)),
                    "inflight": link.map(|l| l.stats.inflight.load(Ordering::Relaxed)),
                    "bytes_out": link.map(|l| l.stats.bytes_out.load(Ordering::Relaxed)),
                    "bytes_in": link.map(|l| l.stats.bytes_in.load(Ordering::Relaxed)),
                    "commands": self.catalogs.get(node).map_or(0, |(_, e)| e.len()),
                })
            })
            .collect();
        peers.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        json!({ "node": config.node_id, "cluster": config.cluster, "url": config.advertise_url, "peers": peers })
    }

    pub fn catalog_report(&self, me: &str) -> Value {
        let mut rows: Vec<Value> = Vec::new();
        let own = std::iter::once((me, &self.local_entries));
        let others = self
            .catalogs
            .iter()
            .map(|(node, (_, entries))| (node.as_str(), entries));
        for (node, entries) in own.chain(others) {
            for e in entries {
                rows.push(json!({ "command": e.command, "tags": e.tags, "version": e.version, "digest": e.digest, "node": node }));
            }
        }
        rows.sort_by(|a, b| {
            (a["command"].as_str(), a["node"].as_str()).cmp(&(b["command"].as_str(), b["node"].as_str()))
        });
        Value::Array(rows)
    }
}

/// Whether catalog entry `e` can serve `fun` under `selector`.
fn matches(e: &CatalogEntry, fun: &str, selector: &Selector) -> bool {
    e.command == fun
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
