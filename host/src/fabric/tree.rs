//! The tree records are pushed along, after Plumtree (Leitão, Pereira and Rodrigues, 2007).
//!
//! A new record version is pushed on every link at first. A link that delivers a version this
//! node holds already leaves the tree: this node tells the peer (`Prune`) and both ends stop
//! pushing records on it. On such a lazy link a node only announces the versions it takes
//! (`Have`, batched each maintenance tick). A version announced and not pushed within
//! `GRAFT_WAIT` is asked for (`Want`), which puts the link back on the tree. Each version then
//! crosses about one link per node instead of every link; the announcements repair the tree
//! when a link on it goes away. A record's owner still sends it on all its links.
//!
//! Most versions only change a node's links. A version that changes what its node serves (or
//! routes to other clusters), compared with the version held, is flooded on every link instead:
//! a command added to a running node is callable everywhere after the fewest hops, not after a
//! walk down the tree. Duplicates of a flooded version are expected and prune nothing. The
//! first record of a node (new, or back from the dead) has nothing to compare with and goes down
//! the tree: at a heal or a start every node has one, and flooding them all is what the tree
//! saves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::state::State;
use super::wire::{PeerMessage, RecordBody};

/// How long a version announced on a lazy link may take to come by the tree before it is
/// asked for. Longer than a few hops on a busy machine; a graft made too early only costs a
/// duplicate and a prune.
pub const GRAFT_WAIT: Duration = Duration::from_millis(200);

/// Versions waited for at most (a peer's announcements cannot grow the map without bound).
const MAX_MISSING: usize = 4096;

/// Announcements queued for one link at most between two ticks.
const MAX_HAVES: usize = 1024;

/// Links remembered per awaited version: the first is asked, or the next still linked when it
/// is gone.
const ANNOUNCERS: usize = 3;

/// Which links are on the tree, and what lazy links announced.
#[derive(Default)]
pub struct Tree {
    /// Links records are announced on, not pushed.
    lazy: BTreeSet<String>,
    /// Announcements to send at the next tick, per link.
    haves: BTreeMap<String, Vec<(String, u64)>>,
    /// Versions announced and not received yet, per node.
    missing: BTreeMap<String, Missing>,
    /// The last version of each node that was flooded.
    flooded: BTreeMap<String, u64>,
}

struct Missing {
    version: u64,
    /// The links that announced it, first announcer first.
    from: Vec<String>,
    due: Instant,
}

impl Tree {
    /// A new link is on the tree.
    pub fn linked(&mut self, node: &str) {
        self.lazy.remove(node);
        self.haves.remove(node);
    }
}

impl State {
    /// The links a new record (from `from`: its owner, or a relay) is pushed on: every link
    /// when it is to be flooded (`flood`), else the links on the tree, while lazy links get an
    /// announcement at the next tick. Skipped: the sender, the owner, and the nodes the record
    /// lists as the owner's neighbours (the owner sent it to them when it signed it; a link made
    /// since pulls it).
    pub fn relay_targets(&mut self, record: &RecordBody, from: &str, flood: bool) -> Vec<u64> {
        if self
            .tree
            .missing
            .get(&record.node)
            .is_some_and(|m| m.version <= record.version)
        {
            self.tree.missing.remove(&record.node);
        }
        if flood {
            self.tree.flooded.insert(record.node.clone(), record.version);
        } else if from != record.node {
            // The link that brought it first is on the tree.
            self.tree.lazy.remove(from);
        }
        let mut eager = Vec::new();
        for (node, link) in &self.links {
            if node == from || *node == record.node || record.neighbours.contains(node) {
                continue;
            }
            if !flood && self.tree.lazy.contains(node) {
                let queue = self.tree.haves.entry(node.clone()).or_default();
                if queue.len() < MAX_HAVES {
                    queue.push((record.node.clone(), record.version));
                }
            } else {
                eager.push(link.id);
            }
        }
        eager
    }

    /// `from` pushed a record version of `owner` this node held already: the link leaves the
    /// tree. The link to tell (`Prune`); every time, since the peer may have put the link back
    /// on its tree since (a `Want` of this node's, or a `Prune` lost). Never for the owner's own
    /// push or a flooded version.
    pub fn duplicate_from(&mut self, from: &str, owner: &str, version: u64) -> Option<u64> {
        if from == owner || self.tree.flooded.get(owner) == Some(&version) {
            return None;
        }
        let link = self.links.get(from)?;
        self.tree.lazy.insert(from.to_string());
        Some(link.id)
    }

    /// The peer pruned its link to this node: records are only announced on it.
    pub fn pruned_by(&mut self, peer: &str) {
        if self.links.contains_key(peer) {
            self.tree.lazy.insert(peer.to_string());
        }
    }

    /// The peer asked for records: the link is on the tree again.
    pub fn grafted_by(&mut self, peer: &str) {
        self.tree.lazy.remove(peer);
    }

    /// The peer announced record versions: those this node lacks are asked for unless the tree
    /// brings them within `GRAFT_WAIT`.
    pub fn announced(&mut self, peer: &str, haves: Vec<(String, u64)>) {
        let due = self.now() + GRAFT_WAIT;
        for (node, version) in haves {
            if !self.lacks_record(&node, version) {
                continue;
            }
            let waiting = self.tree.missing.len();
            match self.tree.missing.get_mut(&node) {
                Some(missing) => {
                    missing.version = missing.version.max(version);
                    if missing.from.len() < ANNOUNCERS && !missing.from.iter().any(|f| f == peer) {
                        missing.from.push(peer.to_string());
                    }
                }
                None if waiting < MAX_MISSING => {
                    self.tree.missing.insert(
                        node,
                        Missing {
                            version,
                            from: vec![peer.to_string()],
                            due,
                        },
                    );
                }
                None => {}
            }
        }
    }

    /// What the tree sends at a maintenance tick: the announcements queued, and a `Want` to
    /// each link that announced versions that did not come in time (which grafts it).
    pub fn tree_messages(&mut self) {
        let now = self.now();
        for (node, mut records) in std::mem::take(&mut self.tree.haves) {
            // The newest version of each node.
            records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            records.dedup_by(|later, first| later.0 == first.0);
            self.send(&node, PeerMessage::Have { records });
        }
        let due: Vec<String> = self
            .tree
            .missing
            .iter()
            .filter(|(_, m)| m.due <= now)
            .map(|(node, _)| node.clone())
            .collect();
        let mut wants: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in due {
            let Some(missing) = self.tree.missing.remove(&node) else {
                continue;
            };
            let linked = missing.from.into_iter().find(|peer| self.links.contains_key(peer));
            if let Some(peer) = linked.filter(|_| self.lacks_record(&node, missing.version)) {
                wants.entry(peer).or_default().push(node);
            }
        }
        for (peer, nodes) in wants {
            if self.links.contains_key(&peer) {
                self.tree.lazy.remove(&peer);
                self.send(&peer, PeerMessage::Want { nodes });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::identity::NodeKey;
    use crate::fabric::state::tests::{fresh, link, record, sent};
    use crate::fabric::state::Accepted;
    use crate::fabric::wire::{CatalogEntry, NodeRecord};

    fn entry(command: &str) -> CatalogEntry {
        CatalogEntry {
            command: command.into(),
            tags: Vec::new(),
            version: "1.0.0".into(),
            digest: String::new(),
            tenant: String::new(),
            public: true,
            plugin: "p".into(),
            size: 0,
            replica_of: None,
        }
    }

    #[test]
    fn a_link_that_pushes_a_duplicate_is_pruned_and_only_announced_to() {
        let mut state = fresh("a");
        link(&mut state, "b");
        let c = link(&mut state, "c");
        let x = NodeKey::generate();
        let first = record(&x, "x", 1, 10);
        assert!(matches!(state.accept_record(&first, "b"), Accepted::New { .. }));
        assert_eq!(state.relay_targets(&first.body, "b", false).len(), 1, "pushed on to c");
        // c pushes the same version: a duplicate.
        assert!(matches!(state.accept_record(&first, "c"), Accepted::Stale));
        let prune = state.duplicate_from("c", "x", 10).expect("a duplicate prunes");
        assert_eq!(prune, c);
        assert!(
            state.duplicate_from("x", "x", 10).is_none(),
            "the owner's own push never prunes"
        );

        let second = record(&x, "x", 1, 11);
        assert!(matches!(state.accept_record(&second, "b"), Accepted::New { .. }));
        assert!(
            state.relay_targets(&second.body, "b", false).is_empty(),
            "c is lazy now"
        );
        state.take_outputs();
        state.tree_messages();
        let messages = sent(&mut state);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0, c);
        assert!(matches!(&messages[0].1, PeerMessage::Have { records } if records == &[("x".to_string(), 11)]));

        // A version that changes what x serves is flooded, lazy links included; its duplicates
        // prune nothing.
        let mut body = record(&x, "x", 1, 12).body.clone();
        body.entries.push(entry("x.new"));
        let serving = std::sync::Arc::new(NodeRecord::signed(body, &x).unwrap());
        assert!(matches!(
            state.accept_record(&serving, "b"),
            Accepted::New { served_changed: true }
        ));
        assert_eq!(state.relay_targets(&serving.body, "b", true).len(), 1, "c too");
        state.grafted_by("b");
        assert!(state.duplicate_from("b", "x", 12).is_none());

        // c asks for a record: the link is on the tree again.
        state.grafted_by("c");
        let fourth = record(&x, "x", 1, 13);
        assert!(
            matches!(
                state.accept_record(&fourth, "b"),
                Accepted::New { served_changed: true }
            ),
            "x no longer serves x.new"
        );
        assert_eq!(state.relay_targets(&fourth.body, "b", false).len(), 1);
    }

    #[test]
    fn a_version_announced_and_not_pushed_in_time_is_asked_for() {
        let mut state = fresh("a");
        link(&mut state, "b");
        let c = link(&mut state, "c");
        let x = NodeKey::generate();
        let y = NodeKey::generate();
        state.pruned_by("c");
        state.announced("c", vec![("x".into(), 10), ("y".into(), 5), ("a".into(), 99)]);
        state.take_outputs();
        state.tree_messages();
        assert!(sent(&mut state).is_empty(), "not before the wait");
        // x comes by the tree in time; y does not.
        let pushed = record(&x, "x", 1, 10);
        assert!(matches!(state.accept_record(&pushed, "b"), Accepted::New { .. }));
        state.relay_targets(&pushed.body, "b", false);
        let later = state.now() + GRAFT_WAIT;
        state.set_now(later);
        state.take_outputs();
        state.tree_messages();
        let messages = sent(&mut state);
        let wants: Vec<&PeerMessage> = messages
            .iter()
            .filter(|(link, _)| *link == c)
            .map(|(_, m)| m)
            .filter(|m| matches!(m, PeerMessage::Want { .. }))
            .collect();
        assert!(
            matches!(wants.as_slice(), [PeerMessage::Want { nodes }] if nodes == &["y".to_string()]),
            "{wants:?}"
        );
        state.tree_messages();
        assert!(sent(&mut state).is_empty(), "asked once");
        // Asking grafted the link: c gets the next record pushed.
        let next = record(&y, "y", 1, 6);
        assert!(matches!(state.accept_record(&next, "b"), Accepted::New { .. }));
        assert_eq!(state.relay_targets(&next.body, "b", false).len(), 1);
    }

    #[test]
    fn a_version_whose_first_announcer_went_away_is_asked_of_the_next() {
        let mut state = fresh("a");
        link(&mut state, "b");
        let c = link(&mut state, "c");
        state.pruned_by("b");
        state.pruned_by("c");
        state.announced("b", vec![("x".into(), 10)]);
        state.announced("c", vec![("x".into(), 10)]);
        let id = state.links["b"].id;
        state.remove_link("b", id, false);
        let later = state.now() + GRAFT_WAIT;
        state.set_now(later);
        state.take_outputs();
        state.tree_messages();
        let messages = sent(&mut state);
        assert!(
            matches!(messages.as_slice(), [(link, PeerMessage::Want { nodes })]
                if *link == c && nodes == &["x".to_string()]),
            "asked of c"
        );
    }
}
