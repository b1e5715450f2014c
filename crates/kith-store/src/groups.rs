//! Groups: membership, Megolm sessions, the signed envelopes every member keeps (and serves to
//! members catching up), and the decrypted history.
//!
//! Trees and keys (`g` = 16-byte group id, `h(s)` = first 16 bytes of blake3(sender peer id)):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `groups` | g | `StoredGroup` (current signed member list, joined/left, our next seq) |
//! | `group_senders` | g | `StoredGroupSender` (our Megolm session, who has its key) |
//! | `group_receivers` | g ‖ session id | `StoredGroupReceiver` (another member's session) |
//! | `group_envelopes` | g ‖ h(s) ‖ seq (BE) | the signed `GroupEnvelope` as received |
//! | `group_heads` | g ‖ h(s) | seq (BE, contiguous high-water) ‖ sender peer id |
//! | `group_pending` | g ‖ session id ‖ h(s) ‖ seq | envelope key: held until the key arrives |
//! | `group_messages` | g ‖ message id | `StoredGroupMessage` |
//!
//! | `group_journal` | sequence number (u64) | the writes of a batch being committed (see `journal.rs`) |
//!
//! An envelope is stored once per (sender, seq): that is the deduplication point. Our own sends
//! write the envelope, the message, the advanced Megolm state and our next sequence in one
//! journaled batch, so a crash can never reuse a message index or a sequence number. Every change
//! touching more than one record is such a batch (not a sled transaction, which costs two
//! synchronous log writes of its own: see `journal.rs`), and every write takes the store's write
//! lock.

use std::path::PathBuf;

use kith_proto::v1 as pb;
use prost::Message as _;
use sled::transaction::ConflictableTransactionError;

use crate::error::{corrupt, stored_id};
use crate::journal::{Journal, Writes};
use crate::{Incoming, MessageId, StoreError};

/// A group's id: 16 random bytes chosen by its creator.
pub type GroupId = [u8; 16];
/// A Megolm session id: 32 bytes.
pub type SessionId = [u8; 32];

const GROUPS: &str = "groups";
const SENDERS: &str = "group_senders";
const RECEIVERS: &str = "group_receivers";
const ENVELOPES: &str = "group_envelopes";
const HEADS: &str = "group_heads";
const PENDING: &str = "group_pending";
const MESSAGES: &str = "group_messages";

/// A group as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group id.
    pub id: GroupId,
    /// The current member list, an encoded signed list (the service verifies it).
    pub list: Vec<u8>,
    /// Subscribed and taking part; false while only invited.
    pub joined: bool,
    /// Who invited us (empty for our own groups).
    pub invited_by: Vec<u8>,
    /// When the invitation arrived, unix ms.
    pub invited_at_ms: u64,
    /// We left.
    pub left: bool,
    /// An admin removed us.
    pub removed: bool,
    /// Our next sequence number in this group.
    pub next_seq: u64,
    /// Unread incoming messages.
    pub unread: u32,
}

/// Our outbound Megolm session for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderState {
    /// Encrypted `GroupSender` pickle.
    pub pickle: Vec<u8>,
    /// Messages encrypted with it (rotation counts these).
    pub messages: u32,
    /// Peer ids its key was shared with.
    pub shared_with: Vec<Vec<u8>>,
    /// When it was made, unix ms.
    pub created_ms: u64,
    /// Our own receiver for the session from index 0 (encrypted `GroupReceiver` pickle), to
    /// export the key at an earlier index for a member added before messages we wrote while we
    /// did not know of them. Empty for sessions made before it was kept.
    pub own_receiver: Vec<u8>,
    /// For each message index of the session, in order: (its sequence, when we wrote it, unix
    /// ms).
    pub sent: Vec<(u64, u64)>,
}

/// Another member's Megolm session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverState {
    /// The member whose session it is.
    pub sender: Vec<u8>,
    /// Encrypted `GroupReceiver` pickle.
    pub pickle: Vec<u8>,
    /// The sender's sequence when it shared the key.
    pub first_seq: u64,
}

/// One decrypted group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// Time-ordered message id.
    pub id: MessageId,
    /// Sender peer id.
    pub sender: Vec<u8>,
    /// The sender's sequence number.
    pub seq: u64,
    /// The text.
    pub text: String,
    /// Sender's clock, unix ms.
    pub sent_at_ms: u64,
    /// Our clock when stored, unix ms.
    pub received_at_ms: u64,
    /// Sent by this node.
    pub outgoing: bool,
}

/// An envelope held because its session key has not arrived yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEnvelope {
    /// The sender's sequence number.
    pub seq: u64,
    /// The envelope bytes.
    pub envelope: Vec<u8>,
}

/// The group trees. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupStore {
    groups: sled::Tree,
    senders: sled::Tree,
    receivers: sled::Tree,
    envelopes: sled::Tree,
    heads: sled::Tree,
    pending: sled::Tree,
    messages: sled::Tree,
    /// Batches over the seven trees, in the order above, and the store's write lock.
    journal: Journal<7>,
    path: PathBuf,
}

/// The journal tree of the group store.
const JOURNAL: &str = "group_journal";

fn sender_hash(sender: &[u8]) -> [u8; 16] {
    let h = blake3::hash(sender);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

fn head_key(group: &GroupId, sender: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.extend_from_slice(group);
    k.extend_from_slice(&sender_hash(sender));
    k
}

fn envelope_key(group: &GroupId, sender: &[u8], seq: u64) -> Vec<u8> {
    let mut k = head_key(group, sender);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn pending_key(group: &GroupId, session: &SessionId, sender: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(72);
    k.extend_from_slice(group);
    k.extend_from_slice(session);
    k.extend_from_slice(&sender_hash(sender));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number at the end of a `group_pending` key.
fn pending_seq(key: &[u8]) -> Result<u64, StoreError> {
    key.get(key.len().saturating_sub(8)..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(PENDING, "short key"))
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

fn encode_head(seq: u64, sender: &[u8]) -> Vec<u8> {
    concat(&seq.to_be_bytes(), sender)
}

fn decode_head(raw: &[u8]) -> Result<(u64, Vec<u8>), StoreError> {
    let (seq, sender) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt(HEADS, "head shorter than 8 bytes"))?;
    Ok((u64::from_be_bytes(*seq), sender.to_vec()))
}

fn encode_group(g: &GroupRecord) -> Vec<u8> {
    pb::StoredGroup {
        list: g.list.clone(),
        joined: g.joined,
        invited_by: g.invited_by.clone(),
        invited_at_ms: g.invited_at_ms,
        left: g.left,
        removed: g.removed,
        next_seq: g.next_seq,
        unread: g.unread,
    }
    .encode_to_vec()
}

fn decode_group(id: &[u8], raw: &[u8]) -> Result<GroupRecord, StoreError> {
    let g = pb::StoredGroup::decode(raw).map_err(|e| corrupt(GROUPS, e))?;
    Ok(GroupRecord {
        id: stored_id(GROUPS, "group id", id)?,
        list: g.list,
        joined: g.joined,
        invited_by: g.invited_by,
        invited_at_ms: g.invited_at_ms,
        left: g.left,
        removed: g.removed,
        next_seq: g.next_seq,
        unread: g.unread,
    })
}

fn encode_sender(s: &SenderState) -> Vec<u8> {
    pb::StoredGroupSender {
        pickle: s.pickle.clone(),
        messages: s.messages,
        shared_with: s.shared_with.clone(),
        created_ms: s.created_ms,
        own_receiver: s.own_receiver.clone(),
        sent_seq: s.sent.iter().map(|(seq, _)| *seq).collect(),
        sent_at_ms: s.sent.iter().map(|(_, at)| *at).collect(),
    }
    .encode_to_vec()
}

fn decode_sender(raw: &[u8]) -> Result<SenderState, StoreError> {
    let s = pb::StoredGroupSender::decode(raw).map_err(|e| corrupt(SENDERS, e))?;
    Ok(SenderState {
        pickle: s.pickle,
        messages: s.messages,
        shared_with: s.shared_with,
        created_ms: s.created_ms,
        own_receiver: s.own_receiver,
        // A record whose two columns disagree in length keeps only the pairs it has.
        sent: s.sent_seq.into_iter().zip(s.sent_at_ms).collect(),
    })
}

fn encode_message(m: &GroupMessage) -> Vec<u8> {
    pb::StoredGroupMessage {
        id: m.id.to_vec(),
        sender: m.sender.clone(),
        seq: m.seq,
        text: m.text.clone(),
        sent_at_ms: m.sent_at_ms,
        received_at_ms: m.received_at_ms,
        outgoing: m.outgoing,
    }
    .encode_to_vec()
}

fn decode_message(raw: &[u8]) -> Result<GroupMessage, StoreError> {
    let m = pb::StoredGroupMessage::decode(raw).map_err(|e| corrupt(MESSAGES, e))?;
    Ok(GroupMessage {
        id: stored_id(MESSAGES, "message id", &m.id)?,
        sender: m.sender,
        seq: m.seq,
        text: m.text,
        sent_at_ms: m.sent_at_ms,
        received_at_ms: m.received_at_ms,
        outgoing: m.outgoing,
    })
}

type Tx<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Advances the contiguous head of `sender` past every envelope already held.
fn advance_head(
    heads: &impl Writes,
    envelopes: &impl Writes,
    group: &GroupId,
    sender: &[u8],
) -> Tx<()> {
    let hk = head_key(group, sender);
    let mut head = match heads.get(&hk)? {
        Some(raw) => {
            decode_head(&raw)
                .map_err(ConflictableTransactionError::Abort)?
                .0
        }
        None => 0,
    };
    let start = head;
    // Bounded by what is stored; each step is one lookup.
    while envelopes
        .get(envelope_key(group, sender, head + 1))?
        .is_some()
    {
        head += 1;
    }
    if head != start || heads.get(&hk)?.is_none() {
        heads.insert(hk, encode_head(head, sender))?;
    }
    Ok(())
}

impl GroupStore {
    pub(crate) fn new(db: &sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::from_sled(&path, e))
        };
        let trees = [
            open(GROUPS)?,
            open(SENDERS)?,
            open(RECEIVERS)?,
            open(ENVELOPES)?,
            open(HEADS)?,
            open(PENDING)?,
            open(MESSAGES)?,
        ];
        // Before anything reads the trees: a batch a crash interrupted is completed first.
        let journal = Journal::open(db, &path, JOURNAL, trees.clone())?;
        let [
            groups,
            senders,
            receivers,
            envelopes,
            heads,
            pending,
            messages,
        ] = trees;
        Ok(Self {
            groups,
            senders,
            receivers,
            envelopes,
            heads,
            pending,
            messages,
            journal,
            path,
        })
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.path, e)
    }

    /// Creates or replaces a group record.
    pub fn put_group(&self, group: &GroupRecord) -> Result<(), StoreError> {
        let _writing = self.journal.writing();
        self.groups
            .insert(group.id, encode_group(group))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Changes a group record atomically (compare-and-swap loop); `None` if it does not exist.
    pub fn update_group(
        &self,
        id: &GroupId,
        mut change: impl FnMut(&mut GroupRecord),
    ) -> Result<Option<GroupRecord>, StoreError> {
        let mut result = None;
        let mut failure = None;
        let _writing = self.journal.writing();
        self.groups
            .update_and_fetch(id, |old| {
                let old = old?;
                match decode_group(id, old) {
                    Ok(mut g) => {
                        change(&mut g);
                        let bytes = encode_group(&g);
                        result = Some(g);
                        Some(bytes)
                    }
                    Err(e) => {
                        failure = Some(e);
                        Some(old.to_vec())
                    }
                }
            })
            .map_err(|e| self.err(e))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// One group.
    pub fn group(&self, id: &GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.groups
            .get(id)
            .map_err(|e| self.err(e))?
            .map(|raw| decode_group(id, &raw))
            .transpose()
    }

    /// Every group known (joined, invited, left).
    pub fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.groups.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match decode_group(&k, &v) {
                Ok(g) => out.push(g),
                Err(e) => tracing::warn!(error = %e, "skipping a damaged group record"),
            }
        }
        Ok(out)
    }

    /// Our outbound session for a group.
    pub fn sender(&self, group: &GroupId) -> Result<Option<SenderState>, StoreError> {
        self.senders
            .get(group)
            .map_err(|e| self.err(e))?
            .map(|raw| decode_sender(&raw))
            .transpose()
    }

    /// Saves our outbound session (a new one, or who it was shared with).
    pub fn save_sender(&self, group: &GroupId, state: &SenderState) -> Result<(), StoreError> {
        let _writing = self.journal.writing();
        self.senders
            .insert(group, encode_sender(state))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drops our outbound session, so the next message starts a new one (after a removal).
    pub fn drop_sender(&self, group: &GroupId) -> Result<(), StoreError> {
        let _writing = self.journal.writing();
        self.senders.remove(group).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Another member's session, if we have its key.
    pub fn receiver(
        &self,
        group: &GroupId,
        session: &SessionId,
    ) -> Result<Option<ReceiverState>, StoreError> {
        let Some(raw) = self
            .receivers
            .get(concat(group, session))
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let r = pb::StoredGroupReceiver::decode(raw.as_ref()).map_err(|e| corrupt(RECEIVERS, e))?;
        Ok(Some(ReceiverState {
            sender: r.sender,
            pickle: r.pickle,
            first_seq: r.first_seq,
        }))
    }

    /// The ids of the other members' sessions whose keys we hold in a group (for checks that a
    /// removed member never got a new key).
    pub fn receiver_sessions(&self, group: &GroupId) -> Result<Vec<SessionId>, StoreError> {
        let mut out = Vec::new();
        for item in self.receivers.scan_prefix(group) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            if let Some(Ok(session)) = k.get(group.len()..).map(SessionId::try_from) {
                out.push(session);
            }
        }
        Ok(out)
    }

    /// Saves a member's session key and, if nothing of theirs is held yet, starts their head just
    /// below the first message the key reads (earlier ones were never meant for us).
    pub fn save_receiver(
        &self,
        group: &GroupId,
        session: &SessionId,
        state: &ReceiverState,
    ) -> Result<(), StoreError> {
        let value = pb::StoredGroupReceiver {
            sender: state.sender.clone(),
            pickle: state.pickle.clone(),
            first_seq: state.first_seq,
        }
        .encode_to_vec();
        self.journal
            .batch(|[_, _, receivers, envelopes, heads, _, _]| {
                receivers.insert(concat(group, session), value.clone())?;
                let hk = head_key(group, &state.sender);
                if heads.get(&hk)?.is_none() {
                    heads.insert(
                        hk,
                        encode_head(state.first_seq.saturating_sub(1), &state.sender),
                    )?;
                    advance_head(heads, envelopes, group, &state.sender)?;
                }
                Ok(())
            })
    }

    /// Whether this envelope (sender, seq) is already held.
    pub fn has_envelope(
        &self,
        group: &GroupId,
        sender: &[u8],
        seq: u64,
    ) -> Result<bool, StoreError> {
        self.envelopes
            .contains_key(envelope_key(group, sender, seq))
            .map_err(|e| self.err(e))
    }

    /// Stores a received envelope once per (sender, seq). When `decrypted` is given the message
    /// goes into the history in the same transaction; otherwise the envelope waits in
    /// `group_pending` for the key of `session`.
    pub fn store_envelope(
        &self,
        group: &GroupId,
        sender: &[u8],
        seq: u64,
        envelope: &[u8],
        session: &SessionId,
        decrypted: Option<&GroupMessage>,
    ) -> Result<Incoming, StoreError> {
        self.journal
            .batch(|[groups, _, _, envelopes, heads, pending, messages]| {
                let ek = envelope_key(group, sender, seq);
                if envelopes.get(&ek)?.is_some() {
                    return Ok(Incoming::Duplicate);
                }
                envelopes.insert(ek.clone(), envelope)?;
                match decrypted {
                    Some(m) => {
                        messages.insert(concat(group, &m.id), encode_message(m))?;
                        if let Some(raw) = groups.get(group)? {
                            let mut g = decode_group(group, &raw)
                                .map_err(ConflictableTransactionError::Abort)?;
                            g.unread = g.unread.saturating_add(1);
                            groups.insert(&group[..], encode_group(&g))?;
                        }
                    }
                    None => {
                        pending.insert(pending_key(group, session, sender, seq), ek)?;
                    }
                }
                if heads.get(head_key(group, sender))?.is_none() {
                    heads.insert(head_key(group, sender), encode_head(0, sender))?;
                }
                advance_head(heads, envelopes, group, sender)?;
                Ok(Incoming::Stored)
            })
    }

    /// Envelopes waiting for `session`'s key, in sequence order (at most `max`).
    pub fn pending(
        &self,
        group: &GroupId,
        session: &SessionId,
        max: usize,
    ) -> Result<Vec<PendingEnvelope>, StoreError> {
        let mut out = Vec::new();
        for item in self.pending.scan_prefix(concat(group, session)).take(max) {
            let (k, ek) = item.map_err(|e| self.err(e))?;
            let seq = pending_seq(&k)?;
            if let Some(envelope) = self.envelopes.get(&ek).map_err(|e| self.err(e))? {
                out.push(PendingEnvelope {
                    seq,
                    envelope: envelope.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// The sessions of `group` with envelopes waiting for their key (at most `max`), each with
    /// its first waiting envelope: what a member asks the senders for again.
    pub fn pending_sessions(
        &self,
        group: &GroupId,
        max: usize,
    ) -> Result<Vec<(SessionId, PendingEnvelope)>, StoreError> {
        let mut out = Vec::new();
        let mut from = group.to_vec();
        while out.len() < max {
            let Some(item) = self.pending.range(from.clone()..).next() else {
                break;
            };
            let (k, ek) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(group) {
                break;
            }
            let session = k
                .get(group.len()..group.len() + 32)
                .and_then(|b| SessionId::try_from(b).ok())
                .ok_or_else(|| corrupt(PENDING, "short key"))?;
            let seq = pending_seq(&k)?;
            if let Some(envelope) = self.envelopes.get(&ek).map_err(|e| self.err(e))? {
                out.push((
                    session,
                    PendingEnvelope {
                        seq,
                        envelope: envelope.to_vec(),
                    },
                ));
            }
            // Past every key of this session (72 bytes each, all below this 73-byte one).
            from = concat(&concat(group, &session), &[0xff; 25]);
        }
        Ok(out)
    }

    /// Moves a held envelope into the history once its key arrived (or drops the marker when it
    /// can never be read: `message` = None).
    pub fn resolve_pending(
        &self,
        group: &GroupId,
        session: &SessionId,
        sender: &[u8],
        seq: u64,
        message: Option<&GroupMessage>,
    ) -> Result<Incoming, StoreError> {
        self.journal
            .batch(|[groups, _, _, _, _, pending, messages]| {
                pending.remove(pending_key(group, session, sender, seq))?;
                let Some(m) = message else {
                    return Ok(Incoming::Duplicate);
                };
                let mk = concat(group, &m.id);
                if messages.get(&mk)?.is_some() {
                    return Ok(Incoming::Duplicate);
                }
                messages.insert(mk, encode_message(m))?;
                if let Some(raw) = groups.get(group)? {
                    let mut g =
                        decode_group(group, &raw).map_err(ConflictableTransactionError::Abort)?;
                    g.unread = g.unread.saturating_add(1);
                    groups.insert(&group[..], encode_group(&g))?;
                }
                Ok(Incoming::Stored)
            })
    }

    /// Records one of our own messages: the envelope, the history entry, our next sequence and
    /// the advanced Megolm state, atomically.
    pub fn record_outgoing(
        &self,
        group: &GroupId,
        envelope: &[u8],
        message: &GroupMessage,
        sender_state: &SenderState,
    ) -> Result<(), StoreError> {
        let sender_value = encode_sender(sender_state);
        self.journal
            .batch(|[groups, senders, _, envelopes, heads, _, messages]| {
                let ek = envelope_key(group, &message.sender, message.seq);
                if envelopes.get(&ek)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(corrupt(
                        ENVELOPES,
                        format!("sequence {} was already used", message.seq),
                    )));
                }
                envelopes.insert(ek, envelope)?;
                messages.insert(concat(group, &message.id), encode_message(message))?;
                let raw = groups.get(group)?.ok_or_else(|| {
                    ConflictableTransactionError::Abort(corrupt(GROUPS, "group vanished"))
                })?;
                let mut g =
                    decode_group(group, &raw).map_err(ConflictableTransactionError::Abort)?;
                g.next_seq = message.seq + 1;
                groups.insert(&group[..], encode_group(&g))?;
                senders.insert(&group[..], sender_value.clone())?;
                if heads.get(head_key(group, &message.sender))?.is_none() {
                    heads.insert(
                        head_key(group, &message.sender),
                        encode_head(0, &message.sender),
                    )?;
                }
                advance_head(heads, envelopes, group, &message.sender)?;
                Ok(())
            })
    }

    /// Every sender's contiguous high-water mark in a group: what a sync request says we have.
    pub fn heads(&self, group: &GroupId) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.heads.scan_prefix(group) {
            let (_, raw) = item.map_err(|e| self.err(e))?;
            let (seq, sender) = decode_head(&raw)?;
            out.push((sender, seq));
        }
        Ok(out)
    }

    /// One sender's contiguous high-water mark in a group (`None`: nothing of theirs held): what
    /// a received envelope is compared with to see a gap, without reading every member's.
    pub fn head(&self, group: &GroupId, sender: &[u8]) -> Result<Option<u64>, StoreError> {
        self.heads
            .get(head_key(group, sender))
            .map_err(|e| self.err(e))?
            .map(|raw| decode_head(&raw).map(|(seq, _)| seq))
            .transpose()
    }

    /// Up to `max` envelopes of `sender` after sequence `after`, in order (what a sync answers).
    pub fn envelopes_after(
        &self,
        group: &GroupId,
        sender: &[u8],
        after: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let start = envelope_key(group, sender, after.saturating_add(1));
        let end = envelope_key(group, sender, u64::MAX);
        let mut out = Vec::new();
        for item in self.envelopes.range(start..=end).take(max) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// The last `limit` messages of a group (before `before`, if given), oldest first.
    pub fn history(
        &self,
        group: &GroupId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<GroupMessage>, StoreError> {
        let end = match before {
            Some(id) => concat(group, id),
            None => concat(group, &[0xff; 17]),
        };
        let mut out = Vec::new();
        for item in self.messages.range(group.to_vec()..end).rev().take(limit) {
            let (_, raw) = item.map_err(|e| self.err(e))?;
            out.push(decode_message(&raw)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Number of messages held for a group.
    pub fn message_count(&self, group: &GroupId) -> usize {
        self.messages.scan_prefix(group).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{Store, StoreConfig};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        (dir, store)
    }

    fn group(id: GroupId) -> GroupRecord {
        GroupRecord {
            id,
            list: vec![1, 2, 3],
            joined: true,
            invited_by: vec![],
            invited_at_ms: 0,
            left: false,
            removed: false,
            next_seq: 1,
            unread: 0,
        }
    }

    fn msg(n: u8, sender: &[u8], seq: u64) -> GroupMessage {
        let mut id = [0u8; 16];
        id[15] = n;
        GroupMessage {
            id,
            sender: sender.to_vec(),
            seq,
            text: format!("m{n}"),
            sent_at_ms: u64::from(n),
            received_at_ms: 0,
            outgoing: false,
        }
    }

    #[test]
    fn envelopes_dedupe_and_heads_follow_gaps() {
        let (_d, store) = open();
        let g = [1u8; 16];
        let s = b"bob".to_vec();
        let session = [9u8; 32];
        store.groups().put_group(&group(g)).unwrap();
        let gs = store.groups();
        assert_eq!(
            gs.store_envelope(&g, &s, 1, b"e1", &session, Some(&msg(1, &s, 1)))
                .unwrap(),
            Incoming::Stored
        );
        assert_eq!(
            gs.store_envelope(&g, &s, 1, b"e1", &session, Some(&msg(1, &s, 1)))
                .unwrap(),
            Incoming::Duplicate
        );
        gs.store_envelope(&g, &s, 3, b"e3", &session, None).unwrap();
        assert_eq!(gs.heads(&g).unwrap(), vec![(s.clone(), 1)]);
        assert_eq!(gs.head(&g, &s).unwrap(), Some(1));
        assert_eq!(gs.head(&g, b"nobody").unwrap(), None);
        gs.store_envelope(&g, &s, 2, b"e2", &session, Some(&msg(2, &s, 2)))
            .unwrap();
        assert_eq!(gs.heads(&g).unwrap(), vec![(s.clone(), 3)]);
        assert_eq!(
            gs.envelopes_after(&g, &s, 1, 10).unwrap(),
            vec![b"e2".to_vec(), b"e3".to_vec()]
        );
        let pending = gs.pending(&g, &session, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, 3);
        gs.resolve_pending(&g, &session, &s, 3, Some(&msg(3, &s, 3)))
            .unwrap();
        assert!(gs.pending(&g, &session, 10).unwrap().is_empty());
        let h = gs.history(&g, 10, None).unwrap();
        assert_eq!(h.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(gs.group(&g).unwrap().unwrap().unread, 3);
    }

    #[test]
    fn pending_sessions_lists_each_waiting_session_once_with_its_first_envelope() {
        let (_d, store) = open();
        let g = [4u8; 16];
        let other = [5u8; 16];
        let (bob, carol) = (b"bob".to_vec(), b"carol".to_vec());
        let gs = store.groups();
        gs.put_group(&group(g)).unwrap();
        gs.put_group(&group(other)).unwrap();
        assert!(gs.pending_sessions(&g, 10).unwrap().is_empty());
        for seq in [4, 2, 3] {
            gs.store_envelope(&g, &bob, seq, &[b'b', seq as u8], &[1u8; 32], None)
                .unwrap();
        }
        gs.store_envelope(&g, &carol, 7, b"c7", &[0xffu8; 32], None)
            .unwrap();
        gs.store_envelope(&other, &carol, 1, b"o1", &[0u8; 32], None)
            .unwrap();
        // Read here: not waiting.
        gs.store_envelope(&g, &carol, 1, b"c1", &[2u8; 32], Some(&msg(1, &carol, 1)))
            .unwrap();
        let waiting = gs.pending_sessions(&g, 10).unwrap();
        let summary: Vec<([u8; 32], u64, Vec<u8>)> = waiting
            .into_iter()
            .map(|(s, p)| (s, p.seq, p.envelope))
            .collect();
        assert_eq!(
            summary,
            vec![
                ([1u8; 32], 2, b"b\x02".to_vec()),
                ([0xffu8; 32], 7, b"c7".to_vec())
            ]
        );
        assert_eq!(gs.pending_sessions(&g, 1).unwrap().len(), 1);
        gs.resolve_pending(&g, &[0xffu8; 32], &carol, 7, None)
            .unwrap();
        assert_eq!(gs.pending_sessions(&g, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_late_key_starts_the_head_at_its_first_sequence() {
        let (_d, store) = open();
        let g = [2u8; 16];
        let s = b"carol".to_vec();
        let gs = store.groups();
        gs.save_receiver(
            &g,
            &[1u8; 32],
            &ReceiverState {
                sender: s.clone(),
                pickle: vec![],
                first_seq: 40,
            },
        )
        .unwrap();
        assert_eq!(gs.heads(&g).unwrap(), vec![(s.clone(), 39)]);
        assert!(gs.receiver(&g, &[1u8; 32]).unwrap().is_some());
        assert!(gs.receiver(&g, &[2u8; 32]).unwrap().is_none());
    }

    #[test]
    fn outgoing_advances_our_sequence_and_never_reuses_one() {
        let (_d, store) = open();
        let g = [3u8; 16];
        let me = b"me".to_vec();
        let gs = store.groups();
        gs.put_group(&group(g)).unwrap();
        let state = SenderState {
            pickle: vec![1],
            messages: 1,
            shared_with: vec![],
            created_ms: 0,
            own_receiver: vec![7; 3],
            sent: vec![(1, 1_800_000_000_000)],
        };
        let mut m = msg(1, &me, 1);
        m.outgoing = true;
        gs.record_outgoing(&g, b"e", &m, &state).unwrap();
        assert_eq!(gs.group(&g).unwrap().unwrap().next_seq, 2);
        assert!(gs.record_outgoing(&g, b"e", &m, &state).is_err());
        assert_eq!(gs.sender(&g).unwrap(), Some(state));
        assert_eq!(gs.heads(&g).unwrap(), vec![(me, 1)]);
    }
}
