//! [`RawDht`]: a bare Kademlia server whose routing table a test writes.
//!
//! A libp2p swarm (TCP, Noise, Yamux, identify, Kademlia) speaking kith's DHT protocol for a
//! network id, in server mode, that never adds a peer to its routing table by itself (manual
//! inserts, no bootstrap). Kademlia answers every `FIND_NODE` and `GET_VALUE` with the closest
//! peers of its table, so a test decides whom it names: a rogue that refers lookups only to ids of
//! its choosing (un-worked ones, next to a key), or such an id itself, answering every request
//! and holding nothing. It identifies with kith's identify protocol, so a kith node keeps the
//! connection like any kith peer's. Driven by its own task; listens on 127.0.0.1 only.

use std::{collections::HashSet, time::Duration};

use anyhow::{Context as _, anyhow};
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify,
    identity::Keypair,
    kad::{self, store::MemoryStore},
    multiaddr::Protocol,
    swarm::{NetworkBehaviour, SwarmEvent},
};
use tokio::sync::{mpsc, oneshot};

/// How long starting to listen may take.
const LISTEN: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
}

enum Command {
    /// Adds these peers to the routing table.
    Refer {
        peers: Vec<(PeerId, Multiaddr)>,
        reply: oneshot::Sender<()>,
    },
    /// How many Kademlia requests it answered, and every peer it ever had a connection with.
    Report {
        reply: oneshot::Sender<(u64, HashSet<PeerId>)>,
    },
}

/// A running bare Kademlia server.
pub struct RawDht {
    peer_id: PeerId,
    addr: Multiaddr,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl RawDht {
    /// Starts a server with this identity for the network `network_id`, listening on a free
    /// 127.0.0.1 TCP port, with an empty routing table.
    pub async fn start(keypair: &Keypair, network_id: &str) -> anyhow::Result<Self> {
        let mut swarm = swarm(keypair, network_id)?;
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
            .context("raw DHT listen")?;
        let listened = tokio::time::timeout(LISTEN, async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    return address;
                }
            }
        })
        .await
        .context("the raw DHT server did not start listening")?;
        let peer_id = *swarm.local_peer_id();
        let addr = listened.with(Protocol::P2p(peer_id));
        let (commands, command_rx) = mpsc::channel(16);
        let task = tokio::spawn(run(swarm, command_rx));
        Ok(Self {
            peer_id,
            addr,
            commands,
            task,
        })
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Its listen address, ending in `/p2p/<id>` (a bootstrap entry).
    pub fn addr(&self) -> Multiaddr {
        self.addr.clone()
    }

    /// Adds `peers` (each with an address ending in `/p2p/<id>` or not) to its routing table:
    /// the only peers it will ever name in an answer.
    pub async fn refer_to(&self, peers: Vec<(PeerId, Multiaddr)>) -> anyhow::Result<()> {
        self.ask(|reply| Command::Refer { peers, reply }).await
    }

    /// How many Kademlia requests (`FIND_NODE`, `GET_VALUE`, `PUT_VALUE`, ...) it answered so far,
    /// and every peer it has had a connection with, either way. (kad bootstraps by itself when
    /// peers enter its table, so a server with a table also asks, and meets, the peers in it.)
    pub async fn report(&self) -> anyhow::Result<(u64, HashSet<PeerId>)> {
        self.ask(|reply| Command::Report { reply }).await
    }

    /// Sends a command with a reply channel and waits (bounded) for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> anyhow::Result<T> {
        crate::ask_driver(&self.commands, command, "the raw DHT server", LISTEN).await
    }

    /// Stops the swarm; its connections close.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn swarm(keypair: &Keypair, network_id: &str) -> anyhow::Result<Swarm<Behaviour>> {
    let protocol = StreamProtocol::try_from_owned(kith_net::kad_protocol(network_id))
        .map_err(|e| anyhow!("kad protocol for {network_id}: {e}"))?;
    let mut config = kad::Config::new(protocol);
    config.set_kbucket_inserts(kad::BucketInserts::Manual);
    config.set_periodic_bootstrap_interval(None);
    let peer_id = keypair.public().to_peer_id();
    let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), config);
    kad.set_mode(Some(kad::Mode::Server));
    let identify = identify::Behaviour::new(
        identify::Config::new(kith_net::IDENTIFY_PROTOCOL.to_owned(), keypair.public())
            .with_agent_version("kith-testkit raw DHT".to_owned()),
    );
    crate::raw::tcp_swarm(keypair, Behaviour { identify, kad }, "raw DHT")
}

async fn run(mut swarm: Swarm<Behaviour>, mut commands: mpsc::Receiver<Command>) {
    let mut answered = 0u64;
    let mut met = HashSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Refer { peers, reply }) => {
                    for (peer, addr) in peers {
                        let addr = match addr.iter().last() {
                            Some(Protocol::P2p(_)) => {
                                let mut base = addr;
                                base.pop();
                                base
                            }
                            _ => addr,
                        };
                        swarm.behaviour_mut().kad.add_address(&peer, addr);
                    }
                    let _ = reply.send(());
                }
                Some(Command::Report { reply }) => {
                    let _ = reply.send((answered, met.clone()));
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { .. })) => {
                    answered += 1;
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    met.insert(peer_id);
                }
                _ => {}
            }
        }
    }
}
