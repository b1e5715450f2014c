//! Costly peer ids for DHT servers: a network-wide proof of work on the peer id itself.
//!
//! A peer id is *worked* at difficulty `d` when `blake3("kith/peer-id-work/v1" ‖ peer id bytes)`
//! starts with at least `d` zero bits. Any node can check it from the peer id alone, so a routing
//! table can refuse a peer before it answers a single query, and nothing new travels on the wire.
//! A node whose id is not worked still uses the DHT fully as a *client* (resolves, publishes,
//! messages); it just never becomes anyone's DHT server, so it never holds records others count.
//!
//! Why the hash is over the peer id alone and not over a nonce carried beside it (S/Kademlia's
//! "crypto puzzle" with a separate nonce): a nonce would have to reach every node that checks,
//! i.e. travel inside Kademlia's peer entries, which libp2p's wire format has no place for. With
//! the id alone the work is a search over key generations: `2^d` of them on average, each one a
//! fresh keypair. Since every key generation is also a draw of a new position in the key space,
//! an attacker who wants an id next to a key needs both at once: about `(n / 20) · 2^d`
//! generations to place one worked id among the 20 closest of `n` nodes
//! ([`expected_generations_near_key`]).
//!
//! Difficulty 0 makes every id worked: networks that do not set it are unchanged.

use std::ops::ControlFlow;

use libp2p::{PeerId, identity::Keypair};

/// What the hash is over before the peer id; a new version of the rule changes it.
pub const DOMAIN: &[u8] = b"kith/peer-id-work/v1";

/// The largest difficulty a network may set: 2^32 key generations (several CPU-days) for one
/// honest identity is already past anything a person would wait for at `kith init`.
pub const MAX_DIFFICULTY: u8 = 32;

/// How many of the leading bits of `peer`'s work hash are zero.
pub fn work_bits(peer: &PeerId) -> u32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN);
    hasher.update(&peer.to_bytes());
    crate::pow::leading_zero_bits(hasher.finalize().as_bytes())
}

/// Whether `peer` is a worked id at `difficulty` (always at difficulty 0): whether it may be a
/// DHT server, and whether its answers count when resolving.
pub fn is_worked(peer: &PeerId, difficulty: u8) -> bool {
    difficulty == 0 || work_bits(peer) >= u32::from(difficulty)
}

/// How often [`grind`] reports progress, in key generations.
pub const PROGRESS_EVERY: u64 = 1 << 10;

/// Generates keypairs with `generate` until one's peer id is worked at `difficulty`. Every
/// [`PROGRESS_EVERY`] generations it calls `progress` with the number so far; returning
/// `ControlFlow::Break` cancels the search (`None`). `generate` is a parameter so the rule stays
/// free of randomness here (the node passes `Keypair::generate_ed25519`, tests a seeded one).
pub fn grind(
    difficulty: u8,
    mut generate: impl FnMut() -> Keypair,
    mut progress: impl FnMut(u64) -> ControlFlow<()>,
) -> Option<Keypair> {
    let mut generations: u64 = 0;
    loop {
        let keypair = generate();
        generations = generations.saturating_add(1);
        if is_worked(&keypair.public().to_peer_id(), difficulty) {
            return Some(keypair);
        }
        if generations.is_multiple_of(PROGRESS_EVERY) && progress(generations).is_break() {
            return None;
        }
    }
}

/// Expected key generations for one worked id at `difficulty`: `2^d`. An honest node pays this
/// once, at `kith init`.
pub fn expected_generations(difficulty: u8) -> f64 {
    2f64.powi(i32::from(difficulty))
}

/// Expected key generations to place one worked id among the [`crate::density::HOLDERS_PER_KEY`]
/// (20) closest to a given key in a network of `network_size` nodes: a random id lands there
/// with probability about `20 / n` and is worked with probability `2^-d`, independently (two
/// unrelated hashes of the key), so `(n / 20) · 2^d`.
pub fn expected_generations_near_key(network_size: u64, difficulty: u8) -> f64 {
    network_size as f64 / crate::density::HOLDERS_PER_KEY as f64 * expected_generations(difficulty)
}

#[cfg(test)]
mod tests;
