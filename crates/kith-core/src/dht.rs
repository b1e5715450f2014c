//! What a DHT holder or resolver accepts: the rules for every kind of value kith stores in the
//! DHT, with no I/O and the time passed in.
//!
//! A value is a protobuf `DhtRecord` holding one of three bodies:
//!
//! - a **name record** ([`NameRecord`]), stored under each of its name's replica keys;
//! - a **key bundle** (the Olm keys a sender needs to start a session), stored at
//!   [`bundle_key`]`(peer)`;
//! - a **mailbox pointer** ([`MailboxPointer`]: the relays that hold a peer's mail), stored at
//!   [`pointer_key`]`(peer)`.
//!
//! [`validate`] says whether a value may be kept under a key, whose it is (the class kith-net's
//! quorum counts by) and until when; [`may_replace`] says whether a holder lets a new value
//! replace the one it has. Both were spread over three modules of kith-service (names, direct
//! messages, mailboxes), which made those modules call each other from the validator.
//!
//! The key bundle's cryptographic check (signature over the bundle, well-formed Olm keys) belongs
//! to kith-crypto, which kith-core does not depend on (so that the encryption library can change
//! without touching the rules here); it comes in through [`Verifiers::key_bundle`]. The name
//! record's check is [`NameRecord::verify`]; [`Verifiers::name_record`] lets a caller answer it
//! from a cache of records it already verified.

use kith_proto::v1::{
    DhtRecord, MailboxPointer as PointerProto, SignedKeyBundle, dht_record::Body,
};
use libp2p::{
    Multiaddr, PeerId,
    identity::{Keypair, PublicKey},
};
use prost::Message as _;

use crate::{NameRecord, NameRules, RecordError, select};

/// How long a key bundle or a mailbox pointer is kept after it was made (30 days); owners
/// re-publish well before.
pub const VALUE_LIFETIME_MS: u64 = 30 * 86_400_000;

/// Most relays a mailbox pointer may name; more is refused, so a pointer stays small and a
/// sender's route attempts stay bounded.
pub const MAX_POINTER_RELAYS: usize = 8;

/// Domain separation for the pointer signature, so no other signed kith message can pass as one.
const POINTER_CONTEXT: &[u8] = b"kith/mailbox/pointer/v1";

/// Why a DHT value was refused. The network layer logs and counts the reason; nothing else
/// depends on which one it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The bytes are not a `DhtRecord`, or its body does not decode.
    #[error("{0}")]
    Malformed(String),
    /// A reader asked for one kind of value and the bytes hold another.
    #[error("not a {0}")]
    WrongKind(&'static str),
    /// The peer id has no embedded public key (not an Ed25519 identity), so nothing it signed
    /// can be checked.
    #[error("cannot read a public key from peer id {0}")]
    NoPublicKey(Box<PeerId>),
    /// The mailbox pointer's signature does not verify with its peer's key.
    #[error("mailbox pointer signature is invalid")]
    BadPointerSignature,
    /// The mailbox pointer names more than [`MAX_POINTER_RELAYS`] relays.
    #[error("mailbox pointer names too many relays")]
    TooManyRelays,
    /// A value is stored under a key that is not the one its owner's value belongs at.
    #[error("{0} stored under another peer's key")]
    WrongKey(&'static str),
    /// The key bundle does not verify for the peer it names (kith-crypto's reason).
    #[error("{0}")]
    Bundle(String),
    /// The name record does not verify.
    #[error(transparent)]
    Name(#[from] RecordError),
    /// A name record stored under a key that is not one of its name's replica keys.
    #[error("record for '{0}' stored under a key that is not one of its replica keys")]
    NotAReplicaKey(String),
}

/// An accepted value: whose it is and when holders may drop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    /// The peer the value belongs to (a name's owner, a bundle's or pointer's peer). kith-net's
    /// quorum counts agreeing holders per owner.
    pub owner: PeerId,
    /// Unix ms after which the value is no longer valid.
    pub expires_at_ms: u64,
}

/// The checks kith-core leaves to its caller: the key bundle's cryptography (kith-crypto), and
/// optionally a memory of name records already verified.
pub trait Verifiers {
    /// Verifies an encoded `SignedKeyBundle` fetched for `peer` and returns when it was made
    /// (unix ms); `Err` carries the reason.
    fn key_bundle(&self, signed_bundle: &[u8], peer: &PeerId) -> Result<u64, String>;

    /// Verifies a name record: [`NameRecord::verify`] unless the caller remembers the bytes.
    fn name_record(&self, value: &[u8], rules: &NameRules, now_ms: u64) -> NameCheck {
        NameRecord::verify(value, rules, now_ms)
    }
}

/// What checking a name record gives: the verified record or why it was refused.
pub type NameCheck = Result<NameRecord, RecordError>;

/// DHT key of a peer's key bundle: `blake3("kith/keys/v1/" ‖ peer id)`.
pub fn bundle_key(peer: &PeerId) -> Vec<u8> {
    keyed(b"kith/keys/v1/", peer)
}

/// DHT key of a peer's mailbox pointer: `blake3("kith/mailbox/v1/" ‖ peer id)`.
pub fn pointer_key(peer: &PeerId) -> Vec<u8> {
    keyed(b"kith/mailbox/v1/", peer)
}

fn keyed(prefix: &[u8], peer: &PeerId) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prefix);
    hasher.update(&peer.to_bytes());
    hasher.finalize().as_bytes().to_vec()
}

/// The public key an Ed25519 peer id embeds (identity multihash); `None` for ids that only hash
/// their key, whose signatures cannot be checked from the id alone.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(multihash.digest()).ok()
}

/// A verified mailbox pointer: the relays that hold `peer`'s mail while it is offline (and where
/// it holds reservations while online).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxPointer {
    /// Whose mail.
    pub peer: PeerId,
    /// Relay addresses, each ending in `/p2p/<relay id>`.
    pub relays: Vec<Multiaddr>,
    /// When the peer signed it (unix ms); the newest valid pointer wins.
    pub created_at_ms: u64,
}

impl MailboxPointer {
    /// Signs a pointer for `keypair`'s peer and encodes it as the DHT value to publish.
    pub fn sign(
        keypair: &Keypair,
        relays: &[Multiaddr],
        created_at_ms: u64,
    ) -> Result<Vec<u8>, libp2p::identity::SigningError> {
        let mut pointer = PointerProto {
            peer_id: keypair.public().to_peer_id().to_bytes(),
            relays: relays.iter().map(|a| a.to_vec()).collect(),
            created_at_ms,
            signature: Vec::new(),
        };
        pointer.signature = keypair.sign(&pointer_signed_bytes(&pointer))?;
        Ok(DhtRecord {
            body: Some(Body::Mailbox(pointer)),
        }
        .encode_to_vec())
    }

    /// Verifies a mailbox pointer DHT value: signed by the peer it names, at most
    /// [`MAX_POINTER_RELAYS`] relays, every relay address parses.
    pub fn verify(value: &[u8]) -> Result<Self, DhtError> {
        let record = DhtRecord::decode(value).map_err(|e| DhtError::Malformed(e.to_string()))?;
        let Some(Body::Mailbox(pointer)) = record.body else {
            return Err(DhtError::WrongKind("mailbox pointer"));
        };
        let peer =
            PeerId::from_bytes(&pointer.peer_id).map_err(|e| DhtError::Malformed(e.to_string()))?;
        let key = public_key_of(&peer).ok_or(DhtError::NoPublicKey(Box::new(peer)))?;
        if !key.verify(&pointer_signed_bytes(&pointer), &pointer.signature) {
            return Err(DhtError::BadPointerSignature);
        }
        if pointer.relays.len() > MAX_POINTER_RELAYS {
            return Err(DhtError::TooManyRelays);
        }
        let relays = pointer
            .relays
            .iter()
            .map(|r| Multiaddr::try_from(r.clone()).map_err(|e| DhtError::Malformed(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            peer,
            relays,
            created_at_ms: pointer.created_at_ms,
        })
    }
}

fn pointer_signed_bytes(p: &PointerProto) -> Vec<u8> {
    let mut unsigned = p.clone();
    unsigned.signature.clear();
    let mut out = POINTER_CONTEXT.to_vec();
    out.extend_from_slice(&unsigned.encode_to_vec());
    out
}

/// Whether a DHT value is a mailbox pointer (valid or not).
pub fn is_pointer(value: &[u8]) -> bool {
    matches!(
        DhtRecord::decode(value).map(|r| r.body),
        Ok(Some(Body::Mailbox(_)))
    )
}

/// The encoded `SignedKeyBundle` inside a key-bundle DHT value (unverified: hand it to
/// kith-crypto's check).
pub fn key_bundle_bytes(value: &[u8]) -> Result<Vec<u8>, DhtError> {
    let record = DhtRecord::decode(value).map_err(|e| DhtError::Malformed(e.to_string()))?;
    match record.body {
        Some(Body::KeyBundle(bytes)) => Ok(bytes),
        _ => Err(DhtError::WrongKind("key bundle")),
    }
}

/// Encodes a signed key bundle as the DHT value to publish at [`bundle_key`].
pub fn key_bundle_value(signed_bundle: Vec<u8>) -> Vec<u8> {
    DhtRecord {
        body: Some(Body::KeyBundle(signed_bundle)),
    }
    .encode_to_vec()
}

/// The peer a key-bundle DHT value claims to be for, read without verifying anything (the
/// caller verifies against it); `None` when the value is not a readable key bundle.
pub fn bundle_claimed_peer(value: &[u8]) -> Option<PeerId> {
    let bytes = key_bundle_bytes(value).ok()?;
    let signed = SignedKeyBundle::decode(bytes.as_slice()).ok()?;
    let bundle = kith_proto::v1::KeyBundle::decode(signed.bundle.as_slice()).ok()?;
    PeerId::from_bytes(&bundle.peer_id).ok()
}

/// Checks a value a peer wants stored (or returned) under `key`: a mailbox pointer at its peer's
/// pointer key, a key bundle at its peer's bundle key, a name record at one of its name's replica
/// keys, each verified in full. Anything else is refused.
pub fn validate(
    key: &[u8],
    value: &[u8],
    rules: &NameRules,
    now_ms: u64,
    verifiers: &impl Verifiers,
) -> Result<Valid, DhtError> {
    if is_pointer(value) {
        let pointer = MailboxPointer::verify(value)?;
        if pointer_key(&pointer.peer) != key {
            return Err(DhtError::WrongKey("mailbox pointer"));
        }
        return Ok(Valid {
            owner: pointer.peer,
            expires_at_ms: pointer.created_at_ms.saturating_add(VALUE_LIFETIME_MS),
        });
    }
    if let Some(peer) = bundle_claimed_peer(value) {
        let created_at_ms = verify_bundle(value, &peer, verifiers)?;
        if bundle_key(&peer) != key {
            return Err(DhtError::WrongKey("key bundle"));
        }
        return Ok(Valid {
            owner: peer,
            expires_at_ms: created_at_ms.saturating_add(VALUE_LIFETIME_MS),
        });
    }
    let record = verifiers.name_record(value, rules, now_ms)?;
    if record.name().replica_of(key).is_none() {
        return Err(DhtError::NotAReplicaKey(record.name().to_string()));
    }
    Ok(Valid {
        owner: record.peer_id(),
        expires_at_ms: record.params().expires_at_ms,
    })
}

fn verify_bundle(value: &[u8], peer: &PeerId, verifiers: &impl Verifiers) -> Result<u64, DhtError> {
    let bytes = key_bundle_bytes(value)?;
    verifiers.key_bundle(&bytes, peer).map_err(DhtError::Bundle)
}

/// Whether a holder replaces the value it has under a key with `incoming` (both already passed
/// [`validate`] for that key, or `stored` no longer does): a newer (or equally new) pointer or
/// key bundle replaces an older one; a name record only as [`select::holder_accepts`] allows (the
/// owner, with a higher `seq`); a stored value that no longer verifies (expired) gives way to any
/// valid one.
pub fn may_replace(
    stored: &[u8],
    incoming: &[u8],
    rules: &NameRules,
    now_ms: u64,
    verifiers: &impl Verifiers,
) -> bool {
    if is_pointer(incoming) {
        return match (
            MailboxPointer::verify(stored),
            MailboxPointer::verify(incoming),
        ) {
            (Ok(s), Ok(i)) => i.created_at_ms >= s.created_at_ms,
            (Err(_), Ok(_)) => true,
            _ => false,
        };
    }
    if let (Some(a), Some(b)) = (bundle_claimed_peer(stored), bundle_claimed_peer(incoming)) {
        // Same key means same peer (the validator checked it); newer bundles win.
        return match (
            verify_bundle(stored, &a, verifiers),
            verify_bundle(incoming, &b, verifiers),
        ) {
            (Ok(s), Ok(i)) => i >= s,
            (Err(_), Ok(_)) => true,
            _ => false,
        };
    }
    match (
        NameRecord::verify(stored, rules, now_ms),
        NameRecord::verify(incoming, rules, now_ms),
    ) {
        (Ok(stored), Ok(incoming)) => {
            select::holder_accepts(Some(&stored), &incoming, now_ms).is_ok()
        }
        // A stored record that no longer verifies (expired) may always be replaced.
        (Err(_), Ok(_)) => true,
        (_, Err(_)) => false,
    }
}

#[cfg(test)]
mod tests;
