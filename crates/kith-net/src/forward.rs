//! The `NetworkBehaviour` methods a wrapper hands to its `inner` behaviour unchanged.
//!
//! kith wraps two libp2p behaviours to watch or judge what they do (Kademlia's use of a
//! connection, AutoNAT's dial-backs). The trait has no default for these methods, so each wrapper
//! would spell out the same pass-through bodies; this macro writes them, and a wrapper spells out
//! only the methods where it adds something.

/// Writes each named `NetworkBehaviour` method as a call of the same method on `self.inner`.
macro_rules! forward_to_inner {
    ($($method:ident),+ $(,)?) => {
        $(forward_to_inner!(@one $method);)+
    };
    (@one handle_pending_inbound_connection) => {
        fn handle_pending_inbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            local_addr: &::libp2p::Multiaddr,
            remote_addr: &::libp2p::Multiaddr,
        ) -> Result<(), ::libp2p::swarm::ConnectionDenied> {
            self.inner
                .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
        }
    };
    (@one handle_established_inbound_connection) => {
        fn handle_established_inbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            peer: ::libp2p::PeerId,
            local_addr: &::libp2p::Multiaddr,
            remote_addr: &::libp2p::Multiaddr,
        ) -> Result<::libp2p::swarm::THandler<Self>, ::libp2p::swarm::ConnectionDenied> {
            self.inner
                .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
        }
    };
    (@one handle_pending_outbound_connection) => {
        fn handle_pending_outbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            maybe_peer: Option<::libp2p::PeerId>,
            addresses: &[::libp2p::Multiaddr],
            effective_role: ::libp2p::core::Endpoint,
        ) -> Result<Vec<::libp2p::Multiaddr>, ::libp2p::swarm::ConnectionDenied> {
            self.inner.handle_pending_outbound_connection(
                connection_id,
                maybe_peer,
                addresses,
                effective_role,
            )
        }
    };
    (@one handle_established_outbound_connection) => {
        fn handle_established_outbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            peer: ::libp2p::PeerId,
            addr: &::libp2p::Multiaddr,
            role_override: ::libp2p::core::Endpoint,
            port_use: ::libp2p::core::transport::PortUse,
        ) -> Result<::libp2p::swarm::THandler<Self>, ::libp2p::swarm::ConnectionDenied> {
            self.inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        }
    };
    (@one on_swarm_event) => {
        fn on_swarm_event(&mut self, event: ::libp2p::swarm::FromSwarm) {
            self.inner.on_swarm_event(event);
        }
    };
    (@one on_connection_handler_event) => {
        fn on_connection_handler_event(
            &mut self,
            peer_id: ::libp2p::PeerId,
            connection_id: ::libp2p::swarm::ConnectionId,
            event: ::libp2p::swarm::THandlerOutEvent<Self>,
        ) {
            self.inner
                .on_connection_handler_event(peer_id, connection_id, event);
        }
    };
}
