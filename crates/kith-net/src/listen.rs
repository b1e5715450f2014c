//! Choosing listen addresses.
//!
//! libp2p-tcp binds listeners with `SO_REUSEPORT`, so a second kith on the same machine would
//! happily share port 4717 with the first and the kernel would split incoming connections between
//! them. To keep "fixed default port, random one if taken" honest we first try a plain bind
//! (without `SO_REUSEPORT`), which fails when anyone already holds the port.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use libp2p::{Multiaddr, multiaddr::Protocol};

/// The default listen addresses: TCP and QUIC on every IPv4 interface, on `port` when both the TCP
/// and the UDP port are free, else on a random port.
pub(crate) fn default_addrs(port: u16) -> Vec<Multiaddr> {
    let port = if port_is_free(port) {
        port
    } else {
        tracing::info!(port, "default port is taken; listening on a random port");
        0
    };
    vec![
        tcp(Ipv4Addr::UNSPECIFIED, port),
        quic(Ipv4Addr::UNSPECIFIED, port),
    ]
}

fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

fn tcp(ip: Ipv4Addr, port: u16) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(ip))
        .with(Protocol::Tcp(port))
}

fn quic(ip: Ipv4Addr, port: u16) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(ip))
        .with(Protocol::Udp(port))
        .with(Protocol::QuicV1)
}

/// Splits `/…/p2p/<id>` into the peer id and the address without it.
pub(crate) fn split_peer_id(addr: &Multiaddr) -> Option<(libp2p::PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, base)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_falls_back_to_a_random_one() {
        let holder = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let taken = holder.local_addr().unwrap().port();
        let addrs = default_addrs(taken);
        assert_eq!(addrs[0], tcp(Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(addrs[1], quic(Ipv4Addr::UNSPECIFIED, 0));
    }

    #[test]
    fn a_free_port_is_used_for_tcp_and_quic() {
        // Find a port that is free now, release it, then ask for it.
        let probe = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addrs = default_addrs(port);
        // Another process may grab it in between; then the fallback (0) is also correct.
        let used = match addrs[0].iter().nth(1) {
            Some(Protocol::Tcp(p)) => p,
            other => panic!("unexpected {other:?}"),
        };
        assert!(used == port || used == 0);
        assert_eq!(addrs[1], quic(Ipv4Addr::UNSPECIFIED, used));
    }

    #[test]
    fn split_peer_id_only_accepts_a_trailing_p2p() {
        let peer = libp2p::PeerId::random();
        let base: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let full = base.clone().with(Protocol::P2p(peer));
        assert_eq!(split_peer_id(&full), Some((peer, base.clone())));
        assert_eq!(split_peer_id(&base), None);
    }
}
