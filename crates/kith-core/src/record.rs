use std::time::Duration;

use kith_proto::v1::{DhtRecord, NameClaim, SignedNameRecord, dht_record::Body};
use libp2p::{
    Multiaddr, PeerId,
    identity::{Keypair, PublicKey},
};
use prost::Message as _;

use crate::{Name, NameError, pow};

/// The network-wide rules for name records. Every node must use the same values (tests lower the
/// difficulty and the lifetime through config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRules {
    /// Proof-of-work difficulty in leading zero bits. Default [`pow::DEFAULT_DIFFICULTY`].
    pub difficulty: u8,
    /// Longest lifetime of a claim from its signing. Default 30 days.
    pub max_ttl: Duration,
    /// How far in the future `created_at` may be, for clock skew. Default 10 minutes.
    pub max_clock_skew: Duration,
    /// Largest encoded record. Default 4 KiB, well under Kademlia's 16 KiB packet limit.
    pub max_record_bytes: usize,
}

impl Default for NameRules {
    fn default() -> Self {
        Self {
            difficulty: pow::DEFAULT_DIFFICULTY,
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            max_clock_skew: Duration::from_secs(600),
            max_record_bytes: 4096,
        }
    }
}

/// Everything a claim says, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimParams {
    /// The name.
    pub name: Name,
    /// Original claim time, unix ms; fixed across renewals.
    pub created_at_ms: u64,
    /// Version; higher replaces lower.
    pub seq: u64,
    /// When the claim stops being valid, unix ms.
    pub expires_at_ms: u64,
    /// Proof of work over (name, peer id, created_at_ms).
    pub pow_nonce: u64,
    /// Where the owner can be reached.
    pub addrs: Vec<Multiaddr>,
}

/// A signed, verified name claim, together with the exact bytes that travel in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    params: ClaimParams,
    peer_id: PeerId,
    public_key: PublicKey,
    bytes: Vec<u8>,
}

/// Why a record was refused. Holders and resolvers both use these (and count them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Bigger than [`NameRules::max_record_bytes`].
    #[error("record is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a protobuf `DhtRecord` holding a name claim.
    #[error("record is not a valid name record: {0}")]
    Malformed(String),
    /// The public key does not decode.
    #[error("record carries an unreadable public key")]
    BadPublicKey,
    /// The public key does not hash to the claimed peer id.
    #[error("record's public key does not belong to its peer id")]
    KeyMismatch,
    /// The signature does not verify over the claim bytes.
    #[error("record's signature is invalid")]
    BadSignature,
    /// The name is invalid or not in normalized form.
    #[error("record's name is invalid: {0}")]
    BadName(#[from] NameError),
    /// The stored name differs from its normalized form.
    #[error("record's name '{0}' is not normalized")]
    NotNormalized(String),
    /// Past its expiry.
    #[error("record expired at {expires_at_ms} (unix ms)")]
    Expired {
        /// When it expired.
        expires_at_ms: u64,
    },
    /// Claims a lifetime longer than the rules allow.
    #[error("record claims to live longer than the allowed {max_days} days")]
    LivesTooLong {
        /// The limit in days.
        max_days: u64,
    },
    /// Signed in the future (beyond clock skew).
    #[error("record was created in the future")]
    FromTheFuture,
    /// The proof of work does not meet the difficulty.
    #[error("record's proof of work does not meet difficulty {0}")]
    BadProofOfWork(u8),
    /// An address does not decode.
    #[error("record carries an unreadable address")]
    BadAddress,
    /// Signing failed (key type that cannot sign).
    #[error("cannot sign the record: {0}")]
    Signing(String),
}

impl NameRecord {
    /// Signs a claim with the owner's key. The claim is encoded once; the signature covers those
    /// exact bytes.
    pub fn sign(keypair: &Keypair, params: ClaimParams) -> Result<Self, RecordError> {
        let public_key = keypair.public();
        let peer_id = public_key.to_peer_id();
        let claim = NameClaim {
            name: params.name.as_str().to_owned(),
            peer_id: peer_id.to_bytes(),
            public_key: public_key.encode_protobuf(),
            created_at_ms: params.created_at_ms,
            seq: params.seq,
            expires_at_ms: params.expires_at_ms,
            pow_nonce: params.pow_nonce,
            addrs: params.addrs.iter().map(|a| a.to_vec()).collect(),
        }
        .encode_to_vec();
        let signature = keypair
            .sign(&claim)
            .map_err(|e| RecordError::Signing(e.to_string()))?;
        let bytes = DhtRecord {
            body: Some(Body::Name(SignedNameRecord { claim, signature })),
        }
        .encode_to_vec();
        Ok(Self {
            params,
            peer_id,
            public_key,
            bytes,
        })
    }

    /// Checks everything a holder or resolver must check: size, encoding, key ↔ peer id,
    /// signature over the exact claim bytes, normalized name, lifetime, clock skew, proof of work.
    pub fn verify(bytes: &[u8], rules: &NameRules, now_ms: u64) -> Result<Self, RecordError> {
        Self::check(bytes, rules, Some(now_ms))
    }

    /// Like [`NameRecord::verify`] but accepts an expired claim and skips the time checks: for
    /// the owner reading back its own claim to renew it after being offline.
    pub fn verify_own(bytes: &[u8], rules: &NameRules) -> Result<Self, RecordError> {
        Self::check(bytes, rules, None)
    }

    fn check(bytes: &[u8], rules: &NameRules, now_ms: Option<u64>) -> Result<Self, RecordError> {
        if bytes.len() > rules.max_record_bytes {
            return Err(RecordError::TooLarge {
                size: bytes.len(),
                max: rules.max_record_bytes,
            });
        }
        let record = DhtRecord::decode(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let Some(Body::Name(signed)) = record.body else {
            return Err(RecordError::Malformed("no name claim inside".into()));
        };
        let claim = NameClaim::decode(signed.claim.as_slice())
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        let public_key = PublicKey::try_decode_protobuf(&claim.public_key)
            .map_err(|_| RecordError::BadPublicKey)?;
        let peer_id = PeerId::from_bytes(&claim.peer_id).map_err(|_| RecordError::KeyMismatch)?;
        if public_key.to_peer_id() != peer_id {
            return Err(RecordError::KeyMismatch);
        }
        if !public_key.verify(&signed.claim, &signed.signature) {
            return Err(RecordError::BadSignature);
        }
        let name = Name::parse(&claim.name)?;
        if name.as_str() != claim.name {
            return Err(RecordError::NotNormalized(claim.name));
        }
        if let Some(now_ms) = now_ms {
            if claim.expires_at_ms <= now_ms {
                return Err(RecordError::Expired {
                    expires_at_ms: claim.expires_at_ms,
                });
            }
            let skew = millis(rules.max_clock_skew);
            if claim.created_at_ms > now_ms.saturating_add(skew) {
                return Err(RecordError::FromTheFuture);
            }
            // Renewals keep created_at, so the lifetime is measured from now.
            let latest = now_ms
                .saturating_add(millis(rules.max_ttl))
                .saturating_add(skew);
            if claim.expires_at_ms > latest {
                return Err(RecordError::LivesTooLong {
                    max_days: rules.max_ttl.as_secs() / 86_400,
                });
            }
        }
        if !pow::verify(
            &claim.name,
            &claim.peer_id,
            claim.created_at_ms,
            claim.pow_nonce,
            rules.difficulty,
        ) {
            return Err(RecordError::BadProofOfWork(rules.difficulty));
        }
        let addrs = claim
            .addrs
            .into_iter()
            .map(Multiaddr::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| RecordError::BadAddress)?;
        Ok(Self {
            params: ClaimParams {
                name,
                created_at_ms: claim.created_at_ms,
                seq: claim.seq,
                expires_at_ms: claim.expires_at_ms,
                pow_nonce: claim.pow_nonce,
                addrs,
            },
            peer_id,
            public_key,
            bytes: bytes.to_vec(),
        })
    }

    /// The encoded record, as stored in the DHT.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The claimed name.
    pub fn name(&self) -> &Name {
        &self.params.name
    }

    /// The owner.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The owner's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Everything the claim says.
    pub fn params(&self) -> &ClaimParams {
        &self.params
    }

    /// Whether the claim is past its expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.params.expires_at_ms <= now_ms
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests;
