//! Publisher signatures: a detached ed25519 signature beside a component (`NAME.wasm.sig`), made
//! by `weft plugin sign`. A tenant that lists publisher keys only runs components signed by one
//! of them; an unsigned or tampered component is refused and the previous version keeps serving.

use crate::fabric::identity::{verify, NodeKey};

/// Appended to a component's file name to name its signature.
pub const SUFFIX: &str = ".sig";

/// Why a component's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned: tenant `{0}` runs only components signed by its publishers (weft plugin sign)")]
    Missing(String),
    #[error("the signature file is malformed: {0}")]
    Malformed(String),
    #[error("signed by {0}, which is not a publisher of tenant `{1}`")]
    UnknownPublisher(String, String),
    #[error("the signature does not match the component (tampered, or signed for other bytes)")]
    Mismatch,
}

/// The message a signature covers: a fixed context and the component's sha256 (hex).
fn message(digest: &str) -> Vec<u8> {
    format!("weft-plugin-signature-v1\n{digest}\n").into_bytes()
}

/// A public key as written in files: `ed25519:<hex>`.
pub fn public_text(public: &[u8; 32]) -> String {
    format!("ed25519:{}", hex::encode(public))
}

/// Reads `ed25519:<hex>`.
pub fn parse_public(text: &str) -> Result<[u8; 32], String> {
    text.trim()
        .strip_prefix("ed25519:")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| format!("`{}` is not an ed25519:<64 hex digits> public key", text.trim()))
}

/// The signature file's text for the component with sha256 `digest`.
pub fn sign(key: &NodeKey, digest: &str) -> String {
    format!(
        "{}\n{}\n",
        public_text(&key.public()),
        hex::encode(key.sign(&message(digest)))
    )
}

/// Checks the signature file's text (`None`: no file) of the component with sha256 `digest`
/// against `tenant`'s publishers.
pub fn check(
    digest: &str,
    signature: Option<&str>,
    tenant: &str,
    publishers: &[[u8; 32]],
) -> Result<(), SignatureError> {
    let text = signature.ok_or_else(|| SignatureError::Missing(tenant.to_string()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(public), Some(signature)) = (lines.next(), lines.next()) else {
        return Err(SignatureError::Malformed(
            "expected a public key line and a signature line".into(),
        ));
    };
    let public = parse_public(public).map_err(SignatureError::Malformed)?;
    let signature = hex::decode(signature).map_err(|e| SignatureError::Malformed(format!("signature: {e}")))?;
    if !publishers.contains(&public) {
        return Err(SignatureError::UnknownPublisher(
            public_text(&public),
            tenant.to_string(),
        ));
    }
    if verify(&public, &message(digest), &signature) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_publishers_signature_of_these_bytes_passes() {
        let key = NodeKey::generate();
        let other = NodeKey::generate();
        let file = sign(&key, "abc");
        assert_eq!(check("abc", Some(&file), "t", &[key.public()]), Ok(()));
        assert_eq!(
            check("abd", Some(&file), "t", &[key.public()]),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            check("abc", Some(&file), "t", &[other.public()]),
            Err(SignatureError::UnknownPublisher(..))
        ));
        assert_eq!(
            check("abc", None, "t", &[key.public()]),
            Err(SignatureError::Missing("t".into()))
        );
        assert!(matches!(
            check("abc", Some("garbage"), "t", &[key.public()]),
            Err(SignatureError::Malformed(_))
        ));
    }
}
