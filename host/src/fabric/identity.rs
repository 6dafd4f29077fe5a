//! A node's signing key: it proves the node's identity in the handshake and signs the node's
//! record, so a record relayed by other nodes still cannot be forged by them. Plugin publishers'
//! keys (`weft plugin keygen`) are the same kind of key, kept in a file of their own.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The file in the data directory that keeps the key's seed (hex).
const KEY_FILE: &str = "node-key";

/// An ed25519 key pair.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", hex::encode(self.public()))
    }
}

/// Why a key could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} does not hold a 32-byte hex key seed")]
    Malformed { path: String },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        NodeKey {
            signing: SigningKey::from_bytes(&super::auth::nonce()),
        }
    }

    /// The key of a 32-byte seed (the simulator derives its nodes' keys from its own seed).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The key kept in `dir`, created on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        Self::load_or_create_file(&dir.join(KEY_FILE))
    }

    /// The key kept in `file` (its seed in hex, mode 0600), created on first use.
    pub fn load_or_create_file(file: &Path) -> Result<Self, KeyError> {
        let file = file.to_path_buf();
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let path = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let seed: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or(KeyError::Malformed { path })?;
                Ok(NodeKey {
                    signing: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate();
                std::fs::create_dir_all(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    &dir
                })
                .map_err(|source| KeyError::Write {
                    path: path.clone(),
                    source,
                })?;
                write_private(&file, &format!("{}\n", hex::encode(key.signing.to_bytes())))
                    .map_err(|source| KeyError::Write { path, source })?;
                Ok(key)
            }
            Err(source) => Err(KeyError::Read { path, source }),
        }
    }

    /// The public half, as carried in handshakes and records.
    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).to_bytes().to_vec()
    }
}

/// Whether `signature` is `public`'s signature of `message`.
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}

#[cfg(unix)]
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(file, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let signature = a.sign(b"record");
        assert!(verify(&a.public(), b"record", &signature));
        assert!(!verify(&b.public(), b"record", &signature));
        assert!(!verify(&a.public(), b"recorD", &signature));
        assert!(!verify(&a.public(), b"record", &signature[..63]));
    }

    #[test]
    fn a_kept_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeKey::load_or_create(dir.path()).unwrap();
        let again = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public(), again.public());
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            NodeKey::load_or_create(dir.path()),
            Err(KeyError::Malformed { .. })
        ));
    }
}
