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

/// The gate: counts established connections and refuses inbound ones at the high mark.
pub(crate) struct InboundGate {
    budget: ConnectionBudget,
    established: usize,
    protected: HashSet<PeerId>,
    /// `kith_connections_refused_total`, also what `NetStatus` reports.
    refused: Counter,
}

impl InboundGate {
    /// A gate at `budget.high`, counting its refusals in `refused`.
    pub(crate) fn new(budget: ConnectionBudget, refused: Counter) -> Self {
        Self {
            budget,
            established: 0,
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
        if !connmgr::admits_inbound(self.established, &self.budget, protected) {
            self.refused.inc();
            tracing::debug!(%peer, %remote_addr, established = self.established, high = self.budget.high, "inbound connection refused at the high water mark");
            return Err(ConnectionDenied::new(format!(
                "this node holds {} connections, its high water mark",
                self.established
            )));
        }
        Ok(dummy::ConnectionHandler)
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
        match event {
            FromSwarm::ConnectionEstablished(_) => self.established += 1,
            FromSwarm::ConnectionClosed(_) => {
                self.established = self.established.saturating_sub(1);
            }
            _ => {}
        }
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
