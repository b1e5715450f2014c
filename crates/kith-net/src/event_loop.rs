//! The task that owns the swarm.
//!
//! Message flow: `Client` → `Command` (bounded mpsc) → [`EventLoop::run`] → `Swarm`; replies go back
//! on the command's `oneshot`; swarm events become [`Event`]s sent with `try_send`. Handlers are
//! plain `fn`s: nothing in the loop awaits except the `select!` itself.
//!
//! Connection management: every few seconds (and on a new connection above the high mark) the loop
//! describes its connections to `connmgr` (protected? shares a topic? in the routing table? last
//! used?) and closes what it picks with `Swarm::close_connection`, which returns at once.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, autonat, gossipsub, identify, kad,
    kad::store::RecordStore,
    mdns, noise, request_response,
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::Channel;
use crate::{
    Client, Config, ConnectionBudget, ConnectionInfo, ConnectionPath, DhtMode, Event,
    GetRecordResult, HolePunchAttempt, HolePunchStats, Metrics, NatStatus, NetError, NetStatus,
    PeerInfo, RecordAnswer, RecordValidator, RelayPolicy, RelayServed, RequestError,
    admission::DhtAdmission,
    behaviour::{Behaviour, BehaviourEvent},
    blob::StreamUse,
    client::Command,
    connmgr::{self, Candidate},
    event::mode_is_server,
    listen,
    metrics::{Direction, Kind},
    routing::PeerRouting,
    scope::{self, Scope},
};

type ClosestReply = oneshot::Sender<Result<Vec<PeerId>, RequestError>>;
type PutReply = oneshot::Sender<Result<(), RequestError>>;
/// Reply to a request on `/kith/dm`, `/kith/mailbox` or `/kith/sync` (the channel in the map keys says which).
type BytesReply = oneshot::Sender<Result<Vec<u8>, RequestError>>;

/// A request sent to a peer we are not connected to and had no address for: its bytes are kept
/// so that, if the dial fails, it can go again with the addresses a DHT walk finds (see
/// `routing`).
struct OutboundRequest {
    peer: PeerId,
    reply: BytesReply,
    retry: Option<Vec<u8>>,
}

/// A request parked while a walk looks for its peer's addresses.
struct ParkedRequest {
    channel: Channel,
    bytes: Vec<u8>,
    reply: BytesReply,
}

/// A GET in flight: answers so far, distinct holders per agreement class, the caller.
struct PendingGet {
    key: Vec<u8>,
    quorum: usize,
    result: GetRecordResult,
    classes: HashMap<Vec<u8>, HashSet<Option<PeerId>>>,
    reply: oneshot::Sender<Result<GetRecordResult, RequestError>>,
}

/// Owns the swarm; run it with [`EventLoop::run`] on its own task.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
    dht_mode: DhtMode,
    kad_protocol: StreamProtocol,
    peers: HashMap<PeerId, PeerState>,
    pending_closest: HashMap<kad::QueryId, (Vec<PeerId>, ClosestReply)>,
    pending_puts: HashMap<kad::QueryId, PutReply>,
    pending_dm_out: HashMap<(Channel, request_response::OutboundRequestId), OutboundRequest>,
    /// Requests whose dial failed for want of an address, and the walks looking for them.
    routing: PeerRouting<ParkedRequest>,
    pending_dm_in: HashMap<u64, (Channel, PeerId, request_response::ResponseChannel<Vec<u8>>)>,
    inbound_ids: HashMap<(Channel, request_response::InboundRequestId), u64>,
    next_dm_id: u64,
    pending_gets: HashMap<kad::QueryId, PendingGet>,
    validator: Option<Arc<dyn RecordValidator>>,
    /// Which peers may be DHT servers (costly peer ids; see `admission`).
    admission: DhtAdmission,
    bootstrap_dials: HashMap<ConnectionId, Multiaddr>,
    nat: NatStatus,
    relays: Vec<Multiaddr>,
    relay_policy: RelayPolicy,
    relay_listening: bool,
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    reserved_on: HashSet<PeerId>,
    served: Option<RelayServed>,
    /// Relay without `--external-addr`: its listen addresses are taken as public.
    listen_is_external: bool,
    /// Peers we dialed so that they could test our addresses (see `probe_dial`).
    probed: HashSet<PeerId>,
    /// Peers from the bootstrap list (by `/p2p` id, or learnt when an entry without one
    /// connected). One that identifies as a kith relay is used as relay and mailbox.
    bootstrap_peers: HashSet<PeerId>,
    /// Bootstrap peers we are not connected to: when we next look them up in the DHT by peer id
    /// (a relay that restarted on another address is found again this way), and how often we did.
    lost_bootstrap: HashMap<PeerId, (Instant, u32)>,
    /// Those lookups in flight.
    lost_lookups: HashMap<kad::QueryId, PeerId>,
    /// Bootstrap peers a dial failed to reach since we were last connected to them: only these
    /// are lost (looked up in the DHT). A bootstrap peer whose connection was closed as idle or
    /// trimmed, by either end, is an ordinary peer: at scale, looking those up made every node
    /// walk the DHT for its bootstrap peers and dial them again after every idle timeout.
    unreachable_bootstrap: HashSet<PeerId>,
    /// The connection manager's marks and timeouts.
    budget: ConnectionBudget,
    /// Peers the service protects, by tag (see [`Client::protect`]).
    protected: HashMap<&'static str, HashSet<PeerId>>,
    /// Peers the service welcomes, by tag (see [`Client::welcome`]).
    welcomed: HashMap<&'static str, HashSet<PeerId>>,
    /// Relay role: reservations and circuits per peer we serve; those connections are protected.
    serving: HashMap<PeerId, usize>,
    /// Open blob streams per peer (they bypass the loop).
    blob_use: StreamUse,
    /// Open direct-message links (either way) per peer: they bypass the loop, so the connection
    /// manager reads this the way it reads `blob_use`. A link closes after
    /// `Config::dm_link_idle` without traffic, so this protects only a conversation going on.
    link_use: StreamUse,
    /// Open connections (not being closed) by who dialed.
    conns_in: usize,
    conns_out: usize,
    connections_trimmed: u64,
    connections_idle_closed: u64,
    /// The gate's refusals plus Kademlia's held-back bootstrap dials at the last manager round: a
    /// rise since means someone waited at the high mark, and the round makes room (see
    /// [`connmgr::select_trims`]).
    refused_seen: u64,
    /// Peers mDNS found on our LAN (their inbound connections confirm our addresses).
    lan_peers: HashSet<PeerId>,
    /// Dials to LAN peers in flight, so a failure can be retried.
    lan_dials: HashMap<ConnectionId, LanDial>,
    /// LAN peers whose dial failed, and when to try again.
    lan_redials: HashMap<PeerId, (LanDial, Instant)>,
    /// DCUtR outcomes since start.
    hole_punch: HolePunchStats,
    /// Automatic DHT mode overridden to client: our only confirmed addresses are relay circuits.
    client_while_relayed: bool,
    /// When connections were last checked, so a burst of new ones is not re-scanned for each.
    last_managed: Instant,
}

/// What a circuit relay v2 server announces.
const RELAY_HOP: StreamProtocol = StreamProtocol::new("/libp2p/circuit/relay/0.2.0/hop");

/// How long a dial (connect and handshake) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(7);

/// At most this many extra connections are opened for AutoNAT probes over a node's lifetime.
const MAX_PROBE_DIALS: usize = 8;
/// Peers found by mDNS that are remembered as LAN peers.
const MAX_LAN_PEERS: usize = 256;

/// Tries at dialing a peer mDNS found before waiting for it to dial us.
const MAX_LAN_DIALS: u32 = 5;

/// A dial to a peer mDNS found, with what it takes to try again.
struct LanDial {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    attempt: u32,
}

/// The protocol AutoNAT v2 servers announce (libp2p keeps its constant private).
const AUTONAT_DIAL_REQUEST: StreamProtocol = StreamProtocol::new("/libp2p/autonat/2/dial-request");

/// The relay a circuit address goes through (the `/p2p/<relay>` before `/p2p-circuit`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            libp2p::multiaddr::Protocol::P2p(id) => relay = Some(id),
            libp2p::multiaddr::Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
}

struct PeerState {
    connections: HashMap<ConnectionId, Conn>,
    protocols: Vec<String>,
    agent: String,
    since: SystemTime,
    /// Last request, response or group message exchanged with the peer.
    last_used: Instant,
}

/// One open connection.
struct Conn {
    addr: Multiaddr,
    inbound: bool,
    /// Direct (over what) or through a relay circuit.
    path: ConnectionPath,
    /// Our address the peer dialed (inbound connections only).
    local: Option<Multiaddr>,
    opened: Instant,
    /// The connection manager asked the swarm to close it; it no longer counts.
    closing: bool,
}

/// Replaces the peers a service tag names (`Client::protect`, `Client::welcome`); an empty list
/// drops the tag.
fn replace_tag(
    sets: &mut HashMap<&'static str, HashSet<PeerId>>,
    tag: &'static str,
    peers: Vec<PeerId>,
) {
    if peers.is_empty() {
        sets.remove(tag);
    } else {
        sets.insert(tag, peers.into_iter().collect());
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

pub(crate) fn build(
    config: Config,
    metrics: Metrics,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), NetError> {
    let mut swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(format!("TCP: {e}")))?
        .with_quic()
        .with_dns()
        .map_err(|e| NetError::Transport(format!("DNS: {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(format!("relay client: {e}")))?
        .with_behaviour(|key, relay_client| {
            Ok(Behaviour::new(key, relay_client, &config, &metrics)?)
        })
        .map_err(|e| NetError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        // Below the 10 s in which libp2p's AutoNAT v2 server must answer: with the default 10 s a
        // dial-back into a NAT that silently drops never fails in time, the server's handler
        // times out instead, and the client never learns it is private (so the relay policy
        // never kicks in).
        .with_connection_timeout(DIAL_TIMEOUT)
        .build();

    let listen_addrs = if config.listen.is_empty() {
        listen::default_addrs(config.default_port)
    } else {
        config.listen.clone()
    };
    // Circuit addresses are listened on once the relay is connected (see `listen_via_relays`);
    // asking the relay client before that races our own bootstrap dial and loses.
    let (circuit_listens, listen_addrs): (Vec<Multiaddr>, Vec<Multiaddr>) =
        listen_addrs.into_iter().partition(|a| {
            a.iter()
                .any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
        });
    let mut relays = config.relays.clone();
    for circuit in &circuit_listens {
        let relay: Multiaddr = circuit
            .iter()
            .take_while(|p| *p != libp2p::multiaddr::Protocol::P2pCircuit)
            .collect();
        if listen::split_peer_id(&relay).is_none() {
            return Err(NetError::NoListener {
                tried: format!(
                    "{circuit}: a relay address needs /p2p/<relay id> before /p2p-circuit"
                ),
            });
        }
        if !relays.contains(&relay) {
            relays.push(relay);
        }
    }
    let mut failures = Vec::new();
    for addr in &listen_addrs {
        if let Err(e) = swarm.listen_on(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot listen on this address");
            failures.push(format!("{addr}: {e}"));
        }
    }
    if failures.len() == listen_addrs.len() && circuit_listens.is_empty() {
        return Err(NetError::NoListener {
            tried: failures.join("; "),
        });
    }
    for addr in &config.external_addrs {
        swarm.add_external_address(addr.clone());
    }

    let admission = DhtAdmission::new(config.peer_id_difficulty);
    let mut bootstrap_dials = HashMap::new();
    for addr in &config.bootstrap {
        if let Some((peer, base)) = listen::split_peer_id(addr) {
            if peer == *swarm.local_peer_id() {
                continue;
            }
            admission.add_address(&mut swarm.behaviour_mut().kad, &peer, base);
        }
        let opts = DialOpts::from(addr.clone());
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                bootstrap_dials.insert(id, addr.clone());
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "bootstrap entry cannot be dialed; skipping it")
            }
        }
    }
    if !config.bootstrap.is_empty() {
        // One walk to our own id, not a full bootstrap: the bootstrap entries just added arm
        // kad's automatic bootstrap (a walk per bucket), which runs once inserts pause. Starting
        // a full bootstrap here as well made every joining node run two back to back, since
        // inserts made during the first re-arm the second (kad 0.49 has no switch for it); with
        // the walk, about half the joins run only one (BENCHMARKS, "The churn at rest was the
        // joins' own bootstraps"). Entries without /p2p are added once identified.
        let local = *swarm.local_peer_id();
        let _ = swarm.behaviour_mut().kad.walk_in_background(local);
    }

    let (command_tx, command_rx) = mpsc::channel(config.command_buffer.max(1));
    let (event_tx, event_rx) = mpsc::channel(config.event_buffer.max(1));
    let kad_protocol = StreamProtocol::try_from_owned(crate::kad_protocol(&config.network_id))
        .map_err(|_| NetError::NetworkId(config.network_id.clone()))?;
    let blob_use = StreamUse::default();
    let link_use = StreamUse::default();
    let client = Client::new(
        command_tx,
        *swarm.local_peer_id(),
        crate::blob::BlobStreams::new(swarm.behaviour().blob.new_control(), blob_use.clone()),
        crate::dm_link::DmLinks::new(
            swarm.behaviour().blob.new_control(),
            link_use.clone(),
            metrics.clone(),
            crate::dm_link::LinkSettings {
                enabled: config.dm_links,
                timeout: config.dm_timeout,
                idle: config.dm_link_idle,
            },
        ),
    );
    // A node whose id is not worked stays a DHT client (`DhtAdmission::own_mode`).
    let dht_mode = if admission.admits(swarm.local_peer_id()) {
        config.dht_mode
    } else {
        DhtMode::Client
    };
    let mut event_loop = EventLoop {
        swarm,
        commands: command_rx,
        events: event_tx,
        metrics,
        dht_mode,
        kad_protocol,
        peers: HashMap::new(),
        pending_closest: HashMap::new(),
        pending_puts: HashMap::new(),
        pending_dm_out: HashMap::new(),
        routing: PeerRouting::default(),
        pending_dm_in: HashMap::new(),
        inbound_ids: HashMap::new(),
        next_dm_id: 0,
        pending_gets: HashMap::new(),
        validator: config.record_validator.clone(),
        admission,
        bootstrap_dials,
        nat: NatStatus::Unknown,
        relays,
        relay_policy: if circuit_listens.is_empty() {
            config.relay_policy
        } else {
            RelayPolicy::Always
        },
        relay_listeners: HashMap::new(),
        relay_listening: false,
        reserved_on: HashSet::new(),
        served: config.relay_server.then(RelayServed::default),
        listen_is_external: config.relay_server && config.external_addrs.is_empty(),
        probed: HashSet::new(),
        bootstrap_peers: config
            .bootstrap
            .iter()
            .filter_map(|a| listen::split_peer_id(a).map(|(peer, _)| peer))
            .collect(),
        lost_bootstrap: HashMap::new(),
        lost_lookups: HashMap::new(),
        unreachable_bootstrap: HashSet::new(),
        budget: config.connection_budget(),
        protected: HashMap::new(),
        welcomed: HashMap::new(),
        serving: HashMap::new(),
        blob_use,
        link_use,
        conns_in: 0,
        conns_out: 0,
        connections_trimmed: 0,
        connections_idle_closed: 0,
        refused_seen: 0,
        hole_punch: HolePunchStats::default(),
        lan_peers: HashSet::new(),
        lan_dials: HashMap::new(),
        lan_redials: HashMap::new(),
        client_while_relayed: false,
        last_managed: Instant::now(),
    };
    if event_loop.relay_policy == RelayPolicy::Always {
        event_loop.listen_via_relays();
    }
    Ok((client, event_rx, event_loop))
}

impl EventLoop {
    /// Drives the swarm until [`Client::shutdown`] is called or every `Client` is dropped.
    pub async fn run(mut self) {
        let mut gauges = tokio::time::interval(Duration::from_secs(5));
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Often enough that an idle connection outlives its timeout by at most an eighth.
        let mut manage = tokio::time::interval(
            (self.budget.idle_timeout / 8)
                .clamp(Duration::from_millis(200), Duration::from_secs(5)),
        );
        manage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown_reply = loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.handle_command(command),
                    None => break None,
                },
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = gauges.tick() => self.refresh_gauges(),
                _ = manage.tick() => self.manage_connections(),
            }
        };
        for (_, (_, reply)) in self.pending_closest.drain() {
            let _ = reply.send(Err(RequestError::Shutdown));
        }
        for (_, reply) in self.pending_puts.drain() {
            let _ = reply.send(Err(RequestError::Shutdown));
        }
        for (_, request) in self.pending_dm_out.drain() {
            let _ = request.reply.send(Err(RequestError::Shutdown));
        }
        for parked in self.routing.drain() {
            let _ = parked.reply.send(Err(RequestError::Shutdown));
        }
        for (_, get) in self.pending_gets.drain() {
            let _ = get.reply.send(Err(RequestError::Shutdown));
        }
        let peer_id = *self.swarm.local_peer_id();
        // Dropping the swarm closes every listener and connection.
        drop(self.swarm);
        tracing::info!(%peer_id, "network stopped");
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::RoutingTable { reply } => {
                let _ = reply.send(self.routing_table());
            }
            Command::ClosestPeers { key, reply } => {
                if self.routing_table_len() == 0 {
                    let _ = reply.send(Err(RequestError::NoKnownPeers));
                    return;
                }
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(key);
                self.pending_closest.insert(id, (Vec::new(), reply));
            }
            Command::PutRecord {
                key,
                value,
                expires,
                reply,
            } => {
                let record = kad::Record {
                    key: kad::RecordKey::new(&key),
                    value,
                    publisher: None,
                    expires: expires.map(instant_at),
                };
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(id) => {
                        self.pending_puts.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RequestError::Store(format!("{e:?}"))));
                    }
                }
            }
            Command::PutRecordTo {
                key,
                value,
                peers,
                reply,
            } => {
                if peers.is_empty() {
                    let _ = reply.send(Err(RequestError::PutFailed("no peers given".into())));
                    return;
                }
                let record = kad::Record::new(kad::RecordKey::new(&key), value);
                let id = self.swarm.behaviour_mut().kad.put_record_to(
                    record,
                    peers.into_iter(),
                    kad::Quorum::All,
                );
                self.pending_puts.insert(id, reply);
            }
            Command::GetRecord { key, quorum, reply } => {
                if self.routing_table_len() == 0 {
                    let _ = reply.send(Err(RequestError::NoKnownPeers));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.pending_gets.insert(
                    id,
                    PendingGet {
                        key,
                        quorum: quorum.max(1),
                        result: GetRecordResult::default(),
                        classes: HashMap::new(),
                        reply,
                    },
                );
            }
            Command::SendDm {
                channel,
                peer,
                bytes,
                addrs,
                reply,
            } => {
                if channel == Channel::Dm {
                    self.metrics.message_out(Kind::Dm);
                }
                self.touch(&peer);
                // Nothing to dial it with but what the swarm knows: keep a copy, in case the
                // dial fails and the DHT has to find the peer.
                let retry = (addrs.is_empty()
                    && !self.swarm.is_connected(&peer)
                    && self.routing.may_look_up(&peer, Instant::now()))
                .then(|| bytes.clone());
                self.send_request(channel, peer, bytes, addrs, reply, retry);
            }
            Command::RespondDm {
                request,
                bytes,
                reply,
            } => {
                let result = match self.pending_dm_in.remove(&request.0) {
                    Some((channel, _, response)) => self
                        .rr(channel)
                        .send_response(response, bytes)
                        .map_err(|_| RequestError::AnswerDropped),
                    None => Err(RequestError::AnswerDropped),
                };
                let _ = reply.send(result);
            }
            Command::Subscribe { topic, reply } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&topic)
                    .map(|_| ())
                    .map_err(|e| RequestError::Gossip(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Unsubscribe { topic, reply } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let _ = self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
                let _ = reply.send(());
            }
            Command::Publish {
                topic,
                bytes,
                reply,
            } => {
                let topic = gossipsub::IdentTopic::new(topic);
                self.metrics.message_out(Kind::Gossip);
                let result = match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    Ok(_) => Ok(true),
                    // Nobody to send to right now, or sent before: members catch up by sync.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                    | Err(gossipsub::PublishError::Duplicate) => Ok(false),
                    Err(e) => Err(RequestError::Gossip(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::ReportGossip {
                message_id,
                source,
                accept,
            } => {
                let acceptance = match accept {
                    crate::GossipVerdict::Accept => gossipsub::MessageAcceptance::Accept,
                    crate::GossipVerdict::Reject => gossipsub::MessageAcceptance::Reject,
                    crate::GossipVerdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                let id = gossipsub::MessageId::new(&message_id.0);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::TopicPeers { topic, reply } => {
                let hash = gossipsub::IdentTopic::new(topic).hash();
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(p, _)| *p)
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Dial { addr, reply } => {
                let result = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| RequestError::Dial {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    });
                let _ = reply.send(result);
            }
            Command::Bootstrap { reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .bootstrap()
                    .map(|_| ())
                    .map_err(|_| RequestError::NoKnownPeers);
                let _ = reply.send(result);
            }
            Command::Protect { tag, peers, reply } => {
                replace_tag(&mut self.protected, tag, peers);
                self.update_gate(self.protected_peers());
                let _ = reply.send(());
            }
            Command::Welcome { tag, peers, reply } => {
                replace_tag(&mut self.welcomed, tag, peers);
                self.update_gate(self.protected_peers());
                let _ = reply.send(());
            }
            // Handled in `run`, which has to leave the loop.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.listen_is_external {
                    // Reservations must name the relay's addresses; a relay is expected to listen
                    // on reachable ones (else it is started with --external-addr).
                    self.swarm.add_external_address(address.clone());
                }
                self.emit(Event::ListenAddr { addr: address });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.metrics.connection_established();
                self.lan_dials.remove(&connection_id);
                if self.bootstrap_dials.remove(&connection_id).is_some() {
                    self.bootstrap_peers.insert(peer_id);
                }
                self.unreachable_bootstrap.remove(&peer_id);
                let inbound = endpoint.is_listener();
                let addr = endpoint.get_remote_address().clone();
                let local = match &endpoint {
                    libp2p::core::ConnectedPoint::Listener { local_addr, .. } => Some(local_addr),
                    libp2p::core::ConnectedPoint::Dialer { .. } => None,
                };
                let conn = Conn {
                    path: ConnectionPath::of(&addr, local),
                    local: local.cloned(),
                    addr: addr.clone(),
                    inbound,
                    opened: Instant::now(),
                    closing: false,
                };
                let first = match self.peers.entry(peer_id) {
                    Entry::Occupied(mut e) => {
                        e.get_mut().connections.insert(connection_id, conn);
                        false
                    }
                    Entry::Vacant(e) => {
                        e.insert(PeerState {
                            connections: HashMap::from([(connection_id, conn)]),
                            protocols: Vec::new(),
                            agent: String::new(),
                            since: SystemTime::now(),
                            last_used: Instant::now(),
                        });
                        true
                    }
                };
                self.count_connection(inbound, true);
                self.metrics.set_peers_connected(self.peers.len());
                if self.lan_peers.contains(&peer_id) {
                    self.confirm_lan_addrs(peer_id);
                }
                if self.conns_in + self.conns_out > self.budget.high
                    && self.last_managed.elapsed() >= Duration::from_secs(1)
                {
                    self.manage_connections();
                }
                if first && self.relay_listening {
                    self.listen_via(peer_id);
                }
                if first {
                    tracing::debug!(%peer_id, %addr, inbound, "peer connected");
                    self.emit(Event::PeerConnected {
                        peer: peer_id,
                        addr,
                        inbound,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                let (counted, gone) = match self.peers.get_mut(&peer_id) {
                    Some(state) => {
                        let counted = state
                            .connections
                            .remove(&connection_id)
                            .filter(|c| !c.closing)
                            .map(|c| c.inbound);
                        (counted, state.connections.is_empty())
                    }
                    None => (None, false),
                };
                if let Some(inbound) = counted {
                    self.count_connection(inbound, false);
                }
                if gone {
                    self.peers.remove(&peer_id);
                    tracing::debug!(%peer_id, "peer disconnected");
                    self.emit(Event::PeerDisconnected { peer: peer_id });
                }
                self.metrics.set_peers_connected(self.peers.len());
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                self.metrics.dial_failed();
                if let Some(dial) = self.lan_dials.remove(&connection_id) {
                    self.lan_dial_failed(dial);
                }
                if let Some(peer) = peer_id
                    && self.bootstrap_peers.contains(&peer)
                    && !self.swarm.is_connected(&peer)
                {
                    self.unreachable_bootstrap.insert(peer);
                }
                if let Some(addr) = self.bootstrap_dials.remove(&connection_id) {
                    tracing::warn!(%addr, %error, "bootstrap node unreachable; continuing without it");
                    // It went into the routing table before the dial; a dead entry would be
                    // asked again by every query.
                    if let Some((peer, base)) = listen::split_peer_id(&addr) {
                        self.swarm.behaviour_mut().kad.remove_address(&peer, &base);
                    }
                    self.emit(Event::BootstrapUnreachable {
                        addr,
                        error: error.to_string(),
                    });
                } else {
                    tracing::debug!(?peer_id, %error, "dial failed");
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.apply_dht_mode();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.apply_dht_mode();
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    // The relay went away or refused us; listen again once it is back.
                    self.reserved_on.remove(&relay);
                    tracing::info!(%relay, ?reason, "relay listener closed; will retry");
                } else {
                    tracing::warn!(?addresses, ?reason, "listener closed");
                }
            }
            other => tracing::trace!(?other, "swarm event"),
        }
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info);
            }
            BehaviourEvent::Kad(event) => self.handle_kad_event(event),
            BehaviourEvent::Dm(event) => self.handle_dm_event(Channel::Dm, event),
            BehaviourEvent::Mailbox(event) => self.handle_dm_event(Channel::Mailbox, event),
            BehaviourEvent::Sync(event) => self.handle_dm_event(Channel::Sync, event),
            BehaviourEvent::AutonatClient(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            }) => {
                if scope::addr_scope(&tested_addr).is_some_and(|s| s != Scope::Global) {
                    // A LAN or loopback address: confirmed or not, it says nothing about whether
                    // the internet reaches us, which is what the relay policy needs to know. A
                    // success still confirms the address (the swarm did that), so peers on the
                    // same network see us as a DHT server.
                    match result {
                        Ok(()) => {
                            tracing::info!(%server, %tested_addr, "reachable on the local network")
                        }
                        Err(e) => {
                            tracing::debug!(%server, %tested_addr, error = %e, "AutoNAT probe of a local address failed")
                        }
                    }
                    return;
                }
                let status = match result {
                    Ok(()) => NatStatus::Public { addr: tested_addr },
                    Err(e) => {
                        tracing::debug!(%server, %tested_addr, error = %e, "AutoNAT probe failed");
                        match &self.nat {
                            // One failed address does not make a public node private.
                            NatStatus::Public { .. } => self.nat.clone(),
                            _ => NatStatus::Private,
                        }
                    }
                };
                if status != self.nat {
                    tracing::info!(nat = %status, "reachability changed");
                    self.nat = status.clone();
                    if status == NatStatus::Private && self.relay_policy == RelayPolicy::WhenPrivate
                    {
                        self.listen_via_relays();
                    }
                    self.emit(Event::NatChanged(status));
                }
            }
            BehaviourEvent::RelayClient(libp2p::relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reachable through relay");
                }
                self.reserved_on.insert(relay_peer_id);
                self.emit(Event::RelayReserved {
                    relay: relay_peer_id,
                });
            }
            BehaviourEvent::RelayServer(event) => self.on_relay_served(event),
            BehaviourEvent::Dcutr(libp2p::dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                let error = match result {
                    Ok(_) => {
                        tracing::info!(peer = %remote_peer_id, "hole punch succeeded: direct connection");
                        self.hole_punch.succeeded += 1;
                        None
                    }
                    Err(e) => {
                        tracing::info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying relayed");
                        self.hole_punch.failed += 1;
                        Some(e.to_string())
                    }
                };
                self.metrics.hole_punch(error.is_none());
                self.hole_punch.last = Some(HolePunchAttempt {
                    peer: remote_peer_id,
                    at: SystemTime::now(),
                    error,
                });
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    if peer != *self.swarm.local_peer_id() {
                        by_peer.entry(peer).or_default().push(addr);
                    }
                }
                for (peer, addrs) in by_peer {
                    if self.lan_peers.len() < MAX_LAN_PEERS {
                        self.lan_peers.insert(peer);
                    }
                    if self.swarm.is_connected(&peer) {
                        self.confirm_lan_addrs(peer);
                    }
                    tracing::debug!(%peer, ?addrs, "found on the LAN");
                    self.dial_lan_peer(peer, addrs, 0);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.metrics.message_in(Kind::Gossip);
                self.touch(&propagation_source);
                let Some(author) = message.source else {
                    // Strict validation never delivers unsigned messages; be safe anyway.
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            gossipsub::MessageAcceptance::Reject,
                        );
                    return;
                };
                // The service validates (signature, membership) and answers with `report_gossip`;
                // nothing is forwarded before that. If the event is dropped, gossipsub forgets the
                // message after a few heartbeats and members catch up by sync.
                self.emit(Event::GroupMessage {
                    author,
                    source: propagation_source,
                    message_id: crate::GossipId(message_id.0),
                    topic: message.topic.into_string(),
                    bytes: message.data,
                });
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                self.emit(Event::GroupPeerSubscribed {
                    peer: peer_id,
                    topic: topic.into_string(),
                });
            }
            other => tracing::trace!(?other, "behaviour event"),
        }
    }

    /// Starts listening through every configured relay: connected relays get a circuit listener
    /// now, the others are dialed first (the listener follows in `ConnectionEstablished`). The relay
    /// client then reserves a slot and our circuit address becomes an external address.
    fn listen_via_relays(&mut self) {
        self.relay_listening = true;
        for relay in self.relays.clone() {
            let Some((relay_id, _)) = listen::split_peer_id(&relay) else {
                continue;
            };
            if self.relay_listeners.values().any(|id| *id == relay_id) {
                continue;
            }
            if self.swarm.is_connected(&relay_id) {
                self.listen_via(relay_id);
            } else if let Err(e) = self.swarm.dial(relay.clone()) {
                tracing::debug!(%relay, error = %e, "cannot dial relay yet");
            }
        }
    }

    fn listen_via(&mut self, relay_id: PeerId) {
        let Some(relay) = self
            .relays
            .iter()
            .find(|r| listen::split_peer_id(r).is_some_and(|(id, _)| id == relay_id))
            .cloned()
        else {
            return;
        };
        if self.relay_listeners.values().any(|id| *id == relay_id) {
            return;
        }
        let circuit = relay.with(libp2p::multiaddr::Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                tracing::info!(%circuit, "listening through relay");
                self.relay_listeners.insert(listener, relay_id);
            }
            Err(e) => tracing::warn!(%circuit, error = %e, "cannot listen through relay"),
        }
    }

    fn on_relay_served(&mut self, event: libp2p::relay::Event) {
        use libp2p::relay::Event as R;
        // Reservations and circuits live on the connections they came over: keep those.
        match &event {
            R::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => *self.serving.entry(*src_peer_id).or_default() += 1,
            R::ReservationClosed { src_peer_id } | R::ReservationTimedOut { src_peer_id } => {
                self.stop_serving(*src_peer_id);
            }
            R::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                *self.serving.entry(*src_peer_id).or_default() += 1;
                *self.serving.entry(*dst_peer_id).or_default() += 1;
            }
            R::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                self.stop_serving(*src_peer_id);
                self.stop_serving(*dst_peer_id);
            }
            _ => {}
        }
        let Some(served) = self.served.as_mut() else {
            return;
        };
        match event {
            R::ReservationReqAccepted { renewed: false, .. } => served.reservations += 1,
            R::ReservationClosed { .. } | R::ReservationTimedOut { .. } => {
                served.reservations = served.reservations.saturating_sub(1);
            }
            R::CircuitReqAccepted { .. } => {
                served.circuits += 1;
                served.circuits_total += 1;
            }
            R::CircuitClosed { .. } => served.circuits = served.circuits.saturating_sub(1),
            R::ReservationReqDenied { .. } | R::CircuitReqDenied { .. } => served.denied_total += 1,
            _ => {}
        }
    }

    /// Sends a request on `channel`; `retry` keeps its bytes for one more try through the DHT.
    fn send_request(
        &mut self,
        channel: Channel,
        peer: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
        reply: BytesReply,
        retry: Option<Vec<u8>>,
    ) {
        let id = self
            .rr(channel)
            .send_request_with_addresses(&peer, bytes, addrs);
        self.pending_dm_out
            .insert((channel, id), OutboundRequest { peer, reply, retry });
    }

    /// A dial to `peer` failed with no address to try: park the request and walk the DHT
    /// towards the peer's id (one walk per peer), unless the routing table is empty.
    fn find_and_retry(&mut self, peer: PeerId, parked: ParkedRequest) {
        if self.routing_table_len() == 0 {
            let _ = parked.reply.send(Err(RequestError::Undelivered(format!(
                "cannot dial {peer}: no address known and no DHT peer to ask"
            ))));
            return;
        }
        if self.routing.park(peer, parked) {
            tracing::debug!(%peer, "no address for the peer; looking it up in the DHT");
            let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            self.routing.walking(query, peer);
        }
    }

    /// A step of a walk looking for `target`'s addresses: once the walk reached the peer (we
    /// are connected) or a neighbour named its addresses, stop it and send what was parked;
    /// if it ends without, the parked requests fail as undelivered.
    fn on_route_walk(
        &mut self,
        id: kad::QueryId,
        target: PeerId,
        result: Result<kad::GetClosestPeersOk, kad::GetClosestPeersError>,
        last: bool,
    ) {
        let addrs = addresses_found(target, result);
        let found = !addrs.is_empty() || self.swarm.is_connected(&target);
        if !found && !last {
            return;
        }
        if !last && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        let Some((peer, parked)) = self.routing.finish(&id, found, Instant::now()) else {
            return;
        };
        tracing::debug!(%peer, found, addrs = addrs.len(), requests = parked.len(), "peer lookup done");
        for request in parked {
            if found {
                self.send_request(
                    request.channel,
                    peer,
                    request.bytes,
                    addrs.clone(),
                    request.reply,
                    None,
                );
            } else {
                let _ = request.reply.send(Err(RequestError::Undelivered(format!(
                    "cannot dial {peer}: no address known and the DHT did not find it"
                ))));
            }
        }
    }

    fn rr(&mut self, channel: Channel) -> &mut request_response::Behaviour<crate::dm::Codec> {
        let behaviour = self.swarm.behaviour_mut();
        match channel {
            Channel::Dm => &mut behaviour.dm,
            Channel::Mailbox => &mut behaviour.mailbox,
            Channel::Sync => &mut behaviour.sync,
        }
    }

    fn handle_dm_event(
        &mut self,
        channel: Channel,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request_id,
                        request,
                        channel: response,
                    },
                ..
            } => {
                let id = self.next_dm_id;
                self.next_dm_id = self.next_dm_id.wrapping_add(1);
                self.touch(&peer);
                self.pending_dm_in.insert(id, (channel, peer, response));
                self.inbound_ids.insert((channel, request_id), id);
                let handle = crate::DmRequestId(id);
                if channel == Channel::Dm {
                    self.metrics.message_in(Kind::Dm);
                }
                self.emit(Event::Request {
                    channel,
                    peer,
                    request: handle,
                    bytes: request,
                });
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.touch(&peer);
                if let Some(request) = self.pending_dm_out.remove(&(channel, request_id)) {
                    let _ = request.reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "direct message not delivered");
                if let Some(request) = self.pending_dm_out.remove(&(channel, request_id)) {
                    match (error, request.retry) {
                        (request_response::OutboundFailure::DialFailure, Some(bytes)) => {
                            self.find_and_retry(
                                peer,
                                ParkedRequest {
                                    channel,
                                    bytes,
                                    reply: request.reply,
                                },
                            );
                        }
                        (error, _) => {
                            let _ = request
                                .reply
                                .send(Err(RequestError::Undelivered(error.to_string())));
                        }
                    }
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                // Frames that fail to read never get here (the codec counts them).
                tracing::debug!(%peer, %error, "inbound request failed");
                if let Some(id) = self.inbound_ids.remove(&(channel, request_id)) {
                    self.pending_dm_in.remove(&id);
                }
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.inbound_ids.remove(&(channel, request_id));
            }
        }
    }

    fn on_identified(&mut self, peer_id: PeerId, info: identify::Info) {
        let kith = info.protocol_version == crate::IDENTIFY_PROTOCOL;
        let dht = info.protocols.contains(&self.kad_protocol);
        if let Some(state) = self.peers.get_mut(&peer_id) {
            state.protocols = info.protocols.iter().map(ToString::to_string).collect();
            state.agent = info.agent_version.clone();
        }
        if !kith {
            // Not one of us (another libp2p network); keep it out of the DHT and hang up.
            self.metrics.peer_not_kith();
            tracing::debug!(%peer_id, version = %info.protocol_version, "peer does not speak kith; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer_id);
        } else {
            let from = self.peer_scope(&peer_id);
            if dht {
                // Only addresses we can expect to dial (see `scope`): an internet peer never
                // enters the table with its LAN addresses.
                for addr in &info.listen_addrs {
                    if scope::reachable_from(addr, from) {
                        self.admission.add_address(
                            &mut self.swarm.behaviour_mut().kad,
                            &peer_id,
                            addr.clone(),
                        );
                    } else {
                        tracing::trace!(%peer_id, %addr, "not adding an address we cannot reach to the DHT");
                    }
                }
            }
            if self.bootstrap_peers.contains(&peer_id)
                && info.protocols.contains(&RELAY_HOP)
                && info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == crate::dm::MAILBOX_PROTOCOL)
            {
                self.on_relay_identified(peer_id);
            }
            // Every kith node serves AutoNAT, but identify on a connection the peer dialed does
            // not list the dial-request protocol (it is served on inbound connections only): a
            // public node that only ever gets dialed (no bootstrap entries of its own) would
            // never have its address tested. So any kith peer may be dialed back for a probe.
            if info.protocols.contains(&AUTONAT_DIAL_REQUEST) || !info.listen_addrs.is_empty() {
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .iter()
                    .filter(|a| scope::reachable_from(a, from) && !is_circuit(a))
                    .cloned()
                    .collect();
                self.probe_dial(peer_id, addrs);
            }
        }
        self.emit(Event::PeerIdentified {
            peer: peer_id,
            agent: info.agent_version,
            listen_addrs: info.listen_addrs,
            kith,
        });
    }

    /// A bootstrap peer identified as a kith relay (HOP and `/kith/mailbox`): use it as relay and
    /// mailbox, remembered by peer id with the address we reach it at now. A relay we knew at
    /// another address (it restarted elsewhere) gets its entry replaced and is listened through
    /// again. The service hears of it as [`Event::RelayFound`] and registers its mailbox there.
    fn on_relay_identified(&mut self, relay: PeerId) {
        if self.served.is_some() {
            return; // A relay does not use other relays.
        }
        let Some(addr) = self.peers.get(&relay).and_then(|state| {
            state
                .connections
                .values()
                .filter(|c| !c.inbound && !is_circuit(&c.addr))
                .map(|c| c.addr.clone())
                .next()
        }) else {
            return; // Only an address we dialed is known to work for dialing.
        };
        let addr = match listen::split_peer_id(&addr) {
            Some(_) => addr,
            None => addr.with(libp2p::multiaddr::Protocol::P2p(relay)),
        };
        let known = self
            .relays
            .iter()
            .position(|r| listen::split_peer_id(r).is_some_and(|(id, _)| id == relay));
        match known {
            Some(i) if self.relays[i] == addr => {}
            Some(i) => {
                tracing::info!(%relay, old = %self.relays[i], new = %addr, "relay is back at another address");
                self.relays[i] = addr.clone();
                let stale: Vec<_> = self
                    .relay_listeners
                    .iter()
                    .filter(|(_, id)| **id == relay)
                    .map(|(listener, _)| *listener)
                    .collect();
                for listener in stale {
                    self.relay_listeners.remove(&listener);
                    self.swarm.remove_listener(listener);
                }
            }
            None => {
                tracing::info!(%relay, %addr, "bootstrap peer is a kith relay: using it as relay and mailbox");
                self.relays.push(addr.clone());
            }
        }
        if self.relay_listening {
            self.listen_via(relay);
        }
        self.emit(Event::RelayFound { relay, addr });
    }

    /// The most local scope among our connections to `peer` (global if none).
    fn peer_scope(&self, peer: &PeerId) -> Scope {
        self.peers
            .get(peer)
            .and_then(|state| {
                state
                    .connections
                    .values()
                    .map(|c| scope::addr_scope(&c.addr).unwrap_or(Scope::Global))
                    .min()
            })
            .unwrap_or(Scope::Global)
    }

    /// AutoNAT clients only ask peers they dialed (an inbound connection carries the dial-back
    /// handler, not the dial-request one). A node that others dialed first (the first member of a
    /// group, one side of an mDNS pair) would never get its address tested, so while no direct
    /// address of ours is confirmed we open one outbound connection to each of a few peers that
    /// serve AutoNAT. It idles out after the probe. Not at the high mark: the probe can wait for
    /// a node with room (and for our next connection to a server).
    fn probe_dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !self.swarm.behaviour().autonat_client.is_enabled()
            || addrs.is_empty()
            || self.probed.len() >= MAX_PROBE_DIALS
            || self.probed.contains(&peer)
            || self.swarm.external_addresses().any(|a| !is_circuit(a))
            || self.conns_in + self.conns_out >= self.budget.high
        {
            return;
        }
        if self.dialed_out(&peer) {
            return;
        }
        self.probed.insert(peer);
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(addrs)
            .build();
        tracing::debug!(%peer, "dialing an AutoNAT server back so it can test our addresses");
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "AutoNAT probe dial failed");
        }
    }

    fn handle_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => match result {
                kad::QueryResult::GetClosestPeers(result) => {
                    if let Some(target) = self.routing.target(&id) {
                        self.on_route_walk(id, target, result, step.last);
                        return;
                    }
                    if let Some(target) = self.lost_lookups.get(&id).copied() {
                        self.on_lost_lookup(target, result, step.last, id);
                        return;
                    }
                    let Some((found, _)) = self.pending_closest.get_mut(&id) else {
                        return;
                    };
                    match result {
                        Ok(ok) => found.extend(ok.peers.into_iter().map(|p| p.peer_id)),
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                            found.extend(peers.into_iter().map(|p| p.peer_id));
                            if step.last && found.is_empty() {
                                if let Some((_, reply)) = self.pending_closest.remove(&id) {
                                    let _ = reply.send(Err(RequestError::Timeout));
                                }
                                return;
                            }
                        }
                    }
                    if step.last
                        && let Some((found, reply)) = self.pending_closest.remove(&id)
                    {
                        let _ = reply.send(Ok(found));
                    }
                }
                kad::QueryResult::PutRecord(result) => {
                    if let Some(reply) = self.pending_puts.remove(&id) {
                        let _ = reply.send(
                            result
                                .map(|_| ())
                                .map_err(|e| RequestError::PutFailed(e.to_string())),
                        );
                    }
                }
                kad::QueryResult::GetRecord(result) => self.on_get_record(id, result, step.last),
                kad::QueryResult::Bootstrap(result) => {
                    tracing::debug!(
                        local = %self.swarm.local_peer_id(),
                        query = ?id,
                        step = step.count,
                        requests = stats.num_requests(),
                        failed = stats.num_failures(),
                        ms = stats.duration().map(|d| d.as_millis() as u64),
                        ?result,
                        "DHT bootstrap step"
                    );
                }
                other => tracing::trace!(?other, "DHT query progressed"),
            },
            // Only with a peer-id difficulty (manual inserts): a dialed peer that speaks our DHT.
            kad::Event::RoutablePeer { peer, address } => {
                self.admission
                    .add_address(&mut self.swarm.behaviour_mut().kad, &peer, address);
            }
            kad::Event::RoutingUpdated { peer, .. } => {
                tracing::debug!(%peer, "routing table updated");
                let n = self.routing_table_len();
                self.metrics.set_routing_table_peers(n);
            }
            kad::Event::ModeChanged { new_mode } => {
                if new_mode != self.swarm.behaviour().kad.mode() {
                    // Overridden since (see `apply_dht_mode`); the override reports itself.
                    return;
                }
                tracing::info!(mode = %new_mode, "DHT mode changed");
                self.emit(Event::DhtModeChanged {
                    server: mode_is_server(new_mode),
                });
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_inbound_record(source, record),
            other => tracing::trace!(?other, "DHT event"),
        }
    }

    /// A peer asks us to hold a record: store it only if the validator accepts it and it may
    /// replace what we hold (kad acknowledges the PUT either way; see ARCHITECTURE.md).
    fn on_inbound_record(&mut self, source: PeerId, mut record: kad::Record) {
        let Some(validator) = self.validator.clone() else {
            self.metrics.dht_put_rejected();
            tracing::debug!(%source, "refused a DHT record: no record rules configured");
            return;
        };
        let key = record.key.to_vec();
        let validated = match validator.validate(&key, &record.value) {
            Ok(v) => v,
            Err(reason) => {
                self.metrics.dht_put_rejected();
                tracing::debug!(%source, %reason, "refused an invalid DHT record");
                return;
            }
        };
        let store = self.swarm.behaviour_mut().kad.store_mut();
        if let Some(stored) = store.get(&record.key)
            && validator.validate(&key, &stored.value).is_ok()
            && !validator.may_replace(&key, &stored.value, &record.value)
        {
            self.metrics.dht_put_rejected();
            tracing::debug!(%source, "refused a DHT record that may not replace the one held");
            return;
        }
        record.publisher = Some(source);
        record.expires = validated.expires.map(instant_at);
        if let Err(e) = store.put(record) {
            self.metrics.dht_put_rejected();
            tracing::warn!(%source, error = ?e, "cannot hold a valid DHT record");
        }
    }

    fn on_get_record(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetRecordOk, kad::GetRecordError>,
        last: bool,
    ) {
        let Some(get) = self.pending_gets.get_mut(&id) else {
            return;
        };
        let mut done = last;
        match result {
            Ok(kad::GetRecordOk::FoundRecord(kad::PeerRecord { peer, record })) => {
                // An answer from a peer that may not be a DHT server (its id is not worked)
                // counts for nothing, not even towards the early stop.
                let class = match &self.validator {
                    _ if peer.is_some_and(|p| !self.admission.admits(&p)) => {
                        self.metrics.dht_answer_rejected();
                        tracing::debug!(
                            ?peer,
                            "ignored a DHT answer from a peer id that is not worked"
                        );
                        None
                    }
                    Some(v) => match v.validate(&get.key, &record.value) {
                        Ok(valid) => Some(valid.class),
                        Err(reason) => {
                            self.metrics.dht_answer_rejected();
                            tracing::debug!(?peer, %reason, "ignored an invalid DHT answer");
                            None
                        }
                    },
                    None => Some(Vec::new()),
                };
                match class {
                    Some(class) => {
                        if let Some(state) = peer.and_then(|p| self.peers.get_mut(&p)) {
                            state.last_used = Instant::now();
                        }
                        let holders = get.classes.entry(class).or_default();
                        holders.insert(peer);
                        let agreed = holders.len();
                        get.result.answers.push(RecordAnswer {
                            holder: peer,
                            value: record.value,
                        });
                        if agreed >= get.quorum {
                            done = true;
                            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                                query.finish();
                            }
                        }
                    }
                    None => get.result.rejected += 1,
                }
            }
            Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => done = true,
            Err(kad::GetRecordError::Timeout { .. }) if get.result.answers.is_empty() => {
                if let Some(get) = self.pending_gets.remove(&id) {
                    let _ = get.reply.send(Err(RequestError::Timeout));
                }
                return;
            }
            // Not found, quorum failed, or a timeout after some answers: report what we have.
            Err(_) => done = true,
        }
        if done && let Some(mut get) = self.pending_gets.remove(&id) {
            get.result.network_size = self.network_size();
            let _ = get.reply.send(Ok(get.result));
        }
    }

    /// The network's size as our routing table suggests it: from how close our nearest peers
    /// are to us (`kith_core::density::estimate_network_size`). Cheap: a few table entries.
    fn network_size(&mut self) -> Option<u64> {
        let local = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let closeness: Vec<f64> = self
            .swarm
            .behaviour_mut()
            .kad
            .nearest_keys(&local, kith_core::density::HOLDERS_PER_KEY)
            .iter()
            .map(|peer| {
                kith_core::density::closeness_of_hashes(local.hashed_bytes(), peer.hashed_bytes())
            })
            .collect();
        kith_core::density::estimate_network_size(&closeness)
            .filter(|n| n.is_finite())
            .map(|n| n.round() as u64)
    }

    /// Records that `peer` was just used, which postpones trimming and idle-closing it.
    fn touch(&mut self, peer: &PeerId) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.last_used = Instant::now();
        }
    }

    /// Keeps the inbound/outbound counts and gauges in step with open (not closing) connections.
    fn count_connection(&mut self, inbound: bool, opened: bool) {
        let (count, direction) = if inbound {
            (&mut self.conns_in, Direction::Inbound)
        } else {
            (&mut self.conns_out, Direction::Outbound)
        };
        *count = if opened {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        let n = *count;
        self.metrics.set_connections(direction, n);
    }

    fn stop_serving(&mut self, peer: PeerId) {
        if let Entry::Occupied(mut e) = self.serving.entry(peer) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Peers whose connections the manager never closes: tagged by the service, our gossipsub
    /// mesh peers (group delivery's path; at most the mesh's upper bound per topic), relays we
    /// hold a reservation on or listen through (or reach a peer through), peers with a request
    /// pending either way, peers we serve a reservation or circuit to, peers with an open blob
    /// stream.
    fn protected_peers(&self) -> HashSet<PeerId> {
        let mut protected = self.pinned_peers();
        protected.extend(self.protected.values().flatten().copied());
        protected.extend(self.swarm.behaviour().gossipsub.all_mesh_peers().copied());
        protected
    }

    /// Hands the inbound gate the peers it lets in at the high mark: the protected ones and the
    /// ones the service welcomes.
    fn update_gate(&mut self, mut admitted: HashSet<PeerId>) {
        admitted.extend(self.welcomed.values().flatten().copied());
        self.swarm.behaviour_mut().gate.set_protected(admitted);
    }

    /// Peers with something bound to one of their connections: a relay we hold a reservation on
    /// or listen through (or reach a peer through), a request pending either way, a reservation
    /// or circuit we serve, an open blob stream. None of their connections is closed as a
    /// duplicate, since the one bound may be the one we would pick.
    fn pinned_peers(&self) -> HashSet<PeerId> {
        let mut protected: HashSet<PeerId> = HashSet::new();
        protected.extend(self.reserved_on.iter().copied());
        protected.extend(self.relay_listeners.values().copied());
        protected.extend(self.pending_dm_out.values().map(|request| request.peer));
        protected.extend(self.pending_dm_in.values().map(|(_, peer, _)| *peer));
        protected.extend(self.serving.keys().copied());
        protected.extend(self.blob_use.peers());
        protected.extend(self.link_use.peers());
        for state in self.peers.values() {
            for conn in state.connections.values() {
                if let Some(relay) = relay_of(&conn.addr) {
                    protected.insert(relay);
                }
            }
        }
        protected
    }

    /// Every open connection as the connection manager sees it.
    fn candidates(&mut self, protected: &HashSet<PeerId>) -> Vec<Candidate<ConnectionId>> {
        let now = Instant::now();
        for peer in self
            .blob_use
            .peers()
            .into_iter()
            .chain(self.link_use.peers())
        {
            self.touch(&peer);
        }
        // A Kademlia request or answer is use: a query's connections stay while it needs them.
        let used: Vec<(PeerId, Instant)> = self.swarm.behaviour_mut().kad.take_used().collect();
        for (peer, at) in used {
            if let Some(state) = self.peers.get_mut(&peer) {
                state.last_used = state.last_used.max(at);
            }
        }

        let gossipsub = &self.swarm.behaviour().gossipsub;
        let ours: HashSet<&gossipsub::TopicHash> = gossipsub.topics().collect();
        let sharing: HashSet<PeerId> = if ours.is_empty() {
            HashSet::new()
        } else {
            gossipsub
                .all_peers()
                .filter(|(_, topics)| topics.iter().any(|t| ours.contains(t)))
                .map(|(peer, _)| *peer)
                .collect()
        };
        let routing: HashSet<PeerId> = self.routing_table().into_iter().collect();
        let mut candidates = Vec::new();
        for (peer, state) in &self.peers {
            for (id, conn) in &state.connections {
                if conn.closing {
                    continue;
                }
                candidates.push(Candidate {
                    key: *id,
                    protected: protected.contains(peer),
                    shares_topic: sharing.contains(peer),
                    in_routing_table: routing.contains(peer),
                    welcomed: self.welcomed.values().any(|peers| peers.contains(peer)),
                    opened: conn.opened,
                    last_used: state.last_used.max(conn.opened).min(now),
                });
            }
        }
        candidates
    }

    /// Trims down to the low mark when above the high one (or at it after a refusal), then
    /// closes idle connections. Only asks the swarm to close (no await); the counts drop at
    /// once, the `ConnectionClosed` events follow.
    fn manage_connections(&mut self) {
        let now = Instant::now();
        self.last_managed = now;
        self.redial_lan_peers(now);
        for id in self.duplicates(now) {
            if self.close(id) {
                self.connections_trimmed += 1;
                self.metrics.connection_trimmed();
            }
        }
        let protected = self.protected_peers();
        let candidates = self.candidates(&protected);
        self.update_gate(protected);
        let refused =
            self.swarm.behaviour().gate.refused() + self.swarm.behaviour().kad.dials_held_back();
        let refused_at_mark = refused > self.refused_seen;
        self.refused_seen = refused;
        let trims = connmgr::select_trims(&candidates, &self.budget, now, refused_at_mark);
        if candidates.len() - trims.len() > self.budget.high {
            self.log_why_above_high(&candidates, trims.len(), now);
        }
        let trimmed: HashSet<ConnectionId> = trims.iter().copied().collect();
        let idle: Vec<ConnectionId> = connmgr::select_idle(&candidates, &self.budget, now)
            .into_iter()
            .filter(|id| !trimmed.contains(id))
            .collect();
        for id in trims {
            if self.close(id) {
                self.connections_trimmed += 1;
                self.metrics.connection_trimmed();
            }
        }
        for id in idle {
            if self.close(id) {
                self.connections_idle_closed += 1;
                self.metrics.connection_idle_closed();
            }
        }
    }

    /// Says (at debug) what keeps a node above its high mark after a round: how many of its
    /// connections are protected, and by what, and how many are too young and in use to trim.
    fn log_why_above_high(
        &mut self,
        candidates: &[Candidate<ConnectionId>],
        trims: usize,
        now: Instant,
    ) {
        if !tracing::enabled!(target: "kith_net::connmgr", tracing::Level::DEBUG) {
            return;
        }
        let protected = candidates.iter().filter(|c| c.protected).count();
        let young = candidates
            .iter()
            .filter(|c| !c.protected && !connmgr::past_youth(c, &self.budget, now))
            .count();
        let mut queries: HashMap<&'static str, usize> = HashMap::new();
        for query in self.swarm.behaviour_mut().kad.iter_queries() {
            let kind = match query.info() {
                kad::QueryInfo::Bootstrap { .. } => "bootstrap",
                kad::QueryInfo::GetClosestPeers { .. } => "closest",
                kad::QueryInfo::GetRecord { .. } => "get_record",
                kad::QueryInfo::PutRecord { .. } => "put_record",
                _ => "other",
            };
            *queries.entry(kind).or_default() += 1;
        }
        let inbound: HashSet<ConnectionId> = self
            .peers
            .values()
            .flat_map(|state| state.connections.iter())
            .filter(|(_, c)| c.inbound)
            .map(|(id, _)| *id)
            .collect();
        let inbound_young = candidates
            .iter()
            .filter(|c| now.saturating_duration_since(c.opened) < self.budget.grace)
            .filter(|c| inbound.contains(&c.key))
            .count();
        let tags: Vec<(&str, usize)> = self
            .protected
            .iter()
            .map(|(tag, peers)| (*tag, peers.len()))
            .collect();
        tracing::debug!(
            target: "kith_net::connmgr",
            open = candidates.len(),
            trims,
            high = self.budget.high,
            protected,
            young,
            mesh = self.swarm.behaviour().gossipsub.all_mesh_peers().count(),
            dm_out = self.pending_dm_out.len(),
            dm_in = self.pending_dm_in.len(),
            serving = self.serving.len(),
            reserved = self.reserved_on.len(),
            links = self.link_use.peers().len(),
            blobs = self.blob_use.peers().len(),
            ?tags,
            ?queries,
            inbound_young,
            lookups = self.lost_lookups.len(),
            "above the high mark after a round"
        );
    }

    /// Our second connections to the same peers that we should close (see
    /// [`connmgr::select_duplicates`]).
    fn duplicates(&self, now: Instant) -> Vec<ConnectionId> {
        let pinned = self.pinned_peers();
        let links: Vec<connmgr::Link<PeerId, ConnectionId>> = self
            .peers
            .iter()
            .filter(|(_, state)| state.connections.values().filter(|c| !c.closing).count() > 1)
            .flat_map(|(peer, state)| {
                let pinned = pinned.contains(peer);
                state
                    .connections
                    .iter()
                    .filter(|(_, c)| !c.closing)
                    .map(move |(id, c)| connmgr::Link {
                        peer: *peer,
                        key: *id,
                        outbound: !c.inbound,
                        relayed: !c.path.is_direct(),
                        opened: c.opened,
                        pinned,
                    })
            })
            .collect();
        connmgr::select_duplicates(self.swarm.local_peer_id(), &links, now, self.budget.grace)
    }

    /// Closes one connection and stops counting it; false if the swarm no longer knows it.
    fn close(&mut self, id: ConnectionId) -> bool {
        if !self.swarm.close_connection(id) {
            return false;
        }
        let Some((peer, conn)) = self
            .peers
            .iter_mut()
            .find_map(|(peer, state)| state.connections.get_mut(&id).map(|c| (*peer, c)))
        else {
            return true;
        };
        conn.closing = true;
        let inbound = conn.inbound;
        tracing::debug!(%peer, inbound, "connection manager closes a connection");
        self.count_connection(inbound, false);
        true
    }

    fn emit(&mut self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.metrics.event_dropped();
        }
    }

    fn refresh_gauges(&mut self) {
        if self.relay_listening && self.relay_listeners.len() < self.relays.len() {
            self.listen_via_relays();
        }
        self.look_for_lost_bootstrap_peers();
        let n = self.routing_table_len();
        self.metrics.set_routing_table_peers(n);
        let records = self.swarm.behaviour_mut().kad.store_mut().records().count();
        self.metrics.set_dht_records(records);
        self.metrics.set_peers_connected(self.peers.len());
    }

    /// A peer found on the LAN by mDNS that dialed one of our addresses has proven that address
    /// reachable from the LAN, as an AutoNAT dial-back would (the issue's "mDNS peers count as
    /// directly reachable"): confirm it, so the DHT serves the LAN without waiting for probes
    /// that compete with every other dial on a busy machine. Only addresses the peer's
    /// connection really arrived on, never circuits; internet peers never add LAN addresses
    /// (see `scope`).
    fn confirm_lan_addrs(&mut self, peer: PeerId) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let listening: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let reached: Vec<Multiaddr> = state
            .connections
            .values()
            .filter(|c| c.inbound && c.path.is_direct())
            .filter_map(|c| listen::concrete_local(c.local.as_ref()?, &c.addr, &listening))
            .filter(|a| !self.swarm.external_addresses().any(|e| e == a))
            .collect();
        for addr in reached {
            tracing::info!(%peer, %addr, "a LAN peer found by mDNS reached this address; confirming it");
            self.swarm.add_external_address(addr);
        }
    }

    /// Each side of an mDNS pair dials the other once, whoever heard the other first, so each
    /// holds an inbound connection that confirms its LAN address (`confirm_lan_addrs`). The dial
    /// leaves from a fresh port: two nodes dialing each other at the same moment from their
    /// listen ports (TCP port reuse) would meet as one TCP simultaneous open, which neither
    /// side's handshake survives, and mDNS says nothing more about a peer it already found. A
    /// failed dial is tried again a few times, with backoff (`redial_lan_peers`).
    fn dial_lan_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, attempt: u32) {
        if self.dialed_out(&peer) || addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::NotDialing)
            .addresses(addrs.clone())
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.lan_dials.insert(
                    id,
                    LanDial {
                        peer,
                        addrs,
                        attempt,
                    },
                );
            }
            Err(e) => tracing::debug!(%peer, error = %e, "could not dial LAN peer"),
        }
    }

    /// We hold a connection to `peer` that we dialed (and are not closing).
    fn dialed_out(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|s| s.connections.values().any(|c| !c.inbound && !c.closing))
    }

    /// Dials again the LAN peers whose dial failed, once their backoff has passed.
    fn redial_lan_peers(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .lan_redials
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if let Some((dial, _)) = self.lan_redials.remove(&peer) {
                self.dial_lan_peer(peer, dial.addrs, dial.attempt + 1);
            }
        }
    }

    /// A LAN dial failed: schedule the next try (1 s, 2 s, 4 s, 8 s), unless the peer is
    /// connected our way by now or the tries are used up.
    fn lan_dial_failed(&mut self, dial: LanDial) {
        if self.dialed_out(&dial.peer)
            || dial.attempt + 1 >= MAX_LAN_DIALS
            || self.lan_redials.len() >= MAX_LAN_PEERS
        {
            return;
        }
        let backoff = Duration::from_secs(1u64 << dial.attempt.min(4));
        tracing::debug!(peer = %dial.peer, attempt = dial.attempt, ?backoff, "LAN dial failed; will retry");
        self.lan_redials
            .insert(dial.peer, (dial, Instant::now() + backoff));
    }

    /// Kademlia's automatic mode serves the DHT once any external address is confirmed, and a
    /// relay reservation confirms our circuit address. A node reachable only through a relay
    /// circuit (limited in time and bytes) must not answer others' queries or enter their
    /// routing tables: it stays a client until a direct address of its own is confirmed.
    fn apply_dht_mode(&mut self) {
        if self.dht_mode != DhtMode::Auto || self.served.is_some() {
            return;
        }
        let direct = self.swarm.external_addresses().any(|a| !is_circuit(a));
        let relayed_only = !direct && self.swarm.external_addresses().next().is_some();
        if relayed_only == self.client_while_relayed {
            return;
        }
        self.client_while_relayed = relayed_only;
        if relayed_only {
            tracing::info!("reachable only through relays: staying a DHT client");
            self.swarm
                .behaviour_mut()
                .kad
                .set_mode(Some(kad::Mode::Client));
        } else {
            self.swarm.behaviour_mut().kad.set_mode(None);
        }
    }

    /// A bootstrap peer (a relay, typically) we are not connected to may have come back on
    /// another address: ask the DHT for its peer id, with a backoff (30 s doubling to 10 min),
    /// and dial what the answer says. Identify then recognises a relay again at its new address.
    fn look_for_lost_bootstrap_peers(&mut self) {
        const FIRST: Duration = Duration::from_secs(30);
        const MAX: Duration = Duration::from_secs(600);
        if self.routing_table_len() == 0 {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        for peer in &self.bootstrap_peers {
            if self.swarm.is_connected(peer) || !self.unreachable_bootstrap.contains(peer) {
                self.lost_bootstrap.remove(peer);
                continue;
            }
            if self.lost_lookups.values().any(|p| p == peer) {
                continue;
            }
            let (next, attempts) = self.lost_bootstrap.get(peer).copied().unwrap_or((now, 0));
            if next <= now {
                let wait = FIRST.saturating_mul(1 << attempts.min(5)).min(MAX);
                self.lost_bootstrap
                    .insert(*peer, (now + wait, attempts + 1));
                due.push(*peer);
            }
        }
        for peer in due {
            tracing::debug!(%peer, "bootstrap peer not connected; looking it up in the DHT");
            let query = self.swarm.behaviour_mut().kad.walk_in_background(peer);
            self.lost_lookups.insert(query, peer);
        }
    }

    fn on_lost_lookup(
        &mut self,
        target: PeerId,
        result: Result<kad::GetClosestPeersOk, kad::GetClosestPeersError>,
        last: bool,
        id: kad::QueryId,
    ) {
        if last {
            self.lost_lookups.remove(&id);
        }
        let addrs = addresses_found(target, result);
        if addrs.is_empty() {
            return;
        }
        tracing::info!(peer = %target, ?addrs, "found a bootstrap peer again through the DHT");
        if self.swarm.is_connected(&target) {
            return; // The lookup itself reached it.
        }
        let opts = DialOpts::peer_id(target).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(peer = %target, error = %e, "cannot dial the bootstrap peer found again");
        }
    }

    fn routing_table_len(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    fn routing_table(&mut self) -> Vec<PeerId> {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                peers.push(*entry.node.key.preimage());
            }
        }
        peers
    }

    fn status(&mut self) -> NetStatus {
        let dht_records = self.swarm.behaviour_mut().kad.store_mut().records().count();
        NetStatus {
            peer_id: *self.swarm.local_peer_id(),
            listen_addrs: self.swarm.listeners().cloned().collect(),
            external_addrs: self.swarm.external_addresses().cloned().collect(),
            connected_peers: self.peers.len(),
            routing_table_peers: self.routing_table_len(),
            dht_records,
            dht_mode: self.dht_mode,
            dht_server: mode_is_server(self.swarm.behaviour().kad.mode()),
            nat: self.nat.clone(),
            relayed_via: self.reserved_on.iter().copied().collect(),
            relay_served: self.served,
            connections_inbound: self.conns_in,
            connections_outbound: self.conns_out,
            connections_low: self.budget.low,
            connections_high: self.budget.high,
            connections_trimmed: self.connections_trimmed,
            connections_idle_closed: self.connections_idle_closed,
            connections_refused: self.swarm.behaviour().gate.refused(),
            hole_punch: self.hole_punch.clone(),
            dm_link_peers: self.link_use.peers().len(),
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut infos: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(peer_id, state)| {
                let mut conns: Vec<_> = state.connections.iter().collect();
                conns.sort_by_key(|(id, _)| **id);
                PeerInfo {
                    peer_id: *peer_id,
                    addrs: conns.iter().map(|(_, c)| c.addr.clone()).collect(),
                    connections: conns
                        .iter()
                        .map(|(_, c)| ConnectionInfo {
                            addr: c.addr.clone(),
                            inbound: c.inbound,
                            path: c.path,
                        })
                        .collect(),
                    protocols: state.protocols.clone(),
                    agent: state.agent.clone(),
                    inbound: conns.first().is_some_and(|(_, c)| c.inbound),
                    connected_since: state.since,
                }
            })
            .collect();
        infos.sort_by_key(|p| p.connected_since);
        infos
    }
}

/// Converts a wall-clock expiry into the `Instant` Kademlia records use.
fn instant_at(at: SystemTime) -> Instant {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now
            .checked_add(ahead)
            .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        Err(_) => now,
    }
}

/// The addresses a walk towards `target`'s id found for it (empty when no answer named it),
/// whether the walk completed or was cut short by its timeout.
fn addresses_found(
    target: PeerId,
    result: Result<kad::GetClosestPeersOk, kad::GetClosestPeersError>,
) -> Vec<Multiaddr> {
    let peers = match result {
        Ok(ok) => ok.peers,
        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
    };
    peers
        .into_iter()
        .filter(|p| p.peer_id == target)
        .flat_map(|p| p.addrs)
        .collect()
}
