//! The load generator behind `weft bench`, and the raw WebSocket JSON echo server it compares
//! against (the physical limit of the transport on the machine).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Latency and throughput of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub calls: u64,
    pub errors: u64,
    pub calls_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Serves a JSON echo over WebSocket: each frame is parsed and answered with
/// `{"r": <cmds>, "error": null, "u": <u>}`; the least any JSON-over-WebSocket RPC server does.
pub async fn raw_echo_server(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                let bytes = match &message {
                    Message::Text(t) => t.as_bytes(),
                    Message::Binary(b) => b.as_ref(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(mut request) = serde_json::from_slice::<Value>(bytes) else {
                    continue;
                };
                let reply = serde_json::json!({
                    "r": request.get_mut("cmds").map(Value::take),
                    "error": null,
                    "u": request.get_mut("u").map(Value::take),
                });
                if ws.send(Message::Text(reply.to_string().into())).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends `make_request(u)` frames to `url` for `duration`, keeping `in_flight` requests
/// outstanding over `ceil(in_flight / 16)` connections, after a warm-up of a quarter of
/// `duration`.
pub async fn measure(
    url: &str,
    make_request: fn(u64) -> String,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let connections = in_flight.div_ceil(16).max(1);
    let per_connection = in_flight.div_ceil(connections);
    let warmup = duration / 4;
    // The generator runs on one thread of its own (a current-thread runtime), so that it takes
    // at most one core and the measured server gets the other, whichever server it is.
    let url = url.to_string();
    let generator = std::thread::spawn(move || -> anyhow::Result<Vec<(Vec<u64>, u64)>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let start = Instant::now();
            let drivers = (0..connections).map(|c| {
                drive(
                    url.clone(),
                    make_request,
                    per_connection,
                    c as u64,
                    start + warmup,
                    start + warmup + duration,
                )
            });
            futures_util::future::join_all(drivers).await.into_iter().collect()
        })
    });
    let outcomes = tokio::task::spawn_blocking(move || generator.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))??;
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (mut l, e) in outcomes {
        latencies.append(&mut l);
        errors += e;
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let calls = latencies.len() as u64;
    Ok(Stats {
        calls,
        errors,
        calls_per_sec: calls as f64 / duration.as_secs_f64(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
    })
}

/// One connection of the load generator. Returns the latencies (ns) of responses received in
/// the measurement window and how many of them were errors.
async fn drive(
    url: String,
    make_request: fn(u64) -> String,
    in_flight: usize,
    connection: u64,
    measure_from: Instant,
    measure_until: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await?;
    let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(in_flight * 2);
    let mut next = connection << 40;
    for _ in 0..in_flight {
        sent.insert(next, Instant::now());
        ws.feed(Message::Text(make_request(next).into())).await?;
        next += 1;
    }
    ws.flush().await?;
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(message) = ws.next().await {
        let message = message?;
        let bytes = match &message {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b.as_ref(),
            _ => continue,
        };
        let now = Instant::now();
        if let Some(at) = response_id(bytes).and_then(|u| sent.remove(&u)) {
            if at >= measure_from && now <= measure_until {
                latencies.push((now - at).as_nanos() as u64);
                if !contains(bytes, b"\"error\":null") {
                    errors += 1;
                }
            }
        }
        if now >= measure_until {
            break;
        }
        sent.insert(next, Instant::now());
        ws.send(Message::Text(make_request(next).into())).await?;
        next += 1;
    }
    let _ = ws.close(None).await;
    Ok((latencies, errors))
}

/// The numeric `u` of a response frame, read without parsing the whole frame so that the
/// load generator spends as little of the machine as it can.
fn response_id(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"u\":\"";
    let start = frame.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = frame[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&frame[start..start + digits]).ok()?.parse().ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
