//! Personal data at rest: AES-256-GCM (ring) under the node's PII key, sealed at the edge so the
//! log, the state store, snapshots and backups hold only ciphertext. The customer id is the
//! associated data (a sealed blob moved under another customer does not open). A keyed
//! fingerprint (HMAC-SHA256 under a key derived from the PII key) of the clear text lets the
//! ledger recognise a retried registration without seeing the data.
//!
//! The key is 32 random bytes, hex in a file (`pii_key_file`); every node of a cluster has the
//! same one. Its id (the first 8 bytes of SHA-256 of the key, hex) is stored with each blob, so
//! a blob sealed under another key is refused by name rather than failing to authenticate.

use anyhow::{bail, Context};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use settle_cluster::ids::CustomerId;
use settle_cluster::ledger::SealedPii;
use std::path::Path;

pub struct PiiKey {
    id: String,
    key: LessSafeKey,
    fingerprint: hmac::Key,
    random: SystemRandom,
}

impl std::fmt::Debug for PiiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PiiKey({})", self.id)
    }
}

impl PiiKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> PiiKey {
        let id = hex::encode(&digest::digest(&digest::SHA256, bytes).as_ref()[..8]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key"));
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), b"settle pii fingerprint v1");
        PiiKey { id, key, fingerprint: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), random: SystemRandom::new() }
    }

    /// Reads a key file: 64 hex digits (surrounding whitespace ignored).
    pub fn load(path: &Path) -> anyhow::Result<PiiKey> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the PII key {}", path.display()))?;
        let bytes = hex::decode(text.trim()).with_context(|| format!("{}: the PII key is 64 hex digits", path.display()))?;
        let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!("{}: the PII key is 64 hex digits (32 bytes)", path.display());
        };
        Ok(PiiKey::new(&bytes))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, customer: &CustomerId, clear: &[u8]) -> SealedPii {
        let mut nonce = [0u8; 12];
        self.random.fill(&mut nonce).expect("the system's random source works");
        let mut ciphertext = clear.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(customer.as_str().as_bytes()), &mut ciphertext)
            .expect("sealing a bounded buffer cannot fail");
        let mut context = hmac::Context::with_key(&self.fingerprint);
        context.update(customer.as_str().as_bytes());
        context.update(&[0]);
        context.update(clear);
        let fingerprint = <[u8; 32]>::try_from(context.sign().as_ref()).expect("HMAC-SHA256 is 32 bytes");
        SealedPii { key_id: self.id.clone(), nonce, ciphertext, fingerprint }
    }

    /// The clear text of a blob sealed for `customer` under this key.
    pub fn open(&self, customer: &CustomerId, sealed: &SealedPii) -> anyhow::Result<Vec<u8>> {
        if sealed.key_id != self.id {
            bail!("sealed under key {}, this node has key {}", sealed.key_id, self.id);
        }
        let mut buffer = sealed.ciphertext.clone();
        let clear = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(sealed.nonce), Aad::from(customer.as_str().as_bytes()), &mut buffer)
            .map_err(|_| anyhow::anyhow!("the sealed data does not authenticate"))?;
        Ok(clear.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealed data opens only under the same key and customer; the ciphertext never contains
    /// the clear text; equal data has equal fingerprints under one key, and nonces differ.
    #[test]
    fn sealing_round_trips_and_binds_the_customer() {
        let key = PiiKey::new(&[7; 32]);
        let alice = CustomerId::new("alice").unwrap();
        let clear = br#"{"name":"Alice Zhang","number":"110101199003070000"}"#;
        let first = key.seal(&alice, clear);
        let second = key.seal(&alice, clear);
        assert_eq!(key.open(&alice, &first).unwrap(), clear);
        assert_ne!(first.nonce, second.nonce);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert!(!first.ciphertext.windows(5).any(|window| window == b"Alice"));
        assert!(key.open(&CustomerId::new("mallory").unwrap(), &first).is_err(), "moved to another customer");
        let mut tampered = first.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(key.open(&alice, &tampered).is_err());
        let other = PiiKey::new(&[8; 32]);
        assert!(other.open(&alice, &first).is_err());
        assert_ne!(other.seal(&alice, clear).fingerprint, first.fingerprint);
    }
}
