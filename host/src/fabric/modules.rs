//! Modules through the fabric: what other nodes offer for replication, and components fetched
//! from the nodes that hold them, by digest, in chunks.
//!
//! A chunk is asked for with a call to [`MODULE_FETCH`] on the holding node (routed like any
//! call, hop by hop); the holder answers `{"total", "data" (base64), "signature"}`. At most
//! [`WINDOW`] chunks of one fetch are in flight, so a fetch never floods a link. The receiver
//! checks the size against what the catalog announced and the sha256 against the digest before
//! anything is kept or run.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::wire::WireError;
use super::{Exchange, Fabric};
use crate::plugins::Selector;

/// The command a node serves chunks of the modules it holds with (to peers only: clients never
/// reach it).
pub const MODULE_FETCH: &str = "weft.module";

/// Bytes asked for in one chunk (less when the peer frame limit is small). Small enough that
/// pings and calls sharing the link never wait long behind a chunk.
const CHUNK: usize = 256 << 10;

/// Chunks of one fetch in flight at once.
const WINDOW: usize = 4;

/// How long one chunk may take.
const CHUNK_DEADLINE: Duration = Duration::from_secs(15);

/// The largest component fetched.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// A component held by this node, ready to serve.
pub struct Module {
    pub bytes: Arc<[u8]>,
    /// Its publisher signature (the text of its `.sig` file), if any.
    pub signature: Option<String>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the fabric asks of the node's plugins: modules to serve, and plugins to fetch when a
/// call finds no local instance.
pub trait ModuleSource: Send + Sync {
    /// The component with sha256 `digest`, if this node holds it.
    fn module(&self, digest: String) -> BoxFuture<'_, Option<Arc<Module>>>;
    /// When policy has this node replicate a plugin serving `fun` on demand: the future that
    /// fetches and loads it (true once it serves here).
    fn on_demand(&self, fun: &str, selector: &Selector) -> Option<BoxFuture<'static, bool>>;
}

/// A plugin another node serves from its own directory, as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub node: String,
    pub plugin: String,
    pub digest: String,
    pub size: u64,
    pub tenant: String,
    pub public: bool,
    /// The effective tags of its commands there.
    pub tags: BTreeSet<String>,
    pub commands: Vec<String>,
    /// The highest version among its commands.
    pub version: semver::Version,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no node holding module {0} can be reached")]
    NoHolder(String),
    #[error("module {digest} is {size} bytes, over the limit of {MAX_MODULE_BYTES}")]
    TooLarge { digest: String, size: u64 },
    #[error("node `{node}` served bytes that do not match module {digest} (tampered or corrupt); refused")]
    Mismatch { node: String, digest: String },
    #[error("node `{node}` answered badly for module {digest}: {reason}")]
    Bad {
        node: String,
        digest: String,
        reason: String,
    },
}

impl Fabric {
    /// The plugins every other node whose record this node holds serves from its own directory
    /// (replicas excluded), by node: a node present with no offers withdrew them all.
    pub fn offers(&self) -> std::collections::BTreeMap<String, Vec<Offer>> {
        self.with_state(|s| s.offers())
    }

    /// Serves a chunk of a module this node holds (a `weft.module` call from a peer).
    pub(super) async fn serve_module(&self, args: &[Value]) -> Result<Value, WireError> {
        let bad = |message: String| WireError {
            kind: "invalid-args".into(),
            message,
        };
        let (Some(digest), Some(offset), Some(len)) = (
            args.first().and_then(Value::as_str),
            args.get(1).and_then(Value::as_u64),
            args.get(2).and_then(Value::as_u64),
        ) else {
            return Err(bad(format!("{MODULE_FETCH}: expected [digest, offset, length]")));
        };
        let module = match self.modules.get() {
            Some(source) => source.module(digest.to_string()).await,
            None => None,
        };
        let Some(module) = module else {
            return Err(WireError {
                kind: "not-found".into(),
                message: format!("module {digest} is not held by node `{}`", self.config.node_id),
            });
        };
        let total = module.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
        let end = start
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX).min(CHUNK))
            .min(total);
        let mut data = module.bytes[start..end].to_vec();
        if self.tamper.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(byte) = data.first_mut() {
                *byte ^= 0xff;
            }
        }
        Ok(json!({
            "total": total,
            "data": base64::engine::general_purpose::STANDARD.encode(&data),
            "signature": if start == 0 { module.signature.clone() } else { None },
        }))
    }

    /// Whether a node linked to this one holds module `digest`.
    pub fn linked_holder(&self, digest: &str) -> bool {
        self.with_state(|s| s.holders(digest))
            .first()
            .is_some_and(|(_, linked)| *linked)
    }

    /// Fetches module `digest` (announced as `size` bytes) from the nodes that hold it, the
    /// nearest first, and checks it. Returns the bytes, the signature and the node they came from.
    pub async fn fetch_module(&self, digest: &str, size: u64) -> Result<(Vec<u8>, Option<String>, String), FetchError> {
        if size > MAX_MODULE_BYTES {
            return Err(FetchError::TooLarge {
                digest: digest.to_string(),
                size,
            });
        }
        let holders = self.with_state(|s| s.holders(digest));
        let mut last = FetchError::NoHolder(digest.to_string());
        for (holder, _) in holders.into_iter().take(3) {
            match self.fetch_from(&holder, digest, size).await {
                Ok((bytes, signature)) => return Ok((bytes, signature, holder)),
                Err(e) => {
                    tracing::warn!(node = %holder, %digest, error = %e, "module fetch failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn fetch_from(&self, node: &str, digest: &str, size: u64) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let bad = |reason: String| FetchError::Bad {
            node: node.to_string(),
            digest: digest.to_string(),
            reason,
        };
        let chunk = CHUNK.min(self.peer_frame_limit() * 3 / 8).max(1024) as u64;
        let offsets: Vec<u64> = (0..size.div_ceil(chunk).max(1)).map(|i| i * chunk).collect();
        let chunks = futures_util::stream::iter(offsets)
            .map(|offset| self.fetch_chunk(node, digest, offset, chunk))
            .buffered(WINDOW);
        futures_util::pin_mut!(chunks);
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut signature = None;
        while let Some(reply) = chunks.next().await {
            let reply = reply.map_err(bad)?;
            if reply["total"].as_u64() != Some(size) {
                return Err(bad(format!(
                    "it holds {} bytes, not the {size} announced",
                    reply["total"]
                )));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(reply["data"].as_str().unwrap_or_default())
                .map_err(|e| bad(format!("chunk not base64: {e}")))?;
            if signature.is_none() {
                signature = reply["signature"].as_str().map(str::to_string);
            }
            bytes.extend_from_slice(&data);
            if bytes.len() as u64 > size {
                return Err(bad("more bytes than announced".into()));
            }
        }
        let mismatch = || FetchError::Mismatch {
            node: node.to_string(),
            digest: digest.to_string(),
        };
        if bytes.len() as u64 != size {
            return Err(mismatch());
        }
        match crate::runtime::digest_off_thread(bytes).await {
            Some((bytes, actual)) if actual == digest => Ok((bytes, signature)),
            _ => Err(mismatch()),
        }
    }

    async fn fetch_chunk(&self, node: &str, digest: &str, offset: u64, len: u64) -> Result<Value, String> {
        let deadline = Instant::now() + CHUNK_DEADLINE;
        let Some(route) = self.with_state(|s| s.next_hop(node, &[])) else {
            return Err(format!("no route to node `{node}`"));
        };
        let request = self.node_call(node, MODULE_FETCH, vec![digest.into(), offset.into(), len.into()]);
        let avoid = vec![self.config.node_id.clone()];
        match self.exchange_routed(route, request, deadline, avoid).await.0 {
            Exchange::Answered(Ok(value)) => Ok(value),
            Exchange::Answered(Err(error)) => Err(error.message),
            Exchange::NotSent | Exchange::Lost => Err("the link closed".into()),
            Exchange::Full | Exchange::TimedOut => Err(format!("no answer within {CHUNK_DEADLINE:?}")),
        }
    }
}
