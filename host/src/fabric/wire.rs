//! Messages between nodes: binary WebSocket frames of MessagePack (rmp-serde), after a
//! versioned handshake.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::identity::{self, NodeKey};

/// Version of the peer protocol; nodes of different versions refuse each other.
pub const PROTOCOL_VERSION: u32 = 6;

/// The WebSocket path of the peer protocol on a node's listener.
pub const PEER_PATH: &str = "/fabric";

/// Hops a call may travel to reach the node that runs it.
pub const MAX_HOPS: u8 = 8;

/// Cluster boundaries a call may cross unless the node sets another hop budget.
pub const DEFAULT_HOP_BUDGET: u8 = 8;

/// One peer frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Dialer → listener: who I am, and a fresh nonce to prove yourself on.
    Hello {
        protocol: u32,
        cluster: String,
        node: String,
        url: String,
        key: [u8; 32],
        nonce: [u8; 32],
        /// The sender's tier (0: the top); links between clusters carry summaries up a tier
        /// and a default route down.
        tier: u8,
    },
    /// Listener → dialer: who I am, my proof of the cluster secret and my signature over the
    /// transcript, and my nonce for yours.
    Welcome {
        protocol: u32,
        cluster: String,
        node: String,
        url: String,
        key: [u8; 32],
        nonce: [u8; 32],
        tier: u8,
        proof: [u8; 32],
        signature: Vec<u8>,
    },
    /// Dialer → listener: the dialer's proof and signature.
    Proof {
        proof: [u8; 32],
        signature: Vec<u8>,
    },
    /// Either side: the handshake failed, and why.
    Refused {
        reason: String,
    },

    /// A node's signed record (sent when it changes, and relayed).
    /// Shared: a record relayed on many links is not copied for each.
    Record(std::sync::Arc<NodeRecord>),
    /// Anti-entropy: a hash of the record versions the sender holds.
    Digest {
        summary: u64,
    },
    /// The record versions the sender holds (alive), and the nodes it holds dead. Sent when a
    /// link comes up and when digests differ.
    Versions {
        alive: Vec<(String, u64)>,
        dead: Vec<Death>,
        /// Sent as the link came up, while the peer sent its own: each side pushes the records
        /// that bring back the nodes the other holds dead, so neither asks for them.
        opening: bool,
    },
    /// The sender wants these nodes' records (and records pushed on this link again: see
    /// `fabric::tree`).
    Want {
        nodes: Vec<String>,
    },
    /// The sender took these record versions (node, version); the link does not push them.
    Have {
        records: Vec<(String, u64)>,
    },
    /// The sender got a record it held already on this link: push records on it no more, only
    /// announce them.
    Prune,
    /// `node` leaves the fabric now (relayed).
    Leave {
        node: String,
    },
    /// The sender believes a node is dead (relayed).
    Dead(Death),
    /// The sender drops this link on purpose (its partial view has too many): no failure.
    Unlink,
    /// The sender suspects `node`: does the receiver still hear it?
    Probe {
        node: String,
    },
    /// The answer to a `Probe`.
    ProbeAck {
        node: String,
        alive: bool,
    },

    /// Run a command on `target` (the receiver, or a node it forwards to).
    Call(CallRequest),
    /// The outcome of a `Call`.
    Reply {
        id: u64,
        outcome: Result<Value, WireError>,
    },

    /// Gateway links only: every cluster the sender reaches and what is served there (the
    /// whole table, sent again whenever it changes).
    Routes(Vec<RouteAd>),
    /// A reply finding its way back to the node a call came from, when the way the call came
    /// went down (a gateway died while the call ran).
    Deliver(Delivery),

    /// Liveness and round-trip time.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
}

/// What a node says of itself: where it is, what it serves, whom it links to. Signed by the
/// node's key, so any node may relay it and none can forge it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordBody {
    pub node: String,
    pub key: [u8; 32],
    pub url: String,
    /// Raised by a node to refute rumours of its death.
    pub incarnation: u64,
    /// Raised at every change of the record.
    pub version: u64,
    pub entries: Vec<CatalogEntry>,
    /// The nodes it links to directly (for routing through nodes that are not linked).
    pub neighbours: Vec<String>,
    /// The other clusters it reaches through its gateway links (empty unless it is a gateway).
    pub routes: Vec<RouteAd>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub body: RecordBody,
    pub signature: Vec<u8>,
}

impl NodeRecord {
    /// Signs `body` with the node's key.
    pub fn signed(body: RecordBody, key: &NodeKey) -> Result<Self, rmp_serde::encode::Error> {
        let signature = key.sign(&signed_bytes(&body)?);
        Ok(NodeRecord { body, signature })
    }

    /// Whether the record is signed by the key it names.
    pub fn verify(&self) -> bool {
        signed_bytes(&self.body).is_ok_and(|bytes| identity::verify(&self.body.key, &bytes, &self.signature))
    }
}

fn signed_bytes(body: &RecordBody) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut bytes = b"weft-record\0".to_vec();
    bytes.extend(rmp_serde::to_vec(body)?);
    Ok(bytes)
}

/// One command a node serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    pub command: String,
    pub tags: Vec<String>,
    pub version: String,
    pub digest: String,
    /// The tenant whose plugin serves it.
    pub tenant: String,
    /// Callable by every tenant.
    pub public: bool,
    /// The plugin that serves it (`NAME`, or `TENANT/NAME`).
    pub plugin: String,
    /// The size of its component, in bytes.
    pub size: u64,
    /// The node whose plugin this is a replica of; `None`: the advertising node's own.
    pub replica_of: Option<String>,
}

/// A node held dead: by its incarnation, and the newest version of its record the holder had
/// heard of when it died. A node that holds a newer record has heard from it since and does
/// not believe the death (how the two sides of a healed partition keep each other alive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    pub node: String,
    pub incarnation: u64,
    pub version: u64,
    /// It left (in a peer's list of the members it holds dead or gone): only a new incarnation
    /// brings it back there, not a newer record.
    pub left: bool,
}

impl Death {
    /// Whether a record of the node at `incarnation` and `version` brings it back where this
    /// death is held: a new incarnation does, and, unless it left, a record signed after the
    /// last one heard before the death.
    pub fn answered_by(&self, incarnation: u64, version: u64) -> bool {
        incarnation > self.incarnation || (!self.left && version > self.version)
    }
}

/// A cluster reached through a gateway link, and what is served there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteAd {
    /// The clusters a call crosses into, in order: the first is the peer's, the last the one
    /// that serves. Its length is the number of cluster boundaries crossed.
    pub path: Vec<String>,
    /// Estimated round trip along the path (gateway links' measured RTTs), in ms.
    pub metric_ms: u64,
    /// A default route (to a higher tier): calls for anything not known go this way.
    pub default: bool,
    /// What the last cluster serves: one entry per distinct command, tags, version and tenant
    /// (no node, digest or plugin: a summary).
    pub commands: Vec<CatalogEntry>,
}

impl RouteAd {
    /// The cluster that serves (the end of the path).
    pub fn cluster(&self) -> &str {
        self.path.last().map_or("", String::as_str)
    }
}

/// Where the reply of a call crossing clusters goes when the way back is gone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReturnAddress {
    pub node: String,
    pub cluster: String,
    /// The call's id at that node.
    pub id: u64,
    /// A random number the reply must carry back: only the nodes the call passed know it.
    pub token: u64,
}

/// A rerouted reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub to: ReturnAddress,
    pub outcome: Result<Value, WireError>,
    /// Hops it may still travel.
    pub hops: u8,
}

/// A command to run on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRequest {
    pub id: u64,
    pub fun: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub locs: Vec<String>,
    pub function_id: Option<String>,
    pub version_constraint: Option<String>,
    /// Milliseconds left until the caller's deadline.
    pub deadline_ms: u64,
    /// `host.call` depth at the caller.
    pub depth: u32,
    /// The node chosen to run it.
    pub target: String,
    /// The nodes the call passed through, the caller first (loop prevention).
    pub path: Vec<String>,
    /// Hops it may still travel.
    pub hops: u8,
    /// The caller's tenant, when the calling node has tenants; the serving node checks the
    /// command is visible to it.
    pub tenant: Option<String>,
    /// The client request it serves (its `u`), so its log lines carry the same trace id.
    pub trace: Option<String>,
    /// For a call crossing clusters: the cluster that runs it. `target` is the next node on
    /// the way (a gateway); the first node of that cluster picks the node that runs it.
    pub cluster: Option<String>,
    /// Cluster boundaries it may still cross.
    pub cluster_hops: u8,
    /// The clusters it passed through (loop prevention).
    pub clusters: Vec<String>,
    /// Set on calls crossing clusters: where the reply goes if the way back dies.
    pub reply_to: Option<ReturnAddress>,
}

/// A command error crossing the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub kind: String,
    pub message: String,
}

/// Encodes a frame.
pub fn encode(message: &PeerMessage) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(message)
}

/// Decodes a frame.
pub fn decode(frame: &[u8]) -> Result<PeerMessage, rmp_serde::decode::Error> {
    rmp_serde::from_slice(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(node: &str, key: &NodeKey) -> RecordBody {
        RecordBody {
            node: node.into(),
            key: key.public(),
            url: "ws://127.0.0.1:1".into(),
            incarnation: 1,
            version: 7,
            entries: vec![CatalogEntry {
                command: "math.add".into(),
                tags: vec!["cpu".into()],
                version: "1.0.0".into(),
                digest: "ab".into(),
                tenant: "default".into(),
                public: false,
                plugin: "math".into(),
                size: 1,
                replica_of: None,
            }],
            neighbours: vec!["b".into()],
            routes: Vec::new(),
        }
    }

    #[test]
    fn a_record_verifies_only_as_signed() {
        let key = NodeKey::generate();
        let record = NodeRecord::signed(body("a", &key), &key).unwrap();
        assert!(record.verify());
        let decoded = match decode(&encode(&PeerMessage::Record(std::sync::Arc::new(record.clone()))).unwrap()).unwrap()
        {
            PeerMessage::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(decoded.verify());

        let mut tampered = record.clone();
        tampered.body.entries[0].command = "math.sub".into();
        assert!(!tampered.verify());

        // Another key cannot sign for `a` under a's key, and signing with its own key names it.
        let mallory = NodeKey::generate();
        let mut forged = NodeRecord::signed(body("a", &key), &mallory).unwrap();
        assert!(!forged.verify());
        forged.body.key = mallory.public();
        assert!(!forged.verify(), "the signature covers the key too");
    }
}
