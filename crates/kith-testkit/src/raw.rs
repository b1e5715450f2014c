//! [`RawPeer`]: a hostile or eavesdropping peer for tests.
//!
//! A bare libp2p swarm (TCP, Noise, Yamux, one request-response behaviour) that speaks
//! `/kith/dm/1.0.0` both ways: it writes whatever bytes it is given, length prefix included, and
//! answers inbound frames with whatever its [`Answer`] says. Driven by its own task.
//!
//! Frames use kith-net's own codec ([`kith_net::frame`]), so the framing exists once; what the
//! raw peer adds is that it writes any bytes at all (a length over the cap, a truncated body, a
//! prefix that never ends) and can hold another node's identity.

use std::{collections::HashMap, io, time::Duration};

use anyhow::{Context as _, anyhow};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use kith_net::frame::{encode_frame, read_frame};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm,
    identity::Keypair,
    multiaddr::Protocol,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::SwarmEvent,
};
use tokio::sync::{mpsc, oneshot};

/// The largest inbound frame body the raw peer reads (above every cap of kith's, so it sees
/// whatever a node sends).
const MAX_INBOUND: usize = 1024 * 1024;
/// The largest answer body it reads (above every response cap of kith's: a mailbox page is up
/// to 4 MiB).
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// The answer to an inbound frame body: a response body, or None to answer nothing.
pub type Answer = std::sync::Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    /// Outbound: exactly the bytes written on the stream (length prefix included). Inbound:
    /// the frame body.
    type Request = Vec<u8>;
    /// The body (length prefix removed or added by the codec).
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_INBOUND).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_ANSWER).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&encode_frame(&res)).await?;
        io.close().await
    }
}

type RawSwarm = Swarm<request_response::Behaviour<RawCodec>>;

enum Command {
    Dial {
        addr: Multiaddr,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Send {
        peer: PeerId,
        addr: Multiaddr,
        wire: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
}

/// A running raw swarm.
pub struct RawPeer {
    commands: mpsc::Sender<Command>,
    frames: mpsc::Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawPeer {
    /// Starts a swarm with this identity speaking `/kith/dm/1.0.0`; it listens nowhere, it only
    /// dials.
    pub fn start(keypair: &Keypair, answer: Answer) -> anyhow::Result<Self> {
        Self::start_for(keypair, kith_net::dm::PROTOCOL, answer)
    }

    /// [`RawPeer::start`] for another request-response protocol of kith's (`/kith/mailbox/1.0.0`,
    /// `/kith/sync/1.0.0`): same framing, other bodies.
    pub fn start_for(
        keypair: &Keypair,
        protocol: &'static str,
        answer: Answer,
    ) -> anyhow::Result<Self> {
        let swarm = swarm(keypair, protocol)?;
        let (commands, command_rx) = mpsc::channel(16);
        let (frame_tx, frames) = mpsc::channel(64);
        let task = tokio::spawn(run(swarm, command_rx, frame_tx, answer));
        Ok(Self {
            commands,
            frames,
            task,
        })
    }

    /// Connects to `addr` (ending in `/p2p/<id>`); returns once the connection is up.
    pub async fn dial(&self, addr: Multiaddr) -> anyhow::Result<()> {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(anyhow!("{addr} does not end in /p2p/<id>"));
        };
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial { addr, peer, reply })
            .await
            .map_err(|_| anyhow!("the raw swarm stopped"))?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("the dial did not finish")?
            .context("the raw swarm stopped")?
            .map_err(|e| anyhow!("dial failed: {e}"))
    }

    /// Writes `wire` (a whole frame, or anything else) on a new stream to `peer` and waits
    /// for the answer's body, or the reason there was none. Bounded.
    pub async fn send(
        &self,
        peer: PeerId,
        addr: Multiaddr,
        wire: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Send {
                peer,
                addr,
                wire,
                reply,
            })
            .await
            .map_err(|_| "the raw swarm stopped".to_owned())?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the raw swarm stopped".to_owned()),
            Err(_) => Err("no answer within 30 s".to_owned()),
        }
    }

    /// The body of the next inbound frame, if one comes within `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, self.frames.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stops the swarm; its connections close.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn swarm(keypair: &Keypair, protocol: &'static str) -> anyhow::Result<RawSwarm> {
    let behaviour = request_response::Behaviour::with_codec(
        RawCodec,
        [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(15)),
    );
    tcp_swarm(keypair, behaviour, "raw swarm")
}

/// A bare swarm with `behaviour` over TCP + Noise + Yamux, as kith's own transport: the hostile
/// and baseline peers of the testkit (`what` names it in errors).
pub(crate) fn tcp_swarm<B: libp2p::swarm::NetworkBehaviour>(
    keypair: &Keypair,
    behaviour: B,
    what: &str,
) -> anyhow::Result<Swarm<B>> {
    Ok(
        libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| anyhow!("{what} transport: {e}"))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| anyhow!("{what} behaviour: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build(),
    )
}

type DialReply = oneshot::Sender<Result<(), String>>;

/// Answers every pending dial to `peer`.
fn finish_dials(dials: &mut Vec<(PeerId, DialReply)>, peer: PeerId, result: &Result<(), String>) {
    let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(dials)
        .into_iter()
        .partition(|(p, _)| *p == peer);
    *dials = waiting;
    for (_, reply) in done {
        let _ = reply.send(result.clone());
    }
}

async fn run(
    mut swarm: RawSwarm,
    mut commands: mpsc::Receiver<Command>,
    frames: mpsc::Sender<Vec<u8>>,
    answer: Answer,
) {
    let mut dials: Vec<(PeerId, DialReply)> = Vec::new();
    let mut calls: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>> =
        HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Dial { addr, peer, reply }) => match swarm.dial(addr) {
                    Ok(()) => dials.push((peer, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                },
                Some(Command::Send { peer, addr, wire, reply }) => {
                    let id = swarm
                        .behaviour_mut()
                        .send_request_with_addresses(&peer, wire, vec![addr]);
                    calls.insert(id, reply);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    finish_dials(&mut dials, peer_id, &Ok(()));
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                    finish_dials(&mut dials, peer, &Err(error.to_string()));
                }
                SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                    match message {
                        request_response::Message::Request { request, channel, .. } => {
                            if let Some(body) = answer(&request) {
                                let _ = swarm.behaviour_mut().send_response(channel, body);
                            }
                            let _ = frames.try_send(request);
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = calls.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) => {
                    if let Some(reply) = calls.remove(&request_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                _ => {}
            },
        }
    }
}
