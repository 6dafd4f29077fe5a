//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz / libFuzzer): every decoder of
//! untrusted input, driven the way the node drives it. Each returns normally whatever the
//! input; a panic, a hang or unbounded memory is a bug.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::fabric::wire::{self, PeerMessage};
use crate::fabric::{auth, identity};

/// A client request frame: parsed, planned, and every command's arguments resolved against
/// stand-in results (each command's result is its own arguments), level by level.
pub fn client_request(frame: &[u8]) {
    let Ok(request) = crate::rpc::protocol::parse(frame) else {
        let _ = crate::rpc::protocol::request_id(frame);
        return;
    };
    let Ok(plan) = crate::rpc::plan::plan(&request.cmds) else {
        return;
    };
    let names: HashSet<&str> = request.cmds.iter().map(|c| c.name.as_str()).collect();
    let mut results: HashMap<String, Value> = HashMap::new();
    let mut budget = frame.len().saturating_mul(4);
    for level in &plan.levels {
        for &i in level {
            let Some(command) = request.cmds.get(i) else {
                return;
            };
            let args = Value::Array(command.args.clone());
            let Ok(resolved) = crate::rpc::plan::substitute(&args, &results, &names, &mut budget) else {
                return;
            };
            results.insert(command.name.clone(), resolved);
        }
    }
}

/// A peer frame: decoded; a record's signature checked; a handshake message's proofs checked
/// the way a listener checks them.
pub fn peer_frame(frame: &[u8]) {
    let Ok(message) = wire::decode(frame) else {
        return;
    };
    match message {
        PeerMessage::Record(record) => {
            let _ = record.verify();
        }
        PeerMessage::Hello { node, key, nonce, .. } | PeerMessage::Welcome { node, key, nonce, .. } => {
            let mine = [7u8; 32];
            let me = auth::Party {
                node: "listener",
                key: &mine,
            };
            let them = auth::Party { node: &node, key: &key };
            let transcript = auth::transcript("dialer", &nonce, &mine, them, me);
            let proof = auth::proof(b"secret", &transcript);
            let _ = auth::verify(&proof, &nonce);
            let _ = identity::verify(&key, &transcript, &nonce);
        }
        PeerMessage::Proof { proof, signature } => {
            let _ = identity::verify(&proof, b"transcript", &signature);
        }
        _ => {}
    }
}

/// A sidecar manifest (`NAME.toml`).
pub fn manifest(text: &[u8]) {
    if let Ok(text) = std::str::from_utf8(text) {
        let _ = crate::plugins::Manifest::parse(text);
    }
}

/// A request built from `data` to reach deep into dependency resolution: each command is named
/// `cN` (N < 16) and each argument refers to a command (`cN`), a field of one (`cN.x.0`), or is
/// a literal; duplicates, cycles and long chains come out often.
pub fn dependencies(data: &[u8]) {
    let mut cmds = Vec::new();
    for chunk in data.chunks(6).take(64) {
        let Some((&name, args)) = chunk.split_first() else {
            continue;
        };
        let args: Vec<Value> = args
            .iter()
            .map(|b| match b % 4 {
                0 => Value::from(format!("c{}", b % 16)),
                1 => Value::from(format!("c{}.x.{}", b % 16, b % 3)),
                2 => Value::from(u64::from(*b)),
                _ => serde_json::json!({ "k": [format!("c{}", b % 16)] }),
            })
            .collect();
        cmds.push(serde_json::json!({ "name": format!("c{}", name % 16), "fun": "f", "args": args }));
    }
    let request = serde_json::json!({ "role": "rpc", "u": "fuzz", "cmds": cmds });
    if let Ok(frame) = serde_json::to_vec(&request) {
        client_request(&frame);
    }
}
