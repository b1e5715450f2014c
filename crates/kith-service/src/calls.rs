//! Calls: ringing, joining and hanging up, and carrying the browser's WebRTC signalling.
//!
//! ```text
//! caller: start_call → INVITE to each invitee ─▶ callee: ring (call.incoming) + RINGING back
//!         (nobody answers the ring in UNAVAILABLE_AFTER: "unavailable"; nobody joins in the ring
//!         timeout: "missed", HANGUP so the rings stop)
//! caller: with `caller_offers` (the web app), its page sends each invitee an SDP offer (MEDIA)
//!         right after the INVITE, while it rings; the callee's node keeps it for the page
//! callee: accept_call → ACCEPT to every participant; the one who joins answers the caller's
//!         offer if the invitation said one follows, and offers (browser SDP/ICE as MEDIA
//!         signals, opaque to the node) to everyone else already joined
//! anyone: hangup_call → HANGUP to the others; a 1:1 call ends on both sides
//! caller: once ended, one CallSummary through the ordinary outbox: the entry both histories
//!         show ("missed call", "call, 3 min"), reaching an offline callee through its mailbox
//! ```
//!
//! Signals travel inside Olm through the direct-message outbox (so the DTLS fingerprints in the
//! SDP are authenticated), marked to expire after the ring timeout and never deposited at a
//! mailbox: a ring nobody hears in time is worth nothing later. Only the call history is stored;
//! SDP and candidates live in memory while their call does.
//!
//! Rules: an invitation from someone we have not accepted never rings (their caller sees
//! "unavailable" and the summary lands in our requests as a missed call); while we are in a call
//! another invitation is answered BUSY; invitations are rate limited per peer; when two people
//! call each other at once the earlier call id wins on both sides and its callee joins it
//! (`CallEvent::Merged`), so the two calls become one.
//!
//! Ownership: [`Calls`] owns the calls book, the live calls, the invitation limit, the ICE
//! configuration and our relays' TURN credentials; it meets the rest of the node only through
//! the handles it is built with (`crate::handles`: delivery for signals and summaries, events,
//! trust, protected connections; [`GroupMembers`] for group calls).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as StdMutex, Weak},
    time::{Duration, Instant},
};

use kith_core::{Rate, RateLimiter};
use kith_proto::v1 as pb;
use kith_store::{CallId, CallOutcome, CallRecord};
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;

use crate::{
    MessageEvent, Node, ServiceError,
    handles::{Connections, Events, Outbound, Shown, TrustCheck},
    node::now_ms,
};

/// How long a call rings before it counts as missed (the issue's 45 s).
pub const DEFAULT_RING_TIMEOUT: Duration = Duration::from_secs(45);
/// A call whose invitation no node answered in this time ends as unavailable.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(20);
/// Largest browser signal (an SDP with many codecs is about 8 KiB).
pub const MAX_SIGNAL_BYTES: usize = 32 * 1024;
/// Signals kept per call for a page that opens late; beyond it the call is malformed.
const MAX_SIGNALS_KEPT: usize = 512;
/// Most people in one (mesh) call, ourselves included.
pub const MAX_CALL_MEMBERS: usize = 4;
/// Invitations accepted per peer: one, then one per 10 s. More ring nobody (a ring flood).
const OFFER_BURST: f64 = 1.0;
const OFFER_PER_SEC: f64 = 1.0 / 10.0;

/// Where a call stands for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Ringing (incoming: waiting for us to answer; outgoing: waiting for someone to join).
    Ringing,
    /// Answered: media may flow.
    Active,
    /// Over (see the outcome).
    Ended,
}

/// Where one other participant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantState {
    /// Invited, has not joined.
    Ringing,
    /// In the call.
    Joined,
    /// Declined, busy, or hung up.
    Left,
}

/// A call as the API and CLI show it.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// The stored history entry (id, other side, direction, times, outcome).
    pub record: CallRecord,
    /// Where it stands.
    pub state: CallState,
    /// Everyone else, with their state (never ourselves).
    pub participants: Vec<(PeerId, ParticipantState)>,
    /// The caller's page offers to every invitee (the invitation said so): an invitee's page
    /// answers that offer on joining instead of offering to the caller, so joining is one hop.
    pub caller_offers: bool,
}

/// A browser signal from another participant, kept while the call lasts so a page that opens
/// late can catch up.
#[derive(Debug, Clone)]
pub struct RemoteSignal {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Who sent it.
    pub from: PeerId,
    /// "sdp" or "ice".
    pub kind: String,
    /// The browser's JSON, as it sent it.
    pub data: String,
}

/// What changed in a call, pushed to the API's WebSocket.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallEvent {
    /// Someone is calling us: ring.
    Incoming(CallInfo),
    /// The callee's node got our invitation and rings.
    Ringing(CallInfo),
    /// A participant joined.
    Joined {
        /// The call now.
        call: CallInfo,
        /// Who joined.
        peer: PeerId,
    },
    /// A browser signal arrived.
    Signal {
        /// The call.
        call_id: CallId,
        /// The signal.
        signal: RemoteSignal,
    },
    /// A participant left a call that goes on.
    Left {
        /// The call now.
        call: CallInfo,
        /// Who left.
        peer: PeerId,
    },
    /// The call is over for us.
    Ended(CallInfo),
    /// Two people called each other at once: our call `from` gave way to `call`, which we joined.
    Merged {
        /// Our call that gave way (gone from the history).
        from: CallId,
        /// The call we are now in.
        call: CallInfo,
    },
    /// What [`Node::ice_config`] answers changed (TURN credentials from a relay, servers or
    /// "relay only" set): a client that keeps the last answer, so that "Call" need not ask
    /// first, asks again.
    IceChanged,
}

/// One WebRTC signal from the local browser (an SDP description or an ICE candidate, as JSON) for
/// a participant of a live call: the body of `POST /v1/calls/{id}/signal`.
#[derive(Debug, Clone)]
pub struct BrowserSignal {
    /// The participant; may be left out in a call between two people.
    pub to: Option<PeerId>,
    /// `sdp` or `ice`.
    pub kind: String,
    /// The description or candidate, as JSON text.
    pub data: String,
}

/// Who to call.
#[derive(Debug, Clone)]
pub enum CallTarget {
    /// A contact, name or peer id.
    Person(String),
    /// A group by id, id prefix or title (up to [`MAX_CALL_MEMBERS`] members).
    Group(String),
}

/// The live call `id` if it is an incoming call still ringing: the only kind a person can
/// accept or decline (`verb` says which, for the error).
fn ringing_incoming<'a>(
    calls: &'a mut HashMap<CallId, Live>,
    id: &CallId,
    verb: &str,
) -> Result<&'a mut Live, ServiceError> {
    let live = calls
        .get_mut(id)
        .ok_or_else(|| ServiceError::UnknownCall(hex::encode(id)))?;
    if live.record.outgoing || live.state != CallState::Ringing {
        return Err(ServiceError::InvalidMessage(format!(
            "only a ringing incoming call can be {verb}"
        )));
    }
    Ok(live)
}

/// A call in progress, in memory only.
#[derive(Debug)]
struct Live {
    record: CallRecord,
    state: CallState,
    participants: Vec<(PeerId, ParticipantState)>,
    /// Some node answered the invitation (RINGING, ACCEPT, DECLINE or BUSY).
    answered_ring: bool,
    /// See [`CallInfo::caller_offers`].
    caller_offers: bool,
    signals: Vec<RemoteSignal>,
}

impl Live {
    fn info(&self) -> CallInfo {
        CallInfo {
            record: self.record.clone(),
            state: self.state,
            participants: self.participants.clone(),
            caller_offers: self.caller_offers,
        }
    }

    fn set(&mut self, peer: PeerId, state: ParticipantState) -> bool {
        match self.participants.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, s)) => {
                *s = state;
                true
            }
            None => false,
        }
    }

    /// The participants who have not left: whom a hang-up, an answer or a stop is sent to.
    fn still_in(&self) -> Vec<PeerId> {
        self.participants
            .iter()
            .filter(|(_, s)| *s != ParticipantState::Left)
            .map(|(p, _)| *p)
            .collect()
    }

    fn any(&self, state: ParticipantState) -> bool {
        self.participants.iter().any(|(_, s)| *s == state)
    }
}

/// What a relay needs to hand its registered users TURN credentials; the TURN server itself
/// (kith-turn) runs beside the node, started by `kith run --relay --turn`.
#[derive(Clone)]
pub struct TurnIssuer {
    /// The secret the TURN server checks passwords with.
    pub secret: Vec<u8>,
    /// Its `stun:`/`turn:` URLs as users should dial them.
    pub urls: Vec<String>,
    /// How long credentials last (longer than the longest call; kith-turn takes at most 24 h).
    pub ttl: Duration,
}

impl std::fmt::Debug for TurnIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnIssuer")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// TURN credentials from one of our relays (None: it serves no TURN), and when to ask again.
#[derive(Debug, Clone)]
struct RelayTurn {
    server: Option<IceServer>,
    expires_ms: u64,
    ask_again_ms: u64,
}

/// The calls component (issue 12, step 5): owns the calls book and the live calls (their
/// participants, the browser signals kept for a page that opens late), the per-peer invitation
/// limit, the ICE configuration and the TURN credentials our relays handed us. It reaches the rest
/// of the node through the handles it is built with ([`crate::handles`], and [`GroupMembers`]
/// for group calls); `Node`'s call operations delegate to it. Cheap to clone: every clone is the
/// same component.
#[derive(Clone)]
pub(crate) struct Calls {
    shared: Arc<Shared>,
}

/// What [`Calls`] is built from besides its own state.
pub(crate) struct CallsParts {
    /// The node's store: this component writes only its calls book (and flushes).
    pub(crate) store: kith_store::Store,
    /// Who we are (a call names its participants).
    pub(crate) me: PeerId,
    /// How long a call rings before it counts as missed.
    pub(crate) ring_timeout: Duration,
    /// The ICE servers and policy handed to the web app.
    pub(crate) ice: IceConfig,
    /// Relay role: the TURN server whose credentials this node hands out.
    pub(crate) turn: Option<TurnIssuer>,
    /// Signals, summaries and call ids go through direct delivery.
    pub(crate) outbound: Arc<dyn Outbound>,
    /// Call events for the web app and `kith chat`.
    pub(crate) events: Arc<dyn Events>,
    /// Whether a caller is accepted (an invitation from a request never rings).
    pub(crate) trust: Arc<dyn TrustCheck>,
    /// Group calls: the group's members.
    pub(crate) groups: Arc<dyn GroupMembers>,
    /// Everyone in a call keeps their connection.
    pub(crate) connections: Arc<dyn Connections>,
}

/// What a group call needs to know of a group: whether we take part and who its members are.
/// The groups component implements it (router.rs), so calls do not read its book.
pub(crate) trait GroupMembers: Send + Sync {
    /// The group by id (hex), id prefix or title.
    fn group(&self, reference: &str) -> Result<crate::GroupInfo, ServiceError>;
}

struct Shared {
    store: kith_store::Store,
    me: PeerId,
    turn: Option<TurnIssuer>,
    outbound: Arc<dyn Outbound>,
    events: Arc<dyn Events>,
    trust: Arc<dyn TrustCheck>,
    groups: Arc<dyn GroupMembers>,
    connections: Arc<dyn Connections>,
    live: StdMutex<HashMap<CallId, Live>>,
    /// TURN credentials from our relays, by relay.
    relay_turn: StdMutex<HashMap<PeerId, RelayTurn>>,
    /// Call invitations per peer: one, then one per 10 s.
    offers: StdMutex<RateLimiter<PeerId>>,
    ring_timeout: Duration,
    /// Signalling refused: malformed, for an unknown call, from a non-participant, flooded.
    refused: Counter,
    /// ICE servers handed to the web app (TURN on community relays).
    ice: StdMutex<IceConfig>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls").finish_non_exhaustive()
    }
}

/// The RTCConfiguration pieces the web app needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceConfig {
    /// STUN/TURN servers.
    pub servers: Vec<IceServer>,
    /// Send media only through TURN, hiding our addresses from the other side.
    pub relay_only: bool,
}

/// One STUN or TURN server as `RTCIceServer` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `turn:host:port?transport=udp`, `stun:host:port`.
    pub urls: Vec<String>,
    /// TURN user name (REST-style, with its expiry), empty for STUN.
    pub username: String,
    /// TURN password, empty for STUN.
    pub credential: String,
}

impl Calls {
    /// The component over `parts`, its counter registered in `registry`.
    pub(crate) fn new(
        parts: CallsParts,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let refused = Counter::default();
        registry.register(
            "call_signals_refused",
            "Call signals refused (malformed, unknown call, not a participant, invitation flood)",
            refused.clone(),
        );
        Self {
            shared: Arc::new(Shared {
                store: parts.store,
                me: parts.me,
                turn: parts.turn,
                outbound: parts.outbound,
                events: parts.events,
                trust: parts.trust,
                groups: parts.groups,
                connections: parts.connections,
                live: StdMutex::new(HashMap::new()),
                offers: StdMutex::new(RateLimiter::new(Rate {
                    burst: OFFER_BURST,
                    per_sec: OFFER_PER_SEC,
                })),
                ring_timeout: parts.ring_timeout,
                refused,
                ice: StdMutex::new(parts.ice),
                relay_turn: StdMutex::new(HashMap::new()),
            }),
        }
    }

    fn allow_offer(&self, peer: PeerId) -> bool {
        lock(&self.shared.offers).allow(&peer, Instant::now())
    }

    /// A person answered or declined `peer`'s call: calling back at once is no flood.
    fn refund_offer(&self, peer: PeerId) {
        lock(&self.shared.offers).refund(&peer);
    }

    fn unavailable_after(&self) -> Duration {
        UNAVAILABLE_AFTER.min(self.shared.ring_timeout)
    }

    fn calls_component(&self) -> &Shared {
        &self.shared
    }

    fn store(&self) -> &kith_store::Store {
        &self.shared.store
    }

    fn peer_id(&self) -> PeerId {
        self.shared.me
    }
}

/// The history entry's text: what the conversation shows on each side.
pub fn summary_text(outcome: CallOutcome, video: bool, duration_ms: u64, outgoing: bool) -> String {
    let kind = if video { "video call" } else { "call" };
    match outcome {
        CallOutcome::Completed => format!("{kind}, {}", duration_words(duration_ms)),
        CallOutcome::Declined => "declined".to_owned(),
        CallOutcome::Missed if outgoing => format!("{kind}, no answer"),
        CallOutcome::Busy if outgoing => format!("{kind}, busy"),
        CallOutcome::Unavailable if outgoing => format!("{kind}, unavailable"),
        CallOutcome::Missed | CallOutcome::Busy | CallOutcome::Unavailable => {
            format!("missed {kind}")
        }
        CallOutcome::Failed => format!("{kind} failed"),
    }
}

/// "12 s", "3 min", "1 h 5 min".
fn duration_words(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", secs / 60)
    } else {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    }
}

/// Locks a mutex of the component's small state; a poisoned lock still holds usable data (it is
/// only ever held for a few assignments).
fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn parse_call_id(bytes: &[u8]) -> Option<CallId> {
    CallId::try_from(bytes).ok()
}

impl Calls {
    /// Rings the target (see [`Node::start_call`]); `caller_offers`: the caller's client sends
    /// each invitee its SDP offer right after this returns ([`Node::start_call_offering`]).
    pub(crate) async fn place_call(
        &self,
        target: CallTarget,
        video: bool,
        caller_offers: bool,
    ) -> Result<CallInfo, ServiceError> {
        let me = self.peer_id();
        let (group, invitees) = match &target {
            CallTarget::Person(who) => (None, vec![self.shared.outbound.recipient(who).await?]),
            CallTarget::Group(reference) => {
                let group = self.shared.groups.group(reference)?;
                if !group.joined || group.left || group.removed {
                    return Err(ServiceError::GroupClosed(format!(
                        "you are not taking part in '{}'",
                        group.title
                    )));
                }
                if group.members.len() > MAX_CALL_MEMBERS {
                    return Err(ServiceError::InvalidMessage(format!(
                        "'{}' has {} members; a group call takes at most {MAX_CALL_MEMBERS}",
                        group.title,
                        group.members.len()
                    )));
                }
                let others: Vec<PeerId> = group
                    .members
                    .iter()
                    .map(|(p, _)| *p)
                    .filter(|p| *p != me)
                    .collect();
                if others.is_empty() {
                    return Err(ServiceError::InvalidMessage(format!(
                        "'{}' has no other member to call",
                        group.title
                    )));
                }
                (Some(group.id), others)
            }
        };
        if invitees.contains(&me) {
            return Err(ServiceError::InvalidMessage(
                "you cannot call yourself".into(),
            ));
        }
        // Already ringing us from the same person: answer that call (two calls become one).
        let ringing_from_them = {
            let live = lock(&self.calls_component().live);
            let busy = live.values().any(|c| c.state != CallState::Ended);
            let theirs = live
                .values()
                .find(|c| {
                    !c.record.outgoing
                        && c.state == CallState::Ringing
                        && c.record.group_id == group
                        && c.record.peer_id == invitees[0].to_bytes()
                })
                .map(|c| c.record.call_id);
            match theirs {
                Some(id) => Some(id),
                None if busy => return Err(ServiceError::CallBusy),
                None => None,
            }
        };
        if let Some(id) = ringing_from_them {
            return self.accept_call(&id);
        }
        let call_id = self.shared.outbound.next_id()?;
        let now = now_ms();
        let record = CallRecord {
            call_id,
            peer_id: invitees[0].to_bytes(),
            group_id: group,
            outgoing: true,
            video,
            started_ms: now,
            answered_ms: 0,
            ended_ms: 0,
            outcome: None,
            participants: invitees.iter().map(|p| p.to_bytes()).collect(),
        };
        self.store().calls().put(&record)?;
        let live = Live {
            record,
            state: CallState::Ringing,
            participants: invitees
                .iter()
                .map(|p| (*p, ParticipantState::Ringing))
                .collect(),
            answered_ring: false,
            caller_offers,
            signals: Vec::new(),
        };
        let info = live.info();
        {
            let mut calls = lock(&self.calls_component().live);
            if calls.values().any(|c| c.state != CallState::Ended) {
                return Err(ServiceError::CallBusy);
            }
            calls.insert(call_id, live);
        }
        let mut everyone: Vec<Vec<u8>> = vec![me.to_bytes()];
        everyone.extend(invitees.iter().map(|p| p.to_bytes()));
        for peer in &invitees {
            let signal = pb::CallSignal {
                call_id: call_id.to_vec(),
                kind: pb::CallSignalKind::Invite as i32,
                video,
                group_id: group.map(|g| g.to_vec()).unwrap_or_default(),
                participants: everyone.clone(),
                caller_offers,
                ..Default::default()
            };
            self.send_call_signal(*peer, signal)?;
        }
        self.spawn_ring_watch(call_id, true);
        self.shared.connections.refresh_soon();
        Ok(info)
    }

    /// The call history, newest first, live calls with their current state.
    pub(crate) fn calls(&self, limit: usize) -> Result<Vec<CallInfo>, ServiceError> {
        let records = self.store().calls().recent(limit)?;
        let live = lock(&self.calls_component().live);
        Ok(records
            .into_iter()
            .map(|record| match live.get(&record.call_id) {
                Some(l) => l.info(),
                None => ended_info(record),
            })
            .collect())
    }

    /// One call, with the browser signals the others sent so far while it is live.
    pub(crate) fn call(&self, id: &CallId) -> Result<(CallInfo, Vec<RemoteSignal>), ServiceError> {
        if let Some(l) = lock(&self.calls_component().live).get(id) {
            return Ok((l.info(), l.signals.clone()));
        }
        match self.store().calls().get(id)? {
            Some(record) => Ok((ended_info(record), Vec::new())),
            None => Err(ServiceError::UnknownCall(hex::encode(id))),
        }
    }

    /// Answers an incoming call: every other participant is told we joined. The browser then
    /// offers to everyone already joined.
    pub(crate) fn accept_call(&self, id: &CallId) -> Result<CallInfo, ServiceError> {
        let (info, tell) = {
            let mut calls = lock(&self.calls_component().live);
            let live = ringing_incoming(&mut calls, id, "accepted")?;
            live.state = CallState::Active;
            live.record.answered_ms = now_ms();
            if let Ok(caller) = PeerId::from_bytes(&live.record.peer_id) {
                self.refund_offer(caller);
            }
            let tell = live.still_in();
            (live.info(), tell)
        };
        self.store().calls().put(&info.record)?;
        for peer in tell {
            self.send_call_signal(peer, self.signal(id, pb::CallSignalKind::Accept))?;
        }
        Ok(info)
    }

    /// Declines an incoming call that is ringing.
    pub(crate) fn decline_call(&self, id: &CallId) -> Result<CallInfo, ServiceError> {
        let caller = {
            let mut calls = lock(&self.calls_component().live);
            let live = ringing_incoming(&mut calls, id, "declined")?;
            PeerId::from_bytes(&live.record.peer_id).ok()
        };
        if let Some(caller) = caller {
            self.refund_offer(caller);
            self.send_call_signal(caller, self.signal(id, pb::CallSignalKind::Decline))?;
        }
        self.end_call(id, CallOutcome::Declined)
            .ok_or_else(|| ServiceError::UnknownCall(hex::encode(id)))
    }

    /// Leaves a call (or stops ringing someone, or declines): the others are told at once.
    pub(crate) fn hangup_call(&self, id: &CallId) -> Result<CallInfo, ServiceError> {
        let (tell, outcome) = {
            let calls = lock(&self.calls_component().live);
            let Some(live) = calls.get(id) else {
                // Already over: hanging up again is not an error.
                drop(calls);
                return self.call(id).map(|(info, _)| info);
            };
            let tell = live.still_in();
            let outcome = match (live.state, live.record.outgoing) {
                (CallState::Active, _) => CallOutcome::Completed,
                (_, true) => CallOutcome::Missed,
                (_, false) => CallOutcome::Declined,
            };
            (tell, outcome)
        };
        for peer in tell {
            let kind = if outcome == CallOutcome::Declined {
                pb::CallSignalKind::Decline
            } else {
                pb::CallSignalKind::Hangup
            };
            self.send_call_signal(peer, self.signal(id, kind))?;
        }
        self.end_call(id, outcome)
            .ok_or_else(|| ServiceError::UnknownCall(hex::encode(id)))
    }

    /// Passes one browser signal (SDP or ICE candidate, as JSON) to a participant of a live call.
    /// `to` may be left out in a call between two people.
    pub(crate) fn call_signal(
        &self,
        id: &CallId,
        signal: BrowserSignal,
    ) -> Result<(), ServiceError> {
        let BrowserSignal { to, kind, data } = signal;
        let kind = kind.as_str();
        check_media(kind, &data).map_err(ServiceError::InvalidMessage)?;
        let to = {
            let calls = lock(&self.calls_component().live);
            let live = calls
                .get(id)
                .ok_or_else(|| ServiceError::UnknownCall(hex::encode(id)))?;
            match to {
                Some(peer) if live.participants.iter().any(|(p, _)| *p == peer) => peer,
                Some(peer) => {
                    return Err(ServiceError::InvalidMessage(format!(
                        "{peer} is not in this call"
                    )));
                }
                None => match live.participants.as_slice() {
                    [(peer, _)] => *peer,
                    _ => {
                        return Err(ServiceError::InvalidMessage(
                            "a group call's signal needs `to`".into(),
                        ));
                    }
                },
            }
        };
        let mut signal = self.signal(id, pb::CallSignalKind::Media);
        signal.media_kind = kind.to_owned();
        signal.data = data;
        self.send_call_signal(to, signal)
    }

    /// Everyone in a call that is ringing or going on (their connections are kept).
    pub(crate) fn call_participants(&self) -> Vec<PeerId> {
        lock(&self.calls_component().live)
            .values()
            .flat_map(|c| c.participants.iter().map(|(p, _)| *p))
            .collect()
    }

    /// The ICE servers and policy the web app should use: the configured ones, then TURN on
    /// our relays while its credentials last.
    pub(crate) fn ice_config(&self) -> IceConfig {
        let mut config = lock(&self.calls_component().ice).clone();
        let now = now_ms();
        let mut from_relays: Vec<IceServer> = lock(&self.calls_component().relay_turn)
            .values()
            .filter(|t| t.expires_ms > now)
            .filter_map(|t| t.server.clone())
            .collect();
        from_relays.sort_by(|a, b| a.urls.cmp(&b.urls));
        config.servers.extend(from_relays);
        config
    }

    /// Whether it is time to ask `relay` for TURN credentials (none yet, or they run out soon).
    pub(crate) fn turn_due(&self, relay: PeerId) -> bool {
        lock(&self.calls_component().relay_turn)
            .get(&relay)
            .is_none_or(|t| now_ms() >= t.ask_again_ms)
    }

    /// Records what `relay` answered: credentials (asked again an hour before they expire, or
    /// halfway through if they are shorter), or none (asked again in 10 minutes).
    pub(crate) fn set_relay_turn(&self, relay: PeerId, answer: Option<pb::TurnCredentials>) {
        let now = now_ms();
        let entry = match answer {
            Some(turn) if turn.expires_at_ms > now && !turn.urls.is_empty() => {
                let left = turn.expires_at_ms - now;
                RelayTurn {
                    server: Some(IceServer {
                        urls: turn.urls,
                        username: turn.username,
                        credential: turn.credential,
                    }),
                    expires_ms: turn.expires_at_ms,
                    ask_again_ms: now + left.saturating_sub(3_600_000).max(left / 2),
                }
            }
            _ => RelayTurn {
                server: None,
                expires_ms: 0,
                ask_again_ms: now + 600_000,
            },
        };
        self.emit_if_ice_changed(|| {
            lock(&self.calls_component().relay_turn).insert(relay, entry);
        });
    }

    /// Runs `change`, then tells clients when the ICE configuration they would get differs.
    fn emit_if_ice_changed(&self, change: impl FnOnce()) {
        let before = self.ice_config();
        change();
        if self.ice_config() != before {
            self.shared
                .events
                .emit(MessageEvent::Call(CallEvent::IceChanged));
        }
    }

    /// Relay side: fresh TURN credentials for `peer`, if this node hands any out.
    pub(crate) fn issue_turn(&self, peer: PeerId) -> Option<pb::TurnCredentials> {
        let issuer = self.shared.turn.as_ref()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let credentials =
            kith_turn::Credentials::mint(&issuer.secret, &peer.to_string(), issuer.ttl, now);
        Some(pb::TurnCredentials {
            urls: issuer.urls.clone(),
            username: credentials.username,
            credential: credentials.password,
            expires_at_ms: credentials.expires_at_unix_secs.saturating_mul(1000),
        })
    }

    /// Replaces the ICE servers (TURN credentials are renewed by whoever issues them).
    pub(crate) fn set_ice_servers(&self, servers: Vec<IceServer>) {
        self.emit_if_ice_changed(|| lock(&self.calls_component().ice).servers = servers);
    }

    /// "Relay only": media only through TURN, so the other side never learns our addresses.
    pub(crate) fn set_relay_only(&self, relay_only: bool) {
        self.emit_if_ice_changed(|| lock(&self.calls_component().ice).relay_only = relay_only);
    }

    fn signal(&self, id: &CallId, kind: pb::CallSignalKind) -> pb::CallSignal {
        pb::CallSignal {
            call_id: id.to_vec(),
            kind: kind as i32,
            ..Default::default()
        }
    }

    fn send_call_signal(&self, peer: PeerId, signal: pb::CallSignal) -> Result<(), ServiceError> {
        tracing::debug!(%peer, call = %hex::encode(&signal.call_id), kind = signal.kind, media = %signal.media_kind, "call signal out");
        let ttl = self.calls_component().ring_timeout;
        self.shared
            .outbound
            .send_ephemeral(peer, pb::direct_payload::Body::CallSignal(signal), ttl)
            .map(|_| ())
    }

    /// Watches a ringing call: unavailable when no node answered the ring in time (outgoing),
    /// missed when nobody joined before the ring timeout.
    fn spawn_ring_watch(&self, id: CallId, outgoing: bool) {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let unavailable_after = self.unavailable_after();
        let ring_timeout = self.calls_component().ring_timeout;
        tokio::spawn(async move {
            if outgoing {
                tokio::time::sleep(unavailable_after).await;
                let Some(node) = weak.upgrade().map(|shared| Calls { shared }) else {
                    return;
                };
                let unanswered = lock(&node.calls_component().live)
                    .get(&id)
                    .is_some_and(|c| c.state == CallState::Ringing && !c.answered_ring);
                if unanswered {
                    node.give_up_ringing(&id, CallOutcome::Unavailable);
                    return;
                }
            }
            tokio::time::sleep(ring_timeout.saturating_sub(if outgoing {
                unavailable_after
            } else {
                Duration::ZERO
            }))
            .await;
            let Some(node) = weak.upgrade().map(|shared| Calls { shared }) else {
                return;
            };
            let still_ringing = lock(&node.calls_component().live)
                .get(&id)
                .is_some_and(|c| c.state == CallState::Ringing);
            if still_ringing {
                if outgoing {
                    node.give_up_ringing(&id, CallOutcome::Missed);
                } else {
                    node.end_call(&id, CallOutcome::Missed);
                }
            }
        });
    }

    /// Ends our ringing call and tells the invitees to stop ringing.
    fn give_up_ringing(&self, id: &CallId, outcome: CallOutcome) {
        let tell: Vec<PeerId> = lock(&self.calls_component().live)
            .get(id)
            .map(Live::still_in)
            .unwrap_or_default();
        for peer in tell {
            if let Err(e) = self.send_call_signal(peer, self.signal(id, pb::CallSignalKind::Hangup))
            {
                tracing::debug!(%peer, error = %e, "could not send a hang-up");
            }
        }
        self.end_call(id, outcome);
    }

    /// Ends a live call: the history entry is written, `call.ended` goes out, and the caller of a
    /// call between two people sends the summary both conversations show. None if it was not live.
    pub(crate) fn end_call(&self, id: &CallId, outcome: CallOutcome) -> Option<CallInfo> {
        let mut live = lock(&self.calls_component().live).remove(id)?;
        live.state = CallState::Ended;
        live.record.ended_ms = now_ms();
        live.record.outcome = Some(outcome);
        for (_, s) in &mut live.participants {
            *s = ParticipantState::Left;
        }
        if let Err(e) = self.store().calls().put(&live.record) {
            tracing::warn!(error = %e, "cannot record the end of a call");
        }
        let info = live.info();
        self.shared
            .events
            .emit(MessageEvent::Call(CallEvent::Ended(info.clone())));
        self.shared.connections.refresh_soon();
        // A call hung up before the callee's node even rang leaves no entry on their side (a
        // ring flood must not fill their history); an unreachable callee hears of it later.
        let worth_telling = live.answered_ring || outcome == CallOutcome::Unavailable;
        if live.record.outgoing
            && live.record.group_id.is_none()
            && worth_telling
            && let Ok(peer) = PeerId::from_bytes(&live.record.peer_id)
        {
            let node = self.clone();
            let record = live.record.clone();
            tokio::spawn(async move {
                let summary = pb::CallSummary {
                    call_id: record.call_id.to_vec(),
                    video: record.video,
                    outcome: outcome.to_proto() as i32,
                    duration_ms: record.duration_ms(),
                };
                let text = summary_text(outcome, record.video, record.duration_ms(), true);
                if let Err(e) = node
                    .shared
                    .outbound
                    .send_shown(
                        peer,
                        Shown {
                            body: pb::direct_payload::Body::CallSummary(summary),
                            text,
                            before_store: Box::new(|_| Ok(())),
                        },
                    )
                    .await
                {
                    tracing::warn!(%peer, error = %e, "cannot send the call summary");
                }
            });
        } else {
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.store().flush().await {
                    tracing::debug!(error = %e, "cannot flush the call history");
                }
            });
        }
        Some(info)
    }

    /// Ends what a crash left marked as going (start-up): answered calls as failed, others missed.
    pub(crate) fn close_unfinished_calls(&self) {
        let Ok(unfinished) = self.store().calls().unfinished() else {
            return;
        };
        for mut record in unfinished {
            record.outcome = Some(if record.answered_ms > 0 {
                CallOutcome::Failed
            } else {
                CallOutcome::Missed
            });
            record.ended_ms = now_ms();
            if let Err(e) = self.store().calls().put(&record) {
                tracing::warn!(error = %e, "cannot close an unfinished call");
            }
        }
    }

    /// Ends every live call (the node is stopping): the others are told we hung up. Returns how
    /// many there were.
    pub(crate) fn hang_up_all(&self) -> usize {
        let ids: Vec<CallId> = lock(&self.calls_component().live).keys().copied().collect();
        for id in &ids {
            let _ = self.hangup_call(id);
        }
        ids.len()
    }

    /// Checks a received signal before its Olm step is acknowledged: malformed ones are refused.
    pub(crate) fn check_call_signal(signal: &pb::CallSignal) -> Result<(), String> {
        if parse_call_id(&signal.call_id).is_none() {
            return Err("call id is not 16 bytes".into());
        }
        match pb::CallSignalKind::try_from(signal.kind) {
            Ok(pb::CallSignalKind::Media) => check_media(&signal.media_kind, &signal.data),
            Ok(pb::CallSignalKind::Invite) => {
                if signal.participants.len() < 2 || signal.participants.len() > MAX_CALL_MEMBERS {
                    return Err("an invitation names 2 to 4 participants".into());
                }
                if !signal.group_id.is_empty() && signal.group_id.len() != 16 {
                    return Err("group id is not 16 bytes".into());
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) => Err("unknown call signal".into()),
        }
    }

    /// Counts a refused call signal.
    pub(crate) fn refuse_call_signal(&self, peer: PeerId, reason: &str) {
        self.calls_component().refused.inc();
        tracing::info!(%peer, %reason, "refused a call signal");
    }

    /// A call signal from `peer`, already decrypted, checked and stored-acknowledged.
    pub(crate) fn on_call_signal(&self, peer: PeerId, signal: pb::CallSignal) {
        tracing::debug!(%peer, call = %hex::encode(&signal.call_id), kind = signal.kind, media = %signal.media_kind, "call signal in");
        let Some(id) = parse_call_id(&signal.call_id) else {
            return self.refuse_call_signal(peer, "bad call id");
        };
        let kind = pb::CallSignalKind::try_from(signal.kind);
        if kind == Ok(pb::CallSignalKind::Invite) {
            return self.on_invite(peer, id, signal);
        }
        let mut events = Vec::new();
        let mut end = None;
        {
            let mut calls = lock(&self.calls_component().live);
            let Some(live) = calls.get_mut(&id) else {
                drop(calls);
                // Late signals of a call that just ended are normal; anything else is counted.
                if self.store().calls().get(&id).ok().flatten().is_none() {
                    self.refuse_call_signal(peer, "unknown call");
                }
                return;
            };
            if !live.participants.iter().any(|(p, _)| *p == peer) {
                drop(calls);
                return self.refuse_call_signal(peer, "not a participant");
            }
            match kind {
                Ok(pb::CallSignalKind::Ringing) => {
                    if !live.answered_ring {
                        live.answered_ring = true;
                        events.push(CallEvent::Ringing(live.info()));
                    }
                }
                Ok(pb::CallSignalKind::Accept) => {
                    live.answered_ring = true;
                    live.set(peer, ParticipantState::Joined);
                    if live.record.outgoing && live.state == CallState::Ringing {
                        live.state = CallState::Active;
                        live.record.answered_ms = now_ms();
                        if let Err(e) = self.store().calls().put(&live.record) {
                            tracing::warn!(error = %e, "cannot record an answered call");
                        }
                    }
                    events.push(CallEvent::Joined {
                        call: live.info(),
                        peer,
                    });
                }
                Ok(
                    k @ (pb::CallSignalKind::Decline
                    | pb::CallSignalKind::Busy
                    | pb::CallSignalKind::Hangup),
                ) => {
                    live.answered_ring = true;
                    live.set(peer, ParticipantState::Left);
                    let anyone_left = live.any(ParticipantState::Joined)
                        || (live.state == CallState::Ringing
                            && live.record.outgoing
                            && live.any(ParticipantState::Ringing));
                    if anyone_left {
                        events.push(CallEvent::Left {
                            call: live.info(),
                            peer,
                        });
                    } else {
                        end = Some(match (live.state, k) {
                            (CallState::Active, _) => CallOutcome::Completed,
                            (_, pb::CallSignalKind::Decline) => CallOutcome::Declined,
                            (_, pb::CallSignalKind::Busy) => CallOutcome::Busy,
                            // The caller gave up before we answered.
                            _ => CallOutcome::Missed,
                        });
                    }
                }
                Ok(pb::CallSignalKind::Media) => {
                    if live.signals.len() >= MAX_SIGNALS_KEPT {
                        drop(calls);
                        return self.refuse_call_signal(peer, "too many signals for one call");
                    }
                    let remote = RemoteSignal {
                        seq: live.signals.len() as u64 + 1,
                        from: peer,
                        kind: signal.media_kind,
                        data: signal.data,
                    };
                    live.signals.push(remote.clone());
                    events.push(CallEvent::Signal {
                        call_id: id,
                        signal: remote,
                    });
                }
                _ => {
                    drop(calls);
                    return self.refuse_call_signal(peer, "unexpected call signal");
                }
            }
        }
        for event in events {
            self.shared.events.emit(MessageEvent::Call(event));
        }
        if let Some(outcome) = end {
            self.end_call(&id, outcome);
        }
    }

    fn on_invite(&self, peer: PeerId, id: CallId, signal: pb::CallSignal) {
        let me = self.peer_id();
        let participants: Vec<PeerId> = signal
            .participants
            .iter()
            .filter_map(|p| PeerId::from_bytes(p).ok())
            .collect();
        if participants.len() != signal.participants.len()
            || participants.first() != Some(&peer)
            || !participants.contains(&me)
        {
            return self.refuse_call_signal(peer, "invitation does not name its caller and us");
        }
        let group = if signal.group_id.is_empty() {
            if participants.len() != 2 {
                return self.refuse_call_signal(peer, "a call between two people names two");
            }
            None
        } else {
            let Ok(group) = kith_store::GroupId::try_from(signal.group_id.as_slice()) else {
                return self.refuse_call_signal(peer, "bad group id");
            };
            match self.shared.groups.group(&hex::encode(group)) {
                Ok(g)
                    if g.joined
                        && !g.left
                        && !g.removed
                        && participants
                            .iter()
                            .all(|p| g.members.iter().any(|(m, _)| m == p)) => {}
                _ => return self.refuse_call_signal(peer, "not a group call of ours"),
            }
            Some(group)
        };
        let trusted = group.is_some() || self.shared.trust.is_accepted(peer);
        if !trusted {
            // Never rings; the caller's summary lands in requests as a missed call.
            return self.refuse_call_signal(peer, "invitation from someone not accepted");
        }
        if lock(&self.calls_component().live).contains_key(&id) {
            return; // the same invitation again (a sender that lost our ack)
        }
        if self.store().calls().get(&id).ok().flatten().is_some() {
            // Its summary overtook it: the call is over.
            return self.refuse_call_signal(peer, "invitation for a call that is over");
        }
        if !self.allow_offer(peer) {
            return self.refuse_call_signal(peer, "too many invitations");
        }
        // Crossing calls: the earlier call id wins on both sides.
        let crossing = lock(&self.calls_component().live)
            .values()
            .find(|c| {
                c.record.outgoing
                    && c.state == CallState::Ringing
                    && group.is_none()
                    && c.record.group_id.is_none()
                    && c.record.peer_id == peer.to_bytes()
            })
            .map(|c| c.record.call_id);
        if let Some(ours) = crossing
            && ours < id
        {
            return; // they join ours
        }
        let busy = lock(&self.calls_component().live)
            .values()
            .any(|c| c.state != CallState::Ended && Some(c.record.call_id) != crossing);
        if busy {
            if let Err(e) = self.send_call_signal(peer, self.signal(&id, pb::CallSignalKind::Busy))
            {
                tracing::debug!(%peer, error = %e, "could not answer busy");
            }
            return;
        }
        let record = CallRecord {
            call_id: id,
            peer_id: peer.to_bytes(),
            group_id: group,
            outgoing: false,
            video: signal.video,
            started_ms: now_ms(),
            answered_ms: 0,
            ended_ms: 0,
            outcome: None,
            participants: participants
                .iter()
                .filter(|p| **p != me)
                .map(|p| p.to_bytes())
                .collect(),
        };
        if let Err(e) = self.store().calls().put(&record) {
            tracing::warn!(error = %e, "cannot record an incoming call");
            return;
        }
        let live = Live {
            record,
            state: CallState::Ringing,
            participants: participants
                .iter()
                .filter(|p| **p != me)
                .map(|p| {
                    let state = if *p == peer {
                        ParticipantState::Joined
                    } else {
                        ParticipantState::Ringing
                    };
                    (*p, state)
                })
                .collect(),
            answered_ring: true,
            caller_offers: signal.caller_offers,
            signals: Vec::new(),
        };
        let info = live.info();
        lock(&self.calls_component().live).insert(id, live);
        if let Some(ours) = crossing {
            // Our own call to them gives way: it never was a call of its own.
            lock(&self.calls_component().live).remove(&ours);
            if let Err(e) = self.store().calls().remove(&ours) {
                tracing::warn!(error = %e, "cannot remove a merged call");
            }
            match self.accept_call(&id) {
                Ok(call) => self
                    .shared
                    .events
                    .emit(MessageEvent::Call(CallEvent::Merged { from: ours, call })),
                Err(e) => tracing::warn!(error = %e, "cannot join a crossing call"),
            }
            return;
        }
        if let Err(e) = self.send_call_signal(peer, self.signal(&id, pb::CallSignalKind::Ringing)) {
            tracing::debug!(%peer, error = %e, "could not answer ringing");
        }
        self.shared
            .events
            .emit(MessageEvent::Call(CallEvent::Incoming(info)));
        self.spawn_ring_watch(id, false);
        self.shared.connections.refresh_soon();
    }

    /// A summary of a call from its caller: recorded in the history (a callee that was offline
    /// learns of the missed call this way). Returns the conversation's text for it.
    pub(crate) fn on_call_summary(
        &self,
        peer: PeerId,
        summary: &pb::CallSummary,
        sent_at_ms: u64,
    ) -> Result<String, String> {
        let id = parse_call_id(&summary.call_id).ok_or("call id is not 16 bytes")?;
        let outcome = CallOutcome::from_proto(summary.outcome);
        let known = self.store().calls().get(&id).ok().flatten();
        let finished = known.as_ref().is_some_and(|r| r.outcome.is_some());
        if !finished && !lock(&self.calls_component().live).contains_key(&id) {
            let record = CallRecord {
                call_id: id,
                peer_id: peer.to_bytes(),
                group_id: None,
                outgoing: false,
                video: summary.video,
                started_ms: sent_at_ms.saturating_sub(summary.duration_ms),
                answered_ms: if summary.duration_ms > 0 {
                    sent_at_ms.saturating_sub(summary.duration_ms)
                } else {
                    0
                },
                ended_ms: sent_at_ms,
                outcome: Some(outcome),
                participants: vec![peer.to_bytes()],
            };
            if let Err(e) = self.store().calls().put(&record) {
                tracing::warn!(error = %e, "cannot record a call summary");
            }
        }
        Ok(summary_text(
            outcome,
            summary.video,
            summary.duration_ms,
            false,
        ))
    }
}

/// `Node`'s call operations (what kith-api, the CLI and the mailbox client call): delegations
/// to [`Calls`].
impl Node {
    /// Starts a call: rings the person (or up to three other members of a group) and returns at
    /// once; `call.ringing`, `call.joined` and `call.ended` events tell what happens next. When
    /// that person is ringing us already, this answers their call instead. Whoever joins makes
    /// the WebRTC offers (see [`Node::start_call_offering`] for the faster way).
    pub async fn start_call(
        &self,
        target: CallTarget,
        video: bool,
    ) -> Result<CallInfo, ServiceError> {
        self.inner.calls.place_call(target, video, false).await
    }

    /// [`Node::start_call`] for a client that sends each invitee its SDP offer right after this
    /// returns (the web app): the invitations say so, and an invitee answers that offer when it
    /// joins, so the media connection needs one signal hop after the answer, not three.
    pub async fn start_call_offering(
        &self,
        target: CallTarget,
        video: bool,
    ) -> Result<CallInfo, ServiceError> {
        self.inner.calls.place_call(target, video, true).await
    }

    /// The call history, newest first, live calls with their current state.
    pub fn calls(&self, limit: usize) -> Result<Vec<CallInfo>, ServiceError> {
        self.inner.calls.calls(limit)
    }

    /// One call, with the browser signals the others sent so far while it is live.
    pub fn call(&self, id: &CallId) -> Result<(CallInfo, Vec<RemoteSignal>), ServiceError> {
        self.inner.calls.call(id)
    }

    /// Answers an incoming call: every other participant is told we joined. The browser then
    /// offers to everyone already joined.
    pub fn accept_call(&self, id: &CallId) -> Result<CallInfo, ServiceError> {
        self.inner.calls.accept_call(id)
    }

    /// Declines an incoming call that is ringing.
    pub fn decline_call(&self, id: &CallId) -> Result<CallInfo, ServiceError> {
        self.inner.calls.decline_call(id)
    }

    /// Leaves a call (or stops ringing someone, or declines): the others are told at once.
    pub fn hangup_call(&self, id: &CallId) -> Result<CallInfo, ServiceError> {
        self.inner.calls.hangup_call(id)
    }

    /// Passes one browser signal (SDP or ICE candidate, as JSON) to a participant of a live call.
    /// `to` may be left out in a call between two people.
    pub fn call_signal(&self, id: &CallId, signal: BrowserSignal) -> Result<(), ServiceError> {
        self.inner.calls.call_signal(id, signal)
    }

    /// The ICE servers and policy the web app should use: the configured ones, then TURN on
    /// our relays while its credentials last.
    pub fn ice_config(&self) -> IceConfig {
        self.inner.calls.ice_config()
    }

    /// Replaces the ICE servers (TURN credentials are renewed by whoever issues them).
    pub fn set_ice_servers(&self, servers: Vec<IceServer>) {
        self.inner.calls.set_ice_servers(servers)
    }

    /// "Relay only": media only through TURN, so the other side never learns our addresses.
    pub fn set_relay_only(&self, relay_only: bool) {
        self.inner.calls.set_relay_only(relay_only)
    }
}

/// A call from the store that is not live: ended (or left unfinished by a crash).
fn ended_info(record: CallRecord) -> CallInfo {
    let participants = record
        .participants
        .iter()
        .filter_map(|p| PeerId::from_bytes(p).ok())
        .map(|p| (p, ParticipantState::Left))
        .collect();
    CallInfo {
        record,
        state: CallState::Ended,
        participants,
        caller_offers: false,
    }
}

/// A browser signal must be an SDP or ICE candidate as JSON, of bounded size.
fn check_media(kind: &str, data: &str) -> Result<(), String> {
    if kind != "sdp" && kind != "ice" {
        return Err(format!("signal kind '{kind}' is neither 'sdp' nor 'ice'"));
    }
    if data.len() > MAX_SIGNAL_BYTES {
        return Err(format!(
            "signal of {} bytes is over the {MAX_SIGNAL_BYTES}-byte limit",
            data.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_as_each_side_expects() {
        let cases = [
            (CallOutcome::Completed, false, 185_000, true, "call, 3 min"),
            (
                CallOutcome::Completed,
                true,
                12_400,
                false,
                "video call, 12 s",
            ),
            (
                CallOutcome::Completed,
                false,
                3_900_000,
                false,
                "call, 1 h 5 min",
            ),
            (CallOutcome::Missed, false, 0, false, "missed call"),
            (CallOutcome::Missed, true, 0, true, "video call, no answer"),
            (CallOutcome::Unavailable, false, 0, false, "missed call"),
            (
                CallOutcome::Unavailable,
                false,
                0,
                true,
                "call, unavailable",
            ),
            (CallOutcome::Busy, false, 0, false, "missed call"),
            (CallOutcome::Declined, false, 0, true, "declined"),
            (CallOutcome::Declined, false, 0, false, "declined"),
        ];
        for (outcome, video, duration_ms, outgoing, expected) in cases {
            assert_eq!(
                summary_text(outcome, video, duration_ms, outgoing),
                expected,
                "{outcome:?} video={video} {duration_ms} ms outgoing={outgoing}"
            );
        }
    }

    #[test]
    fn malformed_signals_are_refused() {
        let ok = pb::CallSignal {
            call_id: vec![1; 16],
            kind: pb::CallSignalKind::Media as i32,
            media_kind: "sdp".into(),
            data: "{}".into(),
            ..Default::default()
        };
        assert!(Calls::check_call_signal(&ok).is_ok());
        let short_id = pb::CallSignal {
            call_id: vec![1; 15],
            ..ok.clone()
        };
        assert!(Calls::check_call_signal(&short_id).is_err());
        let bad_kind = pb::CallSignal {
            media_kind: "audio".into(),
            ..ok.clone()
        };
        assert!(Calls::check_call_signal(&bad_kind).is_err());
        let huge = pb::CallSignal {
            data: "x".repeat(MAX_SIGNAL_BYTES + 1),
            ..ok.clone()
        };
        assert!(Calls::check_call_signal(&huge).is_err());
        let unknown = pb::CallSignal {
            kind: 99,
            ..ok.clone()
        };
        assert!(Calls::check_call_signal(&unknown).is_err());
        let lonely_invite = pb::CallSignal {
            kind: pb::CallSignalKind::Invite as i32,
            participants: vec![vec![1]],
            ..ok.clone()
        };
        assert!(Calls::check_call_signal(&lonely_invite).is_err());
        let crowded_invite = pb::CallSignal {
            kind: pb::CallSignalKind::Invite as i32,
            participants: vec![vec![1]; MAX_CALL_MEMBERS + 1],
            ..ok
        };
        assert!(Calls::check_call_signal(&crowded_invite).is_err());
    }
}
