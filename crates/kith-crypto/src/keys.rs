use std::fmt;

use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, PickleError};

/// A public Curve25519 key: an Olm identity key or fallback key.
///
/// A newtype so callers do not depend on vodozemac; rendered as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Curve25519Key(pub(crate) Curve25519PublicKey);

impl Curve25519Key {
    /// Length of the binary form.
    pub const LENGTH: usize = 32;

    /// Wraps the 32-byte binary form. Any 32 bytes are accepted here; low-order points are
    /// refused when a key exchange would use them (or earlier, by bundle verification).
    pub fn from_bytes(bytes: [u8; Self::LENGTH]) -> Self {
        Self(Curve25519PublicKey::from_bytes(bytes))
    }

    /// Parses a slice, e.g. read from the store; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; Self::LENGTH] = bytes.try_into().ok()?;
        Some(Self::from_bytes(array))
    }

    /// The 32-byte binary form.
    pub fn to_bytes(&self) -> [u8; Self::LENGTH] {
        self.0.to_bytes()
    }

    /// True when a Diffie-Hellman exchange with this key would be contributory (it is not one of
    /// the few low-order points that force a predictable shared secret).
    pub(crate) fn is_contributory(&self) -> bool {
        vodozemac::Curve25519SecretKey::new()
            .diffie_hellman(&self.0)
            .is_some()
    }
}

impl fmt::Display for Curve25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, self.0.as_bytes())
    }
}

impl fmt::Debug for Curve25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Curve25519Key({self})")
    }
}

/// A public Ed25519 key: the Olm account's signing key.
///
/// A newtype so callers do not depend on vodozemac; rendered as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ed25519Key(pub(crate) Ed25519PublicKey);

impl Ed25519Key {
    /// Length of the binary form.
    pub const LENGTH: usize = 32;

    /// The 32-byte binary form.
    pub fn to_bytes(&self) -> [u8; Self::LENGTH] {
        *self.0.as_bytes()
    }
}

impl fmt::Display for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, self.0.as_bytes())
    }
}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Key({self})")
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// The 32-byte key that encrypts the Olm state at rest.
///
/// The node keeps it in a `0600` file in its home directory, apart from the store, so a copy of the
/// database alone does not reveal any session. It is wiped from memory on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PickleKey([u8; 32]);

impl PickleKey {
    /// Length of the key.
    pub const LENGTH: usize = 32;

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = [0u8; Self::LENGTH];
        getrandom::fill(&mut key).map_err(CryptoError::Random)?;
        Ok(Self(key))
    }

    /// Wraps key bytes, e.g. read from the key file; anything but 32 bytes is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; Self::LENGTH] = bytes
            .try_into()
            .map_err(|_| PickleError::BadKeyLength { len: bytes.len() })?;
        Ok(Self(key))
    }

    /// The raw key, for writing the key file. Handle with care.
    pub fn as_bytes(&self) -> &[u8; Self::LENGTH] {
        &self.0
    }
}

impl fmt::Debug for PickleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PickleKey(<redacted>)")
    }
}
