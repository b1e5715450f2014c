//! Group rules every member applies the same way: signed, versioned member lists and which one
//! replaces which ([`MemberList::may_be_replaced_by`]), and the checks on a group envelope that
//! need no key ([`GroupEnvelope::verify`]).
//!
//! A member list is a `SignedMemberList` (the encoded `MemberList`, its signature and the
//! author's libp2p key). Version n+1 replaces version n when an admin of n signed it, or when a
//! member of n signed a list that is n without itself (leaving; the lowest remaining member
//! becomes admin if the leaver was the last). Two lists of the same version (two admins changed
//! the group at once) resolve to the lower blake3 of the signed bytes, so every member converges
//! on the same list whatever order the updates arrive in.
//!
//! An envelope is signed by its sender over its encoding with the signature field empty; the
//! checks here are the ones a gossipsub validator runs before forwarding (size, shape, signature,
//! the sender is the signing key). Membership needs the receiver's list and stays with the caller.

use std::collections::BTreeMap;

use kith_proto::v1 as pb;
use libp2p::{
    PeerId,
    identity::{Keypair, PublicKey},
};
use prost::Message as _;

/// A group's id: 16 random bytes chosen by its creator.
pub type GroupId = [u8; 16];
/// A Megolm session id: 32 bytes.
pub type SessionId = [u8; 32];

/// Most members in a group (a bound on list size and on key sharing).
pub const MAX_MEMBERS: usize = 256;
/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 64;
/// Largest signed member list accepted.
pub const MAX_LIST_BYTES: usize = 64 * 1024;
/// Largest envelope accepted from gossip or sync.
pub const MAX_ENVELOPE: usize = 200 * 1024;

/// Why a member list or an envelope was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The signed list is over [`MAX_LIST_BYTES`].
    #[error("member list too large")]
    ListTooLarge,
    /// The list or its wrapper does not decode.
    #[error("malformed list: {0}")]
    MalformedList(String),
    /// The author's public key does not decode.
    #[error("bad author key: {0}")]
    BadAuthorKey(String),
    /// The signature is not the author key's over the list.
    #[error("member list signature does not verify")]
    ListSignature,
    /// The author field is not a peer id.
    #[error("bad author id")]
    BadAuthorId,
    /// The author field names someone other than the signing key.
    #[error("member list author does not match its key")]
    AuthorMismatch,
    /// The group id is not 16 bytes.
    #[error("group id is not 16 bytes")]
    GroupIdLength,
    /// Version 0, too many members or too long a title.
    #[error("member list out of bounds")]
    ListOutOfBounds,
    /// A member entry is not a peer id.
    #[error("bad member id")]
    BadMemberId,
    /// A member appears twice.
    #[error("member listed twice")]
    DuplicateMember,
    /// Our own key could not sign.
    #[error("cannot sign: {0}")]
    Signing(String),
    /// The envelope is over [`MAX_ENVELOPE`].
    #[error("envelope is {0} bytes; the limit is {MAX_ENVELOPE}")]
    EnvelopeTooLarge(usize),
    /// The envelope does not decode.
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    /// The sender's public key does not decode.
    #[error("bad sender key: {0}")]
    BadSenderKey(String),
    /// The sender field is not a peer id.
    #[error("bad sender id")]
    BadSenderId,
    /// The sender field names someone other than the signing key.
    #[error("sender does not match the signing key")]
    SenderMismatch,
    /// The signature is not the sender's over the envelope.
    #[error("envelope signature does not verify")]
    EnvelopeSignature,
    /// The session id is not 32 bytes.
    #[error("session id is not 32 bytes")]
    SessionIdLength,
    /// Sequences start at 1.
    #[error("sequence 0")]
    SequenceZero,
}

/// A verified member list, with the exact signed bytes that are stored and forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberList {
    id: GroupId,
    version: u64,
    title: String,
    members: BTreeMap<PeerId, bool>,
    /// When each member entered the list, where known (lists signed before the field existed
    /// carry none).
    added_at_ms: BTreeMap<PeerId, u64>,
    author: PeerId,
    created_at_ms: u64,
    signed: Vec<u8>,
}

impl MemberList {
    /// Checks an encoded `SignedMemberList`: size, signature, author ↔ key, and shape (16-byte
    /// id, version ≥ 1, at most [`MAX_MEMBERS`] distinct members, a title of at most
    /// [`MAX_TITLE_CHARS`]). Whether it may replace a list we hold is [`Self::may_be_replaced_by`].
    pub fn verify(signed: &[u8]) -> Result<Self, GroupError> {
        if signed.len() > MAX_LIST_BYTES {
            return Err(GroupError::ListTooLarge);
        }
        let s = pb::SignedMemberList::decode(signed)
            .map_err(|e| GroupError::MalformedList(e.to_string()))?;
        let key = PublicKey::try_decode_protobuf(&s.public_key)
            .map_err(|e| GroupError::BadAuthorKey(e.to_string()))?;
        if !key.verify(&s.list, &s.signature) {
            return Err(GroupError::ListSignature);
        }
        let l = pb::MemberList::decode(s.list.as_slice())
            .map_err(|e| GroupError::MalformedList(e.to_string()))?;
        let author = PeerId::from_bytes(&l.author).map_err(|_| GroupError::BadAuthorId)?;
        if author != key.to_peer_id() {
            return Err(GroupError::AuthorMismatch);
        }
        let id: GroupId = l
            .group_id
            .as_slice()
            .try_into()
            .map_err(|_| GroupError::GroupIdLength)?;
        if l.version == 0
            || l.members.len() > MAX_MEMBERS
            || l.title.chars().count() > MAX_TITLE_CHARS
        {
            return Err(GroupError::ListOutOfBounds);
        }
        let mut members = BTreeMap::new();
        let mut added_at_ms = BTreeMap::new();
        for m in l.members {
            let peer = PeerId::from_bytes(&m.peer_id).map_err(|_| GroupError::BadMemberId)?;
            if members.insert(peer, m.admin).is_some() {
                return Err(GroupError::DuplicateMember);
            }
            // Nobody is added after the list that holds them was signed.
            if m.added_at_ms > l.created_at_ms {
                return Err(GroupError::ListOutOfBounds);
            }
            if m.added_at_ms > 0 {
                added_at_ms.insert(peer, m.added_at_ms);
            }
        }
        Ok(Self {
            id,
            version: l.version,
            title: l.title,
            members,
            added_at_ms,
            author,
            created_at_ms: l.created_at_ms,
            signed: signed.to_vec(),
        })
    }

    /// Signs a list as `keypair` (the author), made at `created_at_ms`, and verifies the result,
    /// so a list we make obeys the same bounds as one we receive. Every member counts as added
    /// now; [`Self::successor`] keeps earlier members' times.
    pub fn sign(
        keypair: &Keypair,
        id: GroupId,
        version: u64,
        title: &str,
        members: &BTreeMap<PeerId, bool>,
        created_at_ms: u64,
    ) -> Result<Self, GroupError> {
        Self::sign_with_times(
            keypair,
            id,
            version,
            title,
            members,
            &BTreeMap::new(),
            created_at_ms,
        )
    }

    fn sign_with_times(
        keypair: &Keypair,
        id: GroupId,
        version: u64,
        title: &str,
        members: &BTreeMap<PeerId, bool>,
        earlier: &BTreeMap<PeerId, u64>,
        created_at_ms: u64,
    ) -> Result<Self, GroupError> {
        let list = pb::MemberList {
            group_id: id.to_vec(),
            version,
            title: title.to_owned(),
            members: members
                .iter()
                .map(|(p, admin)| pb::GroupMember {
                    peer_id: p.to_bytes(),
                    admin: *admin,
                    added_at_ms: earlier
                        .get(p)
                        .copied()
                        .unwrap_or(created_at_ms)
                        .min(created_at_ms),
                })
                .collect(),
            author: keypair.public().to_peer_id().to_bytes(),
            created_at_ms,
        }
        .encode_to_vec();
        let signature = keypair
            .sign(&list)
            .map_err(|e| GroupError::Signing(e.to_string()))?;
        let signed = pb::SignedMemberList {
            list,
            signature,
            public_key: keypair.public().encode_protobuf(),
        }
        .encode_to_vec();
        Self::verify(&signed)
    }

    /// The next version of this list with `members` (same id and title), signed by `keypair`.
    /// Members who stay keep the time they were added (an unknown time stays unknown); new
    /// members are added at `created_at_ms`.
    pub fn successor(
        &self,
        keypair: &Keypair,
        members: &BTreeMap<PeerId, bool>,
        created_at_ms: u64,
    ) -> Result<Self, GroupError> {
        // An unknown time is written as 0 (unknown), never as "now": a member from before the
        // field existed must not look newer than it is.
        let earlier: BTreeMap<PeerId, u64> = members
            .keys()
            .filter(|p| self.members.contains_key(*p))
            .map(|p| (*p, self.added_at_ms.get(p).copied().unwrap_or(0)))
            .collect();
        Self::sign_with_times(
            keypair,
            self.id,
            self.version.saturating_add(1),
            &self.title,
            members,
            &earlier,
            created_at_ms,
        )
    }

    /// When `peer` entered the list (unix ms), if the list says: the oldest message of ours a
    /// member may be given the key for.
    pub fn added_at_ms(&self, peer: &PeerId) -> Option<u64> {
        self.added_at_ms.get(peer).copied()
    }

    /// The group.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The version; a replacement has the same or a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Members, each with whether it is an admin.
    pub fn members(&self) -> &BTreeMap<PeerId, bool> {
        &self.members
    }

    /// Who signed this version.
    pub fn author(&self) -> PeerId {
        self.author
    }

    /// When the author signed it, unix ms (its clock).
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The encoded `SignedMemberList`, as stored and forwarded.
    pub fn signed(&self) -> &[u8] {
        &self.signed
    }

    /// Whether `peer` is in the list.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer)
    }

    /// Whether `peer` is an admin of this version.
    pub fn is_admin(&self, peer: &PeerId) -> bool {
        self.members.get(peer).copied().unwrap_or(false)
    }

    /// blake3 of the signed bytes: the tie-break between two lists of one version.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.signed).as_bytes()
    }

    /// Whether `next` may replace this list: same group, different bytes, and either a higher
    /// version authorised by this one (signed by one of its admins, or a member leaving), or the
    /// same version, equally authorised, with a lower hash.
    pub fn may_be_replaced_by(&self, next: &MemberList) -> bool {
        if next.id != self.id || next.signed == self.signed {
            return false;
        }
        let authorised = self.is_admin(&next.author) || self.is_leave(next);
        match next.version.cmp(&self.version) {
            std::cmp::Ordering::Greater => authorised,
            std::cmp::Ordering::Equal => authorised && next.hash() < self.hash(),
            std::cmp::Ordering::Less => false,
        }
    }

    /// `next` is `self` minus its author (with [`Self::without`]'s promotion) and the same title.
    fn is_leave(&self, next: &MemberList) -> bool {
        if !self.is_member(&next.author) || next.is_member(&next.author) {
            return false;
        }
        self.without(&next.author) == next.members && next.title == self.title
    }

    /// The members once `leaver` has left; if it was the last admin, the lowest remaining member
    /// becomes admin (the one rule both the leaver and every member apply).
    pub fn without(&self, leaver: &PeerId) -> BTreeMap<PeerId, bool> {
        let mut members = self.members.clone();
        members.remove(leaver);
        if !members.values().any(|a| *a)
            && let Some((_, admin)) = members.iter_mut().next()
        {
            *admin = true;
        }
        members
    }
}

/// A group envelope whose signature and shape are checked: everything but membership, which
/// needs the receiver's member list, and the ciphertext, which needs the sender's session key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEnvelope {
    /// The group.
    pub group: GroupId,
    /// Who sent (and signed) it.
    pub sender: PeerId,
    /// The sender's sequence number in this group, from 1.
    pub seq: u64,
    /// The Megolm session its ciphertext belongs to.
    pub session: SessionId,
    /// The Megolm ciphertext of a `GroupPayload`.
    pub ciphertext: Vec<u8>,
    /// The member-list version the sender had (a receiver behind it catches up).
    pub list_version: u64,
}

impl GroupEnvelope {
    /// Checks an encoded envelope: size, shape, that the sender is the signing key and that the
    /// signature covers the envelope with its signature field empty.
    pub fn verify(bytes: &[u8]) -> Result<Self, GroupError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(GroupError::EnvelopeTooLarge(bytes.len()));
        }
        let mut env = pb::GroupEnvelope::decode(bytes)
            .map_err(|e| GroupError::MalformedEnvelope(e.to_string()))?;
        let key = PublicKey::try_decode_protobuf(&env.public_key)
            .map_err(|e| GroupError::BadSenderKey(e.to_string()))?;
        let sender = PeerId::from_bytes(&env.sender).map_err(|_| GroupError::BadSenderId)?;
        if key.to_peer_id() != sender {
            return Err(GroupError::SenderMismatch);
        }
        let signature = std::mem::take(&mut env.signature);
        if !key.verify(&env.encode_to_vec(), &signature) {
            return Err(GroupError::EnvelopeSignature);
        }
        let group: GroupId = env
            .group_id
            .as_slice()
            .try_into()
            .map_err(|_| GroupError::GroupIdLength)?;
        let session: SessionId = env
            .session_id
            .as_slice()
            .try_into()
            .map_err(|_| GroupError::SessionIdLength)?;
        if env.seq == 0 {
            return Err(GroupError::SequenceZero);
        }
        Ok(Self {
            group,
            sender,
            seq: env.seq,
            session,
            ciphertext: env.ciphertext,
            list_version: env.list_version,
        })
    }

    /// Encodes and signs this envelope with `keypair`, which must be the sender's; the bytes are
    /// what gossip and sync carry and what [`Self::verify`] accepts.
    pub fn seal(&self, keypair: &Keypair) -> Result<Vec<u8>, GroupError> {
        if keypair.public().to_peer_id() != self.sender {
            return Err(GroupError::SenderMismatch);
        }
        let mut env = pb::GroupEnvelope {
            group_id: self.group.to_vec(),
            sender: self.sender.to_bytes(),
            seq: self.seq,
            session_id: self.session.to_vec(),
            ciphertext: self.ciphertext.clone(),
            list_version: self.list_version,
            public_key: keypair.public().encode_protobuf(),
            signature: Vec::new(),
        };
        env.signature = keypair
            .sign(&env.encode_to_vec())
            .map_err(|e| GroupError::Signing(e.to_string()))?;
        Ok(env.encode_to_vec())
    }
}

/// Where a member starts reading a sender's session: the first message the sender wrote at or
/// after the member was added (`added_at_ms`), given the session's messages as (sequence, written
/// at) by message index. Returns that message's index and sequence, or `None` when every message
/// so far predates the member (it reads from the next one, the session's current key).
///
/// This is what makes a message written by a member who did not yet know of a newcomer readable
/// to the newcomer, and nothing older: the newcomer gets the key exported at that index.
pub fn first_readable(sent: &[(u64, u64)], added_at_ms: u64) -> Option<(u32, u64)> {
    let index = sent.iter().position(|(_, at)| *at >= added_at_ms)?;
    Some((u32::try_from(index).ok()?, sent[index].0))
}

/// When a member asks a sender again for a Megolm session key it lacks (a `GroupKeyRequest`):
/// only once envelopes of that session have waited `after_ms` (the share usually arrives just
/// behind its first messages, and is retried by the sender's outbox), then at most once per
/// `every_ms` while they keep waiting, and at most `max_asks` times (a sender that moved on to a
/// new session cannot answer for the old one). A session that stops waiting (its key came) is
/// forgotten.
///
/// The sender's own retries cover a share that is merely slow; the request covers one that
/// cannot arrive as sent: the sender found no key bundle for us in the DHT, cannot dial us, or
/// the share was lost. The request is an Olm message from us, so it gives the sender a session
/// with us and a connection to answer on.
#[derive(Debug, Clone)]
pub struct KeyRequests<K> {
    after_ms: u64,
    every_ms: u64,
    max_asks: u32,
    /// Per waiting session: when it was first seen waiting, when it was last asked for, and how
    /// many times.
    waiting: std::collections::HashMap<K, (u64, Option<u64>, u32)>,
}

impl<K: Eq + std::hash::Hash + Clone> KeyRequests<K> {
    /// Asks after `after_ms` of waiting, then every `every_ms`, `max_asks` times in all.
    pub fn new(after_ms: u64, every_ms: u64, max_asks: u32) -> Self {
        Self {
            after_ms,
            every_ms,
            max_asks,
            waiting: std::collections::HashMap::new(),
        }
    }

    /// Given the sessions whose envelopes wait for a key now, those to ask for at `now_ms`
    /// (each is then counted as asked). Sessions not in `waiting` are forgotten.
    pub fn due(&mut self, waiting: impl IntoIterator<Item = K>, now_ms: u64) -> Vec<K> {
        let mut still = std::collections::HashMap::new();
        let mut due = Vec::new();
        for key in waiting {
            if still.contains_key(&key) {
                continue;
            }
            let (since, asked, asks) = self.waiting.remove(&key).unwrap_or((now_ms, None, 0));
            let ask = asks < self.max_asks
                && match asked {
                    None => now_ms.saturating_sub(since) >= self.after_ms,
                    Some(at) => now_ms.saturating_sub(at) >= self.every_ms,
                };
            if ask {
                due.push(key.clone());
                still.insert(key, (since, Some(now_ms), asks + 1));
            } else {
                still.insert(key, (since, asked, asks));
            }
        }
        self.waiting = still;
        due
    }
}

#[cfg(test)]
mod tests;
