//! TLS for the node's listener and for the connections it makes (rustls with *ring*).
//!
//! A node with `--tls-cert` and `--tls-key` serves `wss://` only. With `--tls-ca`, the connections
//! it makes to peers trust that CA (and nothing else); with `--peer-mtls` as well, it presents its
//! own certificate when it dials a peer and requires a certificate signed by the CA from every peer
//! that dials it (clients need none: they authenticate with tenant tokens).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a WebSocket runs over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection accepted by the listener, TLS or not.
pub type Stream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("the TLS configuration is not usable: {0}")]
    Config(String),
}

/// Certificate files of a node.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA peers' certificates are checked against (PEM); also what clients of this node trust.
    pub ca: Option<PathBuf>,
    /// Peers must present a certificate signed by `ca`, and this node presents its own.
    pub peer_mtls: bool,
}

/// What a node needs for TLS: the listener's configuration and the dialer's.
#[derive(Debug, Clone)]
pub struct Tls {
    pub server: Arc<ServerConfig>,
    /// For dialing peers (`wss://`): trusts `ca`; presents the node's certificate with mTLS.
    pub peer_client: Arc<ClientConfig>,
    pub peer_mtls: bool,
}

impl Tls {
    /// Loads the files and builds both configurations.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let chain = certificates(&files.cert)?;
        let key = private_key(&files.key)?;
        let roots = match &files.ca {
            Some(ca) => Some(roots(ca)?),
            None => None,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?;
        let builder = match (&roots, files.peer_mtls) {
            (Some(roots), true) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(config)?,
            ),
            (None, true) => return Err(TlsError::Config("--peer-mtls needs --tls-ca".into())),
            _ => builder.with_no_client_auth(),
        };
        let server = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots.unwrap_or_else(RootCertStore::empty));
        let peer_client = if files.peer_mtls {
            client.with_client_auth_cert(chain, key).map_err(config)?
        } else {
            client.with_no_client_auth()
        };
        Ok(Tls {
            server: Arc::new(server),
            peer_client: Arc::new(peer_client),
            peer_mtls: files.peer_mtls,
        })
    }
}

/// A client configuration that trusts the CA in `ca` (PEM) only.
pub fn client_trusting(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(config)?;
    }
    Ok(roots)
}
