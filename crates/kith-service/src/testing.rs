//! White-box probes for tests and benchmarks (cargo feature `testing`).
//!
//! A [`Node`] has no public handle on its network client or its store: the API, the CLI and the
//! web app reach the node only through its operations, so every rule (trust, rate limits, the
//! write gate, flush-before-ack) holds for every caller. Tests and kith-bench need a little more:
//! they measure the DHT beside the service (`get_record`, `get_closest_peers`), wait for routing
//! tables to fill, play hostile peers (an outsider publishing on a group topic, an attacker
//! storing a stolen name record, a raw frame on `/kith/dm`), and check what the node saved
//! (Olm pickles, queued envelopes). [`Probe`] names each of those, and nothing else, so the list
//! of ways around the service is short and greppable.
//!
//! Only `tests/` and kith-bench enable the feature; the `kith` binary does not use it (cargo may
//! still compile it in when the whole workspace is built at once, which changes no behaviour: a
//! probe does something only when called).

use kith_net::{GetRecordResult, RequestError};
use kith_store::{MessageId, OutboxItem};
use libp2p::{Multiaddr, PeerId};

use crate::{Message, Node, ServiceError};

/// The white-box probes of one node; see the module documentation for why they exist.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    node: &'a Node,
}

impl Node {
    /// The white-box probes of this node (tests and benchmarks only).
    pub fn probe(&self) -> Probe<'_> {
        Probe { node: self }
    }
}

impl<'a> Probe<'a> {
    fn net(self) -> &'a kith_net::Client {
        self.node.net()
    }

    /// A raw DHT lookup (no name rules, no pinning): the baseline beside `resolve_name`, and the
    /// way a test sees what holders serve.
    pub async fn get_record(
        self,
        key: Vec<u8>,
        quorum: usize,
    ) -> Result<GetRecordResult, RequestError> {
        self.net().get_record(key, quorum).await
    }

    /// Stores any value under any key, locally and at the closest peers: an attacker's put.
    pub async fn put_record(self, key: Vec<u8>, value: Vec<u8>) -> Result<(), RequestError> {
        self.net().put_record(key, value, None).await
    }

    /// Sends any value under any key to exactly these peers: a misbehaving publisher.
    pub async fn put_record_to(
        self,
        key: Vec<u8>,
        value: Vec<u8>,
        peers: Vec<PeerId>,
    ) -> Result<(), RequestError> {
        self.net().put_record_to(key, value, peers).await
    }

    /// A Kademlia `FIND_NODE` walk: what `dht.closest` measures and the DHT tests check.
    pub async fn get_closest_peers(self, key: PeerId) -> Result<Vec<PeerId>, RequestError> {
        self.net().get_closest_peers(key).await
    }

    /// Every peer in the Kademlia routing table, for waiting until a network has formed.
    pub async fn routing_table(self) -> Result<Vec<PeerId>, RequestError> {
        self.net().routing_table().await
    }

    /// Starts a Kademlia bootstrap, to hurry a network along while waiting for it to form.
    pub async fn bootstrap(self) -> Result<(), RequestError> {
        self.net().bootstrap().await
    }

    /// Dials an address; returns once the dial has started.
    pub async fn dial(self, addr: Multiaddr) -> Result<(), RequestError> {
        self.net().dial(addr).await
    }

    /// Sends one raw `/kith/dm` frame body (no encryption, no outbox) and returns the raw answer:
    /// a hostile or replaying sender.
    pub async fn send_dm(
        self,
        peer: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Vec<u8>, RequestError> {
        self.net().send_dm(peer, bytes, addrs).await
    }

    /// Joins a gossipsub topic without being a member of its group: an outsider.
    pub async fn subscribe(self, topic: String) -> Result<(), RequestError> {
        self.net().subscribe(topic).await
    }

    /// Publishes any bytes on a gossipsub topic: an outsider's or a replayed envelope.
    pub async fn publish(self, topic: String, bytes: Vec<u8>) -> Result<bool, RequestError> {
        self.net().publish(topic, bytes).await
    }

    /// Queues an outbox entry the node did not make (a squatter's message under a chosen id). It
    /// goes out with the next delivery run for its peer (the next send to that peer starts one).
    pub fn plant_outbox(
        self,
        message: Option<&Message>,
        item: &OutboxItem,
    ) -> Result<(), ServiceError> {
        Ok(self.node.store().messages().enqueue(message, item)?)
    }

    /// Every queued outbox entry, envelopes included (what is on its way, byte for byte).
    pub fn outbox(self) -> Result<Vec<OutboxItem>, ServiceError> {
        Ok(self.node.store().messages().outbox()?)
    }

    /// Whether this message id was ever stored, either direction.
    pub fn is_known(self, id: &MessageId) -> Result<bool, ServiceError> {
        Ok(self.node.store().messages().is_known(id)?)
    }

    /// The whole conversation with `peer` as stored, oldest first, without resolving a target.
    pub fn conversation(self, peer: PeerId) -> Result<Vec<Message>, ServiceError> {
        Ok(self
            .node
            .store()
            .messages()
            .history(&peer.to_bytes(), usize::MAX, None)?)
    }

    /// The saved Olm account pickle (encrypted with the node's pickle key).
    pub fn olm_account(self) -> Result<Option<Vec<u8>>, ServiceError> {
        Ok(self.node.store().messages().olm_account()?)
    }

    /// The saved Olm sessions with one identity key (encrypted pickle).
    pub fn olm_sessions(self, identity_key: &[u8; 32]) -> Result<Option<Vec<u8>>, ServiceError> {
        Ok(self.node.store().messages().olm_sessions(identity_key)?)
    }

    /// The Curve25519 identity key bound to `peer` on first use, if any.
    pub fn identity_key_of(self, peer: PeerId) -> Result<Option<[u8; 32]>, ServiceError> {
        Ok(self
            .node
            .store()
            .messages()
            .correspondent(&peer.to_bytes())?
            .and_then(|c| c.identity_key))
    }

    /// Up to `max` stored envelopes (wire bytes) of `sender` in a group, oldest first.
    pub fn group_envelopes(
        self,
        group: &crate::GroupId,
        sender: PeerId,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, ServiceError> {
        Ok(self
            .node
            .store()
            .groups()
            .envelopes_after(group, &sender.to_bytes(), 0, max)?)
    }

    /// The owner a name is pinned to, if it is pinned.
    pub fn pinned(self, name: &str) -> Result<Option<PeerId>, ServiceError> {
        Ok(self
            .node
            .store()
            .names()
            .pin(name)?
            .and_then(|p| PeerId::from_bytes(&p.peer_id).ok()))
    }
}
