use std::fmt;

use libp2p::identity::PeerId;

use crate::Curve25519Key;

/// One side of a conversation, as far as the safety number is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party {
    /// The libp2p peer id (what names resolve to).
    pub peer_id: PeerId,
    /// The Olm Curve25519 identity key (what the sessions authenticate).
    pub identity_key: Curve25519Key,
}

/// A safety number both people can compare out of band (`kith verify NAME`), in Signal's shape:
/// 60 digits in 12 groups of 5.
///
/// It covers both parties' peer ids and Olm identity keys, so a match means each side talks to
/// the key the other actually holds. The parties are put in a canonical (sorted) order first, so
/// both sides compute the same number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// Number of 5-digit groups.
    pub const GROUPS: usize = 12;

    /// Domain separation for the hash, so the digest is useless for anything else.
    const CONTEXT: &'static str = "kith 2026 safety number v1";

    /// The safety number of a conversation between `a` and `b`; the order does not matter.
    pub fn new(a: &Party, b: &Party) -> Self {
        let mut parties = [encode(a), encode(b)];
        parties.sort();
        let mut hasher = blake3::Hasher::new_derive_key(Self::CONTEXT);
        for party in &parties {
            // Length prefixes keep the concatenation unambiguous (peer ids vary in length).
            hasher.update(&(party.len() as u64).to_be_bytes());
            hasher.update(party);
        }
        let mut digest = [0u8; Self::GROUPS * 5];
        hasher.finalize_xof().fill(&mut digest);
        let groups: Vec<String> = digest
            .chunks_exact(5)
            .map(|chunk| {
                // 40 bits reduced mod 10^5: the bias (2^40 is not a multiple of 10^5) is below 10^-7.
                let value = chunk
                    .iter()
                    .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
                format!("{:05}", value % 100_000)
            })
            .collect();
        Self(groups.join(" "))
    }

    /// The number as printed: `12345 67890 …`, groups separated by single spaces.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn encode(party: &Party) -> Vec<u8> {
    let mut bytes = party.identity_key.to_bytes().to_vec();
    bytes.extend_from_slice(&party.peer_id.to_bytes());
    bytes
}
