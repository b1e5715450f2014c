//! The raw libp2p baseline: a bare swarm with only what a scenario needs, driven by the same
//! actor shape kith uses (one task owns the swarm, commands arrive on a bounded channel with
//! `oneshot` replies), so the ratio measures kith's own cost and not the shape of the driver.
//!
//! - [`RawConfig`]: transports are always TCP+Noise+Yamux and QUIC (as in kith); behaviours are
//!   identify and Kademlia (`Mode::Server`, `MemoryStore`), plus ping and gossipsub for the idle
//!   footprint.
//! - [`RawNode::start`]: builds the swarm, waits for its listeners, dials the bootstrap entries.
//! - [`run_process`]: the hidden `__raw-node` subcommand, a raw node as its own process.
//! - [`run_rr_process`]: the hidden `__raw-rr` subcommand, a raw node with request-response as
//!   its own process, serving requests or sending a counted batch on command (`dm.cpu`).
//!
//! With [`RawConfig::request_response`] a raw node also speaks `/kith-bench/rr/1.0.0` (the codec of
//! `dm.latency`'s baseline): it answers every request with a 20-byte ack, and
//! [`RawNode::request`] sends one (dialing the peer with the addresses Kademlia knows).

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, gossipsub, identify, kad,
    multiaddr::Protocol,
    noise, ping, request_response,
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::scenarios::dm::RawCodec;

/// The longest a raw node's driver may take to answer a command.
const DRIVER_LIMIT: Duration = Duration::from_secs(300);

/// The identify protocol version raw nodes announce.
const RAW_IDENTIFY: &str = "/kith-bench/raw/1.0.0";

/// The raw request-response protocol (the same as `dm.latency`'s baseline).
pub(crate) const RAW_RR_PROTOCOL: &str = "/kith-bench/rr/1.0.0";

/// Size of the answer to every raw request (about what a kith ack weighs).
const RAW_ACK: usize = 20;

/// How long [`RawNode::start`] waits for its listeners to come up.
/// Answer to a raw `get_record`.
type RecordReply = oneshot::Sender<anyhow::Result<Vec<u8>>>;

/// Records a raw lookup waits for, as kith's resolver waits for 4 agreeing holders.
const RECORD_QUORUM: usize = 4;
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// How a raw node is built.
#[derive(Debug, Clone)]
pub(crate) struct RawConfig {
    /// Kademlia protocol; the same name the kith nodes of the scenario use.
    pub(crate) kad_protocol: String,
    /// Listen addresses (loopback only).
    pub(crate) listen: Vec<Multiaddr>,
    /// Bootstrap entries, each ending in `/p2p/<id>`.
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Also run ping and gossipsub, as a personal node would (footprint baseline).
    pub(crate) full: bool,
    /// Idle connection timeout; kith's default is 60 s.
    pub(crate) idle_timeout: Duration,
    /// Kademlia query timeout; kith's default is 30 s.
    pub(crate) query_timeout: Duration,
    /// Also speak request-response ([`RAW_RR_PROTOCOL`]): answer requests, send them.
    pub(crate) request_response: bool,
}

impl RawConfig {
    /// The baseline for a kith node with default settings on the given network id.
    pub(crate) fn dht(network_id: &str) -> Self {
        Self {
            kad_protocol: kith_net::kad_protocol(network_id),
            listen: vec![loopback_tcp()],
            bootstrap: Vec::new(),
            full: false,
            idle_timeout: Duration::from_secs(60),
            query_timeout: Duration::from_secs(30),
            request_response: false,
        }
    }
}

/// `/ip4/127.0.0.1/tcp/0`: the only kind of address benchmark nodes listen on (plus QUIC's twin).
pub(crate) fn loopback_tcp() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}

/// `/ip4/127.0.0.1/udp/0/quic-v1`.
pub(crate) fn loopback_quic() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Udp(0))
        .with(Protocol::QuicV1)
}

/// What a raw node runs.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Exchanges listen addresses; feeds the routing table as in kith.
    identify: identify::Behaviour,
    /// The DHT.
    kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Footprint baseline only.
    ping: Toggle<ping::Behaviour>,
    /// Footprint baseline only, default settings.
    gossipsub: Toggle<gossipsub::Behaviour>,
    /// `dm.first` and `dm.cpu` baselines only.
    rr: Toggle<request_response::Behaviour<RawCodec>>,
}

type ClosestReply = oneshot::Sender<anyhow::Result<Vec<PeerId>>>;

enum Command {
    Closest {
        key: PeerId,
        reply: ClosestReply,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    GetRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<anyhow::Result<Vec<u8>>>,
    },
    RoutingLen {
        reply: oneshot::Sender<usize>,
    },
    Connections {
        reply: oneshot::Sender<usize>,
    },
    Request {
        peer: PeerId,
        body: Vec<u8>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },

    Bootstrap {
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A handle to a running raw node.
#[derive(Debug, Clone)]
pub(crate) struct RawNode {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
}

impl RawNode {
    /// Builds the swarm, waits until every listener is bound, dials the bootstrap entries and
    /// spawns the driver on the current runtime.
    pub(crate) async fn start(config: RawConfig) -> anyhow::Result<Self> {
        let mut swarm = build_swarm(&config)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .with_context(|| format!("raw node cannot listen on {addr}"))?;
        }
        let mut listen_addrs = Vec::new();
        let wait = async {
            while listen_addrs.len() < config.listen.len() {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    listen_addrs.push(address);
                }
            }
        };
        tokio::time::timeout(LISTEN_WAIT, wait)
            .await
            .context("raw node listeners did not come up")?;

        for addr in &config.bootstrap {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                let base: Multiaddr = addr
                    .iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect();
                swarm.behaviour_mut().kad.add_address(&peer, base);
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                bail!("raw node cannot dial {addr}: {e}");
            }
        }
        if !config.bootstrap.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }

        let peer_id = *swarm.local_peer_id();
        let (commands, rx) = mpsc::channel(64);
        let kad_protocol = StreamProtocol::try_from_owned(config.kad_protocol.clone())
            .context("invalid Kademlia protocol name")?;
        tokio::spawn(
            Driver {
                swarm,
                commands: rx,
                kad_protocol,
                pending: HashMap::new(),
                puts: HashMap::new(),
                gets: HashMap::new(),
                requests: HashMap::new(),
            }
            .run(),
        );
        Ok(Self {
            commands,
            peer_id,
            listen_addrs,
        })
    }

    /// The node's peer id.
    pub(crate) fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The bound listen addresses.
    pub(crate) fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// A Kademlia `FIND_NODE` walk, answered like kith's `get_closest_peers`.
    pub(crate) async fn get_closest_peers(&self, key: PeerId) -> anyhow::Result<Vec<PeerId>> {
        self.ask(|reply| Command::Closest { key, reply }).await?
    }

    /// Stores a record locally and at the closest peers (quorum one), like kith's publish.
    pub(crate) async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.ask(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// Looks a key up; returns once 4 holders answered or the walk ended (raw Kademlia validates
    /// nothing).
    pub(crate) async fn get_record(&self, key: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        self.ask(|reply| Command::GetRecord { key, reply }).await?
    }

    /// One request-response round trip to `peer` (dialed if needed, with the addresses
    /// Kademlia knows); needs [`RawConfig::request_response`].
    pub(crate) async fn request(&self, peer: PeerId, body: Vec<u8>) -> anyhow::Result<()> {
        self.ask(|reply| Command::Request { peer, body, reply })
            .await?
    }

    /// Peers in the routing table.
    pub(crate) async fn routing_len(&self) -> anyhow::Result<usize> {
        self.ask(|reply| Command::RoutingLen { reply }).await
    }

    /// Established connections, both directions (`scale`'s per-node connection figures).
    pub(crate) async fn connections(&self) -> anyhow::Result<usize> {
        self.ask(|reply| Command::Connections { reply }).await
    }

    /// Starts a Kademlia bootstrap.
    pub(crate) async fn bootstrap(&self) -> anyhow::Result<()> {
        self.ask(|reply| Command::Bootstrap { reply }).await
    }

    /// Stops the driver and drops the swarm.
    pub(crate) async fn shutdown(&self) -> anyhow::Result<()> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }

    /// Sends a command with a reply channel and waits for the answer, at most
    /// [`DRIVER_LIMIT`] (every query the driver runs has a shorter timeout of its own).
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> anyhow::Result<T> {
        kith_testkit::ask_driver(&self.commands, command, "raw node", DRIVER_LIMIT).await
    }
}

fn build_swarm(config: &RawConfig) -> anyhow::Result<Swarm<Behaviour>> {
    let kad_protocol = StreamProtocol::try_from_owned(config.kad_protocol.clone())
        .context("invalid Kademlia protocol name")?;
    let full = config.full;
    let with_rr = config.request_response;
    let query_timeout = config.query_timeout;
    let swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("TCP transport")?
        .with_quic()
        .with_behaviour(|key| {
            let mut kad_config = kad::Config::new(kad_protocol);
            kad_config.set_query_timeout(query_timeout);
            let kad = server_kad(key.public().to_peer_id(), kad_config);
            let gossipsub = if full {
                Some(gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    RAW_IDENTIFY.to_owned(),
                    key.public(),
                )),
                kad,
                ping: Toggle::from(full.then(|| ping::Behaviour::new(ping::Config::new()))),
                gossipsub: Toggle::from(gossipsub),
                rr: Toggle::from(with_rr.then(|| {
                    request_response::Behaviour::with_codec(
                        RawCodec,
                        [(
                            StreamProtocol::new(RAW_RR_PROTOCOL),
                            request_response::ProtocolSupport::Full,
                        )],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(20))
                            .with_max_concurrent_streams(256),
                    )
                })),
            })
        })
        .map_err(|e| anyhow::anyhow!("raw behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}

/// Owns the swarm. Like kith's loop: `select!` with local commands first, plain handlers.
struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    kad_protocol: StreamProtocol,
    pending: HashMap<kad::QueryId, (Vec<PeerId>, ClosestReply)>,
    puts: HashMap<kad::QueryId, oneshot::Sender<anyhow::Result<()>>>,
    gets: HashMap<kad::QueryId, (usize, RecordReply)>,
    requests: HashMap<request_response::OutboundRequestId, oneshot::Sender<anyhow::Result<()>>>,
}

impl Driver {
    async fn run(mut self) {
        let shutdown_reply = loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.handle_command(command),
                    None => break None,
                },
                event = self.swarm.select_next_some() => self.handle_event(event),
            }
        };
        drop(self.swarm);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn routing_len(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Closest { key, reply } => {
                if self.routing_len() == 0 {
                    let _ = reply.send(Err(anyhow::anyhow!("no known peers")));
                    return;
                }
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(key);
                self.pending.insert(id, (Vec::new(), reply));
            }
            Command::PutRecord { key, value, reply } => {
                let record = kad::Record::new(kad::RecordKey::new(&key), value);
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(id) => {
                        self.puts.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(anyhow::anyhow!("put_record: {e:?}")));
                    }
                }
            }
            Command::GetRecord { key, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.gets.insert(id, (0, reply));
            }
            Command::Connections { reply } => {
                let info = self.swarm.network_info();
                let _ = reply.send(info.connection_counters().num_established() as usize);
            }
            Command::RoutingLen { reply } => {
                let _ = reply.send(self.routing_len());
            }
            Command::Request { peer, body, reply } => {
                match self.swarm.behaviour_mut().rr.as_mut() {
                    Some(rr) => {
                        let id = rr.send_request(&peer, body);
                        self.requests.insert(id, reply);
                    }
                    None => {
                        let _ = reply.send(Err(anyhow::anyhow!(
                            "this raw node was built without request-response"
                        )));
                    }
                }
            }
            Command::Bootstrap { reply } => {
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
                let _ = reply.send(());
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&self.kad_protocol) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            })) => {
                let Some((found, _)) = self.pending.get_mut(&id) else {
                    return;
                };
                match result {
                    Ok(ok) => found.extend(ok.peers.into_iter().map(|p| p.peer_id)),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                        found.extend(peers.into_iter().map(|p| p.peer_id));
                    }
                }
                if step.last
                    && let Some((found, reply)) = self.pending.remove(&id)
                {
                    let result = if found.is_empty() {
                        Err(anyhow::anyhow!("walk found no peer"))
                    } else {
                        Ok(found)
                    };
                    let _ = reply.send(result);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::PutRecord(result),
                ..
            })) => {
                if let Some(reply) = self.puts.remove(&id) {
                    let _ = reply.send(result.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}")));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                ..
            })) => {
                let Some((found, _)) = self.gets.get_mut(&id) else {
                    return;
                };
                let answer = match result {
                    // Like kith's resolver: done once 4 holders answered (or the walk ends).
                    Ok(kad::GetRecordOk::FoundRecord(record)) => {
                        *found += 1;
                        (*found >= RECORD_QUORUM).then_some(Ok(record.record.value))
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {
                        Some(if *found > 0 {
                            Ok(Vec::new())
                        } else {
                            Err(anyhow::anyhow!("no record"))
                        })
                    }
                    Err(e) => Some(Err(anyhow::anyhow!("{e}"))),
                };
                if let Some(answer) = answer
                    && let Some((_, reply)) = self.gets.remove(&id)
                {
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                    let _ = reply.send(answer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                message,
                ..
            })) => match message {
                request_response::Message::Request { channel, .. } => {
                    if let Some(rr) = self.swarm.behaviour_mut().rr.as_mut() {
                        let _ = rr.send_response(channel, vec![0u8; RAW_ACK]);
                    }
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some(reply) = self.requests.remove(&request_id) {
                        let _ = reply.send(Ok(()));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rr(
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                },
            )) => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(anyhow::anyhow!("raw request failed: {error}")));
                }
            }
            _ => {}
        }
    }
}

/// A Kademlia behaviour in server mode over an in-memory store, with `config` and a periodic
/// bootstrap every 5 minutes: the raw baselines' DHT.
pub(crate) fn server_kad(
    peer_id: PeerId,
    mut config: kad::Config,
) -> kad::Behaviour<kad::store::MemoryStore> {
    config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config);
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// The ready line of a raw node process: one JSON object with `peer_id` and `listen_addrs`.
fn print_ready(node: &RawNode) {
    let addrs: Vec<String> = node
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "{}",
        serde_json::json!({"peer_id": node.peer_id().to_string(), "listen_addrs": addrs})
    );
}

/// The hidden `__raw-node` subcommand: one raw node with the footprint settings (TCP and QUIC on
/// loopback, identify, Kademlia, ping, gossipsub), printing one JSON ready line and running until
/// its standard input closes.
pub(crate) fn run_process() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let config = RawConfig {
            listen: vec![loopback_tcp(), loopback_quic()],
            full: true,
            ..RawConfig::dht("bench")
        };
        let node = RawNode::start(config).await?;
        print_ready(&node);
        // The parent closes our stdin to stop us; a blocking read is the simplest portable wait.
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = closed_tx.send(());
        });
        let _ = closed_rx.await;
        node.shutdown().await
    })
}

/// The hidden `__raw-rr` subcommand (`dm.cpu`'s baseline): a raw node with request-response on
/// loopback TCP, in a process of its own so its CPU time is its own. It prints one JSON ready
/// line (`peer_id`, `listen_addrs`) and answers every request. With `connect` (an address ending
/// in `/p2p/<id>`) it dials that node, and each `send <n> <in_flight>` line on stdin sends `n`
/// requests of `size` bytes to it, `in_flight` at a time, then prints `{"sent", "failed"}`.
/// It stops when its standard input closes.
pub(crate) fn run_rr_process(connect: Option<Multiaddr>, size: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let target = match &connect {
            Some(addr) => match addr.iter().last() {
                Some(Protocol::P2p(peer)) => Some(peer),
                _ => bail!("--connect {addr} does not end in /p2p/<peer id>"),
            },
            None => None,
        };
        let config = RawConfig {
            bootstrap: connect.into_iter().collect(),
            request_response: true,
            ..RawConfig::dht("bench")
        };
        let node = RawNode::start(config).await?;
        print_ready(&node);
        // Lines from the parent; the channel closes with stdin.
        let (lines_tx, mut lines) = mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::stdin().lock()) {
                let Ok(line) = line else { break };
                if lines_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            let mut words = line.split_whitespace();
            let (Some("send"), Some(n), Some(in_flight)) =
                (words.next(), words.next(), words.next())
            else {
                eprintln!("__raw-rr: ignoring {line:?}; expected `send <n> <in_flight>`");
                continue;
            };
            let (Ok(n), Ok(in_flight)) = (n.parse::<usize>(), in_flight.parse::<usize>()) else {
                eprintln!("__raw-rr: ignoring {line:?}; counts must be numbers");
                continue;
            };
            let Some(peer) = target else {
                eprintln!("__raw-rr: nothing to send to without --connect");
                continue;
            };
            let (sent, failed) = send_batch(&node, peer, n, in_flight.max(1), size).await;
            println!("{}", serde_json::json!({"sent": sent, "failed": failed}));
        }
        node.shutdown().await
    })
}

/// `n` requests to `peer`, `in_flight` at a time: (answered, failed).
async fn send_batch(
    node: &RawNode,
    peer: PeerId,
    n: usize,
    in_flight: usize,
    size: usize,
) -> (usize, usize) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..in_flight.min(n)).map(|_| {
        let node = node.clone();
        let next = next.clone();
        async move {
            let (mut sent, mut failed) = (0, 0);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                match node.request(peer, vec![b'x'; size]).await {
                    Ok(()) => sent += 1,
                    Err(_) => failed += 1,
                }
            }
            (sent, failed)
        }
    });
    futures::future::join_all(workers)
        .await
        .into_iter()
        .fold((0, 0), |(s, f), (a, b)| (s + a, f + b))
}
