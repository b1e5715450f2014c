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
    ///
    /// A comparison with [`SMALL_ORDER`] rather than a trial exchange with a throwaway secret:
    /// same answer (see the tests), without a scalar multiplication per key. Bundles are checked
    /// on every DHT answer and store, so this ran twice per bundle check, tens of times per
    /// first message in `dm.first`'s profile.
    pub(crate) fn is_contributory(&self) -> bool {
        let mut u = self.0.to_bytes();
        // X25519 ignores the top bit of a u-coordinate.
        u[31] &= 0x7f;
        !SMALL_ORDER.contains(&u)
    }
}

/// Every 255-bit encoding of a Curve25519 u-coordinate whose point, on the curve or on its twist,
/// has an order dividing 8, so that X25519 with any (clamped) secret gives the all-zero secret:
/// 0, 1, the two u-coordinates of the points of order 8, p − 1 (order 4, on the twist), and the
/// non-canonical p and p + 1 (which reduce to 0 and 1). Little-endian, as on the wire. The same
/// list as libsodium's `has_small_order`; the tests check each entry against a real exchange and
/// against curve25519-dalek's eight-torsion points.
const SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    p_plus(-1),
    p_plus(0),
    p_plus(1),
];

/// The little-endian encoding of 2^255 − 19 + `delta` (−1, 0 or 1).
const fn p_plus(delta: i8) -> [u8; 32] {
    let mut bytes = [0xff; 32];
    bytes[31] = 0x7f;
    bytes[0] = (0xed_i16 + delta as i16) as u8;
    bytes
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The old check: a trial exchange with a throwaway secret.
    fn exchange_is_contributory(bytes: [u8; 32]) -> bool {
        vodozemac::Curve25519SecretKey::new()
            .diffie_hellman(&Curve25519PublicKey::from_bytes(bytes))
            .is_some()
    }

    #[test]
    fn every_listed_encoding_gives_an_all_zero_secret_with_or_without_the_top_bit() {
        for entry in SMALL_ORDER {
            for top in [0, 0x80] {
                let mut bytes = entry;
                bytes[31] |= top;
                assert!(!exchange_is_contributory(bytes), "{bytes:02x?}");
                assert!(!Curve25519Key::from_bytes(bytes).is_contributory());
            }
        }
    }

    #[test]
    fn the_list_holds_every_eight_torsion_point_of_the_curve() {
        for point in curve25519_dalek::constants::EIGHT_TORSION {
            let u = point.to_montgomery().to_bytes();
            assert!(SMALL_ORDER.contains(&u), "{u:02x?}");
        }
    }

    #[test]
    fn real_keys_and_near_misses_are_contributory() {
        let real = vodozemac::Curve25519SecretKey::new();
        let public = vodozemac::Curve25519PublicKey::from(&real).to_bytes();
        assert!(Curve25519Key::from_bytes(public).is_contributory());
        assert!(exchange_is_contributory(public));
        // Next to the listed values: 2, p − 2, p + 2.
        for bytes in [
            [2; 1]
                .iter()
                .chain([0; 31].iter())
                .copied()
                .collect::<Vec<u8>>(),
            p_plus(-2).to_vec(),
            p_plus(2).to_vec(),
        ] {
            let bytes: [u8; 32] = bytes.try_into().unwrap();
            assert!(Curve25519Key::from_bytes(bytes).is_contributory());
            assert!(exchange_is_contributory(bytes), "{bytes:02x?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_a_trial_exchange(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            proptest::prop_assert_eq!(
                Curve25519Key::from_bytes(bytes).is_contributory(),
                exchange_is_contributory(bytes)
            );
        }
    }
}
