use libp2p::identity::PeerId;

use crate::Curve25519Key;

/// Everything that can go wrong while encrypting, decrypting, publishing keys or restoring state.
///
/// Untrusted input (bundles, ciphertexts, pickles) only ever produces one of these, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key bundle fetched from the network failed validation; it must not be used.
    #[error("invalid key bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The saved encryption state could not be restored.
    #[error("cannot restore the encryption state: {0}")]
    Pickle(#[from] PickleError),
    /// The bytes are not an Olm message this crate understands.
    #[error("malformed encrypted message: {reason}")]
    MalformedMessage {
        /// What was wrong with it.
        reason: String,
    },
    /// An encrypted message is larger than any message this crate produces, so it was not parsed.
    #[error("encrypted message is {len} bytes, more than the {max} allowed")]
    MessageTooLarge {
        /// Size of the rejected message.
        len: usize,
        /// The limit, [`Ciphertext::MAX_LEN`](crate::Ciphertext::MAX_LEN).
        max: usize,
    },
    /// The plaintext is too large to fit in one encrypted message.
    #[error("plaintext is {len} bytes, more than the {max} that fit in one message")]
    PlaintextTooLarge {
        /// Size of the rejected plaintext.
        len: usize,
        /// The limit, [`Olm::MAX_PLAINTEXT_LEN`](crate::Olm::MAX_PLAINTEXT_LEN).
        max: usize,
    },
    /// There is no session with this peer yet (or it was forgotten); the caller needs the peer's
    /// key bundle to start one, or the message must be a pre-key message.
    #[error("no encryption session with {peer}; fetch the peer's key bundle to start one")]
    NoSession {
        /// The peer's identity key.
        peer: Curve25519Key,
    },
    /// The message names a different sender identity key than the one the caller expected.
    #[error("message was expected from identity key {expected}, but it names {got}")]
    SenderMismatch {
        /// The identity key the caller expected (from the sender's verified bundle).
        expected: Curve25519Key,
        /// The identity key found in the message.
        got: Curve25519Key,
    },
    /// A pre-key message used a fallback key this node no longer holds: the sender used an old
    /// (twice rotated) or foreign key bundle and has to fetch the current one.
    #[error(
        "pre-key message uses key {key}, which this node no longer holds; the sender needs our current key bundle"
    )]
    UnknownPrekey {
        /// The key the sender used.
        key: Curve25519Key,
    },
    /// The message is well formed but no session could decrypt it.
    #[error("message could not be decrypted: {0}")]
    Undecryptable(DecryptFailure),
    /// A key in the exchange is a low-order point, so the shared secret would be predictable.
    #[error("a peer key is insecure (non-contributory Diffie-Hellman); refusing to use it")]
    InsecureKey,
    /// The account has no fallback key to publish. Every constructor makes one, so this means a
    /// bug, not bad input.
    #[error("the Olm account has no fallback key to publish")]
    MissingFallbackKey,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
    /// Signing the key bundle with the libp2p key failed.
    #[error("signing the key bundle failed: {0}")]
    Signing(#[from] libp2p::identity::SigningError),
}

/// Why a message that parsed could not be decrypted.
///
/// When several sessions with the peer exist, the most specific failure is reported: a session
/// that recognised the message's chain says more than one that merely failed the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptFailure {
    /// Authentication failed: the message was tampered with, corrupted, or belongs to a session
    /// this node does not have.
    #[error("authentication failed (tampered, corrupted, or from an unknown session)")]
    Tampered,
    /// The message key is gone: the message was already decrypted once (a replay) or is older than
    /// the skipped-message keys the session keeps.
    #[error("message key already used or discarded (a replay, or a message too old)")]
    AlreadyUsed,
    /// The message is further ahead in its chain than the session is willing to skip.
    #[error("too many skipped messages before this one")]
    TooFarAhead,
}

/// Why a key bundle was rejected; each check has its own variant so logs say which one failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The encoded bundle is larger than any bundle this crate produces.
    #[error("bundle is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size of the rejected bundle.
        len: usize,
        /// The limit, [`KeyBundle::MAX_LEN`](crate::KeyBundle::MAX_LEN).
        max: usize,
    },
    /// The bytes do not decode as a bundle, or a field is missing.
    #[error("bundle does not decode: {reason}")]
    Malformed {
        /// What was wrong with it.
        reason: String,
    },
    /// The signer's public key does not decode as a libp2p public key.
    #[error("bundle signer key does not decode: {reason}")]
    BadPublicKey {
        /// What was wrong with it.
        reason: String,
    },
    /// The bundle is signed by another peer than the one it was fetched for.
    #[error("bundle is signed by {got}, expected {expected}")]
    WrongSigner {
        /// The peer the caller looked the bundle up for (boxed: a `PeerId` is 80 bytes).
        expected: Box<PeerId>,
        /// The peer whose key signed it.
        got: Box<PeerId>,
    },
    /// The signature does not verify over the bundle bytes: forged or tampered with.
    #[error("bundle signature is invalid (forged or tampered with)")]
    BadSignature,
    /// The signed bundle names another peer than its signer.
    #[error("bundle signed by {signer} claims to belong to {claimed}")]
    PeerIdMismatch {
        /// The peer whose key signed it.
        signer: Box<PeerId>,
        /// The peer id written inside the bundle (raw bytes rendered if they do not parse).
        claimed: String,
    },
    /// One of the Olm keys inside the bundle is not a usable key.
    #[error("bundle {which} is not a valid key: {reason}")]
    BadKey {
        /// Which key: "identity key", "signing key" or "fallback key".
        which: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

/// Why saved Olm state could not be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The bytes do not start with the kith Olm pickle header: not a pickle, or a newer format.
    #[error("not a kith Olm pickle (unknown header or version)")]
    UnknownFormat,
    /// Decryption failed: the pickle key is wrong or the pickle was damaged.
    #[error("wrong pickle key, or the pickle is damaged")]
    WrongKeyOrDamaged,
    /// The pickle decrypted but its contents are invalid.
    #[error("pickle contents are invalid: {reason}")]
    Corrupt {
        /// What was wrong with it.
        reason: String,
    },
    /// The pickle key file does not hold exactly 32 bytes.
    #[error("pickle key must be 32 bytes, got {len}")]
    BadKeyLength {
        /// Length found.
        len: usize,
    },
}
