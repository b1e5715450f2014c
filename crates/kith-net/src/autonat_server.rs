//! A rate-limited AutoNAT v2 server for every node.
//!
//! Every kith node answers AutoNAT probes, so peers on a LAN, in a small group bootstrapping from
//! one member, or on one machine confirm each other's addresses without any public server, and
//! Kademlia's automatic mode turns them into DHT servers. libp2p's server dials back whatever a
//! client asks (it only makes the client pay bytes for an address other than the one it connected
//! from) and has no limits of its own, so on a personal node it would be a free dialer for anyone.
//! This wrapper refuses a dial-back (the server then answers "dial error") when:
//!
//! - the node has done [`Limits::global_per_minute`] dial-backs in the last minute, or the asking
//!   peer [`Limits::per_peer_per_minute`];
//! - the address is not plain TCP or QUIC over an IP address (no DNS, no relay circuits);
//! - the address is private or loopback but the asking peer did not connect from such an address
//!   itself (an internet peer must not use us to probe our LAN).
//!
//! A refusal is a denied outbound connection, so the inner server learns of it through the normal
//! `DialFailure` path, answers the client "dial error", and nothing is left pending.

use std::{
    collections::{HashMap, HashSet},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId, autonat,
    core::Endpoint,
    multiaddr::Protocol,
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, ToSwarm,
    },
};

use crate::{
    gate::OpenCount,
    scope::{Scope, addr_scope},
};

type Inner = autonat::v2::server::Behaviour;

/// How many dial-backs a node does for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Dial-backs per minute for everyone together. Default 30.
    pub(crate) global_per_minute: u32,
    /// Dial-backs per minute for one peer. Default 6 (a client tests each new address once).
    pub(crate) per_peer_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            global_per_minute: 30,
            per_peer_per_minute: 6,
        }
    }
}

/// Why a dial-back was refused (the reason travels inside `ConnectionDenied`).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("AutoNAT dial-back refused: rate limit")]
    RateLimited,
    #[error("AutoNAT dial-back refused: this node holds its high water mark of connections")]
    Busy,
    #[error("AutoNAT dial-back refused: {0} is not a TCP or QUIC address on an IP")]
    NotDirect(Multiaddr),
    #[error("AutoNAT dial-back refused: {0} is private and the peer is not on our network")]
    NotOurNetwork(Multiaddr),
}

/// A one-minute window counter.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            count: 0,
        }
    }

    /// Counts one use if fewer than `max` happened in the current minute.
    fn take(&mut self, now: Instant, max: u32) -> bool {
        if now.duration_since(self.start) >= WINDOW {
            *self = Window::new(now);
        }
        if self.count >= max {
            return false;
        }
        self.count += 1;
        true
    }
}

const WINDOW: Duration = Duration::from_secs(60);
/// Per-peer windows kept at most; older ones are dropped first.
const MAX_TRACKED_PEERS: usize = 1024;

/// [`autonat::v2::server::Behaviour`] behind the limits described in the module doc.
pub(crate) struct LimitedServer {
    inner: Inner,
    limits: Limits,
    global: Window,
    per_peer: HashMap<PeerId, Window>,
    /// Inbound connections' remote addresses, to judge where a peer connects from.
    remotes: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// Dial-backs the inner server asked for, judged in `handle_pending_outbound_connection`.
    dial_backs: HashSet<ConnectionId>,
    /// Refusals since start, for the logs.
    refused_total: u64,
    /// Connections open and dials in flight.
    open: OpenCount,
    /// The connection manager's high mark: a dial-back would take the node past it, so the
    /// server declines and the client asks another (`None`: no such limit).
    busy_at: Option<usize>,
}

impl LimitedServer {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            inner: Inner::default(),
            limits,
            global: Window::new(Instant::now()),
            per_peer: HashMap::new(),
            remotes: HashMap::new(),
            dial_backs: HashSet::new(),
            refused_total: 0,
            open: OpenCount::default(),
            busy_at: None,
        }
    }

    /// Declines dial-backs while the node holds `high` connections (counting dials in flight).
    pub(crate) fn busy_at(mut self, high: usize) -> Self {
        self.busy_at = Some(high);
        self
    }

    /// Decides whether a dial-back the inner server wants to make may go out.
    fn judge(&mut self, peer: Option<PeerId>, addrs: &[Multiaddr]) -> Result<(), Refused> {
        let Some(peer) = peer else {
            return Err(Refused::RateLimited);
        };
        if self
            .busy_at
            .is_some_and(|high| self.open.with_dials() >= high)
        {
            return Err(Refused::Busy);
        }
        for addr in addrs {
            let scope = addr_scope(addr).ok_or_else(|| Refused::NotDirect(addr.clone()))?;
            if !is_direct(addr) {
                return Err(Refused::NotDirect(addr.clone()));
            }
            if scope != Scope::Global {
                // The asking peer must itself have come from a non-global address.
                let local_peer = self.remotes.values().any(|(p, remote)| {
                    *p == peer && addr_scope(remote).is_some_and(|s| s != Scope::Global)
                });
                if !local_peer {
                    return Err(Refused::NotOurNetwork(addr.clone()));
                }
            }
        }
        let now = Instant::now();
        if self.per_peer.len() >= MAX_TRACKED_PEERS {
            self.per_peer
                .retain(|_, w| now.duration_since(w.start) < WINDOW);
            if self.per_peer.len() >= MAX_TRACKED_PEERS {
                return Err(Refused::RateLimited);
            }
        }
        let peer_window = self
            .per_peer
            .entry(peer)
            .or_insert_with(|| Window::new(now));
        if peer_window.count >= self.limits.per_peer_per_minute
            && now.duration_since(peer_window.start) < WINDOW
        {
            return Err(Refused::RateLimited);
        }
        if !self.global.take(now, self.limits.global_per_minute) {
            return Err(Refused::RateLimited);
        }
        // Cannot fail: checked above with the same clock reading.
        let _ = peer_window.take(now, self.limits.per_peer_per_minute);
        Ok(())
    }
}

/// TCP or QUIC straight on an IP address, nothing else (no `/p2p-circuit`, no DNS).
fn is_direct(addr: &Multiaddr) -> bool {
    let mut iter = addr.iter();
    matches!(iter.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_)))
        && match iter.next() {
            Some(Protocol::Tcp(_)) => true,
            Some(Protocol::Udp(_)) => matches!(iter.next(), Some(Protocol::QuicV1)),
            _ => false,
        }
        && !addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl NetworkBehaviour for LimitedServer {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = <Inner as NetworkBehaviour>::ToSwarm;

    forward_to_inner!(
        handle_pending_inbound_connection,
        handle_established_outbound_connection,
        on_connection_handler_event,
    );

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.remotes
            .insert(connection_id, (peer, remote_addr.clone()));
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if self.dial_backs.remove(&connection_id) {
            // Judged here, where the swarm hands over the addresses the dial-back will use.
            if let Err(reason) = self.judge(maybe_peer, addresses) {
                self.refused_total += 1;
                tracing::debug!(?maybe_peer, %reason, total = self.refused_total, "AutoNAT dial-back refused");
                return Err(ConnectionDenied::new(reason));
            }
        }
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
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = &event {
            self.remotes.remove(connection_id);
        }
        if let FromSwarm::DialFailure(failure) = &event {
            self.dial_backs.remove(&failure.connection_id);
        }
        self.inner.on_swarm_event(event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let event = std::task::ready!(self.inner.poll(cx));
        if let ToSwarm::Dial { opts } = &event {
            // The only dials the server makes are dial-backs; judge them when the swarm asks.
            self.dial_backs.insert(opts.connection_id());
        }
        Poll::Ready(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn server_with_remote(peer: PeerId, remote: &str) -> LimitedServer {
        let mut server = LimitedServer::new(Limits {
            global_per_minute: 3,
            per_peer_per_minute: 2,
        });
        server
            .remotes
            .insert(ConnectionId::new_unchecked(1), (peer, addr(remote)));
        server
    }

    #[test]
    fn a_peer_gets_its_per_minute_share_and_no_more() {
        let peer = PeerId::random();
        let mut server = server_with_remote(peer, "/ip4/127.0.0.1/tcp/5");
        let target = [addr("/ip4/127.0.0.1/tcp/4000")];
        assert!(server.judge(Some(peer), &target).is_ok());
        assert!(server.judge(Some(peer), &target).is_ok());
        assert!(matches!(
            server.judge(Some(peer), &target),
            Err(Refused::RateLimited)
        ));
    }

    #[test]
    fn a_node_at_its_high_mark_dials_nobody_back() {
        let mut server = LimitedServer::new(Limits::default()).busy_at(2);
        let target = [addr("/ip4/198.18.0.7/tcp/4000")];
        assert!(server.judge(Some(PeerId::random()), &target).is_ok());
        // Two dials in flight (anyone's) put the count at the mark.
        server.open.dialing(ConnectionId::new_unchecked(7));
        server.open.dialing(ConnectionId::new_unchecked(8));
        assert!(matches!(
            server.judge(Some(PeerId::random()), &target),
            Err(Refused::Busy)
        ));
    }

    #[test]
    fn everyone_together_gets_the_global_share() {
        let mut server = LimitedServer::new(Limits {
            global_per_minute: 3,
            per_peer_per_minute: 2,
        });
        let target = [addr("/ip4/198.18.0.7/tcp/4000")];
        for _ in 0..3 {
            assert!(server.judge(Some(PeerId::random()), &target).is_ok());
        }
        assert!(matches!(
            server.judge(Some(PeerId::random()), &target),
            Err(Refused::RateLimited)
        ));
    }

    #[test]
    fn an_internet_peer_cannot_make_us_dial_our_lan() {
        let peer = PeerId::random();
        let mut server = server_with_remote(peer, "/ip4/198.18.0.9/tcp/5");
        for private in ["/ip4/192.168.1.1/tcp/80", "/ip4/127.0.0.1/tcp/22"] {
            assert!(matches!(
                server.judge(Some(peer), &[addr(private)]),
                Err(Refused::NotOurNetwork(_))
            ));
        }
        // A LAN peer may ask for its LAN address.
        let lan = PeerId::random();
        let mut server = server_with_remote(lan, "/ip4/192.168.1.20/tcp/5");
        assert!(
            server
                .judge(Some(lan), &[addr("/ip4/192.168.1.20/tcp/4717")])
                .is_ok()
        );
    }

    #[test]
    fn only_plain_tcp_or_quic_addresses_are_dialed_back() {
        let peer = PeerId::random();
        let mut server = server_with_remote(peer, "/ip4/198.18.0.9/tcp/5");
        for bad in [
            "/dns4/example.org/tcp/4717",
            "/ip4/198.18.0.9/udp/4717",
            "/ip4/198.18.0.9/tcp/4717/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        ] {
            assert!(
                matches!(
                    server.judge(Some(peer), &[addr(bad)]),
                    Err(Refused::NotDirect(_))
                ),
                "{bad}"
            );
        }
        assert!(
            server
                .judge(Some(peer), &[addr("/ip4/198.18.0.9/udp/4717/quic-v1")])
                .is_ok()
        );
    }
}
