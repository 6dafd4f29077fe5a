//! Clusters linked by gateways: which clusters a node bridges to, the summaries gateway links
//! carry (path vectors of clusters, with what each serves), and the way a call takes towards
//! another cluster.
//!
//! Inside a cluster every node holds every node's record. Between clusters only gateway links
//! exist, and they carry [`RouteAd`]s: for each cluster the sender reaches, the clusters on the
//! way, an estimated round trip, and a summary of the commands served there. A gateway puts the
//! routes it learned in its own record, so every node of its cluster knows what lies beyond and
//! through which gateway. A route never passes a cluster twice, and routes longer than the hop
//! budget plus one are not advertised (so a node can tell a command out of reach from one that
//! does not exist). A link between tiers carries summaries both ways, and from the higher tier
//! also a default route: a lower tier sends what it does not know upwards (leafnode style).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use super::state::{Admitted, LinkHandle, LinkStats, Route, State};
use super::wire::{CatalogEntry, PeerMessage, RouteAd};
use crate::plugins::Selector;

/// The cluster of a call that goes wherever its command is served.
pub const ANY_CLUSTER: &str = "*";

/// Most routes, and most command summaries in all, taken from one gateway peer (and put in a
/// table or this node's record).
const MAX_ADS: usize = 1024;
const MAX_SUMMARIES: usize = 16_384;

/// Longest path of clusters taken (a hop budget is at most 255; longer paths are noise).
const MAX_PATH: usize = 256;

/// Gateway links a node keeps at most.
const MAX_GATEWAYS: usize = 64;

/// Keeps a table within the bounds: at most [`MAX_ADS`] routes and [`MAX_SUMMARIES`] summaries.
fn bounded(mut routes: Vec<RouteAd>) -> Vec<RouteAd> {
    routes.truncate(MAX_ADS);
    let mut room = MAX_SUMMARIES;
    for ad in &mut routes {
        ad.commands.truncate(room);
        room -= ad.commands.len();
    }
    routes
}

/// Which other clusters a node links to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bridging {
    /// None (the default).
    #[default]
    Isolated,
    /// These.
    Allow(Vec<String>),
    /// Every cluster.
    Permissive,
}

impl Bridging {
    /// From `--bridge` values: cluster ids, or `*` for every cluster.
    pub fn from_list(values: &[String]) -> Bridging {
        let values: Vec<String> = values.iter().filter(|v| !v.is_empty()).cloned().collect();
        if values.iter().any(|v| v == ANY_CLUSTER) {
            Bridging::Permissive
        } else if values.is_empty() {
            Bridging::Isolated
        } else {
            Bridging::Allow(values)
        }
    }

    pub fn allows(&self, cluster: &str) -> bool {
        match self {
            Bridging::Isolated => false,
            Bridging::Allow(list) => list.iter().any(|c| c == cluster),
            Bridging::Permissive => true,
        }
    }
}

impl FromStr for Bridging {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Bridging::from_list(
            &s.split(',').map(str::to_string).collect::<Vec<_>>(),
        ))
    }
}

/// A link to a node of another cluster.
pub struct Gateway {
    pub cluster: String,
    pub tier: u8,
    pub url: String,
    pub handle: LinkHandle,
    /// What the peer advertised last.
    pub learned: Vec<RouteAd>,
    /// What this node advertised to it last (`None`: send again).
    pub sent: Option<Vec<RouteAd>>,
}

/// A route table to queue on a gateway link.
pub type TableSend = (u64, Vec<RouteAd>);

/// Where a call is headed.
pub enum Want<'a> {
    /// Cluster `0` (a rerouted reply, or a call for a named cluster).
    Cluster(&'a str),
    /// Any cluster (or the selector's `target_cluster`) serving `fun`.
    Serving { fun: &'a str, selector: &'a Selector },
}

/// The next step towards another cluster.
pub struct Step {
    pub route: Route,
    /// The cluster the call is for ([`ANY_CLUSTER`] on a default route).
    pub cluster: String,
    /// The step crosses a cluster boundary (a gateway link of this node).
    pub crosses: bool,
}

/// Why no step was found.
pub enum Miss {
    Unknown,
    /// Served only farther than the hop budget allows.
    BeyondBudget {
        cluster: String,
        crossings: usize,
    },
}

enum Hop {
    Gateway(String),
    Member(String),
}

/// A round trip in whole milliseconds, floored to 5 ms so that jitter does not re-announce
/// routes.
fn metric_ms(stats: &LinkStats) -> u64 {
    match stats.rtt_us.load(Ordering::Relaxed) {
        // Not measured yet: never the fastest.
        0 => 5,
        rtt => rtt / 5000 * 5,
    }
}

/// A command as a summary: without node, digest or plugin.
fn summary(e: &CatalogEntry) -> CatalogEntry {
    let mut tags = e.tags.clone();
    tags.sort();
    tags.dedup();
    CatalogEntry {
        command: e.command.clone(),
        tags,
        version: e.version.clone(),
        digest: String::new(),
        tenant: e.tenant.clone(),
        public: e.public,
        plugin: String::new(),
        size: 0,
        replica_of: None,
    }
}

impl State {
    /// Registers a gateway link (a peer of another cluster); `None` when cut off or this node
    /// has all the gateway links it keeps, retired from the start when already linked by the
    /// connection both sides keep.
    #[allow(clippy::too_many_arguments)]
    pub fn add_gateway(
        &mut self,
        id: u64,
        node: &str,
        url: &str,
        cluster: &str,
        tier: u8,
        dialer: &str,
    ) -> Option<Admitted> {
        if self.blocked.contains(node) || (self.gateways.len() >= MAX_GATEWAYS && !self.gateways.contains_key(node)) {
            return None;
        }
        let preferred_dialer = if self.me.as_str() < node { &self.me } else { node };
        let current = match self.gateways.get(node) {
            Some(existing) if existing.handle.dialer == preferred_dialer || dialer != preferred_dialer => false,
            Some(existing) => {
                let link = existing.handle.id;
                self.retire(link);
                self.gateways.remove(node);
                true
            }
            None => true,
        };
        let admitted = self.admit(id, node, current);
        if !current {
            return Some(admitted);
        }
        let handle = admitted.handle(dialer);
        if self.seeds.iter().any(|s| s == url) {
            self.seeds_joined.insert(url.to_string());
            self.gateway_seeds.insert(url.to_string());
        }
        self.backoff.remove(url);
        self.gateways.insert(
            node.to_string(),
            Gateway {
                cluster: cluster.to_string(),
                tier,
                url: url.to_string(),
                handle,
                learned: Vec::new(),
                sent: None,
            },
        );
        self.federation_changed();
        Some(admitted)
    }

    /// Forgets gateway link `id` of `node`.
    pub fn remove_gateway(&mut self, node: &str, id: u64) {
        if self.gateways.get(node).is_some_and(|g| g.handle.id == id) {
            self.gateways.remove(node);
            self.federation_changed();
        }
    }

    /// Takes the routes a gateway peer advertises. Routes through this node's own cluster are
    /// dropped (they would loop), and so is anything past the bounds.
    pub fn learn_routes(&mut self, node: &str, mut ads: Vec<RouteAd>) {
        let mine = self.cluster.clone();
        let Some(peer_cluster) = self.gateways.get(node).map(|g| g.cluster.clone()) else {
            return;
        };
        // A path starts at the peer's cluster, never passes a cluster twice (nor this one) and
        // is no longer than any hop budget.
        ads.retain(|ad| {
            let distinct: std::collections::BTreeSet<&String> = ad.path.iter().collect();
            ad.path.first() == Some(&peer_cluster)
                && ad.path.len() <= MAX_PATH
                && distinct.len() == ad.path.len()
                && !ad.path.contains(&mine)
        });
        let ads = bounded(ads);
        if let Some(gateway) = self.gateways.get_mut(node) {
            if gateway.learned != ads {
                gateway.learned = ads;
                self.federation_changed();
            }
        }
    }

    /// Something the routes depend on changed: recompute them soon.
    pub fn federation_changed(&mut self) {
        self.federation_dirty = true;
    }

    /// Recomputes this node's routes: returns its re-signed record when they changed, and the
    /// tables to send to gateway peers whose table changed.
    pub fn federation_update(&mut self) -> (Option<PeerMessage>, Vec<TableSend>) {
        let routes = self.own_routes();
        let publish = (routes != self.local_routes).then(|| {
            self.local_routes = routes;
            self.republish()
        });
        let mut sends = Vec::new();
        let peers: Vec<(String, String, u8)> = self
            .gateways
            .iter()
            .map(|(node, g)| (node.clone(), g.cluster.clone(), g.tier))
            .collect();
        for (node, cluster, tier) in peers {
            let table = self.table_for(&cluster, tier);
            if let Some(gateway) = self.gateways.get_mut(&node) {
                if gateway.sent.as_ref() != Some(&table) {
                    gateway.sent = Some(table.clone());
                    sends.push((gateway.handle.id, table));
                }
            }
        }
        (publish, sends)
    }

    /// A table could not be queued for a gateway peer: send it again at the next periodic
    /// update (not at once: a peer that does not read would keep this node busy).
    pub fn routes_unsent(&mut self, link: u64) {
        for gateway in self.gateways.values_mut() {
            if gateway.handle.id == link {
                gateway.sent = None;
            }
        }
    }

    /// The routes of this node's record: for each cluster its gateway links reach, the best
    /// one (fewest crossings, then the lowest round trip), and the best default route.
    fn own_routes(&self) -> Vec<RouteAd> {
        let mut best: BTreeMap<String, RouteAd> = BTreeMap::new();
        for gateway in self.gateways.values() {
            let rtt = metric_ms(&gateway.handle.stats);
            for ad in &gateway.learned {
                let mut ad = ad.clone();
                ad.metric_ms = ad.metric_ms.saturating_add(rtt);
                let key = if ad.default {
                    ANY_CLUSTER.to_string()
                } else {
                    ad.cluster().to_string()
                };
                let better = best
                    .get(&key)
                    .is_none_or(|held| (ad.path.len(), ad.metric_ms) < (held.path.len(), held.metric_ms));
                if better {
                    best.insert(key, ad);
                }
            }
        }
        let mut routes: Vec<RouteAd> = best.into_values().collect();
        routes.sort_by(|a, b| (a.default, a.cluster()).cmp(&(b.default, b.cluster())));
        bounded(routes)
    }

    /// What this node's cluster serves, as summaries.
    fn cluster_summary(&self) -> Vec<CatalogEntry> {
        let mut commands: Vec<CatalogEntry> = self
            .local_entries
            .iter()
            .chain(self.records.values().flat_map(|r| r.body.entries.iter()))
            .map(summary)
            .collect();
        commands.sort_by(|a, b| {
            (&a.command, &a.version, &a.tenant, &a.tags).cmp(&(&b.command, &b.version, &b.tenant, &b.tags))
        });
        commands.dedup();
        commands
    }

    /// The table for a gateway peer of `cluster` at `tier`: this cluster and the best route to
    /// every cluster reachable through it (by any gateway of this cluster) that does not pass
    /// the peer's cluster, up to the hop budget plus one; for a peer of a lower tier, also a
    /// default route (it sends up whatever it does not know).
    fn table_for(&self, cluster: &str, tier: u8) -> Vec<RouteAd> {
        let mut best: BTreeMap<&str, (usize, u64, &RouteAd)> = BTreeMap::new();
        let records = self.records.values().map(|r| &r.body.routes);
        for ad in std::iter::once(&self.local_routes).chain(records).flatten() {
            if ad.default || ad.path.iter().any(|c| c == cluster || *c == self.cluster) {
                continue;
            }
            if ad.path.len() > usize::from(self.hop_budget) {
                continue;
            }
            let key = (ad.path.len(), ad.metric_ms);
            if best.get(ad.cluster()).is_none_or(|held| key < (held.0, held.1)) {
                best.insert(ad.cluster(), (key.0, key.1, ad));
            }
        }
        let mut table = vec![RouteAd {
            path: vec![self.cluster.clone()],
            metric_ms: 0,
            default: false,
            commands: self.cluster_summary(),
        }];
        let mut onward: Vec<RouteAd> = best
            .into_values()
            .map(|(_, _, ad)| {
                let mut path = Vec::with_capacity(ad.path.len() + 1);
                path.push(self.cluster.clone());
                path.extend(ad.path.iter().cloned());
                RouteAd {
                    path,
                    metric_ms: ad.metric_ms,
                    default: false,
                    commands: ad.commands.clone(),
                }
            })
            .collect();
        onward.sort_by(|a, b| a.cluster().cmp(b.cluster()));
        table.extend(onward);
        if tier > self.tier {
            table.push(RouteAd {
                path: vec![self.cluster.clone()],
                metric_ms: 0,
                default: true,
                commands: Vec::new(),
            });
        }
        bounded(table)
    }

    /// Whether a node of this cluster (this one included) serves `fun`.
    pub fn served_in_cluster(&self, fun: &str, selector: &Selector) -> bool {
        self.local_entries
            .iter()
            .chain(self.records.values().flat_map(|r| r.body.entries.iter()))
            .any(|e| super::state::matches(e, fun, selector))
    }

    /// The next step towards another cluster: over this node's own gateway links, or to the
    /// node of this cluster whose gateway links reach it. Never into a cluster in `visited`,
    /// never through a node in `avoid`; at most `budget` crossings. The nearest (lowest round
    /// trip, then fewest crossings) wins; a default route is taken only when nothing is known.
    pub fn toward(&mut self, want: Want<'_>, visited: &[String], avoid: &[String], budget: u8) -> Result<Step, Miss> {
        let usable = |ad: &RouteAd| !ad.path.iter().any(|c| visited.contains(c));
        let wanted = |ad: &RouteAd| match &want {
            Want::Cluster(cluster) => ad.cluster() == *cluster,
            Want::Serving { fun, selector } => {
                selector.target_cluster.as_deref().is_none_or(|t| t == ad.cluster())
                    && ad.commands.iter().any(|e| super::state::matches(e, fun, selector))
            }
        };
        // (metric, crossings, hop, cluster)
        let mut found: Vec<(u64, usize, Hop, String)> = Vec::new();
        let mut defaults: Vec<(u64, Hop)> = Vec::new();
        for (node, gateway) in &self.gateways {
            if avoid.contains(node) || visited.contains(&gateway.cluster) {
                continue;
            }
            let rtt = metric_ms(&gateway.handle.stats);
            for ad in gateway.learned.iter().filter(|ad| usable(ad)) {
                let metric = ad.metric_ms.saturating_add(rtt);
                if ad.default {
                    defaults.push((metric, Hop::Gateway(node.clone())));
                } else if wanted(ad) {
                    found.push((
                        metric,
                        ad.path.len(),
                        Hop::Gateway(node.clone()),
                        ad.cluster().to_string(),
                    ));
                }
            }
        }
        for (node, record) in &self.records {
            if avoid.contains(node) {
                continue;
            }
            for ad in record.body.routes.iter().filter(|ad| usable(ad)) {
                if ad.default {
                    defaults.push((ad.metric_ms, Hop::Member(node.clone())));
                } else if wanted(ad) {
                    found.push((
                        ad.metric_ms,
                        ad.path.len(),
                        Hop::Member(node.clone()),
                        ad.cluster().to_string(),
                    ));
                }
            }
        }
        let budget = usize::from(budget);
        let beyond = found
            .iter()
            .filter(|(_, crossings, _, _)| *crossings > budget)
            .min_by_key(|(_, crossings, _, _)| *crossings)
            .map(|(_, crossings, _, cluster)| (cluster.clone(), *crossings));
        found.retain(|(_, crossings, _, _)| *crossings <= budget);
        // Nearest first (a node that served badly counts as farther); among equals, a node's
        // own gateway link before a member's.
        let cost = |metric: u64, hop: &Hop| {
            let node = match hop {
                Hop::Gateway(n) | Hop::Member(n) => n,
            };
            (metric + 1).saturating_mul(self.scores.factor(node, self.now()))
        };
        found
            .sort_by_key(|(metric, crossings, hop, _)| (cost(*metric, hop), *crossings, matches!(hop, Hop::Member(_))));
        for (_, _, hop, cluster) in found {
            if let Some(step) = self.step(hop, cluster, avoid) {
                return Ok(step);
            }
        }
        if let Some((cluster, crossings)) = beyond {
            return Err(Miss::BeyondBudget { cluster, crossings });
        }
        if budget > 0 {
            defaults.sort_by_key(|(metric, hop)| (*metric, matches!(hop, Hop::Member(_))));
            for (_, hop) in defaults {
                if let Some(step) = self.step(hop, ANY_CLUSTER.to_string(), avoid) {
                    return Ok(step);
                }
            }
        }
        Err(Miss::Unknown)
    }

    fn step(&mut self, hop: Hop, cluster: String, avoid: &[String]) -> Option<Step> {
        match hop {
            Hop::Gateway(node) => {
                let gateway = self.gateways.get(&node)?;
                let (link, stats) = (gateway.handle.id, gateway.handle.stats.clone());
                let inflight = self.inflight.entry(node.clone()).or_default().clone();
                Some(Step {
                    route: Route {
                        target: node.clone(),
                        via: node,
                        link,
                        stats,
                        inflight,
                    },
                    cluster,
                    crosses: true,
                })
            }
            Hop::Member(node) => {
                let route = self.next_hop(&node, avoid)?;
                Some(Step {
                    route,
                    cluster,
                    crosses: false,
                })
            }
        }
    }

    /// The link a rerouted reply for node `to` of `cluster` leaves on, and the node it is
    /// addressed to on this leg.
    pub fn reply_route(&mut self, to: &str, cluster: &str) -> Option<Route> {
        if cluster == self.cluster {
            return self.next_hop(to, &[]);
        }
        let visited = [self.cluster.clone()];
        self.toward(Want::Cluster(cluster), &visited, &[], u8::MAX)
            .ok()
            .map(|s| s.route)
    }

    /// The gateway links, for `weft peers`.
    pub fn gateways_report(&self) -> Vec<serde_json::Value> {
        let mut rows: Vec<serde_json::Value> = self
            .gateways
            .iter()
            .map(|(node, g)| {
                serde_json::json!({
                    "node": node,
                    "url": g.url,
                    "cluster": g.cluster,
                    "tier": g.tier,
                    "rtt_us": g.handle.stats.rtt_us.load(Ordering::Relaxed),
                    "clusters": g.learned.iter().filter(|a| !a.default).map(|a| a.cluster()).collect::<Vec<_>>(),
                    "default_route": g.learned.iter().any(|a| a.default),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        rows
    }

    /// The commands of other clusters this node can reach, for `weft catalog`: one row per
    /// command and cluster, by the best route.
    pub fn federated_catalog(&self, selector: &Selector) -> Vec<serde_json::Value> {
        let mut best: BTreeMap<String, (usize, u64, String, &RouteAd)> = BTreeMap::new();
        let own = self.gateways.iter().flat_map(|(node, g)| {
            let rtt = metric_ms(&g.handle.stats);
            g.learned
                .iter()
                .map(move |ad| (node.clone(), ad.metric_ms.saturating_add(rtt), ad))
        });
        let members = self
            .records
            .iter()
            .flat_map(|(node, r)| r.body.routes.iter().map(move |ad| (node.clone(), ad.metric_ms, ad)));
        for (via, metric, ad) in own.chain(members) {
            if ad.default {
                continue;
            }
            let key = (ad.path.len(), metric);
            if best.get(ad.cluster()).is_none_or(|held| key < (held.0, held.1)) {
                best.insert(ad.cluster().to_string(), (key.0, key.1, via, ad));
            }
        }
        let mut rows = Vec::new();
        for (cluster, (crossings, metric, via, ad)) in best {
            for e in ad.commands.iter().filter(|e| selector.sees(&e.tenant, e.public)) {
                rows.push(serde_json::json!({
                    "command": e.command, "tags": e.tags, "version": e.version, "tenant": e.tenant,
                    "public": e.public, "cluster": cluster, "crossings": crossings, "metric_ms": metric,
                    "via": via,
                }));
            }
        }
        rows
    }

    /// Adds `delay` to every frame this node sends to `nodes` (fault injection).
    pub fn set_delay(&mut self, nodes: &[String], delay_us: u64) {
        for node in nodes {
            if delay_us == 0 {
                self.delays.remove(node);
            } else {
                self.delays.insert(node.clone(), delay_us);
            }
            let stats = self
                .links
                .get(node)
                .map(|l| l.stats.clone())
                .or_else(|| self.gateways.get(node).map(|g| g.handle.stats.clone()));
            if let Some(stats) = stats {
                stats.delay_us.store(delay_us, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridging_isolates_by_default_and_allows_what_it_lists() {
        assert!(!Bridging::from_list(&[]).allows("beta"));
        let allow = Bridging::from_list(&["beta".into(), "gamma".into()]);
        assert!(allow.allows("beta") && allow.allows("gamma") && !allow.allows("delta"));
        assert!(Bridging::from_list(&["*".into()]).allows("anything"));
        assert_eq!(
            "a,b".parse::<Bridging>().ok(),
            Some(Bridging::Allow(vec!["a".into(), "b".into()]))
        );
    }
}
