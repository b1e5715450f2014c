//! The composed `NetworkBehaviour`. Field order is the order behaviours are consulted in, so the
//! connection limits come first: a later denial after others accepted a connection has caused
//! inconsistent state upstream (rust-libp2p #4773, #4870).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ops::{Deref, DerefMut},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId, StreamProtocol, autonat, connection_limits,
    core::Endpoint,
    dcutr, gossipsub, identify,
    identity::Keypair,
    kad, mdns, memory_connection_limits, ping, relay, request_response,
    swarm::{
        ConnectionDenied, ConnectionId, DialError, DialFailure, FromSwarm, NetworkBehaviour,
        NotifyHandler, THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::toggle::Toggle,
    },
};

use prometheus_client::metrics::counter::Counter;

use crate::{
    Config, ConnectionBudget, DhtMode, IDENTIFY_PROTOCOL, NetError,
    admission::DhtAdmission,
    autonat_server::{self, LimitedServer},
    gate::OpenCount,
};

/// Largest gossipsub message; group envelopes are capped below this by the service.
const GOSSIP_MAX_TRANSMIT: usize = 256 * 1024;

/// kith's gossipsub mesh and timing settings, before the application's validation is switched
/// on: kith-bench's raw gossipsub baseline builds its swarms from the same settings, so
/// `group.latency` compares like with like.
pub fn gossip_settings() -> gossipsub::ConfigBuilder {
    let mut builder = gossipsub::ConfigBuilder::default();
    builder
        .validation_mode(gossipsub::ValidationMode::Strict)
        .heartbeat_initial_delay(Duration::from_millis(200))
        .heartbeat_interval(Duration::from_millis(700))
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        .mesh_outbound_min(1)
        .max_transmit_size(GOSSIP_MAX_TRANSMIT)
        // Identical ciphertext is the same message: retries and relayed copies deduplicate.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        });
    builder
}

/// Every protocol a kith node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Caps established and pending connections; first so it can refuse before anyone accepts.
    pub(crate) limits: connection_limits::Behaviour,
    /// Refuses inbound connections from unprotected peers at the high water mark (`gate.rs`).
    pub(crate) gate: crate::gate::InboundGate,
    /// Refuses new connections when the process uses more than 90% of system memory.
    pub(crate) memory: memory_connection_limits::Behaviour,
    /// Lets NATed nodes listen through a relay (reservations come with the relay issue).
    pub(crate) relay_client: relay::client::Behaviour,
    /// Upgrades relayed connections to direct ones by hole punching.
    pub(crate) dcutr: dcutr::Behaviour,
    /// Relay mode only: circuit relay v2 server.
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// Personal nodes: asks AutoNAT servers (any kith peer) whether our addresses are reachable.
    pub(crate) autonat_client: Toggle<autonat::v2::client::Behaviour>,
    /// Every node: answers other nodes' AutoNAT probes, rate-limited, so peers that can reach each
    /// other confirm each other's addresses without a public server.
    pub(crate) autonat_server: crate::autonat_server::LimitedServer,
    /// Exchanges listen addresses and protocols; feeds the routing table.
    pub(crate) identify: identify::Behaviour,
    /// Liveness and RTT.
    pub(crate) ping: ping::Behaviour,
    /// kith's private DHT, noting which peers it exchanges messages with (for the connection
    /// manager).
    pub(crate) kad: TrackedKad,
    /// Direct messages: one encrypted envelope per request, one ack per response.
    pub(crate) dm: request_response::Behaviour<crate::dm::Codec>,
    /// Mailboxes at community relays: register, deposit, fetch, delete.
    pub(crate) mailbox: request_response::Behaviour<crate::dm::Codec>,
    /// Group catch-up: a member asks another for the envelopes it lacks.
    pub(crate) sync: request_response::Behaviour<crate::dm::Codec>,
    /// Group messaging.
    pub(crate) gossipsub: gossipsub::Behaviour<gossipsub::IdentityTransform, GossipFilter>,
    /// LAN discovery; off in tests and on servers.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// File transfer (`/kith/blob/1.0.0`): plain streams handed to kith-blob through a control
    /// handle, so the bytes never pass through the event loop.
    pub(crate) blob: libp2p_stream::Behaviour,
}

/// Subscription filter with limits far above gossipsub 0.50's default of 100 topics: with the
/// default, a node in more than 100 groups sends a hello that peers reject wholesale.
pub(crate) type GossipFilter =
    gossipsub::MaxCountSubscriptionFilter<gossipsub::AllowAllSubscriptionFilter>;

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        metrics: &crate::Metrics,
    ) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(max_established(config)))
                .with_max_established_per_peer(Some(4))
                .with_max_pending_incoming(Some(64))
                .with_max_pending_outgoing(Some(64)),
        );

        let kad_protocol = StreamProtocol::try_from_owned(crate::kad_protocol(&config.network_id))
            .map_err(|_| NetError::NetworkId(config.network_id.clone()))?;
        let mut kad_config = kad::Config::new(kad_protocol);
        kad_config.set_query_timeout(config.query_timeout);
        // kith validates every record itself before storing it (names, key bundles).
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
        let admission = DhtAdmission::new(config.peer_id_difficulty);
        kad_config.set_kbucket_inserts(admission.bucket_inserts());
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        let mode = match (config.relay_server, config.dht_mode) {
            (true, _) | (false, DhtMode::Server) => Some(kad::Mode::Server),
            (false, DhtMode::Client) => Some(kad::Mode::Client),
            (false, DhtMode::Auto) => None,
        };
        kad.set_mode(admission.own_mode(&peer_id, mode));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(config.agent_version.clone())
                .with_push_listen_addr_updates(true),
        );

        let gossip_config = gossip_settings()
            .validate_messages()
            .build()
            .map_err(|e| NetError::Behaviour(format!("gossipsub: {e}")))?;
        let gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
            gossipsub::MaxCountSubscriptionFilter {
                filter: gossipsub::AllowAllSubscriptionFilter {},
                max_subscribed_topics: 10_000,
                max_subscriptions_per_request: 10_000,
            },
        )
        .map_err(|e| NetError::Behaviour(format!("gossipsub: {e}")))?;

        let mdns = if config.mdns {
            let mdns_config = mdns::Config {
                query_interval: Duration::from_secs(30),
                ..Default::default()
            };
            Toggle::from(Some(
                mdns::tokio::Behaviour::new(mdns_config, peer_id)
                    .map_err(|e| NetError::Behaviour(format!("mDNS: {e}")))?,
            ))
        } else {
            Toggle::from(None)
        };

        let (relay_server, autonat_server, autonat_client) = if config.relay_server {
            (
                Toggle::from(Some(relay_server(peer_id, &config.relay_limits))),
                // A community relay probes for many clients.
                LimitedServer::new(autonat_server::Limits {
                    global_per_minute: 600,
                    ..Default::default()
                })
                .busy_at(config.connection_budget().high),
                Toggle::from(None),
            )
        } else {
            (
                Toggle::from(None),
                LimitedServer::new(autonat_server::Limits::default())
                    .busy_at(config.connection_budget().high),
                Toggle::from(Some(autonat::v2::client::Behaviour::default())),
            )
        };

        Ok(Self {
            limits,
            gate: crate::gate::InboundGate::new(
                config.connection_budget(),
                metrics.connections_refused_counter(),
            ),
            memory: memory_connection_limits::Behaviour::with_max_percentage(0.9),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            relay_server,
            autonat_client,
            autonat_server,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad: TrackedKad::new(
                kad,
                admission,
                metrics.dht_referrals_refused_counter(),
                config.connection_budget(),
                metrics.dht_dials_held_back_counter(),
            ),
            mailbox: request_response::Behaviour::with_codec(
                crate::dm::Codec::mailbox(metrics.frames_rejected_counter()),
                [(
                    StreamProtocol::new(crate::dm::MAILBOX_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(config.dm_timeout)
                    .with_max_concurrent_streams(256),
            ),
            dm: request_response::Behaviour::with_codec(
                crate::dm::Codec::dm(metrics.frames_rejected_counter()),
                [(
                    StreamProtocol::new(crate::dm::PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(config.dm_timeout)
                    .with_max_concurrent_streams(256),
            ),
            sync: request_response::Behaviour::with_codec(
                crate::dm::Codec::sync(metrics.frames_rejected_counter()),
                [(
                    StreamProtocol::new(crate::dm::SYNC_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(config.dm_timeout)
                    .with_max_concurrent_streams(64),
            ),
            gossipsub,
            mdns,
            blob: libp2p_stream::Behaviour::new(),
        })
    }
}

/// The hard cap on established connections: the configured one, raised to 1.25 × the connection
/// manager's high mark so that a relay's (or any) budget is enforced by trimming, which keeps the
/// useful connections, rather than by refusing new ones.
fn max_established(config: &Config) -> u32 {
    let high = config.connection_budget().high;
    let floor = u32::try_from(high.saturating_add(high / 4)).unwrap_or(u32::MAX);
    config.max_connections.max(floor)
}

fn relay_server(peer_id: libp2p::PeerId, limits: &crate::RelayLimits) -> relay::Behaviour {
    let config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer,
        reservation_duration: limits.reservation_duration,
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    };
    let mut server = relay::Behaviour::new(peer_id, config);
    // Serve from the start: a relay's address is usually configured, not discovered, and
    // loopback test networks never confirm an external address.
    server.set_status(Some(relay::Status::Enable));
    server
}

/// Kademlia, noting when each peer last exchanged a Kademlia message with us, and keeping peers
/// that may not be DHT servers out of our lookups.
///
/// The connection manager must not close a connection a query is using, and kad 0.49 exposes
/// neither a query's peers nor its requests. Every request kad sends (a walk's `FIND_NODE`,
/// `GET_VALUE`, `PUT_VALUE`, to a connected peer or after dialing it), every answer it gives and
/// every message it receives passes through this wrapper, which records the peer and the time;
/// the event loop takes the records ([`TrackedKad::take_used`]) as use of the peer's connections,
/// like a direct message or a group message.
///
/// With a peer-id difficulty, the peers an answer names as closer to a lookup's key are filtered
/// here, before kad sees them ([`TrackedKad::refuse_referrals`]): an id that is not worked never
/// enters a lookup. Without this, a worked node that names only un-worked ids near a key could end
/// a walk: kad counts every peer that answers as a success, a walk ends once the 20 closest peers
/// it knows have answered, and un-worked ids ground next to the key would be those 20, their
/// answers ignored, the honest holders farther out never asked. kad has no hook for the peers a
/// query learns, but their lists arrive in the connection handler's events, which pass here.
pub(crate) struct TrackedKad {
    inner: kad::Behaviour<kad::store::MemoryStore>,
    /// Peers that exchanged a Kademlia message with us since the loop last took them.
    used: HashMap<PeerId, Instant>,
    /// Which peers may be DHT servers, so may be asked in a lookup.
    admission: DhtAdmission,
    /// Peers left out of our lookups because their id is not worked (a metric).
    refused: Counter,
    /// Our answers to peers' FIND_NODE and GET_VALUE requests, waiting for the next poll.
    answers: VecDeque<ToSwarm<kad::Event, KadHandlerIn>>,
    /// The connection manager's marks: a bootstrap does not dial past the high one.
    budget: ConnectionBudget,
    /// Connections open and dials in flight (anyone's), counted from the swarm's events.
    open: OpenCount,
    /// Walks nobody waits for (the join's walk to our own id, the search for a lost bootstrap
    /// peer): at the high mark they get no new dial, like a bootstrap. Removed when they end.
    background: HashSet<kad::QueryId>,
    /// `kith_dht_dials_held_back_total`: dials a bootstrap wanted at the high mark; the event
    /// loop reads it to make room (see [`crate::connmgr::admits_kad_dial`]).
    held_back: Counter,
}

/// How many held-back dials one poll settles before yielding: each fails one peer of a bootstrap,
/// which may then want the next one.
const HELD_BACK_PER_POLL: usize = 64;

/// What kad's connection handler reports to the behaviour: our lookups' answers among it. The
/// type lives in a private module of libp2p-kad, so it is named through the trait.
type KadHandlerEvent = THandlerOutEvent<kad::Behaviour<kad::store::MemoryStore>>;

/// What the behaviour tells kad's connection handler (our answers among it), named likewise.
type KadHandlerIn = THandlerInEvent<kad::Behaviour<kad::store::MemoryStore>>;

impl TrackedKad {
    fn new(
        inner: kad::Behaviour<kad::store::MemoryStore>,
        admission: DhtAdmission,
        refused: Counter,
        budget: ConnectionBudget,
        held_back: Counter,
    ) -> Self {
        Self {
            inner,
            used: HashMap::new(),
            admission,
            refused,
            answers: VecDeque::new(),
            budget,
            open: OpenCount::default(),
            background: HashSet::new(),
            held_back,
        }
    }

    /// Dials a bootstrap wanted at the high mark and did not get, since start.
    pub(crate) fn dials_held_back(&self) -> u64 {
        self.held_back.get()
    }

    /// A walk towards `key` that nobody waits for: at the high mark it dials no new peer (see
    /// [`Self::may_dial`]).
    pub(crate) fn walk_in_background(&mut self, key: PeerId) -> kad::QueryId {
        let id = self.inner.get_closest_peers(key);
        self.background.insert(id);
        id
    }

    /// Whether kad's dial goes ahead: yes unless the node holds its high mark and every query kad
    /// runs is a bootstrap or a background walk (or none runs: a routing-table entry being
    /// checked), see [`crate::connmgr::admits_kad_dial`]. A dial cannot be traced to the query
    /// that wants it, so one lookup someone waits for lets every query dial.
    fn may_dial(&self) -> bool {
        let maintenance_only = self.inner.iter_queries().all(|q| {
            matches!(q.info(), kad::QueryInfo::Bootstrap { .. })
                || self.background.contains(&q.id())
        });
        crate::connmgr::admits_kad_dial(self.open.with_dials(), &self.budget, maintenance_only)
    }

    /// Tells kad the dial failed as if the swarm had denied it, so its query counts the peer as
    /// failed and asks the next one (it forgets no address for a denied dial).
    fn hold_back(&mut self, peer: PeerId, connection_id: ConnectionId) {
        let error = DialError::Denied {
            cause: ConnectionDenied::new(format!(
                "a DHT bootstrap does not dial past the high water mark ({} connections)",
                self.open.established()
            )),
        };
        self.inner
            .on_swarm_event(FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error: &error,
                connection_id,
            }));
        self.held_back.inc();
        tracing::trace!(%peer, established = self.open.established(), "held back a bootstrap dial at the high mark");
    }

    /// Answers a peer's FIND_NODE or GET_VALUE request here instead of in kad, which would give
    /// the same answer by a far costlier walk of its routing table (see [`crate::nearest`]);
    /// hands every other event back. The answer is what kad's is: the record if we hold an
    /// unexpired one, and the 20 table entries nearest the key other than the asker.
    fn answer(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: KadHandlerEvent,
    ) -> Option<KadHandlerEvent> {
        let (request, answer) = match event {
            KadHandlerEvent::FindNodeReq { key, request_id } => {
                let closer_peers = self.nearest_to(&kad::KBucketKey::new(key), &peer);
                (
                    kad::InboundRequest::FindNode {
                        num_closer_peers: closer_peers.len(),
                    },
                    KadHandlerIn::FindNodeRes {
                        closer_peers,
                        request_id,
                    },
                )
            }
            KadHandlerEvent::GetRecord { key, request_id } => {
                let record = self.unexpired(&key);
                let closer_peers = self.nearest_to(&kad::KBucketKey::new(key), &peer);
                (
                    kad::InboundRequest::GetRecord {
                        num_closer_peers: closer_peers.len(),
                        present_locally: record.is_some(),
                    },
                    KadHandlerIn::GetRecordRes {
                        record,
                        closer_peers,
                        request_id,
                    },
                )
            }
            other => return Some(other),
        };
        self.answers
            .push_back(ToSwarm::GenerateEvent(kad::Event::InboundRequest {
                request,
            }));
        self.answers.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: answer,
        });
        None
    }

    fn nearest_to<T>(&mut self, key: &kad::KBucketKey<T>, asker: &PeerId) -> Vec<kad::KadPeer> {
        crate::nearest::nearest(
            &mut self.inner,
            key,
            Some(asker),
            kad::K_VALUE.get(),
            crate::nearest::kad_peer,
        )
    }

    /// The record we hold under `key`, unless it has expired (then it is dropped, as kad does).
    fn unexpired(&mut self, key: &kad::RecordKey) -> Option<kad::Record> {
        use kad::store::RecordStore as _;
        let store = self.inner.store_mut();
        let record = store.get(key)?.into_owned();
        if record.is_expired(Instant::now()) {
            store.remove(key);
            return None;
        }
        Some(record)
    }

    /// The `count` routing-table peers nearest `key`, nearest first (see [`crate::nearest`]).
    pub(crate) fn nearest_keys<T>(
        &mut self,
        key: &kad::KBucketKey<T>,
        count: usize,
    ) -> Vec<kad::KBucketKey<PeerId>> {
        crate::nearest::nearest(&mut self.inner, key, None, count, |e| *e.key)
    }

    /// The peers that exchanged a Kademlia message with us since the last call, with the time of
    /// the latest exchange. Bounded by the peers we talk to between two calls.
    pub(crate) fn take_used(&mut self) -> impl Iterator<Item = (PeerId, Instant)> + '_ {
        self.used.drain()
    }

    fn note(&mut self, peer: PeerId) {
        self.used.insert(peer, Instant::now());
    }

    /// Drops from an answer to one of our lookups every peer it names that may not be a DHT
    /// server, so kad's query never asks (or dials) it and never counts it among the closest
    /// peers that answered. Requests from other peers (they may be DHT clients of any id) and
    /// records in answers (the event loop judges those) pass unchanged.
    fn refuse_referrals(&self, from: PeerId, event: &mut KadHandlerEvent) {
        let (KadHandlerEvent::FindNodeRes { closer_peers, .. }
        | KadHandlerEvent::GetRecordRes { closer_peers, .. }
        | KadHandlerEvent::GetProvidersRes { closer_peers, .. }) = event
        else {
            return;
        };
        let named = closer_peers.len();
        closer_peers.retain(|p| self.admission.admits(&p.node_id));
        let refused = named - closer_peers.len();
        if refused > 0 {
            self.refused.inc_by(refused as u64);
            tracing::debug!(
                peer = %from,
                refused,
                named,
                "left peers whose ids are not worked out of a DHT lookup"
            );
        }
    }
}

impl Deref for TrackedKad {
    type Target = kad::Behaviour<kad::store::MemoryStore>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for TrackedKad {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl NetworkBehaviour for TrackedKad {
    type ConnectionHandler =
        <kad::Behaviour<kad::store::MemoryStore> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = kad::Event;

    forward_to_inner!(
        handle_pending_inbound_connection,
        handle_established_inbound_connection,
        handle_established_outbound_connection,
    );

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.open.dialing(connection_id);
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.open.on_swarm_event(&event);
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        // A request from the peer, or its answer to ours.
        self.note(peer_id);
        let mut event = event;
        self.refuse_referrals(peer_id, &mut event);
        if let Some(event) = self.answer(peer_id, connection_id, event) {
            self.inner
                .on_connection_handler_event(peer_id, connection_id, event);
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        // Our answers go first; the peer was noted when its request came.
        if let Some(answer) = self.answers.pop_front() {
            return Poll::Ready(answer);
        }
        for _ in 0..HELD_BACK_PER_POLL {
            let polled = self.inner.poll(cx);
            match &polled {
                Poll::Ready(ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed {
                    id,
                    step,
                    ..
                })) if step.last => {
                    self.background.remove(id);
                }
                // A request to the peer or our answer to its request.
                Poll::Ready(ToSwarm::NotifyHandler { peer_id, .. }) => self.note(*peer_id),
                // A query needs a peer it is not connected to; the request follows the
                // connection, unless a bootstrap wants it at the high mark.
                Poll::Ready(ToSwarm::Dial { opts }) => {
                    if let Some(peer) = opts.get_peer_id() {
                        if !self.may_dial() {
                            self.hold_back(peer, opts.connection_id());
                            continue;
                        }
                        self.note(peer);
                    }
                }
                _ => {}
            }
            return polled;
        }
        // More held back than one poll settles: come back on the next turn of the loop.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
