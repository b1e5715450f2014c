//! The inbound router and the components' links: where what arrives for one component is handed
//! to another, and what a component asks of the others. Only node.rs uses it; it is the one
//! place besides node.rs that names several components.
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
//!
//! [`Links`] is the other direction: the handles of [`crate::handles`] (and the components' own
//! traits, such as [`crate::groups::FileOffers`]) over the running node, which node.rs hands to
//! each component it builds.

use futures::future::BoxFuture;
use kith_proto::v1 as pb;
use kith_store::MessageId;
use libp2p::{Multiaddr, PeerId};

use crate::{
    MessageEvent, Node, Sent, ServiceError, dm,
    handles::{AddressBook, Connections, Events, Outbound, Shown, TrustCheck},
    mailbox,
    node::Inner,
};

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
        self.node.inner.files.record_incoming_file(peer, id, offer)
    }

    fn call_summary(
        &self,
        peer: PeerId,
        summary: &pb::CallSummary,
        sent_at_ms: u64,
    ) -> Result<String, String> {
        self.node
            .inner
            .calls
            .on_call_summary(peer, summary, sent_at_ms)
    }

    fn admit_call_signal(&self, peer: PeerId, signal: &pb::CallSignal) -> Result<(), String> {
        crate::calls::Calls::check_call_signal(signal).inspect_err(|reason| {
            self.node.inner.calls.refuse_call_signal(peer, reason);
        })
    }

    fn group_control(
        &self,
        from: PeerId,
        body: pb::direct_payload::Body,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        self.node.inner.groups.on_group_control(from, body)
    }

    fn call_signal(&self, peer: PeerId, signal: pb::CallSignal) {
        self.node.inner.calls.on_call_signal(peer, signal);
    }

    fn file_stored(&self, id: MessageId) {
        self.node.inner.files.start_download(id);
    }
}

impl mailbox::Inbox for Router {
    fn receive(
        &self,
        from: PeerId,
        envelope: &[u8],
    ) -> impl std::future::Future<Output = pb::Ack> + Send {
        self.node.inner.dm.receive(from, envelope, self)
    }

    fn holds_incoming(&self, from: PeerId, id: &MessageId) -> bool {
        self.node.inner.dm.holds_incoming(from, id)
    }
}

/// The handles components are built with ([`crate::handles`]), over a weak reference to the
/// node: a component held inside the node does not keep it alive, and a handle used after the
/// node is gone answers "stopped" instead of reaching freed state.
#[derive(Debug, Clone)]
pub(crate) struct Links {
    inner: std::sync::Weak<Inner>,
}

impl Links {
    /// The links of the node `inner` will point to (made before the node, see node.rs).
    pub(crate) fn new(inner: std::sync::Weak<Inner>) -> Self {
        Self { inner }
    }

    fn node(&self) -> Result<Node, ServiceError> {
        self.inner
            .upgrade()
            .map(|inner| Node { inner })
            .ok_or_else(|| ServiceError::Task("the node has stopped".into()))
    }
}

impl Outbound for Links {
    fn next_id(&self) -> Result<MessageId, ServiceError> {
        Ok(self.node()?.dm().next_id())
    }

    fn recipient<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<PeerId, ServiceError>> {
        Box::pin(async move { self.node()?.outbox().recipient(target).await })
    }

    fn stage(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
    ) -> Result<MessageId, ServiceError> {
        self.node()?.outbox().stage(peer, body)
    }

    fn send_staged(&self) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(async move { self.node()?.outbox().send_staged().await })
    }

    fn send_shown<'a>(
        &'a self,
        peer: PeerId,
        shown: Shown<'a, pb::direct_payload::Body>,
    ) -> BoxFuture<'a, Result<Sent, ServiceError>> {
        Box::pin(async move {
            let Shown {
                body,
                text,
                before_store,
            } = shown;
            self.node()?
                .outbox()
                .send_shown(peer, body, text, before_store)
                .await
        })
    }

    fn note_failure(&self, peer: PeerId, id: &MessageId, note: &str) -> Result<(), ServiceError> {
        self.node()?.inner.dm.note_failure(peer, id, note)
    }

    fn send_receipt(
        &self,
        peer: PeerId,
        ids: Vec<Vec<u8>>,
        kind: pb::ReceiptKind,
    ) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(async move { self.node()?.outbox().send_receipt(peer, ids, kind).await })
    }

    fn send_ephemeral(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
        ttl: std::time::Duration,
    ) -> Result<MessageId, ServiceError> {
        self.node()?.outbox().send_ephemeral(peer, body, ttl)
    }

    fn withdraw(&self, peer: PeerId, id: &MessageId, note: &str) -> Result<bool, ServiceError> {
        self.node()?.inner.dm.withdraw(peer, id, note)
    }
}

impl Events for Links {
    fn emit(&self, event: MessageEvent) {
        if let Ok(node) = self.node() {
            node.dm().emit(event);
        }
    }
}

impl AddressBook for Links {
    fn known_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.node()
            .map(|node| node.known_addrs(peer))
            .unwrap_or_default()
    }

    fn record_addr(&self, peer: &PeerId, addr: &Multiaddr) -> Result<(), ServiceError> {
        self.node()?.record_addr(peer, addr)
    }
}

impl crate::groups::FileOffers for Links {
    fn group_offer(
        &self,
        group: kith_store::GroupId,
        sender: PeerId,
        id: MessageId,
        offer: pb::FileOffer,
    ) -> Result<String, String> {
        let node = self.node().map_err(|e| e.to_string())?;
        node.inner
            .files
            .record_incoming_group_file(group, sender, id, offer)
    }
}

impl TrustCheck for Links {
    fn is_accepted(&self, peer: PeerId) -> bool {
        self.node()
            .is_ok_and(|node| node.inner.dm.is_accepted(peer))
    }
}

impl Connections for Links {
    fn refresh_soon(&self) {
        if let Ok(node) = self.node() {
            node.refresh_protection_soon();
        }
    }
}

/// Group calls read the member list from the groups component itself (no node needed).
impl crate::calls::GroupMembers for crate::groups::Groups {
    fn group(&self, reference: &str) -> Result<crate::GroupInfo, ServiceError> {
        crate::groups::Groups::group(self, reference)
    }
}

/// Group files go through the groups component itself: the group's id and members, and the
/// Megolm message that carries the offer.
impl crate::files::GroupFiles for crate::groups::Groups {
    fn group_id(&self, reference: &str) -> Result<kith_store::GroupId, ServiceError> {
        Ok(crate::groups::Groups::group(self, reference)?.id)
    }

    fn members(&self, group: &kith_store::GroupId) -> Vec<PeerId> {
        self.group_member_ids(group)
    }

    fn send_offer<'a>(
        &'a self,
        reference: &'a str,
        offer: Shown<'a, pb::FileOffer>,
    ) -> BoxFuture<'a, Result<crate::GroupSent, ServiceError>> {
        Box::pin(async move {
            self.send_group_payload(
                reference,
                pb::group_payload::Body::File(offer.body),
                offer.text,
                offer.before_store,
            )
            .await
        })
    }
}

/// Our mailbox relays as file holders: the mailbox user side runs the release over the mailbox
/// protocol itself.
impl crate::files::FileRelays for crate::mailbox::MailboxClient {
    fn holders(&self) -> Vec<PeerId> {
        self.relay_holders()
    }

    fn release(&self, hash: [u8; 32]) {
        self.release_at_relays(hash);
    }
}

/// What the mailbox user side needs of files: resuming downloads after a sync, and the records
/// of the files it pushes to relays.
impl crate::mailbox::MailFiles for Links {
    fn resume_all_downloads(&self) {
        if let Ok(node) = self.node() {
            node.inner.files.resume_all_downloads();
        }
    }

    fn file_of(&self, id: &kith_store::MessageId) -> Option<kith_store::FileRecord> {
        self.node().ok()?.inner.files.record(id)
    }

    fn note_push(&self, id: &kith_store::MessageId, state: kith_store::FileState, note: &str) {
        if let Ok(node) = self.node() {
            node.inner.files.note(id, state, note);
        }
    }
}

/// Our relays' TURN credentials are kept by the calls component itself.
impl crate::mailbox::RelayTurn for crate::calls::Calls {
    fn turn_due(&self, relay: PeerId) -> bool {
        crate::calls::Calls::turn_due(self, relay)
    }

    fn set_relay_turn(&self, relay: PeerId, answer: Option<pb::TurnCredentials>) {
        crate::calls::Calls::set_relay_turn(self, relay, answer);
    }
}

/// A relay's TURN credentials for its users are minted by the calls component itself.
impl crate::mailbox::TurnIssue for crate::calls::Calls {
    fn issue_turn(&self, peer: PeerId) -> Option<pb::TurnCredentials> {
        crate::calls::Calls::issue_turn(self, peer)
    }
}

/// `kith doctor`'s rival check asks the names component itself.
impl crate::health::NameLookup for crate::names::Names {
    fn own_names(&self) -> Result<Vec<kith_core::NameRecord>, ServiceError> {
        crate::names::Names::own_names(self)
    }

    fn ask_every_holder<'a>(
        &'a self,
        name: &'a kith_core::Name,
    ) -> BoxFuture<'a, Result<Vec<Vec<kith_core::select::Answer>>, ServiceError>> {
        Box::pin(self.ask_replicas(name, usize::MAX))
    }

    fn routing_table(&self) -> BoxFuture<'_, usize> {
        Box::pin(crate::names::Names::routing_table(self))
    }
}
