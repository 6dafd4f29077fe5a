//! Gossip on a link: records checked and relayed, anti-entropy, departures, deaths and the
//! probes that confirm them.

use tokio::sync::mpsc;

use super::state::{Accepted, Rebuttal, Rumour};
use super::wire::{Death, NodeRecord, PeerMessage};
use super::Fabric;

/// What the link does after a gossip message.
pub enum Flow {
    Continue,
    /// The peer announced its departure: close the link.
    Left,
}

impl Fabric {
    /// Handles a gossip message from `peer` (whose link queue is `tx`).
    pub(super) fn on_gossip(&self, peer: &str, tx: &mpsc::Sender<PeerMessage>, message: PeerMessage) -> Flow {
        match message {
            PeerMessage::Record(record) => self.on_record(peer, record),
            PeerMessage::Digest { summary } => {
                let differs = self.with_state(|s| (s.summary() != summary).then(|| s.versions_message(false)));
                if let Some(versions) = differs {
                    let _ = tx.try_send(versions);
                }
            }
            PeerMessage::Versions { alive, dead, opening } => {
                let comparison = self.with_state(|s| s.compare(alive, dead, opening));
                if !comparison.want.is_empty() {
                    let _ = tx.try_send(PeerMessage::Want { nodes: comparison.want });
                }
                for record in comparison.own.into_iter().chain(comparison.revive) {
                    let _ = tx.try_send(PeerMessage::Record(record));
                }
                if let Some(incarnation) = comparison.refute {
                    self.refute(peer, incarnation);
                }
                for (death, rumour) in comparison.rumours {
                    self.spread_death(peer, tx, death, rumour);
                }
            }
            PeerMessage::Want { nodes } => {
                let records = self.with_state(|s| {
                    s.grafted_by(peer);
                    s.records_of(&nodes)
                });
                for record in records {
                    let _ = tx.try_send(record);
                }
            }
            PeerMessage::Have { records } => self.with_state(|s| s.announced(peer, records)),
            PeerMessage::Prune => self.with_state(|s| s.pruned_by(peer)),
            PeerMessage::Leave { node } => {
                if node == self.config.node_id {
                    if !self.is_leaving() {
                        self.refute(peer, 0);
                    }
                } else if self.with_state(|s| s.node_left(&node)) {
                    tracing::info!(node = %node, told_by = %peer, "node left");
                    self.relay(peer, PeerMessage::Leave { node: node.clone() });
                }
                if node == peer {
                    return Flow::Left;
                }
            }
            PeerMessage::Dead(death) => {
                if death.node == self.config.node_id {
                    if !self.is_leaving() {
                        match self.with_state(|s| s.rebuttal(&death)) {
                            Rebuttal::Old => {}
                            Rebuttal::Record(record) => {
                                let _ = tx.try_send(PeerMessage::Record(record));
                            }
                            Rebuttal::Refute => self.refute(peer, death.incarnation),
                        }
                    }
                } else {
                    let rumour = self.with_state(|s| s.rumour_dead(&death));
                    self.spread_death(peer, tx, death, rumour);
                }
            }
            PeerMessage::Probe { node } => {
                let alive = self.with_state(|s| s.hears(&node));
                let _ = tx.try_send(PeerMessage::ProbeAck { node, alive });
            }
            PeerMessage::ProbeAck { node, alive } => {
                if alive {
                    tracing::debug!(peer = %node, vouched_by = %peer, "a suspect is still heard by another peer");
                    self.with_state(|s| s.reached(&node));
                }
            }
            other => tracing::debug!(peer = %peer, message = ?other, "not a gossip message"),
        }
        Flow::Continue
    }

    /// Takes a record (relayed or from its node) and relays it when it is news.
    fn on_record(&self, peer: &str, record: NodeRecord) {
        match self.with_state(|s| s.accept_record(&record, peer)) {
            Accepted::New { served_changed } => {
                let targets = self.with_state(|s| s.relay_targets(&record.body, peer, served_changed));
                let message = PeerMessage::Record(record);
                for tx in targets {
                    let _ = tx.try_send(message.clone());
                }
            }
            Accepted::Stale => {
                if let Some(tx) = self.with_state(|s| s.duplicate_from(peer, &record.body.node, record.body.version)) {
                    let _ = tx.try_send(PeerMessage::Prune);
                }
            }
            Accepted::Refused(reason) => {
                tracing::warn!(node = %record.body.node, relayed_by = %peer, "refused a record: {reason}");
            }
        }
    }

    /// Acts on a rumour of a node's death (from `from`, whose link queue is `tx`): relays what is
    /// believed; when linked to the node, answers with a newer record of it or passes the rumour
    /// to the node itself (so it can refute).
    fn spread_death(&self, from: &str, tx: &mpsc::Sender<PeerMessage>, death: Death, rumour: Rumour) {
        match rumour {
            Rumour::Believed => {
                tracing::warn!(peer = %death.node, told_by = %from, "peer reported dead; its commands are withdrawn");
                self.relay(from, PeerMessage::Dead(death));
            }
            Rumour::Subject(subject) => {
                let _ = subject.try_send(PeerMessage::Dead(death));
            }
            Rumour::Answer(record) => {
                let _ = tx.try_send(PeerMessage::Record(record));
            }
            Rumour::Ignored => {}
        }
    }

    /// Refutes a rumour (heard from `from`) that this node is dead or gone.
    fn refute(&self, from: &str, rumoured: u64) {
        tracing::warn!(rumoured_by = %from, "refuting a rumour of this node's death");
        let record = self.with_state(|s| s.refute(rumoured));
        self.broadcast(record);
    }

    /// Queues `message` on every link but `from`'s.
    fn relay(&self, from: &str, message: PeerMessage) {
        for (node, tx) in self.with_state(|s| s.link_senders()) {
            if node != from {
                let _ = tx.try_send(message.clone());
            }
        }
    }
}
