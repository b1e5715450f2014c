//! Encryption of the Olm state at rest.
//!
//! Layout: `MAGIC (8) ‖ salt (16) ‖ vodozemac pickle ciphertext`.
//!
//! Two kinds of pickle share the layout ([`Kind`]): the account (`kitholm\x01`, which is also the
//! header of the whole-state pickles written before sessions were saved per peer) and one peer's
//! sessions (`kithses\x01`). Each kind has its own header and its own key-derivation context, so a
//! sessions pickle can never be opened as an account pickle or the other way round.
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

const SALT_LEN: usize = 16;

/// What a pickle holds; decides its header and its key-derivation context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A prost `OlmPickle`: the account (and, in pickles from before per-peer saving, every
    /// session). Megolm pickles (`group.rs`) use it too: their header predates the second kind.
    Account,
    /// A prost `OlmPeerSessions`: the sessions with one peer.
    Sessions,
}

impl Kind {
    /// "kith Olm pickle, format 1" / "kith sessions, format 1". A different header means another
    /// file or a newer format.
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Account => b"kitholm\x01",
            Kind::Sessions => b"kithses\x01",
        }
    }

    /// blake3 `derive_key` context for the per-save cipher key.
    fn context(self) -> &'static str {
        match self {
            Kind::Account => "kith 2026 olm pickle v1 cipher key",
            Kind::Sessions => "kith 2026 olm peer sessions v1 cipher key",
        }
    }
}

/// Encrypts `plaintext` (a prost-encoded `OlmPickle` or `OlmPeerSessions`) with `key`.
pub(crate) fn seal(plaintext: &[u8], key: &PickleKey, kind: Kind) -> Result<Vec<u8>, CryptoError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(CryptoError::Random)?;
    let ciphertext = cipher(key, &salt, kind).encrypt_pickle(plaintext);
    let magic = kind.magic();
    let mut out = Vec::with_capacity(magic.len() + SALT_LEN + ciphertext.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Reverses [`seal`]; the plaintext is wiped when the returned buffer drops.
pub(crate) fn open(
    bytes: &[u8],
    key: &PickleKey,
    kind: Kind,
) -> Result<Zeroizing<Vec<u8>>, PickleError> {
    let rest = bytes
        .strip_prefix(kind.magic().as_slice())
        .ok_or(PickleError::UnknownFormat)?;
    let (salt, ciphertext) = rest
        .split_first_chunk::<SALT_LEN>()
        .ok_or(PickleError::WrongKeyOrDamaged)?;
    cipher(key, salt, kind)
        .decrypt_pickle(ciphertext)
        .map(Zeroizing::new)
        // Wrong key and damage are indistinguishable by design: both fail the MAC.
        .map_err(|_| PickleError::WrongKeyOrDamaged)
}

fn cipher(key: &PickleKey, salt: &[u8; SALT_LEN], kind: Kind) -> Cipher {
    let mut hasher = blake3::Hasher::new_derive_key(kind.context());
    hasher.update(key.as_bytes());
    hasher.update(salt);
    let mut derived: [u8; 32] = *hasher.finalize().as_bytes();
    let cipher = Cipher::new_pickle(&derived);
    derived.zeroize();
    cipher
}
