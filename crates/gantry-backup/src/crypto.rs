//! The repository's keys and sealing. A repository's master key is the
//! backup key's value (a cluster secret, any length) stretched with the
//! repository's salt (HKDF-SHA256) into two keys: one seals every object
//! (XChaCha20-Poly1305, a random 24-byte nonce in front of each), one
//! names chunks (a keyed BLAKE3 of their plaintext, so that names say
//! nothing of the content to whoever holds the storage).

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::BackupError;

/// What a sealed object starts with (the nonce) and its tag adds.
pub const OVERHEAD: usize = 24 + 16;

/// The keys of one repository.
pub struct Keys {
    seal: XChaCha20Poly1305,
    id: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// The keys `secret` gives with this repository's `salt`.
    pub fn derive(secret: &[u8], salt: &[u8]) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), secret);
        let mut seal = Zeroizing::new([0u8; 32]);
        let mut id = Zeroizing::new([0u8; 32]);
        hk.expand(b"gantry-backup seal v1", seal.as_mut())
            .expect("32 bytes is a valid HKDF length");
        hk.expand(b"gantry-backup id v1", id.as_mut())
            .expect("32 bytes is a valid HKDF length");
        Keys {
            seal: XChaCha20Poly1305::new(seal.as_ref().into()),
            id,
        }
    }

    /// A chunk's (or tree's) name: the keyed hash of its plaintext, hex.
    pub fn id(&self, plain: &[u8]) -> String {
        blake3::keyed_hash(&self.id, plain).to_hex().to_string()
    }

    /// `plain`, sealed: nonce, then ciphertext and tag.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        let ct = self
            .seal
            .encrypt(XNonce::from_slice(&nonce), plain)
            .expect("XChaCha20-Poly1305 seals any length");
        out.extend_from_slice(&ct);
        out
    }

    /// What [`Keys::seal`] sealed; an error for anything else (another
    /// key, or bytes changed).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, BackupError> {
        if sealed.len() < OVERHEAD {
            return Err(BackupError::Corrupt("a sealed object is too short".into()));
        }
        let (nonce, ct) = sealed.split_at(24);
        self.seal
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| BackupError::WrongKeyOrCorrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_with_their_key_only() {
        let k = Keys::derive(b"secret", b"salt-1");
        let s = k.seal(b"hello");
        assert_eq!(s.len(), 5 + OVERHEAD);
        assert_eq!(k.open(&s).unwrap(), b"hello");
        assert_ne!(k.seal(b"hello"), s, "a nonce of its own each time");
        let other = Keys::derive(b"other", b"salt-1");
        assert!(matches!(
            other.open(&s),
            Err(BackupError::WrongKeyOrCorrupt)
        ));
        let salted = Keys::derive(b"secret", b"salt-2");
        assert!(salted.open(&s).is_err());
        let mut bad = s.clone();
        bad[30] ^= 1;
        assert!(k.open(&bad).is_err());
        assert!(k.open(&s[..10]).is_err());
    }

    #[test]
    fn ids_are_keyed() {
        let a = Keys::derive(b"secret", b"s");
        let b = Keys::derive(b"secret2", b"s");
        assert_eq!(a.id(b"x"), a.id(b"x"));
        assert_ne!(a.id(b"x"), b.id(b"x"));
        assert_eq!(a.id(b"x").len(), 64);
    }
}
