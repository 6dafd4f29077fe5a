//! A client of the weft (and MPREG) client protocol: one WebSocket connection carrying any
//! number of concurrent requests, matched to their responses by `u`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection to the node closed")]
    Closed,
    #[error("error {code} ({message}): {details}")]
    Remote {
        code: i64,
        message: String,
        details: String,
    },
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

/// A connection to a node.
pub struct Client {
    outbox: mpsc::Sender<Message>,
    pending: Pending,
    /// Set once the connection's reader has stopped: no response can arrive any more.
    closed: Arc<AtomicBool>,
    next: AtomicU64,
    prefix: String,
}

impl Client {
    /// Connects to `url` (`ws://host:port`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_as(url, None).await
    }

    /// Connects with a tenant's API token (`Authorization: Bearer <token>`), when given.
    pub async fn connect_as(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Client::connect_with(url, token, None).await
    }

    /// Connects with a token and, for `wss://` URLs, a TLS configuration (the CA to trust).
    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Client, ClientError> {
        let failed = |reason: String| ClientError::Connect {
            url: url.to_string(),
            reason,
        };
        let mut request = url.into_client_request().map_err(|e| failed(e.to_string()))?;
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| failed("the token is not a valid header value".into()))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
            .await
            .map_err(|e| failed(refusal_reason(e)))?;
        let (mut sink, mut source) = ws.split();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (outbox, mut queue) = mpsc::channel::<Message>(1024);
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.feed(message).await.is_err() {
                    return;
                }
                while let Ok(message) = queue.try_recv() {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let reader_pending = pending.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = source.next().await {
                let bytes = match message {
                    Message::Text(text) => text.as_bytes().to_vec(),
                    Message::Binary(bytes) => bytes.to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                let key = value.get("u").map(key_of).unwrap_or_default();
                let waiter = reader_pending.lock().ok().and_then(|mut p| p.remove(&key));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(value);
                }
            }
            // Dropping the waiters tells every caller the connection closed.
            reader_closed.store(true, Ordering::SeqCst);
            if let Ok(mut p) = reader_pending.lock() {
                p.clear();
            }
        });
        let prefix = format!("{:x}-{:x}", std::process::id(), rand_seed());
        Ok(Client {
            outbox,
            pending,
            closed,
            next: AtomicU64::new(0),
            prefix,
        })
    }

    /// Sends a raw request object, setting its `u` when absent, and returns the raw response.
    pub async fn request(&self, mut request: Value) -> Result<Value, ClientError> {
        let u = match request.get("u") {
            Some(u) if !u.is_null() => key_of(u),
            _ => {
                let u = format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed));
                if let Value::Object(map) = &mut request {
                    map.insert("u".into(), Value::String(u.clone()));
                }
                u
            }
        };
        self.send_frame(Message::Text(request.to_string().into()), u).await
    }

    /// Sends any frame and waits for the response whose `u` is `u`.
    pub async fn send_frame(&self, frame: Message, u: String) -> Result<Value, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ClientError::Closed)?
            .insert(u.clone(), tx);
        if self.closed.load(Ordering::SeqCst) || self.outbox.send(frame).await.is_err() {
            if let Ok(mut pending) = self.pending.lock() {
                pending.remove(&u);
            }
            return Err(ClientError::Closed);
        }
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Calls one command and returns its result, or the error the node answered.
    pub async fn call(
        &self,
        fun: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        locs: &[String],
    ) -> Result<Value, ClientError> {
        self.call_in(fun, args, kwargs, locs, None).await
    }

    /// Like [`Client::call`], run by a node of `target_cluster` when given.
    pub async fn call_in(
        &self,
        fun: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        locs: &[String],
        target_cluster: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut command = json!({ "name": "result", "fun": fun, "args": args, "kwargs": kwargs, "locs": locs });
        if let Some(cluster) = target_cluster {
            command["target_cluster"] = json!(cluster);
        }
        let request = json!({ "role": "rpc", "cmds": [command] });
        let response = self.request(request).await?;
        let mut r = result_of(response)?;
        r.get_mut("result")
            .map(Value::take)
            .ok_or_else(|| ClientError::InvalidResponse(format!("no `result` in {r}")))
    }
}

/// The `r` of a response, or its `error` as a [`ClientError::Remote`].
pub fn result_of(response: Value) -> Result<Value, ClientError> {
    if let Some(error) = response.get("error").filter(|e| !e.is_null()) {
        return Err(ClientError::Remote {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            details: error
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    }
    match response {
        Value::Object(mut map) => Ok(map.remove("r").unwrap_or(Value::Null)),
        other => Err(ClientError::InvalidResponse(other.to_string())),
    }
}

fn key_of(u: &Value) -> String {
    match u {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish()
}

/// What a refused connection says: a node's refusal of the upgrade carries its reason as the body.
fn refusal_reason(error: tokio_tungstenite::tungstenite::Error) -> String {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            format!("refused with HTTP {}: {body}", response.status())
        }
        other => other.to_string(),
    }
}
