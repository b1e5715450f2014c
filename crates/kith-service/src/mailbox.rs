//! Mailboxes at community relays, for friends who are never online at the same time.
//!
//! ```text
//! recipient ──register (signed)──▶ relay          pointer in DHT: blake3("kith/mailbox/v1/" ‖ peer)
//! sender ── direct delivery fails ──▶ deposit(envelope) ──▶ relay (quota, TTL, sled)
//! recipient connects ──fetch──▶ items ──receive pipeline (store + flush)──▶ delete ──▶ relay
//!                       └──▶ delivery receipt to the sender (a message like any other)
//! ```
//!
//! The relay holds the same encrypted envelope `/kith/dm` carries; it learns who deposited for
//! whom and when, never what.
//!
//! A recipient behind NAT holds a reservation at the same relays, so the pointer also says where
//! it can be reached while online: a sender that cannot dial it directly tries
//! `<relay>/p2p-circuit/p2p/<recipient>` before depositing (DCUtR then makes the link direct
//! where the NATs allow).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use kith_core::dht;
use kith_proto::v1 as pb;
use kith_store::{MailId, OutboxItem, Quota};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use prost::Message as _;

use libp2p::identity::Keypair;
use prometheus_client::metrics::counter::Counter;

use crate::{
    ServiceError,
    handles::Outbound,
    health::HealthLog,
    node::{lock, now_ms},
    relay_blobs::{FilePush, HeldBlobs},
};

/// How long another peer's mailbox relays, read from its pointer, are trusted without asking
/// the DHT again.
const RELAYS_OF_FRESH: Duration = Duration::from_secs(60);
/// How long they are still tried as routes before a failure makes us ask again.
const RELAYS_OF_ROUTE: Duration = Duration::from_secs(600);
/// Peers whose relays are remembered at once.
const RELAYS_OF_MAX: usize = 1024;

/// Other peers' mailbox relays, as their pointers said, and when we read them.
#[derive(Debug, Default)]
pub(crate) struct RelaysOf {
    by_peer: HashMap<PeerId, (Vec<Multiaddr>, Instant)>,
}

impl RelaysOf {
    fn get(&self, peer: &PeerId, max_age: Duration) -> Option<&[Multiaddr]> {
        self.by_peer
            .get(peer)
            .filter(|(_, at)| at.elapsed() < max_age)
            .map(|(relays, _)| relays.as_slice())
    }

    fn put(&mut self, peer: PeerId, relays: Vec<Multiaddr>) {
        if self.by_peer.len() >= RELAYS_OF_MAX && !self.by_peer.contains_key(&peer) {
            self.by_peer
                .retain(|_, (_, at)| at.elapsed() < RELAYS_OF_ROUTE);
            if self.by_peer.len() >= RELAYS_OF_MAX {
                let oldest = self
                    .by_peer
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(p, _)| *p);
                if let Some(oldest) = oldest {
                    self.by_peer.remove(&oldest);
                }
            }
        }
        self.by_peer.insert(peer, (relays, Instant::now()));
    }
}

/// The addresses at which `peer` is reachable through `relays` while it holds a reservation.
fn circuit_routes(relays: &[Multiaddr], peer: PeerId) -> Vec<Multiaddr> {
    relays
        .iter()
        .filter(|r| relay_id(r).is_some_and(|id| id != peer))
        .map(|r| {
            r.clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer))
        })
        .collect()
}

/// What a relay offers as mailbox host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Per-recipient limits. Default 1,000 items and 64 MiB.
    pub quota: Quota,
    /// How long mail is held. Default 30 days.
    pub ttl: Duration,
    /// Items per fetch page. Default 256.
    pub page: usize,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            quota: Quota {
                max_items: 1000,
                max_bytes: 64 * 1024 * 1024,
            },
            ttl: Duration::from_secs(30 * 86_400),
            page: 256,
        }
    }
}

const REGISTER_CONTEXT: &[u8] = b"kith/mailbox/register/v1";

fn registration_bytes(relay: &[u8], created_at_ms: u64) -> Vec<u8> {
    let mut out = REGISTER_CONTEXT.to_vec();
    out.extend_from_slice(relay);
    out.extend_from_slice(&created_at_ms.to_be_bytes());
    out
}

/// DHT key of a peer's mailbox pointer, `blake3("kith/mailbox/v1/" ‖ peer id)`: public so tools
/// (benchmarks, diagnostics) can look pointers up without copying the rule (which is
/// [`kith_core::dht::pointer_key`]).
pub fn pointer_key(peer: &PeerId) -> Vec<u8> {
    dht::pointer_key(peer)
}

fn response(status: pb::MailboxStatus, reason: &str) -> pb::MailboxResponse {
    pb::MailboxResponse {
        status: status as i32,
        reason: reason.to_owned(),
        items: Vec::new(),
        remaining: 0,
        turn: None,
        now_ms: 0,
    }
}

fn relay_id(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// The mailbox user side (issue 12): our mailbox relays and the signed pointer naming them,
/// other peers' relays read from their pointers, the sync with our relays (register, fetch,
/// delete, delivery receipts, TURN credentials) and deposits at a recipient's relays for direct
/// delivery ([`Deposit`]). It owns no sled book. What it needs of others comes through the
/// handles it is built with: [`Outbound`] for receipts, [`RelayTurn`] (calls) for TURN
/// credentials, [`MailFiles`] (files) for the downloads resumed after a sync, and the
/// [`HealthLog`] for `kith doctor`; its [`FilePush`] part (relay_blobs.rs) puts a file offer's
/// file at a relay before the offer is deposited there. A cheap clone.
#[derive(Clone)]
pub(crate) struct MailboxClient {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    client: kith_net::Client,
    keypair: Keypair,
    me: PeerId,
    /// A relay keeps no mailbox elsewhere.
    is_relay: bool,
    /// Our mailbox relays; starts as `Options::mailbox_relays`.
    relays: std::sync::Mutex<Vec<Multiaddr>>,
    /// Other peers' mailbox relays, from their pointers.
    relays_of: std::sync::Mutex<RelaysOf>,
    /// Wakes the sync loop (a relay connected, announced mail, or joined the list).
    wake: tokio::sync::Notify,
    health: HealthLog,
    turn: Arc<dyn RelayTurn>,
    outbound: Arc<dyn Outbound>,
    files: Arc<dyn MailFiles>,
    push: FilePush,
}

impl std::fmt::Debug for MailboxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxClient").finish_non_exhaustive()
    }
}

/// What [`MailboxClient`] is built from.
pub(crate) struct MailboxClientParts {
    /// The network: mailbox requests, the pointer in the DHT.
    pub(crate) client: kith_net::Client,
    /// Our identity: signs registrations and the pointer.
    pub(crate) keypair: Keypair,
    /// True on a relay (it keeps no mailbox elsewhere).
    pub(crate) is_relay: bool,
    /// The configured relays.
    pub(crate) relays: Vec<Multiaddr>,
    /// Where sync outcomes and clock readings are recorded.
    pub(crate) health: HealthLog,
    /// TURN credentials from our relays go to calls.
    pub(crate) turn: Arc<dyn RelayTurn>,
    /// Delivery receipts for fetched mail.
    pub(crate) outbound: Arc<dyn Outbound>,
    /// Files: downloads resumed after a sync.
    pub(crate) files: Arc<dyn MailFiles>,
    /// A file offer's file goes to the relay before the offer is deposited there.
    pub(crate) push: FilePush,
}

/// The TURN credentials our relays hand us, kept by the calls component (it implements this
/// itself, router.rs), asked for during a sync.
pub(crate) trait RelayTurn: Send + Sync {
    /// Whether it is time to ask `relay` for credentials.
    fn turn_due(&self, relay: PeerId) -> bool;
    /// What `relay` answered (none: asked again later).
    fn set_relay_turn(&self, relay: PeerId, answer: Option<pb::TurnCredentials>);
}

/// Relay side: TURN credentials for a registered user, minted by the calls component (it
/// implements this itself, router.rs).
pub(crate) trait TurnIssue: Send + Sync {
    /// Fresh credentials for `peer`; `None` when this node hands none out.
    fn issue_turn(&self, peer: PeerId) -> Option<pb::TurnCredentials>;
}

/// What the mailbox user side needs of the files component.
pub(crate) trait MailFiles: Send + Sync {
    /// Files sent while we were away may wait at our relays now: resume every download.
    fn resume_all_downloads(&self);

    /// The file record of message `id` (None: the message carries no file, or the record
    /// cannot be read): what [`FilePush`] uploads before the offer is deposited.
    fn file_of(&self, id: &kith_store::MessageId) -> Option<kith_store::FileRecord>;

    /// Notes on an outgoing file how its push to a relay went ("held at relay ...",
    /// "waiting: ..."): the files book is the files component's to write.
    fn note_push(&self, id: &kith_store::MessageId, state: kith_store::FileState, note: &str);
}

impl MailboxClient {
    /// The component over `parts`.
    pub(crate) fn new(parts: MailboxClientParts) -> Self {
        let me = parts.keypair.public().to_peer_id();
        Self {
            shared: Arc::new(ClientShared {
                client: parts.client,
                keypair: parts.keypair,
                me,
                is_relay: parts.is_relay,
                relays: std::sync::Mutex::new(parts.relays),
                relays_of: std::sync::Mutex::default(),
                wake: tokio::sync::Notify::new(),
                health: parts.health,
                turn: parts.turn,
                outbound: parts.outbound,
                files: parts.files,
                push: parts.push,
            }),
        }
    }

    /// Syncs now rather than at the next period.
    pub(crate) fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// True when `peer` is one of our mailbox relays.
    pub(crate) fn is_mailbox_relay(&self, peer: &PeerId) -> bool {
        self.mailbox_relays()
            .iter()
            .any(|r| relay_id(r) == Some(*peer))
    }

    /// User side: one of our mailbox relays says mail arrived; fetch it now rather than at the
    /// next periodic sync. Anyone else saying so is refused (and nothing is fetched).
    pub(crate) fn on_mail_notice(&self, relay: PeerId) -> pb::MailboxResponse {
        if !self.is_mailbox_relay(&relay) {
            return response(
                pb::MailboxStatus::MailboxRejected,
                "only a mailbox relay of this node may announce mail",
            );
        }
        tracing::debug!(%relay, "mailbox relay announced mail; fetching");
        self.wake();
        response(pb::MailboxStatus::MailboxOk, "")
    }

    /// The relays this node keeps a mailbox at: those configured with `relay = true`, plus
    /// bootstrap peers that identified as kith relays; one entry per relay peer id.
    pub(crate) fn mailbox_relays(&self) -> Vec<Multiaddr> {
        lock(&self.shared.relays).clone()
    }

    /// A bootstrap peer identified as a kith relay (or a known one came back elsewhere): keep
    /// our mailbox there. When the list changed, sync at once (registers there) and re-publish
    /// the mailbox pointer so senders find the new relay set.
    pub(crate) fn on_relay_found(&self, relay: PeerId, addr: Multiaddr) {
        if self.shared.is_relay {
            return; // A relay keeps no mailbox elsewhere.
        }
        let changed = {
            let mut list = lock(&self.shared.relays);
            match list.iter().position(|r| relay_id(r) == Some(relay)) {
                Some(i) if list[i] == addr => false,
                Some(i) => {
                    list[i] = addr;
                    true
                }
                None => {
                    list.push(addr);
                    true
                }
            }
        };
        if !changed {
            return;
        }
        tracing::info!(%relay, "mailbox relays changed; registering and re-publishing the pointer");
        self.wake();
        let user = self.clone();
        tokio::spawn(async move {
            match user.publish_mailbox_pointer().await {
                Ok(published) => {
                    user.shared
                        .health
                        .with(|h| h.mailbox_pointer.record(Ok(published)));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not re-publish the mailbox pointer");
                    user.shared
                        .health
                        .with(|h| h.mailbox_pointer.record(Err(e.to_string())));
                }
            }
        });
    }

    /// Publishes where our mail waits (signed pointer in the DHT).
    pub(crate) async fn publish_mailbox_pointer(&self) -> Result<bool, ServiceError> {
        if self.mailbox_relays().is_empty() {
            return Ok(false);
        }
        let value =
            dht::MailboxPointer::sign(&self.shared.keypair, &self.mailbox_relays(), now_ms())
                .map_err(|e| ServiceError::Task(e.to_string()))?;
        let expires = std::time::SystemTime::now() + Duration::from_secs(30 * 86_400);
        Ok(self
            .shared
            .client
            .put_record(pointer_key(&self.shared.me), value, Some(expires))
            .await
            .is_ok())
    }

    /// Recipient side: registers with a relay, fetches everything waiting, hands each item to
    /// `inbox` (the receive pipeline), deletes what was stored, and tells the senders. Returns
    /// items stored.
    pub(crate) async fn sync_mailbox(
        &self,
        relay: &Multiaddr,
        inbox: &impl Inbox,
    ) -> Result<usize, ServiceError> {
        let Some(relay_peer) = relay_id(relay) else {
            return Ok(0);
        };
        let addrs = vec![relay.clone()];
        let created = now_ms();
        let signature = self
            .shared
            .keypair
            .sign(&registration_bytes(&relay_peer.to_bytes(), created))
            .map_err(|e| ServiceError::Task(e.to_string()))?;
        let register = pb::MailboxRequest {
            kind: Some(pb::mailbox_request::Kind::Register(
                pb::MailboxRegistration {
                    relay: relay_peer.to_bytes(),
                    created_at_ms: created,
                    signature,
                },
            )),
        };
        let answer = self.mailbox_call(relay_peer, &register, &addrs).await?;
        if answer.status != pb::MailboxStatus::MailboxOk as i32 {
            return Err(ServiceError::Mailbox(answer.reason));
        }
        if self.shared.turn.turn_due(relay_peer) {
            self.refresh_turn(relay_peer, &addrs).await;
        }
        let mut stored = 0;
        // Bounded: each page deletes what it stored, so the mailbox shrinks every round.
        for _ in 0..64 {
            let fetch = pb::MailboxRequest {
                kind: Some(pb::mailbox_request::Kind::Fetch(pb::MailboxFetch {
                    max_items: 256,
                })),
            };
            let page = self.mailbox_call(relay_peer, &fetch, &addrs).await?;
            if page.items.is_empty() {
                break;
            }
            let mut done = Vec::new();
            let mut receipts: Vec<(PeerId, Vec<Vec<u8>>)> = Vec::new();
            // Received together, so each sender's items are decrypted and stored as one batch
            // (one transaction, one flush) instead of one at a time.
            let acks = futures::future::join_all(page.items.iter().map(|item| async move {
                match PeerId::from_bytes(&item.from) {
                    Ok(from) => Some((from, inbox.receive(from, &item.envelope).await)),
                    Err(_) => None,
                }
            }))
            .await;
            for (item, received) in page.items.iter().zip(acks) {
                let Some((from, ack)) = received else {
                    done.push(item.id.clone());
                    continue;
                };
                let status =
                    pb::AckStatus::try_from(ack.status).unwrap_or(pb::AckStatus::AckRejected);
                match status {
                    pb::AckStatus::AckStored | pb::AckStatus::AckDuplicate => {
                        done.push(item.id.clone());
                        let text = kith_store::MessageId::try_from(ack.id.as_slice())
                            .is_ok_and(|id| inbox.holds_incoming(from, &id));
                        if text {
                            stored += 1;
                            match receipts.iter_mut().find(|(p, _)| *p == from) {
                                Some((_, ids)) => ids.push(ack.id.clone()),
                                None => receipts.push((from, vec![ack.id.clone()])),
                            }
                        }
                    }
                    // Retry later (rate limit, our own store failing): keep it at the relay.
                    pb::AckStatus::AckRateLimited => {}
                    // Undecryptable, rejected, blocked: holding it helps nobody.
                    _ => done.push(item.id.clone()),
                }
            }
            let delete = pb::MailboxRequest {
                kind: Some(pb::mailbox_request::Kind::Delete(pb::MailboxDelete {
                    ids: done,
                })),
            };
            self.mailbox_call(relay_peer, &delete, &addrs).await?;
            for (from, ids) in receipts {
                self.shared
                    .outbound
                    .send_receipt(from, ids, pb::ReceiptKind::ReceiptDelivered)
                    .await?;
            }
            if page.remaining == 0 {
                break;
            }
        }
        Ok(stored)
    }

    /// Asks a relay we are registered at for TURN credentials (for calls through NAT).
    async fn refresh_turn(&self, relay: PeerId, addrs: &[Multiaddr]) {
        let request = pb::MailboxRequest {
            kind: Some(pb::mailbox_request::Kind::Turn(pb::MailboxTurn {})),
        };
        match self.mailbox_call(relay, &request, addrs).await {
            Ok(answer) if answer.status == pb::MailboxStatus::MailboxOk as i32 => {
                self.shared.turn.set_relay_turn(relay, answer.turn);
            }
            Ok(answer) => {
                tracing::debug!(%relay, reason = %answer.reason, "relay gives no TURN credentials");
                self.shared.turn.set_relay_turn(relay, None);
            }
            Err(e) => tracing::debug!(%relay, error = %e, "cannot ask for TURN credentials"),
        }
    }

    async fn mailbox_call(
        &self,
        relay: PeerId,
        request: &pb::MailboxRequest,
        addrs: &[Multiaddr],
    ) -> Result<pb::MailboxResponse, ServiceError> {
        let sent_at = now_ms();
        let bytes = self
            .shared
            .client
            .mailbox_request(relay, request.encode_to_vec(), addrs.to_vec())
            .await?;
        let answer = pb::MailboxResponse::decode(bytes.as_slice())
            .map_err(|e| ServiceError::Mailbox(format!("malformed answer from relay: {e}")))?;
        self.shared
            .health
            .clock_sample(relay, sent_at, answer.now_ms);
        Ok(answer)
    }

    /// `peer`'s mailbox relays from its signed pointer in the DHT (cached for a minute; `None`
    /// when the DHT could not be asked).
    async fn relays_of(&self, peer: PeerId) -> Option<Vec<Multiaddr>> {
        if let Some(relays) =
            self.with_relays_of(|r| r.get(&peer, RELAYS_OF_FRESH).map(<[_]>::to_vec))
        {
            return Some(relays);
        }
        let result = self
            .shared
            .client
            .get_record(pointer_key(&peer), 1)
            .await
            .ok()?;
        let relays = result
            .answers
            .iter()
            .filter_map(|a| dht::MailboxPointer::verify(&a.value).ok())
            .filter(|p| p.peer == peer)
            .max_by_key(|p| p.created_at_ms)
            .map(|p| p.relays)
            .unwrap_or_default();
        self.with_relays_of(|r| r.put(peer, relays.clone()));
        Some(relays)
    }

    /// Circuit routes to `peer` through the relays its pointer named within the last minutes
    /// (no DHT lookup): a sender's first try after a relayed delivery goes the same way.
    fn known_relay_routes(&self, peer: PeerId) -> Vec<Multiaddr> {
        self.with_relays_of(|r| {
            r.get(&peer, RELAYS_OF_ROUTE)
                .map(|relays| circuit_routes(relays, peer))
                .unwrap_or_default()
        })
    }

    fn with_relays_of<T>(&self, f: impl FnOnce(&mut RelaysOf) -> T) -> T {
        f(&mut lock(&self.shared.relays_of))
    }

    /// Sender side: delivery failed; hold the envelope at the recipient's mailbox `relays`.
    /// Marks `item` deposited when a relay took it; writes nothing to the store (the outcome
    /// says what the message's owner should note).
    async fn deposit(
        &self,
        peer: PeerId,
        item: &mut OutboxItem,
        relays: Vec<Multiaddr>,
    ) -> DepositOutcome {
        let mut outcome = DepositOutcome::default();
        let Some(envelope) = item.envelope.clone() else {
            return outcome;
        };
        let request = pb::MailboxRequest {
            kind: Some(pb::mailbox_request::Kind::Deposit(pb::MailboxDeposit {
                recipient: peer.to_bytes(),
                envelope,
            })),
        };
        for relay in relays {
            let Some(relay_peer) = relay_id(&relay) else {
                continue;
            };
            // A file offer goes only where its file went first (relay_blobs.rs).
            if !self.shared.push.hold_file_at(peer, &item.id, &relay).await {
                continue;
            }
            match self
                .mailbox_call(relay_peer, &request, std::slice::from_ref(&relay))
                .await
            {
                Ok(answer) if answer.status == pb::MailboxStatus::MailboxOk as i32 => {
                    item.deposited = true;
                    tracing::info!(%peer, relay = %relay_peer, "recipient unreachable; message held at its mailbox relay");
                    outcome.held = true;
                    return outcome;
                }
                Ok(answer) => {
                    tracing::info!(%peer, relay = %relay_peer, reason = %answer.reason, "mailbox relay refused the deposit");
                    if answer.status == pb::MailboxStatus::MailboxFull as i32 {
                        outcome.full = Some(answer.reason);
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, relay = %relay_peer, error = %e, "mailbox relay unreachable")
                }
            }
        }
        outcome
    }

    /// Recipient side: we have `hash` now; tell our relays to drop their copies (best effort, in
    /// the background; the relay's TTL is the fallback).
    pub(crate) fn release_at_relays(&self, hash: [u8; 32]) {
        let relays = self.mailbox_relays();
        if relays.is_empty() {
            return;
        }
        let client = self.shared.client.clone();
        tokio::spawn(async move {
            let request = pb::MailboxRequest {
                kind: Some(pb::mailbox_request::Kind::BlobRelease(
                    pb::MailboxBlobRelease {
                        hashes: vec![hash.to_vec()],
                    },
                )),
            }
            .encode_to_vec();
            for relay in relays {
                let Some(peer) = relay_id(&relay) else {
                    continue;
                };
                let call = client.mailbox_request(peer, request.clone(), vec![relay.clone()]);
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(10), call).await {
                    tracing::debug!(relay = %peer, error = %e, "cannot release a held blob");
                }
            }
        });
    }

    /// Our mailbox relays' peer ids: holders of files sent to us while we were away.
    pub(crate) fn relay_holders(&self) -> Vec<PeerId> {
        self.mailbox_relays().iter().filter_map(relay_id).collect()
    }

    /// The handle direct delivery reaches the recipient's mailbox relays through.
    pub(crate) fn deposit_handle(&self) -> Deposit {
        Deposit { user: self.clone() }
    }
}

/// The mailbox relay side (issue 12): owns the mailboxes book (registrations, held mail, usage)
/// and, through [`HeldBlobs`], the files held for its users; answers `/kith/mailbox` requests,
/// announces new mail to connected recipients and sweeps what expired. TURN credentials come
/// from the calls component through [`TurnIssue`]. On a node that is not a relay it refuses
/// every request but a mail announcement, which it hands to the user side. A cheap clone.
#[derive(Clone)]
pub(crate) struct MailboxRelay {
    shared: Arc<RelayShared>,
}

struct RelayShared {
    store: kith_store::Store,
    client: kith_net::Client,
    me: PeerId,
    /// `None`: not a relay.
    config: Option<MailboxConfig>,
    /// Mailbox requests refused (the `mailbox_refused` metric).
    refused: Counter,
    /// When each recipient was last told that mail arrived.
    announced: std::sync::Mutex<HashMap<PeerId, Instant>>,
    turn: Arc<dyn TurnIssue>,
    held: HeldBlobs,
}

impl std::fmt::Debug for MailboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxRelay")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// What [`MailboxRelay`] is built from.
pub(crate) struct MailboxRelayParts {
    /// The node's store: the relay writes the mailboxes book (and, through [`HeldBlobs`], the
    /// held-blobs book).
    pub(crate) store: kith_store::Store,
    /// The network: answers, mail announcements.
    pub(crate) client: kith_net::Client,
    /// Who we are (a registration names its relay).
    pub(crate) me: PeerId,
    /// `Options::mailbox_server`.
    pub(crate) config: Option<MailboxConfig>,
    /// TURN credentials for registered users.
    pub(crate) turn: Arc<dyn TurnIssue>,
    /// The files held for our users.
    pub(crate) held: HeldBlobs,
}

impl MailboxRelay {
    /// The component over `parts`, its refusal counter registered in `registry`.
    pub(crate) fn new(
        parts: MailboxRelayParts,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let refused = Counter::default();
        registry.register(
            "mailbox_refused",
            "Mailbox requests refused (unregistered recipient, forged registration, full, garbage)",
            refused.clone(),
        );
        Self {
            shared: Arc::new(RelayShared {
                store: parts.store,
                client: parts.client,
                me: parts.me,
                config: parts.config,
                refused,
                announced: std::sync::Mutex::default(),
                turn: parts.turn,
                held: parts.held,
            }),
        }
    }

    /// The files held for our users.
    pub(crate) fn held(&self) -> &HeldBlobs {
        &self.shared.held
    }

    /// Mailboxes this node hosts.
    pub(crate) fn stats(&self) -> Result<kith_store::MailboxStats, ServiceError> {
        Ok(self.shared.store.mailboxes().stats()?)
    }

    /// The hosted mailboxes, fullest first, at most `limit`: (recipient, items, bytes).
    pub(crate) fn recipients(
        &self,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64, u64)>, ServiceError> {
        Ok(self.shared.store.mailboxes().recipients(limit)?)
    }

    /// Drops expired mail and expired held files (a relay's part of each sync round).
    fn sweep(&self) {
        let Some(config) = &self.shared.config else {
            return;
        };
        let ttl = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        match self.shared.store.mailboxes().sweep(now_ms(), ttl) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "dropped expired mail"),
            Err(e) => tracing::warn!(error = %e, "mailbox sweep failed"),
        }
        let expired = self.shared.held.sweep_held_blobs();
        if expired > 0 {
            tracing::info!(dropped = expired, "dropped expired held files");
        }
    }

    /// Relay side: answers one mailbox request. Runs on its own task.
    pub(crate) async fn on_mailbox_request(
        &self,
        peer: PeerId,
        request: kith_net::DmRequestId,
        bytes: Vec<u8>,
        user: &MailboxClient,
    ) {
        let notice = matches!(
            pb::MailboxRequest::decode(bytes.as_slice()),
            Ok(pb::MailboxRequest {
                kind: Some(pb::mailbox_request::Kind::Notify(_))
            })
        );
        let mut answer = if notice {
            user.on_mail_notice(peer)
        } else {
            self.serve_mailbox(peer, &bytes).await
        };
        answer.now_ms = now_ms();
        if answer.status != pb::MailboxStatus::MailboxOk as i32 {
            self.shared.refused.inc();
            tracing::info!(%peer, reason = %answer.reason, "refused a mailbox request");
        }
        if let Err(e) = self
            .shared
            .client
            .respond_dm(request, answer.encode_to_vec())
            .await
        {
            tracing::debug!(%peer, error = %e, "could not answer a mailbox request");
        }
    }

    /// Relay side: tells a recipient that is connected (or reachable) that mail arrived, so it
    /// fetches at once. Best effort on its own task: the periodic sync is the fallback.
    fn announce_mail(&self, recipient: PeerId) {
        // One announcement a second per recipient is enough: it fetches everything waiting.
        let due = {
            let mut announced = lock(&self.shared.announced);
            if announced.len() >= 4096 {
                announced.retain(|_, at| at.elapsed() < Duration::from_secs(1));
            }
            match announced.get(&recipient) {
                Some(at) if at.elapsed() < Duration::from_secs(1) => false,
                _ => {
                    announced.insert(recipient, Instant::now());
                    true
                }
            }
        };
        if !due {
            return;
        }
        let client = self.shared.client.clone();
        tokio::spawn(async move {
            let request = pb::MailboxRequest {
                kind: Some(pb::mailbox_request::Kind::Notify(pb::MailboxNotify {})),
            };
            let call = client.mailbox_request(recipient, request.encode_to_vec(), Vec::new());
            match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(_)) => tracing::debug!(%recipient, "announced mail"),
                Ok(Err(e)) => tracing::debug!(%recipient, error = %e, "could not announce mail"),
                Err(_) => tracing::debug!(%recipient, "announcing mail timed out"),
            }
        });
    }

    async fn serve_mailbox(&self, peer: PeerId, bytes: &[u8]) -> pb::MailboxResponse {
        use pb::MailboxStatus as S;
        let Some(config) = self.shared.config.clone() else {
            return response(S::MailboxRejected, "this node is not a mailbox relay");
        };
        let Ok(request) = pb::MailboxRequest::decode(bytes) else {
            return response(S::MailboxRejected, "malformed mailbox request");
        };
        let boxes = self.shared.store.mailboxes();
        let me = self.shared.me.to_bytes();
        let now = now_ms();
        let ttl = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        let result: Result<pb::MailboxResponse, ServiceError> = async {
            Ok(match request.kind {
                Some(pb::mailbox_request::Kind::Register(r)) => {
                    let Some(key) = dht::public_key_of(&peer) else {
                        return Ok(response(S::MailboxRejected, "no public key in peer id"));
                    };
                    let fresh = r.created_at_ms.abs_diff(now) < 10 * 60_000;
                    if r.relay != me
                        || !fresh
                        || !key.verify(&registration_bytes(&r.relay, r.created_at_ms), &r.signature)
                    {
                        return Ok(response(
                            S::MailboxRejected,
                            "registration is not signed by the requester for this relay now",
                        ));
                    }
                    boxes.register(&peer.to_bytes(), now)?;
                    self.shared.store.flush().await?;
                    response(S::MailboxOk, "")
                }
                Some(pb::mailbox_request::Kind::Deposit(d)) => {
                    if !boxes.is_registered(&d.recipient)? {
                        return Ok(response(
                            S::MailboxUnknownRecipient,
                            "the recipient has no mailbox at this relay",
                        ));
                    }
                    let valid = pb::Envelope::decode(d.envelope.as_slice())
                        .is_ok_and(|e| e.id.len() == 16 && !e.ciphertext.is_empty());
                    if !valid || d.envelope.len() > kith_net::dm::MAX_REQUEST {
                        return Ok(response(S::MailboxRejected, "not an envelope"));
                    }
                    let mut id: MailId = [0u8; 16];
                    id[..8].copy_from_slice(&now.to_be_bytes());
                    if getrandom::fill(&mut id[8..]).is_err() {
                        id[8..].copy_from_slice(&blake3::hash(&d.envelope).as_bytes()[..8]);
                    }
                    match boxes.deposit(
                        &d.recipient,
                        id,
                        &peer.to_bytes(),
                        &d.envelope,
                        now,
                        config.quota,
                    )? {
                        kith_store::Deposit::Stored(_) => {
                            self.shared.store.flush().await?;
                            if let Ok(recipient) = PeerId::from_bytes(&d.recipient) {
                                self.announce_mail(recipient);
                            }
                            response(S::MailboxOk, "")
                        }
                        kith_store::Deposit::Full { items, bytes } => response(
                            S::MailboxFull,
                            &format!(
                                "the recipient's mailbox is full ({items} messages, {bytes} bytes)"
                            ),
                        ),
                    }
                }
                Some(pb::mailbox_request::Kind::Fetch(f)) => {
                    let max = usize::try_from(f.max_items)
                        .unwrap_or(usize::MAX)
                        .clamp(1, config.page);
                    let (items, remaining) = boxes.fetch(&peer.to_bytes(), max, now, ttl)?;
                    pb::MailboxResponse {
                        status: S::MailboxOk as i32,
                        reason: String::new(),
                        items: items
                            .into_iter()
                            .map(|m| pb::MailItem {
                                id: m.id.to_vec(),
                                from: m.from,
                                envelope: m.envelope,
                                deposited_at_ms: m.deposited_at_ms,
                            })
                            .collect(),
                        remaining,
                        ..response(S::MailboxOk, "")
                    }
                }
                Some(pb::mailbox_request::Kind::Delete(d)) => {
                    let ids: Vec<MailId> = d
                        .ids
                        .iter()
                        .filter_map(|i| MailId::try_from(i.as_slice()).ok())
                        .collect();
                    boxes.delete(&peer.to_bytes(), &ids)?;
                    self.shared.store.flush().await?;
                    response(S::MailboxOk, "")
                }
                Some(pb::mailbox_request::Kind::Turn(_)) => {
                    if !boxes.is_registered(&peer.to_bytes())? {
                        return Ok(response(
                            S::MailboxUnknownRecipient,
                            "register a mailbox at this relay before asking for TURN credentials",
                        ));
                    }
                    match self.shared.turn.issue_turn(peer) {
                        Some(turn) => pb::MailboxResponse {
                            turn: Some(turn),
                            ..response(S::MailboxOk, "")
                        },
                        None => response(S::MailboxRejected, "this relay serves no TURN"),
                    }
                }
                Some(pb::mailbox_request::Kind::Notify(_)) => {
                    response(S::MailboxRejected, "a relay takes no mail announcements")
                }
                Some(pb::mailbox_request::Kind::BlobRelease(r)) => {
                    self.shared.held.release_held_blobs(peer, &r.hashes);
                    self.shared.store.flush().await?;
                    response(S::MailboxOk, "")
                }
                None => response(S::MailboxRejected, "empty mailbox request"),
            })
        }
        .await;
        result.unwrap_or_else(|e| response(S::MailboxRejected, &format!("relay error: {e}")))
    }
}

/// What became of [`Deposit::deposit`].
#[derive(Debug, Default)]
pub(crate) struct DepositOutcome {
    /// A relay holds the envelope now.
    pub(crate) held: bool,
    /// A relay refused it because the recipient's mailbox is full, with its reason: the sender
    /// notes it on the message (the entry stays queued either way).
    pub(crate) full: Option<String>,
}

/// What direct delivery (dm.rs) needs of the mailbox client, and nothing else (issue 12, plan
/// step 3, sender side): routes through a recipient's relays, and a deposit there when every
/// route failed. Writes nothing to the messages book; the [`DepositOutcome`] says what to note.
#[derive(Debug, Clone)]
pub(crate) struct Deposit {
    user: MailboxClient,
}

impl Deposit {
    /// Circuit routes to `peer` through relays its pointer named within the last minutes (no
    /// DHT lookup).
    pub(crate) fn known_routes(&self, peer: PeerId) -> Vec<Multiaddr> {
        self.user.known_relay_routes(peer)
    }

    /// `peer`'s mailbox relays from its pointer (cached for a minute; `None` when the DHT could
    /// not be asked), and the circuit routes to `peer` through them.
    pub(crate) async fn relays_and_routes(
        &self,
        peer: PeerId,
    ) -> (Option<Vec<Multiaddr>>, Vec<Multiaddr>) {
        let relays = self.user.relays_of(peer).await;
        let routes = relays
            .as_deref()
            .map(|r| circuit_routes(r, peer))
            .unwrap_or_default();
        (relays, routes)
    }

    /// Holds `item`'s envelope at one of `relays` (see [`DepositOutcome`]).
    pub(crate) async fn deposit(
        &self,
        peer: PeerId,
        item: &mut OutboxItem,
        relays: Vec<Multiaddr>,
    ) -> DepositOutcome {
        self.user.deposit(peer, item, relays).await
    }
}

/// Where fetched mail goes: the receive pipeline, which node.rs hands over (its router), so the
/// mailbox client does not call into direct messages.
pub(crate) trait Inbox: Sync {
    /// Runs one held envelope from `from` through the receive pipeline; the answer is the ack a
    /// direct delivery would have got.
    fn receive(
        &self,
        from: PeerId,
        envelope: &[u8],
    ) -> impl std::future::Future<Output = pb::Ack> + Send;

    /// Whether message `id` from `from` is stored as an incoming message (not a receipt or a
    /// control message): such an item earns its sender a delivery receipt.
    fn holds_incoming(&self, from: PeerId, id: &kith_store::MessageId) -> bool;
}

/// Keeps the mailbox in sync: at start, whenever a mailbox relay connects, and every `every`;
/// on a relay, sweeps expired mail and held files in the same rounds. Fetched mail goes to the
/// [`Inbox`] `make_inbox` makes for the round (`None`: the node is gone, and the loop ends, as it
/// does on `stop`). Holds the components, never the node.
pub(crate) async fn mailbox_loop<I: Inbox + Send>(
    user: MailboxClient,
    relay: MailboxRelay,
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
    make_inbox: impl Fn() -> Option<I> + Send,
) {
    let mut delay = Duration::from_secs(2);
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = user.shared.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = every;
        let Some(inbox) = make_inbox() else {
            return;
        };
        for relay in user.mailbox_relays() {
            let result = user.sync_mailbox(&relay, &inbox).await;
            match &result {
                Ok(0) => {}
                Ok(n) => tracing::info!(%relay, messages = n, "fetched mail held while offline"),
                Err(e) => tracing::debug!(%relay, error = %e, "mailbox sync failed"),
            }
            user.shared.health.with(|h| {
                let state = h.mailboxes.entry(relay.to_string()).or_default();
                match result {
                    Ok(_) => {
                        state.last_sync = Some(std::time::SystemTime::now());
                        state.last_error = None;
                    }
                    Err(e) => state.last_error = Some(e.to_string()),
                }
            });
        }
        // Files sent while we were away may wait at those relays now.
        if !user.mailbox_relays().is_empty() {
            user.shared.files.resume_all_downloads();
        }
        relay.sweep();
    }
}
