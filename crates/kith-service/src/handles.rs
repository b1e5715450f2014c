//! The narrow handles through which a component reaches the rest of the node (issue 12, step 5).
//!
//! A component (`groups::Groups`, `calls::Calls`, `files::Files`) owns its state and its store
//! book; what it needs from others comes in through the traits below, handed to it when node.rs
//! builds it, so it names neither `Node` nor another component. The implementation over a running
//! node is `router::Links` (the one place besides node.rs that names several components).
//!
//! - [`Resolver`]: who a petname, name or peer id stands for (the names component's rules:
//!   pins, conflicts, background re-checks).
//! - [`Outbound`]: what a component hands to direct delivery (the `dm::Outbox` operations:
//!   staged control bodies, messages shown in history, call signalling) and the node's message
//!   ids.
//! - [`Events`]: what API clients and `kith chat` are told.
//! - [`AddressBook`]: the addresses last seen for a peer, to dial it.
//! - [`TrustCheck`]: whether a peer was accepted (trust is the direct-message component's).
//! - [`Connections`]: the connections the features need kept.
//!
//! Components that need each other's data go through a trait of the consumer's own (for example
//! `calls::GroupMembers`), implemented for the provider in router.rs.

use futures::future::BoxFuture;
use kith_proto::v1 as pb;
use kith_store::MessageId;
use libp2p::{Multiaddr, PeerId};

use crate::{MessageEvent, Sent, ServiceError};

/// Resolves who a send or an invitation is for. Names own the rules (a pinned name answers from
/// the pin, a changed key is refused), so every component asks through this handle.
pub(crate) trait Resolver: Send + Sync {
    /// The peer `target` (a petname, a name or a peer id) stands for.
    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<PeerId, ServiceError>>;
    /// The key bundle of `peer` in a DHT value from its bundle key, if it passes its check.
    /// Checked once per distinct bundle: the network's validator checked the same answer as it
    /// arrived, and this answers from that memory.
    fn key_bundle(&self, value: &[u8], peer: &PeerId) -> Option<kith_crypto::KeyBundle>;
}

/// Runs once a message's id is known and before the message is stored: records that must exist
/// once the message does (a file's).
pub(crate) type BeforeStore<'a> =
    Box<dyn FnOnce(MessageId) -> Result<(), ServiceError> + Send + 'a>;

/// A message shown in history, as a component hands it to delivery (direct or group): its
/// `body`, the `text` history shows for it, and what must be recorded before it is stored.
pub(crate) struct Shown<'a, B> {
    /// What travels (a direct-message body, a file offer).
    pub(crate) body: B,
    /// What history shows.
    pub(crate) text: String,
    /// Runs with the message id before the message is stored.
    pub(crate) before_store: BeforeStore<'a>,
}

/// What a component hands to direct delivery: the operations of `dm::Outbox`, whose rules
/// (stored before sent, durable before the caller is answered, delivery woken once) hold for
/// every caller.
pub(crate) trait Outbound: Send + Sync {
    /// A fresh message id from the node's one generator, so ids stay unique and ordered across
    /// direct and group messages. Fails only once the node has stopped.
    fn next_id(&self) -> Result<MessageId, ServiceError>;

    /// Resolves who a direct send goes to and refuses ourselves and blocked peers.
    fn recipient<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<PeerId, ServiceError>>;

    /// Stores a control body (group invitation, member list, session key) for `peer` without
    /// flushing; [`Outbound::send_staged`] must follow.
    fn stage(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
    ) -> Result<MessageId, ServiceError>;

    /// Makes everything staged durable (one flush, covering whatever was written with it) and
    /// wakes delivery.
    fn send_staged(&self) -> BoxFuture<'_, Result<(), ServiceError>>;

    /// Stores a message shown in history for `peer`, hands it to delivery and waits for the
    /// first attempt.
    fn send_shown<'a>(
        &'a self,
        peer: PeerId,
        shown: Shown<'a, pb::direct_payload::Body>,
    ) -> BoxFuture<'a, Result<Sent, ServiceError>>;

    /// Withdraws message `id` to `peer` if it still waits in the outbox (a cancelled file's
    /// offer): marked failed with `note`, never sent. `Ok(false)`: nothing was waiting.
    fn withdraw(&self, peer: PeerId, id: &MessageId, note: &str) -> Result<bool, ServiceError>;

    /// Notes `note` on message `id` to `peer` (a file a relay would not hold): the message stays
    /// queued.
    fn note_failure(&self, peer: PeerId, id: &MessageId, note: &str) -> Result<(), ServiceError>;

    /// Queues a receipt (delivered, read) of messages `ids` for `peer` and wakes delivery.
    fn send_receipt(
        &self,
        peer: PeerId,
        ids: Vec<Vec<u8>>,
        kind: pb::ReceiptKind,
    ) -> BoxFuture<'_, Result<(), ServiceError>>;

    /// Queues call signalling for `peer`: retried until `ttl`, never deposited, never shown.
    fn send_ephemeral(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
        ttl: std::time::Duration,
    ) -> Result<MessageId, ServiceError>;
}

/// Where a component tells API clients and `kith chat` what happened.
pub(crate) trait Events: Send + Sync {
    /// Pushes `event` to every subscriber (none is fine).
    fn emit(&self, event: MessageEvent);
}

/// The address book's view a component needs to reach a peer it is not connected to.
pub(crate) trait AddressBook: Send + Sync {
    /// The addresses last seen for `peer`, each ending in `/p2p/<peer>`.
    fn known_addrs(&self, peer: &PeerId) -> Vec<Multiaddr>;

    /// Remembers `addr` for `peer` (from a name record or an invite) without counting as a
    /// sighting, so a later dial can try it.
    fn record_addr(&self, peer: &PeerId, addr: &Multiaddr) -> Result<(), ServiceError>;
}

/// Whether a peer is out of requests: the direct-message component keeps trust (accepted,
/// request, blocked); calls ring and files download at once only for accepted peers.
pub(crate) trait TrustCheck: Send + Sync {
    /// True when `peer` was accepted (not a request, not blocked).
    fn is_accepted(&self, peer: PeerId) -> bool;
}

/// The connection manager's view: which connections the features need kept.
pub(crate) trait Connections: Send + Sync {
    /// Recomputes the protected connections (group members, recent contacts, people in a call)
    /// on a task of its own, for paths that must not wait for it.
    fn refresh_soon(&self);
}
