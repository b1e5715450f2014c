use kith_proto::v1 as proto;
use libp2p::identity::{Keypair, PeerId, PublicKey};
use prost::Message;
use vodozemac::Ed25519PublicKey;

use crate::{BundleError, CryptoError, Curve25519Key, Ed25519Key, Party};

/// The public keys another node needs to start an Olm session with this one, even while it is
/// offline: published in the DHT at `blake3("kith/keys/v1/" ‖ peer_id)`.
///
/// A `KeyBundle` only comes from [`KeyBundle::verify`] (bytes from the network, every check
/// passed) or from [`Olm::key_bundle`](crate::Olm::key_bundle) (our own), so its keys are always
/// well formed and bound to its peer id.
///
/// There are no one-time keys: the bundle sits in a public DHT and may be fetched by many, so
/// every first message uses the fallback key; see [`Olm::rotate_fallback_key_if_used`](crate::Olm::rotate_fallback_key_if_used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    peer_id: PeerId,
    identity_key: Curve25519Key,
    signing_key: Ed25519Key,
    fallback_key: Curve25519Key,
    created_at_ms: u64,
}

impl KeyBundle {
    /// Largest encoded [`SignedKeyBundle`] accepted. Ours are about 250 bytes with an ed25519
    /// libp2p key; the cap bounds the work an attacker can make a reader do.
    pub const MAX_LEN: usize = 4 * 1024;

    pub(crate) fn new(
        peer_id: PeerId,
        identity_key: Curve25519Key,
        signing_key: Ed25519Key,
        fallback_key: Curve25519Key,
        created_at_ms: u64,
    ) -> Self {
        Self {
            peer_id,
            identity_key,
            signing_key,
            fallback_key,
            created_at_ms,
        }
    }

    /// Checks an encoded [`SignedKeyBundle`] fetched for `expected_peer` and returns its keys.
    ///
    /// In order: size cap, outer decoding, the signer's public key decodes and belongs to
    /// `expected_peer`, the signature verifies over the exact `bundle` bytes as received (they are
    /// never re-encoded, so there is no canonical-encoding ambiguity), then the inner bundle decodes,
    /// names the same peer, and carries valid, non-low-order keys. Nothing unauthenticated is
    /// parsed beyond the signer's key.
    pub fn verify(bytes: &[u8], expected_peer: &PeerId) -> Result<KeyBundle, CryptoError> {
        Ok(Self::verify_inner(bytes, expected_peer)?)
    }

    fn verify_inner(bytes: &[u8], expected_peer: &PeerId) -> Result<KeyBundle, BundleError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(BundleError::TooLarge {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        let signed = proto::SignedKeyBundle::decode(bytes).map_err(|e| BundleError::Malformed {
            reason: e.to_string(),
        })?;
        let public_key = PublicKey::try_decode_protobuf(&signed.public_key).map_err(|e| {
            BundleError::BadPublicKey {
                reason: e.to_string(),
            }
        })?;
        let signer = public_key.to_peer_id();
        if signer != *expected_peer {
            return Err(BundleError::WrongSigner {
                expected: Box::new(*expected_peer),
                got: Box::new(signer),
            });
        }
        if !public_key.verify(&signed.bundle, &signed.signature) {
            return Err(BundleError::BadSignature);
        }

        let bundle = proto::KeyBundle::decode(signed.bundle.as_slice()).map_err(|e| {
            BundleError::Malformed {
                reason: format!("signed bundle body: {e}"),
            }
        })?;
        match PeerId::from_bytes(&bundle.peer_id) {
            Ok(claimed) if claimed == signer => {}
            Ok(claimed) => {
                return Err(BundleError::PeerIdMismatch {
                    signer: Box::new(signer),
                    claimed: claimed.to_string(),
                });
            }
            Err(_) => {
                return Err(BundleError::PeerIdMismatch {
                    signer: Box::new(signer),
                    claimed: format!("unparsable peer id of {} bytes", bundle.peer_id.len()),
                });
            }
        }
        let identity_key = curve25519_field("identity key", &bundle.identity_key)?;
        let fallback_key = curve25519_field("fallback key", &bundle.fallback_key)?;
        let signing_key = ed25519_field("signing key", &bundle.signing_key)?;
        Ok(KeyBundle::new(
            signer,
            identity_key,
            signing_key,
            fallback_key,
            bundle.created_at_ms,
        ))
    }

    /// Encodes the bundle and signs the encoded bytes with the node's libp2p key.
    pub(crate) fn sign(self, keypair: &Keypair) -> Result<SignedKeyBundle, CryptoError> {
        let body = proto::KeyBundle {
            peer_id: self.peer_id.to_bytes(),
            identity_key: self.identity_key.to_bytes().to_vec(),
            signing_key: self.signing_key.to_bytes().to_vec(),
            fallback_key: self.fallback_key.to_bytes().to_vec(),
            created_at_ms: self.created_at_ms,
        }
        .encode_to_vec();
        let signature = keypair.sign(&body)?;
        let bytes = proto::SignedKeyBundle {
            bundle: body,
            signature,
            public_key: keypair.public().encode_protobuf(),
        }
        .encode_to_vec();
        Ok(SignedKeyBundle {
            bundle: self,
            bytes,
        })
    }

    /// The libp2p peer that owns (and signed) the bundle.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The owner's Olm Curve25519 identity key; sessions with the owner are keyed by it.
    pub fn identity_key(&self) -> Curve25519Key {
        self.identity_key
    }

    /// The owner's Olm Ed25519 key.
    pub fn signing_key(&self) -> Ed25519Key {
        self.signing_key
    }

    /// The fallback key a sender uses to start a session.
    pub fn fallback_key(&self) -> Curve25519Key {
        self.fallback_key
    }

    /// Unix milliseconds when the owner made the bundle; prefer the newest valid one.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The owner as one side of a [`SafetyNumber`](crate::SafetyNumber).
    pub fn party(&self) -> Party {
        Party {
            peer_id: self.peer_id,
            identity_key: self.identity_key,
        }
    }
}

fn curve25519_field(which: &'static str, bytes: &[u8]) -> Result<Curve25519Key, BundleError> {
    let key = Curve25519Key::from_slice(bytes).ok_or_else(|| BundleError::BadKey {
        which,
        reason: format!("expected 32 bytes, got {}", bytes.len()),
    })?;
    // Refused here rather than at first use, so a bad bundle is never stored or pinned.
    if !key.is_contributory() {
        return Err(BundleError::BadKey {
            which,
            reason: "low-order Curve25519 point".to_owned(),
        });
    }
    Ok(key)
}

fn ed25519_field(which: &'static str, bytes: &[u8]) -> Result<Ed25519Key, BundleError> {
    let array: &[u8; 32] = bytes.try_into().map_err(|_| BundleError::BadKey {
        which,
        reason: format!("expected 32 bytes, got {}", bytes.len()),
    })?;
    Ed25519PublicKey::from_slice(array)
        .map(Ed25519Key)
        .map_err(|e| BundleError::BadKey {
            which,
            reason: e.to_string(),
        })
}

/// Our own [`KeyBundle`], encoded and signed, ready to be put in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKeyBundle {
    bundle: KeyBundle,
    bytes: Vec<u8>,
}

impl SignedKeyBundle {
    /// The encoded `kith.v1.SignedKeyBundle`, the value stored in the DHT.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The encoded bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The keys inside.
    pub fn bundle(&self) -> &KeyBundle {
        &self.bundle
    }
}
