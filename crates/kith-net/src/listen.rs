//! Choosing listen addresses.
//!
//! libp2p-tcp binds listeners with `SO_REUSEPORT`, so a second kith on the same machine would
//! happily share port 4717 with the first and the kernel would split incoming connections between
//! them. To keep "fixed default port, random one if taken" honest we first try a plain bind
//! (without `SO_REUSEPORT`), which fails when anyone already holds the port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

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

/// The address a peer really reached us on. A QUIC listener reports the address it is bound to
/// (`0.0.0.0`) as the local end of every connection, and an unspecified address is no address to
/// confirm or advertise: the interface that answered the peer is the listen address of the same
/// transport and port whose IP shares the longest prefix with the peer's (on a LAN, the address
/// in the peer's subnet). `None` when no listen address fits.
pub(crate) fn concrete_local(
    local: &Multiaddr,
    remote: &Multiaddr,
    listening: &[Multiaddr],
) -> Option<Multiaddr> {
    let (ip, rest) = split_ip(local)?;
    if !ip.is_unspecified() {
        return Some(local.clone());
    }
    let (remote_ip, _) = split_ip(remote)?;
    listening
        .iter()
        .filter_map(|a| split_ip(a).map(|(ip, rest)| (a, ip, rest)))
        .filter(|(_, ip, r)| !ip.is_unspecified() && *r == rest)
        .filter_map(|(a, ip, _)| common_prefix(ip, remote_ip).map(|len| (len, a)))
        .max_by_key(|(len, _)| *len)
        .map(|(_, a)| a.clone())
}

/// The leading IP of an address and the protocols after it.
fn split_ip(addr: &Multiaddr) -> Option<(IpAddr, Vec<Protocol<'_>>)> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    Some((
        ip,
        parts.filter(|p| !matches!(p, Protocol::P2p(_))).collect(),
    ))
}

/// Leading bits two addresses of the same family share; `None` across families.
fn common_prefix(a: IpAddr, b: IpAddr) -> Option<u32> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Some((a.to_bits() ^ b.to_bits()).leading_zeros()),
        (IpAddr::V6(a), IpAddr::V6(b)) => Some((a.to_bits() ^ b.to_bits()).leading_zeros()),
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

    #[test]
    fn an_unspecified_local_address_becomes_the_listen_address_facing_the_peer() {
        let listening: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/udp/4717/quic-v1",
            "/ip4/198.18.10.2/udp/4717/quic-v1",
            "/ip4/198.19.0.2/udp/4717/quic-v1",
            "/ip4/198.18.10.2/tcp/4717",
            "/ip4/198.18.10.2/udp/9999/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let bound: Multiaddr = "/ip4/0.0.0.0/udp/4717/quic-v1".parse().unwrap();
        let peer: Multiaddr = "/ip4/198.18.10.3/udp/4717/quic-v1".parse().unwrap();
        assert_eq!(
            concrete_local(&bound, &peer, &listening),
            Some("/ip4/198.18.10.2/udp/4717/quic-v1".parse().unwrap())
        );
        let local_peer: Multiaddr = "/ip4/127.0.0.1/udp/5000/quic-v1".parse().unwrap();
        assert_eq!(
            concrete_local(&bound, &local_peer, &listening),
            Some(listening[0].clone())
        );
    }

    #[test]
    fn a_concrete_local_address_is_kept_and_no_match_gives_none() {
        let listening: Vec<Multiaddr> = vec!["/ip4/198.18.10.2/tcp/4717".parse().unwrap()];
        let peer: Multiaddr = "/ip4/198.18.10.3/tcp/4717".parse().unwrap();
        let concrete: Multiaddr = "/ip4/198.18.10.2/tcp/4717".parse().unwrap();
        assert_eq!(
            concrete_local(&concrete, &peer, &[]),
            Some(concrete.clone())
        );
        // No QUIC listen address on that port, and an IPv6 peer never picks an IPv4 address.
        let bound: Multiaddr = "/ip4/0.0.0.0/udp/4717/quic-v1".parse().unwrap();
        assert_eq!(concrete_local(&bound, &peer, &listening), None);
        let bound_tcp: Multiaddr = "/ip4/0.0.0.0/tcp/4717".parse().unwrap();
        let v6_peer: Multiaddr = "/ip6/::1/tcp/4717".parse().unwrap();
        assert_eq!(concrete_local(&bound_tcp, &v6_peer, &listening), None);
    }
}
