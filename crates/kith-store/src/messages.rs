//! Direct messages: conversations, the outbox, the Olm state and what we know of correspondents.
//!
//! Trees and keys:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `messages` | blake3(peer id) ‖ message id | `StoredMessage` |
//! | `message_ids` | message id | blake3(peer id): written by older versions only (see below); read as a fallback by [`MessageStore::message`] |
//! | `outbox` | message id | `OutboxEntry` |
//! | `crypto` | `olm` | the encrypted Olm account pickle (in stores from before per-peer sessions: the whole state, migrated by the node on start) |
//! | `crypto` | `olm/s/` ‖ Curve25519 identity key (32) | the encrypted Olm sessions with that peer |
//! | `correspondents` | peer id | `Correspondent` |
//!
//! | `journal` | sequence number (u64) | the writes of a batch being committed (see `journal.rs`) |
//!
//! No message is written to `message_ids` any more. Incoming messages left it first: their
//! sender is known wherever they are looked up (deduplication, receipts, file offers), and the
//! index cost more than the messages themselves in sled's log (a million received messages:
//! 772 MB of store file with it, 511 MB without), so it was most of what the open after a crash
//! reads. Our own messages followed: every status update (an acknowledgement, a receipt, a
//! failure note) comes from a delivery to one peer, so the conversation's key is known there
//! too, and each index entry stayed resident in sled 0.34's page table (about 10–18 bytes per
//! entry for good), half of what a sender's memory grew by per message in a long soak.
//! [`MessageStore::message`] still finds a message by id alone: through the index for messages
//! older versions indexed, otherwise by trying each correspondent's conversation.
//!
//! Message ids are time-ordered, so a conversation scans in order on both sides. Every change that
//! touches more than one tree is atomic: a journaled batch on the message path (queueing
//! outgoing messages with their envelopes and Olm state, storing what a sender's frames
//! brought), a sled transaction elsewhere. Every write takes the store's write lock, so a
//! batch's reads and writes are isolated from every other writer. Callers flush before
//! acknowledging.

use std::path::PathBuf;

use kith_proto::v1 as pb;
use prost::Message as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::StoreError;
use crate::error::{corrupt, stored_id};
use crate::journal::{JOURNAL, Journal, Writes};

pub(crate) const MESSAGES: &str = "messages";
pub(crate) const MESSAGE_IDS: &str = "message_ids";
pub(crate) const OUTBOX: &str = "outbox";
pub(crate) const CRYPTO: &str = "crypto";
pub(crate) const CORRESPONDENTS: &str = "correspondents";
const OLM_KEY: &[u8] = b"olm";
/// Prefix of the per-peer session pickles in the `crypto` tree.
const OLM_SESSIONS_PREFIX: &[u8] = b"olm/s/";

fn sessions_key(identity_key: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(OLM_SESSIONS_PREFIX.len() + 32);
    key.extend_from_slice(OLM_SESSIONS_PREFIX);
    key.extend_from_slice(identity_key);
    key
}

/// Olm state to save in the same transaction as the ciphertext it produced or the message it
/// decrypted, so a crash can never reuse a ratchet step or lose one that was acknowledged.
///
/// The pickles are opaque here (encrypted by `kith-crypto`). Only what changed is written: the
/// sessions of the one peer involved, and the account only when it changed (a session started
/// from our fallback key, a rotation).
#[derive(Debug, Clone, Copy, Default)]
pub struct OlmSave<'a> {
    /// The peer's Olm identity key and the pickle of our sessions with it.
    pub sessions: Option<([u8; 32], &'a [u8])>,
    /// The account pickle, when the account changed.
    pub account: Option<&'a [u8]>,
}

impl<'a> OlmSave<'a> {
    /// The sessions with one peer.
    pub fn sessions(identity_key: [u8; 32], pickle: &'a [u8]) -> Self {
        Self {
            sessions: Some((identity_key, pickle)),
            account: None,
        }
    }

    /// Adds the account pickle.
    pub fn with_account(mut self, pickle: Option<&'a [u8]>) -> Self {
        self.account = pickle;
        self
    }

    fn write(&self, crypto: &impl Writes) -> TxResult<()> {
        if let Some((key, pickle)) = self.sessions {
            crypto.insert(sessions_key(&key), pickle)?;
        }
        if let Some(pickle) = self.account {
            crypto.insert(OLM_KEY, pickle)?;
        }
        Ok(())
    }
}

/// What one sender's frames, decrypted together, amount to; see [`MessageStore::store_received`].
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The sender (binary peer id); every message in `messages` is from it.
    pub peer_id: &'a [u8],
    /// The sender's Olm identity key, bound to it on first use (`None`: leave the binding as it
    /// is, e.g. for receipts alone).
    pub identity_key: Option<[u8; 32]>,
    /// Its messages, in the order they were decrypted.
    pub messages: &'a [Message],
    /// Its receipts: which of our messages it stored or read.
    pub receipts: &'a [(ReceiptKind, Vec<MessageId>)],
    /// The Olm state after decrypting all of it.
    pub olm: OlmSave<'a>,
}

/// The result of [`MessageStore::store_received`], in the order of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedOutcome {
    /// Per message: stored or a duplicate.
    pub messages: Vec<Incoming>,
    /// Per receipt: the ids that were our messages to that peer.
    pub receipts: Vec<Vec<MessageId>>,
}

/// A receipt's effect on our outgoing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    /// The recipient stored them (they went through a mailbox relay): delivered.
    Delivered,
    /// The recipient read them.
    Read,
}

/// A message id: 16 bytes, time-ordered.
pub type MessageId = [u8; 16];

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Outgoing, not yet acknowledged.
    Queued,
    /// Outgoing, stored by the recipient.
    Delivered,
    /// Outgoing, read by the recipient.
    Read,
    /// Outgoing, refused for good.
    Failed,
    /// Incoming, unread.
    Received,
    /// Incoming, read.
    Seen,
}

impl Status {
    fn to_pb(self) -> pb::MessageStatus {
        match self {
            Status::Queued => pb::MessageStatus::StatusQueued,
            Status::Delivered => pb::MessageStatus::StatusDelivered,
            Status::Read => pb::MessageStatus::StatusRead,
            Status::Failed => pb::MessageStatus::StatusFailed,
            Status::Received => pb::MessageStatus::StatusReceived,
            Status::Seen => pb::MessageStatus::StatusSeen,
        }
    }

    fn from_pb(s: i32) -> Self {
        match pb::MessageStatus::try_from(s) {
            Ok(pb::MessageStatus::StatusDelivered) => Status::Delivered,
            Ok(pb::MessageStatus::StatusRead) => Status::Read,
            Ok(pb::MessageStatus::StatusFailed) => Status::Failed,
            Ok(pb::MessageStatus::StatusReceived) => Status::Received,
            Ok(pb::MessageStatus::StatusSeen) => Status::Seen,
            _ => Status::Queued,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// The other side of the conversation (binary peer id).
    pub peer_id: Vec<u8>,
    /// Sent by us.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// When the sender sent it, unix ms.
    pub sent_at_ms: u64,
    /// When we stored it (incoming) or it was delivered (outgoing), unix ms; 0 if not yet.
    pub received_at_ms: u64,
    /// Where it stands.
    pub status: Status,
    /// Why it failed, if it did.
    pub failure: String,
}

/// Something waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The message id.
    pub id: MessageId,
    /// Recipient (binary peer id).
    pub peer_id: Vec<u8>,
    /// Encoded payload, until encrypted.
    pub payload: Vec<u8>,
    /// Encrypted envelope, once made; retries resend these bytes.
    pub envelope: Option<Vec<u8>>,
    /// Attempts so far.
    pub attempts: u32,
    /// Next attempt, unix ms.
    pub next_attempt_ms: u64,
    /// When queued, unix ms.
    pub created_ms: u64,
    /// A receipt (not shown in history).
    pub receipt: bool,
    /// Held at one of the recipient's mailbox relays.
    pub deposited: bool,
    /// A group control message (invitation, member list, session key): not in history, but
    /// deposited at mailboxes like a text because the recipient needs it to read the group.
    pub control: bool,
    /// Call signalling: dropped once this time (unix ms) has passed and never deposited at a
    /// mailbox, because a ring nobody hears in time is worth nothing later. 0: kept until acked.
    pub expires_ms: u64,
}

/// Whether messages from a peer are welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Their messages wait in requests.
    Unknown,
    /// A conversation we accepted or started.
    Accepted,
    /// Refused.
    Blocked,
}

/// What we know about someone we exchange messages with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correspondent {
    /// Binary peer id.
    pub peer_id: Vec<u8>,
    /// Trust.
    pub trust: Trust,
    /// Their Olm identity key, bound on first use.
    pub identity_key: Option<[u8; 32]>,
    /// Unread incoming messages.
    pub unread: u32,
    /// Time of the last message either way, unix ms.
    pub last_message_ms: u64,
    /// Its text (shortened).
    pub last_text: String,
}

/// The result of storing an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// New, stored.
    Stored,
    /// Seen before: nothing written.
    Duplicate,
}

/// The message trees. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MessageStore {
    messages: sled::Tree,
    ids: sled::Tree,
    outbox: sled::Tree,
    crypto: sled::Tree,
    correspondents: sled::Tree,
    /// Outbox entry ids by recipient, with each entry's schedule, so a delivery run picks what is
    /// due without decoding its peer's whole queue every time it goes round (once per ack when
    /// pipelined; with a backlog of thousands behind a slow or rate-limiting recipient that was
    /// the run's main cost). Built by one scan at open; every write of an outbox entry updates it
    /// after its transaction commits. Removals are eager where cheap and otherwise lazy: an id
    /// whose entry is gone is dropped when a lookup misses it, so a stale id costs one miss,
    /// never a result.
    outbox_index: std::sync::Arc<std::sync::Mutex<OutboxIndex>>,
    /// The message path's batches, and the write lock every write to these trees takes: a
    /// batch's reads and writes must see no other writer in between (see `journal.rs`), and
    /// read-modify-writes of one record (a conversation summary, a message's status) must not
    /// lose each other's changes. Trees in the order messages, ids, outbox, crypto,
    /// correspondents.
    journal: Journal<5>,
    path: PathBuf,
}

/// See [`MessageStore::outbox_index`].
type OutboxIndex =
    std::collections::HashMap<Vec<u8>, std::collections::BTreeMap<MessageId, OutboxTiming>>;

/// What the delivery run's choice of entries depends on, kept in memory beside each id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutboxTiming {
    next_attempt_ms: u64,
    deposited: bool,
    expires_ms: u64,
}

impl OutboxTiming {
    fn of(item: &OutboxItem) -> Self {
        Self {
            next_attempt_ms: item.next_attempt_ms,
            deposited: item.deposited,
            expires_ms: item.expires_ms,
        }
    }
}

/// What [`MessageStore::outbox_due`] picked for one recipient.
#[derive(Debug, Default)]
pub struct DueEntries {
    /// Entries past their expiry (call signalling past its ring timeout): to be dropped, never
    /// sent late.
    pub expired: Vec<OutboxItem>,
    /// The oldest entries to send now, in id order (empty when nothing is due yet).
    pub ready: Vec<OutboxItem>,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn conv_key(peer_id: &[u8]) -> [u8; 32] {
    *blake3::hash(peer_id).as_bytes()
}

fn message_key(peer_id: &[u8], id: &MessageId) -> Vec<u8> {
    let mut key = Vec::with_capacity(48);
    key.extend_from_slice(&conv_key(peer_id));
    key.extend_from_slice(id);
    key
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl Message {
    /// The bytes the store keeps for this message: kith-bench's raw-sled baseline writes the same
    /// record, so the two sides of `history.*` store equal bytes.
    pub fn stored_bytes(&self) -> Vec<u8> {
        pb::StoredMessage {
            id: self.id.to_vec(),
            peer_id: self.peer_id.clone(),
            outgoing: self.outgoing,
            text: self.text.clone(),
            sent_at_ms: self.sent_at_ms,
            received_at_ms: self.received_at_ms,
            status: self.status.to_pb() as i32,
            failure: self.failure.clone(),
        }
        .encode_to_vec()
    }
}

fn decode_message(raw: &[u8]) -> Result<Message, StoreError> {
    let m = pb::StoredMessage::decode(raw).map_err(|e| corrupt(MESSAGES, e))?;
    let id: MessageId = stored_id(MESSAGES, "message id", &m.id)?;
    Ok(Message {
        id,
        peer_id: m.peer_id,
        outgoing: m.outgoing,
        text: m.text,
        sent_at_ms: m.sent_at_ms,
        received_at_ms: m.received_at_ms,
        status: Status::from_pb(m.status),
        failure: m.failure,
    })
}

fn encode_item(i: &OutboxItem) -> Vec<u8> {
    pb::OutboxEntry {
        peer_id: i.peer_id.clone(),
        payload: i.payload.clone(),
        envelope: i.envelope.clone().unwrap_or_default(),
        attempts: i.attempts,
        next_attempt_ms: i.next_attempt_ms,
        created_ms: i.created_ms,
        receipt: i.receipt,
        deposited: i.deposited,
        control: i.control,
        expires_ms: i.expires_ms,
    }
    .encode_to_vec()
}

fn decode_item(id: &[u8], raw: &[u8]) -> Result<OutboxItem, StoreError> {
    let e = pb::OutboxEntry::decode(raw).map_err(|e| corrupt(OUTBOX, e))?;
    Ok(OutboxItem {
        id: stored_id(OUTBOX, "outbox key", id)?,
        peer_id: e.peer_id,
        payload: e.payload,
        envelope: (!e.envelope.is_empty()).then_some(e.envelope),
        attempts: e.attempts,
        next_attempt_ms: e.next_attempt_ms,
        created_ms: e.created_ms,
        receipt: e.receipt,
        deposited: e.deposited,
        control: e.control,
        expires_ms: e.expires_ms,
    })
}

fn decode_correspondent(peer_id: &[u8], raw: &[u8]) -> Result<Correspondent, StoreError> {
    let c = pb::Correspondent::decode(raw).map_err(|e| corrupt(CORRESPONDENTS, e))?;
    Ok(Correspondent {
        peer_id: peer_id.to_vec(),
        trust: match pb::Trust::try_from(c.trust) {
            Ok(pb::Trust::Accepted) => Trust::Accepted,
            Ok(pb::Trust::Blocked) => Trust::Blocked,
            _ => Trust::Unknown,
        },
        identity_key: c.identity_key.as_slice().try_into().ok(),
        unread: c.unread,
        last_message_ms: c.last_message_ms,
        last_text: c.last_text,
    })
}

fn encode_correspondent(c: &Correspondent) -> Vec<u8> {
    pb::Correspondent {
        trust: match c.trust {
            Trust::Unknown => pb::Trust::Unknown,
            Trust::Accepted => pb::Trust::Accepted,
            Trust::Blocked => pb::Trust::Blocked,
        } as i32,
        identity_key: c.identity_key.map(|k| k.to_vec()).unwrap_or_default(),
        unread: c.unread,
        last_message_ms: c.last_message_ms,
        last_text: c.last_text.clone(),
    }
    .encode_to_vec()
}

fn staged_correspondent(tree: &impl Writes, peer_id: &[u8]) -> TxResult<Correspondent> {
    Ok(match tree.get(peer_id)? {
        Some(raw) => decode_correspondent(peer_id, &raw).map_err(abort)?,
        None => Correspondent {
            peer_id: peer_id.to_vec(),
            trust: Trust::Unknown,
            identity_key: None,
            unread: 0,
            last_message_ms: 0,
            last_text: String::new(),
        },
    })
}

/// Removes an outbox entry to `peer_id` and sets its message's status, inside a batch.
fn staged_complete<T: Writes>(
    messages: &T,
    outbox: &T,
    peer_id: &[u8],
    id: &MessageId,
    status: Status,
    failure: &str,
    at_ms: u64,
) -> TxResult<()> {
    outbox.remove(&id[..])?;
    let key = message_key(peer_id, id);
    if let Some(raw) = messages.get(&key)? {
        let mut m = decode_message(&raw).map_err(abort)?;
        // A read receipt may have arrived first; never step back.
        if !(m.status == Status::Read && status == Status::Delivered) {
            m.status = status;
        }
        m.failure = failure.to_owned();
        if m.received_at_ms == 0 {
            m.received_at_ms = at_ms;
        }
        messages.insert(key, m.stored_bytes())?;
    }
    Ok(())
}

/// The shortened text a conversation list shows as the last message (80 characters), the same
/// for conversations and groups.
pub fn preview(text: &str) -> String {
    text.chars().take(80).collect()
}

impl MessageStore {
    pub(crate) fn new(db: &sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::from_sled(&path, e))
        };
        let messages = open(MESSAGES)?;
        let ids = open(MESSAGE_IDS)?;
        let outbox = open(OUTBOX)?;
        let crypto = open(CRYPTO)?;
        let correspondents = open(CORRESPONDENTS)?;
        // Before anything reads the trees: a batch a crash interrupted is completed first.
        let journal = Journal::open(
            db,
            &path,
            JOURNAL,
            [
                messages.clone(),
                ids.clone(),
                outbox.clone(),
                crypto.clone(),
                correspondents.clone(),
            ],
        )?;
        let mut index = OutboxIndex::new();
        for entry in outbox.iter() {
            let (key, raw) = entry.map_err(|e| StoreError::from_sled(&path, e))?;
            let item = decode_item(&key, &raw)?;
            let timing = OutboxTiming::of(&item);
            index
                .entry(item.peer_id)
                .or_default()
                .insert(item.id, timing);
        }
        Ok(Self {
            messages,
            ids,
            outbox,
            crypto,
            correspondents,
            outbox_index: std::sync::Arc::new(std::sync::Mutex::new(index)),
            journal,
            path,
        })
    }

    /// The store's write lock (see `journal.rs`).
    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.journal.writing()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, OutboxIndex> {
        // A set of ids: a panic while it was held cannot leave it half-written.
        self.outbox_index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The outbox entries for one recipient, oldest id first, by point lookups.
    pub fn outbox_for(&self, peer_id: &[u8]) -> Result<Vec<OutboxItem>, StoreError> {
        let ids: Vec<MessageId> = self
            .index()
            .get(peer_id)
            .map(|ids| ids.keys().copied().collect())
            .unwrap_or_default();
        self.read_entries(peer_id, ids)
    }

    /// Reads the entries `ids` of `peer_id`'s queue by point lookups, in the order given; ids
    /// whose entry is gone are dropped from the index.
    fn read_entries(
        &self,
        peer_id: &[u8],
        ids: Vec<MessageId>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for id in ids {
            match self.outbox.get(id).map_err(|e| self.err(e))? {
                Some(raw) => out.push(decode_item(&id, &raw)?),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let mut index = self.index();
            if let Some(ids) = index.get_mut(peer_id) {
                for id in &gone {
                    ids.remove(id);
                }
                if ids.is_empty() {
                    index.remove(peer_id);
                }
            }
        }
        Ok(out)
    }

    /// What a delivery run for `peer_id` sends next, chosen from the in-memory schedule and read
    /// by point lookups (only the chosen entries are decoded, whatever the queue's length):
    ///
    /// - entries whose `expires_ms` has passed, to be dropped;
    /// - if any entry is due at `now_ms`, the `limit` oldest entries not in `skip` (in flight),
    ///   leaving out those held at the recipient's mailbox and not yet due again: once anything
    ///   for a peer is due everything for it goes, oldest first, because its entries hold
    ///   consecutive Olm chain steps, and delivering later steps far ahead of earlier ones
    ///   would exhaust the receiver's skipped-key window. Entries held at a mailbox wait for
    ///   their own (slower) retry time: they are queued there in order, and sending them again
    ///   every round would keep the batch full of them.
    pub fn outbox_due(
        &self,
        peer_id: &[u8],
        now_ms: u64,
        skip: &std::collections::HashSet<MessageId>,
        limit: usize,
    ) -> Result<DueEntries, StoreError> {
        let mut expired = Vec::new();
        let mut chosen = Vec::new();
        let mut any_due = false;
        if let Some(entries) = self.index().get(peer_id) {
            for (id, timing) in entries {
                if skip.contains(id) {
                    continue;
                }
                if timing.expires_ms != 0 && timing.expires_ms <= now_ms {
                    expired.push(*id);
                    continue;
                }
                if timing.deposited && timing.next_attempt_ms > now_ms {
                    continue;
                }
                any_due |= timing.next_attempt_ms <= now_ms;
                if chosen.len() < limit {
                    chosen.push(*id);
                } else if any_due {
                    // Full, and something is due: nothing further changes the choice (an
                    // expired entry further on is dropped when a run reaches it).
                    break;
                }
            }
        }
        if !any_due {
            chosen.clear();
        }
        Ok(DueEntries {
            expired: self.read_entries(peer_id, expired)?,
            ready: self.read_entries(peer_id, chosen)?,
        })
    }

    /// Records an outbox entry's schedule after a write of it committed.
    fn index_entry(&self, item: &OutboxItem) {
        self.index()
            .entry(item.peer_id.clone())
            .or_default()
            .insert(item.id, OutboxTiming::of(item));
    }

    /// Drops an id of `peer_id`'s queue from the index after its entry was removed.
    fn unindex(&self, peer_id: &[u8], id: &MessageId) {
        let mut index = self.index();
        if let Some(ids) = index.get_mut(peer_id) {
            ids.remove(id);
            if ids.is_empty() {
                index.remove(peer_id);
            }
        }
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.path, e)
    }

    fn tx_err(&self, e: TransactionError<StoreError>) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.err(e),
        }
    }

    /// Queues an outgoing message (or a receipt, with `message` = None) in one transaction:
    /// the message, the outbox entry and the conversation summary. Sending to someone
    /// accepts them.
    pub fn enqueue(&self, message: Option<&Message>, item: &OutboxItem) -> Result<(), StoreError> {
        self.enqueue_batch(message.into_iter(), std::slice::from_ref(item), None)
    }

    /// Queues several outgoing entries at once, in one transaction: `messages` (shown in
    /// history, with their ids and the conversation summaries) and the outbox entries `items`,
    /// new or already queued, with whatever envelopes they carry, plus the Olm state `olm` that
    /// made those envelopes. A delivery run writes what was handed to it this way, together
    /// with the envelopes it just made, so a message costs one batch on the send path. The
    /// batch is journaled, not a sled transaction (which pays two synchronous log writes of its
    /// own; see `journal.rs`): its writes reach the disk with the caller's flush.
    ///
    /// `messages` should be in id order: the conversation summary is the last one's.
    pub fn enqueue_batch<'m>(
        &self,
        messages: impl Iterator<Item = &'m Message> + Clone,
        items: &[OutboxItem],
        olm: Option<OlmSave<'_>>,
    ) -> Result<(), StoreError> {
        self.journal
            .batch(|[messages_tree, _, outbox, crypto, correspondents]| {
                for m in messages.clone() {
                    // Not in the id index (see the module doc).
                    messages_tree.insert(message_key(&m.peer_id, &m.id), m.stored_bytes())?;
                    let mut c = staged_correspondent(correspondents, &m.peer_id)?;
                    if c.trust == Trust::Unknown {
                        c.trust = Trust::Accepted;
                    }
                    c.last_message_ms = m.sent_at_ms;
                    c.last_text = preview(&m.text);
                    correspondents.insert(m.peer_id.as_slice(), encode_correspondent(&c))?;
                }
                for item in items {
                    outbox.insert(&item.id[..], encode_item(item))?;
                }
                if let Some(olm) = &olm {
                    olm.write(crypto)?;
                }
                Ok(())
            })?;
        for item in items {
            self.index_entry(item);
        }
        Ok(())
    }

    /// Updates attempt count and time of an outbox entry if it is still there (in one atomic
    /// step: an entry completed meanwhile stays gone).
    pub fn reschedule(&self, item: &OutboxItem) -> Result<(), StoreError> {
        let _writing = self.writing();
        let encoded = encode_item(item);
        let was = self
            .outbox
            .fetch_and_update(item.id, |old| old.map(|_| encoded.clone()))
            .map_err(|e| self.err(e))?;
        if was.is_some() {
            self.index_entry(item);
        }
        Ok(())
    }

    /// Ends an outbox entry to `peer_id`: removes it and sets the message's status (delivered or
    /// failed).
    pub fn complete(
        &self,
        peer_id: &[u8],
        id: &MessageId,
        status: Status,
        failure: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        // Not a sled transaction: in sled 0.34 every transaction first writes and syncs the
        // log's current buffer and then its own 24-byte batch marker (`pin_log`), two
        // synchronous writes, and every acknowledged message paid them once more here. Two
        // single-key writes in order instead: the message first (compare-and-swap, so a read
        // receipt landing meanwhile is never stepped back), then its outbox entry. sled replays
        // its log in order and stops at the first gap, so a crash in between leaves the entry
        // with the message already marked: the entry is sent again and acknowledged as a
        // duplicate. Never the reverse (an entry gone while its message still says queued).
        let _writing = self.writing();
        let key = message_key(peer_id, id);
        // Receipts and control bodies have no message in the history; a compare-and-swap of an
        // absent key would still write a removal to the log.
        if self.messages.contains_key(&key).map_err(|e| self.err(e))? {
            let mut corrupt = None;
            self.messages
                .fetch_and_update(&key, |old| {
                    let raw = old?;
                    match decode_message(raw) {
                        Ok(mut m) => {
                            // A read receipt may have arrived first; never step back.
                            if !(m.status == Status::Read && status == Status::Delivered) {
                                m.status = status;
                            }
                            m.failure = failure.to_owned();
                            if m.received_at_ms == 0 {
                                m.received_at_ms = at_ms;
                            }
                            Some(m.stored_bytes())
                        }
                        Err(e) => {
                            corrupt = Some(e);
                            Some(raw.to_vec())
                        }
                    }
                })
                .map_err(|e| self.err(e))?;
            if let Some(e) = corrupt {
                return Err(e);
            }
        }
        self.outbox.remove(&id[..]).map_err(|e| self.err(e))?;
        self.unindex(peer_id, id);
        Ok(())
    }

    /// Applies a receipt from `peer_id` to our outgoing messages `ids` together with the Olm state
    /// that decrypted it, in one transaction. Delivered: like [`MessageStore::complete`] for each
    /// of our messages to that peer. Read: marks them read. Ids that are not our messages to that
    /// peer are ignored. Returns the ids that were ours.
    pub fn apply_receipt(
        &self,
        peer_id: &[u8],
        kind: ReceiptKind,
        ids: &[MessageId],
        at_ms: u64,
        olm: OlmSave<'_>,
    ) -> Result<Vec<MessageId>, StoreError> {
        let receipts = [(kind, ids.to_vec())];
        let outcome = self.store_received(
            &Received {
                peer_id,
                identity_key: None,
                messages: &[],
                receipts: &receipts,
                olm,
            },
            at_ms,
        )?;
        Ok(outcome.receipts.into_iter().next().unwrap_or_default())
    }

    /// Records why an outgoing message to `peer_id` is not getting through, without changing
    /// its status.
    pub fn note_failure(
        &self,
        peer_id: &[u8],
        id: &MessageId,
        reason: &str,
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        let key = message_key(peer_id, id);
        if let Some(raw) = self.messages.get(&key).map_err(|e| self.err(e))? {
            let mut m = decode_message(&raw)?;
            m.failure = reason.to_owned();
            self.messages
                .insert(key, m.stored_bytes())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Marks our outgoing messages as read by the recipient (a read receipt arrived).
    pub fn mark_read_by_peer(
        &self,
        peer_id: &[u8],
        ids: &[MessageId],
    ) -> Result<usize, StoreError> {
        let _writing = self.writing();
        let mut changed = 0;
        for id in ids {
            let key = message_key(peer_id, id);
            if let Some(raw) = self.messages.get(&key).map_err(|e| self.err(e))? {
                let mut m = decode_message(&raw)?;
                if m.outgoing && m.status != Status::Read {
                    m.status = Status::Read;
                    self.messages
                        .insert(key, m.stored_bytes())
                        .map_err(|e| self.err(e))?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// Stores an incoming message with the Olm state that decrypted it, unless its id is known.
    /// A new correspondent starts as [`Trust::Unknown`] (a request); `identity_key` is bound on
    /// first use.
    pub fn store_incoming(
        &self,
        message: &Message,
        olm: OlmSave<'_>,
        identity_key: [u8; 32],
    ) -> Result<Incoming, StoreError> {
        let stored = self.store_incoming_batch(std::slice::from_ref(message), olm, identity_key)?;
        Ok(stored.first().copied().unwrap_or(Incoming::Duplicate))
    }

    /// Stores incoming messages from one sender, decrypted in a row, with the Olm state after the
    /// last of them, in one transaction. See [`MessageStore::store_received`].
    pub fn store_incoming_batch(
        &self,
        batch: &[Message],
        olm: OlmSave<'_>,
        identity_key: [u8; 32],
    ) -> Result<Vec<Incoming>, StoreError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        Ok(self
            .store_received(
                &Received {
                    peer_id: &first.peer_id,
                    identity_key: Some(identity_key),
                    messages: batch,
                    receipts: &[],
                    olm,
                },
                0,
            )?
            .messages)
    }

    /// Stores what one sender's frames, decrypted in a row, amount to: its messages, the effect
    /// of its receipts on our outgoing messages, the binding of its identity key, and the Olm
    /// state after the last of them, all in one transaction (group commit on the receiving side:
    /// one write and one flush for what arrived together).
    ///
    /// Each message is stored unless its id is known from that sender (a repeat inside the batch
    /// included). A new correspondent starts as [`Trust::Unknown`] (a request).
    pub fn store_received(
        &self,
        batch: &Received<'_>,
        at_ms: u64,
    ) -> Result<ReceivedOutcome, StoreError> {
        self.journal
            .batch(|[messages, _, outbox, crypto, correspondents]| {
                let mut outcome = ReceivedOutcome {
                    messages: Vec::with_capacity(batch.messages.len()),
                    receipts: Vec::with_capacity(batch.receipts.len()),
                };
                let mut summary: Option<Correspondent> = None;
                if let Some(key) = batch.identity_key {
                    let mut c = staged_correspondent(correspondents, batch.peer_id)?;
                    if c.identity_key.is_none() {
                        c.identity_key = Some(key);
                    }
                    summary = Some(c);
                }
                for message in batch.messages {
                    // Duplicate means the same sender sent this id before: another peer reusing an
                    // id (it travels in clear) must not suppress the real message.
                    let key = message_key(&message.peer_id, &message.id);
                    if messages.get(&key)?.is_some() {
                        outcome.messages.push(Incoming::Duplicate);
                        continue;
                    }
                    // Not in the id index (see the module doc).
                    messages.insert(key, message.stored_bytes())?;
                    let c = match &mut summary {
                        Some(c) => c,
                        None => {
                            summary.insert(staged_correspondent(correspondents, batch.peer_id)?)
                        }
                    };
                    c.unread = c.unread.saturating_add(1);
                    c.last_message_ms = message.sent_at_ms.max(c.last_message_ms);
                    c.last_text = preview(&message.text);
                    outcome.messages.push(Incoming::Stored);
                }
                if let Some(c) = &summary {
                    correspondents.insert(batch.peer_id, encode_correspondent(c))?;
                }
                for (kind, receipt_ids) in batch.receipts {
                    let mut ours = Vec::new();
                    for id in receipt_ids {
                        let key = message_key(batch.peer_id, id);
                        let Some(raw) = messages.get(&key)? else {
                            continue;
                        };
                        let mut m = decode_message(&raw).map_err(abort)?;
                        if !m.outgoing {
                            continue;
                        }
                        match kind {
                            ReceiptKind::Delivered => {
                                staged_complete(
                                    messages,
                                    outbox,
                                    batch.peer_id,
                                    id,
                                    Status::Delivered,
                                    "",
                                    at_ms,
                                )?;
                            }
                            ReceiptKind::Read => {
                                if m.status != Status::Read {
                                    m.status = Status::Read;
                                    messages.insert(key, m.stored_bytes())?;
                                }
                            }
                        }
                        ours.push(*id);
                    }
                    outcome.receipts.push(ours);
                }
                batch.olm.write(crypto)?;
                Ok(outcome)
            })
    }

    /// Saves Olm state alone: after decrypting something that changes nothing else (a group
    /// control message, whose effects the group store records), a fallback-key rotation, or a
    /// sessions reset.
    pub fn save_olm(&self, olm: OlmSave<'_>) -> Result<(), StoreError> {
        self.journal.batch(|[_, _, _, crypto, _]| olm.write(crypto))
    }

    /// Replaces a whole-state Olm pickle (stores from before per-peer sessions) by the account
    /// alone and one sessions pickle per peer, in one transaction: a crash leaves either the old
    /// layout or the new one.
    pub fn migrate_olm(
        &self,
        account: &[u8],
        sessions: &[([u8; 32], Vec<u8>)],
    ) -> Result<(), StoreError> {
        let _writing = self.writing();
        crate::gate::transaction(|| {
            self.crypto.transaction(|crypto| {
                for (key, pickle) in sessions {
                    crypto.insert(sessions_key(key), pickle.as_slice())?;
                }
                crypto.insert(OLM_KEY, account)?;
                Ok(())
            })
        })
        .map_err(|e| self.tx_err(e))
    }

    /// Drops the saved sessions with the peer whose Olm identity key is `identity_key` (a reset:
    /// the next message to it starts a new session from its key bundle).
    pub fn remove_olm_sessions(&self, identity_key: &[u8; 32]) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.crypto
            .remove(sessions_key(identity_key))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The saved Olm account pickle, if any (a whole-state pickle in stores not yet migrated).
    pub fn olm_account(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .crypto
            .get(OLM_KEY)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// The saved pickle of our sessions with the peer whose Olm identity key is `identity_key`.
    pub fn olm_sessions(&self, identity_key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .crypto
            .get(sessions_key(identity_key))
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// Whether `peer_id` already sent (or was sent) a message with this id.
    pub fn is_known_from(&self, peer_id: &[u8], id: &MessageId) -> Result<bool, StoreError> {
        self.messages
            .contains_key(message_key(peer_id, id))
            .map_err(|e| self.err(e))
    }

    /// One message of the conversation with `peer_id`.
    pub fn message_from(
        &self,
        peer_id: &[u8],
        id: &MessageId,
    ) -> Result<Option<Message>, StoreError> {
        match self
            .messages
            .get(message_key(peer_id, id))
            .map_err(|e| self.err(e))?
        {
            Some(raw) => Ok(Some(decode_message(&raw)?)),
            None => Ok(None),
        }
    }

    /// Whether a message with this id is stored (either direction).
    pub fn is_known(&self, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.message(id)?.is_some())
    }

    /// One message by id, either direction: through the id index if an older version indexed
    /// it, otherwise by trying each correspondent's conversation (one point read each; see the
    /// module doc). Where the correspondent is known, [`MessageStore::message_from`] is one
    /// read.
    pub fn message(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        if let Some(conv) = self.ids.get(id).map_err(|e| self.err(e))? {
            let mut key = conv.to_vec();
            key.extend_from_slice(id);
            if let Some(raw) = self.messages.get(key).map_err(|e| self.err(e))? {
                return Ok(Some(decode_message(&raw)?));
            }
        }
        for entry in self.correspondents.iter().keys() {
            let peer_id = entry.map_err(|e| self.err(e))?;
            if let Some(raw) = self
                .messages
                .get(message_key(&peer_id, id))
                .map_err(|e| self.err(e))?
            {
                return Ok(Some(decode_message(&raw)?));
            }
        }
        Ok(None)
    }

    /// The last `limit` messages with `peer_id` (before `before`, if given), oldest first.
    pub fn history(
        &self,
        peer_id: &[u8],
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        let conv = conv_key(peer_id);
        let end = match before {
            Some(id) => message_key(peer_id, id),
            None => {
                let mut end = conv.to_vec();
                end.extend_from_slice(&[0xff; 17]);
                end
            }
        };
        let mut out = Vec::new();
        for item in self.messages.range(conv.to_vec()..end).rev().take(limit) {
            let (_, raw) = item.map_err(|e| self.err(e))?;
            out.push(decode_message(&raw)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Marks every unread incoming message from `peer_id` as seen; returns their ids (for read
    /// receipts).
    pub fn mark_seen(&self, peer_id: &[u8]) -> Result<Vec<MessageId>, StoreError> {
        let conv = conv_key(peer_id);
        // One batch: the statuses and the unread count change together.
        self.journal.batch(|[messages, _, _, _, correspondents]| {
            let mut seen = Vec::new();
            // The tree itself: the write lock is held, and this batch wrote nothing yet.
            for item in self.messages.scan_prefix(conv) {
                let (key, raw) = item.map_err(ConflictableTransactionError::Storage)?;
                let mut m = decode_message(&raw).map_err(abort)?;
                if !m.outgoing && m.status == Status::Received {
                    m.status = Status::Seen;
                    messages.insert(key, m.stored_bytes())?;
                    seen.push(m.id);
                }
            }
            // Marking read a conversation that does not exist must not invent one.
            if correspondents.get(peer_id)?.is_some() {
                let mut c = staged_correspondent(correspondents, peer_id)?;
                c.unread = 0;
                correspondents.insert(peer_id, encode_correspondent(&c))?;
            }
            Ok(seen)
        })
    }

    /// Everyone we exchanged messages with, most recent first.
    pub fn correspondents(&self) -> Result<Vec<Correspondent>, StoreError> {
        let mut out = Vec::new();
        for item in self.correspondents.iter() {
            let (key, raw) = item.map_err(|e| self.err(e))?;
            out.push(decode_correspondent(&key, &raw)?);
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.last_message_ms));
        Ok(out)
    }

    /// One correspondent.
    pub fn correspondent(&self, peer_id: &[u8]) -> Result<Option<Correspondent>, StoreError> {
        match self.correspondents.get(peer_id).map_err(|e| self.err(e))? {
            Some(raw) => Ok(Some(decode_correspondent(peer_id, &raw)?)),
            None => Ok(None),
        }
    }

    /// Binds (or re-binds, after a verified key bundle) a peer's Olm identity key.
    pub fn bind_identity_key(&self, peer_id: &[u8], key: [u8; 32]) -> Result<(), StoreError> {
        self.update_correspondent(peer_id, |c| c.identity_key = Some(key))
    }

    /// Sets a correspondent's trust (accept, block).
    pub fn set_trust(&self, peer_id: &[u8], trust: Trust) -> Result<(), StoreError> {
        self.update_correspondent(peer_id, |c| c.trust = trust)
    }

    fn update_correspondent(
        &self,
        peer_id: &[u8],
        f: impl Fn(&mut Correspondent),
    ) -> Result<(), StoreError> {
        // One record: under the write lock, a read and a write are as good as a transaction.
        self.journal.batch(|[_, _, _, _, correspondents]| {
            let mut c = staged_correspondent(correspondents, peer_id)?;
            f(&mut c);
            correspondents.insert(peer_id, encode_correspondent(&c))
        })
    }

    /// Every outbox entry.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, StoreError> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (key, raw) = item.map_err(|e| self.err(e))?;
            out.push(decode_item(&key, &raw)?);
        }
        Ok(out)
    }

    /// Number of outbox entries.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
}

#[cfg(test)]
mod tests;
