//! Refuses inbound connections while the node holds its high water mark of connections, unless
//! the peer is one the node needs (a protected peer: a relay we use, a group member, a recent
//! contact, someone in a call, a peer with a request pending).
//!
//! The connection manager trims above the high mark, but it cannot trim a connection that is
//! young and in use, and every walk through the DHT opens such connections to the nodes it asks:
//! in a thousand-node network a node's count stood above its high mark between trims (44 against
//! 32). With the gate, the others' walks stop at the mark and only our own dials and protected
//! peers can pass it, until the next trim.
//!
//! Our own dials in flight count against the mark too: a stranger let in beside a dial that then
//! succeeds would put the node past it.
//!
//! The refusal comes after the handshake, not before: the dialer's dial succeeded, so Kademlia
//! keeps our address in its routing table (it drops addresses only on failed dials); its request
//! fails and its query asks another peer.

use std::{
    collections::HashSet,
    convert::Infallible,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm, dummy,
    },
};

use prometheus_client::metrics::counter::Counter;

use crate::connmgr::{self, ConnectionBudget};

/// Connections open and our dials in flight, counted from the swarm's events, for the behaviours
/// that decide by the count at the moment a connection or dial appears (the gate, Kademlia's
/// bootstrap dials, AutoNAT dial-backs), before the event loop hears of it.
#[derive(Debug, Default)]
pub(crate) struct OpenCount {
    established: usize,
    /// Dials not yet established or failed: each may add a connection, so a decision made beside
    /// one must count it (a stranger let in beside a dial that then succeeds would put the node
    /// past the mark).
    dialing: HashSet<ConnectionId>,
}

impl OpenCount {
    /// A dial the swarm is about to make (from `handle_pending_outbound_connection`).
    pub(crate) fn dialing(&mut self, connection_id: ConnectionId) {
        self.dialing.insert(connection_id);
    }

    /// Follows the swarm's connection and dial events.
    pub(crate) fn on_swarm_event(&mut self, event: &FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.dialing.remove(&e.connection_id);
                self.established += 1;
            }
            FromSwarm::ConnectionClosed(_) => {
                self.established = self.established.saturating_sub(1);
            }
            FromSwarm::DialFailure(f) => {
                self.dialing.remove(&f.connection_id);
            }
            _ => {}
        }
    }

    /// Connections open.
    pub(crate) fn established(&self) -> usize {
        self.established
    }

    /// What the count may reach once the dials in flight land.
    pub(crate) fn with_dials(&self) -> usize {
        self.established + self.dialing.len()
    }
}

/// The gate: counts established connections and refuses inbound ones at the high mark.
pub(crate) struct InboundGate {
    budget: ConnectionBudget,
    open: OpenCount,
    protected: HashSet<PeerId>,
    /// `kith_connections_refused_total`, also what `NetStatus` reports.
    refused: Counter,
}

impl InboundGate {
    /// A gate at `budget.high`, counting its refusals in `refused`.
    pub(crate) fn new(budget: ConnectionBudget, refused: Counter) -> Self {
        Self {
            budget,
            open: OpenCount::default(),
            protected: HashSet::new(),
            refused,
        }
    }

    /// The peers let in whatever the count (the connection manager's protected set, refreshed
    /// with each of its rounds and whenever the features' tags change).
    pub(crate) fn set_protected(&mut self, protected: HashSet<PeerId>) {
        self.protected = protected;
    }

    /// Inbound connections refused since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.get()
    }
}

impl NetworkBehaviour for InboundGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let protected = self.protected.contains(&peer);
        let counted = self.open.with_dials();
        if !connmgr::admits_inbound(counted, &self.budget, protected) {
            self.refused.inc();
            tracing::debug!(%peer, %remote_addr, established = self.open.established(), with_dials = counted, high = self.budget.high, "inbound connection refused at the high water mark");
            return Err(ConnectionDenied::new(format!(
                "this node holds {} connections, its high water mark",
                self.open.established()
            )));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _maybe_peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.open.dialing(connection_id);
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.open.on_swarm_event(&event);
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
