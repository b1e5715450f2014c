//! Peer routing for requests to peers we have no address for.
//!
//! A request to a peer id is dialed with the addresses its caller knows (the service's address
//! book), the routing table's and identify's. A peer we never met and that is not in our routing
//! table has none of those: an admin inviting 199 members by peer id, or a member sharing its
//! group key with all of them, failed every attempt with "Failed to dial" until some unrelated
//! walk happened to connect the two. Kademlia answers exactly this question: a walk towards the
//! peer's own id ends at the peer, and its neighbours return its addresses.
//!
//! The event loop keeps a copy of a request it sends to a peer it is not connected to without
//! addresses; when the dial fails, the request is parked here, one walk per peer is started, and
//! the parked requests go again with the addresses the walk found (once: a second failure is the
//! caller's). A peer the DHT did not know is not looked up again for [`NOT_FOUND_FOR`], so an
//! offline recipient's retries (every few seconds for group control) do not each cost a walk.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{PeerId, kad};

/// How long a peer the DHT did not find is not looked up again.
pub(crate) const NOT_FOUND_FOR: Duration = Duration::from_secs(30);

/// Requests waiting for a peer's addresses, the walks looking for them, and recent misses.
#[derive(Debug)]
pub(crate) struct PeerRouting<R> {
    parked: HashMap<PeerId, Vec<R>>,
    walks: HashMap<kad::QueryId, PeerId>,
    not_found: HashMap<PeerId, Instant>,
}

impl<R> Default for PeerRouting<R> {
    fn default() -> Self {
        Self {
            parked: HashMap::new(),
            walks: HashMap::new(),
            not_found: HashMap::new(),
        }
    }
}

impl<R> PeerRouting<R> {
    /// Whether a failed dial to `peer` is worth a walk now (it was not missed recently).
    pub(crate) fn may_look_up(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.not_found
            .retain(|_, at| now.saturating_duration_since(*at) < NOT_FOUND_FOR);
        !self.not_found.contains_key(peer)
    }

    /// Parks `request` for `peer`. True when it is the first one parked for `peer`, which means
    /// no walk for `peer` runs yet (a peer's requests stay parked exactly as long as its walk
    /// runs: [`PeerRouting::finish`] ends both): the caller starts one and reports it with
    /// [`PeerRouting::walking`].
    pub(crate) fn park(&mut self, peer: PeerId, request: R) -> bool {
        let waiting = self.parked.entry(peer).or_default();
        waiting.push(request);
        waiting.len() == 1
    }

    /// Records the walk started for `peer`.
    pub(crate) fn walking(&mut self, query: kad::QueryId, peer: PeerId) {
        self.walks.insert(query, peer);
    }

    /// The peer a walk looks for, if `query` is one of ours.
    pub(crate) fn target(&self, query: &kad::QueryId) -> Option<PeerId> {
        self.walks.get(query).copied()
    }

    /// The walk `query` is over (found or not): its peer and the requests parked for it.
    /// `found` false remembers the miss for [`NOT_FOUND_FOR`].
    pub(crate) fn finish(
        &mut self,
        query: &kad::QueryId,
        found: bool,
        now: Instant,
    ) -> Option<(PeerId, Vec<R>)> {
        let peer = self.walks.remove(query)?;
        if found {
            self.not_found.remove(&peer);
        } else {
            self.not_found.insert(peer, now);
        }
        Some((peer, self.parked.remove(&peer).unwrap_or_default()))
    }

    /// Every parked request (the loop is stopping).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = R> + '_ {
        self.walks.clear();
        self.parked.drain().flat_map(|(_, requests)| requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_ids(n: usize) -> Vec<kad::QueryId> {
        // QueryIds come only from a Kademlia behaviour: start closest-peer walks on one with an
        // empty routing table (they finish at once without touching the network).
        let local = PeerId::random();
        let mut kad = kad::Behaviour::new(local, kad::store::MemoryStore::new(local));
        (0..n)
            .map(|_| kad.get_closest_peers(PeerId::random()))
            .collect()
    }

    #[test]
    fn one_walk_per_peer_and_every_parked_request_comes_back_once() {
        let mut routing = PeerRouting::default();
        let ids = query_ids(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(routing.park(a, 1));
        routing.walking(ids[0], a);
        assert!(!routing.park(a, 2), "a walk for a is running");
        assert!(routing.park(b, 3));
        routing.walking(ids[1], b);
        assert_eq!(routing.target(&ids[0]), Some(a));
        let now = Instant::now();
        let (peer, mut requests) = routing.finish(&ids[0], true, now).unwrap();
        requests.sort_unstable();
        assert_eq!((peer, requests), (a, vec![1, 2]));
        assert!(
            routing.finish(&ids[0], true, now).is_none(),
            "finished once"
        );
        assert_eq!(routing.drain().collect::<Vec<_>>(), vec![3]);
        assert!(routing.target(&ids[1]).is_none());
    }

    #[test]
    fn a_peer_not_found_is_not_looked_up_again_for_a_while() {
        let mut routing = PeerRouting::default();
        let ids = query_ids(1);
        let peer = PeerId::random();
        let now = Instant::now();
        assert!(routing.may_look_up(&peer, now));
        routing.park(peer, ());
        routing.walking(ids[0], peer);
        routing.finish(&ids[0], false, now);
        assert!(!routing.may_look_up(&peer, now + NOT_FOUND_FOR / 2));
        assert!(routing.may_look_up(&peer, now + NOT_FOUND_FOR));
        assert!(routing.may_look_up(&PeerId::random(), now));
    }
}
