//! One authenticated connection to a peer: the handshake, then frames in both directions and
//! pings to measure round-trip time and notice silence.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::auth;
use super::state::LinkStats;
use super::wire::{self, PeerMessage, PEER_PATH, PROTOCOL_VERSION};
use super::Fabric;

/// The whole handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Frames queued for one peer before senders wait.
const LINK_QUEUE: usize = 4096;

struct Peer {
    node: String,
    url: String,
}

/// Dials `url` and, once authenticated, runs the link.
pub async fn dial(fabric: Arc<Fabric>, url: String) {
    let target = format!("{}{PEER_PATH}", url.trim_end_matches('/'));
    let connect =
        tokio_tungstenite::connect_async_with_config(target.as_str(), Some(ws_config(fabric.peer_frame_limit())), true);
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%url, error = %e, "cannot reach peer");
            fabric.with_state(|s| s.dial_failed(&url));
            return;
        }
        Err(_) => {
            tracing::debug!(%url, "peer did not accept in time");
            fabric.with_state(|s| s.dial_failed(&url));
            return;
        }
    };
    let mut ws = ws;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, dialer_handshake(&fabric, &mut ws)).await {
        Ok(Ok(peer)) => run(fabric, ws, peer, Some(url)).await,
        Ok(Err(reason)) => {
            tracing::warn!(%url, "peer link refused: {reason}");
            fabric.with_state(|s| s.dial_failed(&url));
        }
        Err(_) => {
            tracing::debug!(%url, "peer handshake timed out");
            fabric.with_state(|s| s.dial_failed(&url));
        }
    }
}

/// Serves a peer that dialed this node.
pub async fn accept<S>(fabric: Arc<Fabric>, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, listener_handshake(&fabric, &mut ws)).await {
        Ok(Ok(peer)) => run(fabric, ws, peer, None).await,
        Ok(Err(reason)) => tracing::warn!("peer refused: {reason}"),
        Err(_) => tracing::debug!("peer handshake timed out"),
    }
}

/// The WebSocket settings of a dialed link: the same frame limit the listener applies.
pub fn ws_config(limit: usize) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

async fn send<S>(ws: &mut WebSocketStream<S>, message: &PeerMessage) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = wire::encode(message).map_err(|e| format!("encoding: {e}"))?;
    ws.send(Message::Binary(frame.into())).await.map_err(|e| e.to_string())
}

async fn receive<S>(ws: &mut WebSocketStream<S>) -> Result<PeerMessage, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(frame))) => {
                return wire::decode(&frame).map_err(|e| format!("malformed frame: {e}"))
            }
            Some(Ok(Message::Close(_))) | None => return Err("the peer closed the connection".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

async fn refuse<S>(ws: &mut WebSocketStream<S>, reason: String) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = send(ws, &PeerMessage::Refused { reason: reason.clone() }).await;
    let _ = ws.close(None).await;
    reason
}

async fn dialer_handshake<S>(fabric: &Fabric, ws: &mut WebSocketStream<S>) -> Result<Peer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &fabric.config;
    let my_nonce = auth::nonce();
    send(
        ws,
        &PeerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            node: config.node_id.clone(),
            url: config.advertise_url.clone(),
            nonce: my_nonce,
        },
    )
    .await?;
    match receive(ws).await? {
        PeerMessage::Welcome {
            protocol,
            cluster,
            node,
            url,
            nonce,
            proof,
        } => {
            if protocol != PROTOCOL_VERSION || cluster != config.cluster {
                return Err(refuse(ws, format!("peer speaks protocol {protocol} of cluster `{cluster}`")).await);
            }
            let expected = auth::proof(&config.secret, "listener", &my_nonce, &nonce, &config.node_id, &node);
            if !auth::verify(&expected, &proof) {
                return Err(refuse(ws, format!("peer `{node}` failed the cluster-secret proof")).await);
            }
            let mine = auth::proof(&config.secret, "dialer", &my_nonce, &nonce, &config.node_id, &node);
            send(ws, &PeerMessage::Proof { proof: mine }).await?;
            Ok(Peer { node, url })
        }
        PeerMessage::Refused { reason } => Err(format!("the peer refused: {reason}")),
        other => Err(format!("unexpected handshake message {other:?}")),
    }
}

async fn listener_handshake<S>(fabric: &Fabric, ws: &mut WebSocketStream<S>) -> Result<Peer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &fabric.config;
    let PeerMessage::Hello {
        protocol,
        cluster,
        node,
        url,
        nonce: dialer_nonce,
    } = receive(ws).await?
    else {
        return Err(refuse(ws, "expected Hello".into()).await);
    };
    if protocol != PROTOCOL_VERSION {
        return Err(refuse(ws, format!("protocol {protocol} is not {PROTOCOL_VERSION}")).await);
    }
    if cluster != config.cluster {
        return Err(refuse(
            ws,
            format!(
                "node `{node}` is of cluster `{cluster}`, this node of `{}`",
                config.cluster
            ),
        )
        .await);
    }
    if node == config.node_id {
        return Err(refuse(ws, format!("node `{node}` dialed itself (or two nodes share an id)")).await);
    }
    if fabric.with_state(|s| s.blocked.contains(&node)) {
        return Err(refuse(ws, format!("node `{node}` is cut off (fault injection)")).await);
    }
    let my_nonce = auth::nonce();
    let proof = auth::proof(
        &config.secret,
        "listener",
        &dialer_nonce,
        &my_nonce,
        &node,
        &config.node_id,
    );
    send(
        ws,
        &PeerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            node: config.node_id.clone(),
            url: config.advertise_url.clone(),
            nonce: my_nonce,
            proof,
        },
    )
    .await?;
    match receive(ws).await? {
        PeerMessage::Proof { proof } => {
            let expected = auth::proof(
                &config.secret,
                "dialer",
                &dialer_nonce,
                &my_nonce,
                &node,
                &config.node_id,
            );
            if !auth::verify(&expected, &proof) {
                return Err(refuse(ws, format!("node `{node}` at {url} failed the cluster-secret proof")).await);
            }
            Ok(Peer { node, url })
        }
        PeerMessage::Refused { reason } => Err(format!("node `{node}` refused: {reason}")),
        other => Err(format!("unexpected handshake message {other:?}")),
    }
}

/// Runs an authenticated link until it closes, falls silent or the node stops. `dialed`: the
/// URL this node dialed, when it did.
async fn run<S>(fabric: Arc<Fabric>, ws: WebSocketStream<S>, peer: Peer, dialed: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut outbox) = mpsc::channel::<PeerMessage>(LINK_QUEUE);
    let me = fabric.config.node_id.clone();
    let dialer = if dialed.is_some() {
        me.as_str()
    } else {
        peer.node.as_str()
    };
    let added = fabric.with_state(|s| {
        if fabric.is_leaving() {
            return None;
        }
        let added = s.add_link(&peer.node, &peer.url, dialer, tx.clone());
        if let Some(url) = &dialed {
            s.dial_done(url, added.is_some());
        }
        added
    });
    let Some((link_id, stats, close)) = added else {
        tracing::debug!(peer = %peer.node, "already linked (or leaving); dropping this connection");
        return;
    };
    let frame_limit = fabric.peer_frame_limit();
    tracing::info!(peer = %peer.node, url = %peer.url, "peer linked");
    let (mut sink, mut source) = ws.split();
    let out_stats = stats.clone();
    let writer = tokio::spawn(async move {
        let stats = out_stats;
        while let Some(message) = outbox.recv().await {
            let Some(frame) = frame_of(&message, frame_limit, &stats) else {
                continue;
            };
            if sink.feed(Message::Binary(frame.into())).await.is_err() {
                return;
            }
            while let Ok(message) = outbox.try_recv() {
                let Some(frame) = frame_of(&message, frame_limit, &stats) else {
                    continue;
                };
                if sink.feed(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    // What the peer needs first: who we know, and what we serve.
    let (members, catalog) =
        fabric.with_state(|s| (s.members_message(), s.local_catalog_message(&fabric.config.node_id)));
    let _ = tx.try_send(members.clone());
    let _ = tx.try_send(catalog);
    // Tell the others about the newcomer.
    for (node, other) in fabric.with_state(|s| s.link_senders()) {
        if node != peer.node {
            let _ = other.try_send(members.clone());
        }
    }

    let timing = fabric.config.timing.clone();
    let mut ping = tokio::time::interval(timing.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_pings: HashMap<u64, Instant> = HashMap::new();
    let mut seq = 0u64;
    let mut last_heard = Instant::now();
    let mut stop = fabric.stop.clone();
    let mut left = false;
    // Calls from the peer run inside this task (no task hop on the way in or out).
    let mut serving = FuturesUnordered::new();
    loop {
        tokio::select! {
            frame = source.next() => {
                let message = match frame {
                    Some(Ok(Message::Binary(frame))) => match decode_counted(&frame, &stats) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(peer = %peer.node, error = %e, "malformed peer frame; closing the link");
                            break;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::debug!(peer = %peer.node, error = %e, "peer link error");
                        break;
                    }
                };
                last_heard = Instant::now();
                match message {
                    PeerMessage::Ping { seq } => {
                        let _ = tx.try_send(PeerMessage::Pong { seq });
                    }
                    PeerMessage::Pong { seq } => {
                        if let Some(sent) = sent_pings.remove(&seq) {
                            let sample = sent.elapsed().as_micros() as u64;
                            let old = stats.rtt_us.load(Ordering::Relaxed);
                            let smoothed = if old == 0 { sample } else { (old * 7 + sample) / 8 };
                            stats.rtt_us.store(smoothed.max(1), Ordering::Relaxed);
                        }
                    }
                    PeerMessage::Members { members } => {
                        fabric.with_state(|s| s.learn_members(members));
                    }
                    PeerMessage::Catalog { node, version, entries } => {
                        // Only a node itself may describe what it serves.
                        if node == peer.node {
                            fabric.with_state(|s| s.learn_catalog(&node, version, entries));
                        } else {
                            tracing::warn!(peer = %peer.node, about = %node, "ignored a catalog sent for another node");
                        }
                    }
                    PeerMessage::Digest { versions } => {
                        let behind: Vec<String> = fabric.with_state(|s| {
                            versions
                                .into_iter()
                                .filter(|(node, version)| *node == peer.node && s.catalog_version(node) < *version)
                                .map(|(node, _)| node)
                                .collect()
                        });
                        if !behind.is_empty() {
                            let _ = tx.try_send(PeerMessage::Want { nodes: behind });
                        }
                    }
                    PeerMessage::Want { nodes } => {
                        if nodes.contains(&fabric.config.node_id) {
                            let catalog = fabric.with_state(|s| s.local_catalog_message(&fabric.config.node_id));
                            let _ = tx.try_send(catalog);
                        }
                    }
                    PeerMessage::Leave { node } => {
                        if node == peer.node {
                            tracing::info!(peer = %peer.node, "peer left");
                            fabric.with_state(|s| s.node_left(&node));
                            left = true;
                            break;
                        }
                    }
                    PeerMessage::Dead { node, incarnation } => {
                        if node == fabric.config.node_id {
                            let refute = fabric.with_state(|s| {
                                s.incarnation = s.incarnation.max(incarnation).saturating_add(1);
                                s.members_message()
                            });
                            tracing::warn!(rumoured_by = %peer.node, "refuting a rumour of this node's death");
                            fabric.broadcast(refute);
                        } else {
                            fabric.with_state(|s| s.rumour_dead(&node, incarnation));
                        }
                    }
                    PeerMessage::Probe { node } => {
                        let alive = fabric.with_state(|s| s.hears(&node));
                        let _ = tx.try_send(PeerMessage::ProbeAck { node, alive });
                    }
                    PeerMessage::ProbeAck { node, alive } => {
                        if alive {
                            tracing::debug!(peer = %node, vouched_by = %peer.node, "a suspect is still heard by another peer");
                            fabric.with_state(|s| s.vouched(&node));
                        }
                    }
                    PeerMessage::Call(request) => {
                        if serving.len() < LINK_QUEUE {
                            serving.push(fabric.clone().serve_call(request));
                        } else {
                            let busy = PeerMessage::Reply {
                                id: request.id,
                                outcome: Err(wire::WireError {
                                    kind: "failed".into(),
                                    message: format!("node `{}` has {LINK_QUEUE} calls of this peer running", fabric.config.node_id),
                                }),
                            };
                            queue(&tx, busy);
                        }
                    }
                    PeerMessage::Reply { id, outcome } => fabric.complete(id, outcome),
                    PeerMessage::Hello { .. } | PeerMessage::Welcome { .. } | PeerMessage::Proof { .. } | PeerMessage::Refused { .. } => {
                        tracing::warn!(peer = %peer.node, "handshake message on an established link; closing it");
                        break;
                    }
                }
            }
            Some(reply) = serving.next(), if !serving.is_empty() => queue(&tx, reply),
            _ = ping.tick() => {
                if fabric.with_state(|s| s.blocked.contains(&peer.node)) {
                    tracing::info!(peer = %peer.node, "link cut (fault injection)");
                    break;
                }
                if last_heard.elapsed() > timing.link_timeout {
                    tracing::warn!(peer = %peer.node, silent_ms = last_heard.elapsed().as_millis() as u64, "peer silent; closing the link");
                    break;
                }
                seq += 1;
                sent_pings.insert(seq, Instant::now());
                sent_pings.retain(|_, at| at.elapsed() < timing.link_timeout * 2);
                let _ = tx.try_send(PeerMessage::Ping { seq });
            }
            _ = stop.changed() => break,
            _ = close.notified() => {
                tracing::debug!(peer = %peer.node, "closing a duplicate link");
                break;
            }
        }
    }
    fabric.with_state(|s| {
        s.remove_link(&peer.node, link_id);
        if left {
            s.node_left(&peer.node);
        }
    });
    fabric.fail_pending(link_id);
    drop(tx);
    writer.abort();
    if !left {
        tracing::info!(peer = %peer.node, "peer link closed");
    }
}

/// Decodes a frame read from the link, counting its bytes.
fn decode_counted(frame: &[u8], stats: &LinkStats) -> Result<PeerMessage, rmp_serde::decode::Error> {
    stats.bytes_in.fetch_add(frame.len() as u64, Ordering::Relaxed);
    wire::decode(frame)
}

/// Encodes a message for the wire, counting its bytes. A reply too large for a peer frame
/// becomes an error reply (the caller learns why); anything else too large is dropped with a
/// warning.
fn frame_of(message: &PeerMessage, limit: usize, stats: &LinkStats) -> Option<Vec<u8>> {
    let frame = frame_within(message, limit)?;
    stats.bytes_out.fetch_add(frame.len() as u64, Ordering::Relaxed);
    Some(frame)
}

fn frame_within(message: &PeerMessage, limit: usize) -> Option<Vec<u8>> {
    let frame = match wire::encode(message) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a peer message");
            return None;
        }
    };
    if frame.len() <= limit {
        return Some(frame);
    }
    match message {
        PeerMessage::Reply { id, .. } => wire::encode(&PeerMessage::Reply {
            id: *id,
            outcome: Err(wire::WireError {
                kind: "failed".into(),
                message: format!(
                    "the result of {} bytes exceeds the peer frame limit of {limit} bytes",
                    frame.len()
                ),
            }),
        })
        .ok(),
        _ => {
            tracing::warn!(
                size = frame.len(),
                limit,
                "dropping a peer message over the frame limit"
            );
            None
        }
    }
}

/// Queues `message` for the peer without waiting; when the queue is full, a task waits for room.
fn queue(tx: &mpsc::Sender<PeerMessage>, message: PeerMessage) {
    if let Err(mpsc::error::TrySendError::Full(message)) = tx.try_send(message) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(message).await;
        });
    }
}
