//! Groups: end-to-end encrypted group chat over gossipsub, with catch-up by `/kith/sync/1.0.0`.
//!
//! ```text
//! send:    member? → our Megolm session (new after a removal or every ROTATE_EVERY messages;
//!          its key queued over Olm to members who lack it, exported from the first message we
//!          wrote after they were added) → encrypt → sign envelope →
//!          envelope + history + next seq + Megolm state in one transaction → flush → publish
//! receive: gossipsub holds it → signature → known group → sender is a member → not held yet →
//!          decrypt (or hold until the sender's key arrives) → store + flush → Accept (forward)
//! sync:    on join, on a member subscribing, on a sequence gap, on a new key, and periodically:
//!          "my heads per sender" → a page of envelopes after them + the member list
//! members: a signed, versioned list; version n+1 is valid if an admin of n signed it, or a member
//!          of n removing only itself; equal versions: the lower blake3 of the signed bytes wins
//! ```
//!
//! Invariants: every envelope is stored once per (sender, sequence) and that is the deduplication
//! point; our own envelope, its history entry, our next sequence and the Megolm state that made it
//! are one transaction; a removed or departed member's absence starts a new Megolm session before
//! our next message, so it cannot read what follows.
//!
//! Ownership: [`Groups`] owns the groups book and the group topics; it meets the rest of the node
//! only through the handles it is built with (`crate::handles`: delivery for control bodies,
//! the resolver, events, the address book; [`FileOffers`] for files offered in a group). Calls
//! and files read member lists through their own traits, which `Groups` implements (router.rs).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

pub use kith_core::group::{MAX_ENVELOPE, MAX_MEMBERS, MAX_TITLE_CHARS};
use kith_core::{GroupEnvelope, MAX_TEXT_BYTES, MemberList};
use kith_crypto::{GroupReceiver, GroupSender, GroupSessionKey};
use kith_net::{GossipId, GossipVerdict};
use kith_proto::v1 as pb;
use kith_store::{
    GroupId, GroupMessage, GroupRecord, Incoming, ReceiverState, SenderState, SessionId,
};
use libp2p::PeerId;
use prost::Message as _;
use tokio::sync::Mutex;

use crate::{
    MessageEvent, Node, ServiceError,
    handles::{AddressBook, Events, Outbound, Resolver},
    node::{millis, now_ms},
};

/// A Megolm session encrypts at most this many messages before a new one starts.
pub const ROTATE_EVERY: u32 = 100;
/// Envelopes per sync page (the responder also caps the bytes).
const SYNC_PAGE: usize = 256;
const SYNC_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Pages fetched in one catch-up before yielding to the next round.
const SYNC_MAX_PAGES: usize = 64;
/// How long the first message to a group after a start waits for a catch-up.
const FIRST_SEND_SYNC: Duration = Duration::from_secs(2);
/// Members asked in one catch-up round before giving up until the next.
const SYNC_MAX_PEERS: usize = 4;
/// How long envelopes wait for their session's key before we ask its sender for it: longer than
/// a share usually trails its first messages, short enough that a lost share costs seconds.
const KEY_REQUEST_AFTER: Duration = Duration::from_secs(15);
/// How often a key still missing is asked for again.
const KEY_REQUEST_EVERY: Duration = Duration::from_secs(60);
/// How many times one missing key is asked for while it stays missing.
const KEY_REQUEST_ASKS: u32 = 5;
/// The least time between two key shares we queue for one member on request.
const KEY_ANSWER_EVERY: Duration = Duration::from_secs(10);
/// Sessions per group considered in one round of key requests.
const KEY_REQUEST_MAX_SESSIONS: usize = 64;

/// A member list's signed bytes and what verifying them gave.
type VerifiedList = (Vec<u8>, Arc<MemberList>);

/// A Megolm key a member lacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum WantedKey {
    /// The session of envelopes we hold and cannot read.
    Session(SessionId),
    /// Whatever session this member writes with now: we hold nothing of theirs.
    Current(PeerId),
}

/// The gossipsub topic of a group.
pub fn topic(group: &GroupId) -> String {
    format!("kith/v1/group/{}", hex::encode(group))
}

/// A group as the API shows it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// The group id.
    pub id: GroupId,
    /// Its title.
    pub title: String,
    /// The member-list version.
    pub version: u64,
    /// Members and whether they are admins.
    pub members: Vec<(PeerId, bool)>,
    /// Whether this node takes part (false while only invited).
    pub joined: bool,
    /// Whether this node left.
    pub left: bool,
    /// Whether an admin removed this node.
    pub removed: bool,
    /// Who invited us.
    pub invited_by: Option<PeerId>,
    /// Unread messages.
    pub unread: u32,
    /// Whether this node is an admin.
    pub admin: bool,
    /// When the current member-list version was signed, unix ms.
    pub list_signed_at_ms: u64,
}

/// The outcome of [`Node::send_group_text`].
#[derive(Debug, Clone)]
pub struct GroupSent {
    /// The message id.
    pub id: kith_store::MessageId,
    /// Our sequence number for it.
    pub seq: u64,
    /// Whether gossipsub had a member to hand it to right now (if not, members fetch it by sync).
    pub published: bool,
}

/// A group's Megolm key state on one node, as [`Node::group_key_state`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupKeyState {
    /// Peers our current outbound session's key was queued for (None: no outbound session yet,
    /// or it was dropped after a removal).
    pub shared_with: Option<Vec<PeerId>>,
    /// Ids of the other members' sessions whose keys we hold.
    pub sessions_held: Vec<kith_store::SessionId>,
}

/// The groups component (issue 12, step 5): owns the groups book (`groups`, `group_senders`,
/// `group_receivers`, `group_envelopes`, `group_heads`, `group_pending`, `group_messages`), the
/// group topics on gossipsub, the `/kith/sync` exchange and the state held in memory (send locks,
/// catch-ups running, Megolm receivers). It reaches the rest of the node only through the
/// handles it is built with ([`crate::handles`], and [`FileOffers`] for files offered in a
/// group); `Node`'s group operations delegate to it. Cheap to clone: every clone is the same
/// component, which is what the tasks it spawns (catch-ups, key shares) hold.
#[derive(Clone)]
pub(crate) struct Groups {
    shared: Arc<Shared>,
}

/// What a [`Groups`] is built from besides its own state: the store (it writes only the groups
/// book, and flushes), the network (gossipsub, `/kith/sync`), our identity and the handles.
pub(crate) struct GroupsParts {
    /// The node's store.
    pub(crate) store: kith_store::Store,
    /// The network, for gossipsub topics and `/kith/sync`.
    pub(crate) client: kith_net::Client,
    /// Our identity: signs member lists and envelopes.
    pub(crate) keypair: libp2p::identity::Keypair,
    /// The key Megolm state is pickled with at rest.
    pub(crate) pickle_key: kith_crypto::PickleKey,
    /// Control bodies (invitations, lists, keys) go to members over direct delivery.
    pub(crate) outbound: Arc<dyn Outbound>,
    /// Whom an invitation or a removal is for.
    pub(crate) resolver: Arc<dyn Resolver>,
    /// New messages, invitations and list changes, for API clients.
    pub(crate) events: Arc<dyn Events>,
    /// Where to dial a member for a catch-up.
    pub(crate) addresses: Arc<dyn AddressBook>,
    /// Files offered in a group.
    pub(crate) files: Arc<dyn FileOffers>,
}

/// Where a file offered in a group goes: the files component records it (with the message) and
/// starts fetching it from the sender or any member.
pub(crate) trait FileOffers: Send + Sync {
    /// Records `offer` (message `id` from `sender` in `group`); `Ok` is the text the message
    /// shows, `Err` why the offer is refused.
    fn group_offer(
        &self,
        group: GroupId,
        sender: PeerId,
        id: kith_store::MessageId,
        offer: pb::FileOffer,
    ) -> Result<String, String>;
}

struct Shared {
    store: kith_store::Store,
    client: kith_net::Client,
    keypair: libp2p::identity::Keypair,
    me: PeerId,
    pickle_key: kith_crypto::PickleKey,
    outbound: Arc<dyn Outbound>,
    resolver: Arc<dyn Resolver>,
    events: Arc<dyn Events>,
    addresses: Arc<dyn AddressBook>,
    files: Arc<dyn FileOffers>,
    send_locks: StdMutex<HashMap<GroupId, Arc<Mutex<()>>>>,
    syncing: StdMutex<HashSet<GroupId>>,
    /// Groups a catch-up was tried for since start.
    tried: StdMutex<HashSet<GroupId>>,
    receivers: Mutex<HashMap<(GroupId, SessionId), GroupReceiver>>,
    /// The last verified member list per group.
    lists: StdMutex<HashMap<GroupId, VerifiedList>>,
    /// Keys we lack, and when we asked their senders for them.
    key_requests: StdMutex<kith_core::group::KeyRequests<(GroupId, WantedKey)>>,
    /// Members a catch-up showed have written in a group, of whom we hold nothing (no head):
    /// we missed their key and every message of theirs, so we ask them for their current key.
    unheard: StdMutex<HashSet<(GroupId, PeerId)>>,
    /// When we last answered a member's key request, per (group, member): a member cannot make
    /// us encrypt and queue key shares faster than once per [`KEY_ANSWER_EVERY`].
    key_answers: StdMutex<HashMap<(GroupId, PeerId), u64>>,
    rejected: prometheus_client::metrics::counter::Counter,
    received: prometheus_client::metrics::counter::Counter,
    key_requests_sent: prometheus_client::metrics::counter::Counter,
    key_requests_answered: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    /// The component over `parts`, its counters registered in `registry`.
    pub(crate) fn new(
        parts: GroupsParts,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let rejected = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "group_rejected",
            "Group envelopes refused (forged, not a member, malformed, oversized, undecryptable)",
            rejected.clone(),
        );
        let received = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "group_received",
            "Group messages stored (from gossip or sync)",
            received.clone(),
        );
        let key_requests_sent = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "group_key_requests_sent",
            "Requests for a member's group key that never reached us (queued over Olm)",
            key_requests_sent.clone(),
        );
        let key_requests_answered = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "group_key_requests_answered",
            "Members' requests for our group key answered with a new share",
            key_requests_answered.clone(),
        );
        let me = parts.keypair.public().to_peer_id();
        Self {
            shared: Arc::new(Shared {
                store: parts.store,
                client: parts.client,
                keypair: parts.keypair,
                me,
                pickle_key: parts.pickle_key,
                outbound: parts.outbound,
                resolver: parts.resolver,
                events: parts.events,
                addresses: parts.addresses,
                files: parts.files,
                send_locks: StdMutex::new(HashMap::new()),
                syncing: StdMutex::new(HashSet::new()),
                tried: StdMutex::new(HashSet::new()),
                receivers: Mutex::new(HashMap::new()),
                lists: StdMutex::new(HashMap::new()),
                key_requests: StdMutex::new(kith_core::group::KeyRequests::new(
                    millis(KEY_REQUEST_AFTER),
                    millis(KEY_REQUEST_EVERY),
                    KEY_REQUEST_ASKS,
                )),
                key_answers: StdMutex::new(HashMap::new()),
                unheard: StdMutex::new(HashSet::new()),
                rejected,
                received,
                key_requests_sent,
                key_requests_answered,
            }),
        }
    }

    /// The store; this component writes only its groups book (and flushes).
    fn store(&self) -> &kith_store::Store {
        &self.shared.store
    }

    fn net(&self) -> &kith_net::Client {
        &self.shared.client
    }

    fn peer_id(&self) -> PeerId {
        self.shared.me
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a sync request was refused.
enum SyncRefusal {
    /// Malformed: counted as rejected.
    Bad(String),
    /// We do not (yet) know the requester as a member: one of us is behind; not counted.
    Stale(String),
}

/// Why an envelope was not taken.
enum Refusal {
    /// Forged, malformed, from a non-member: penalise the forwarder and count it.
    Reject(String),
    /// Not for us, already held, or we are behind: drop quietly.
    Ignore(&'static str),
}

/// Our own key failed to sign a member list.
fn sign_error(e: kith_core::GroupError) -> ServiceError {
    ServiceError::Task(format!("cannot sign the member list: {e}"))
}

fn parse_group_id(s: &str) -> Option<GroupId> {
    let bytes = hex::decode(s).ok()?;
    bytes.as_slice().try_into().ok()
}

impl Groups {
    /// The current members of a group (who may hold its files); empty when unknown.
    pub(crate) fn group_member_ids(&self, group: &GroupId) -> Vec<PeerId> {
        self.store()
            .groups()
            .group(group)
            .ok()
            .flatten()
            .and_then(|r| self.list_of(&r).ok())
            .map(|l| l.members().keys().copied().collect())
            .unwrap_or_default()
    }

    /// What serializes our writes to `group` (a send, a key shared again): the sequence and the
    /// Megolm ratchet are advanced by one holder at a time.
    fn send_lock(&self, group: GroupId) -> Arc<Mutex<()>> {
        lock(&self.shared.send_locks)
            .entry(group)
            .or_default()
            .clone()
    }

    /// The verified member list `record` holds. Verified once per list: the same bytes verify
    /// the same way, and every envelope checked, every send and every catch-up page needs the
    /// list (a signature check and, for 200 members, 200 peer ids decoded each time).
    fn list_of(&self, record: &GroupRecord) -> Result<Arc<MemberList>, ServiceError> {
        if let Some((bytes, list)) = lock(&self.shared.lists).get(&record.id)
            && *bytes == record.list
        {
            return Ok(Arc::clone(list));
        }
        let list = Arc::new(MemberList::verify(&record.list).map_err(|e| {
            ServiceError::Store(kith_store::StoreError::Corrupt {
                tree: "groups",
                reason: e.to_string(),
            })
        })?);
        lock(&self.shared.lists).insert(record.id, (record.list.clone(), Arc::clone(&list)));
        Ok(list)
    }

    fn info(&self, record: &GroupRecord) -> Result<GroupInfo, ServiceError> {
        let list = self.list_of(record)?;
        let me = self.peer_id();
        Ok(GroupInfo {
            id: record.id,
            title: list.title().to_owned(),
            version: list.version(),
            members: list.members().iter().map(|(p, a)| (*p, *a)).collect(),
            joined: record.joined,
            left: record.left,
            removed: record.removed,
            invited_by: PeerId::from_bytes(&record.invited_by).ok(),
            unread: record.unread,
            admin: list.is_admin(&me),
            list_signed_at_ms: list.created_at_ms(),
        })
    }

    /// Finds a group by id (hex), unique id prefix, or title.
    fn find_group(&self, reference: &str) -> Result<GroupRecord, ServiceError> {
        let reference = reference.trim();
        if let Some(id) = parse_group_id(reference)
            && let Some(g) = self.store().groups().group(&id)?
        {
            return Ok(g);
        }
        let all = self.store().groups().groups()?;
        let lower = reference.to_lowercase();
        let mut by_title: Vec<&GroupRecord> = all
            .iter()
            .filter(|g| {
                MemberList::verify(&g.list).is_ok_and(|l| l.title().to_lowercase() == lower)
            })
            .collect();
        if by_title.len() > 1 {
            // Prefer groups we take part in over old ones.
            let active: Vec<&GroupRecord> = by_title
                .iter()
                .copied()
                .filter(|g| g.joined && !g.left && !g.removed)
                .collect();
            if !active.is_empty() {
                by_title = active;
            }
        }
        let candidates = if by_title.is_empty() && reference.len() >= 6 {
            all.iter()
                .filter(|g| hex::encode(g.id).starts_with(&lower))
                .collect()
        } else {
            by_title
        };
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ServiceError::UnknownGroup(reference.to_owned())),
            many => Err(ServiceError::AmbiguousGroup {
                reference: reference.to_owned(),
                ids: many.iter().map(|g| hex::encode(g.id)).collect(),
            }),
        }
    }

    /// Every group this node knows, joined ones first.
    pub(crate) fn groups(&self) -> Result<Vec<GroupInfo>, ServiceError> {
        let mut out = Vec::new();
        for g in self.store().groups().groups()? {
            out.push(self.info(&g)?);
        }
        out.sort_by_key(|g| (!g.joined || g.left || g.removed, g.title.to_lowercase()));
        Ok(out)
    }

    /// Invitations not answered yet.
    pub(crate) fn group_invitations(&self) -> Result<Vec<GroupInfo>, ServiceError> {
        Ok(self
            .groups()?
            .into_iter()
            .filter(|g| !g.joined && !g.left && !g.removed)
            .collect())
    }

    /// One group.
    pub(crate) fn group(&self, reference: &str) -> Result<GroupInfo, ServiceError> {
        let record = self.find_group(reference)?;
        self.info(&record)
    }

    /// Creates a group with this node as its only member and admin.
    pub(crate) async fn create_group(&self, title: &str) -> Result<GroupInfo, ServiceError> {
        let title = title.trim();
        if title.is_empty()
            || title.chars().count() > MAX_TITLE_CHARS
            || title.chars().any(char::is_control)
        {
            return Err(ServiceError::InvalidMessage(format!(
                "a group title needs 1 to {MAX_TITLE_CHARS} printable characters"
            )));
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| ServiceError::Task(format!("no randomness for a group id: {e}")))?;
        let members = BTreeMap::from([(self.peer_id(), true)]);
        let list = MemberList::sign(&self.shared.keypair, id, 1, title, &members, now_ms())
            .map_err(sign_error)?;
        let record = GroupRecord {
            id,
            list: list.signed().to_vec(),
            joined: true,
            invited_by: Vec::new(),
            invited_at_ms: 0,
            left: false,
            removed: false,
            next_seq: 1,
            unread: 0,
        };
        self.store().groups().put_group(&record)?;
        self.store().flush().await?;
        self.net().subscribe(topic(&id)).await?;
        self.info(&record)
    }

    /// Adds a member (admins only): a new list version goes to every member, an invitation to
    /// the new one.
    pub(crate) async fn invite_to_group(
        &self,
        reference: &str,
        target: &str,
    ) -> Result<(GroupInfo, PeerId), ServiceError> {
        let (info, peers) = self
            .invite_many_to_group(reference, &[target.to_owned()])
            .await?;
        let peer = peers
            .first()
            .copied()
            .ok_or_else(|| ServiceError::InvalidMessage(format!("nobody to invite as {target}")))?;
        Ok((info, peer))
    }

    /// Adds several members at once (admins only): one new list version goes to every current
    /// member and an invitation to each new one. Inviting one by one sends every current member
    /// one list per invitation, which for a group filled to a few hundred members is tens of
    /// thousands of control messages; this sends one per member. All or nothing: if any target
    /// cannot be resolved or is already a member, nobody is invited.
    pub(crate) async fn invite_many_to_group(
        &self,
        reference: &str,
        targets: &[String],
    ) -> Result<(GroupInfo, Vec<PeerId>), ServiceError> {
        let record = self.find_group(reference)?;
        let mut peers = Vec::with_capacity(targets.len());
        for target in targets {
            let peer = self.shared.resolver.resolve(target).await?;
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        let list = self.list_of(&record)?;
        self.require_admin(&record, &list)?;
        let mut members = list.members().clone();
        for (peer, target) in peers.iter().zip(targets) {
            if list.is_member(peer) {
                return Err(ServiceError::InvalidMessage(format!(
                    "{target} is already a member of '{}'",
                    list.title()
                )));
            }
            members.insert(*peer, false);
        }
        if members.len() > MAX_MEMBERS {
            return Err(ServiceError::InvalidMessage(format!(
                "'{}' would have {} members; a group can have at most {MAX_MEMBERS}",
                list.title(),
                members.len()
            )));
        }
        let next = list
            .successor(&self.shared.keypair, &members, now_ms())
            .map_err(sign_error)?;
        let recipients: Vec<PeerId> = list.members().keys().copied().collect();
        let record = self.publish_list(record, &next, &recipients)?;
        let signed = pb::SignedMemberList::decode(next.signed()).ok();
        for peer in &peers {
            self.shared.outbound.stage(
                *peer,
                pb::direct_payload::Body::GroupInvite(pb::GroupInvite {
                    list: signed.clone(),
                }),
            )?;
        }
        self.shared.outbound.send_staged().await?;
        Ok((self.info(&record)?, peers))
    }

    /// Removes a member (admins only). The removed member is told; everyone starts a new Megolm
    /// session before their next message, so it cannot read what follows.
    pub(crate) async fn remove_from_group(
        &self,
        reference: &str,
        target: &str,
    ) -> Result<(GroupInfo, PeerId), ServiceError> {
        let me = self.peer_id();
        let (record, peer, _) = self
            .change_members(reference, target, |list, peer| {
                if !list.is_member(&peer) {
                    return Err(format!("{target} is not a member of '{}'", list.title()));
                }
                if peer == me {
                    return Err("to leave a group use `kith group leave`".into());
                }
                let mut members = list.members().clone();
                members.remove(&peer);
                Ok(members)
            })
            .await?;
        self.shared.outbound.send_staged().await?;
        Ok((self.info(&record)?, peer))
    }

    /// An admin's change of the member list: `edit` turns the current list and the resolved
    /// `target` into the new members (or says why not); the next version is signed, applied and
    /// queued for every current member. The caller flushes and wakes delivery.
    async fn change_members(
        &self,
        reference: &str,
        target: &str,
        edit: impl FnOnce(&MemberList, PeerId) -> Result<BTreeMap<PeerId, bool>, String>,
    ) -> Result<(GroupRecord, PeerId, MemberList), ServiceError> {
        let record = self.find_group(reference)?;
        let peer = self.shared.resolver.resolve(target).await?;
        let list = self.list_of(&record)?;
        self.require_admin(&record, &list)?;
        let members = edit(&list, peer).map_err(ServiceError::InvalidMessage)?;
        let next = list
            .successor(&self.shared.keypair, &members, now_ms())
            .map_err(sign_error)?;
        let recipients: Vec<PeerId> = list.members().keys().copied().collect();
        let record = self.publish_list(record, &next, &recipients)?;
        Ok((record, peer, next))
    }

    /// Leaves a group: a list without us (signed by us) goes to every member; we unsubscribe.
    pub(crate) async fn leave_group(&self, reference: &str) -> Result<GroupInfo, ServiceError> {
        let record = self.find_group(reference)?;
        let list = self.list_of(&record)?;
        let me = self.peer_id();
        if record.left || record.removed {
            return self.info(&record);
        }
        // Marked left first, so applying our own departure below does not read as a removal.
        let was_joined = record.joined;
        let left = self
            .store()
            .groups()
            .update_group(&record.id, |g| {
                g.left = true;
                g.joined = false;
            })?
            .ok_or_else(|| ServiceError::UnknownGroup(reference.to_owned()))?;
        if list.is_member(&me) && was_joined {
            let members = list.without(&me);
            if !members.is_empty() {
                let next = list
                    .successor(&self.shared.keypair, &members, now_ms())
                    .map_err(sign_error)?;
                let recipients: Vec<PeerId> = members.keys().copied().collect();
                self.publish_list(left, &next, &recipients)?;
            }
        }
        let record = self
            .store()
            .groups()
            .group(&record.id)?
            .ok_or_else(|| ServiceError::UnknownGroup(reference.to_owned()))?;
        self.store().groups().drop_sender(&record.id)?;
        self.shared.outbound.send_staged().await?;
        let _ = self.net().unsubscribe(topic(&record.id)).await;
        self.info(&record)
    }

    /// Accepts an invitation: subscribe and catch up.
    pub(crate) async fn join_group(&self, reference: &str) -> Result<GroupInfo, ServiceError> {
        let record = self.find_group(reference)?;
        let list = self.list_of(&record)?;
        if record.removed || !list.is_member(&self.peer_id()) {
            return Err(ServiceError::GroupClosed(format!(
                "you are not a member of '{}'; ask an admin to invite you again",
                list.title()
            )));
        }
        let record = self
            .store()
            .groups()
            .update_group(&record.id, |g| {
                g.joined = true;
                g.left = false;
            })?
            .ok_or_else(|| ServiceError::UnknownGroup(reference.to_owned()))?;
        self.store().flush().await?;
        self.net().subscribe(topic(&record.id)).await?;
        let node = self.clone();
        let id = record.id;
        tokio::spawn(async move { node.sync_group(id).await });
        self.info(&record)
    }

    fn require_admin(&self, record: &GroupRecord, list: &MemberList) -> Result<(), ServiceError> {
        if !record.joined || record.left || record.removed {
            return Err(ServiceError::GroupClosed(format!(
                "you are not taking part in '{}'",
                list.title()
            )));
        }
        if !list.is_admin(&self.peer_id()) {
            return Err(ServiceError::NotGroupAdmin(list.title().to_owned()));
        }
        Ok(())
    }

    /// Applies our own new list and queues it for `recipients` (the caller flushes).
    fn publish_list(
        &self,
        record: GroupRecord,
        next: &MemberList,
        recipients: &[PeerId],
    ) -> Result<GroupRecord, ServiceError> {
        let old = self.list_of(&record)?;
        let record = self.apply_list(record, &old, next)?;
        let me = self.peer_id();
        let signed = pb::SignedMemberList::decode(next.signed()).ok();
        for peer in recipients.iter().filter(|p| **p != me) {
            self.shared.outbound.stage(
                *peer,
                pb::direct_payload::Body::GroupUpdate(pb::GroupUpdate {
                    list: signed.clone(),
                }),
            )?;
        }
        Ok(record)
    }

    /// Stores a list that replaces `old`; a removal anywhere starts a new Megolm session for us.
    fn apply_list(
        &self,
        record: GroupRecord,
        old: &MemberList,
        next: &MemberList,
    ) -> Result<GroupRecord, ServiceError> {
        let me = self.peer_id();
        let removed_someone = old.members().keys().any(|p| !next.is_member(p));
        let we_are_out = old.is_member(&me) && !next.is_member(&me);
        let updated = self
            .store()
            .groups()
            .update_group(&record.id, |g| {
                g.list = next.signed().to_vec();
                if we_are_out && !g.left {
                    g.removed = true;
                    g.joined = false;
                }
            })?
            .unwrap_or(record);
        if removed_someone || we_are_out {
            self.store().groups().drop_sender(&updated.id)?;
        }
        let newcomers = next.members().keys().any(|p| *p != me && !old.is_member(p));
        if newcomers && !we_are_out {
            self.share_with_newcomers(updated.id);
        }
        if we_are_out {
            let net = self.net().clone();
            let t = topic(&updated.id);
            tokio::spawn(async move {
                let _ = net.unsubscribe(t).await;
            });
        }
        self.shared
            .events
            .emit(MessageEvent::GroupChanged { group: updated.id });
        Ok(updated)
    }

    /// A group control message arrived over Olm from `peer`.
    pub(crate) async fn on_group_control(
        &self,
        peer: PeerId,
        body: pb::direct_payload::Body,
    ) -> Result<(), String> {
        let me = self.peer_id();
        match body {
            pb::direct_payload::Body::GroupInvite(invite) => {
                let signed = invite.list.ok_or("invitation without a member list")?;
                let list =
                    MemberList::verify(&signed.encode_to_vec()).map_err(|e| e.to_string())?;
                if !list.is_member(&me) || !list.is_admin(&list.author()) || !list.is_member(&peer)
                {
                    return Err("invitation that does not add us, signed by a non-admin".into());
                }
                let groups = self.store().groups();
                match groups.group(&list.id()).map_err(|e| e.to_string())? {
                    None => {
                        groups
                            .put_group(&GroupRecord {
                                id: list.id(),
                                list: list.signed().to_vec(),
                                joined: false,
                                invited_by: peer.to_bytes(),
                                invited_at_ms: now_ms(),
                                left: false,
                                removed: false,
                                next_seq: 1,
                                unread: 0,
                            })
                            .map_err(|e| e.to_string())?;
                    }
                    Some(existing) => {
                        let old = self.list_of(&existing).map_err(|e| e.to_string())?;
                        let rejoin = existing.left || existing.removed;
                        if rejoin || old.may_be_replaced_by(&list) {
                            groups
                                .update_group(&list.id(), |g| {
                                    g.list = list.signed().to_vec();
                                    if rejoin {
                                        g.left = false;
                                        g.removed = false;
                                        g.joined = false;
                                        g.invited_by = peer.to_bytes();
                                        g.invited_at_ms = now_ms();
                                    }
                                })
                                .map_err(|e| e.to_string())?;
                        }
                    }
                }
                tracing::info!(group = %hex::encode(list.id()), from = %peer, title = %list.title(), "group invitation");
                self.shared
                    .events
                    .emit(MessageEvent::GroupInvited { group: list.id() });
                Ok(())
            }
            pb::direct_payload::Body::GroupUpdate(update) => {
                let signed = update.list.ok_or("update without a member list")?;
                let list =
                    MemberList::verify(&signed.encode_to_vec()).map_err(|e| e.to_string())?;
                let known = self
                    .store()
                    .groups()
                    .group(&list.id())
                    .map_err(|e| e.to_string())?
                    .is_some();
                if !known && list.is_member(&me) && list.is_member(&peer) {
                    // The update that follows our invitation overtook it (both were in flight
                    // at once): it invites us just as well.
                    return Box::pin(self.on_group_control(
                        peer,
                        pb::direct_payload::Body::GroupInvite(pb::GroupInvite {
                            list: Some(signed),
                        }),
                    ))
                    .await;
                }
                self.consider_list(&list).map(|_| ())
            }
            pb::direct_payload::Body::GroupKey(share) => self.on_key_share(peer, share).await,
            pb::direct_payload::Body::GroupKeyRequest(request) => {
                self.on_key_request(peer, request).await
            }
            _ => Err("not a group control message".into()),
        }
    }

    /// Applies `list` if it may replace what we hold. Returns whether it did.
    fn consider_list(&self, list: &MemberList) -> Result<bool, String> {
        let Some(record) = self
            .store()
            .groups()
            .group(&list.id())
            .map_err(|e| e.to_string())?
        else {
            return Err("member list for a group we do not know".into());
        };
        let old = self.list_of(&record).map_err(|e| e.to_string())?;
        if !old.may_be_replaced_by(list) {
            return Ok(false);
        }
        self.apply_list(record, &old, list)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    async fn on_key_share(&self, peer: PeerId, share: pb::GroupKeyShare) -> Result<(), String> {
        let group: GroupId = share
            .group_id
            .as_slice()
            .try_into()
            .map_err(|_| "group id is not 16 bytes")?;
        if let Some(record) = self
            .store()
            .groups()
            .group(&group)
            .map_err(|e| e.to_string())?
        {
            let list = self.list_of(&record).map_err(|e| e.to_string())?;
            if !list.is_member(&peer) {
                return Err(format!("{peer} shared a key for a group it is not in"));
            }
        }
        let key = GroupSessionKey::from_bytes(&share.session_key).map_err(|e| e.to_string())?;
        let mut receiver = GroupReceiver::new(&key).map_err(|e| e.to_string())?;
        let session = receiver.session_id().map_err(|e| e.to_string())?;
        if session.0.as_slice() != share.session_id.as_slice() {
            return Err("session key does not match its session id".into());
        }
        let mut first_seq = share.first_seq.max(1);
        if !share.earlier_key.is_empty() {
            // From the first message the sender wrote after we were added; trusted only because
            // it leads to the signed key above.
            let earlier =
                GroupSessionKey::from_bytes(&share.earlier_key).map_err(|e| e.to_string())?;
            receiver
                .extend_back(&earlier)
                .map_err(|e| format!("earlier group key refused: {e}"))?;
        }
        // A repeated share (the sender lost track of having sent it, or shared again from an
        // earlier index) never moves a key we hold to a later index.
        if let Some(held) = self
            .store()
            .groups()
            .receiver(&group, &session.0)
            .map_err(|e| e.to_string())?
            && let Ok(held_receiver) =
                GroupReceiver::from_pickle(&held.pickle, &self.shared.pickle_key)
            && held_receiver.first_known_index() <= receiver.first_known_index()
        {
            receiver = held_receiver;
            first_seq = first_seq.min(held.first_seq.max(1));
        }
        let pickle = receiver
            .to_pickle(&self.shared.pickle_key)
            .map_err(|e| e.to_string())?;
        self.store()
            .groups()
            .save_receiver(
                &group,
                &session.0,
                &ReceiverState {
                    sender: peer.to_bytes(),
                    pickle,
                    first_seq,
                },
            )
            .map_err(|e| e.to_string())?;
        self.shared
            .receivers
            .lock()
            .await
            .insert((group, session.0), receiver);
        self.decrypt_pending(group, session.0, peer).await;
        // Messages sent before the key reached us may have been missed entirely.
        let node = self.clone();
        tokio::spawn(async move { node.sync_group(group).await });
        Ok(())
    }

    /// A member asks for our session's key again (it holds our messages and cannot read them).
    /// Answered like a first share, under the same rules: only to a current member, from the
    /// index it may read, and only for the session we still write with (an older session's key
    /// is gone with its ratchet).
    async fn on_key_request(
        &self,
        peer: PeerId,
        request: pb::GroupKeyRequest,
    ) -> Result<(), String> {
        let group: GroupId = request
            .group_id
            .as_slice()
            .try_into()
            .map_err(|_| "group id is not 16 bytes")?;
        let send_lock = self.send_lock(group);
        let _guard = send_lock.lock().await;
        let record = self
            .store()
            .groups()
            .group(&group)
            .map_err(|e| e.to_string())?
            .ok_or("key request for a group we do not know")?;
        let list = self.list_of(&record).map_err(|e| e.to_string())?;
        if !list.is_member(&peer) {
            return Err(format!("{peer} asked for a key of a group it is not in"));
        }
        if !record.joined || record.left || record.removed {
            return Err("key request for a group we no longer take part in".into());
        }
        let Some(mut state) = self
            .store()
            .groups()
            .sender(&group)
            .map_err(|e| e.to_string())?
        else {
            return Err("key request while we write with no session".into());
        };
        let sender = GroupSender::from_pickle(&state.pickle, &self.shared.pickle_key)
            .map_err(|e| e.to_string())?;
        let session = sender.session_id().map_err(|e| e.to_string())?;
        if !request.session_id.is_empty() && session.0.as_slice() != request.session_id.as_slice() {
            return Err("key request for a session we no longer write with".into());
        }
        let now = now_ms();
        {
            let mut answers = lock(&self.shared.key_answers);
            if answers
                .get(&(group, peer))
                .is_some_and(|at| now.saturating_sub(*at) < millis(KEY_ANSWER_EVERY))
            {
                return Ok(());
            }
            // Only answers within the last period matter: the map never outgrows the members
            // who asked lately.
            answers.retain(|_, at| now.saturating_sub(*at) < millis(KEY_ANSWER_EVERY));
            answers.insert((group, peer), now);
        }
        let bytes = peer.to_bytes();
        state.shared_with.retain(|p| *p != bytes);
        if self
            .share_again(&record, &list, &sender, &mut state)
            .await
            .map_err(|e| e.to_string())?
        {
            self.shared.key_requests_answered.inc();
            tracing::info!(group = %hex::encode(group), %peer, "shared our group key again on request");
        }
        Ok(())
    }

    /// Asks the senders of sessions whose envelopes have waited too long for a key to share it
    /// again ([`kith_core::group::KeyRequests`] decides when). Part of the periodic round.
    pub(crate) async fn request_missing_keys(&self) {
        let groups = self.store().groups().groups().unwrap_or_default();
        let me = self.peer_id();
        let mut waiting = Vec::new();
        let mut senders = HashMap::new();
        for g in groups.iter().filter(|g| g.joined && !g.left && !g.removed) {
            let Ok(list) = self.list_of(g) else {
                continue;
            };
            let sessions = self
                .store()
                .groups()
                .pending_sessions(&g.id, KEY_REQUEST_MAX_SESSIONS)
                .unwrap_or_default();
            for (session, first) in sessions {
                let Ok(envelope) = GroupEnvelope::verify(&first.envelope) else {
                    continue;
                };
                if envelope.sender != me && list.is_member(&envelope.sender) {
                    let key = (g.id, WantedKey::Session(session));
                    senders.insert(key.clone(), envelope.sender);
                    waiting.push(key);
                }
            }
            // Members we have heard nothing of: still nothing once we hold a head for them (a
            // message, or a key, which starts one).
            let heard: HashSet<Vec<u8>> = self
                .store()
                .groups()
                .heads(&g.id)
                .unwrap_or_default()
                .into_iter()
                .map(|(sender, _)| sender)
                .collect();
            let mut unheard = lock(&self.shared.unheard);
            unheard.retain(|(group, peer)| {
                *group != g.id || (list.is_member(peer) && !heard.contains(&peer.to_bytes()))
            });
            for (_, peer) in unheard.iter().filter(|(group, _)| *group == g.id) {
                let key = (g.id, WantedKey::Current(*peer));
                senders.insert(key.clone(), *peer);
                waiting.push(key);
            }
        }
        let due = lock(&self.shared.key_requests).due(waiting, now_ms());
        if due.is_empty() {
            return;
        }
        let mut staged = 0usize;
        for key in due {
            let Some(sender) = senders.get(&key).copied() else {
                continue;
            };
            let (group, wanted) = key;
            let session_id = match wanted {
                WantedKey::Session(session) => session.to_vec(),
                WantedKey::Current(_) => Vec::new(),
            };
            tracing::info!(group = %hex::encode(group), %sender, "asking a member for its group key again");
            match self.shared.outbound.stage(
                sender,
                pb::direct_payload::Body::GroupKeyRequest(pb::GroupKeyRequest {
                    group_id: group.to_vec(),
                    session_id,
                }),
            ) {
                Ok(_) => {
                    staged += 1;
                    self.shared.key_requests_sent.inc();
                }
                Err(e) => tracing::warn!(error = %e, "cannot queue a group key request"),
            }
        }
        if staged > 0
            && let Err(e) = self.shared.outbound.send_staged().await
        {
            tracing::warn!(error = %e, "cannot send group key requests");
        }
    }

    /// Decrypts envelopes that waited for `session`'s key.
    async fn decrypt_pending(&self, group: GroupId, session: SessionId, sender: PeerId) {
        let Ok(pending) = self.store().groups().pending(&group, &session, 10_000) else {
            return;
        };
        for p in pending {
            let Ok(v) = GroupEnvelope::verify(&p.envelope) else {
                continue;
            };
            let message = match self.decrypt_envelope(&v).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => continue,
                Err(reason) => {
                    tracing::info!(%reason, "dropping a held group envelope");
                    None
                }
            };
            match self.store().groups().resolve_pending(
                &group,
                &session,
                &sender.to_bytes(),
                p.seq,
                message.as_ref(),
            ) {
                Ok(Incoming::Stored) => {
                    if let Some(m) = message {
                        self.shared.received.inc();
                        self.shared
                            .events
                            .emit(MessageEvent::GroupReceived { group, message: m });
                    }
                }
                Ok(Incoming::Duplicate) => {}
                Err(e) => tracing::warn!(error = %e, "cannot store a group message"),
            }
        }
        if let Err(e) = self.store().flush().await {
            tracing::warn!(error = %e, "cannot flush group messages");
        }
    }

    /// Sends a text to a group.
    pub(crate) async fn send_group_text(
        &self,
        reference: &str,
        text: &str,
    ) -> Result<GroupSent, ServiceError> {
        kith_core::check_text(text).map_err(|e| ServiceError::InvalidMessage(e.to_string()))?;
        self.send_group_payload(
            reference,
            pb::group_payload::Body::Text(text.to_owned()),
            text.to_owned(),
            |_| Ok(()),
        )
        .await
    }

    /// Sends one payload body to a group; `text` is what our history shows, and `before_store`
    /// writes records that must exist once the message does (a file's), given its id.
    pub(crate) async fn send_group_payload(
        &self,
        reference: &str,
        body: pb::group_payload::Body,
        text: String,
        before_store: impl FnOnce(kith_store::MessageId) -> Result<(), ServiceError>,
    ) -> Result<GroupSent, ServiceError> {
        let record = self.find_group(reference)?;
        let group = record.id;
        // The first message after a start waits briefly for a catch-up, which brings member-list
        // updates made while we were away: our key then goes to members we did not know of yet.
        if !lock(&self.shared.tried).contains(&group) {
            let _ = tokio::time::timeout(FIRST_SEND_SYNC, self.sync_group(group)).await;
        }
        let send_lock = self.send_lock(group);
        let _guard = send_lock.lock().await;
        // Re-read under the lock: the sequence and the session are ours to advance now.
        let record = self
            .store()
            .groups()
            .group(&group)?
            .ok_or_else(|| ServiceError::UnknownGroup(reference.to_owned()))?;
        let list = self.list_of(&record)?;
        let me = self.peer_id();
        if !record.joined || record.left || record.removed || !list.is_member(&me) {
            return Err(ServiceError::GroupClosed(format!(
                "you are not taking part in '{}'{}",
                list.title(),
                if record.joined || record.left || record.removed {
                    ""
                } else {
                    "; join it first (`kith group join`)"
                }
            )));
        }
        let seq = record.next_seq.max(1);
        let (mut sender, mut state, shared) = self.current_sender(&record, &list, seq)?;
        let id = self.shared.outbound.next_id()?;
        let now = now_ms();
        let payload = pb::GroupPayload {
            id: id.to_vec(),
            group_id: group.to_vec(),
            sender: me.to_bytes(),
            seq,
            sent_at_ms: now,
            body: Some(body),
        };
        let ciphertext = sender
            .encrypt(&payload.encode_to_vec())
            .map_err(ServiceError::Crypto)?;
        let bytes = GroupEnvelope {
            group,
            sender: me,
            seq,
            session: sender.session_id().map_err(ServiceError::Crypto)?.0,
            ciphertext,
            list_version: list.version(),
        }
        .seal(&self.shared.keypair)
        .map_err(|e| ServiceError::Task(format!("cannot sign: {e}")))?;
        state.pickle = sender
            .to_pickle(&self.shared.pickle_key)
            .map_err(ServiceError::Crypto)?;
        state.messages = state.messages.saturating_add(1);
        state.sent.push((seq, now));
        let message = GroupMessage {
            id,
            sender: me.to_bytes(),
            seq,
            text,
            sent_at_ms: now,
            received_at_ms: now,
            outgoing: true,
        };
        before_store(id)?;
        self.store()
            .groups()
            .record_outgoing(&group, &bytes, &message, &state)?;
        if shared {
            self.shared.outbound.send_staged().await?;
        } else {
            self.store().flush().await?;
        }
        let published = match self.net().publish(topic(&group), bytes).await {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, "group message not published now; members will sync it");
                false
            }
        };
        Ok(GroupSent { id, seq, published })
    }

    /// Our Megolm session for `record`, new if needed, with its key queued (over Olm) for every
    /// member who lacks it. Returns whether any key was queued.
    fn current_sender(
        &self,
        record: &GroupRecord,
        list: &MemberList,
        next_seq: u64,
    ) -> Result<(GroupSender, SenderState, bool), ServiceError> {
        let key = &self.shared.pickle_key;
        let existing = match self.store().groups().sender(&record.id)? {
            Some(state) if state.messages < ROTATE_EVERY => {
                match GroupSender::from_pickle(&state.pickle, key) {
                    Ok(sender) => Some((sender, state)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot restore our group session; starting a new one");
                        None
                    }
                }
            }
            _ => None,
        };
        let (sender, mut state) = match existing {
            Some(s) => s,
            None => {
                let sender = GroupSender::new();
                // Our own receiver from index 0: what lets us give a member added before a
                // message we wrote unaware of them the key from that message on.
                let own_receiver = GroupReceiver::new(&sender.session_key())
                    .and_then(|r| r.to_pickle(key))
                    .map_err(ServiceError::Crypto)?;
                let state = SenderState {
                    pickle: sender.to_pickle(key).map_err(ServiceError::Crypto)?,
                    messages: 0,
                    shared_with: Vec::new(),
                    created_ms: now_ms(),
                    own_receiver,
                    sent: Vec::new(),
                };
                (sender, state)
            }
        };
        let shared = self.share_session(record.id, list, &sender, &mut state, next_seq)?;
        Ok((sender, state, shared))
    }

    /// Queues our session's key (over Olm) for every member of `list` who lacks it. A member
    /// added before messages we wrote while we did not know of them also gets the key exported
    /// at the first of those ([`kith_core::group::first_readable`]), never earlier. Returns
    /// whether any key was queued; the caller saves `state`.
    fn share_session(
        &self,
        group: GroupId,
        list: &MemberList,
        sender: &GroupSender,
        state: &mut SenderState,
        next_seq: u64,
    ) -> Result<bool, ServiceError> {
        let me = self.peer_id();
        let shared: HashSet<&[u8]> = state.shared_with.iter().map(Vec::as_slice).collect();
        let lacking: Vec<PeerId> = list
            .members()
            .keys()
            .filter(|p| **p != me && !shared.contains(p.to_bytes().as_slice()))
            .copied()
            .collect();
        drop(shared);
        if lacking.is_empty() {
            return Ok(false);
        }
        let key = &self.shared.pickle_key;
        let session = sender.session_id().map_err(ServiceError::Crypto)?;
        let session_key = sender.session_key();
        let mut own = if state.own_receiver.is_empty() {
            None
        } else {
            match GroupReceiver::from_pickle(&state.own_receiver, key) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot restore our own group receiver; sharing from now on");
                    None
                }
            }
        };
        for peer in &lacking {
            let earlier = list
                .added_at_ms(peer)
                .and_then(|added| kith_core::group::first_readable(&state.sent, added))
                .and_then(|(index, seq)| {
                    let exported = own.as_mut()?.export_at(index)?;
                    Some((exported, seq))
                });
            let (earlier_key, first_seq) = match earlier {
                Some((k, seq)) => (k.to_bytes(), seq),
                None => (Vec::new(), next_seq),
            };
            self.shared.outbound.stage(
                *peer,
                pb::direct_payload::Body::GroupKey(pb::GroupKeyShare {
                    group_id: group.to_vec(),
                    session_id: session.0.to_vec(),
                    session_key: session_key.to_bytes(),
                    first_seq,
                    earlier_key,
                }),
            )?;
            state.shared_with.push(peer.to_bytes());
        }
        Ok(true)
    }

    /// A member list that added someone reached us: if we wrote messages after they were added
    /// (while we did not know of them), share our key from the first of those now rather than
    /// at our next message, so they read what we wrote even if we never write again.
    fn share_with_newcomers(&self, group: GroupId) {
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.share_with_newcomers_now(group).await {
                tracing::debug!(error = %e, "could not share our group key with new members");
            }
        });
    }

    async fn share_with_newcomers_now(&self, group: GroupId) -> Result<(), ServiceError> {
        let send_lock = self.send_lock(group);
        let _guard = send_lock.lock().await;
        let Some(record) = self.store().groups().group(&group)? else {
            return Ok(());
        };
        let Some(mut state) = self.store().groups().sender(&group)? else {
            return Ok(());
        };
        let Some(last_written) = state.sent.last().map(|(_, at)| *at) else {
            return Ok(());
        };
        let list = self.list_of(&record)?;
        let me = self.peer_id();
        let behind = list.members().keys().any(|p| {
            *p != me
                && !state.shared_with.contains(&p.to_bytes())
                && list
                    .added_at_ms(p)
                    .is_some_and(|added| added <= last_written)
        });
        if !record.joined || record.left || record.removed || !behind {
            return Ok(());
        }
        let sender = GroupSender::from_pickle(&state.pickle, &self.shared.pickle_key)
            .map_err(ServiceError::Crypto)?;
        self.share_again(&record, &list, &sender, &mut state)
            .await?;
        Ok(())
    }

    /// Queues `sender`'s key for the members of `list` that `state` says lack it, outside a
    /// send (a list update brought newcomers, a member asked again), then saves `state` and
    /// sends. The caller holds the group's send lock and read `sender` from `state` under it.
    /// Returns whether any key was queued.
    async fn share_again(
        &self,
        record: &GroupRecord,
        list: &MemberList,
        sender: &GroupSender,
        state: &mut SenderState,
    ) -> Result<bool, ServiceError> {
        let shared = self.share_session(record.id, list, sender, state, record.next_seq.max(1))?;
        if shared {
            // Only `shared_with` changed: the ratchet is the one the caller read, under the lock.
            self.store().groups().save_sender(&record.id, state)?;
            self.shared.outbound.send_staged().await?;
        }
        Ok(shared)
    }

    /// The last `limit` messages of a group, oldest first.
    pub(crate) fn group_history(
        &self,
        reference: &str,
        limit: usize,
        before: Option<kith_store::MessageId>,
    ) -> Result<(GroupInfo, Vec<GroupMessage>), ServiceError> {
        let record = self.find_group(reference)?;
        let messages = self
            .store()
            .groups()
            .history(&record.id, limit, before.as_ref())?;
        Ok((self.info(&record)?, messages))
    }

    /// Marks a group read.
    pub(crate) fn mark_group_read(&self, reference: &str) -> Result<(), ServiceError> {
        let record = self.find_group(reference)?;
        self.store()
            .groups()
            .update_group(&record.id, |g| g.unread = 0)?;
        Ok(())
    }

    /// A gossipsub message arrived: validate, report the verdict, store.
    pub(crate) async fn on_group_message(
        &self,
        author: PeerId,
        source: PeerId,
        message_id: GossipId,
        topic_name: String,
        bytes: Vec<u8>,
    ) {
        // The verdict goes out as soon as the envelope is checked (signature, membership, not
        // held), before decrypting and storing, so forwarding to the rest of the mesh does not
        // wait for our disk.
        let (verdict, valid) = match self.check_envelope(&bytes, Some((author, &topic_name))) {
            Ok(v) => (GossipVerdict::Accept, Some(v)),
            Err(Refusal::Ignore(why)) => {
                tracing::debug!(%why, "ignored a group message");
                (GossipVerdict::Ignore, None)
            }
            Err(Refusal::Reject(reason)) => {
                self.shared.rejected.inc();
                tracing::info!(%source, %reason, "rejected a group message");
                (GossipVerdict::Reject, None)
            }
        };
        if let Err(e) = self.net().report_gossip(message_id, source, verdict).await {
            tracing::debug!(error = %e, "could not report a gossip verdict");
        }
        if let Some(v) = valid {
            match self.keep_envelope(v, &bytes, true).await {
                Ok(()) => {}
                Err(Refusal::Ignore(why)) => tracing::debug!(%why, "group message not kept"),
                Err(Refusal::Reject(reason)) => {
                    // Signed by a member, but its content is broken: never stored.
                    self.shared.rejected.inc();
                    tracing::info!(%source, %reason, "refused a member's group message");
                }
            }
        }
    }

    /// Validates and stores one envelope (from gossip, with its author and topic, or from sync).
    async fn take_envelope(
        &self,
        bytes: &[u8],
        gossip: Option<(PeerId, &str)>,
    ) -> Result<(), Refusal> {
        let v = self.check_envelope(bytes, gossip)?;
        self.keep_envelope(v, bytes, gossip.is_some()).await
    }

    /// Everything that can be checked without the session key: signature, topic, a group we take
    /// part in, a sender in our member list, not held yet.
    fn check_envelope(
        &self,
        bytes: &[u8],
        gossip: Option<(PeerId, &str)>,
    ) -> Result<GroupEnvelope, Refusal> {
        let v = GroupEnvelope::verify(bytes).map_err(|e| Refusal::Reject(e.to_string()))?;
        if let Some((author, topic_name)) = gossip {
            if author != v.sender {
                return Err(Refusal::Reject(
                    "published by someone other than its sender".into(),
                ));
            }
            if topic_name != topic(&v.group) {
                return Err(Refusal::Reject("envelope on another group's topic".into()));
            }
        }
        let record = self
            .store()
            .groups()
            .group(&v.group)
            .ok()
            .flatten()
            .ok_or(Refusal::Ignore("not a group we know"))?;
        if !record.joined || record.left || record.removed {
            return Err(Refusal::Ignore("not a group we take part in"));
        }
        if v.sender == self.peer_id() {
            return Err(Refusal::Ignore("our own message"));
        }
        let list = self
            .list_of(&record)
            .map_err(|_| Refusal::Ignore("our member list is damaged"))?;
        if !list.is_member(&v.sender) {
            if v.list_version > list.version() {
                // We may have missed the update that added the sender.
                self.spawn_sync(v.group);
                return Err(Refusal::Ignore("sender unknown to our (older) member list"));
            }
            return Err(Refusal::Reject(format!(
                "{} is not a member of this group",
                v.sender
            )));
        }
        let sender_bytes = v.sender.to_bytes();
        if self
            .store()
            .groups()
            .has_envelope(&v.group, &sender_bytes, v.seq)
            .unwrap_or(false)
        {
            return Err(Refusal::Ignore("already held"));
        }
        Ok(v)
    }

    /// Decrypts (or holds, without its key) and stores a checked envelope, flushes, tells
    /// subscribers, and starts a catch-up when it shows a gap.
    async fn keep_envelope(
        &self,
        v: GroupEnvelope,
        bytes: &[u8],
        from_gossip: bool,
    ) -> Result<(), Refusal> {
        let sender_bytes = v.sender.to_bytes();
        let message = self.decrypt_envelope(&v).await.map_err(Refusal::Reject)?;
        let head = self
            .store()
            .groups()
            .head(&v.group, &sender_bytes)
            .ok()
            .flatten();
        let stored = self
            .store()
            .groups()
            .store_envelope(
                &v.group,
                &sender_bytes,
                v.seq,
                bytes,
                &v.session,
                message.as_ref(),
            )
            .map_err(|_| Refusal::Ignore("store failed"))?;
        if stored == Incoming::Duplicate {
            return Err(Refusal::Ignore("already held"));
        }
        // Held for a key that may have arrived between our decrypt attempt and the store: the
        // key handler saves the key before it scans what is held, so one of us sees the other.
        if message.is_none()
            && self
                .store()
                .groups()
                .receiver(&v.group, &v.session)
                .ok()
                .flatten()
                .is_some()
        {
            self.decrypt_pending(v.group, v.session, v.sender).await;
        }
        if let Err(e) = self.store().flush().await {
            tracing::warn!(error = %e, "cannot flush a group message");
        }
        if let Some(m) = message {
            self.shared.received.inc();
            self.shared.events.emit(MessageEvent::GroupReceived {
                group: v.group,
                message: m,
            });
        }
        // A gap below this message: fetch what is missing.
        if from_gossip && head.is_some_and(|h| v.seq > h + 1) {
            self.spawn_sync(v.group);
        }
        Ok(())
    }

    /// Decrypts a verified envelope. `Ok(None)`: no key for its session yet (hold it).
    async fn decrypt_envelope(&self, v: &GroupEnvelope) -> Result<Option<GroupMessage>, String> {
        let mut receivers = self.shared.receivers.lock().await;
        let cache_key = (v.group, v.session);
        if let std::collections::hash_map::Entry::Vacant(slot) = receivers.entry(cache_key) {
            let Some(state) = self
                .store()
                .groups()
                .receiver(&v.group, &v.session)
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            if state.sender != v.sender.to_bytes() {
                return Err("envelope uses another member's session".into());
            }
            let receiver = GroupReceiver::from_pickle(&state.pickle, &self.shared.pickle_key)
                .map_err(|e| e.to_string())?;
            slot.insert(receiver);
        }
        let Some(receiver) = receivers.get_mut(&cache_key) else {
            return Ok(None);
        };
        let (plaintext, _) = receiver
            .decrypt(&v.ciphertext)
            .map_err(|e| format!("cannot decrypt: {e}"))?;
        drop(receivers);
        let payload = pb::GroupPayload::decode(plaintext.as_slice())
            .map_err(|_| "malformed group payload".to_owned())?;
        if payload.group_id != v.group.as_slice()
            || payload.sender != v.sender.to_bytes()
            || payload.seq != v.seq
        {
            return Err("payload does not match its envelope".into());
        }
        let id: kith_store::MessageId = payload
            .id
            .as_slice()
            .try_into()
            .map_err(|_| "message id is not 16 bytes".to_owned())?;
        let text = match payload.body {
            Some(pb::group_payload::Body::Text(t))
                if !t.is_empty() && t.len() <= MAX_TEXT_BYTES =>
            {
                t
            }
            Some(pb::group_payload::Body::File(offer)) => self
                .shared
                .files
                .group_offer(v.group, v.sender, id, offer)?,
            _ => return Err("empty, oversized or unknown group message".into()),
        };
        Ok(Some(GroupMessage {
            id,
            sender: v.sender.to_bytes(),
            seq: v.seq,
            text,
            sent_at_ms: payload.sent_at_ms,
            received_at_ms: now_ms(),
            outgoing: false,
        }))
    }

    fn spawn_sync(&self, group: GroupId) {
        let node = self.clone();
        tokio::spawn(async move { node.sync_group(group).await });
    }

    /// Answers a member's `/kith/sync` request.
    pub(crate) async fn on_sync_request(
        &self,
        peer: PeerId,
        request: kith_net::DmRequestId,
        bytes: Vec<u8>,
    ) {
        let response = match self.sync_page(peer, &bytes) {
            Ok(r) => r,
            Err(SyncRefusal::Stale(error)) => {
                tracing::debug!(%peer, %error, "sync request from someone our member list lacks");
                pb::SyncResponse {
                    error,
                    ..Default::default()
                }
            }
            Err(SyncRefusal::Bad(error)) => {
                self.shared.rejected.inc();
                tracing::info!(%peer, %error, "refused a sync request");
                pb::SyncResponse {
                    error,
                    ..Default::default()
                }
            }
        };
        if let Err(e) = self
            .net()
            .respond_dm(request, response.encode_to_vec())
            .await
        {
            tracing::debug!(%peer, error = %e, "could not answer a sync request");
        }
    }

    fn sync_page(&self, peer: PeerId, bytes: &[u8]) -> Result<pb::SyncResponse, SyncRefusal> {
        let bad = |e: &str| SyncRefusal::Bad(e.to_owned());
        let request = pb::SyncRequest::decode(bytes).map_err(|_| bad("malformed sync request"))?;
        let group: GroupId = request
            .group_id
            .as_slice()
            .try_into()
            .map_err(|_| bad("group id is not 16 bytes"))?;
        // The requester may know a newer member list than we do (one that added it).
        if let Some(signed) = &request.list
            && let Ok(list) = MemberList::verify(&signed.encode_to_vec())
            && list.id() == group
        {
            let _ = self.consider_list(&list);
        }
        let record = self
            .store()
            .groups()
            .group(&group)
            .map_err(|e| bad(&e.to_string()))?
            .ok_or_else(|| SyncRefusal::Stale("not a group this node knows".into()))?;
        let list = self.list_of(&record).map_err(|e| bad(&e.to_string()))?;
        if !list.is_member(&peer) {
            return Err(SyncRefusal::Stale(format!(
                "{peer} is not a member of this group"
            )));
        }
        let max = (request.max as usize).clamp(1, SYNC_PAGE);
        let mut envelopes = Vec::new();
        let mut size = 0usize;
        let mut more = false;
        for have in request.have.iter().take(MAX_MEMBERS * 4) {
            if envelopes.len() >= max || size >= SYNC_PAGE_BYTES {
                more = true;
                break;
            }
            let room = max - envelopes.len();
            let page = self
                .store()
                .groups()
                .envelopes_after(&group, &have.sender, have.seq, room + 1)
                .map_err(|e| bad(&e.to_string()))?;
            if page.len() > room {
                more = true;
            }
            for e in page.into_iter().take(room) {
                if size + e.len() > SYNC_PAGE_BYTES {
                    more = true;
                    break;
                }
                size += e.len();
                envelopes.push(e);
            }
        }
        let heads = self
            .store()
            .groups()
            .heads(&group)
            .map_err(|e| bad(&e.to_string()))?
            .into_iter()
            .take(MAX_MEMBERS)
            .map(|(sender, seq)| pb::SyncHave { sender, seq })
            .collect();
        Ok(pb::SyncResponse {
            envelopes,
            more,
            list: pb::SignedMemberList::decode(list.signed()).ok(),
            error: String::new(),
            heads,
        })
    }

    /// Catches a group up from its online members: pages of envelopes after our heads, until
    /// nothing is missing (bounded). One catch-up per group at a time.
    pub(crate) async fn sync_group(&self, group: GroupId) {
        if !lock(&self.shared.syncing).insert(group) {
            return;
        }
        let result = self.sync_group_inner(group).await;
        lock(&self.shared.syncing).remove(&group);
        if let Err(e) = result {
            tracing::debug!(group = %hex::encode(group), error = %e, "group catch-up incomplete");
        }
    }

    async fn sync_group_inner(&self, group: GroupId) -> Result<(), ServiceError> {
        lock(&self.shared.tried).insert(group);
        let Some(record) = self.store().groups().group(&group)? else {
            return Ok(());
        };
        if !record.joined || record.left || record.removed {
            return Ok(());
        }
        let list = self.list_of(&record)?;
        let me = self.peer_id();
        // Connected members first (subscribed to the topic), then the rest.
        let subscribed = self
            .net()
            .topic_peers(topic(&group))
            .await
            .unwrap_or_default();
        let connected: HashSet<PeerId> = self
            .net()
            .peers()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.peer_id)
            .collect();
        let mut peers: Vec<PeerId> = list
            .members()
            .keys()
            .filter(|p| **p != me)
            .copied()
            .collect();
        peers.sort_by_key(|p| (!subscribed.contains(p), !connected.contains(p)));
        for peer in peers.into_iter().take(SYNC_MAX_PEERS) {
            match self.sync_from(group, peer).await {
                Ok(()) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "sync from member failed"),
            }
        }
        Ok(())
    }

    /// Pulls pages from one member until it has nothing more for us.
    async fn sync_from(&self, group: GroupId, peer: PeerId) -> Result<(), ServiceError> {
        for _ in 0..SYNC_MAX_PAGES {
            let have: Vec<pb::SyncHave> = self
                .store()
                .groups()
                .heads(&group)?
                .into_iter()
                .map(|(sender, seq)| pb::SyncHave { sender, seq })
                .collect();
            let list = self
                .store()
                .groups()
                .group(&group)?
                .and_then(|r| pb::SignedMemberList::decode(r.list.as_slice()).ok());
            let request = pb::SyncRequest {
                group_id: group.to_vec(),
                have,
                max: SYNC_PAGE as u32,
                list,
            };
            let addrs = self.shared.addresses.known_addrs(&peer);
            let raw = self
                .net()
                .sync_request(peer, request.encode_to_vec(), addrs)
                .await?;
            let response = pb::SyncResponse::decode(raw.as_slice())
                .map_err(|_| ServiceError::InvalidMessage("malformed sync answer".into()))?;
            if !response.error.is_empty() {
                return Err(ServiceError::InvalidMessage(response.error));
            }
            if let Some(signed) = response.list
                && let Ok(list) = MemberList::verify(&signed.encode_to_vec())
                && list.id() == group
            {
                let _ = self.consider_list(&list);
            }
            self.note_unheard(group, &response.heads);
            let mut progress = false;
            for e in &response.envelopes {
                match self.take_envelope(e, None).await {
                    Ok(()) => progress = true,
                    Err(Refusal::Reject(reason)) => {
                        self.shared.rejected.inc();
                        tracing::info!(%peer, %reason, "refused a synced envelope");
                    }
                    Err(Refusal::Ignore(_)) => {}
                }
            }
            if !response.more || !progress {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Notes the members a responder holds messages of while we hold nothing of theirs (see
    /// `Shared::unheard`); [`Groups::request_missing_keys`] asks them for their key.
    fn note_unheard(&self, group: GroupId, theirs: &[pb::SyncHave]) {
        let me = self.peer_id();
        let Ok(Some(record)) = self.store().groups().group(&group) else {
            return;
        };
        let Ok(list) = self.list_of(&record) else {
            return;
        };
        let ours: HashSet<Vec<u8>> = self
            .store()
            .groups()
            .heads(&group)
            .unwrap_or_default()
            .into_iter()
            .map(|(sender, _)| sender)
            .collect();
        let mut unheard = lock(&self.shared.unheard);
        for head in theirs.iter().take(MAX_MEMBERS) {
            if head.seq == 0 || ours.contains(&head.sender) {
                continue;
            }
            if let Ok(peer) = PeerId::from_bytes(&head.sender)
                && peer != me
                && list.is_member(&peer)
            {
                unheard.insert((group, peer));
            }
        }
    }

    /// A member subscribed to a group topic (it came online): catch up from it.
    pub(crate) fn on_group_peer_subscribed(&self, peer: PeerId, topic_name: &str) {
        let Some(hex_id) = topic_name.strip_prefix("kith/v1/group/") else {
            return;
        };
        let Some(group) = parse_group_id(hex_id) else {
            return;
        };
        let known = self
            .store()
            .groups()
            .group(&group)
            .ok()
            .flatten()
            .and_then(|r| self.list_of(&r).ok())
            .is_some_and(|l| l.is_member(&peer));
        if known {
            self.spawn_sync(group);
        }
    }

    /// What this node holds of a group's Megolm keys: whom our current session's key was queued
    /// for, and whose sessions we can read.
    pub(crate) fn key_state(&self, group: &GroupId) -> Result<GroupKeyState, ServiceError> {
        let groups = self.store().groups();
        let shared_with = groups.sender(group)?.map(|state| {
            state
                .shared_with
                .iter()
                .filter_map(|p| PeerId::from_bytes(p).ok())
                .collect()
        });
        Ok(GroupKeyState {
            shared_with,
            sessions_held: groups.receiver_sessions(group)?,
        })
    }

    /// Catches up every group we take part in, one after the other (the periodic round).
    pub(crate) async fn sync_joined(&self) {
        let groups = self.store().groups().groups().unwrap_or_default();
        for g in groups.iter().filter(|g| g.joined && !g.left && !g.removed) {
            self.sync_group(g.id).await;
        }
    }

    /// Subscribes to every joined group (after a start).
    pub(crate) async fn resubscribe_groups(&self) {
        let Ok(groups) = self.store().groups().groups() else {
            return;
        };
        for g in groups.iter().filter(|g| g.joined && !g.left && !g.removed) {
            if let Err(e) = self.net().subscribe(topic(&g.id)).await {
                tracing::warn!(group = %hex::encode(g.id), error = %e, "cannot subscribe to a group");
            }
        }
    }
}

/// `Node`'s group operations (what kith-api and the CLI call): delegations to [`Groups`].
impl Node {
    /// Every group this node knows, joined ones first.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ServiceError> {
        self.inner.groups.groups()
    }

    /// Invitations not answered yet.
    pub fn group_invitations(&self) -> Result<Vec<GroupInfo>, ServiceError> {
        self.inner.groups.group_invitations()
    }

    /// One group.
    pub fn group(&self, reference: &str) -> Result<GroupInfo, ServiceError> {
        self.inner.groups.group(reference)
    }

    /// Creates a group with this node as its only member and admin.
    pub async fn create_group(&self, title: &str) -> Result<GroupInfo, ServiceError> {
        self.inner.groups.create_group(title).await
    }

    /// Adds a member (admins only): a new list version goes to every member, an invitation to
    /// the new one.
    pub async fn invite_to_group(
        &self,
        reference: &str,
        target: &str,
    ) -> Result<(GroupInfo, PeerId), ServiceError> {
        self.inner.groups.invite_to_group(reference, target).await
    }

    /// Adds several members at once (admins only): one new list version goes to every current
    /// member and an invitation to each new one. Inviting one by one sends every current member
    /// one list per invitation, which for a group filled to a few hundred members is tens of
    /// thousands of control messages; this sends one per member. All or nothing: if any target
    /// cannot be resolved or is already a member, nobody is invited.
    pub async fn invite_many_to_group(
        &self,
        reference: &str,
        targets: &[String],
    ) -> Result<(GroupInfo, Vec<PeerId>), ServiceError> {
        self.inner
            .groups
            .invite_many_to_group(reference, targets)
            .await
    }

    /// Removes a member (admins only). The removed member is told; everyone starts a new Megolm
    /// session before their next message, so it cannot read what follows.
    pub async fn remove_from_group(
        &self,
        reference: &str,
        target: &str,
    ) -> Result<(GroupInfo, PeerId), ServiceError> {
        self.inner.groups.remove_from_group(reference, target).await
    }

    /// Leaves a group: a list without us (signed by us) goes to every member; we unsubscribe.
    pub async fn leave_group(&self, reference: &str) -> Result<GroupInfo, ServiceError> {
        self.inner.groups.leave_group(reference).await
    }

    /// Accepts an invitation: subscribe and catch up.
    pub async fn join_group(&self, reference: &str) -> Result<GroupInfo, ServiceError> {
        self.inner.groups.join_group(reference).await
    }

    /// Sends a text to a group.
    pub async fn send_group_text(
        &self,
        reference: &str,
        text: &str,
    ) -> Result<GroupSent, ServiceError> {
        self.inner.groups.send_group_text(reference, text).await
    }

    /// The last `limit` messages of a group, oldest first.
    pub fn group_history(
        &self,
        reference: &str,
        limit: usize,
        before: Option<kith_store::MessageId>,
    ) -> Result<(GroupInfo, Vec<GroupMessage>), ServiceError> {
        self.inner.groups.group_history(reference, limit, before)
    }

    /// Marks a group read.
    pub fn mark_group_read(&self, reference: &str) -> Result<(), ServiceError> {
        self.inner.groups.mark_group_read(reference)
    }

    /// What this node holds of a group's Megolm keys: whom our current session's key was queued
    /// for, and whose sessions we can read. Lets a caller check that a removed member was never
    /// sent a new key without reading the store.
    pub fn group_key_state(&self, group: &GroupId) -> Result<GroupKeyState, ServiceError> {
        self.inner.groups.key_state(group)
    }
}
