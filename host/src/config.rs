//! Limits and timeouts of a node, declared in one place. Each has a default, an environment
//! variable and a `weft node` flag of the same name (flags win over the environment).

use std::time::Duration;

/// Per-call deadline of a command, in milliseconds.
pub const CALL_DEADLINE_MS_ENV: &str = "WEFT_CALL_DEADLINE_MS";
pub const DEFAULT_CALL_DEADLINE_MS: u64 = 30_000;

/// Linear memory one plugin instance may use, in MiB.
pub const MEMORY_LIMIT_MB_ENV: &str = "WEFT_MEMORY_LIMIT_MB";
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 128;

/// Largest client request frame, in bytes.
pub const MAX_FRAME_BYTES_ENV: &str = "WEFT_MAX_FRAME_BYTES";
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// How deep commands may call commands through `host.call`.
pub const MAX_CALL_DEPTH_ENV: &str = "WEFT_MAX_CALL_DEPTH";
pub const DEFAULT_MAX_CALL_DEPTH: u32 = 16;

/// Plugin instances that may exist at once on a node (running and warm).
pub const MAX_INSTANCES_ENV: &str = "WEFT_MAX_INSTANCES";
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// Calls one warm instance serves before it is replaced by a fresh one; 1 = a fresh instance
/// for every call. See `docs/runtime.md` for the measurements behind the default.
pub const INSTANCE_REUSE_ENV: &str = "WEFT_INSTANCE_REUSE";
pub const DEFAULT_INSTANCE_REUSE: u32 = 10_000;

/// Connections (clients and peers) a node holds at once; beyond it new ones are closed at once.
pub const MAX_CONNECTIONS_ENV: &str = "WEFT_MAX_CONNECTIONS";
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// How long a new connection may take to finish its TLS and WebSocket handshakes, in
/// milliseconds (a client that trickles its upgrade request is cut off here).
pub const HANDSHAKE_TIMEOUT_MS_ENV: &str = "WEFT_HANDSHAKE_TIMEOUT_MS";
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// The read buffer of each WebSocket connection (tungstenite's default is 128 KiB, allocated
/// and touched up front: 1.3 GB for 10,000 idle connections). Larger frames still arrive
/// whole; they are read in more pieces.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Requests one client connection may have in flight before the node stops reading from it.
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 1024;

/// How often the epoch ticker advances; the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long a stopping node lets calls in flight finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Limits applied to every plugin call on a node.
#[derive(Debug, Clone)]
pub struct Limits {
    pub call_deadline: Duration,
    pub memory_limit_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_call_depth: u32,
    pub max_instances: u32,
    pub instance_reuse: u32,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_deadline: Duration::from_millis(DEFAULT_CALL_DEADLINE_MS),
            memory_limit_bytes: (DEFAULT_MEMORY_LIMIT_MB as usize) << 20,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_call_depth: DEFAULT_MAX_CALL_DEPTH,
            max_instances: DEFAULT_MAX_INSTANCES,
            instance_reuse: DEFAULT_INSTANCE_REUSE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
        }
    }
}
