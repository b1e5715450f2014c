//! Which holders of a DHT key count: the density check against ids generated next to a key.
//!
//! Kademlia places a key's records at the nodes whose ids are closest to it (XOR of the SHA-256
//! of both), and an id costs one key generation, so an attacker can generate ids until some sit
//! closer to a name's key than any honest node. Nodes with random ids are spread evenly over the
//! key space: in a network of `n` nodes, the number within a fraction `c` of the key space around
//! a key is close to Poisson with mean `n·c`. Ten nodes all closer than the closest honest one
//! (where about one is expected) are then a near-impossible event for honest ids, and the sign of
//! ids made to be there.
//!
//! [`counted_holders`] walks a key's holders from the closest outwards and counts each only while
//! the number counted so far stays within what the network plausibly puts that close
//! ([`plausible_max`]); the surplus of a cluster counts no further, whoever it belongs to. Of the
//! holders counted, only the [`HOLDERS_PER_KEY`] closest count at all (they are the key's holders
//! in Kademlia; farther nodes that answer are nodes on the way that someone pushed a record to).
//! The network size comes from the resolver's own routing table ([`estimate_network_size`]),
//! which an attacker ground next to a *name's* keys does not shape.

use std::collections::HashSet;

use libp2p::{PeerId, kad::KBucketKey};

/// How many holders a key has: Kademlia's replication factor (libp2p's default, which kith
/// keeps). Answers from nodes beyond the closest this many do not count.
pub const HOLDERS_PER_KEY: usize = 20;

/// A count of nodes within some distance of a key whose probability, for nodes with random ids,
/// is below this is implausible. One in a thousand: an honest resolution loses a holder's vote
/// this rarely per distance checked, and a cluster of ground ids is cut to its plausible size.
pub const IMPLAUSIBLE: f64 = 1e-3;

/// How close `peer` is to `key` in Kademlia's metric, as the fraction of the key space that is
/// closer (XOR distance of the SHA-256 hashes over 2^256): 0 is the key itself, ½ the far half.
pub fn closeness(key: &[u8], peer: &PeerId) -> f64 {
    let target = KBucketKey::new(key.to_vec());
    let node = KBucketKey::from(*peer);
    closeness_of_hashes(target.hashed_bytes(), node.hashed_bytes())
}

/// [`closeness`] of two Kademlia keys given by their 32-byte hashes (`KBucketKey::hashed_bytes`):
/// their XOR as a fraction of 2^256.
pub fn closeness_of_hashes(a: &[u8], b: &[u8]) -> f64 {
    let mut value = 0.0;
    let mut scale = 1.0 / 256.0;
    for (x, y) in a.iter().zip(b) {
        value += f64::from(x ^ y) * scale;
        scale /= 256.0;
    }
    value
}

/// The largest number of nodes with random ids that plausibly fall where `expected` are
/// expected: the smallest `k` with P(Poisson(`expected`) > `k`) < [`IMPLAUSIBLE`], at least 1
/// (the closest node is always plausible). Unbounded (`usize::MAX`) for large means, where
/// nothing is thinned.
pub fn plausible_max(expected: f64) -> usize {
    if expected.is_nan() || expected <= 0.0 {
        return 1;
    }
    if expected > 500.0 {
        return usize::MAX;
    }
    let mut pmf = (-expected).exp();
    let mut cdf = pmf;
    let mut k = 0usize;
    // The tail falls below 1e-3 within a few standard deviations; the bound only guards
    // against floating-point surprises.
    while 1.0 - cdf >= IMPLAUSIBLE && k < 10_000 {
        k += 1;
        pmf *= expected / k as f64;
        cdf += pmf;
    }
    k.max(1)
}

/// The holders of `key` whose answers count, given a network of about `network_size` nodes
/// (`None`: unknown, nothing is thinned).
///
/// Holders are taken from the closest outwards (ties by peer id, so the result does not depend
/// on the input order); each counts if the number counted so far is below [`plausible_max`] of
/// the number of nodes expected that close. Of those, the [`HOLDERS_PER_KEY`] closest count.
/// Duplicates count once.
pub fn counted_holders(
    key: &[u8],
    holders: impl IntoIterator<Item = PeerId>,
    network_size: Option<f64>,
) -> HashSet<PeerId> {
    let unique: HashSet<PeerId> = holders.into_iter().collect();
    let mut by_distance: Vec<(f64, Vec<u8>, PeerId)> = unique
        .into_iter()
        .map(|p| (closeness(key, &p), p.to_bytes(), p))
        .collect();
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut counted = HashSet::new();
    for (close, _, peer) in by_distance {
        if counted.len() >= HOLDERS_PER_KEY {
            break;
        }
        let allowed = match network_size {
            Some(n) if n.is_finite() && n > 0.0 => plausible_max(n * close),
            _ => usize::MAX,
        };
        if counted.len() < allowed {
            counted.insert(peer);
        }
    }
    counted
}

/// Estimates how many nodes the network has from the closeness of the peers nearest to us in
/// our routing table (fractions of the key space, any order; we are at 0). In a network of `n`
/// nodes the `i`-th closest sits near `i / n`, so `n` is the least-squares slope of `i` over
/// the closeness of the nearest (at most [`HOLDERS_PER_KEY`]) peers (the `i`-th of `n - 1` others
/// sits at `i / n` on average, so the slope counts ourselves too). `None` with no peers. Routing
/// tables know every peer near us before far ones, so the nearest are the reliable part of the
/// table.
pub fn estimate_network_size(closeness_of_peers: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = closeness_of_peers
        .iter()
        .copied()
        .filter(|c| c.is_finite() && *c > 0.0)
        .collect();
    sorted.sort_by(f64::total_cmp);
    sorted.truncate(HOLDERS_PER_KEY);
    if sorted.is_empty() {
        return None;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (i, c) in sorted.iter().enumerate() {
        num += (i + 1) as f64 * c;
        den += c * c;
    }
    Some(num / den)
}

#[cfg(test)]
mod tests;
