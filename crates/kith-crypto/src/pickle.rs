//! Encryption of the Olm state at rest.
//!
//! Layout: `MAGIC (8) ‖ salt (16) ‖ vodozemac pickle ciphertext`.
//!
//! The ciphertext is vodozemac's own pickle encryption (`hazmat::Cipher::encrypt_pickle`:
//! AES-256-CBC plus HMAC-SHA-256 truncated to 8 bytes, keys and IV from HKDF of the key), the same
//! construction `AccountPickle::encrypt` uses, applied once to the whole container so a single
//! MAC covers the account and every session together. That cipher derives its IV from the key,
//! so the same key would encrypt every saved state under the same IV; a random salt per save,
//! hashed with the pickle key into a fresh cipher key, removes that repetition.

use vodozemac::hazmat::Cipher;
use zeroize::{Zeroize, Zeroizing};

use crate::{CryptoError, PickleError, PickleKey};

/// "kith Olm pickle, format 1". A different header means another file or a newer format.
const MAGIC: &[u8; 8] = b"kitholm\x01";
const SALT_LEN: usize = 16;
/// blake3 `derive_key` context for the per-save cipher key.
const KDF_CONTEXT: &str = "kith 2026 olm pickle v1 cipher key";

/// Encrypts `plaintext` (a prost-encoded `OlmPickle`) with `key`.
pub(crate) fn seal(plaintext: &[u8], key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(CryptoError::Random)?;
    let ciphertext = cipher(key, &salt).encrypt_pickle(plaintext);
    let mut out = Vec::with_capacity(MAGIC.len() + SALT_LEN + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Reverses [`seal`]; the plaintext is wiped when the returned buffer drops.
pub(crate) fn open(bytes: &[u8], key: &PickleKey) -> Result<Zeroizing<Vec<u8>>, PickleError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(PickleError::UnknownFormat)?;
    let (salt, ciphertext) = rest
        .split_first_chunk::<SALT_LEN>()
        .ok_or(PickleError::WrongKeyOrDamaged)?;
    cipher(key, salt)
        .decrypt_pickle(ciphertext)
        .map(Zeroizing::new)
        // Wrong key and damage are indistinguishable by design: both fail the MAC.
        .map_err(|_| PickleError::WrongKeyOrDamaged)
}

fn cipher(key: &PickleKey, salt: &[u8; SALT_LEN]) -> Cipher {
    let mut hasher = blake3::Hasher::new_derive_key(KDF_CONTEXT);
    hasher.update(key.as_bytes());
    hasher.update(salt);
    let mut derived: [u8; 32] = *hasher.finalize().as_bytes();
    let cipher = Cipher::new_pickle(&derived);
    derived.zeroize();
    cipher
}
