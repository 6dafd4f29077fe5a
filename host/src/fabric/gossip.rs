//! Gossip on a link: records checked and relayed, anti-entropy, departures, deaths and the
//! probes that confirm them. Part of the state machine: a message in, messages queued out.

use std::sync::Arc;

use super::state::{Accepted, Rebuttal, Rumour, State};
use super::wire::{Death, NodeRecord, PeerMessage};

/// What the link does after a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The peer announced its departure: close the link.
    Left,
}

impl State {
    /// Handles a gossip message from `peer` that came in on connection `conn`.
    pub fn on_gossip(&mut self, peer: &str, conn: u64, message: PeerMessage) -> Flow {
        match message {
            PeerMessage::Record(record) => self.on_record(peer, record),
            PeerMessage::Digest { summary } => {
                if self.summary() != summary {
                    let versions = self.versions_message(false);
                    self.send_on(conn, versions);
                }
            }
            PeerMessage::Versions { alive, dead, opening } => {
                let comparison = self.compare(alive, dead, opening);
                if !comparison.want.is_empty() {
                    self.send_on(conn, PeerMessage::Want { nodes: comparison.want });
                }
                for record in comparison.own.into_iter().chain(comparison.revive) {
                    self.send_on(conn, PeerMessage::Record(record));
                }
                if let Some(incarnation) = comparison.refute {
                    self.refute_rumour(peer, incarnation);
                }
                for (death, rumour) in comparison.rumours {
                    self.spread_death(peer, conn, death, rumour);
                }
            }
            PeerMessage::Want { nodes } => {
                self.grafted_by(peer);
                for record in self.records_of(&nodes) {
                    self.send_on(conn, record);
                }
            }
            PeerMessage::Have { records } => self.announced(peer, records),
            PeerMessage::Prune => self.pruned_by(peer),
            PeerMessage::Leave { node } => {
                if node == self.me {
                    if !self.leaving {
                        self.refute_rumour(peer, 0);
                    }
                } else if self.node_left(&node) {
                    tracing::info!(node = %node, told_by = %peer, "node left");
                    self.broadcast(Some(peer), PeerMessage::Leave { node: node.clone() });
                }
                if node == peer {
                    return Flow::Left;
                }
            }
            PeerMessage::Dead(death) => {
                if death.node == self.me {
                    if !self.leaving {
                        match self.rebuttal(&death) {
                            Rebuttal::Old => {}
                            Rebuttal::Record(record) => self.send_on(conn, PeerMessage::Record(record)),
                            Rebuttal::Refute => self.refute_rumour(peer, death.incarnation),
                        }
                    }
                } else {
                    let rumour = self.rumour_dead(&death);
                    self.spread_death(peer, conn, death, rumour);
                }
            }
            PeerMessage::Probe { node } => {
                let alive = self.hears(&node);
                self.send_on(conn, PeerMessage::ProbeAck { node, alive });
            }
            PeerMessage::ProbeAck { node, alive } => {
                if alive {
                    tracing::debug!(peer = %node, vouched_by = %peer, "a suspect is still heard by another peer");
                    self.reached(&node);
                }
            }
            other => tracing::debug!(peer = %peer, message = ?other, "not a gossip message"),
        }
        Flow::Continue
    }

    /// Takes a record (relayed or from its node) and relays it when it is news.
    fn on_record(&mut self, peer: &str, record: Arc<NodeRecord>) {
        match self.accept_record(&record, peer) {
            Accepted::New { served_changed } => {
                let targets = self.relay_targets(&record.body, peer, served_changed);
                let message = PeerMessage::Record(record);
                for link in targets {
                    self.send_on(link, message.clone());
                }
            }
            Accepted::Stale => {
                if let Some(link) = self.duplicate_from(peer, &record.body.node, record.body.version) {
                    self.send_on(link, PeerMessage::Prune);
                }
            }
            Accepted::Refused(reason) => {
                tracing::warn!(node = %record.body.node, relayed_by = %peer, "refused a record: {reason}");
            }
        }
    }

    /// Acts on a rumour of a node's death (from `from`, on connection `conn`): relays what is
    /// believed; when linked to the node, answers with a newer record of it or passes the rumour
    /// to the node itself (so it can refute).
    fn spread_death(&mut self, from: &str, conn: u64, death: Death, rumour: Rumour) {
        match rumour {
            Rumour::Believed => {
                tracing::warn!(peer = %death.node, told_by = %from, "peer reported dead; its commands are withdrawn");
                self.broadcast(Some(from), PeerMessage::Dead(death));
            }
            Rumour::Subject => {
                let subject = death.node.clone();
                self.send(&subject, PeerMessage::Dead(death));
            }
            Rumour::Answer(record) => self.send_on(conn, PeerMessage::Record(record)),
            Rumour::Ignored => {}
        }
    }

    /// Refutes a rumour (heard from `from`) that this node is dead or gone.
    fn refute_rumour(&mut self, from: &str, rumoured: u64) {
        tracing::warn!(rumoured_by = %from, "refuting a rumour of this node's death");
        let record = self.refute(rumoured);
        self.broadcast(None, record);
    }
}
