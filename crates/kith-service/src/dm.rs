//! Direct messages: the send and receive pipelines, retries, receipts, requests and blocks.
//!
//! ```text
//! send:    validate → id → hand the message to the peer's run in memory (not stored yet)
//!          → wait for its first attempt; the API answers once it is stored and flushed
//! deliver: one run per peer, pipelined: read that peer's due entries (outbox index, point
//!          lookups), then the messages handed over behind them → encrypt under the peer's Olm
//!          lock → one transaction: the new messages, their outbox entries, every envelope and
//!          that peer's sessions → flush → /kith/dm; up to WINDOW in flight, and each
//!          ack makes room for the next entries at once → delivered
//!          └─ no answer: backoff and retry (same id, same bytes) until acknowledged
//! receive: frame cap (kith-net) → decode → blocked? rate? dedupe → queue for the sender's key
//!          → whoever holds that peer's Olm lock drains the queue: decrypt each → one
//!          transaction (messages + receipts + sessions) → one flush → Ack each
//! ```
//!
//! Invariants: a message is in the store before it is sent and stays in the outbox until the
//! recipient acknowledged storing it; the recipient acknowledges only after a flush; the Olm state
//! that produced or consumed a ciphertext is saved in the same transaction as that ciphertext's
//! effect, so a crash can never reuse a ratchet step.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kith_core::{Backoff, MessageIds, Rate, RateLimiter, dht};
use kith_crypto::{Ciphertext, Curve25519Key, KeyBundle, OlmAccount, PickleKey};
use kith_proto::v1 as pb;
use kith_store::{
    Incoming, Message, MessageId, OlmSave, OutboxItem, ReceiptKind, Received, Status, Trust,
};
use libp2p::PeerId;
use prost::Message as _;
use tokio::sync::{Mutex, MutexGuard, Notify, broadcast, oneshot};

use crate::{
    Node, ServiceError,
    handles::{AddressBook, Resolver},
    health::HealthLog,
    mailbox::Deposit,
    node::{millis, now_ms},
    olm_state::OlmState,
};

/// Longest text message (the rule is kith-core's `check_text`).
pub use kith_core::MAX_TEXT_BYTES;

/// Messages in flight to one peer at once. Below vodozemac's 40 skipped message keys per chain,
/// so reordering inside the window can never make a message undecryptable.
const WINDOW: usize = 32;
/// Entries encrypted per round.
const BATCH: usize = 64;
/// How long `send` waits for the first delivery attempt before answering "queued".
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(5);
/// How long a send waits for the delivery run that took its message to store it.
const HANDED_OVER_WAIT: Duration = Duration::from_secs(30);

/// What happened to a message, pushed to API clients (WebSocket) and `kith chat`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MessageEvent {
    /// A new incoming message was stored.
    Received(Message),
    /// More of an incoming file arrived (`received == size`: complete).
    FileProgress {
        /// The file (the id of the message that carried it).
        id: MessageId,
        /// Its sender.
        peer: PeerId,
        /// Ciphertext bytes verified and on disk.
        received: u64,
        /// Its ciphertext size.
        size: u64,
    },
    /// An outgoing message changed status (delivered, read, failed).
    Status {
        /// The message.
        id: MessageId,
        /// The conversation.
        peer: PeerId,
        /// The new status.
        status: Status,
    },
    /// A group message was stored (from gossip or catch-up).
    GroupReceived {
        /// The group.
        group: kith_store::GroupId,
        /// The message.
        message: kith_store::GroupMessage,
    },
    /// An invitation to a group arrived.
    GroupInvited {
        /// The group.
        group: kith_store::GroupId,
    },
    /// A group's member list changed.
    GroupChanged {
        /// The group.
        group: kith_store::GroupId,
    },
    /// A call rang, was joined, carried a signal or ended.
    Call(crate::calls::CallEvent),
    /// A check of a name found a conflict (see `names.rs`).
    Name(crate::names::NameEvent),
}

/// The outcome of [`Node::send_text`].
#[derive(Debug, Clone)]
pub struct Sent {
    /// The message id.
    pub id: MessageId,
    /// The recipient.
    pub peer: PeerId,
    /// `Delivered` if the recipient acknowledged within a few seconds, else `Queued`.
    pub status: Status,
}

/// A conversation as the inbox lists it.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// The other side.
    pub peer: PeerId,
    /// Unread incoming messages.
    pub unread: u32,
    /// Last message time, unix ms.
    pub last_message_ms: u64,
    /// Last message text (shortened).
    pub last_text: String,
    /// Trust: a request (unknown sender), accepted, or blocked.
    pub trust: Trust,
}

/// How a queued inbound frame ends: an ack status, or a refusal with its reason.
type Verdict = Result<pb::AckStatus, (pb::AckStatus, String)>;

/// A decrypted receipt (its kind and the ids it names) and where its verdict goes.
type PendingReceipt = ((ReceiptKind, Vec<MessageId>), oneshot::Sender<Verdict>);

/// An inbound frame that passed the checks that need no decryption, waiting for its sender's Olm
/// lock. Whoever takes that lock decrypts every frame queued for the sender in one batch.
struct Inbound {
    peer: PeerId,
    id: MessageId,
    ciphertext: Ciphertext,
    reply: oneshot::Sender<Verdict>,
}

/// A message handed to its peer's delivery run before it is stored: the run stores it in the
/// transaction that saves its envelope and the Olm state that made it (one transaction per batch
/// on the send path instead of one more per message), then says so on `stored`.
struct HandedOver {
    message: Message,
    item: OutboxItem,
    /// The flush ticket taken after the entry's transaction committed, or `Err` when that
    /// transaction failed (the sender then stores the entry itself).
    stored: oneshot::Sender<Result<kith_store::FlushTicket, ()>>,
}

/// The direct-message component (issue 12): owns the messages book (messages, outbox, Olm
/// state, correspondents and their trust), the send path (the hand-over of a send to its peer's
/// delivery run, the delivery runs and their retries, deposits at mailboxes through the mailbox
/// user side's [`crate::mailbox::Deposit`]) and the receive path (checks, batches under the
/// sender's Olm lock, receipts; bodies that belong to other components go to the
/// [`Handlers`] node.rs passes in). Names are resolved through the [`Resolver`] handle,
/// addresses for a dial come from the [`AddressBook`], clock readings go to the
/// [`HealthLog`]. Held in an `Arc` by the node; the delivery runs and the delivery loop hold the
/// component, never the node.
pub(crate) struct Dm {
    store: kith_store::Store,
    client: kith_net::Client,
    keypair: libp2p::identity::Keypair,
    me: PeerId,
    /// Inbound direct messages accepted per sender: (burst, per second).
    dm_rate: (f64, f64),
    resolver: Arc<dyn Resolver>,
    deposit: Deposit,
    addresses: Arc<dyn AddressBook>,
    health: HealthLog,
    olm: OlmState,
    /// Inbound frames per sender identity key, waiting for a batch (see [`Inbound`]).
    inbound: StdMutex<HashMap<Curve25519Key, Vec<Inbound>>>,
    events: broadcast::Sender<MessageEvent>,
    wake: Notify,
    /// Told on every hand-over to delivery, so a pipelined run with room picks new entries up
    /// without waiting for an ack.
    handed: Notify,
    peer_locks: StdMutex<HashMap<PeerId, Arc<Mutex<()>>>>,
    /// Peers with entries queued since their delivery run last read the outbox: a run that
    /// finds its peer here after finishing goes round again, so nothing handed to it is missed.
    dirty: StdMutex<HashSet<PeerId>>,
    /// Messages handed to delivery and not yet stored, per recipient (see [`HandedOver`]).
    handed_over: StdMutex<HashMap<PeerId, Vec<HandedOver>>>,
    /// `send_text` calls waiting for the first attempt at their message, by message id.
    first_attempts: StdMutex<HashMap<MessageId, (PeerId, oneshot::Sender<()>)>>,
    busy: StdMutex<HashSet<PeerId>>,
    /// Inbound rate limit per sender (made on first use, with the node's options).
    buckets: StdMutex<Option<RateLimiter<PeerId>>>,
    last_id: StdMutex<MessageIds>,
    /// Olm identity key → the peer it is bound to (from the correspondents tree).
    key_owners: StdMutex<HashMap<[u8; 32], PeerId>>,
    rejected: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Dm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dm").finish_non_exhaustive()
    }
}

/// The part of [`Dm`] read from the store before the node exists (the part that can fail).
pub(crate) struct Loaded {
    olm: OlmState,
    events: broadcast::Sender<MessageEvent>,
    key_owners: HashMap<[u8; 32], PeerId>,
    rejected: prometheus_client::metrics::counter::Counter,
}

/// What [`Dm`] is built from besides what [`Dm::load`] read.
pub(crate) struct DmParts {
    /// The node's store: the component writes the messages book (and flushes).
    pub(crate) store: kith_store::Store,
    /// The network: `/kith/dm`, key bundles in the DHT, dials.
    pub(crate) client: kith_net::Client,
    /// Our identity: signs the key bundle.
    pub(crate) keypair: libp2p::identity::Keypair,
    /// `Options::dm_rate`.
    pub(crate) dm_rate: (f64, f64),
    /// Who a recipient string means (the names component).
    pub(crate) resolver: Arc<dyn Resolver>,
    /// The recipients' mailbox relays, when direct delivery fails.
    pub(crate) deposit: Deposit,
    /// Where a peer was last seen, for a dial.
    pub(crate) addresses: Arc<dyn AddressBook>,
    /// Clock readings from acks.
    pub(crate) health: HealthLog,
}

impl Dm {
    /// Restores the Olm state from the store (or creates it) with the home's pickle key.
    pub(crate) fn load(
        store: &kith_store::Store,
        pickle_key: PickleKey,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Loaded, ServiceError> {
        let olm = OlmState::load(store, pickle_key)?;
        let rejected = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "dm_rejected",
            "Inbound direct messages refused (malformed, undecryptable, forged, blocked, rate limited)",
            rejected.clone(),
        );
        let (events, _) = broadcast::channel(1024);
        let mut key_owners = HashMap::new();
        for c in store.messages().correspondents()? {
            if let (Some(key), Some(peer)) = (c.identity_key, peer_of(&c.peer_id)) {
                key_owners.insert(key, peer);
            }
        }
        Ok(Loaded {
            olm,
            events,
            key_owners,
            rejected,
        })
    }

    /// The component over what [`Dm::load`] read and `parts`.
    pub(crate) fn new(loaded: Loaded, parts: DmParts) -> Self {
        let Loaded {
            olm,
            events,
            key_owners,
            rejected,
        } = loaded;
        let me = parts.keypair.public().to_peer_id();
        Self {
            store: parts.store,
            client: parts.client,
            keypair: parts.keypair,
            me,
            dm_rate: parts.dm_rate,
            resolver: parts.resolver,
            deposit: parts.deposit,
            addresses: parts.addresses,
            health: parts.health,
            olm,
            inbound: StdMutex::new(HashMap::new()),
            events,
            wake: Notify::new(),
            peer_locks: StdMutex::new(HashMap::new()),
            dirty: StdMutex::new(HashSet::new()),
            handed: Notify::new(),
            first_attempts: StdMutex::new(HashMap::new()),
            handed_over: StdMutex::new(HashMap::new()),
            busy: StdMutex::new(HashSet::new()),
            buckets: StdMutex::new(None),
            last_id: StdMutex::new(MessageIds::new()),
            key_owners: StdMutex::new(key_owners),
            rejected,
        }
    }

    pub(crate) fn next_id(&self) -> MessageId {
        let now = now_ms();
        // The random tail keeps ids from different nodes apart.
        let mut random = [0u8; 8];
        if getrandom::fill(&mut random).is_err() {
            random.copy_from_slice(&blake3::hash(&now.to_le_bytes()).as_bytes()[..8]);
        }
        lock(&self.last_id).next(now, random)
    }

    fn key_owner(&self, key: &[u8; 32]) -> Option<PeerId> {
        lock(&self.key_owners).get(key).copied()
    }

    fn set_key_owner(&self, key: [u8; 32], peer: PeerId) {
        lock(&self.key_owners).insert(key, peer);
    }

    fn allow(&self, peer: PeerId, (burst, per_sec): (f64, f64)) -> bool {
        lock(&self.buckets)
            .get_or_insert_with(|| RateLimiter::new(Rate { burst, per_sec }))
            .allow(&peer, Instant::now())
    }

    pub(crate) fn wake_delivery(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn emit(&self, event: MessageEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Tells whoever waits for the first attempt at `id` that it happened.
    fn attempted(&self, id: &MessageId) {
        if let Some((_, waiter)) = lock(&self.first_attempts).remove(id) {
            let _ = waiter.send(());
        }
    }

    /// A delivery run for `peer` stopped short (unreachable, encryption or store failure): every
    /// send waiting on it answers now ("queued") instead of at its timeout, whether or not its
    /// entry was in the rounds that ran (a round takes the oldest due entries first).
    fn stopped_short(&self, peer: PeerId) {
        let mut waiting = lock(&self.first_attempts);
        let ids: Vec<MessageId> = waiting
            .iter()
            .filter(|(_, (to, _))| *to == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((_, waiter)) = waiting.remove(&id) {
                let _ = waiter.send(());
            }
        }
    }

    /// Everything handed over for `peer` and not yet taken by a run, oldest first.
    fn take_handed(&self, peer: &PeerId) -> Vec<HandedOver> {
        lock(&self.handed_over).remove(peer).unwrap_or_default()
    }

    /// Takes back one handed-over message that no run took (its sender stores it itself).
    fn take_back(&self, peer: &PeerId, id: &MessageId) -> Option<HandedOver> {
        let mut handed = lock(&self.handed_over);
        let queue = handed.get_mut(peer)?;
        let at = queue.iter().position(|h| h.item.id == *id)?;
        let entry = queue.remove(at);
        if queue.is_empty() {
            handed.remove(peer);
        }
        Some(entry)
    }

    fn queue_inbound(&self, key: Curve25519Key, inbound: Inbound) {
        lock(&self.inbound).entry(key).or_default().push(inbound);
    }

    fn take_inbound(&self, key: &Curve25519Key) -> Vec<Inbound> {
        lock(&self.inbound).remove(key).unwrap_or_default()
    }
}

/// What kind of outbox entry [`Dm::new_outbox_item`] makes.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// A message shown in history (text, file, call summary): deposited at mailboxes.
    Shown,
    /// A delivery or read receipt: not shown, not deposited.
    Receipt,
    /// Group control: not shown, deposited at mailboxes.
    Control,
    /// Call signalling: not shown, never deposited, dropped after the given time.
    Ephemeral(Duration),
}

/// An incoming message as the history stores it (texts, files and call summaries alike).
fn received_message(id: MessageId, peer: PeerId, text: String, sent_at_ms: u64) -> Message {
    Message {
        id,
        peer_id: peer.to_bytes(),
        outgoing: false,
        text,
        sent_at_ms,
        received_at_ms: now_ms(),
        status: Status::Received,
        failure: String::new(),
    }
}

/// The outcome of [`Dm::encrypt_batch`].
struct Encrypted {
    /// How many of the entries (a prefix, in order) have an envelope and may be sent.
    ready: usize,
    /// Whether any envelope was made now (so a flush must come before sending).
    fresh: bool,
    /// Why the entry after the ready ones could not be encrypted.
    error: Option<ServiceError>,
}

pub(crate) fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the receive path hands the bodies that belong to other components (files, calls,
/// groups), each at a fixed point of its batch. node.rs's router implements it, so this module
/// names none of those components.
///
/// The points are the Olm-step invariant (ARCHITECTURE.md): file offers and call summaries while
/// the batch is decrypted (their text is stored with the batch's messages); group controls and
/// call signals after the batch's transaction and before its flush (call signals are acknowledged
/// before it); a stored file offer's download after the flush.
pub(crate) trait Handlers: Sync {
    /// Records an incoming file offer (message `id` from `peer`); `Ok` is the message's text,
    /// `Err` the reason the frame is rejected.
    fn file_offer(
        &self,
        peer: PeerId,
        id: MessageId,
        offer: pb::FileOffer,
    ) -> Result<String, String>;

    /// Records a call summary; `Ok` is the message's text, `Err` why the frame is rejected.
    fn call_summary(
        &self,
        peer: PeerId,
        summary: &pb::CallSummary,
        sent_at_ms: u64,
    ) -> Result<String, String>;

    /// Checks a call signal before it is stored; `Err` (counted as refused) rejects the frame.
    fn admit_call_signal(&self, peer: PeerId, signal: &pb::CallSignal) -> Result<(), String>;

    /// Applies a group control message (invitation, member list, Megolm key); `Err` is logged
    /// and the frame still acknowledged.
    fn group_control(
        &self,
        from: PeerId,
        body: pb::direct_payload::Body,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// Acts on an admitted call signal.
    fn call_signal(&self, peer: PeerId, signal: pb::CallSignal);

    /// The message carrying file offer `id` is stored and flushed: its download may start.
    fn file_stored(&self, id: MessageId);
}

fn ack(id: &[u8], status: pb::AckStatus, reason: &str) -> pb::Ack {
    pb::Ack {
        id: id.to_vec(),
        status: status as i32,
        reason: reason.to_owned(),
        now_ms: 0,
    }
}

fn backoff(attempts: u32) -> Duration {
    Backoff::DELIVERY.delay(attempts)
}

/// A delivery run's preparation of its next entries (read, encrypt, save, flush): the entries
/// ready to send, or `Err` when the run must stop short.
type Preparation<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<OutboxItem>, ()>> + Send + 'a>>;

/// The retry pause of `item` after `attempts` failures: group control is retried sooner
/// ([`Backoff::GROUP_CONTROL`]), since a member cannot read the group without it.
fn backoff_for(item: &OutboxItem, attempts: u32) -> Duration {
    if item.control {
        Backoff::GROUP_CONTROL.delay(attempts)
    } else {
        backoff(attempts)
    }
}

fn peer_of(bytes: &[u8]) -> Option<PeerId> {
    PeerId::from_bytes(bytes).ok()
}

/// The one way other features hand something to direct delivery (issue 12, step 1). Groups,
/// calls, files and the mailbox fetch queue through it instead of reaching into [`Dm`]: every
/// entry is stored, made durable and handed to delivery by the same few calls, so no caller has
/// to remember "flush, then wake".
///
/// - [`Outbox::send_shown`]: a message shown in history (text, file offer, call summary); waits
///   for the first attempt.
/// - [`Outbox::stage`] then [`Outbox::send_staged`]: several control bodies written with other
///   state, one flush and one wake for all.
/// - [`Outbox::send_receipt`]: a delivery or read receipt.
/// - [`Outbox::send_ephemeral`]: call signalling, never deposited, dropped after its time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outbox<'a> {
    dm: &'a Arc<Dm>,
}

impl Outbox<'_> {
    /// Resolves who a send goes to and refuses ourselves and blocked peers, with the fix in words.
    pub(crate) async fn recipient(&self, target: &str) -> Result<PeerId, ServiceError> {
        let peer = self.dm.resolver.resolve(target).await?;
        if peer == self.dm.me {
            return Err(ServiceError::InvalidMessage(
                "you cannot message yourself".into(),
            ));
        }
        if let Some(c) = self.dm.store.messages().correspondent(&peer.to_bytes())?
            && c.trust == Trust::Blocked
        {
            return Err(ServiceError::InvalidMessage(format!(
                "{peer} is blocked; unblock with `kith accept {target}` first"
            )));
        }
        Ok(peer)
    }

    /// Stores a message with `body` for `peer` (shown in history as `text`), hands it to delivery
    /// and waits for the first attempt. `before_enqueue` runs with the new message id before the
    /// message is stored, for records that must exist once the message does (a file's).
    pub(crate) async fn send_shown(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
        text: String,
        before_enqueue: impl FnOnce(MessageId) -> Result<(), ServiceError>,
    ) -> Result<Sent, ServiceError> {
        let item = self.dm.new_outbox_item(peer, body, Delivery::Shown);
        let (id, now) = (item.id, item.created_ms);
        before_enqueue(id)?;
        let message = Message {
            id,
            peer_id: peer.to_bytes(),
            outgoing: true,
            text,
            sent_at_ms: now,
            received_at_ms: 0,
            status: Status::Queued,
            failure: String::new(),
        };
        let (attempted, first_attempt) = oneshot::channel();
        lock(&self.dm.first_attempts).insert(id, (peer, attempted));
        // Not stored here: the peer's delivery run stores it with its envelope, in the
        // transaction that saves the Olm state (see `HandedOver`). Until a run takes it, it
        // waits in memory, and the API has not answered yet, so a crash loses nothing anyone
        // was told about.
        let (stored, run_stored) = oneshot::channel();
        let copy = (message.clone(), item.clone());
        lock(&self.dm.handed_over)
            .entry(peer)
            .or_default()
            .push(HandedOver {
                message,
                item,
                stored,
            });
        // Handed to the peer's delivery run (started if none is running), not delivered by this
        // call: concurrent sends to one peer share rounds instead of queueing for one each.
        self.dm.hand_to_delivery(peer);
        let _ = tokio::time::timeout(FIRST_ATTEMPT_WAIT, first_attempt).await;
        lock(&self.dm.first_attempts).remove(&id);
        // Stored by a run (which flushes before anything leaves, so `flush_through` is then
        // usually done at once), or by this call when no run took it in time or a run could not
        // store it. Either way the answer comes only after the message is on disk.
        let enqueued = match self.dm.take_back(&peer, &id) {
            Some(mine) => self.store_myself(peer, &mine.message, &mine.item)?,
            // Bounded: a run stores what it took before any slow step; should it still not
            // answer, storing the same entry again here is harmless (same keys).
            None => match tokio::time::timeout(HANDED_OVER_WAIT, run_stored)
                .await
                .unwrap_or(Ok(Err(())))
            {
                Ok(Ok(ticket)) => ticket,
                // The run's transaction failed, so nothing of it was written: store it here
                // (this call then reports the store's error, if it fails again).
                Ok(Err(())) => self.store_myself(peer, &copy.0, &copy.1)?,
                // The run ended without a word (the node is stopping): stored or not.
                Err(_) => match self
                    .dm
                    .store
                    .messages()
                    .message_from(&copy.0.peer_id, &id)?
                {
                    Some(_) => self.dm.store.flush_ticket(),
                    None => self.store_myself(peer, &copy.0, &copy.1)?,
                },
            },
        };
        self.dm.store.flush_through(enqueued).await?;
        let status = self
            .dm
            .store
            .messages()
            .message_from(&copy.0.peer_id, &id)?
            .map_or(Status::Queued, |m| m.status);
        Ok(Sent { id, peer, status })
    }

    /// Stores a handed-over message that no run stored, and hands it to delivery again from the
    /// outbox; the ticket to flush through.
    fn store_myself(
        &self,
        peer: PeerId,
        message: &Message,
        item: &OutboxItem,
    ) -> Result<kith_store::FlushTicket, ServiceError> {
        self.dm.store.messages().enqueue(Some(message), item)?;
        let ticket = self.dm.store.flush_ticket();
        self.dm.hand_to_delivery(peer);
        Ok(ticket)
    }

    /// Stores a group control message (invitation, member list, session key) for `peer` without
    /// flushing it: for entries written together with other state (a new member list, the record
    /// of whom a session key went to), several at a time. [`Outbox::send_staged`] must follow
    /// (one flush and one wake for all of them).
    pub(crate) fn stage(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
    ) -> Result<MessageId, ServiceError> {
        let item = self.dm.new_outbox_item(peer, body, Delivery::Control);
        self.dm.store.messages().enqueue(None, &item)?;
        Ok(item.id)
    }

    /// Makes everything [`Outbox::stage`]d durable (one flush, which also covers whatever state
    /// was written with it) and wakes delivery.
    pub(crate) async fn send_staged(&self) -> Result<(), ServiceError> {
        self.dm.store.flush().await?;
        self.dm.wake_delivery();
        Ok(())
    }

    /// Queues a receipt (delivered or read) for `peer`; delivered like any message.
    pub(crate) async fn send_receipt(
        &self,
        peer: PeerId,
        ids: Vec<Vec<u8>>,
        kind: pb::ReceiptKind,
    ) -> Result<(), ServiceError> {
        let body = pb::direct_payload::Body::Receipt(pb::Receipt {
            ids,
            kind: kind as i32,
        });
        let item = self.dm.new_outbox_item(peer, body, Delivery::Receipt);
        self.dm.store.messages().enqueue(None, &item)?;
        self.send_staged().await
    }

    /// Queues call signalling for `peer` and hands it to delivery at once: encrypted and retried
    /// like any message until `ttl` has passed, then dropped; never deposited at a mailbox and
    /// never shown in history. No flush of its own: the delivery run flushes before it sends.
    pub(crate) fn send_ephemeral(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
        ttl: Duration,
    ) -> Result<MessageId, ServiceError> {
        let item = self
            .dm
            .new_outbox_item(peer, body, Delivery::Ephemeral(ttl));
        self.dm.store.messages().enqueue(None, &item)?;
        self.dm.hand_to_delivery(peer);
        Ok(item.id)
    }
}

impl Dm {
    /// The handle through which features queue direct deliveries (see [`Outbox`]).
    pub(crate) fn outbox(self: &Arc<Self>) -> Outbox<'_> {
        Outbox { dm: self }
    }

    /// Subscribes to message events (new messages, status changes). Bounded: a subscriber that
    /// falls more than 1,024 events behind loses the oldest and is told so.
    pub(crate) fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<MessageEvent> {
        self.events.subscribe()
    }

    /// Sends a text message to a petname, name or peer id.
    ///
    /// Returns once the message is stored (and flushed) and the first delivery attempt finished
    /// or a few seconds passed: `Delivered` or `Queued`. A queued message keeps being retried.
    pub(crate) async fn send_text(
        self: &Arc<Self>,
        target: &str,
        text: &str,
    ) -> Result<Sent, ServiceError> {
        kith_core::check_text(text).map_err(|e| ServiceError::InvalidMessage(e.to_string()))?;
        let peer = self.outbox().recipient(target).await?;
        self.outbox()
            .send_shown(
                peer,
                pb::direct_payload::Body::Text(text.to_owned()),
                text.to_owned(),
                |_| Ok(()),
            )
            .await
    }

    /// The last `limit` messages with a contact, oldest first.
    pub(crate) async fn history(
        self: &Arc<Self>,
        target: &str,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<(PeerId, Vec<Message>), ServiceError> {
        let peer = self.resolver.resolve(target).await?;
        let messages = self
            .store
            .messages()
            .history(&peer.to_bytes(), limit, before.as_ref())?;
        Ok((peer, messages))
    }

    /// One message by id, either direction, as stored (status, failure note, text).
    pub(crate) fn message(
        self: &Arc<Self>,
        id: &MessageId,
    ) -> Result<Option<Message>, ServiceError> {
        Ok(self.store.messages().message(id)?)
    }

    /// Whether message `id` from `from` is stored as an incoming message of a conversation (a
    /// text, a file or a call summary, not a receipt or a control body); a read error says no.
    pub(crate) fn holds_incoming(self: &Arc<Self>, from: PeerId, id: &MessageId) -> bool {
        self.store
            .messages()
            .message_from(&from.to_bytes(), id)
            .ok()
            .flatten()
            .is_some_and(|m| !m.outgoing)
    }

    /// How many entries wait in the outbox (messages, receipts and control bodies not yet
    /// acknowledged): zero once everything sent has been delivered or given up.
    pub(crate) fn outbox_len(self: &Arc<Self>) -> usize {
        self.store.messages().outbox_len()
    }

    /// Marks a conversation read and sends read receipts for what was unread.
    pub(crate) async fn mark_read(self: &Arc<Self>, peer: PeerId) -> Result<usize, ServiceError> {
        let ids = self.store.messages().mark_seen(&peer.to_bytes())?;
        let trusted = self
            .store
            .messages()
            .correspondent(&peer.to_bytes())?
            .is_some_and(|c| c.trust == Trust::Accepted);
        if !ids.is_empty() && trusted {
            let ids = ids.iter().map(|i| i.to_vec()).collect();
            self.outbox()
                .send_receipt(peer, ids, pb::ReceiptKind::ReceiptRead)
                .await?;
        } else {
            self.store.flush().await?;
        }
        Ok(ids.len())
    }

    /// A new outbox entry for `body` to `peer`: a fresh id, the payload bound to sender and
    /// recipient, and the flags `delivery` implies (not yet stored).
    fn new_outbox_item(
        self: &Arc<Self>,
        peer: PeerId,
        body: pb::direct_payload::Body,
        delivery: Delivery,
    ) -> OutboxItem {
        let id = self.next_id();
        let now = now_ms();
        let payload = pb::DirectPayload {
            id: id.to_vec(),
            sender: self.me.to_bytes(),
            recipient: peer.to_bytes(),
            sent_at_ms: now,
            body: Some(body),
        };
        OutboxItem {
            id,
            peer_id: peer.to_bytes(),
            payload: payload.encode_to_vec(),
            envelope: None,
            attempts: 0,
            next_attempt_ms: 0,
            created_ms: now,
            receipt: !matches!(delivery, Delivery::Shown),
            deposited: false,
            control: matches!(delivery, Delivery::Control),
            expires_ms: match delivery {
                Delivery::Ephemeral(ttl) => now + millis(ttl),
                _ => 0,
            },
        }
    }

    /// Conversations, most recent first (requests included, flagged by their trust).
    pub(crate) fn inbox(self: &Arc<Self>) -> Result<Vec<Conversation>, ServiceError> {
        Ok(self
            .store
            .messages()
            .correspondents()?
            .into_iter()
            // A stranger we only exchanged group keys or receipts with has sent nothing to show:
            // that is not a request.
            .filter(|c| c.trust != Trust::Unknown || c.last_message_ms != 0)
            .filter_map(|c| {
                Some(Conversation {
                    peer: peer_of(&c.peer_id)?,
                    unread: c.unread,
                    last_message_ms: c.last_message_ms,
                    last_text: c.last_text,
                    trust: c.trust,
                })
            })
            .collect())
    }

    /// Accepts a sender (from requests) or unblocks a peer: the direct-message part of
    /// [`Node::accept`] (which also resumes the files that waited for it).
    pub(crate) async fn accept_sender(
        self: &Arc<Self>,
        target: &str,
    ) -> Result<PeerId, ServiceError> {
        let peer = self.resolver.resolve(target).await?;
        self.store
            .messages()
            .set_trust(&peer.to_bytes(), Trust::Accepted)?;
        self.store.flush().await?;
        Ok(peer)
    }

    /// Blocks a peer: their messages are refused, not stored.
    pub(crate) async fn block(self: &Arc<Self>, target: &str) -> Result<PeerId, ServiceError> {
        let peer = self.resolver.resolve(target).await?;
        self.store
            .messages()
            .set_trust(&peer.to_bytes(), Trust::Blocked)?;
        self.store.flush().await?;
        Ok(peer)
    }

    /// Publishes our key bundle in the DHT so others can start a session while we are offline.
    pub(crate) async fn publish_key_bundle(self: &Arc<Self>) -> Result<bool, ServiceError> {
        let signed = self
            .olm
            .account()
            .await
            .key_bundle(&self.keypair, now_ms())
            .map_err(ServiceError::Crypto)?;
        let value = dht::key_bundle_value(signed.to_bytes());
        let expires = std::time::SystemTime::now() + Duration::from_secs(30 * 86_400);
        Ok(self
            .client
            .put_record(dht::bundle_key(&self.me), value, Some(expires))
            .await
            .is_ok())
    }

    /// Fetches and verifies a peer's key bundle from the DHT (newest valid one wins).
    async fn fetch_bundle(self: &Arc<Self>, peer: PeerId) -> Result<KeyBundle, ServiceError> {
        let result = self.client.get_record(dht::bundle_key(&peer), 1).await?;
        result
            .answers
            .iter()
            .filter_map(|a| self.resolver.key_bundle(&a.value, &peer))
            .max_by_key(KeyBundle::created_at_ms)
            .ok_or(ServiceError::NoKeyBundle(peer))
    }

    /// Delivers everything due for `peer`, oldest first; one delivery run per peer at a time.
    ///
    /// Each round encrypts the due entries in id order (one flush for the batch, before any
    /// ciphertext leaves), then sends up to [`WINDOW`] of them concurrently. Stops when nothing is
    /// due or the peer cannot be reached (the rest is rescheduled with backoff).
    pub(crate) async fn deliver_to(self: &Arc<Self>, peer: PeerId) {
        let guard = self.peer_lock(peer).lock_owned().await;
        self.delivery_run(peer, guard).await;
    }

    fn peer_lock(self: &Arc<Self>, peer: PeerId) -> Arc<Mutex<()>> {
        lock(&self.peer_locks).entry(peer).or_default().clone()
    }

    /// Makes sure a delivery run for `peer` will see what was just queued for it: marks the peer
    /// dirty, and starts a run on its own task unless one is running (that one goes round again
    /// when it sees the mark).
    fn hand_to_delivery(self: &Arc<Self>, peer: PeerId) {
        lock(&self.dirty).insert(peer);
        self.handed.notify_waiters();
        if let Ok(guard) = self.peer_lock(peer).try_lock_owned() {
            let dm = Arc::clone(self);
            tokio::spawn(async move { dm.delivery_run(peer, guard).await });
        }
    }

    /// Runs delivery rounds for `peer` while holding its delivery lock, then once more for as
    /// long as entries were handed to it meanwhile.
    async fn delivery_run(
        self: &Arc<Self>,
        peer: PeerId,
        mut guard: tokio::sync::OwnedMutexGuard<()>,
    ) {
        // Bounded: each pass ends when nothing is due; a new pass needs a new hand-over.
        for _ in 0..10_000 {
            self.delivery_rounds(peer).await;
            drop(guard);
            if !lock(&self.dirty).contains(&peer) {
                return;
            }
            guard = match self.peer_lock(peer).try_lock_owned() {
                Ok(guard) => guard,
                // Another run has the peer now and will see the mark.
                Err(_) => return,
            };
        }
    }

    /// Delivery rounds until nothing is due; tells waiting sends when it stops short.
    async fn delivery_rounds(self: &Arc<Self>, peer: PeerId) {
        if !self.try_delivery_rounds(peer).await {
            self.stopped_short(peer);
        }
    }

    /// Returns false when it stopped short of delivering everything due.
    ///
    /// Pipelined: up to [`WINDOW`] entries are on the wire at once, and as soon as one is
    /// acknowledged the next due entries are encrypted, saved, flushed and sent, while the rest
    /// are still in flight (a round no longer waits for its slowest ack). Entries handed over
    /// meanwhile join the run at once.
    ///
    /// One preparation (read what is due, encrypt, save, flush) runs at a time, overlapped with
    /// the sends in flight: acknowledgements that arrive during its flush are handled at once
    /// (their senders learn the outcome and queue their next message), and everything they free
    /// up goes out together in the next preparation, under one flush. Preparing inline, between
    /// polls of the sends, paid one flush per acknowledgement.
    async fn try_delivery_rounds(self: &Arc<Self>, peer: PeerId) -> bool {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut sending: HashSet<MessageId> = HashSet::new();
        let mut stopped = false;
        let mut preparing: Option<Preparation<'_>> = None;
        // Whether something may be due that no preparation has looked at yet: at the start,
        // after a preparation that filled its room, a finished send, or a hand-over.
        let mut look = true;
        // Bounded: every pass starts a preparation, or waits for one, for a send to finish or for
        // a hand-over, and the run ends when nothing is prepared, due or in flight.
        for _ in 0..1_000_000 {
            // Registered before the outbox is read, so a hand-over after the read wakes us.
            let handed = self.handed.notified();
            tokio::pin!(handed);
            handed.as_mut().enable();
            if preparing.is_none() && look && !stopped && in_flight.len() < WINDOW {
                look = false;
                preparing = Some(Box::pin(self.start_sends(
                    peer,
                    sending.clone(),
                    WINDOW - in_flight.len(),
                )));
            }
            if preparing.is_none() && in_flight.is_empty() {
                return !stopped;
            }
            tokio::select! {
                prepared = async {
                    match preparing.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if preparing.is_some() => {
                    preparing = None;
                    match prepared {
                        Ok(started) => {
                            look = !started.is_empty();
                            for item in started {
                                sending.insert(item.id);
                                in_flight.push(async move {
                                    let id = item.id;
                                    (id, self.send_item(peer, item).await)
                                });
                            }
                        }
                        Err(()) => stopped = true,
                    }
                }
                done = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some((id, result)) = done {
                        sending.remove(&id);
                        look = true;
                        // Unreachable (or refused for now): the failed entry was rescheduled;
                        // send nothing more, let what is in flight finish.
                        if result.is_err() {
                            stopped = true;
                        }
                    }
                }
                () = &mut handed, if !stopped => look = true,
            }
        }
        false
    }

    /// Reads what is due for `peer` and not already in flight, encrypts up to `room` entries of
    /// it (oldest first, one transaction), flushes, and returns those ready to send. `Err` when
    /// the run must stop short (nothing more can go out now).
    async fn start_sends(
        self: &Arc<Self>,
        peer: PeerId,
        sending: HashSet<MessageId>,
        room: usize,
    ) -> Result<Vec<OutboxItem>, ()> {
        lock(&self.dirty).remove(&peer);
        // Chosen from the store's in-memory schedule (see `MessageStore::outbox_due` for the
        // rules: oldest first once anything is due, mailbox-held entries at their own pace), so
        // a long queue behind a slow recipient costs this run no decoding of the whole queue.
        let picked = match self.store.messages().outbox_due(
            &peer.to_bytes(),
            now_ms(),
            &sending,
            room.min(BATCH),
        ) {
            Ok(picked) => picked,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return Err(());
            }
        };
        // Call signalling past its ring timeout is dropped, never sent late.
        for item in picked.expired {
            self.finish(peer, &item, Status::Failed, "expired");
        }
        let mut due = picked.ready;
        // Messages handed over since the last look go behind what was queued before them, in
        // this batch if it has room for all of them; if not, they are only stored now, and a
        // later round reads them from the queue.
        let mut handed = self.take_handed(&peer);
        if !handed.is_empty()
            && due.len() + handed.len() > room.min(BATCH)
            && self.commit_handed_as_is(&mut handed).is_err()
        {
            return Err(());
        }
        due.extend(handed.iter().map(|h| h.item.clone()));
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let encrypted = self.encrypt_batch(peer, &mut due, &mut handed).await;
        let mut pending = due.into_iter();
        let ready: Vec<OutboxItem> = pending.by_ref().take(encrypted.ready).collect();
        if let Some(e) = &encrypted.error {
            tracing::debug!(%peer, error = %e, "cannot encrypt yet; will retry");
            if let Some(first) = pending.next() {
                let attempts = self.retry_later(first);
                self.postpone(pending, attempts);
            }
            // Whatever was encrypted before still goes out below.
        }
        if encrypted.fresh
            && let Err(e) = self.store.flush().await
        {
            tracing::warn!(error = %e, "cannot flush the Olm state; not sending");
            return Err(());
        }
        if ready.is_empty() {
            return Err(());
        }
        Ok(ready)
    }

    /// Reschedules entries that were not attempted because the peer is unreachable.
    fn postpone(self: &Arc<Self>, items: impl Iterator<Item = OutboxItem>, attempts: u32) {
        for mut item in items {
            item.next_attempt_ms = now_ms() + millis(backoff_for(&item, attempts));
            let _ = self.store.messages().reschedule(&item);
            self.attempted(&item.id);
        }
    }

    /// Sends one encrypted entry. `Err(attempts)` when it must be retried later.
    async fn send_item(self: &Arc<Self>, peer: PeerId, mut item: OutboxItem) -> Result<(), u32> {
        let Some(envelope) = item.envelope.clone() else {
            return Err(self.retry_later(item));
        };
        let mut addrs = self.addresses.known_addrs(&peer);
        let mailboxes = &self.deposit;
        addrs.extend(mailboxes.known_routes(peer));
        let tried = addrs.clone();
        let mut sent_at = now_ms();
        let mut outcome = self.client.send_dm(peer, envelope.clone(), addrs).await;
        // The recipient's mailbox relays, once asked for: where to deposit if all else fails.
        let mut relays = None;
        if let Err(e) = &outcome {
            // Behind NAT the recipient is reachable through the relays its mailbox pointer
            // names (it holds reservations there): try those circuits before depositing, unless
            // the attempt above just did.
            tracing::debug!(%peer, error = %e, "direct delivery attempt failed");
            let routes;
            (relays, routes) = mailboxes.relays_and_routes(peer).await;
            if !routes.is_empty() && !routes.iter().all(|r| tried.contains(r)) {
                sent_at = now_ms();
                outcome = self.client.send_dm(peer, envelope, routes).await;
            }
        }
        match outcome {
            Ok(response) => {
                let status = pb::Ack::decode(response.as_slice())
                    .ok()
                    .filter(|a| a.id == item.id)
                    .map(|a| {
                        self.health.clock_sample(peer, sent_at, a.now_ms);
                        (pb::AckStatus::try_from(a.status).ok(), a.reason)
                    });
                match status {
                    Some((Some(pb::AckStatus::AckStored | pb::AckStatus::AckDuplicate), _)) => {
                        self.finish(peer, &item, Status::Delivered, "");
                        Ok(())
                    }
                    Some((Some(pb::AckStatus::AckUndecryptable), reason)) => {
                        // The recipient lost its session: start over from its bundle.
                        tracing::info!(%peer, %reason, "recipient cannot decrypt; re-encrypting from its key bundle");
                        if let Ok(Some(c)) = self.store.messages().correspondent(&peer.to_bytes())
                            && let Some(key) = c.identity_key
                            && let Ok(mut sessions) =
                                self.olm.lock_peer(Curve25519Key::from_bytes(key)).await
                        {
                            // In memory only: the next encryption starts a session from the
                            // bundle and saves it with its envelope.
                            sessions.forget();
                        }
                        item.envelope = None;
                        Err(self.retry_later(item))
                    }
                    Some((Some(pb::AckStatus::AckRateLimited), _)) => {
                        // The peer is up and asks us to slow down: retry in a second, without
                        // the growing backoff of an unreachable peer (a pipelined run has many
                        // entries refused at once, and escalating each would strand some of
                        // them for minutes behind a limit that lets a few through per second).
                        item.attempts = 0;
                        Err(self.retry_later(item))
                    }
                    Some((Some(pb::AckStatus::AckBlocked), _)) => {
                        self.finish(
                            peer,
                            &item,
                            Status::Failed,
                            "the recipient does not accept messages from you",
                        );
                        Ok(())
                    }
                    Some((_, reason)) => {
                        self.finish(peer, &item, Status::Failed, &format!("refused: {reason}"));
                        Ok(())
                    }
                    None => Err(self.retry_later(item)),
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "delivery attempt failed");
                if !item.deposited
                    && item.expires_ms == 0
                    && (!item.receipt || item.control)
                    && let Some(relays) = relays
                {
                    let deposited = mailboxes.deposit(peer, &mut item, relays).await;
                    if let Some(reason) = &deposited.full {
                        let _ = self
                            .store
                            .messages()
                            .note_failure(&item.peer_id, &item.id, reason);
                    }
                    if deposited.held {
                        // Held at the recipient's mailbox; keep trying directly, but rarely.
                        item.attempts = item.attempts.max(8);
                    }
                }
                Err(self.retry_later(item))
            }
        }
    }

    fn retry_later(self: &Arc<Self>, mut item: OutboxItem) -> u32 {
        item.attempts = item.attempts.saturating_add(1);
        item.next_attempt_ms = now_ms() + millis(backoff_for(&item, item.attempts));
        if let Err(e) = self.store.messages().reschedule(&item) {
            tracing::warn!(error = %e, "cannot reschedule a message");
        }
        self.attempted(&item.id);
        // The worker may be asleep until a later deadline; make it see this one.
        self.wake.notify_one();
        item.attempts
    }

    fn finish(self: &Arc<Self>, peer: PeerId, item: &OutboxItem, status: Status, failure: &str) {
        if let Err(e) =
            self.store
                .messages()
                .complete(&item.peer_id, &item.id, status, failure, now_ms())
        {
            tracing::warn!(error = %e, "cannot record delivery");
            self.attempted(&item.id);
            return;
        }
        self.attempted(&item.id);
        if !item.receipt {
            self.emit(MessageEvent::Status {
                id: item.id,
                peer,
                status,
            });
        }
    }

    /// Encrypts the entries of `items` (one peer's, oldest first) that have no envelope yet,
    /// under that peer's Olm lock, and saves their envelopes with the sessions after the last one
    /// in one transaction: one pickle and one write per batch, not per message. The caller flushes
    /// before anything is sent.
    ///
    /// Without a session with the peer's bound identity key, the peer's key bundle is fetched
    /// first (not under the lock: a DHT lookup must not hold up the peer's inbound messages).
    ///
    /// `handed` holds the messages among `items` that were handed over and not yet stored: they
    /// are stored in that same transaction, or on their own before a slow step (a key bundle
    /// lookup) or after a failure. Either way `handed` is empty on return and each sender knows.
    async fn encrypt_batch(
        self: &Arc<Self>,
        peer: PeerId,
        items: &mut [OutboxItem],
        handed: &mut Vec<HandedOver>,
    ) -> Encrypted {
        let already = items.iter().take_while(|i| i.envelope.is_some()).count();
        if already == items.len() && handed.is_empty() {
            return Encrypted {
                ready: already,
                fresh: false,
                error: None,
            };
        }
        let result = self.try_encrypt_batch(peer, items, handed).await;
        if !handed.is_empty() {
            // Not stored with envelopes: stored as they are (a failure tells their senders,
            // who then store them themselves).
            let _ = self.commit_handed_as_is(handed);
        }
        match result {
            Ok(encrypted) => encrypted,
            Err(error) => Encrypted {
                ready: already,
                fresh: false,
                error: Some(error),
            },
        }
    }

    /// Stores the handed-over messages of `handed` with the outbox entries `items` (new and
    /// already queued, with their envelopes) and the Olm state `olm` in one transaction, then
    /// tells each sender how it went; `handed` is empty afterwards.
    fn commit_handed(
        self: &Arc<Self>,
        handed: &mut Vec<HandedOver>,
        items: &[OutboxItem],
        olm: Option<OlmSave<'_>>,
    ) -> Result<(), kith_store::StoreError> {
        let result =
            self.store
                .messages()
                .enqueue_batch(handed.iter().map(|h| &h.message), items, olm);
        let ticket = self.store.flush_ticket();
        for h in handed.drain(..) {
            let _ = h
                .stored
                .send(result.as_ref().map(|_| ticket).map_err(|_| ()));
        }
        result
    }

    /// [`Dm::commit_handed`] of the handed-over messages alone, without envelopes.
    fn commit_handed_as_is(
        self: &Arc<Self>,
        handed: &mut Vec<HandedOver>,
    ) -> Result<(), kith_store::StoreError> {
        let items: Vec<OutboxItem> = handed.iter().map(|h| h.item.clone()).collect();
        self.commit_handed(handed, &items, None)
    }

    async fn try_encrypt_batch(
        self: &Arc<Self>,
        peer: PeerId,
        items: &mut [OutboxItem],
        handed: &mut Vec<HandedOver>,
    ) -> Result<Encrypted, ServiceError> {
        let bound = self
            .store
            .messages()
            .correspondent(&peer.to_bytes())?
            .and_then(|c| c.identity_key)
            .map(Curve25519Key::from_bytes);
        let has_session = match bound {
            Some(key) => !self.olm.lock_peer(key).await?.is_empty(),
            None => false,
        };
        let bundle = if has_session {
            None
        } else {
            // A DHT lookup may take seconds: what was handed over is stored first, so its
            // senders need not wait for it.
            if !handed.is_empty() {
                self.commit_handed_as_is(handed)?;
            }
            Some(self.fetch_bundle(peer).await?)
        };
        let key = match (&bundle, bound) {
            (Some(bundle), _) => bundle.identity_key(),
            (None, Some(key)) => key,
            (None, None) => return Err(ServiceError::NoKeyBundle(peer)),
        };
        let mut sessions = self.olm.lock_peer(key).await?;
        let mut ready = 0;
        let mut fresh = Vec::new();
        let mut error = None;
        for (index, item) in items.iter_mut().enumerate() {
            if item.envelope.is_none() {
                let ciphertext = match &bundle {
                    Some(bundle) if sessions.is_empty() => {
                        let account = self.olm.account().await;
                        account.encrypt_to_bundle(&mut sessions, bundle, &item.payload)
                    }
                    _ => sessions.encrypt(&item.payload),
                };
                match ciphertext {
                    Ok(ciphertext) => {
                        item.envelope = Some(
                            pb::Envelope {
                                id: item.id.to_vec(),
                                ciphertext: ciphertext.to_bytes(),
                            }
                            .encode_to_vec(),
                        );
                        fresh.push(index);
                    }
                    Err(e) => {
                        error = Some(ServiceError::Crypto(e));
                        break;
                    }
                }
            }
            ready += 1;
        }
        if fresh.is_empty() {
            // Nothing to save with the Olm state; what was handed over is stored by the caller.
            return Ok(Encrypted {
                ready,
                fresh: false,
                error,
            });
        }
        // The encrypted entries, and the handed-over ones left unencrypted after an error.
        let new: HashSet<MessageId> = handed.iter().map(|h| h.item.id).collect();
        let mut written = items[..ready].to_vec();
        written.extend(
            items[ready..]
                .iter()
                .filter(|i| new.contains(&i.id))
                .cloned(),
        );
        let saved = self.olm.pickle(&sessions).and_then(|pickle| {
            self.commit_handed(
                handed,
                &written,
                Some(OlmSave::sessions(key.to_bytes(), &pickle)),
            )
            .map_err(ServiceError::from)
        });
        if let Err(e) = saved {
            // Nothing made here may leave: the envelopes were not saved with their ratchet
            // steps. Forget them, and re-read the sessions from the store next time.
            for index in fresh {
                items[index].envelope = None;
            }
            sessions.reload();
            return Err(e);
        }
        drop(sessions);
        if let Some(bundle) = &bundle {
            self.store
                .messages()
                .bind_identity_key(&peer.to_bytes(), bundle.identity_key().to_bytes())?;
            self.set_key_owner(bundle.identity_key().to_bytes(), peer);
        }
        Ok(Encrypted {
            ready,
            fresh: true,
            error,
        })
    }

    /// Handles one inbound `/kith/dm` request and answers it. Runs on its own task.
    pub(crate) async fn on_direct_message(
        self: &Arc<Self>,
        peer: PeerId,
        request: kith_net::DmRequestId,
        bytes: Vec<u8>,
        handlers: &impl Handlers,
    ) {
        let ack = self.answer(peer, &bytes, handlers).await;
        if let Err(e) = self.client.respond_dm(request, ack).await {
            tracing::debug!(%peer, error = %e, "could not acknowledge");
        }
    }

    /// The encoded ack for one inbound envelope from `peer`, whichever way it came (a request,
    /// or a frame on a direct-message link), once what it carries is stored.
    pub(crate) async fn answer(
        self: &Arc<Self>,
        peer: PeerId,
        bytes: &[u8],
        handlers: &impl Handlers,
    ) -> Vec<u8> {
        let mut ack = self.receive(peer, bytes, handlers).await;
        ack.now_ms = now_ms();
        let status = ack.status;
        if status != pb::AckStatus::AckStored as i32 && status != pb::AckStatus::AckDuplicate as i32
        {
            self.rejected.inc();
            tracing::info!(%peer, reason = %ack.reason, "refused a direct message");
        }
        ack.encode_to_vec()
    }

    /// Runs one envelope from `peer` (direct, or held by a mailbox relay) through the receive
    /// pipeline; bodies for other components go to `handlers`.
    pub(crate) async fn receive(
        self: &Arc<Self>,
        peer: PeerId,
        bytes: &[u8],
        handlers: &impl Handlers,
    ) -> pb::Ack {
        let Ok(envelope) = pb::Envelope::decode(bytes) else {
            return ack(&[], pb::AckStatus::AckRejected, "malformed envelope");
        };
        let Ok(id) = MessageId::try_from(envelope.id.as_slice()) else {
            return ack(
                &envelope.id,
                pb::AckStatus::AckRejected,
                "message id is not 16 bytes",
            );
        };
        match self
            .receive_checked(peer, id, &envelope.ciphertext, handlers)
            .await
        {
            Ok(status) => ack(&id, status, ""),
            Err((status, reason)) => ack(&id, status, &reason),
        }
    }

    async fn receive_checked(
        self: &Arc<Self>,
        peer: PeerId,
        id: MessageId,
        ciphertext: &[u8],
        handlers: &impl Handlers,
    ) -> Result<pb::AckStatus, (pb::AckStatus, String)> {
        let internal = |e: ServiceError| {
            (
                pb::AckStatus::AckRateLimited,
                format!("try again later: {e}"),
            )
        };
        let correspondent = self
            .store
            .messages()
            .correspondent(&peer.to_bytes())
            .map_err(|e| internal(e.into()))?;
        if correspondent
            .as_ref()
            .is_some_and(|c| c.trust == Trust::Blocked)
        {
            return Err((pb::AckStatus::AckBlocked, "blocked".into()));
        }
        if !self.allow(peer, self.dm_rate) {
            return Err((pb::AckStatus::AckRateLimited, "too many messages".into()));
        }
        if self
            .store
            .messages()
            .is_known_from(&peer.to_bytes(), &id)
            .map_err(|e| internal(e.into()))?
        {
            return Ok(pb::AckStatus::AckDuplicate);
        }
        let ciphertext = Ciphertext::from_bytes(ciphertext).map_err(|e| {
            (
                pb::AckStatus::AckRejected,
                format!("malformed ciphertext: {e}"),
            )
        })?;
        let sender_key = ciphertext.sender_identity_key();
        // Someone forwarding another peer's envelope must not make us spend that peer's message
        // key: refuse before decrypting when the key is known to belong to someone else.
        if let Some(owner) = self.key_owner(&sender_key.to_bytes())
            && owner != peer
        {
            return Err((
                pb::AckStatus::AckRejected,
                "this encryption key belongs to another peer".into(),
            ));
        }
        if let Some(bound) = correspondent.as_ref().and_then(|c| c.identity_key)
            && bound != sender_key.to_bytes()
        {
            return Err((
                pb::AckStatus::AckRejected,
                "sender's encryption key differs from the one bound to this peer".into(),
            ));
        }
        let (reply, verdict) = oneshot::channel();
        self.queue_inbound(
            sender_key,
            Inbound {
                peer,
                id,
                ciphertext,
                reply,
            },
        );
        // Whoever gets the sender's lock first decrypts everything queued for it by then, this
        // frame included or not; a frame already handled by an earlier holder finds the queue
        // empty and only waits for its verdict.
        match self.olm.lock_peer(sender_key).await {
            Ok(sessions) => {
                let batch = self.take_inbound(&sender_key);
                if !batch.is_empty() {
                    self.receive_batch(sessions, sender_key, batch, handlers)
                        .await;
                }
            }
            Err(e) => {
                let reason = format!("try again later: {e}");
                for inbound in self.take_inbound(&sender_key) {
                    let _ = inbound
                        .reply
                        .send(Err((pb::AckStatus::AckRateLimited, reason.clone())));
                }
            }
        }
        verdict.await.unwrap_or_else(|_| {
            Err((
                pb::AckStatus::AckRateLimited,
                "try again later: the receiving task stopped".into(),
            ))
        })
    }

    /// Decrypts a batch of frames from the holder of `sender_key` (all checked already) and
    /// stores what they carry in one transaction with the sessions after the last of them, then
    /// one flush, then a verdict per frame (call signals get theirs before the flush, and a batch
    /// of call signals alone is not flushed: see below).
    ///
    /// Group control messages are applied after that transaction, by the group store's own
    /// writes, before the flush: a crash in between leaves their Olm step spent and the frame
    /// unacknowledged, so the sender's retry is undecryptable and it re-sends on a fresh session.
    async fn receive_batch(
        self: &Arc<Self>,
        mut sessions: crate::olm_state::PeerGuard,
        sender_key: Curve25519Key,
        batch: Vec<Inbound>,
        handlers: &impl Handlers,
    ) {
        let internal = |e: &ServiceError| {
            (
                pb::AckStatus::AckRateLimited,
                format!("try again later: {e}"),
            )
        };
        let me = self.me.to_bytes();
        // Held from the first new session to the end of the write, so no other save of the
        // account (a rotation) can land between our change and our write of it.
        let mut account: Option<MutexGuard<'_, OlmAccount>> = None;
        let mut account_changed = false;
        let mut seen = HashSet::new();
        let mut texts: Vec<(Message, oneshot::Sender<Verdict>)> = Vec::new();
        // Files offered in this batch: fetched once the batch is stored.
        let mut files: Vec<MessageId> = Vec::new();
        let mut receipts: Vec<PendingReceipt> = Vec::new();
        let mut controls: Vec<(PeerId, pb::direct_payload::Body, oneshot::Sender<Verdict>)> =
            Vec::new();
        // Call signalling: handed to the calls component once the batch is on disk.
        let mut call_signals: Vec<(pb::CallSignal, oneshot::Sender<Verdict>)> = Vec::new();
        let mut spent = false;
        let Some(peer) = batch.first().map(|i| i.peer) else {
            return;
        };
        // Frames under this key from another peer (possible only before the key is bound to its
        // owner) go back to the queue: their own tasks take this lock after us and handle them.
        let (batch, others): (Vec<Inbound>, Vec<Inbound>) =
            batch.into_iter().partition(|i| i.peer == peer);
        for inbound in others {
            self.queue_inbound(sender_key, inbound);
        }
        for inbound in batch {
            // The same frame twice in one batch (a retry that overtook the ack), or one stored
            // since it was checked: the second decrypt would fail, so answer it by id.
            let known = self
                .store
                .messages()
                .is_known_from(&inbound.peer.to_bytes(), &inbound.id)
                .unwrap_or(false);
            if !seen.insert(inbound.id) || known {
                let _ = inbound.reply.send(Ok(pb::AckStatus::AckDuplicate));
                continue;
            }
            let decrypted = if sessions.needs_account(&inbound.ciphertext) {
                let account = match &mut account {
                    Some(account) => account,
                    None => account.insert(self.olm.account().await),
                };
                let before = account.fallback_key_used();
                let result = account.decrypt(&mut sessions, &inbound.ciphertext);
                account_changed |= account.fallback_key_used() != before;
                result
            } else {
                sessions.decrypt(&inbound.ciphertext)
            };
            // A replayed envelope was answered DUPLICATE above, by id. A message key that is gone
            // is either a ciphertext replayed under a new id or a step that arrived too far out of
            // order; either way the honest sender's remedy is to re-encrypt, so say undecryptable.
            let plaintext = match decrypted {
                Ok(plaintext) => plaintext,
                Err(e) => {
                    let _ = inbound
                        .reply
                        .send(Err((pb::AckStatus::AckUndecryptable, e.to_string())));
                    continue;
                }
            };
            spent = true;
            let Ok(payload) = pb::DirectPayload::decode(plaintext.as_slice()) else {
                let _ = inbound.reply.send(Err((
                    pb::AckStatus::AckRejected,
                    "malformed payload".into(),
                )));
                continue;
            };
            if payload.id != inbound.id
                || payload.sender != peer.to_bytes()
                || payload.recipient != me
            {
                let _ = inbound.reply.send(Err((
                    pb::AckStatus::AckRejected,
                    "payload is not from this sender to this node".into(),
                )));
                continue;
            }
            match payload.body {
                Some(pb::direct_payload::Body::Text(text)) => {
                    if text.len() > MAX_TEXT_BYTES || text.is_empty() {
                        let _ = inbound.reply.send(Err((
                            pb::AckStatus::AckRejected,
                            "empty or oversized text".into(),
                        )));
                        continue;
                    }
                    let message = received_message(inbound.id, peer, text, payload.sent_at_ms);
                    texts.push((message, inbound.reply));
                }
                Some(pb::direct_payload::Body::File(offer)) => {
                    match handlers.file_offer(peer, inbound.id, offer) {
                        Ok(text) => {
                            let message =
                                received_message(inbound.id, peer, text, payload.sent_at_ms);
                            files.push(inbound.id);
                            texts.push((message, inbound.reply));
                        }
                        Err(reason) => {
                            let _ = inbound
                                .reply
                                .send(Err((pb::AckStatus::AckRejected, reason)));
                        }
                    }
                }
                Some(pb::direct_payload::Body::Receipt(receipt)) => {
                    let ids: Vec<MessageId> = receipt
                        .ids
                        .iter()
                        .filter_map(|i| MessageId::try_from(i.as_slice()).ok())
                        .collect();
                    let kind = if receipt.kind == pb::ReceiptKind::ReceiptDelivered as i32 {
                        // Our message reached the recipient through a mailbox relay.
                        Some(ReceiptKind::Delivered)
                    } else if receipt.kind == pb::ReceiptKind::ReceiptRead as i32 {
                        Some(ReceiptKind::Read)
                    } else {
                        None
                    };
                    match kind {
                        Some(kind) => receipts.push(((kind, ids), inbound.reply)),
                        None => {
                            let _ = inbound.reply.send(Ok(pb::AckStatus::AckStored));
                        }
                    }
                }
                Some(pb::direct_payload::Body::CallSignal(signal)) => {
                    match handlers.admit_call_signal(peer, &signal) {
                        Ok(()) => call_signals.push((signal, inbound.reply)),
                        Err(reason) => {
                            let _ = inbound
                                .reply
                                .send(Err((pb::AckStatus::AckRejected, reason)));
                        }
                    }
                }
                Some(pb::direct_payload::Body::CallSummary(summary)) => {
                    match handlers.call_summary(peer, &summary, payload.sent_at_ms) {
                        Ok(text) => {
                            let message =
                                received_message(inbound.id, peer, text, payload.sent_at_ms);
                            texts.push((message, inbound.reply));
                        }
                        Err(reason) => {
                            let _ = inbound
                                .reply
                                .send(Err((pb::AckStatus::AckRejected, reason)));
                        }
                    }
                }
                Some(
                    body @ (pb::direct_payload::Body::GroupInvite(_)
                    | pb::direct_payload::Body::GroupUpdate(_)
                    | pb::direct_payload::Body::GroupKey(_)
                    | pb::direct_payload::Body::GroupKeyRequest(_)),
                ) => controls.push((peer, body, inbound.reply)),
                None => {
                    let _ = inbound
                        .reply
                        .send(Err((pb::AckStatus::AckRejected, "empty payload".into())));
                }
            }
        }
        if !spent {
            return;
        }
        let messages: Vec<Message> = texts.iter().map(|(m, _)| m.clone()).collect();
        let receipt_list: Vec<(ReceiptKind, Vec<MessageId>)> =
            receipts.iter().map(|(r, _)| r.clone()).collect();
        let written = self.olm.pickle(&sessions).and_then(|pickle| {
            let account_pickle = match (&account, account_changed) {
                (Some(account), true) => Some(self.olm.account_pickle(account)?),
                _ => None,
            };
            self.store
                .messages()
                .store_received(
                    &Received {
                        peer_id: &peer.to_bytes(),
                        // Texts, group controls and calls bind the sender's key on first use.
                        identity_key: (!messages.is_empty()
                            || !controls.is_empty()
                            || !call_signals.is_empty())
                        .then_some(sender_key.to_bytes()),
                        messages: &messages,
                        receipts: &receipt_list,
                        olm: OlmSave::sessions(sender_key.to_bytes(), &pickle)
                            .with_account(account_pickle.as_deref()),
                    },
                    now_ms(),
                )
                .map_err(ServiceError::from)
        });
        let outcome = match written {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot store received messages");
                // Memory must not run ahead of the store: the sender will retry these frames.
                sessions.reload();
                let reason = internal(&e);
                for reply in texts
                    .into_iter()
                    .map(|(_, r)| r)
                    .chain(receipts.into_iter().map(|(_, r)| r))
                    .chain(controls.into_iter().map(|(_, _, r)| r))
                    .chain(call_signals.into_iter().map(|(_, r)| r))
                {
                    let _ = reply.send(Err(reason.clone()));
                }
                return;
            }
        };
        drop(account);
        drop(sessions);
        if !messages.is_empty() || !controls.is_empty() || !call_signals.is_empty() {
            self.set_key_owner(sender_key.to_bytes(), peer);
        }
        let mut control_replies = Vec::with_capacity(controls.len());
        for (from, body, reply) in controls {
            // A control message that makes no sense (not a member, stale list) is still
            // acknowledged: the Olm step is spent and a retry would not change the answer.
            if let Err(reason) = handlers.group_control(from, body).await {
                self.rejected.inc();
                tracing::info!(peer = %from, %reason, "ignored a group control message");
            }
            control_replies.push(reply);
        }
        // Call signals act and are acknowledged at once, and a batch of nothing else is not
        // flushed: a ring or an SDP answer must not wait for the disk, nor must the sender's next
        // signal (its next delivery round waits for this ack). Their Olm steps are in the
        // transaction above, made durable by the next flush (ours or sled's periodic one). A crash
        // before it loses these signals, and with them the call, which start-up ends anyway; the
        // sessions read back still decrypt the sender's later steps, and no step of ours was sent
        // from unsaved state (every send flushes first). Nothing else is acknowledged before the
        // flush.
        let only_call_signals =
            texts.is_empty() && receipts.is_empty() && control_replies.is_empty();
        for (signal, reply) in call_signals {
            handlers.call_signal(peer, signal);
            let _ = reply.send(Ok(pb::AckStatus::AckStored));
        }
        if only_call_signals {
            return;
        }
        let flushed = self.store.flush().await;
        let verdict = match &flushed {
            Ok(_) => Ok(pb::AckStatus::AckStored),
            Err(e) => Err(internal(&ServiceError::Task(e.to_string()))),
        };
        for ((message, reply), stored) in texts.into_iter().zip(&outcome.messages) {
            let _ = reply.send(verdict.clone());
            if flushed.is_ok() && *stored == Incoming::Stored {
                self.emit(MessageEvent::Received(message));
            }
        }
        for (((kind, _), reply), ours) in receipts.into_iter().zip(outcome.receipts) {
            let _ = reply.send(verdict.clone());
            let status = match kind {
                ReceiptKind::Delivered => Status::Delivered,
                ReceiptKind::Read => Status::Read,
            };
            for id in ours {
                self.emit(MessageEvent::Status { id, peer, status });
            }
        }
        for reply in control_replies {
            let _ = reply.send(verdict.clone());
        }
        if flushed.is_ok() {
            for id in files {
                handlers.file_stored(id);
            }
        }
    }

    /// A peer connected: whatever waits for it is due now.
    pub(crate) fn on_peer_connected(self: &Arc<Self>, peer: PeerId) {
        let Ok(items) = self.store.messages().outbox_for(&peer.to_bytes()) else {
            return;
        };
        let mut any = false;
        for mut item in items {
            if item.next_attempt_ms > 0 {
                item.next_attempt_ms = 0;
                let _ = self.store.messages().reschedule(&item);
            }
            any = true;
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// True when `peer` was accepted (not a request, not blocked): calls ring and files download
    /// at once only for them ([`crate::handles::TrustCheck`]).
    pub(crate) fn is_accepted(&self, peer: PeerId) -> bool {
        self.store
            .messages()
            .correspondent(&peer.to_bytes())
            .ok()
            .flatten()
            .is_some_and(|c| c.trust == kith_store::Trust::Accepted)
    }

    /// Withdraws message `id` to `peer` if it still waits in the outbox (a cancelled file's
    /// offer): marked failed with `note`, never sent. `Ok(false)`: nothing was waiting.
    pub(crate) fn withdraw(
        &self,
        peer: PeerId,
        id: &MessageId,
        note: &str,
    ) -> Result<bool, ServiceError> {
        let messages = self.store.messages();
        let queued = messages
            .outbox_for(&peer.to_bytes())
            .is_ok_and(|items| items.iter().any(|i| i.id == *id));
        if queued {
            messages.complete(
                &peer.to_bytes(),
                id,
                kith_store::Status::Failed,
                note,
                now_ms(),
            )?;
        }
        Ok(queued)
    }

    /// Whether call signalling (an entry with an expiry) still waits in the outbox: shutdown
    /// gives hang-ups a moment to leave.
    pub(crate) fn ephemeral_pending(&self) -> bool {
        self.store
            .messages()
            .outbox()
            .map(|items| items.iter().any(|i| i.expires_ms != 0))
            .unwrap_or(false)
    }

    /// A message's failure note (a file a relay would not hold): the note stays on the message,
    /// which stays queued.
    pub(crate) fn note_failure(
        &self,
        peer: PeerId,
        id: &MessageId,
        note: &str,
    ) -> Result<(), ServiceError> {
        self.store
            .messages()
            .note_failure(&peer.to_bytes(), id, note)?;
        Ok(())
    }
}

/// `Node`'s direct-message operations (what kith-api, the CLI, node.rs and the router call):
/// delegations to `Dm`.
impl Node {
    /// The direct-message component.
    pub(crate) fn dm(&self) -> &Arc<Dm> {
        &self.inner.dm
    }

    /// The handle through which features queue direct deliveries (see [`Outbox`]).
    pub(crate) fn outbox(&self) -> Outbox<'_> {
        self.inner.dm.outbox()
    }

    /// Subscribes to message events (new messages, status changes). Bounded: a subscriber that
    /// falls more than 1,024 events behind loses the oldest and is told so.
    pub fn subscribe(&self) -> broadcast::Receiver<MessageEvent> {
        self.inner.dm.subscribe()
    }

    /// Sends a text message to a petname, name or peer id.
    ///
    /// Returns once the message is stored (and flushed) and the first delivery attempt finished
    /// or a few seconds passed: `Delivered` or `Queued`. A queued message keeps being retried.
    pub async fn send_text(&self, target: &str, text: &str) -> Result<Sent, ServiceError> {
        self.inner.dm.send_text(target, text).await
    }

    /// The last `limit` messages with a contact, oldest first.
    pub async fn history(
        &self,
        target: &str,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<(PeerId, Vec<Message>), ServiceError> {
        self.inner.dm.history(target, limit, before).await
    }

    /// One message by id, either direction, as stored (status, failure note, text).
    pub fn message(&self, id: &MessageId) -> Result<Option<Message>, ServiceError> {
        self.inner.dm.message(id)
    }

    /// How many entries wait in the outbox (messages, receipts and control bodies not yet
    /// acknowledged): zero once everything sent has been delivered or given up.
    pub fn outbox_len(&self) -> usize {
        self.inner.dm.outbox_len()
    }

    /// Marks a conversation read and sends read receipts for what was unread.
    pub async fn mark_read(&self, peer: PeerId) -> Result<usize, ServiceError> {
        self.inner.dm.mark_read(peer).await
    }

    /// Conversations, most recent first (requests included, flagged by their trust).
    pub fn inbox(&self) -> Result<Vec<Conversation>, ServiceError> {
        self.inner.dm.inbox()
    }

    /// Blocks a peer: their messages are refused, not stored.
    pub async fn block(&self, target: &str) -> Result<PeerId, ServiceError> {
        self.inner.dm.block(target).await
    }

    /// Publishes our key bundle in the DHT so others can start a session while we are offline.
    pub async fn publish_key_bundle(&self) -> Result<bool, ServiceError> {
        self.inner.dm.publish_key_bundle().await
    }
}

/// The delivery worker: wakes on new outbox entries, on peers connecting, and when the earliest
/// retry is due; runs one delivery per peer at a time. Ends when the node shuts down.
pub(crate) async fn delivery_loop(
    dm: std::sync::Weak<Dm>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(node) = dm.upgrade() else {
            return;
        };
        let items = node.store.messages().outbox().unwrap_or_default();
        let now = now_ms();
        let mut next = now + 30_000;
        let mut due_peers = HashSet::new();
        for item in &items {
            if item.next_attempt_ms <= now {
                if let Some(peer) = peer_of(&item.peer_id) {
                    due_peers.insert(peer);
                }
            } else {
                next = next.min(item.next_attempt_ms);
            }
        }
        for peer in due_peers {
            let fresh = lock(&node.busy).insert(peer);
            if fresh {
                let worker = node.clone();
                tokio::spawn(async move {
                    worker.deliver_to(peer).await;
                    lock(&worker.busy).remove(&peer);
                    worker.wake.notify_one();
                });
            }
        }
        let wait = Duration::from_millis(next.saturating_sub(now_ms()).max(50));
        let wake = node.wake.notified();
        tokio::select! {
            () = wake => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

impl Dm {
    /// Rotates the fallback key if someone used it, then (re)publishes the key bundle.
    pub(crate) async fn refresh_key_bundle(self: &Arc<Self>) -> Result<bool, ServiceError> {
        {
            let mut account = self.olm.account().await;
            if account.rotate_fallback_key_if_used() {
                let pickle = self.olm.account_pickle(&account)?;
                self.store.messages().save_olm(OlmSave {
                    sessions: None,
                    account: Some(&pickle),
                })?;
                drop(account);
                self.store.flush().await?;
            }
        }
        self.publish_key_bundle().await
    }
}
