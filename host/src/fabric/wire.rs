//! Messages between nodes: binary WebSocket frames of MessagePack (rmp-serde), after a
//! versioned handshake.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the peer protocol; nodes of different versions refuse each other.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket path of the peer protocol on a node's listener.
pub const PEER_PATH: &str = "/fabric";

/// One peer frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Dialer → listener: who I am, and a fresh nonce to prove yourself on.
    Hello {
        protocol: u32,
        cluster: String,
        node: String,
        url: String,
        nonce: [u8; 32],
    },
    /// Listener → dialer: who I am, my proof over both nonces, and my nonce for yours.
    Welcome {
        protocol: u32,
        cluster: String,
        node: String,
        url: String,
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    /// Dialer → listener: the dialer's proof.
    Proof {
        proof: [u8; 32],
    },
    /// Either side: the handshake failed, and why.
    Refused {
        reason: String,
    },

    /// Members the sender knows, so that every node learns every other.
    Members {
        members: Vec<MemberInfo>,
    },
    /// A node's complete catalog at `version` (sent when it changes, and relayed).
    Catalog {
        node: String,
        version: u64,
        entries: Vec<CatalogEntry>,
    },
    /// Anti-entropy: the catalog versions the sender holds, per node.
    Digest {
        versions: Vec<(String, u64)>,
    },
    /// The sender wants these nodes' catalogs.
    Want {
        nodes: Vec<String>,
    },
    /// The sender leaves the fabric now.
    Leave {
        node: String,
    },
    /// The sender believes `node` is dead.
    Dead {
        node: String,
        incarnation: u64,
    },
    /// The sender suspects `node`: does the receiver still hear it?
    Probe {
        node: String,
    },
    /// The answer to a `Probe`.
    ProbeAck {
        node: String,
        alive: bool,
    },

    /// Run a command on the receiver.
    Call(CallRequest),
    /// The outcome of a `Call`.
    Reply {
        id: u64,
        outcome: Result<Value, WireError>,
    },

    /// Liveness and round-trip time.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
}

/// A member as gossiped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub node: String,
    pub url: String,
    /// Raised by a node to refute rumours of its death.
    pub incarnation: u64,
}

/// One command a node serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    pub command: String,
    pub tags: Vec<String>,
    pub version: String,
    pub digest: String,
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
