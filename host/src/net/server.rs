//! The node's client listener: one JSON request per WebSocket frame (text or binary), each
//! request on a connection served concurrently, answered in the same frame type.

use std::net::SocketAddr;
use std::sync::Arc;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{ready, Context, Poll};

use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response as HandshakeResponse};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::config::MAX_INFLIGHT_PER_CONNECTION;

/// How long a closing connection may take to send its close frame.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
use crate::rpc::{codes, ErrorBody, Executor, Response};
use crate::tenancy::{Tenant, Tenants};

use super::tls::{Stream, Tls};

/// Takes over WebSocket connections made to the peer path ([`crate::fabric::wire::PEER_PATH`]).
pub trait PeerHandler: Send + Sync + 'static {
    fn accept(&self, ws: WebSocketStream<Stream>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// Accepts client connections (and, with `peers`, peer connections) until `shutdown` turns
/// true, then waits for connections to end.
pub async fn serve(
    listener: TcpListener,
    executor: Arc<Executor>,
    peers: Option<Arc<dyn PeerHandler>>,
    tls: Option<Tls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let max_connections = executor.limits().max_connections;
    let mut refusing = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() >= max_connections => {
                    // Closed at once: holding it would cost what the limit is there to bound.
                    if !refusing {
                        tracing::warn!(%peer, max_connections, "connection limit reached; closing new connections (--max-connections)");
                        refusing = true;
                    }
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    if refusing {
                        tracing::info!(open = connections.len(), "below the connection limit again");
                        refusing = false;
                    }
                    connections.spawn(connection(stream, peer, executor.clone(), peers.clone(), tls.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

#[tracing::instrument(level = "debug", skip_all, fields(%peer))]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    executor: Arc<Executor>,
    peers: Option<Arc<dyn PeerHandler>>,
    tls: Option<Tls>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let handshake_timeout = executor.limits().handshake_timeout;
    // With TLS, whether the other side showed a certificate (one it shows is always verified
    // against the CA).
    let (stream, certified): (Stream, bool) = match &tls {
        Some(tls) => {
            let accept = tokio_rustls::TlsAcceptor::from(tls.server.clone()).accept(stream);
            match tokio::time::timeout(handshake_timeout, accept).await {
                Ok(Ok(stream)) => {
                    let certified = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    (Box::new(stream), certified)
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("tls handshake timed out");
                    return;
                }
            }
        }
        None => (Box::new(stream), false),
    };
    let peers_need_certificates = tls.as_ref().is_some_and(|t| t.peer_mtls);
    // Frames up to twice the request limit are read and answered with a clear error; larger
    // ones close the connection with code 1009 (message too big).
    let hard_limit = executor.limits().max_frame_bytes.saturating_mul(2);
    let config = WebSocketConfig::default()
        .read_buffer_size(crate::config::READ_BUFFER_BYTES)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let mut path = String::new();
    let mut tenant: Option<Arc<Tenant>> = None;
    let tenants = executor.tenants().cloned();
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: HandshakeResponse| {
        path = request.uri().path().to_string();
        if path == crate::fabric::wire::PEER_PATH && peers_need_certificates && !certified {
            tracing::info!(%peer, "peer refused: no client certificate");
            return Err(refusal(
                "peers must present a certificate signed by the cluster's CA (--peer-mtls)",
            ));
        }
        // Peers prove the cluster secret in their own handshake; clients bring a tenant's token.
        if let (Some(tenants), false) = (&tenants, path == crate::fabric::wire::PEER_PATH) {
            match authenticate(tenants, request) {
                Ok(found) => tenant = Some(found),
                Err(reason) => {
                    tracing::info!(%peer, "client refused: {reason}");
                    return Err(refusal(reason));
                }
            }
        }
        Ok(response)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let ws = match tokio::time::timeout(handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("websocket handshake timed out");
            return;
        }
    };
    if path == crate::fabric::wire::PEER_PATH {
        match peers {
            Some(peers) => peers.accept(ws).await,
            None => tracing::debug!("peer connection refused: this node takes no peers"),
        }
        return;
    }
    // Requests of one connection run concurrently inside this task, and replies are written
    // from it as well: a request answered at once costs no task switch. Writing never blocks
    // the requests: replies wait in `outbox` while the socket is full, and reading pauses while
    // running requests and unwritten replies together reach the per-connection limit.
    let (mut sink, mut source) = ws.split();
    let mut running = FuturesUnordered::new();
    let mut outbox: VecDeque<Message> = VecDeque::new();
    let mut unflushed = false;
    let mut reading = true;
    while reading || !running.is_empty() || !outbox.is_empty() || unflushed {
        tokio::select! {
            Some(reply) = running.next(), if !running.is_empty() => {
                outbox.push_back(reply);
                while let Some(Some(reply)) = running.next().now_or_never() {
                    outbox.push_back(reply);
                }
            }
            written = poll_fn(|cx| write_some(&mut sink, &mut outbox, &mut unflushed, cx)), if !outbox.is_empty() || unflushed => {
                if let Err(e) = written {
                    tracing::debug!(error = %e, "writing to the connection failed");
                    return;
                }
            }
            next = source.next(), if reading && running.len() + outbox.len() < MAX_INFLIGHT_PER_CONNECTION => match next {
                Some(Ok(Message::Text(text))) => running.push(answer(executor.clone(), text.into(), false, tenant.clone())),
                Some(Ok(Message::Binary(bytes))) => running.push(answer(executor.clone(), bytes, true, tenant.clone())),
                Some(Ok(Message::Close(_))) | None => reading = false,
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    tracing::warn!(size, max_size, "closing connection: frame too large");
                    let close = CloseFrame {
                        code: CloseCode::Size,
                        reason: format!("frame of {size} bytes exceeds the limit of {max_size} bytes").into(),
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(close)))).await;
                    return;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection error");
                    reading = false;
                }
            },
            _ = shutdown.changed(), if reading => reading = false,
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Moves queued replies into the socket and flushes; ready once everything is flushed.
fn write_some(
    sink: &mut SplitSink<WebSocketStream<Stream>, Message>,
    outbox: &mut VecDeque<Message>,
    unflushed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WsError>> {
    while !outbox.is_empty() {
        ready!(sink.poll_ready_unpin(cx))?;
        if let Some(message) = outbox.pop_front() {
            sink.start_send_unpin(message)?;
            *unflushed = true;
        }
    }
    ready!(sink.poll_flush_unpin(cx))?;
    *unflushed = false;
    Poll::Ready(Ok(()))
}

async fn answer(executor: Arc<Executor>, frame: Bytes, binary: bool, tenant: Option<Arc<Tenant>>) -> Message {
    let response = executor.handle_frame(&frame, tenant.as_ref()).await;
    encode(&response, binary)
}

/// The tenant whose token the upgrade request carries (`Authorization: Bearer <token>`).
fn authenticate(tenants: &Tenants, request: &Request) -> Result<Arc<Tenant>, &'static str> {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or("this node serves tenants: send `Authorization: Bearer <token>`")?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or("the Authorization header must be `Bearer <token>`")?;
    tenants
        .authenticate(token)
        .ok_or("the token belongs to no tenant of this node")
}

/// A 401 answer to the upgrade request, with the reason as its body.
fn refusal(reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{reason}\n")));
    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
    if let Ok(value) = http::HeaderValue::from_str("Bearer realm=\"weft\"") {
        response.headers_mut().insert(http::header::WWW_AUTHENTICATE, value);
    }
    response
}

fn encode(response: &Response, binary: bool) -> Message {
    let json = serde_json::to_string(response).unwrap_or_else(|e| {
        let fallback = Response::error(
            response.u.clone(),
            ErrorBody::new(codes::EXECUTION_FAILED, format!("the result could not be encoded: {e}")),
        );
        serde_json::to_string(&fallback).unwrap_or_default()
    });
    if binary {
        Message::Binary(json.into())
    } else {
        Message::Text(json.into())
    }
}
