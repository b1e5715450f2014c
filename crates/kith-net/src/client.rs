use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use std::time::SystemTime;

use crate::{
    BlobStream, Channel, DmRequestId, GetRecordResult, GossipId, GossipVerdict,
    IncomingBlobStreams, IncomingDmLinks, NetStatus, PeerInfo, RequestError,
    blob::BlobStreams,
    dm_link::{DmLinks, LinkSend},
};

/// What a [`Client`] asks the event loop to do. Each carries its own reply channel.
#[derive(Debug)]
pub(crate) enum Command {
    Status {
        reply: oneshot::Sender<NetStatus>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    RoutingTable {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ClosestPeers {
        key: PeerId,
        reply: oneshot::Sender<Result<Vec<PeerId>, RequestError>>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        expires: Option<SystemTime>,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    PutRecordTo {
        key: Vec<u8>,
        value: Vec<u8>,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    GetRecord {
        key: Vec<u8>,
        quorum: usize,
        reply: oneshot::Sender<Result<GetRecordResult, RequestError>>,
    },
    SendDm {
        channel: Channel,
        peer: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
    RespondDm {
        request: DmRequestId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Unsubscribe {
        topic: String,
        reply: oneshot::Sender<()>,
    },
    Publish {
        topic: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
    ReportGossip {
        message_id: GossipId,
        source: PeerId,
        accept: GossipVerdict,
    },
    TopicPeers {
        topic: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Bootstrap {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Protect {
        tag: &'static str,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<()>,
    },
    Welcome {
        tag: &'static str,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A handle to the network. Cheap to clone; every method is a message to the event loop.
///
/// All methods are cancel-safe: dropping the future drops the reply receiver and the loop ignores
/// the failed reply.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    blobs: BlobStreams,
    links: DmLinks,
}

impl Client {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        local_peer_id: PeerId,
        blobs: BlobStreams,
        links: DmLinks,
    ) -> Self {
        Self {
            commands,
            local_peer_id,
            blobs,
            links,
        }
    }

    /// Opens a `/kith/blob/1.0.0` stream to `peer`, dialling it if needed. The stream bypasses
    /// the event loop, so a large transfer never queues behind commands.
    pub async fn open_blob_stream(&self, peer: PeerId) -> Result<BlobStream, RequestError> {
        self.blobs.open(peer).await
    }

    /// Starts accepting `/kith/blob/1.0.0` streams; the node's blob server calls this once.
    /// Until then (and after the taker is dropped) inbound blob streams are refused.
    pub fn accept_blob_streams(&self) -> Result<IncomingBlobStreams, RequestError> {
        self.blobs.accept()
    }

    /// This node's peer id (no round trip).
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// A snapshot of listeners, connections, DHT and NAT state.
    pub async fn status(&self) -> Result<NetStatus, RequestError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Connected peers with their addresses and protocols.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, RequestError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Every peer in the Kademlia routing table.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, RequestError> {
        self.ask(|reply| Command::RoutingTable { reply }).await
    }

    /// Runs a Kademlia `FIND_NODE` walk for `key` and returns the closest peers found.
    pub async fn get_closest_peers(&self, key: PeerId) -> Result<Vec<PeerId>, RequestError> {
        self.ask(|reply| Command::ClosestPeers { key, reply })
            .await?
    }

    /// Stores a record locally and at the closest peers (quorum one). Success means at least one
    /// peer answered; with record filtering a peer may still have refused it, so callers that need
    /// certainty read it back with [`Client::get_record`].
    pub async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expires: Option<SystemTime>,
    ) -> Result<(), RequestError> {
        self.ask(|reply| Command::PutRecord {
            key,
            value,
            expires,
            reply,
        })
        .await?
    }

    /// Sends a record to exactly these peers, without storing it locally (write-back after a
    /// GET, and tests that play a misbehaving publisher).
    pub async fn put_record_to(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        peers: Vec<PeerId>,
    ) -> Result<(), RequestError> {
        self.ask(|reply| Command::PutRecordTo {
            key,
            value,
            peers,
            reply,
        })
        .await?
    }

    /// Looks a key up in the DHT. Every answer is checked by the configured validator; the query
    /// stops early once `quorum` distinct holders agree (same validator class).
    pub async fn get_record(
        &self,
        key: Vec<u8>,
        quorum: usize,
    ) -> Result<GetRecordResult, RequestError> {
        self.ask(|reply| Command::GetRecord { key, quorum, reply })
            .await?
    }

    /// Sends one direct-message frame and waits for the peer's answer (dialing with `addrs` and
    /// any known address if not connected). Bounded by the configured `dm_timeout`.
    ///
    /// On the open link to `peer` when there is one (see `dm_link`: no hand-over to the event
    /// loop either way); otherwise, or when the link breaks before the answer, as one
    /// `/kith/dm/1.0.0` request, after which a link is opened for the next messages. A frame
    /// may thus reach the peer twice; the service answers a repeated message id as a duplicate.
    pub async fn send_dm(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Vec<u8>, RequestError> {
        match self.links.send(peer, &bytes).await {
            LinkSend::Answered(ack) => return Ok(ack),
            LinkSend::TimedOut => {
                return Err(RequestError::Undelivered(format!(
                    "no answer from {peer} on its direct-message link in time"
                )));
            }
            LinkSend::NoLink => {}
        }
        let answer = self.send_on(Channel::Dm, peer, bytes, addrs).await;
        if answer.is_ok() {
            self.links.open_soon(peer);
        }
        answer
    }

    /// Whether direct messages to `peer` go on a link now (for tests and diagnostics).
    pub fn has_dm_link(&self, peer: &PeerId) -> bool {
        self.links.is_open(peer)
    }

    /// Starts accepting direct-message links (`/kith/dm-link/1.0.0`); the node's message server
    /// calls this once. Until then peers' attempts to open one are refused, and they send each
    /// message as a `/kith/dm/1.0.0` request, answered through [`crate::Event::Request`].
    pub fn accept_dm_links(&self) -> Result<IncomingDmLinks, RequestError> {
        self.links.accept()
    }

    /// Sends one mailbox request to a relay and waits for its answer.
    pub async fn mailbox_request(
        &self,
        relay: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Vec<u8>, RequestError> {
        self.send_on(Channel::Mailbox, relay, bytes, addrs).await
    }

    /// Sends one `/kith/sync` request (group catch-up) to a member and waits for its page.
    pub async fn sync_request(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Vec<u8>, RequestError> {
        self.send_on(Channel::Sync, peer, bytes, addrs).await
    }

    /// One request-response round trip on `channel` (the three protocols share the codec, the
    /// dialing and the timeout).
    async fn send_on(
        &self,
        channel: Channel,
        peer: PeerId,
        bytes: Vec<u8>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Vec<u8>, RequestError> {
        self.ask(|reply| Command::SendDm {
            channel,
            peer,
            bytes,
            addrs,
            reply,
        })
        .await?
    }

    /// Joins a gossipsub topic (a group).
    pub async fn subscribe(&self, topic: String) -> Result<(), RequestError> {
        self.ask(|reply| Command::Subscribe { topic, reply })
            .await?
    }

    /// Leaves a gossipsub topic.
    pub async fn unsubscribe(&self, topic: String) -> Result<(), RequestError> {
        self.ask(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Publishes on a topic. `Ok(false)` when no subscribed peer was reachable (or the same bytes
    /// went out before): the message is not lost, members fetch it by sync.
    pub async fn publish(&self, topic: String, bytes: Vec<u8>) -> Result<bool, RequestError> {
        self.ask(|reply| Command::Publish {
            topic,
            bytes,
            reply,
        })
        .await?
    }

    /// Tells gossipsub whether to forward a message delivered as [`crate::Event::GroupMessage`].
    /// Call exactly once per message, within a few heartbeats.
    pub async fn report_gossip(
        &self,
        message_id: GossipId,
        source: PeerId,
        accept: GossipVerdict,
    ) -> Result<(), RequestError> {
        self.commands
            .send(Command::ReportGossip {
                message_id,
                source,
                accept,
            })
            .await
            .map_err(|_| RequestError::Shutdown)
    }

    /// Connected peers subscribed to a topic.
    pub async fn topic_peers(&self, topic: String) -> Result<Vec<PeerId>, RequestError> {
        self.ask(|reply| Command::TopicPeers { topic, reply }).await
    }

    /// Answers an inbound direct message or mailbox request.
    pub async fn respond_dm(
        &self,
        request: DmRequestId,
        bytes: Vec<u8>,
    ) -> Result<(), RequestError> {
        self.ask(|reply| Command::RespondDm {
            request,
            bytes,
            reply,
        })
        .await?
    }

    /// Dials an address (with or without `/p2p/<id>`); returns once the dial has started.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), RequestError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Starts a Kademlia bootstrap; returns once it has started.
    pub async fn bootstrap(&self) -> Result<(), RequestError> {
        self.ask(|reply| Command::Bootstrap { reply }).await?
    }

    /// Replaces the set of peers protected under `tag` (e.g. `"group-members"`,
    /// `"recent-contacts"`): the connection manager never trims nor idle-closes a connection to a
    /// peer protected under any tag. An empty list drops the tag. Protection does not dial: it
    /// only keeps connections that exist. Returns once the loop applied it.
    pub async fn protect(&self, tag: &'static str, peers: Vec<PeerId>) -> Result<(), RequestError> {
        self.ask(|reply| Command::Protect { tag, peers, reply })
            .await
    }

    /// Replaces the set of peers welcomed under `tag` (e.g. `"group-members"`): let in at the
    /// high water mark like protected peers, and trimmed after strangers, but not kept whatever
    /// the count. A large group's members are most of whom a node meets, and protecting them all
    /// kept every connection a Kademlia walk made to one (a 200-member test ran out of
    /// descriptors); the gossipsub mesh peers of our topics, the connections group delivery
    /// needs, are protected by the loop itself. An empty list drops the tag. Returns once the
    /// loop applied it.
    pub async fn welcome(&self, tag: &'static str, peers: Vec<PeerId>) -> Result<(), RequestError> {
        self.ask(|reply| Command::Welcome { tag, peers, reply })
            .await
    }

    /// Stops the event loop and closes every connection; returns once the swarm is gone.
    pub async fn shutdown(&self) -> Result<(), RequestError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| RequestError::Shutdown)?;
        rx.await.map_err(|_| RequestError::Shutdown)
    }
}
