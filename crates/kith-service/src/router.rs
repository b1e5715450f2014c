//! The inbound router: where what arrives for one component is handed to another. Only node.rs
//! uses it; it is the one place besides node.rs that names several components.
//!
//! - [`dm::Handlers`]: a decrypted direct message whose body belongs to files, calls or groups
//!   goes to that component's handler, at the point of its batch the handler trait fixes (the
//!   Olm-step invariant; see `dm.rs`).
//! - [`mailbox::Inbox`]: mail fetched from our relays goes through the same receive pipeline
//!   (with this router as its handlers).
//!
//! dm.rs decrypts and stores; it does not know who handles a file offer, a call signal or a group
//! key, so the receive path does not call back into those components, and the mailbox client does
//! not know who receives what it fetches.

use kith_proto::v1 as pb;
use kith_store::MessageId;
use libp2p::PeerId;

use crate::{Node, dm, mailbox};

/// The router for one node (a cheap clone of it).
#[derive(Clone)]
pub(crate) struct Router {
    node: Node,
}

impl Router {
    /// The router that hands `node`'s inbound bodies to its components.
    pub(crate) fn new(node: &Node) -> Self {
        Self { node: node.clone() }
    }
}

impl dm::Handlers for Router {
    fn file_offer(
        &self,
        peer: PeerId,
        id: MessageId,
        offer: pb::FileOffer,
    ) -> Result<String, String> {
        self.node.record_incoming_file(peer, id, offer)
    }

    fn call_summary(
        &self,
        peer: PeerId,
        summary: &pb::CallSummary,
        sent_at_ms: u64,
    ) -> Result<String, String> {
        self.node.on_call_summary(peer, summary, sent_at_ms)
    }

    fn admit_call_signal(&self, peer: PeerId, signal: &pb::CallSignal) -> Result<(), String> {
        Node::check_call_signal(signal).inspect_err(|reason| {
            self.node.refuse_call_signal(peer, reason);
        })
    }

    fn group_control(
        &self,
        from: PeerId,
        body: pb::direct_payload::Body,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        self.node.on_group_control(from, body)
    }

    fn call_signal(&self, peer: PeerId, signal: pb::CallSignal) {
        self.node.on_call_signal(peer, signal);
    }

    fn file_stored(&self, id: MessageId) {
        self.node.start_download(id);
    }
}

impl mailbox::Inbox for Router {
    fn receive(
        &self,
        from: PeerId,
        envelope: &[u8],
    ) -> impl std::future::Future<Output = pb::Ack> + Send {
        self.node.receive(from, envelope, self)
    }

    fn holds_incoming(&self, from: PeerId, id: &MessageId) -> bool {
        self.node.holds_incoming(from, id)
    }
}
