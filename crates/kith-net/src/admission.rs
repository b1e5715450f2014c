//! Which peers may be DHT servers: costly peer ids (`kith_core::id_work`).
//!
//! When the network sets a peer-id difficulty `d > 0` (`bootstrap.toml` `[network]
//! peer_id_difficulty`), only peers whose id is worked at `d` enter our Kademlia routing table,
//! and only their answers to a GET count. Everything else about a peer is unchanged: an
//! un-worked node connects, sends and receives messages, and uses the DHT as a client (its
//! queries are answered by worked servers; its records are stored at them). Our own node, when
//! its id is not worked, stays a DHT client, since no one would route to it.
//!
//! Kademlia inserts peers into its table in two places: `add_address` (kith calls it for
//! bootstrap entries and identified peers) and, in its automatic mode, when a dialed connection
//! confirms the protocol. With `d > 0` the automatic inserts are switched off
//! (`BucketInserts::Manual`); kad then reports such peers as `RoutablePeer` and we add them
//! here, worked ones only. With `d = 0` nothing changes (automatic inserts, every peer admitted).

use libp2p::{Multiaddr, PeerId, kad};

/// The admission rule of one node: the network's peer-id difficulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DhtAdmission {
    difficulty: u8,
}

impl DhtAdmission {
    /// The rule for a network whose peer ids must be worked at `difficulty` (0: off).
    pub(crate) fn new(difficulty: u8) -> Self {
        Self { difficulty }
    }

    /// Whether `peer` may be a DHT server for us: in our routing table, counted as a holder.
    pub(crate) fn admits(&self, peer: &PeerId) -> bool {
        kith_core::id_work::is_worked(peer, self.difficulty)
    }

    /// Kademlia's insert policy: automatic when every id is admitted (unchanged behaviour),
    /// manual otherwise, so that every insert goes through [`DhtAdmission::add_address`].
    pub(crate) fn bucket_inserts(&self) -> kad::BucketInserts {
        if self.difficulty == 0 {
            kad::BucketInserts::OnConnected
        } else {
            kad::BucketInserts::Manual
        }
    }

    /// Our own Kademlia mode: the configured one, or client when our id is not worked (no one
    /// would admit us as a server).
    pub(crate) fn own_mode(
        &self,
        local: &PeerId,
        configured: Option<kad::Mode>,
    ) -> Option<kad::Mode> {
        if self.admits(local) {
            configured
        } else {
            tracing::warn!(
                peer_id = %local,
                difficulty = self.difficulty,
                "this identity's peer id is not worked at the network's difficulty: the node uses the DHT as a client only (create a new identity with `kith init` to serve it)"
            );
            Some(kad::Mode::Client)
        }
    }

    /// Adds `addr` for `peer` to the routing table if `peer` is admitted; whether it was.
    pub(crate) fn add_address(
        &self,
        kad: &mut kad::Behaviour<kad::store::MemoryStore>,
        peer: &PeerId,
        addr: Multiaddr,
    ) -> bool {
        if !self.admits(peer) {
            tracing::trace!(%peer, "not adding a peer whose id is not worked to the DHT");
            return false;
        }
        kad.add_address(peer, addr);
        true
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;

    fn peer(seed: u8) -> PeerId {
        Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    #[test]
    fn difficulty_zero_changes_nothing() {
        let off = DhtAdmission::new(0);
        assert!((0..20).all(|s| off.admits(&peer(s))));
        assert_eq!(off.bucket_inserts(), kad::BucketInserts::OnConnected);
        assert_eq!(off.own_mode(&peer(1), None), None);
    }

    #[test]
    fn un_worked_ids_are_refused_and_stay_clients() {
        let on = DhtAdmission::new(8);
        assert_eq!(on.bucket_inserts(), kad::BucketInserts::Manual);
        let peers: Vec<PeerId> = (0..=255).map(peer).collect();
        let refused = peers.iter().find(|p| !on.admits(p)).unwrap();
        assert_eq!(
            on.own_mode(refused, Some(kad::Mode::Server)),
            Some(kad::Mode::Client)
        );
        for p in &peers {
            assert_eq!(on.admits(p), kith_core::id_work::is_worked(p, 8));
        }
    }
}
