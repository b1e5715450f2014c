use std::time::SystemTime;

use libp2p::{Multiaddr, PeerId, kad};

use crate::DhtMode;

/// Whether other nodes can dial this one, as AutoNAT v2 last reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NatStatus {
    /// No AutoNAT server has tested us yet.
    #[default]
    Unknown,
    /// A server dialed this address back successfully.
    Public {
        /// The confirmed address.
        addr: Multiaddr,
    },
    /// Every dial-back attempt failed: we sit behind NAT or a firewall.
    Private,
}

impl std::fmt::Display for NatStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatStatus::Unknown => f.write_str("unknown"),
            NatStatus::Public { .. } => f.write_str("public"),
            NatStatus::Private => f.write_str("private"),
        }
    }
}

/// Something the rest of the node may want to react to. Deliberately small and closed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A listener is up on this address.
    ListenAddr {
        /// The bound address.
        addr: Multiaddr,
    },
    /// The first connection to a peer was established.
    PeerConnected {
        /// Who.
        peer: PeerId,
        /// The remote address of that connection.
        addr: Multiaddr,
        /// True if the peer dialed us.
        inbound: bool,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// Who.
        peer: PeerId,
    },
    /// A peer told us who it is. Only kith peers (`kith == true`) enter the routing table.
    PeerIdentified {
        /// Who.
        peer: PeerId,
        /// Its agent string.
        agent: String,
        /// Addresses it listens on.
        listen_addrs: Vec<Multiaddr>,
        /// Whether it speaks kith's identify version and our DHT protocol.
        kith: bool,
    },
    /// A peer sent a request on one of kith's request-response protocols (a direct-message frame,
    /// a mailbox request, a group sync request); answer it with [`crate::Client::respond_dm`] (or
    /// the peer sees a timeout and retries).
    Request {
        /// Which protocol it came on: who in the service handles it.
        channel: Channel,
        /// The authenticated sender (the connection's peer).
        peer: PeerId,
        /// Where to send the answer.
        request: DmRequestId,
        /// The request body (at most the channel's request cap, e.g. [`crate::dm::MAX_REQUEST`]
        /// bytes for a direct message).
        bytes: Vec<u8>,
    },
    /// A gossipsub message arrived; it is held (not forwarded) until the service reports a
    /// verdict with [`crate::Client::report_gossip`].
    GroupMessage {
        /// Who published it (gossipsub's signed author).
        author: PeerId,
        /// Who forwarded it to us.
        source: PeerId,
        /// The id to report the verdict for.
        message_id: GossipId,
        /// The topic.
        topic: String,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// A connected peer subscribed to a topic (a member came online).
    GroupPeerSubscribed {
        /// Who.
        peer: PeerId,
        /// The topic.
        topic: String,
    },
    /// AutoNAT changed its verdict.
    NatChanged(NatStatus),
    /// A relay accepted (or renewed) our reservation: we are reachable through it.
    RelayReserved {
        /// The relay.
        relay: PeerId,
    },
    /// A bootstrap peer identified as a kith relay (relay HOP and `/kith/mailbox/1.0.0`), or a
    /// known relay came back at another address. Sent on every identify of such a peer; the
    /// service keeps its mailbox list by peer id.
    RelayFound {
        /// The relay.
        relay: PeerId,
        /// Where we reach it now, with `/p2p/<relay>`.
        addr: Multiaddr,
    },
    /// Kademlia switched between client and server.
    DhtModeChanged {
        /// True when we now answer queries.
        server: bool,
    },
    /// A bootstrap entry could not be reached; the node keeps going with the others.
    BootstrapUnreachable {
        /// The entry as configured.
        addr: Multiaddr,
        /// The dial error.
        error: String,
    },
}

/// Identifies an inbound direct message awaiting its ack ([`crate::Client::respond_dm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmRequestId(pub(crate) u64);

/// Identifies a held gossipsub message (see [`Event::GroupMessage`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GossipId(pub(crate) Vec<u8>);

/// The service's verdict on a gossipsub message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipVerdict {
    /// Valid: store it and forward it to the mesh.
    Accept,
    /// Invalid (forged, not a member, garbage): drop it and penalise the forwarder.
    Reject,
    /// Not ours to judge (an unknown group, a duplicate): drop it without penalty.
    Ignore,
}

/// Which request-response protocol a request travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `/kith/dm/1.0.0`: direct-message frames (Olm envelopes, receipts, call signals).
    Dm,
    /// `/kith/mailbox/1.0.0`: register, deposit, fetch and delete at a relay.
    Mailbox,
    /// `/kith/sync/1.0.0`: a member asks for group envelopes it lacks.
    Sync,
}

/// How one connection reaches the peer: people behind NAT want to know whether their messages
/// and calls go straight to a friend or through someone's relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionPath {
    /// Straight to the peer over TCP.
    Tcp,
    /// Straight to the peer over QUIC.
    Quic,
    /// Straight to the peer over another transport (memory, WebSocket, ...).
    Other,
    /// Through a relay circuit (limited in time and bytes; DCUtR tries to replace it).
    Relayed,
}

impl ConnectionPath {
    /// Classifies a connection by its addresses (`local` is ours, relevant for circuits we
    /// accepted: their remote address is only the peer id).
    pub fn of(remote: &Multiaddr, local: Option<&Multiaddr>) -> ConnectionPath {
        use libp2p::multiaddr::Protocol;
        let circuit = |a: &Multiaddr| a.iter().any(|p| p == Protocol::P2pCircuit);
        if circuit(remote) || local.is_some_and(circuit) {
            return ConnectionPath::Relayed;
        }
        if remote.iter().any(|p| matches!(p, Protocol::QuicV1)) {
            ConnectionPath::Quic
        } else if remote.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
            ConnectionPath::Tcp
        } else {
            ConnectionPath::Other
        }
    }

    /// Whether the bytes go straight to the peer.
    pub fn is_direct(self) -> bool {
        self != ConnectionPath::Relayed
    }

    /// The word `kith peers` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionPath::Tcp => "tcp",
            ConnectionPath::Quic => "quic",
            ConnectionPath::Other => "other",
            ConnectionPath::Relayed => "relayed",
        }
    }
}

/// One open connection of a peer.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The remote address.
    pub addr: Multiaddr,
    /// Whether the peer dialed it.
    pub inbound: bool,
    /// Direct (and over what) or relayed.
    pub path: ConnectionPath,
}

/// A connected peer, as `kith peers` shows it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Who.
    pub peer_id: PeerId,
    /// Remote addresses of the open connections.
    pub addrs: Vec<Multiaddr>,
    /// Each open connection, oldest first.
    pub connections: Vec<ConnectionInfo>,
    /// Protocols it announced over identify (empty until identified).
    pub protocols: Vec<String>,
    /// Its agent string (empty until identified).
    pub agent: String,
    /// True if the first open connection was inbound.
    pub inbound: bool,
    /// When the first of the open connections was established.
    pub connected_since: SystemTime,
}

/// A snapshot of the network, as `kith status` shows it.
#[derive(Debug, Clone)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses we listen on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses.
    pub external_addrs: Vec<Multiaddr>,
    /// Number of peers with at least one open connection.
    pub connected_peers: usize,
    /// Number of peers in the Kademlia routing table.
    pub routing_table_peers: usize,
    /// Records held in the local DHT store.
    pub dht_records: usize,
    /// The configured DHT mode.
    pub dht_mode: DhtMode,
    /// Whether the DHT currently answers queries.
    pub dht_server: bool,
    /// AutoNAT's verdict.
    pub nat: NatStatus,
    /// Relays holding a reservation for us (we are reachable through them).
    pub relayed_via: Vec<PeerId>,
    /// Relay role: reservations and circuits we currently serve.
    pub relay_served: Option<RelayServed>,
    /// Open connections the peer dialed.
    pub connections_inbound: usize,
    /// Open connections we dialed.
    pub connections_outbound: usize,
    /// The connection manager's low water mark: trimming stops here.
    pub connections_low: usize,
    /// The connection manager's high water mark: trimming starts above it.
    pub connections_high: usize,
    /// Connections closed since start to get back under the high mark.
    pub connections_trimmed: u64,
    /// Connections closed since start because nothing used them for the idle timeout.
    pub connections_idle_closed: u64,
    /// Inbound connections refused since start because the node held its high water mark
    /// (protected peers are let in).
    pub connections_refused: u64,
    /// What DCUtR achieved since start.
    pub hole_punch: HolePunchStats,
    /// Peers with an open direct-message link, either way (`/kith/dm-link/1.0.0`).
    pub dm_link_peers: usize,
}

/// Hole punching (DCUtR) since start: whether relayed links became direct ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolePunchStats {
    /// Upgrades that produced a direct connection.
    pub succeeded: u64,
    /// Upgrades that failed (the relay keeps carrying the traffic).
    pub failed: u64,
    /// The latest attempt.
    pub last: Option<HolePunchAttempt>,
}

/// One hole-punching attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolePunchAttempt {
    /// With whom.
    pub peer: PeerId,
    /// When it ended.
    pub at: SystemTime,
    /// `None` when it succeeded, else why it failed.
    pub error: Option<String>,
}

/// What a community relay is currently doing for others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayServed {
    /// Live reservations.
    pub reservations: usize,
    /// Live circuits.
    pub circuits: usize,
    /// Circuits accepted since start.
    pub circuits_total: u64,
    /// Reservation or circuit requests denied since start.
    pub denied_total: u64,
}

pub(crate) fn mode_is_server(mode: kad::Mode) -> bool {
    matches!(mode, kad::Mode::Server)
}

#[cfg(test)]
mod path_tests {
    #![allow(clippy::unwrap_used)]

    use super::ConnectionPath;
    use libp2p::Multiaddr;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_are_classified_by_their_addresses() {
        let relay =
            "/ip4/198.18.0.1/tcp/4001/p2p/12D3KooWKEewQ3d3LvyHptrn8YMCMcfWTLwF77Z7YS2XuRuoxgda";
        let circuit = addr(&format!("{relay}/p2p-circuit"));
        let peer = addr("/p2p/12D3KooWLrPadmMGKBoKRaA8dDZDVMC6RqXGrz6sMkJyDmSwFSF5");
        // Dialed through a relay, and accepted through our circuit listener (whose remote
        // address is only the peer id).
        assert_eq!(
            ConnectionPath::of(
                &addr(&format!(
                    "{relay}/p2p-circuit/p2p/12D3KooWLrPadmMGKBoKRaA8dDZDVMC6RqXGrz6sMkJyDmSwFSF5"
                )),
                None
            ),
            ConnectionPath::Relayed
        );
        assert_eq!(
            ConnectionPath::of(&peer, Some(&circuit)),
            ConnectionPath::Relayed
        );
        assert_eq!(
            ConnectionPath::of(&addr("/ip4/198.18.0.2/udp/59240/quic-v1"), None),
            ConnectionPath::Quic
        );
        assert_eq!(
            ConnectionPath::of(
                &addr("/ip4/198.18.0.2/tcp/40179"),
                Some(&addr("/ip4/0.0.0.0/tcp/4717"))
            ),
            ConnectionPath::Tcp
        );
        assert_eq!(
            ConnectionPath::of(&addr("/memory/7"), None),
            ConnectionPath::Other
        );
        assert!(!ConnectionPath::Relayed.is_direct());
        assert!(ConnectionPath::Quic.is_direct());
    }
}
