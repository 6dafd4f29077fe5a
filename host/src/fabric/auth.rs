//! Proof of the shared cluster secret: HMAC-SHA256 over a transcript of both nonces, node ids and
//! public keys, so the secret never crosses the wire and a proof cannot be replayed on another
//! connection or bound to another key.

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

/// What both sides of a handshake prove and sign: the role, both nonces, both node ids and both
/// public keys, each length-prefixed.
pub fn transcript(
    role: &str,
    dialer_nonce: &[u8; 32],
    listener_nonce: &[u8; 32],
    dialer: Party,
    listener: Party,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for part in [
        role.as_bytes(),
        dialer_nonce,
        listener_nonce,
        dialer.node.as_bytes(),
        listener.node.as_bytes(),
        dialer.key,
        listener.key,
    ] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// One side of a handshake: its node id and public key.
#[derive(Clone, Copy)]
pub struct Party<'a> {
    pub node: &'a str,
    pub key: &'a [u8; 32],
}

/// The proof of knowing `secret`, over a handshake transcript.
pub fn proof(secret: &[u8], transcript: &[u8]) -> [u8; 32] {
    let mut mac = mac(secret);
    mac.update(transcript);
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
    fn proofs_bind_secret_role_nonces_nodes_and_keys() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let p1 = Party { node: "n1", key: &k1 };
        let p2 = Party { node: "n2", key: &k2 };
        let p = proof(b"s3cret", &transcript("dialer", &a, &b, p1, p2));
        assert!(verify(&p, &proof(b"s3cret", &transcript("dialer", &a, &b, p1, p2))));
        assert!(!verify(&p, &proof(b"other", &transcript("dialer", &a, &b, p1, p2))));
        assert!(!verify(&p, &proof(b"s3cret", &transcript("listener", &a, &b, p1, p2))));
        assert!(!verify(&p, &proof(b"s3cret", &transcript("dialer", &b, &a, p1, p2))));
        assert!(!verify(&p, &proof(b"s3cret", &transcript("dialer", &a, &b, p2, p1))));
        let p1_other_key = Party { node: "n1", key: &k2 };
        assert!(!verify(
            &p,
            &proof(b"s3cret", &transcript("dialer", &a, &b, p1_other_key, p2))
        ));
    }
}
