//! Tenants: who may call what on a node, and how much.
//!
//! A node started with `--tenants FILE` serves several tenants. Each has API tokens (kept as
//! sha256 hashes), and optionally a rate of calls per second and a number of requests running at
//! once. A client proves its tenant with `Authorization: Bearer <token>` on the WebSocket
//! upgrade; without a valid token the upgrade is refused. Plugins belong to a tenant by directory
//! (`PLUGINS/<tenant>/NAME.wasm`; files at the top belong to [`DEFAULT_TENANT`]), and their
//! commands are private to that tenant unless their sidecar says `public = true`. Without a
//! tenants file a node is open: every caller sees every command.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The tenant of plugins at the top of the plugin directory.
pub const DEFAULT_TENANT: &str = "default";

/// The capabilities a tenant may allow its plugins (see the sidecar's `[grants]`).
pub const GRANT_KINDS: &[&str] = &["read_dir", "env"];

/// How long a request waits for one of its tenant's running slots before it is refused as busy.
pub const BUSY_WAIT: Duration = Duration::from_millis(1000);

/// Requests a tenant may run at once unless its entry says otherwise: one less than the cores,
/// so that no tenant can keep every core busy and starve the others (`docs/benchmarks.md`,
/// "One tenant under attack by another").
pub fn default_max_concurrent() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores.saturating_sub(1).max(1)).unwrap_or(u32::MAX)
}

/// The tenant a plugin belongs to: the directory it sits in below the plugin directory.
pub fn tenant_of(plugin: &str) -> &str {
    plugin.split_once('/').map_or(DEFAULT_TENANT, |(tenant, _)| tenant)
}

/// Whether `id` can name a tenant (and its plugin directory).
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && id.len() <= 64
}

/// The form a token is stored in: `sha256:` and the hex digest.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// A new random token: 32 bytes, hex.
pub fn new_token() -> Result<String, TenancyError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TenancyError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("no randomness available: {0}")]
    Random(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    id: String,
    /// `sha256:<hex>` of each token (`weft token` makes one).
    #[serde(default)]
    tokens: Vec<String>,
    calls_per_second: Option<f64>,
    max_concurrent: Option<u32>,
    /// Capabilities its plugins' sidecars may grant: `read_dir`, `env`.
    #[serde(default)]
    grants: Vec<String>,
    /// Ceilings for its plugins, whatever their sidecars say.
    memory_mb: Option<u64>,
    deadline_ms: Option<u64>,
    /// Largest request frame its clients may send.
    max_request_bytes: Option<usize>,
    /// `ed25519:<hex>` keys; when listed, its plugins must be signed by one of them.
    #[serde(default)]
    publishers: Vec<String>,
}

/// What a tenant's plugins and requests may use at most; `None`: the node's limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceiling {
    pub memory_bytes: Option<usize>,
    pub deadline: Option<Duration>,
}

/// Why a request of a tenant is not run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    RateLimited(String),
    Busy(String),
}

/// One tenant and its limits.
#[derive(Debug)]
pub struct Tenant {
    pub id: Arc<str>,
    rate: Option<Mutex<Bucket>>,
    running: Arc<Semaphore>,
    max_concurrent: u32,
    grants: Vec<String>,
    ceiling: Ceiling,
    publishers: Vec<[u8; 32]>,
    /// Largest request frame its clients may send, when below the node's.
    pub max_request_bytes: Option<usize>,
}

#[derive(Debug)]
struct Bucket {
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl Tenant {
    /// Takes `calls` from the tenant's rate; refused when the rate is spent (a burst of one
    /// second's worth is allowed).
    pub fn admit(&self, calls: usize) -> Result<(), Refusal> {
        let Some(rate) = &self.rate else { return Ok(()) };
        let Ok(mut bucket) = rate.lock() else { return Ok(()) };
        let now = Instant::now();
        let refill = now.duration_since(bucket.updated).as_secs_f64() * bucket.per_second;
        bucket.tokens = (bucket.tokens + refill).min(bucket.per_second.max(1.0));
        bucket.updated = now;
        let calls = calls as f64;
        if bucket.tokens >= calls {
            bucket.tokens -= calls;
            Ok(())
        } else {
            Err(Refusal::RateLimited(format!(
                "tenant `{}` is over its rate of {} calls per second; retry later",
                self.id, bucket.per_second
            )))
        }
    }

    /// A running slot of the tenant, waited for at most [`BUSY_WAIT`].
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        match tokio::time::timeout(BUSY_WAIT, self.running.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::Busy(format!(
                "tenant `{}` is busy: {} requests are running, its limit, and none finished within {} ms",
                self.id,
                self.max_concurrent,
                BUSY_WAIT.as_millis()
            ))),
        }
    }
}

/// The tenants of a node.
#[derive(Debug, Default)]
pub struct Tenants {
    by_token: HashMap<String, Arc<Tenant>>,
    by_id: HashMap<String, Arc<Tenant>>,
    ids: Vec<Arc<str>>,
}

impl Tenants {
    /// Reads a tenants file; every mistake is an error naming it.
    pub fn load(path: &Path) -> Result<Tenants, TenancyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TenancyError::Read {
            path: shown.clone(),
            source,
        })?;
        Tenants::parse(&text).map_err(|reason| TenancyError::Invalid { path: shown, reason })
    }

    /// Parses the text of a tenants file.
    pub fn parse(text: &str) -> Result<Tenants, String> {
        let file: TenantsFile = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut tenants = Tenants::default();
        for entry in file.tenant {
            if !valid_id(&entry.id) {
                return Err(format!(
                    "tenant id `{}`: use lower-case letters, digits, `_` and `-` (it names a plugin directory)",
                    entry.id
                ));
            }
            if tenants.ids.iter().any(|id| **id == *entry.id) {
                return Err(format!("tenant `{}` is listed twice", entry.id));
            }
            if let Some(rate) = entry.calls_per_second.filter(|r| !(r.is_finite() && *r > 0.0)) {
                return Err(format!(
                    "tenant `{}`: calls_per_second must be above 0, not {rate}",
                    entry.id
                ));
            }
            if let Some(unknown) = entry.grants.iter().find(|g| !GRANT_KINDS.contains(&g.as_str())) {
                return Err(format!(
                    "tenant `{}`: unknown grant `{unknown}` (known: {})",
                    entry.id,
                    GRANT_KINDS.join(", ")
                ));
            }
            if entry.memory_mb == Some(0) || entry.deadline_ms == Some(0) || entry.max_request_bytes == Some(0) {
                return Err(format!(
                    "tenant `{}`: a limit of 0 would make it unusable; remove the key to use the node's",
                    entry.id
                ));
            }
            if entry.max_concurrent == Some(0) {
                return Err(format!("tenant `{}`: max_concurrent must be at least 1", entry.id));
            }
            let max_concurrent = entry.max_concurrent.unwrap_or_else(default_max_concurrent);
            let publishers = entry
                .publishers
                .iter()
                .map(|p| crate::plugins::signature::parse_public(p).map_err(|e| format!("tenant `{}`: {e}", entry.id)))
                .collect::<Result<Vec<_>, _>>()?;
            let tenant = Arc::new(Tenant {
                id: Arc::from(entry.id.as_str()),
                rate: entry.calls_per_second.map(|per_second| {
                    Mutex::new(Bucket {
                        per_second,
                        tokens: per_second.max(1.0),
                        updated: Instant::now(),
                    })
                }),
                running: Arc::new(Semaphore::new(max_concurrent as usize)),
                max_concurrent,
                grants: entry.grants.clone(),
                ceiling: Ceiling {
                    memory_bytes: entry.memory_mb.map(|mb| (mb as usize) << 20),
                    deadline: entry.deadline_ms.map(Duration::from_millis),
                },
                max_request_bytes: entry.max_request_bytes,
                publishers,
            });
            for token in entry.tokens {
                let Some(digest) = token.strip_prefix("sha256:") else {
                    return Err(format!(
                        "tenant `{}`: tokens are stored hashed, as `sha256:<hex>` (`weft token` prints one)",
                        entry.id
                    ));
                };
                if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("tenant `{}`: `{token}` is not a sha256 digest", entry.id));
                }
                let key = format!("sha256:{}", digest.to_ascii_lowercase());
                if tenants.by_token.insert(key, tenant.clone()).is_some() {
                    return Err(format!("tenant `{}`: a token is listed twice", entry.id));
                }
            }
            tenants.by_id.insert(entry.id.clone(), tenant.clone());
            tenants.ids.push(tenant.id.clone());
        }
        if tenants.ids.is_empty() {
            return Err("no [[tenant]] is listed".into());
        }
        Ok(tenants)
    }

    /// The tenant a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Tenant>> {
        self.by_token.get(&hash_token(token)).cloned()
    }

    /// Whether plugins of `tenant` may be granted capability `kind`. Plugins at the top of the
    /// plugin directory belong to the node's operator and may be granted anything.
    pub fn allows(&self, tenant: &str, kind: &str) -> bool {
        tenant == DEFAULT_TENANT
            || self
                .by_id
                .get(tenant)
                .is_some_and(|t| t.grants.iter().any(|g| g == kind))
    }

    /// The keys `tenant`'s plugins must be signed by; empty: no signature required.
    pub fn publishers(&self, tenant: &str) -> &[[u8; 32]] {
        self.by_id.get(tenant).map_or(&[], |t| &t.publishers)
    }

    /// The ceilings of `tenant`'s plugins (none for the operator's, or an unknown tenant's).
    pub fn ceiling(&self, tenant: &str) -> Ceiling {
        self.by_id.get(tenant).map(|t| t.ceiling).unwrap_or_default()
    }

    /// The configured tenant ids.
    pub fn ids(&self) -> &[Arc<str>] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token: &str) -> String {
        format!(
            "[[tenant]]\nid = \"acme\"\ntokens = [\"{}\"]\ncalls_per_second = 2\nmax_concurrent = 1\n\n[[tenant]]\nid = \"beta\"\n",
            hash_token(token)
        )
    }

    #[test]
    fn tokens_authenticate_their_tenant_only() {
        let tenants = Tenants::parse(&file("secret")).unwrap();
        assert_eq!(&*tenants.authenticate("secret").unwrap().id, "acme");
        assert!(tenants.authenticate("Secret").is_none());
        assert!(tenants.authenticate("").is_none());
        assert_eq!(tenants.ids().len(), 2);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expected) in [
            ("[[tenant]]\nid = \"Acme\"\n", "tenant id `Acme`"),
            ("[[tenant]]\nid = \"a\"\n[[tenant]]\nid = \"a\"\n", "listed twice"),
            ("[[tenant]]\nid = \"a\"\ntokens = [\"plain\"]\n", "stored hashed"),
            ("[[tenant]]\nid = \"a\"\nrate = 3\n", "unknown field `rate`"),
            ("[[tenant]]\nid = \"a\"\ncalls_per_second = 0\n", "above 0"),
            ("", "no [[tenant]]"),
        ] {
            let error = Tenants::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_rate_allows_a_second_of_burst_then_refuses() {
        let tenants = Tenants::parse(&file("t")).unwrap();
        let acme = tenants.authenticate("t").unwrap();
        assert!(acme.admit(1).is_ok());
        assert!(acme.admit(1).is_ok());
        assert!(matches!(acme.admit(1), Err(Refusal::RateLimited(m)) if m.contains("2 calls per second")));
    }

    #[test]
    fn plugins_belong_to_their_directory() {
        assert_eq!(tenant_of("acme/greeter"), "acme");
        assert_eq!(tenant_of("greeter"), DEFAULT_TENANT);
    }
}
