//! The routing-table peers nearest a key, found by one pass over the table's entries.
//!
//! Why not kad's own `closest` iterator (behind `get_closest_local_peers` and kad's answers to
//! FIND_NODE and GET_VALUE): in libp2p-kad 0.49 it walks all 256 buckets in distance order and,
//! for every bucket it visits, empty or not, moves a 20-slot inline buffer of full entries (peer
//! id, key hash, addresses, about 4 KB) by value several times. In a routing table that is not
//! full, as every table on one machine and every small network is, a request's 20 nearest peers
//! are only found after visiting all 256 buckets: megabytes of `memmove` per answer. Profiled in
//! `dm.first`, those answers were the largest single item of the whole run. The table holds at
//! most a few hundred entries, so a pass over all of them with a bounded selection costs a few
//! microseconds and gives the same peers in the same order (see the tests).

use libp2p::{
    PeerId,
    kad::{self, KBucketDistance, KBucketKey},
};

/// One routing-table entry as [`nearest`] hands it to its caller's conversion.
pub(crate) struct Entry<'a> {
    pub(crate) key: &'a KBucketKey<PeerId>,
    pub(crate) addresses: &'a kad::Addresses,
    pub(crate) status: kad::NodeStatus,
}

/// The `count` entries of `kad`'s routing table nearest `target`, nearest first, leaving out
/// `except` (the peer asking: kad never names a peer to itself), each converted by `make` (only
/// the entries kept are converted).
pub(crate) fn nearest<T, R>(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    target: &KBucketKey<T>,
    except: Option<&PeerId>,
    count: usize,
    make: impl Fn(Entry<'_>) -> R,
) -> Vec<R> {
    if count == 0 {
        return Vec::new();
    }
    let mut kept: Vec<(KBucketDistance, R)> = Vec::with_capacity(count);
    // The farthest of `kept` once it is full: what a nearer entry replaces.
    let mut farthest: Option<(usize, KBucketDistance)> = None;
    for bucket in kad.kbuckets() {
        for entry in bucket.iter() {
            if except == Some(entry.node.key.preimage()) {
                continue;
            }
            let distance = entry.node.key.distance(target);
            let converted = || {
                make(Entry {
                    key: entry.node.key,
                    addresses: entry.node.value,
                    status: entry.status,
                })
            };
            if kept.len() < count {
                kept.push((distance, converted()));
                if kept.len() == count {
                    farthest = farthest_of(&kept);
                }
            } else if let Some((at, far)) = farthest
                && distance < far
            {
                kept[at] = (distance, converted());
                farthest = farthest_of(&kept);
            }
        }
    }
    kept.sort_by_key(|a| a.0);
    kept.into_iter().map(|(_, r)| r).collect()
}

fn farthest_of<R>(kept: &[(KBucketDistance, R)]) -> Option<(usize, KBucketDistance)> {
    kept.iter()
        .enumerate()
        .max_by(|a, b| a.1.0.cmp(&b.1.0))
        .map(|(at, (distance, _))| (at, *distance))
}

/// An entry as kad's answers carry it (what kad's own conversion of a table entry gives).
pub(crate) fn kad_peer(entry: Entry<'_>) -> kad::KadPeer {
    kad::KadPeer {
        node_id: *entry.key.preimage(),
        multiaddrs: entry.addresses.iter().cloned().collect(),
        connection_ty: match entry.status {
            kad::NodeStatus::Connected => kad::ConnectionType::Connected,
            kad::NodeStatus::Disconnected => kad::ConnectionType::NotConnected,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::{Multiaddr, identity::Keypair};

    use super::*;

    fn table(peers: usize) -> kad::Behaviour<kad::store::MemoryStore> {
        let local = PeerId::random();
        let mut config = kad::Config::new(kad::PROTOCOL_NAME);
        config.set_query_timeout(Duration::from_secs(5));
        let mut kad =
            kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), config);
        kad.set_mode(Some(kad::Mode::Server));
        for i in 0..peers {
            let peer = Keypair::generate_ed25519().public().to_peer_id();
            let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 1000 + i)
                .parse()
                .expect("address");
            kad.add_address(&peer, addr);
        }
        kad
    }

    /// What kad's own iterator answers, for comparison.
    fn kads_answer<T: Clone>(
        kad: &mut kad::Behaviour<kad::store::MemoryStore>,
        target: &KBucketKey<T>,
        except: &PeerId,
    ) -> Vec<PeerId> {
        kad.get_closest_local_peers(target)
            .filter(|k| k.preimage() != except)
            .take(kad::K_VALUE.get())
            .map(|k| *k.preimage())
            .collect()
    }

    #[test]
    fn the_same_peers_in_the_same_order_as_kads_iterator() {
        // Sparse tables (a small network) and fuller ones, where buckets fill and kad keeps
        // extra candidates pending.
        for peers in [0, 1, 5, 19, 20, 21, 60, 400] {
            let mut kad = table(peers);
            let table_peers: Vec<PeerId> = kad
                .kbuckets()
                .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                .collect();
            for round in 0..20 {
                let target = KBucketKey::new(format!("key-{peers}-{round}").into_bytes());
                // Half the rounds leave out a peer of the table, as an answer to it does.
                let except = match table_peers.get(round) {
                    Some(p) if round % 2 == 0 => *p,
                    _ => PeerId::random(),
                };
                let expected = kads_answer(&mut kad, &target, &except);
                let ours: Vec<PeerId> =
                    nearest(&mut kad, &target, Some(&except), kad::K_VALUE.get(), |e| {
                        *e.key.preimage()
                    });
                assert_eq!(ours, expected, "{peers} peers, round {round}");
                assert!(!ours.contains(&except));
            }
        }
    }

    #[test]
    fn converts_entries_as_kad_does() {
        let mut kad = table(3);
        let target = KBucketKey::from(PeerId::random());
        let peers = nearest(&mut kad, &target, None, 20, kad_peer);
        assert_eq!(peers.len(), 3);
        for peer in &peers {
            assert_eq!(peer.multiaddrs.len(), 1);
            // Added by address only, never connected.
            assert_eq!(peer.connection_ty, kad::ConnectionType::NotConnected);
        }
        assert!(nearest(&mut kad, &target, None, 0, kad_peer).is_empty());
        assert_eq!(nearest(&mut kad, &target, None, 2, kad_peer).len(), 2);
    }
}
