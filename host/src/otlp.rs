//! OpenTelemetry export of the node's spans (`--otlp-endpoint URL`): every span that the log
//! filter lets through (each request's `request{trace=…}` and what runs inside it) is sent, in
//! batches, to an OTLP/HTTP collector as JSON (`POST URL/v1/traces`).
//!
//! A request's trace id (its `u`, carried across hops) becomes the span's OTLP trace id (the first
//! 16 bytes of its sha256), so the spans of one request on every node it crossed form one trace.
//! Export never blocks the node: spans beyond a full queue are dropped, and a failing collector
//! is reported once (a warning) until it works again.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Spans waiting for export at most; more are dropped.
const QUEUE: usize = 8192;
/// Spans sent in one request at most.
const BATCH: usize = 512;
/// How often a partial batch is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Connecting to and answering from the collector.
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(2);

static NODE: OnceLock<String> = OnceLock::new();

/// Span ids: a random start for the process, then counted.
fn next_span_id() -> [u8; 8] {
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let nonce = crate::fabric::auth::nonce();
        u64::from_le_bytes([
            nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7],
        ])
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    base.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes()
}

/// Names the node in exported spans (the `weft.node` resource attribute).
pub fn set_node(node: &str) {
    let _ = NODE.set(node.to_string());
}

/// A span being recorded (kept in the span's extensions until it closes).
struct Recording {
    name: &'static str,
    target: &'static str,
    start: SystemTime,
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    /// The OTLP trace id of the request the span belongs to.
    trace: Option<[u8; 16]>,
    attributes: Vec<(String, String)>,
}

/// Longest attribute value exported (a request id is the client's, of any length).
const MAX_VALUE: usize = 256;

struct Finished {
    recording: Recording,
    end: SystemTime,
}

/// The tracing layer that records spans and hands them to the exporter thread.
pub struct OtlpLayer {
    tx: SyncSender<Finished>,
}

impl OtlpLayer {
    /// Starts the exporter thread for the collector at `endpoint` (`http://HOST:PORT`, an optional
    /// path prefix before `/v1/traces`).
    pub fn new(endpoint: &str) -> Result<OtlpLayer, String> {
        let target = Target::parse(endpoint)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("weft-otlp".into())
            .spawn(move || export(target, rx))
            .map_err(|e| format!("starting the OTLP exporter: {e}"))?;
        Ok(OtlpLayer { tx })
    }
}

struct Fields<'a>(&'a mut Recording);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, mut value: String) {
        if field.name() == "trace" && !value.is_empty() {
            self.0.trace = Some(trace_id(&value));
        }
        if value.len() > MAX_VALUE {
            let mut end = MAX_VALUE;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            value.push('…');
        }
        self.0.attributes.push((field.name().to_string(), value));
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Recording>().map(|r| (r.span_id, r.trace)));
        let mut recording = Recording {
            name: span.name(),
            target: span.metadata().target(),
            start: SystemTime::now(),
            span_id: next_span_id(),
            parent: parent.as_ref().map(|(id, _)| *id),
            trace: parent.and_then(|(_, trace)| trace),
            attributes: Vec::new(),
        };
        attrs.record(&mut Fields(&mut recording));
        span.extensions_mut().insert(recording);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(recording) = span.extensions_mut().get_mut::<Recording>() {
                values.record(&mut Fields(recording));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(recording) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        let _ = self.tx.try_send(Finished {
            recording,
            end: SystemTime::now(),
        });
    }
}

/// Where spans go.
struct Target {
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Target, String> {
        let rest = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| format!("OTLP endpoint `{endpoint}`: only http:// collectors are supported"))?;
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => (
                host,
                port.parse()
                    .map_err(|_| format!("OTLP endpoint `{endpoint}`: `{port}` is not a port"))?,
            ),
            _ => (authority, 4318),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let prefix = prefix.trim_end_matches('/');
        let path = match prefix {
            "" => "/v1/traces".to_string(),
            p if p.ends_with("v1/traces") => format!("/{p}"),
            p => format!("/{p}/v1/traces"),
        };
        Ok(Target { host, port, path })
    }
}

fn export(target: Target, rx: Receiver<Finished>) {
    let mut batch = Vec::new();
    let mut failing = false;
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(span) => {
                batch.push(span);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                send(&target, &batch, &mut failing);
                return;
            }
        }
        if !batch.is_empty() {
            send(&target, &batch, &mut failing);
            batch.clear();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nanos(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

/// The OTLP trace id of a request id: 16 bytes of its sha256.
fn trace_id(trace: &str) -> [u8; 16] {
    let digest = Sha256::digest(trace.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

fn body(batch: &[Finished]) -> Value {
    let spans: Vec<Value> = batch
        .iter()
        .map(|f| {
            let r = &f.recording;
            let mut attributes: Vec<Value> = r
                .attributes
                .iter()
                .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            attributes.push(json!({"key": "code.namespace", "value": {"stringValue": r.target}}));
            json!({
                // A span outside any request is a trace of its own.
                "traceId": hex(&r.trace.unwrap_or_else(|| trace_id(&hex(&r.span_id)))),
                "spanId": hex(&r.span_id),
                "parentSpanId": r.parent.map(|p| hex(&p)).unwrap_or_default(),
                "name": r.name,
                "kind": 1,
                "startTimeUnixNano": nanos(r.start),
                "endTimeUnixNano": nanos(f.end),
                "attributes": attributes,
            })
        })
        .collect();
    let node = NODE.get().map(String::as_str).unwrap_or_default();
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "weft"}},
            {"key": "weft.node", "value": {"stringValue": node}},
        ]},
        "scopeSpans": [{"scope": {"name": "weft"}, "spans": spans}],
    }]})
}

/// POSTs a batch; a collector that is down or refuses loses the batch. A warning is logged when
/// export starts failing and a line when it works again (not one per batch).
fn send(target: &Target, batch: &[Finished], failing: &mut bool) {
    if batch.is_empty() {
        return;
    }
    let payload = body(batch).to_string();
    let outcome = (|| -> std::io::Result<String> {
        let address = (target.host.as_str(), target.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = TcpStream::connect_timeout(&address, COLLECTOR_TIMEOUT)?;
        stream.set_read_timeout(Some(COLLECTOR_TIMEOUT))?;
        stream.set_write_timeout(Some(COLLECTOR_TIMEOUT))?;
        write!(
            stream,
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            target.path,
            target.host,
            target.port,
            payload.len()
        )?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status)?;
        Ok(String::from_utf8_lossy(&status[9..12]).into_owned())
    })();
    let problem = match outcome {
        Ok(code) if code.starts_with('2') => None,
        Ok(code) => Some(format!("the collector answered {code}")),
        Err(e) => Some(format!("cannot reach the collector: {e}")),
    };
    match problem {
        Some(problem) if !*failing => {
            *failing = true;
            tracing::warn!(spans = batch.len(), "OTLP export failing, spans are dropped: {problem}");
        }
        Some(problem) => tracing::debug!(spans = batch.len(), "OTLP export still failing: {problem}"),
        None if *failing => {
            *failing = false;
            tracing::info!("OTLP export works again");
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let t = Target::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        let t = Target::parse("http://collector/otlp/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("collector", 4318, "/otlp/v1/traces")
        );
        assert!(Target::parse("https://collector").is_err());
    }

    #[test]
    fn one_request_id_is_one_trace_id() {
        assert_eq!(trace_id("abc"), trace_id("abc"));
        assert_ne!(trace_id("abc"), trace_id("abd"));
    }

    #[test]
    fn more_endpoints_parse() {
        let t = Target::parse("http://c:4318/v1/traces").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("c", 4318, "/v1/traces"));
        let t = Target::parse("http://[::1]:4319").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 4319));
        let t = Target::parse("http://[::1]").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 4318));
        assert!(Target::parse("http://c:port").is_err());
    }
}
