//! Values sealed with the cluster's data key: secret values (and, to come,
//! the edge certificates' private keys) are kept in the store only as
//! XChaCha20-Poly1305 ciphertexts, each with its own random 24-byte nonce
//! (random nonces of that size never repeat in practice) and bound, as
//! associated data, to what they belong to (a secret's name and version),
//! so that a ciphertext moved onto another record does not open.
//!
//! The data key is 32 random bytes kept apart from the store, in a file of
//! its own (0600): a copy of the store alone reveals no secret. Every
//! sealed value names the key it was sealed with (a fingerprint), so that
//! a key can be rotated and managers that share it (part 9) agree.
//!
//! **Invariant:** nothing here logs, prints or formats a key or a value
//! (`Debug` shows fingerprints and lengths only).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a value could not be sealed or opened, or the key read.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("data key {path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        err: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("data key {0}: not a data key (32 bytes, base64)")]
    BadKey(String),
    /// The value was sealed with another key.
    #[error("sealed with data key {sealed}, and this manager holds {held}")]
    OtherKey {
        /// The key it was sealed with.
        sealed: String,
        /// The key held.
        held: String,
    },
    /// The unlock key given is not the one that locked the data key.
    #[error("wrong unlock key")]
    WrongUnlockKey,
    /// The ciphertext does not open: tampered with, or moved onto another
    /// record.
    #[error("a sealed value does not open (altered, or not this record's)")]
    Corrupt,
}

/// The cluster's data key.
pub struct DataKey {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

/// A sealed value, as the store keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The fingerprint of the key it was sealed with.
    pub key: String,
    /// The nonce, base64.
    pub nonce: String,
    /// The ciphertext and its tag, base64.
    pub data: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key", &self.key)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::fill(&mut key[..]);
        Self::from_bytes(key)
    }

    fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let id = hex::encode(&Sha256::digest(&key[..])[..8]);
        Self { key, id }
    }

    /// Its fingerprint: the first 8 bytes of its SHA-256, hex (names the
    /// key, reveals nothing of it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key at `path`, or makes one there (0600, created
    /// exclusively: two managers starting at once do not make two).
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let io = |err| SealError::Io {
            path: path.display().to_string(),
            err,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Self::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                let text = Zeroizing::new(B64.encode(&k.key[..]));
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(k)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<Self, SealError> {
        let bad = || SealError::BadKey(path.display().to_string());
        let bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|_| bad())?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(Self::from_bytes(Zeroizing::new(key)))
    }

    /// Seals `value`, bound to `aad` (what it belongs to).
    pub fn seal(&self, value: &[u8], aad: &[u8]) -> Sealed {
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce);
        let data = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad })
            .expect("XChaCha20-Poly1305 seals any length a store holds");
        Sealed {
            key: self.id.clone(),
            nonce: B64.encode(nonce),
            data: B64.encode(data),
        }
    }

    /// Opens a value sealed with this key and the same `aad`.
    pub fn open(&self, s: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if s.key != self.id {
            return Err(SealError::OtherKey {
                sealed: s.key.clone(),
                held: self.id.clone(),
            });
        }
        let nonce = B64.decode(&s.nonce).map_err(|_| SealError::Corrupt)?;
        let data = B64.decode(&s.data).map_err(|_| SealError::Corrupt)?;
        if nonce.len() != 24 {
            return Err(SealError::Corrupt);
        }
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &data, aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Corrupt)
    }
}

/// The key that locks the data key at rest (`gantry server --autolock`,
/// as Swarm's autolock): given by the operator at each start of a manager
/// (`gantry unlock`), kept nowhere by Gantry.
pub struct UnlockKey(DataKey);

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

/// How an unlock key is written: `GKEY-1-` and 43 characters of base64url.
const UNLOCK_PREFIX: &str = "GKEY-1-";

/// What a locked data key is bound to.
const LOCK_AAD: &[u8] = b"gantry data key";

impl UnlockKey {
    /// A new random one.
    pub fn generate() -> Self {
        Self(DataKey::generate())
    }

    /// Reads one as [`UnlockKey::reveal`] writes it.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let bad = || SealError::BadKey("the unlock key (GKEY-1-...)".into());
        let b = text.trim().strip_prefix(UNLOCK_PREFIX).ok_or_else(bad)?;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .map_err(|_| bad())?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(Self(DataKey::from_bytes(Zeroizing::new(key))))
    }

    /// The key as the operator keeps it (shown once, when made).
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{UNLOCK_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0.key[..])
        ))
    }
}

impl DataKey {
    /// Itself sealed with `unlock`, as a locked manager keeps it.
    pub fn lock(&self, unlock: &UnlockKey) -> Sealed {
        unlock.0.seal(&self.key[..], LOCK_AAD)
    }

    /// The key a [`DataKey::lock`] sealed, given the right unlock key.
    pub fn unlock(locked: &Sealed, unlock: &UnlockKey) -> Result<Self, SealError> {
        let bytes = unlock.0.open(locked, LOCK_AAD).map_err(|e| match e {
            SealError::OtherKey { .. } | SealError::Corrupt => SealError::WrongUnlockKey,
            e => e,
        })?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Corrupt)?;
        Ok(Self::from_bytes(Zeroizing::new(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_record_only() {
        let k = DataKey::generate();
        let s = k.seal(b"s3cret #42", b"secret db_password v1");
        assert!(!s.data.contains("s3cret"));
        assert_eq!(
            &k.open(&s, b"secret db_password v1").unwrap()[..],
            b"s3cret #42"
        );
        // Another record's: refused.
        assert!(matches!(
            k.open(&s, b"secret db_password v2"),
            Err(SealError::Corrupt)
        ));
        // Altered: refused.
        let mut bad = s.clone();
        let mut d = B64.decode(&bad.data).unwrap();
        d[0] ^= 1;
        bad.data = B64.encode(d);
        assert!(matches!(
            k.open(&bad, b"secret db_password v1"),
            Err(SealError::Corrupt)
        ));
        // Another key: named, refused.
        let other = DataKey::generate();
        let e = other.open(&s, b"secret db_password v1").unwrap_err();
        assert!(e.to_string().contains(k.id()), "{e}");
        // Two seals of one value differ (their nonces).
        assert_ne!(k.seal(b"x", b"a"), k.seal(b"x", b"a"));
        // Debug shows neither key nor value.
        let shown = format!("{k:?} {s:?}");
        assert!(
            !shown.contains(&s.data) && !shown.contains(&s.nonce),
            "{shown}"
        );
    }

    #[test]
    fn a_locked_data_key_opens_with_its_unlock_key_only() {
        let k = DataKey::generate();
        let u = UnlockKey::generate();
        let locked = k.lock(&u);
        let shown = u.reveal();
        assert!(
            shown.starts_with("GKEY-1-") && shown.len() == 7 + 43,
            "{}",
            shown.len()
        );
        let again = DataKey::unlock(&locked, &UnlockKey::parse(&shown).unwrap()).unwrap();
        assert_eq!(again.id(), k.id());
        let e = DataKey::unlock(&locked, &UnlockKey::generate()).unwrap_err();
        assert!(matches!(e, SealError::WrongUnlockKey), "{e}");
        for bad in ["", "GKEY-1-", "GKEY-1-abc", "SWMKEY-1-x", &shown[1..]] {
            assert!(UnlockKey::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{u:?}"), "UnlockKey(..)");
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let k = DataKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = DataKey::load_or_create(&path).unwrap();
        assert_eq!(k.id(), again.id());
        let s = k.seal(b"v", b"r");
        assert_eq!(&again.open(&s, b"r").unwrap()[..], b"v");
        std::fs::write(&path, "not a key").unwrap();
        let e = DataKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("not a data key"), "{e}");
    }
}
