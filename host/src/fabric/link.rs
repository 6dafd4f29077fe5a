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

use super::gossip::Flow;
use super::state::LinkStats;
use super::wire::{self, PeerMessage, PEER_PATH, PROTOCOL_VERSION};
use super::Fabric;
use super::{auth, identity};

/// The whole handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Frames queued for one peer before senders wait.
const LINK_QUEUE: usize = 4096;

struct Peer {
    node: String,
    url: String,
    key: [u8; 32],
    cluster: String,
    tier: u8,
}

/// Why a node of `cluster` may not link to this one, if it may not: another cluster needs a
/// bridge (`--bridge`).
fn unbridged(fabric: &Fabric, node: &str, cluster: &str) -> Option<String> {
    let config = &fabric.config;
    (cluster != config.cluster && !config.bridge.allows(cluster)).then(|| {
        format!(
            "node `{node}` is of cluster `{cluster}` and cluster `{}` does not bridge to it (--bridge)",
            config.cluster
        )
    })
}

/// Dials `url` and, once authenticated, runs the link.
pub async fn dial(fabric: Arc<Fabric>, url: String) {
    let target = format!("{}{PEER_PATH}", url.trim_end_matches('/'));
    let connector = fabric.peer_tls().map(tokio_tungstenite::Connector::Rustls);
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        target.as_str(),
        Some(ws_config(fabric.peer_frame_limit())),
        true,
        connector,
    );
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%url, error = %e, "cannot reach peer");
            fabric.with_state(|s| s.dial_failed(&url, true));
            return;
        }
        Err(_) => {
            tracing::debug!(%url, "peer did not accept in time");
            fabric.with_state(|s| s.dial_failed(&url, true));
            return;
        }
    };
    let mut ws = ws;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, dialer_handshake(&fabric, &mut ws)).await {
        Ok(Ok(peer)) => run(fabric, ws, peer, Some(url)).await,
        Ok(Err(reason)) => {
            tracing::warn!(%url, "peer link refused: {reason}");
            fabric.with_state(|s| s.dial_failed(&url, true));
        }
        Err(_) => {
            tracing::debug!(%url, "peer handshake timed out");
            fabric.with_state(|s| s.dial_failed(&url, true));
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
        .read_buffer_size(crate::config::READ_BUFFER_BYTES)
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

/// What the other side of a handshake failed to prove over `transcript`, if anything: the
/// cluster secret (`proof`), or holding the key it named (`signature`).
fn unproven(
    secret: &[u8],
    transcript: &[u8],
    proof: &[u8; 32],
    key: &[u8; 32],
    signature: &[u8],
) -> Option<&'static str> {
    if !auth::verify(&auth::proof(secret, transcript), proof) {
        Some("failed the cluster-secret proof")
    } else if !identity::verify(key, transcript, signature) {
        Some("did not sign with the key it named")
    } else {
        None
    }
}

async fn dialer_handshake<S>(fabric: &Fabric, ws: &mut WebSocketStream<S>) -> Result<Peer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &fabric.config;
    let my_key = config.key.public();
    let my_nonce = auth::nonce();
    send(
        ws,
        &PeerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            node: config.node_id.clone(),
            url: config.advertise_url.clone(),
            key: my_key,
            nonce: my_nonce,
            tier: config.tier,
        },
    )
    .await?;
    match receive(ws).await? {
        PeerMessage::Welcome {
            protocol,
            cluster,
            node,
            url,
            key,
            nonce,
            tier,
            proof,
            signature,
        } => {
            if protocol != PROTOCOL_VERSION {
                return Err(refuse(ws, format!("peer speaks protocol {protocol}, not {PROTOCOL_VERSION}")).await);
            }
            if let Some(reason) = unbridged(fabric, &node, &cluster) {
                return Err(refuse(ws, reason).await);
            }
            let secret = config.secret_for(&cluster);
            let me = auth::Party {
                node: &config.node_id,
                key: &my_key,
            };
            let them = auth::Party { node: &node, key: &key };
            let theirs = auth::transcript("listener", &my_nonce, &nonce, me, them);
            if let Some(failed) = unproven(secret, &theirs, &proof, &key, &signature) {
                return Err(refuse(ws, format!("peer `{node}` {failed}")).await);
            }
            let mine = auth::transcript("dialer", &my_nonce, &nonce, me, them);
            send(
                ws,
                &PeerMessage::Proof {
                    proof: auth::proof(secret, &mine),
                    signature: config.key.sign(&mine),
                },
            )
            .await?;
            Ok(Peer {
                node,
                url,
                key,
                cluster,
                tier,
            })
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
        key,
        nonce: dialer_nonce,
        tier,
    } = receive(ws).await?
    else {
        return Err(refuse(ws, "expected Hello".into()).await);
    };
    if protocol != PROTOCOL_VERSION {
        return Err(refuse(ws, format!("protocol {protocol} is not {PROTOCOL_VERSION}")).await);
    }
    if let Some(reason) = unbridged(fabric, &node, &cluster) {
        return Err(refuse(ws, reason).await);
    }
    let secret = config.secret_for(&cluster);
    if node == config.node_id {
        return Err(refuse(ws, format!("node `{node}` dialed itself (or two nodes share an id)")).await);
    }
    if fabric.with_state(|s| s.blocked.contains(&node)) {
        return Err(refuse(ws, format!("node `{node}` is cut off (fault injection)")).await);
    }
    // A node with all the links it keeps does not refuse: the connection is admitted retired,
    // after both sides exchanged what a joiner needs to find nodes with room (`State::add_link`).
    let my_key = config.key.public();
    let my_nonce = auth::nonce();
    let them = auth::Party { node: &node, key: &key };
    let me = auth::Party {
        node: &config.node_id,
        key: &my_key,
    };
    let mine = auth::transcript("listener", &dialer_nonce, &my_nonce, them, me);
    send(
        ws,
        &PeerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            node: config.node_id.clone(),
            url: config.advertise_url.clone(),
            key: my_key,
            nonce: my_nonce,
            tier: config.tier,
            proof: auth::proof(secret, &mine),
            signature: config.key.sign(&mine),
        },
    )
    .await?;
    match receive(ws).await? {
        PeerMessage::Proof { proof, signature } => {
            let theirs = auth::transcript("dialer", &dialer_nonce, &my_nonce, them, me);
            if let Some(failed) = unproven(secret, &theirs, &proof, &key, &signature) {
                return Err(refuse(ws, format!("node `{node}` at {url} {failed}")).await);
            }
            Ok(Peer {
                node,
                url,
                key,
                cluster,
                tier,
            })
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
    let (tx, outbox) = mpsc::channel::<PeerMessage>(LINK_QUEUE);
    let me = fabric.config.node_id.clone();
    let dialer = if dialed.is_some() {
        me.as_str()
    } else {
        peer.node.as_str()
    };
    // A link to a node of another cluster is a gateway link: no gossip crosses it, only
    // route tables, calls and their replies.
    let gateway = peer.cluster != fabric.config.cluster;
    let (conn, retire) = fabric.open_conn(tx.clone());
    let added = fabric.with_state(|s| {
        if fabric.is_leaving() {
            return None;
        }
        let added = if gateway {
            s.add_gateway(conn, &peer.node, &peer.url, &peer.cluster, peer.tier, dialer)
        } else {
            s.add_link(conn, &peer.node, &peer.url, peer.key, dialer, fabric.config.max_mesh)
        };
        if let Some(url) = &dialed {
            s.dial_done(url, added.as_ref().is_some_and(|a| a.current));
        }
        added
    });
    let Some(admitted) = added else {
        tracing::debug!(peer = %peer.node, "cut off (or leaving); dropping this connection");
        fabric.close_conn(conn);
        return;
    };
    let (link_id, stats) = (admitted.id, admitted.stats);
    let frame_limit = fabric.peer_frame_limit();
    if !admitted.current {
        tracing::debug!(peer = %peer.node, "already linked (or at the bound of links); retiring this connection");
    } else if gateway {
        tracing::info!(peer = %peer.node, url = %peer.url, cluster = %peer.cluster, "gateway linked");
    } else {
        tracing::info!(peer = %peer.node, url = %peer.url, "peer linked");
    }
    let (sink, mut source) = ws.split();
    let writer = tokio::spawn(write_frames(sink, outbox, stats.clone(), frame_limit));
    // Since when the link is retired: it carries no new calls or gossip of this node, answers
    // what crosses it, and closes once no call crosses it and the peer had a ping interval to
    // notice (a call it sent before then is still answered).
    let mut retired = (!admitted.current).then(Instant::now);
    if retired.is_some() && !gateway {
        queue(&tx, PeerMessage::Unlink);
    }

    let timing = fabric.config.timing.clone();
    // Silence is checked four times per ping interval, so that it is noticed soon after the
    // link timeout; a ping goes out every fourth check.
    let check_every = timing.ping / 4;
    let mut last_check = Instant::now();
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checks = 0u64;
    let mut sent_pings: HashMap<u64, Instant> = HashMap::new();
    let mut seq = 0u64;
    let mut samples = 0i64;
    // The last round-trip samples (0: none yet), for the link's path delay.
    let mut recent = [0u64; 8];
    let mut recent_at = 0usize;
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
                            // The mean of the first samples, then a moving average over about
                            // eight: one slow first sample (a node busy starting) does not
                            // outweigh the link's load for seconds.
                            let sample = sent.elapsed().as_micros() as i64;
                            samples = (samples + 1).min(8);
                            let old = stats.rtt_us.load(Ordering::Relaxed) as i64;
                            let smoothed = old + (sample - old) / samples;
                            stats.rtt_us.store(smoothed.max(1) as u64, Ordering::Relaxed);
                            recent[recent_at % recent.len()] = sample.max(1) as u64;
                            recent_at += 1;
                            let least = recent.iter().copied().filter(|s| *s > 0).min().unwrap_or(1);
                            stats.path_rtt_us.store(least, Ordering::Relaxed);
                        }
                    }
                    // A node of another cluster may only hand this node calls for a cluster (its
                    // gateway role): it cannot reach into this cluster's nodes or modules.
                    PeerMessage::Call(request) if gateway && (request.cluster.is_none() || request.target != me || request.fun == super::modules::MODULE_FETCH) => {
                        let refused = PeerMessage::Reply {
                            id: request.id,
                            outcome: Err(wire::WireError {
                                kind: "denied".into(),
                                message: format!("{}: a gateway link carries only calls for a cluster", request.fun),
                            }),
                        };
                        queue(&tx, refused);
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
                    PeerMessage::Reply { id, outcome } => fabric.complete(id, super::Arrival::Link(link_id), outcome),
                    PeerMessage::Deliver(delivery) => fabric.deliver(delivery),
                    PeerMessage::Routes(table) if gateway => fabric.with_state(|s| s.learn_routes(&peer.node, table)),
                    other if gateway => {
                        tracing::debug!(peer = %peer.node, message = ?other, "not a message for a gateway link");
                    }
                    PeerMessage::Unlink => {
                        if retired.is_none() {
                            tracing::debug!(peer = %peer.node, "the peer retired the link");
                            retired = Some(Instant::now());
                            // Dropped on purpose: the peer is not suspected.
                            fabric.with_state(|s| s.remove_link(&peer.node, link_id, true));
                        }
                    }
                    PeerMessage::Hello { .. } | PeerMessage::Welcome { .. } | PeerMessage::Proof { .. } | PeerMessage::Refused { .. } => {
                        tracing::warn!(peer = %peer.node, "handshake message on an established link; closing it");
                        break;
                    }
                    gossip => {
                        if let Flow::Left = fabric.with_state(|s| s.on_gossip(&peer.node, link_id, gossip)) {
                            tracing::info!(peer = %peer.node, "peer left");
                            left = true;
                            break;
                        }
                    }
                }
            }
            Some((reply, _)) = serving.next(), if !serving.is_empty() => queue(&tx, reply),
            _ = check.tick() => {
                if fabric.with_state(|s| s.blocked.contains(&peer.node)) {
                    tracing::info!(peer = %peer.node, "link cut (fault injection)");
                    break;
                }
                if retired.is_some_and(|at| at.elapsed() >= timing.ping)
                    && serving.is_empty()
                    && !fabric.awaits_reply_on(link_id)
                {
                    tracing::debug!(peer = %peer.node, "retired link is quiet; closing it");
                    break;
                }
                // This node itself did not run for a while (stopped, or starved of CPU): the
                // silence is its own, not the peer's.
                let lag = last_check.elapsed().saturating_sub(check_every);
                last_check = Instant::now();
                if lag > check_every {
                    last_heard = last_heard.max(Instant::now() - check_every);
                }
                // A slow link (a busy machine) gets a longer timeout: ten round trips at least.
                let rtt = Duration::from_micros(stats.rtt_us.load(Ordering::Relaxed));
                let timeout = timing.link_timeout.max(rtt * 10);
                if last_heard.elapsed() > timeout {
                    tracing::warn!(peer = %peer.node, silent_ms = last_heard.elapsed().as_millis() as u64, "peer silent; closing the link");
                    break;
                }
                checks += 1;
                // Four pings in the link's first ping interval (so that its round trip is known
                // from several samples at once), then one per interval. None as the link comes
                // up: it would wait behind the records both sides send first.
                if checks == 1 || (checks > 5 && checks % 4 != 1) {
                    continue;
                }
                seq += 1;
                sent_pings.insert(seq, Instant::now());
                sent_pings.retain(|_, at| at.elapsed() < timing.link_timeout * 2);
                let _ = tx.try_send(PeerMessage::Ping { seq });
            }
            _ = stop.changed() => break,
            _ = retire.notified(), if retired.is_none() => {
                tracing::debug!(peer = %peer.node, "link retired");
                retired = Some(Instant::now());
                if !gateway {
                    queue(&tx, PeerMessage::Unlink);
                }
            }
        }
    }
    fabric.with_state(|s| {
        if gateway {
            s.remove_gateway(&peer.node, link_id);
        } else {
            s.remove_link(&peer.node, link_id, false);
            if left {
                s.node_left(&peer.node);
            }
        }
    });
    fabric.close_conn(link_id);
    fabric.fail_pending(link_id);
    drop(tx);
    writer.abort();
    // Calls of the peer still running finish; a reply that may go back another way (a call
    // crossing clusters) is rerouted to the node the call came from.
    if !serving.is_empty() {
        let fabric = fabric.clone();
        tokio::spawn(async move {
            while let Some((reply, reply_to)) = serving.next().await {
                if let (PeerMessage::Reply { outcome, .. }, Some(to)) = (reply, reply_to) {
                    fabric.deliver(wire::Delivery {
                        to,
                        outcome,
                        hops: wire::MAX_HOPS.saturating_mul(2),
                    });
                }
            }
        });
    }
    if !left && retired.is_none() {
        tracing::info!(peer = %peer.node, "peer link closed");
    }
}

/// Writes the link's frames in order, batching what is queued; with a delay set (fault
/// injection) each frame leaves that long after it was queued.
async fn write_frames<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut outbox: mpsc::Receiver<PeerMessage>,
    stats: Arc<LinkStats>,
    frame_limit: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut held: std::collections::VecDeque<(Instant, PeerMessage)> = std::collections::VecDeque::new();
    loop {
        let due = held.front().map(|(at, _)| *at);
        let ready: Vec<PeerMessage> = tokio::select! {
            message = outbox.recv() => {
                let Some(message) = message else { break };
                let delay = stats.delay_us.load(Ordering::Relaxed);
                if delay == 0 && held.is_empty() {
                    let mut batch = vec![message];
                    while let Ok(message) = outbox.try_recv() {
                        batch.push(message);
                    }
                    batch
                } else {
                    held.push_back((Instant::now() + Duration::from_micros(delay), message));
                    continue;
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                let mut batch = Vec::new();
                while held.front().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, message)) = held.pop_front() {
                        batch.push(message);
                    }
                }
                batch
            }
        };
        for message in ready {
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
