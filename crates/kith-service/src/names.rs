//! Names: register, resolve, pin, contacts, invites, safety numbers.
//!
//! The rules (what a valid claim is, who wins among answers) live in `kith-core`; this module owns
//! the policies around them: first resolution pins, a changed key is a conflict, claims are stored
//! before they are published and re-published before they expire.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use kith_core::{
    ClaimParams, Invite, NAME_REPLICAS, Name, NameRecord, NameRules, RecordError, dht, pow,
    select::{self, Answer, Verdict},
};
use kith_net::{RecordValidator, Validated};
use kith_store::{Contact, Pin};
use libp2p::{Multiaddr, PeerId, identity::PublicKey, multiaddr::Protocol};

use futures::future::BoxFuture;
use libp2p::identity::Keypair;

use crate::{
    Node, ServiceError,
    error::rfc3339,
    handles::{AddressBook, Events, Resolver},
    node::now_ms,
};

/// How long the last network answer for a name stands before a use of the name re-checks it in
/// the background (a send or resolution of a pinned name answers from the pin either way); the
/// default of [`crate::Options::name_recheck_every`].
pub(crate) const PIN_RECHECK: Duration = Duration::from_secs(60);

/// Most names whose last network answer, or last check time, is kept in memory; past it the
/// oldest are forgotten (a forgotten name answers from its pin and is checked again).
const MAX_KNOWN: usize = 4096;

/// Most verified name records remembered by their bytes. Every holder of a name returns the same
/// bytes, so one signature check serves all of them.
const MAX_VERIFIED: usize = 1024;

/// The names component: owns the names book (`own_names`, `pins`, `contacts`), the
/// [`NameCache`] and every name operation, local (contacts, own claims) and on the network
/// (register, resolve, publish, release, invites, [`Names::resolve_recipient`]). `Node`'s name
/// operations are one-line delegations to it, and the other components resolve recipients through
/// it as their [`Resolver`] handle. It writes addresses it learns (from a record or an invite)
/// through the [`AddressBook`] and tells API clients of key changes through [`Events`]. A cheap
/// clone: a background check holds a weak reference to the shared part, never the node.
#[derive(Clone)]
pub(crate) struct Names {
    shared: Arc<Shared>,
}

struct Shared {
    store: kith_store::Store,
    client: kith_net::Client,
    keypair: Keypair,
    me: PeerId,
    rules: NameRules,
    quorum: usize,
    recheck_every: Duration,
    /// Conflicts, last answers, verified records.
    cache: NameCache,
    events: Arc<dyn Events>,
    addresses: Arc<dyn AddressBook>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names").finish_non_exhaustive()
    }
}

/// What the names component is built from (node.rs gathers it).
pub(crate) struct NamesParts {
    /// The node's store; the component writes only the names book.
    pub(crate) store: kith_store::Store,
    /// The network: DHT gets and puts, our addresses, a dial to an invite's address.
    pub(crate) client: kith_net::Client,
    /// Our identity: signs claims, makes safety numbers.
    pub(crate) keypair: Keypair,
    /// The network's name rules.
    pub(crate) rules: NameRules,
    /// [`crate::Options::resolve_quorum`].
    pub(crate) quorum: usize,
    /// [`crate::Options::name_recheck_every`].
    pub(crate) recheck_every: Duration,
    /// The cache made before the network, whose validator the network already runs.
    pub(crate) cache: NameCache,
    /// Key changes found in the background, for API clients.
    pub(crate) events: Arc<dyn Events>,
    /// Where the addresses of a record or an invite are remembered.
    pub(crate) addresses: Arc<dyn AddressBook>,
}

impl Names {
    /// The component over `parts`.
    pub(crate) fn new(parts: NamesParts) -> Self {
        let me = parts.keypair.public().to_peer_id();
        Self {
            shared: Arc::new(Shared {
                store: parts.store,
                client: parts.client,
                keypair: parts.keypair,
                me,
                rules: parts.rules,
                quorum: parts.quorum,
                recheck_every: parts.recheck_every,
                cache: parts.cache,
                events: parts.events,
                addresses: parts.addresses,
            }),
        }
    }

    /// The routing table's size now (0 when the network cannot say).
    pub(crate) async fn routing_table(&self) -> usize {
        self.shared
            .client
            .status()
            .await
            .map_or(0, |s| s.routing_table_peers)
    }

    /// Our own claims as stored (expired ones included, for renewal).
    pub(crate) fn own_names(&self) -> Result<Vec<NameRecord>, ServiceError> {
        Ok(self
            .shared
            .store
            .names()
            .list_own()?
            .into_iter()
            .filter_map(|(_, bytes)| NameRecord::verify_own(&bytes, &self.shared.rules).ok())
            .collect())
    }

    /// How many claims we hold (valid or not), for the status and the re-publish check.
    pub(crate) fn owned_count(&self) -> Result<usize, ServiceError> {
        Ok(self.shared.store.names().list_own()?.len())
    }

    /// Every contact, by petname.
    pub(crate) fn contacts(&self) -> Result<Vec<Contact>, ServiceError> {
        Ok(self.shared.store.names().contacts()?)
    }

    /// Removes a contact and makes that durable.
    pub(crate) async fn remove_contact(&self, petname: &str) -> Result<(), ServiceError> {
        let key = petname_key(petname)?;
        if !self.shared.store.names().remove_contact(&key)? {
            return Err(ServiceError::NoSuchContact(petname.to_owned()));
        }
        self.shared.store.flush().await?;
        Ok(())
    }
}

/// The other components resolve recipients through the names component itself.
impl Resolver for Names {
    fn resolve<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<PeerId, ServiceError>> {
        Box::pin(self.resolve_recipient(target))
    }

    fn key_bundle(&self, value: &[u8], peer: &PeerId) -> Option<kith_crypto::KeyBundle> {
        let bytes = dht::key_bundle_bytes(value).ok()?;
        self.shared.cache.verified.key_bundle(&bytes, peer).ok()
    }
}

/// What the node knows about names between lookups: conflicts found on pinned names, the last
/// network answer for each name, and when each was last checked. Resolutions and sends of a
/// pinned name answer from here and the pin with no network call; a key change found by a lookup
/// (explicit, forced or in the background) is kept here and refused on every later use until a
/// lookup finds the pinned key again.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    conflicts: std::sync::Mutex<HashMap<String, Conflict>>,
    checked: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    known: std::sync::Mutex<HashMap<String, Known>>,
    verified: Arc<VerifiedRecords>,
}

/// A pinned name that now resolves to another key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conflict {
    pinned: PeerId,
    pinned_since: String,
    found: PeerId,
}

/// The last network answer for a name: what a warm resolution repeats.
#[derive(Debug, Clone)]
struct Known {
    record: NameRecord,
    holders: usize,
    replicas: usize,
    rivals: Vec<(PeerId, usize)>,
    checked_at_ms: u64,
}

fn guard<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NameCache {
    fn conflict(&self, name: &str) -> Option<ServiceError> {
        guard(&self.conflicts)
            .get(name)
            .map(|c| ServiceError::NameConflict {
                name: name.to_owned(),
                pinned: c.pinned,
                pinned_since: c.pinned_since.clone(),
                found: c.found,
                contested: false,
            })
    }

    /// Records a key change; true when it is news (not already recorded the same way), so the
    /// caller tells API clients once per change rather than once per check.
    fn set_conflict(&self, name: &str, conflict: Conflict) -> bool {
        guard(&self.conflicts).insert(name.to_owned(), conflict.clone()) != Some(conflict)
    }

    fn clear_conflict(&self, name: &str) {
        guard(&self.conflicts).remove(name);
    }

    /// Whether a background check of `name` is due now, `every` after the last lookup or check
    /// (and marks it as started).
    fn check_due(&self, name: &str, every: Duration) -> bool {
        let mut checked = guard(&self.checked);
        let now = std::time::Instant::now();
        match checked.get(name) {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                if checked.len() >= MAX_KNOWN {
                    checked.retain(|_, at| now.duration_since(*at) < every);
                }
                checked.insert(name.to_owned(), now);
                true
            }
        }
    }

    /// Remembers a network answer; it also counts as a check, so a warm use right after a cold
    /// one does not ask the network again.
    fn remember(&self, name: &str, known: Known) {
        {
            let mut checked = guard(&self.checked);
            if checked.len() >= MAX_KNOWN {
                checked.clear();
            }
            checked.insert(name.to_owned(), std::time::Instant::now());
        }
        let mut map = guard(&self.known);
        if map.len() >= MAX_KNOWN && !map.contains_key(name) {
            let oldest = map
                .iter()
                .min_by_key(|(_, k)| k.checked_at_ms)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(name.to_owned(), known);
    }

    /// The last network answer for `name` if it is still the pinned owner's and unexpired.
    fn known(&self, name: &str, owner: &PeerId, now_ms: u64) -> Option<Known> {
        guard(&self.known)
            .get(name)
            .filter(|k| k.record.peer_id() == *owner && !k.record.is_expired(now_ms))
            .cloned()
    }

    /// The validator the network event loop runs on DHT values, sharing this cache's memory of
    /// verified records.
    pub(crate) fn validator(&self, rules: NameRules) -> Arc<dyn RecordValidator> {
        Arc::new(NameValidator {
            rules,
            verified: self.verified.clone(),
        })
    }
}

/// Name records already verified, by the BLAKE3 hash of their exact bytes. A resolution receives
/// the same record from every holder of every replica key, and the event loop checks each answer
/// before the resolver reads it; with this, a signature and proof of work are checked once per
/// distinct record instead of twice per answer. Only the expiry depends on the time in a way that
/// can turn a pass into a failure (the clock-skew and lifetime bounds only loosen as time goes
/// on), so a remembered record is checked for expiry again on every use.
///
/// Key bundles are remembered the same way, by the hash of the peer id and the bytes: a first
/// message's bundle lookup gets the same bundle from several holders, and holders check it again
/// on every store. A bundle's check does not depend on the time, so a remembered pass stays one.
#[derive(Debug, Default)]
pub(crate) struct VerifiedRecords {
    records: std::sync::Mutex<HashMap<[u8; 32], NameRecord>>,
    bundles: std::sync::Mutex<HashMap<[u8; 32], VerifiedBundle>>,
}

/// A key bundle that passed its check: for whom, its exact bytes, and the bundle.
type VerifiedBundle = (PeerId, Vec<u8>, kith_crypto::KeyBundle);

impl VerifiedRecords {
    /// [`NameRecord::verify`], answered from memory for bytes verified before under `rules`
    /// (every caller passes the node's own rules).
    fn verify(
        &self,
        bytes: &[u8],
        rules: &NameRules,
        now_ms: u64,
    ) -> Result<NameRecord, RecordError> {
        if bytes.len() > rules.max_record_bytes {
            return Err(RecordError::TooLarge {
                size: bytes.len(),
                max: rules.max_record_bytes,
            });
        }
        let digest = *blake3::hash(bytes).as_bytes();
        if let Some(record) = guard(&self.records).get(&digest)
            && record.to_bytes() == bytes
        {
            if record.is_expired(now_ms) {
                return Err(RecordError::Expired {
                    expires_at_ms: record.params().expires_at_ms,
                });
            }
            return Ok(record.clone());
        }
        let record = NameRecord::verify(bytes, rules, now_ms)?;
        remember_bounded(&self.records, digest, record.clone());
        Ok(record)
    }

    /// [`kith_crypto::KeyBundle::verify`] for `peer`, answered from memory for a bundle verified
    /// before for the same peer. The event loop's validator checks a bundle as it arrives from
    /// the DHT, so the direct-message component, reading the same answer next, finds it here.
    pub(crate) fn key_bundle(
        &self,
        bytes: &[u8],
        peer: &PeerId,
    ) -> Result<kith_crypto::KeyBundle, String> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&peer.to_bytes());
        hasher.update(bytes);
        let digest = *hasher.finalize().as_bytes();
        if let Some((seen_peer, seen, bundle)) = guard(&self.bundles).get(&digest)
            && seen_peer == peer
            && seen.as_slice() == bytes
        {
            return Ok(bundle.clone());
        }
        let bundle = kith_crypto::KeyBundle::verify(bytes, peer).map_err(|e| e.to_string())?;
        remember_bounded(
            &self.bundles,
            digest,
            (*peer, bytes.to_vec(), bundle.clone()),
        );
        Ok(bundle)
    }

    /// [`VerifiedRecords::key_bundle`]'s creation time (unix ms), as the DHT's rules take it.
    fn verify_bundle(&self, bytes: &[u8], peer: &PeerId) -> Result<u64, String> {
        self.key_bundle(bytes, peer).map(|b| b.created_at_ms())
    }
}

/// Adds a passed check to one of [`VerifiedRecords`]' memories, which start again empty when they
/// reach [`MAX_VERIFIED`] entries: one bound for records and bundles alike.
fn remember_bounded<V>(
    memory: &std::sync::Mutex<HashMap<[u8; 32], V>>,
    digest: [u8; 32],
    value: V,
) {
    let mut memory = guard(memory);
    if memory.len() >= MAX_VERIFIED {
        memory.clear();
    }
    memory.insert(digest, value);
}

/// Most addresses put in a name record or an invite.
const MAX_ADDRS: usize = 8;

/// Holders' and resolvers' rules for DHT values, plugged into the network event loop: an adapter
/// from kith-net's [`RecordValidator`] to [`kith_core::dht`], which holds the rules, with the
/// node's clock, kith-crypto's key-bundle check and the memory of verified name records.
#[derive(Debug, Clone)]
pub(crate) struct NameValidator {
    pub(crate) rules: NameRules,
    verified: Arc<VerifiedRecords>,
}

impl dht::Verifiers for NameValidator {
    fn key_bundle(&self, signed_bundle: &[u8], peer: &PeerId) -> Result<u64, String> {
        self.verified.verify_bundle(signed_bundle, peer)
    }

    fn name_record(&self, value: &[u8], rules: &NameRules, now_ms: u64) -> dht::NameCheck {
        self.verified.verify(value, rules, now_ms)
    }
}

impl RecordValidator for NameValidator {
    fn validate(&self, key: &[u8], value: &[u8]) -> Result<Validated, String> {
        let valid =
            dht::validate(key, value, &self.rules, now_ms(), self).map_err(|e| e.to_string())?;
        Ok(Validated {
            class: valid.owner.to_bytes(),
            expires: Some(UNIX_EPOCH + Duration::from_millis(valid.expires_at_ms)),
        })
    }

    fn may_replace(&self, _key: &[u8], stored: &[u8], incoming: &[u8]) -> bool {
        dht::may_replace(stored, incoming, &self.rules, now_ms(), self)
    }
}

/// The outcome of [`Node::register_name`].
#[derive(Debug, Clone)]
pub struct Registration {
    /// The signed claim now in force.
    pub record: NameRecord,
    /// True when this renewed an existing claim (same proof of work, higher seq).
    pub renewed: bool,
    /// True when at least one DHT peer took the record; false when the node has no peers yet (it
    /// is stored and re-published once it has).
    pub published: bool,
}

/// The outcome of [`Node::resolve_name`] and [`Node::resolve_name_fresh`].
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The owner: the pinned key, which every answer agrees with (or it would be a conflict).
    pub peer_id: PeerId,
    /// The owner's claim as the DHT returned it: from this lookup, or from this node's last
    /// lookup of the name when answered from memory. `None` when answered from a pin alone (made
    /// by an invite, or before this node last started) until a background check fetches it.
    pub record: Option<NameRecord>,
    /// When the name was pinned to this owner (unix ms).
    pub pinned_at_ms: u64,
    /// When the owner claimed the name (unix ms; 0 for a pin made from an invite and not looked
    /// up since).
    pub claimed_at_ms: u64,
    /// True when this resolution created the pin.
    pub newly_pinned: bool,
    /// Distinct holders that returned this owner, over all replica keys, at the lookup this
    /// answer rests on (0 when answered from a pin alone).
    pub holders: usize,
    /// Replica keys (of [`NAME_REPLICAS`]) where this owner was the answer most holders gave.
    pub replicas: usize,
    /// Other owners some holders returned, with their distinct holders (ignored; a sign of an
    /// attack or a stale holder).
    pub rivals: Vec<(PeerId, usize)>,
    /// Where the answer came from.
    pub source: ResolvedFrom,
    /// When the DHT last confirmed this owner (unix ms), if it has since this node started.
    pub checked_at_ms: Option<u64>,
}

/// Where a [`Resolution`] came from: a user is told whether the network was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedFrom {
    /// A DHT lookup made for this call.
    Network,
    /// The pin and this node's last lookup of the name (no network call; re-checked in the
    /// background at most once a minute).
    Cache,
    /// The pin alone (no network call; the claim's details arrive with the background check).
    Pin,
}

impl ResolvedFrom {
    /// The word the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedFrom::Network => "network",
            ResolvedFrom::Cache => "cache",
            ResolvedFrom::Pin => "pin",
        }
    }
}

/// What the node learned about a name on its own (a background check), pushed to API clients.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NameEvent {
    /// A lookup found a pinned name held by another key (refused from now on, until a lookup
    /// finds the pinned key again), or contested with no owner holding a majority of its keys
    /// (the pin still answers: nothing says the owner changed).
    Conflict {
        /// The name.
        name: String,
        /// The pinned key.
        pinned: PeerId,
        /// When the pinned owner claimed it (RFC 3339).
        pinned_since: String,
        /// The other key the DHT returns.
        found: PeerId,
        /// True for a contest (no majority), false for a clear new owner.
        contested: bool,
    },
}

/// A proof of work the client computed itself (so it can show progress).
#[derive(Debug, Clone, Copy)]
pub struct SuppliedPow {
    /// The claim time the work covers, unix ms.
    pub created_at_ms: u64,
    /// The nonce.
    pub nonce: u64,
}

/// Who a safety number is for.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Their peer id.
    pub peer_id: PeerId,
    /// The 60-digit safety number.
    pub safety_number: String,
}

impl Names {
    /// Claims `name` for this node's key, or renews our existing claim.
    ///
    /// Fails with [`ServiceError::NameTaken`] when the DHT holds a valid claim by another key. The
    /// claim is stored and flushed before it is published, so it survives a crash and is
    /// re-published on the next start.
    pub(crate) async fn register_name(
        &self,
        name: &str,
        supplied: Option<SuppliedPow>,
    ) -> Result<Registration, ServiceError> {
        let name = Name::parse(name)?;
        let rules = self.shared.rules.clone();
        let me = self.shared.me;
        let own = match self.shared.store.names().get_own(name.as_str())? {
            Some(bytes) => NameRecord::verify_own(&bytes, &rules).ok(),
            None => None,
        };
        let verdict = match self.lookup(&name).await {
            Ok(verdict) => verdict,
            // Alone on the network: nobody to ask, nobody to conflict with yet.
            Err(ServiceError::Request(kith_net::RequestError::NoKnownPeers)) => None,
            Err(e) => return Err(e),
        };
        let current = match verdict {
            None => None,
            Some(Verdict::Owner { selected, .. }) if selected.record.peer_id() == me => {
                Some(selected)
            }
            Some(Verdict::Owner { selected, .. }) => {
                return Err(ServiceError::NameTaken {
                    name: name.to_string(),
                    holder: selected.record.peer_id(),
                    since: rfc3339(selected.record.params().created_at_ms),
                });
            }
            // Someone else claims it at some replicas: not free to take, even if we are one of
            // the claimants (renewing our own claim goes through `own` below).
            Some(Verdict::Contested { contestants }) => {
                let other = contestants.iter().find(|c| c.record.peer_id() != me);
                if let Some(other) = other
                    && own.is_none()
                {
                    return Err(ServiceError::NameTaken {
                        name: name.to_string(),
                        holder: other.record.peer_id(),
                        since: rfc3339(other.record.params().created_at_ms),
                    });
                }
                None
            }
        };
        let previous_seq = own
            .iter()
            .chain(current.iter().map(|c| &c.record))
            .map(|r| r.params().seq)
            .max();
        let (created_at_ms, nonce, renewed) = match (&own, &current) {
            (Some(own), _) => (own.params().created_at_ms, own.params().pow_nonce, true),
            (None, Some(ours)) => (
                ours.record.params().created_at_ms,
                ours.record.params().pow_nonce,
                true,
            ),
            (None, None) => {
                let (created_at_ms, nonce) = self.proof_of_work(&name, supplied).await?;
                (created_at_ms, nonce, false)
            }
        };
        let record = self
            .sign_claim(
                &name,
                created_at_ms,
                nonce,
                previous_seq.map_or(1, |s| s + 1),
            )
            .await?;
        self.shared
            .store
            .names()
            .put_own(name.as_str(), record.to_bytes())?;
        self.shared.store.flush().await?;
        let published = self.publish(&record).await;
        Ok(Registration {
            record,
            renewed,
            published,
        })
    }

    async fn proof_of_work(
        &self,
        name: &Name,
        supplied: Option<SuppliedPow>,
    ) -> Result<(u64, u64), ServiceError> {
        let difficulty = self.shared.rules.difficulty;
        let peer = self.shared.me.to_bytes();
        if let Some(s) = supplied {
            let skew = u64::try_from(self.shared.rules.max_clock_skew.as_millis()).unwrap_or(0);
            if s.created_at_ms > now_ms() + skew
                || !pow::verify(name.as_str(), &peer, s.created_at_ms, s.nonce, difficulty)
            {
                return Err(ServiceError::BadProofOfWork(name.to_string()));
            }
            return Ok((s.created_at_ms, s.nonce));
        }
        let created_at_ms = now_ms();
        let text = name.as_str().to_owned();
        let nonce = tokio::task::spawn_blocking(move || {
            pow::solve(&text, &peer, created_at_ms, difficulty, |_| {
                ControlFlow::Continue(())
            })
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
        .ok_or_else(|| ServiceError::Task("proof of work found no nonce".into()))?;
        Ok((created_at_ms, nonce))
    }

    async fn sign_claim(
        &self,
        name: &Name,
        created_at_ms: u64,
        pow_nonce: u64,
        seq: u64,
    ) -> Result<NameRecord, ServiceError> {
        let ttl = u64::try_from(self.shared.rules.max_ttl.as_millis()).unwrap_or(u64::MAX);
        let addrs = self.advertised_addrs().await;
        Ok(NameRecord::sign(
            &self.shared.keypair,
            ClaimParams {
                name: name.clone(),
                created_at_ms,
                seq,
                expires_at_ms: now_ms().saturating_add(ttl),
                pow_nonce,
                addrs,
            },
        )?)
    }

    /// Addresses worth telling others: confirmed external ones first, then dialable listeners.
    pub(crate) async fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let Ok(status) = self.shared.client.status().await else {
            return Vec::new();
        };
        status
            .external_addrs
            .into_iter()
            .chain(status.listen_addrs)
            .filter(crate::node::is_dialable)
            .take(MAX_ADDRS)
            .collect()
    }

    /// Puts a record into the DHT under every replica key of its name, all at once; returns
    /// whether any peer took it at any replica.
    async fn publish(&self, record: &NameRecord) -> bool {
        let expires = UNIX_EPOCH + Duration::from_millis(record.params().expires_at_ms);
        let puts = record.name().replica_keys().into_iter().map(|key| {
            self.shared
                .client
                .put_record(key, record.to_bytes().to_vec(), Some(expires))
        });
        let results = futures::future::join_all(puts).await;
        let taken = results.iter().filter(|r| r.is_ok()).count();
        if taken < results.len() {
            let error = results.into_iter().find_map(Result::err);
            tracing::info!(
                name = %record.name(),
                taken,
                replicas = NAME_REPLICAS,
                error = ?error,
                "name stored locally; replicas nobody took are published again with the next re-publish"
            );
        }
        taken > 0
    }

    /// Asks the DHT who holds `name`: every replica key at once, each walk stopping once
    /// `resolve_quorum` holders agree, then [`select::decide`] across replicas. When any holder
    /// returned another owner, every replica is asked again with no early stop, so the nodes
    /// closest to a key (which answer first, and which an attacker can place there by generating
    /// ids) cannot decide a disputed name on their own.
    async fn lookup(&self, name: &Name) -> Result<Option<Verdict>, ServiceError> {
        let quorum = self.shared.quorum;
        let fast = select::decide(&self.ask_replicas(name, quorum).await?, NAME_REPLICAS);
        if !fast.as_ref().is_some_and(Verdict::disputed) || quorum == usize::MAX {
            return Ok(fast);
        }
        tracing::info!(%name, "holders disagree on the owner; asking every replica without stopping early");
        match self.ask_replicas(name, usize::MAX).await {
            Ok(full) => Ok(select::decide(&full, NAME_REPLICAS).or(fast)),
            Err(e) => {
                tracing::info!(%name, error = %e, "the full lookup failed; deciding on the first answers");
                Ok(fast)
            }
        }
    }

    /// One GET per replica key of `name`, concurrently; the valid answers per replica (a replica
    /// whose GET failed has none) from the holders that count ([`select::admit`]: each key's
    /// closest holders, a cluster implausibly close to the key counted only as far as the
    /// network's density allows). Fails only if every GET failed.
    pub(crate) async fn ask_replicas(
        &self,
        name: &Name,
        quorum: usize,
    ) -> Result<Vec<Vec<Answer>>, ServiceError> {
        let keys = name.replica_keys();
        let gets = keys
            .iter()
            .map(|key| self.shared.client.get_record(key.clone(), quorum));
        let results = futures::future::join_all(gets).await;
        let rules = &self.shared.rules;
        let verified = &self.shared.cache.verified;
        let now = now_ms();
        let mut replicas = Vec::with_capacity(results.len());
        let mut first_error = None;
        let mut answered = false;
        let mut table_estimate = None;
        for result in results {
            let answers = match result {
                Ok(result) => {
                    answered = true;
                    table_estimate = table_estimate.max(result.network_size);
                    result.answers
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    Vec::new()
                }
            };
            replicas.push(
                answers
                    .into_iter()
                    .filter_map(|a| {
                        verified
                            .verify(&a.value, rules, now)
                            .ok()
                            .filter(|r| r.name() == name)
                            .map(|record| Answer {
                                holder: a.holder,
                                record,
                            })
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(e) = first_error
            && !answered
        {
            return Err(e.into());
        }
        let network_size = network_size(table_estimate, &replicas);
        Ok(keys
            .iter()
            .zip(replicas)
            .map(|(key, answers)| select::admit(key, answers, network_size))
            .collect())
    }

    /// Resolves a name to its owner, pinning the first answer.
    ///
    /// A pinned name answers from the pin and this node's last lookup of it, with no network
    /// call, and the DHT is asked again in the background at most once a minute; a key change
    /// that check finds is [`ServiceError::NameConflict`] from the next call on (and a
    /// [`NameEvent::Conflict`]). A name never resolved here is looked up now. Use
    /// [`Names::resolve_name_fresh`] to ask the network now.
    pub(crate) async fn resolve_name(&self, name: &str) -> Result<Resolution, ServiceError> {
        let name = Name::parse(name)?;
        match self.answer_locally(&name) {
            Ok(Some(resolution)) => {
                self.recheck_in_background(&name);
                Ok(resolution)
            }
            Ok(None) => self.resolve_on_network(&name).await,
            Err(e) => {
                // A conflict found earlier: a later check may find the pinned key again.
                self.recheck_in_background(&name);
                Err(e)
            }
        }
    }

    /// Resolves a name through the DHT now, whatever is pinned or remembered, and pins the first
    /// answer. A key different from the pinned one is [`ServiceError::NameConflict`] (kept, and
    /// refused by later calls); finding the pinned key again clears an earlier conflict.
    pub(crate) async fn resolve_name_fresh(&self, name: &str) -> Result<Resolution, ServiceError> {
        let name = Name::parse(name)?;
        self.resolve_on_network(&name).await
    }

    /// The answer for a pinned name from the store and memory: `Ok(None)` when the name is not
    /// pinned, the recorded conflict when a lookup found another key.
    fn answer_locally(&self, name: &Name) -> Result<Option<Resolution>, ServiceError> {
        if let Some(conflict) = self.shared.cache.conflict(name.as_str()) {
            return Err(conflict);
        }
        let Some(pin) = self.shared.store.names().pin(name.as_str())? else {
            return Ok(None);
        };
        let owner = peer_from_bytes(&pin.peer_id)?;
        Ok(Some(
            match self.shared.cache.known(name.as_str(), &owner, now_ms()) {
                Some(known) => Resolution {
                    peer_id: owner,
                    claimed_at_ms: known.record.params().created_at_ms,
                    record: Some(known.record),
                    pinned_at_ms: pin.pinned_at_ms,
                    newly_pinned: false,
                    holders: known.holders,
                    replicas: known.replicas,
                    rivals: known.rivals,
                    source: ResolvedFrom::Cache,
                    checked_at_ms: Some(known.checked_at_ms),
                },
                None => Resolution {
                    peer_id: owner,
                    record: None,
                    pinned_at_ms: pin.pinned_at_ms,
                    claimed_at_ms: pin.claimed_at_ms,
                    newly_pinned: false,
                    holders: 0,
                    replicas: 0,
                    rivals: Vec::new(),
                    source: ResolvedFrom::Pin,
                    checked_at_ms: None,
                },
            },
        ))
    }

    /// Asks the DHT about a name in a task of its own, unless it was asked within the last
    /// minute ([`crate::Options::name_recheck_every`]). What it finds is remembered: a key change is
    /// refused from the next use on and pushed to API clients. Holds only a weak reference to the
    /// component, so it never keeps a stopped node alive.
    fn recheck_in_background(&self, name: &Name) {
        let every = self.shared.recheck_every;
        if !self.shared.cache.check_due(name.as_str(), every) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let name = name.clone();
        tokio::spawn(async move {
            let Some(shared) = weak.upgrade() else { return };
            if let Err(e) = (Names { shared }).resolve_on_network(&name).await {
                tracing::debug!(%name, error = %e, "background check of a pinned name");
            }
        });
    }

    /// The DHT lookup behind every resolution that is not answered locally: decide, pin the first
    /// answer, record conflicts (and tell API clients), remember the answer.
    async fn resolve_on_network(&self, name: &Name) -> Result<Resolution, ServiceError> {
        let (selected, replicas) = match self.lookup(name).await? {
            None => return Err(ServiceError::NameNotFound(name.to_string())),
            Some(Verdict::Owner { selected, replicas }) => (selected, replicas),
            Some(Verdict::Contested { contestants }) => {
                let error = self.contested(name, &contestants)?;
                if let ServiceError::NameConflict {
                    pinned,
                    pinned_since,
                    found,
                    ..
                } = &error
                    && self.shared.store.names().pin(name.as_str())?.is_some()
                {
                    self.shared
                        .events
                        .emit(crate::MessageEvent::Name(NameEvent::Conflict {
                            name: name.to_string(),
                            pinned: *pinned,
                            pinned_since: pinned_since.clone(),
                            found: *found,
                            contested: true,
                        }));
                }
                return Err(error);
            }
        };
        let found = selected.record.peer_id();
        let (pin, candidate) = self.pin_if_absent(
            name,
            found,
            selected.record.public_key(),
            selected.record.params().created_at_ms,
        )?;
        if pin.peer_id != candidate.peer_id {
            let pinned =
                PeerId::from_bytes(&pin.peer_id).map_err(|e| kith_store::StoreError::Corrupt {
                    tree: "pins",
                    reason: e.to_string(),
                })?;
            let conflict = Conflict {
                pinned,
                pinned_since: rfc3339(pin.claimed_at_ms),
                found,
            };
            if self
                .shared
                .cache
                .set_conflict(name.as_str(), conflict.clone())
            {
                tracing::warn!(%name, %pinned, %found, "a pinned name is held by another key now");
                self.shared
                    .events
                    .emit(crate::MessageEvent::Name(NameEvent::Conflict {
                        name: name.to_string(),
                        pinned,
                        pinned_since: conflict.pinned_since.clone(),
                        found,
                        contested: false,
                    }));
            }
            return Err(ServiceError::NameConflict {
                name: name.to_string(),
                pinned: conflict.pinned,
                pinned_since: conflict.pinned_since,
                found,
                contested: false,
            });
        }
        self.shared.cache.clear_conflict(name.as_str());
        let newly_pinned = pin.pinned_at_ms == candidate.pinned_at_ms;
        if newly_pinned {
            // The answer does not wait for the disk (a flush took up to 7 ms of a 20 ms cold
            // resolution): a pin lost to a crash in the next moment is made again by the next
            // resolution, from the same network answer; a clean shutdown flushes.
            let store = self.shared.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.flush().await {
                    tracing::warn!(error = %e, "could not flush a new name pin");
                }
            });
        }
        // Remember where the owner can be reached.
        for addr in selected.record.params().addrs.iter().rev() {
            let _ = self.shared.addresses.record_addr(&found, addr);
        }
        let checked_at_ms = now_ms();
        self.shared.cache.remember(
            name.as_str(),
            Known {
                record: selected.record.clone(),
                holders: selected.holders,
                replicas,
                rivals: selected.rivals.clone(),
                checked_at_ms,
            },
        );
        Ok(Resolution {
            peer_id: found,
            claimed_at_ms: selected.record.params().created_at_ms,
            record: Some(selected.record),
            pinned_at_ms: pin.pinned_at_ms,
            newly_pinned,
            holders: selected.holders,
            replicas,
            rivals: selected.rivals,
            source: ResolvedFrom::Network,
            checked_at_ms: Some(checked_at_ms),
        })
    }

    /// Pins `name` to `owner` (its key, claimed at `claimed_at_ms`, 0 when unknown) unless it is
    /// pinned already: the pin in force and the one offered (equal ids: ours was taken or
    /// already there).
    fn pin_if_absent(
        &self,
        name: &Name,
        owner: PeerId,
        public_key: &PublicKey,
        claimed_at_ms: u64,
    ) -> Result<(Pin, Pin), ServiceError> {
        let candidate = Pin {
            peer_id: owner.to_bytes(),
            public_key: public_key.encode_protobuf(),
            pinned_at_ms: now_ms(),
            claimed_at_ms,
        };
        let pin = self
            .shared
            .store
            .names()
            .pin_if_absent(name.as_str(), &candidate)?;
        Ok((pin, candidate))
    }

    /// The conflict for a name no owner won a majority of replicas for: against our pin if we
    /// have one, else between the two strongest claimants. Nothing is pinned.
    fn contested(
        &self,
        name: &Name,
        contestants: &[select::Standing],
    ) -> Result<ServiceError, ServiceError> {
        let pin = self.shared.store.names().pin(name.as_str())?;
        let (pinned, pinned_since) = match &pin {
            Some(pin) => (peer_from_bytes(&pin.peer_id)?, pin.claimed_at_ms),
            None => match contestants.first() {
                Some(c) => (c.record.peer_id(), c.record.params().created_at_ms),
                None => return Ok(ServiceError::NameNotFound(name.to_string())),
            },
        };
        let found = contestants
            .iter()
            .map(|c| c.record.peer_id())
            .find(|p| *p != pinned)
            .unwrap_or(pinned);
        tracing::warn!(%name, %pinned, %found, "name contested: no owner holds a majority of its replica keys");
        Ok(ServiceError::NameConflict {
            name: name.to_string(),
            pinned,
            pinned_since: rfc3339(pinned_since),
            found,
            contested: true,
        })
    }

    /// Gives up a name: publishes a final version that expires within a minute (holders then let
    /// anyone claim it) and stops renewing it.
    pub(crate) async fn release_name(&self, name: &str) -> Result<NameRecord, ServiceError> {
        let name = Name::parse(name)?;
        let Some(bytes) = self.shared.store.names().get_own(name.as_str())? else {
            return Err(ServiceError::NotOurName(name.to_string()));
        };
        let own = NameRecord::verify_own(&bytes, &self.shared.rules)?;
        let mut params = own.params().clone();
        params.seq += 1;
        params.expires_at_ms = now_ms() + 60_000;
        params.addrs.clear();
        let last = NameRecord::sign(&self.shared.keypair, params)?;
        self.shared.store.names().remove_own(name.as_str())?;
        self.shared.store.flush().await?;
        self.publish(&last).await;
        Ok(last)
    }

    /// Re-publishes every claim we own, renewing those that expire within half their lifetime.
    /// Runs at start and periodically; returns how many claims went out.
    pub(crate) async fn republish_names(&self) -> Result<usize, ServiceError> {
        let now = now_ms();
        let half_ttl = u64::try_from(self.shared.rules.max_ttl.as_millis() / 2).unwrap_or(u64::MAX);
        let mut published = 0;
        for record in self.own_names()? {
            let params = record.params();
            let record = if params.expires_at_ms.saturating_sub(now) < half_ttl {
                let renewed = self
                    .sign_claim(
                        record.name(),
                        params.created_at_ms,
                        params.pow_nonce,
                        params.seq + 1,
                    )
                    .await?;
                self.shared
                    .store
                    .names()
                    .put_own(renewed.name().as_str(), renewed.to_bytes())?;
                self.shared.store.flush().await?;
                tracing::info!(name = %renewed.name(), "renewed name claim");
                renewed
            } else {
                record
            };
            if self.publish(&record).await {
                published += 1;
            }
        }
        Ok(published)
    }

    /// Adds a contact under `petname` for `target` (a name, resolved and pinned, or a peer id).
    pub(crate) async fn add_contact(
        &self,
        petname: &str,
        target: &str,
    ) -> Result<Contact, ServiceError> {
        let key = petname_key(petname)?;
        if let Some(existing) = self.shared.store.names().contact(&key)? {
            return Err(ServiceError::PetnameTaken {
                petname: petname.to_owned(),
                peer: peer_from_bytes(&existing.peer_id)?,
            });
        }
        let (peer, name, addrs) = match target.parse::<PeerId>() {
            Ok(peer) => (peer, String::new(), Vec::new()),
            Err(_) => {
                let resolution = self.resolve_name(target).await?;
                let name = Name::parse(target)?.to_string();
                let addrs = resolution
                    .record
                    .iter()
                    .flat_map(|r| r.params().addrs.iter().map(|a| a.to_vec()))
                    .collect();
                (resolution.peer_id, name, addrs)
            }
        };
        let contact = Contact {
            petname: key,
            peer_id: peer.to_bytes(),
            name,
            added_at_ms: now_ms(),
            addrs,
        };
        self.shared.store.names().put_contact(&contact)?;
        self.shared.store.flush().await?;
        Ok(contact)
    }

    /// Adds a contact from an invite link; pins the invite's name to its key (the friend handed it
    /// over directly, which is stronger evidence than any lookup).
    pub(crate) async fn add_invite(
        &self,
        link: &str,
        petname: Option<&str>,
    ) -> Result<Contact, ServiceError> {
        let invite = Invite::parse(link)?;
        let petname = match (petname, &invite.name) {
            (Some(p), _) => p.to_owned(),
            (None, Some(name)) => name.to_string(),
            (None, None) => invite.peer_id.to_string(),
        };
        let key = petname_key(&petname)?;
        if let Some(existing) = self.shared.store.names().contact(&key)?
            && existing.peer_id != invite.peer_id.to_bytes()
        {
            return Err(ServiceError::PetnameTaken {
                petname,
                peer: peer_from_bytes(&existing.peer_id)?,
            });
        }
        if let Some(name) = &invite.name {
            let public_key = public_key_of(&invite.peer_id)?;
            let (pin, candidate) = self.pin_if_absent(name, invite.peer_id, &public_key, 0)?;
            if pin.peer_id != candidate.peer_id {
                return Err(ServiceError::NameConflict {
                    name: name.to_string(),
                    pinned: peer_from_bytes(&pin.peer_id)?,
                    pinned_since: rfc3339(pin.claimed_at_ms),
                    found: invite.peer_id,
                    contested: false,
                });
            }
        }
        for addr in invite.addrs.iter().rev() {
            self.shared.addresses.record_addr(&invite.peer_id, addr)?;
        }
        let contact = Contact {
            petname: key,
            peer_id: invite.peer_id.to_bytes(),
            name: invite.name.map(|n| n.to_string()).unwrap_or_default(),
            added_at_ms: now_ms(),
            addrs: invite.addrs.iter().map(|a| a.to_vec()).collect(),
        };
        self.shared.store.names().put_contact(&contact)?;
        self.shared.store.flush().await?;
        if let Some(addr) = invite.addrs.first() {
            let _ = self
                .shared
                .client
                .dial(addr.clone().with(Protocol::P2p(invite.peer_id)))
                .await;
        }
        Ok(contact)
    }

    /// Finds who a recipient string means: a petname first, then a name, then a peer id.
    ///
    /// A petname, or a name pinned earlier, answers from the store with no network call (so a
    /// send to it works, and is queued, while the node has no peers); a pinned name is checked
    /// on the DHT again in the background at most once a minute, and a key change it finds is
    /// refused from the next call on. A name never resolved here is looked up (and pinned) now.
    pub(crate) async fn resolve_recipient(&self, target: &str) -> Result<PeerId, ServiceError> {
        if let Ok(key) = petname_key(target)
            && let Some(contact) = self.shared.store.names().contact(&key)?
        {
            return peer_from_bytes(&contact.peer_id);
        }
        if let Ok(name) = Name::parse(target) {
            let local = self.answer_locally(&name);
            if !matches!(local, Ok(None)) {
                self.recheck_in_background(&name);
            }
            if let Some(resolution) = local? {
                return Ok(resolution.peer_id);
            }
        }
        match self.resolve_name(target).await {
            Ok(resolution) => return Ok(resolution.peer_id),
            Err(ServiceError::NameNotFound(_) | ServiceError::InvalidName(_)) => {}
            Err(e) => return Err(e),
        }
        target
            .parse::<PeerId>()
            .map_err(|_| ServiceError::UnknownRecipient(target.to_owned()))
    }

    /// The safety number between us and `target` (petname, name or peer id).
    pub(crate) async fn verify(&self, target: &str) -> Result<Verification, ServiceError> {
        let peer = self.resolve_recipient(target).await?;
        let theirs = public_key_of(&peer)?;
        Ok(Verification {
            peer_id: peer,
            safety_number: kith_core::safety_number(&self.shared.keypair.public(), &theirs),
        })
    }

    /// An invite link for this node: our first name (if any), peer id and addresses.
    pub(crate) async fn invite(&self) -> Result<Invite, ServiceError> {
        let name = self
            .own_names()?
            .into_iter()
            .next()
            .map(|r| r.name().clone());
        Ok(Invite {
            peer_id: self.shared.me,
            name,
            addrs: self.advertised_addrs().await,
        })
    }
}

/// The name operations of the API: one-line delegations to the `Names` component.
impl Node {
    /// The network-wide name rules this node enforces.
    pub fn name_rules(&self) -> &NameRules {
        &self.inner.options.name_rules
    }

    /// Claims `name` for this node's key, or renews our existing claim (`Names::register_name`:
    /// [`ServiceError::NameTaken`] when the DHT holds another key's valid claim; stored and
    /// flushed before it is published).
    pub async fn register_name(
        &self,
        name: &str,
        supplied: Option<SuppliedPow>,
    ) -> Result<Registration, ServiceError> {
        self.inner.names.register_name(name, supplied).await
    }

    /// Resolves a name to its owner, pinning the first answer; a pinned name answers from the pin
    /// and is re-checked in the background (`Names::resolve_name`).
    pub async fn resolve_name(&self, name: &str) -> Result<Resolution, ServiceError> {
        self.inner.names.resolve_name(name).await
    }

    /// Resolves a name through the DHT now, whatever is pinned or remembered
    /// (`Names::resolve_name_fresh`).
    pub async fn resolve_name_fresh(&self, name: &str) -> Result<Resolution, ServiceError> {
        self.inner.names.resolve_name_fresh(name).await
    }

    /// Names this node owns, with their latest records (expired ones included).
    pub fn own_names(&self) -> Result<Vec<NameRecord>, ServiceError> {
        self.inner.names.own_names()
    }

    /// Gives up a name: a final version that expires within a minute (`Names::release_name`).
    pub async fn release_name(&self, name: &str) -> Result<NameRecord, ServiceError> {
        self.inner.names.release_name(name).await
    }

    /// Re-publishes every claim we own, renewing those past half their lifetime; returns how
    /// many claims went out.
    pub async fn republish_names(&self) -> Result<usize, ServiceError> {
        self.inner.names.republish_names().await
    }

    /// Adds a contact under `petname` for `target` (a name, resolved and pinned, or a peer id).
    pub async fn add_contact(&self, petname: &str, target: &str) -> Result<Contact, ServiceError> {
        self.inner.names.add_contact(petname, target).await
    }

    /// Adds a contact from an invite link, pinning the invite's name to its key.
    pub async fn add_invite(
        &self,
        link: &str,
        petname: Option<&str>,
    ) -> Result<Contact, ServiceError> {
        self.inner.names.add_invite(link, petname).await
    }

    /// Every contact.
    pub fn contacts(&self) -> Result<Vec<Contact>, ServiceError> {
        self.inner.names.contacts()
    }

    /// Removes a contact.
    pub async fn remove_contact(&self, petname: &str) -> Result<(), ServiceError> {
        self.inner.names.remove_contact(petname).await
    }

    /// Finds who a recipient string means: a petname first, then a name, then a peer id
    /// (`Names::resolve_recipient`).
    pub async fn resolve_recipient(&self, target: &str) -> Result<PeerId, ServiceError> {
        self.inner.names.resolve_recipient(target).await
    }

    /// The safety number between us and `target` (petname, name or peer id).
    pub async fn verify(&self, target: &str) -> Result<Verification, ServiceError> {
        self.inner.names.verify(target).await
    }

    /// An invite link for this node: our first name (if any), peer id and addresses.
    pub async fn invite(&self) -> Result<Invite, ServiceError> {
        self.inner.names.invite().await
    }
}

/// The network size the density check assumes: the routing table's estimate, but never fewer
/// nodes than answered (distinct holders over all replica keys, and ourselves). `None` when
/// neither says anything; then nothing is thinned.
fn network_size(table_estimate: Option<u64>, replicas: &[Vec<Answer>]) -> Option<f64> {
    let holders: std::collections::HashSet<PeerId> =
        replicas.iter().flatten().filter_map(|a| a.holder).collect();
    let seen = (!holders.is_empty()).then_some(holders.len() as u64 + 1);
    table_estimate.max(seen).map(|n| n as f64)
}

/// Petnames are matched case-insensitively: "Mum" and "mum" are the same contact.
fn petname_key(petname: &str) -> Result<String, ServiceError> {
    let trimmed = petname.trim();
    let len = trimmed.chars().count();
    if len == 0 || len > 64 || trimmed.chars().any(char::is_control) {
        return Err(ServiceError::InvalidPetname(petname.to_owned()));
    }
    Ok(trimmed.to_lowercase())
}

fn peer_from_bytes(bytes: &[u8]) -> Result<PeerId, ServiceError> {
    PeerId::from_bytes(bytes).map_err(|e| {
        ServiceError::Store(kith_store::StoreError::Corrupt {
            tree: "contacts",
            reason: e.to_string(),
        })
    })
}

/// Ed25519 peer ids embed the public key (identity multihash; [`dht::public_key_of`]).
pub(crate) fn public_key_of(peer: &PeerId) -> Result<PublicKey, ServiceError> {
    dht::public_key_of(peer).ok_or(ServiceError::NoPublicKey(*peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn petnames_are_case_insensitive_and_bounded() {
        assert_eq!(petname_key(" Mum ").unwrap(), "mum");
        assert!(petname_key("").is_err());
        assert!(petname_key(&"x".repeat(65)).is_err());
        assert!(petname_key("a\nb").is_err());
    }

    fn rules() -> NameRules {
        NameRules {
            difficulty: 4,
            ..NameRules::default()
        }
    }

    /// A valid claim for `name` by a fresh key, expiring `ttl_ms` after now.
    fn claim(name: &str, ttl_ms: u64) -> NameRecord {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let name = Name::parse(name).unwrap();
        let peer = key.public().to_peer_id().to_bytes();
        let created_at_ms = now_ms();
        let nonce = pow::solve(name.as_str(), &peer, created_at_ms, 4, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        NameRecord::sign(
            &key,
            ClaimParams {
                name,
                created_at_ms,
                seq: 1,
                expires_at_ms: created_at_ms + ttl_ms,
                pow_nonce: nonce,
                addrs: Vec::new(),
            },
        )
        .unwrap()
    }

    #[test]
    fn verified_records_check_each_distinct_record_once_and_its_expiry_every_time() {
        let verified = VerifiedRecords::default();
        let record = claim("alice", 60_000);
        let now = now_ms();
        let first = verified.verify(record.to_bytes(), &rules(), now).unwrap();
        assert_eq!(first, record);
        // Remembered: a second answer with the same bytes is not checked again (a difficulty no
        // record could meet would refuse it if it were).
        let impossible = NameRules {
            difficulty: 255,
            ..rules()
        };
        assert_eq!(
            verified
                .verify(record.to_bytes(), &impossible, now)
                .unwrap(),
            record
        );
        assert!(NameRecord::verify(record.to_bytes(), &impossible, now).is_err());
        // Expiry is checked on every use.
        assert!(matches!(
            verified.verify(record.to_bytes(), &rules(), now + 61_000),
            Err(RecordError::Expired { .. })
        ));
        // Other bytes are checked in full: a flipped signature bit fails, and is not remembered.
        let mut forged = record.to_bytes().to_vec();
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        for _ in 0..2 {
            assert!(matches!(
                verified.verify(&forged, &rules(), now),
                Err(RecordError::BadSignature)
            ));
        }
        // Oversized input is refused before it is hashed or remembered.
        let huge = vec![0u8; rules().max_record_bytes + 1];
        assert!(matches!(
            verified.verify(&huge, &rules(), now),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_remembered_key_bundle_passes_only_for_its_own_peer_and_bytes() {
        let verified = VerifiedRecords::default();
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let other = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let bytes = kith_crypto::OlmAccount::new()
            .key_bundle(&keypair, 1_234)
            .unwrap()
            .to_bytes();
        assert_eq!(verified.verify_bundle(&bytes, &peer), Ok(1_234));
        // Answered from memory, with the same answer.
        assert_eq!(guard(&verified.bundles).len(), 1);
        assert_eq!(verified.verify_bundle(&bytes, &peer), Ok(1_234));
        assert_eq!(guard(&verified.bundles).len(), 1);
        // Remembered for `peer` only: another peer id, or one changed byte, is checked and fails.
        assert!(verified.verify_bundle(&bytes, &other).is_err());
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(verified.verify_bundle(&tampered, &peer).is_err());
        assert_eq!(guard(&verified.bundles).len(), 1);
        // The bundle itself comes back from memory for the direct-message component.
        let bundle = verified.key_bundle(&bytes, &peer).unwrap();
        assert_eq!((bundle.peer_id(), bundle.created_at_ms()), (peer, 1_234));
        assert!(verified.key_bundle(&bytes, &other).is_err());
    }

    #[test]
    fn verified_records_stay_bounded() {
        let verified = VerifiedRecords::default();
        let now = now_ms();
        for i in 0..(MAX_VERIFIED + 10) {
            let record = claim(&format!("name{i}"), 60_000);
            verified.verify(record.to_bytes(), &rules(), now).unwrap();
        }
        assert!(guard(&verified.records).len() <= MAX_VERIFIED);
    }

    #[test]
    fn the_name_cache_answers_only_for_the_pinned_owner_and_an_unexpired_claim() {
        let cache = NameCache::default();
        let record = claim("bob", 10_000);
        let owner = record.peer_id();
        cache.remember(
            "bob",
            Known {
                record: record.clone(),
                holders: 7,
                replicas: 5,
                rivals: vec![(PeerId::random(), 1)],
                checked_at_ms: 42,
            },
        );
        let now = now_ms();
        let known = cache.known("bob", &owner, now).unwrap();
        assert_eq!(
            (known.holders, known.replicas, known.checked_at_ms),
            (7, 5, 42)
        );
        assert_eq!(known.rivals.len(), 1);
        assert!(
            cache.known("bob", &PeerId::random(), now).is_none(),
            "another owner"
        );
        assert!(
            cache.known("bob", &owner, now + 10_001).is_none(),
            "expired"
        );
        assert!(
            cache.known("carol", &owner, now).is_none(),
            "never looked up"
        );
    }

    #[test]
    fn a_lookup_counts_as_a_check_and_checks_are_rate_limited() {
        let cache = NameCache::default();
        let minute = Duration::from_secs(60);
        assert!(cache.check_due("dave", minute), "never checked");
        assert!(!cache.check_due("dave", minute), "just started one");
        assert!(
            cache.check_due("dave", Duration::ZERO),
            "due at once with no interval"
        );
        cache.remember(
            "erin",
            Known {
                record: claim("erin", 10_000),
                holders: 1,
                replicas: 5,
                rivals: Vec::new(),
                checked_at_ms: now_ms(),
            },
        );
        assert!(
            !cache.check_due("erin", minute),
            "a network lookup just happened"
        );
    }

    #[test]
    fn a_conflict_is_news_once_and_refused_until_cleared() {
        let cache = NameCache::default();
        let conflict = Conflict {
            pinned: PeerId::random(),
            pinned_since: "2026-01-01T00:00:00Z".to_owned(),
            found: PeerId::random(),
        };
        assert!(cache.conflict("zed").is_none());
        assert!(cache.set_conflict("zed", conflict.clone()), "news");
        assert!(
            !cache.set_conflict("zed", conflict.clone()),
            "the same again"
        );
        match cache.conflict("zed") {
            Some(ServiceError::NameConflict {
                pinned,
                found,
                contested,
                ..
            }) => {
                assert_eq!((pinned, found), (conflict.pinned, conflict.found));
                assert!(!contested);
            }
            other => panic!("expected the conflict, got {other:?}"),
        }
        let moved = Conflict {
            found: PeerId::random(),
            ..conflict
        };
        assert!(
            cache.set_conflict("zed", moved),
            "another key is news again"
        );
        cache.clear_conflict("zed");
        assert!(cache.conflict("zed").is_none());
    }

    #[test]
    fn public_keys_come_out_of_ed25519_peer_ids() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        assert_eq!(public_key_of(&peer).unwrap(), key.public());
        assert!(public_key_of(&PeerId::random()).is_err());
    }
}
