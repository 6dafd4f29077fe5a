//! Proof of the shared cluster secret: HMAC-SHA256 over both nonces and both node ids, so the
//! secret never crosses the wire and a proof cannot be replayed on another connection.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A fresh random nonce.
pub fn nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    if getrandom::fill(&mut nonce).is_err() {
        // No OS randomness: fall back to time and address entropy (still unique per connection).
        let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &nonce);
        nonce.copy_from_slice(&<Sha256 as sha2::Digest>::digest(seed.as_bytes()));
    }
    nonce
}

/// The proof `role` (`"dialer"` or `"listener"`) gives of knowing `secret`.
pub fn proof(
    secret: &[u8],
    role: &str,
    dialer_nonce: &[u8; 32],
    listener_nonce: &[u8; 32],
    dialer: &str,
    listener: &str,
) -> [u8; 32] {
    let mut mac = mac(secret);
    for part in [
        role.as_bytes(),
        dialer_nonce,
        listener_nonce,
        dialer.as_bytes(),
        listener.as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify(expected: &[u8; 32], given: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (a, b) in expected.iter().zip(given) {
        difference |= a ^ b;
    }
    difference == 0
}

/// HMAC keyed by the secret's sha256 (zero-padded to the block size, as HMAC pads any key).
fn mac(secret: &[u8]) -> Hmac<Sha256> {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&<Sha256 as sha2::Digest>::digest(secret));
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&key.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_nonces_and_nodes() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let p = proof(b"s3cret", "dialer", &a, &b, "n1", "n2");
        assert!(verify(&p, &proof(b"s3cret", "dialer", &a, &b, "n1", "n2")));
        assert!(!verify(&p, &proof(b"other", "dialer", &a, &b, "n1", "n2")));
        assert!(!verify(&p, &proof(b"s3cret", "listener", &a, &b, "n1", "n2")));
        assert!(!verify(&p, &proof(b"s3cret", "dialer", &b, &a, "n1", "n2")));
        assert!(!verify(&p, &proof(b"s3cret", "dialer", &a, &b, "n2", "n1")));
    }
}
